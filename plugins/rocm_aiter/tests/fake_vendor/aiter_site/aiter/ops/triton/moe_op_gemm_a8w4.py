"""Test double of ``aiter.ops.triton.moe_op_gemm_a8w4``: the gfx950 a8w4 grouped GEMM.

``moe_gemm_a8w4(x, w, x_scales, w_scales, x_static_scale, quant_static_scale, bias,
routing_data, gather_indx, scatter_indx, gammas, swizzle_mx_scale, out_dtype,
apply_swiglu, alpha, limit, unpadded_N, unpadded_K)``, for each expert e and each sorted
row p of e (rows of x ``gather_indx[p] // k`` when gathering, else p):

    y[p] = swiglu?(x_row[:K'] @ W_e[:K', :N'] * x_static_scale + bias[e]) * gammas[p]

quantized to FP8 with ``quant_static_scale`` when given, stored in ``out_dtype``; with
``scatter_indx`` each token's k rows are then summed. ``w`` is the expert's packed E2M1
``[K/2, N]`` read column-major (``w.stride(-2) == 1``), ``w_scales`` with
``swizzle_mx_scale="CDNA4_SCALE"`` is ``[E, K, N/32]`` decoded by the kernel's
``unswizzle_mx_scale_cdna4``. SwiGLU pairs columns (2i, 2i+1) as (gate, linear).

K' and N' are the unpadded sizes, which aiter honours when ``routing_data.block_m ==
16``: it then skips K beyond ``unpadded_K`` and never writes output columns beyond
``unpadded_N`` (this double writes NaN there, as a stand-in for unwritten memory).
Only the static-FP8 activation path (``x_scales=None``) and the CDNA4 scale layout are
implemented; anything else raises.
"""

from __future__ import annotations

import torch

from mxmoe.formats import quantize_fp8_per_tensor

from ..._contract import expect, expect_scalar_scale, expect_tensor
from ..._reference import dequantize_blocks, fp4_along_k, swiglu_oai
from .moe_routing.routing import RoutingData

_CDNA4 = "CDNA4_SCALE"
_SMALL_BLOCK_M = 16  # aiter honours unpadded_N / unpadded_K only at this block size


