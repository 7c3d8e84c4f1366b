"""Checkpoint-layout weights: validation, padding that keeps the layer's function,
random generation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mxmoe import ExpertWeights, MoEConfig, random_weights, reference_moe, relative_error
from mxmoe.formats import dequantize_mx
from mxmoe.weights import pad_weights, validate_weights


def make(**changes: object) -> MoEConfig:
    fields = dict(num_experts=4, top_k=2, hidden_size=96, intermediate_size=160,
                  dtype=torch.float32)
    return MoEConfig(**{**fields, **changes})


SCHEMES = [
    dict(weight_format="mxfp4"),
    dict(weight_format="mxfp8"),
    dict(weight_format="mxfp4", has_bias=True),
    dict(weight_format="mxfp8", has_bias=True, activation_format="fp8_static", dtype="bf16"),
]


# -- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: "-".join(map(str, s.values())))
def test_random_weights_validate(scheme: dict) -> None:
    cfg = make(**scheme)
    weights = random_weights(cfg, seed=0)
    validate_weights(cfg, weights)
    validate_weights(cfg, weights, device=torch.device("cpu"))
    per_byte = 2 if cfg.weight_format.value == "mxfp4" else 1
    assert weights.w13.shape == (4, 320, 96 // per_byte)
    assert weights.w2.shape == (4, 96, 160 // per_byte)
    assert weights.w13_scale.shape == (4, 320, 3) and weights.w2_scale.shape == (4, 96, 5)
    assert (weights.num_experts, weights.hidden_size, weights.intermediate_size) == (4, 96, 160)


FIELDS = ["w13", "w13_scale", "w2", "w2_scale", "w13_bias", "w2_bias"]

# fault -> (how to spoil a tensor, the error, how the message continues after "<field>: ")
FAULTS = {
    "dtype": (lambda t: t.to(torch.float64), TypeError, "expected dtype"),
    "shape": (lambda t: t[..., :-1], ValueError, "expected shape"),
    "device": (lambda t: t.to("meta"), ValueError, "expected a tensor on cpu, got one on meta"),
    "type": (lambda t: t.tolist(), TypeError, "expected a torch.Tensor, got list"),
}


@pytest.mark.parametrize("weight_format", ["mxfp4", "mxfp8"])
@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("field", FIELDS)
def test_validation_names_the_faulty_tensor(field: str, fault: str, weight_format: str) -> None:
    cfg = make(weight_format=weight_format, has_bias=True)
    weights = random_weights(cfg)
    spoil, error, message = FAULTS[fault]
    bad = dataclasses.replace(weights, **{field: spoil(getattr(weights, field))})
    if fault == "device":
        validate_weights(cfg, bad)  # no device asked for: any device will do
    with pytest.raises(error, match=rf"^{field}: {message}"):
        validate_weights(cfg, bad, device=torch.device("cpu"))


def test_mxfp8_weights_must_be_e4m3() -> None:
    cfg = make(weight_format="mxfp8")
    weights = random_weights(cfg)
    bad = dataclasses.replace(weights, w13=weights.w13.view(torch.uint8))
    with pytest.raises(TypeError, match="^w13: expected dtype torch.float8_e4m3fn, got torch.uint8"):
        validate_weights(cfg, bad)
    e5m2 = dataclasses.replace(weights, w2=weights.w2.to(torch.float8_e5m2))
    with pytest.raises(TypeError, match="^w2: expected dtype torch.float8_e4m3fn"):
        validate_weights(cfg, e5m2)


def test_validation_checks_bias_presence() -> None:
    with_bias, without = make(has_bias=True), make()
    weights = random_weights(with_bias)
    for field in ("w13_bias", "w2_bias"):
        missing = dataclasses.replace(weights, **{field: None})
        with pytest.raises(ValueError, match=rf"^{field}: required, the config has has_bias=True"):
            validate_weights(with_bias, missing)
    with pytest.raises(ValueError, match="^w13_bias: given, but the config has has_bias=False"):
        validate_weights(without, weights)


def test_validation_checks_static_input_scales() -> None:
    static = make(activation_format="fp8_static", dtype="bf16")
    weights = random_weights(static)
    assert weights.w13_input_scale is not None and weights.w2_input_scale is not None
    for field in ("w13_input_scale", "w2_input_scale"):
        with pytest.raises(ValueError, match=rf"^{field}: required for activation_format='fp8_static'"):
            validate_weights(static, dataclasses.replace(weights, **{field: None}))
        cases = [
            (torch.tensor(0.1, dtype=torch.float64), TypeError, "expected a float32 tensor"),
            (0.1, TypeError, "expected a float32 tensor"),
            (torch.ones(3), ValueError, "expected 1 or 4 .* got 3"),
            (torch.tensor([0.1, 0.0, 0.1, 0.1]), ValueError, "scales must be finite and positive"),
            (torch.tensor(float("inf")), ValueError, "scales must be finite and positive"),
            (torch.tensor(-1.0), ValueError, "scales must be finite and positive"),
            (torch.tensor(float("nan")), ValueError, "scales must be finite and positive"),
        ]
        for value, error, message in cases:
            with pytest.raises(error, match=rf"^{field}: {message}"):
                validate_weights(static, dataclasses.replace(weights, **{field: value}))
        per_expert = dataclasses.replace(weights, **{field: torch.full((4,), 0.01)})
        validate_weights(static, per_expert)
        with pytest.raises(ValueError, match=rf"^{field}: expected a tensor on cpu"):
            validate_weights(static, dataclasses.replace(weights, **{field: torch.ones(1, device="meta")}),
                             device=torch.device("cpu"))
    bf16 = make(dtype="bf16")
    with pytest.raises(ValueError, match="^w13_input_scale: only used with activation_format='fp8_static'"):
        validate_weights(bf16, dataclasses.replace(random_weights(bf16), w13_input_scale=torch.tensor(1.0)))


def test_validation_at_padded_sizes_and_expert_parallel() -> None:
    cfg = make()
    padded = pad_weights(cfg, random_weights(cfg), 128, 192)
    validate_weights(cfg, padded, hidden_size=128, intermediate_size=192)
    with pytest.raises(ValueError, match=r"^w13: expected shape \[4, 320, 48\]"):
        validate_weights(cfg, padded)
    ranked = cfg.with_expert_parallel(2, 1)
    local = random_weights(ranked)
    assert local.num_experts == 2
    validate_weights(ranked, local)
    with pytest.raises(ValueError, match=r"^w13: expected shape \[2,"):
        validate_weights(ranked, random_weights(cfg))


# -- padding -------------------------------------------------------------------------------


PAD_CASES = [
    dict(activation="swigluoai", has_bias=True),  # interleaved rows
    dict(activation="silu", has_bias=True),  # halves
    dict(activation="swigluoai_uninterleave"),
    dict(activation="swiglustep", weight_format="mxfp8", has_bias=True),
    dict(activation="swigluoai", weight_format="mxfp8", activation_format="mxfp8_dynamic",
         dtype="bf16"),
]


@pytest.mark.parametrize("case", PAD_CASES, ids=lambda c: "-".join(map(str, c.values())))
@pytest.mark.parametrize(("hidden", "inter"), [(128, 192), (96, 192), (128, 160), (256, 320)])
def test_padding_keeps_the_layers_function(case: dict, hidden: int, inter: int) -> None:
    cfg = make(**case)
    weights = random_weights(cfg, seed=3)
    padded = pad_weights(cfg, weights, hidden, inter)
    padded_cfg = cfg.replace(hidden_size=hidden, intermediate_size=inter)
    validate_weights(padded_cfg, padded)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(7, 96, generator=gen).to(cfg.dtype)
    logits = torch.randn(7, 4, generator=gen)
    expected = reference_moe(cfg, weights, x, logits)
    x_padded = torch.nn.functional.pad(x, (0, hidden - 96))
    out = reference_moe(padded_cfg, padded, x_padded, logits)
    assert (out[:, 96:] == 0).all()
    assert relative_error(out[:, :96], expected) < 1e-12


def test_padding_layout_of_interleaved_and_halves_rows() -> None:
    """Interleaved rows gain whole (gate, up) pairs at the end; halves grow each half."""
    for activation, interleaved in (("swigluoai", True), ("silu", False)):
        cfg = make(activation=activation, has_bias=True)
        weights = random_weights(cfg, seed=5)
        padded = pad_weights(cfg, weights, 96, 192)
        bias = padded.w13_bias
        if interleaved:
            assert torch.equal(bias[:, :320], weights.w13_bias) and (bias[:, 320:] == 0).all()
            assert torch.equal(padded.w13[:, :320], weights.w13)
        else:
            assert torch.equal(bias[:, :160], weights.w13_bias[:, :160])
            assert torch.equal(bias[:, 192:352], weights.w13_bias[:, 160:])
            assert (bias[:, 160:192] == 0).all() and (bias[:, 352:] == 0).all()
            assert torch.equal(padded.w13[:, 192:352], weights.w13[:, 160:])


def test_padded_blocks_are_zero_values_with_unit_scale() -> None:
    cfg = make(weight_format="mxfp4")
    padded = pad_weights(cfg, random_weights(cfg), 128, 160)
    assert (padded.w13[:, :, 48:] == 0).all() and (padded.w13_scale[:, :, 3:] == 127).all()
    assert (padded.w2[:, 96:] == 0).all() and (padded.w2_scale[:, 96:] == 127).all()
    w13 = dequantize_mx(padded.w13, padded.w13_scale, "mxfp4")
    assert (w13[:, :, 96:] == 0).all()


def test_padding_to_the_same_sizes_returns_the_weights() -> None:
    cfg = make()
    weights = random_weights(cfg)
    assert pad_weights(cfg, weights, 96, 160) is weights


# -- random weights --------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: "-".join(map(str, s.values())))
def test_random_weights_are_never_zero(scheme: dict) -> None:
    cfg = make(**scheme)
    weights = random_weights(cfg, seed=6)
    fmt = cfg.weight_format.mx_name
    for data, scales in ((weights.w13, weights.w13_scale), (weights.w2, weights.w2_scale)):
        values = dequantize_mx(data, scales, fmt)
        per_row_nonzero = (values != 0).float().mean(dim=-1)
        assert (per_row_nonzero > 0.5).all()  # every row of every expert is populated
        assert values.isfinite().all()
        assert 0.3 < float(values.std() * values.shape[-1] ** 0.5) < 3  # std ~ 1/sqrt(fan_in)
    for bias in (weights.w13_bias, weights.w2_bias):
        if cfg.has_bias:
            assert bias.dtype == cfg.dtype and (bias != 0).float().mean() > 0.9
        else:
            assert bias is None


def test_random_weights_are_reproducible_per_seed() -> None:
    cfg = make(has_bias=True)
    a, b, c = random_weights(cfg, seed=1), random_weights(cfg, seed=1), random_weights(cfg, seed=2)
    for field in FIELDS:
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.equal(a.w13, c.w13)


def test_random_weights_respect_weight_std_and_device() -> None:
    cfg = make()
    small = random_weights(cfg, weight_std=0.01)
    values = dequantize_mx(small.w2, small.w2_scale, "mxfp4")
    assert 0.005 < float(values.std()) < 0.02
    meta = random_weights(cfg, device="meta")
    assert meta.w13.device.type == "meta"


def test_expert_weights_to_moves_every_tensor() -> None:
    cfg = make(has_bias=True)
    moved = random_weights(cfg).to("meta")
    for name, tensor in moved.tensors().items():
        assert tensor is None or tensor.device.type == "meta", name
    assert isinstance(moved, ExpertWeights)


def test_layer_input_scale_collapses_per_expert_scales_to_the_largest():
    from mxmoe.weights import layer_input_scale

    assert layer_input_scale(None) is None
    collapsed = layer_input_scale(torch.tensor([0.5, 2.0, 1.0], dtype=torch.float32))
    assert collapsed.dtype == torch.float32 and collapsed.dim() == 0 and float(collapsed) == 2.0
