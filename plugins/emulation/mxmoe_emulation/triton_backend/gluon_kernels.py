"""The prefill GEMM as a warp-specialized Gluon kernel for Hopper: two multiplying
warpgroups that take turns on the tensor cores.

Why a second kernel: at prefill sizes the Triton kernel of :mod:`.kernels` decodes the
MXFP4 weights in the same warps that wait on the tensor cores, and Triton's
synchronization keeps its warpgroups in lockstep, so decode and MMA run one after the
other (benchmarks/triton_notes.md, v18). Moving the decode to other warps costs too much
shared-memory bandwidth (v20): on Hopper the decoded weights have to stay in registers,
as wgmma's register operand. So here each program has

* two *multiplying* partitions of one warpgroup each, every one with its own 64 output
  columns of the tile: each decodes its weights into registers and multiplies them with
  the shared token rows by asynchronous ``wgmma``. Nothing synchronizes the two, so
  while one waits on its MMAs the other decodes its next step (the "ping-pong" of
  CUTLASS's mixed-input GEMMs); each stores its own epilogue;
* a *copying* partition of one warpgroup, which gathers the token rows of each K step
  by slot into a ring of shared-memory stages with ``cp.async``, up to STAGES steps
  ahead; an mbarrier per stage says *ready* (its copies landed) and another *empty*
  (both multiplying warpgroups' MMAs on it retired).

Same inputs, outputs and block table as :func:`.kernels.moe_gemm_kernel` with SWAP
(weights as the left operand), MXFP4 fragment words, bfloat16 activations, no K split
and router weights applied to the output; :mod:`.launch` uses it only for such calls on
NVIDIA compute capability 9.x. BLOCK_K is 64 (one run of fragment words a step); a
program computes 128 output columns (64 per multiplying warpgroup).
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia import hopper
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import mbarrier

from .kernels import _FRAGMENT_TO_BF16

__all__ = ["BLOCK_N", "gluon_gemm_kernel"]

# Names that differ between the Triton versions the backend supports (3.6 and 3.9).
_barrier = getattr(gl, "thread_barrier", None) or gl.barrier
_async_load = getattr(async_copy, "async_load", None) or async_copy.async_copy_global_to_shared

BLOCK_K = gl.constexpr(64)
#: Output columns of a multiplying warpgroup (one wgmma M of 64 rows of weights).
WG_N = gl.constexpr(64)
#: Output columns of a program: two multiplying warpgroups.
BLOCK_N = 2 * 64
#: Warps of each partition: one warpgroup.
WG_WARPS = gl.constexpr(4)


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
    """A row's two scale bytes of a step as one uint16 [G, 8, 4] (the low byte is the
    first MX block) -> the bf16x2 pair 2**(s + SCALE_BIAS - 127) of each 16-column step
    [G, 8, 4, 4], in ``layout``. The bytes are split here, where they are used: split at
    the load, the split would wait for the load right there."""
    w = ws.to(gl.uint32)
    first = ((w & 0xFF) + SCALE_BIAS) * 0x00800080  # the bf16 exponent field, twice
    second = ((w >> 8) + SCALE_BIAS) * 0x00800080
    blocks = gl.join(first, second)
    steps = gl.reshape(gl.join(blocks, blocks), (ws.shape[0], 8, 4, 4))
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
    s_off = step  # uint16 words: a step's two MX blocks per row
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
def _copy_tokens(a_ptr, stride_a, sorted_slots_ptr, blk, rows, steps, t_smem, ready, empty,
                 TOP_K: gl.constexpr, GATHER_A: gl.constexpr, BLOCK_M: gl.constexpr,
                 STAGES: gl.constexpr):
    """The copying partition: the token rows [BLOCK_M, 64] of every K step into stage
    ``step % STAGES`` once both multiplying warpgroups have released it. A stage is
    marked ready STAGES - 2 steps later, when its copies have landed and been fenced:
    ``cp.async`` writes through the generic proxy, wgmma reads through the async one,
    and the fence (a full memory barrier of the thread that runs it) is kept out of the
    multiplying warps, whose weight loads are in flight."""
    LAG: gl.constexpr = STAGES - 2
    copy_layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [WG_WARPS, 1], [1, 0])
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
    for step in range(steps + LAG):
        if step < steps:
            stage = step % STAGES
            # a fresh barrier passes a wait for the phase before its first, hence ^ 1
            mbarrier.wait(empty.index(stage), ((step // STAGES) & 1) ^ 1)
            _async_load(t_smem.index(stage), a_ptrs + step * BLOCK_K, mask=a_mask)
        async_copy.commit_group()
        done = step - LAG
        if done >= 0:
            async_copy.wait_group(LAG)
            hopper.fence_async_shared()
            mbarrier.arrive(ready.index(done % STAGES))


@gluon.jit
def _store_decoded(operands, a_smem, buf, SCALE_BIAS: gl.constexpr, GATED: gl.constexpr,
                   words_layout: gl.constexpr, a_layout: gl.constexpr):
    """Decode a step's gate (and up) words into shared buffers ``buf`` (and ``buf + 1``),
    fenced for wgmma's reads (async proxy), once every warp of the warpgroup has stored."""
    wg, sg, sg8, wu, su, su8 = operands
    a_smem.index(buf).store(_decoded(wg, sg, sg8, SCALE_BIAS, WG_N, words_layout, a_layout))
    if GATED:
        a_smem.index(buf + 1).store(_decoded(wu, su, su8, SCALE_BIAS, WG_N, words_layout,
                                             a_layout))
    hopper.fence_async_shared()
    _barrier()


