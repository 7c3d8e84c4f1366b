"""Fixtures of the deepgemm-mxfp4 tests: a clean environment, the fake ``deep_gemm``
(tests/fake_vendor, on ``sys.path`` only inside the tests that ask for it), a fake CUDA
toolkit for the JIT probe, and a device probe that takes the CPU for an SM100 GPU.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from mxmoe.registry import reset_registry
from mxmoe.selection import clear_verdict_cache
from mxmoe_cuda_deepgemm import probes

TESTS = Path(__file__).parent
FAKE_VENDOR = TESTS / "fake_vendor"


def _forget_deep_gemm() -> None:
    for name in [m for m in sys.modules if m == "deep_gemm" or m.startswith("deep_gemm.")]:
        del sys.modules[name]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No MXMOE_* / DeepGEMM switches, no cached deep_gemm or verdicts, before and after."""
    for var in [v for v in os.environ if v.startswith(("MXMOE_", "DG_JIT_"))]:
        monkeypatch.delenv(var)
    _forget_deep_gemm()
    probes.nvcc_version.cache_clear()
    reset_registry()
    yield
    _forget_deep_gemm()
    probes.nvcc_version.cache_clear()
    reset_registry()


@pytest.fixture
def fake_deep_gemm(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The test double of deep_gemm, importable as ``deep_gemm``, in its default state."""
    monkeypatch.syspath_prepend(str(FAKE_VENDOR))
    import deep_gemm

    deep_gemm.set_mk_alignment_for_contiguous_layout(128)
    deep_gemm.calls.clear()
    return deep_gemm


def make_toolkit(root: Path, release: str = "12.9") -> Path:
    """A directory laid out like a CUDA toolkit whose nvcc reports ``release``."""
    (root / "bin").mkdir(parents=True)
    (root / "include").mkdir()
    nvcc = root / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'nvcc: NVIDIA (R) Cuda compiler driver'\n"
                    f"echo 'Cuda compilation tools, release {release}, V{release}.0'\n")
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IXUSR)
    return root


@pytest.fixture
def fake_cuda_toolkit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """CUDA_HOME pointing at a toolkit with a working (fake) nvcc 12.9."""
    home = make_toolkit(tmp_path / "cuda")
    monkeypatch.setenv("CUDA_HOME", str(home))
    return home


@pytest.fixture
def cpu_as_sm100(monkeypatch: pytest.MonkeyPatch) -> None:
    """The device probe accepts any device, as if it were an SM100 GPU."""
    monkeypatch.setattr(probes, "check_device", lambda device: None)
    clear_verdict_cache()


@pytest.fixture
def sm100_with_fake(fake_deep_gemm: ModuleType, fake_cuda_toolkit: Path,
                    cpu_as_sm100: None) -> Iterator[ModuleType]:
    """Everything the backend needs, on the CPU: yields the fake deep_gemm."""
    clear_verdict_cache()
    yield fake_deep_gemm
    clear_verdict_cache()
