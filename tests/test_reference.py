"""The reference against an independent per-token float64 loop written from FACTS.md.

The loop below decodes MX weights with its own table, applies each activation as the
formula reads, and quantizes static-FP8 inputs itself; it shares no code with
``mxmoe.reference`` but the per-token dynamic FP8 quantizers (which
``test_formats.py`` checks against independent implementations).
"""

from __future__ import annotations

import math

import pytest
import torch

from mxmoe import (
    ExpertWeights,
    MoEConfig,
    random_weights,
    reference_experts,
    reference_moe,
    relative_error,
    route,
)
from mxmoe.activations import apply_activation
from mxmoe.formats import fake_quantize_activation
from mxmoe.reference import tolerance

E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                     -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], dtype=torch.float64)


def decode(data: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """MX rows [R, K(/2)] + E8M0 [R, K/32] -> float64 [R, K]."""
    if data.dtype == torch.uint8:
        raw = data.to(torch.int64)
        elements = E2M1[torch.stack([raw & 0xF, raw >> 4], dim=-1).flatten(-2)]
    else:
        elements = data.to(torch.float64)
    scale = torch.pow(2.0, scales.to(torch.float64) - 127)
    scale[scales == 255] = float("nan")
    return elements * scale.repeat_interleave(32, dim=-1)


def activation(h: torch.Tensor, cfg: MoEConfig) -> torch.Tensor:
    """FACTS.md's formulas, one activation at a time."""
    limit, alpha = cfg.swiglu_limit, cfg.swiglu_alpha
    inter = h.shape[-1] // 2
    name = cfg.activation.value
    if name == "swigluoai":
        gate, up = h[0::2], h[1::2]
    else:
        gate, up = h[:inter], h[inter:]
    silu = gate / (1 + torch.exp(-gate))
    if name == "silu":
        return silu * up
    if limit is not None:
        up = up.clamp(-limit, limit)
    if name == "swiglustep":
        return (silu.clamp(max=limit) if limit is not None else silu) * up
    beta = 1.0 if name == "swigluoai" else cfg.swiglu_beta
    if limit is not None:
        gate = gate.clamp(max=limit)
    return gate / (1 + torch.exp(-alpha * gate)) * (up + beta)


def quantize_input(x: torch.Tensor, cfg: MoEConfig, static_scale: torch.Tensor | None) -> torch.Tensor:
    fmt = cfg.activation_format.value
    if fmt == "bf16":
        return x.to(torch.float64)
    if fmt == "fp8_static":
        s = static_scale.float().max()  # one scale per GEMM: the largest of the experts'
        q = (x.float() / s).clamp(-448, 448).to(torch.float8_e4m3fn)
        return (q.float() * s).to(torch.float64)
    return fake_quantize_activation(x.unsqueeze(0), fmt)[0].to(torch.float64)


def per_token_loop(cfg: MoEConfig, w: ExpertWeights, x: torch.Tensor, topk_weights: torch.Tensor,
                   topk_ids: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(x.shape[0], cfg.hidden_size, dtype=torch.float64)
    for t in range(x.shape[0]):
        for slot in range(cfg.top_k):
            expert = int(topk_ids[t, slot])
            local = expert if cfg.expert_map is None else cfg.expert_map[expert]
            if local < 0:
                continue
            weight = float(topk_weights[t, slot])
            xt = x[t].to(cfg.dtype)
            if cfg.apply_router_weight_on_input:
                xt = (xt.to(torch.float64) * weight).to(cfg.dtype)
            h = decode(w.w13[local], w.w13_scale[local]) @ quantize_input(xt, cfg, w.w13_input_scale)
            if w.w13_bias is not None:
                h = h + w.w13_bias[local].to(torch.float64)
            a = quantize_input(activation(h, cfg), cfg, w.w2_input_scale)
            y = decode(w.w2[local], w.w2_scale[local]) @ a
            if w.w2_bias is not None:
                y = y + w.w2_bias[local].to(torch.float64)
            out[t] += y if cfg.apply_router_weight_on_input else weight * y
    return out


def make(**changes: object) -> MoEConfig:
    fields = dict(num_experts=4, top_k=2, hidden_size=64, intermediate_size=64, dtype=torch.float32)
    return MoEConfig(**{**fields, **changes})


def inputs(cfg: MoEConfig, m: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, cfg.hidden_size, generator=gen).to(cfg.dtype)
    logits = torch.randn(m, cfg.num_experts, generator=gen)
    return x, logits


def compare(cfg: MoEConfig, weights: ExpertWeights, m: int = 9, seed: int = 0) -> torch.Tensor:
    x, logits = inputs(cfg, m, seed)
    topk_weights, topk_ids = route(logits, cfg)
    ref = reference_experts(cfg, weights, x, topk_weights, topk_ids)
    assert ref.dtype == torch.float64 and ref.shape == (m, cfg.hidden_size)
    expected = per_token_loop(cfg, weights, x, topk_weights, topk_ids)
    assert expected.abs().max() > 0
    assert relative_error(ref, expected) < 1e-10
    assert torch.equal(reference_moe(cfg, weights, x, logits), ref)
    return ref


ACTIVATIONS = [
    dict(activation="silu"),
    dict(activation="swigluoai"),
    dict(activation="swigluoai_uninterleave", swiglu_beta=0.5, swiglu_alpha=1.3),
    dict(activation="swiglustep", swiglu_limit=1.5),
    dict(activation="swigluoai", swiglu_limit=None),
]


@pytest.mark.parametrize("has_bias", [False, True])
@pytest.mark.parametrize("weight_format", ["mxfp4", "mxfp8"])
@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda a: "-".join(map(str, a.values())))
def test_reference_matches_the_per_token_loop(act: dict, weight_format: str,
                                              has_bias: bool) -> None:
    cfg = make(weight_format=weight_format, has_bias=has_bias, **act)
    compare(cfg, random_weights(cfg, seed=1, weight_std=0.5))


@pytest.mark.parametrize(("activation_format", "size"), [
    ("fp8_static", 64), ("mxfp8_dynamic", 64), ("fp8_dynamic_1x128", 128),
])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reference_with_quantized_activations(activation_format: str, size: int,
                                              dtype: torch.dtype) -> None:
    cfg = make(activation="swigluoai", has_bias=True, activation_format=activation_format,
               dtype=dtype, hidden_size=size, intermediate_size=size)
    weights = random_weights(cfg, seed=2, weight_std=0.3)
    if activation_format == "fp8_static":
        # one scale per expert for GEMM1 (the largest is used) and a different one for GEMM2
        weights.w13_input_scale = torch.tensor([0.004, 0.009, 0.006, 0.001])
        weights.w2_input_scale = torch.tensor(0.02)
    ref = compare(cfg, weights)
    unscaled = ExpertWeights(**{**weights.tensors(), "w13_input_scale": None,
                                "w2_input_scale": None})
    x, logits = inputs(cfg, 9, 0)
    unquantized = reference_moe(cfg.replace(activation_format="bf16"), unscaled, x, logits)
    assert relative_error(ref, unquantized) > 1e-3  # the activations really were quantized


def test_static_scales_are_used_where_they_belong() -> None:
    """A GEMM1 input scale too small clips the input; GEMM2's does not touch GEMM1."""
    cfg = make(activation_format="fp8_static", dtype=torch.bfloat16)
    weights = random_weights(cfg, seed=3)
    x, logits = inputs(cfg, 5, 1)
    base = reference_moe(cfg, weights, x, logits)
    weights.w13_input_scale = torch.tensor(1e-4)  # |x| / 1e-4 >> 448: saturates
    clipped = reference_moe(cfg, weights, x, logits)
    assert relative_error(clipped, base) > 0.1
    assert torch.equal(clipped, reference_experts(cfg, weights, x, *route(logits, cfg)))


def test_router_weight_on_input() -> None:
    # "default" routing: softmax over all experts, so the top-1 weight is not 1
    cfg = make(top_k=1, apply_router_weight_on_input=True, activation="swigluoai", has_bias=True,
               routing="default")
    weights = random_weights(cfg, seed=4, weight_std=0.5)
    ref = compare(cfg, weights)
    # with a non-linear activation, weighting the input differs from weighting the output
    x, logits = inputs(cfg, 9, 0)
    on_output = reference_moe(cfg.replace(apply_router_weight_on_input=False), weights, x, logits)
    assert relative_error(ref, on_output) > 1e-3


@pytest.mark.parametrize("has_bias", [False, True])
def test_expert_map_partial_outputs_sum_to_the_full_layer(has_bias: bool) -> None:
    full = make(num_experts=8, top_k=3, activation="swigluoai", has_bias=has_bias)
    weights = random_weights(full, seed=5, weight_std=0.5)
    x, logits = inputs(full, 16, 2)
    topk_weights, topk_ids = route(logits, full)
    expected = reference_experts(full, weights, x, topk_weights, topk_ids)
    total = torch.zeros_like(expected)
    for rank in range(2):
        cfg = full.with_expert_parallel(2, rank)
        local = [g for g, v in enumerate(cfg.expert_map) if v >= 0]
        rank_weights = ExpertWeights(**{
            k: None if v is None else v[local] for k, v in weights.tensors().items()
        })
        partial = reference_experts(cfg, rank_weights, x, topk_weights, topk_ids)
        loop = per_token_loop(cfg, rank_weights, x, topk_weights, topk_ids)
        assert relative_error(partial, loop) < 1e-10
        remote_only = ~torch.isin(topk_ids, torch.tensor(local)).any(dim=1)
        assert (partial[remote_only] == 0).all()
        assert (partial[~remote_only].abs().sum(dim=1) > 0).all()
        total += partial
    assert relative_error(total, expected) < 1e-12


def test_non_local_experts_contribute_nothing() -> None:
    cfg = make(num_experts=4, top_k=1, expert_map=(-1, 0, -1, -1))
    weights = random_weights(cfg, seed=6)
    x, _ = inputs(cfg, 4, 3)
    ids = torch.tensor([[0], [1], [2], [3]], dtype=torch.int32)
    out = reference_experts(cfg, weights, x, torch.ones(4, 1), ids)
    assert (out[[0, 2, 3]] == 0).all() and (out[1] != 0).any()


@pytest.mark.parametrize("act", ["silu", "swigluoai"])
def test_nan_w13_scale_makes_exactly_the_tokens_of_that_expert_nan(act: str) -> None:
    cfg = make(num_experts=6, top_k=2, activation=act)
    weights = random_weights(cfg, seed=7)
    weights.w13_scale[2, 5, 1] = 0xFF
    x, logits = inputs(cfg, 40, 4)
    out = reference_moe(cfg, weights, x, logits)
    uses_expert_2 = (route(logits, cfg)[1] == 2).any(dim=1)
    assert uses_expert_2.any() and (~uses_expert_2).any()
    assert out[uses_expert_2].isnan().all()
    assert out[~uses_expert_2].isfinite().all()


def test_nan_w2_scale_makes_exactly_those_outputs_nan() -> None:
    cfg = make(num_experts=6, top_k=2)
    weights = random_weights(cfg, seed=8)
    weights.w2_scale[4, 10, 0] = 0xFF  # expert 4, output column 10, first block of I
    x, logits = inputs(cfg, 40, 5)
    out = reference_moe(cfg, weights, x, logits)
    uses_expert_4 = (route(logits, cfg)[1] == 4).any(dim=1)
    expected = torch.zeros_like(out, dtype=torch.bool)
    expected[uses_expert_4, 10] = True
    assert uses_expert_4.any()
    assert torch.equal(out.isnan(), expected)


def test_nan_scale_on_a_remote_expert_is_invisible() -> None:
    cfg = make(num_experts=4, top_k=2).with_expert_parallel(2, 0)
    weights = random_weights(cfg, seed=9)
    x, logits = inputs(cfg, 30, 6)
    clean = reference_moe(cfg, weights, x, logits)
    weights.w13_scale[1, 0, 0] = 0xFF  # local expert 1 = global expert 1
    out = reference_moe(cfg, weights, x, logits)
    uses = (route(logits, cfg)[1] == 1).any(dim=1)
    assert out[uses].isnan().all() and torch.equal(out[~uses], clean[~uses])


# -- activations by hand -------------------------------------------------------------------


def _act(activation: str, gate: float, up: float, **fields: object) -> float:
    cfg = make(activation=activation, intermediate_size=32, **fields)
    if activation == "swigluoai":
        h = torch.tensor([gate, up] * 32, dtype=torch.float64)
    else:
        h = torch.tensor([gate] * 32 + [up] * 32, dtype=torch.float64)
    out = apply_activation(h, cfg)
    assert out.shape == (32,)
    return float(out[0])


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def test_swiglustep_clamps_the_silu_output_not_the_gate() -> None:
    # silu(8) = 7.997 > 7: clamped to 7; up 10 clamps to 7. Clamping the gate first
    # would give silu(7) * 7 = 48.96.
    assert _act("swiglustep", 8.0, 10.0) == 49.0
    assert _act("swiglustep", 3.0, -9.0) == pytest.approx(3 * sigmoid(3) * -7.0, rel=1e-15)
    assert _act("swiglustep", 8.0, 2.0, swiglu_limit=None) == pytest.approx(8 * sigmoid(8) * 2)


def test_swigluoai_clamps_the_gate_and_adds_one_to_up() -> None:
    expected = 7.0 * sigmoid(1.702 * 7.0) * (7.0 + 1)  # gate 9 -> 7, up 8 -> 7
    assert _act("swigluoai", 9.0, 8.0) == pytest.approx(expected, rel=1e-15)
    expected = -2.0 * sigmoid(1.702 * -2.0) * (-7.0 + 1)  # gate below -L is not clamped
    assert _act("swigluoai", -2.0, -50.0) == pytest.approx(expected, rel=1e-15)
    expected = -9.0 * sigmoid(1.702 * -9.0) * (0.5 + 1)
    assert _act("swigluoai", -9.0, 0.5) == pytest.approx(expected, rel=1e-15)


def test_swigluoai_uninterleave_uses_beta_and_halves() -> None:
    expected = 2.0 * sigmoid(1.0 * 2.0) * (3.0 + 0.0)  # alpha 1, beta 0: clamped silu
    assert _act("swigluoai_uninterleave", 2.0, 3.0, swiglu_alpha=1.0,
                swiglu_beta=0.0) == pytest.approx(expected, rel=1e-15)
    expected = 7.0 * sigmoid(1.702 * 7.0) * (1.0 + 1.0)
    assert _act("swigluoai_uninterleave", 12.0, 1.0) == pytest.approx(expected, rel=1e-15)


def test_silu_is_unclamped() -> None:
    assert _act("silu", 20.0, 30.0) == pytest.approx(20 * sigmoid(20) * 30, rel=1e-15)


def test_interleaved_and_halves_layouts_pair_different_rows() -> None:
    h = torch.arange(64, dtype=torch.float64) / 16 - 2
    inter = apply_activation(h, make(activation="swigluoai", intermediate_size=32))
    halves = apply_activation(h, make(activation="swigluoai_uninterleave",
                                      intermediate_size=32))
    gate, up = h[0::2].clamp(max=7), h[1::2].clamp(-7, 7)
    torch.testing.assert_close(inter, gate * torch.sigmoid(1.702 * gate) * (up + 1))
    gate, up = h[:32].clamp(max=7), h[32:].clamp(-7, 7)
    torch.testing.assert_close(halves, gate * torch.sigmoid(1.702 * gate) * (up + 1))


# -- error measure and tolerances -------------------------------------------------------


def test_relative_error() -> None:
    ref = torch.tensor([3.0, 4.0], dtype=torch.float64)
    assert relative_error(ref, ref) == 0.0
    assert relative_error(torch.tensor([3.0, 4.5], dtype=torch.bfloat16), ref) == pytest.approx(0.1)
    assert math.isnan(relative_error(torch.tensor([float("nan"), 4.0]), ref))
    assert relative_error(torch.zeros(2), torch.zeros(2)) == 0.0


def test_tolerances_follow_the_arithmetic() -> None:
    assert tolerance(make()) == 1e-4
    assert tolerance(make(dtype="fp16")) == 5e-3
    assert tolerance(make(dtype="bf16")) == 1e-2
    assert tolerance(make(dtype="bf16", activation_format="mxfp8_dynamic")) == 3e-2
