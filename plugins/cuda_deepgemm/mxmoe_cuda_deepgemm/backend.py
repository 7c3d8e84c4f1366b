"""The ``deepgemm-mxfp4`` backend: the plugin object behind the entry point.

MXFP4 expert weights x FP8 E4M3 activations with power-of-two scales per token and 128
channels, on NVIDIA SM100-family GPUs, through DeepGEMM's contiguous grouped
FP8 x FP4 GEMM; the permutation, quantization, activation and reduction around it are
this package's glue. Importing this module imports neither ``deep_gemm`` nor Triton
and does not touch CUDA.
"""

from __future__ import annotations

import torch

from mxmoe import ExpertWeights, MoEConfig, Verdict, hookimpl
from mxmoe.registry import describe_exception

from . import probes
from .layouts import ACTIVATION_GROUP
from .pipeline import run_experts
from .weights import DeepGEMMExperts, convert_experts

MXMOE_API_VERSION = 1

#: A vendor kernel on its own hardware outranks the portable backends.
PRIORITY = 90


@hookimpl
def supports_config(config: MoEConfig, device: torch.device) -> Verdict:
    """The first failing check's reason (device, deep_gemm, JIT toolchain, scheme), each
    check run only after the cheaper ones passed; never raises."""
    try:
        reason = (probes.check_device(device) or probes.check_library()
                  or probes.check_jit_toolchain() or probes.check_config(config))
    except Exception as exc:  # noqa: BLE001 - a probe fails closed
        return Verdict.no(f"probe failed because {describe_exception(exc)}")
    if reason:
        return Verdict.no(reason)
    # K of both GEMMs in whole 128-channel groups: gpt-oss's 2880 is padded to 2944 with
    # zeros, which leave every group's maximum -- so the short last group the reference
    # quantizes -- unchanged.
    return Verdict.yes(PRIORITY, hidden_multiple=ACTIVATION_GROUP,
                       intermediate_multiple=ACTIVATION_GROUP)


@hookimpl
def convert_weights(config: MoEConfig, weights: ExpertWeights,
                    device: torch.device) -> DeepGEMMExperts:
    """DeepGEMM's operands, packed once (see :mod:`.weights`)."""
    return convert_experts(config, weights, device)


@hookimpl
def apply(config: MoEConfig, weights: DeepGEMMExperts, hidden_states: torch.Tensor,
          topk_weights: torch.Tensor, topk_ids: torch.Tensor,
          expert_map: torch.Tensor | None) -> torch.Tensor:
    """Glue, two grouped GEMMs, glue (see :mod:`.pipeline`)."""
    return run_experts(config, weights, hidden_states, topk_weights, topk_ids, expert_map)
