// Fused prototype distance + top-k: device code only.
//
// For Q query vectors and M prototypes (D dims, fp16 or fp32) return, per query, the k smallest
// squared L2 distances, ascending, ties broken by the smaller prototype index, and those indices,
// without ever writing the Q x M distance matrix.
//
// This header has no host code and includes only <cuda_fp16.h> and <mma.h>, so the very same
// text compiles with nvcc (proto_topk.cu: C launcher, torch extension) and with NVRTC
// (launcher.py: torch-free runtime). Kernels are extern "C" so both paths find them by name.
//
// Algorithm (one block = kBlockQ queries x one contiguous segment of the bank):
//   1. rank prototypes by  s(q, m) = |m|^2 - 2 q.m  (|q|^2 is constant per query, added at the end);
//      |m|^2 comes precomputed per bank (proto_topk_bank_sqnorm_*).
//   2. stream the segment in tiles of kBlockM prototypes; each tile's dot products q.m are computed
//      kBlockD dims at a time through shared memory (fp16: WMMA tensor cores, fp32 accumulate;
//      fp32: SIMT FMA, exact fp32) into a kBlockQ x kBlockM score tile in shared memory.
//   3. per query, keep a sorted running top-k in global memory (the output itself, or a per-split
//      partial buffer: O(Q k) extra memory) plus a threshold = its k-th value in shared memory.
//      Scores below the threshold are appended to a per-query candidate buffer in shared memory;
//      when the buffer may overflow on the next tile, the owning warp sorts the buffer (bitonic, on
//      (value, index)) and merges it into the running list by rank, keeping the first k.
//      Tiles go in increasing prototype order, so a score EQUAL to the threshold always has a
//      larger index than the k-th element and can be dropped: `s < threshold` is exact for ties.
//   4. with several splits of the bank (to fill the GPU when Q is small), a second kernel merges
//      the per-split sorted lists. The last step adds |q|^2 and clamps at 0.
//
// Warp ownership: query row ql of a block belongs to warp (ql % kWarps) for its whole life, so the
// per-query state (threshold, counts, candidate buffer, running list) needs only __syncwarp; block
// barriers guard the shared tiles only.
#pragma once

#include <cuda_fp16.h>
#include <mma.h>

