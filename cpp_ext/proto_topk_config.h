// Kernel constants and shared-memory layouts of the fused prototype top-k: the ONE place they are set.
//
// Plain constexpr C++ (no device code), so the kernels (proto_topk*.cuh, nvcc and NVRTC), the C launcher
// (proto_topk.cu) and the TensorRT plugin sketch include it, and cpp_ext/kernel_config.py parses its
// `constexpr int` lines for the Python side (launcher, torch op, tests). The compiled module also exports
// the numbers the hosts need in proto_topk_config[] (proto_topk.cuh); tests/cpp_ext/test_topk_compile.py
// checks that the two agree.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define PROTOSPECT_TOPK_HD __host__ __device__
#else
#define PROTOSPECT_TOPK_HD
#endif

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
constexpr int kAuxThreads = 256;  // the bank-norm kernels (one warp per prototype) and merge_min (one thread per query)
constexpr int kWorkspaceAlign = 256;  // bytes: every workspace region starts on this boundary

enum Dtype { kFloat32 = 0, kFloat16 = 1 };

// Comparison builds (-D at build time, off by default; the device code is in proto_topk_compare.cuh, included
// only when one is set). Their constants live here because the layouts and the workspace depend on them.
#ifndef PROTOSPECT_TOPK_SHARED_BOUND
#define PROTOSPECT_TOPK_SHARED_BOUND 0
#endif
#ifndef PROTOSPECT_TOPK_AGG_ATOMICS
#define PROTOSPECT_TOPK_AGG_ATOMICS 0
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
PROTOSPECT_TOPK_HD constexpr int cand_cap(int k) {
    return 2 * k + kCandSlack < kMaxCandCap ? 2 * k + kCandSlack : kMaxCandCap;
}
static_assert(kMaxCandCap - kCandSlack >= kMaxK, "a compacted buffer (k entries) leaves room for a tile");

// ---- per-dtype tile geometry (fp32 kernel) ----------------------------------------------------

PROTOSPECT_TOPK_HD constexpr unsigned align_up(unsigned x, unsigned a) { return (x + a - 1) / a * a; }

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

}  // namespace protospect_topk
