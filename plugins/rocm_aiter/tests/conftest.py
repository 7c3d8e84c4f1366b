"""Fixtures: the aiter / FlyDSL test doubles on ``sys.path`` for one test at a time, and a
CPU that the plugin's device check accepts as gfx950.

Nothing puts the doubles on the path outside these fixtures, and every fixture removes
whatever it imported, so tests that need aiter to be absent see it absent.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from mxmoe.selection import clear_verdict_cache
from mxmoe_rocm_aiter import device, vendor

FAKE_VENDOR = Path(__file__).parent / "fake_vendor"
FAKE_AITER = FAKE_VENDOR / "aiter_site"
FAKE_FLYDSL = FAKE_VENDOR / "flydsl_site"
_VENDOR_PACKAGES = ("aiter", "flydsl")


def _forget_vendor() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in _VENDOR_PACKAGES:
            del sys.modules[name]
    vendor.forget()
    clear_verdict_cache()


@pytest.fixture
def vendor_sites(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """``install(*roots)`` puts import roots first on ``sys.path`` for this test only."""
    _forget_vendor()

    def install(*roots: Path) -> None:
        for root in roots:
            monkeypatch.syspath_prepend(str(root))
        _forget_vendor()

    yield install
    _forget_vendor()


@pytest.fixture
def fake_aiter(vendor_sites: Callable[..., None]) -> None:
    """The aiter and FlyDSL doubles, importable as ``aiter`` and ``flydsl``."""
    vendor_sites(FAKE_AITER, FAKE_FLYDSL)


@pytest.fixture
def on_gfx950(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The device check passes for the CPU (other devices keep the real answer)."""
    real = device.gfx950_missing
    monkeypatch.setattr(device, "gfx950_missing",
                        lambda d: None if d.type == "cpu" else real(d))
    clear_verdict_cache()
    yield
    clear_verdict_cache()


@pytest.fixture
def no_real_aiter() -> None:
    """Skip where a real aiter or FlyDSL is installed: the test needs them absent."""
    for name in _VENDOR_PACKAGES:
        if importlib.util.find_spec(name) is not None:
            pytest.skip(f"a real {name!r} is installed in this environment; this test needs "
                        "it absent (the CI leg core+rocm_aiter has none)")


@pytest.fixture
def cpu() -> torch.device:
    return torch.device("cpu")
