"""Backend selection: ordering, fallback, forcing, the verdict cache and explain()."""

from __future__ import annotations

import pytest
import torch
from helpers.backends import ReferenceBackend

from mxmoe import (
    BackendError,
    BackendRecord,
    MoEConfig,
    Verdict,
    explain,
    hookimpl,
    register_backend,
    select_backend,
)
from mxmoe.selection import clear_verdict_cache, default_device, probe

CONFIG = MoEConfig(num_experts=4, top_k=2, hidden_size=96, intermediate_size=160)


def install(**verdicts: Verdict) -> dict[str, ReferenceBackend]:
    backends = {name: ReferenceBackend(v) for name, v in verdicts.items()}
    for name, backend in backends.items():
        register_backend(name, backend, distribution=f"dist-{name}", version="1.0")
    return backends


# -- ordering -----------------------------------------------------------------------------------


def test_highest_priority_wins_then_name() -> None:
    install(zeta=Verdict.yes(5), alpha=Verdict.yes(1), mid=Verdict.yes(5), beta=Verdict.yes(5.0))
    backend, verdict = select_backend(CONFIG, "cpu")
    assert backend.name == "beta" and verdict.priority == 5.0
    assert [r.name for r in explain(CONFIG, "cpu") if r.selected] == ["beta"]


def test_negative_and_fractional_priorities() -> None:
    install(low=Verdict.yes(-3), lower=Verdict.yes(-3.5))
    assert select_backend(CONFIG, "cpu")[0].name == "low"


def test_unsupported_best_falls_back_to_the_next() -> None:
    install(fast=Verdict.no("requires an MI355X, found cpu"), slow=Verdict.yes(0))
    assert select_backend(CONFIG, "cpu")[0].name == "slow"


def test_one_probe_raising_does_not_cancel_another() -> None:
    class Raising(ReferenceBackend):
        @hookimpl
        def supports_config(self, config: MoEConfig, device: torch.device) -> Verdict:
            raise RuntimeError("driver not loaded")

    register_backend("a-raising", Raising())
    install(b_fine=Verdict.yes(0))
    assert select_backend(CONFIG, "cpu")[0].name == "b_fine"
    records = {r.name: r for r in explain(CONFIG, "cpu")}
    assert records["a-raising"].reason == "probe failed: RuntimeError: driver not loaded"


def test_no_backend_at_all() -> None:
    with pytest.raises(BackendError, match="(?s)no backend can run .*none installed: pip install "
                                           "mxmoe-emulation"):
        select_backend(CONFIG, "cpu")
    assert explain(CONFIG, "cpu") == []


def test_nothing_supported_lists_every_reason() -> None:
    install(one=Verdict.no("requires CUDA, found cpu"), two=Verdict.no("requires aiter"))
    with pytest.raises(BackendError) as info:
        select_backend(CONFIG, "cpu")
    text = str(info.value)
    assert text.startswith("no backend can run ")
    assert "one: unsupported: requires CUDA, found cpu" in text
    assert "two: unsupported: requires aiter" in text
    assert CONFIG.describe() in text and "on cpu" in text


