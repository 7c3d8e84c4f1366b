"""The backend contract: the hooks an mxmoe backend implements.

A backend is one plugin object (a module, class or instance) registered under the
``mxmoe.backends`` entry-point group; the entry point's name is the backend's name.
It declares ``MXMOE_API_VERSION = 1`` (see :data:`HOOK_API_VERSION`) and implements
all three hooks below with :data:`mxmoe.hookimpl`. As with pluggy, an implementation
may accept any subset of a hook's arguments, by name.

The core calls each backend's implementation on its own, never the whole hook at
once, so one backend's exception cannot hide another's answer:

* ``supports_config`` is asked for every backend during selection; it must be cheap,
  must not create a GPU context unless the device is that backend's, and should
  check the device and the vendor installation before anything else. Returning
  anything but a :class:`mxmoe.Verdict`, or raising, makes the backend unsupported.
* ``convert_weights`` runs once per layer, after loading.
* ``apply`` runs on every forward pass of the chosen backend, bound once: it is the
  hot path and receives already-validated tensors.
"""

from __future__ import annotations

from typing import Any

import pluggy
import torch

from .config import MoEConfig
from .verdict import Verdict
from .weights import ExpertWeights

PROJECT_NAME = "mxmoe"

#: The version of this contract. A plugin whose ``MXMOE_API_VERSION`` differs is
#: reported as incompatible and not registered.
HOOK_API_VERSION = 1

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def supports_config(config: MoEConfig, device: torch.device) -> Verdict:
    """May this backend run ``config`` on ``device``?

    :param config: the layer, as the model defines it (unpadded sizes).
    :param device: where the layer's tensors live.
    :return: ``Verdict.yes(priority, hidden_multiple=..., intermediate_multiple=...,
        routes_internally=...)`` or ``Verdict.no("requires ..., found ...")``. The
        reason should name what is missing (hardware first, then libraries, then
        features), so a user on the wrong machine reads the hardware they lack.
    """


@hookspec
def convert_weights(config: MoEConfig, weights: ExpertWeights, device: torch.device) -> Any:
    """Turn checkpoint-layout weights into this backend's kernel layout, once.

    :param config: the layer (unpadded sizes).
    :param weights: the local experts' tensors on ``device``, already padded to the
        sizes the backend's verdict asked for (see :mod:`mxmoe.weights`). They may be
        reused or released by the backend: the layer keeps only the return value.
    :param device: the layer's device.
    :return: any object; it is passed back unchanged as ``apply``'s ``weights``. It
        must be a pure function of its inputs (the conformance kit checks this).
    """


@hookspec
def apply(
    config: MoEConfig,
    weights: Any,
    hidden_states: torch.Tensor,
    topk_weights: torch.Tensor | None,
    topk_ids: torch.Tensor | None,
    router_logits: torch.Tensor,
    expert_map: torch.Tensor | None,
) -> torch.Tensor:
    """Run the local experts on a batch of tokens.

    :param config: the layer (unpadded sizes; ``config.hidden_size`` is the model's).
    :param weights: what ``convert_weights`` returned.
    :param hidden_states: ``[M, H_pad]`` in ``config.dtype``, contiguous; M may be 0.
    :param topk_weights: float32 ``[M, top_k]``, or None for a backend that routes
        internally.
    :param topk_ids: int32 ``[M, top_k]`` global expert ids, or None likewise.
    :param router_logits: ``[M, num_experts]``; what an internally-routing backend
        routes on (others may ignore it).
    :param expert_map: int32 ``[num_experts]`` global -> local expert index, -1 for
        experts of other ranks, on the device; None without expert parallelism.
    :return: ``[M, H_pad]`` in ``config.dtype``: the sum over each token's local
        experts of router weight x expert output (or, with
        ``config.apply_router_weight_on_input``, the weight applied to the input).
        Must not modify its inputs.
    """


HOOK_NAMES = ("supports_config", "convert_weights", "apply")
