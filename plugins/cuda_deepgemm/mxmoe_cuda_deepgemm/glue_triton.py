"""The glue as Triton kernels: same signatures and results as :mod:`.glue_torch`.

Each step is one pass over memory with no host synchronisation:

* the plan is three tiny kernels -- slot counts per expert with atomics (whose return
  values rank each slot inside its expert), an exclusive scan of the aligned counts
  (one program), and the placement of every slot and layout row; atomics make the row
  order inside a segment arbitrary, which changes nothing (GEMM rows are independent);
* quantization works on tiles of one row x 512 channels -- four 128-channel groups, so
  one int32 of packed UE8M0 scales per program -- and writes each token to all its
  slots' rows from registers;
* the activation runs one program per slot, so it reads FC1's real rows once and the
  worst-case workspace's padding rows not at all;
* the reduction reads each token's FC2 rows and writes the token once.

Rounding is explicit where the Triton interpreter's casts or the GPU's default division
would differ from the reference (E4M3 rounding by bit arithmetic; float32 scales
divided with ``div_rn``, power-of-two ones multiplied by their exact reciprocal), so
the interpreter checks the same arithmetic the GPU runs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mxmoe import Activation, MoEConfig

from .glue import RoutingPlan, workspace_rows
from .layouts import (
    ACTIVATION_GROUP,
    GROUPS_PER_INT32,
    ScaleFormat,
    empty_activation_scales,
)

__all__ = ["activate_quantize", "plan_permutation", "quantize_permute", "unpermute_reduce"]

#: Compiler options of every launch. Floating-point contraction (a * b + c as one FMA) is
#: asked for explicitly: it is Triton 3.6's default, under which these kernels were
#: validated on the GPU, and Triton 3.9 warns that its default changes in 3.10.
_COMPILER = {"enable_fp_fusion": True}

_PLAN_BLOCK = 1024
_REDUCE_BLOCK = 1024
_CHUNK = ACTIVATION_GROUP * GROUPS_PER_INT32  # channels per quantizing program

# Scale formats and activations as kernel constants.
_SCALE_CODES = {ScaleFormat.FLOAT32: 0, ScaleFormat.FLOAT32_POW2: 1, ScaleFormat.UE8M0: 2}
_SILU, _SWIGLU_OAI, _SWIGLU_STEP = 0, 1, 2
_ACTIVATION_CODES = {Activation.SILU: _SILU, Activation.SWIGLUOAI: _SWIGLU_OAI,
                     Activation.SWIGLUOAI_UNINTERLEAVE: _SWIGLU_OAI,
                     Activation.SWIGLUSTEP: _SWIGLU_STEP}


# -- the permutation plan -------------------------------------------------------


@triton.jit
def _count_rank_kernel(ids_ptr, map_ptr, slot_expert_ptr, rank_ptr, counts_ptr, n,
                       HAS_MAP: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n
    ids = tl.load(ids_ptr + offs, mask=inside, other=0)
    if HAS_MAP:
        local = tl.load(map_ptr + ids, mask=inside, other=-1)
    else:
        local = ids
    valid = inside & (local >= 0)
    rank = tl.atomic_add(counts_ptr + local, 1, mask=valid)
    tl.store(slot_expert_ptr + offs, tl.where(valid, local, -1), mask=inside)
    tl.store(rank_ptr + offs, rank, mask=valid)


@triton.jit
def _segment_starts_kernel(counts_ptr, starts_ptr, num_experts, alignment,
                           BLOCK_E: tl.constexpr):
    e = tl.arange(0, BLOCK_E)
    inside = e < num_experts
    counts = tl.load(counts_ptr + e, mask=inside, other=0)
    padded = (counts + alignment - 1) // alignment * alignment
    tl.store(starts_ptr + e, tl.cumsum(padded, axis=0) - padded, mask=inside)


@triton.jit
def _place_kernel(slot_expert_ptr, rank_ptr, starts_ptr, slot_row_ptr, layout_ptr, n,
                  BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n
    expert = tl.load(slot_expert_ptr + offs, mask=inside, other=-1)
    valid = inside & (expert >= 0)
    row = (tl.load(starts_ptr + expert, mask=valid, other=0)
           + tl.load(rank_ptr + offs, mask=valid, other=0))
    tl.store(slot_row_ptr + offs, tl.where(valid, row, -1), mask=inside)
    tl.store(layout_ptr + row, expert, mask=valid)


def plan_permutation(topk_ids: torch.Tensor, expert_map: torch.Tensor | None,
                     num_local_experts: int, alignment: int) -> RoutingPlan:
    """See :func:`mxmoe_cuda_deepgemm.glue_torch.plan_permutation`."""
    tokens, top_k = topk_ids.shape
    n = tokens * top_k
    rows = workspace_rows(tokens, top_k, num_local_experts, alignment)
    device = topk_ids.device
    ids = topk_ids.to(torch.int32).contiguous()
    emap = ids if expert_map is None else expert_map.to(torch.int32).contiguous()
    counts = torch.zeros(num_local_experts, dtype=torch.int32, device=device)
    slot_expert = torch.empty(n, dtype=torch.int32, device=device)
    slot_row = torch.empty(n, dtype=torch.int32, device=device)
    rank = torch.empty(n, dtype=torch.int32, device=device)
    starts = torch.empty(num_local_experts, dtype=torch.int32, device=device)
    layout = torch.full((rows,), -1, dtype=torch.int32, device=device)
    if n:
        grid = (triton.cdiv(n, _PLAN_BLOCK),)
        _count_rank_kernel[grid](ids, emap, slot_expert, rank, counts, n,
                                 HAS_MAP=expert_map is not None, BLOCK=_PLAN_BLOCK,
                                 **_COMPILER)
        _segment_starts_kernel[(1,)](counts, starts, num_local_experts, alignment,
                                     BLOCK_E=triton.next_power_of_2(num_local_experts),
                                     **_COMPILER)
        _place_kernel[grid](slot_expert, rank, starts, slot_row, layout, n,
                            BLOCK=_PLAN_BLOCK, **_COMPILER)
    return RoutingPlan(slot_expert=slot_expert, slot_row=slot_row, grouped_layout=layout,
                       expert_counts=counts, top_k=top_k)


# -- FP8 quantization of 4 x 128-channel tiles ---------------------------------------


@triton.jit
def _round_to_e4m3(v):
    """Round float32 values within +-448 to the nearest E4M3 value, ties to even."""
    bits = v.to(tl.int32, bitcast=True)
    lsb = (bits >> 20) & 1  # keep 3 of 23 mantissa bits; a carry bumps the exponent
    normal = ((bits + 0x7FFFF + lsb) & -1048576).to(tl.float32, bitcast=True)
    # Below 2**-6 E4M3 is subnormal: a fixed step of 2**-9, the ulp of 1.5 * 2**14.
    tiny = (tl.abs(v) + 24576.0) - 24576.0
    tiny = tl.where(v < 0, -tiny, tiny)
    return tl.where(tl.abs(v) < 0.015625, tiny, normal)


@triton.jit
def _quantize_tile(x, POW2: tl.constexpr):
    """x [4, 128] float32 -> (E4M3 values as float32, scale per group [4])."""
    amax = tl.maximum(tl.max(tl.abs(x), axis=1), 1e-10)  # the core's all-zero floor
    scale = tl.math.div_rn(amax, tl.full(amax.shape, 448.0, tl.float32))
    if POW2:  # round up to a power of two: bump the exponent if any mantissa bit is set
        bits = scale.to(tl.int32, bitcast=True)
        exponent = (bits >> 23) + ((bits & 0x7FFFFF) != 0).to(tl.int32)
        scale = (exponent << 23).to(tl.float32, bitcast=True)
        inverse = ((254 - exponent) << 23).to(tl.float32, bitcast=True)  # exact: 1 / 2**e
        q = x * inverse[:, None]
    else:
        q = tl.math.div_rn(x, tl.broadcast_to(scale[:, None], x.shape))
    return _round_to_e4m3(tl.clamp(q, -448.0, 448.0)), scale


@triton.jit
def _bit_or(a, b):
    return a | b


@triton.jit
def _and_nonnegative(mask, key):
    """``mask & (key >= 0)`` for a scalar ``key``, built as a tensor: the interpreter
    rejects a boolean tensor and-ed with a boolean scalar."""
    return mask & ((tl.zeros(mask.shape, tl.int32) + key) >= 0)


@triton.jit
def _store_quantized(q_ptr, s_ptr, row, chunk, q, scale, col, col_ok, width,
                     num_groups, scale_stride, SCALE_FORMAT: tl.constexpr):
    """Store one tile's E4M3 values in row ``row`` and its 4 scales in ``SCALE_FORMAT``;
    nothing for row -1 (a slot of another rank)."""
    row64 = row.to(tl.int64)
    tl.store(q_ptr + row64 * width + col, q.to(tl.float8e4nv),
             mask=_and_nonnegative(col_ok, row))
    group = chunk * 4 + tl.arange(0, 4)
    if SCALE_FORMAT == 2:  # UE8M0 bytes, packed 4 per int32, MN-major
        byte = tl.where(group < num_groups, (scale.to(tl.int32, bitcast=True) >> 23) & 0xFF, 0)
        word = tl.reduce(byte << (tl.arange(0, 4) * 8), 0, _bit_or)
        first = tl.arange(0, 1)  # a one-element tensor: masks stay tensors
        tl.store(s_ptr + chunk.to(tl.int64) * scale_stride + row64 + first,
                 word + tl.zeros([1], tl.int32), mask=_and_nonnegative(first == 0, row))
    else:  # float32 [rows, groups]
        tl.store(s_ptr + row64 * num_groups + group, scale,
                 mask=_and_nonnegative(group < num_groups, row))


@triton.jit
def _tile_columns(chunk):
    return chunk * 512 + tl.arange(0, 4)[:, None] * 128 + tl.arange(0, 128)[None, :]


@triton.jit
def _quantize_permute_kernel(x_ptr, in_w_ptr, slot_row_ptr, q_ptr, s_ptr, hidden,
                             num_groups, scale_stride, TOP_K: tl.constexpr,
                             HAS_IN_W: tl.constexpr, SCALE_FORMAT: tl.constexpr):
    token = tl.program_id(0)
    chunk = tl.program_id(1)
    col = _tile_columns(chunk)
    col_ok = col < hidden
    x = tl.load(x_ptr + token.to(tl.int64) * hidden + col, mask=col_ok, other=0.0)
    x = x.to(tl.float32)
    if HAS_IN_W:  # the router weight on the input, rounded back to the input's dtype
        x = (x * tl.load(in_w_ptr + token)).to(x_ptr.dtype.element_ty).to(tl.float32)
    q, scale = _quantize_tile(x, SCALE_FORMAT != 0)
    for slot in tl.static_range(TOP_K):
        row = tl.load(slot_row_ptr + token * TOP_K + slot)
        _store_quantized(q_ptr, s_ptr, row, chunk, q, scale, col, col_ok, hidden,
                         num_groups, scale_stride, SCALE_FORMAT)


def _scale_stride(scales: torch.Tensor, fmt: ScaleFormat) -> int:
    return scales.stride(1) if fmt is ScaleFormat.UE8M0 else 0


def quantize_permute(hidden_states: torch.Tensor, plan: RoutingPlan, fmt: ScaleFormat,
                     input_weights: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """See :func:`mxmoe_cuda_deepgemm.glue_torch.quantize_permute`."""
    x = hidden_states.contiguous()
    tokens, hidden = x.shape
    groups = hidden // ACTIVATION_GROUP
    q = torch.empty((plan.rows, hidden), dtype=torch.float8_e4m3fn, device=x.device)
    scales = empty_activation_scales(plan.rows, groups, fmt, x.device)
    in_w = x if input_weights is None else input_weights.to(torch.float32).contiguous()
    if tokens:
        _quantize_permute_kernel[(tokens, triton.cdiv(hidden, _CHUNK))](
            x, in_w, plan.slot_row, q, scales, hidden, groups, _scale_stride(scales, fmt),
            TOP_K=plan.top_k, HAS_IN_W=input_weights is not None,
            SCALE_FORMAT=_SCALE_CODES[fmt], **_COMPILER)
    return q, scales


# -- activation + re-quantization ------------------------------------------------


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _activation(gate, up, alpha, beta, limit, ACTIVATION: tl.constexpr,
                HAS_LIMIT: tl.constexpr):
    """FACTS.md's gated activations in float32 (beta is 1 for interleaved SWIGLUOAI)."""
    if ACTIVATION == 0:  # SILU
        out = gate * _sigmoid(gate) * up
    elif ACTIVATION == 2:  # SWIGLUSTEP: clamps the SiLU output, not the gate
        silu = gate * _sigmoid(gate)
        if HAS_LIMIT:
            silu = tl.minimum(silu, limit)
            up = tl.clamp(up, -limit, limit)
        out = silu * up
    else:  # SWIGLUOAI, interleaved or not
        if HAS_LIMIT:
            gate = tl.minimum(gate, limit)
            up = tl.clamp(up, -limit, limit)
        out = gate * _sigmoid(alpha * gate) * (up + beta)
    return out


