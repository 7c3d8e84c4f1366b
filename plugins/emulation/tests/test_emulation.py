"""Tests of the ``emulation`` backend: the conformance kit in both dequantization
modes, accuracy against the float64 reference, equality of the two modes, bad input,
and the grouping of tokens by expert.

Runs with only mxmoe, mxmoe-emulation and pytest installed.
"""

from __future__ import annotations

import random

import pytest
import torch

import mxmoe
import mxmoe.formats
from mxmoe import FusedMoE, MoEConfig, preset, random_weights, reference_experts, relative_error
from mxmoe.registry import get_registry
from mxmoe.routing import route
from mxmoe.selection import probe
from mxmoe.testing import BackendConformance, check_case, conformance_cases
from mxmoe_emulation.torch_backend import dequant, experts
from mxmoe_emulation.torch_backend.dequant import ENV_DEQUANT, DequantMode

BACKEND = "emulation"
CPU = torch.device("cpu")

# A small layer with gpt-oss's math (SWIGLUOAI, biases, top-4 of 32, MXFP4).
GPT_OSS_SMALL = preset("gpt-oss-mini", hidden_size=256, intermediate_size=256)


# -- helpers -------------------------------------------------------------------------


def fresh_seed() -> int:
    """A new seed per test run: the backend must compute the function, not fit an input."""
    return random.SystemRandom().randrange(2**31)


