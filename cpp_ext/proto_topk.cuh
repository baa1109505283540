// Fused prototype distance + top-k: device code only (the kernels' extern "C" entry points; the
// device code is split by job into the headers included below).
//
// For Q query vectors and M prototypes (D dims, fp16 or fp32) return, per query, the k smallest
// squared L2 distances, ascending, ties broken by the smaller prototype index, and those indices,
// without ever writing the Q x M distance matrix.
//
// These headers have no host code and include only <cuda_fp16.h> and each other, so the very same text
// compiles with nvcc (proto_topk.cu: C launcher, torch extension) and with NVRTC (launcher.py: torch-free
// runtime, which hands NVRTC every header in HEADERS and hashes them all into its cubin cache key).
// Kernels are extern "C" so both paths find them by name.
//
//   proto_topk_config.h     constants and shared-memory layouts (the one place; kernel_config.py parses it)
//   proto_topk_tiles.cuh    helpers, cp.async, bank norms, fp32 SIMT tile, mma.sync / wgmma tiles + fragments
//   proto_topk_select.cuh   order keys, warp radix select, final sort, end of a block's rows
//   proto_topk_partial.cuh  the partial kernels' bodies (fp32; fp16 loader, epilogue, compaction, k = 1)
//   proto_topk_merge.cuh    the merge of several splits (block radix select), and of k = 1 minima
//   proto_topk_compare.cuh  comparison builds (-DPROTOSPECT_TOPK_SHARED_BOUND / _AGG_ATOMICS) only
//
// Algorithm (one block = a tile of queries x one contiguous segment of the bank, a "split"):
//   1. rank prototypes by  s(q, m) = |m|^2 - 2 q.m  (|q|^2 is constant per query, added at the end);
//      |m|^2 comes precomputed per bank (proto_topk_bank_sqnorm_*).
//   2. stream the segment in tiles of prototypes and compute each tile's dot products q.m:
//      fp16 (sm_80+): a 128 x 128 tile per block, 8 warps of 64 x 32, mma.sync m16n8k16 tensor-core
//      instructions fed by ldmatrix from a swizzled, 3-stage cp.async pipeline of 64-dim slices;
//      the scores never leave the accumulator registers. Built for sm_90a, the k = 1 kernel uses
//      wgmma m64n128k16 (two warpgroups, operands from the same tiles) instead of mma.sync.
//      fp32: SIMT FMA (exact fp32) into a 64 x 64 score tile in shared memory.
//   3. k = 1 (fp16): each thread keeps the running minimum of its rows in registers; threads and
//      warps reduce once, at the end of the segment.
//      k > 1: every score below the query's threshold (+inf at first) is appended to a candidate
//      buffer of cand_cap(k) = min(2k + 128, 512) slots in global memory (the workspace:
//      O(splits Q k)). Between tiles, a row whose buffer might overflow with the next tile is
//      compacted by its owning warp: a radix select (8 key bits per pass, keys cached in
//      registers) finds the k-th smallest (value, index), the k smallest are kept, and the
//      threshold becomes the k-th value. Each compaction drops >= 128 entries, so a query compacts
//      about 1 + ln(M / k) times per split.
//      Appends within a tile are unordered (fp16: shared atomics), so the select breaks value ties
//      on the index itself (a second radix select over the indices of the tied entries; rare).
//      Tiles go in increasing prototype order and thresholds only change between tiles, so a score
//      EQUAL to the threshold always has a larger index than the k kept entries <= it and can be
//      dropped: `s < threshold` is exact for ties.
//      While a row is still filling (threshold +inf) every score goes straight to its column's slot.
//   4. with one split, the block selects and sorts its k and writes the output; with several (to
//      fill the GPU when Q is small), each block leaves its candidate buffer (<= cap entries, a
//      superset of its split's k smallest) and count, and the merge kernel (one block per query)
//      selects and sorts the k smallest of the union; fp16 k = 1 merges the splits' minima with one
//      thread per query. The last step adds |q|^2 and clamps at 0.
//
// Warp ownership: a query row belongs to one warp for compaction and the final sort, so that
// per-row state needs only __syncwarp; block barriers separate the append and compaction phases.
#pragma once

#include "proto_topk_config.h"
#include "proto_topk_tiles.cuh"
#include "proto_topk_select.cuh"
#include "proto_topk_partial.cuh"
#include "proto_topk_merge.cuh"

// ---- entry points (C names: the launcher, the torch extension and NVRTC all look these up) -----

// Numbers the hosts need (read by launcher.py through cuModuleGetGlobal): keep in sync by construction.
// Per dtype (fp32 then fp16): block queries, tile prototypes, threads, dynamic smem bytes, blocks per SM;
// then max k, max splits, merge threads per block (one block per query), shared-bound atoms per query (0: off).
// Block form: `extern "C" __device__ int x[] = ...` would leave nvcc's host shadow undefined at link time.
extern "C" {
__device__ int proto_topk_config[14] = {
    protospect_topk::kBlockQ,
    protospect_topk::kBlockM,
    protospect_topk::kThreads,
    (int)protospect_topk::SmemLayoutF32::kBytes,
    protospect_topk::kBlocksPerSm,
    protospect_topk::kMmaBlockQ,
    protospect_topk::kMmaBlockM,
    protospect_topk::kMmaThreads,
    (int)protospect_topk::SmemLayoutMma::kBytes,
    protospect_topk::kMmaBlocksPerSm,
    protospect_topk::kMaxK,
    protospect_topk::kMaxSplits,
    protospect_topk::kMergeThreads,
    protospect_topk::kSharedBound ? protospect_topk::kBoundAtoms : 0,  // shared-bound build: atoms per query
};
}

