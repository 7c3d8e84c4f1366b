"""The ``aiter-w4a8`` backend: MXFP4 weights x static per-tensor FP8 activations on gfx950.

It runs aiter's Triton kernels, monolithically: aiter routes the router logits
itself (top-k, then softmax over the k: Renormalize, which RenormalizeNaive equals),
the input is cast to FP8 with the checkpoint's static scale, and the a8w4 grouped
GEMM (``tl.dot_scaled``, FP8 x E2M1 with E8M0 weight scales) runs twice: GEMM1
gathers each token's rows, adds the bias, applies SwiGLU-OAI and re-quantizes to
FP8 with GEMM2's static input scale; GEMM2 adds its bias, scales each row by its
router weight and sums each token's k rows. Both GEMMs get the unpadded N and K, so
aiter skips the padding; the padded output columns are then left unwritten (the
layer slices them off).

Weights are padded to multiples of 256 in hidden and intermediate size (the CDNA4
scale swizzle covers 256 elements of K per run) and converted once by
:mod:`mxmoe_rocm_aiter.layouts`.
"""

from __future__ import annotations

import dataclasses

import torch

from mxmoe import (
    Activation,
    ActivationFormat,
    ExpertWeights,
    MoEConfig,
    RoutingMethod,
    Verdict,
    WeightFormat,
    hookimpl,
)
from mxmoe.weights import layer_input_scale

from . import device as _device
from . import layouts, vendor
from .probe import PADDING, PRIORITY, decide, epilogue_gap, scheme_gap

__all__ = ["MXMOE_API_VERSION", "PADDING", "PRIORITY", "W4A8Weights"]

MXMOE_API_VERSION = 1

_SCALE_LAYOUT = "CDNA4_SCALE"  # moe_gemm_a8w4's name for the gfx950 scale swizzle
_ROUTINGS = (RoutingMethod.RENORMALIZE, RoutingMethod.RENORMALIZE_NAIVE)


def _feature_gap(config: MoEConfig) -> str | None:
    """Why aiter's W4A8 path cannot compute ``config``'s layer, or None."""
    scheme = scheme_gap(config, WeightFormat.MXFP4, ActivationFormat.FP8_STATIC,
                        "MXFP4 weights with static FP8 activations")
    if scheme:
        return scheme
    if config.activation is not Activation.SWIGLUOAI:
        return ("supports the swigluoai activation only (fused into aiter's first GEMM), "
                f"found {config.activation}")
    if config.routing not in _ROUTINGS:
        return ("routes inside aiter with renormalize or renormalize_naive only, "
                f"found {config.routing}")
    if config.expert_map is not None:
        return "does not support expert parallelism (an expert_map)"
    if config.dp_size != 1:
        return f"does not support data-parallel layouts, found dp_size={config.dp_size}"
    if config.dtype is not torch.bfloat16:
        return f"takes bfloat16 activations only, found {config.dtype}"
    return epilogue_gap(config)


@hookimpl
def supports_config(config: MoEConfig, device: torch.device) -> Verdict:
    """Device, then aiter's installation, then the layer's features, then aiter's import
    and kernel build (the expensive step, last)."""
    return decide(
        (lambda: _device.gfx950_missing(device),
         vendor.aiter_missing,
         lambda: _feature_gap(config),
         vendor.W4A8.failure),
        Verdict.yes(PRIORITY, hidden_multiple=PADDING, intermediate_multiple=PADDING,
                    routes_internally=True),
    )


@dataclasses.dataclass(frozen=True)
class W4A8Weights:
    """The local experts in the a8w4 kernel's gfx950 layout (padded sizes H, I)."""

    w13: torch.Tensor  # uint8 [E, H/2, 2I], K contiguous; rows gate/up interleaved
    w13_scale: torch.Tensor  # uint8 [E, H, 2I/32], CDNA4 order
    w2: torch.Tensor  # uint8 [E, I/2, H], K contiguous
    w2_scale: torch.Tensor  # uint8 [E, I, H/32], CDNA4 order
    w13_bias: torch.Tensor | None  # float32 [E, 2I]
    w2_bias: torch.Tensor | None  # float32 [E, H]
    w13_input_scale: torch.Tensor  # float32 [1]: GEMM1's static FP8 input scale
    w2_input_scale: torch.Tensor  # float32 [1]: GEMM2's


def _float32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.to(torch.float32).contiguous()


def _static_scale(scale: torch.Tensor | None, name: str) -> torch.Tensor:
    if scale is None:
        raise ValueError(f"{name}: required for aiter-w4a8 (activation_format='fp8_static')")
    return layer_input_scale(scale).reshape(1)


@hookimpl
def convert_weights(config: MoEConfig, weights: ExpertWeights) -> W4A8Weights:
    """The padded checkpoint in the a8w4 kernel's gfx950 layout, once; the static input
    scales collapsed to one each (ValueError when the checkpoint lacks them)."""
    return W4A8Weights(
        w13=layouts.gfx950_a8w4_values(weights.w13),
        w13_scale=layouts.gfx950_a8w4_scales(weights.w13_scale),
        w2=layouts.gfx950_a8w4_values(weights.w2),
        w2_scale=layouts.gfx950_a8w4_scales(weights.w2_scale),
        w13_bias=_float32(weights.w13_bias),
        w2_bias=_float32(weights.w2_bias),
        w13_input_scale=_static_scale(weights.w13_input_scale, "w13_input_scale"),
        w2_input_scale=_static_scale(weights.w2_input_scale, "w2_input_scale"),
    )


@hookimpl
def apply(config: MoEConfig, weights: W4A8Weights, hidden_states: torch.Tensor,
          router_logits: torch.Tensor) -> torch.Tensor:
    """aiter's routing, then its two a8w4 grouped GEMMs (see the module docstring)."""
    aiter = vendor.W4A8.get()
    hidden, inter = config.hidden_size, config.intermediate_size
    routing_data, gather, scatter = aiter.routing(router_logits, config.top_k, sm_first=False)
    x = aiter.downcast_to_static_fp8(hidden_states, weights.w13_input_scale)
    activated = aiter.moe_gemm_a8w4(
        x, weights.w13, None, weights.w13_scale,
        x_static_scale=weights.w13_input_scale,
        quant_static_scale=weights.w2_input_scale,
        bias=weights.w13_bias,
        routing_data=routing_data,
        gather_indx=gather,
        swizzle_mx_scale=_SCALE_LAYOUT,
        out_dtype=torch.float8_e4m3fn,
        apply_swiglu=True,
        alpha=config.swiglu_alpha,
        limit=config.swiglu_limit,
        unpadded_N=2 * inter,
        unpadded_K=hidden,
    )
    return aiter.moe_gemm_a8w4(
        activated, weights.w2, None, weights.w2_scale,
        x_static_scale=weights.w2_input_scale,
        bias=weights.w2_bias,
        routing_data=routing_data,
        scatter_indx=scatter,
        gammas=routing_data.gate_scal,
        swizzle_mx_scale=_SCALE_LAYOUT,
        out_dtype=config.dtype,
        unpadded_N=hidden,
        unpadded_K=inter,
    )
