// Host side of the fused prototype distance + top-k kernel: argument checks, launch geometry,
// workspace layout. The kernels themselves are in proto_topk.cuh and the headers it includes (shared with the NVRTC path in
// launcher.py, which mirrors the geometry below: keep the two in step).
#include "proto_topk.h"

#include <stdint.h>

#include "proto_topk.cuh"

namespace {

using namespace protospect_topk;

static_assert(PROTO_TOPK_MAX_K == kMaxK, "proto_topk.h and proto_topk_config.h agree on the largest k");

size_t align_bytes(size_t x) { return (x + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign; }

int ceil_div(int a, int b) { return (a + b - 1) / b; }

// Per-dtype launch geometry: the fp16 kernel (tensor cores) and the fp32 kernel (SIMT) tile differently.
struct Geometry {
    int block_q, block_m, threads, blocks_per_sm;
    unsigned smem;
};
Geometry geometry(int dtype) {
    if (dtype == kFloat16) return {kMmaBlockQ, kMmaBlockM, kMmaThreads, kMmaBlocksPerSm, SmemLayoutMma::kBytes};
    return {kBlockQ, kBlockM, kThreads, kBlocksPerSm, SmemLayoutF32::kBytes};
}

// Prototypes per split: a whole number of tiles, so splits never share a tile.
int segment_length(int M, int splits, int block_m) { return ceil_div(ceil_div(M, block_m), splits) * block_m; }

// Splits actually launched for a request: within [1, kMaxSplits], no empty split.
int effective_splits(int M, int splits, int block_m) {
    if (splits < 1) splits = 1;
    if (splits > kMaxSplits) splits = kMaxSplits;
    return ceil_div(M, segment_length(M, splits, block_m));
}

int current_sm_count() {
    int device = 0, sms = 0;
    if (cudaGetDevice(&device) != cudaSuccess) return 1;
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) return 1;
    return sms;
}

// Once per device and dtype: check the GPU can run the kernel (fp16 needs sm_80+ tensor-core
// instructions) and opt it into >48 KiB of dynamic shared memory. Host-side and idempotent (a race
// only repeats it); skipping it later keeps launches cheap and free of non-stream API calls during
// CUDA-graph capture.
cudaError_t prepare_device(int dtype) {
    constexpr int kMaxDevices = 64;
    static bool done[kMaxDevices][2] = {};
    int device = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err != cudaSuccess) return err;
    const bool cacheable = device >= 0 && device < kMaxDevices;
    if (cacheable && done[device][dtype]) return cudaSuccess;
    if (dtype == kFloat16) {
        int major = 0;
        err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
        if (err != cudaSuccess) return err;
        if (major < 8) return cudaErrorNotSupported;
        err = cudaFuncSetAttribute(proto_topk_partial_f16, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   (int)SmemLayoutMma::kBytes);
        if (err == cudaSuccess)
            err = cudaFuncSetAttribute(proto_topk_partial_f16_k1, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       (int)SmemLayoutMma::kBytes);
    } else {
        err = cudaFuncSetAttribute(proto_topk_partial_f32, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   (int)SmemLayoutF32::kBytes);
    }
    if (err == cudaSuccess && cacheable) done[device][dtype] = true;
    return err;
}

int resolve_splits(int Q, int M, int k, int dtype, int splits) {
    if (splits <= 0) splits = proto_topk_plan_splits(Q, M, k, dtype, current_sm_count());
    return effective_splits(M, splits, geometry(dtype).block_m);
}

// Candidate slots per (split, query): cand_cap(k); the fp16 kernel keeps k = 1 in registers and hands
// the merge one slot per split (none with a single split).
int candidate_slots(int k, int dtype, int splits) {
    if (k == 1 && dtype == kFloat16) return splits > 1 ? 1 : 0;
    return cand_cap(k);
}

struct Workspace {
    float* qnorm = nullptr;     // (Q) when splits > 1
    int* cand_count = nullptr;  // (splits, Q) when splits > 1: entries in each candidate buffer
    float* cand_val = nullptr;  // (splits, Q, slots) candidate buffers; with several splits, the merge's input
    int* cand_idx = nullptr;    // (splits, Q, slots)
    unsigned* bound_keys = nullptr;  // (Q, kBoundAtoms): shared-bound build, fp16, k > 1, several splits
    int slots = 0;
    size_t bytes = 0;
};

