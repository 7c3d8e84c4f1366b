"""``convert_weights``: checkpoint-layout MXFP4 experts -> DeepGEMM's operands, once.

The packed FP4 bytes are already DeepGEMM's B operand (``[E, N, K/2]``, low nibble
first, K-major); they only change dtype to int8. The E8M0 scale bytes are UE8M0
bytes, so the weight scales are packed without any arithmetic (:func:`pack_ue8m0`);
handing DeepGEMM packed int32 scales also spares it a layout transform on every call.
w13 rows stay as the checkpoint orders them (interleaved gate/up for SWIGLUOAI): the
activation glue reads either order, so no row shuffle is needed. Biases stay with the
glue (DeepGEMM's grouped GEMM has none), as float32.
"""

from __future__ import annotations

import dataclasses

import torch

from mxmoe import ExpertWeights, MoEConfig

from .glue import GlueName, glue_name_for
from .layouts import ScaleFormat, pack_ue8m0, scale_format_from_env

__all__ = ["DeepGEMMExperts", "convert_experts"]


@dataclasses.dataclass(frozen=True)
class DeepGEMMExperts:
    """One layer's local experts in DeepGEMM's layout, plus how ``apply`` runs them."""

    w13: torch.Tensor  # int8 [E, 2I, H/2]
    w13_scale: torch.Tensor  # int32 packed UE8M0 [E, 2I, ceil(H/128)], MN-major
    w2: torch.Tensor  # int8 [E, H, I/2]
    w2_scale: torch.Tensor  # int32 packed UE8M0 [E, H, ceil(I/128)], MN-major
    w13_bias: torch.Tensor | None  # float32 [E, 2I]
    w2_bias: torch.Tensor | None  # float32 [E, H]
    scale_format: ScaleFormat  # of the activation scales the glue produces
    glue: GlueName  # which glue implementation runs on this device


def _fp4_operand(packed: torch.Tensor) -> torch.Tensor:
    return packed.contiguous().view(torch.int8)


def _bias(bias: torch.Tensor | None) -> torch.Tensor | None:
    return None if bias is None else bias.to(torch.float32).contiguous()


def convert_experts(config: MoEConfig, weights: ExpertWeights,
                    device: torch.device) -> DeepGEMMExperts:
    """DeepGEMM operands for ``weights`` (MXFP4, already padded, on ``device``)."""
    if weights.w13.dtype != torch.uint8 or weights.w2.dtype != torch.uint8:
        raise TypeError(f"weights: expected packed MXFP4 (torch.uint8) w13/w2, got "
                        f"{weights.w13.dtype} and {weights.w2.dtype}")
    return DeepGEMMExperts(
        w13=_fp4_operand(weights.w13),
        w13_scale=pack_ue8m0(weights.w13_scale),
        w2=_fp4_operand(weights.w2),
        w2_scale=pack_ue8m0(weights.w2_scale),
        w13_bias=_bias(weights.w13_bias),
        w2_bias=_bias(weights.w2_bias),
        scale_format=scale_format_from_env(),
        glue=glue_name_for(device),
    )
