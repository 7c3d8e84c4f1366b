"""``FusedMoE``: one expert layer on the backend selection chose.

Life cycle: build from a config (selects the backend and its padding, allocates the
checkpoint-layout weights), :meth:`FusedMoE.load_weights` once (validates, pads,
converts to the backend's layout, releases the checkpoint copy), then call it on
(hidden_states, router_logits) as often as needed.
"""

from __future__ import annotations

import dataclasses

import torch

from .config import MoEConfig
from .routing import route
from .selection import _as_device, select_backend
from .weights import ExpertWeights, pad_weights, validate_weights, weight_layout

__all__ = ["FusedMoE"]


class FusedMoE(torch.nn.Module):
    """The experts of one MoE layer, run by the best (or the named) backend.

    :param config: the layer.
    :param backend: force a backend by name (else ``MXMOE_BACKEND``, else the best).
    :param device: where weights and activations live (default: the current GPU if
        there is one, else the CPU). The layer is bound to it: the converted weights
        are the backend's own objects and do not follow ``Module.to``.
    """

    def __init__(self, config: MoEConfig, backend: str | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        if not isinstance(config, MoEConfig):
            raise TypeError(f"config: expected mxmoe.MoEConfig, got {type(config).__name__}")
        self.config = config
        self.device = _as_device(device)
        self.backend, self.verdict = select_backend(config, self.device, backend)
        self.hidden_size_padded, self.intermediate_size_padded = self.verdict.padded_sizes(config)
        self.routes_internally = self.verdict.routes_internally
        self.weights: ExpertWeights | None = self._allocate()
        self.correction_bias: torch.Tensor | None = None
        self.expert_map: torch.Tensor | None = None
        if config.expert_map is not None:
            self.expert_map = torch.tensor(config.expert_map, dtype=torch.int32, device=self.device)
        self._converted: object | None = None
        self._apply = self.backend.apply

    @property
    def backend_name(self) -> str:
        """The name of the backend that runs this layer."""
        return self.backend.name

    def _allocate(self) -> ExpertWeights:
        """Uninitialised checkpoint-layout tensors at the backend's padded sizes."""
        c, dev = self.config, self.device
        e, h, i = c.num_local_experts, self.hidden_size_padded, self.intermediate_size_padded
        weights = ExpertWeights(**{
            name: torch.empty(shape, dtype=dtype, device=dev)
            for name, (dtype, shape) in weight_layout(c, h, i).items()
        })
        if c.has_bias:
            weights.w13_bias = torch.empty((e, 2 * i), dtype=c.dtype, device=dev)
            weights.w2_bias = torch.empty((e, h), dtype=c.dtype, device=dev)
        return weights

    def load_weights(
        self,
        w13: torch.Tensor,
        w13_scale: torch.Tensor,
        w2: torch.Tensor,
        w2_scale: torch.Tensor,
        w13_bias: torch.Tensor | None = None,
        w2_bias: torch.Tensor | None = None,
        *,
        w13_input_scale: torch.Tensor | None = None,
        w2_input_scale: torch.Tensor | None = None,
        correction_bias: torch.Tensor | None = None,
    ) -> None:
        """Load the local experts' unpadded checkpoint tensors (any device), once.

        Validates every dtype and shape (TypeError/ValueError naming the tensor), pads
        to the backend's sizes, copies onto the layer's device and calls the backend's
        ``convert_weights``. ``w13_input_scale``/``w2_input_scale`` are the static FP8
        input scales ("fp8_static" only); ``correction_bias`` [E] float is the grouped
        top-k routing bias (``has_correction_bias`` only).
        """
        if self._converted is not None:
            raise RuntimeError("load_weights: weights are already loaded for this layer")
        given = ExpertWeights(w13, w13_scale, w2, w2_scale, w13_bias, w2_bias,
                              w13_input_scale, w2_input_scale)
        validate_weights(self.config, given)
        for name, tensor in given.tensors().items():
            if tensor is not None and tensor.is_meta:
                raise ValueError(f"{name}: a meta tensor has no data to load")
        self._set_correction_bias(correction_bias)
        padded = pad_weights(self.config, given, self.hidden_size_padded,
                             self.intermediate_size_padded)
        target = self.weights
        for field in dataclasses.fields(ExpertWeights):
            src = getattr(padded, field.name)
            if src is None:
                continue
            dst = getattr(target, field.name)
            if dst is None:  # input scales: stored as given, as float32 on the device
                setattr(target, field.name, src.to(self.device, torch.float32))
            else:
                dst.copy_(src)
        converted = self.backend.call("convert_weights", config=self.config, weights=target,
                                      device=self.device)
        if converted is None:
            raise RuntimeError(f"backend {self.backend_name!r}: convert_weights returned None")
        self._converted = converted
        self.weights = None  # the backend holds what it needs; release the checkpoint copy

    def _set_correction_bias(self, bias: torch.Tensor | None) -> None:
        c = self.config
        if c.has_correction_bias and bias is None:
            raise ValueError("correction_bias: required, the config has has_correction_bias=True")
        if not c.has_correction_bias and bias is not None:
            raise ValueError("correction_bias: given, but the config has has_correction_bias=False")
        if bias is None:
            return
        if not isinstance(bias, torch.Tensor) or not bias.is_floating_point():
            raise TypeError("correction_bias: expected a floating-point tensor")
        if tuple(bias.shape) != (c.num_experts,):
            raise ValueError(f"correction_bias: expected shape [{c.num_experts}], "
                             f"got {list(bias.shape)}")
        self.correction_bias = bias.to(self.device, torch.float32)

    def forward(self, hidden_states: torch.Tensor, router_logits: torch.Tensor) -> torch.Tensor:
        """Experts of ``hidden_states`` [M, H] routed by ``router_logits`` [M, E] -> [M, H]."""
        c = self.config
        if self._converted is None:
            raise RuntimeError("FusedMoE.forward: call load_weights(...) first")
        if not isinstance(hidden_states, torch.Tensor) or not isinstance(router_logits, torch.Tensor):
            raise TypeError("hidden_states and router_logits: expected torch.Tensor")
        if hidden_states.dim() != 2 or hidden_states.shape[1] != c.hidden_size:
            raise ValueError(f"hidden_states: expected shape [M, {c.hidden_size}], "
                             f"got {list(hidden_states.shape)}")
        m = hidden_states.shape[0]
        if router_logits.dim() != 2 or router_logits.shape[0] != m \
                or router_logits.shape[1] != c.num_experts:
            raise ValueError(f"router_logits: expected shape [{m}, {c.num_experts}], "
                             f"got {list(router_logits.shape)}")
        if hidden_states.dtype != c.dtype:
            raise TypeError(f"hidden_states: expected dtype {c.dtype}, got {hidden_states.dtype}")
        if not router_logits.is_floating_point():
            raise TypeError(f"router_logits: expected a floating-point tensor, got {router_logits.dtype}")
        if hidden_states.device != self.device or router_logits.device != self.device:
            raise ValueError(f"hidden_states and router_logits: expected tensors on {self.device}, "
                             f"got {hidden_states.device} and {router_logits.device}")
        if m == 0:
            return hidden_states.new_empty((0, c.hidden_size))
        x = hidden_states.contiguous()
        pad = self.hidden_size_padded - c.hidden_size
        if pad:
            x = torch.nn.functional.pad(x, (0, pad))
        if self.routes_internally:
            topk_weights = topk_ids = None
        else:
            topk_weights, topk_ids = route(router_logits, c, self.correction_bias)
        out = self._apply(c, self._converted, x, topk_weights, topk_ids, router_logits,
                          self.expert_map)
        return out[:, : c.hidden_size] if pad else out

    def extra_repr(self) -> str:
        return f"{self.config.describe()}, backend={self.backend_name!r}, device={self.device}"