extern "C" __global__ void __launch_bounds__(protospect_topk::kAuxThreads) proto_topk_bank_sqnorm_f32(const float* bank, int M, int D, float* out) {
    protospect_topk::bank_sqnorm_body(bank, M, D, out);
}
extern "C" __global__ void __launch_bounds__(protospect_topk::kAuxThreads) proto_topk_bank_sqnorm_f16(const __half* bank, int M, int D, float* out) {
    protospect_topk::bank_sqnorm_body(bank, M, D, out);
}

extern "C" __global__ void __launch_bounds__(protospect_topk::kThreads, protospect_topk::kBlocksPerSm)
proto_topk_partial_f32(const float* queries, const float* bank, const float* bank_sqnorm, int Q, int M, int D, int k,
                       int seg_len, float* cand_val, int* cand_idx, int* cand_count, float* out_val, int* out_idx,
                       float* qnorm_out, int finalize, float* debug_scores) {
    protospect_topk::partial_topk_f32_body(queries, bank, bank_sqnorm, Q, M, D, k, seg_len, cand_val, cand_idx,
                                           cand_count, out_val, out_idx, qnorm_out, finalize, debug_scores);
}
// The fp16 partial kernels and the merge take one more argument in the shared-bound build: the atoms
// (Q x kBoundAtoms order keys, reset to 0xff bytes before each call; null with one split or fp32). The
// hosts read the switch from proto_topk_config and pass it (the k = 1 kernel ignores it; the merge uses it
// at level 2: PROTOSPECT_TOPK_SHARED_BOUND=2).
#if PROTOSPECT_TOPK_SHARED_BOUND
#define PROTOSPECT_TOPK_BOUND_PARAM , unsigned* bound_keys
#define PROTOSPECT_TOPK_BOUND_ARG bound_keys
#else
#define PROTOSPECT_TOPK_BOUND_PARAM
#define PROTOSPECT_TOPK_BOUND_ARG nullptr
#endif
extern "C" __global__ void __launch_bounds__(protospect_topk::kMmaThreads, protospect_topk::kMmaBlocksPerSm)
proto_topk_partial_f16(const __half* queries, const __half* bank, const float* bank_sqnorm, int Q, int M, int D,
                       int k, int seg_len, float* cand_val, int* cand_idx, int* cand_count, float* out_val,
                       int* out_idx, float* qnorm_out, int finalize, float* debug_scores PROTOSPECT_TOPK_BOUND_PARAM) {
    protospect_topk::partial_topk_mma_body<false>(queries, bank, bank_sqnorm, Q, M, D, k, seg_len, cand_val, cand_idx,
                                                  cand_count, out_val, out_idx, qnorm_out, finalize, debug_scores,
                                                  PROTOSPECT_TOPK_BOUND_ARG);
}
// k = 1 (same arguments; the hosts launch it for fp16 with k = 1)
extern "C" __global__ void __launch_bounds__(protospect_topk::kMmaThreads, protospect_topk::kMmaBlocksPerSm)
proto_topk_partial_f16_k1(const __half* queries, const __half* bank, const float* bank_sqnorm, int Q, int M, int D,
                          int k, int seg_len, float* cand_val, int* cand_idx, int* cand_count, float* out_val,
                          int* out_idx, float* qnorm_out, int finalize, float* debug_scores PROTOSPECT_TOPK_BOUND_PARAM) {
    protospect_topk::partial_topk_mma_body<true>(queries, bank, bank_sqnorm, Q, M, D, k, seg_len, cand_val, cand_idx,
                                                 cand_count, out_val, out_idx, qnorm_out, finalize, debug_scores,
                                                 nullptr);
}

// Hopper: 4 blocks per SM (<= 64 registers). The merge is latency-bound, and NVRTC's build otherwise took
// 70 registers (3 blocks per SM) where nvcc's took 64: the torch-free launcher was slower at k > 1.
// Orin keeps the compiler's choice (80 registers; a cap of 64 spills there).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define PROTOSPECT_TOPK_MERGE_MIN_BLOCKS 4
#else
#define PROTOSPECT_TOPK_MERGE_MIN_BLOCKS 1
#endif
extern "C" __global__ void __launch_bounds__(protospect_topk::kMergeThreads, PROTOSPECT_TOPK_MERGE_MIN_BLOCKS)
proto_topk_merge_splits(const float* cand_val, const int* cand_idx, const int* cand_count, const float* qnorm, int Q,
                        int k, int splits, int cap, float* out_dist, int* out_idx PROTOSPECT_TOPK_BOUND_PARAM) {
    protospect_topk::merge_splits_body(cand_val, cand_idx, cand_count, qnorm, Q, k, splits, cap, out_dist, out_idx,
                                       PROTOSPECT_TOPK_BOUND_ARG);
}
extern "C" __global__ void __launch_bounds__(protospect_topk::kAuxThreads)
proto_topk_merge_min(const float* cand_val, const int* cand_idx, const float* qnorm, int Q, int splits, float* out_dist,
                     int* out_idx) {
    protospect_topk::merge_min_body(cand_val, cand_idx, qnorm, Q, splits, out_dist, out_idx);
}
