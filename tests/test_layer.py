"""FusedMoE on an in-process backend that pads (hidden to 64, intermediate to 96 on a
layer of H=96, I=160) and computes with the reference on the padded tensors: the layer
must reproduce the reference on the unpadded weights, hand the backend exactly what the
contract says, reject misuse clearly, and add little per call."""

from __future__ import annotations

import statistics
import time

import pytest
import torch
from helpers.backends import EchoBackend, ReferenceBackend

from mxmoe import (
    BackendError,
    FusedMoE,
    MoEConfig,
    Verdict,
    hookimpl,
    random_weights,
    reference_moe,
    register_backend,
    relative_error,
    route,
    unregister_backend,
)

PADDING = Verdict.yes(1, hidden_multiple=64, intermediate_multiple=96)
# the error of rounding a float64 result to the activation dtype, with margin
ROUNDING = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 4e-3}


def make(**changes: object) -> MoEConfig:
    fields = dict(num_experts=6, top_k=2, hidden_size=96, intermediate_size=160)
    return MoEConfig(**{**fields, **changes})


def build(cfg: MoEConfig, verdict: Verdict = PADDING, seed: int = 0,
          **load: torch.Tensor) -> tuple[FusedMoE, ReferenceBackend, object]:
    backend = ReferenceBackend(verdict)
    register_backend("padded-reference", backend)
    layer = FusedMoE(cfg, device="cpu")
    weights = random_weights(cfg, seed=seed)
    layer.load_weights(**weights.tensors(), **load)
    return layer, backend, weights


def inputs(cfg: MoEConfig, m: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(m, cfg.hidden_size, generator=gen).to(cfg.dtype),
            torch.randn(m, cfg.num_experts, generator=gen))


