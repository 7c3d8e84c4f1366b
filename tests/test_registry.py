"""Plugin discovery: fake installed distributions (a ``*.dist-info`` on ``sys.path``)
and bare entry points that misbehave in every way the issue lists. The host keeps
working, ``explain`` shows each failure with its distribution, version and error,
strict mode re-raises, and the environment switches act before anything is imported.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers.fake_plugins import (
    MODULE_PREFIX,
    entry_point,
    install_distribution,
    plugin_source,
)

import mxmoe
from mxmoe import MoEConfig, Verdict, explain, hookimpl, register_backend, select_backend
from mxmoe.registry import Registry, get_registry, unregister_backend

CONFIG = MoEConfig(num_experts=4, top_k=2, hidden_size=64, intermediate_size=64)
# Above any real backend that may be installed in this environment, so it is selected.
TOP_PRIORITY = "return Verdict.yes(1e9)"
GOOD = plugin_source(probe=TOP_PRIORITY)

LOAD_FAULTS = {
    "raises_at_import": (plugin_source(at_import="raise RuntimeError('vendor library exploded')"),
                         "RuntimeError: vendor library exploded"),
    "missing_library": (plugin_source(at_import="import vendor_lib_that_is_not_here"),
                        "ModuleNotFoundError: No module named 'vendor_lib_that_is_not_here'"),
    "exits_at_import": (plugin_source(at_import="raise SystemExit(3)"), "SystemExit: 3"),
    "wrong_api_version": (plugin_source(api_version="2"),
                          "TypeError: incompatible hook API: plugin declares MXMOE_API_VERSION=2, "
                          "this mxmoe implements version 1"),
    "no_api_version": (plugin_source(api_version="None"),
                       "TypeError: incompatible hook API: plugin declares MXMOE_API_VERSION=None"),
    "extra_argument": (plugin_source(probe_args="config, device, extra"),
                       "TypeError: backend 'extra_argument': .*supports_config.*'extra'"),
    "misspelled_hook": (plugin_source(probe_name="supports_configs"),
                        "TypeError: unknown hook\\(s\\) supports_configs; mxmoe's hooks are"),
    "missing_hook": (plugin_source(with_apply=False),
                     "TypeError: missing hook implementation\\(s\\): apply"),
}

PROBE_FAULTS = {
    "probe_raises": ("return 1 / 0", "probe failed: ZeroDivisionError: division by zero"),
    "probe_exits": ("raise SystemExit('native library called exit')",
                    "probe failed: SystemExit: native library called exit"),
    "probe_returns_bool": ("return True",
                           "probe failed: TypeError: supports_config returned bool, "
                           "expected mxmoe.Verdict"),
    "probe_returns_none": ("return None", "probe failed: TypeError: supports_config returned NoneType"),
    "probe_returns_tuple": ("return (True, 'fine')", "probe failed: TypeError: supports_config returned tuple"),
}


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path for fake distributions, with autoload switched back on."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("MXMOE_DISABLE_PLUGIN_AUTOLOAD")
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith(MODULE_PREFIX)]:
        del sys.modules[name]


def records_by_name() -> dict[str, mxmoe.BackendRecord]:
    records = explain(CONFIG, "cpu")
    return {r.name: r for r in records}


# -- load faults --------------------------------------------------------------------------


@pytest.mark.parametrize("fault", sorted(LOAD_FAULTS))
def test_a_plugin_that_fails_to_load_is_reported_and_the_host_keeps_working(
        site: Path, fault: str) -> None:
    source, message = LOAD_FAULTS[fault]
    install_distribution(site, "mxmoe-fake-faults", "2.3.4", {"good": GOOD, fault: source})
    registry = get_registry()
    assert "good" in registry.backends and fault not in registry.backends
    assert not registry.plugin_manager.has_plugin(fault)  # nothing half-registered
    (failure,) = [f for f in registry.failures if f.name == fault]
    assert (failure.distribution, failure.version) == ("mxmoe-fake-faults", "2.3.4")
    assert re.match(message, failure.error, re.DOTALL), failure.error

    records = records_by_name()
    bad = records[fault]
    assert not bad.supported and not bad.selected and bad.priority is None
    assert bad.reason.startswith("failed to load: ") and failure.error in bad.reason
    assert (bad.distribution, bad.version) == ("mxmoe-fake-faults", "2.3.4")
    good = records["good"]
    assert good.supported and good.selected
    assert (good.distribution, good.version) == ("mxmoe-fake-faults", "2.3.4")
    assert select_backend(CONFIG, "cpu")[0].name == "good"
    with pytest.raises(mxmoe.BackendError, match=rf"backend '{fault}' .* it failed to load: "):
        select_backend(CONFIG, "cpu", backend=fault)


@pytest.mark.parametrize("fault", ["raises_at_import", "exits_at_import", "wrong_api_version",
                                   "extra_argument", "missing_hook"])
def test_strict_mode_re_raises_load_failures(site: Path, monkeypatch: pytest.MonkeyPatch,
                                             fault: str) -> None:
    install_distribution(site, "mxmoe-fake-strict", "0.1", {fault: LOAD_FAULTS[fault][0]})
    monkeypatch.setenv("MXMOE_STRICT_PLUGINS", "1")
    expected = {"raises_at_import": RuntimeError, "exits_at_import": SystemExit,
                }.get(fault, TypeError)
    with pytest.raises(expected):
        get_registry()


def test_bare_entry_points_report_no_distribution(site: Path) -> None:
    good, _ = entry_point(site, "good", GOOD)
    bad, _ = entry_point(site, "bad", LOAD_FAULTS["exits_at_import"][0])
    registry = Registry()
    registry.load_entry_points([bad, good])
    assert list(registry.backends) == ["good"]
    assert registry.backends["good"].distribution is None
    (failure,) = registry.failures
    assert (failure.name, failure.distribution, failure.version) == ("bad", None, None)
    assert failure.error == "SystemExit: 3"


def test_keyboard_interrupt_is_not_swallowed(site: Path) -> None:
    ep, _ = entry_point(site, "interrupted", plugin_source(at_import="raise KeyboardInterrupt"))
    with pytest.raises(KeyboardInterrupt):
        Registry().load_entry_points([ep])


def test_duplicate_names_from_two_distributions_name_both(site: Path) -> None:
    install_distribution(site, "mxmoe-fake-alpha", "1.0", {"twin": GOOD})
    install_distribution(site, "mxmoe-fake-beta", "2.0", {"twin": GOOD})
    registry = get_registry()
    assert registry.backends["twin"].distribution == "mxmoe-fake-alpha"  # first by name
    (failure,) = [f for f in registry.failures if f.name == "twin"]
    assert (failure.distribution, failure.version) == ("mxmoe-fake-beta", "2.0")
    assert "duplicate backend name 'twin'" in failure.error
    assert "mxmoe-fake-alpha" in failure.error and "mxmoe-fake-beta" in failure.error
    twins = [r for r in explain(CONFIG, "cpu") if r.name == "twin"]
    assert [r.supported for r in twins] == [True, False]
    assert "mxmoe-fake-alpha" in twins[1].reason and "mxmoe-fake-beta" in twins[1].reason


# -- probe faults ---------------------------------------------------------------------------


@pytest.mark.parametrize("fault", sorted(PROBE_FAULTS))
def test_a_probe_that_misbehaves_makes_only_its_backend_unsupported(site: Path,
                                                                     fault: str) -> None:
    body, reason = PROBE_FAULTS[fault]
    # the faulty backend sorts first and would win if it answered yes
    install_distribution(site, "mxmoe-fake-probes", "1.1", {
        "a_" + fault: plugin_source(probe=body),
        "z_good": GOOD,
    })
    records = records_by_name()
    bad = records["a_" + fault]
    assert not bad.supported and bad.reason.startswith(reason), bad.reason
    assert (bad.distribution, bad.version) == ("mxmoe-fake-probes", "1.1")
    assert records["z_good"].selected
    assert select_backend(CONFIG, "cpu")[0].name == "z_good"
    with pytest.raises(mxmoe.BackendError, match=rf"'a_{fault}' .*{reason[:20]}"):
        select_backend(CONFIG, "cpu", backend="a_" + fault)


@pytest.mark.parametrize("fault", ["probe_raises", "probe_exits", "probe_returns_bool"])
def test_strict_mode_re_raises_probe_failures(site: Path, monkeypatch: pytest.MonkeyPatch,
                                              fault: str) -> None:
    install_distribution(site, "mxmoe-fake-strict-probe", "1.0",
                         {fault: plugin_source(probe=PROBE_FAULTS[fault][0])})
    monkeypatch.setenv("MXMOE_STRICT_PLUGINS", "1")
    expected = {"probe_raises": ZeroDivisionError, "probe_exits": SystemExit}.get(fault, TypeError)
    with pytest.raises(expected):
        select_backend(CONFIG, "cpu")
    with pytest.raises(expected):
        explain(CONFIG, "cpu")


# -- environment switches -----------------------------------------------------------------


def test_mxmoe_disable_never_imports_the_module(site: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    modules = install_distribution(site, "mxmoe-fake-env", "1.0", {
        "kept": GOOD, "blocked": GOOD,
        "exploding": plugin_source(at_import="raise SystemExit('must never run')"),
    })
    monkeypatch.setenv("MXMOE_DISABLE", " blocked ,exploding")
    records = records_by_name()
    assert modules["blocked"] not in sys.modules and modules["exploding"] not in sys.modules
    assert modules["kept"] in sys.modules
    assert records["kept"].supported
    for name in ("blocked", "exploding"):
        assert not records[name].supported and "disabled by MXMOE_DISABLE" in records[name].reason
    assert not [f for f in get_registry().failures if f.name in ("blocked", "exploding")]


def test_mxmoe_plugins_is_an_allow_list(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    modules = install_distribution(site, "mxmoe-fake-allow", "1.0", {
        "first": GOOD, "second": GOOD, "third": plugin_source(at_import="raise RuntimeError"),
    })
    monkeypatch.setenv("MXMOE_PLUGINS", "second,first")
    monkeypatch.setenv("MXMOE_DISABLE", "first")  # the block-list still applies
    registry = get_registry()
    assert "second" in registry.backends
    assert "first" not in registry.backends and "third" not in registry.backends
    assert modules["first"] not in sys.modules and modules["third"] not in sys.modules
    assert {"first", "third"} <= set(registry.disabled)


@pytest.mark.parametrize("value", ["1", "true", "YES", "on"])
def test_autoload_off_imports_nothing(site: Path, monkeypatch: pytest.MonkeyPatch,
                                      value: str) -> None:
    modules = install_distribution(site, "mxmoe-fake-off", "1.0", {"quiet": GOOD})
    monkeypatch.setenv("MXMOE_DISABLE_PLUGIN_AUTOLOAD", value)
    registry = get_registry()
    assert registry.backends == {} and registry.failures == [] and registry.disabled == []
    assert modules["quiet"] not in sys.modules
    assert explain(CONFIG, "cpu") == []
    # in-process registration still works
    register_backend("inline", _InlineBackend())
    assert select_backend(CONFIG, "cpu")[0].name == "inline"


@pytest.mark.parametrize("value", ["0", "", "no"])
def test_autoload_flag_off_values_keep_discovery(site: Path, monkeypatch: pytest.MonkeyPatch,
                                                 value: str) -> None:
    install_distribution(site, "mxmoe-fake-on", "1.0", {"loud": GOOD})
    monkeypatch.setenv("MXMOE_DISABLE_PLUGIN_AUTOLOAD", value)
    assert "loud" in get_registry().backends


# -- in-process registration ------------------------------------------------------------------


class _InlineBackend:
    MXMOE_API_VERSION = 1

    @hookimpl
    def supports_config(self, config: MoEConfig, device: torch.device) -> Verdict:
        return Verdict.yes(1)

    @hookimpl
    def convert_weights(self, weights: object) -> object:
        return weights

    @hookimpl
    def apply(self, router_logits: torch.Tensor, hidden_states: torch.Tensor,
              config: MoEConfig) -> tuple:
        return router_logits, hidden_states, config


def test_hook_arguments_are_bound_by_name() -> None:
    """An implementation may take a subset of the hook's arguments, in any order."""
    backend = register_backend("inline", _InlineBackend())
    x, logits = torch.randn(2, 64), torch.randn(2, 4)
    got = backend.apply(CONFIG, object(), x, None, None, logits, None)
    assert got[0] is logits and got[1] is x and got[2] is CONFIG
    assert backend.call("supports_config", config=CONFIG, device=torch.device("cpu")).supported


