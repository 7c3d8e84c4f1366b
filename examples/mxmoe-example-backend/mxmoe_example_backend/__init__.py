"""A minimal third-party mxmoe backend: the float64 reference behind the plugin contract.

It shows every part of the contract in a few lines: a fail-closed probe with a
priority and a padding request, a weight conversion and the experts' computation.
It pads hidden and intermediate sizes to multiples of 64 on purpose, so the core's
padding path is exercised by the conformance kit. Slow and exact; CPU only.
"""

from __future__ import annotations

import dataclasses

import torch

from mxmoe import ExpertWeights, MoEConfig, Verdict, hookimpl, reference_experts

MXMOE_API_VERSION = 1

PAD_MULTIPLE = 64


@dataclasses.dataclass(frozen=True)
class ConvertedWeights:
    """The padded checkpoint tensors and the config describing their padded shapes."""

    padded_config: MoEConfig
    weights: ExpertWeights


@hookimpl
def supports_config(config: MoEConfig, device: torch.device) -> Verdict:
    if device.type != "cpu":
        return Verdict.no(f"runs on the CPU only, found {device}")
    # Below the emulation backend (0): it is an example, not a fallback to pick.
    return Verdict.yes(priority=-10, hidden_multiple=PAD_MULTIPLE,
                       intermediate_multiple=PAD_MULTIPLE)


@hookimpl
def convert_weights(config: MoEConfig, weights: ExpertWeights) -> ConvertedWeights:
    # The reference reads the checkpoint layout, so "conversion" only records the
    # padded shapes: a config whose sizes are the padded ones describes these tensors.
    padded = config.replace(hidden_size=weights.hidden_size,
                            intermediate_size=weights.intermediate_size)
    return ConvertedWeights(padded, weights)


@hookimpl
def apply(config: MoEConfig, weights: ConvertedWeights, hidden_states: torch.Tensor,
          topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
    out = reference_experts(weights.padded_config, weights.weights, hidden_states,
                            topk_weights, topk_ids)
    return out.to(config.dtype)
