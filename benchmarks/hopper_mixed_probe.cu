// A grouped MXFP4 x BF16 GEMM for Hopper (sm_90a), written to test one premise
// (triton_notes.md, v35-v37): that a warpgroup can decode its next weights while its own
// wgmma runs, which Triton and Gluon 3.6 do not allow (v18-v22), and what that is worth
// at gpt-oss-120b's shapes, as a GEMM (MODE 0) and as the layer's two GEMMs (MODE 1: GEMM1
// with bias and SWIGLUOAI; MODE 2: GEMM2 with bias and router weight; blocks of sorted
// token rows from a block table). Driven by hopper_mixed_probe.py; not part of a backend.
//
// MODE 0: out[e*R + t, n] = sum_k x[e*R + t, k] * W[e, n, k] for E experts of R token rows.
// W is the triton backend's MXFP4 layout (layout.py): fragment words, one 32-bit word per
// thread per 16 x 16 piece of the wgmma A operand, and scale bytes [E, N, SC].
//
// A CTA computes tiles of 128 weight rows x an expert's TOKENS (128, or 16 at decode
// sizes) tokens, one after another
// (the grid may be smaller than the tile count: CTAs then loop, and the producer runs
// ahead into the next tile):
// * warps 0-7: two consumer warpgroups, 64 weight rows each (m64nTOKENSk16, A in
//   registers);
// * warp 8: the producer. One lane loads each 64-column step of the tile's token rows into
//   a ring of STAGES shared-memory stages with TMA (a 2-D tensor map, 128-byte swizzle:
//   the layout wgmma's descriptor reads), completing on the stage's "full" mbarrier.
//   Consumers free a stage on its "empty" mbarrier.
// A warpgroup's epilogue writes its 64 rows x TOKENS tokens as bf16 into its own shared box
// (token-major, 128-byte swizzle, so the stores have no bank conflicts) and one of its
// threads stores the box with TMA, asynchronously: the next tile starts at once, and the
// box is reused only after that store has read it.
// A consumer step: decode the step's 4 fragment words per thread (loaded two steps ahead)
// into one of two A register sets, wait for the stage, issue 4 wgmma as one group, then
// wait until at most one group is in flight, which retires the previous step's group and
// frees its registers and stage. So the decode of step s + 1 runs while step s's MMAs do.
//
// Compile-time knobs: TOKENS, STAGES (token stages, >= 2), W_TMA (the weight words ride in
// the stages, by TMA, instead of per-thread loads), PREFETCH, L2_AHEAD and the diagnostics
// below.

// No headers: the same source compiles with nvcc and NVRTC.
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#ifndef STAGES
#define STAGES 4
#endif
#ifndef PREFETCH
#define PREFETCH 2  // weight words are loaded this many steps ahead (a slot each): 2 or 4
#endif
#ifndef L2_AHEAD
#define L2_AHEAD 0  // > PREFETCH: also ask L2 for the words this many steps ahead
#endif
// Diagnostics, each a bound rather than a GEMM (the output is wrong or not written):
// NO_DECODE multiplies the raw words as they are, NO_STORE skips the epilogue's stores.
#ifndef NO_DECODE
#define NO_DECODE 0
#endif
#ifndef NO_STORE
#define NO_STORE 0
#endif
static_assert(PREFETCH == 2 || PREFETCH == 4, "PREFETCH: 2 or 4");

static_assert(STAGES >= 2, "STAGES: at least 2");

#ifndef TOKENS
#define TOKENS 128  // token rows per expert (the probe's R) and wgmma's N: 128 or 16
#endif
static_assert(TOKENS == 128 || TOKENS == 16, "TOKENS: 128 or 16");
#define ACC (TOKENS / 2)  // float32 accumulators a thread: m64nTOKENS over 128 threads
#define STEP_K 64          // K columns per step
#define STAGE_BYTES (ROWS * STEP_K * 2)  // a stage's token rows (ROWS: below)
#ifndef W_TMA
#define W_TMA 0  // 1: the weight words arrive by TMA in the stage too (else per-thread loads)
#endif
#define W_BYTES (W_TMA ? 128 * STEP_K / 2 : 0)  // a stage's words: 8 16-row groups x 512 bytes
#define STAGE_STRIDE (STAGE_BYTES + W_BYTES)    // both multiples of 1024
#ifndef MODE
#define MODE 0  // 0: the plain grouped GEMM; 1: the layer's GEMM1 (gate and up rows, bias,
                // SWIGLUOAI); 2: the layer's GEMM2 (bias, router weight)
