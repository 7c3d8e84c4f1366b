"""The prefill GEMM as a warp-specialized Gluon kernel, for Hopper.

Why a second kernel: at prefill sizes the Triton kernel of :mod:`.kernels` decodes the
MXFP4 weights in the same warps that wait on the tensor cores, so each step's decode and
MMA run one after the other and neither unit is kept busy (benchmarks/triton_notes.md,
v18: 53 % of issue slots, 50 % of the tensor pipe at M = 4096). Gluon, Triton's
explicit-layout dialect, lets one program split its warps by role:

* a *producer* partition of four warps loads each K step's fragment words and scale
  bytes, decodes them to a bf16 weight tile in shared memory, and copies the step's
  token rows (gathered by slot) there with ``cp.async``;
* the *consumer* (default) partition, one or two warpgroups, multiplies the two shared
  tiles with asynchronous ``wgmma`` and keeps the accumulators; after the loop it runs
  the epilogue (bias, activation or router weight, the store by slot);
* a ring of STAGES shared-memory stages passes between them through two mbarriers per
  stage: *ready* (the producer filled it) and *empty* (the consumer's MMAs on it retired).

Same inputs, outputs and block table as :func:`.kernels.moe_gemm_kernel` with SWAP
(weights as the left operand), MXFP4 fragment words, bfloat16 activations, no K split
and router weights applied to the output; :mod:`.launch` uses it only for such calls on
NVIDIA compute capability 9.x. BLOCK_K is 64 (one run of fragment words a step);
BLOCK_N is 16 weight rows per consumer warp.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia import hopper
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import mbarrier

from .kernels import _FRAGMENT_TO_BF16

__all__ = ["gluon_gemm_kernel"]

# Names that differ between the Triton versions the backend supports (3.6 and 3.9).
_barrier = getattr(gl, "thread_barrier", None) or gl.barrier
_async_load = getattr(async_copy, "async_load", None) or async_copy.async_copy_global_to_shared

BLOCK_K = gl.constexpr(64)


@gluon.jit
def _indices(G: gl.constexpr, S: gl.constexpr, layout: gl.constexpr):
    """Index vectors (group, r, c, s) broadcastable to [G, 8, 4, S] in ``layout``."""
    g = gl.arange(0, G, layout=gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(3, layout))))
    r = gl.arange(0, 8, layout=gl.SliceLayout(0, gl.SliceLayout(2, gl.SliceLayout(3, layout))))
    c = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(3, layout))))
    s = gl.arange(0, S, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, layout))))
    return g[:, None, None, None], r[None, :, None, None], c[None, None, :, None], s[None, None, None, :]


@gluon.jit
def _scale_pairs(ws, SCALE_BIAS: gl.constexpr, layout: gl.constexpr):
    """Scale bytes [G, 8, 4, 2] (a step's two MX blocks, per row) -> the bf16x2 pair
    2**(s + SCALE_BIAS - 127) of each 16-column step [G, 8, 4, 4], in ``layout``."""
    pair = (ws.to(gl.uint32) + SCALE_BIAS) * 0x00800080  # the bf16 exponent field, twice
    steps = gl.reshape(gl.join(pair, pair), (pair.shape[0], 8, 4, 4))
    return gl.convert_layout(steps, layout)


@gluon.jit
def _decoded(words, ws_r, ws_r8, SCALE_BIAS: gl.constexpr, BLOCK_N: gl.constexpr,
             words_layout: gl.constexpr, a_layout: gl.constexpr):
    """One K step of a weight tile: fragment words [G, 8, 4, 4] (group, row r, lane
    column c, 16-column step) and the scale bytes of rows r and r + 8 -> the tile
    [BLOCK_N, 64] in bf16 (times 2**(SCALE_BIAS - 126)), in ``a_layout`` (wgmma's
    register-operand layout: each thread decodes exactly its own words, and the join,
    permute and reshape only rename registers, checked by ``assert_trivial``)."""
    o = gl.inline_asm_elementwise(
        _FRAGMENT_TO_BF16, "=h,=h,=h,=h,=h,=h,=h,=h,r,r,r",
        [words, _scale_pairs(ws_r, SCALE_BIAS, words_layout),
         _scale_pairs(ws_r8, SCALE_BIAS, words_layout)],
        dtype=(gl.bfloat16,) * 8, is_pure=True, pack=1)
    left = gl.join(gl.join(o[0], o[1]), gl.join(o[2], o[3]))
    right = gl.join(gl.join(o[4], o[5]), gl.join(o[6], o[7]))
    # [group, r, c, s, element, row half, column half] -> rows (group, half, r) and
    # columns (s, half, c, element)
    tile = gl.permute(gl.join(left, right), (0, 5, 1, 3, 6, 2, 4))
    return gl.convert_layout(gl.reshape(tile, (BLOCK_N, BLOCK_K)), a_layout, assert_trivial=True)


@gluon.jit
def _step_operands(wg_ptrs, wu_ptrs, sg_ptrs, su_ptrs, r8, w_ok, s_ok, step, steps,
                   GATED: gl.constexpr):
    """The fragment words and scale bytes (rows r and r + 8) of K step ``step`` of the
    gate tile and, with GATED, the up tile (else the gate's again); zeros past the end."""
    more = step < steps
    w_off = step * 2 * BLOCK_K  # a 16-row group's 64-column run is 128 words
    s_off = step * (BLOCK_K // 32)
    wg = gl.load(wg_ptrs + w_off, mask=w_ok & more, other=0)
    sg = gl.load(sg_ptrs + s_off, mask=s_ok & more, other=0)
    sg8 = gl.load(sg_ptrs + r8 + s_off, mask=s_ok & more, other=0)
    wu, su, su8 = wg, sg, sg8
    if GATED:
        wu = gl.load(wu_ptrs + w_off, mask=w_ok & more, other=0)
        su = gl.load(su_ptrs + s_off, mask=s_ok & more, other=0)
        su8 = gl.load(su_ptrs + r8 + s_off, mask=s_ok & more, other=0)
    return wg, sg, sg8, wu, su, su8


@gluon.jit
def _producer(a_ptr, stride_a, w_ptr, stride_we, stride_wn, s_ptr, stride_se, stride_sn,
              sorted_slots_ptr, blk, expert, rows, n_start, N, steps,
              w_smem, t_smem, ready, empty,
              TOP_K: gl.constexpr, GATED: gl.constexpr, GATHER_A: gl.constexpr,
              SCALE_BIAS: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
              STAGES: gl.constexpr, P: gl.constexpr):
    """Fill stage ``step % STAGES`` for every K step: decode the step's weights into it
    (their words were loaded two steps ahead), wait for its token rows (copied two steps
    ahead), mark it ready; then start the copy of the token rows of two steps ahead, once
    the consumer has released their stage. STAGES >= 3."""
    G: gl.constexpr = BLOCK_N // 16
    H: gl.constexpr = 2 if GATED else 1
    decode_mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[P, 1],
                                                         instr_shape=[16, 64, 16])
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=decode_mma, k_width=2)
    # a thread's four words of a run (its four 16-column steps): one 16-byte load
    words_layout: gl.constexpr = gl.BlockedLayout([1, 1, 1, 4], [1, 8, 4, 1], [P, 1, 1, 1],
                                                  [3, 2, 1, 0])
    scale_layout: gl.constexpr = gl.BlockedLayout([1, 1, 1, 2], [1, 8, 4, 1], [P, 1, 1, 1],
                                                  [3, 2, 1, 0])
    # token rows: 16 bytes a thread, eight threads a 64-column row
    copy_layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [P, 1], [1, 0])

    offs_m = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, copy_layout))
    offs_k = gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, copy_layout))
    m_mask = offs_m < rows
    slots = gl.load(sorted_slots_ptr + blk * BLOCK_M + offs_m, mask=m_mask, other=0)
    if GATHER_A:
        a_rows = (slots // TOP_K).to(gl.int64)
    else:
        a_rows = slots.to(gl.int64)
    a_ptrs = a_ptr + a_rows[:, None] * stride_a + offs_k[None, :]
    a_mask = m_mask[:, None] & (offs_k >= 0)[None, :]

    g, r, c, s = _indices(G, 4, words_layout)
    wg_ptrs = (w_ptr + expert * stride_we + (n_start + 16 * g).to(gl.int64) * stride_wn
               + r * 16 + c * 4 + s)
    wu_ptrs = wg_ptrs + N * stride_wn  # w13's up rows: the second half
    w_ok = (n_start + 16 * g + 0 * (r + c + s)) < N
    g, r, c, s = _indices(G, 2, scale_layout)
    sg_ptrs = (s_ptr + expert * stride_se + (n_start + 16 * g + r).to(gl.int64) * stride_sn
               + s + 0 * c)
    su_ptrs = sg_ptrs + N * stride_sn
    s_ok = (n_start + 16 * g + 0 * (r + c + s)) < N
    r8 = 8 * stride_sn  # from row r to row r + 8

    # the first two stages start empty: their token rows now, their words into registers
    _async_load(t_smem.index(0), a_ptrs, mask=a_mask)
    async_copy.commit_group()
    _async_load(t_smem.index(1), a_ptrs + BLOCK_K, mask=a_mask & (1 < steps))
    async_copy.commit_group()
    cur = _step_operands(wg_ptrs, wu_ptrs, sg_ptrs, su_ptrs, r8, w_ok, s_ok, 0, steps, GATED)
    nxt = _step_operands(wg_ptrs, wu_ptrs, sg_ptrs, su_ptrs, r8, w_ok, s_ok, 1, steps, GATED)
    for step in range(steps):
        stage = step % STAGES
        far = _step_operands(wg_ptrs, wu_ptrs, sg_ptrs, su_ptrs, r8, w_ok, s_ok, step + 2,
                             steps, GATED)
        wg, sg, sg8, wu, su, su8 = cur
        w_smem.index(H * stage).store(
            _decoded(wg, sg, sg8, SCALE_BIAS, BLOCK_N, words_layout, a_layout))
        if GATED:
            w_smem.index(H * stage + 1).store(
                _decoded(wu, su, su8, SCALE_BIAS, BLOCK_N, words_layout, a_layout))
        # this step's token rows (all but the newest copy group) have landed; the copies
        # and the stores wrote through the generic proxy, wgmma reads through the async one
        async_copy.wait_group(1)
        hopper.fence_async_shared()
        _barrier()  # every producer thread's part of the stage is written
        mbarrier.arrive(ready.index(stage))
        # the token rows of two steps ahead, once the consumer has released their stage
        # (a fresh barrier passes a wait for the phase before its first, hence ^ 1)
        ahead = step + 2
        if ahead < steps:
            mbarrier.wait(empty.index(ahead % STAGES), ((ahead // STAGES) & 1) ^ 1)
            _async_load(t_smem.index(ahead % STAGES), a_ptrs + ahead * BLOCK_K, mask=a_mask)
        async_copy.commit_group()
        cur = nxt
        nxt = far


@gluon.jit
def _consumer(w_smem, t_smem, ready, empty, steps, GATED: gl.constexpr,
              BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
              NUM_WARPS: gl.constexpr):
    """The MMAs of every K step, each step's left in flight while the next stage is
    awaited; a stage is released once the MMAs that read it have retired. Returns the
    gate and up accumulators [BLOCK_N, BLOCK_M] (the gate's twice without GATED)."""
    H: gl.constexpr = 2 if GATED else 1
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                  instr_shape=[16, BLOCK_M, 16])
    acc_g = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, layout=mma)
    acc_u = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, layout=mma)
    for step in range(steps):
        stage = step % STAGES
        mbarrier.wait(ready.index(stage), (step // STAGES) & 1)
        b = t_smem.index(stage).permute((1, 0))
        acc_g = hopper.warpgroup_mma(w_smem.index(H * stage), b, acc_g, is_async=True)
        if GATED:
            acc_u = hopper.warpgroup_mma(w_smem.index(H * stage + 1), b, acc_u, is_async=True)
            acc_g, acc_u = hopper.warpgroup_mma_wait(2, deps=[acc_g, acc_u])
        else:
            acc_g = hopper.warpgroup_mma_wait(1, deps=[acc_g])
        # the previous step's MMAs have retired in every warpgroup: release its stage
        _barrier()
        mbarrier.arrive(empty.index((step + STAGES - 1) % STAGES), pred=step > 0)
    if GATED:
        acc_g, acc_u = hopper.warpgroup_mma_wait(0, deps=[acc_g, acc_u])
    else:
        acc_g = hopper.warpgroup_mma_wait(0, deps=[acc_g])
        acc_u = acc_g
    return acc_g, acc_u


@gluon.jit
def _activate(gate, up, alpha, beta, limit, ACTIVATION: gl.constexpr, HAS_LIMIT: gl.constexpr):
    """The gated activation of mxmoe.activations, in float32 (as kernels._activate)."""
    if ACTIVATION == "silu":
        out = gate / (1.0 + gl.exp(-gate)) * up
    elif ACTIVATION == "swiglustep":
        act = gate / (1.0 + gl.exp(-gate))
        if HAS_LIMIT:
            act = gl.minimum(act, limit)
            up = gl.minimum(gl.maximum(up, -limit), limit)
        out = act * up
    else:  # swigluoai (beta = 1) and swigluoai_uninterleave
        if HAS_LIMIT:
            gate = gl.minimum(gate, limit)
            up = gl.minimum(gl.maximum(up, -limit), limit)
        out = gate / (1.0 + gl.exp(-alpha * gate)) * (up + beta)
    return out


@gluon.jit
def gluon_gemm_kernel(
    a_ptr, stride_a,
    w_ptr, stride_we, stride_wn,
    s_ptr, stride_se, stride_sn,
    bias_ptr, stride_be,
    out_ptr, stride_out,
    sorted_slots_ptr, block_expert_ptr, block_rows_ptr, route_w_ptr,
    N, K, acc_scale, alpha, beta, limit,
    TOP_K: gl.constexpr, GATED: gl.constexpr, ACTIVATION: gl.constexpr,
    HAS_LIMIT: gl.constexpr, HAS_BIAS: gl.constexpr, WEIGHT_ON_OUTPUT: gl.constexpr,
    GATHER_A: gl.constexpr, SCALE_BIAS: gl.constexpr,
    BLOCK_M: gl.constexpr, STAGES: gl.constexpr, NUM_WARPS: gl.constexpr,
    PRODUCER_WARPS: gl.constexpr, PRODUCER_REGS: gl.constexpr,
):
    """One (block of BLOCK_M rows of one expert) x (BLOCK_N = 16 * NUM_WARPS output
    columns) tile, as :func:`.kernels.moe_gemm_kernel` computes it for SWAP, SPLIT_K = 1
    (the arguments mean the same; ``w_ptr`` is int32 fragment words, K a multiple of
    64). Launched with NUM_WARPS warps (the consumer); the producer's PRODUCER_WARPS
    come on top, with PRODUCER_REGS registers per thread."""
    BLOCK_N: gl.constexpr = 16 * NUM_WARPS
    H: gl.constexpr = 2 if GATED else 1
    pid = gl.program_id(0)
    n_tiles = gl.cdiv(N, BLOCK_N)
    blk = pid // n_tiles
    n_start = (pid % n_tiles) * BLOCK_N
    rows = gl.load(block_rows_ptr + blk)
    if rows == 0:
        return
    expert = gl.load(block_expert_ptr + blk).to(gl.int64)
    steps = K // BLOCK_K

    smem_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16,
                                                     rank=2)
    w_smem = gl.allocate_shared_memory(gl.bfloat16, [STAGES * H, BLOCK_N, BLOCK_K], smem_layout)
    t_smem = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BLOCK_M, BLOCK_K], smem_layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=1)

    acc_g, acc_u = gl.warp_specialize(
        [(_consumer, (w_smem, t_smem, ready, empty, steps, GATED, BLOCK_M, BLOCK_N, STAGES,
                      NUM_WARPS)),
         (_producer, (a_ptr, stride_a, w_ptr, stride_we, stride_wn, s_ptr, stride_se,
                      stride_sn, sorted_slots_ptr, blk, expert, rows, n_start, N, steps,
                      w_smem, t_smem, ready, empty, TOP_K, GATED, GATHER_A, SCALE_BIAS,
                      BLOCK_M, BLOCK_N, STAGES, PRODUCER_WARPS))],
        [PRODUCER_WARPS], [PRODUCER_REGS])

    # epilogue on [BLOCK_N columns, BLOCK_M tokens], stored column-contiguous per slot
    out_layout: gl.constexpr = gl.BlockedLayout([NUM_WARPS // 2, 1], [32, 1], [1, NUM_WARPS],
                                                [0, 1])
    offs_n = n_start + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, out_layout))
    offs_t = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, out_layout))
    n_mask = offs_n < N
    t_mask = offs_t < rows
    out_slots = gl.load(sorted_slots_ptr + blk * BLOCK_M + offs_t, mask=t_mask, other=0)
    result = gl.convert_layout(acc_g, out_layout) * acc_scale
    b_ptrs = bias_ptr + expert * stride_be + offs_n
    if HAS_BIAS:
        result += gl.load(b_ptrs, mask=n_mask, other=0.0)[:, None]
    if GATED:
        up = gl.convert_layout(acc_u, out_layout) * acc_scale
        if HAS_BIAS:
            up += gl.load(b_ptrs + N, mask=n_mask, other=0.0)[:, None]
        result = _activate(result, up, alpha, beta, limit, ACTIVATION, HAS_LIMIT)
    elif WEIGHT_ON_OUTPUT:
        result = result * gl.load(route_w_ptr + out_slots, mask=t_mask, other=0.0)[None, :]
    out_ptrs = out_ptr + out_slots.to(gl.int64)[None, :] * stride_out + offs_n[:, None]
    gl.store(out_ptrs, result.to(out_ptr.dtype.element_ty), mask=n_mask[:, None] & t_mask[None, :])
