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
//   3. per query, append every score below the query's threshold (+inf at first) to a candidate
//      buffer of cand_cap(k) = min(2k + kBlockM, 512) slots in global memory (the workspace:
//      O(splits Q k)). When the next tile might overflow it, the owning warp compacts it: a
//      radix select (8 key bits per pass) finds the k-th smallest (value, index), a stable
//      partition keeps the k smallest in buffer order (= prototype order), threshold = the k-th
//      value. Each compaction drops >= 192 entries, so a query compacts about 1 + ln(M / k) times.
//      Only the final k are sorted (bitonic, shared memory), and only with a single split: with
//      several, the merge kernel sorts the splits' lists together anyway.
//      Tiles go in increasing prototype order, so a score EQUAL to the threshold always has a
//      larger index than the k-th entry it came from and can be dropped: `s < threshold` is exact
//      for ties. The last compaction leaves the split's k smallest (the output, sorted, or the
//      split's partial list).
//   4. with several splits of the bank (to fill the GPU when Q is small), a second kernel merges
//      the per-split lists. The last step adds |q|^2 and clamps at 0.
//
// Warp ownership: query row ql of a block belongs to warp (ql % kWarps) for its whole life, so the
// per-query state (threshold, count, candidate buffer) needs only __syncwarp; block barriers guard
// the shared tiles only. fp16 tiles are double-buffered with cp.async (sm_80+): the next 64-dim
// stage loads while tensor cores work on this one.
#pragma once

#include <cuda_fp16.h>
#include <mma.h>