#endif
static_assert(MODE >= 0 && MODE <= 2, "MODE: 0, 1 or 2");
static_assert(MODE != 1 || !W_TMA, "W_TMA: a GEMM1 tile's gate and up rows are not one box");
static_assert(MODE == 0 || TOKENS == 128, "the layer modes use blocks of 128 rows");
// The layer modes' blocks hold up to TOKENS + OVERFLOW rows of one expert: rows past TOKENS
// go through a second, m64n32k16 wgmma on the same decoded weights (a block with no more
// than TOKENS rows runs a mainloop without it), so an expert's rows past a multiple of 128
// cost MMA work but no second decode of its weights.
#ifndef OVERFLOW
#define OVERFLOW (MODE == 0 ? 0 : 32)
#endif
static_assert(OVERFLOW == 0 || (OVERFLOW == 32 && TOKENS == 128), "OVERFLOW: 0, or 32 with 128");
#define ROWS (TOKENS + OVERFLOW)          // a block's (and a stage's) token rows
// A build runs one of the two mainloops: with both in one function ptxas serializes the
// wgmma (C7512). OVER_RUN 1: the blocks with rows past TOKENS; 0: the others. The glue
// lists the blocks of each kind, and launches one build for each list.
#ifndef OVER_RUN
#define OVER_RUN 0
#endif
// The rows a stage loads and a box stores: the other blocks' launches take tensor maps with
// TOKENS-row boxes, so they move no overflow rows.
#define MOVED_ROWS (OVER_RUN ? ROWS : TOKENS)
#define ACC_ALL (ACC + OVERFLOW / 2)      // accumulators a thread, both wgmma shapes
#define EXCHANGE_BYTES (MODE == 1 ? ACC_ALL * 128 * 4 : 0)  // GEMM1: the halves swapped
#define BOX_BYTES (ROWS * 64 * 2)  // a warpgroup's output: ROWS tokens x 64 rows, bf16
#define SCALE_BIAS 126     // the backend's bf16 decode: value * 2**-126, times 2**(s + 126 - 127)

__device__ __forceinline__ u32 smem_addr(const void* p) {
  return static_cast<u32>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count));
}

__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
  asm volatile(
      "{\n.reg .pred p;\nWAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
      "@!p bra WAIT;\n}\n" ::"r"(bar), "r"(parity) : "memory");
}

__device__ __forceinline__ void mbar_arrive(u32 bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}

__device__ __forceinline__ void mbar_expect(u32 bar, u32 bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes)
               : "memory");
}

// A CUtensorMap, opaque: 128 bytes, 64-byte aligned (the driver fills it).
struct __align__(64) TensorMap {
  u64 bytes[16];
};

__device__ __forceinline__ void warpgroup_sync(int wg) {
  asm volatile("bar.sync %0, 128;" ::"r"(1 + wg) : "memory");
}

// TMA store of the shared box at src to (column, row) of the tensor map (asynchronous:
// a bulk group, waited for before the box is written again).
__device__ __forceinline__ void tma_store(const TensorMap* map, int column, int row, u32 src) {
  asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%1, %2}], [%3];"
               ::"l"(map), "r"(column), "r"(row), "r"(src) : "memory");
  asm volatile("cp.async.bulk.commit_group;" ::: "memory");
}

// TMA: the box at (column, row) of the tensor map into shared memory at dst, completing
// on mbarrier bar.
__device__ __forceinline__ void tma_load(u32 dst, const TensorMap* map, int column, int row,
                                         u32 bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3}], [%4];" ::"r"(dst), "l"(map), "r"(column), "r"(row), "r"(bar)
      : "memory");
}

// wgmma's shared-memory descriptor of a K-major tile with the 128-byte swizzle: rows of
// 128 bytes, 8-row atoms 1024 bytes apart (the stride byte offset).
__device__ __forceinline__ u64 b_desc(u32 addr) {
  return static_cast<u64>((addr >> 4) & 0x3FFF) | (1ull << 16) |
         (static_cast<u64>(1024 >> 4) << 32) | (1ull << 62);
}