def _unswizzle_cdna4(w_scales: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """The kernel's read of ``CDNA4_SCALE`` scales, over whole tiles: per expert the
    ``[N/32, K]`` block of packed scale bytes (rows: 32-row output groups) reshaped to
    (N/32, K/256, 4, 16, 2, 2, 1), permuted (0, 5, 3, 1, 4, 2, 6), read as [N, K/32]."""
    e = w_scales.shape[0]
    expect(tuple(w_scales.shape) == (e, k, n // 32),
           f"w_scales: CDNA4_SCALE scales for K={k}, N={n} are [E, {k}, {n // 32}], "
           f"got {list(w_scales.shape)}")
    packed = w_scales.transpose(1, 2)  # [E, N/32, K]: the kernel's (n, k) pointer grid
    tiles = packed.reshape(e, n // 32, k // 256, 4, 16, 2, 2, 1)
    return tiles.permute(0, 1, 6, 4, 2, 5, 3, 7).reshape(e, n, k // 32)


def _dequantized_weights(w: torch.Tensor, w_scales: torch.Tensor) -> torch.Tensor:
    """Weights ``[E, K, N]`` in float32 from packed codes and CDNA4 scales."""
    values = fp4_along_k(w)  # [E, K, N]
    e, k, n = values.shape
    expect(n % 32 == 0 and k % 256 == 0,
           f"w: the CDNA4 scale swizzle needs N % 32 == 0 and K % 256 == 0, got N={n}, K={k}")
    scales_nk = _unswizzle_cdna4(w_scales, n, k)  # [E, N, K/32]
    return dequantize_blocks(values.transpose(1, 2), scales_nk).transpose(1, 2).contiguous()


def _check_indices(name: str, t: torch.Tensor | None, n: int) -> None:
    if t is not None:
        expect_tensor(name, t, torch.int32, (n,))


def moe_gemm_a8w4(x, w, x_scales, w_scales, x_static_scale=None, quant_static_scale=None,
                  bias=None, routing_data: RoutingData | None = None, gather_indx=None,
                  scatter_indx=None, gammas=None, swizzle_mx_scale=None,
                  out_dtype=torch.bfloat16, apply_swiglu=False, alpha=1.0, limit=1.0,
                  unpadded_N=None, unpadded_K=None):
    expect_tensor("x", x, torch.float8_e4m3fn)
    expect(x.dim() == 2, f"x: expected [M, K], got {list(x.shape)}")
    expect(x_scales is None, "x_scales: this double implements static FP8 activations only")
    expect_tensor("w", w, torch.uint8)
    expect(w.dim() == 3, f"w: expected [E, K/2, N], got {list(w.shape)}")
    expect(w.stride(-2) == 1, "w: `w` must be column-major (w.stride(-2) == 1) for mxfp data")
    n_experts, half_k, n = w.shape
    k = x.shape[1]
    expect(k == 2 * half_k, f"x: K={k} does not match w's packed K/2={half_k}")
    expect(swizzle_mx_scale == _CDNA4,
           f"swizzle_mx_scale: the gfx950 layout is {_CDNA4!r}, got {swizzle_mx_scale!r}")
    expect_tensor("w_scales", w_scales, torch.uint8)
    scale_x = expect_scalar_scale("x_static_scale", x_static_scale)
    if quant_static_scale is not None:
        expect_scalar_scale("quant_static_scale", quant_static_scale)
        expect(out_dtype == torch.float8_e4m3fn,
               f"out_dtype: with quant_static_scale the output is FP8, got {out_dtype}")
    if bias is not None:
        expect_tensor("bias", bias, torch.float32, (n_experts, n))
        expect(bias.stride(-1) == 1, "bias: the last dimension must be contiguous")
    expect(isinstance(routing_data, RoutingData), "routing_data: expected routing()'s RoutingData")
    expect(routing_data.n_expts_tot == n_experts,
           f"routing_data: routed over {routing_data.n_expts_tot} experts, w has {n_experts}")
    k_act = routing_data.n_expts_act
    n_gates = int(routing_data.expt_hist.sum())
    rows = n_gates if gather_indx is not None else x.shape[0]
    _check_indices("gather_indx", gather_indx, n_gates)
    _check_indices("scatter_indx", scatter_indx, n_gates)
    expect(rows == n_gates, f"x: {rows} rows, but routing sorted {n_gates}")
    if gammas is not None:
        expect(gammas.dim() == 1 and gammas.numel() == n_gates and gammas.is_floating_point(),
               f"gammas: expected [{n_gates}] router weights in sorted order")
    if apply_swiglu:
        expect(n % 2 == 0, f"w: SwiGLU needs an even N, got {n}")
    k_used, n_used = k, n
    if routing_data.block_m == _SMALL_BLOCK_M:
        for name, value, full in (("unpadded_N", unpadded_N, n), ("unpadded_K", unpadded_K, k)):
            if value:
                expect(isinstance(value, int) and 0 < value <= full,
                       f"{name}: expected an int in (0, {full}], got {value!r}")
        k_used, n_used = unpadded_K or k, unpadded_N or n

    weights = _dequantized_weights(w, w_scales)
    width = n // 2 if apply_swiglu else n
    y = torch.full((rows, width), float("nan"), dtype=torch.float32, device=x.device)
    offsets = routing_data.expt_data.token_offs_raw.tolist()
    for expert in range(n_experts):
        lo, hi = offsets[expert], offsets[expert + 1]
        if lo == hi:
            continue
        sorted_rows = torch.arange(lo, hi, device=x.device)
        src = sorted_rows if gather_indx is None else gather_indx[lo:hi].long() // k_act
        acc = x[src, :k_used].float() @ weights[expert, :k_used, :n_used]
        acc = acc * scale_x.reshape(())
        if bias is not None:
            acc = acc + bias[expert, :n_used]
        if apply_swiglu:
            acc = swiglu_oai(acc[:, 0::2], acc[:, 1::2], alpha, limit)
        if gammas is not None:
            acc = acc * gammas[lo:hi].float().unsqueeze(1)
        y[lo:hi, :acc.shape[1]] = acc
    y = (quantize_fp8_per_tensor(y, quant_static_scale) if quant_static_scale is not None
         else y.to(out_dtype))
    if scatter_indx is None:
        return y
    groups = scatter_indx.long().view(-1, k_act)
    return y[groups].float().sum(dim=1).to(out_dtype)
