"""The Triton kernels of the ``triton`` backend (imported only once Triton is known to work).

Four launches make one layer, all on the device, none waiting for the host:

1. :func:`align_kernel` (one program): counts the tokens routed to each local expert
   and lays the (token, k) *slots* out expert by expert in blocks of ``BLOCK_M`` rows.
   It writes ``sorted_slots[row]`` (the slot at each padded row), and per block its
   local expert and its number of real rows (0 for the unused tail of the worst-case
   grid), so the GEMMs need no sentinel rows and no host-known counts.
2. :func:`moe_gemm_kernel` as GEMM1: gathers each block's token rows, multiplies them
   by the expert's gate and up weight tiles (MX bytes dequantized in registers),
   adds the biases and applies the activation in the epilogue, writing the block's
   rows of the intermediate activation.
3. :func:`moe_gemm_kernel` as GEMM2: the activation rows times ``w2``, plus bias,
   times the router weight, written to the slot's own row.
4. :func:`sum_slots_kernel`: each token's output is the sum of its ``top_k`` slot
   rows, in slot order (deterministic; slots of non-local experts are skipped).

The MX weight tile is turned into a matrix product in one of two ways, chosen by the
``DECODE`` constexpr: ``"dot_scaled"`` hands the packed bytes and their E8M0 scales
to ``tl.dot_scaled`` (Triton upcasts them for the tensor cores itself; bf16 only), and
``"manual"`` decodes them here with integer bit operations (E2M1 codes become float16
bit patterns, exact, subnormals included; E4M3 bytes convert natively), multiplies by
``2**(s - 127)`` in float32 and rounds to the activation dtype, which is exact for
the scales :mod:`.layout` admits. ``SWAP`` picks the orientation of the product:
``W @ X^T`` (weights as the left operand, so the token block can be as small as 16)
or ``X @ W^T``.

``INTERPRET`` (set when running under ``TRITON_INTERPRET=1``) works around two traps
of Triton's CPU interpreter (seen with Triton 3.9): its ``tl.dot`` of two bf16 tiles
returns garbage, so the tiles are multiplied as float32 (exact: bf16 products fit
float32, as on the GPU's float32-accumulating tensor cores); and its float32 -> bf16
cast truncates instead of rounding to nearest even, so :func:`_round` rounds the
bits first. Both branches are compiled out on the GPU.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["align_kernel", "moe_gemm_kernel", "sum_slots_kernel"]


# -- routing: slots grouped by local expert -------------------------------------------


@triton.jit
def _local_experts(ids_ptr, map_ptr, slots, num_slots, HAS_MAP: tl.constexpr):
    """Local expert of each slot, -1 for padding slots and non-local experts."""
    ids = tl.load(ids_ptr + slots, mask=slots < num_slots, other=-1)
    if HAS_MAP:
        ids = tl.load(map_ptr + ids, mask=ids >= 0, other=-1)
    return ids


@triton.jit
def align_kernel(
    ids_ptr, map_ptr, sorted_slots_ptr, block_expert_ptr, block_rows_ptr,
    num_slots, num_blocks,
    NUM_LOCAL: tl.constexpr, E_PAD: tl.constexpr, HAS_MAP: tl.constexpr,
    BLOCK_M: tl.constexpr, CHUNK: tl.constexpr, BLOCK_CHUNK: tl.constexpr,
):
    """Group the slots by local expert into blocks of BLOCK_M rows (one program).

    Slots keep their order within an expert. Every one of the ``num_blocks`` block
    entries is written (unused ones get 0 rows), so no buffer needs clearing.
    """
    experts = tl.arange(0, E_PAD)
    counts = tl.zeros([E_PAD], dtype=tl.int32)
    for start in range(0, num_slots, CHUNK):
        local = _local_experts(ids_ptr, map_ptr, start + tl.arange(0, CHUNK), num_slots, HAS_MAP)
        counts += tl.sum((local[:, None] == experts[None, :]).to(tl.int32), axis=0)
    blocks = (counts + BLOCK_M - 1) // BLOCK_M
    block_end = tl.cumsum(blocks, axis=0)
    block_start = block_end - blocks
    row_start = block_start * BLOCK_M
    seen = tl.zeros([E_PAD], dtype=tl.int32)
    for start in range(0, num_slots, CHUNK):
        slots = start + tl.arange(0, CHUNK)
        local = _local_experts(ids_ptr, map_ptr, slots, num_slots, HAS_MAP)
        onehot = (local[:, None] == experts[None, :]).to(tl.int32)
        before = tl.cumsum(onehot, axis=0) - onehot + seen[None, :]
        row = tl.sum(onehot * (before + row_start[None, :]), axis=1)
        tl.store(sorted_slots_ptr + row, slots, mask=local >= 0)
        seen += tl.sum(onehot, axis=0)
    for start in range(0, num_blocks, BLOCK_CHUNK):
        blk = start + tl.arange(0, BLOCK_CHUNK)
        # the owner of a block: the number of experts whose blocks all come before it
        owner = tl.sum((block_end[None, :] <= blk[:, None]).to(tl.int32), axis=1)
        pick = (experts[None, :] == owner[:, None]).to(tl.int32)
        count = tl.sum(pick * counts[None, :], axis=1)
        first = tl.sum(pick * block_start[None, :], axis=1)
        rows = tl.minimum(count - (blk - first) * BLOCK_M, BLOCK_M)
        rows = tl.where(owner < NUM_LOCAL, rows, 0)
        tl.store(block_expert_ptr + blk, owner, mask=blk < num_blocks)
        tl.store(block_rows_ptr + blk, rows, mask=blk < num_blocks)


@triton.jit
def _round(x, DTYPE: tl.constexpr, INTERPRET: tl.constexpr):
    """float32 ``x`` rounded to nearest even in DTYPE (see INTERPRET above)."""
    if INTERPRET and DTYPE == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000  # exactly a bf16 now
        x = bits.to(tl.float32, bitcast=True)
    return x.to(DTYPE)


# -- MX weight tiles -----------------------------------------------------------------


@triton.jit
def _dequantize(wq, ws, EPB: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                DTYPE: tl.constexpr):
    """MX bytes ``wq`` ([BN, BK/2] packed E2M1 or [BN, BK] E4M3) and E8M0 scales ``ws``
    ([BN, BK/32]) -> weights [BN, BK] in DTYPE. EPB: elements per byte (2 or 1)."""
    if EPB == 2:
        codes = tl.join(wq & 0xF, wq >> 4).reshape(BLOCK_N, BLOCK_K).to(tl.uint16)
        # E2M1 s|e1 e0|m as float16 bits s|00 0e1 e0|m 000000000: the value times 2**-14,
        # exact for every code including the subnormal 0.5
        half = (((codes & 7) << 9) | ((codes & 8) << 12)).to(tl.float16, bitcast=True)
        values = half.to(tl.float32)
        scale = (ws.to(tl.int32) << 23).to(tl.float32, bitcast=True) * 16384.0
    else:
        values = wq.to(tl.float8e4nv, bitcast=True).to(tl.float32)
        scale = (ws.to(tl.int32) << 23).to(tl.float32, bitcast=True)
    blocks = values.reshape(BLOCK_N, BLOCK_K // 32, 32) * scale[:, :, None]
    return blocks.reshape(BLOCK_N, BLOCK_K).to(DTYPE)


@triton.jit
def _mx_dot(a, wq, ws, acc, W_FMT: tl.constexpr, EPB: tl.constexpr, DECODE: tl.constexpr, SWAP: tl.constexpr,
            INTERPRET: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc + (a [BM, BK] times the MX weight tile [BN, BK] transposed), oriented
    [BN, BM] when SWAP else [BM, BN]."""
    if DECODE == "dot_scaled":
        if SWAP:
            acc = tl.dot_scaled(wq, ws, W_FMT, tl.trans(a), None, "bf16", acc=acc)
        else:
            acc = tl.dot_scaled(a, None, "bf16", tl.trans(wq), ws, W_FMT, acc=acc)
    else:
        w = _dequantize(wq, ws, EPB, BLOCK_N, BLOCK_K, a.dtype)
        if INTERPRET:
            w = w.to(tl.float32)
            a = a.to(tl.float32)
        if SWAP:
            acc = tl.dot(w, tl.trans(a), acc)
        else:
            acc = tl.dot(a, tl.trans(w), acc)
    return acc


