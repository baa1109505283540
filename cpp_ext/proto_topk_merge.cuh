// The merge of the fused prototype top-k: with several splits, one block per query selects and sorts the
// k smallest of the union of the splits' candidate buffers (fp16 k = 1: one thread per query over the
// splits' minima).
#pragma once

#include "proto_topk_select.cuh"

namespace protospect_topk {

// Block-wide helpers of the merge kernel (kMergeThreads threads).
__device__ __forceinline__ unsigned block_reduce(unsigned x, bool is_max, unsigned* scratch) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int off = 16; off > 0; off >>= 1) {
        const unsigned y = __shfl_xor_sync(0xffffffffu, x, off);
        x = is_max ? max(x, y) : min(x, y);
    }
    if (lane == 0) scratch[warp] = x;
    __syncthreads();
    x = scratch[0];
    for (int w = 1; w < kMergeThreads / 32; ++w) x = is_max ? max(x, scratch[w]) : min(x, scratch[w]);
    __syncthreads();  // scratch is reused
    return x;
}

// One radix pass over the block's cached keys (digit bits hi .. shift of the entries matching
// prefix/mask; `keys` are index bits for the tie pass): the bin holding the need-th smallest and the
// count before it, on every thread.
template <int kSlots>
__device__ __forceinline__ void block_radix_pass(const unsigned (&keys)[kSlots], unsigned valid, unsigned mask,
                                                 unsigned prefix, int shift, unsigned digit, int need, bool first,
                                                 unsigned* hist, int* pick, int& bin, unsigned& before) {
    hist[threadIdx.x] = 0u;  // kMergeThreads == kRadixBins
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kSlots; ++j)
        hist_add(hist, (keys[j] >> shift) & digit, ((valid >> j) & 1u) && (keys[j] & mask) == prefix, first);
    __syncthreads();
    if (threadIdx.x < 32) {
        radix_pick(hist, threadIdx.x, need, bin, before);
        if (threadIdx.x == 0) {
            pick[0] = bin;
            pick[1] = (int)before;
        }
    }
    __syncthreads();
    bin = pick[0];
    before = (unsigned)pick[1];
    __syncthreads();  // pick and hist are rewritten by the next pass
}

// The need-th smallest of the block's keys (slot j valid when bit j of `valid`), by radix passes of
// up to 8 bits from the highest bit where they differ; `need` becomes its rank among the equal keys.
template <int kSlots>
__device__ unsigned block_kth(const unsigned (&keys)[kSlots], unsigned valid, int& need, unsigned* hist,
                              unsigned* scratch, int* pick) {
    unsigned kmin = 0xffffffffu, kmax = 0u;
#pragma unroll
    for (int j = 0; j < kSlots; ++j)
        if ((valid >> j) & 1u) {
            kmin = min(kmin, keys[j]);
            kmax = max(kmax, keys[j]);
        }
    kmin = block_reduce(kmin, false, scratch);
    kmax = block_reduce(kmax, true, scratch);
    const unsigned diff = kmin ^ kmax;
    const int top = diff ? 31 - __clz(diff) : -1;
    unsigned mask = top < 0 ? 0xffffffffu : ~((2u << top) - 1u);
    unsigned prefix = kmin & mask;
    for (int hi = top; hi >= 0; hi -= 8) {
        const int shift = hi >= 7 ? hi - 7 : 0;
        const unsigned digit = (2u << (hi - shift)) - 1u;
        int bin;
        unsigned before;
        block_radix_pass(keys, valid, mask, prefix, shift, digit, need, hi == top, hist, pick, bin, before);
        need -= (int)before;
        prefix |= (unsigned)bin << shift;
        mask |= digit << shift;
    }
    return prefix;
}

