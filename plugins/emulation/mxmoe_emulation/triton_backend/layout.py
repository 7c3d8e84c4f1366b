"""The ``triton`` backend's weight layout and its conversion from the checkpoint layout.

The kernels read each weight tile as rows of an output dimension N with the
reduction dimension K contiguous, as the checkpoint stores them (``w13`` [E, 2I, ...],
``w2`` [E, H, ...]). The MX bytes stay packed (two E2M1 codes a byte, or one E4M3
byte), never widened to BF16. What conversion changes:

* MXFP4 bytes are regrouped ("split nibbles"): in each run of 32 bytes (64 elements
  of K, two MX blocks) byte j holds element j in its low nibble and element 32 + j in
  its high nibble, instead of elements 2j and 2j + 1. A tile's low nibbles are then
  whole MX blocks and its high nibbles the blocks after them, so the kernels decode
  each nibble set straight into a weight tile and multiply it with the matching
  columns of the activations; nothing is interleaved in registers. This needs K to
  be a multiple of 64 (the probe asks the layer to pad H and I to 64).
* MXFP8 values are viewed as ``uint8`` (same bytes);
* scale rows are padded with zeros to a multiple of 16 bytes (``[E, N, K/32]`` ->
  ``[E, N, ceil16(K/32)]``), so a tile's scales are aligned vector loads;
* biases become float32 (an exact widening), added in the GEMM epilogues.

Gate/up rows stay where the checkpoint has them (interleaved for SWIGLUOAI, halves
otherwise); the GEMM1 kernel reads the gate rows and the up rows of an output tile as
two strided row sets, so no permutation is needed.

The scales are checked once here: a scale byte of 0xFF (NaN), or one whose weights
the compute type cannot hold (the decode forms ``2**(s - 127)``; for fp16
activations the dequantized weight must fit float16), is rejected with a ValueError
rather than computed into inf or NaN.
"""

from __future__ import annotations

import dataclasses

import torch
from mxmoe import Activation, ExpertWeights, MoEConfig, WeightFormat

__all__ = ["LayerMath", "TritonWeights", "convert", "max_scale_byte", "scale_bias", "split_nibbles"]

@dataclasses.dataclass(frozen=True)
class LayerMath:
    """The per-layer constants the kernels specialize on."""

    weight_format: str  # "mxfp4" | "mxfp8"
    activation: str  # an mxmoe.Activation value
    alpha: float
    beta: float
    limit: float | None
    weight_on_input: bool

    @classmethod
    def from_config(cls, config: MoEConfig) -> LayerMath:
        # gpt-oss's interleaved SWIGLUOAI fixes beta at 1 (mxmoe.activations)
        beta = config.activation_beta
        return cls(config.weight_format.value, config.activation.value, config.swiglu_alpha,
                   beta, config.swiglu_limit, config.apply_router_weight_on_input)

    @property
    def interleaved(self) -> bool:
        return self.activation == Activation.SWIGLUOAI.value


@dataclasses.dataclass
class TritonWeights:
    """What ``convert_weights`` returns and ``apply`` reads (see the module docstring)."""

    w13: torch.Tensor  # uint8 [E, 2I, H/2] split nibbles (MXFP4) or [E, 2I, H] (MXFP8)
    w13_scale: torch.Tensor  # uint8 [E, 2I, ceil16(H/32)]
    w2: torch.Tensor  # uint8 [E, H, I/2] split nibbles or [E, H, I]
    w2_scale: torch.Tensor  # uint8 [E, H, ceil16(I/32)]
    w13_bias: torch.Tensor | None  # float32 [E, 2I]
    w2_bias: torch.Tensor | None  # float32 [E, H]
    math: LayerMath
    w13_scale_bias: int = 126  # see scale_bias()
    w2_scale_bias: int = 126

    @property
    def hidden_size(self) -> int:
        return self.w2.shape[1]

    @property
    def intermediate_size(self) -> int:
        return self.w13.shape[1] // 2


