"""The floor of one MoE layer forward: the time no implementation can beat.

A forward must at least read the weights of every expert the routing touches (each
once) plus its input activations, and write its output; and it must do the two
GEMMs' multiply-adds. Bytes over the measured HBM read bandwidth and FLOPs over the
measured dense BF16 rate give two times; the larger is the floor (METHOD.md's "two
numbers"). Everything is counted at the model's unpadded sizes, in the checkpoint's
storage format: padding a backend adds is its own overhead, not part of the floor.
"""

from __future__ import annotations

import dataclasses

import torch

from ..config import MX_BLOCK, MoEConfig

__all__ = [
    "Ceilings",
    "Floor",
    "expert_bytes",
    "layer_bytes",
    "layer_flops",
    "layer_floor",
    "touched_experts",
]


@dataclasses.dataclass(frozen=True)
class Ceilings:
    """The measured rates the floors divide by."""

    hbm_read_TBps: float  # noqa: N815 - the record's field name
    bf16_TFLOPs: float  # noqa: N815

    def __post_init__(self) -> None:
        for field in ("hbm_read_TBps", "bf16_TFLOPs"):
            value = getattr(self, field)
            if not value > 0:
                raise ValueError(f"{field}: must be a positive rate, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Floor:
    """The floor of one (layer, M, routing): its two terms and which one binds."""

    experts_touched: float
    bytes: float
    flops: float
    hbm_ms: float
    compute_ms: float

    @property
    def ms(self) -> float:
        return max(self.hbm_ms, self.compute_ms)

    @property
    def bound(self) -> str:
        """``"hbm"`` when moving bytes binds, ``"compute"`` when the BF16 math does."""
        return "hbm" if self.hbm_ms >= self.compute_ms else "compute"


def expert_bytes(config: MoEConfig) -> int:
    """Bytes of one expert as stored: w13 and w2 elements, their E8M0 scales, biases."""
    h, i = config.hidden_size, config.intermediate_size
    elements = 2 * i * h + h * i
    data = elements // config.weight_format.elements_per_byte
    scales = elements // MX_BLOCK
    bias = (2 * i + h) * config.dtype.itemsize if config.has_bias else 0
    return data + scales + bias


def touched_experts(topk_ids: torch.Tensor, config: MoEConfig) -> int:
    """How many of this rank's experts the routing ``topk_ids`` [M, k] sends tokens to."""
    ids = torch.unique(topk_ids.reshape(-1).to(torch.int64))
    if config.expert_map is not None:
        local = torch.tensor(config.expert_map, device=ids.device)[ids]
        ids = ids[local >= 0]
    return int(ids.numel())


def layer_bytes(config: MoEConfig, m: int, experts: float) -> float:
    """Fewest bytes a forward moves: the touched experts' weights read once, the
    [M, H] input read once and the [M, H] output written once."""
    activations = 2 * m * config.hidden_size * config.dtype.itemsize
    return experts * expert_bytes(config) + activations


def layer_flops(config: MoEConfig, m: int) -> float:
    """Multiply-add FLOPs of the two GEMMs over the M·top_k (token, expert) pairs:
    2·M·k·(H·2I + I·H)."""
    h, i = config.hidden_size, config.intermediate_size
    return 2.0 * m * config.top_k * (h * 2 * i + i * h)


def layer_floor(config: MoEConfig, m: int, experts: float, ceilings: Ceilings) -> Floor:
    """The floor for M tokens whose routing touches ``experts`` experts (a mean over
    input sets may be fractional)."""
    if m <= 0:
        raise ValueError(f"m: expected a positive token count, got {m}")
    nbytes = layer_bytes(config, m, experts)
    flops = layer_flops(config, m)
    return Floor(
        experts_touched=experts,
        bytes=nbytes,
        flops=flops,
        hbm_ms=nbytes / (ceilings.hbm_read_TBps * 1e12) * 1e3,
        compute_ms=flops / (ceilings.bf16_TFLOPs * 1e12) * 1e3,
    )
