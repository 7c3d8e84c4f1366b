"""What the benchmark feeds the layer: random MX-quantized expert weights generated on
the benchmark's device, and rotating sets of random activations and router logits.

:func:`mxmoe.random_weights` draws on the CPU, which for a gpt-oss-120b layer (2.1
billion weights) takes minutes; here the same distribution (N(0, 1/fan_in) weights
quantized with the OCP floor rule, N(0, 0.1) biases) is drawn on the device a few
experts at a time, so the float32 intermediate never exceeds a few hundred MB.
"""

from __future__ import annotations

import dataclasses

import torch

from ..config import MoEConfig
from ..formats import quantize_mx
from ..routing import route
from ..weights import ExpertWeights

__all__ = ["InputSet", "device_weights", "input_sets"]

#: Weight values drawn at once (float32): 64 Mi values = 256 MiB.
_CHUNK_VALUES = 1 << 26


def _quantized_chunks(config: MoEConfig, rows: int, cols: int, gen: torch.Generator,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """[E, rows, cols] N(0, 1/cols) weights in the config's MX format, drawn per chunk
    of experts."""
    experts = config.num_local_experts
    per_chunk = max(1, _CHUNK_VALUES // (rows * cols))
    data, scales = [], []
    for start in range(0, experts, per_chunk):
        count = min(per_chunk, experts - start)
        values = torch.randn(count, rows, cols, generator=gen, device=device)
        values.mul_(cols ** -0.5)
        chunk_data, chunk_scales = quantize_mx(values, config.weight_format.mx_name)
        data.append(chunk_data)
        scales.append(chunk_scales)
        del values
    return torch.cat(data), torch.cat(scales)


def device_weights(config: MoEConfig, device: torch.device, seed: int = 0) -> ExpertWeights:
    """Random checkpoint-layout weights for ``config``'s local experts, on ``device``
    (BF16-activation configs: no static FP8 input scales are drawn)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    h, i = config.hidden_size, config.intermediate_size
    w13, w13_scale = _quantized_chunks(config, 2 * i, h, gen, device)
    w2, w2_scale = _quantized_chunks(config, h, i, gen, device)
    weights = ExpertWeights(w13, w13_scale, w2, w2_scale)
    if config.has_bias:
        e = config.num_local_experts
        weights.w13_bias = (torch.randn(e, 2 * i, generator=gen, device=device) * 0.1).to(config.dtype)
        weights.w2_bias = (torch.randn(e, h, generator=gen, device=device) * 0.1).to(config.dtype)
    return weights


@dataclasses.dataclass(frozen=True)
class InputSet:
    """One forward's inputs: activations [M, H] (N(0, 1), config dtype), router logits
    [M, E] (N(0, 1), float32: no ties between experts), and the routing they give."""

    hidden_states: torch.Tensor
    router_logits: torch.Tensor
    topk_ids: torch.Tensor


def input_sets(config: MoEConfig, m: int, count: int, device: torch.device,
               seed: int = 0) -> list[InputSet]:
    """``count`` independent input sets of ``m`` tokens, reproducible from ``seed`` and
    ``m`` (every implementation sees the same inputs)."""
    if m <= 0 or count <= 0:
        raise ValueError(f"m and count: expected positive counts, got m={m}, count={count}")
    gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + m)
    sets = []
    for _ in range(count):
        x = torch.randn(m, config.hidden_size, generator=gen, device=device).to(config.dtype)
        logits = torch.randn(m, config.num_experts, generator=gen, device=device)
        sets.append(InputSet(x, logits, route(logits, config)[1]))
    return sets