namespace protospect_topk {

constexpr int kBlockQ = 64;        // queries per block
constexpr int kBlockM = 64;        // prototypes per tile
constexpr int kBlockD = 32;        // feature dims per shared-memory stage
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kCandCap = 2 * kBlockM;  // candidate slots per query: a flush leaves room for one tile
constexpr int kMaxK = 256;
constexpr int kMaxSplits = 8;
constexpr int kStagingCap = kMaxK;  // one warp's copy of a running list during a merge
constexpr int kMergeCap = kMaxSplits * kMaxK;  // power of two >= splits * k (merge kernel)
constexpr int kScoreLd = kBlockM + 4;          // score tile row stride (floats); multiple of 4 for WMMA
constexpr int kSentinelIdx = 0x7fffffff;        // padding index: sorts after every real index

enum Dtype { kFloat32 = 0, kFloat16 = 1 };

static_assert(kBlockQ % kWarps == 0, "each warp owns the same number of query rows");
static_assert(kBlockM == 64, "the epilogue gives each lane two columns of a tile row");
static_assert((kCandCap & (kCandCap - 1)) == 0 && (kMergeCap & (kMergeCap - 1)) == 0, "bitonic sizes");
static_assert(kCandCap >= 32 && kCandCap >= 2 * kBlockM, "a flush sorts >= 32 slots and leaves room for a tile");

// ---- per-dtype tile geometry ------------------------------------------------------------------

template <typename T> struct TileGeometry;
template <> struct TileGeometry<__half> {
    static constexpr int kLd = kBlockD + 8;  // halves; WMMA needs a multiple of 8, pad dodges bank conflicts
};
template <> struct TileGeometry<float> {
    static constexpr int kLd = kBlockD + 1;  // floats; odd stride = conflict-free column reads
};

__host__ __device__ constexpr unsigned align_up(unsigned x, unsigned a) { return (x + a - 1) / a * a; }

// Dynamic shared-memory layout of the partial kernel (byte offsets, each region 128-byte aligned).
template <typename T> struct SmemLayout {
    static constexpr unsigned kTileA = 0;
    static constexpr unsigned kTileB = align_up(kTileA + kBlockQ * TileGeometry<T>::kLd * sizeof(T), 128);
    static constexpr unsigned kScores = align_up(kTileB + kBlockM * TileGeometry<T>::kLd * sizeof(T), 128);
    static constexpr unsigned kCandVal = align_up(kScores + kBlockQ * kScoreLd * 4, 128);
    static constexpr unsigned kCandIdx = align_up(kCandVal + kBlockQ * kCandCap * 4, 128);
    static constexpr unsigned kStageVal = align_up(kCandIdx + kBlockQ * kCandCap * 4, 128);
    static constexpr unsigned kStageIdx = align_up(kStageVal + kWarps * kStagingCap * 4, 128);
    static constexpr unsigned kBankNorm = align_up(kStageIdx + kWarps * kStagingCap * 4, 128);
    static constexpr unsigned kQueryNorm = align_up(kBankNorm + kBlockM * 4, 128);
    static constexpr unsigned kThreshold = align_up(kQueryNorm + kBlockQ * 4, 128);
    static constexpr unsigned kNumKept = align_up(kThreshold + kBlockQ * 4, 128);
    static constexpr unsigned kNumCand = align_up(kNumKept + kBlockQ * 4, 128);
    static constexpr unsigned kBytes = align_up(kNumCand + kBlockQ * 4, 128);
};

// Orin (sm_87) allows 163 KiB of shared memory per block, H100 227 KiB: the partial kernel must fit the smaller.
static_assert(SmemLayout<__half>::kBytes <= 163u * 1024u && SmemLayout<float>::kBytes <= 163u * 1024u,
              "partial kernel shared memory exceeds the sm_87 per-block limit");
static_assert(kMergeCap * 8u <= 48u * 1024u, "merge kernel must fit the default 48 KiB dynamic shared memory");

// ---- small helpers ----------------------------------------------------------------------------

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
// Explicit zero: torch builds define __CUDA_NO_HALF_CONVERSIONS__, so no implicit float -> __half.
template <typename T> __device__ __forceinline__ T zero_value();
template <> __device__ __forceinline__ float zero_value<float>() { return 0.f; }
template <> __device__ __forceinline__ __half zero_value<__half>() { return __float2half(0.f); }

__device__ __forceinline__ float pos_inf() { return __int_as_float(0x7f800000); }

// Strict order on (value, index): smaller value first, then smaller index (deterministic ties).
__device__ __forceinline__ bool pair_less(float va, int ia, float vb, int ib) {
    return va < vb || (va == vb && ia < ib);
}

__device__ __forceinline__ float warp_sum(float x) {
    for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
    return x;
}

__device__ __forceinline__ int next_pow2(int x) {
    int p = 1;
    while (p < x) p <<= 1;
    return p;
}

// Bitonic sort of n (power of two) (value, index) pairs in shared memory, ascending.
// `lane`/`width` is this thread's rank among the `width` cooperating threads; `sync` is the
// barrier matching that group (__syncwarp for one warp, __syncthreads for the block).
template <typename Sync>
__device__ void bitonic_sort_pairs(float* val, int* idx, int n, int lane, int width, Sync sync) {
    for (int size = 2; size <= n; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int t = lane; t < (n >> 1); t += width) {
                const int i = 2 * t - (t & (stride - 1));  // lower element of the t-th pair
                const int j = i + stride;
                const bool ascending = (i & size) == 0;
                const float vi = val[i], vj = val[j];
                const int ii = idx[i], ij = idx[j];
                const bool swap = ascending ? pair_less(vj, ij, vi, ii) : pair_less(vi, ii, vj, ij);
                if (swap) {
                    val[i] = vj; val[j] = vi;
                    idx[i] = ij; idx[j] = ii;
                }
            }
            sync();
        }
    }
}

