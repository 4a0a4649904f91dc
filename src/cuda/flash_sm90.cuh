// flash_cuda Hopper kernel (sm_90a only): warp-specialised FlashAttention forward on wgmma with
// TMA loads (Note [Hopper path]). Instantiated by the translation units generated from the `sm90`
// rows of flash_kernels.txt; the kernel body exists only in the sm_90a pass of nvcc (other passes
// compile an empty stub that traps), and flash_backend.cpp selects it only on compute capability
// 9.0 devices in a build whose architectures include 90a.
//
// Note [Hopper path]: a persistent CTA of 1 + C warpgroups (C = sm90_consumers(Width): 3 at width
// 64, 2 at 128) runs work items of sm90_block_m(Width) = 64 C query rows of one (batch, query
// head), one after another (Note [Hopper scheduler]).
//   - Warpgroup 0 is the producer: one thread issues TMA (cp.async.bulk.tensor) loads of each
//     item's Q tile and of each visible key tile of K and V (k_sm90_block_n keys) into a ring of
//     k_stages(Width) stages, each completing on an mbarrier (q_full, full_k, full_v); it reuses a
//     stage's K once every consumer has arrived on its `empty_k` barrier, its V on `empty_v`. Its
//     registers are given to the consumers (setmaxnreg: 40 + 2 x 232 or 32 + 3 x 160 per 128
//     threads' share of the SM's 64K).
//   - Warpgroups 1..C are consumers, 64 rows each: S = Q K^T by wgmma m64n128k16 (n64 on half
//     tiles, Note [Hopper half tiles]) with both operands in shared memory (K-major), band mask +
//     online softmax in registers (log2 units, ex2.approx), then O += P V by wgmma m64n{PvN}k16
//     (PvN: the width, or less for a smaller head_dim_v, Note [Hopper padded head dims]) with
//     P from registers as the A operand and V read N-major (transposed by the instruction);
//     software-pipelined so that softmax overlaps the tensor cores (Note [Hopper overlap]). At
//     width 64 a tile's wgmma take half as long as at 128 but its softmax does not, so a third
//     consumer's softmax is what keeps the tensor cores busy there.
//   - Shared-memory tiles use TMA's 128-byte swizzle: a tile is stored as column blocks of 64
//     elements (128 bytes) x rows, 16-byte chunk c of row r at c ^ (r & 7), 8-row groups 1024 bytes
//     apart. The wgmma descriptors describe exactly that layout (layout type SWIZZLE_128B; K-major:
//     stride byte offset 1024, k16 steps advance the start address by 32 bytes inside a block;
//     V N-major: stride byte offset 1024 between 8-key groups, leading byte offset = one column
//     block between the two 64-wide halves at width 128).
//   - Rows or keys outside the sequence (past its end; rows before 0 in a row-block grid that
//     starts early, Note [Hopper scheduler]) come in as zeros (TMA out-of-bounds fill) and are
//     masked by the band test; the output is staged through the consumer's own rows of the Q
//     buffer, in the layout the TMA load of Q wrote there, and stored by one TMA store per 64
//     columns, which clips rows past the sequence. (Stores by every thread cost the short items
//     of S = 1024 about 200 more instructions per warp, and the TMA store was 3-5% faster there
//     on the H100: bench/RESULTS.md.)
// Cases it handles: f16/bf16, head_dim_qk and head_dim_v up to Width (Note [Hopper padded head
// dims]), dense or varlen (Note
// [Hopper varlen]), no mask, a key mask (Note [Hopper key masks]) or a boolean mask (Note [Hopper
// row masks]) without varlen, no softcap, scale > 0 (scale * log2(e) a normal float), Sq and Skv <=
// 2^30 (Note [Hopper 32-bit bands] in flash.h; varlen: 2^29), no split-KV, unit dim stride and 16-byte
// aligned bases/strides; causal (either alignment), windows, GQA/MQA and LSE are handled.
// Everything else runs the mma.sync kernel (flash_tc.cuh); the decision is written once, in
// flash_backend.cpp: sm90_kernel_for, and plan_call for the calls that stay on the mma.sync kernel
// (a split call, Note [Split KV]; a GQA decode of few rows, on its decode tile: keep_packed).
//
// Note [Hopper padded head dims]: a call whose head dims are below the width it runs at (the
// narrowest `sm90` row covering both: 40 at 64, 72, 80 or 96 at 128), or differ (head_dim_v !=
// head_dim_qk), runs this kernel unchanged. The tensor maps of Q and K span head_dim_qk columns,
// those of V and O head_dim_v (launch_flash_sm90), and every TMA box is 64 columns wide, so the
// columns of a tile past the head dim come in as zeros (out-of-bounds fill; a box wholly past it
// too, with its full byte count on the barrier). Zero columns of Q and K add nothing to S = Q K^T,
// and zero columns of V give zero columns of O, which the TMA store clips at head_dim_v (a box wholly
// past it writes nothing; the varlen row-by-row store stops at head_dim_v). The scale is the
// caller's (1/sqrt(head_dim_qk) by default), not the width's. When head_dim_qk leaves k16 steps of
// S = Q K^T wholly zero (80: 3 of 8 skipped), the launcher runs the instantiation with PaddedQk, whose
// issue_qk skips them (a warpgroup-uniform test per step; ptxas then adds wgmma fences there, so
// the other instantiation, which every call at the full width runs, keeps the plain chain). P V runs
// at n = PvN (a template argument; sm90_pv_n in flash.h: 48 or 64 at width 64, 80, 96 or 128 at
// 128), the narrowest instantiated N covering head_dim_v, so O's accumulators, their rescaling and
// the tensor-core time of P V stop there. V's tile keeps its layout: n = 80 or 96 reads the first
// 64-column block whole and the first 16 or 32 columns of the second (leading byte offset between
// the blocks, as at 128), and n = 48 the first 48 columns of the only block. (PTX's canonical
// layouts for a 128-byte-swizzled N-major operand are whole 64-column atoms; that the instruction
// reads part of one is the hardware's behaviour, which hopper_padded_cases in tests/test_cuda.cpp
// checks at each n against the reference, in every mode.) The epilogue stages
// O's first PvN columns, and the store clips at head_dim_v <= PvN, so the rest of the staging
// tile (the item's Q) is never written out. A call at the full width runs PvN = Width, whose
// machine code is that of the kernel before PvN existed (bench/gpu_dims.py measures the padded
// head dims against PyTorch, bench/RESULTS.md).
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cuda/cuda_check.h"
#include "cuda/flash_common.cuh"

