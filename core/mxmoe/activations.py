"""The gated activations between the two expert GEMMs, in plain PyTorch.

``apply_activation`` maps GEMM1's output ``[..., 2I]`` to ``[..., I]``; its math is
FACTS.md's, written once here so the reference and PyTorch backends share it.
"""

from __future__ import annotations

import torch

from .config import Activation, MoEConfig

__all__ = ["apply_activation", "split_gate_up"]


def split_gate_up(h: torch.Tensor, activation: Activation) -> tuple[torch.Tensor, torch.Tensor]:
    """(gate, up) halves of GEMM1's output: interleaved rows for SWIGLUOAI, else halves."""
    if activation.interleaved:
        return h[..., 0::2], h[..., 1::2]
    half = h.shape[-1] // 2
    return h[..., :half], h[..., half:]


def apply_activation(h: torch.Tensor, config: MoEConfig) -> torch.Tensor:
    """The config's activation on ``h`` [..., 2I] -> [..., I], in ``h``'s dtype."""
    act, limit = config.activation, config.swiglu_limit
    gate, up = split_gate_up(h, act)
    if act is Activation.SILU:
        return torch.nn.functional.silu(gate) * up
    if act is Activation.SWIGLUSTEP:
        out = torch.nn.functional.silu(gate)
        if limit is not None:
            out, up = out.clamp(max=limit), up.clamp(-limit, limit)
        return out * up
    # SWIGLUOAI (interleaved, beta fixed at 1 as gpt-oss defines it) and the
    # uninterleaved variant with a configurable beta.
    beta = config.activation_beta
    if limit is not None:
        gate, up = gate.clamp(max=limit), up.clamp(-limit, limit)
    return gate * torch.sigmoid(config.swiglu_alpha * gate) * (up + beta)
