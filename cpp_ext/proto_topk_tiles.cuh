// Device basics and the dot-product tiles of the fused prototype top-k: small helpers, cp.async, the bank
// norms, the fp32 SIMT tile, and the fp16 tensor-core tiles (mma.sync m16n8k16 fed by ldmatrix from
// swizzled shared memory; wgmma m64n128k16 on sm_90a) with the accumulator fragment layouts.
#pragma once

#include <cuda_fp16.h>

#include "proto_topk_config.h"

namespace protospect_topk {

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

}  // namespace protospect_topk