namespace attend::cuda {
namespace sm90 {

// Threads of a CTA: the producer warpgroup and the consumers.
constexpr int threads(int width) { return 128 * (1 + sm90_consumers(width)); }
// Stages of the K/V ring.
constexpr int k_stages(int width) {
  return width == 64 ? 4 : 2;  // why: at D = 128, 2 x (K + V) tiles are 128 KB; with two Q buffers
                               // (64 KB, Note [Hopper scheduler]) 194 KB of the 227 KB a block may
                               // use, and a third stage would not fit. At D = 64, 4 stages (128 KB)
                               // hide more load latency at item boundaries.
}
// Bytes of one [rows x Width] tile in 64-element column blocks.
constexpr int tile_bytes(int rows, int width) { return rows * width * 2; }
// What a launch of the kernel handles beyond a dense call (the kernel's template argument).
enum class mode : std::uint8_t { dense, varlen, key_mask, row_mask };
// The key mask's ring (Note [Hopper key masks]): one float per key of each stage.
constexpr int mask_ring_bytes(int width) { return k_stages(width) * k_sm90_block_n * 4; }
constexpr int smem_bytes(int width, mode m) {
  return 2 * tile_bytes(sm90_block_m(width), width) + 2 * k_stages(width) * tile_bytes(k_sm90_block_n, width) +
         1024 /* barriers, item slots */ + (m == mode::key_mask ? mask_ring_bytes(width) : 0) +
         1024 /* alignment slack */;
}

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define ATTEND_SM90_DEVICE 1
#endif

#ifdef ATTEND_SM90_DEVICE
__device__ __forceinline__ void mbar_init(std::uint32_t bar, std::uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(std::uint32_t bar, std::uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(std::uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Arrive when `pred`, predicated rather than branched: a branch on a thread-varying value while a
// wgmma is in flight is a divergent path to ptxas, which then serialises the wgmma pipeline (Note
// [Hopper overlap]).
__device__ __forceinline__ void mbar_arrive_if(std::uint32_t bar, bool pred) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %1, 0;\n@p mbarrier.arrive.shared::cta.b64 _, [%0];\n}\n" ::"r"(bar),
               "r"(static_cast<int>(pred))
               : "memory");
}
// The retry loop is inside the asm, as a loop in C++ is a thread-varying branch to ptxas.
__device__ __forceinline__ void mbar_wait(std::uint32_t bar, std::uint32_t parity) {
  asm volatile(
      "{\n.reg .pred p;\nwait_%=:\nmbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n@!p bra wait_%=;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
// One box of a 4-D tensor map (dim, seq, head, batch) into shared memory, completing on `bar`.
__device__ __forceinline__ void tma_load(std::uint32_t dst, const CUtensorMap* map, std::uint32_t bar, int c0, int c1,
                                         int c2, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5, %6}], "
      "[%2];\n" ::"r"(dst),
      "l"(reinterpret_cast<std::uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}
// One box of shared memory (swizzled as the map says) to a 4-D tensor; rows past the tensor's
// extent are not written. Completes in the thread's bulk async-group.
__device__ __forceinline__ void tma_store(const CUtensorMap* map, std::uint32_t src, int c0, int c1, int c2, int c3) {
  asm volatile("cp.async.bulk.tensor.4d.global.shared::cta.bulk_group [%0, {%2, %3, %4, %5}], [%1];\n" ::"l"(
                   reinterpret_cast<std::uint64_t>(map)),
               "r"(src), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
               : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
// The thread's committed bulk stores have read their shared memory (the buffer may be reused).
__device__ __forceinline__ void bulk_wait_read0() { asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory"); }
// The thread's committed bulk stores are complete.
__device__ __forceinline__ void bulk_wait0() { asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory"); }
__device__ __forceinline__ void named_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
__device__ __forceinline__ void wg_wait1() { asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory"); }
// Keeps the compiler from moving reads of accumulator registers above wgmma.wait_group.
template <int N>
__device__ __forceinline__ void reg_fence(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

__device__ __forceinline__ void reg_fence_u32(std::uint32_t (&a)[4]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) asm volatile("" : "+r"(a[i])::"memory");
}

// Shared-memory matrix descriptor, 128-byte swizzle (Note [Hopper path]).
__device__ __forceinline__ std::uint64_t desc_sw128(std::uint32_t addr, std::uint32_t lbo_bytes, std::uint32_t sbo_bytes) {
  return static_cast<std::uint64_t>((addr & 0x3FFFF) >> 4) | (static_cast<std::uint64_t>((lbo_bytes >> 4) & 0x3FFF) << 16) |
         (static_cast<std::uint64_t>((sbo_bytes >> 4) & 0x3FFF) << 32) | (1ull << 62);
}

// wgmma wrappers. Accumulator operand lists of 24 to 64 floats (N / 2 for n = N); the element type
// (bf16/f16) is pasted into the instruction name.
#define ATTEND_WG_ACC32 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define ATTEND_WG_ACC64 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define ATTEND_WG_OUT32 "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3]), "=f"(d[4]), "=f"(d[5]), "=f"(d[6]), "=f"(d[7]), "=f"(d[8]), "=f"(d[9]), "=f"(d[10]), "=f"(d[11]), "=f"(d[12]), "=f"(d[13]), "=f"(d[14]), "=f"(d[15]), "=f"(d[16]), "=f"(d[17]), "=f"(d[18]), "=f"(d[19]), "=f"(d[20]), "=f"(d[21]), "=f"(d[22]), "=f"(d[23]), "=f"(d[24]), "=f"(d[25]), "=f"(d[26]), "=f"(d[27]), "=f"(d[28]), "=f"(d[29]), "=f"(d[30]), "=f"(d[31])
#define ATTEND_WG_OUT64 "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3]), "=f"(d[4]), "=f"(d[5]), "=f"(d[6]), "=f"(d[7]), "=f"(d[8]), "=f"(d[9]), "=f"(d[10]), "=f"(d[11]), "=f"(d[12]), "=f"(d[13]), "=f"(d[14]), "=f"(d[15]), "=f"(d[16]), "=f"(d[17]), "=f"(d[18]), "=f"(d[19]), "=f"(d[20]), "=f"(d[21]), "=f"(d[22]), "=f"(d[23]), "=f"(d[24]), "=f"(d[25]), "=f"(d[26]), "=f"(d[27]), "=f"(d[28]), "=f"(d[29]), "=f"(d[30]), "=f"(d[31]), "=f"(d[32]), "=f"(d[33]), "=f"(d[34]), "=f"(d[35]), "=f"(d[36]), "=f"(d[37]), "=f"(d[38]), "=f"(d[39]), "=f"(d[40]), "=f"(d[41]), "=f"(d[42]), "=f"(d[43]), "=f"(d[44]), "=f"(d[45]), "=f"(d[46]), "=f"(d[47]), "=f"(d[48]), "=f"(d[49]), "=f"(d[50]), "=f"(d[51]), "=f"(d[52]), "=f"(d[53]), "=f"(d[54]), "=f"(d[55]), "=f"(d[56]), "=f"(d[57]), "=f"(d[58]), "=f"(d[59]), "=f"(d[60]), "=f"(d[61]), "=f"(d[62]), "=f"(d[63])
#define ATTEND_WG_R32 "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}"
#define ATTEND_WG_R64 "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}"
#define ATTEND_WG_ACC24 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23])
#define ATTEND_WG_R24 "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23}"
#define ATTEND_WG_ACC40 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39])
#define ATTEND_WG_R40 "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39}"
#define ATTEND_WG_ACC48 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47])
#define ATTEND_WG_R48 "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47}"
// S[64 x N] = A[64 x 16] B[N x 16]^T + (SCALE_D ? S : 0), both K-major in shared memory. The
// first k16 step (SCALE_D "0") writes the accumulators without reading them, and says so (ACC of
// "=f"), so they are not live before it (Note [Hopper overlap]); later steps accumulate ("+f").
#define ATTEND_WG_SS(N, TY, R, ACC, IA, IB, SCALE_D)                                                         \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " SCALE_D ", 0;\n"                                          \
               "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TY "." TY " " R ", %" IA ", %" IB ", p, 1, 1, 0, 0;\n}\n" \
               : ACC                                                                                       \
               : "l"(desc_a), "l"(desc_b))
// O[64 x N] += P[64 x 16] (registers) V[16 x N] (shared memory, N-major).
#define ATTEND_WG_RS(N, TY, R, ACC, A0, IB)                                                                  \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"                                                    \
               "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TY "." TY " " R ", " A0 ", %" IB ", p, 1, 1, 1;\n}\n" \
               : ACC                                                                                       \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b))

// S of one k16 step (First: the first, which does not accumulate). `d` may be longer than the
// N / 2 accumulators (its first N / 2 are used).
template <typename T, int N, bool First, int M>
__device__ __forceinline__ void wgmma_ss(float (&d)[M], std::uint64_t desc_a, std::uint64_t desc_b) {
  static_assert((N == 64 || N == 128) && M >= N / 2);
#define ATTEND_WG_SS_OF(TY)                                                                        \
  if constexpr (N == 64 && First)                                                                  \
    ATTEND_WG_SS(64, TY, ATTEND_WG_R32, ATTEND_WG_OUT32, "32", "33", "0");                        \
  else if constexpr (N == 64)                                                                      \
    ATTEND_WG_SS(64, TY, ATTEND_WG_R32, ATTEND_WG_ACC32, "32", "33", "1");                        \
  else if constexpr (First)                                                                        \
    ATTEND_WG_SS(128, TY, ATTEND_WG_R64, ATTEND_WG_OUT64, "64", "65", "0");                       \
  else                                                                                             \
    ATTEND_WG_SS(128, TY, ATTEND_WG_R64, ATTEND_WG_ACC64, "64", "65", "1");
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    ATTEND_WG_SS_OF("bf16")
  } else {
    ATTEND_WG_SS_OF("f16")
  }
#undef ATTEND_WG_SS_OF
}
// O += P V of one k16 step at n = N: the width, or narrower when head_dim_v leaves the rest of O
// zero (sm90_pv_n, Note [Hopper padded head dims]).
template <typename T, int N>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 2], const std::uint32_t (&a)[4], std::uint64_t desc_b) {
  static_assert(N == 48 || N == 64 || N == 80 || N == 96 || N == 128);
#define ATTEND_WG_RS_OF(TY)                                                                              \
  if constexpr (N == 48)                                                                                 \
    ATTEND_WG_RS(48, TY, ATTEND_WG_R24, ATTEND_WG_ACC24, "{%24,%25,%26,%27}", "28");                    \
  else if constexpr (N == 64)                                                                            \
    ATTEND_WG_RS(64, TY, ATTEND_WG_R32, ATTEND_WG_ACC32, "{%32,%33,%34,%35}", "36");                    \
  else if constexpr (N == 80)                                                                            \
    ATTEND_WG_RS(80, TY, ATTEND_WG_R40, ATTEND_WG_ACC40, "{%40,%41,%42,%43}", "44");                    \
  else if constexpr (N == 96)                                                                            \
    ATTEND_WG_RS(96, TY, ATTEND_WG_R48, ATTEND_WG_ACC48, "{%48,%49,%50,%51}", "52");                    \
  else                                                                                                   \
    ATTEND_WG_RS(128, TY, ATTEND_WG_R64, ATTEND_WG_ACC64, "{%64,%65,%66,%67}", "68");
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    ATTEND_WG_RS_OF("bf16")
  } else {
    ATTEND_WG_RS_OF("f16")
  }
#undef ATTEND_WG_RS_OF
}
#undef ATTEND_WG_SS
#undef ATTEND_WG_OUT32
#undef ATTEND_WG_OUT64
#undef ATTEND_WG_RS
#undef ATTEND_WG_ACC32
#undef ATTEND_WG_ACC64
#undef ATTEND_WG_R32
#undef ATTEND_WG_R64
#undef ATTEND_WG_ACC24
#undef ATTEND_WG_R24
#undef ATTEND_WG_ACC40
#undef ATTEND_WG_R40
#undef ATTEND_WG_ACC48
#undef ATTEND_WG_R48

#endif  // ATTEND_SM90_DEVICE

// Work item w of the persistent schedule (Note [Hopper scheduler]): groups of
// p.sm90_group_heads (batch, head) pairs one after another; within a group the row blocks from the
// last to the first, each over the group's pairs. Row blocks start at p.sm90_row_origin (flash.h:
// negative when the first block is the partial one), so m0 may be negative.
struct work_item {
  int b, h, m0;
};
// Item w as (batch, head, r) in a grid of row_blocks row blocks per (batch, head) pair: r counts
// them back from the last one (the longest sequence's row blocks under varlen).
struct item_coord {
  int b, h, r;
};
__device__ __forceinline__ item_coord item_coords(const flash_params& p, int w, int row_blocks) {
  const int pairs = p.batch * p.num_heads_q, group = p.sm90_group_heads;
  const int g = w / (group * row_blocks), in_group = w - g * group * row_blocks;
  const int size = min(group, pairs - g * group);  // the last group may be smaller
  const int r = in_group / size, bh = g * group + (in_group - r * size);
  return {bh / p.num_heads_q, bh % p.num_heads_q, r};
}
__device__ __forceinline__ work_item item_of(const flash_params& p, int w, int bm) {
  const int row_blocks = (p.seqlen_q + bm - 1) / bm;
  const item_coord c = item_coords(p, w, row_blocks);
  return {c.b, c.h, p.sm90_row_origin + (row_blocks - 1 - c.r) * bm};
}

// Varlen (Note [Hopper varlen]): the sequence of an item, its packed rows and band offsets.
struct seq_item {
  int start_q, len_q, start_kv, len_kv;
  band32 off;
};
// A dense call as one such sequence: every row and key, the host's band offsets.
__device__ __forceinline__ seq_item dense_seq(const flash_params& p) {
  return {0, p.seqlen_q, 0, p.seqlen_kv, {p.sm90_band_lo, p.sm90_band_hi}};
}
// Item w of a varlen call, or false when its row block lies past the end of its sequence (every
// sequence has the longest one's row blocks in the item order). The row grid of each sequence
// starts as sm90_row_origin says for its length.
__device__ __forceinline__ bool varlen_item_of(const flash_params& p, int w, int bm, work_item& it, seq_item& sq) {
  const item_coord c = item_coords(p, w, (p.seqlen_q + bm - 1) / bm);
  const int start_q = p.maybe_cu_seqlens_q[c.b], len_q = p.maybe_cu_seqlens_q[c.b + 1] - start_q;
  const int blocks = (len_q + bm - 1) / bm;
  if (c.r >= blocks) return false;
  const int start_kv = p.maybe_cu_seqlens_kv[c.b], len_kv = p.maybe_cu_seqlens_kv[c.b + 1] - start_kv;
  const int origin = sm90_right_edge_moves(p) ? 64 * ((len_q + 63) / 64) - bm * blocks : 0;
  it = {c.b, c.h, origin + (blocks - 1 - c.r) * bm};
  sq = {start_q, len_q, start_kv, len_kv, sm90_varlen_offsets(p, len_q, len_kv)};
  return true;
}

// Key tiles [t_begin, t_end) that any of the rows [max(m0, 0), m0 + bm) sees: the bands of the
// first and last row bound every other (they are monotone in the row), in the consumers' 32-bit
// form (Note [Hopper 32-bit bands] in flash.h), over len_q rows and len_kv keys with offsets `off`.
__device__ __forceinline__ void tile_range(band32 off, int len_q, int len_kv, int m0, int bm, int& t_begin, int& t_end) {
  const band32 first = sm90_band_in(max(m0, 0), off, len_kv), last = sm90_band_in(min(m0 + bm, len_q) - 1, off, len_kv);
  t_begin = t_end = 0;
  if (last.hi > first.lo) {
    t_begin = first.lo / k_sm90_block_n;
    t_end = (last.hi + k_sm90_block_n - 1) / k_sm90_block_n;
  }
}

#ifdef ATTEND_SM90_DEVICE
// The consumer's steps over one key tile, split so that one tile's softmax runs while the previous
// tile's P V is on the tensor cores (Note [Hopper overlap]). NK = 128: the whole tile; 64: the half
// that holds every key the warpgroup's rows see (Note [Hopper half tiles]). Scores live in
// sc[0, NK / 2) of a 64-float array, so one array serves both widths.

// Issues S = Q K^T (the caller fences and commits). `a_base`: the warpgroup's 64 rows of Q;
// `k_base`: the first of the NK keys in the stage. PaddedQk: only the first `k_steps` k16 steps
// hold head_dim_qk columns; the rest are zero padding and are not issued (Note [Hopper padded head
// dims]).
template <typename T, int Width, int NK, bool PaddedQk>
__device__ __forceinline__ void issue_qk(float (&sc)[64], std::uint32_t a_base, std::uint32_t k_base, int k_steps) {
  constexpr int BM = sm90_block_m(Width), BN = k_sm90_block_n;
#pragma unroll
  for (int kk = 0; kk < Width / 16; ++kk) {
    const std::uint32_t a = a_base + (kk / 4) * tile_bytes(BM, 64) + (kk % 4) * 32;
    const std::uint32_t bk = k_base + (kk / 4) * tile_bytes(BN, 64) + (kk % 4) * 32;
    if (kk == 0)
      wgmma_ss<T, NK, true>(sc, desc_sw128(a, 16, 1024), desc_sw128(bk, 16, 1024));
    else if (!PaddedQk || kk < k_steps)
      wgmma_ss<T, NK, false>(sc, desc_sw128(a, 16, 1024), desc_sw128(bk, 16, 1024));
  }
}

// Issues O += P V over the first NK keys at `v_base` (V read N-major; the caller fences and
// commits), over the first PvN columns of V (Note [Hopper padded head dims]).
template <typename T, int PvN, int NK>
__device__ __forceinline__ void issue_pv(float (&o)[PvN / 2], std::uint32_t (&pa)[8][4], std::uint32_t v_base) {
  constexpr int BN = k_sm90_block_n;
#pragma unroll
  for (int kk = 0; kk < NK / 16; ++kk)
    wgmma_rs<T, PvN>(o, pa[kk], desc_sw128(v_base + kk * 16 * 128, tile_bytes(BN, 64), 1024));
}

// Key masks (Note [Hopper key masks]): S becomes scale_log2 * S + m in place, m the mask term of
// each key in log2 units from the stage's ring (`ring`: the tile's first used key), so softmax_tile
// then runs with a scale of 1. Element e of n8 block j is key 8j + 2(lane%4) + (e&1) (as below).
// Only additive masks come here (boolean ones take the packed bits, which select), so the term is
// added as the mask's definition says.
template <int NK>
__device__ __forceinline__ void apply_key_mask(float (&sc)[64], const float* ring, int lane, float scale_log2) {
#pragma unroll
  for (int j = 0; j < NK / 8; ++j) {
    const float2 m = *reinterpret_cast<const float2*>(ring + 8 * j + 2 * (lane & 3));
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      sc[4 * j + 2 * r] = fmaf(sc[4 * j + 2 * r], scale_log2, m.x);
      sc[4 * j + 2 * r + 1] = fmaf(sc[4 * j + 2 * r + 1], scale_log2, m.y);
    }
  }
}

// Row masks (Note [Hopper row masks]): the packed keep bits of the thread's two rows for the NK
// keys from key0 (a multiple of 64), from rows `row` of the workspace's bit rows; issued at the
// start of a step so that their latency runs under the tile's wgmma.
template <int NK>
__device__ __forceinline__ void load_row_bits(std::uint32_t (&mb)[2][4], const std::uint32_t* const (&row)[2], int key0) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if constexpr (NK == 128) {
      const uint4 w = __ldg(reinterpret_cast<const uint4*>(row[r] + key0 / 32));
      mb[r][0] = w.x;
      mb[r][1] = w.y;
      mb[r][2] = w.z;
      mb[r][3] = w.w;
    } else {
      const uint2 w = __ldg(reinterpret_cast<const uint2*>(row[r] + key0 / 32));
      mb[r][0] = w.x;
      mb[r][1] = w.y;
    }
  }
}
// A dropped key's score becomes -inf (selected, so a NaN or Inf in k there does not reach the row).
// Element e of n8 block j is key 8j + 2(lane%4) + (e&1): bit 8(j%4) + 2(lane%4) + (e&1) of word j/4.
// A tile whose bits keep every key for all of the warp's rows (most tiles of a padding mask) skips
// the selects: the test is a warp vote, so the branch is uniform (Note [Hopper row masks]).
template <int NK>
__device__ __forceinline__ void apply_row_bits(float (&sc)[64], const std::uint32_t (&mb)[2][4], int lane) {
  std::uint32_t kept = ~0u;
#pragma unroll
  for (int r = 0; r < 2; ++r)
#pragma unroll
    for (int q = 0; q < NK / 32; ++q) kept &= mb[r][q];
  if (__all_sync(0xffffffffu, kept == ~0u)) return;
#pragma unroll
  for (int r = 0; r < 2; ++r)
#pragma unroll
    for (int q = 0; q < NK / 32; ++q) {
      const std::uint32_t w = mb[r][q] >> (2 * (lane & 3));
#pragma unroll
      for (int jj = 0; jj < 4; ++jj)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          float& x = sc[4 * (4 * q + jj) + 2 * r + c];
          x = (w >> (8 * jj + c)) & 1u ? x : k_neg_inf;
        }
    }
}

