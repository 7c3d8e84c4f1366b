"""The reference math behind the aiter double: undoing layouts, decoding MX values."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mxmoe.formats import dequantize_mx, e2m1_to_float, e8m0_to_float, quantize_mx

from ._contract import expect


def undo_view_permute(result: torch.Tensor, view: Sequence[int], perm: Sequence[int],
                      shape: Sequence[int]) -> torch.Tensor:
    """``x`` of ``shape`` such that ``result`` holds ``x.view(view).permute(perm)``'s bytes.

    aiter defines each preshuffle as a view of the plain tensor followed by a permute
    made contiguous; this undoes one given those two specifications.
    """
    expect(result.numel() == _prod(view) == _prod(shape),
           f"layout: {list(result.shape)} cannot be the preshuffle of {list(shape)} "
           f"through view {list(view)}")
    inverse = [list(perm).index(axis) for axis in range(len(perm))]
    permuted = result.reshape([view[p] for p in perm])
    return permuted.permute(inverse).reshape(list(shape))


def _prod(dims: Sequence[int]) -> int:
    out = 1
    for d in dims:
        out *= int(d)
    return out


def fp4_along_k(packed_kn: torch.Tensor) -> torch.Tensor:
    """Bytes ``[E, K/2, N]`` (two E2M1 codes per byte along K, low nibble first) ->
    their values ``[E, K, N]`` in float32."""
    low, high = packed_kn & 0x0F, packed_kn >> 4
    e, half_k, n = packed_kn.shape
    return e2m1_to_float(torch.stack((low, high), dim=2).reshape(e, 2 * half_k, n))


def dequantize_blocks(values: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Elements ``[..., K]`` (float) times E8M0 scales ``[..., K/32]`` (uint8)."""
    k = values.shape[-1]
    blocks = values.reshape(*values.shape[:-1], k // 32, 32)
    return (blocks * e8m0_to_float(scales).unsqueeze(-1)).reshape(values.shape)


def mxfp8_rceil_roundtrip(x: torch.Tensor) -> torch.Tensor:
    """``x`` [..., K] quantized to MXFP8 (E4M3, E8M0 scale per 32 rounded up: RCEIL,
    aiter's rule) and back, in float32."""
    data, scales = quantize_mx(x.float(), "mxfp8_e4m3", scale_rounding="rceil")
    return dequantize_mx(data, scales, "mxfp8_e4m3")


def swiglu_oai(gate: torch.Tensor, up: torch.Tensor, alpha: float,
               limit: float | None) -> torch.Tensor:
    """``min(g, L) * sigmoid(alpha * min(g, L)) * (clamp(u, -L, L) + 1)``."""
    if limit is not None:
        gate, up = gate.clamp(max=limit), up.clamp(-limit, limit)
    return gate * torch.sigmoid(alpha * gate) * (up + 1)
