"""``torch.ops.mxmoe_emulation.triton_moe``: the layer's kernels as one opaque custom op.

Registered with :func:`torch.library.custom_op` and a fake (meta) implementation, so
``torch.compile`` keeps it as one node of known output shape instead of tracing into
Triton's launcher, and CUDA-graph capture sees plain kernel launches. Imported only
after the probe has seen a working Triton (it imports the kernels).

No ``from __future__ import annotations`` here: ``custom_op`` reads the signature's
annotations to build the operator schema.
"""

from typing import Optional

import torch

from .launch import moe_forward, route_topk
from .layout import LayerMath, TritonWeights

__all__ = ["op_arguments", "run", "triton_moe", "triton_route"]


@torch.library.custom_op("mxmoe_emulation::triton_moe", mutates_args=())
def triton_moe(
    hidden_states: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    expert_map: Optional[torch.Tensor],
    w13: torch.Tensor,
    w13_scale: torch.Tensor,
    w2: torch.Tensor,
    w2_scale: torch.Tensor,
    w13_bias: Optional[torch.Tensor],
    w2_bias: Optional[torch.Tensor],
    weight_format: str,
    activation: str,
    alpha: float,
    beta: float,
    limit: Optional[float],
    weight_on_input: bool,
    w13_scale_bias: int,
    w2_scale_bias: int,
) -> torch.Tensor:
    """The experts of one layer (see :func:`mxmoe_emulation.triton_backend.launch.moe_forward`)."""
    math = LayerMath(weight_format, activation, alpha, beta, limit, weight_on_input)
    weights = TritonWeights(w13, w13_scale, w2, w2_scale, w13_bias, w2_bias, math,
                            w13_scale_bias, w2_scale_bias)
    return moe_forward(hidden_states, topk_weights, topk_ids, expert_map, weights)


@triton_moe.register_fake
def _triton_moe_fake(hidden_states, topk_weights, topk_ids, expert_map, w13, w13_scale, w2,
                     w2_scale, w13_bias, w2_bias, weight_format, activation, alpha, beta, limit,
                     weight_on_input, w13_scale_bias, w2_scale_bias):
    return torch.empty_like(hidden_states)


@torch.library.custom_op("mxmoe_emulation::triton_route", mutates_args=())
def triton_route(router_logits: torch.Tensor, method: str,
                 top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k routing (see :func:`mxmoe_emulation.triton_backend.launch.route_topk`)."""
    return route_topk(router_logits, method, top_k)


@triton_route.register_fake
def _triton_route_fake(router_logits, method, top_k):
    m = router_logits.shape[0]
    return (router_logits.new_empty((m, top_k), dtype=torch.float32),
            router_logits.new_empty((m, top_k), dtype=torch.int32))


def op_arguments(hidden_states: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                 expert_map: Optional[torch.Tensor], weights: TritonWeights) -> tuple:
    """The op's arguments for a converted layer's tensors and constants."""
    w, math = weights, weights.math
    return (hidden_states, topk_weights, topk_ids, expert_map, w.w13, w.w13_scale, w.w2,
            w.w2_scale, w.w13_bias, w.w2_bias, math.weight_format, math.activation, math.alpha,
            math.beta, math.limit, math.weight_on_input, w.w13_scale_bias, w.w2_scale_bias)


def run(hidden_states: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
        expert_map: Optional[torch.Tensor], weights: TritonWeights) -> torch.Tensor:
    """Call the op with a converted layer's tensors and constants."""
    return triton_moe(*op_arguments(hidden_states, topk_weights, topk_ids, expert_map, weights))
