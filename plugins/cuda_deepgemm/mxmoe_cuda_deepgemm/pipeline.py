"""One forward pass of the experts: glue, FC1, glue, FC2, glue.

::

    hidden [M, H] --quantize_permute--> FP8 [rows, H] --FC1--> BF16 [rows, 2I]
      --activate_quantize--> FP8 [rows, I] --FC2--> BF16 [rows, H] --unpermute_reduce--> [M, H]

``rows`` is :func:`.glue.workspace_rows` of M, top_k and DeepGEMM's alignment; every
buffer is sized by it (and the layer's H and I), none by the expert counts, so nothing
waits for the device. Each intermediate is released as soon as the next step has read
it, so the caching allocator reuses its memory for the next one.
"""

from __future__ import annotations

import torch

from mxmoe import MoEConfig

from . import vendor
from .glue import load_glue
from .weights import DeepGEMMExperts

__all__ = ["run_experts"]


def run_experts(config: MoEConfig, experts: DeepGEMMExperts, hidden_states: torch.Tensor,
                topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                expert_map: torch.Tensor | None) -> torch.Tensor:
    """The sum over each token's local experts of router weight x expert output."""
    tokens, hidden = hidden_states.shape
    if tokens == 0:
        return hidden_states.new_zeros((0, hidden))
    glue = load_glue(experts.glue)
    fmt = experts.scale_format
    local_experts, fc1_width = experts.w13.shape[0], experts.w13.shape[1]
    plan = glue.plan_permutation(topk_ids, expert_map, local_experts, vendor.alignment())
    on_input = config.apply_router_weight_on_input
    a, a_scales = glue.quantize_permute(hidden_states, plan, fmt,
                                        topk_weights if on_input else None)
    h = torch.empty((plan.rows, fc1_width), dtype=torch.bfloat16, device=hidden_states.device)
    vendor.grouped_gemm(a, a_scales, experts.w13, experts.w13_scale, h, plan.grouped_layout)
    del a, a_scales
    a, a_scales = glue.activate_quantize(h, plan, experts.w13_bias, config, fmt)
    del h
    y = torch.empty((plan.rows, hidden), dtype=torch.bfloat16, device=hidden_states.device)
    vendor.grouped_gemm(a, a_scales, experts.w2, experts.w2_scale, y, plan.grouped_layout)
    del a, a_scales
    return glue.unpermute_reduce(y, plan, None if on_input else topk_weights,
                                 experts.w2_bias, config.dtype)
