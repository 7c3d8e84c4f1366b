"""The ``aiter-mxfp8`` backend: MXFP8 weights x MXFP8 activations on gfx950.

It calls ``aiter.fused_moe`` with per-1x32 quantization, which aiter serves with its
FlyDSL two-stage grouped GEMM: aiter quantizes the activations to MXFP8 itself (E4M3
with an E8M0 scale per 32, rounded up: RCEIL, ``mxfp8_dynamic_rceil``), runs GEMM1
with its clamped SwiGLU fused (aiter's ``Swiglu``:
``min(g, L) * sigmoid(1.702 * min(g, L)) * (clamp(u, -L, L) + 1)``, the gate/up rows
in 16-row blocks, ``GateMode.INTERLEAVE``), re-quantizes, runs GEMM2 and
sums each token's experts weighted by its float32 router weights. Routing is the
core's (any method); token ids are int32 global expert ids.

Expert parallelism works through aiter's expert mask (int32 ``[E_global + 1]``, 1 for
this rank's experts, a trailing 0 slot), built once from the config's expert map; the
local experts are stacked in ascending global id, the order aiter numbers them in.
The weights are preshuffled into aiter's layout and tagged ``is_shuffled`` (without
the tag aiter picks a kernel that reads them in the wrong order). Hidden and
intermediate sizes are padded to multiples of 256.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from mxmoe import (
    Activation,
    ActivationFormat,
    ExpertWeights,
    MoEConfig,
    Verdict,
    WeightFormat,
    hookimpl,
)

from . import device as _device
from . import layouts, vendor
from .probe import PADDING, PRIORITY, decide, epilogue_gap, scheme_gap

__all__ = ["MXFP8Weights", "MXMOE_API_VERSION", "PADDING", "PRIORITY"]

MXMOE_API_VERSION = 1

#: aiter's Swiglu has these constants built in.
SWIGLU_ALPHA = 1.702
SWIGLU_BETA = 1.0
_SWIGLU = (Activation.SWIGLUOAI, Activation.SWIGLUOAI_UNINTERLEAVE)


def _scale_rule_gap(config: MoEConfig) -> str | None:
    """Why OCP-floor MXFP8 activations are not what aiter computes, or None."""
    if (config.weight_format, config.activation_format) != (
            WeightFormat.MXFP8, ActivationFormat.MXFP8_DYNAMIC):
        return None
    return ("aiter's quantizer rounds MXFP8 activation scales up (RCEIL), found "
            f"{ActivationFormat.MXFP8_DYNAMIC} (OCP floor scales): use activation_format "
            f"{ActivationFormat.MXFP8_DYNAMIC_RCEIL}")


def _feature_gap(config: MoEConfig) -> str | None:
    """Why aiter's MXFP8 path cannot compute ``config``'s layer, or None."""
    scheme = _scale_rule_gap(config) or scheme_gap(
        config, WeightFormat.MXFP8, ActivationFormat.MXFP8_DYNAMIC_RCEIL,
        "MXFP8 weights with dynamic MXFP8 activations, RCEIL scales")
    if scheme:
        return scheme
    if config.activation not in _SWIGLU:
        return ("supports aiter's clamped SwiGLU only (swigluoai or swigluoai_uninterleave), "
                f"found {config.activation}")
    if not math.isclose(config.swiglu_alpha, SWIGLU_ALPHA, rel_tol=0, abs_tol=1e-6):
        return f"aiter's Swiglu fixes swiglu_alpha at {SWIGLU_ALPHA}, found {config.swiglu_alpha}"
    beta = config.activation_beta
    if beta != SWIGLU_BETA:
        return f"aiter's Swiglu fixes swiglu_beta at {SWIGLU_BETA}, found {beta}"
    if config.has_bias:
        return "does not support expert biases (aiter's MXFP8 path takes none)"
    return epilogue_gap(config)


@hookimpl
def supports_config(config: MoEConfig, device: torch.device) -> Verdict:
    """Device, then aiter, FlyDSL and aiter's version (no imports), then the layer's
    features, then aiter's import and kernel build (the expensive step, last)."""
    return decide(
        (lambda: _device.gfx950_missing(device),
         vendor.aiter_missing,
         vendor.flydsl_missing,
         vendor.mxfp8_support_missing,
         lambda: _feature_gap(config),
         vendor.MXFP8.failure),
        Verdict.yes(PRIORITY, hidden_multiple=PADDING, intermediate_multiple=PADDING),
    )


