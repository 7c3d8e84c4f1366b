"""OCP Microscaling (MX v1.0) numerics and the FP8 activation quantizers.

Everything here is exact integer/power-of-two arithmetic on float32 (or float64)
values, so it agrees bit for bit with any faithful implementation of the spec
(the tests compare with torchao's ``to_mx``):

* a block of ``block_size`` (32) consecutive elements along the last dimension
  shares one E8M0 scale byte (value ``2**(byte - 127)``; 0xFF is NaN);
* the scale comes from the block's absolute maximum, rounded ``"floor"`` (OCP:
  ``2**(floor(log2 amax) - emax)``, the block maximum may saturate) or ``"rceil"``
  (NVIDIA: ``2**ceil(log2(amax / max_elem))``, never saturates);
* elements round to nearest, ties to even, and saturate to the format's maximum;
* MXFP4 packs two E2M1 codes per byte, element ``2i`` in the low nibble.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch

from .config import ActivationFormat

__all__ = [
    "ElementFormat",
    "FP8_E4M3_MAX",
    "FP4_E2M1_VALUES",
    "dequantize_fp8_per_token_group",
    "dequantize_mx",
    "e2m1_to_float",
    "float_to_e2m1",
    "fake_quantize_activation",
    "pack_fp4",
    "quantize_fp8_per_tensor",
    "quantize_fp8_per_token_group",
    "quantize_mx",
    "quantize_mxfp8",
    "unpack_fp4",
]

E8M0_BIAS = 127
E8M0_NAN = 0xFF
FP8_E4M3_MAX = 448.0

#: The eight E2M1 magnitudes, indexed by the low three bits of a code.
FP4_E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)

ScaleRounding = Literal["floor", "rceil"]


@dataclasses.dataclass(frozen=True)
class ElementFormat:
    """An MX element type: its largest power of two, its maximum and storage dtype."""

    name: str
    emax: int
    max_value: float
    storage: torch.dtype  # uint8 for packed FP4, the float8 dtype otherwise


_FORMATS = {
    "mxfp4": ElementFormat("mxfp4", 2, 6.0, torch.uint8),
    "mxfp8_e4m3": ElementFormat("mxfp8_e4m3", 8, 448.0, torch.float8_e4m3fn),
    "mxfp8_e5m2": ElementFormat("mxfp8_e5m2", 15, 57344.0, torch.float8_e5m2),
}


def element_format(fmt: str) -> ElementFormat:
    """Look up an MX element format by name ("mxfp4", "mxfp8_e4m3", "mxfp8_e5m2")."""
    try:
        return _FORMATS[fmt]
    except (KeyError, TypeError):
        raise ValueError(
            f"fmt: unknown MX element format {fmt!r}; expected one of {', '.join(_FORMATS)}"
        ) from None


# -- E2M1 codes -----------------------------------------------------------------

# Rounding thresholds between consecutive E2M1 magnitudes. At a tie the even code
# wins: "strict" thresholds (tie rounds down) sit above an even code.
_E2M1_THRESHOLDS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
_E2M1_TIE_ROUNDS_DOWN = (True, False, True, False, True, False, True)


def float_to_e2m1(x: torch.Tensor) -> torch.Tensor:
    """Round float values (already divided by their scale) to E2M1 codes (uint8, 0..15).

    Round to nearest, ties to even, saturating at ±6. The sign bit follows the
    input's sign bit, so small negatives round to the code of -0 (0x8), as the
    spec's bit-level conversions do.
    """
    mag = x.abs()
    code = torch.zeros(x.shape, dtype=torch.uint8, device=x.device)
    for threshold, tie_down in zip(_E2M1_THRESHOLDS, _E2M1_TIE_ROUNDS_DOWN):
        passed = mag > threshold if tie_down else mag >= threshold
        code += passed.to(torch.uint8)
    return code | (torch.signbit(x).to(torch.uint8) << 3)


def e2m1_to_float(codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Decode E2M1 codes (uint8, 0..15) to floats."""
    table = torch.tensor(FP4_E2M1_VALUES, dtype=dtype, device=codes.device)
    mag = table[(codes & 0x7).long()]
    return torch.where((codes & 0x8) != 0, -mag, mag)


