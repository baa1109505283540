// The partial kernels of the fused prototype top-k: one block = a tile of queries x one split of the bank.
// fp32: SIMT tiles, scores through shared memory. fp16: tensor-core tiles (mma.sync, or wgmma for k = 1 on
// sm_90a), scores in the accumulator registers, appended to the candidate buffers or (k = 1) kept as a
// running minimum.
#pragma once

#include "proto_topk_select.cuh"

namespace protospect_topk {

// fp32 block: queries [q0, q0 + kBlockQ) against prototypes [m_begin, m_end) of split blockIdx.y.
// cand_val/cand_idx: the candidate buffers, (splits, Q, cap) with cap = cand_cap(k); with several
// splits they are the blocks' result: cand_count (splits, Q) says how many entries each holds.
// out_val/out_idx: the output (finalize != 0: single split); out_idx may be null (no indices).
// qnorm_out (may be null): |q|^2 per query, written by split 0 for the merge kernel.
// debug_scores (may be null): the full Q x M matrix of ranking scores |m|^2 - 2 q.m, for debugging.
__device__ void partial_topk_f32_body(const float* __restrict__ queries, const float* __restrict__ bank,
                                      const float* __restrict__ bank_sqnorm, int Q, int M, int D, int k, int seg_len,
                                      float* cand_val, int* cand_idx, int* cand_count, float* out_val, int* out_idx,
                                      float* qnorm_out, int finalize, float* debug_scores) {
    using L = SmemLayoutF32;
    extern __shared__ __align__(1024) unsigned char smem[];
    float* tiles = reinterpret_cast<float*>(smem + L::kTileA);
    float* scores = reinterpret_cast<float*>(smem + L::kScores);
    float* bn = reinterpret_cast<float*>(smem + L::kBankNorm);
    float* qn = reinterpret_cast<float*>(smem + L::kQueryNorm);
    float* threshold = reinterpret_cast<float*>(smem + L::kThreshold);
    int* num_cand = reinterpret_cast<int*>(smem + L::kNumCand);

    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    float* stage_val = reinterpret_cast<float*>(smem + L::kStageVal) + warp * kStagingCap;
    int* stage_idx = reinterpret_cast<int*>(smem + L::kStageIdx) + warp * kStagingCap;
    unsigned* hist = reinterpret_cast<unsigned*>(smem + L::kHist) + warp * kRadixBins;

    const int q0 = blockIdx.x * kBlockQ;
    const int nq = min(kBlockQ, Q - q0);
    const int split = blockIdx.y;
    const int m_begin = split * seg_len;
    const int m_end = min(M, m_begin + seg_len);
    const int cap = cand_cap(k);
    cand_val += ((size_t)split * Q + q0) * cap;  // row ql's buffer: + ql * cap
    cand_idx += ((size_t)split * Q + q0) * cap;

    init_rows(queries, q0, nq, kBlockQ, D, kWarps, split, qn, threshold, num_cand, qnorm_out);
    __syncwarp();

    for (int m0 = m_begin; m0 < m_end; m0 += kBlockM) {
        const int nm = min(kBlockM, m_end - m0);
        if (threadIdx.x < kBlockM) bn[threadIdx.x] = threadIdx.x < nm ? bank_sqnorm[m0 + threadIdx.x] : pos_inf();
        TileDotF32::run(queries, bank, q0, nq, m0, nm, D, tiles, scores);
        __syncthreads();  // scores and bn complete

        for (int ql = warp; ql < nq; ql += kWarps) {
            float* cv = cand_val + (size_t)ql * cap;
            int* ci = cand_idx + (size_t)ql * cap;
            int n = num_cand[ql];
            if (n + kBlockM > cap) {  // this tile might not fit: keep the k smallest (n > cap - kBlockM >= k)
                const float kth = select_any(k, n, lane, cv, ci, hist);
                n = k;
                if (lane == 0) {
                    threshold[ql] = kth;
                    num_cand[ql] = k;
                }
                __syncwarp();
            }
            const float thr = threshold[ql];  // +inf until k entries have been kept: take everything
            for (int half = 0; half < 2; ++half) {
                const int c = lane + 32 * half;
                float s = bn[c] - 2.f * scores[ql * kScoreLd + c];
                if (s != s) s = pos_inf();  // NaN (bad input) ranks last instead of breaking the sort
                if (debug_scores != nullptr && c < nm) debug_scores[(size_t)(q0 + ql) * M + m0 + c] = s;
                const bool pass = c < nm && (s < thr || thr == pos_inf());
                const unsigned mask = __ballot_sync(0xffffffffu, pass);
                if (pass) {
                    const int slot = n + __popc(mask & ((1u << lane) - 1u));
                    cv[slot] = s;
                    ci[slot] = m0 + c;
                }
                n += __popc(mask);
            }
            __syncwarp();  // every lane has read num_cand[ql] and threshold[ql] before lane 0 rewrites them
            if (lane == 0) num_cand[ql] = n;
            __syncwarp();
        }
        __syncthreads();  // the next tile rewrites scores and bn
    }

    for (int ql = warp; ql < nq; ql += kWarps)
        finish_row(q0 + ql, Q, k, num_cand[ql], lane, cand_val + (size_t)ql * cap, cand_idx + (size_t)ql * cap, qn[ql],
                   split, finalize, hist, stage_val, stage_idx, out_val, out_idx, cand_count);
}

// ---- fp16 partial kernel: mma.sync / wgmma tensor cores, scores in registers (sm_80+) -------------

// The default build has no shared bound (the comparison build's SharedBound is in proto_topk_compare.cuh):
// every member is a constant or does nothing, and `share` below is false at compile time.
struct NoSharedBound {
    __device__ __forceinline__ NoSharedBound(unsigned char*, unsigned*, int, int) {}
    __device__ __forceinline__ void init() const {}
    __device__ __forceinline__ float value(int) const { return pos_inf(); }
    template <typename Frag>
    __device__ __forceinline__ void row_atoms(const float (&)[Frag::kI][Frag::kJ][4], int, int, int, int, int, bool,
                                              int) const {}
    __device__ __forceinline__ void publish(int, int, int, int) const {}
};
#if PROTOSPECT_TOPK_SHARED_BOUND
using BoundState = SharedBound;
#else
using BoundState = NoSharedBound;
#endif

// Row (i, h) of this thread's accumulators becomes its scores s = |m|^2 - 2 q.m (in place; NaN -> +inf),
// also written to debug_scores when given. bnv: the columns' |m|^2 where the caller holds them.
template <typename Frag, bool kHoldNorms, int kNormJ>
__device__ __forceinline__ void row_scores(float (&acc)[Frag::kI][Frag::kJ][4], int i, int h, int col0, int m_end,
                                           const float (&bnv)[kNormJ][2], const float* __restrict__ bank_sqnorm,
                                           float* debug_scores, int M, int q, bool row_ok) {
#pragma unroll
    for (int j = 0; j < Frag::kJ; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {  // the row's scores replace its accumulators
            const int c = col0 + 8 * j + e;
            const float bn = kHoldNorms ? bnv[kHoldNorms ? j : 0][e] : (c < m_end ? __ldg(bank_sqnorm + c) : pos_inf());
            float v = bn - 2.f * acc[i][j][2 * h + e];
            if (v != v) v = pos_inf();  // NaN (bad input) ranks last instead of breaking the sort
            acc[i][j][2 * h + e] = v;
            if (debug_scores != nullptr && row_ok && c < m_end) debug_scores[(size_t)q * M + c] = v;
        }
}

// k = 1: the running (value, index) minimum of row (i, h). Increasing columns: the strict pair order keeps the
// smallest index on ties.
template <typename Frag>
__device__ __forceinline__ void row_min(const float (&acc)[Frag::kI][Frag::kJ][4], int i, int h, int col0, int m_end,
                                        float& best_v, int& best_i) {
#pragma unroll
    for (int j = 0; j < Frag::kJ; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int m = col0 + 8 * j + e;
            if (m < m_end && pair_less(acc[i][j][2 * h + e], m, best_v, best_i)) {
                best_v = acc[i][j][2 * h + e];
                best_i = m;
            }
        }
}

// Filling (the row's threshold still +inf): every valid score of row (i, h) is kept, at its column's slot after
// the row's count (a multiple of the tile, so even: float2 stores); the compaction phase adds the tile's width.
// base: the slot of the tile's first column (the row's buffer start + its count).
template <typename Frag>
__device__ __forceinline__ void row_fill(const float (&acc)[Frag::kI][Frag::kJ][4], int i, int h, int col0, int m0,
                                         int m_end, size_t base, float* cv, int* ci) {
#pragma unroll
    for (int j = 0; j < Frag::kJ; ++j) {
        const int m = col0 + 8 * j;
        const size_t at = base + (m - m0);
        if (m + 1 < m_end) {
            *reinterpret_cast<float2*>(cv + at) = make_float2(acc[i][j][2 * h], acc[i][j][2 * h + 1]);
            *reinterpret_cast<int2*>(ci + at) = make_int2(m, m + 1);
        } else if (m < m_end) {
            cv[at] = acc[i][j][2 * h];
            ci[at] = m;
        }
    }
}

// Row (i, h)'s scores below the threshold `thr` (and, with `share`, at or below the shared bound `bd`: ties
// kept) are appended to the row's buffer cv/ci, in any order: the 4 lanes of a quad share the row, and one
// shared atomic per quad (on *count) reserves their slots. Called by all 4 lanes of every quad.
template <typename Frag>
__device__ __forceinline__ void row_append(const float (&acc)[Frag::kI][Frag::kJ][4], int i, int h, int col0,
                                           int m_end, bool row_ok, float thr, bool share, float bd, int lane, int t4,
                                           int* count, float* cv, int* ci) {
    static_assert(2 * Frag::kJ <= 32, "one pass bit per value of a row");
    unsigned pass = 0u;
#pragma unroll
    for (int j = 0; j < Frag::kJ; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e)
            if (row_ok && col0 + 8 * j + e < m_end && acc[i][j][2 * h + e] < thr) {
                if (!share || acc[i][j][2 * h + e] <= bd) pass |= 1u << (2 * j + e);  // (<=: ties)
            }
    const unsigned quad = 0xfu << (lane & ~3);
    const int cnt = __popc(pass);
    int incl = cnt;
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
        const int x = __shfl_up_sync(quad, incl, off, 4);
        if (t4 >= off) incl += x;
    }
    const int total = __shfl_sync(quad, incl, 3, 4);
    int base = 0;
    if (t4 == 3 && total > 0) base = atomicAdd(count, total);
    base = __shfl_sync(quad, base, 3, 4);
    if (cnt > 0) {
        int pos = base + incl - cnt;
#pragma unroll
        for (int j = 0; j < Frag::kJ; ++j)
#pragma unroll
            for (int e = 0; e < 2; ++e)
                if (pass & (1u << (2 * j + e))) {
                    cv[pos] = acc[i][j][2 * h + e];
                    ci[pos] = col0 + 8 * j + e;
                    ++pos;
                }
    }
}

// wgmma for the fp16 k = 1 kernel only: for k > 1, where the candidate traffic rather than the GEMM sets the
// pace, the mma.sync tiles measured faster on the H100 (docs/results/kernel_bench_h100.md);
// PROTOSPECT_TOPK_WGMMA_ALL builds both with wgmma, for that comparison.
#if defined(PROTOSPECT_TOPK_WGMMA_ALL)
constexpr bool kWgmmaAll = true;
#else
constexpr bool kWgmmaAll = false;
#endif

template <int kI, int kJ>
__device__ __forceinline__ void zero_acc(float (&acc)[kI][kJ][4]) {
#pragma unroll
    for (int i = 0; i < kI; ++i)
#pragma unroll
        for (int j = 0; j < kJ; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;
}

// k = 1: no minimum yet for any of this thread's rows
template <int kI>
__device__ __forceinline__ void init_best(float (&best_v)[kI][2], int (&best_i)[kI][2]) {
#pragma unroll
    for (int i = 0; i < kI; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            best_v[i][h] = pos_inf();
            best_i[i][h] = kSentinelIdx;
        }
}

// |m|^2 of a thread's columns col0 + 8 j + e (+inf past the split), held across its rows (mma.sync: 8 columns).
template <int kJ>
__device__ __forceinline__ void hold_norms(float (&bnv)[kJ][2], int col0, int m_end, const float* __restrict__ bank_sqnorm) {
#pragma unroll
    for (int j = 0; j < kJ; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int c = col0 + 8 * j + e;
            bnv[j][e] = c < m_end ? __ldg(bank_sqnorm + c) : pos_inf();
        }
}

// One 128 x 128 x 64 step of the tile's dot products from pipeline stage `stage`: wgmma (a warpgroup's 64 x 128,
// waits for its wgmma) or mma.sync (a warp's 64 x 32).
template <bool kWgmma, typename Acc>
__device__ __forceinline__ void compute_step(unsigned stage, int warp, int lane, Acc& acc) {
    if constexpr (kWgmma)
        wgmma_compute_step(stage, warp >> 2, acc);
    else
        mma_compute_step(stage, warp >> 2, warp & 3, lane, acc);
}

// k > 1, row (i, h) of a tile: its scores go to the row's candidate buffer. While the row fills (threshold and
// shared bound +inf) every valid score at its column's slot; then those below the threshold (row_append).
template <typename Frag>
__device__ __forceinline__ void row_candidates(const float (&acc)[Frag::kI][Frag::kJ][4], int i, int h,
                                               const BoundState& bnd, bool share, int ql, bool row_ok, int col0, int m0,
                                               int m_end, int cap, int lane, int t4, const float* threshold,
                                               int* num_cand, float* cand_val, int* cand_idx) {
    const float thr = threshold[ql];  // +inf until k entries have been kept: take everything
    const float bd = share ? bnd.value(ql) : pos_inf();  // the shared bound (+inf: none yet)
    if (thr == pos_inf() && (!share || bd == pos_inf())) {
        if (row_ok) row_fill<Frag>(acc, i, h, col0, m0, m_end, (size_t)ql * cap + num_cand[ql], cand_val, cand_idx);
        return;  // thr is the same for the 4 lanes of the quad: no shuffles below are skipped by some
    }
    row_append<Frag>(acc, i, h, col0, m_end, row_ok, thr, share, bd, lane, t4, num_cand + ql,
                     cand_val + (size_t)ql * cap, cand_idx + (size_t)ql * cap);
}

// Between tiles (k > 1): a row that might not fit the next tile keeps its k smallest (its owning warp selects
// them and sets the threshold to the k-th value); a filling row counts the tile's slots. The shared-bound build
// then publishes the rows' atoms and tightens their bounds. Called by every warp of the block.
__device__ __forceinline__ void compact_rows(const BoundState& bnd, bool share, bool more, int tile, int nq, int nm,
                                             int k, int cap, int warp, int lane, float* threshold, int* num_cand,
                                             float* cand_val, int* cand_idx, unsigned* hist) {
    for (int ql = warp; ql < nq; ql += kMmaWarps) {
        int n = num_cand[ql];
        const bool filling = threshold[ql] == pos_inf() && (!share || bnd.value(ql) == pos_inf());
        if (filling) n += nm;  // the tile's slots written above
        if (more && n + kMmaBlockM > cap) {  // n > cap - kMmaBlockM >= k
            const float kth = select_any(k, n, lane, cand_val + (size_t)ql * cap, cand_idx + (size_t)ql * cap, hist);
            __syncwarp();  // every lane has read num_cand[ql] and threshold[ql]
            if (lane == 0) {
                threshold[ql] = kth;
                num_cand[ql] = k;
            }
        } else if (filling) {
            __syncwarp();
            if (lane == 0) num_cand[ql] = n;
        }
        __syncwarp();
        if (share && more) bnd.publish(ql, tile, lane, k);
    }
}

// End of the k = 1 kernel: quad lanes share rows, so reduce over their columns, then over the column groups
// (mma.sync: 4 warps) through shared memory (`red`, the free pipeline region); thread ql then writes row ql's
// minimum: to the output (finalize) or to its one-slot candidate buffer per (split, query).
template <typename Frag>
__device__ __forceinline__ void finish_rows_k1(float (&best_v)[Frag::kI][2], int (&best_i)[Frag::kI][2],
                                               unsigned char* red, int warp, int t4, int row0, int q0, int nq,
                                               int Q, int split, int finalize, const float* qn, float* out_val,
                                               int* out_idx, float* cand_val, int* cand_idx, int* cand_count) {
#pragma unroll
    for (int i = 0; i < Frag::kI; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
            for (int off = 1; off < 4; off <<= 1) {
                const float ov = __shfl_xor_sync(0xffffffffu, best_v[i][h], off);
                const int oi = __shfl_xor_sync(0xffffffffu, best_i[i][h], off);
                if (pair_less(ov, oi, best_v[i][h], best_i[i][h])) {
                    best_v[i][h] = ov;
                    best_i[i][h] = oi;
                }
            }
    float* red_v = reinterpret_cast<float*>(red);  // [column group][row]
    int* red_i = reinterpret_cast<int*>(red) + Frag::kColGroups * kMmaBlockQ;
    if (t4 == 0) {
        const int cg = Frag::col_group(warp);
#pragma unroll
        for (int i = 0; i < Frag::kI; ++i)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int ql = row0 + 16 * i + 8 * h;
                red_v[cg * kMmaBlockQ + ql] = best_v[i][h];
                red_i[cg * kMmaBlockQ + ql] = best_i[i][h];
            }
    }
    __syncthreads();
    const int ql = threadIdx.x;
    if (ql < nq) {
        float v = red_v[ql];
        int id = red_i[ql];
        for (int w = 1; w < Frag::kColGroups; ++w) {
            const float ov = red_v[w * kMmaBlockQ + ql];
            const int oi = red_i[w * kMmaBlockQ + ql];
            if (pair_less(ov, oi, v, id)) {
                v = ov;
                id = oi;
            }
        }
        const int q = q0 + ql;
        if (finalize) {
            out_val[q] = fmaxf(v + qn[ql], 0.f);
            if (out_idx != nullptr) out_idx[q] = id == kSentinelIdx ? -1 : id;
        } else {  // a one-slot candidate buffer per (split, query)
            const size_t at = (size_t)split * Q + q;
            cand_val[at] = v;
            cand_idx[at] = id;
            cand_count[at] = 1;
        }
    }
}

// fp16 block: queries [q0, q0 + 128) against prototypes [m_begin, m_end) of split blockIdx.y; the
// arguments are those of partial_topk_f32_body. The tile's dot products come from wgmma where the
// build targets sm_90a (Frag = FragWgmma), else from mma.sync (FragMmaSync); Frag says which row and
// column each accumulator element is (lane g = lane/4, t4 = lane%4).
// kOne: the k = 1 specialisation (running minimum in registers), a kernel of its own
// (proto_topk_partial_f16_k1): in one kernel with the general path the register allocator spills.
template <bool kOne>
__device__ __forceinline__ void partial_topk_mma_body(const __half* __restrict__ queries, const __half* __restrict__ bank,
                                      const float* __restrict__ bank_sqnorm, int Q, int M, int D, int k, int seg_len,
                                      float* cand_val, int* cand_idx, int* cand_count, float* out_val, int* out_idx,
                                      float* qnorm_out, int finalize, float* debug_scores, unsigned* bound_keys) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    using L = SmemLayoutMma;
    // wgmma for the k = 1 kernel only (kWgmmaAll: both, for a comparison build);
    // (written in terms of kOne so that `if constexpr` below discards the other instruction's branch)
    constexpr bool kWgmma = PROTOSPECT_TOPK_WGMMA && (kOne || kWgmmaAll);
    using Frag = typename Pick<kWgmma, FragWgmma, FragMmaSync>::type;
    // the shared bound (kSharedBound build, several splits): an atom is the max over a tile row's groups of
    // 8 columns (4 lanes x kColGroups warps x kJ / 4 groups per thread = 16 in both layouts)
    static_assert(Frag::kColGroups * 4 * (Frag::kJ / 4) == kAtomWeight && Frag::kJ % 4 == 0, "16 groups of 8");
    const bool share = kSharedBound && !kOne && bound_keys != nullptr;
    // wgmma's swizzle follows address bits: the pipeline tiles must start on a 1024-byte boundary
    extern __shared__ __align__(1024) unsigned char smem[];
    const unsigned pipe = smem_addr(smem + L::kPipe);
    float* qn = reinterpret_cast<float*>(smem + L::kQueryNorm);
    float* threshold = reinterpret_cast<float*>(smem + L::kThreshold);
    int* num_cand = reinterpret_cast<int*>(smem + L::kNumCand);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t4 = lane & 3;
    const int row0 = Frag::row0(warp, g);
    unsigned* hist = reinterpret_cast<unsigned*>(smem + L::kHist) + warp * kRadixBins;

    const int q0 = blockIdx.x * kMmaBlockQ;
    const int nq = min(kMmaBlockQ, Q - q0);
    const int split = blockIdx.y;
    const int m_begin = split * seg_len;
    const int m_end = min(M, m_begin + seg_len);
    const int cap = cand_cap(k);
    if (!kOne) {
        cand_val += ((size_t)split * Q + q0) * cap;  // row ql's buffer: + ql * cap
        cand_idx += ((size_t)split * Q + q0) * cap;
    }
    const bool vec16 = (D % 8) == 0 && ((reinterpret_cast<size_t>(queries) & 15) == 0) &&
                       ((reinterpret_cast<size_t>(bank) & 15) == 0);

    init_rows(queries, q0, nq, kMmaBlockQ, D, kMmaWarps, split, qn, threshold, num_cand, qnorm_out);
    const BoundState bnd(smem, bound_keys, q0, split);
    if (share) bnd.init();
    __syncthreads();  // rows are read by every warp in the epilogue

    float acc[Frag::kI][Frag::kJ][4];
    float best_v[Frag::kI][2];  // k = 1: running minimum of this thread's rows
    int best_i[Frag::kI][2];
    init_best(best_v, best_i);

    // Loader geometry: thread tid copies 16-byte chunk (tid % 8) of rows tid / 8 + 32 r (r < 4) of
    // both tiles, every step. One flat pipeline runs over (tile, 64-dim slice) steps, so the next
    // tile's first slices load while this tile's epilogue runs.
    const int ld_row = threadIdx.x >> 3, ld_chunk = threadIdx.x & 7;
    const unsigned ld_dst = swizzle(ld_row, ld_chunk);  // + 32 r rows = + 4096 r bytes (swizzle uses r & 7)
    const __half* a_src = queries + (size_t)(q0 + ld_row) * D + ld_chunk * 8;
    const __half* b_src = bank + (size_t)(m_begin + ld_row) * D + ld_chunk * 8;
    const size_t rows32 = (size_t)32 * D;  // 32 rows further
    const int nk = (D + kMmaBlockK - 1) / kMmaBlockK;
    const int tiles = (m_end - m_begin + kMmaBlockM - 1) / kMmaBlockM;
    int ld_tile = 0, ld_k = 0, ld_stage = 0;  // the next step to load and its buffer

    auto load_next = [&]() {
        if (ld_tile < tiles) {
            const unsigned stage = pipe + ld_stage * L::kStageBytes + ld_dst;
            const int d = ld_k * kMmaBlockK + ld_chunk * 8;
            const int nm = min(kMmaBlockM, m_end - m_begin - ld_tile * kMmaBlockM);
            const __half* bt = b_src + (size_t)ld_tile * kMmaBlockM * D;
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int row = ld_row + 32 * r;
                const bool a_ok = row < nq && d < D, b_ok = row < nm && d < D;
                copy_chunk(stage + 4096u * r, a_ok ? a_src + r * rows32 + ld_k * kMmaBlockK : queries, D - d, a_ok,
                           vec16);
                copy_chunk(stage + L::kTileBytes + 4096u * r, b_ok ? bt + r * rows32 + ld_k * kMmaBlockK : bank, D - d,
                           b_ok, vec16);
            }
            if (++ld_k == nk) {
                ld_k = 0;
                ++ld_tile;
            }
            ld_stage = ld_stage + 1 == kMmaStages ? 0 : ld_stage + 1;
        }
        cp_async_commit();  // always: keeps the group count in step with the steps
    };

#pragma unroll
    for (int s = 0; s < kMmaStages - 1; ++s) load_next();
    int c_stage = 0;
    for (int tile = 0; tile < tiles; ++tile) {
        zero_acc(acc);
        for (int kstep = 0; kstep < nk; ++kstep) {
            cp_async_wait<kMmaStages - 2>();  // this step has landed (this thread's copies) ...
            if (kWgmma) fence_proxy_async();  // (wgmma reads shared memory through the async proxy)
            __syncthreads();                  // ... and everyone's; everyone is done with the previous buffer
            load_next();                      // into the buffer the previous step used
            compute_step<kWgmma>(pipe + c_stage * L::kStageBytes, warp, lane, acc);
            c_stage = c_stage + 1 == kMmaStages ? 0 : c_stage + 1;
        }

        // ---- epilogue: scores s = |m|^2 - 2 q.m of this tile, from the accumulators (in place) ----
        const int m0 = m_begin + tile * kMmaBlockM;
        const int nm = min(kMmaBlockM, m_end - m0);
        const int col0 = m0 + Frag::col0(warp, t4);  // column (j, e) = col0 + 8 j + e: computed, not held
        // |m|^2 of this thread's columns: held across its rows where there are few (mma.sync: 8), reloaded
        // (L1) per row where there are many (wgmma: 32, too many registers to hold)
        constexpr bool kHoldNorms = Frag::kJ <= 4;
        float bnv[kHoldNorms ? Frag::kJ : 1][2];
        if (kHoldNorms) hold_norms(bnv, col0, m_end, bank_sqnorm);
#pragma unroll
        for (int i = 0; i < Frag::kI; ++i)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int ql = row0 + 16 * i + 8 * h;
                const bool row_ok = ql < nq;
                row_scores<Frag, kHoldNorms>(acc, i, h, col0, m_end, bnv, bank_sqnorm, debug_scores, M, q0 + ql, row_ok);
                if (kOne) {
                    row_min<Frag>(acc, i, h, col0, m_end, best_v[i][h], best_i[i][h]);
                    continue;
                }
                if (share && tile < kBoundTiles) bnd.template row_atoms<Frag>(acc, i, h, col0, m_end, t4, row_ok, ql);
                row_candidates<Frag>(acc, i, h, bnd, share, ql, row_ok, col0, m0, m_end, cap, lane, t4, threshold,
                                     num_cand, cand_val, cand_idx);
            }
        if (kOne) continue;