struct WarpSync { __device__ void operator()() const { __syncwarp(); } };
struct BlockSync { __device__ void operator()() const { __syncthreads(); } };

// ---- prototype squared norms (once per bank) --------------------------------------------------

template <typename T>
__device__ void bank_sqnorm_body(const T* __restrict__ bank, int M, int D, float* __restrict__ out) {
    const int warps_per_block = blockDim.x >> 5;
    const int row = blockIdx.x * warps_per_block + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= M) return;
    const T* p = bank + (size_t)row * D;
    float acc = 0.f;
    for (int d = lane; d < D; d += 32) {
        const float x = to_float(p[d]);
        acc = fmaf(x, x, acc);
    }
    acc = warp_sum(acc);
    if (lane == 0) out[row] = acc;
}

// ---- dot-product tile: scores[ql][c] = q[q0+ql] . bank[m0+c] ----------------------------------

// Shared-memory tile load: rows [row0, row0+rows_valid) x dims [d0, d0+kBlockD) of a row-major
// (rows x D) matrix into dst[row][d] with leading dimension Ld; everything out of range is zero,
// so partial tiles and odd D need no special case in the math.
template <typename T, int kRows, int Ld>
__device__ __forceinline__ void load_tile(T* dst, const T* __restrict__ src, int row0, int rows_valid,
                                          int d0, int D, bool vec16) {
    constexpr int kVec = 16 / sizeof(T);          // elements per 16-byte vector
    constexpr int kChunksPerRow = kBlockD / kVec;
    if (vec16) {  // D % kVec == 0 and 16-byte aligned base: a whole vector is in or out of range
        for (int c = threadIdx.x; c < kRows * kChunksPerRow; c += kThreads) {
            const int r = c / kChunksPerRow;
            const int d = (c % kChunksPerRow) * kVec;
            uint4 v = make_uint4(0u, 0u, 0u, 0u);
            if (r < rows_valid && d0 + d < D)
                v = *reinterpret_cast<const uint4*>(src + (size_t)(row0 + r) * D + d0 + d);
            // Ld * sizeof(T) is a multiple of 16 for __half (40 * 2 = 80); the float path uses
            // the scalar branch below for its odd stride, so this store stays aligned.
            *reinterpret_cast<uint4*>(dst + r * Ld + d) = v;
        }
    } else {
        for (int e = threadIdx.x; e < kRows * kBlockD; e += kThreads) {
            const int r = e / kBlockD;
            const int d = e % kBlockD;
            T v = zero_value<T>();
            if (r < rows_valid && d0 + d < D) v = src[(size_t)(row0 + r) * D + d0 + d];
            dst[r * Ld + d] = v;
        }
    }
}

template <typename T> struct TileDot;

// fp16: WMMA 16x16x16 on tensor cores, fp32 accumulation. Warp w owns the 32x32 quarter
// (rows 32*(w/2), cols 32*(w%2)) of the 64x64 tile as 2x2 fragments.
template <> struct TileDot<__half> {
    static __device__ void run(const __half* __restrict__ queries, const __half* __restrict__ bank, int q0,
                               int nq, int m0, int nm, int D, bool vec16, __half* sA, __half* sB,
                               float* scores) {
        using namespace nvcuda;
        constexpr int Ld = TileGeometry<__half>::kLd;
        const int warp = threadIdx.x >> 5;
        const int wr = (warp >> 1) * 32;
        const int wc = (warp & 1) * 32;
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
        for (int i = 0; i < 2; ++i)
            for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);

        for (int d0 = 0; d0 < D; d0 += kBlockD) {
            load_tile<__half, kBlockQ, Ld>(sA, queries, q0, nq, d0, D, vec16);
            load_tile<__half, kBlockM, Ld>(sB, bank, m0, nm, d0, D, vec16);
            __syncthreads();
            for (int kk = 0; kk < kBlockD; kk += 16) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a[2];
                // bank rows are prototypes, so sB read as (dims x prototypes) is column-major
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> b[2];
                for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(a[i], sA + (wr + 16 * i) * Ld + kk, Ld);
                for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b[j], sB + (wc + 16 * j) * Ld + kk, Ld);
                for (int i = 0; i < 2; ++i)
                    for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
            }
            __syncthreads();  // before the next stage overwrites sA/sB
        }
        for (int i = 0; i < 2; ++i)
            for (int j = 0; j < 2; ++j)
                wmma::store_matrix_sync(scores + (wr + 16 * i) * kScoreLd + wc + 16 * j, acc[i][j], kScoreLd,
                                        wmma::mem_row_major);
    }
};

