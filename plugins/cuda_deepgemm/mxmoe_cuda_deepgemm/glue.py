"""The glue around DeepGEMM's two grouped GEMMs, and which implementation runs it.

Four steps are ours (DeepGEMM only multiplies):

1. ``plan_permutation`` -- where each (token, slot) goes in the contiguous grouped
   layout: each local expert's rows form a segment starting at a multiple of DeepGEMM's
   M alignment; ``grouped_layout`` holds the expert id of every row and -1 on padding
   rows; slots routed to experts of other ranks get no row;
2. ``quantize_permute`` -- FP8 E4M3 quantization of the input per token and 128
   channels, written straight into the permuted rows (each token once per slot);
3. ``activate_quantize`` -- FC1's bias, the gated activation and the FP8
   re-quantization of FC2's input, fused;
4. ``unpermute_reduce`` -- FC2's bias and the router-weighted sum over each token's
   slots, back in token order.

Two modules implement them with the same signatures: :mod:`.glue_torch` (plain
PyTorch, any device) and :mod:`.glue_triton` (Triton kernels, for NVIDIA GPUs).
Neither synchronises with the host: expert counts stay on the device, and the
workspace has a worst-case row count computed from M, top_k and the alignment
(:func:`workspace_rows`) rather than from the counts.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
from types import ModuleType
from typing import Literal

import torch

__all__ = ["GLUE_ENV", "GlueName", "RoutingPlan", "glue_name_for", "load_glue",
           "workspace_rows"]

GlueName = Literal["torch", "triton"]
GLUE_ENV = "MXMOE_DEEPGEMM_GLUE"
_MODULES: dict[str, str] = {"torch": ".glue_torch", "triton": ".glue_triton"}


@dataclasses.dataclass(frozen=True)
class RoutingPlan:
    """Where every (token, slot) lives in the grouped layout; all int32, on the device.

    ``slot_expert`` / ``slot_row`` are ``[M * top_k]`` (token-major): the local expert
    and the grouped-layout row of each slot, -1 for slots whose expert is on another
    rank. ``grouped_layout`` is ``[rows]``: the expert of each row, -1 on padding.
    ``expert_counts`` ``[E_local]`` counts the slots of each local expert.
    """

    slot_expert: torch.Tensor
    slot_row: torch.Tensor
    grouped_layout: torch.Tensor
    expert_counts: torch.Tensor
    top_k: int

    @property
    def rows(self) -> int:
        return self.grouped_layout.shape[0]


def workspace_rows(tokens: int, top_k: int, num_local_experts: int, alignment: int) -> int:
    """Rows that hold any routing of ``tokens`` x ``top_k`` slots, segments aligned.

    Each non-empty expert segment is its slot count rounded up to ``alignment``, so
    the total is at most ``slots + nonempty * (alignment - 1)`` with at most
    ``min(E_local, slots)`` non-empty experts; the total is a multiple of the
    alignment, so that bound rounded down to one still holds it.
    """
    if isinstance(alignment, bool) or not isinstance(alignment, int) or alignment <= 0:
        raise ValueError(f"alignment: expected a positive int, got {alignment!r}")
    slots = tokens * top_k
    bound = slots + min(num_local_experts, slots) * (alignment - 1)
    return bound // alignment * alignment


def glue_name_for(device: torch.device) -> GlueName:
    """The glue for ``device``: ``MXMOE_DEEPGEMM_GLUE`` ("torch" / "triton") if set,
    else Triton on CUDA devices where it is installed, else PyTorch."""
    forced = os.environ.get(GLUE_ENV, "").strip().lower()
    if forced:
        if forced not in _MODULES:
            raise ValueError(f"{GLUE_ENV}: expected 'torch' or 'triton', got {forced!r}")
        return forced  # type: ignore[return-value]
    if device.type == "cuda" and importlib.util.find_spec("triton") is not None:
        return "triton"
    return "torch"


def load_glue(name: GlueName) -> ModuleType:
    """The glue module called ``name`` (imported on first use: Triton only if asked)."""
    return importlib.import_module(_MODULES[name], __package__)