        // ---- compaction: a row that might not fit the next tile keeps its k smallest ----
        __syncthreads();  // every append of this tile is in place
        const bool more = tile + 1 < tiles;  // after the last tile the buffer only has to hold what it holds
        compact_rows(bnd, share, more, tile, nq, nm, k, cap, warp, lane, threshold, num_cand, cand_val, cand_idx, hist);
        // the barrier at the top of the next step orders these updates before the next epilogue;
        // after the last tile, the one below does
    }
    cp_async_wait<0>();
    __syncthreads();  // the pipeline region is free: reuse it

    if (kOne) {
        finish_rows_k1<Frag>(best_v, best_i, smem + L::kReduce, warp, t4, row0, q0, nq, Q, split, finalize, qn, out_val,
                             out_idx, cand_val, cand_idx, cand_count);
        return;
    }

    float* stage_val = reinterpret_cast<float*>(smem + L::kStageVal) + warp * kStagingCap;
    int* stage_idx = reinterpret_cast<int*>(smem + L::kStageIdx) + warp * kStagingCap;
    for (int ql = warp; ql < nq; ql += kMmaWarps)
        finish_row(q0 + ql, Q, k, num_cand[ql], lane, cand_val + (size_t)ql * cap, cand_idx + (size_t)ql * cap, qn[ql],
                   split, finalize, hist, stage_val, stage_idx, out_val, out_idx, cand_count);
#else
    __trap();  // the fp16 kernel needs sm_80+ (mma.sync m16n8k16, ldmatrix, cp.async); the hosts check first
#endif
}

}  // namespace protospect_topk
