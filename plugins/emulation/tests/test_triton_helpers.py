"""Helpers shared by the ``triton`` backend's test modules (this module holds no tests).

Named ``test_triton_*`` to live beside them; the test modules import it by name (pytest
puts this directory on ``sys.path``).
"""

from __future__ import annotations

import random

import torch

import mxmoe
import mxmoe_emulation.triton_backend as triton_backend
from mxmoe import FusedMoE, MoEConfig
from mxmoe.registry import get_registry

BACKEND = "triton"


def ensure_registered() -> None:
    """Register the backend by hand where its entry point is not installed (a checkout
    run with PYTHONPATH, as on the GPU machine)."""
    if BACKEND not in get_registry().backends:
        mxmoe.register_backend(BACKEND, triton_backend)


def fresh_seed() -> int:
    """A new seed per run: the kernels must compute the function, not fit one input."""
    return random.SystemRandom().randrange(2**31)


def inputs(config: MoEConfig, m: int, seed: int, device: torch.device | str = "cpu"
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random hidden states [m, H] in config.dtype and router logits [m, E] on device."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, config.hidden_size, generator=gen).to(config.dtype)
    logits = torch.randn(m, config.num_experts, generator=gen) * 2.0
    return x.to(device), logits.to(device)


def loaded_layer(config: MoEConfig, weights: mxmoe.ExpertWeights,
                 device: torch.device | str) -> FusedMoE:
    """A FusedMoE forced onto the triton backend with ``weights`` loaded."""
    ensure_registered()
    layer = FusedMoE(config, backend=BACKEND, device=device)
    layer.load_weights(**weights.tensors())
    return layer