def inputs(config: MoEConfig, m: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random hidden states [m, H] in config.dtype and router logits [m, E]."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, config.hidden_size, generator=gen).to(config.dtype)
    return x, torch.randn(m, config.num_experts, generator=gen) * 2.0


def loaded_layer(config: MoEConfig, weights: mxmoe.ExpertWeights) -> FusedMoE:
    layer = FusedMoE(config, backend=BACKEND, device=CPU)
    layer.load_weights(**weights.tensors())
    return layer


def routed(config: MoEConfig, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return route(logits, config)


def apply_directly(layer: FusedMoE, x: torch.Tensor, topk_weights: torch.Tensor,
                   topk_ids: torch.Tensor) -> torch.Tensor:
    """The backend's apply hook, bypassing the layer's input preparation."""
    return layer.backend.apply(layer.config, layer._converted, x, topk_weights, topk_ids,
                               None, layer.expert_map)


@pytest.fixture(params=[mode.value for mode in DequantMode])
def dequant_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each dequantization mode in turn, set through the environment."""
    monkeypatch.setenv(ENV_DEQUANT, request.param)
    return request.param


# -- (a) the conformance kit, in both modes ------------------------------------------


class TestEmulationConformance(BackendConformance):
    """The kit in the CPU's default mode (``convert``)."""

    backend = BACKEND
    device = "cpu"


class TestEmulationConformancePerCallDequant(TestEmulationConformance):
    """The kit again with weights dequantized per call."""

    @pytest.fixture(autouse=True)
    def _per_call_mode(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(ENV_DEQUANT, DequantMode.CALL.value)


def test_the_cpu_default_is_convert_so_the_two_kit_runs_differ() -> None:
    assert dequant.default_mode(CPU) is DequantMode.CONVERT


@pytest.mark.parametrize("case", conformance_cases(), ids=str)
def test_every_conformance_case_is_supported(case) -> None:
    """No kit case may be skipped for this backend: it supports everything."""
    verdict = probe(get_registry().backends[BACKEND], case.config, CPU)
    assert verdict.supported, verdict.reason
    assert verdict.priority == 0


requires_gpu = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA/ROCm GPU in this process (the backend's accelerator path: "
           "default mode 'call'); the CPU tests cover the same code")


@requires_gpu
def test_conformance_matrix_on_gpu(dequant_mode: str) -> None:
    """Every kit case on the GPU, in each mode."""
    for case in conformance_cases():
        check_case(BACKEND, case, "cuda")


@requires_gpu
def test_gpu_defaults_to_per_call_dequant_and_agrees_with_cpu(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_DEQUANT, raising=False)
    config = GPT_OSS_SMALL.replace(dtype=torch.float32)
    seed = fresh_seed()
    weights = random_weights(config, seed=seed)
    gpu = FusedMoE(config, backend=BACKEND, device="cuda")
    gpu.load_weights(**weights.to("cuda").tensors())
    assert gpu._converted.mode is DequantMode.CALL
    x, logits = inputs(config, 77, seed + 1)
    err = relative_error(gpu(x.cuda(), logits.cuda()).cpu(), loaded_layer(config, weights)(x, logits))
    assert err < 1e-6, f"seed={seed}: {err:.3e}"


# -- (b) accuracy against the reference -------------------------------------------------


ACCURACY_CASES = [
    pytest.param(GPT_OSS_SMALL, id="gpt-oss-small"),
    pytest.param(MoEConfig(num_experts=16, top_k=3, hidden_size=192, intermediate_size=320,
                           activation="silu", weight_format="mxfp8", routing="default"),
                 id="mxfp8-silu-default"),
    pytest.param(GPT_OSS_SMALL.with_expert_parallel(4, 3), id="gpt-oss-small-ep4"),
]


@pytest.mark.parametrize("dtype,bound", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)],
                         ids=["float32", "bf16"])
@pytest.mark.parametrize("base", ACCURACY_CASES)
def test_matches_reference(base: MoEConfig, dtype: torch.dtype, bound: float,
                           dequant_mode: str) -> None:
    """float32: float32 rounding level (< 1e-5); bf16 activations: < 1e-2."""
    config = base.replace(dtype=dtype)
    seed = fresh_seed()
    weights = random_weights(config, seed=seed)
    layer = loaded_layer(config, weights)
    x, logits = inputs(config, 93, seed + 1)
    topk_weights, topk_ids = routed(config, logits)
    out = layer(x, logits)
    err = relative_error(out, reference_experts(config, weights, x, topk_weights, topk_ids))
    assert out.dtype == dtype
    assert err < bound, f"seed={seed}: relative error {err:.3e} >= {bound:.0e}"


def test_float32_error_is_at_rounding_level_not_merely_within_tolerance() -> None:
    """In float32 the only error is summation order: far below the kit's 1e-4."""
    config = GPT_OSS_SMALL.replace(dtype=torch.float32)
    seed = fresh_seed()
    weights = random_weights(config, seed=seed)
    x, logits = inputs(config, 64, seed + 1)
    out = loaded_layer(config, weights)(x, logits)
    err = relative_error(out, reference_experts(config, weights, x, *routed(config, logits)))
    assert err < 1e-6, f"seed={seed}: {err:.3e}"


# -- (c) the two modes agree exactly -------------------------------------------------


@pytest.mark.parametrize("config", [
    GPT_OSS_SMALL,
    GPT_OSS_SMALL.replace(weight_format="mxfp8", activation_format="mxfp8_dynamic",
                          activation="silu").with_expert_parallel(2, 1),
    GPT_OSS_SMALL.replace(activation_format="fp8_static", dtype=torch.float16),
    GPT_OSS_SMALL.replace(activation_format="fp8_dynamic_1x128", top_k=1,
                          apply_router_weight_on_input=True),
], ids=["gpt-oss-small", "mxfp8-ep", "fp8-static-fp16", "fp8-1x128-weight-on-input"])
def test_convert_and_call_modes_give_identical_outputs(
        config: MoEConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    seed = fresh_seed()
    weights = random_weights(config, seed=seed)
    x, logits = inputs(config, 41, seed + 1)
    outputs = {}
    for mode in DequantMode:
        monkeypatch.setenv(ENV_DEQUANT, mode.value)
        layer = loaded_layer(config, weights)
        assert layer._converted.mode is mode
        outputs[mode] = layer(x, logits)
    assert torch.equal(outputs[DequantMode.CONVERT], outputs[DequantMode.CALL]), f"seed={seed}"


def test_modes_hold_what_they_say(monkeypatch: pytest.MonkeyPatch) -> None:
    """convert: float32 matrices only; call: the packed checkpoint and its scales."""
    config = GPT_OSS_SMALL
    weights = random_weights(config, seed=fresh_seed())
    e, h, i = config.num_experts, config.hidden_size, config.intermediate_size
    monkeypatch.setenv(ENV_DEQUANT, "convert")
    held = loaded_layer(config, weights)._converted
    assert (held.w13.dtype, tuple(held.w13.shape)) == (torch.float32, (e, 2 * i, h))
    assert (held.w2.dtype, tuple(held.w2.shape)) == (torch.float32, (e, h, i))
    assert held.w13_scale is None and held.w2_scale is None
    monkeypatch.setenv(ENV_DEQUANT, "  CALL ")
    held = loaded_layer(config, weights)._converted
    assert (held.w13.dtype, tuple(held.w13.shape)) == (torch.uint8, (e, 2 * i, h // 2))
    assert held.w13_scale.dtype == torch.uint8


def test_call_mode_dequantizes_only_the_active_experts(monkeypatch: pytest.MonkeyPatch) -> None:
    config = GPT_OSS_SMALL
    monkeypatch.setenv(ENV_DEQUANT, "call")
    layer = loaded_layer(config, random_weights(config, seed=fresh_seed()))
    x, logits = inputs(config, 3, fresh_seed())  # 3 tokens x top-4: at most 12 of 32 experts
    active = routed(config, logits)[1].unique().numel()
    calls = []
    real = dequant.dequantize
    monkeypatch.setattr(dequant, "dequantize",
                        lambda data, scales, fmt: calls.append(data.shape) or real(data, scales, fmt))
    layer(x, logits)
    assert len(calls) == 2 * active  # w13 and w2 of each active expert, nothing else


@pytest.mark.parametrize("weight_format", ["mxfp4", "mxfp8"])
def test_table_decoder_is_bit_identical_to_the_core_dequantizer(weight_format: str) -> None:
    """Every data byte under every scale byte (NaN scale 0xFF and subnormal results
    included) decodes exactly as mxmoe.formats.dequantize_mx does."""
    fmt = "mxfp4" if weight_format == "mxfp4" else "mxfp8_e4m3"
    per_byte = 2 if weight_format == "mxfp4" else 1
    all_bytes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    # row s: the 256 data bytes under scale byte s (one scale per 32 elements)
    data = all_bytes.repeat(256, 1)
    scales = all_bytes.unsqueeze(1).expand(256, 256 * per_byte // 32).contiguous()
    if weight_format == "mxfp8":
        data = data.view(torch.float8_e4m3fn)
    decoded = dequant.dequantize(data, scales, fmt)
    expected = mxmoe.formats.dequantize_mx(data, scales, fmt)
    assert decoded.dtype == torch.float32
    assert torch.equal(decoded.isnan(), expected.isnan())
    assert torch.equal(decoded.nan_to_num(0.0), expected.nan_to_num(0.0))


def test_device_defaults() -> None:
    """CPU dequantizes at conversion; accelerators keep packed weights (pure function:
    no device is touched)."""
    assert dequant.default_mode(torch.device("cpu")) is DequantMode.CONVERT
    assert dequant.default_mode(torch.device("cuda", 0)) is DequantMode.CALL


@pytest.mark.parametrize("value", ["fast", "dequant", "convert,call", "1"])
def test_unknown_dequant_mode_is_a_clear_error(value: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_DEQUANT, value)
    config = GPT_OSS_SMALL
    layer = FusedMoE(config, backend=BACKEND, device=CPU)
    with pytest.raises(ValueError, match=f"{ENV_DEQUANT}: unknown value '{value}'.*'convert'"):
        layer.load_weights(**random_weights(config, seed=1).tensors())


# -- (d) bad input stays validated when the backend is forced ---------------------------


def _forced_layer(config: MoEConfig = GPT_OSS_SMALL) -> FusedMoE:
    return loaded_layer(config, random_weights(config, seed=fresh_seed()))


def test_bad_weights_are_rejected_when_forced() -> None:
    config = GPT_OSS_SMALL
    good = random_weights(config, seed=2).tensors()
    cases = [
        ({"w13": good["w13"][:, :-2]}, ValueError, "w13: expected shape"),
        ({"w2_scale": good["w2_scale"].to(torch.int32)}, TypeError, "w2_scale: expected dtype"),
        ({"w13_bias": None}, ValueError, "w13_bias: required"),
        ({"w2": good["w2"].view(torch.float8_e4m3fn)}, TypeError, "w2: expected dtype"),
    ]
    for change, error, message in cases:
        layer = FusedMoE(config, backend=BACKEND, device=CPU)
        with pytest.raises(error, match=message):
            layer.load_weights(**{**good, **change})


def test_bad_activations_are_rejected_when_forced() -> None:
    layer = _forced_layer()
    c = layer.config
    x, logits = inputs(c, 5, fresh_seed())
    with pytest.raises(ValueError, match="hidden_states: expected shape"):
        layer(x[:, :-1], logits)
    with pytest.raises(TypeError, match="hidden_states: expected dtype"):
        layer(x.float(), logits)
    with pytest.raises(ValueError, match="router_logits: expected shape"):
        layer(x, logits[:, :-1])
    with pytest.raises(ValueError, match="router_logits: expected shape"):
        layer(x, logits[:-1])
    with pytest.raises(TypeError, match="router_logits: expected a floating-point"):
        layer(x, logits.to(torch.int64))


def test_forced_on_an_unusable_device_gives_the_probe_reason() -> None:
    with pytest.raises(mxmoe.BackendError, match="requires a device that holds data"):
        FusedMoE(GPT_OSS_SMALL, backend=BACKEND, device="meta")
    if not torch.cuda.is_available():
        with pytest.raises(mxmoe.BackendError, match="requires an available cuda device"):
            FusedMoE(GPT_OSS_SMALL, backend=BACKEND, device="cuda")


def test_a_failing_device_query_is_a_no_not_an_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    from mxmoe_emulation import torch_backend

    def broken(device: torch.device) -> str | None:
        raise RuntimeError("driver gone")

    monkeypatch.setattr(torch_backend, "_device_problem", broken)
    verdict = torch_backend.supports_config(GPT_OSS_SMALL, CPU)
    assert not verdict.supported
    assert "RuntimeError: driver gone" in verdict.reason


def test_non_contiguous_inputs_are_accepted(dequant_mode: str) -> None:
    layer = _forced_layer()
    c = layer.config
    x, logits = inputs(c, 23, fresh_seed())
    x_strided = x.t().contiguous().t()  # same values, column-major
    logits_strided = torch.stack([logits, -logits], dim=2).flatten(1)[:, ::2]  # every other
    assert not x_strided.is_contiguous() and not logits_strided.is_contiguous()
    expected = layer(x, logits)
    assert torch.equal(layer(x_strided, logits_strided), expected)
    # and straight into the hook, with strided routing tensors too
    topk_weights, topk_ids = routed(c, logits)
    w_strided = topk_weights.t().contiguous().t()
    ids_strided = topk_ids.t().contiguous().t()
    assert torch.equal(apply_directly(layer, x_strided, w_strided, ids_strided), expected)


def test_apply_with_no_tokens() -> None:
    layer = _forced_layer()
    c = layer.config
    out = apply_directly(layer, torch.empty(0, c.hidden_size, dtype=c.dtype),
                         torch.empty(0, c.top_k), torch.empty(0, c.top_k, dtype=torch.int32))
    assert out.shape == (0, c.hidden_size) and out.dtype == c.dtype


# -- (e) tokens are grouped by expert ------------------------------------------------


@pytest.mark.parametrize("config", [
    MoEConfig(num_experts=8, top_k=2, hidden_size=64, intermediate_size=64),
    MoEConfig(num_experts=8, top_k=2, hidden_size=64, intermediate_size=64,
              expert_map=(0, -1, 1, -1, -1, 2, -1, 3)),
], ids=["all-local", "strided-expert-map"])
def test_one_gemm_pair_per_active_local_expert(config: MoEConfig, dequant_mode: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """64 tokens x top-2 = 128 (token, slot) rows over at most 8 experts: a per-token
    loop would run 2 GEMMs per row; grouping runs 2 per active local expert."""
    seed = fresh_seed()
    weights = random_weights(config, seed=seed)
    layer = loaded_layer(config, weights)
    x, logits = inputs(config, 64, seed + 1)
    topk_weights, topk_ids = routed(config, logits)
    emap = torch.tensor(config.expert_map) if config.expert_map else torch.arange(8)
    active_local = int((emap[topk_ids.long().unique()] >= 0).sum())
    rows_seen = []
    real = experts.expert_gemm
    monkeypatch.setattr(experts, "expert_gemm",
                        lambda a, w, b: rows_seen.append(a.shape[0]) or real(a, w, b))
    out = layer(x, logits)
    assert len(rows_seen) == 2 * active_local
    local_rows = int((emap[topk_ids.long()] >= 0).sum())
    assert sum(rows_seen) == 2 * local_rows  # every local (token, slot) row, exactly once
    err = relative_error(out, reference_experts(config, weights, x, topk_weights, topk_ids))
    assert err < 1e-2, f"seed={seed}: {err:.3e}"


def test_grouping_orders_pairs_by_expert_and_drops_remote_ones() -> None:
    topk_ids = torch.tensor([[3, 0], [1, 3], [0, 2]], dtype=torch.int32)
    expert_map = torch.tensor([0, -1, 1, 2], dtype=torch.int32)  # expert 1 is remote
    pairs, counts = experts.group_by_expert(topk_ids, expert_map, 3)
    assert counts == [2, 1, 2]
    assert pairs.tolist() == [1, 4, 5, 0, 3]  # experts 0,0,2,3,3 (local 0,0,1,2,2)
