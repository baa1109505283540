// Host side of the fused prototype distance + top-k kernel: argument checks, launch geometry,
// workspace layout. The kernels themselves are in proto_topk.cuh (shared with the NVRTC path in
// launcher.py, which mirrors the geometry below: keep the two in step).
#include "proto_topk.h"

#include <stdint.h>

#include "proto_topk.cuh"

namespace {

using namespace protospect_topk;

constexpr size_t kWorkspaceAlign = 256;

size_t align_bytes(size_t x) { return (x + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign; }

int ceil_div(int a, int b) { return (a + b - 1) / b; }

// Prototypes per split: a whole number of tiles, so splits never share a tile.
int segment_length(int M, int splits) { return ceil_div(ceil_div(M, kBlockM), splits) * kBlockM; }

// Splits actually launched for a request: within [1, kMaxSplits], no empty split.
int effective_splits(int M, int splits) {
    if (splits < 1) splits = 1;
    if (splits > kMaxSplits) splits = kMaxSplits;
    return ceil_div(M, segment_length(M, splits));
}

int current_sm_count() {
    int device = 0, sms = 0;
    if (cudaGetDevice(&device) != cudaSuccess) return 1;
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) return 1;
    return sms;
}

// Opt the partial kernel into >48 KiB of dynamic shared memory once per device and dtype: the call
// is host-side and idempotent (a race only repeats it), and skipping it later keeps launches cheap
// and free of non-stream API calls during CUDA-graph capture.
cudaError_t allow_big_smem(int dtype) {
    constexpr int kMaxDevices = 64;
    static bool done[kMaxDevices][2] = {};
    int device = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err != cudaSuccess) return err;
    const bool cacheable = device >= 0 && device < kMaxDevices;
    if (cacheable && done[device][dtype]) return cudaSuccess;
    if (dtype == kFloat16)
        err = cudaFuncSetAttribute(proto_topk_partial_f16, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   (int)SmemLayout<__half>::kBytes);
    else
        err = cudaFuncSetAttribute(proto_topk_partial_f32, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   (int)SmemLayout<float>::kBytes);
    if (err == cudaSuccess && cacheable) done[device][dtype] = true;
    return err;
}

int resolve_splits(int Q, int M, int k, int splits) {
    if (splits <= 0) splits = proto_topk_plan_splits(Q, M, k, current_sm_count());
    return effective_splits(M, splits);
}

struct Workspace {
    float* qnorm = nullptr;     // (Q) when splits > 1
    float* part_val = nullptr;  // (splits, Q, k) when splits > 1
    int* part_idx = nullptr;    // (splits, Q, k) when splits > 1
    float* cand_val = nullptr;  // (splits, Q, cand_cap(k)) candidate buffers
    int* cand_idx = nullptr;    // (splits, Q, cand_cap(k))
    size_t bytes = 0;
};

