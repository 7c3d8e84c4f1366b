"""The three mxmoe hooks of the ``triton`` backend.

Importing this module imports neither Triton nor the kernels: ``convert_weights``
(which always runs before ``apply``) imports the custom op, after the probe has
found Triton working.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from mxmoe import ExpertWeights, MoEConfig, Verdict, hookimpl

from .probe import ROUTED_HERE, supports

if TYPE_CHECKING:
    from .layout import TritonWeights

__all__ = ["apply", "convert_weights", "supports_config"]


@hookimpl
def supports_config(config: MoEConfig, device: torch.device) -> Verdict:
    """MXFP4/MXFP8 weights with bf16/fp16 activations on a GPU of compute capability
    >= 8.0 (or CPU tensors under ``TRITON_INTERPRET=1``); see :mod:`.probe`."""
    return supports(config, device)


@hookimpl
def convert_weights(config: MoEConfig, weights: ExpertWeights, device: torch.device) -> TritonWeights:
    """The checkpoint tensors as the kernels read them (see :mod:`.layout`)."""
    from . import op  # noqa: F401 - registers torch.ops.mxmoe_emulation.triton_moe
    from .layout import convert

    return convert(config, weights)


def _check_inputs(config: MoEConfig, weights: object, hidden_states: torch.Tensor,
                  topk_weights: torch.Tensor | None, topk_ids: torch.Tensor | None,
                  router_logits: torch.Tensor | None) -> None:
    """Cheap attribute checks: apply is also called directly, not only by FusedMoE."""
    from .layout import TritonWeights

    if not isinstance(weights, TritonWeights):
        raise TypeError(f"weights: expected what convert_weights returned, got {type(weights).__name__}")
    if hidden_states.dtype != config.dtype:
        raise TypeError(f"hidden_states: expected dtype {config.dtype}, got {hidden_states.dtype}")
    if hidden_states.dim() != 2 or hidden_states.shape[1] != weights.hidden_size:
        raise ValueError(f"hidden_states: expected shape [M, {weights.hidden_size}], "
                         f"got {list(hidden_states.shape)}")
    if (topk_weights is None) != (topk_ids is None):
        raise ValueError("topk_weights, topk_ids: expected both or neither (neither: the "
                         "backend routes router_logits itself)")
    if topk_ids is None:
        if config.routing not in ROUTED_HERE:
            raise ValueError(f"topk_weights, topk_ids: required for routing={config.routing.value!r} "
                             f"(the triton backend routes {', '.join(r.value for r in ROUTED_HERE)})")
        expected = [hidden_states.shape[0], config.num_experts]
        if not isinstance(router_logits, torch.Tensor) or list(router_logits.shape) != expected:
            got = list(router_logits.shape) if isinstance(router_logits, torch.Tensor) else router_logits
            raise ValueError(f"router_logits: expected shape {expected}, got {got}")
        if not router_logits.is_floating_point():
            raise TypeError(f"router_logits: expected a floating-point tensor, got {router_logits.dtype}")
        return
    expected = (hidden_states.shape[0], config.top_k)
    if tuple(topk_ids.shape) != expected or tuple(topk_weights.shape) != expected:
        raise ValueError(f"topk_weights, topk_ids: expected shape {list(expected)}, got "
                         f"{list(topk_weights.shape)} and {list(topk_ids.shape)}")
    if topk_ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"topk_ids: expected an int32 tensor, got {topk_ids.dtype}")


@hookimpl
def apply(config: MoEConfig, weights: TritonWeights, hidden_states: torch.Tensor,
          topk_weights: torch.Tensor | None, topk_ids: torch.Tensor | None,
          router_logits: torch.Tensor | None, expert_map: torch.Tensor | None) -> torch.Tensor:
    """The local experts' weighted sum for each token, through the custom ops; routes
    ``router_logits`` itself when given no top-k (one launch instead of PyTorch's several)."""
    from .op import run, triton_route

    _check_inputs(config, weights, hidden_states, topk_weights, topk_ids, router_logits)
    if topk_ids is None:
        topk_weights, topk_ids = triton_route(router_logits.contiguous(), config.routing.value,
                                              config.top_k)
    return run(hidden_states.contiguous(), topk_weights.contiguous(), topk_ids.contiguous(),
               None if expert_map is None else expert_map.contiguous(), weights)
