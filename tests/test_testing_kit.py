"""The conformance kit catches broken backends (so a pass means something)."""

from __future__ import annotations

import types

import pytest
import torch

import mxmoe
from mxmoe.registry import reset_registry
from mxmoe.testing import (
    ConformanceError,
    check_apply_leaves_inputs,
    check_case,
    check_convert_deterministic,
    check_verdicts_never_raise,
    conformance_cases,
)

CASES = {case.id: case for case in conformance_cases()}


def _backend(apply, convert=None, supports=None) -> types.SimpleNamespace:
    """An in-process backend built from plain functions."""

    @mxmoe.hookimpl
    def supports_config(config, device):
        return supports(config, device) if supports else mxmoe.Verdict.yes(1)

    @mxmoe.hookimpl
    def convert_weights(config, weights):
        return convert(config, weights) if convert else weights

    @mxmoe.hookimpl(specname="apply")
    def apply_impl(config, weights, hidden_states, topk_weights, topk_ids):
        return apply(config, weights, hidden_states, topk_weights, topk_ids)

    return types.SimpleNamespace(MXMOE_API_VERSION=1, supports_config=supports_config,
                                 convert_weights=convert_weights, apply=apply_impl)


def _correct(config, weights, x, topk_weights, topk_ids):
    return mxmoe.reference_experts(config, weights, x, topk_weights, topk_ids).to(config.dtype)


@pytest.fixture(autouse=True)
def isolated(monkeypatch):
    monkeypatch.setenv("MXMOE_DISABLE_PLUGIN_AUTOLOAD", "1")
    reset_registry()
    yield
    reset_registry()


def test_a_correct_backend_passes():
    mxmoe.register_backend("good", _backend(_correct))
    errors = check_case("good", CASES["base"], "cpu")
    assert set(errors) == {0, 1, 7, 67}
    assert max(errors.values()) < 1e-2


def test_wrong_numbers_fail():
    def off_by_two_percent(*args):
        return (_correct(*args).float() * 1.02).to(args[0].dtype)

    mxmoe.register_backend("scaled", _backend(off_by_two_percent))
    with pytest.raises(ConformanceError, match="relative error"):
        check_case("scaled", CASES["base"], "cpu")


def test_unwritten_rows_fail():
    def forgets_last_row(config, weights, x, topk_weights, topk_ids):
        out = torch.empty(x.shape[0], config.hidden_size, dtype=config.dtype)
        out[:-1] = _correct(config, weights, x[:-1], topk_weights[:-1], topk_ids[:-1])
        out[-1] = float("nan")  # what poisoned, unwritten memory looks like
        return out

    mxmoe.register_backend("forgetful", _backend(forgets_last_row))
    with pytest.raises(ConformanceError, match="non-finite output rows"):
        check_case("forgetful", CASES["base"], "cpu")


def test_nonlocal_tokens_must_be_zero():
    def ignores_expert_map(config, weights, x, topk_weights, topk_ids):
        full = config.replace(expert_map=None)
        local = torch.tensor([v for v in config.expert_map if v >= 0])
        # computes every expert with the local weights, cycling: wrong for remote ones
        ids = topk_ids.long() % local.numel()
        return mxmoe.reference_experts(full.replace(num_experts=local.numel(), top_k=config.top_k),
                                       weights, x, topk_weights, ids).to(config.dtype)

    mxmoe.register_backend("no-ep", _backend(ignores_expert_map))
    with pytest.raises(ConformanceError):
        check_case("no-ep", CASES["ep-rank1of2"], "cpu")


def test_wrong_dtype_fails():
    mxmoe.register_backend("f32", _backend(lambda *a: _correct(*a).float()))
    with pytest.raises(ConformanceError, match="output"):
        check_case("f32", CASES["base"], "cpu")


def test_raising_probe_fails_the_contract_check():
    def explodes(config, device):
        if device.type == "meta":
            raise RuntimeError("boom")
        return mxmoe.Verdict.yes(1)

    mxmoe.register_backend("explodes", _backend(_correct, supports=explodes))
    with pytest.raises(ConformanceError, match="supports_config raised RuntimeError"):
        check_verdicts_never_raise("explodes", CASES["base"].config)


def test_nondeterministic_convert_fails():
    def noisy(config, weights):
        return {"weights": weights, "salt": torch.rand(4)}

    mxmoe.register_backend("noisy", _backend(lambda c, w, *a: _correct(c, w["weights"], *a),
                                             convert=noisy))
    with pytest.raises(ConformanceError, match="not deterministic"):
        check_convert_deterministic("noisy", CASES["base"].config, "cpu")


def test_apply_that_modifies_its_input_fails():
    def scribbles(config, weights, x, topk_weights, topk_ids):
        out = _correct(config, weights, x, topk_weights, topk_ids)
        topk_weights.mul_(0.5)
        return out

    mxmoe.register_backend("scribbles", _backend(scribbles))
    with pytest.raises(ConformanceError, match="modified its input topk_weights"):
        check_apply_leaves_inputs("scribbles", CASES["base"].config, "cpu")


def test_matrix_covers_every_axis():
    configs = [case.config for case in conformance_cases()]
    for field in ("weight_format", "activation", "routing", "activation_format", "dtype"):
        values = {getattr(c, field) for c in configs}
        enum_type = type(next(iter(values)))
        if field == "dtype":
            assert values == {torch.bfloat16, torch.float16, torch.float32}
        else:
            assert values == set(enum_type), field
    assert any(c.expert_map is not None for c in configs)
    assert any(c.apply_router_weight_on_input for c in configs)
    assert {c.has_bias for c in configs} == {True, False}
    assert any(c.hidden_size % 64 for c in configs)  # a shape that backends must pad
