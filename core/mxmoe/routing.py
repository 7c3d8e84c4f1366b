"""Routing: router logits [M, E] -> (top-k weights float32 [M, k], expert ids int32 [M, k]).

One function per method of :class:`mxmoe.RoutingMethod`, computed in float32; ``route``
dispatches on the config. Ties between equal scores resolve to the lower expert id, on
every device: the top k come from a stable descending sort, not ``torch.topk``, whose
order among equal values differs between devices (and bf16 router logits tie often).
"""

from __future__ import annotations

import torch

from .config import MoEConfig, RoutingMethod, ScoringFunc

__all__ = ["route"]


def _top(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest scores along the last dimension and their indices, largest first,
    equal scores in increasing index order."""
    values, ids = torch.sort(scores, dim=-1, descending=True, stable=True)
    return values[..., :k], ids[..., :k]


def _renormalize(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    # top-k on the logits as given (widening to float32 keeps their order), softmax of the
    # k values in float32: one kernel less than converting all E logits first
    values, ids = _top(logits, k)
    return torch.softmax(values, dim=-1, dtype=torch.float32), ids


def _renormalize_naive(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    weights, ids = _top(torch.softmax(logits, dim=-1, dtype=torch.float32), k)
    return weights / weights.sum(dim=-1, keepdim=True), ids


def _default(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _top(torch.softmax(logits, dim=-1, dtype=torch.float32), k)


def _grouped_topk(
    logits: torch.Tensor, config: MoEConfig, correction_bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    logits = logits.float()
    m, e = logits.shape
    groups, keep, k = config.num_expert_group, config.topk_group, config.top_k
    if config.scoring_func is ScoringFunc.SOFTMAX:
        scores = torch.softmax(logits, dim=-1)
    else:
        scores = torch.sigmoid(logits)
    choice = scores if correction_bias is None else scores + correction_bias.float()
    grouped = choice.view(m, groups, e // groups)
    if correction_bias is None:
        group_score = grouped.amax(dim=-1)
    else:  # DeepSeek-V3: a group's score is the sum of its two best biased scores
        group_score = grouped.topk(min(2, e // groups), dim=-1).values.sum(dim=-1)
    top_groups = _top(group_score, keep)[1]
    group_mask = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, top_groups, True)
    expert_mask = group_mask.unsqueeze(-1).expand(m, groups, e // groups).reshape(m, e)
    masked = choice.masked_fill(~expert_mask, float("-inf"))
    ids = _top(masked, k)[1]
    weights = scores.gather(1, ids)
    if config.renormalize_grouped:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights * config.routed_scaling_factor, ids


def route(
    router_logits: torch.Tensor,
    config: MoEConfig,
    correction_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k routing of ``router_logits`` [M, E] by ``config.routing``.

    ``correction_bias`` [E] (grouped top-k only) shifts the choice but not the weights.
    Returns (topk_weights float32 [M, k], topk_ids int32 [M, k]).
    """
    if router_logits.dim() != 2 or router_logits.shape[1] != config.num_experts:
        raise ValueError(
            f"router_logits: expected shape [M, {config.num_experts}], "
            f"got {tuple(router_logits.shape)}"
        )
    if config.has_correction_bias != (correction_bias is not None):
        raise ValueError(
            "correction_bias: required exactly when config.has_correction_bias is set"
        )
    if correction_bias is not None and tuple(correction_bias.shape) != (config.num_experts,):
        raise ValueError(
            f"correction_bias: expected shape [{config.num_experts}], "
            f"got {list(correction_bias.shape)}"
        )
    # half-precision logits stay as they are (each method widens exactly where it must);
    # anything wider is computed in float32 like the rest
    as_given = router_logits.dtype in (torch.float16, torch.bfloat16, torch.float32)
    logits = router_logits if as_given else router_logits.float()
    method = config.routing
    if method is RoutingMethod.RENORMALIZE:
        weights, ids = _renormalize(logits, config.top_k)
    elif method is RoutingMethod.RENORMALIZE_NAIVE:
        weights, ids = _renormalize_naive(logits, config.top_k)
    elif method is RoutingMethod.DEFAULT:
        weights, ids = _default(logits, config.top_k)
    else:
        weights, ids = _grouped_topk(logits, config, correction_bias)
    return weights.float(), ids.to(torch.int32)
