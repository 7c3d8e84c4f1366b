"""When the emulation backend dequantizes its MX weights, and the weights it keeps.

Two modes, chosen by ``MXMOE_EMULATION_DEQUANT`` when the layer's weights are
converted:

``convert``
    Dequantize every local expert once, in ``convert_weights``, to float32 and keep
    only that copy. Each call then goes straight to the GEMMs. Memory: 4 bytes per
    weight element instead of the packed 0.5 + 1/32 (MXFP4) or 1 + 1/32 (MXFP8)
    bytes, i.e. 7.53x the checkpoint for MXFP4 and 3.88x for MXFP8.
``call``
    Keep the packed MX weights and scales; each call dequantizes only the experts its
    tokens reach, one matrix at a time, and drops each copy after its GEMM.
    Memory: the checkpoint plus one float32 matrix (gpt-oss-20b's w13: 66 MB).

Default: ``convert`` on the CPU (host memory is the large, cheap pool, and per-call
dequantization would make a CPU forward pass several times slower: gpt-oss-mini at
16 tokens, one thread, 58 ms instead of 15 ms); ``call`` on every accelerator (device
memory is the scarce resource there and the GPU dequantizes quickly: gpt-oss-20b on an
H100 at 64 tokens, 11.7 ms instead of 7.0 ms, for 0.43 GB of weights instead of 3.19).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import os
from typing import Literal

import torch

from mxmoe import ExpertWeights, MoEConfig
from mxmoe.config import MX_BLOCK
from mxmoe.formats import e2m1_to_float, e8m0_to_float
from mxmoe.weights import layer_input_scale

__all__ = [
    "COMPUTE_DTYPE",
    "DequantMode",
    "ENV_DEQUANT",
    "EmulationWeights",
    "convert",
    "default_mode",
    "dequantize",
    "mode_from_environment",
]

ENV_DEQUANT = "MXMOE_EMULATION_DEQUANT"

#: Weights and GEMM operands are float32 on every device: MX values are exact in it,
#: and the results do not depend on the device's reduced-precision GEMM paths.
COMPUTE_DTYPE = torch.float32


class DequantMode(str, enum.Enum):
    """When the MX weights become float32 matrices."""

    CONVERT = "convert"  # once, at convert_weights: fast calls, 3.9-7.5x the memory
    CALL = "call"  # per call, active experts only: memory-lean


def default_mode(device: torch.device) -> DequantMode:
    """``convert`` on the CPU, ``call`` on accelerators (see the module docstring)."""
    return DequantMode.CONVERT if device.type == "cpu" else DequantMode.CALL


def mode_from_environment(device: torch.device) -> DequantMode:
    """The mode ``MXMOE_EMULATION_DEQUANT`` asks for, else the device's default.

    Raises ValueError naming the variable when it holds anything but ``convert`` or
    ``call`` (case and surrounding spaces ignored; empty means unset).
    """
    raw = os.environ.get(ENV_DEQUANT, "").strip().lower()
    if not raw:
        return default_mode(device)
    try:
        return DequantMode(raw)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in DequantMode)
        raise ValueError(
            f"{ENV_DEQUANT}: unknown value {os.environ[ENV_DEQUANT]!r}; expected one of "
            f"{choices} (or unset for the device default)"
        ) from None


def _as_float32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.to(COMPUTE_DTYPE)


def _collapsed_input_scale(scale: torch.Tensor | None) -> float | None:
    """The static FP8 input scale as a Python float (see :func:`mxmoe.weights.layer_input_scale`)."""
    collapsed = layer_input_scale(scale)
    return None if collapsed is None else float(collapsed)


@functools.cache
def _decode_tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(FP4 pairs [256, 2], E8M0 values [256, 1]): every byte value decoded once, by
    :mod:`mxmoe.formats`' own decoders; a packed FP4 byte holds element 2i in its low
    nibble. Cached per device (2 KiB)."""
    byte_values = torch.arange(256, dtype=torch.int32, device=device).to(torch.uint8)
    fp4_pairs = torch.stack(
        (e2m1_to_float(byte_values & 0xF), e2m1_to_float(byte_values >> 4)), dim=-1)
    return fp4_pairs, e8m0_to_float(byte_values).unsqueeze(1)


