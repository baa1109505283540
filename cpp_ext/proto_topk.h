// C ABI of the fused prototype distance + top-k kernel (implemented in proto_topk.cu).
//
// All pointers are device pointers; everything is enqueued on `stream` (no host sync, safe to
// capture in a CUDA graph). Functions return a cudaError_t value (0 = success);
// cudaErrorInvalidValue (1) for arguments out of range.
//
// Typical use:
//   proto_topk_bank_sqnorm(bank, M, D, dtype, bank_sqnorm, stream);          // once per bank
//   int splits = proto_topk_plan_splits(Q, M, k, dtype, sm_count);            // or 0 = automatic
//   size_t ws = proto_topk_workspace_bytes(Q, M, k, dtype, splits);           // allocate once
//   proto_topk_run(q, bank, bank_sqnorm, Q, M, D, k, dtype, out_dist, out_idx, ws_ptr, ws, splits, stream);
#pragma once

#include <stddef.h>

#include <cuda_runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { PROTO_TOPK_FLOAT32 = 0, PROTO_TOPK_FLOAT16 = 1 };
enum { PROTO_TOPK_MAX_K = 256 };

// bank_sqnorm[m] = sum_d bank[m, d]^2 in fp32. bank: (M, D) row-major, dtype PROTO_TOPK_*.
int proto_topk_bank_sqnorm(const void* bank, int M, int D, int dtype, float* bank_sqnorm, cudaStream_t stream);

// Number of bank splits that fills a GPU with `sm_count` SMs (1 = no merge kernel, no partials).
int proto_topk_plan_splits(int Q, int M, int k, int dtype, int sm_count);

// Scratch bytes proto_topk_run needs for these sizes (0 when none).
size_t proto_topk_workspace_bytes(int Q, int M, int k, int dtype, int splits);

// out_dist (Q, k) float32: the k smallest squared L2 distances per query, ascending (clamped >= 0);
// out_idx (Q, k) int32 or NULL: their prototype indices, ties -> smaller index first.
// queries (Q, D) and bank (M, D) row-major, same dtype. Requires 1 <= k <= min(M, 256); float16
// needs an sm_80+ GPU (cudaErrorNotSupported otherwise).
// splits <= 0 picks proto_topk_plan_splits for the current device.
int proto_topk_run(const void* queries, const void* bank, const float* bank_sqnorm, int Q, int M, int D, int k,
                   int dtype, float* out_dist, int* out_idx, void* workspace, size_t workspace_bytes, int splits,
                   cudaStream_t stream);

// Same, and also writes the full (Q, M) matrix of ranking scores |m|^2 - 2 q.m to debug_scores
// (debugging only: it is exactly the matrix the fused kernel exists to avoid).
int proto_topk_run_debug(const void* queries, const void* bank, const float* bank_sqnorm, int Q, int M, int D,
                         int k, int dtype, float* out_dist, int* out_idx, void* workspace, size_t workspace_bytes,
                         int splits, float* debug_scores, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