@triton.jit
def _along_n(v, SWAP: tl.constexpr):
    """A vector over the N (weight row) axis, broadcast against the accumulator."""
    if SWAP:
        return v[:, None]
    else:
        return v[None, :]


@triton.jit
def _along_m(v, SWAP: tl.constexpr):
    """A vector over the M (token row) axis, broadcast against the accumulator."""
    if SWAP:
        return v[None, :]
    else:
        return v[:, None]


@triton.jit
def _activate(gate, up, alpha, beta, limit, ACTIVATION: tl.constexpr, HAS_LIMIT: tl.constexpr):
    """The gated activation of mxmoe.activations, in float32."""
    if ACTIVATION == "silu":
        out = gate * tl.sigmoid(gate) * up
    elif ACTIVATION == "swiglustep":
        act = gate * tl.sigmoid(gate)
        if HAS_LIMIT:
            act = tl.minimum(act, limit)
            up = tl.minimum(tl.maximum(up, -limit), limit)
        out = act * up
    else:  # swigluoai (beta = 1) and swigluoai_uninterleave
        if HAS_LIMIT:
            gate = tl.minimum(gate, limit)
            up = tl.minimum(tl.maximum(up, -limit), limit)
        out = gate * tl.sigmoid(alpha * gate) * (up + beta)
    return out