namespace protospect_topk {

constexpr int kBlockQ = 64;        // queries per block
constexpr int kBlockM = 64;        // prototypes per tile
constexpr int kBlockD = 64;        // feature dims per shared-memory stage
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kMaxK = 256;
constexpr int kMaxSplits = 8;
constexpr int kBlocksPerSm = 3;  // resident partial blocks per SM the split plan aims for (H100: smem allows 3)
constexpr int kMaxCandCap = 512;  // candidate slots per query and split, at most (cand_cap)
constexpr int kStagingCap = kMaxK;         // power of two >= kMaxK: one warp's final sort buffer
constexpr int kRadixBins = 256;            // radix select: 8 key bits per pass
constexpr int kMergeCap = kMaxSplits * kMaxK;  // power of two >= splits * k (merge kernel)
constexpr int kScoreLd = kBlockM + 4;          // score tile row stride (floats); multiple of 4 for WMMA
constexpr int kSentinelIdx = 0x7fffffff;        // padding index: sorts after every real index

enum Dtype { kFloat32 = 0, kFloat16 = 1 };

static_assert(kBlockQ % kWarps == 0, "each warp owns the same number of query rows");
static_assert(kBlockM == 64, "the epilogue gives each lane two columns of a tile row");
static_assert((kStagingCap & (kStagingCap - 1)) == 0 && (kMergeCap & (kMergeCap - 1)) == 0, "bitonic sizes");
static_assert(kStagingCap >= kMaxK, "the final sort holds k entries in the staging area");

// Candidate slots per query and split: 2k + kBlockM, at most kMaxCandCap. A compaction (at more than
// cap - kBlockM entries) drops at least min(k, cap - kBlockM - k) >= 192 of them, and kBlockM slots
// stay free for the tile that follows it.
__host__ __device__ constexpr int cand_cap(int k) { return 2 * k + kBlockM < kMaxCandCap ? 2 * k + kBlockM : kMaxCandCap; }
static_assert(kMaxCandCap - kBlockM >= kMaxK, "a compacted buffer (k entries) leaves room for a tile");

// ---- per-dtype tile geometry ------------------------------------------------------------------

template <typename T> struct TileGeometry;
template <> struct TileGeometry<__half> {
    static constexpr int kLd = kBlockD + 8;  // halves; WMMA needs a multiple of 8, pad dodges bank conflicts
};
template <> struct TileGeometry<float> {
    static constexpr int kLd = kBlockD + 1;  // floats; odd stride = conflict-free column reads
};

__host__ __device__ constexpr unsigned align_up(unsigned x, unsigned a) { return (x + a - 1) / a * a; }

// fp16 tiles are double-buffered (cp.async); fp32 tiles load synchronously into one buffer.
template <typename T> struct Stages { static constexpr int kValue = 1; };
template <> struct Stages<__half> { static constexpr int kValue = 2; };

// Dynamic shared-memory layout of the partial kernel (byte offsets, each region 128-byte aligned).
template <typename T> struct SmemLayout {
    static constexpr unsigned kTileBytes = align_up(kBlockQ * TileGeometry<T>::kLd * sizeof(T), 128);  // = B tile
    static constexpr unsigned kTileA = 0;  // stage s: A at kTileA + 2 s kTileBytes, B right after it
    static constexpr unsigned kScores = 2u * Stages<T>::kValue * kTileBytes;
    static constexpr unsigned kStageVal = align_up(kScores + kBlockQ * kScoreLd * 4, 128);
    static constexpr unsigned kStageIdx = align_up(kStageVal + kWarps * kStagingCap * 4, 128);
    static constexpr unsigned kHist = align_up(kStageIdx + kWarps * kStagingCap * 4, 128);
    static constexpr unsigned kBankNorm = align_up(kHist + kWarps * kRadixBins * 4, 128);
    static constexpr unsigned kQueryNorm = align_up(kBankNorm + kBlockM * 4, 128);
    static constexpr unsigned kThreshold = align_up(kQueryNorm + kBlockQ * 4, 128);
    static constexpr unsigned kNumCand = align_up(kThreshold + kBlockQ * 4, 128);
    static constexpr unsigned kBytes = align_up(kNumCand + kBlockQ * 4, 128);
};
static_assert(kBlockQ == kBlockM, "A and B tiles share one size");

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

// cp.async (sm_80+): 16-byte global -> shared copies that run behind the tensor-core work; a copy of
// 0 source bytes zero-fills the destination (out-of-range rows and dims). Older GPUs copy directly.
__device__ __forceinline__ unsigned smem_addr(const void* p) {
    unsigned a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(valid ? 16 : 0));
#else
    *reinterpret_cast<uint4*>(dst) = valid ? *reinterpret_cast<const uint4*>(src) : make_uint4(0u, 0u, 0u, 0u);
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N> __device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

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

// load_tile's vec16 branch through cp.async: issued now, complete after cp_async_wait + a barrier.
template <int kRows, int Ld>
__device__ __forceinline__ void load_tile_async(__half* dst, const __half* __restrict__ src, int row0, int rows_valid,
                                                int d0, int D) {
    constexpr int kVec = 8;
    constexpr int kChunksPerRow = kBlockD / kVec;
    for (int c = threadIdx.x; c < kRows * kChunksPerRow; c += kThreads) {
        const int r = c / kChunksPerRow;
        const int d = (c % kChunksPerRow) * kVec;
        const bool valid = r < rows_valid && d0 + d < D;
        cp_async16(dst + r * Ld + d, valid ? src + (size_t)(row0 + r) * D + d0 + d : src, valid);
    }
}

template <typename T> struct TileDot;

// fp16: WMMA 16x16x16 on tensor cores, fp32 accumulation. Warp w owns the 32x32 quarter
// (rows 32*(w/2), cols 32*(w%2)) of the 64x64 tile as 2x2 fragments. With vec16 the 64-dim stages
// are double-buffered: stage s+1 is copied (cp.async) while stage s is multiplied.
template <> struct TileDot<__half> {
    static __device__ void mma_stage(const __half* sA, const __half* sB, int wr, int wc,
                                     nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> (&acc)[2][2]) {
        using namespace nvcuda;
        constexpr int Ld = TileGeometry<__half>::kLd;
        for (int kk = 0; kk < kBlockD; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a[2];
            // bank rows are prototypes, so sB read as (dims x prototypes) is column-major
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> b[2];
            for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(a[i], sA + (wr + 16 * i) * Ld + kk, Ld);
            for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b[j], sB + (wc + 16 * j) * Ld + kk, Ld);
            for (int i = 0; i < 2; ++i)
                for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
        }
    }

