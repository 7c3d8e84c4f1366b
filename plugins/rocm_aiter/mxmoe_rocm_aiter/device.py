"""Is this device an AMD gfx950 (MI355-class) GPU? The first check of both probes.

It decides from what is known without touching a GPU wherever it can: the device
type, then whether PyTorch is a ROCm build (``torch.version.hip``). Only on a ROCm
build with a visible GPU does it read the device's properties, which starts the HIP
runtime on the AMD GPU that the backend would use anyway. On NVIDIA or CPU-only
machines no GPU context is ever created.
"""

from __future__ import annotations

import torch

__all__ = ["REQUIRED", "gfx950_missing"]

#: What both backends need, as the start of their unsupported reasons.
REQUIRED = "requires ROCm gfx950 (MI355-class)"
_ARCH = "gfx950"


def _found(what: str) -> str:
    return f"{REQUIRED}, found {what}"


def gfx950_missing(device: torch.device) -> str | None:
    """Why ``device`` is not a gfx950 GPU (a reason naming what was found), or None."""
    if device.type != "cuda":
        return _found(str(device))
    if torch.version.hip is None:
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only"
        return _found(f"{device} on a {build} build of PyTorch (not ROCm)")
    if not torch.cuda.is_available():
        return _found(f"{device}, but no ROCm GPU is visible")
    index = device.index if device.index is not None else torch.cuda.current_device()
    if not 0 <= index < torch.cuda.device_count():
        return _found(f"{device}, but only {torch.cuda.device_count()} ROCm GPU(s) are visible")
    props = torch.cuda.get_device_properties(index)
    arch = (getattr(props, "gcnArchName", "") or "an unknown architecture").split(":")[0]
    if arch != _ARCH:
        return _found(f"{arch} ({props.name}) at {device}")
    return None
