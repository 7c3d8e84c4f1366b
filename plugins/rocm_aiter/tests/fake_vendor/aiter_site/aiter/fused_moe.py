"""Test double of ``aiter.fused_moe``: the per-1x32 MXFP8 path (FlyDSL two-stage GEMM).

``fused_moe(hidden_states, w1, w2, topk_weight, topk_ids, expert_mask, activation,
quant_type, doweight_stage1, w1_scale, w2_scale, a1_scale, a2_scale, ..., dtype, ...,
swiglu_limit, gate_mode)`` with float8_e4m3fn weights and ``QuantType.per_1x32``:

    out[t] = sum_j topk_weight[t, j] * mxfp8(swiglu(mxfp8(x[t]) @ W1_e^T)) @ W2_e^T

over the token's experts e that are local. Activations are quantized to MXFP8 as
aiter's HIP quantizer documents it (``kDefaultMxScaleRoundMode``): E4M3 with an E8M0
scale per 32 rounded up, ``2**ceil(log2(amax / 448))`` (RCEIL), so no block maximum
clips. SwiGLU is aiter's ``Swiglu`` (alpha 1.702, the clamp limit, +1 on the linear
half) on GEMM1's [gate | up] halves. The weights arrive preshuffled:
``w1`` by ``shuffle_weight_a16w4(w, 16, gate_up=True)``, ``w2`` by
``shuffle_weight_a16w4(w, 16, gate_up=False)``, ``w1_scale`` ([E*2I, H/32] E8M0) by
``shuffle_scale_a16w4(s, E, gate_up=True)``, ``w2_scale`` ([E*H, I/32]) by
``e8m0_shuffle`` — this double undoes exactly those view/permute specifications. The
weights must carry ``is_shuffled = True`` (else aiter would pick a kernel that reads
them unshuffled). ``expert_mask`` (expert parallelism): int32 [E_global + 1], 1 for
local experts, a trailing 0; local experts are numbered by counting the mask's ones.
"""

from __future__ import annotations

import torch

from . import ActivationType, QuantType
from ._contract import expect, expect_tensor
from ._reference import (dequantize_blocks, mxfp8_rceil_roundtrip, swiglu_oai,
                         undo_view_permute)
from .ops.flydsl.moe_common import GateMode

_SWIGLU_ALPHA = 1.702  # built into aiter's Swiglu
_N_LANE, _K_LANE, _K_PACK = 16, 4, 16  # shuffle_weight_a16w4 with NLane=16, 1-byte elements