def pack_fp4(codes: torch.Tensor) -> torch.Tensor:
    """Pack E2M1 codes [..., K] into bytes [..., K/2], element 2i in the low nibble."""
    if codes.shape[-1] % 2:
        raise ValueError(f"codes: last dimension must be even, got {codes.shape[-1]}")
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_fp4(packed: torch.Tensor) -> torch.Tensor:
    """Unpack bytes [..., K/2] into E2M1 codes [..., K] (low nibble first)."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed: expected torch.uint8, got {packed.dtype}")
    low, high = packed & 0xF, packed >> 4
    return torch.stack((low, high), dim=-1).flatten(-2)


# -- E8M0 scales --------------------------------------------------------------


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _floor_log2(v: torch.Tensor) -> torch.Tensor:
    """floor(log2 v) for positive finite v, exactly (subnormals included)."""
    _, exponent = torch.frexp(v)  # v = m * 2**e, 0.5 <= m < 1
    return exponent - 1


def _ceil_log2(v: torch.Tensor) -> torch.Tensor:
    """ceil(log2 v) for positive finite v, exactly."""
    mantissa, exponent = torch.frexp(v)
    return torch.where(mantissa == 0.5, exponent - 1, exponent)


def e8m0_scale_bytes(
    amax: torch.Tensor, fmt: ElementFormat, scale_rounding: ScaleRounding
) -> torch.Tensor:
    """E8M0 scale bytes (uint8) of blocks with absolute maxima ``amax``."""
    safe = torch.where((amax > 0) & torch.isfinite(amax), amax, torch.ones_like(amax))
    if scale_rounding == "floor":
        unbiased = _floor_log2(safe) - fmt.emax
    elif scale_rounding == "rceil":
        unbiased = _ceil_log2(safe / fmt.max_value)
    else:
        raise ValueError(
            f"scale_rounding: expected 'floor' or 'rceil', got {scale_rounding!r}"
        )
    biased = (unbiased.clamp(-E8M0_BIAS, E8M0_BIAS) + E8M0_BIAS).to(torch.uint8)
    biased = torch.where(amax == 0, torch.zeros_like(biased), biased)
    # Infinity has no E8M0 value: the block becomes NaN, like a NaN block.
    return torch.where(torch.isfinite(amax), biased, torch.full_like(biased, E8M0_NAN))


def e8m0_to_float(scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Decode E8M0 bytes to their power-of-two values (0xFF -> NaN)."""
    if scales.dtype != torch.uint8:
        raise TypeError(f"scales: expected torch.uint8 E8M0 bytes, got {scales.dtype}")
    exponent = scales.to(torch.int32) - E8M0_BIAS
    value = torch.ldexp(torch.ones(scales.shape, dtype=dtype, device=scales.device), exponent)
    return torch.where(scales == E8M0_NAN, torch.full_like(value, float("nan")), value)


# -- MX quantize / dequantize ---------------------------------------------------


def _check_blocks(x: torch.Tensor, block_size: int, name: str) -> None:
    if not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"block_size: expected a positive int, got {block_size!r}")
    if x.dim() == 0 or x.shape[-1] % block_size:
        raise ValueError(
            f"{name}: last dimension must be a multiple of block_size={block_size}, "
            f"got shape {tuple(x.shape)}"
        )


