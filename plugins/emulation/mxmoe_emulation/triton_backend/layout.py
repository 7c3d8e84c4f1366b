"""The ``triton`` backend's weight layout and its conversion from the checkpoint layout.

The kernels read each weight tile as rows of an output dimension N by steps of the
reduction dimension K. The MX bytes stay packed (two E2M1 codes a byte, or one E4M3
byte), never widened to BF16. What conversion changes:

* w13's gate and up rows become halves (all gate rows, then all up rows; gpt-oss
  interleaves them), in the weights, their scales and their biases, so a GEMM1 tile's
  gate rows and up rows are two runs of whole 16-row groups.
* MXFP4 codes are regrouped into *fragment words* (:func:`fragment_words`): one 32-bit
  word holds the eight codes that one thread of a warp needs for one 16 x 16 piece of
  a tensor-core operand: rows r and r + 8 of a 16-row group, columns 2c, 2c + 1,
  2c + 8 and 2c + 9 of a 16-column step of K (lane 4r + c, the register order of the
  A operand of ``mma``/``wgmma``). Within a word each code's four bits sit where a
  shift or rotate and one mask put them straight into the bit positions of a bf16
  (:data:`FRAGMENT_BITS`), so decoding two weights costs two or three integer
  instructions and one packed multiply, and a thread loads its words for 64 columns
  of K as one 16-byte vector. The words of a 16-row group and 64 columns (4 steps of
  16) are 128 consecutive words, ordered (r, c, step); groups of 64 columns follow
  each other along K, and 16-row groups along N. The tensor keeps the checkpoint's
  uint8 shape [E, N, K/2] (same bytes, permuted); it needs N and K to be multiples of
  16 and 64 (the probe asks the layer to pad H and I to 64).
* MXFP8 values are viewed as ``uint8`` (same bytes, K contiguous);
* scale rows are padded with zeros to a multiple of 16 bytes (``[E, N, K/32]`` ->
  ``[E, N, ceil16(K/32)]``), so a tile's scales are aligned vector loads;
* biases become float32 (an exact widening), added in the GEMM epilogues.

The scales are checked once here: a scale byte of 0xFF (NaN), or one whose weights
the compute type cannot hold (the decode forms ``2**(s - 127)``; for fp16
activations the dequantized weight must fit float16), is rejected with a ValueError
rather than computed into inf or NaN.
"""

from __future__ import annotations

import dataclasses

import torch
from mxmoe import ExpertWeights, MoEConfig, WeightFormat

__all__ = ["FRAGMENT_BITS", "LayerMath", "TritonWeights", "convert", "fragment_words",
           "max_scale_byte", "scale_bias"]

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


@dataclasses.dataclass
class TritonWeights:
    """What ``convert_weights`` returns and ``apply`` reads (see the module docstring)."""

    w13: torch.Tensor  # uint8 [E, 2I, H/2] fragment words (MXFP4) or [E, 2I, H] (MXFP8), halves
    w13_scale: torch.Tensor  # uint8 [E, 2I, ceil16(H/32)]
    w2: torch.Tensor  # uint8 [E, H, I/2] fragment words or [E, H, I]
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


