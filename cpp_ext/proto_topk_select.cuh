// Candidate selection of the fused prototype top-k: order keys, the warp radix select over a row's
// candidate buffer (find_cut / select_row), the final sort and the end of a block's rows.
#pragma once

#include "proto_topk_tiles.cuh"

namespace protospect_topk {

// ---- running top-k per query ------------------------------------------------------------------

// Order-preserving unsigned key of a float (negative values flipped, -0 folded onto +0).
__device__ __forceinline__ unsigned order_key(float v) {
    unsigned b = __float_as_uint(v);
    if (b == 0x80000000u) b = 0u;
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float key_value(unsigned key) {
    return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

// Radix histograms: one shared atomic per counting lane. The PROTOSPECT_TOPK_AGG_ATOMICS comparison build
// adds once per group of lanes with the same bin instead (proto_topk_compare.cuh). Called by all 32 lanes
// of a warp; `on`: this lane counts.
__device__ __forceinline__ void hist_add_aggregated(unsigned* hist, unsigned bin, bool on, bool first_pass);
__device__ __forceinline__ void hist_add(unsigned* hist, unsigned bin, bool on, bool first_pass) {
#if PROTOSPECT_TOPK_AGG_ATOMICS
    hist_add_aggregated(hist, bin, on, first_pass);
#else
    (void)first_pass;
    if (on) atomicAdd(hist + bin, 1u);
#endif
}

// One radix-select step on a warp's 256-bin histogram: the bin holding the `need`-th smallest
// entry, and how many entries lie in the bins before it. Called by the whole warp.
__device__ __forceinline__ void radix_pick(const unsigned* hist, int lane, int need, int& bin, unsigned& before) {
    const unsigned full = 0xffffffffu;
    unsigned local[8], sum = 0u;  // lane owns bins 8 lane .. 8 lane + 7 (unrolled: stays in registers)
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        local[j] = hist[8 * lane + j];
        sum += local[j];
    }
    unsigned incl = sum;
    for (int off = 1; off < 32; off <<= 1) {
        const unsigned t = __shfl_up_sync(full, incl, off);
        if (lane >= off) incl += t;
    }
    const unsigned excl = incl - sum;
    const bool mine = excl < (unsigned)need && (unsigned)need <= incl;
    int b = 0;
    unsigned bef = 0u;
    if (mine) {
        unsigned c = excl;
        bool found = false;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            if (!found && c + local[j] >= (unsigned)need) {
                b = 8 * lane + j;
                bef = c;
                found = true;
            }
            c += local[j];
        }
    }
    const int src = __ffs(__ballot_sync(full, mine)) - 1;
    bin = __shfl_sync(full, b, src);
    before = __shfl_sync(full, bef, src);
}

// Order keys of a row's n candidates, cached per lane: entry 32 j + lane in keys[j].
template <int kPerLane>
__device__ __forceinline__ void load_keys(int n, int lane, const float* cv, unsigned (&keys)[kPerLane]) {
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
        const int i = 32 * j + lane;
        keys[j] = i < n ? order_key(cv[i]) : 0xffffffffu;
    }
}

