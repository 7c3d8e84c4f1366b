"""Expert weights in the checkpoint layout: the container, its validation, padding and
random generation.

The checkpoint layout (what :meth:`mxmoe.FusedMoE.load_weights` takes and what the
reference reads), for ``E`` local experts, hidden size ``H`` and intermediate ``I``:

=================  ==========================================  =========================
tensor             MXFP4                                       MXFP8
=================  ==========================================  =========================
``w13``            uint8 [E, 2I, H/2] (two E2M1 per byte)      float8_e4m3fn [E, 2I, H]
``w13_scale``      uint8 E8M0 [E, 2I, H/32]                    same
``w2``             uint8 [E, H, I/2]                           float8_e4m3fn [E, H, I]
``w2_scale``       uint8 E8M0 [E, H, I/32]                     same
``w13_bias``       float [E, 2I] (optional)                    same
``w2_bias``        float [E, H] (optional)                     same
=================  ==========================================  =========================

w13's rows are gate/up interleaved for SWIGLUOAI and [all gates | all ups] otherwise.
``w13_input_scale`` / ``w2_input_scale`` are the static per-tensor FP8 scales of each
GEMM's input (activation_format "fp8_static" only): float32 scalars (or one per expert,
of which the largest is used, as inference engines do).
"""

from __future__ import annotations

import dataclasses

import torch

from .config import MX_BLOCK, ActivationFormat, MoEConfig, WeightFormat
from .formats import quantize_mx

__all__ = [
    "ExpertWeights", "layer_input_scale", "pad_weights", "random_weights", "validate_weights",
    "weight_layout",
]


@dataclasses.dataclass
class ExpertWeights:
    """The tensors of one layer's local experts, in the checkpoint layout above."""

    w13: torch.Tensor
    w13_scale: torch.Tensor
    w2: torch.Tensor
    w2_scale: torch.Tensor
    w13_bias: torch.Tensor | None = None
    w2_bias: torch.Tensor | None = None
    w13_input_scale: torch.Tensor | None = None
    w2_input_scale: torch.Tensor | None = None

    @property
    def num_experts(self) -> int:
        return self.w13.shape[0]

    @property
    def intermediate_size(self) -> int:
        return self.w13.shape[1] // 2

    @property
    def hidden_size(self) -> int:
        return self.w2.shape[1]

    def tensors(self) -> dict[str, torch.Tensor | None]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to(self, device: torch.device | str) -> ExpertWeights:
        return ExpertWeights(**{k: None if v is None else v.to(device)
                                for k, v in self.tensors().items()})


def layer_input_scale(scale: torch.Tensor | None) -> torch.Tensor | None:
    """A static FP8 input scale as the one float32 scalar a GEMM uses: a checkpoint with
    one scale per expert collapses to the largest, as inference engines share one scale
    per GEMM input. None stays None."""
    return None if scale is None else scale.to(torch.float32).amax()


