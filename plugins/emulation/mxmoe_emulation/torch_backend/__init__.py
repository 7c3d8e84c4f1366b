"""The ``emulation`` backend: every mxmoe scheme in plain PyTorch, on any device.

It is the always-available fallback (priority 0, the lowest) and the second opinion
next to :mod:`mxmoe.reference`: MXFP4 / MXFP8 weights; bf16, fp16 and float32
activations; static FP8, dynamic FP8 1x128 (float32 or power-of-two scales) and
dynamic MXFP8 (OCP floor or RCEIL scales) activations emulated by quantize-dequantize
with :mod:`mxmoe.formats`; every activation
(:func:`mxmoe.activations.apply_activation`); biases; router weights on the input
or the output; and an expert map (only local experts are computed).

Tokens are grouped by expert and each active expert runs two float32 GEMMs over all
of its rows (:mod:`.experts`). Weights are dequantized either once at conversion or
per call, chosen by ``MXMOE_EMULATION_DEQUANT=convert|call``; by default ``convert``
on the CPU (fast; float32 weights, 7.53x the packed MXFP4 size, 3.88x MXFP8) and
``call`` on accelerators (memory-lean: the packed checkpoint plus one float32
matrix at a time). See :mod:`.dequant`.
"""

from __future__ import annotations

import torch

from mxmoe import ExpertWeights, MoEConfig, Verdict, hookimpl

from .dequant import EmulationWeights, convert, mode_from_environment
from .experts import run_experts

MXMOE_API_VERSION = 1

#: The lowest priority: any other backend that supports a config is preferred.
PRIORITY = 0


def _device_problem(device: torch.device) -> str | None:
    """Why tensors cannot be computed on ``device`` here, or None when they can."""
    if device.type == "cpu":
        return None
    if device.type == "meta":
        return "requires a device that holds data, found 'meta'"
    backend_module = getattr(torch, device.type, None)
    is_available = getattr(backend_module, "is_available", None)
    if is_available is None or not is_available():
        return f"requires an available {device.type} device, found none in this process"
    device_count = getattr(backend_module, "device_count", None)
    if device.index is not None and device_count is not None and device.index >= device_count():
        return (f"requires {device.type} device {device.index}, found "
                f"{device_count()} {device.type} device(s)")
    return None


@hookimpl
def supports_config(config: MoEConfig, device: torch.device) -> Verdict:
    """Every config mxmoe can express, on any device PyTorch can compute on; never
    raises (a failing device query is the reason)."""
    try:
        problem = _device_problem(torch.device(device))
    except Exception as exc:  # noqa: BLE001 - a probe fails closed
        return Verdict.no(f"probe failed because {type(exc).__name__}: {exc}")
    if problem is not None:
        return Verdict.no(problem)
    return Verdict.yes(PRIORITY)


@hookimpl
def convert_weights(config: MoEConfig, weights: ExpertWeights,
                    device: torch.device) -> EmulationWeights:
    """Dequantize now or keep packed, as ``MXMOE_EMULATION_DEQUANT`` (or the device's
    default) says; raises ValueError for an unknown value of that variable."""
    return convert(config, weights, mode_from_environment(device))


@hookimpl
def apply(
    config: MoEConfig,
    weights: EmulationWeights,
    hidden_states: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    expert_map: torch.Tensor | None,
) -> torch.Tensor:
    """The local experts of ``hidden_states`` [M, H] for the given routing -> [M, H]."""
    return run_experts(config, weights, hidden_states, topk_weights, topk_ids, expert_map)