// The k-th smallest (key, index) of n entries (keys cached per lane: entry 32 j + lane in keys[j]):
// returns its key; *cut is the largest index kept among the entries with that key.
template <int kPerLane>
__device__ unsigned find_cut(int k, int n, int lane, const unsigned (&keys)[kPerLane], const int* ci, unsigned* hist,
                             unsigned* cut_out) {
    const unsigned full = 0xffffffffu;
    // Keys share their leading bits (similar distances: same sign and exponent), so the passes start at
    // the highest bit where the smallest and largest key differ: fewer passes, and no first pass that
    // piles every entry into one histogram bin.
    unsigned kmin = 0xffffffffu, kmax = 0u;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j)
        if (32 * j + lane < n) {
            kmin = min(kmin, keys[j]);
            kmax = max(kmax, keys[j]);
        }
    for (int off = 16; off > 0; off >>= 1) {
        kmin = min(kmin, __shfl_xor_sync(full, kmin, off));
        kmax = max(kmax, __shfl_xor_sync(full, kmax, off));
    }
    const unsigned diff = kmin ^ kmax;
    const int top = diff ? 31 - __clz(diff) : -1;          // highest differing bit; -1: all keys equal
    unsigned mask = top < 0 ? 0xffffffffu : ~((2u << top) - 1u);  // the bits above `top` (top = 31: none)
    unsigned prefix = kmin & mask;
    int need = k;  // rank of the wanted key among the entries matching prefix/mask
    for (int hi = top; hi >= 0; hi -= 8) {
        const int shift = hi >= 7 ? hi - 7 : 0;
        const unsigned digit = (2u << (hi - shift)) - 1u;  // up to 8 bits: hi .. shift
        for (int b = lane; b < kRadixBins; b += 32) hist[b] = 0u;
        __syncwarp();
#pragma unroll
        for (int j = 0; j < kPerLane; ++j)
            hist_add(hist, (keys[j] >> shift) & digit, 32 * j + lane < n && (keys[j] & mask) == prefix, hi == top);
        __syncwarp();
        int bin;
        unsigned before;
        radix_pick(hist, lane, need, bin, before);
        need -= (int)before;
        prefix |= (unsigned)bin << shift;
        mask |= digit << shift;
        __syncwarp();  // the histogram is cleared again by the next pass
    }
    // prefix is the k-th smallest key; `need` of the entries equal to it are kept: those with the
    // smallest indices. Usually exactly `need` entries are equal and all stay (cut = all indices).
    int eq = 0;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) eq += (32 * j + lane < n && keys[j] == prefix) ? 1 : 0;
    for (int off = 16; off > 0; off >>= 1) eq += __shfl_xor_sync(full, eq, off);
    unsigned cut = 0xffffffffu;
    if (eq > need) {  // value ties across the boundary: the need-th smallest index among them
        unsigned iprefix = 0u, imask = 0u;
        int ineed = need;
        for (int shift = 24; shift >= 0; shift -= 8) {
            for (int b = lane; b < kRadixBins; b += 32) hist[b] = 0u;
            __syncwarp();
#pragma unroll
            for (int j = 0; j < kPerLane; ++j) {
                const int i = 32 * j + lane;
                if (i < n && keys[j] == prefix) {  // (plain atomics: this pass is rare)
                    const unsigned id = (unsigned)ci[i];
                    if ((id & imask) == iprefix) atomicAdd(&hist[(id >> shift) & 255u], 1u);
                }
            }
            __syncwarp();
            int bin;
            unsigned before;
            radix_pick(hist, lane, ineed, bin, before);
            ineed -= (int)before;
            iprefix |= (unsigned)bin << shift;
            imask |= 255u << shift;
            __syncwarp();
        }
        cut = iprefix;
    }
    *cut_out = cut;
    return prefix;
}

// Keep the k smallest (value, index) entries of a row's candidate buffer (k < n <= 32 kPerLane
// entries, in any order) in place, compacted to the front in buffer order; returns the k-th smallest
// value. find_cut, then a partition keeping every smaller key and the tied keys up to the cut index.
// Called by the whole owning warp; cv/ci may be global or shared.
template <int kPerLane>
__device__ float select_row(int k, int n, int lane, float* cv, int* ci, unsigned* hist) {
    const unsigned full = 0xffffffffu, below = (1u << lane) - 1u;
    unsigned keys[kPerLane];
    load_keys(n, lane, cv, keys);
    unsigned cut;
    const unsigned prefix = find_cut(k, n, lane, keys, ci, hist, &cut);
    int ids[kPerLane];  // every index is read before any entry moves
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
        const int i = 32 * j + lane;
        ids[j] = i < n ? ci[i] : 0;
    }
    __syncwarp();
    int out = 0;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
        if (32 * j >= n) break;  // warp-uniform
        const int i = 32 * j + lane;
        const int id = ids[j];
        const bool keep = i < n && (keys[j] < prefix || (keys[j] == prefix && (unsigned)id <= cut));
        const unsigned keep_mask = __ballot_sync(full, keep);
        if (keep) {  // compacted in buffer order; positions only move down
            const int pos = out + __popc(keep_mask & below);
            cv[pos] = key_value(keys[j]);
            ci[pos] = id;
        }
        out += __popc(keep_mask);
    }
    __syncwarp();
    return key_value(prefix);
}

