// Comparison builds of the fused prototype top-k, NOT part of the default kernels: included (from
// proto_topk_select.cuh) only when -DPROTOSPECT_TOPK_SHARED_BOUND or -DPROTOSPECT_TOPK_AGG_ATOMICS is set.
// Prepared and modelled on the CPU, never timed on a GPU: adopt one into the default path only when a GPU
// session measures it faster with identical outputs (cpp_ext/README.md, "Comparison builds").
#pragma once

#include "proto_topk_select.cuh"

namespace protospect_topk {

// ---- PROTOSPECT_TOPK_AGG_ATOMICS ------------------------------------------------------------------
// Radix histograms count keys that share their leading bits (similar distances): in a select's first
// pass most lanes of a warp hit one or a few bins, and shared atomics to one address serialise lane by
// lane (measured on the CPU with studies/topk_bound_study.py's data: 24-32 of 32 lanes per warp
// instruction in one bin). PROTOSPECT_TOPK_AGG_ATOMICS (-D at build time; 1: every pass, 2: first
// passes only, where the bins are concentrated) groups the lanes by bin with match.any (sm_70+) and lets
// one lane per group add the group's count: the same histogram, fewer atomics. Off by default until
// timed on a GPU (studies/kernel_variants.py). Called by all 32 lanes of a warp; `on`: this lane counts.
__device__ __forceinline__ void hist_add_aggregated(unsigned* hist, unsigned bin, bool on, bool first_pass) {
    const bool aggregate = PROTOSPECT_TOPK_AGG_ATOMICS == 1 || (PROTOSPECT_TOPK_AGG_ATOMICS == 2 && first_pass);
    if (aggregate) {  // warp-uniform
        const unsigned peers = __match_any_sync(0xffffffffu, on ? bin : 0xffffffffu);  // lanes off: their own group
        if (on && (int)(threadIdx.x & 31) == __ffs(peers) - 1) atomicAdd(hist + bin, (unsigned)__popc(peers));
    } else if (on) {
        atomicAdd(hist + bin, 1u);
    }
}

// ---- PROTOSPECT_TOPK_SHARED_BOUND -----------------------------------------------------------------
//
// PROTOSPECT_TOPK_SHARED_BOUND (-D at build time; a comparison build, off by default until timed on a GPU):
// at large k a split's own threshold filters nothing (k = 200, 512 prototypes per split: every score is
// written and merged), so the splits of a query share a bound. After each of its first kBoundTiles tiles a
// split publishes, per query, "atoms": for r = 1, 2 the max over the row's 16 groups of 8 tile columns
// (mma.sync: one thread's 8; wgmma: a quarter of a thread's 32) of each group's r-th smallest score, which
// at least kAtomWeight = 16 further scores lie at or below. Atoms are ordered keys in the workspace (bound_keys:
// Q x kBoundAtoms, reset to 0xff.. = unpublished by the host before the call); the ceil(k / 16)-th
// smallest of a query's atoms is a bound at or above its k-th score, so scores above it are dropped
// (`<=` keeps ties: exact). A stale or unpublished atom only loosens the bound. Level 2 also has the merge
// skip entries above the final bound (all atoms published by then). studies/topk_bound_study.py
// ("same, tiles 0 and 1 only") models it: ~2300-2500 of 4096 scores written per query at k = 200, not 4096.

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

// The shared bound of an fp16 partial block (the k > 1 kernel, several splits; proto_topk_partial.cuh takes
// NoSharedBound in the default build). Per row in shared memory: the tile's atoms (order keys) and the bound.
struct SharedBound {
    float* bound;          // per row: the smallest bound seen (+inf: none yet)
    unsigned* tile_atoms;  // per row and rank: this tile's atoms, max-reduced over the row's threads
    unsigned* bound_keys;  // (Q, kBoundAtoms) in the workspace
    int q0, split;
    __device__ __forceinline__ SharedBound(unsigned char* smem, unsigned* keys, int q0_, int split_)
        : bound(reinterpret_cast<float*>(smem + SmemLayoutMma::kBound)),
          tile_atoms(reinterpret_cast<unsigned*>(smem + SmemLayoutMma::kTileAtoms)), bound_keys(keys), q0(q0_),
          split(split_) {}

    __device__ __forceinline__ void init() const {
        for (int r = threadIdx.x; r < kMmaBlockQ; r += kMmaThreads) {
            bound[r] = pos_inf();
            for (int a = 0; a < kBoundRanks; ++a) tile_atoms[kBoundRanks * r + a] = 0u;
        }
    }
    __device__ __forceinline__ float value(int ql) const { return bound[ql]; }

    // Row ql's atoms of this tile (tiles < kBoundTiles; block-uniform: every lane shuffles): the two smallest of
    // each group of 8 of the row's tile columns (mma.sync: a thread's 8; wgmma: 4 groups of a thread's 32);
    // the max over the row's 16 groups.
    template <typename Frag>
    __device__ __forceinline__ void row_atoms(const float (&acc)[Frag::kI][Frag::kJ][4], int i, int h, int col0,
                                              int m_end, int t4, bool row_ok, int ql) const {
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

    // After a tile's compaction of row ql (its owning warp, not after the last tile): publish this tile's atoms
    // (first tiles), then tighten the bound from all splits' atoms.
    __device__ __forceinline__ void publish(int ql, int tile, int lane, int k) const {
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
};

// Level 2, in the merge: every split has published its atoms by now; entries above the query's final bound
// cannot be among its k (ties kept), so the select skips them. Called by the whole merge block.
template <int kSlots>
__device__ __forceinline__ void shared_bound_merge_filter(const unsigned (&keys)[kSlots], unsigned& valid,
                                                          const unsigned* __restrict__ bound_keys, int q, int k,
                                                          unsigned* scratch) {
    if (bound_keys == nullptr) return;
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

}  // namespace protospect_topk
