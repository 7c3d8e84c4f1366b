"""In-process test backends, registered with :func:`mxmoe.register_backend`.

:class:`ReferenceBackend` is a complete, honest backend: it pads as its verdict says
and computes with :func:`mxmoe.reference_experts` on the padded tensors, so a layer
built on it must reproduce the reference on the unpadded weights. It records every
call, so tests can check what the layer hands a backend.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from mxmoe import ExpertWeights, MoEConfig, Verdict, hookimpl, reference_experts, route
from mxmoe.hookspecs import HOOK_API_VERSION


@dataclasses.dataclass
class ApplyCall:
    """What one ``apply`` call received."""

    hidden_states: torch.Tensor
    topk_weights: torch.Tensor | None
    topk_ids: torch.Tensor | None
    router_logits: torch.Tensor
    expert_map: torch.Tensor | None


class ReferenceBackend:
    """Answers ``verdict`` for every (config, device) and runs the reference."""

    MXMOE_API_VERSION = HOOK_API_VERSION

    def __init__(self, verdict: Verdict | None = None) -> None:
        self.verdict = verdict if verdict is not None else Verdict.yes(1)
        self.probes: list[tuple[MoEConfig, torch.device]] = []
        self.conversions: list[ExpertWeights] = []
        self.calls: list[ApplyCall] = []

    @hookimpl
    def supports_config(self, config: MoEConfig, device: torch.device) -> Verdict:
        self.probes.append((config, device))
        return self.verdict

    @hookimpl
    def convert_weights(self, config: MoEConfig, weights: ExpertWeights,
                        device: torch.device) -> ExpertWeights:
        self.conversions.append(weights)
        return dataclasses.replace(weights)  # a copy: the layer keeps only this

    @hookimpl
    def apply(self, config: MoEConfig, weights: ExpertWeights, hidden_states: torch.Tensor,
              topk_weights: torch.Tensor | None, topk_ids: torch.Tensor | None,
              router_logits: torch.Tensor, expert_map: torch.Tensor | None) -> torch.Tensor:
        self.calls.append(ApplyCall(hidden_states, topk_weights, topk_ids, router_logits,
                                    expert_map))
        if topk_weights is None:  # routes internally
            topk_weights, topk_ids = route(router_logits, config)
        padded = config.replace(hidden_size=hidden_states.shape[1],
                                intermediate_size=weights.intermediate_size)
        out = reference_experts(padded, weights, hidden_states, topk_weights, topk_ids)
        return out.to(config.dtype)


class EchoBackend:
    """The cheapest possible backend: ``apply`` returns its input. For measuring what
    the layer itself costs per call."""

    MXMOE_API_VERSION = HOOK_API_VERSION

    @hookimpl
    def supports_config(self) -> Verdict:
        return Verdict.yes(1)

    @hookimpl
    def convert_weights(self, weights: ExpertWeights) -> Any:
        return weights

    @hookimpl
    def apply(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states
