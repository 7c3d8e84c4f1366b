"""Whether this backend can run a layer here: each check returns the reason it cannot
(a string) or None, never raises, and runs only after the cheaper checks passed.

Order: the device (no CUDA call unless it is a CUDA device of an NVIDIA build), then
``deep_gemm`` (installed, importable, new enough), then DeepGEMM's JIT toolchain (it
compiles every kernel on first use with the CUDA toolkit it finds), then the layer's
features. Importing this module touches neither CUDA nor ``deep_gemm``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import subprocess

import torch

from mxmoe import ActivationFormat, MoEConfig, WeightFormat
from mxmoe.registry import describe_exception

from . import vendor

__all__ = ["check_config", "check_device", "check_jit_toolchain", "check_library",
           "cuda_capability", "find_cuda_home", "nvcc_version"]

SM100_FAMILY_MAJOR = 10
MIN_NVCC = (12, 8)  # the first CUDA that targets SM100 (sm_100a)
_WANT_GPU = "requires an NVIDIA GPU of the SM100 family (Blackwell)"
_INSTALL_HINT = "DeepGEMM built from source, see the mxmoe-cuda-deepgemm README"


def cuda_capability(device: torch.device) -> tuple[int, int, str]:
    """(major, minor, name) of a CUDA device. Initialises CUDA: NVIDIA devices only."""
    major, minor = torch.cuda.get_device_capability(device)
    return major, minor, torch.cuda.get_device_name(device)


def check_device(device: torch.device) -> str | None:
    """An NVIDIA GPU whose compute capability major is 10 (SM100, SM103), else why not."""
    if device.type != "cuda":
        return f"{_WANT_GPU}, found {device.type}"
    if torch.version.hip is not None:
        return f"{_WANT_GPU}, found a ROCm (HIP) device {device}"
    try:
        major, minor, name = cuda_capability(device)
    except Exception as exc:  # noqa: BLE001 - a probe never raises
        return f"{_WANT_GPU}, but {device} cannot be queried: {describe_exception(exc)}"
    if major != SM100_FAMILY_MAJOR:
        return f"requires SM100 (Blackwell), found SM{major}{minor} ({name})"
    return None


def check_library() -> str | None:
    """``deep_gemm`` installed, importable and providing the FP8 x FP4 grouped GEMM."""
    try:
        spec = importlib.util.find_spec(vendor.MODULE)
    except (ImportError, ValueError) as exc:
        spec, error = None, describe_exception(exc)
    else:
        error = "it is not installed"
    if spec is None:
        return f"requires the deep_gemm package ({_INSTALL_HINT}); {error}"
    try:
        module = vendor.deep_gemm()
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - native libraries fail oddly
        return (f"requires an importable deep_gemm; the one at {spec.origin} failed to "
                f"import: {describe_exception(exc)}")
    missing = [name for name in vendor.REQUIRED_FUNCTIONS
               if not callable(getattr(module, name, None))]
    if missing:
        version = getattr(module, "__version__", "of unknown version")
        return (f"requires a deep_gemm with {' and '.join(missing)} (FP8 x FP4 grouped "
                f"GEMMs for SM100); deep_gemm {version} at {spec.origin} is too old "
                f"({_INSTALL_HINT})")
    return None


def find_cuda_home() -> str | None:
    """The CUDA toolkit DeepGEMM's JIT uses: ``CUDA_HOME`` or ``CUDA_PATH``, else the
    parent of the ``nvcc`` on ``PATH``, else ``/usr/local/cuda`` if it exists."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        return home
    nvcc = shutil.which("nvcc")
    if nvcc:
        return os.path.dirname(os.path.dirname(nvcc))
    return "/usr/local/cuda" if os.path.exists("/usr/local/cuda") else None


@functools.lru_cache(maxsize=8)
def nvcc_version(nvcc: str) -> tuple[int, int] | str:
    """(major, minor) of ``nvcc --version``, or why it could not be read. Cached per path."""
    try:
        result = subprocess.run([nvcc, "--version"], capture_output=True, text=True,
                                timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"running {nvcc} --version failed: {describe_exception(exc)}"
    match = re.search(r"release (\d+)\.(\d+)", result.stdout)
    if result.returncode != 0 or match is None:
        return f"{nvcc} --version exited {result.returncode} without a release number"
    return int(match.group(1)), int(match.group(2))


def check_jit_toolchain() -> str | None:
    """DeepGEMM's JIT can find a CUDA toolkit that builds SM100 kernels.

    It compiles with ``$DG_JIT_NVCC_COMPILER`` or ``<cuda home>/bin/nvcc``, or with
    NVRTC when ``DG_JIT_USE_NVRTC=1`` (which still needs the toolkit's headers).
    """
    home = find_cuda_home()
    if home is None:
        return ("DeepGEMM's JIT cannot find CUDA: set CUDA_HOME (or CUDA_PATH), put nvcc "
                "on PATH or install the toolkit in /usr/local/cuda")
    if os.environ.get("DG_JIT_USE_NVRTC", "0").strip() not in ("", "0"):
        include = os.path.join(home, "include")
        if not os.path.isdir(include):
            return f"DeepGEMM's JIT (NVRTC) cannot find CUDA headers: {include} is missing"
        return None
    nvcc = os.environ.get("DG_JIT_NVCC_COMPILER") or os.path.join(home, "bin", "nvcc")
    if not (os.path.isfile(nvcc) and os.access(nvcc, os.X_OK)):
        return f"DeepGEMM's JIT cannot find CUDA: no executable nvcc at {nvcc}"
    version = nvcc_version(nvcc)
    if isinstance(version, str):
        return f"DeepGEMM's JIT cannot use CUDA: {version}"
    if version < MIN_NVCC:
        return (f"DeepGEMM's JIT needs NVCC {MIN_NVCC[0]}.{MIN_NVCC[1]}+ to build SM100 "
                f"kernels, found {version[0]}.{version[1]} at {nvcc}")
    return None


def check_config(config: MoEConfig) -> str | None:
    """The layer's scheme is MXFP4 weights x FP8 activations with power-of-two 1x128 scales."""
    if config.weight_format is not WeightFormat.MXFP4:
        return f"requires weight_format 'mxfp4', found {config.weight_format.value!r}"
    wanted = ActivationFormat.FP8_DYNAMIC_1X128_POW2
    if config.activation_format is ActivationFormat.FP8_DYNAMIC_1X128:
        return (f"requires activation_format {wanted.value!r}: DeepGEMM on SM100 reads "
                "activation scales as UE8M0 powers of two, so float32 1x128 scales cannot "
                "be honoured; found 'fp8_dynamic_1x128'")
    if config.activation_format is not wanted:
        return (f"requires activation_format {wanted.value!r}, found "
                f"{config.activation_format.value!r}")
    return None