@triton.jit
def _activate_quantize_kernel(h_ptr, slot_row_ptr, slot_expert_ptr, bias_ptr, q_ptr, s_ptr,
                              inter, num_groups, scale_stride, alpha, beta, limit,
                              ACTIVATION: tl.constexpr, INTERLEAVED: tl.constexpr,
                              HAS_LIMIT: tl.constexpr, HAS_BIAS: tl.constexpr,
                              SCALE_FORMAT: tl.constexpr):
    # One program per slot and chunk: only real rows, never the workspace's padding.
    slot = tl.program_id(0)
    chunk = tl.program_id(1)
    row = tl.load(slot_row_ptr + slot)
    expert = tl.load(slot_expert_ptr + slot)
    if row >= 0:  # a slot of another rank has no row
        col = _tile_columns(chunk)
        col_ok = col < inter
        if INTERLEAVED:
            gate_col = 2 * col
            up_col = 2 * col + 1
        else:
            gate_col = col
            up_col = inter + col
        base = h_ptr + row.to(tl.int64) * (2 * inter)
        gate = tl.load(base + gate_col, mask=col_ok, other=0.0).to(tl.float32)
        up = tl.load(base + up_col, mask=col_ok, other=0.0).to(tl.float32)
        if HAS_BIAS:
            bias = bias_ptr + expert.to(tl.int64) * (2 * inter)
            gate += tl.load(bias + gate_col, mask=col_ok, other=0.0)
            up += tl.load(bias + up_col, mask=col_ok, other=0.0)
        out = _activation(gate, up, alpha, beta, limit, ACTIVATION, HAS_LIMIT)
        q, scale = _quantize_tile(out, SCALE_FORMAT != 0)
        _store_quantized(q_ptr, s_ptr, row, chunk, q, scale, col, col_ok, inter,
                         num_groups, scale_stride, SCALE_FORMAT)