def _unshuffle_weight(w: torch.Tensor, gate_up: bool) -> torch.Tensor:
    """Undo ``shuffle_weight_a16w4(w, 16, gate_up)`` on fp8 ``[E, N, K]``."""
    e, n, k = w.shape
    raw = w.view(torch.uint8)
    k0 = k // (_K_LANE * _K_PACK)
    if gate_up:
        view = (e, 2, n // 2 // _N_LANE, _N_LANE, k0, _K_LANE, _K_PACK)
        perm = (0, 2, 1, 4, 5, 3, 6)
    else:
        view = (e, n // _N_LANE, _N_LANE, k0, _K_LANE, _K_PACK)
        perm = (0, 1, 3, 4, 2, 5)
    return undo_view_permute(raw, view, perm, (e, n, k)).view(torch.float8_e4m3fn)


def _unshuffle_gate_up_scales(s: torch.Tensor, experts: int) -> torch.Tensor:
    """Undo ``shuffle_scale_a16w4(s, experts, gate_up=True)`` on ``[E*2I, K/32]``."""
    rows, cols = s.shape
    per_expert = rows // experts
    view = (experts, 2, per_expert // 32, 16, cols // 8, 2, 4)
    perm = (0, 2, 4, 6, 3, 5, 1)
    return undo_view_permute(s.view(torch.uint8), view, perm, (experts, per_expert, cols))


def _unshuffle_e8m0(s: torch.Tensor, experts: int) -> torch.Tensor:
    """Undo ``e8m0_shuffle`` on ``[E*H, I/32]`` (no padding: rows % 256, cols % 8 == 0)."""
    rows, cols = s.shape
    expect(rows % 256 == 0 and cols % 8 == 0,
           f"w2_scale: e8m0_shuffle pads to [{-(-rows // 256) * 256}, {-(-cols // 8) * 8}], "
           f"got {[rows, cols]}")
    view = (rows // 32, 2, 16, cols // 8, 2, 4)
    perm = (0, 3, 5, 2, 4, 1)
    flat = undo_view_permute(s.view(torch.uint8), view, perm, (rows, cols))
    return flat.reshape(experts, rows // experts, cols)


def _check_expert_mask(mask: torch.Tensor | None, local: int, ids: torch.Tensor) -> None:
    if mask is None:
        expect(int(ids.min()) >= 0 and int(ids.max()) < local,
               f"topk_ids: without an expert_mask ids must lie in [0, {local})")
        return
    expect_tensor("expert_mask", mask, torch.int32)
    expect(mask.dim() == 1 and mask.numel() >= 2, "expert_mask: expected [E_global + 1]")
    expect(bool(((mask == 0) | (mask == 1)).all()), "expert_mask: entries must be 0 or 1")
    expect(int(mask[-1]) == 0, "expert_mask: the trailing sentinel slot must be 0")
    expect(int(mask.sum()) == local,
           f"expert_mask: {int(mask.sum())} local experts marked, w1 holds {local}")
    expect(int(ids.min()) >= 0 and int(ids.max()) < mask.numel() - 1,
           f"topk_ids: global ids must lie in [0, {mask.numel() - 1})")


def fused_moe(hidden_states, w1, w2, topk_weight, topk_ids, expert_mask=None,
              activation=ActivationType.Silu, quant_type=QuantType.No, doweight_stage1=False,
              w1_scale=None, w2_scale=None, a1_scale=None, a2_scale=None, block_size_M=None,
              num_local_tokens=None, moe_sorting_dispatch_policy=0, dtype=None, hidden_pad=0,
              intermediate_pad=0, bias1=None, bias2=None, splitk=0, swiglu_limit=None,
              gate_mode=GateMode.SEPARATED.value):
    expect(isinstance(hidden_states, torch.Tensor) and hidden_states.dim() == 2,
           "hidden_states: expected [M, H]")
    out_dtype = hidden_states.dtype if dtype is None else dtype
    expect(out_dtype in (torch.bfloat16, torch.float16),
           f"dtype: fused_moe outputs fp16 or bf16, got {out_dtype}")
    expect(quant_type is QuantType.per_1x32, f"quant_type: this double implements per_1x32 "
                                             f"(MXFP8) only, got {quant_type}")
    expect(activation is ActivationType.Swiglu,
           f"activation: this double implements Swiglu only, got {activation}")
    expect(GateMode(gate_mode) is GateMode.INTERLEAVE,
           f"gate_mode: the MXFP8 FlyDSL path reads gate/up interleaved, got {gate_mode!r}")
    expect(not doweight_stage1, "doweight_stage1: this double weights in stage 2 only")
    expect(a1_scale is None and a2_scale is None,
           "a1_scale/a2_scale: per_1x32 activations are quantized dynamically inside")
    expect(bias1 is None and bias2 is None, "bias1/bias2: the MXFP8 path takes no biases")
    expect(isinstance(swiglu_limit, float) and swiglu_limit > 0,
           f"swiglu_limit: expected a positive float, got {swiglu_limit!r}")
    m, hidden = hidden_states.shape
    expect_tensor("w1", w1, torch.float8_e4m3fn)
    experts, two_inter, _ = w1.shape
    inter = two_inter // 2
    expect_tensor("w1", w1, torch.float8_e4m3fn, (experts, 2 * inter, hidden))
    expect_tensor("w2", w2, torch.float8_e4m3fn, (experts, hidden, inter))
    for name, w in (("w1", w1), ("w2", w2)):
        expect(getattr(w, "is_shuffled", False) is True,
               f"{name}: not tagged is_shuffled; aiter would pick a kernel reading it unshuffled")
    expect_tensor("w1_scale", w1_scale, torch.float8_e8m0fnu,
                  (experts * 2 * inter, hidden // 32))
    expect_tensor("w2_scale", w2_scale, torch.float8_e8m0fnu, (experts * hidden, inter // 32))
    expect_tensor("topk_weight", topk_weight, torch.float32)
    k = topk_weight.shape[-1]
    expect_tensor("topk_weight", topk_weight, torch.float32, (m, k))
    expect_tensor("topk_ids", topk_ids, torch.int32, (m, k))
    _check_expert_mask(expert_mask, experts, topk_ids)

    w1_plain = dequantize_blocks(_unshuffle_weight(w1, gate_up=True).float(),
                                 _unshuffle_gate_up_scales(w1_scale, experts))
    w2_plain = dequantize_blocks(_unshuffle_weight(w2, gate_up=False).float(),
                                 _unshuffle_e8m0(w2_scale, experts))
    ids = topk_ids.long()
    if expert_mask is None:
        local, valid = ids, torch.ones_like(ids, dtype=torch.bool)
    else:
        mask = expert_mask.long()
        local, valid = (mask.cumsum(0) - 1)[ids], mask[ids] == 1
    x = mxfp8_rceil_roundtrip(hidden_states)
    out = torch.zeros(m, hidden, dtype=torch.float32, device=hidden_states.device)
    for expert in range(experts):
        tokens, slots = torch.nonzero(valid & (local == expert), as_tuple=True)
        if tokens.numel() == 0:
            continue
        h = x[tokens] @ w1_plain[expert].T
        act = swiglu_oai(h[:, :inter], h[:, inter:], _SWIGLU_ALPHA, swiglu_limit)
        act = act.to(out_dtype)  # stage 1 writes out_dtype, stage 2 requantizes it
        act = mxfp8_rceil_roundtrip(act)
        y = act @ w2_plain[expert].T
        # index_put_ rather than index_add_: the same sum, but index_add_ on the CPU
        # takes milliseconds per call and dominated the tests' run time.
        out.index_put_((tokens,), y * topk_weight[tokens, slots].unsqueeze(1),
                       accumulate=True)
    return out.to(out_dtype)
