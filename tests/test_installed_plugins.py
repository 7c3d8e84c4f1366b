"""Cross-plugin checks for an environment with every plugin installed (the
'everything' leg): all of them load, none disturbs another, selection is sane."""

from __future__ import annotations

from importlib import metadata

import pytest
import torch

import mxmoe
from mxmoe.registry import get_registry, reset_registry

ENTRY_POINTS = sorted(ep.name for ep in metadata.entry_points(group=mxmoe.ENTRY_POINT_GROUP))

pytestmark = pytest.mark.skipif(
    not ENTRY_POINTS, reason="no mxmoe plugin is installed in this environment (core-only leg)"
)


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch):
    for var in ("MXMOE_BACKEND", "MXMOE_DISABLE", "MXMOE_PLUGINS",
                "MXMOE_DISABLE_PLUGIN_AUTOLOAD", "MXMOE_STRICT_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    reset_registry()
    yield
    reset_registry()


def test_every_installed_plugin_loads():
    registry = get_registry()
    assert registry.failures == []
    assert sorted(registry.backends) == ENTRY_POINTS


def test_plugins_import_no_vendor_library():
    get_registry()
    import sys

    for vendor in ("aiter", "flydsl", "deep_gemm"):
        assert vendor not in sys.modules, f"a plugin imported {vendor} at import time"


@pytest.mark.parametrize("preset", ["gpt-oss-mini", "gpt-oss-120b"])
def test_every_verdict_is_explained_on_cpu(preset):
    records = mxmoe.explain(mxmoe.preset(preset), "cpu")
    assert sorted(r.name for r in records) == ENTRY_POINTS
    for record in records:
        assert record.supported or record.reason, record
    if "emulation" in ENTRY_POINTS:  # the fallback runs everywhere
        assert any(r.selected for r in records)


def test_installed_fallback_runs_a_layer():
    if "emulation" not in ENTRY_POINTS:
        pytest.skip("the emulation plugin is not installed here")
    config = mxmoe.preset("gpt-oss-mini")
    layer = mxmoe.FusedMoE(config, device="cpu")
    weights = mxmoe.random_weights(config, seed=3)
    layer.load_weights(**weights.tensors())
    x = torch.randn(5, config.hidden_size).to(config.dtype)
    logits = torch.randn(5, config.num_experts)
    err = mxmoe.relative_error(layer(x, logits), mxmoe.reference_moe(config, weights, x, logits))
    assert err < mxmoe.reference.tolerance(config)