def _expect(name: str, t: object, dtype: torch.dtype | tuple[torch.dtype, ...],
            shape: tuple[int, ...], device: torch.device | None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    dtypes = dtype if isinstance(dtype, tuple) else (dtype,)
    if t.dtype not in dtypes:
        want = " or ".join(str(d) for d in dtypes)
        raise TypeError(f"{name}: expected dtype {want}, got {t.dtype}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name}: expected shape {list(shape)}, got {list(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device}, got one on {t.device}")


_FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def weight_layout(config: MoEConfig, hidden_size: int, intermediate_size: int
                  ) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """{name: (dtype, shape)} of w13, w13_scale, w2 and w2_scale for ``config``'s local
    experts at the given (possibly padded) sizes: the table above, in one place."""
    e, h, i = config.num_local_experts, hidden_size, intermediate_size
    per_byte = config.weight_format.elements_per_byte
    wdtype = torch.uint8 if config.weight_format is WeightFormat.MXFP4 else torch.float8_e4m3fn
    return {
        "w13": (wdtype, (e, 2 * i, h // per_byte)),
        "w13_scale": (torch.uint8, (e, 2 * i, h // MX_BLOCK)),
        "w2": (wdtype, (e, h, i // per_byte)),
        "w2_scale": (torch.uint8, (e, h, i // MX_BLOCK)),
    }


def validate_weights(
    config: MoEConfig,
    weights: ExpertWeights,
    *,
    hidden_size: int | None = None,
    intermediate_size: int | None = None,
    device: torch.device | None = None,
) -> None:
    """Raise TypeError/ValueError naming the first tensor whose dtype, shape or device
    does not fit ``config`` (at the given, possibly padded, sizes)."""
    e = config.num_local_experts
    h = hidden_size or config.hidden_size
    i = intermediate_size or config.intermediate_size
    for name, (dtype, shape) in weight_layout(config, h, i).items():
        _expect(name, getattr(weights, name), dtype, shape, device)
    for name, shape in (("w13_bias", (e, 2 * i)), ("w2_bias", (e, h))):
        bias = getattr(weights, name)
        if config.has_bias and bias is None:
            raise ValueError(f"{name}: required, the config has has_bias=True")
        if not config.has_bias and bias is not None:
            raise ValueError(f"{name}: given, but the config has has_bias=False")
        if bias is not None:
            _expect(name, bias, _FLOAT_DTYPES, shape, device)
    static = config.activation_format is ActivationFormat.FP8_STATIC
    for name in ("w13_input_scale", "w2_input_scale"):
        scale = getattr(weights, name)
        if static and scale is None:
            raise ValueError(f"{name}: required for activation_format='fp8_static'")
        if not static and scale is not None:
            raise ValueError(
                f"{name}: only used with activation_format='fp8_static', "
                f"the config has {config.activation_format.value!r}"
            )
        if scale is not None:
            if not isinstance(scale, torch.Tensor) or scale.dtype != torch.float32:
                raise TypeError(f"{name}: expected a float32 tensor")
            if scale.numel() not in (1, e):
                raise ValueError(
                    f"{name}: expected 1 or {e} (one per expert) values, got {scale.numel()}"
                )
            if device is not None and scale.device != device:
                raise ValueError(f"{name}: expected a tensor on {device}, got {scale.device}")
            if not bool((scale > 0).all() & scale.isfinite().all()):
                raise ValueError(f"{name}: scales must be finite and positive")


def _pad_axis(t: torch.Tensor, axis: int, size: int, fill: int | float = 0) -> torch.Tensor:
    """Append ``fill`` along ``axis`` up to ``size`` (float8 pads with zero bytes)."""
    missing = size - t.shape[axis]
    if missing == 0:
        return t
    raw = t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t
    shape = list(raw.shape)
    shape[axis] = missing
    pad = torch.full(shape, fill, dtype=raw.dtype, device=t.device)
    return torch.cat([raw, pad], dim=axis).view(t.dtype)


def _pad_gate_up(t: torch.Tensor, intermediate: int, interleaved: bool,
                 fill: int | float = 0) -> torch.Tensor:
    """Pad w13-style rows [E, 2I, ...] to [E, 2*intermediate, ...] keeping the layout:
    whole (gate, up) pairs appended when interleaved, each half grown otherwise."""
    if interleaved:
        return _pad_axis(t, 1, 2 * intermediate, fill)
    gate, up = t.chunk(2, dim=1)
    return torch.cat([_pad_axis(gate, 1, intermediate, fill),
                      _pad_axis(up, 1, intermediate, fill)], dim=1)


# Padded blocks get scale 1.0 (byte 127) and zero elements: they contribute exactly 0.
_PAD_SCALE = 127


def pad_weights(config: MoEConfig, weights: ExpertWeights, hidden_size: int,
                intermediate_size: int) -> ExpertWeights:
    """Zero-pad checkpoint tensors to a backend's (hidden, intermediate) sizes.

    Padded weight elements are 0, so padded intermediate channels produce exactly 0
    after every supported activation (act(0) * ... = 0) and padded hidden columns and
    rows contribute nothing; the layer slices outputs back.
    """
    if (hidden_size, intermediate_size) == (config.hidden_size, config.intermediate_size):
        return weights
    per_byte = config.weight_format.elements_per_byte
    inter = config.activation.interleaved
    h, i = hidden_size, intermediate_size
    w13 = _pad_axis(_pad_gate_up(weights.w13, i, inter), 2, h // per_byte)
    w13_scale = _pad_axis(_pad_gate_up(weights.w13_scale, i, inter, _PAD_SCALE), 2,
                          h // MX_BLOCK, _PAD_SCALE)
    w2 = _pad_axis(_pad_axis(weights.w2, 1, h), 2, i // per_byte)
    w2_scale = _pad_axis(_pad_axis(weights.w2_scale, 1, h, _PAD_SCALE), 2, i // MX_BLOCK,
                         _PAD_SCALE)
    w13_bias = None if weights.w13_bias is None else _pad_gate_up(weights.w13_bias, i, inter)
    w2_bias = None if weights.w2_bias is None else _pad_axis(weights.w2_bias, 1, h)
    return dataclasses.replace(weights, w13=w13, w13_scale=w13_scale, w2=w2, w2_scale=w2_scale,
                               w13_bias=w13_bias, w2_bias=w2_bias)


def random_weights(
    config: MoEConfig,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    weight_std: float | None = None,
) -> ExpertWeights:
    """Random checkpoint-layout weights for ``config`` (never zeros).

    Values are drawn N(0, std) with std = 1/sqrt(fan_in) by default, so a layer's
    output stays O(1) for O(1) inputs, then quantized with the OCP floor rule. Biases
    are N(0, 0.1) in the config's dtype; static FP8 input scales are set from a
    plausible activation range.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    e, h, i = config.num_local_experts, config.hidden_size, config.intermediate_size
    fmt = config.weight_format.mx_name

    def quantized(rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
        std = weight_std if weight_std is not None else cols ** -0.5
        w = torch.randn(e, rows, cols, generator=gen) * std
        data, scales = quantize_mx(w, fmt)
        return data.to(device), scales.to(device)

    w13, w13_scale = quantized(2 * i, h)
    w2, w2_scale = quantized(h, i)
    weights = ExpertWeights(w13, w13_scale, w2, w2_scale)
    if config.has_bias:
        weights.w13_bias = (torch.randn(e, 2 * i, generator=gen) * 0.1).to(config.dtype).to(device)
        weights.w2_bias = (torch.randn(e, h, generator=gen) * 0.1).to(config.dtype).to(device)
    if config.activation_format is ActivationFormat.FP8_STATIC:
        # inputs ~N(0,1): |x| rarely exceeds 5; scale maps that range onto E4M3's 448
        weights.w13_input_scale = torch.tensor(5.0 / 448, device=device)
        weights.w2_input_scale = torch.tensor(8.0 / 448, device=device)
    return weights