# -- the grouped GEMMs ------------------------------------------------------------------


@triton.jit
def moe_gemm_kernel(
    a_ptr, stride_a,
    w_ptr, stride_we, stride_wn,
    s_ptr, stride_se, stride_sn,
    bias_ptr, stride_be,
    out_ptr, stride_out,
    sorted_slots_ptr, block_expert_ptr, block_rows_ptr, route_w_ptr,
    N, K, up_offset, alpha, beta, limit,
    TOP_K: tl.constexpr, GATED: tl.constexpr, ROW_STEP: tl.constexpr,
    ACTIVATION: tl.constexpr, HAS_LIMIT: tl.constexpr, HAS_BIAS: tl.constexpr,
    WEIGHT_ON_INPUT: tl.constexpr, WEIGHT_ON_OUTPUT: tl.constexpr, GATHER_A: tl.constexpr,
    W_FMT: tl.constexpr, EPB: tl.constexpr, DECODE: tl.constexpr, SWAP: tl.constexpr, INTERPRET: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One (block of BLOCK_M rows of one expert) x (BLOCK_N output columns) tile.

    GEMM1 (``GATED``, ``GATHER_A``): A rows are hidden-state rows of the block's
    tokens; gate rows ``n * ROW_STEP`` and up rows ``n * ROW_STEP + up_offset`` of
    ``w13``; the activation is written at the block's own rows. GEMM2: A rows are the
    block's activation rows; the result goes to the rows of its slots.
    """
    pid = tl.program_id(0)
    n_tiles = tl.cdiv(N, BLOCK_N)
    blk = pid // n_tiles
    rows = tl.load(block_rows_ptr + blk)
    if rows == 0:
        return
    expert = tl.load(block_expert_ptr + blk).to(tl.int64)
    offs_m = tl.arange(0, BLOCK_M)
    m_mask = offs_m < rows
    padded_row = blk * BLOCK_M + offs_m
    slots = tl.load(sorted_slots_ptr + padded_row, mask=m_mask, other=0)
    if GATHER_A:
        a_rows = (slots // TOP_K).to(tl.int64)
    else:
        a_rows = padded_row.to(tl.int64)
    route_w = tl.load(route_w_ptr + slots, mask=m_mask, other=0.0)

    offs_n = (pid % n_tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    K_BYTES: tl.constexpr = BLOCK_K // EPB
    offs_kb = tl.arange(0, K_BYTES)
    offs_ks = tl.arange(0, BLOCK_K // 32)

    gate_rows = (offs_n * ROW_STEP).to(tl.int64)
    w_base = w_ptr + expert * stride_we
    s_base = s_ptr + expert * stride_se
    a_ptrs = a_ptr + a_rows[:, None] * stride_a + offs_k[None, :]
    wg_ptrs = w_base + gate_rows[:, None] * stride_wn + offs_kb[None, :]
    sg_ptrs = s_base + gate_rows[:, None] * stride_sn + offs_ks[None, :]
    wu_ptrs = wg_ptrs + up_offset * stride_wn
    su_ptrs = sg_ptrs + up_offset * stride_sn

    if SWAP:
        acc_g = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    else:
        acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros_like(acc_g)
    for k0 in range(0, K, BLOCK_K):
        k_mask = (k0 + offs_k) < K
        a = tl.load(a_ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        if WEIGHT_ON_INPUT:
            a = _round(a.to(tl.float32) * route_w[:, None], a.dtype, INTERPRET)
        kb_mask = n_mask[:, None] & ((k0 // EPB + offs_kb) < K // EPB)[None, :]
        ks_mask = n_mask[:, None] & ((k0 // 32 + offs_ks) < K // 32)[None, :]
        wq = tl.load(wg_ptrs, mask=kb_mask, other=0)
        ws = tl.load(sg_ptrs, mask=ks_mask, other=0)
        acc_g = _mx_dot(a, wq, ws, acc_g, W_FMT, EPB, DECODE, SWAP, INTERPRET, BLOCK_N, BLOCK_K)
        if GATED:
            wq = tl.load(wu_ptrs, mask=kb_mask, other=0)
            ws = tl.load(su_ptrs, mask=ks_mask, other=0)
            acc_u = _mx_dot(a, wq, ws, acc_u, W_FMT, EPB, DECODE, SWAP, INTERPRET, BLOCK_N, BLOCK_K)
        a_ptrs += BLOCK_K
        wg_ptrs += K_BYTES
        sg_ptrs += BLOCK_K // 32
        wu_ptrs += K_BYTES
        su_ptrs += BLOCK_K // 32

    if HAS_BIAS:
        b_ptrs = bias_ptr + expert * stride_be + gate_rows
        acc_g += _along_n(tl.load(b_ptrs, mask=n_mask, other=0.0), SWAP)
        if GATED:
            acc_u += _along_n(tl.load(b_ptrs + up_offset, mask=n_mask, other=0.0), SWAP)
    if GATED:
        result = _activate(acc_g, acc_u, alpha, beta, limit, ACTIVATION, HAS_LIMIT)
        out_rows = padded_row.to(tl.int64)
    else:
        result = acc_g
        if WEIGHT_ON_OUTPUT:
            result = result * _along_m(route_w, SWAP)
        out_rows = slots.to(tl.int64)
    out_ptrs = out_ptr + _along_m(out_rows, SWAP) * stride_out + _along_n(offs_n, SWAP)
    out_mask = _along_m(m_mask, SWAP) & _along_n(n_mask, SWAP)
    tl.store(out_ptrs, _round(result, out_ptr.dtype.element_ty, INTERPRET), mask=out_mask)


# -- the top-k reduction ----------------------------------------------------------------


@triton.jit
def sum_slots_kernel(
    slot_out_ptr, ids_ptr, map_ptr, out_ptr, H,
    TOP_K: tl.constexpr, HAS_MAP: tl.constexpr, BLOCK_H: tl.constexpr, INTERPRET: tl.constexpr,
):
    """out[t] = sum over j of slot_out[t * TOP_K + j], local experts only, in order."""
    token = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    col_mask = cols < H
    acc = tl.zeros([BLOCK_H], dtype=tl.float32)
    for j in tl.static_range(TOP_K):
        slot = token * TOP_K + j
        # the slot's expert, loaded as a vector over the columns (a broadcast load):
        # the interpreter rejects masks mixing a scalar condition into a tensor
        local = tl.load(ids_ptr + slot + tl.zeros_like(cols))
        if HAS_MAP:
            local = tl.load(map_ptr + local)
        acc += tl.load(slot_out_ptr + slot * H + cols, mask=col_mask & (local >= 0),
                       other=0.0).to(tl.float32)
    tl.store(out_ptr + token * H + cols, _round(acc, out_ptr.dtype.element_ty, INTERPRET),
             mask=col_mask)