// The four A registers of one fragment word (layout.FRAGMENT_BITS): rows r, r + 8, r,
// r + 8 and column pairs 2c, 2c, 2c + 8, 2c + 8, each a bf16 pair times its row's scale.
__device__ __forceinline__ void decode_word(u32 w, u32 s_r, u32 s_r8,
                                            u32* a) {
  const u32 mask = 0x81C081C0u;
  u32 p0 = w & mask;
  u32 p1 = __funnelshift_l(w, w, 10) & mask;
  u32 p2 = __funnelshift_l(w, w, 13) & mask;
  u32 p3 = ((w & 0x001B001Bu) * 0x1084u) & mask;
  asm("{\n.reg .b32 z;\nmov.b32 z, 0x80008000;\n"
      "fma.rn.bf16x2 %0, %4, %8, z;\nfma.rn.bf16x2 %1, %5, %9, z;\n"
      "fma.rn.bf16x2 %2, %6, %8, z;\nfma.rn.bf16x2 %3, %7, %9, z;\n}\n"
      : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
      : "r"(p0), "r"(p1), "r"(p2), "r"(p3), "r"(s_r), "r"(s_r8));
}

// The bf16 pair 2**(s + SCALE_BIAS - 127) of scale byte s, in both halves.
__device__ __forceinline__ u32 scale_pair(u32 byte) {
  return (byte + SCALE_BIAS) * 0x00800080u;
}

template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}

// Keeps the compiler from moving accesses of the accumulators across the asm above.
__device__ __forceinline__ void fence_operands(float (&d)[ACC_ALL]) {
#pragma unroll
  for (int i = 0; i < ACC_ALL; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// The inputs of a step's four wgmma, after their accumulators: the 16 A registers (four
// a k16), the four B descriptors and scale-d.
#define STEP_INPUTS                                                                        \
  "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(a[4]), "r"(a[5]), "r"(a[6]), "r"(a[7]), \
      "r"(a[8]), "r"(a[9]), "r"(a[10]), "r"(a[11]), "r"(a[12]), "r"(a[13]), "r"(a[14]),   \
      "r"(a[15]), "l"(d0), "l"(d1), "l"(d2), "l"(d3), "r"(1)

#define D64 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"

// One step's MMAs as one asm statement: wgmma.fence, four m64nTOKENSk16 (16 columns of K
// each, A from registers, B at 32-byte offsets in the stage); the commit follows (after
// the overflow rows' MMAs, if any). One statement, so that no compiler-placed instruction
// defines a wgmma input inside the group.
#if TOKENS == 128
__device__ __forceinline__ void wgmma_step(float (&d)[ACC_ALL], const u32* a, u64 d0, u64 d1,
                                           u64 d2, u64 d3) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %84, 0;\nwgmma.fence.sync.aligned;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" D64 "}, {%64, %65, %66, %67}, %80, p, 1, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" D64 "}, {%68, %69, %70, %71}, %81, p, 1, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" D64 "}, {%72, %73, %74, %75}, %82, p, 1, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" D64 "}, {%76, %77, %78, %79}, %83, p, 1, 1, 0;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : STEP_INPUTS
      : "memory");
}
#else
__device__ __forceinline__ void wgmma_step(float (&d)[ACC_ALL], const u32* a, u64 d0, u64 d1,
                                           u64 d2, u64 d3) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %28, 0;\nwgmma.fence.sync.aligned;\n"
      "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7}, {%8, %9, %10, %11}, %24, p, 1, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7}, {%12, %13, %14, %15}, %25, p, 1, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7}, {%16, %17, %18, %19}, %26, p, 1, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7}, {%20, %21, %22, %23}, %27, p, 1, 1, 0;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7])
      : STEP_INPUTS
      : "memory");
}
#endif

