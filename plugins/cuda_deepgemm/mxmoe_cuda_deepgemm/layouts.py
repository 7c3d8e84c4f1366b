"""DeepGEMM's tensor layouts for the SM100 FP8 x FP4 grouped GEMM, built with PyTorch.

What ``deep_gemm.m_grouped_fp8_fp4_gemm_nt_contiguous`` reads (DeepGEMM sources read at
commit 0274ad7b, ``__version__ = '2.8.0'``: ``csrc/apis/gemm.hpp``, ``csrc/apis/layout.hpp``,
``csrc/utils/layout.hpp``, ``csrc/jit_kernels/impls/smxx_layout.hpp``):

* packed FP4 operands travel as ``torch.int8`` (DeepGEMM's ``kPackedFP4``), two E2M1
  codes per byte, element ``2i`` in the low nibble: the checkpoint's bytes, viewed;
* scale factors on SM100 are UE8M0 bytes (a biased power-of-two exponent, the same
  encoding as OCP E8M0), four consecutive K-groups packed into one int32 (group ``4j``
  in the lowest byte), stored **MN-major** -- shape ``[..., MN, ceil(groups / 4)]`` with
  stride 1 along MN -- and **TMA-aligned**: the stride between int32 columns is MN
  rounded up to 16 bytes (4 elements);
* float32 scale factors are accepted too, but DeepGEMM then packs them itself by
  keeping only their exponent bits (``bits >> 23``): exact for powers of two, a silent
  truncation otherwise. That is why :class:`ScaleFormat` has three members and the
  SM100 path only ever uses the two power-of-two ones.
"""

from __future__ import annotations

import enum
import os

import torch

__all__ = [
    "ACTIVATION_GROUP",
    "GROUPS_PER_INT32",
    "SCALE_FORMAT_ENV",
    "ScaleFormat",
    "WEIGHT_GROUP",
    "empty_activation_scales",
    "pack_ue8m0",
    "packed_columns",
    "pow2_scales_to_ue8m0",
    "scale_format_from_env",
    "tma_aligned_size",
]

ACTIVATION_GROUP = 128  # recipe_a = (1, 128): one scale per token per 128 channels
WEIGHT_GROUP = 32  # recipe_b = (1, 32): the MX block
GROUPS_PER_INT32 = 4
TMA_ALIGNMENT_BYTES = 16

SCALE_FORMAT_ENV = "MXMOE_DEEPGEMM_SCALE_FORMAT"


class ScaleFormat(str, enum.Enum):
    """How activation scales are handed to DeepGEMM.

    ``FLOAT32``: ``amax / 448``, row-major float32 ``[rows, groups]`` (Hopper's format;
    on SM100 DeepGEMM would truncate it, so this backend never selects it).
    ``FLOAT32_POW2``: the same rounded up to a power of two; DeepGEMM packs it into
    UE8M0 itself on every call. ``UE8M0``: those powers of two already packed four per
    int32, MN-major and TMA-aligned, which DeepGEMM only checks (the default).
    """

    FLOAT32 = "float32"
    FLOAT32_POW2 = "float32_pow2"
    UE8M0 = "ue8m0"

    @property
    def power_of_two(self) -> bool:
        return self is not ScaleFormat.FLOAT32


def scale_format_from_env() -> ScaleFormat:
    """The SM100 scale format: ``MXMOE_DEEPGEMM_SCALE_FORMAT`` ("ue8m0" by default, or
    "float32_pow2"); ValueError naming the variable for anything else."""
    raw = os.environ.get(SCALE_FORMAT_ENV, ScaleFormat.UE8M0.value).strip().lower()
    allowed = (ScaleFormat.UE8M0, ScaleFormat.FLOAT32_POW2)
    for fmt in allowed:
        if raw == fmt.value:
            return fmt
    raise ValueError(
        f"{SCALE_FORMAT_ENV}: expected one of {', '.join(repr(f.value) for f in allowed)} "
        f"(SM100 reads power-of-two scales only), got {raw!r}"
    )


def tma_aligned_size(n: int, element_size: int) -> int:
    """``n`` rounded up so that ``n * element_size`` is a multiple of 16 bytes."""
    per_16_bytes = TMA_ALIGNMENT_BYTES // element_size
    return -(-n // per_16_bytes) * per_16_bytes


def packed_columns(num_groups: int) -> int:
    """int32 columns holding ``num_groups`` UE8M0 bytes."""
    return -(-num_groups // GROUPS_PER_INT32)


def empty_activation_scales(rows: int, num_groups: int, fmt: ScaleFormat,
                            device: torch.device) -> torch.Tensor:
    """Uninitialised activation scales for ``rows`` tokens of ``num_groups`` groups each,
    in the layout ``fmt`` prescribes (see :class:`ScaleFormat`)."""
    if fmt is ScaleFormat.UE8M0:
        cols = packed_columns(num_groups)
        aligned = tma_aligned_size(rows, 4)
        return torch.empty_strided((rows, cols), (1, aligned), dtype=torch.int32, device=device)
    return torch.empty((rows, num_groups), dtype=torch.float32, device=device)


def pow2_scales_to_ue8m0(scales: torch.Tensor) -> torch.Tensor:
    """The UE8M0 byte (biased exponent) of each positive power-of-two float32 scale."""
    if scales.dtype != torch.float32:
        raise TypeError(f"scales: expected float32 powers of two, got {scales.dtype}")
    return ((scales.view(torch.int32) >> 23) & 0xFF).to(torch.uint8)


def pack_ue8m0(scale_bytes: torch.Tensor) -> torch.Tensor:
    """UE8M0 bytes ``[..., MN, groups]`` -> DeepGEMM's packed scales.

    Returns int32 ``[..., MN, ceil(groups / 4)]``, group ``4j + b`` in byte ``b`` of
    column ``j`` (missing groups are 0), MN-major with a TMA-aligned column stride;
    a leading batch dimension (experts) is dense: stride ``cols * aligned(MN)``.
    """
    if scale_bytes.dtype != torch.uint8:
        raise TypeError(f"scale_bytes: expected torch.uint8 UE8M0 bytes, got {scale_bytes.dtype}")
    if scale_bytes.dim() not in (2, 3):
        raise ValueError(f"scale_bytes: expected [MN, groups] or [batch, MN, groups], "
                         f"got shape {list(scale_bytes.shape)}")
    *batch, mn, groups = scale_bytes.shape
    cols = packed_columns(groups)
    padded = torch.zeros((*batch, mn, cols * GROUPS_PER_INT32), dtype=torch.int64,
                         device=scale_bytes.device)
    padded[..., :groups] = scale_bytes.to(torch.int64)
    quads = padded.view(*batch, mn, cols, GROUPS_PER_INT32)
    shifts = torch.arange(0, 32, 8, device=scale_bytes.device, dtype=torch.int64)
    words = (quads << shifts).sum(dim=-1)  # < 2**32; int32 keeps the low 32 bits
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    aligned = tma_aligned_size(mn, 4)
    strides = (1, aligned) if not batch else (cols * aligned, 1, aligned)
    out = torch.empty_strided((*batch, mn, cols), strides, dtype=torch.int32,
                              device=scale_bytes.device)
    out.copy_(words)
    return out