# -- forcing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("via_env", [False, True])
def test_forcing_a_supported_backend_overrides_priority(via_env: bool,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    install(best=Verdict.yes(10), other=Verdict.yes(1))
    if via_env:
        monkeypatch.setenv("MXMOE_BACKEND", "other")
        chosen = select_backend(CONFIG, "cpu")
    else:
        chosen = select_backend(CONFIG, "cpu", backend="other")
    assert chosen[0].name == "other"
    assert [r.name for r in explain(CONFIG, "cpu") if r.selected] == (["other"] if via_env else ["best"])


@pytest.mark.parametrize("via_env", [False, True])
def test_forcing_an_unknown_backend_names_it_and_lists_the_rest(
        via_env: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    install(emulation=Verdict.yes(0), triton=Verdict.no("requires a GPU"))
    if via_env:
        monkeypatch.setenv("MXMOE_BACKEND", "cuda-magic")
    with pytest.raises(BackendError) as info:
        select_backend(CONFIG, "cpu", backend=None if via_env else "cuda-magic")
    text = str(info.value)
    source = "MXMOE_BACKEND" if via_env else "backend argument"
    assert text.startswith(f"backend 'cuda-magic' (from {source}) cannot run ")
    assert "no such backend is installed" in text
    assert "emulation: supported" in text and "triton: unsupported: requires a GPU" in text
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("via_env", [False, True])
def test_forcing_an_unsupported_backend_gives_its_reason(via_env: bool,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    install(fallback=Verdict.yes(0), vendor=Verdict.no("requires ROCm gfx950, found cpu"))
    if via_env:
        monkeypatch.setenv("MXMOE_BACKEND", "vendor")
    with pytest.raises(BackendError, match=r"^backend 'vendor' \(from .*\) cannot run .* on cpu: "
                                           r"requires ROCm gfx950, found cpu"):
        select_backend(CONFIG, "cpu", backend=None if via_env else "vendor")
    # explain still works: with the environment forcing, it selects nothing rather than
    # raising; the argument forced only that call, so automatic selection stands
    selected = [r.name for r in explain(CONFIG, "cpu") if r.selected]
    assert selected == ([] if via_env else ["fallback"])


def test_an_empty_mxmoe_backend_means_automatic(monkeypatch: pytest.MonkeyPatch) -> None:
    install(only=Verdict.yes(0))
    monkeypatch.setenv("MXMOE_BACKEND", "")
    assert select_backend(CONFIG, "cpu")[0].name == "only"


# -- the verdict cache -----------------------------------------------------------------------------


def test_each_probe_runs_once_per_config_and_device() -> None:
    backends = install(a=Verdict.yes(2), b=Verdict.yes(1))
    for _ in range(3):
        select_backend(CONFIG, "cpu")
        explain(CONFIG, torch.device("cpu"))
    assert [len(b.probes) for b in backends.values()] == [1, 1]
    select_backend(CONFIG.replace(name="renamed"), "cpu")  # equal config: cached
    assert len(backends["a"].probes) == 1
    select_backend(CONFIG.replace(top_k=1), "cpu")  # another config
    select_backend(CONFIG, "meta")  # another device
    assert [len(b.probes) for b in backends.values()] == [3, 3]
    assert backends["a"].probes[-1][1] == torch.device("meta")
    clear_verdict_cache()
    select_backend(CONFIG, "cpu")
    assert len(backends["a"].probes) == 4


def test_registering_a_backend_invalidates_the_cache() -> None:
    backends = install(a=Verdict.yes(1))
    select_backend(CONFIG, "cpu")
    install(b=Verdict.yes(2))
    assert select_backend(CONFIG, "cpu")[0].name == "b"
    assert len(backends["a"].probes) == 2


def test_failed_probes_are_cached_too() -> None:
    calls = []

    class Counting(ReferenceBackend):
        @hookimpl
        def supports_config(self, config: MoEConfig, device: torch.device) -> Verdict:
            calls.append(device)
            raise OSError("no device")

    register_backend("counting", Counting())
    install(other=Verdict.yes(0))
    for _ in range(3):
        select_backend(CONFIG, "cpu")
    assert len(calls) == 1


def test_probe_receives_a_torch_device() -> None:
    backends = install(a=Verdict.yes(1))
    select_backend(CONFIG, "cpu")
    config, device = backends["a"].probes[0]
    assert config is CONFIG and isinstance(device, torch.device) and device.type == "cpu"
    assert probe(next(iter(_registry_backends())), CONFIG, torch.device("cpu")).supported


def _registry_backends():  # noqa: ANN202 - tiny accessor
    from mxmoe.registry import get_registry
    return get_registry().backends.values()


# -- explain's records ----------------------------------------------------------------------------


def test_explain_records_every_field() -> None:
    install(
        fast=Verdict.yes(9, hidden_multiple=64, intermediate_multiple=96, routes_internally=True),
        slow=Verdict.yes(1),
        vendor=Verdict.no("requires deep_gemm, not installed"),
    )
    records = explain(CONFIG, "cpu")
    assert [r.name for r in records] == ["fast", "slow", "vendor"]  # sorted by name
    fast, slow, vendor = records
    assert fast == BackendRecord(name="fast", distribution="dist-fast", version="1.0",
                                 supported=True, reason=None, priority=9, selected=True,
                                 routes_internally=True, padded_sizes=(128, 192))
    assert (slow.supported, slow.selected, slow.priority, slow.padded_sizes) == (True, False, 1, (96, 160))
    assert (vendor.supported, vendor.selected, vendor.priority) == (False, False, None)
    assert vendor.reason == "requires deep_gemm, not installed"
    assert fast.to_dict() == {
        "name": "fast", "distribution": "dist-fast", "version": "1.0", "supported": True,
        "reason": None, "priority": 9, "selected": True, "routes_internally": True,
        "padded_sizes": [128, 192],
    }


def test_explain_device_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    backends = install(a=Verdict.yes(1))
    explain(CONFIG)  # None: the best device present
    assert backends["a"].probes[-1][1] == default_device()
    explain(CONFIG, "meta")
    assert backends["a"].probes[-1][1] == torch.device("meta")
    with pytest.raises(TypeError, match="^device: expected a torch.device or str, got int"):
        explain(CONFIG, 0)  # type: ignore[arg-type]


def test_select_backend_checks_the_config_type() -> None:
    with pytest.raises(TypeError, match="^config: expected mxmoe.MoEConfig, got dict"):
        select_backend({"num_experts": 4}, "cpu")  # type: ignore[arg-type]


def test_default_device_on_this_machine() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert default_device().type == expected


# -- verdicts --------------------------------------------------------------------------------------


def test_verdict_validation() -> None:
    with pytest.raises(ValueError, match="^reason: an unsupported verdict must say why"):
        Verdict.no("")
    with pytest.raises(TypeError, match="^supported: expected a bool"):
        Verdict(1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="^reason: expected a str"):
        Verdict(False, 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="^priority: expected a number"):
        Verdict.yes("high")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="^priority: expected a number"):
        Verdict.yes(True)
    for field in ("hidden_multiple", "intermediate_multiple"):
        for bad in (0, -32, 1.5, True):
            with pytest.raises(ValueError, match=f"^{field}: expected a positive int"):
                Verdict.yes(1, **{field: bad})
    with pytest.raises(TypeError):
        Verdict.yes(1, swizzle=True)  # not a layout field


@pytest.mark.parametrize(("hidden_multiple", "intermediate_multiple", "expected"), [
    (1, 1, (96, 160)),  # already whole MX blocks
    (64, 96, (128, 192)),
    (128, 128, (128, 256)),
    (48, 80, (96, 160)),  # lcm with 32: 96 and 160
    (7, 1, (224, 160)),  # lcm(7, 32) = 224
])
def test_padded_sizes(hidden_multiple: int, intermediate_multiple: int,
                      expected: tuple[int, int]) -> None:
    verdict = Verdict.yes(0, hidden_multiple=hidden_multiple,
                          intermediate_multiple=intermediate_multiple)
    assert verdict.padded_sizes(CONFIG) == expected