// The overflow rows' MMAs: four m64n32k16 on the same A registers, into d[ACC..ACC+15].
__device__ __forceinline__ void wgmma_overflow(float (&d)[ACC_ALL], const u32* a, u64 d0, u64 d1,
                                               u64 d2, u64 d3) {
#if OVERFLOW
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %36, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, {%16, %17, %18, %19}, %32, p, 1, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, {%20, %21, %22, %23}, %33, p, 1, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, {%24, %25, %26, %27}, %34, p, 1, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, {%28, %29, %30, %31}, %35, p, 1, 1, 0;\n"
      "}\n"
      : "+f"(d[ACC]), "+f"(d[ACC + 1]), "+f"(d[ACC + 2]), "+f"(d[ACC + 3]), "+f"(d[ACC + 4]),
        "+f"(d[ACC + 5]), "+f"(d[ACC + 6]), "+f"(d[ACC + 7]), "+f"(d[ACC + 8]), "+f"(d[ACC + 9]),
        "+f"(d[ACC + 10]), "+f"(d[ACC + 11]), "+f"(d[ACC + 12]), "+f"(d[ACC + 13]),
        "+f"(d[ACC + 14]), "+f"(d[ACC + 15])
      : STEP_INPUTS
      : "memory");
#endif
}

__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}

__device__ __forceinline__ u16 to_bf16(float f) {
  u32 bits = __float_as_uint(f);
  return static_cast<u16>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

struct Consumer {
  const uint4* words;       // this thread's 16 bytes of step 0 (its 16-row group, lane)
  const u16* scale_r;  // scale bytes of rows r and r + 8, two blocks a step
  const u16* scale_r8;
  uint4 w[PREFETCH];        // words loaded ahead, a slot per step modulo PREFETCH
  u32 s_r[PREFETCH], s_r8[PREFETCH];
  u32 a[2][16];        // two A register sets: steps alternate
  float d[ACC_ALL];
  int steps;

  u32 w_offset;  // W_TMA: this thread's 16 bytes in a stage's words

  __device__ __forceinline__ void load(int slot, int s) {
    if (s < steps) {
      if (!W_TMA) w[slot] = __ldg(words + s * 32);  // a 64-column run of a 16-row group
      if (L2_AHEAD > PREFETCH && (threadIdx.x & 7) == 0 && s + L2_AHEAD - PREFETCH < steps)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(words + (s + L2_AHEAD - PREFETCH) * 32));
      s_r[slot] = __ldg(scale_r + s);
      s_r8[slot] = __ldg(scale_r8 + s);
    }
  }

  // tile-local step s, global step g (the ring's position, across tiles)
  template <int SLOT, int SET, bool OVER>
  __device__ __forceinline__ void step(int s, int g, u32 stages, u32 full, u32 empty) {
    const int stage = g % STAGES;
    const u32 base = stages + stage * STAGE_STRIDE;
    if (W_TMA) {  // the words come with the stage: wait for it first
      mbar_wait(full + stage * 8, (g / STAGES) & 1);
      asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];"
                   : "=r"(w[SLOT].x), "=r"(w[SLOT].y), "=r"(w[SLOT].z), "=r"(w[SLOT].w)
                   : "r"(base + STAGE_BYTES + w_offset));
    }
    const u32 lo_r = scale_pair(s_r[SLOT] & 0xFF), hi_r = scale_pair(s_r[SLOT] >> 8);
    const u32 lo_r8 = scale_pair(s_r8[SLOT] & 0xFF), hi_r8 = scale_pair(s_r8[SLOT] >> 8);
#if NO_DECODE
    const u32 raw[4] = {w[SLOT].x, w[SLOT].y, w[SLOT].z, w[SLOT].w};
#pragma unroll
    for (int i = 0; i < 16; ++i) a[SET][i] = raw[i / 4] & (0x3F7F3F7Fu ^ lo_r ^ hi_r8);
#else
    decode_word(w[SLOT].x, lo_r, lo_r8, &a[SET][0]);   // columns 0-15: MX block 2s
    decode_word(w[SLOT].y, lo_r, lo_r8, &a[SET][4]);   // 16-31
    decode_word(w[SLOT].z, hi_r, hi_r8, &a[SET][8]);   // 32-47: block 2s + 1
    decode_word(w[SLOT].w, hi_r, hi_r8, &a[SET][12]);  // 48-63
