"""The weight layouts aiter's gfx950 kernels read, as pure, invertible PyTorch permutations.

Every function here is a byte permutation of a checkpoint-layout tensor (see
:mod:`mxmoe.weights`) with an exact inverse, so tests can round-trip each one. Shapes
are the padded ones; a shape the layout cannot tile raises ValueError naming it.

Three building blocks cover both backends:

* **CDNA4 scale order** (:func:`cdna4_scale_order`): E8M0 scales ``[.., N, K/32]`` are
  stored in groups of 32 rows; inside a group, for each run of 8 scale columns, the
  bytes go in the order (column within a half-run, row within 16, half-run, 16-row
  half). It is both aiter's ``e8m0_shuffle`` and the Triton a8w4 kernel's
  ``CDNA4_SCALE`` swizzle.
* **16 x 64-byte weight tiles** (:func:`preshuffle_weight_tiles`): each tile of 16 rows
  and 64 bytes of K is stored as 4 K-lanes, each holding 16 rows of 16 bytes (aiter's
  ``shuffle_weight_a16w4`` without gate/up handling, for one-byte elements).
* **gate/up blocks** (:func:`gate_up_halves_to_blocks`): GEMM1 rows [all gates | all
  ups] regrouped as alternating blocks of gate rows and up rows. Blocks of 1 are
  gpt-oss's interleaved rows; blocks of 16 are the "GUGU" order of aiter's MXFP8
  stage-1 (``GateMode.INTERLEAVE``), which its ``shuffle_weight_a16w4(.., gate_up=True)``
  and ``shuffle_scale_a16w4(.., gate_up=True)`` produce from halves.

The backends compose them:

* ``aiter-w4a8`` (Triton ``moe_gemm_a8w4`` on gfx950): packed FP4 values ``[E, K/2, N]``
  with K contiguous (:func:`gfx950_a8w4_values`); scales in CDNA4 order viewed as
  ``[E, K, N/32]`` with K contiguous (:func:`gfx950_a8w4_scales`).
* ``aiter-mxfp8`` (``aiter.fused_moe`` per-1x32): w13 gate/up in 16-row blocks, then
  tiled; its scales in 16-row blocks, then CDNA4 order, flattened to ``[E*2I, H/32]``;
  w2 tiled; its scales in CDNA4 order, flattened to ``[E*H, I/32]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "GATE_UP_BLOCK",
    "cdna4_scale_order",
    "cdna4_scale_order_inverse",
    "expert_mask",
    "gate_up_blocks_to_halves",
    "gate_up_halves_to_blocks",
    "gfx950_a8w4_scales",
    "gfx950_a8w4_scales_inverse",
    "gfx950_a8w4_values",
    "gfx950_a8w4_values_inverse",
    "local_experts_in_global_order",
    "preshuffle_weight_tiles",
    "preshuffle_weight_tiles_inverse",
]

#: Rows per MFMA weight tile, and the gate/up block of aiter's MXFP8 stage 1.
GATE_UP_BLOCK = 16
_TILE_K_BYTES = 64  # one tile's K extent: 4 lanes x 16 bytes
_K_LANES = 4
_LANE_BYTES = 16
_SCALE_ROW_GROUP = 32  # rows sharing one run of preshuffled scale bytes
_SCALE_COL_RUN = 8  # scale columns (256 elements of K) per run


def _require(condition: bool, name: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{name}: {message}")


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    """A one-byte tensor as uint8 (permutations then work for every float8 dtype)."""
    _require(t.element_size() == 1, "tensor", f"expected one-byte elements, got {t.dtype}")
    return t.view(torch.uint8)


# -- CDNA4 E8M0 scale order ----------------------------------------------------------------


def _check_scale_grid(scales: torch.Tensor) -> tuple[int, int]:
    _require(scales.dim() >= 2, "scales", f"expected [..., N, K/32], got {list(scales.shape)}")
    rows, cols = scales.shape[-2], scales.shape[-1]
    _require(rows % _SCALE_ROW_GROUP == 0, "scales",
             f"rows ({rows}) must be a multiple of {_SCALE_ROW_GROUP}")
    _require(cols % _SCALE_COL_RUN == 0, "scales",
             f"columns ({cols}) must be a multiple of {_SCALE_COL_RUN} (K a multiple of 256)")
    return rows, cols


def cdna4_scale_order(scales: torch.Tensor) -> torch.Tensor:
    """E8M0 scales ``[..., N, K/32]`` -> the same shape, bytes in CDNA4 preshuffled order.

    Row ``n = 32*g + 16*a + r`` and column ``c = 8*j + 4*b + q`` move to position
    ``(((j*4 + q)*16 + r)*2 + b)*2 + a`` of group ``g``'s run of ``32 * K/32`` bytes.
    """
    rows, cols = _check_scale_grid(scales)
    raw = _as_bytes(scales).reshape(-1, rows // 32, 2, 16, cols // 8, 2, 4)  # g a r j b q
    ordered = raw.permute(0, 1, 4, 6, 3, 5, 2)  # g j q r b a
    return ordered.reshape(scales.shape).view(scales.dtype)


def cdna4_scale_order_inverse(ordered: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`cdna4_scale_order`."""
    rows, cols = _check_scale_grid(ordered)
    raw = _as_bytes(ordered).reshape(-1, rows // 32, cols // 8, 4, 16, 2, 2)  # g j q r b a
    return raw.permute(0, 1, 6, 4, 2, 5, 3).reshape(ordered.shape).view(ordered.dtype)


# -- aiter-w4a8: the Triton a8w4 kernel's gfx950 operands -----------------------------------


def gfx950_a8w4_values(packed: torch.Tensor) -> torch.Tensor:
    """Packed MXFP4 values ``[E, N, K/2]`` -> ``[E, K/2, N]`` with K contiguous.

    The a8w4 kernel reads the weight as a column-major ``[K/2, N]`` matrix per expert
    (``w.stride(-2) == 1``; two E2M1 codes per byte, the even one in the low nibble,
    as in the checkpoint). On gfx950 there is no further value swizzle, so this is
    the checkpoint's bytes seen transposed.
    """
    _require(packed.dim() == 3 and packed.dtype == torch.uint8, "values",
             f"expected uint8 [E, N, K/2], got {packed.dtype} {list(packed.shape)}")
    return packed.contiguous().transpose(1, 2)


def gfx950_a8w4_values_inverse(values: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`gfx950_a8w4_values` (a contiguous ``[E, N, K/2]``)."""
    return values.transpose(1, 2).contiguous()


def gfx950_a8w4_scales(scales: torch.Tensor) -> torch.Tensor:
    """E8M0 scales ``[E, N, K/32]`` -> ``[E, K, N/32]`` (K contiguous) in CDNA4 order.

    What the a8w4 kernel reads with ``swizzle_mx_scale="CDNA4_SCALE"``: one column
    per group of 32 output rows, holding that group's scales for all of K.
    """
    _require(scales.dim() == 3 and scales.dtype == torch.uint8, "scales",
             f"expected uint8 [E, N, K/32], got {scales.dtype} {list(scales.shape)}")
    e, rows, cols = scales.shape
    return cdna4_scale_order(scales).reshape(e, rows // 32, cols * 32).transpose(1, 2)


def gfx950_a8w4_scales_inverse(swizzled: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`gfx950_a8w4_scales` (a contiguous ``[E, N, K/32]``)."""
    e, packed, groups = swizzled.shape
    grouped = swizzled.transpose(1, 2).reshape(e, groups * 32, packed // 32)
    return cdna4_scale_order_inverse(grouped)


# -- aiter-mxfp8: fused_moe's preshuffled weights ----------------------------------------------


def _gate_up_shape(t: torch.Tensor, block: int) -> tuple[int, int]:
    _require(t.dim() >= 2 and t.shape[1] % 2 == 0, "gate/up rows",
             f"expected [E, 2I, ...], got {list(t.shape)}")
    half = t.shape[1] // 2
    _require(block > 0 and half % block == 0, "gate/up rows",
             f"I ({half}) must be a multiple of the block ({block})")
    return half, block


def gate_up_halves_to_blocks(t: torch.Tensor, block: int) -> torch.Tensor:
    """GEMM1 rows ``[E, 2I, ...]`` as [all gates | all ups] -> alternating blocks of
    ``block`` gate rows and ``block`` up rows (``block=1``: gpt-oss's interleaving)."""
    half, block = _gate_up_shape(t, block)
    rest = t.shape[2:]
    raw = _as_bytes(t) if t.element_size() == 1 else t
    blocks = raw.reshape(t.shape[0], 2, half // block, block, *rest).transpose(1, 2)
    return blocks.reshape(t.shape).view(t.dtype)


def gate_up_blocks_to_halves(t: torch.Tensor, block: int) -> torch.Tensor:
    """Inverse of :func:`gate_up_halves_to_blocks`."""
    half, block = _gate_up_shape(t, block)
    rest = t.shape[2:]
    raw = _as_bytes(t) if t.element_size() == 1 else t
    halves = raw.reshape(t.shape[0], half // block, 2, block, *rest).transpose(1, 2)
    return halves.reshape(t.shape).view(t.dtype)


def _check_tiles(w: torch.Tensor) -> tuple[int, int, int]:
    _require(w.dim() == 3, "weights", f"expected [E, N, K], got {list(w.shape)}")
    e, n, k = w.shape
    _require(n % GATE_UP_BLOCK == 0, "weights", f"N ({n}) must be a multiple of {GATE_UP_BLOCK}")
    _require(k % _TILE_K_BYTES == 0, "weights",
             f"K ({k} bytes) must be a multiple of {_TILE_K_BYTES}")
    return e, n, k


def preshuffle_weight_tiles(w: torch.Tensor) -> torch.Tensor:
    """One-byte weights ``[E, N, K]`` -> the same shape in 16-row x 64-byte tiles.

    Tile (row block, K block) is stored as its 4 K-lanes in turn, each lane holding
    the tile's 16 rows of 16 consecutive bytes.
    """
    e, n, k = _check_tiles(w)
    raw = _as_bytes(w).reshape(e, n // 16, 16, k // 64, _K_LANES, _LANE_BYTES)
    return raw.permute(0, 1, 3, 4, 2, 5).reshape(w.shape).view(w.dtype)


def preshuffle_weight_tiles_inverse(tiled: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`preshuffle_weight_tiles`."""
    e, n, k = _check_tiles(tiled)
    raw = _as_bytes(tiled).reshape(e, n // 16, k // 64, _K_LANES, 16, _LANE_BYTES)
    return raw.permute(0, 1, 4, 2, 3, 5).reshape(tiled.shape).view(tiled.dtype)


# -- expert parallelism ---------------------------------------------------------------------------


def _check_expert_map(expert_map: Sequence[int]) -> list[int]:
    values = [int(v) for v in expert_map]
    local = sorted(v for v in values if v >= 0)
    _require(bool(local) and local == list(range(len(local))) and min(values) >= -1,
             "expert_map", "expected -1 or the local indices 0..n-1, each once")
    return values


def expert_mask(expert_map: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """aiter's expert mask: int32 ``[E_global + 1]``, 1 where the global expert is local,
    0 elsewhere, and a trailing 0 (the slot aiter routes non-local tokens to)."""
    values = _check_expert_map(expert_map)
    flags = [1 if v >= 0 else 0 for v in values] + [0]
    return torch.tensor(flags, dtype=torch.int32, device=device)


def local_experts_in_global_order(expert_map: Sequence[int]) -> list[int]:
    """Local expert indices sorted by their global id.

    aiter numbers the local experts by counting the mask's ones in global order, so
    the rank's weights must be stacked in that order; ``expert_map`` may number them
    otherwise (any -1-or-permutation map is valid in mxmoe).
    """
    values = _check_expert_map(expert_map)
    return [v for v in values if v >= 0]