@gluon.jit
def _step(operands, step, acc_g, acc_u, a_smem, base, wg_ptrs, wu_ptrs, sg_ptrs, su_ptrs,
          r8, w_ok, s_ok, steps, t_smem, ready, empty, GATED: gl.constexpr,
          SCALE_BIAS: gl.constexpr, STAGES: gl.constexpr, words_layout: gl.constexpr,
          a_layout: gl.constexpr):
    """One K step of a multiplying warpgroup, whose decoded weights of ``step`` are in
    its shared buffer ``step % 2``: start the step's MMAs once its token rows are ready;
    meanwhile decode the next step (``operands``, loaded three steps ahead) into the
    other buffer, whose MMAs retired last step, and start loading the words of step + 4
    into the freed registers; then retire the MMAs and release the token stage. Returns
    the accumulators and the operands of step + 4."""
    cur = base + 2 * (step % 2)
    nxt = base + 2 * ((step + 1) % 2)
    stage = step % STAGES
    mbarrier.wait(ready.index(stage), (step // STAGES) & 1)
    b = t_smem.index(stage).permute((1, 0))
    acc_g = hopper.warpgroup_mma(a_smem.index(cur), b, acc_g, is_async=True)
    if GATED:
        acc_u = hopper.warpgroup_mma(a_smem.index(cur + 1), b, acc_u, is_async=True)
    _store_decoded(operands, a_smem, nxt, SCALE_BIAS, GATED, words_layout, a_layout)
    ahead = _step_operands(wg_ptrs, wu_ptrs, sg_ptrs, su_ptrs, r8, w_ok, s_ok, step + 4, steps,
                           GATED)
    if GATED:
        acc_g, acc_u = hopper.warpgroup_mma_wait(0, deps=[acc_g, acc_u])
    else:
        acc_g = hopper.warpgroup_mma_wait(0, deps=[acc_g])
    mbarrier.arrive(empty.index(stage))
    return acc_g, acc_u, ahead


@gluon.jit
def _multiply(half, w_ptr, stride_we, stride_wn, s_ptr, stride_se, stride_sn,
              bias_ptr, stride_be, out_ptr, stride_out, sorted_slots_ptr, route_w_ptr,
              blk, expert, rows, n_start, N, steps, acc_scale, alpha, beta, limit,
              t_smem, a_smem, ready, empty,
              GATED: gl.constexpr, ACTIVATION: gl.constexpr, HAS_LIMIT: gl.constexpr,
              HAS_BIAS: gl.constexpr, WEIGHT_ON_OUTPUT: gl.constexpr,
              SCALE_BIAS: gl.constexpr, BLOCK_M: gl.constexpr, STAGES: gl.constexpr):
    """A multiplying partition: output columns ``n_start + 64 * half`` onward of the
    tile. Per K step: decode the gate (and up) weights, whose words were loaded three steps
    ahead, into wgmma's register operand; wait for the step's token rows; multiply.
    Then the epilogue, stored straight from the accumulator layout."""
    G: gl.constexpr = WG_N // 16
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WG_WARPS, 1],
                                                  instr_shape=[16, BLOCK_M, 16])
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    # a thread's four words of a run (its four 16-column steps): one 16-byte load
    words_layout: gl.constexpr = gl.BlockedLayout([1, 1, 1, 4], [1, 8, 4, 1],
                                                  [WG_WARPS, 1, 1, 1], [3, 2, 1, 0])
    scale_layout: gl.constexpr = gl.BlockedLayout([1, 1, 1], [1, 8, 4], [WG_WARPS, 1, 1],
                                                  [2, 1, 0])
    n0 = n_start + half * WG_N
    g, r, c, s = _indices(G, 4, words_layout)
    wg_ptrs = (w_ptr + expert * stride_we + (n0 + 16 * g).to(gl.int64) * stride_wn
               + r * 16 + c * 4 + s)
    wu_ptrs = wg_ptrs + N * stride_wn  # w13's up rows: the second half
    w_ok = (n0 + 16 * g + 0 * (r + c + s)) < N
    # scale bytes as uint16 pairs (rows are 16-byte aligned: layout.py pads them)
    gs = gl.arange(0, G, layout=gl.SliceLayout(1, gl.SliceLayout(2, scale_layout)))[:, None, None]
    rs = gl.arange(0, 8, layout=gl.SliceLayout(0, gl.SliceLayout(2, scale_layout)))[None, :, None]
    cs = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, scale_layout)))[None, None, :]
    s16 = s_ptr.to(gl.pointer_type(gl.uint16))
    sg_ptrs = (s16 + expert * (stride_se // 2) + (n0 + 16 * gs + rs).to(gl.int64) * (stride_sn // 2)
               + 0 * cs)
    su_ptrs = sg_ptrs + N * (stride_sn // 2)
    s_ok = (n0 + 16 * gs + 0 * (rs + cs)) < N
    r8 = 8 * (stride_sn // 2)  # from row r to row r + 8

    acc_g = gl.zeros([WG_N, BLOCK_M], gl.float32, layout=mma)
    acc_u = gl.zeros([WG_N, BLOCK_M], gl.float32, layout=mma)
    base = 4 * half  # this warpgroup's two buffers (gate and up each)
    first = _step_operands(wg_ptrs, wu_ptrs, sg_ptrs, su_ptrs, r8, w_ok, s_ok, 0, steps, GATED)
    _store_decoded(first, a_smem, base, SCALE_BIAS, GATED, words_layout, a_layout)
    # Three sets of step operands (steps 3i + 1, 3i + 2, 3i + 3), each reloaded as soon as
    # it is decoded: a load stays about three steps in flight, and no register copy waits
    # on it (rotating one set through another would make the copy wait).
    ops0 = _step_operands(wg_ptrs, wu_ptrs, sg_ptrs, su_ptrs, r8, w_ok, s_ok, 1, steps, GATED)
    ops1 = _step_operands(wg_ptrs, wu_ptrs, sg_ptrs, su_ptrs, r8, w_ok, s_ok, 2, steps, GATED)
    ops2 = _step_operands(wg_ptrs, wu_ptrs, sg_ptrs, su_ptrs, r8, w_ok, s_ok, 3, steps, GATED)
    for third in range(steps // 3):
        step = 3 * third
        acc_g, acc_u, ops0 = _step(ops0, step, acc_g, acc_u, a_smem, base, wg_ptrs, wu_ptrs,
                                   sg_ptrs, su_ptrs, r8, w_ok, s_ok, steps, t_smem, ready,
                                   empty, GATED, SCALE_BIAS, STAGES, words_layout, a_layout)
        acc_g, acc_u, ops1 = _step(ops1, step + 1, acc_g, acc_u, a_smem, base, wg_ptrs,
                                   wu_ptrs, sg_ptrs, su_ptrs, r8, w_ok, s_ok, steps, t_smem,
                                   ready, empty, GATED, SCALE_BIAS, STAGES, words_layout,
                                   a_layout)
        acc_g, acc_u, ops2 = _step(ops2, step + 2, acc_g, acc_u, a_smem, base, wg_ptrs,
                                   wu_ptrs, sg_ptrs, su_ptrs, r8, w_ok, s_ok, steps, t_smem,
                                   ready, empty, GATED, SCALE_BIAS, STAGES, words_layout,
                                   a_layout)
    last = steps - steps % 3
    if last < steps:
        acc_g, acc_u, ops0 = _step(ops0, last, acc_g, acc_u, a_smem, base, wg_ptrs, wu_ptrs,
                                   sg_ptrs, su_ptrs, r8, w_ok, s_ok, steps, t_smem, ready,
                                   empty, GATED, SCALE_BIAS, STAGES, words_layout, a_layout)
    if last + 1 < steps:
        acc_g, acc_u, ops1 = _step(ops1, last + 1, acc_g, acc_u, a_smem, base, wg_ptrs,
                                   wu_ptrs, sg_ptrs, su_ptrs, r8, w_ok, s_ok, steps, t_smem,
                                   ready, empty, GATED, SCALE_BIAS, STAGES, words_layout,
                                   a_layout)

    # epilogue on [64 columns, BLOCK_M tokens], stored per slot from the MMA layout
    offs_n = n0 + gl.arange(0, WG_N, layout=gl.SliceLayout(1, mma))
    offs_t = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, mma))
    n_mask = offs_n < N
    t_mask = offs_t < rows
    out_slots = gl.load(sorted_slots_ptr + blk * BLOCK_M + offs_t, mask=t_mask, other=0)
    result = acc_g * acc_scale
    b_ptrs = bias_ptr + expert * stride_be + offs_n
    if HAS_BIAS:
        result += gl.load(b_ptrs, mask=n_mask, other=0.0)[:, None]
    if GATED:
        up = acc_u * acc_scale
        if HAS_BIAS:
            up += gl.load(b_ptrs + N, mask=n_mask, other=0.0)[:, None]
        result = _activate(result, up, alpha, beta, limit, ACTIVATION, HAS_LIMIT)
    elif WEIGHT_ON_OUTPUT:
        result = result * gl.load(route_w_ptr + out_slots, mask=t_mask, other=0.0)[None, :]
    out_ptrs = out_ptr + out_slots.to(gl.int64)[None, :] * stride_out + offs_n[:, None]
    gl.store(out_ptrs, result.to(out_ptr.dtype.element_ty), mask=n_mask[:, None] & t_mask[None, :])


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
    BLOCK_M: gl.constexpr, STAGES: gl.constexpr,
    MULTIPLY_REGS: gl.constexpr, COPY_REGS: gl.constexpr,
):
    """One (block of BLOCK_M rows of one expert) x (128 output columns) tile, as
    :func:`.kernels.moe_gemm_kernel` computes it for SWAP, SPLIT_K = 1 (the arguments
    mean the same; ``w_ptr`` is int32 fragment words, K a multiple of 64). Launched with
    four warps (the first multiplying warpgroup); the second (MULTIPLY_REGS registers a
    thread) and the copying one (COPY_REGS) come on top."""
    pid = gl.program_id(0)
    n_tiles = gl.cdiv(N, 2 * WG_N)
    blk = pid // n_tiles
    n_start = (pid % n_tiles) * (2 * WG_N)
    rows = gl.load(block_rows_ptr + blk)
    if rows == 0:
        return
    expert = gl.load(block_expert_ptr + blk).to(gl.int64)
    steps = K // BLOCK_K

    t_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16,
                                                  rank=2)
    t_smem = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BLOCK_M, BLOCK_K], t_layout)
    # decoded weights: per multiplying warpgroup two buffers of (gate, up) [64, 64]
    a_smem = gl.allocate_shared_memory(gl.bfloat16, [8, WG_N, BLOCK_K], t_layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=2)  # both multiplying warpgroups

    gl.warp_specialize(
        [(_multiply, (0, w_ptr, stride_we, stride_wn, s_ptr, stride_se, stride_sn, bias_ptr,
                      stride_be, out_ptr, stride_out, sorted_slots_ptr, route_w_ptr, blk, expert,
                      rows, n_start, N, steps, acc_scale, alpha, beta, limit, t_smem, a_smem,
                      ready, empty, GATED, ACTIVATION, HAS_LIMIT, HAS_BIAS, WEIGHT_ON_OUTPUT,
                      SCALE_BIAS, BLOCK_M, STAGES)),
         (_multiply, (1, w_ptr, stride_we, stride_wn, s_ptr, stride_se, stride_sn, bias_ptr,
                      stride_be, out_ptr, stride_out, sorted_slots_ptr, route_w_ptr, blk, expert,
                      rows, n_start, N, steps, acc_scale, alpha, beta, limit, t_smem, a_smem,
                      ready, empty, GATED, ACTIVATION, HAS_LIMIT, HAS_BIAS, WEIGHT_ON_OUTPUT,
                      SCALE_BIAS, BLOCK_M, STAGES)),
         (_copy_tokens, (a_ptr, stride_a, sorted_slots_ptr, blk, rows, steps, t_smem, ready,
                         empty, TOP_K, GATHER_A, BLOCK_M, STAGES))],
        [WG_WARPS, WG_WARPS], [MULTIPLY_REGS, COPY_REGS])
