"""The ``triton`` backend's weight layout and its conversion from the checkpoint layout.

The kernels read each weight tile as rows of an output dimension N with the
reduction dimension K contiguous: exactly the checkpoint layout (``w13`` [E, 2I, H/2],
``w2`` [E, H, I/2], scales [E, N, K/32]). So the MX bytes are kept as they are, still
packed (two E2M1 codes a byte, or one E4M3 byte), never widened to BF16: the only
changes are

* MXFP8 values are viewed as ``uint8`` (same bytes) so one code path loads both;
* every tensor is made contiguous (16-byte-aligned rows when K/2 is a multiple of
  16, which lets Triton issue wide loads);
* biases become float32 (an exact widening; 4 bytes per output row, negligible),
  added in the GEMM epilogues.

Gate/up rows stay where the checkpoint has them (interleaved for SWIGLUOAI, halves
otherwise); the GEMM1 kernel reads the gate rows and the up rows of an output tile as
two strided row sets, so no permutation is needed.

The scales are checked once here, because the in-register dequantization forms
``2**(s - 127)`` through float32 (and, for fp16 activations, the dequantized weight
must fit float16): a scale byte of 0xFF (NaN) or one whose weights the compute type
cannot hold is rejected with a ValueError rather than computed into inf or NaN.
"""

from __future__ import annotations

import dataclasses

import torch
from mxmoe import Activation, ExpertWeights, MoEConfig, WeightFormat

__all__ = ["LayerMath", "TritonWeights", "convert", "max_scale_byte"]

#: Largest E8M0 byte whose block the kernels can dequantize: 2**(s - 127) times the
#: 2**14 of the float16 bit trick must stay finite in float32 (s - 113 <= 127).
_MAX_SCALE_BYTE_BF16 = 240


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
        beta = 1.0 if config.activation is Activation.SWIGLUOAI else config.swiglu_beta
        return cls(config.weight_format.value, config.activation.value, config.swiglu_alpha,
                   beta, config.swiglu_limit, config.apply_router_weight_on_input)

    @property
    def interleaved(self) -> bool:
        return self.activation == Activation.SWIGLUOAI.value


@dataclasses.dataclass
class TritonWeights:
    """What ``convert_weights`` returns and ``apply`` reads (see the module docstring)."""

    w13: torch.Tensor  # uint8 [E, 2I, H/2] (MXFP4) or [E, 2I, H] (MXFP8 bytes)
    w13_scale: torch.Tensor  # uint8 [E, 2I, H/32]
    w2: torch.Tensor  # uint8 [E, H, I/2] or [E, H, I]
    w2_scale: torch.Tensor  # uint8 [E, H, I/32]
    w13_bias: torch.Tensor | None  # float32 [E, 2I]
    w2_bias: torch.Tensor | None  # float32 [E, H]
    math: LayerMath

    @property
    def hidden_size(self) -> int:
        return self.w2.shape[1]

    @property
    def intermediate_size(self) -> int:
        return self.w13.shape[1] // 2


def max_scale_byte(config: MoEConfig) -> int:
    """The largest E8M0 scale byte whose blocks dequantize to finite ``config.dtype``."""
    if config.dtype is not torch.float16:
        return _MAX_SCALE_BYTE_BF16
    # largest element (6 for E2M1, 448 for E4M3) * 2**(s - 127) <= 65504
    largest = 6.0 if config.weight_format is WeightFormat.MXFP4 else 448.0
    s = 127
    while largest * 2.0 ** (s + 1 - 127) <= torch.finfo(torch.float16).max:
        s += 1
    return s


def _check_scales(name: str, scales: torch.Tensor, limit: int, config: MoEConfig) -> None:
    if scales.numel() == 0:
        return
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


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    return (t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t).contiguous()


def _as_float32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.to(torch.float32).contiguous()


def convert(config: MoEConfig, weights: ExpertWeights) -> TritonWeights:
    """The kernels' view of checkpoint-layout ``weights`` (already padded, on device)."""
    limit = max_scale_byte(config)
    _check_scales("w13_scale", weights.w13_scale, limit, config)
    _check_scales("w2_scale", weights.w2_scale, limit, config)
    return TritonWeights(
        w13=_as_bytes(weights.w13),
        w13_scale=weights.w13_scale.contiguous(),
        w2=_as_bytes(weights.w2),
        w2_scale=weights.w2_scale.contiguous(),
        w13_bias=_as_float32(weights.w13_bias),
        w2_bias=_as_float32(weights.w2_bias),
        math=LayerMath.from_config(config),
    )