#endif
    load(SLOT, s + PREFETCH);
    if (!W_TMA) mbar_wait(full + stage * 8, (g / STAGES) & 1);
    const u64 desc = b_desc(base);
    const u64 over = desc + (TOKENS * 128 >> 4);  // the overflow rows: TOKENS rows further
    fence_operands(d);
    wgmma_step(d, a[SET], desc, desc + 2, desc + 4, desc + 6);  // + 32 bytes a k16
    if (OVER) wgmma_overflow(d, a[SET], over, over + 2, over + 4, over + 6);
    wgmma_commit();
    wgmma_wait<1>();  // step s - 1's MMAs are done: its A set and its stage are free
    fence_operands(d);
    if (s > 0) mbar_arrive(empty + ((g - 1) % STAGES) * 8);
  }

  // A unit's K loop from global step g: whole rounds of PREFETCH steps, then the rest. No
  // step inside the loop is optional, so ptxas sees the same groups in flight on every
  // path (else it serializes the wgmma, C7513); OVER picks the loop, outside it.
  template <bool OVER>
  __device__ __forceinline__ int run(int g, u32 stages, u32 full, u32 empty) {
    int s = 0;
    for (; s + PREFETCH <= steps; s += PREFETCH, g += PREFETCH) {
      step<0, 0, OVER>(s, g, stages, full, empty);
      step<1, 1, OVER>(s + 1, g + 1, stages, full, empty);
#if PREFETCH == 4
      step<2, 0, OVER>(s + 2, g + 2, stages, full, empty);
      step<3, 1, OVER>(s + 3, g + 3, stages, full, empty);
#endif
    }
    if (s < steps) step<0, 0, OVER>(s, g++, stages, full, empty);
#if PREFETCH == 4
    if (++s < steps) step<1, 1, OVER>(s, g++, stages, full, empty);
    if (++s < steps) step<2, 0, OVER>(s, g++, stages, full, empty);
#endif
    wgmma_wait<0>();
    fence_operands(d);
    mbar_arrive(empty + ((g - 1) % STAGES) * 8);  // the unit's last stage
    return g;
  }
};

// A unit of work: a tile of weight rows of an expert (MODE 0), or of a block of up to ROWS
// sorted token rows of one expert (MODE 1, 2: block b's rows are b * ROWS onward, its
// expert from the block table; a unit of an unused block, expert -1, is skipped).
struct Unit {
  int expert, tile, first_row;
};

// MODE 1, 2: unit i is tile i % n_tiles of block block_list[first + i / n_tiles]
__device__ __forceinline__ bool unit_of(int unit, int n_tiles, const int* block_expert,
                                        const int* block_list, int first, Unit& u) {
  const int major = MODE == 0 ? unit / n_tiles : block_list[first + unit / n_tiles];
  u.tile = unit % n_tiles;
  u.first_row = major * ROWS;
  u.expert = MODE == 0 ? major : block_expert[major];
  return u.expert >= 0;
}

// Writes a warpgroup's 64 rows x tokens 8 J0 .. 8 J1, value(j, h) for accumulator 4j + h, as bf16
// into its shared box (token-major, 128-byte rows of the 64 rows' values, 16-byte chunk k
// of token t at k ^ (t % 8): conflict-free); rows n0 + r and n0 + r + 8 of warp q are
// chunks 2q and 2q + 1, element r.
template <int J0 = 0, int J1 = ROWS / 8, class Value>
__device__ __forceinline__ void fill_box(u32 box, int q, int r, int cc, Value value) {
#pragma unroll
  for (int j = J0; j < J1; ++j) {
#pragma unroll
    for (int h = 0; h < 4; ++h) {
      const int token = 8 * j + 2 * cc + (h & 1), chunk = 2 * q + (h >> 1);
      const u16 v = to_bf16(value(j, h));
      if (!NO_STORE || v == 0x1234)
        asm volatile("st.shared.u16 [%0], %1;"
                     ::"r"(box + token * 128 + ((chunk ^ (token & 7)) << 4) + 2 * r), "h"(v)
                     : "memory");
    }
  }
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");  // visible to the TMA store
}