// fp32: SIMT FMA (exact fp32, no TF32). Thread (ty = tid/16, tx = tid%16) owns rows ty + 8 i
// (i < 8) and columns tx + 16 j (j < 4): interleaved so shared reads are broadcast/conflict-free.
template <> struct TileDot<float> {
    static __device__ void run(const float* __restrict__ queries, const float* __restrict__ bank, int q0,
                               int nq, int m0, int nm, int D, bool /*vec16*/, float* sA, float* sB,
                               float* scores) {
        constexpr int Ld = TileGeometry<float>::kLd;
        static_assert(kThreads == 128 && kBlockQ == 64 && kBlockM == 64, "thread->output mapping below");
        const int ty = threadIdx.x >> 4;
        const int tx = threadIdx.x & 15;
        float acc[8][4];
        for (int i = 0; i < 8; ++i)
            for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;

        for (int d0 = 0; d0 < D; d0 += kBlockD) {
            load_tile<float, kBlockQ, Ld>(sA, queries, q0, nq, d0, D, false);
            load_tile<float, kBlockM, Ld>(sB, bank, m0, nm, d0, D, false);
            __syncthreads();
#pragma unroll 4
            for (int kk = 0; kk < kBlockD; ++kk) {
                float a[8], b[4];
                for (int i = 0; i < 8; ++i) a[i] = sA[(ty + 8 * i) * Ld + kk];
                for (int j = 0; j < 4; ++j) b[j] = sB[(tx + 16 * j) * Ld + kk];
                for (int i = 0; i < 8; ++i)
                    for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
            }
            __syncthreads();
        }
        for (int i = 0; i < 8; ++i)
            for (int j = 0; j < 4; ++j) scores[(ty + 8 * i) * kScoreLd + tx + 16 * j] = acc[i][j];
    }
};

// ---- running top-k per query ------------------------------------------------------------------

