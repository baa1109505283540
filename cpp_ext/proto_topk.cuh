// Fused prototype distance + top-k: device code only.
//
// For Q query vectors and M prototypes (D dims, fp16 or fp32) return, per query, the k smallest
// squared L2 distances, ascending, ties broken by the smaller prototype index, and those indices,
// without ever writing the Q x M distance matrix.
//
// This header has no host code and includes only <cuda_fp16.h>, so the very same text compiles
// with nvcc (proto_topk.cu: C launcher, torch extension) and with NVRTC (launcher.py: torch-free
// runtime). Kernels are extern "C" so both paths find them by name.
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

#include <cuda_fp16.h>

namespace protospect_topk {

// fp32 kernel (SIMT): 64 queries x 64 prototypes per tile, 4 warps.
constexpr int kBlockQ = 64;
constexpr int kBlockM = 64;
constexpr int kBlockD = 64;        // feature dims per shared-memory stage
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kBlocksPerSm = 3;    // resident fp32 blocks per SM the split plan aims for (smem allows 3 on H100)

// fp16 kernel (tensor cores, sm_80+): 128 x 128 tile, 8 warps as 2 (queries) x 4 (prototypes).
constexpr int kMmaBlockQ = 128;
constexpr int kMmaBlockM = 128;
constexpr int kMmaBlockK = 64;     // dims per pipeline stage (128 bytes per row)
constexpr int kMmaStages = 3;
constexpr int kMmaWarps = 8;
constexpr int kMmaThreads = kMmaWarps * 32;
constexpr int kMmaBlocksPerSm = 2;

constexpr int kMaxK = 256;
constexpr int kMaxSplits = 8;
constexpr int kCandSlack = 128;    // >= the widest tile: slots a compacted buffer keeps free
constexpr int kMaxCandCap = 512;   // candidate slots per query and split, at most (cand_cap)
constexpr int kStagingCap = kMaxK; // power of two >= kMaxK: one warp's final sort buffer
constexpr int kRadixBins = 256;    // radix select: 8 key bits per pass
constexpr int kMergeThreads = 256; // merge kernel: one block per query
constexpr int kScoreLd = kBlockM + 4;   // fp32 score tile row stride (floats)
constexpr int kSentinelIdx = 0x7fffffff; // padding index: sorts after every real index

enum Dtype { kFloat32 = 0, kFloat16 = 1 };

// PROTOSPECT_TOPK_SHARED_BOUND (-D at build time; a comparison build, off by default until timed on a GPU):
// at large k a split's own threshold filters nothing (k = 200, 512 prototypes per split: every score is
// written and merged), so the splits of a query share a bound. After each of its first kBoundTiles tiles a
// split publishes, per query, "atoms": for r = 1, 2 the max over the row's 16 groups of 8 tile columns
// (mma.sync: one thread's 8; wgmma: a quarter of a thread's 32) of each group's r-th smallest score, which
// at least kAtomWeight = 16 further scores lie at or below. Atoms are ordered keys in the workspace (bound_keys:
// Q x kBoundAtoms, reset to 0xff.. = unpublished by the host before the call); the ceil(k / 16)-th
// smallest of a query's atoms is a bound at or above its k-th score, so scores above it are dropped
// (`<=` keeps ties: exact). A stale or unpublished atom only loosens the bound. Level 2 also has the merge
// skip entries above the final bound (all atoms published by then). scripts/topk_bound_study.py
// ("same, tiles 0 and 1 only") models it: ~2300-2500 of 4096 scores written per query at k = 200, not 4096.
#ifndef PROTOSPECT_TOPK_SHARED_BOUND
#define PROTOSPECT_TOPK_SHARED_BOUND 0
#endif
constexpr bool kSharedBound = PROTOSPECT_TOPK_SHARED_BOUND != 0;
constexpr int kBoundTiles = 2;   // tiles whose atoms a split publishes
constexpr int kBoundRanks = 2;   // each thread's smallest and 2nd smallest score of the row
constexpr int kBoundAtoms = kMaxSplits * kBoundTiles * kBoundRanks;  // per query: atom (split, tile, rank)
constexpr int kAtomWeight = 16;  // groups of 8 columns in a tile row (128 / 8)

static_assert(kBlockQ % kWarps == 0 && kMmaBlockQ % kMmaWarps == 0, "each warp owns the same number of query rows");
static_assert(kBlockM == 64, "the fp32 epilogue gives each lane two columns of a tile row");
static_assert((kStagingCap & (kStagingCap - 1)) == 0, "bitonic size");
static_assert(kBoundAtoms == 32 && kMaxK <= 32 * kAtomWeight, "one atom per lane; enough atoms for any k");
static_assert(kCandSlack >= kBlockM && kCandSlack >= kMmaBlockM, "a compacted buffer leaves room for any tile");

// Candidate slots per query and split: 2k + kCandSlack, at most kMaxCandCap. A compaction (at more
// than cap - tile entries) drops at least min(k + kCandSlack - tile, cap - tile - k) >= 128 of them.
__host__ __device__ constexpr int cand_cap(int k) {
    return 2 * k + kCandSlack < kMaxCandCap ? 2 * k + kCandSlack : kMaxCandCap;
}
static_assert(kMaxCandCap - kCandSlack >= kMaxK, "a compacted buffer (k entries) leaves room for a tile");

// ---- per-dtype tile geometry (fp32 kernel) ----------------------------------------------------

__host__ __device__ constexpr unsigned align_up(unsigned x, unsigned a) { return (x + a - 1) / a * a; }

constexpr int kLd32 = kBlockD + 1;  // floats; odd stride = conflict-free column reads

// Dynamic shared-memory layout of the fp32 partial kernel (byte offsets, each region 128-byte aligned).
struct SmemLayoutF32 {
    static constexpr unsigned kTileBytes = align_up(kBlockQ * kLd32 * 4, 128);  // = B tile
    static constexpr unsigned kTileA = 0;
    static constexpr unsigned kScores = 2u * kTileBytes;
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

// Dynamic shared-memory layout of the fp16 (mma) partial kernel. The pipeline region is reused after
// the main loop for the final sort (per-warp staging) and the k = 1 cross-warp reduction.
struct SmemLayoutMma {
    static constexpr unsigned kRowBytes = kMmaBlockK * 2;                       // 128
    static constexpr unsigned kTileBytes = kMmaBlockQ * kRowBytes;              // 16 KiB (A), same for B
    static constexpr unsigned kStageBytes = 2 * kTileBytes;
    static constexpr unsigned kPipe = 0;
    static constexpr unsigned kPipeBytes = kMmaStages * kStageBytes;            // 96 KiB
    static constexpr unsigned kHist = kPipeBytes;
    static constexpr unsigned kQueryNorm = align_up(kHist + kMmaWarps * kRadixBins * 4, 128);
    static constexpr unsigned kThreshold = align_up(kQueryNorm + kMmaBlockQ * 4, 128);
    static constexpr unsigned kNumCand = align_up(kThreshold + kMmaBlockQ * 4, 128);
    static constexpr unsigned kEnd = align_up(kNumCand + kMmaBlockQ * 4, 128);
    // shared bound (kSharedBound only): this tile's atoms per row (order keys), the row's bound
    static constexpr unsigned kTileAtoms = kEnd;
    static constexpr unsigned kBound = align_up(kTileAtoms + kMmaBlockQ * kBoundRanks * 4, 128);
    static constexpr unsigned kBytes = kSharedBound ? align_up(kBound + kMmaBlockQ * 4, 128) : kEnd;
    // aliases of the pipeline region, valid after the main loop
    static constexpr unsigned kStageVal = 0;
    static constexpr unsigned kStageIdx = kMmaWarps * kStagingCap * 4;
    static constexpr unsigned kReduce = 0;  // k = 1: (4 column warps, 128 rows) x (value, index)
};
static_assert(2u * kMmaWarps * kStagingCap * 4 <= SmemLayoutMma::kPipeBytes, "final-sort staging fits the pipeline");
static_assert(4u * kMmaBlockQ * 8 <= SmemLayoutMma::kPipeBytes, "k = 1 reduction fits the pipeline");

// Orin (sm_87) allows 163 KiB of shared memory per block, H100 227 KiB: the partial kernels must fit the smaller,
// and kMmaBlocksPerSm mma blocks must fit an H100 SM together (the split plan counts on it).
static_assert(SmemLayoutF32::kBytes <= 163u * 1024u && SmemLayoutMma::kBytes <= 163u * 1024u,
              "partial kernel shared memory exceeds the sm_87 per-block limit");
static_assert(kMmaBlocksPerSm * (SmemLayoutMma::kBytes + 1024u) <= 228u * 1024u, "mma blocks per SM");

// ---- small helpers ----------------------------------------------------------------------------

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

__device__ __forceinline__ float pos_inf() { return __int_as_float(0x7f800000); }

// cp.async (sm_80+): 16-byte global -> shared copies that run behind the tensor-core work; a copy of
// 0 source bytes zero-fills the destination (out-of-range rows and dims). `dst` is a shared-space address.
__device__ __forceinline__ unsigned smem_addr(const void* p) {
    unsigned a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
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

// fp32 shared-memory tile load: rows [row0, row0+rows_valid) x dims [d0, d0+kBlockD) of a row-major
// (rows x D) matrix into dst[row][d] with leading dimension Ld; everything out of range is zero,
// so partial tiles and odd D need no special case in the math.
template <int kRows, int Ld>
__device__ __forceinline__ void load_tile(float* dst, const float* __restrict__ src, int row0, int rows_valid, int d0,
                                          int D) {
    for (int e = threadIdx.x; e < kRows * kBlockD; e += kThreads) {
        const int r = e / kBlockD;
        const int d = e % kBlockD;
        float v = 0.f;
        if (r < rows_valid && d0 + d < D) v = src[(size_t)(row0 + r) * D + d0 + d];
        dst[r * Ld + d] = v;
    }
}

// fp32: SIMT FMA (exact fp32, no TF32). Thread (ty = tid/16, tx = tid%16) owns rows ty + 8 i
// (i < 8) and columns tx + 16 j (j < 4): interleaved so shared reads are broadcast/conflict-free.
struct TileDotF32 {
    static __device__ void run(const float* __restrict__ queries, const float* __restrict__ bank, int q0,
                               int nq, int m0, int nm, int D, float* tiles, float* scores) {
        constexpr int Ld = kLd32;
        float* sA = tiles;
        float* sB = tiles + SmemLayoutF32::kTileBytes / sizeof(float);
        static_assert(kThreads == 128 && kBlockQ == 64 && kBlockM == 64, "thread->output mapping below");
        const int ty = threadIdx.x >> 4;
        const int tx = threadIdx.x & 15;
        float acc[8][4];
        for (int i = 0; i < 8; ++i)
            for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;

        for (int d0 = 0; d0 < D; d0 += kBlockD) {
            load_tile<kBlockQ, Ld>(sA, queries, q0, nq, d0, D);
            load_tile<kBlockM, Ld>(sB, bank, m0, nm, d0, D);
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

// Shared-bound atoms cross blocks (kSharedBound): relaxed GPU-scope accesses that bypass L1, so a block sees
// another's atom once it reaches L2; any value seen is one some block wrote or the host's reset.
__device__ __forceinline__ unsigned ld_relaxed(const unsigned* p) {
    unsigned v;
    asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ void st_relaxed(unsigned* p, unsigned v) {
    asm volatile("st.relaxed.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

// The 32 lanes' keys, sorted ascending across the lanes (bitonic, 15 exchange steps).
__device__ __forceinline__ unsigned warp_sort_keys(unsigned key, int lane) {
#pragma unroll
    for (int size = 2; size <= 32; size <<= 1)
#pragma unroll
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            const unsigned other = __shfl_xor_sync(0xffffffffu, key, stride);
            const bool keep_min = ((lane & stride) == 0) == ((lane & size) == 0);
            key = keep_min ? min(key, other) : max(key, other);
        }
    return key;
}

// A query's bound from its atoms, one per lane (kSharedBound): the ceil(k / kAtomWeight)-th smallest, as an
// order key on every lane (>= order_key(+inf): no bound yet). Called by the whole warp.
__device__ __forceinline__ unsigned atoms_bound_key(unsigned atom, int k, int lane) {
    return __shfl_sync(0xffffffffu, warp_sort_keys(atom, lane), (k + kAtomWeight - 1) / kAtomWeight - 1);
}

// Radix histograms count keys that share their leading bits (similar distances): in a select's first
// pass most lanes of a warp hit one or a few bins, and shared atomics to one address serialise lane by
// lane (measured on the CPU with scripts/topk_bound_study.py's data: 24-32 of 32 lanes per warp
// instruction in one bin). PROTOSPECT_TOPK_AGG_ATOMICS (-D at build time; 1: every pass, 2: first
// passes only, where the bins are concentrated) groups the lanes by bin with match.any (sm_70+) and lets
// one lane per group add the group's count: the same histogram, fewer atomics. Off by default until
// timed on a GPU (scripts/kernel_variants.py). Called by all 32 lanes of a warp; `on`: this lane counts.
#ifndef PROTOSPECT_TOPK_AGG_ATOMICS
#define PROTOSPECT_TOPK_AGG_ATOMICS 0
#endif
__device__ __forceinline__ void hist_add(unsigned* hist, unsigned bin, bool on, bool first_pass) {
    const bool aggregate = PROTOSPECT_TOPK_AGG_ATOMICS == 1 || (PROTOSPECT_TOPK_AGG_ATOMICS == 2 && first_pass);
    if (aggregate) {  // warp-uniform
        const unsigned peers = __match_any_sync(0xffffffffu, on ? bin : 0xffffffffu);  // lanes off: their own group
        if (on && (int)(threadIdx.x & 31) == __ffs(peers) - 1) atomicAdd(hist + bin, (unsigned)__popc(peers));
    } else if (on) {
        atomicAdd(hist + bin, 1u);
    }
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

// ---- fp16 partial kernel: mma.sync tensor cores, scores in registers (sm_80+) -----------------

// Byte offset of 16-byte chunk `c` (0..7) of row `r` in a pipeline tile (128-byte rows). The XOR
// swizzle puts the 8 rows one ldmatrix phase reads (same logical chunk) in 8 different bank groups.
__device__ __forceinline__ unsigned swizzle(int r, int c) { return r * 128u + ((c ^ (r & 7)) << 4); }

__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], unsigned addr) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
#endif
}

// c += a (16 x 16, row-major) * b (16 x 8, column-major), fp16 inputs, fp32 accumulators.
__device__ __forceinline__ void mma_16816(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// 16 bytes global -> shared: cp.async (zero-filled when !valid), or 8 scalar loads where rows are
// not 16-byte aligned (D % 8 != 0).
__device__ __forceinline__ void copy_chunk(unsigned dst, const __half* __restrict__ src, int dims_left, bool valid,
                                          bool vec16) {
    if (vec16) {
        cp_async16(dst, src, valid);
    } else {
        __align__(16) __half v[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) v[e] = (valid && e < dims_left) ? src[e] : __float2half(0.f);
        const unsigned* w = reinterpret_cast<const unsigned*>(v);
        asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(dst), "r"(w[0]), "r"(w[1]), "r"(w[2]), "r"(w[3]));
    }
}

// One warp's 64 x 32 share of a 128 x 128 x 64 step: 4 k16 slices, 4 x 4 mma each.
// Warp (wq, wm) owns query rows wq*64 .. +63 and prototype columns wm*32 .. +31 of the tile.
__device__ __forceinline__ void mma_compute_step(unsigned stage, int wq, int wm, int lane, float (&acc)[4][4][4]) {
    using L = SmemLayoutMma;
#pragma unroll
    for (int kk = 0; kk < kMmaBlockK / 16; ++kk) {
        unsigned a[4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i)  // lanes 0-15: rows 0-15 at k 0-7; lanes 16-31: the same rows at k 8-15
            ldmatrix_x4(a[i], stage + swizzle(wq * 64 + i * 16 + (lane & 15), kk * 2 + (lane >> 4)));
#pragma unroll
        for (int jj = 0; jj < 2; ++jj) {  // matrices: (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15)
            unsigned b[4];  // two n8 tiles at a time: fewer live registers than all four
            ldmatrix_x4(b, stage + L::kTileBytes +
                               swizzle(wm * 32 + jj * 16 + (lane & 7) + ((lane >> 4) << 3), kk * 2 + ((lane >> 3) & 1)));
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                mma_16816(acc[i][2 * jj], a[i], b[0], b[1]);
                mma_16816(acc[i][2 * jj + 1], a[i], b[2], b[3]);
            }
        }
    }
}

// ---- wgmma (sm_90a): Hopper's warpgroup MMA, both operands read from shared memory -------------
//
// The pipeline tiles above are already in the layout wgmma's 128-byte swizzle expects for K-major
// operands (rows of 128 bytes, 16-byte chunk c of row r at chunk c ^ (r & 7), 8-row groups 1024 bytes
// apart, tiles 1024-byte aligned), so the same cp.async loads feed either instruction.
// PROTOSPECT_TOPK_FORCE_MMA (-D at build time) keeps mma.sync on sm_90a too, for comparisons.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL) && !defined(PROTOSPECT_TOPK_FORCE_MMA)
#define PROTOSPECT_TOPK_WGMMA 1
#else
#define PROTOSPECT_TOPK_WGMMA 0
#endif

// Shared-memory matrix descriptor: start address, leading byte offset (unused for swizzled K-major
// tiles, 16 by convention), stride byte offset 1024 (between 8-row groups), layout 1 = 128-byte swizzle.
__device__ __forceinline__ unsigned long long wgmma_desc(unsigned addr) {
    return (unsigned long long)((addr & 0x3ffffu) >> 4) | ((unsigned long long)(16u >> 4) << 16) |
           ((unsigned long long)(1024u >> 4) << 32) | (1ull << 62);
}

// d (64 x 128 per warpgroup, fp32) += A (64 x 16, K-major) * B (128 x 16, K-major)^T. Thread t of the
// warpgroup holds d[j][2h + e] = element (16 (t / 32) + (t % 32) / 4 + 8 h, 8 j + 2 (t % 4) + e): per
// warp the m16n8 accumulator layout of mma.sync, repeated over 16 column tiles.
__device__ __forceinline__ void wgmma_m64n128k16(float (&d)[16][4], unsigned long long desc_a,
                                                 unsigned long long desc_b) {
#if PROTOSPECT_TOPK_WGMMA
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
        "}, %64, %65, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]),
          "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]),
          "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]),
          "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]),
          "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]),
          "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]),
          "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]),
          "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]),
          "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]),
          "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]),
          "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]),
          "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]),
          "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]),
          "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]),
          "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]),
          "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
        : "l"(desc_a), "l"(desc_b), "r"(1));
#endif
}

__device__ __forceinline__ void wgmma_fence() {
#if PROTOSPECT_TOPK_WGMMA
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit_and_wait() {
#if PROTOSPECT_TOPK_WGMMA
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#endif
}
// Orders this thread's generic-proxy shared-memory writes (cp.async, st.shared) before async-proxy
// reads (wgmma) that follow a barrier.
__device__ __forceinline__ void fence_proxy_async() {
#if PROTOSPECT_TOPK_WGMMA
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// Warpgroup wg's 64 x 128 share of a 128 x 128 x 64 step: 4 k16 slices (32 bytes apart in a row).
__device__ __forceinline__ void wgmma_compute_step(unsigned stage, int wg, float (&acc)[1][16][4]) {
    using L = SmemLayoutMma;
    const unsigned a = stage + wg * 64 * L::kRowBytes, b = stage + L::kTileBytes;
    wgmma_fence();  // the accumulators were written by ordinary instructions (zeroing, the epilogue)
#pragma unroll
    for (int kk = 0; kk < kMmaBlockK / 16; ++kk) wgmma_m64n128k16(acc[0], wgmma_desc(a + 32 * kk), wgmma_desc(b + 32 * kk));
    wgmma_commit_and_wait();
}

template <bool kCond, typename A, typename B> struct Pick { using type = A; };
template <typename A, typename B> struct Pick<false, A, B> { using type = B; };

// Which accumulator element is which (query row, prototype column) of the tile, per instruction:
// element acc[i][j][2h + e] of a thread is row row0 + 16 i + 8 h, column col0 + 8 j + e.
struct FragMmaSync {  // warp (wq, wm) = (warp / 4, warp % 4): rows wq*64 .. +63, columns wm*32 .. +31
    static constexpr int kI = 4, kJ = 4, kColGroups = 4;
    static __device__ __forceinline__ int row0(int warp, int g) { return (warp >> 2) * 64 + g; }
    static __device__ __forceinline__ int col0(int warp, int t4) { return (warp & 3) * 32 + 2 * t4; }
    static __device__ __forceinline__ int col_group(int warp) { return warp & 3; }
};
struct FragWgmma {  // warpgroup warp / 4: rows (warp / 4)*64 .. +63, all columns; warp % 4: 16 of those rows
    static constexpr int kI = 1, kJ = 16, kColGroups = 1;
    static __device__ __forceinline__ int row0(int warp, int g) { return (warp >> 2) * 64 + (warp & 3) * 16 + g; }
    static __device__ __forceinline__ int col0(int, int t4) { return 2 * t4; }
    static __device__ __forceinline__ int col_group(int) { return 0; }
};

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
    // wgmma for the k = 1 kernel only: for k > 1, where the candidate traffic rather than the GEMM sets the
    // pace, the mma.sync tiles measured faster on the H100 (docs/results/kernel_bench_h100.md);
    // PROTOSPECT_TOPK_WGMMA_ALL builds both with wgmma, for that comparison.
#if defined(PROTOSPECT_TOPK_WGMMA_ALL)
    constexpr bool kWgmmaAll = true;
#else
    constexpr bool kWgmmaAll = false;
#endif
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
    float* bound = reinterpret_cast<float*>(smem + L::kBound);                // (share) per row
    unsigned* tile_atoms = reinterpret_cast<unsigned*>(smem + L::kTileAtoms);  // (share) per row and rank
    if (share)
        for (int r = threadIdx.x; r < kMmaBlockQ; r += kMmaThreads) {
            bound[r] = pos_inf();
            for (int a = 0; a < kBoundRanks; ++a) tile_atoms[kBoundRanks * r + a] = 0u;
        }
    __syncthreads();  // rows are read by every warp in the epilogue

    float acc[Frag::kI][Frag::kJ][4];
    float best_v[Frag::kI][2];  // k = 1: running minimum of this thread's rows
    int best_i[Frag::kI][2];
#pragma unroll
    for (int i = 0; i < Frag::kI; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            best_v[i][h] = pos_inf();
            best_i[i][h] = kSentinelIdx;
        }

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
#pragma unroll
        for (int i = 0; i < Frag::kI; ++i)
#pragma unroll
            for (int j = 0; j < Frag::kJ; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;
        for (int kstep = 0; kstep < nk; ++kstep) {
            cp_async_wait<kMmaStages - 2>();  // this step has landed (this thread's copies) ...
            if (kWgmma) fence_proxy_async();  // (wgmma reads shared memory through the async proxy)
            __syncthreads();                  // ... and everyone's; everyone is done with the previous buffer
            load_next();                      // into the buffer the previous step used
            if constexpr (kWgmma)
                wgmma_compute_step(pipe + c_stage * L::kStageBytes, warp >> 2, acc);  // waits for its wgmma
            else
                mma_compute_step(pipe + c_stage * L::kStageBytes, warp >> 2, warp & 3, lane, acc);
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
        if (kHoldNorms) {
#pragma unroll
            for (int j = 0; j < (kHoldNorms ? Frag::kJ : 1); ++j)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int c = col0 + 8 * j + e;
                    bnv[j][e] = c < m_end ? __ldg(bank_sqnorm + c) : pos_inf();
                }
        }
#pragma unroll
        for (int i = 0; i < Frag::kI; ++i)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int ql = row0 + 16 * i + 8 * h;
                const bool row_ok = ql < nq;
#pragma unroll
                for (int j = 0; j < Frag::kJ; ++j)
#pragma unroll
                    for (int e = 0; e < 2; ++e) {  // the row's scores replace its accumulators
                        const int c = col0 + 8 * j + e;
                        const float bn = kHoldNorms ? bnv[kHoldNorms ? j : 0][e] : (c < m_end ? __ldg(bank_sqnorm + c) : pos_inf());
                        float v = bn - 2.f * acc[i][j][2 * h + e];
                        if (v != v) v = pos_inf();  // NaN (bad input) ranks last instead of breaking the sort
                        acc[i][j][2 * h + e] = v;
                        if (debug_scores != nullptr && row_ok && c < m_end) debug_scores[(size_t)(q0 + ql) * M + c] = v;
                    }
                if (kOne) {  // increasing columns: the strict pair order keeps the smallest index on ties
#pragma unroll
                    for (int j = 0; j < Frag::kJ; ++j)
#pragma unroll
                        for (int e = 0; e < 2; ++e) {
                            const int m = col0 + 8 * j + e;
                            if (m < m_end && pair_less(acc[i][j][2 * h + e], m, best_v[i][h], best_i[i][h])) {
                                best_v[i][h] = acc[i][j][2 * h + e];
                                best_i[i][h] = m;
                            }
                        }
                    continue;
                }
                if (share && tile < kBoundTiles) {  // block-uniform: every lane shuffles
                    // the two smallest of each group of 8 of the row's tile columns (mma.sync: a thread's 8;
                    // wgmma: 4 groups of a thread's 32); the max over the row's 16 groups
                    float m1 = -pos_inf(), m2 = -pos_inf();
#pragma unroll
                    for (int grp = 0; grp < Frag::kJ / 4; ++grp) {
                        float g1 = pos_inf(), g2 = pos_inf();
#pragma unroll
                        for (int j = 4 * grp; j < 4 * grp + 4; ++j)
#pragma unroll
                            for (int e = 0; e < 2; ++e) {
                                const float v = acc[i][j][2 * h + e];
                                if (col0 + 8 * j + e >= m_end) continue;
                                if (v < g1) {
                                    g2 = g1;
                                    g1 = v;
                                } else if (v < g2) {
                                    g2 = v;
                                }
                            }
                        m1 = fmaxf(m1, g1);
                        m2 = fmaxf(m2, g2);
                    }
#pragma unroll
                    for (int off = 1; off < 4; off <<= 1) {
                        m1 = fmaxf(m1, __shfl_xor_sync(0xffffffffu, m1, off));
                        m2 = fmaxf(m2, __shfl_xor_sync(0xffffffffu, m2, off));
                    }
                    if (t4 == 0 && row_ok) {
                        atomicMax(tile_atoms + kBoundRanks * ql, order_key(m1));
                        atomicMax(tile_atoms + kBoundRanks * ql + 1, order_key(m2));
                    }
                }
                const float thr = threshold[ql];  // +inf until k entries have been kept: take everything
                const float bd = share ? bound[ql] : pos_inf();  // the shared bound (+inf: none yet)
                if (thr == pos_inf() && (!share || bd == pos_inf())) {
                    // filling: every valid score is kept, at its column's slot after the row's count
                    // (a multiple of the tile, so even: float2 stores); the compaction phase adds nm
                    if (row_ok) {
                        const size_t base = (size_t)ql * cap + num_cand[ql];
#pragma unroll
                        for (int j = 0; j < Frag::kJ; ++j) {
                            const int m = col0 + 8 * j;
                            const size_t at = base + (m - m0);
                            if (m + 1 < m_end) {
                                *reinterpret_cast<float2*>(cand_val + at) = make_float2(acc[i][j][2 * h], acc[i][j][2 * h + 1]);
                                *reinterpret_cast<int2*>(cand_idx + at) = make_int2(m, m + 1);
                            } else if (m < m_end) {
                                cand_val[at] = acc[i][j][2 * h];
                                cand_idx[at] = m;
                            }
                        }
                    }
                    continue;  // thr is the same for the 4 lanes of the quad: no shuffles below are skipped by some
                }
                static_assert(2 * Frag::kJ <= 32, "one pass bit per value of a row");
                unsigned pass = 0u;
#pragma unroll
                for (int j = 0; j < Frag::kJ; ++j)
#pragma unroll
                    for (int e = 0; e < 2; ++e)
                        if (row_ok && col0 + 8 * j + e < m_end && acc[i][j][2 * h + e] < thr) {
                            if (!share || acc[i][j][2 * h + e] <= bd) pass |= 1u << (2 * j + e);  // (<=: ties)
                        }
                // the 4 lanes of a quad share the row: one shared atomic per quad reserves their slots
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
                if (t4 == 3 && total > 0) base = atomicAdd(num_cand + ql, total);
                base = __shfl_sync(quad, base, 3, 4);
                if (cnt > 0) {
                    float* cv = cand_val + (size_t)ql * cap;
                    int* ci = cand_idx + (size_t)ql * cap;
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
        if (kOne) continue;

        // ---- compaction: a row that might not fit the next tile keeps its k smallest ----
        __syncthreads();  // every append of this tile is in place
        const bool more = tile + 1 < tiles;  // after the last tile the buffer only has to hold what it holds
        for (int ql = warp; ql < nq; ql += kMmaWarps) {
            int n = num_cand[ql];
            const bool filling = threshold[ql] == pos_inf() && (!share || bound[ql] == pos_inf());
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
            if (share && more) {  // publish this tile's atoms (first tiles), then tighten the bound from all splits'
                unsigned* atoms = bound_keys + (size_t)(q0 + ql) * kBoundAtoms;  // (split, tile, rank)
                if (tile < kBoundTiles && lane < kBoundRanks) {
                    const unsigned key = tile_atoms[kBoundRanks * ql + lane];
                    st_relaxed(atoms + (split * kBoundTiles + tile) * kBoundRanks + lane, key ? key : 0xffffffffu);
                    tile_atoms[kBoundRanks * ql + lane] = 0u;  // (every valid row got 16 maxima: never 0)
                }
                __syncwarp();  // this split's atoms are in place before the warp reads them back
                const unsigned kth = atoms_bound_key(ld_relaxed(atoms + lane), k, lane);
                if (lane == 0 && kth < order_key(pos_inf())) bound[ql] = fminf(bound[ql], key_value(kth));
                __syncwarp();
            }
        }
        // the barrier at the top of the next step orders these updates before the next epilogue;
        // after the last tile, the one below does
    }
    cp_async_wait<0>();
    __syncthreads();  // the pipeline region is free: reuse it

    if (kOne) {
        // quad lanes share rows: reduce over their columns, then over the column groups (mma.sync: 4 warps)
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
        float* red_v = reinterpret_cast<float*>(smem + L::kReduce);  // [column group][row]
        int* red_i = reinterpret_cast<int*>(smem + L::kReduce) + Frag::kColGroups * kMmaBlockQ;
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
    // shared-bound build, level 2: every split has published its atoms by now; entries above the query's
    // final bound cannot be among its k (ties kept), so the select skips them
    if (PROTOSPECT_TOPK_SHARED_BOUND >= 2 && bound_keys != nullptr) {
        if (threadIdx.x < 32) {
            const unsigned cut = atoms_bound_key(bound_keys[(size_t)q * kBoundAtoms + threadIdx.x], k, threadIdx.x);
            if (threadIdx.x == 0) scratch[0] = cut;
        }
        __syncthreads();
        const unsigned cut = scratch[0];  // an order key (0xffffffff: no bound)
#pragma unroll
        for (int j = 0; j < kSlots; ++j)
            if (keys[j] > cut) valid &= ~(1u << j);
        __syncthreads();  // scratch is reused by the select
    }
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

extern "C" __global__ void __launch_bounds__(256) proto_topk_bank_sqnorm_f32(const float* bank, int M, int D, float* out) {
    protospect_topk::bank_sqnorm_body(bank, M, D, out);
}
extern "C" __global__ void __launch_bounds__(256) proto_topk_bank_sqnorm_f16(const __half* bank, int M, int D, float* out) {
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
extern "C" __global__ void __launch_bounds__(256)
proto_topk_merge_min(const float* cand_val, const int* cand_idx, const float* qnorm, int Q, int splits, float* out_dist,
                     int* out_idx) {
    protospect_topk::merge_min_body(cand_val, cand_idx, qnorm, Q, splits, out_dist, out_idx);
}