// Band mask and online softmax of a completed S tile, in place: sc[0, NK / 2) becomes the
// unnormalised P (fp32, log2 units, ex2.approx); row_m and row_l move to the new row maxima and
// `alpha` is the factor O must be rescaled by before P V of this tile. Keys [n0, n0 + NK) need no
// mask when `unmasked`. Element e of n8 block j: row i_lo + 8 * ((e >> 1) & 1), key
// n0 + 8j + 2(lane%4) + (e&1). The scale is applied inside the exponent's FFMA, not by a pass of
// its own: with scale_log2 positive and normal (sm90_kernel_for) the maximum of the raw scores
// times the scale is the maximum of the scaled ones, exactly, and -inf stays -inf. A row with no
// visible key so far keeps m = -inf and uses 0 as its reference, so exp2 never sees
// (-inf) - (-inf).
template <int NK>
__device__ __forceinline__ void softmax_tile(float (&sc)[64], float (&row_m)[2], float (&row_l)[2], float (&alpha)[2],
                                             int n0, bool unmasked, const int (&lo_r)[2], const int (&hi_r)[2], int lane,
                                             float scale_log2) {
  if (!unmasked) {
    const int col_base = n0 + (lane & 3) * 2;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int lo = lo_r[r] - col_base, hi = hi_r[r] - col_base;
#pragma unroll
      for (int j = 0; j < NK / 8; ++j)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          float& x = sc[4 * j + 2 * r + c];
          x = 8 * j + c >= lo && 8 * j + c < hi ? x : k_neg_inf;
        }
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float raw = k_neg_inf;
#pragma unroll
    for (int j = 0; j < NK / 8; ++j) raw = fmaxf(raw, fmaxf(sc[4 * j + 2 * r], sc[4 * j + 2 * r + 1]));
    raw = fmaxf(raw, __shfl_xor_sync(0xffffffffu, raw, 1));
    raw = fmaxf(raw, __shfl_xor_sync(0xffffffffu, raw, 2));
    const float mx = fmaxf(row_m[r], raw * scale_log2);  // -inf stays -inf (scale_log2 > 0)
    const float m_use = mx == k_neg_inf ? 0.0f : mx;
    alpha[r] = exp2_approx(row_m[r] - m_use);
    row_m[r] = mx;
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < NK / 8; ++j)
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        float& x = sc[4 * j + 2 * r + c];
        x = exp2_approx(fmaf(x, scale_log2, -m_use));
        sum += x;
      }
    row_l[r] = row_l[r] * alpha[r] + sum;
  }
}