def max_scale_byte(config: MoEConfig) -> int:
    """The largest E8M0 scale byte whose blocks dequantize to finite ``config.dtype``:
    the format's largest element (6 for E2M1, 448 for E4M3) times 2**(s - 127) must
    not exceed the dtype's maximum."""
    largest = 6.0 if config.weight_format is WeightFormat.MXFP4 else 448.0
    limit = torch.finfo(config.dtype).max
    s = 127
    while s < 254 and largest * 2.0 ** (s + 1 - 127) <= limit:
        s += 1
    return s


def scale_bias(top: int) -> int:
    """The exponent bias the bf16 PTX decode adds to a tensor's scales whose largest byte
    is ``top``: it decodes E2M1 codes as value * 2**-126 and multiplies once by the bf16
    2**(s + bias - 127), so the weights come out times 2**(bias - 126) (the kernel
    multiplies the products back). 126 (exact weights) unless a scale above 128 would
    overflow bf16's exponent; weights below 2**-126 may then lose bits (subnormal)."""
    return min(126, 254 - top)


def _check_scales(name: str, scales: torch.Tensor, limit: int, config: MoEConfig) -> int:
    """Validate one scale tensor; return its largest byte."""
    if scales.numel() == 0:
        return 127
    top = int(scales.max())
    if top == 0xFF:
        raise ValueError(f"{name}: contains the E8M0 NaN encoding 0xFF; the triton backend "
                         "needs finite scales")
    if top > limit:
        raise ValueError(
            f"{name}: scale byte {top} (2**{top - 127}) makes weights too large for "
            f"{str(config.dtype).removeprefix('torch.')} activations; the triton backend "
            f"accepts scale bytes up to {limit}"
        )
    return top


def split_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Checkpoint-packed E2M1 bytes [..., K/2] (element 2j low) -> split-nibble bytes
    (see the module docstring); K must be a multiple of 64. One expert at a time, so
    the unpacked codes never take more than one expert's worth of memory."""
    out = torch.empty_like(packed)
    for e in range(packed.shape[0]):
        codes = torch.stack((packed[e] & 0xF, packed[e] >> 4), dim=-1).flatten(-2)
        groups = codes.unflatten(-1, (-1, 2, 32))  # [..., K/64, (low, high), 32]
        out[e] = (groups[..., 0, :] | (groups[..., 1, :] << 4)).flatten(-2)
    return out


def _padded_scales(scales: torch.Tensor) -> torch.Tensor:
    """Scale rows padded with zero bytes to a multiple of 16 bytes."""
    pad = -scales.shape[-1] % 16
    return torch.nn.functional.pad(scales, (0, pad)).contiguous() if pad else scales.contiguous()


def _weight_bytes(t: torch.Tensor, config: MoEConfig) -> torch.Tensor:
    if config.weight_format is WeightFormat.MXFP4:
        return split_nibbles(t.contiguous())
    return t.view(torch.uint8).contiguous()


def _as_float32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.to(torch.float32).contiguous()


def convert(config: MoEConfig, weights: ExpertWeights) -> TritonWeights:
    """The kernels' view of checkpoint-layout ``weights`` (already padded, on device)."""
    limit = max_scale_byte(config)
    top13 = _check_scales("w13_scale", weights.w13_scale, limit, config)
    top2 = _check_scales("w2_scale", weights.w2_scale, limit, config)
    for name, k in (("w13", weights.hidden_size), ("w2", weights.intermediate_size)):
        if config.weight_format is WeightFormat.MXFP4 and k % 64:
            raise ValueError(f"{name}: the triton backend's MXFP4 layout needs K to be a "
                             f"multiple of 64, got {k} (its verdict asks the layer to pad)")
    return TritonWeights(
        w13=_weight_bytes(weights.w13, config),
        w13_scale=_padded_scales(weights.w13_scale),
        w2=_weight_bytes(weights.w2, config),
        w2_scale=_padded_scales(weights.w2_scale),
        w13_bias=_as_float32(weights.w13_bias),
        w2_bias=_as_float32(weights.w2_bias),
        math=LayerMath.from_config(config),
        w13_scale_bias=scale_bias(top13),
        w2_scale_bias=scale_bias(top2),
    )