def dequantize(data: torch.Tensor, scales: torch.Tensor, mx_format: str) -> torch.Tensor:
    """MX ``data`` [..., K (K/2 packed)] with E8M0 ``scales`` [..., K/32] -> float32 [..., K].

    Table lookups plus one multiply, element x scale in float32 as
    :func:`mxmoe.formats.dequantize_mx` computes it, so the result is bit-identical to
    that function's (NaN scales give NaN) and several times faster, which matters for
    the per-call mode.
    """
    fp4_pairs, scale_values = _decode_tables(data.device)
    if mx_format == "mxfp4":
        elements = torch.nn.functional.embedding(data.int(), fp4_pairs)
    else:
        elements = data.to(COMPUTE_DTYPE)
    blocks = elements.reshape(*scales.shape, -1)
    # in place: ``elements`` is this call's own tensor
    blocks.mul_(torch.nn.functional.embedding(scales.int(), scale_values))
    return blocks.reshape(*scales.shape[:-1], -1)


Matrix = Literal["w13", "w2"]


@dataclasses.dataclass(frozen=True)
class EmulationWeights:
    """What ``convert_weights`` returns: one layer's local experts.

    ``w13`` / ``w2`` are float32 ``[E, 2I, H]`` / ``[E, H, I]`` in ``convert`` mode
    (scales None), the checkpoint's packed tensors with their E8M0 scales in
    ``call`` mode. Biases are float32; the static FP8 input scales are plain floats.
    """

    mode: DequantMode
    mx_format: str  # the mxmoe.formats element-format name
    w13: torch.Tensor
    w13_scale: torch.Tensor | None
    w2: torch.Tensor
    w2_scale: torch.Tensor | None
    w13_bias: torch.Tensor | None
    w2_bias: torch.Tensor | None
    w13_input_scale: float | None
    w2_input_scale: float | None

    @property
    def num_experts(self) -> int:
        return self.w13.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.w2.shape[1]

    def matrix(self, which: Matrix, expert: int) -> torch.Tensor:
        """Local ``expert``'s float32 ``w13`` [2I, H] or ``w2`` [H, I]."""
        data = self.w13 if which == "w13" else self.w2
        if self.mode is DequantMode.CONVERT:
            return data[expert]
        scales = self.w13_scale if which == "w13" else self.w2_scale
        return dequantize(data[expert], scales[expert], self.mx_format)


def _dequantize_all(data: torch.Tensor, scales: torch.Tensor, mx_format: str) -> torch.Tensor:
    """Every expert of ``data`` as float32, one expert at a time so the conversion's
    temporaries stay the size of one expert."""
    out = torch.empty((*scales.shape[:-1], scales.shape[-1] * MX_BLOCK), dtype=COMPUTE_DTYPE,
                      device=data.device)
    for expert in range(data.shape[0]):
        out[expert] = dequantize(data[expert], scales[expert], mx_format)
    return out


def convert(config: MoEConfig, weights: ExpertWeights, mode: DequantMode) -> EmulationWeights:
    """The emulation backend's form of checkpoint-layout ``weights`` in ``mode``."""
    mx_format = config.weight_format.mx_name
    if mode is DequantMode.CONVERT:
        w13 = _dequantize_all(weights.w13, weights.w13_scale, mx_format)
        w2 = _dequantize_all(weights.w2, weights.w2_scale, mx_format)
        w13_scale = w2_scale = None
    else:
        w13, w13_scale, w2, w2_scale = weights.w13, weights.w13_scale, weights.w2, weights.w2_scale
    return EmulationWeights(
        mode=mode,
        mx_format=mx_format,
        w13=w13,
        w13_scale=w13_scale,
        w2=w2,
        w2_scale=w2_scale,
        w13_bias=_as_float32(weights.w13_bias),
        w2_bias=_as_float32(weights.w2_bias),
        w13_input_scale=_collapsed_input_scale(weights.w13_input_scale),
        w2_input_scale=_collapsed_input_scale(weights.w2_input_scale),
    )