// One layout for both the size query and the run (launcher.py mirrors it). want_indices no longer
// changes it (kept in the C ABI for callers built against the first version).
Workspace carve(void* base, int Q, int k, int splits, bool /*want_indices*/) {
    Workspace ws;
    const uintptr_t p = reinterpret_cast<uintptr_t>(base);  // integer math: base may be null (size query)
    size_t off = 0;
    const size_t list = (size_t)Q * k;
    if (splits > 1) {
        ws.qnorm = reinterpret_cast<float*>(p + off);
        off = align_bytes(off + (size_t)Q * sizeof(float));
        ws.part_val = reinterpret_cast<float*>(p + off);
        off = align_bytes(off + (size_t)splits * list * sizeof(float));
        ws.part_idx = reinterpret_cast<int*>(p + off);
        off = align_bytes(off + (size_t)splits * list * sizeof(int));
    }
    const size_t cand = (size_t)splits * Q * cand_cap(k);
    ws.cand_val = reinterpret_cast<float*>(p + off);
    off = align_bytes(off + cand * sizeof(float));
    ws.cand_idx = reinterpret_cast<int*>(p + off);
    off = align_bytes(off + cand * sizeof(int));
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
    splits = resolve_splits(Q, M, k, splits);
    const Workspace ws = carve(workspace, Q, k, splits, out_idx != nullptr);
    if (ws.bytes > 0 && (workspace == nullptr || workspace_bytes < ws.bytes)) return cudaErrorInvalidValue;

    const bool single = splits == 1;
    float* out_val = single ? out_dist : ws.part_val;
    int* out_ids = single ? out_idx : ws.part_idx;
    const int seg_len = segment_length(M, splits);
    const dim3 grid(ceil_div(Q, kBlockQ), splits);

    cudaError_t err = allow_big_smem(dtype);
    if (err != cudaSuccess) return err;
    if (dtype == kFloat16) {
        const unsigned smem = SmemLayout<__half>::kBytes;
        proto_topk_partial_f16<<<grid, kThreads, smem, stream>>>(
            static_cast<const __half*>(queries), static_cast<const __half*>(bank), bank_sqnorm, Q, M, D, k, seg_len,
            ws.cand_val, ws.cand_idx, out_val, out_ids, ws.qnorm, single ? 1 : 0, debug_scores);
    } else {
        const unsigned smem = SmemLayout<float>::kBytes;
        proto_topk_partial_f32<<<grid, kThreads, smem, stream>>>(
            static_cast<const float*>(queries), static_cast<const float*>(bank), bank_sqnorm, Q, M, D, k, seg_len,
            ws.cand_val, ws.cand_idx, out_val, out_ids, ws.qnorm, single ? 1 : 0, debug_scores);
    }
    err = cudaGetLastError();
    if (err != cudaSuccess || single) return err;

    int n = 1;
    while (n < splits * k) n <<= 1;
    proto_topk_merge_splits<<<Q, 256, n * (sizeof(float) + sizeof(int)), stream>>>(
        ws.part_val, ws.part_idx, ws.qnorm, Q, k, splits, out_dist, out_idx);
    return cudaGetLastError();
}

}  // namespace

extern "C" int proto_topk_bank_sqnorm(const void* bank, int M, int D, int dtype, float* bank_sqnorm,
                                      cudaStream_t stream) {
    if (bank == nullptr || bank_sqnorm == nullptr || M < 1 || D < 1) return cudaErrorInvalidValue;
    const int rows_per_block = 256 / 32;
    const dim3 grid(ceil_div(M, rows_per_block));
    if (dtype == kFloat16)
        proto_topk_bank_sqnorm_f16<<<grid, 256, 0, stream>>>(static_cast<const __half*>(bank), M, D, bank_sqnorm);
    else if (dtype == kFloat32)
        proto_topk_bank_sqnorm_f32<<<grid, 256, 0, stream>>>(static_cast<const float*>(bank), M, D, bank_sqnorm);
    else
        return cudaErrorInvalidValue;
    return cudaGetLastError();
}

extern "C" int proto_topk_plan_splits(int Q, int M, int k, int sm_count) {
    if (Q < 1 || M < 1) return 1;
    // Fill the GPU in one wave (kBlocksPerSm resident blocks per SM, never a partial second wave), but
    // give each split at least 4k prototypes: every split sorts its own first k candidates.
    const int query_blocks = ceil_div(Q, kBlockQ);
    const int by_occupancy = (kBlocksPerSm * (sm_count > 0 ? sm_count : 1)) / query_blocks;
    const int by_k = M / (4 * (k > 0 ? k : 1));
    int wanted = by_occupancy < by_k ? by_occupancy : by_k;
    return effective_splits(M, wanted < 1 ? 1 : wanted);
}

extern "C" size_t proto_topk_workspace_bytes(int Q, int M, int k, int splits, int want_indices) {
    if (Q < 1 || M < 1 || k < 1) return 0;
    return carve(nullptr, Q, k, resolve_splits(Q, M, k, splits), want_indices != 0).bytes;
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