@dataclasses.dataclass(frozen=True)
class MXFP8Weights:
    """The local experts preshuffled for ``aiter.fused_moe`` (padded sizes H, I)."""

    w13: torch.Tensor  # float8_e4m3fn [E, 2I, H]: gate/up in 16-row blocks, tiled; is_shuffled
    w2: torch.Tensor  # float8_e4m3fn [E, H, I]: tiled; is_shuffled
    w13_scale: torch.Tensor  # float8_e8m0fnu [E*2I, H/32]: 16-row blocks, CDNA4 order
    w2_scale: torch.Tensor  # float8_e8m0fnu [E*H, I/32]: CDNA4 order
    expert_mask: torch.Tensor | None  # int32 [E_global + 1]; None without expert parallelism


def _in_global_order(config: MoEConfig, weights: ExpertWeights) -> ExpertWeights:
    """The local experts restacked in ascending global id (a no-op when already so)."""
    if config.expert_map is None:
        return weights
    order = layouts.local_experts_in_global_order(config.expert_map)
    if order == sorted(order):
        return weights
    index = torch.tensor(order, device=weights.w13.device)
    return dataclasses.replace(weights, **{
        name: t.index_select(0, index) for name, t in weights.tensors().items()
        if t is not None and name in ("w13", "w13_scale", "w2", "w2_scale")})


def _shuffled(w: torch.Tensor) -> torch.Tensor:
    tiled = layouts.preshuffle_weight_tiles(w)
    tiled.is_shuffled = True  # aiter.fused_moe reads this attribute to pick its kernel
    return tiled


def _e8m0_rows(scales: torch.Tensor) -> torch.Tensor:
    """[E, N, K/32] scales in CDNA4 order, as the [E*N, K/32] E8M0 matrix aiter takes."""
    ordered = layouts.cdna4_scale_order(scales)
    return ordered.reshape(-1, scales.shape[-1]).view(torch.float8_e8m0fnu)


@hookimpl
def convert_weights(config: MoEConfig, weights: ExpertWeights,
                    device: torch.device) -> MXFP8Weights:
    """The local experts in global order, preshuffled for ``aiter.fused_moe``, once."""
    w = _in_global_order(config, weights)
    w13, w13_scale = w.w13, w.w13_scale
    if config.activation.interleaved:  # gpt-oss rows (gate, up, gate, ...) -> halves
        w13, w13_scale = (layouts.gate_up_blocks_to_halves(t, 1) for t in (w13, w13_scale))
    block = layouts.GATE_UP_BLOCK
    return MXFP8Weights(
        w13=_shuffled(layouts.gate_up_halves_to_blocks(w13, block)),
        w2=_shuffled(w.w2),
        w13_scale=_e8m0_rows(layouts.gate_up_halves_to_blocks(w13_scale, block)),
        w2_scale=_e8m0_rows(w.w2_scale),
        expert_mask=None if config.expert_map is None
        else layouts.expert_mask(config.expert_map, device),
    )


@hookimpl
def apply(config: MoEConfig, weights: MXFP8Weights, hidden_states: torch.Tensor,
          topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
    """One ``aiter.fused_moe`` call on the core's routing (see the module docstring)."""
    aiter = vendor.MXFP8.get()
    out = aiter.fused_moe(
        hidden_states, weights.w13, weights.w2,
        topk_weights.to(torch.float32), topk_ids.to(torch.int32),
        expert_mask=weights.expert_mask,
        activation=aiter.swiglu,
        quant_type=aiter.per_1x32,
        doweight_stage1=False,
        w1_scale=weights.w13_scale,
        w2_scale=weights.w2_scale,
        a1_scale=None,
        a2_scale=None,
        dtype=config.dtype,
        swiglu_limit=config.swiglu_limit,
        gate_mode=aiter.gate_interleave,
    )
    return out.to(config.dtype)