// Number of entries of the sorted pairs (val, idx)[0, n) that order before (v, id): a lower bound.
__device__ __forceinline__ int count_before(const float* val, const int* idx, int n, float v, int id) {
    int lo = 0, hi = n;
    while (lo < hi) {
        const int mid = (lo + hi) >> 1;
        if (pair_less(val[mid], idx[mid], v, id))
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

// Merge query row ql's candidate buffer (cand_*, this row's kCandCap slots) into its sorted running
// list (list_*, global). Called by the whole owning warp; afterwards num_kept = min(k, old + new),
// the buffer is empty and the threshold is the k-th value once k entries exist (+inf before).
//   1. bitonic-sort the candidates in place (padded to a power of two with (+inf, sentinel));
//   2. copy the running list to this warp's staging area (the list is rewritten in place);
//   3. merge by rank: an element's place in the union is its place in its own sorted list plus the
//      number of entries of the other list ordering before it. Candidate indices never repeat a
//      list index (each prototype is seen once per split), so the places form a permutation.
__device__ void flush_candidates(int ql, int k, int lane, float* list_val, int* list_idx, float* cand_val,
                                 int* cand_idx, float* old_val, int* old_idx, float* threshold, int* num_kept,
                                 int* num_cand) {
    const int n_old = num_kept[ql];
    const int n_new = num_cand[ql];
    const int n = next_pow2(n_new < 32 ? 32 : n_new);  // <= kCandCap
    for (int i = n_new + lane; i < n; i += 32) {
        cand_val[i] = pos_inf();
        cand_idx[i] = kSentinelIdx;
    }
    __syncwarp();
    bitonic_sort_pairs(cand_val, cand_idx, n, lane, 32, WarpSync());
    for (int i = lane; i < n_old; i += 32) {
        old_val[i] = list_val[i];
        old_idx[i] = list_idx[i];
    }
    __syncwarp();
    const int keep = min(k, n_old + n_new);
    for (int j = lane; j < n_old; j += 32) {
        const float v = old_val[j];
        const int id = old_idx[j];
        const int pos = j + count_before(cand_val, cand_idx, n_new, v, id);
        if (pos < keep) {
            list_val[pos] = v;
            list_idx[pos] = id;
            if (pos == k - 1) threshold[ql] = v;
        }
    }
    for (int j = lane; j < n_new; j += 32) {
        const float v = cand_val[j];
        const int id = cand_idx[j];
        const int pos = j + count_before(old_val, old_idx, n_old, v, id);
        if (pos < keep) {
            list_val[pos] = v;
            list_idx[pos] = id;
            if (pos == k - 1) threshold[ql] = v;
        }
    }
    __syncwarp();  // list, threshold and staging complete for the whole warp
    if (lane == 0) {
        num_kept[ql] = keep;
        num_cand[ql] = 0;
        if (keep < k) threshold[ql] = pos_inf();  // (keep == k: set above by the lane that placed entry k-1)
    }
    __syncwarp();
}

// One block: queries [q0, q0 + kBlockQ) against prototypes [m_begin, m_end) of split blockIdx.y.
// The sorted running lists live in list_val/list_idx + split * Q * k (row q: offset q * k).
// finalize != 0 (single split): add |q|^2, clamp at 0 and turn padding into index -1 in place.
// qnorm_out (may be null): |q|^2 per query, written by split 0 for the merge kernel.
// debug_scores (may be null): the full Q x M matrix of ranking scores |m|^2 - 2 q.m, for debugging.
template <typename T>
__device__ void partial_topk_body(const T* __restrict__ queries, const T* __restrict__ bank,
                                  const float* __restrict__ bank_sqnorm, int Q, int M, int D, int k,
                                  int seg_len, float* list_val, int* list_idx, float* qnorm_out, int finalize,
                                  float* debug_scores) {
    using L = SmemLayout<T>;
    extern __shared__ __align__(128) unsigned char smem[];
    T* sA = reinterpret_cast<T*>(smem + L::kTileA);
    T* sB = reinterpret_cast<T*>(smem + L::kTileB);
    float* scores = reinterpret_cast<float*>(smem + L::kScores);
    float* cand_val = reinterpret_cast<float*>(smem + L::kCandVal);
    int* cand_idx = reinterpret_cast<int*>(smem + L::kCandIdx);
    float* bn = reinterpret_cast<float*>(smem + L::kBankNorm);
    float* qn = reinterpret_cast<float*>(smem + L::kQueryNorm);
    float* threshold = reinterpret_cast<float*>(smem + L::kThreshold);
    int* num_kept = reinterpret_cast<int*>(smem + L::kNumKept);
    int* num_cand = reinterpret_cast<int*>(smem + L::kNumCand);

    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    float* stage_val = reinterpret_cast<float*>(smem + L::kStageVal) + warp * kStagingCap;
    int* stage_idx = reinterpret_cast<int*>(smem + L::kStageIdx) + warp * kStagingCap;

    const int q0 = blockIdx.x * kBlockQ;
    const int nq = min(kBlockQ, Q - q0);
    const int split = blockIdx.y;
    const int m_begin = split * seg_len;
    const int m_end = min(M, m_begin + seg_len);
    list_val += (size_t)split * Q * k;
    list_idx += (size_t)split * Q * k;
    // 16-byte vector loads need every row start aligned: D a multiple of the vector and aligned bases
    const bool vec16 = sizeof(T) == 2 && (D % 8) == 0 && ((reinterpret_cast<size_t>(queries) & 15) == 0) &&
                       ((reinterpret_cast<size_t>(bank) & 15) == 0);

    // Per-query state and |q|^2, each row by its owning warp.
    for (int ql = warp; ql < kBlockQ; ql += kWarps) {
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
            num_kept[ql] = 0;
            num_cand[ql] = 0;
            if (qnorm_out != nullptr && split == 0 && ql < nq) qnorm_out[q0 + ql] = acc;
        }
    }
    __syncwarp();

    for (int m0 = m_begin; m0 < m_end; m0 += kBlockM) {
        const int nm = min(kBlockM, m_end - m0);
        if (threadIdx.x < kBlockM) bn[threadIdx.x] = threadIdx.x < nm ? bank_sqnorm[m0 + threadIdx.x] : pos_inf();
        TileDot<T>::run(queries, bank, q0, nq, m0, nm, D, vec16, sA, sB, scores);
        __syncthreads();  // scores and bn complete

        for (int ql = warp; ql < nq; ql += kWarps) {
            const float thr = threshold[ql];
            const bool filling = num_kept[ql] < k;  // list not full yet: accept everything
            int base = num_cand[ql];
            for (int half = 0; half < 2; ++half) {
                const int c = lane + 32 * half;
                float s = bn[c] - 2.f * scores[ql * kScoreLd + c];
                if (s != s) s = pos_inf();  // NaN (bad input) ranks last instead of breaking the sort
                if (debug_scores != nullptr && c < nm) debug_scores[(size_t)(q0 + ql) * M + m0 + c] = s;
                const bool pass = c < nm && (filling || s < thr);
                const unsigned mask = __ballot_sync(0xffffffffu, pass);
                if (pass) {
                    const int slot = base + __popc(mask & ((1u << lane) - 1u));
                    cand_val[ql * kCandCap + slot] = s;
                    cand_idx[ql * kCandCap + slot] = m0 + c;
                }
                base += __popc(mask);
            }
            __syncwarp();
            if (lane == 0) num_cand[ql] = base;
            __syncwarp();
            if (base > kCandCap - kBlockM)  // the next tile might not fit: merge now
                flush_candidates(ql, k, lane, list_val + (size_t)(q0 + ql) * k, list_idx + (size_t)(q0 + ql) * k,
                                 cand_val + ql * kCandCap, cand_idx + ql * kCandCap, stage_val, stage_idx, threshold,
                                 num_kept, num_cand);
        }
        __syncthreads();  // the next tile rewrites scores and bn
    }

    for (int ql = warp; ql < nq; ql += kWarps) {
        float* lv = list_val + (size_t)(q0 + ql) * k;
        int* li = list_idx + (size_t)(q0 + ql) * k;
        if (num_cand[ql] > 0)
            flush_candidates(ql, k, lane, lv, li, cand_val + ql * kCandCap, cand_idx + ql * kCandCap, stage_val,
                             stage_idx, threshold, num_kept, num_cand);
        const int kept = num_kept[ql];
        for (int i = lane; i < k; i += 32) {
            float v = i < kept ? lv[i] : pos_inf();  // a split shorter than k is padded
            int id = i < kept ? li[i] : kSentinelIdx;
            if (finalize) {
                v = fmaxf(v + qn[ql], 0.f);  // the GEMM form can dip below 0 by rounding
                if (id == kSentinelIdx) id = -1;
            }
            lv[i] = v;
            li[i] = id;
        }
    }
}

// Merge `splits` sorted partial lists per query (one block per query), add |q|^2, clamp at 0.
__device__ void merge_splits_body(const float* __restrict__ part_val, const int* __restrict__ part_idx,
                                  const float* __restrict__ qnorm, int Q, int k, int splits, float* __restrict__ out_dist,
                                  int* __restrict__ out_idx) {
    extern __shared__ __align__(128) unsigned char smem[];
    const int q = blockIdx.x;
    const int total = splits * k;  // <= kMergeCap
    const int n = next_pow2(total);
    float* val = reinterpret_cast<float*>(smem);
    int* idx = reinterpret_cast<int*>(smem + n * sizeof(float));
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float v = pos_inf();
        int id = kSentinelIdx;
        if (i < total) {
            const int s = i / k;
            const size_t off = ((size_t)s * Q + q) * k + (i % k);
            v = part_val[off];
            id = part_idx[off];
        }
        val[i] = v;
        idx[i] = id;
    }
    __syncthreads();
    bitonic_sort_pairs(val, idx, n, threadIdx.x, blockDim.x, BlockSync());
    const float qn = qnorm[q];
    for (int i = threadIdx.x; i < k; i += blockDim.x) {
        out_dist[(size_t)q * k + i] = fmaxf(val[i] + qn, 0.f);
        if (out_idx != nullptr) out_idx[(size_t)q * k + i] = idx[i] == kSentinelIdx ? -1 : idx[i];
    }
}

}  // namespace protospect_topk

