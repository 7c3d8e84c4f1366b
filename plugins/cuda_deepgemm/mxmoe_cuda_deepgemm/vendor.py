"""The two things this backend takes from ``deep_gemm``, imported lazily.

``m_grouped_fp8_fp4_gemm_nt_contiguous((a, sfa), (b, sfb), d, grouped_layout,
recipe_a=(1, 128), recipe_b=(1, 32))`` computes, for every row ``r`` of the
contiguous grouped layout, ``d[r] = a[r] @ b[grouped_layout[r]].T`` in BF16, where:

* ``a`` is float8_e4m3fn ``[M_sum, K]``, K-major, with one scale per row per 128;
* ``b`` is int8 ``[G, N, K/2]`` packed FP4 (low nibble first), K-major, one scale per
  row per 32 (the MX block);
* both scale tensors are float32 (SM100 packs them itself, by truncation) or packed
  UE8M0 int32, MN-major and TMA-aligned (see :mod:`.layouts`);
* ``grouped_layout`` is int32 ``[M_sum]``: every aligned block of rows belongs to one
  expert, rows of an expert's segment come first and padding rows are -1. DeepGEMM
  picks a block's expert from its first row and does not promise anything about the
  output rows of padding.

``get_mk_alignment_for_contiguous_layout()`` is the row alignment of each segment (an
int, 128 unless changed with ``set_mk_alignment_for_contiguous_layout``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

from .layouts import ACTIVATION_GROUP, WEIGHT_GROUP

__all__ = ["GROUPED_GEMM", "MODULE", "REQUIRED_FUNCTIONS", "alignment", "deep_gemm",
           "grouped_gemm"]

MODULE = "deep_gemm"
GROUPED_GEMM = "m_grouped_fp8_fp4_gemm_nt_contiguous"
ALIGNMENT = "get_mk_alignment_for_contiguous_layout"
REQUIRED_FUNCTIONS = (GROUPED_GEMM, ALIGNMENT)


def deep_gemm() -> ModuleType:
    """The ``deep_gemm`` module (imported on first use)."""
    return importlib.import_module(MODULE)


def alignment() -> int:
    """DeepGEMM's current M alignment of the contiguous layout, validated."""
    value = getattr(deep_gemm(), ALIGNMENT)()
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise RuntimeError(f"deep_gemm.{ALIGNMENT}() returned {value!r}, "
                           "expected a positive int")
    return value


def grouped_gemm(a: torch.Tensor, a_scales: torch.Tensor, b: torch.Tensor,
                 b_scales: torch.Tensor, out: torch.Tensor, grouped_layout: torch.Tensor) -> None:
    """``out = a @ b[expert].T`` row by row (FP8 x packed FP4 -> BF16) through DeepGEMM."""
    getattr(deep_gemm(), GROUPED_GEMM)(
        (a, a_scales), (b, b_scales), out, grouped_layout,
        recipe_a=(1, ACTIVATION_GROUP), recipe_b=(1, WEIGHT_GROUP),
    )
