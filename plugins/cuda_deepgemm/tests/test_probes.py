"""The probe: one distinct reason per missing piece, device first, never raising, and
forcing the backend raises that reason. Runs on this CPU machine as it is, with each
later stage reached by faking only the stages before it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mxmoe
from mxmoe.selection import clear_verdict_cache
from mxmoe_cuda_deepgemm import backend, probes

from conftest import make_toolkit

NAME = "deepgemm-mxfp4"
CONFIG = mxmoe.preset("gpt-oss-mini", activation_format="fp8_dynamic_1x128_pow2")
CPU = torch.device("cpu")
CUDA = torch.device("cuda", 0)


def reason(config: mxmoe.MoEConfig = CONFIG, device: torch.device = CPU) -> str | None:
    return backend.supports_config(config=config, device=device).reason


# -- the device ------------------------------------------------------------------


@pytest.mark.parametrize("device, found", [(CPU, "cpu"), (torch.device("meta"), "meta")])
def test_not_a_gpu(device: torch.device, found: str) -> None:
    assert reason(device=device) == (
        f"requires an NVIDIA GPU of the SM100 family (Blackwell), found {found}")


def test_rocm_is_not_nvidia(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.version, "hip", "6.3.0")
    monkeypatch.setattr(probes, "cuda_capability", pytest.fail)  # must not be queried
    assert reason(device=CUDA) == (
        "requires an NVIDIA GPU of the SM100 family (Blackwell), found a ROCm (HIP) "
        "device cuda:0")


@pytest.mark.parametrize("capability, name, expected", [
    ((9, 0), "NVIDIA H100 80GB HBM3",
     "requires SM100 (Blackwell), found SM90 (NVIDIA H100 80GB HBM3)"),
    ((12, 0), "NVIDIA RTX PRO 6000 Blackwell",
     "requires SM100 (Blackwell), found SM120 (NVIDIA RTX PRO 6000 Blackwell)"),
    ((8, 0), "NVIDIA A100-SXM4-80GB",
     "requires SM100 (Blackwell), found SM80 (NVIDIA A100-SXM4-80GB)"),
])
def test_wrong_compute_capability(monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int],
                                  name: str, expected: str) -> None:
    monkeypatch.setattr(probes, "cuda_capability", lambda device: (*capability, name))
    assert reason(device=CUDA) == expected


@pytest.mark.parametrize("capability", [(10, 0), (10, 3)])
def test_sm100_family_passes_the_device_check(monkeypatch: pytest.MonkeyPatch,
                                              capability: tuple[int, int]) -> None:
    monkeypatch.setattr(probes, "cuda_capability", lambda device: (*capability, "NVIDIA B200"))
    assert probes.check_device(CUDA) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a PyTorch that cannot reach a "
                    "CUDA device, to see the query fail")
def test_unqueryable_cuda_device() -> None:
    text = reason(device=CUDA)
    assert text.startswith("requires an NVIDIA GPU of the SM100 family (Blackwell), but "
                           "cuda:0 cannot be queried: ")


# -- deep_gemm ------------------------------------------------------------------


def _package(root: Path, body: str) -> Path:
    (root / "deep_gemm").mkdir(parents=True)
    (root / "deep_gemm" / "__init__.py").write_text(body)
    return root


def test_deep_gemm_not_installed(cpu_as_sm100: None) -> None:
    assert reason() == ("requires the deep_gemm package (DeepGEMM built from source, see "
                        "the mxmoe-cuda-deepgemm README); it is not installed")


def test_deep_gemm_fails_to_import(cpu_as_sm100: None, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(_package(tmp_path, "raise RuntimeError('no libcuda')\n")))
    text = reason()
    assert text.startswith("requires an importable deep_gemm; the one at ")
    assert text.endswith("failed to import: RuntimeError: no libcuda")


def test_deep_gemm_too_old(cpu_as_sm100: None, tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    old = "__version__ = '1.0.0'\ndef get_mk_alignment_for_contiguous_layout():\n    return 128\n"
    monkeypatch.syspath_prepend(str(_package(tmp_path, old)))
    text = reason()
    assert text.startswith("requires a deep_gemm with m_grouped_fp8_fp4_gemm_nt_contiguous "
                           "(FP8 x FP4 grouped GEMMs for SM100); deep_gemm 1.0.0 at ")
    assert "is too old" in text


# -- DeepGEMM's JIT toolchain ------------------------------------------------------


@pytest.fixture
def no_toolkit_anywhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("CUDA_HOME", "CUDA_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    real_exists = probes.os.path.exists
    monkeypatch.setattr(probes.os.path, "exists",
                        lambda p: False if p == "/usr/local/cuda" else real_exists(p))


def test_jit_cannot_find_cuda(cpu_as_sm100: None, fake_deep_gemm: object,
                              no_toolkit_anywhere: None) -> None:
    assert reason() == ("DeepGEMM's JIT cannot find CUDA: set CUDA_HOME (or CUDA_PATH), "
                        "put nvcc on PATH or install the toolkit in /usr/local/cuda")


def test_jit_finds_nvcc_on_path(cpu_as_sm100: None, fake_deep_gemm: object,
                                no_toolkit_anywhere: None, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    home = make_toolkit(tmp_path / "toolkit")
    monkeypatch.setenv("PATH", str(home / "bin"))
    assert probes.find_cuda_home() == str(home)
    assert reason() is None


def test_jit_home_without_nvcc(cpu_as_sm100: None, fake_deep_gemm: object, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    assert reason() == (f"DeepGEMM's JIT cannot find CUDA: no executable nvcc at "
                        f"{tmp_path / 'bin' / 'nvcc'}")


def test_jit_nvcc_too_old(cpu_as_sm100: None, fake_deep_gemm: object, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    home = make_toolkit(tmp_path / "cuda-12.4", release="12.4")
    monkeypatch.delenv("CUDA_HOME", raising=False)  # it would win over CUDA_PATH
    monkeypatch.setenv("CUDA_PATH", str(home))
    assert reason() == ("DeepGEMM's JIT needs NVCC 12.8+ to build SM100 kernels, found 12.4 "
                        f"at {home / 'bin' / 'nvcc'}")


def test_jit_nvcc_override_and_nvrtc(cpu_as_sm100: None, fake_deep_gemm: object,
                                     fake_cuda_toolkit: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DG_JIT_NVCC_COMPILER", str(tmp_path / "missing-nvcc"))
    assert reason().endswith(f"no executable nvcc at {tmp_path / 'missing-nvcc'}")
    clear_verdict_cache()
    monkeypatch.setenv("DG_JIT_USE_NVRTC", "1")  # NVRTC needs headers, not nvcc
    assert reason() is None
    (fake_cuda_toolkit / "include").rmdir()
    assert reason() == ("DeepGEMM's JIT (NVRTC) cannot find CUDA headers: "
                        f"{fake_cuda_toolkit / 'include'} is missing")


# -- the layer's scheme -----------------------------------------------------------------


@pytest.mark.parametrize("changes, expected", [
    ({"weight_format": "mxfp8"}, "requires weight_format 'mxfp4', found 'mxfp8'"),
    ({"activation_format": "bf16"},
     "requires activation_format 'fp8_dynamic_1x128_pow2', found 'bf16'"),
    ({"activation_format": "mxfp8_dynamic"},
     "requires activation_format 'fp8_dynamic_1x128_pow2', found 'mxfp8_dynamic'"),
    ({"activation_format": "fp8_dynamic_1x128"},
     "requires activation_format 'fp8_dynamic_1x128_pow2': DeepGEMM on SM100 reads "
     "activation scales as UE8M0 powers of two, so float32 1x128 scales cannot be "
     "honoured; found 'fp8_dynamic_1x128'"),
])
def test_unsupported_scheme(sm100_with_fake: object, changes: dict, expected: str) -> None:
    assert reason(CONFIG.replace(**changes)) == expected


def test_everything_present_is_supported(sm100_with_fake: object) -> None:
    verdict = backend.supports_config(config=CONFIG, device=CPU)
    assert verdict.supported and verdict.priority == backend.PRIORITY
    assert verdict.padded_sizes(CONFIG) == (512, 512)


def test_gpt_oss_is_padded_to_whole_groups(sm100_with_fake: object) -> None:
    config = mxmoe.preset("gpt-oss-120b", activation_format="fp8_dynamic_1x128_pow2")
    assert backend.supports_config(config=config, device=CPU).padded_sizes(config) == (2944, 2944)


def test_hardware_reason_comes_before_library_and_scheme() -> None:
    # Nothing is present and the scheme is wrong too: the user reads the hardware first.
    assert reason(CONFIG.replace(weight_format="mxfp8")).startswith(
        "requires an NVIDIA GPU of the SM100 family")


def test_probe_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(device: torch.device) -> tuple[int, int, str]:
        raise RuntimeError("driver exploded")

    monkeypatch.setattr(probes, "cuda_capability", broken)
    assert reason(device=CUDA).endswith("cuda:0 cannot be queried: RuntimeError: driver exploded")


def test_an_unexpected_error_in_any_check_is_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> str | None:
        raise OSError("toolkit vanished")

    monkeypatch.setattr(probes, "check_device", lambda device: None)
    monkeypatch.setattr(probes, "check_library", lambda: None)
    monkeypatch.setattr(probes, "check_jit_toolchain", broken)
    assert reason() == "probe failed because OSError: toolkit vanished"


# -- forcing the backend ---------------------------------------------------------------


def test_forcing_raises_the_reason() -> None:
    with pytest.raises(mxmoe.BackendError, match=r"requires an NVIDIA GPU of the SM100 "
                       r"family \(Blackwell\), found cpu"):
        mxmoe.select_backend(CONFIG, CPU, backend=NAME)
    with pytest.raises(mxmoe.BackendError, match="found cpu"):
        mxmoe.FusedMoE(CONFIG, backend=NAME, device=CPU)


def test_forcing_by_environment_raises_the_sm90_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MXMOE_BACKEND", NAME)
    monkeypatch.setattr(probes, "cuda_capability", lambda d: (9, 0, "NVIDIA H100 80GB HBM3"))
    with pytest.raises(mxmoe.BackendError, match=r"found SM90 \(NVIDIA H100 80GB HBM3\)"):
        mxmoe.select_backend(CONFIG, CUDA)


class _AnyDevice:
    """A stand-in for whatever other backend is installed: supports everything."""

    MXMOE_API_VERSION = 1

    @staticmethod
    @mxmoe.hookimpl
    def supports_config(config: mxmoe.MoEConfig) -> mxmoe.Verdict:
        return mxmoe.Verdict.yes(0)

    @staticmethod
    @mxmoe.hookimpl
    def convert_weights(weights: mxmoe.ExpertWeights) -> mxmoe.ExpertWeights:
        return weights

    @staticmethod
    @mxmoe.hookimpl
    def apply(hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


def test_automatic_selection_falls_back() -> None:
    mxmoe.register_backend("any-device", _AnyDevice())
    chosen, _ = mxmoe.select_backend(CONFIG, CPU)
    assert chosen.name == "any-device"
    ours = next(r for r in mxmoe.explain(CONFIG, CPU) if r.name == NAME)
    assert not ours.supported and ours.reason.endswith("found cpu")


# -- imports -----------------------------------------------------------------------


def test_import_and_cpu_probe_touch_neither_cuda_nor_vendors() -> None:
    code = (
        "import sys, torch, mxmoe\n"
        "from mxmoe_cuda_deepgemm import backend\n"
        "cfg = mxmoe.preset('gpt-oss-mini', activation_format='fp8_dynamic_1x128_pow2')\n"
        "print(backend.supports_config(config=cfg, device=torch.device('cpu')).reason)\n"
        "assert 'deep_gemm' not in sys.modules and 'triton' not in sys.modules\n"
        "assert not torch.cuda.is_initialized()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "found cpu" in done.stdout