CASES = {
    "gpt-oss-like": dict(activation="swigluoai", has_bias=True),
    "silu-mxfp8": dict(activation="silu", weight_format="mxfp8"),
    "swiglustep-fp16": dict(activation="swiglustep", swiglu_limit=2.0, dtype="fp16"),
    "uninterleave-f32": dict(activation="swigluoai_uninterleave", swiglu_beta=0.0,
                             dtype="float32", has_bias=True),
    "fp8-static": dict(activation="swigluoai", activation_format="fp8_static"),
    "mxfp8-dynamic": dict(weight_format="mxfp8", activation_format="mxfp8_dynamic"),
    "weight-on-input": dict(top_k=1, apply_router_weight_on_input=True, routing="default"),
    "default-routing": dict(routing="default", top_k=3),
    "expert-parallel": dict(expert_map=(-1, 0, -1, 1, 2, -1), has_bias=True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_matches_the_reference_on_unpadded_weights(case: str) -> None:
    cfg = make(**CASES[case])
    layer, backend, weights = build(cfg)
    assert layer.backend_name == "padded-reference"
    assert (layer.hidden_size_padded, layer.intermediate_size_padded) == (128, 192)
    x, logits = inputs(cfg, 11)
    out = layer(x, logits)
    assert out.shape == (11, 96) and out.dtype == cfg.dtype
    ref = reference_moe(cfg, weights, x, logits)
    assert ref.abs().max() > 0
    assert relative_error(out, ref) < ROUNDING[cfg.dtype]

    # what the backend was handed
    (converted,) = backend.conversions
    per_byte = 2 if cfg.weight_format.value == "mxfp4" else 1
    e = cfg.num_local_experts
    assert converted.w13.shape == (e, 384, 128 // per_byte)
    assert converted.w2.shape == (e, 128, 192 // per_byte)
    (call,) = backend.calls
    assert call.hidden_states.shape == (11, 128) and call.hidden_states.is_contiguous()
    assert call.hidden_states.dtype == cfg.dtype and (call.hidden_states[:, 96:] == 0).all()
    assert call.topk_weights.dtype == torch.float32 and call.topk_ids.dtype == torch.int32
    assert call.topk_ids.shape == (11, cfg.top_k)
    assert call.router_logits is logits
    if cfg.expert_map is None:
        assert call.expert_map is None
    else:
        assert call.expert_map.dtype == torch.int32
        assert call.expert_map.tolist() == list(cfg.expert_map)


def test_layer_without_padding_is_exact() -> None:
    cfg = make(dtype="float32", has_bias=True)
    layer, backend, weights = build(cfg, Verdict.yes(1))
    assert (layer.hidden_size_padded, layer.intermediate_size_padded) == (96, 160)
    x, logits = inputs(cfg, 5)
    assert relative_error(layer(x, logits), reference_moe(cfg, weights, x, logits)) < 1e-6
    assert backend.calls[0].hidden_states.shape == (5, 96)


def test_grouped_routing_with_a_correction_bias() -> None:
    cfg = make(num_experts=8, routing="grouped_topk", num_expert_group=4, topk_group=2,
               has_correction_bias=True, scoring_func="sigmoid", routed_scaling_factor=2.0)
    bias = torch.randn(8, generator=torch.Generator().manual_seed(3))
    layer, _, weights = build(cfg, correction_bias=bias.to(torch.bfloat16))
    x, logits = inputs(cfg, 9)
    ref = reference_moe(cfg, weights, x, logits, bias.to(torch.bfloat16).float())
    assert relative_error(layer(x, logits), ref) < ROUNDING[cfg.dtype]


def test_correction_bias_is_validated() -> None:
    grouped = make(routing="grouped_topk", num_expert_group=2, topk_group=1,
                   has_correction_bias=True)
    register_backend("padded-reference", ReferenceBackend(PADDING))
    weights = random_weights(grouped).tensors()
    for bias, error, message in [
        (None, ValueError, "^correction_bias: required"),
        (torch.zeros(5), ValueError, r"^correction_bias: expected shape \[6\], got \[5\]"),
        (torch.zeros(6, dtype=torch.int32), TypeError, "^correction_bias: expected a floating"),
        ([0.0] * 6, TypeError, "^correction_bias: expected a floating"),
    ]:
        with pytest.raises(error, match=message):
            FusedMoE(grouped, device="cpu").load_weights(**weights, correction_bias=bias)
    plain = make()
    with pytest.raises(ValueError, match="^correction_bias: given, but"):
        FusedMoE(plain, device="cpu").load_weights(**random_weights(plain).tensors(),
                                                   correction_bias=torch.zeros(6))


def test_static_input_scales_reach_the_backend() -> None:
    cfg = make(activation_format="fp8_static")
    weights = random_weights(cfg)
    backend = ReferenceBackend(PADDING)
    register_backend("padded-reference", backend)
    layer = FusedMoE(cfg, device="cpu")
    scales = dict(w13_input_scale=torch.full((6,), 0.02), w2_input_scale=torch.tensor([0.03]))
    tensors = {**weights.tensors(), **scales}
    layer.load_weights(**tensors)
    (converted,) = backend.conversions
    assert torch.equal(converted.w13_input_scale, scales["w13_input_scale"])
    assert torch.equal(converted.w2_input_scale, scales["w2_input_scale"])
    weights.w13_input_scale, weights.w2_input_scale = scales.values()
    x, logits = inputs(cfg, 6)
    assert relative_error(layer(x, logits), reference_moe(cfg, weights, x, logits)) < 4e-3


def test_internally_routing_backend_gets_logits_and_no_topk() -> None:
    cfg = make(activation="swigluoai", has_bias=True)
    verdict = Verdict.yes(1, hidden_multiple=64, intermediate_multiple=96, routes_internally=True)
    layer, backend, weights = build(cfg, verdict)
    assert layer.routes_internally
    x, logits = inputs(cfg, 7)
    out = layer(x, logits)
    (call,) = backend.calls
    assert call.topk_weights is None and call.topk_ids is None
    assert call.router_logits is logits
    assert relative_error(out, reference_moe(cfg, weights, x, logits)) < ROUNDING[cfg.dtype]


@pytest.mark.parametrize("verdict", [PADDING, Verdict.yes(1, intermediate_multiple=96)],
                         ids=["padded-hidden", "unpadded-hidden"])
def test_non_contiguous_hidden_states_are_accepted(verdict: Verdict) -> None:
    """The backend always receives a contiguous [M, H_pad] (without hidden padding the
    layer must make it so itself)."""
    cfg = make()
    layer, backend, _ = build(cfg, verdict)
    x, logits = inputs(cfg, 8)
    wide = torch.zeros(8, 2 * cfg.hidden_size, dtype=cfg.dtype)
    wide[:, ::2] = x
    strided = wide[:, ::2]
    transposed = x.t().contiguous().t()
    assert not strided.is_contiguous() and not transposed.is_contiguous()
    expected = layer(x, logits)
    assert torch.equal(layer(strided, logits), expected)
    assert torch.equal(layer(transposed, logits), expected)
    assert all(c.hidden_states.is_contiguous() for c in backend.calls)


def test_empty_batch_returns_an_empty_output_without_calling_the_backend() -> None:
    cfg = make()
    layer, backend, _ = build(cfg)
    out = layer(torch.empty(0, 96, dtype=cfg.dtype), torch.empty(0, 6))
    assert out.shape == (0, 96) and out.dtype == cfg.dtype
    assert backend.calls == []


def test_the_checkpoint_tensors_are_copied_at_load() -> None:
    cfg = make(dtype="float32")
    register_backend("padded-reference", ReferenceBackend(Verdict.yes(1)))  # no padding
    layer = FusedMoE(cfg, device="cpu")
    weights = random_weights(cfg)
    layer.load_weights(**weights.tensors())
    x, logits = inputs(cfg, 4)
    before = layer(x, logits)
    weights.w13.zero_()
    weights.w2_scale.fill_(0xFF)
    assert torch.equal(layer(x, logits), before)
    assert layer.weights is None  # the layer released its checkpoint copy


def test_the_backend_is_bound_once() -> None:
    """No per-call plugin lookup: no probe per call, and the layer keeps working after its
    backend leaves the registry."""
    cfg = make()
    layer, backend, _ = build(cfg)
    probes = len(backend.probes)
    x, logits = inputs(cfg, 3)
    first = layer(x, logits)
    unregister_backend("padded-reference")
    assert torch.equal(layer(x, logits), first)
    assert len(backend.probes) == probes and len(backend.conversions) == 1


def test_the_layer_selects_forces_and_describes_its_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = make()
    register_backend("high", ReferenceBackend(Verdict.yes(5)))
    register_backend("low", ReferenceBackend(Verdict.yes(1)))
    register_backend("never", ReferenceBackend(Verdict.no("requires an NPU")))
    assert FusedMoE(cfg, device="cpu").backend_name == "high"
    assert FusedMoE(cfg, backend="low", device="cpu").backend_name == "low"
    monkeypatch.setenv("MXMOE_BACKEND", "low")
    assert FusedMoE(cfg, device="cpu").backend_name == "low"
    with pytest.raises(BackendError, match="requires an NPU"):
        FusedMoE(cfg, backend="never", device="cpu")
    text = repr(FusedMoE(cfg, backend="high", device="cpu"))
    assert "backend='high'" in text and "device=cpu" in text and "E=6" in text


def test_no_backend_means_a_clear_error() -> None:
    with pytest.raises(BackendError, match="^no backend can run"):
        FusedMoE(make(), device="cpu")
    with pytest.raises(TypeError, match="^config: expected mxmoe.MoEConfig"):
        FusedMoE("gpt-oss-20b", device="cpu")  # type: ignore[arg-type]


def test_convert_weights_returning_none_is_an_error() -> None:
    class Forgetful(ReferenceBackend):
        @hookimpl
        def convert_weights(self, weights: object) -> None:
            return None

    register_backend("forgetful", Forgetful())
    layer = FusedMoE(make(), device="cpu")
    with pytest.raises(RuntimeError, match="^backend 'forgetful': convert_weights returned None"):
        layer.load_weights(**random_weights(make()).tensors())


# -- misuse -------------------------------------------------------------------------------------


@pytest.fixture
def loaded() -> FusedMoE:
    return build(make())[0]


def test_forward_before_load() -> None:
    register_backend("padded-reference", ReferenceBackend(PADDING))
    layer = FusedMoE(make(), device="cpu")
    x, logits = inputs(make(), 2)
    with pytest.raises(RuntimeError, match=r"^FusedMoE.forward: call load_weights\(...\) first"):
        layer(x, logits)


def test_loading_twice(loaded: FusedMoE) -> None:
    with pytest.raises(RuntimeError, match="^load_weights: weights are already loaded"):
        loaded.load_weights(**random_weights(make()).tensors())


@pytest.mark.parametrize(("shape", "logit_shape", "message"), [
    ((4, 95), (4, 6), r"^hidden_states: expected shape \[M, 96\], got \[4, 95\]"),
    ((4, 128), (4, 6), r"^hidden_states: expected shape \[M, 96\], got \[4, 128\]"),
    ((96,), (1, 6), r"^hidden_states: expected shape \[M, 96\], got \[96\]"),
    ((2, 2, 96), (4, 6), r"^hidden_states: expected shape \[M, 96\]"),
    ((4, 96), (4, 5), r"^router_logits: expected shape \[4, 6\], got \[4, 5\]"),
    ((4, 96), (3, 6), r"^router_logits: expected shape \[4, 6\], got \[3, 6\]"),
    ((4, 96), (24,), r"^router_logits: expected shape \[4, 6\], got \[24\]"),
])
def test_wrong_shapes(loaded: FusedMoE, shape: tuple, logit_shape: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        loaded(torch.zeros(shape, dtype=torch.bfloat16), torch.zeros(logit_shape))


def test_wrong_dtypes(loaded: FusedMoE) -> None:
    x, logits = inputs(make(), 4)
    with pytest.raises(TypeError, match="^hidden_states: expected dtype torch.bfloat16, got torch.float32"):
        loaded(x.float(), logits)
    with pytest.raises(TypeError, match="^router_logits: expected a floating-point tensor, got torch.int64"):
        loaded(x, logits.long())
    with pytest.raises(TypeError, match="^hidden_states and router_logits: expected torch.Tensor"):
        loaded(x.tolist(), logits)  # type: ignore[arg-type]


def test_wrong_devices(loaded: FusedMoE) -> None:
    x, logits = inputs(make(), 4)
    with pytest.raises(ValueError, match="^hidden_states and router_logits: expected tensors on cpu, "
                                         "got meta and cpu"):
        loaded(x.to("meta"), logits)
    with pytest.raises(ValueError, match="got cpu and meta"):
        loaded(x, logits.to("meta"))


FIELDS = ["w13", "w13_scale", "w2", "w2_scale", "w13_bias", "w2_bias"]


LOAD_FAULTS = [(field, fault) for field in FIELDS for fault in ("dtype", "shape", "meta")] + [
    ("w13_bias", "missing"), ("w2_bias", "missing")]


@pytest.mark.parametrize(("field", "fault"), LOAD_FAULTS)
def test_load_weights_validates_every_tensor(field: str, fault: str) -> None:
    cfg = make(has_bias=True)
    register_backend("padded-reference", ReferenceBackend(PADDING))
    layer = FusedMoE(cfg, device="cpu")
    tensors = random_weights(cfg).tensors()
    t = tensors[field]
    if fault == "dtype":
        tensors[field], error, message = t.to(torch.float64), TypeError, "expected dtype"
    elif fault == "shape":
        tensors[field], error, message = t[:-1], ValueError, "expected shape"
    elif fault == "meta":
        tensors[field], error, message = t.to("meta"), ValueError, "a meta tensor has no data"
    else:
        tensors[field], error, message = None, ValueError, "required, the config has has_bias=True"
    with pytest.raises(error, match=f"^{field}: {message}"):
        layer.load_weights(**tensors)
    assert layer._converted is None  # nothing half-loaded: a correct load still works
    layer.load_weights(**random_weights(cfg).tensors())


def test_load_weights_rejects_weights_of_the_padded_size() -> None:
    cfg = make()
    register_backend("padded-reference", ReferenceBackend(PADDING))
    layer = FusedMoE(cfg, device="cpu")
    padded = random_weights(cfg.replace(hidden_size=128, intermediate_size=192)).tensors()
    with pytest.raises(ValueError, match=r"^w13: expected shape \[6, 320, 48\], got \[6, 384, 64\]"):
        layer.load_weights(**padded)


# -- dispatch overhead ----------------------------------------------------------------------------


def _median_ns(fn, calls: int) -> float:  # noqa: ANN001 - any zero-argument callable
    samples = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples)


def test_dispatch_overhead_is_small() -> None:
    """What ``FusedMoE.forward`` adds over routing and calling the bound ``apply``
    directly, with a backend that does nothing (median of many calls, interleaved)."""
    cfg = make(num_experts=8, hidden_size=64, intermediate_size=64)
    register_backend("echo", EchoBackend())
    layer = FusedMoE(cfg, device="cpu")
    layer.load_weights(**random_weights(cfg).tensors())
    x, logits = inputs(cfg, 4)
    converted, apply = layer._converted, layer.backend.apply

    def direct() -> torch.Tensor:
        topk_weights, topk_ids = route(logits, cfg)
        return apply(cfg, converted, x, topk_weights, topk_ids, logits, None)

    forward, call = layer.forward, layer.__call__
    for fn in (direct, lambda: forward(x, logits), lambda: call(x, logits)):
        _median_ns(fn, 200)  # warm up
    rounds = [(_median_ns(direct, 500), _median_ns(lambda: forward(x, logits), 500),
               _median_ns(lambda: call(x, logits), 500)) for _ in range(5)]
    base, fwd, full = (statistics.median(r[i] for r in rounds) for i in range(3))
    forward_us, call_us = (fwd - base) / 1000, (full - base) / 1000
    print(f"\ndispatch overhead on this CPU: forward {forward_us:.2f} us, module __call__ "
          f"{call_us:.2f} us per call (route + apply alone: {base / 1000:.2f} us)")
    assert forward_us < 50