def activate_quantize(fc1_out: torch.Tensor, plan: RoutingPlan, bias: torch.Tensor | None,
                      config: MoEConfig, fmt: ScaleFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """See :func:`mxmoe_cuda_deepgemm.glue_torch.activate_quantize` (padding rows are
    left unwritten here)."""
    h = fc1_out.contiguous()
    rows, inter = h.shape[0], h.shape[1] // 2
    groups = inter // ACTIVATION_GROUP
    q = torch.empty((rows, inter), dtype=torch.float8_e4m3fn, device=h.device)
    scales = empty_activation_scales(rows, groups, fmt, h.device)
    act = config.activation
    beta = config.activation_beta
    limit = config.swiglu_limit
    slots = plan.slot_row.numel()
    if slots:
        _activate_quantize_kernel[(slots, triton.cdiv(inter, _CHUNK))](
            h, plan.slot_row, plan.slot_expert, h if bias is None else bias, q, scales,
            inter, groups, _scale_stride(scales, fmt), config.swiglu_alpha, beta,
            0.0 if limit is None else limit,
            ACTIVATION=_ACTIVATION_CODES[act], INTERLEAVED=act.interleaved,
            HAS_LIMIT=limit is not None, HAS_BIAS=bias is not None,
            SCALE_FORMAT=_SCALE_CODES[fmt], **_COMPILER)
    return q, scales


# -- un-permute and reduce ----------------------------------------------------------


@triton.jit
def _unpermute_reduce_kernel(y_ptr, slot_row_ptr, slot_expert_ptr, w_ptr, bias_ptr,
                             out_ptr, hidden, TOP_K: tl.constexpr, HAS_W: tl.constexpr,
                             HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    token = tl.program_id(0)
    col = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    col_ok = col < hidden
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for slot in tl.static_range(TOP_K):
        row = tl.load(slot_row_ptr + token * TOP_K + slot)
        ok = _and_nonnegative(col_ok, row)
        value = tl.load(y_ptr + row.to(tl.int64) * hidden + col, mask=ok, other=0.0)
        value = value.to(tl.float32)
        if HAS_BIAS:
            expert = tl.load(slot_expert_ptr + token * TOP_K + slot)
            value += tl.load(bias_ptr + expert.to(tl.int64) * hidden + col, mask=ok, other=0.0)
        if HAS_W:
            value *= tl.load(w_ptr + token * TOP_K + slot)
        acc += value
    out = out_ptr + token.to(tl.int64) * hidden + col
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=col_ok)


def unpermute_reduce(fc2_out: torch.Tensor, plan: RoutingPlan,
                     topk_weights: torch.Tensor | None, bias: torch.Tensor | None,
                     dtype: torch.dtype) -> torch.Tensor:
    """See :func:`mxmoe_cuda_deepgemm.glue_torch.unpermute_reduce`."""
    y = fc2_out.contiguous()
    hidden = y.shape[1]
    tokens = plan.slot_row.numel() // plan.top_k
    out = torch.empty((tokens, hidden), dtype=dtype, device=y.device)
    weights = None if topk_weights is None else topk_weights.to(torch.float32).contiguous()
    if tokens:
        _unpermute_reduce_kernel[(tokens, triton.cdiv(hidden, _REDUCE_BLOCK))](
            y, plan.slot_row, plan.slot_expert, y if weights is None else weights,
            y if bias is None else bias, out, hidden, TOP_K=plan.top_k,
            HAS_W=weights is not None, HAS_BIAS=bias is not None, BLOCK=_REDUCE_BLOCK,
            **_COMPILER)
    return out
