"""The glue in plain PyTorch: runs on any device, and defines what the Triton glue must
compute. No step synchronises with the host (no boolean indexing, no ``.item()``):
invalid slots are steered into a scratch row past the end and sliced away.

Row order inside an expert's segment here is token order (a stable sort); the Triton
glue may order rows differently. Only the layout's invariants are part of the
contract: GEMM rows are independent, so the output does not depend on that order.
"""

from __future__ import annotations

import torch

from mxmoe import MoEConfig
from mxmoe.activations import apply_activation
from mxmoe.formats import quantize_fp8_per_token_group

from .glue import RoutingPlan, workspace_rows
from .layouts import (
    ACTIVATION_GROUP,
    ScaleFormat,
    pack_ue8m0,
    pow2_scales_to_ue8m0,
)

__all__ = ["activate_quantize", "plan_permutation", "quantize_permute", "unpermute_reduce"]


def plan_permutation(topk_ids: torch.Tensor, expert_map: torch.Tensor | None,
                     num_local_experts: int, alignment: int) -> RoutingPlan:
    """Lay the (token, slot) pairs of ``topk_ids`` [M, k] (global ids) out in
    expert segments aligned to ``alignment`` rows; see :class:`RoutingPlan`."""
    tokens, top_k = topk_ids.shape
    rows = workspace_rows(tokens, top_k, num_local_experts, alignment)
    device = topk_ids.device
    ids = topk_ids.reshape(-1).long()
    local = expert_map.long()[ids] if expert_map is not None else ids
    valid = local >= 0
    # Bucket num_local_experts collects the slots of other ranks.
    bucket = torch.where(valid, local, num_local_experts)
    counts = torch.zeros(num_local_experts + 1, dtype=torch.long, device=device)
    counts.scatter_add_(0, bucket, torch.ones_like(bucket))
    padded = (counts[:num_local_experts] + alignment - 1) // alignment * alignment
    # Other ranks' slots start at the scratch row (a device-side value: no host copy).
    starts = torch.cat([torch.cumsum(padded, 0) - padded,
                        torch.full((1,), rows, dtype=torch.long, device=device)])
    order = torch.argsort(bucket, stable=True)
    first_of_bucket = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(bucket)
    rank[order] = torch.arange(bucket.numel(), device=device) - first_of_bucket[bucket[order]]
    row = torch.where(valid, starts[bucket] + rank, rows)
    layout = torch.full((rows + 1,), -1, dtype=torch.int32, device=device)
    layout[row] = torch.where(valid, local, -1).to(torch.int32)
    return RoutingPlan(
        slot_expert=torch.where(valid, local, -1).to(torch.int32),
        slot_row=torch.where(valid, row, -1).to(torch.int32),
        grouped_layout=layout[:rows],
        expert_counts=counts[:num_local_experts].to(torch.int32),
        top_k=top_k,
    )


def _quantize(x: torch.Tensor, fmt: ScaleFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 E4M3 per 128 channels; float32 scales (powers of two unless FLOAT32)."""
    rounding = "pow2" if fmt.power_of_two else "float32"
    return quantize_fp8_per_token_group(x, ACTIVATION_GROUP, scale_format=rounding)


def _in_layout(scales: torch.Tensor, fmt: ScaleFormat) -> torch.Tensor:
    """float32 scales [rows, groups] in the layout ``fmt`` hands to DeepGEMM."""
    if fmt is ScaleFormat.UE8M0:
        return pack_ue8m0(pow2_scales_to_ue8m0(scales))
    return scales


def quantize_permute(hidden_states: torch.Tensor, plan: RoutingPlan, fmt: ScaleFormat,
                     input_weights: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 rows of FC1's input in the grouped layout, and their scales.

    ``hidden_states`` [M, H] is quantized per token and 128 channels, then each token is
    copied to its slots' rows. ``input_weights`` [M, 1] (router weight applied on the
    input) multiplies each token first, rounded back to its dtype as the reference
    does. Returns fp8 [rows, H] (padding rows unwritten) and scales (see
    :class:`ScaleFormat`).
    """
    x = hidden_states
    if input_weights is not None:
        x = (x.float() * input_weights).to(hidden_states.dtype)
    q, scales = _quantize(x, fmt)
    rows, top_k = plan.rows, plan.top_k
    token = torch.arange(plan.slot_row.numel(), device=x.device) // top_k
    dest = torch.where(plan.slot_row >= 0, plan.slot_row.long(), rows)
    out = torch.empty((rows + 1, x.shape[1]), dtype=torch.uint8, device=x.device)
    out[dest] = q.view(torch.uint8)[token]
    out_scales = torch.ones((rows + 1, scales.shape[1]), dtype=torch.float32, device=x.device)
    out_scales[dest] = scales[token]
    return out[:rows].view(torch.float8_e4m3fn), _in_layout(out_scales[:rows], fmt)


def activate_quantize(fc1_out: torch.Tensor, plan: RoutingPlan, bias: torch.Tensor | None,
                      config: MoEConfig, fmt: ScaleFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """FC2's FP8 input from FC1's output [rows, 2I]: + bias of the row's expert, the
    config's activation (float32), per-128 FP8 quantization. Padding rows give zeros."""
    grouped_layout = plan.grouped_layout
    h = fc1_out.float()
    valid = (grouped_layout >= 0).unsqueeze(1)
    if bias is not None:
        h = h + bias[grouped_layout.clamp(min=0).long()]
    act = torch.where(valid, apply_activation(h, config), 0.0)
    q, scales = _quantize(act, fmt)
    return q, _in_layout(scales, fmt)


def unpermute_reduce(fc2_out: torch.Tensor, plan: RoutingPlan,
                     topk_weights: torch.Tensor | None, bias: torch.Tensor | None,
                     dtype: torch.dtype) -> torch.Tensor:
    """out[t] = sum over t's local slots of weight x (FC2 row + bias), in ``dtype``.

    ``topk_weights`` None means the weights were applied on the input. Tokens with no
    local slot get exact zeros; padding rows are never read.
    """
    valid = (plan.slot_row >= 0).unsqueeze(1)
    gathered = fc2_out[plan.slot_row.clamp(min=0).long()].float()
    if bias is not None:
        gathered = gathered + bias[plan.slot_expert.clamp(min=0).long()]
    if topk_weights is not None:
        gathered = gathered * topk_weights.reshape(-1, 1)
    contrib = torch.where(valid, gathered, 0.0)
    tokens = plan.slot_row.numel() // plan.top_k
    return contrib.view(tokens, plan.top_k, -1).sum(dim=1).to(dtype)

