"""Whether the ``triton`` backend can run a layer on a device: the probe.

The checks run cheapest-and-most-fundamental first and each has its own reason, so a
user reads what is missing: Triton itself, then a GPU (or the Triton interpreter for
CPU tensors), then the GPU's compute capability, then the layer's features. Nothing
here touches CUDA unless the device asked about is a CUDA/ROCm device, so probing a
CPU layer never creates a GPU context.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

import torch
from mxmoe import MoEConfig, RoutingMethod, Verdict, WeightFormat

__all__ = ["MIN_COMPUTE_CAPABILITY", "PRIORITY", "ROUTED_HERE", "interpreting", "supports"]

#: Above ``emulation`` (the PyTorch fallback), below vendor kernels on their hardware.
PRIORITY = 50

#: Routing methods the backend computes itself (one Triton launch; grouped top-k is
#: left to mxmoe.route).
ROUTED_HERE = (RoutingMethod.RENORMALIZE, RoutingMethod.RENORMALIZE_NAIVE, RoutingMethod.DEFAULT)

#: Ampere: the first NVIDIA generation with BF16 tensor cores.
MIN_COMPUTE_CAPABILITY = (8, 0)


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def _triton_problem() -> str | None:
    """Why Triton cannot be used, or None when it imports."""
    if importlib.util.find_spec("triton") is None:
        return "requires triton (pip install 'mxmoe-emulation[triton]'), found none installed"
    try:
        importlib.import_module("triton.language")
    except Exception as exc:  # noqa: BLE001 - a broken install is a reason, not a crash
        return f"requires triton, found an installation that fails to import: {exc!r}"
    return None


def _device_problem(device: torch.device) -> str | None:
    """Why ``device`` cannot run Triton kernels, or None."""
    if device.type == "cpu" and interpreting():
        return None
    if device.type != "cuda":
        return f"requires a GPU (CUDA or ROCm), found {device.type}"
    if not torch.cuda.is_available():
        return "requires a GPU (CUDA or ROCm), found a cuda device but torch.cuda.is_available() is False"
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        return f"requires a GPU (CUDA or ROCm), found no cuda:{index} (device count {torch.cuda.device_count()})"
    major, minor = torch.cuda.get_device_capability(index)
    if (major, minor) < MIN_COMPUTE_CAPABILITY and torch.version.hip is None:
        name = torch.cuda.get_device_name(index)
        want = ".".join(map(str, MIN_COMPUTE_CAPABILITY))
        return f"requires compute capability >= {want}, found {major}.{minor} ({name})"
    return None


def _feature_problem(config: MoEConfig) -> str | None:
    """Why the kernels cannot compute ``config``'s scheme, or None."""
    if config.activation_format.quantized:
        return ("requires bf16/fp16 activations (activation_format='bf16'), found "
                f"activation_format={config.activation_format.value!r}")
    if config.dtype not in (torch.bfloat16, torch.float16):
        return f"requires bf16 or fp16 activations, found {str(config.dtype).removeprefix('torch.')}"
    return None


def supports(config: MoEConfig, device: torch.device) -> Verdict:
    """The verdict for (config, device); never raises."""
    try:
        problem = (_triton_problem() or _device_problem(torch.device(device))
                   or _feature_problem(config))
    except Exception as exc:  # noqa: BLE001 - a probe fails closed
        return Verdict.no(f"probe failed because {type(exc).__name__}: {exc}")
    if problem:
        return Verdict.no(problem)
    # MXFP4's fragment words (layout.py) cover 64 columns of K: K a multiple of 64
    multiple = 64 if config.weight_format is WeightFormat.MXFP4 else 32
    return Verdict.yes(PRIORITY, hidden_multiple=multiple, intermediate_multiple=multiple,
                       routes_internally=config.routing in ROUTED_HERE)