// One layout for both the size query and the run (launcher.py mirrors it).
Workspace carve(void* base, int Q, int k, int dtype, int splits) {
    Workspace ws;
    const uintptr_t p = reinterpret_cast<uintptr_t>(base);  // integer math: base may be null (size query)
    size_t off = 0;
    if (splits > 1) {
        ws.qnorm = reinterpret_cast<float*>(p + off);
        off = align_bytes(off + (size_t)Q * sizeof(float));
        ws.cand_count = reinterpret_cast<int*>(p + off);
        off = align_bytes(off + (size_t)splits * Q * sizeof(int));
    }
    ws.slots = candidate_slots(k, dtype, splits);
    const size_t cand = (size_t)splits * Q * ws.slots;
    ws.cand_val = reinterpret_cast<float*>(p + off);
    off = align_bytes(off + cand * sizeof(float));
    ws.cand_idx = reinterpret_cast<int*>(p + off);
    off = align_bytes(off + cand * sizeof(int));
    if (kSharedBound && splits > 1 && dtype == kFloat16 && k > 1) {
        ws.bound_keys = reinterpret_cast<unsigned*>(p + off);
        off = align_bytes(off + (size_t)Q * kBoundAtoms * sizeof(unsigned));
    }
    ws.bytes = off;
    return ws;
}

bool args_ok(const void* queries, const void* bank, const float* bank_sqnorm, int Q, int M, int D, int k, int dtype,
             const float* out_dist) {
    return queries != nullptr && bank != nullptr && bank_sqnorm != nullptr && out_dist != nullptr && Q >= 0 &&
           M >= 1 && D >= 1 && k >= 1 && k <= kMaxK && k <= M && (dtype == kFloat32 || dtype == kFloat16);
}

int launch(const void* queries, const void* bank, const float* bank_sqnorm, int Q, int M, int D, int k, int dtype,
           float* out_dist, int* out_idx, void* workspace, size_t workspace_bytes, int splits, float* debug_scores,
           cudaStream_t stream) {
    if (!args_ok(queries, bank, bank_sqnorm, Q, M, D, k, dtype, out_dist)) return cudaErrorInvalidValue;
    if (Q == 0) return cudaSuccess;
    splits = resolve_splits(Q, M, k, dtype, splits);
    const Workspace ws = carve(workspace, Q, k, dtype, splits);
    if (ws.bytes > 0 && (workspace == nullptr || workspace_bytes < ws.bytes)) return cudaErrorInvalidValue;

    const bool single = splits == 1;
    const Geometry geo = geometry(dtype);
    const int seg_len = segment_length(M, splits, geo.block_m);
    const dim3 grid(ceil_div(Q, geo.block_q), splits);

    cudaError_t err = prepare_device(dtype);
    if (err != cudaSuccess) return err;
    if (ws.bound_keys != nullptr) {  // every atom unpublished (0xffffffff) before the splits start
        err = cudaMemsetAsync(ws.bound_keys, 0xff, (size_t)Q * kBoundAtoms * sizeof(unsigned), stream);
        if (err != cudaSuccess) return err;
    }
    if (dtype == kFloat16)
        (k == 1 ? proto_topk_partial_f16_k1 : proto_topk_partial_f16)<<<grid, geo.threads, geo.smem, stream>>>(
            static_cast<const __half*>(queries), static_cast<const __half*>(bank), bank_sqnorm, Q, M, D, k, seg_len,
            ws.cand_val, ws.cand_idx, ws.cand_count, out_dist, out_idx, ws.qnorm, single ? 1 : 0, debug_scores
#if PROTOSPECT_TOPK_SHARED_BOUND
            , ws.bound_keys
#endif
        );
    else
        proto_topk_partial_f32<<<grid, geo.threads, geo.smem, stream>>>(
            static_cast<const float*>(queries), static_cast<const float*>(bank), bank_sqnorm, Q, M, D, k, seg_len,
            ws.cand_val, ws.cand_idx, ws.cand_count, out_dist, out_idx, ws.qnorm, single ? 1 : 0, debug_scores);
    err = cudaGetLastError();
    if (err != cudaSuccess || single) return err;

    if (ws.slots == 1)  // fp16 k = 1: each split left one (value, index) per query
        proto_topk_merge_min<<<ceil_div(Q, kAuxThreads), kAuxThreads, 0, stream>>>(ws.cand_val, ws.cand_idx, ws.qnorm, Q, splits,
                                                                   out_dist, out_idx);
    else
        proto_topk_merge_splits<<<Q, kMergeThreads, 0, stream>>>(ws.cand_val, ws.cand_idx, ws.cand_count, ws.qnorm, Q,
                                                                 k, splits, ws.slots, out_dist, out_idx
#if PROTOSPECT_TOPK_SHARED_BOUND
                                                                 , ws.bound_keys
#endif
        );
    return cudaGetLastError();
}

}  // namespace