// Merge kernel, one block per query: the union of the splits' candidate buffers (cand_count[s, q]
// entries each, at most kMaxSplits x kMaxCandCap) -> the k smallest (value, index), sorted, |q|^2
// added, clamped at 0. Each buffer holds its split's k smallest among others, so the union holds
// the query's k smallest: one exact select over it gives the answer.
__device__ void merge_splits_body(const float* __restrict__ cand_val, const int* __restrict__ cand_idx,
                                  const int* __restrict__ cand_count, const float* __restrict__ qnorm, int Q, int k,
                                  int splits, int cap, float* __restrict__ out_dist, int* __restrict__ out_idx,
                                  const unsigned* __restrict__ bound_keys) {
    constexpr int kSlots = kMaxSplits * kMaxCandCap / kMergeThreads;  // per thread
    constexpr int kPerSplit = kMaxCandCap / kMergeThreads;
    static_assert(kMergeThreads == kRadixBins && kSlots <= 32, "one histogram bin per thread, a 32-bit slot mask");
    __shared__ unsigned hist[kRadixBins];
    __shared__ float stage_val[kStagingCap];
    __shared__ int stage_idx[kStagingCap];
    __shared__ unsigned scratch[kMergeThreads / 32];
    __shared__ int pick[3];
    const int q = blockIdx.x;

    // slot j = split (j / kPerSplit), entry threadIdx.x + kMergeThreads (j % kPerSplit) of its buffer
    unsigned keys[kSlots], valid = 0u;
#pragma unroll
    for (int j = 0; j < kSlots; ++j) {
        const int s = j / kPerSplit, o = threadIdx.x + kMergeThreads * (j % kPerSplit);
        keys[j] = 0xffffffffu;
        if (s < splits && o < cand_count[(size_t)s * Q + q]) {
            keys[j] = order_key(cand_val[((size_t)s * Q + q) * cap + o]);
            valid |= 1u << j;
        }
    }
#if PROTOSPECT_TOPK_SHARED_BOUND >= 2
    shared_bound_merge_filter(keys, valid, bound_keys, q, k, scratch);  // proto_topk_compare.cuh
#else
    (void)bound_keys;
#endif
    int need = k;
    const unsigned kth = block_kth(keys, valid, need, hist, scratch, pick);

    // ties at the k-th value: keep the `need` smallest indices among them (rare; a second select)
    unsigned tie_idx[kSlots], tie = 0u;
#pragma unroll
    for (int j = 0; j < kSlots; ++j) {
        tie_idx[j] = 0u;
        if (((valid >> j) & 1u) && keys[j] == kth) {
            const int s = j / kPerSplit, o = threadIdx.x + kMergeThreads * (j % kPerSplit);
            tie_idx[j] = (unsigned)cand_idx[((size_t)s * Q + q) * cap + o];
            tie |= 1u << j;
        }
    }
    if (threadIdx.x == 0) pick[2] = 0;
    __syncthreads();
    if (tie) atomicAdd(&pick[2], __popc(tie));
    __syncthreads();
    const int eq = pick[2];  // entries equal to the k-th value, block-wide
    __syncthreads();
    const unsigned cut = eq > need ? block_kth(tie_idx, tie, need, hist, scratch, pick) : 0xffffffffu;

    // gather the k kept entries into the sort buffer (any order: the sort follows)
    if (threadIdx.x == 0) pick[2] = 0;
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kSlots; ++j) {
        if (!((valid >> j) & 1u) || keys[j] > kth) continue;
        const int s = j / kPerSplit, o = threadIdx.x + kMergeThreads * (j % kPerSplit);
        const int id = ((tie >> j) & 1u) ? (int)tie_idx[j] : cand_idx[((size_t)s * Q + q) * cap + o];
        if (keys[j] == kth && (unsigned)id > cut) continue;
        const int pos = atomicAdd(&pick[2], 1);
        stage_val[pos] = key_value(keys[j]);
        stage_idx[pos] = id;
    }
    __syncthreads();
    const int p = next_pow2(k < 32 ? 32 : k);  // pick[2] == k entries kept; pad for the bitonic sort
    for (int i = k + threadIdx.x; i < p; i += kMergeThreads) {
        stage_val[i] = pos_inf();
        stage_idx[i] = kSentinelIdx;
    }
    __syncthreads();
    bitonic_sort_pairs(stage_val, stage_idx, p, threadIdx.x, kMergeThreads, BlockSync());
    const float qn = qnorm[q];
    for (int i = threadIdx.x; i < k; i += kMergeThreads) {
        out_dist[(size_t)q * k + i] = fmaxf(stage_val[i] + qn, 0.f);
        if (out_idx != nullptr) out_idx[(size_t)q * k + i] = stage_idx[i] == kSentinelIdx ? -1 : stage_idx[i];
    }
}

// Merge for one-slot buffers (fp16, k = 1), one thread per query: the smallest (value, index) of
// the splits' minima. The block-per-query kernel above would spend a whole block on `splits` numbers.
__device__ void merge_min_body(const float* __restrict__ cand_val, const int* __restrict__ cand_idx,
                               const float* __restrict__ qnorm, int Q, int splits, float* __restrict__ out_dist,
                               int* __restrict__ out_idx) {
    const int q = blockIdx.x * blockDim.x + threadIdx.x;
    if (q >= Q) return;
    float v = pos_inf();
    int id = kSentinelIdx;
    for (int s = 0; s < splits; ++s) {  // coalesced: slot (s, q) of the (splits, Q, 1) buffers
        const float sv = cand_val[(size_t)s * Q + q];
        const int si = cand_idx[(size_t)s * Q + q];
        if (pair_less(sv, si, v, id)) {
            v = sv;
            id = si;
        }
    }
    out_dist[q] = fmaxf(v + qnorm[q], 0.f);
    if (out_idx != nullptr) out_idx[q] = id == kSentinelIdx ? -1 : id;
}

}  // namespace protospect_topk