// ---- entry points (C names: the launcher, the torch extension and NVRTC all look these up) -----

// Numbers the hosts need (read by launcher.py through cuModuleGetGlobal): keep in sync by construction.
// Block form: `extern "C" __device__ int x[] = ...` would leave nvcc's host shadow undefined at link time.
extern "C" {
__device__ int proto_topk_config[8] = {
    protospect_topk::kBlockQ,
    protospect_topk::kBlockM,
    protospect_topk::kThreads,
    (int)protospect_topk::SmemLayout<float>::kBytes,
    (int)protospect_topk::SmemLayout<__half>::kBytes,
    protospect_topk::kMaxK,
    protospect_topk::kMaxSplits,
    protospect_topk::kMergeCap,
};
}

extern "C" __global__ void __launch_bounds__(256) proto_topk_bank_sqnorm_f32(const float* bank, int M, int D, float* out) {
    protospect_topk::bank_sqnorm_body(bank, M, D, out);
}
extern "C" __global__ void __launch_bounds__(256) proto_topk_bank_sqnorm_f16(const __half* bank, int M, int D, float* out) {
    protospect_topk::bank_sqnorm_body(bank, M, D, out);
}

extern "C" __global__ void __launch_bounds__(protospect_topk::kThreads)
proto_topk_partial_f32(const float* queries, const float* bank, const float* bank_sqnorm, int Q, int M, int D, int k,
                       int seg_len, float* list_val, int* list_idx, float* qnorm_out, int finalize, float* debug_scores) {
    protospect_topk::partial_topk_body<float>(queries, bank, bank_sqnorm, Q, M, D, k, seg_len, list_val, list_idx,
                                              qnorm_out, finalize, debug_scores);
}
extern "C" __global__ void __launch_bounds__(protospect_topk::kThreads)
proto_topk_partial_f16(const __half* queries, const __half* bank, const float* bank_sqnorm, int Q, int M, int D,
                       int k, int seg_len, float* list_val, int* list_idx, float* qnorm_out, int finalize,
                       float* debug_scores) {
    protospect_topk::partial_topk_body<__half>(queries, bank, bank_sqnorm, Q, M, D, k, seg_len, list_val, list_idx,
                                               qnorm_out, finalize, debug_scores);
}

extern "C" __global__ void __launch_bounds__(256)
proto_topk_merge_splits(const float* part_val, const int* part_idx, const float* qnorm, int Q, int k, int splits,
                        float* out_dist, int* out_idx) {
    protospect_topk::merge_splits_body(part_val, part_idx, qnorm, Q, k, splits, out_dist, out_idx);
}