// P as the A operand of the P V wgmma: k16 step kk holds registers {row lo, row hi} x {first,
// second n8 block}.
template <typename T, int NK>
__device__ __forceinline__ void pack_p(std::uint32_t (&pa)[8][4], const float (&sc)[64]) {
#pragma unroll
  for (int j = 0; j < NK / 8; ++j)
#pragma unroll
    for (int r = 0; r < 2; ++r) pa[j / 2][(j % 2) * 2 + r] = pack2<T>(sc[4 * j + 2 * r], sc[4 * j + 2 * r + 1]);
}
#endif  // ATTEND_SM90_DEVICE

}  // namespace sm90

// Note [Hopper scheduler]: the kernel is persistent. The grid has one CTA per SM (at most one
// fits: ~194 KB of shared memory at D = 128, ~180 KB at 64); each CTA's producer warp takes the
// next work item (64 C query rows of one (batch, head)) from a counter in the workspace (zeroed on
// the caller's stream before the launch), so CTAs that drew short items take more of them. Items
// are numbered in groups of (batch, head) pairs (sm90_group_heads, flash.h: one pair unless the
// band's right edge moves with the row, causal or a right window bound), so the CTAs running at
// one time share the K/V of a few heads in L2; within a group the last row block of every pair
// comes first, then the one before it, and so on: under causal masking the last block sees the
// most keys, so the longest items start first and the short ones fill the end of the kernel,
// where CTAs that drew a long item would otherwise still run while the others have nothing left.
// When Sq is not a multiple of the item's rows, one item is partial and its missing 64-row parts
// leave consumers idle for each of its tiles; under such bands the grid of row blocks starts
// before row 0 (flash.h sm90_row_origin), so the partial item is the first, which sees the fewest
// tiles (at head dim 64, S = 1024, causal: one tile instead of all eight). The consumers of its
// parts before row 0 skip every tile (Note [Hopper skipped tiles]) and store nothing.
// The producer decodes the item (batch, head, first row, key tile range) once and hands it over in
// a shared-memory slot through two mbarriers: its thread writes the slot and arrives on slot_full;
// lane 0 of each consumer warp waits there, is the warp's only reader of the slot, arrives on
// slot_empty and broadcasts the item by shuffle, so the consumers do not repeat the divisions.
// There are two slots, one per Q buffer: the producer writes item j's slot once slot_empty says that
// every consumer warp read item j - 2's. Each direction is then one thread's release (the arrive)
// and another's acquire (the wait) with no third thread between them. The hand-over before this one
// (named barriers towards the consumers, every lane reading and lane 0 arriving for its warp after
// __syncwarp) is also ordered in the PTX memory model, but racecheck reported the slot's read/write
// pair in 5 of 10 runs on an H200; this one ran clean 10 times (bench/RESULTS.md). The Q buffer is
// reused once each consumer's TMA store of item j - 2's output has read it (q_empty, arrived by the
// thread that issued the store after cp.async.bulk.wait_group.read).
// Q is double-buffered: while the consumers finish item j (and store its output through their rows
// of Q buffer j % 2), the producer already loads item j + 1's Q and first K/V tiles, so the load
// latency and the epilogue that a CTA per item would pay at its start and end overlap with
// compute. The K/V ring and its phases run on across items, and the consumers meet only at its
// stages: one may finish an item and start the next while another is still on its last tile.
//
// Note [Hopper overlap]: the tensor cores and the softmax (exp2, max, sum: the SM's special-function
// and FMA pipes) must run at the same time, as in FlashAttention-3:
//   - within a consumer, tile t's S = Q K^T and tile t-1's O += P V are issued back to back as two
//     wgmma groups; `wgmma.wait_group 1` returns when S is done, so tile t's softmax runs while
//     P V of tile t-1 is still on the tensor cores; then `wait_group 0`, O is rescaled and tile t's
//     P is packed for the next step. K of a stage is released as soon as its S completed, V once
//     its P V did (separate empty barriers), so the producer refills K a step earlier;
//   - between the consumers, turns in a ring (ping-pong with two): consumer c issues its wgmma
//     only after taking its turn (named barrier k_bar_turn + c) and passes it to consumer c + 1
//     (mod C) right after issuing, so one consumer's instructions reach the tensor cores while the
//     others run their softmax. Every tile of an item is one turn, plus one for the item's last
//     P V, the same count for every consumer since they run the same items over the same tiles
//     (a tile a consumer skips is still its turn, Note [Hopper skipped tiles]); the last consumer
//     gives the first turn and consumer 0 completes the last one at exit. (bf16 on the H100,
//     attend_gpu_bench, same run: with the turns 1.1-1.2x faster at head dim 64, up to 1.05x at
//     128.)
//   Not done: carrying the pipeline across items (an item's last P V issued with the next item's
//   first Q K^T). Tried twice, the second time with an unchanged steady-state step in SASS, and
//   slower both times at head dim 128 (bench/RESULTS.md).
// The pipeline exists only if ptxas keeps every wgmma asynchronous. It serialises all of a
// kernel's wgmma (reporting it only as an info line, C7510-C7515) when an accumulator may be read
// or written by other instructions while a wgmma is in flight (so each step's wgmma are issued and
// waited for inside one template instantiation, with no branch in between that merges register
// values: `step` per (key width, first tile or not); waits are never skipped on a path), when a
// branch on a thread-varying value sits between issue and wait (so lane 0's arrivals are
// predicated: mbar_arrive_if), or when registers run short: the first k16 step of S = Q K^T writes
// its accumulators without reading them ("=f", wgmma_ss<..., First>), so the 64 score registers are not
// live between tiles. The build checks this per Hopper translation unit with ptxas' report
// (tests/CMakeLists.txt: *_wgmma_pipeline; no GPU needed).
//
// Note [Hopper half tiles]: a consumer warpgroup whose 64 rows see only one half of a 128-key tile
// (the diagonal tile under causal masking: the first 64 rows see only its first 64 keys; a
// window's left edge) runs wgmma at n = 64 on that half. The consumers share the SM's tensor
// cores, so the halved work shortens the tile; at S = 1024 (head dim 128) the 8 diagonal tiles
// are 8 of a head's 36 causal tiles. Which consumer takes which 64 rows changes from item to item,
// so no consumer always has the longest diagonal and runs behind the others by more each item: it
// moves by one with the Q buffer's parity (part = (c + j % 2) mod C), not with every item. A
// consumer stages its output in its part's rows of the Q buffer, so this way the rows of a buffer
// are written by the same consumer each time the buffer comes back. With part = (c + j) mod C, at
// C = 3 consumer c + 1 wrote the rows that consumer c had written two items earlier; that is
// ordered (c's TMA store read them, then q_empty, the producer and the next Q load), but through
// threads between the two, and racecheck reported the write pair (124 hazards per instruction in
// 1 of 3 runs on an H200, bench/RESULTS.md).
//
// Note [Hopper skipped tiles]: the producer loads every key tile that any row of an item sees; a
// consumer whose 64 rows see none of a tile (above the causal diagonal, left of a window, or rows
// outside the sequence: past its end in the last item, before row 0 in the first item of a grid
// that starts early, Note [Hopper scheduler]) issues no wgmma for it. It still takes and passes
// its turn, so every consumer takes the same number of turns per item (Note [Hopper overlap]), and
// it releases the stage only after waiting for both of its loads, so no stage is refilled while a
// load into it is in flight (possible when no consumer sees the tile: rows with empty bands under
// bottom-right alignment make the item's tile range start early). If it has a P V pending, it
// issues it in that turn. At head dim 64 (three consumers, 192-row items) this removes the
// largest share of causal waste: the first consumer of an item on the diagonal sees at most half
// of the item's last tile, and at S = 1024 one item has only 64 rows, so two consumers have none
// (the first item, which covers a single key tile, Note [Hopper scheduler]).
//
// Note [Hopper varlen]: varlen calls run the same kernel (Mode = varlen) over packed rows: the
// tensor maps span all rows of q/out and k/v as one batch, and the item order is that of a dense
// call with the longest sequence's row blocks for every sequence; the producer reads each item's
// sequence from cu_seqlens, passes over the row blocks past its end, and hands the consumers the
// sequence (first row, rows, first key, keys, band offsets from sm90_varlen_offsets) in the slot.
// A tile's rows and keys past the sequence are those of the next one: rows past the end see no key
// (the band test, as past Sq), keys past the end are outside every band, and two places must not
// read or write them as a dense call's zero-filled rows:
//   - V: P is 0 at those keys, but 0 x NaN is NaN, so a NaN or Inf in the next sequence's V would
//     reach this one's rows (the CPU backends and the mma.sync kernel give such a key nothing,
//     attend/params.h). A V tile that runs past the sequence's end lands on its own barrier; the
//     producer warp zeroes its rows past the end, fences them for the async proxy and only then
//     completes the stage's full_v. One such tile per item at most (its last).
//   - the output: a TMA store would write the next sequence's rows, so a consumer whose 64 rows
//     run past the end stores its rows in the sequence from the staged tile with 16-byte stores.
//     (Rows before the start, in the first block of a grid that starts early, are whole 64-row
//     parts that store nothing, as in a dense call.)
//
// Note [Hopper key masks]: an additive mask that is the same for every query row (strides 0 over
// them: a key-padding mask [B, 1 or H, 1, Skv], as diffusers passes for padded text) runs on this
// kernel (Mode = key_mask). Boolean masks never come here: they take the packed bits of Note
// [Hopper row masks] (packed_mask), measured faster, and a dropped key's -inf is selected
// there, not added, so a NaN or Inf in k at it never reaches the row. Other masks, and masks with
// varlen, run the mma.sync kernel. The producer warp writes the additive term of each key of a tile
// (mask_term, flash_common.cuh, in log2 units clamped as Note [GPU clamped scores] says; 0 past
// Skv) into a ring of one float per key per stage, then arrives on the stage's full_k; each
// consumer thread adds its keys' terms to S right after S completes (apply_key_mask, with the
// scale: softmax_tile then runs with scale 1) and only then arrives on empty_k. Both directions are
// one thread's release and another's acquire: full_k counts the 32 producer lanes (lane 0's arrival
// carries the K tile's bytes) and empty_k every consumer thread in this mode, so no thread orders
// another's ring accesses (the pattern racecheck reports, Note [Hopper scheduler]).
//
// Note [Hopper row masks]: a boolean mask ([B or 1, H or 1, Sq or 1, Skv]: with a row per query, as
// Hugging Face materialises padding masks, or one row for all, a key-padding mask) runs on this
// kernel too (Mode = row_mask), packed first: launch_mask_bits (flash_generic.cu; launched once the
// tensor maps are encoded) writes one bit per key into the workspace (a thread per 32-key word,
// rows padded with dropped keys to whole 128-key tiles), an eighth of the mask's bytes, read once
// per call (a mask constant along keys but not along rows, [B, H, Sq, 1], stays on the mma.sync
// kernel: its bits would outgrow it; one constant along both packs to a row per (batch, head)). Each consumer thread then loads its two rows' bits of a tile (one 16-byte load per
// row, 8 bytes on a half tile) at the start of its step, so the load runs under the tile's wgmma,
// and selects -inf at the dropped keys right after S completes (apply_row_bits): as on the mma.sync
// and scalar kernels, a NaN or Inf in k at a dropped key does not reach the row. A warp whose rows
// keep every key of the tile (a warp vote; most tiles of a padding mask) skips the selects. The
// producer runs the dense loop. Additive masks with a row per query stay on the mma.sync kernel:
// their values do not pack into bits. Measured (bench/RESULTS.md): 6-9% below the unmasked kernel
// on a padding mask.
template <elem E, int Width, sm90::mode Mode, bool PaddedQk, int PvN>
__global__ void __launch_bounds__(sm90::threads(Width), 1)
    flash_sm90_kernel(const __grid_constant__ flash_params p, const __grid_constant__ CUtensorMap tm_q,
                      const __grid_constant__ CUtensorMap tm_k, const __grid_constant__ CUtensorMap tm_v,
                      const __grid_constant__ CUtensorMap tm_o) {
#ifdef ATTEND_SM90_DEVICE
  using namespace sm90;
  using T = typename elem_traits<E>::type;
  constexpr int C = sm90_consumers(Width);  // consumer warpgroups
  constexpr int BM = sm90_block_m(Width), BN = k_sm90_block_n;
  constexpr int blocks = Width / 64;  // 64-element (128-byte) column blocks per row
  constexpr int q_bytes = tile_bytes(BM, Width), kv_bytes = tile_bytes(BN, Width);
  constexpr int stages = k_stages(Width);
  constexpr bool Varlen = Mode == mode::varlen, KeyMask = Mode == mode::key_mask, RowMask = Mode == mode::row_mask;
  static_assert(BM == 64 * C && BN == 128 && (Width == 64 || Width == 128), "tile shape of Note [Hopper path]");
  static_assert(PvN <= Width, "P V's N (Note [Hopper padded head dims])");

  extern __shared__ unsigned char smem_raw[];
  // 128-byte swizzled tiles need 1024-byte aligned bases.
  const std::uint32_t base = (smem_addr(smem_raw) + 1023u) & ~1023u;
  unsigned char* const base_ptr = smem_raw + (base - smem_addr(smem_raw));
  const std::uint32_t s_q0 = base;                             // 2 Q buffers
  const std::uint32_t s_k = s_q0 + 2 * q_bytes;         // stages of K
  const std::uint32_t s_v = s_k + stages * kv_bytes;    // stages of V
  const std::uint32_t s_bar = s_v + stages * kv_bytes;  // barriers (8 bytes each), the two item slots
  // mbarrier i of the group that starts at barrier index `first`.
  auto bar_at = [&](int first, int i) { return s_bar + 8u * static_cast<std::uint32_t>(first + i); };
  auto bar_q_full = [&](int qb) { return bar_at(0, qb); };
  auto bar_q_empty = [&](int qb) { return bar_at(2, qb); };
  auto bar_full_k = [&](int s) { return bar_at(4, s); };
  auto bar_full_v = [&](int s) { return bar_at(4 + stages, s); };
  // K and V of a stage are released separately: K once S = Q K^T completed, V once P V did
  // (Note [Hopper overlap]).
  auto bar_empty_k = [&](int s) { return bar_at(4 + 2 * stages, s); };
  auto bar_empty_v = [&](int s) { return bar_at(4 + 3 * stages, s); };
  // Two item slots, one per Q buffer (Note [Hopper scheduler]), of k_slot_ints ints (together the
  // room of k_slot_ints barriers). Slot qb holds the item the producer decoded: batch (-1: no more items), head,
  // first row, first and end key tile.
  // Varlen adds the sequence: first row, rows, first key, keys, band offsets (Note [Hopper varlen]).
  constexpr int k_slot_fields = Varlen ? 11 : 5;
  constexpr int k_slot_ints = Varlen ? 12 : 8, k_slots_first = 4 + 4 * stages;
  volatile int* const item_slot = reinterpret_cast<volatile int*>(base_ptr + (bar_at(k_slots_first, 0) - base));
  // Slot qb holds a new item (the producer's thread arrives after writing it), and it has been read
  // by every consumer warp (lane 0 of each, the only reader, arrives after its reads).
  auto bar_slot_full = [&](int qb) { return bar_at(k_slots_first + k_slot_ints, qb); };
  auto bar_slot_empty = [&](int qb) { return bar_at(k_slots_first + k_slot_ints + 2, qb); };
  // Varlen: the V tile that runs past its sequence lands here first (Note [Hopper varlen]).
  const std::uint32_t bar_v_fill = bar_at(k_slots_first + k_slot_ints + 4, 0);
  static_assert(8 * (k_slots_first + k_slot_ints + 5) <= 1024, "barriers and slots fit their 1024 bytes (smem_bytes)");
  // Key masks: stage s's terms, in log2 units (Note [Hopper key masks]).
  float* const mask_ring = reinterpret_cast<float*>(base_ptr + (s_bar + 1024 - base));
  // Named barriers: 0 is __syncthreads; 1 + c: consumer c's epilogue; 1 + C + c: consumer c's turn
  // to issue wgmma (Note [Hopper overlap]).
  constexpr int k_bar_turn = 1 + C;

  const int tid = static_cast<int>(threadIdx.x);
  const int warpgroup = tid / 128;
  if (tid == 0) {
    for (int qb = 0; qb < 2; ++qb) {
      mbar_init(bar_q_full(qb), 1);
      mbar_init(bar_q_empty(qb), C);  // each consumer's storing thread, once its TMA store read the rows
      mbar_init(bar_slot_full(qb), 1);       // the producer's thread
      mbar_init(bar_slot_empty(qb), 4 * C);  // lane 0 of each consumer warp
    }
    for (int s = 0; s < stages; ++s) {
      mbar_init(bar_full_k(s), KeyMask ? 32 : 1);  // key masks: every producer lane, after its ring writes
      mbar_init(bar_full_v(s), 1);
      mbar_init(bar_empty_k(s), KeyMask ? 128 * C : 4 * C);  // key masks: every consumer thread
      mbar_init(bar_empty_v(s), 4 * C);
    }
    if constexpr (Varlen) mbar_init(bar_v_fill, 1);
    asm volatile("fence.mbarrier_init.release.cluster;\nfence.proxy.async.shared::cta;\n" ::: "memory");
  }
  __syncthreads();
  const int items = static_cast<int>(sm90_item_count(p, Width));  // < 2^30: sm90_kernel_for

  if (warpgroup == 0) {
    // Registers: 65536 per SM = 128 x (producer + C x consumer).
    if constexpr (C == 3)
      asm volatile("setmaxnreg.dec.sync.aligned.u32 32;\n" ::: "memory");
    else
      asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
    if (tid >= 32) return;
    // Warp 0: lane 0 takes the items, hands them over and issues the loads (the other lanes join
    // the tile loop under varlen and key masks: Note [Hopper varlen], Note [Hopper key masks]).
    int kv = 0;  // key tiles issued so far (ring position across items)
    // The next item is taken one item ahead, so the atomic's latency is not paid at the boundary.
    int w_next = tid == 0 ? atomicAdd(p.maybe_work_counter, 1) : 0;
    // Lane 0 hands item j over in its slot (Note [Hopper scheduler]). Item j's slot and Q buffer
    // were item j - 2's: the slot is reused once every consumer warp read it, the buffer once the
    // consumers' TMA stores of that item's output read it. Varlen adds the sequence.
    auto hand_over = [&](int j, const work_item& it, int t_begin, int t_end, const seq_item& sq) {
      const int qb = j & 1;
      if (j >= 2) {
        const auto parity = static_cast<std::uint32_t>(((j >> 1) - 1) & 1);
        mbar_wait(bar_slot_empty(qb), parity);
        mbar_wait(bar_q_empty(qb), parity);
      }
      volatile int* const slot = item_slot + qb * k_slot_ints;
      slot[0] = it.b;
      slot[1] = it.h;
      slot[2] = it.m0;
      slot[3] = t_begin;
      slot[4] = t_end;
      if constexpr (Varlen) {
        slot[5] = sq.start_q;
        slot[6] = sq.len_q;
        slot[7] = sq.start_kv;
        slot[8] = sq.len_kv;
        slot[9] = sq.off.lo;
        slot[10] = sq.off.hi;
      }
      mbar_arrive(bar_slot_full(qb));  // release: the writes above before the consumers' reads
    };
    if constexpr (Varlen || KeyMask) {
      // The same hand-over and loads as the dense loop below, with the whole warp in the tile loop.
      // Varlen (Note [Hopper varlen]): lane 0 passes over items past their sequence's end, the slot
      // carries the sequence, and a V tile that runs past the sequence lands on bar_v_fill; the warp
      // zeroes its rows past the end, and lane 0 then completes full_v by a plain arrival. Key masks
      // (Note [Hopper key masks]): every lane writes its keys' mask terms into the stage's ring and
      // arrives on full_k itself.
      std::uint32_t fill_parity = 0;
      for (int j = 0;; ++j) {
        const int qb = j & 1;
        int w = w_next;
        work_item it{-1, 0, 0};
        seq_item sq = dense_seq(p);
        int t_begin = 0, t_end = 0;
        if (tid == 0) {
          if constexpr (Varlen) {
            for (; w < items; w = atomicAdd(p.maybe_work_counter, 1))
              if (varlen_item_of(p, w, BM, it, sq)) break;
          } else if (w < items) {
            it = item_of(p, w, BM);
          }
          if (w < items) tile_range(sq.off, sq.len_q, sq.len_kv, it.m0, BM, t_begin, t_end);
          hand_over(j, it, t_begin, t_end, sq);
        }
        w = __shfl_sync(0xffffffffu, w, 0);
        if (w >= items) break;
        t_begin = __shfl_sync(0xffffffffu, t_begin, 0);
        t_end = __shfl_sync(0xffffffffu, t_end, 0);
        const int len_kv = __shfl_sync(0xffffffffu, sq.len_kv, 0);
        const int mask_b = __shfl_sync(0xffffffffu, it.b, 0), mask_h = __shfl_sync(0xffffffffu, it.h, 0);
        const int hk = it.h / p.group_size;  // lane 0's
        const int tma_b = Varlen ? 0 : it.b;   // varlen: packed rows, one batch
        if (tid == 0) {
          w_next = atomicAdd(p.maybe_work_counter, 1);
          mbar_expect_tx(bar_q_full(qb), q_bytes);
#pragma unroll
          for (int c = 0; c < blocks; ++c)
            tma_load(s_q0 + qb * q_bytes + c * tile_bytes(BM, 64), &tm_q, bar_q_full(qb), c * 64, sq.start_q + it.m0,
                     it.h, tma_b);
        }
        for (int t = t_begin; t < t_end; ++t, ++kv) {
          const int s = kv % stages;
          const auto reuse_parity = static_cast<std::uint32_t>((kv / stages - 1) & 1);
          const int valid = len_kv - t * BN;  // keys of the sequence in the tile (>= 1)
          if constexpr (KeyMask) {
            if (kv >= stages) mbar_wait(bar_empty_k(s), reuse_parity);  // every consumer thread read the ring
#pragma unroll
            for (int i = 0; i < BN / 32; ++i) {
              const int key = 32 * i + tid;
              // log2 units, clamped (Note [GPU clamped scores])
              mask_ring[s * BN + key] = key < valid ? to_log2_units(mask_term(p, mask_b, mask_h, 0, t * BN + key)) : 0.0f;
            }
            if (tid != 0) mbar_arrive(bar_full_k(s));  // lane 0 arrives with the K tile's bytes
          }
          if (tid == 0) {
            const int key_row = sq.start_kv + t * BN;
            if (!KeyMask && kv >= stages) mbar_wait(bar_empty_k(s), reuse_parity);
            mbar_expect_tx(bar_full_k(s), kv_bytes);
#pragma unroll
            for (int c = 0; c < blocks; ++c)
              tma_load(s_k + s * kv_bytes + c * tile_bytes(BN, 64), &tm_k, bar_full_k(s), c * 64, key_row, hk, tma_b);
            if (kv >= stages) mbar_wait(bar_empty_v(s), reuse_parity);
            const std::uint32_t v_bar = !Varlen || valid >= BN ? bar_full_v(s) : bar_v_fill;
            mbar_expect_tx(v_bar, kv_bytes);
#pragma unroll
            for (int c = 0; c < blocks; ++c)
              tma_load(s_v + s * kv_bytes + c * tile_bytes(BN, 64), &tm_v, v_bar, c * 64, key_row, hk, tma_b);
          }
          if (Varlen && valid < BN) {
            // Rows past the sequence hold the next sequence's V (or the TMA's zeros past the last
            // one); P is 0 there, but 0 x NaN is NaN, so they become zeros before any wgmma reads
            // them. Each column block's rows [valid, BN) are one contiguous range (the swizzle only
            // permutes 16-byte chunks within a row).
            mbar_wait(bar_v_fill, fill_parity);
            fill_parity ^= 1u;
            unsigned char* const stage = base_ptr + (s_v - base) + s * kv_bytes;
#pragma unroll
            for (int c = 0; c < blocks; ++c)
              for (int off = valid * 128 + tid * 16; off < BN * 128; off += 32 * 16)
                *reinterpret_cast<uint4*>(stage + c * tile_bytes(BN, 64) + off) = make_uint4(0, 0, 0, 0);
            asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // the zeros, before wgmma reads them
            __syncwarp();
            if (tid == 0) mbar_arrive(bar_full_v(s));
          }
        }
        __syncwarp();
      }
    } else {
      for (int j = 0;; ++j) {
        const int qb = j & 1;
        const int w = __shfl_sync(0xffffffffu, w_next, 0);
        work_item it{-1, 0, 0};
        int t_begin = 0, t_end = 0;
        if (tid == 0) {
          if (w < items) {
            it = item_of(p, w, BM);
            tile_range({p.sm90_band_lo, p.sm90_band_hi}, p.seqlen_q, p.seqlen_kv, it.m0, BM, t_begin, t_end);
          }
          hand_over(j, it, t_begin, t_end, seq_item{});  // a dense item's slot has no sequence
        }
        if (w >= items) break;
        if (tid == 0) {
          w_next = atomicAdd(p.maybe_work_counter, 1);
          const int hk = it.h / p.group_size;
          mbar_expect_tx(bar_q_full(qb), q_bytes);
#pragma unroll
          for (int c = 0; c < blocks; ++c)
            tma_load(s_q0 + qb * q_bytes + c * tile_bytes(BM, 64), &tm_q, bar_q_full(qb), c * 64, it.m0, it.h, it.b);
          for (int t = t_begin; t < t_end; ++t, ++kv) {
            const int s = kv % stages;
            const auto reuse_parity = static_cast<std::uint32_t>((kv / stages - 1) & 1);
            if (kv >= stages) mbar_wait(bar_empty_k(s), reuse_parity);
            mbar_expect_tx(bar_full_k(s), kv_bytes);
#pragma unroll
            for (int c = 0; c < blocks; ++c)
              tma_load(s_k + s * kv_bytes + c * tile_bytes(BN, 64), &tm_k, bar_full_k(s), c * 64, t * BN, hk, it.b);
            if (kv >= stages) mbar_wait(bar_empty_v(s), reuse_parity);
            mbar_expect_tx(bar_full_v(s), kv_bytes);
#pragma unroll
            for (int c = 0; c < blocks; ++c)
              tma_load(s_v + s * kv_bytes + c * tile_bytes(BN, 64), &tm_v, bar_full_v(s), c * 64, t * BN, hk, it.b);
          }
        }
        __syncwarp();
      }
    }
    return;
  }

  if constexpr (C == 3)
    asm volatile("setmaxnreg.inc.sync.aligned.u32 160;\n" ::: "memory");
  else
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
  // Consumer index, broadcast so ptxas knows it is warp-uniform: branches on values derived from it
  // (the key width of a step) are then not divergent paths (Note [Hopper overlap]).
  const int cw = __shfl_sync(0xffffffffu, warpgroup, 0) - 1;
  const int wtid = tid % 128, warp = wtid / 32, lane = wtid % 32;
  const float scale_log2 = attend::cuda::scale_log2(p);
  // Turns to issue wgmma alternate between the consumers, consumer 0 first (Note [Hopper
  // overlap]): consumer c waits on barrier k_bar_turn + c and passes the turn on to the next one's.
  auto take_turn = [&] { named_sync(k_bar_turn + cw, 256); };
  auto pass_turn = [&] { named_arrive(k_bar_turn + (cw + 1) % C, 256); };
  if (cw == C - 1) named_arrive(k_bar_turn, 256);  // consumer 0 takes the first turn
  // Lane 0 of each warp arrives for the warp (mbar_arrive_if: K is released while P V runs).
  auto release = [&](std::uint32_t bar) {
    __syncwarp();
    mbar_arrive_if(bar, lane == 0);
  };
  using k64 = std::integral_constant<int, 64>;
  using k128 = std::integral_constant<int, 128>;

  // The k16 steps of S = Q K^T that hold head_dim_qk columns (Note [Hopper padded head dims]).
  const int qk_steps = PaddedQk ? k16_steps(p.head_dim_qk) : Width / 16;
  int kv = 0;
  for (int j = 0;; ++j) {
    const int qb = j & 1;
    const std::uint32_t s_q = s_q0 + qb * q_bytes;
    // The item: lane 0 reads the slot and releases it itself (Note [Hopper scheduler]), then
    // broadcasts it, so ptxas knows it is warp-uniform (as cw).
    mbar_wait(bar_slot_full(qb), static_cast<std::uint32_t>((j >> 1) & 1));
    int fields[k_slot_fields] = {};
    if (lane == 0) {
      const volatile int* const slot = item_slot + qb * k_slot_ints;
#pragma unroll
      for (int f = 0; f < k_slot_fields; ++f) fields[f] = slot[f];
      mbar_arrive(bar_slot_empty(qb));
    }
#pragma unroll
    for (int f = 0; f < k_slot_fields; ++f) fields[f] = __shfl_sync(0xffffffffu, fields[f], 0);
    const work_item it{fields[0], fields[1], fields[2]};
    const int t_begin = fields[3], t_end = fields[4];
    // The item's rows and keys: the call's, or under varlen its sequence's (Note [Hopper varlen]).
    int start_q = 0, len_q = p.seqlen_q, len_kv = p.seqlen_kv;
    band32 off{p.sm90_band_lo, p.sm90_band_hi};
    if constexpr (Varlen) {  // as hand_over wrote them
      start_q = fields[5];
      len_q = fields[6];
      len_kv = fields[8];
      off = {fields[9], fields[10]};
    }
    if (it.b < 0) {
      if (wtid == 0) bulk_wait0();  // this consumer's output stores are complete
      // The last consumer's last turn left one arrival on consumer 0's barrier; complete it.
      if (cw == 0) named_sync(k_bar_turn, 256);
      break;
    }
    mbar_wait(bar_q_full(qb), static_cast<std::uint32_t>((j >> 1) & 1));
    // Rows [64 part, 64 part + 64) of the item; the parts move among the consumers with the Q
    // buffer's parity, so the one with the most keys on a causal diagonal is not always the same
    // (Note [Hopper half tiles]).
    const int part = (cw + qb) % C;
    const int row0 = it.m0 + 64 * part;            // first row of this warpgroup
    const int i_lo = row0 + 16 * warp + lane / 4;  // this thread's rows: i_lo and i_lo + 8

    // Keys any row of this warpgroup sees, and the keys every row sees (tiles inside need no mask).
    // Its 64 rows are all in the sequence, all past its end, all before its start (the first block
    // of a grid that starts before row 0, flash.h sm90_row_origin), or, in the last block, run past
    // its end.
    const bool wg_live = row0 >= 0 && row0 < len_q;
    int wg_key_lo = 0, wg_key_hi = 0, full_lo = 0, full_hi = 0;
    if (wg_live) {  // 32-bit bands (Note [Hopper 32-bit bands] in flash.h)
      const band32 f = sm90_band_in(row0, off, len_kv), l = sm90_band_in(min(row0 + 63, len_q - 1), off, len_kv);
      wg_key_lo = f.lo;
      wg_key_hi = l.hi;
      full_lo = l.lo;
      full_hi = f.hi;
    }
    // Per-row bands (rows outside the sequence see nothing).
    int lo_r[2], hi_r[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int i = i_lo + 8 * r;
      lo_r[r] = hi_r[r] = 0;
      if (wg_live && i < len_q) {
        const band32 bd = sm90_band_in(i, off, len_kv);
        lo_r[r] = bd.lo;
        hi_r[r] = bd.hi;
      }
    }

    // Row masks: the thread's two rows of packed keep bits (Note [Hopper row masks]). A row past
    // the sequence's end reads the last row's bits; whatever it computes is never stored (the TMA
    // store clips it, its lse is not written).
    [[maybe_unused]] const std::uint32_t* bits_row[2] = {nullptr, nullptr};
    if constexpr (RowMask) {
#pragma unroll
      for (int r = 0; r < 2; ++r)
        bits_row[r] = p.maybe_mask_bits + it.b * p.mask_bits_stride[0] + it.h * p.mask_bits_stride[1] +
                      static_cast<std::int64_t>(min(max(i_lo + 8 * r, 0), len_q - 1)) * p.mask_bits_stride[2];
    }

    float o[PvN / 2];  // O's first PvN columns; the rest are zero (Note [Hopper padded head dims])
#pragma unroll
    for (int e = 0; e < PvN / 2; ++e) o[e] = 0.0f;
    float row_m[2] = {k_neg_inf, k_neg_inf}, row_l[2] = {0.0f, 0.0f};
    const std::uint32_t a_base = s_q + part * 64 * 128;  // its rows of the Q buffer: its Q, then its output

    // Software pipeline over the item's tiles (Note [Hopper overlap]): the P V of the previous tile
    // (P in `pa`, over pv_nk keys from pv_v) is issued right after this tile's Q K^T and runs while
    // this tile's softmax does. A tile takes NK = 64 keys when this warpgroup's rows see only one
    // half of it (Note [Hopper half tiles]), else 128; one they see none of is skipped.
    float sc[64];
    std::uint32_t pa[8][4];
    int pv_nk = 128, pv_stage = 0;
    std::uint32_t pv_v = 0, pv_parity = 0;
    auto fence_operands = [&] {  // the rescaled O and the packed P are in registers before wgmma.fence
      reg_fence(o);
#pragma unroll
      for (int kk = 0; kk < 8; ++kk) reg_fence_u32(pa[kk]);
      wg_fence();
    };
    auto issue_pending_pv = [&] {
      if (pv_nk == 128)
        issue_pv<T, PvN, 128>(o, pa, pv_v);
      else
        issue_pv<T, PvN, 64>(o, pa, pv_v);
      wg_commit();
    };
    // One tile: its S = Q K^T, then (`with_pv`) the pending P V, each a wgmma group, in one turn;
    // softmax of S while P V runs; then O rescaled and this tile's P packed as the next pending
    // P V. Every wgmma is issued and waited for inside one instantiation, with no branch between
    // that changes which registers an accumulator lives in: otherwise ptxas serialises the
    // pipeline.
    // n0: the tile's first key; h0: the first key used, within the tile.
    auto step = [&](auto nk_c, auto with_pv_c, int n0, int s, std::uint32_t parity, int h0, bool unmasked) {
      constexpr int NK = decltype(nk_c)::value;
      constexpr bool with_pv = decltype(with_pv_c)::value;
      [[maybe_unused]] std::uint32_t mb[2][4];
      if constexpr (RowMask) load_row_bits<NK>(mb, bits_row, n0 + h0);
      take_turn();
      mbar_wait(bar_full_k(s), parity);
      if constexpr (with_pv) mbar_wait(bar_full_v(pv_stage), pv_parity);
      fence_operands();
      issue_qk<T, Width, NK, PaddedQk>(sc, a_base, s_k + s * kv_bytes + h0 * 128, qk_steps);
      wg_commit();
      if constexpr (with_pv) issue_pending_pv();
      pass_turn();
      if constexpr (with_pv)
        wg_wait1();  // this tile's S; the previous P V may still run
      else
        wg_wait0();
      reg_fence(sc);
      if constexpr (KeyMask) {
        apply_key_mask<NK>(sc, mask_ring + s * BN + h0, lane, scale_log2);
        mbar_arrive(bar_empty_k(s));  // each thread, after its reads of the ring (Note [Hopper key masks])
      } else {
        release(bar_empty_k(s));
      }
      if constexpr (RowMask) apply_row_bits<NK>(sc, mb, lane);
      float alpha[2];
      softmax_tile<NK>(sc, row_m, row_l, alpha, n0 + h0, unmasked, lo_r, hi_r, lane, KeyMask ? 1.0f : scale_log2);
      if constexpr (with_pv) {
        wg_wait0();
        reg_fence(o);
        release(bar_empty_v(pv_stage));
      }
#pragma unroll
      for (int r = 0; r < 2; ++r)
#pragma unroll
        for (int jd = 0; jd < PvN / 8; ++jd) {
          o[4 * jd + 2 * r] *= alpha[r];
          o[4 * jd + 2 * r + 1] *= alpha[r];
        }
      pack_p<T, NK>(pa, sc);
      pv_nk = NK;
      pv_stage = s;
      pv_parity = parity;
      pv_v = s_v + s * kv_bytes + h0 * 128;
    };
    // A tile none of this warpgroup's rows sees (past the diagonal of its rows, before a window's
    // left edge, or rows past the sequence) is skipped: no wgmma, no softmax; its turn is still
    // taken and its stage released once loaded (Note [Hopper skipped tiles]).
    auto skip = [&](auto with_pv_c, int s, std::uint32_t parity) {
      constexpr bool with_pv = decltype(with_pv_c)::value;
      take_turn();
      if constexpr (with_pv) {
        mbar_wait(bar_full_v(pv_stage), pv_parity);
        fence_operands();
        issue_pending_pv();
      }
      pass_turn();
      mbar_wait(bar_full_k(s), parity);
      mbar_wait(bar_full_v(s), parity);
      if constexpr (KeyMask)
        mbar_arrive(bar_empty_k(s));  // every consumer thread arrives in this mode
      else
        release(bar_empty_k(s));
      release(bar_empty_v(s));
      if constexpr (with_pv) {
        wg_wait0();
        reg_fence(o);
        release(bar_empty_v(pv_stage));
      }
    };
    bool pending = false;  // a P V waits to be issued (this warpgroup ran a tile since its last one)
    for (int t = t_begin; t < t_end; ++t, ++kv) {
      const int s = kv % stages;
      const std::uint32_t parity = static_cast<std::uint32_t>((kv / stages) & 1);
      const int n0 = t * BN;
      // Which 64-key halves of the tile any row of this warpgroup sees (Note [Hopper half tiles]).
      const bool lo_half = wg_live && wg_key_lo < n0 + 64 && wg_key_hi > n0;
      const bool hi_half = wg_live && wg_key_lo < n0 + BN && wg_key_hi > n0 + 64;
      const int h0 = hi_half && !lo_half ? 64 : 0;  // first key used, within the tile
      const bool full = lo_half && hi_half;
      const bool unmasked = n0 + h0 >= full_lo && n0 + h0 + (full ? 128 : 64) <= full_hi;
      if (!lo_half && !hi_half) {
        if (pending)
          skip(std::true_type{}, s, parity);
        else
          skip(std::false_type{}, s, parity);
        pending = false;
      } else if (!pending) {
        if (full)
          step(k128{}, std::false_type{}, n0, s, parity, h0, unmasked);
        else
          step(k64{}, std::false_type{}, n0, s, parity, h0, unmasked);
        pending = true;
      } else if (full) {
        step(k128{}, std::true_type{}, n0, s, parity, h0, unmasked);
      } else {
        step(k64{}, std::true_type{}, n0, s, parity, h0, unmasked);
      }
    }
    // The last tile's P V. Every item with tiles takes one more turn, the same for every consumer
    // (they run the same items over the same tile range), with or without a P V to issue.
    if (t_end > t_begin) {
      take_turn();
      if (pending) {
        mbar_wait(bar_full_v(pv_stage), pv_parity);
        fence_operands();
        issue_pending_pv();
        pass_turn();
        wg_wait0();
        reg_fence(o);
        release(bar_empty_v(pv_stage));
      } else {
        pass_turn();
      }
    }

    // Epilogue: normalise; LSE; stage the rows in this warpgroup's rows of the Q buffer (only this
    // warpgroup ever read them, and its last wgmma has completed) in the layout its TMA load wrote
    // (128-byte swizzle), which a TMA store of the same layout reads back.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float l = row_l[r];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const float inv = l == 0.0f ? 0.0f : 1.0f / l;  // fully masked: out 0
      const int i = i_lo + 8 * r;
      if (p.maybe_lse && wg_live && (lane & 3) == 0 && i < len_q) {
        float lse = l == 0.0f ? k_neg_inf : row_m[r] * k_ln2 + logf(l);
        if (KeyMask && clamped_row(p, row_m[r], l))  // Note [GPU clamped scores]
          lse = clamped_row_lse(p, it.b, it.h, i, lo_r[r], hi_r[r], l);
        p.maybe_lse[it.b * p.lse_batch_stride + it.h * p.lse_head_stride + (start_q + i) * p.lse_seq_stride] = lse;
      }
      const int rr = 64 * part + 16 * warp + lane / 4 + 8 * r;  // row within the tile
      // Columns from PvN on keep what was there (Q): the store clips them (head_dim_v <= PvN).
#pragma unroll
      for (int jd = 0; jd < PvN / 8; ++jd) {
        const int blk = jd / 8, chunk = jd % 8;
        unsigned char* dst = base_ptr + (s_q - base) + blk * tile_bytes(BM, 64) + rr * 128 + ((chunk ^ (rr & 7)) << 4) +
                             (lane & 3) * 4;
        *reinterpret_cast<std::uint32_t*>(dst) = pack2<T>(o[4 * jd + 2 * r] * inv, o[4 * jd + 2 * r + 1] * inv);
      }
    }
    // Make the rows visible to the TMA unit (async proxy), then one thread stores the warpgroup's
    // 64 rows with TMA (rows past the sequence are clipped by the tensor map; a warpgroup without
    // rows in the sequence stores nothing) and, once the store has read them, gives the Q buffer
    // back to the producer.
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    named_sync(1 + cw, 128);
    bool tma_rows = wg_live;
    if constexpr (Varlen) {
      // Rows past the sequence are the next sequence's (Note [Hopper varlen]), which a TMA store
      // would overwrite: a warpgroup whose rows run past the end stores its rows in the sequence
      // from the staged tile, 16 bytes per thread and step.
      if (wg_live && row0 + 64 > len_q) {
        tma_rows = false;
        const unsigned char* const staged = base_ptr + (a_base - base);
        T* const out = static_cast<T*>(p.out) + it.h * p.out_stride[2];
        for (int idx = wtid; idx < 64 * blocks * 8; idx += 128) {
          const int rr = idx / (blocks * 8), blk = idx / 8 % blocks, chunk = idx % 8;
          if (row0 + rr < len_q && blk * 64 + chunk * 8 < p.head_dim_v)  // whole chunks: head_dim_multiple 8
            *reinterpret_cast<uint4*>(out + static_cast<std::int64_t>(start_q + row0 + rr) * p.out_stride[1] + blk * 64 +
                                      chunk * 8) =
                *reinterpret_cast<const uint4*>(staged + blk * tile_bytes(BM, 64) + rr * 128 + ((chunk ^ (rr & 7)) << 4));
        }
        named_sync(1 + cw, 128);  // every read of the rows before the buffer goes back
      }
    }
    if (wtid == 0) {
      if (tma_rows) {
#pragma unroll
        for (int c = 0; c < blocks; ++c)  // a block past head_dim_v stores nothing (Note [Hopper padded head dims])
          tma_store(&tm_o, a_base + c * tile_bytes(BM, 64), c * 64, start_q + row0, it.h, Varlen ? 0 : it.b);
        bulk_commit();
        bulk_wait_read0();
      }
      mbar_arrive(bar_q_empty(qb));
    }
  }