#: Where a fragment word keeps each code's bits: FRAGMENT_BITS[i][e][j] is the word bit
#: holding bit j (0: mantissa, 1-2: exponent, 3: sign) of element e of the word's output
#: i. The decode (kernels.py) builds output i, a pair of bf16 bit patterns of value *
#: 2**-126 with magnitude bits at 6-8 (+16 e) and the sign at 15 (+16 e), as
#: ``w & MASK``, ``rotl(w, 10) & MASK``, ``rotl(w, 13) & MASK`` and
#: ``((w & 0x001B001B) * 0x1084) & MASK`` with ``MASK = 0x81C081C0`` (the last: three
#: shifted copies of eight bits that never overlap, so the product has no carries).
#: Outputs 0-3 are rows (r, r + 8, r, r + 8) and columns (2c, 2c, 2c + 8, 2c + 8) of
#: the 16 x 16 piece, element e the column after.
_BF16_BITS = (6, 7, 8, 15)
FRAGMENT_BITS: tuple[tuple[tuple[int, ...], ...], ...] = (
    tuple(tuple(b + 16 * e for b in _BF16_BITS) for e in range(2)),
    tuple(tuple((b + 16 * e - 10) % 32 for b in _BF16_BITS) for e in range(2)),
    tuple(tuple((b + 16 * e - 13) % 32 for b in _BF16_BITS) for e in range(2)),
    # the multiply: bits 0, 1, 16 and 17 move up by 7, 4 and 20 by 2, 3 and 19 by 12
    ((4, 0, 1, 3), (20, 16, 17, 19)),
)


def fragment_words(packed: torch.Tensor) -> torch.Tensor:
    """Checkpoint-packed E2M1 bytes [E, N, K/2] (element 2j in the low nibble) -> the
    fragment-word layout of the module docstring, as uint8 of the same shape. N must
    be a multiple of 16 and K of 64. One expert at a time, so the unpacked codes never
    take more than one expert's worth of memory."""
    experts, n, half_k = packed.shape
    if n % 16 or half_k % 32:
        raise ValueError(f"packed: expected N a multiple of 16 and K of 64, got N={n}, "
                         f"K={2 * half_k}")
    out = torch.empty_like(packed)
    words = out.view(experts, -1).view(torch.int32)
    for x in range(experts):
        codes = torch.stack((packed[x] & 0xF, packed[x] >> 4), dim=-1).to(torch.int32)
        # element (n, k) with n = 16 g + 8 rr + r and k = 64 q + 16 s + 8 kk + 2 c + e
        codes = codes.reshape(n // 16, 2, 8, half_k // 32, 4, 2, 4, 2)  # g rr r q s kk c e
        codes = codes.permute(0, 3, 2, 6, 4, 1, 5, 7)  # g q r c s | rr kk e
        word = torch.zeros(codes.shape[:5], dtype=torch.int32, device=packed.device)
        for rr in range(2):
            for kk in range(2):
                for e in range(2):
                    code = codes[..., rr, kk, e]
                    for j, bit in enumerate(FRAGMENT_BITS[rr + 2 * kk][e]):
                        word |= ((code >> j) & 1) << bit
        words[x] = word.flatten()
    return out


def _gate_up_halves(t: torch.Tensor | None, interleaved: bool) -> torch.Tensor | None:
    """w13 rows (or bias columns) in halves: gate rows, then up rows."""
    if t is None or not interleaved:
        return t
    return torch.cat((t[:, 0::2], t[:, 1::2]), dim=1)


def _padded_scales(scales: torch.Tensor) -> torch.Tensor:
    """Scale rows padded with zero bytes to a multiple of 16 bytes."""
    pad = -scales.shape[-1] % 16
    return torch.nn.functional.pad(scales, (0, pad)).contiguous() if pad else scales.contiguous()


def _weight_bytes(t: torch.Tensor, config: MoEConfig) -> torch.Tensor:
    if config.weight_format is WeightFormat.MXFP4:
        return fragment_words(t.contiguous())
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
    interleaved = config.activation.interleaved
    return TritonWeights(
        w13=_weight_bytes(_gate_up_halves(weights.w13, interleaved), config),
        w13_scale=_padded_scales(_gate_up_halves(weights.w13_scale, interleaved)),
        w2=_weight_bytes(weights.w2, config),
        w2_scale=_padded_scales(weights.w2_scale),
        w13_bias=_as_float32(_gate_up_halves(weights.w13_bias, interleaved)),
        w2_bias=_as_float32(weights.w2_bias),
        math=LayerMath.from_config(config),
        w13_scale_bias=scale_bias(top13),
        w2_scale_bias=scale_bias(top2),
    )