// select_row with a register cache sized to n (fewer registers and wasted lanes for small buffers).
constexpr int kCandPerLane = kMaxCandCap / 32;
__device__ __forceinline__ float select_any(int k, int n, int lane, float* cv, int* ci, unsigned* hist) {
    if (n <= 128) return select_row<4>(k, n, lane, cv, ci, hist);
    if (n <= 256) return select_row<8>(k, n, lane, cv, ci, hist);
    return select_row<kCandPerLane>(k, n, lane, cv, ci, hist);  // n <= kMaxCandCap
}

// Sort a row's n <= k kept candidates on (value, index) into this warp's staging area, padded to
// a power of two with (+inf, sentinel). Called by the whole owning warp.
__device__ void sort_row(int n, int lane, const float* cv, const int* ci, float* stage_val, int* stage_idx) {
    const int p = next_pow2(n < 32 ? 32 : n);  // <= kStagingCap
    for (int i = lane; i < p; i += 32) {
        const bool in = i < n;
        stage_val[i] = in ? cv[i] : pos_inf();
        stage_idx[i] = in ? ci[i] : kSentinelIdx;
    }
    __syncwarp();
    bitonic_sort_pairs(stage_val, stage_idx, p, lane, 32, WarpSync());  // ends with a __syncwarp
}

// End of a block for one query row of `n` candidates (cv/ci: the row's buffer). Single split
// (finalize): keep the k smallest, sort them, add |q|^2, clamp, pad, write the output. Several splits:
// the buffer itself goes to the merge kernel, which only needs its count (cand_count: (splits, Q)).
// Called by the whole owning warp.
__device__ void finish_row(int q, int Q, int k, int n, int lane, float* cv, int* ci, float qn, int split, int finalize,
                           unsigned* hist, float* stage_val, int* stage_idx, float* out_val, int* out_idx,
                           int* cand_count) {
    if (!finalize) {  // (cutting the buffer to k here, for a smaller merge, measured slower: see the docs)
        if (lane == 0) cand_count[(size_t)split * Q + q] = n;
        return;
    }
    if (n > k) {
        select_any(k, n, lane, cv, ci, hist);
        n = k;
    }
    sort_row(n, lane, cv, ci, stage_val, stage_idx);
    for (int i = lane; i < k; i += 32) {
        const float v = i < n ? stage_val[i] : pos_inf();  // fewer than k prototypes: padded
        const int id = i < n ? stage_idx[i] : kSentinelIdx;
        out_val[(size_t)q * k + i] = fmaxf(v + qn, 0.f);  // the GEMM form can dip below 0 by rounding
        if (out_idx != nullptr) out_idx[(size_t)q * k + i] = id == kSentinelIdx ? -1 : id;
    }
    __syncwarp();  // the staging area is reused by this warp's next row
}

// |q|^2 of the block's query rows and the per-row state, each row by warp (row % warps).
template <typename T>
__device__ void init_rows(const T* __restrict__ queries, int q0, int nq, int rows, int D, int warps, int split,
                          float* qn, float* threshold, int* num_cand, float* qnorm_out) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int ql = warp; ql < rows; ql += warps) {
        float acc = 0.f;
        if (ql < nq) {
            const T* p = queries + (size_t)(q0 + ql) * D;
            for (int d = lane; d < D; d += 32) {
                const float x = to_float(p[d]);
                acc = fmaf(x, x, acc);
            }
        }
        acc = warp_sum(acc);
        if (lane == 0) {
            qn[ql] = acc;
            threshold[ql] = pos_inf();
            num_cand[ql] = 0;
            if (qnorm_out != nullptr && split == 0 && ql < nq) qnorm_out[q0 + ql] = acc;
        }
    }
}

}  // namespace protospect_topk

// The comparison builds' device code (hist_add_aggregated, the shared bound), only when one is set.
#if PROTOSPECT_TOPK_SHARED_BOUND || PROTOSPECT_TOPK_AGG_ATOMICS
#include "proto_topk_compare.cuh"
#endif