    // tiles: stage s's A at tiles + 2 s kTileElems, its B right after (SmemLayout<__half>).
    static __device__ void run(const __half* __restrict__ queries, const __half* __restrict__ bank, int q0,
                               int nq, int m0, int nm, int D, bool vec16, __half* tiles, float* scores) {
        using namespace nvcuda;
        constexpr int Ld = TileGeometry<__half>::kLd;
        constexpr int kTileElems = SmemLayout<__half>::kTileBytes / sizeof(__half);
        const int warp = threadIdx.x >> 5;
        const int wr = (warp >> 1) * 32;
        const int wc = (warp & 1) * 32;
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
        for (int i = 0; i < 2; ++i)
            for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);

        if (vec16) {
            const int stages = (D + kBlockD - 1) / kBlockD;
            load_tile_async<kBlockQ, Ld>(tiles, queries, q0, nq, 0, D);
            load_tile_async<kBlockM, Ld>(tiles + kTileElems, bank, m0, nm, 0, D);
            cp_async_commit();
            for (int st = 0; st < stages; ++st) {
                if (st + 1 < stages) {  // buffer (st+1)&1 was released by the barrier ending stage st-1
                    __half* next = tiles + 2 * kTileElems * ((st + 1) & 1);
                    load_tile_async<kBlockQ, Ld>(next, queries, q0, nq, (st + 1) * kBlockD, D);
                    load_tile_async<kBlockM, Ld>(next + kTileElems, bank, m0, nm, (st + 1) * kBlockD, D);
                    cp_async_commit();
                    cp_async_wait<1>();  // stage st has landed (this thread's copies)
                } else {
                    cp_async_wait<0>();
                }
                __syncthreads();  // ... and everyone else's
                const __half* cur = tiles + 2 * kTileElems * (st & 1);
                mma_stage(cur, cur + kTileElems, wr, wc, acc);
                __syncthreads();  // before stage st+2 overwrites this buffer
            }
        } else {
            for (int d0 = 0; d0 < D; d0 += kBlockD) {
                load_tile<__half, kBlockQ, Ld>(tiles, queries, q0, nq, d0, D, false);
                load_tile<__half, kBlockM, Ld>(tiles + kTileElems, bank, m0, nm, d0, D, false);
                __syncthreads();
                mma_stage(tiles, tiles + kTileElems, wr, wc, acc);
                __syncthreads();  // before the next stage overwrites the tiles
            }
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
                               int nq, int m0, int nm, int D, bool /*vec16*/, float* tiles, float* scores) {
        constexpr int Ld = TileGeometry<float>::kLd;
        float* sA = tiles;
        float* sB = tiles + SmemLayout<float>::kTileBytes / sizeof(float);
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

// Order-preserving unsigned key of a float (negative values flipped, -0 folded onto +0).
__device__ __forceinline__ unsigned order_key(float v) {
    unsigned b = __float_as_uint(v);
    if (b == 0x80000000u) b = 0u;
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float key_value(unsigned key) {
    return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

// Keep the k smallest (value, index) entries of a row's candidate buffer (n > k entries, in
// increasing prototype order) in place and in that order; returns the k-th smallest value.
// Radix select on order_key, 8 bits per pass on this warp's 256-bin histogram, then a stable
// partition: every key below the k-th, and of the keys equal to it the first ones (smallest
// indices) until k are kept. Called by the whole owning warp.
__device__ float select_row(int k, int n, int lane, float* cv, int* ci, unsigned* hist) {
    const unsigned full = 0xffffffffu, below = (1u << lane) - 1u;
    unsigned prefix = 0u, mask = 0u;
    int need = k;  // rank of the wanted key among the entries matching prefix/mask
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = lane; b < kRadixBins; b += 32) hist[b] = 0u;
        __syncwarp();
        for (int i = lane; i < n; i += 32) {
            const unsigned key = order_key(cv[i]);
            if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
        }
        __syncwarp();
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
        int bin = 0;
        unsigned before = 0u;
        if (mine) {
            unsigned c = excl;
            bool found = false;
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                if (!found && c + local[j] >= (unsigned)need) {
                    bin = 8 * lane + j;
                    before = c;
                    found = true;
                }
                c += local[j];
            }
        }
        const int src = __ffs(__ballot_sync(full, mine)) - 1;
        bin = __shfl_sync(full, bin, src);
        before = __shfl_sync(full, before, src);
        need -= (int)before;
        prefix |= (unsigned)bin << shift;
        mask |= 255u << shift;
        __syncwarp();  // the histogram is cleared again by the next pass
    }
    // prefix is the k-th smallest key; `need` entries equal to it are kept (the first ones).
    int out = 0, eq_seen = 0;
    for (int base = 0; base < n; base += 32) {
        const int i = base + lane;
        float v = 0.f;
        int id = 0;
        unsigned key = 0xffffffffu;
        if (i < n) {
            v = cv[i];
            id = ci[i];
            key = order_key(v);
        }
        __syncwarp();  // the whole chunk is read before any lane writes into it
        const bool eq = i < n && key == prefix;
        const unsigned eq_mask = __ballot_sync(full, eq);
        const bool keep = (i < n && key < prefix) || (eq && eq_seen + __popc(eq_mask & below) < need);
        const unsigned keep_mask = __ballot_sync(full, keep);
        if (keep) {  // positions only move down, and this chunk was read before the ballots
            const int pos = out + __popc(keep_mask & below);
            cv[pos] = v;
            ci[pos] = id;
        }
        out += __popc(keep_mask);
        eq_seen += __popc(eq_mask);
    }
    __syncwarp();
    return key_value(prefix);
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

// One block: queries [q0, q0 + kBlockQ) against prototypes [m_begin, m_end) of split blockIdx.y.
// cand_val/cand_idx: the candidate buffers, (splits, Q, cap) with cap = cand_cap(k).
// out_val/out_idx: where each query's k smallest go: row q at offset q * k of split blockIdx.y's
// (Q, k) block (the split's partial list), or of the output itself when finalize != 0 (single
// split: add |q|^2, clamp at 0, padding -> index -1). out_idx may be null (indices not wanted).
// qnorm_out (may be null): |q|^2 per query, written by split 0 for the merge kernel.
// debug_scores (may be null): the full Q x M matrix of ranking scores |m|^2 - 2 q.m, for debugging.
template <typename T>
__device__ void partial_topk_body(const T* __restrict__ queries, const T* __restrict__ bank,
                                  const float* __restrict__ bank_sqnorm, int Q, int M, int D, int k, int seg_len,
                                  float* cand_val, int* cand_idx, float* out_val, int* out_idx, float* qnorm_out,
                                  int finalize, float* debug_scores) {
    using L = SmemLayout<T>;
    extern __shared__ __align__(128) unsigned char smem[];
    T* tiles = reinterpret_cast<T*>(smem + L::kTileA);
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
    if (!finalize) {
        out_val += (size_t)split * Q * k;
        if (out_idx != nullptr) out_idx += (size_t)split * Q * k;
    }
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
            num_cand[ql] = 0;
            if (qnorm_out != nullptr && split == 0 && ql < nq) qnorm_out[q0 + ql] = acc;
        }
    }
    __syncwarp();