#else
  (void)p;
  (void)tm_q;
  (void)tm_k;
  (void)tm_v;
  (void)tm_o;
  __trap();  // not built for sm_90a: flash_backend.cpp never launches this (Note [Hopper path])
#endif
}

namespace sm90 {

// cuTensorMapEncodeTiled through the runtime's driver entry point (no link to libcuda).
inline PFN_cuTensorMapEncodeTiled_v12000 encode_fn() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      f = nullptr;
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

// A 4-D map of a [batch, seq, head, dim] tensor (dim innermost, unit stride) with boxes of
// 64 dims x `box_rows` rows, 128-byte swizzle, zero fill out of bounds (also past `dim`: Note
// [Hopper padded head dims]). False if the driver refuses.
inline bool encode_map(CUtensorMap* map, elem e, const void* data, const std::int64_t (&stride)[4], int seqlen, int heads,
                       int batch, int dim, int box_rows) {
  const auto fn = encode_fn();
  if (fn == nullptr) return false;
  constexpr std::int64_t eb = 2;
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(dim), static_cast<cuuint64_t>(seqlen), static_cast<cuuint64_t>(heads),
                              static_cast<cuuint64_t>(batch)};
  // A dimension of extent 1 is never stepped over; give it any valid stride if the caller's is 0.
  auto stride_of = [&](int i, int extent) {
    const std::int64_t s = stride[i] * eb;
    return static_cast<cuuint64_t>(extent == 1 && s == 0 ? 16 : s);
  };
  const cuuint64_t strides[3] = {stride_of(1, seqlen), stride_of(2, heads), stride_of(0, batch)};
  const cuuint32_t box[4] = {64, static_cast<cuuint32_t>(box_rows), 1, 1};
  const cuuint32_t elem_strides[4] = {1, 1, 1, 1};
  const CUresult r =
      fn(map, e == elem::bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4, const_cast<void*>(data),
         dims, strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
         CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS;
}

}  // namespace sm90