extern "C" __global__ void __launch_bounds__(288, TOKENS == 16 ? 2 : 1)
mixed_gemm(const __grid_constant__ TensorMap x_map, const __grid_constant__ TensorMap out_map,
           const __grid_constant__ TensorMap w_map, const u32* __restrict__ w,
           const u8* __restrict__ scales, int N, int K, int scale_cols, int n_tiles,
           int units, const int* __restrict__ block_expert, const float* __restrict__ bias,
           const float* __restrict__ route, float alpha, float limit, int half_rows,
           const int* __restrict__ block_list, const int* __restrict__ list_bounds) {
  // MODE 1, 2: this launch's blocks are block_list[list_bounds[0] .. list_bounds[1]]
  // N: weight rows per expert in w (GEMM1: 2I, gate rows then up rows, up at half_rows)
  extern __shared__ __align__(1024) u8 smem_raw[];
  const u32 raw = smem_addr(smem_raw);
  const u32 stages = (raw + 1023) & ~1023u;  // the swizzle needs 1024-byte atoms
  const u32 boxes = stages + STAGES * STAGE_STRIDE;  // the warpgroups' output boxes
  const u32 exchange = boxes + 2 * BOX_BYTES;
  const u32 full = exchange + EXCHANGE_BYTES;
  const u32 empty = full + STAGES * 8;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int steps = K / STEP_K;
  const int first = MODE == 0 ? 0 : list_bounds[0];
  if (MODE != 0) units = (list_bounds[1] - first) * n_tiles;
  if (threadIdx.x == 0) {
    for (int i = 0; i < STAGES; ++i) {
      mbar_init(full + i * 8, 1);     // the producer's expect_tx
      mbar_init(empty + i * 8, 256);  // every consumer thread
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();

  if (warp == 8) {  // producer: each unit's token rows, one 64-column step a stage
    if (lane == 0) {
      int g = 0;
      Unit u;
      for (int unit = blockIdx.x; unit < units; unit += gridDim.x) {
        if (!unit_of(unit, n_tiles, block_expert, block_list, first, u)) continue;
        // W_TMA (MODE 0, 2): the tile's first 16-row group of words; w_map's rows are
        // groups, its columns the 128 words of each 64-column run
        const int first_group = (u.expert * N + u.tile * 128) / 16;
        for (int s = 0; s < steps; ++s, ++g) {
          const int stage = g % STAGES;
          const u32 base = stages + stage * STAGE_STRIDE, bar = full + stage * 8;
          mbar_wait(empty + stage * 8, ((g / STAGES) & 1) ^ 1);
          mbar_expect(bar, MOVED_ROWS * STEP_K * 2 + W_BYTES);
          tma_load(base, &x_map, s * STEP_K, u.first_row, bar);
          if (W_TMA) tma_load(base + STAGE_BYTES, &w_map, s * 128, first_group, bar);
        }
      }
    }
    return;
  }

  // consumers: warpgroup wg's warp q holds weight rows n0 .. n0 + 15 of the tile
  const int wg = warp / 4, q = warp % 4;
  const int r = lane / 4, cc = lane % 4;
  const bool leader = (threadIdx.x % 128) == 0;
  const u32 box = boxes + wg * BOX_BYTES;
  Consumer c;
  c.steps = steps;
  c.w_offset = (wg * 4 + q) * 512 + lane * 16;
  int g = 0;
  Unit u;
  for (int unit = blockIdx.x; unit < units; unit += gridDim.x) {
    if (!unit_of(unit, n_tiles, block_expert, block_list, first, u)) continue;
    // the warpgroup's first row: GEMM1 its 64 channels' gate or up rows; else 64 of the
    // tile's 128 rows (GEMM2's last tile may lie half past N: that warpgroup multiplies
    // rows it does not store)
    int row_base = MODE == 1 ? (wg ? half_rows : 0) + u.tile * 64 : u.tile * 128 + wg * 64;
    const bool stores = row_base < N;
    if (!stores) row_base = N - 64;
    const int n0 = row_base + q * 16;
    c.words = reinterpret_cast<const uint4*>(w + (static_cast<u64>(u.expert) * N + n0) * (K / 8)) + lane;
    const u8* srow = scales + (static_cast<u64>(u.expert) * N + n0 + r) * scale_cols;
    c.scale_r = reinterpret_cast<const u16*>(srow);
    c.scale_r8 = reinterpret_cast<const u16*>(srow + 8 * scale_cols);
#pragma unroll
    for (int i = 0; i < ACC_ALL; ++i) c.d[i] = 0.0f;
#pragma unroll
    for (int i = 0; i < PREFETCH; ++i) c.load(i, i);

    g = c.run<OVER_RUN != 0>(g, stages, full, empty);

    // epilogue. Accumulator 4j + h (r = lane / 4, cc = lane % 4) is weight row
    // n0 + r + 8 (h / 2), token 8j + 2cc + (h % 2).
    if (MODE != 1) {
      if (leader) asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
      warpgroup_sync(wg);  // the previous unit's store has read the box
    }
    const float* row_bias = bias + static_cast<u64>(u.expert) * N + n0 + r;
    if (MODE == 0) {
      fill_box(box, q, r, cc, [&](int j, int h) { return c.d[4 * j + h]; });
    } else if (MODE == 2) {
      const float b0 = row_bias[0], b8 = row_bias[8];
      const float* token_route = route + u.first_row + 2 * cc;
      fill_box(box, q, r, cc, [&](int j, int h) {
        return (c.d[4 * j + h] + (h >> 1 ? b8 : b0)) * token_route[8 * j + (h & 1)];
      });
    } else {
      // GEMM1: the two warpgroups swap halves and each activates its half into warpgroup
      // 0's box, which one store writes. Warpgroup 0 takes tokens 0-63 and the first half
      // of the overflow rows (accumulators 0 .. ACC/2 - 1 and ACC .. ACC + OVERFLOW/4 - 1),
      // warpgroup 1 the rest; each sends the other its sums of the other's tokens (gate
      // sums from 0, up sums from 1), slot k of a half holding the k-th accumulator of the set.
      const int t = threadIdx.x % 128;
      const u32 sent = exchange + wg * (ACC_ALL / 2) * 128 * 4;
      const u32 received = exchange + (1 - wg) * (ACC_ALL / 2) * 128 * 4;
#pragma unroll
      for (int k = 0; k < ACC_ALL / 2; ++k) {  // static indices: a dynamic one puts d in memory
        const int of0 = k < ACC / 2 ? k : ACC + (k - ACC / 2);
        const int of1 = k < ACC / 2 ? ACC / 2 + k : ACC + OVERFLOW / 4 + (k - ACC / 2);
        const float v = wg == 0 ? c.d[of1] : c.d[of0];
        asm volatile("st.shared.f32 [%0], %1;" ::"r"(sent + (k * 128 + t) * 4), "f"(v) : "memory");
      }
      if (threadIdx.x == 0) asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
      asm volatile("bar.sync 3, 256;" ::: "memory");  // halves sent; the box is free
      const float* gate_bias = bias + static_cast<u64>(u.expert) * N + u.tile * 64 + q * 16 + r;
      const float bg0 = gate_bias[0], bg8 = gate_bias[8];
      const float bu0 = gate_bias[half_rows], bu8 = gate_bias[half_rows + 8];
      const u32 out_box = boxes;  // warpgroup 0's
      auto activate = [&](int j, int h) {
        const int i = 4 * j + h;
        const int slot = i < ACC ? i % (ACC / 2) : ACC / 2 + (i - ACC) % (OVERFLOW / 4 + (OVERFLOW == 0));
        float own = c.d[i], other;
        asm volatile("ld.shared.f32 %0, [%1];" : "=f"(other) : "r"(received + (slot * 128 + t) * 4));
        float gate = wg == 0 ? own : other, up = wg == 0 ? other : own;
        gate = fminf(gate + (h >> 1 ? bg8 : bg0), limit);
        up = fminf(fmaxf(up + (h >> 1 ? bu8 : bu0), -limit), limit);
        return __fdividef(gate, 1.0f + __expf(-alpha * gate)) * (up + 1.0f);  // SWIGLUOAI
      };
      constexpr int MAIN = TOKENS / 8, HALF = TOKENS / 16, OVER_HALF = OVERFLOW / 16;
      if (wg == 0) {
        fill_box<0, HALF>(out_box, q, r, cc, activate);
        fill_box<MAIN, MAIN + OVER_HALF>(out_box, q, r, cc, activate);
      } else {
        fill_box<HALF, MAIN>(out_box, q, r, cc, activate);
        fill_box<MAIN + OVER_HALF, ROWS / 8>(out_box, q, r, cc, activate);
      }
      asm volatile("bar.sync 3, 256;" ::: "memory");  // the box is whole; the exchange free
      if (threadIdx.x == 0 && !NO_STORE) tma_store(&out_map, u.tile * 64, u.first_row, out_box);
      continue;
    }
    warpgroup_sync(wg);
    if (leader && stores && !NO_STORE) tma_store(&out_map, row_base, u.first_row, box);
  }
  if ((threadIdx.x % 128) == 0) asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
}
