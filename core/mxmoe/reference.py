"""The definition of correct: the whole expert layer in float64 with the plainest code.

Every backend is tested against :func:`reference_moe` (or :func:`reference_experts`
when routing is given) by relative error ``||out - ref|| / ||ref||``. It reads the
unpadded checkpoint layout (:mod:`mxmoe.weights`), dequantizes each expert exactly,
and applies the config's activation quantization as quantize-dequantize (the scheme's
defined numerics), so the only differences a correct backend shows are its own
rounding of intermediate values.
"""

from __future__ import annotations

import torch

from .activations import apply_activation
from .config import MoEConfig
from .formats import dequantize_mx, fake_quantize_activation
from .routing import route
from .weights import ExpertWeights, layer_input_scale

__all__ = ["reference_experts", "reference_moe", "relative_error", "tolerance"]


def reference_experts(
    config: MoEConfig,
    weights: ExpertWeights,
    hidden_states: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
) -> torch.Tensor:
    """Experts of one layer for given routing. Returns float64 [M, H].

    ``topk_ids`` are global expert ids; with ``config.expert_map`` only local experts
    contribute (the rank's partial sum).
    """
    fmt = config.weight_format.mx_name
    act_fmt = config.activation_format
    x_all = hidden_states.to(config.dtype)
    out = torch.zeros(hidden_states.shape[0], config.hidden_size, dtype=torch.float64,
                      device=hidden_states.device)
    expert_map = config.expert_map
    for global_id in range(config.num_experts):
        local = global_id if expert_map is None else expert_map[global_id]
        if local < 0:
            continue
        tokens, slots = torch.nonzero(topk_ids == global_id, as_tuple=True)
        if tokens.numel() == 0:
            continue
        gate_w = topk_weights[tokens, slots].to(torch.float64).unsqueeze(1)
        x = x_all[tokens]
        if config.apply_router_weight_on_input:
            x = (x.to(torch.float64) * gate_w).to(config.dtype)
        x = fake_quantize_activation(x, act_fmt, layer_input_scale(weights.w13_input_scale))
        w13 = dequantize_mx(weights.w13[local], weights.w13_scale[local], fmt, dtype=torch.float64)
        h = x.to(torch.float64) @ w13.T
        if weights.w13_bias is not None:
            h = h + weights.w13_bias[local].to(torch.float64)
        a = apply_activation(h, config)
        a = fake_quantize_activation(a, act_fmt, layer_input_scale(weights.w2_input_scale))
        w2 = dequantize_mx(weights.w2[local], weights.w2_scale[local], fmt, dtype=torch.float64)
        y = a.to(torch.float64) @ w2.T
        if weights.w2_bias is not None:
            y = y + weights.w2_bias[local].to(torch.float64)
        if not config.apply_router_weight_on_input:
            y = y * gate_w
        out.index_add_(0, tokens, y)
    return out


def reference_moe(
    config: MoEConfig,
    weights: ExpertWeights,
    hidden_states: torch.Tensor,
    router_logits: torch.Tensor,
    correction_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Route with :func:`mxmoe.routing.route`, then :func:`reference_experts`."""
    topk_weights, topk_ids = route(router_logits, config, correction_bias)
    return reference_experts(config, weights, hidden_states, topk_weights, topk_ids)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref|| / ||ref||`` in float64 (NaN anywhere in ``out`` gives NaN)."""
    out64, ref64 = out.to(torch.float64), ref.to(torch.float64)
    denom = torch.linalg.vector_norm(ref64)
    return float(torch.linalg.vector_norm(out64 - ref64) / denom.clamp_min(1e-300))


def tolerance(config: MoEConfig) -> float:
    """The relative error a correct backend stays under, set by the arithmetic.

    float32 activations: accumulation-order rounding only (1e-4). fp16 / bf16: the
    GEMM1 output and the result are rounded to 11 / 8 significant bits (per-element
    2**-11 / 2**-8; a few 1e-3 overall), so 5e-3 / 1e-2. FP8 activations: the
    intermediate activation is re-quantized to E4M3 (3 mantissa bits) from a value a
    backend has rounded to bf16 / fp16, so a percent or two of elements land one E4M3
    step away from the reference's choice (an eighth of their size): 3e-2, for every
    FP8 format (per-tensor, 1x128 with float32 or power-of-two scales, MXFP8 with floor
    or RCEIL scales). That error is noisy per token; the conformance kit measures it
    over at least 64 tokens' worth of expert contributions.
    """
    if config.activation_format.quantized:
        return 3e-2
    return {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 1e-2}[config.dtype]