extern "C" int proto_topk_bank_sqnorm(const void* bank, int M, int D, int dtype, float* bank_sqnorm,
                                      cudaStream_t stream) {
    if (bank == nullptr || bank_sqnorm == nullptr || M < 1 || D < 1) return cudaErrorInvalidValue;
    const int rows_per_block = kAuxThreads / 32;
    const dim3 grid(ceil_div(M, rows_per_block));
    if (dtype == kFloat16)
        proto_topk_bank_sqnorm_f16<<<grid, kAuxThreads, 0, stream>>>(static_cast<const __half*>(bank), M, D, bank_sqnorm);
    else if (dtype == kFloat32)
        proto_topk_bank_sqnorm_f32<<<grid, kAuxThreads, 0, stream>>>(static_cast<const float*>(bank), M, D, bank_sqnorm);
    else
        return cudaErrorInvalidValue;
    return cudaGetLastError();
}

extern "C" int proto_topk_plan_splits(int Q, int M, int k, int dtype, int sm_count) {
    if (Q < 1 || M < 1) return 1;
    // Fill the GPU in one wave (blocks_per_sm resident blocks per SM, never a partial second wave), but
    // give each split at least 2k prototypes: each hands the merge up to cand_cap(k) >= 2k candidates,
    // so thinner splits would only grow the merge's input.
    const Geometry geo = geometry(dtype);
    const int query_blocks = ceil_div(Q, geo.block_q);
    const int by_occupancy = (geo.blocks_per_sm * (sm_count > 0 ? sm_count : 1)) / query_blocks;
    const int by_k = M / (2 * (k > 0 ? k : 1));
    int wanted = by_occupancy < by_k ? by_occupancy : by_k;
    return effective_splits(M, wanted < 1 ? 1 : wanted, geo.block_m);
}

extern "C" size_t proto_topk_workspace_bytes(int Q, int M, int k, int dtype, int splits) {
    if (Q < 1 || M < 1 || k < 1) return 0;
    return carve(nullptr, Q, k, dtype, resolve_splits(Q, M, k, dtype, splits)).bytes;
}

extern "C" int proto_topk_run(const void* queries, const void* bank, const float* bank_sqnorm, int Q, int M, int D,
                              int k, int dtype, float* out_dist, int* out_idx, void* workspace,
                              size_t workspace_bytes, int splits, cudaStream_t stream) {
    return launch(queries, bank, bank_sqnorm, Q, M, D, k, dtype, out_dist, out_idx, workspace, workspace_bytes,
                  splits, nullptr, stream);
}

extern "C" int proto_topk_run_debug(const void* queries, const void* bank, const float* bank_sqnorm, int Q, int M,
                                    int D, int k, int dtype, float* out_dist, int* out_idx, void* workspace,
                                    size_t workspace_bytes, int splits, float* debug_scores, cudaStream_t stream) {
    return launch(queries, bank, bank_sqnorm, Q, M, D, k, dtype, out_dist, out_idx, workspace, workspace_bytes,
                  splits, debug_scores, stream);
}