    for (int m0 = m_begin; m0 < m_end; m0 += kBlockM) {
        const int nm = min(kBlockM, m_end - m0);
        if (threadIdx.x < kBlockM) bn[threadIdx.x] = threadIdx.x < nm ? bank_sqnorm[m0 + threadIdx.x] : pos_inf();
        TileDot<T>::run(queries, bank, q0, nq, m0, nm, D, vec16, tiles, scores);
        __syncthreads();  // scores and bn complete

        for (int ql = warp; ql < nq; ql += kWarps) {
            float* cv = cand_val + (size_t)ql * cap;
            int* ci = cand_idx + (size_t)ql * cap;
            int n = num_cand[ql];
            if (n + kBlockM > cap) {  // this tile might not fit: keep the k smallest (n > cap - kBlockM >= k)
                const float kth = select_row(k, n, lane, cv, ci, hist);
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

    for (int ql = warp; ql < nq; ql += kWarps) {
        const int q = q0 + ql;
        float* cv = cand_val + (size_t)ql * cap;
        int* ci = cand_idx + (size_t)ql * cap;
        int kept = num_cand[ql];
        if (kept > k) {
            select_row(k, kept, lane, cv, ci, hist);
            kept = k;
        }
        if (finalize) {  // the single split's list is the output: sort it
            sort_row(kept, lane, cv, ci, stage_val, stage_idx);
            for (int i = lane; i < k; i += 32) {
                const float v = i < kept ? stage_val[i] : pos_inf();  // fewer than k prototypes: padded
                const int id = i < kept ? stage_idx[i] : kSentinelIdx;
                out_val[(size_t)q * k + i] = fmaxf(v + qn[ql], 0.f);  // the GEMM form can dip below 0 by rounding
                if (out_idx != nullptr) out_idx[(size_t)q * k + i] = id == kSentinelIdx ? -1 : id;
            }
        } else {  // a split's partial list, unsorted: the merge kernel sorts all splits together
            for (int i = lane; i < k; i += 32) {
                out_val[(size_t)q * k + i] = i < kept ? cv[i] : pos_inf();
                if (out_idx != nullptr) out_idx[(size_t)q * k + i] = i < kept ? ci[i] : kSentinelIdx;
            }
        }
        __syncwarp();  // the staging area and histogram are reused by this warp's next row
    }
}

// Merge the `splits` partial lists of each query (unsorted, k each; one block per query): sort them
// together on (value, index), keep k, add |q|^2, clamp at 0.
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
__device__ int proto_topk_config[9] = {
    protospect_topk::kBlockQ,
    protospect_topk::kBlockM,
    protospect_topk::kThreads,
    (int)protospect_topk::SmemLayout<float>::kBytes,
    (int)protospect_topk::SmemLayout<__half>::kBytes,
    protospect_topk::kMaxK,
    protospect_topk::kMaxSplits,
    protospect_topk::kMergeCap,
    protospect_topk::kBlocksPerSm,
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
                       int seg_len, float* cand_val, int* cand_idx, float* out_val, int* out_idx, float* qnorm_out,
                       int finalize, float* debug_scores) {
    protospect_topk::partial_topk_body<float>(queries, bank, bank_sqnorm, Q, M, D, k, seg_len, cand_val, cand_idx,
                                              out_val, out_idx, qnorm_out, finalize, debug_scores);
}
extern "C" __global__ void __launch_bounds__(protospect_topk::kThreads)
proto_topk_partial_f16(const __half* queries, const __half* bank, const float* bank_sqnorm, int Q, int M, int D,
                       int k, int seg_len, float* cand_val, int* cand_idx, float* out_val, int* out_idx,
                       float* qnorm_out, int finalize, float* debug_scores) {
    protospect_topk::partial_topk_body<__half>(queries, bank, bank_sqnorm, Q, M, D, k, seg_len, cand_val, cand_idx,
                                               out_val, out_idx, qnorm_out, finalize, debug_scores);
}

extern "C" __global__ void __launch_bounds__(256)
proto_topk_merge_splits(const float* part_val, const int* part_idx, const float* qnorm, int Q, int k, int splits,
                        float* out_dist, int* out_idx) {
    protospect_topk::merge_splits_body(part_val, part_idx, qnorm, Q, k, splits, out_dist, out_idx);
}