template <elem E, int Width>
bool launch_flash_sm90(const flash_params& p, void* stream) {
  static_assert(E == elem::f16 || E == elem::bf16);
  // Varlen tensors are packed rows (batch stride 0): one batch of total rows (Note [Hopper varlen]).
  const bool varlen = p.maybe_cu_seqlens_q != nullptr;
  const int rows_q = varlen ? p.total_q : p.seqlen_q, rows_kv = varlen ? p.total_kv : p.seqlen_kv;
  const int batch = varlen ? 1 : p.batch;
  CUtensorMap tm_q, tm_k, tm_v, tm_o;
  if (p.maybe_work_counter == nullptr || p.persistent_ctas < 1 ||
      p.head_dim_qk > Width || p.head_dim_v > Width ||  // Note [Hopper padded head dims]
      !sm90::encode_map(&tm_q, E, p.q, p.q_stride, rows_q, p.num_heads_q, batch, p.head_dim_qk, sm90_block_m(Width)) ||
      !sm90::encode_map(&tm_k, E, p.k, p.k_stride, rows_kv, p.num_heads_kv, batch, p.head_dim_qk, k_sm90_block_n) ||
      !sm90::encode_map(&tm_v, E, p.v, p.v_stride, rows_kv, p.num_heads_kv, batch, p.head_dim_v, k_sm90_block_n) ||
      !sm90::encode_map(&tm_o, E, p.out, p.out_stride, rows_q, p.num_heads_q, batch, p.head_dim_v, 64))
    return false;
  const auto s = static_cast<cudaStream_t>(stream);
  // Varlen with a mask never comes here (sm90_kernel_for); a mask here is a key mask or a boolean
  // mask that the caller packed (Note [Hopper row masks]).
  const sm90::mode which = varlen                        ? sm90::mode::varlen
                           : p.mask == mask_kind::none   ? sm90::mode::dense
                           : p.maybe_mask_bits != nullptr ? sm90::mode::row_mask
                                                         : sm90::mode::key_mask;
  // Head dims whose S = Q K^T needs fewer k16 steps than the width run an instantiation that skips
  // the rest, and P V runs at the narrowest instantiated N covering head_dim_v (Note [Hopper padded
  // head dims]); a call at the full width runs the instantiation without either.
  const bool padded_qk = k16_steps(p.head_dim_qk) < Width / 16;
  const int pv_n = sm90_pv_n(Width, p.head_dim_v);
  auto launch = [&](auto mode_c, auto padded_c, auto pv_c) {
    constexpr auto kernel =
        flash_sm90_kernel<E, Width, decltype(mode_c)::value, decltype(padded_c)::value, decltype(pv_c)::value>;
    const int smem = sm90::smem_bytes(Width, decltype(mode_c)::value);
    allow_dynamic_smem<kernel>(smem);
    if constexpr (decltype(mode_c)::value == sm90::mode::row_mask) launch_mask_bits(p, stream);  // Note [Hopper row masks]
    ATTEND_CUDA_CHECK(cudaMemsetAsync(p.maybe_work_counter, 0, sizeof(int), s));  // Note [Hopper scheduler]
    const auto grid = static_cast<unsigned>(std::min<std::int64_t>(sm90_item_count(p, Width), p.persistent_ctas));
    kernel<<<grid, sm90::threads(Width), smem, s>>>(p, tm_q, tm_k, tm_v, tm_o);
  };
  auto with_mode = [&](auto padded_c, auto pv_c) {
    using sm90::mode;
    switch (which) {
      case mode::varlen: launch(std::integral_constant<mode, mode::varlen>{}, padded_c, pv_c); break;
      case mode::key_mask: launch(std::integral_constant<mode, mode::key_mask>{}, padded_c, pv_c); break;
      case mode::row_mask: launch(std::integral_constant<mode, mode::row_mask>{}, padded_c, pv_c); break;
      case mode::dense: launch(std::integral_constant<mode, mode::dense>{}, padded_c, pv_c); break;
    }
  };
  // The N values sm90_pv_n picks from; any other value would run at the width, which is always right.
  static_assert(sm90_pv_n(64, 48) == 48 && sm90_pv_n(64, 49) == 64 && sm90_pv_n(128, 80) == 80 &&
                sm90_pv_n(128, 96) == 96 && sm90_pv_n(128, 97) == 128);
  auto with_pv = [&](auto padded_c) {
    using pv_full = std::integral_constant<int, Width>;
    if constexpr (Width == 64) {
      if (pv_n == 48)
        with_mode(padded_c, std::integral_constant<int, 48>{});
      else
        with_mode(padded_c, pv_full{});
    } else {
      if (pv_n == 80)
        with_mode(padded_c, std::integral_constant<int, 80>{});
      else if (pv_n == 96)
        with_mode(padded_c, std::integral_constant<int, 96>{});
      else
        with_mode(padded_c, pv_full{});
    }
  };
  if (padded_qk)
    with_pv(std::true_type{});
  else
    with_pv(std::false_type{});
  ATTEND_CUDA_CHECK(cudaGetLastError());
  return true;
}

}  // namespace attend::cuda