def test_register_backend_validates_its_input() -> None:
    with pytest.raises(ValueError, match="^name: expected a non-empty backend name"):
        register_backend("", _InlineBackend())
    with pytest.raises(TypeError, match="incompatible hook API: plugin declares MXMOE_API_VERSION=None"):
        register_backend("plain", object())

    class Extra(_InlineBackend):
        @hookimpl
        def apply(self, hidden_states: torch.Tensor, stream: object) -> torch.Tensor:
            return hidden_states

    with pytest.raises(TypeError, match="(?s)backend .extra.: .*stream"):
        register_backend("extra", Extra())
    assert not get_registry().plugin_manager.has_plugin("extra")
    register_backend("extra", _InlineBackend())  # the name is free again
    with pytest.raises(ValueError, match="duplicate backend name 'extra': provided by an "
                                         "in-process registration and by mxmoe-x"):
        register_backend("extra", _InlineBackend(), distribution="mxmoe-x")


def test_unregister_backend() -> None:
    register_backend("inline", _InlineBackend(), distribution="d", version="9")
    assert [r.name for r in explain(CONFIG, "cpu")] == ["inline"]
    assert repr(get_registry().backends["inline"]) == "<mxmoe backend 'inline' from d 9>"
    unregister_backend("inline")
    unregister_backend("inline")  # unknown names are ignored
    assert explain(CONFIG, "cpu") == []
    assert not get_registry().plugin_manager.has_plugin("inline")