def quantize_mx(
    x: torch.Tensor,
    fmt: str,
    *,
    block_size: int = 32,
    scale_rounding: ScaleRounding = "floor",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x`` [..., K] to an MX format, blocks along the last dimension.

    Returns ``(data, scales)``: for "mxfp4" data is uint8 [..., K/2] (two E2M1 codes
    per byte, element 2i low); for "mxfp8_e4m3" / "mxfp8_e5m2" it is the float8 dtype
    [..., K]. ``scales`` is uint8 E8M0 [..., K/block_size]. A block containing NaN or
    infinity gets the NaN scale 0xFF.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x: expected a floating-point tensor, got {getattr(x, 'dtype', type(x))}")
    spec = element_format(fmt)
    _check_blocks(x, block_size, "x")
    work = x.to(_compute_dtype(x))
    blocks = work.reshape(*x.shape[:-1], x.shape[-1] // block_size, block_size)
    amax = blocks.abs().amax(dim=-1)
    amax = torch.where(blocks.isnan().any(dim=-1), torch.full_like(amax, float("nan")), amax)
    scales = e8m0_scale_bytes(amax, spec, scale_rounding)
    exponent = scales.to(torch.int32) - E8M0_BIAS
    scaled = torch.ldexp(blocks, -exponent.unsqueeze(-1))  # exact: power-of-two division
    scaled = scaled.clamp(-spec.max_value, spec.max_value).reshape(x.shape)
    if spec.storage == torch.uint8:
        data = pack_fp4(float_to_e2m1(scaled))
    else:
        data = scaled.to(spec.storage)
    return data, scales


def dequantize_mx(
    data: torch.Tensor,
    scales: torch.Tensor,
    fmt: str,
    *,
    block_size: int = 32,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Inverse of :func:`quantize_mx`: (data, E8M0 scales) -> ``dtype`` [..., K].

    Values are computed in float32 (exact for every MX value whose scaled
    magnitude is a normal float32) and then cast to ``dtype``; NaN scales give NaN.
    """
    spec = element_format(fmt)
    if spec.storage == torch.uint8:
        if data.dtype != torch.uint8:
            raise TypeError(f"data: mxfp4 data must be packed torch.uint8, got {data.dtype}")
        values = e2m1_to_float(unpack_fp4(data), torch.float32)
    else:
        if data.dtype != spec.storage:
            raise TypeError(f"data: {fmt} data must be {spec.storage}, got {data.dtype}")
        values = data.to(torch.float32)
    _check_blocks(values, block_size, "data")
    expected = (*values.shape[:-1], values.shape[-1] // block_size)
    if tuple(scales.shape) != expected:
        raise ValueError(
            f"scales: expected shape {expected} for data of shape {tuple(data.shape)}, "
            f"got {tuple(scales.shape)}"
        )
    blocks = values.reshape(*expected, block_size)
    out = blocks * e8m0_to_float(scales, torch.float32).unsqueeze(-1)
    return out.reshape(values.shape).to(dtype)


# -- FP8 activation quantizers ---------------------------------------------------


def quantize_fp8_per_tensor(x: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """Static per-tensor FP8: ``clamp(x / scale, ±448)`` rounded to E4M3."""
    scale_t = torch.as_tensor(scale, dtype=torch.float32, device=x.device)
    if scale_t.numel() != 1:
        raise ValueError(f"scale: expected one per-tensor scale, got shape {tuple(scale_t.shape)}")
    if not bool(scale_t.reshape(()) > 0):
        raise ValueError(f"scale: must be positive, got {float(scale_t)}")
    q = (x.to(torch.float32) / scale_t.reshape(())).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX)
    return q.to(torch.float8_e4m3fn)


GroupScaleFormat = Literal["float32", "pow2"]

# A floor on a group's amax so an all-zero group gets a finite, positive scale.
_GROUP_AMAX_FLOOR = 1e-10


def quantize_fp8_per_token_group(
    x: torch.Tensor,
    group_size: int = 128,
    *,
    scale_format: GroupScaleFormat = "float32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic FP8 E4M3 with one scale per ``group_size`` elements of each row.

    ``scale = amax / 448`` (``scale_format="float32"``) or that rounded up to a power
    of two (``"pow2"``, what UE8M0 scale hardware needs). Groups start at element 0;
    when K is not a multiple of ``group_size`` the last group is shorter, which is
    what a kernel computes on the row zero-padded to whole groups (zeros never raise a
    group's maximum). Returns (fp8 [..., K], float32 scales [..., ceil(K/group_size)]).
    """
    if not isinstance(group_size, int) or group_size <= 0:
        raise ValueError(f"group_size: expected a positive int, got {group_size!r}")
    if scale_format not in ("float32", "pow2"):
        raise ValueError(f"scale_format: expected 'float32' or 'pow2', got {scale_format!r}")
    k = x.shape[-1]
    padded = _pad_to_groups(x.to(torch.float32), group_size)
    groups = padded.reshape(*x.shape[:-1], padded.shape[-1] // group_size, group_size)
    amax = groups.abs().amax(dim=-1).clamp_min(_GROUP_AMAX_FLOOR)
    scale = amax / FP8_E4M3_MAX
    if scale_format == "pow2":
        scale = torch.ldexp(torch.ones_like(scale), _ceil_log2(scale))
    q = (groups / scale.unsqueeze(-1)).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX)
    return q.reshape(padded.shape)[..., :k].to(torch.float8_e4m3fn), scale


def _pad_to_groups(x: torch.Tensor, group_size: int) -> torch.Tensor:
    missing = -x.shape[-1] % group_size
    return torch.nn.functional.pad(x, (0, missing)) if missing else x


def dequantize_fp8_per_token_group(
    q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32,
    *, group_size: int = 128,
) -> torch.Tensor:
    """Inverse of :func:`quantize_fp8_per_token_group` (same ``group_size``)."""
    if not isinstance(group_size, int) or group_size <= 0:
        raise ValueError(f"group_size: expected a positive int, got {group_size!r}")
    k = q.shape[-1]
    expected = (*q.shape[:-1], -(-k // group_size))
    if tuple(scales.shape) != expected:
        raise ValueError(f"scales: expected shape {expected} for {k} elements in groups of "
                         f"{group_size}, got {tuple(scales.shape)}")
    padded = _pad_to_groups(q.to(torch.float32), group_size)
    groups = padded.reshape(*scales.shape, group_size)
    return (groups * scales.unsqueeze(-1)).reshape(padded.shape)[..., :k].to(dtype)


def quantize_mxfp8(x: torch.Tensor, scale_rounding: ScaleRounding = "floor"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic MXFP8 activations: E4M3 with an E8M0 scale per 32 elements.

    ``scale_rounding`` "floor" is the OCP rule; "rceil" (scales rounded up, never
    clipping) is what NVIDIA's and AMD's hardware quantizers compute.
    """
    return quantize_mx(x, "mxfp8_e4m3", scale_rounding=scale_rounding)


def fake_quantize_activation(
    x: torch.Tensor,
    activation_format: str,
    static_scale: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Quantize then dequantize ``x`` as a GEMM input of ``activation_format``.

    Returns float32 values that are exactly what a backend computing with that
    format feeds its tensor cores (times the scales). "bf16" returns ``x`` unchanged.
    """
    fmt = ActivationFormat.parse(activation_format, "activation_format")
    if fmt is ActivationFormat.BF16:
        return x
    if fmt is ActivationFormat.FP8_STATIC:
        if static_scale is None:
            raise ValueError("static_scale: required for activation_format='fp8_static'")
        scale = torch.as_tensor(static_scale, dtype=torch.float32, device=x.device).reshape(())
        return quantize_fp8_per_tensor(x, scale).to(torch.float32) * scale
    if fmt is ActivationFormat.FP8_DYNAMIC_1X128:
        q, s = quantize_fp8_per_token_group(x, 128)
        return dequantize_fp8_per_token_group(q, s)
    if fmt is ActivationFormat.FP8_DYNAMIC_1X128_POW2:
        q, s = quantize_fp8_per_token_group(x, 128, scale_format="pow2")
        return dequantize_fp8_per_token_group(q, s)
    rounding = "rceil" if fmt is ActivationFormat.MXFP8_DYNAMIC_RCEIL else "floor"
    data, scales = quantize_mxfp8(x, rounding)
    return dequantize_mx(data, scales, "mxfp8_e4m3")
