"""Test double of ``aiter.ops.triton.quant_moe``: static FP8 quantization of the input."""

from __future__ import annotations

import torch

from mxmoe.formats import quantize_fp8_per_tensor

from ..._contract import expect, expect_scalar_scale


def downcast_to_static_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x`` [M, N] -> float8_e4m3fn codes of ``x / scale``; ``scale``: one float32 value."""
    expect(isinstance(x, torch.Tensor) and x.dim() == 2 and x.is_floating_point(),
           "x: expected a 2-D floating-point tensor")
    expect_scalar_scale("scale", scale)
    expect(scale.device == x.device, "scale: must be on x's device")
    return quantize_fp8_per_tensor(x, scale)
