"""The implementations the benchmark times, by name.

``triton`` and ``emulation`` are mxmoe backends, run through :class:`mxmoe.FusedMoE`
exactly as a user would. The other two are what a PyTorch user would write without
mxmoe, given BF16 copies of the weights dequantized once:

``torch-grouped-mm-bf16``
    route; sort the (token, expert) pairs by expert on the device; gather the tokens;
    ``torch._grouped_mm`` over per-expert row offsets for GEMM1; bias and activation
    in PyTorch; ``torch._grouped_mm`` for GEMM2; bias, router weight and the sum over
    each token's experts in PyTorch. No host synchronisation: it can be captured in a
    CUDA graph.
``torch-loop-bf16``
    the same sort, then a Python loop over the experts that received tokens (their
    counts are read on the host), two ``linear`` calls each.

Every implementation maps (hidden_states [M, H], router_logits [M, E]) to [M, H] in
the config's dtype, routing included.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from ..activations import apply_activation
from ..config import MoEConfig
from ..formats import dequantize_mx
from ..layer import FusedMoE
from ..routing import route
from ..selection import BackendError
from ..weights import ExpertWeights

__all__ = ["IMPL_NAMES", "Impl", "ImplUnavailable", "Implementations"]

#: Every implementation the benchmark knows, in the order it reports them.
IMPL_NAMES = ("triton", "torch-grouped-mm-bf16", "torch-loop-bf16", "emulation")

#: Implementations that are mxmoe backends (impl name -> backend name).
_BACKENDS = {"triton": "triton", "emulation": "emulation"}

Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class ImplUnavailable(Exception):
    """This implementation cannot run the layer on this device; the message says why."""


@dataclasses.dataclass(frozen=True)
class Impl:
    """A runnable implementation: its name, its forward, and (when known in advance)
    why its forward cannot be captured in a CUDA graph."""

    name: str
    forward: Forward
    uncapturable: str | None = None


@dataclasses.dataclass(frozen=True)
class Bf16Experts:
    """The experts dequantized once to BF16, in the checkpoint's orientation:
    w13 [E, 2I, H], w2 [E, H, I], biases [E, 2I] / [E, H] or None."""

    w13: torch.Tensor
    w2: torch.Tensor
    w13_bias: torch.Tensor | None
    w2_bias: torch.Tensor | None

    @classmethod
    def from_mx(cls, config: MoEConfig, weights: ExpertWeights) -> Bf16Experts:
        """Dequantize expert by expert (no float32 copy of the whole layer)."""
        fmt = config.weight_format.mx_name
        e, h, i = config.num_local_experts, config.hidden_size, config.intermediate_size
        device = weights.w13.device
        w13 = torch.empty(e, 2 * i, h, dtype=torch.bfloat16, device=device)
        w2 = torch.empty(e, h, i, dtype=torch.bfloat16, device=device)
        for expert in range(e):
            w13[expert] = dequantize_mx(weights.w13[expert], weights.w13_scale[expert], fmt,
                                        dtype=torch.bfloat16)
            w2[expert] = dequantize_mx(weights.w2[expert], weights.w2_scale[expert], fmt,
                                       dtype=torch.bfloat16)

        def bf16(bias: torch.Tensor | None) -> torch.Tensor | None:
            return None if bias is None else bias.to(torch.bfloat16)

        return cls(w13, w2, bf16(weights.w13_bias), bf16(weights.w2_bias))


@dataclasses.dataclass(frozen=True)
class _ExpertOrder:
    """The M·k (token, expert) pairs sorted by expert: ``order`` indexes the flattened
    [M, k] routing, ``experts`` is each sorted pair's expert, ``counts`` [E] the pairs
    per expert (all on the device)."""

    order: torch.Tensor
    experts: torch.Tensor
    counts: torch.Tensor

    @classmethod
    def of(cls, topk_ids: torch.Tensor, num_experts: int) -> _ExpertOrder:
        flat = topk_ids.reshape(-1).to(torch.int64)
        order = torch.argsort(flat, stable=True)
        # scatter_add, not bincount: bincount reads its maximum on the host.
        counts = torch.zeros(num_experts, dtype=torch.int64, device=flat.device)
        counts.scatter_add_(0, flat, torch.ones_like(flat))
        return cls(order, flat[order], counts)


def _activate(h: torch.Tensor, config: MoEConfig) -> torch.Tensor:
    """GEMM1's BF16 output -> GEMM2's BF16 input, the activation computed in float32."""
    return apply_activation(h.float(), config).to(torch.bfloat16)


def _combine(expert_out: torch.Tensor, pairs: _ExpertOrder, topk_weights: torch.Tensor,
             dtype: torch.dtype) -> torch.Tensor:
    """Expert outputs in sorted order [M·k, H] -> [M, H]: each weighted by its router
    weight, put back in (token, slot) order and summed over the k slots in float32."""
    m, k = topk_weights.shape
    weighted = expert_out.float() * topk_weights.reshape(-1)[pairs.order].unsqueeze(1)
    unsorted = torch.empty_like(weighted)
    unsorted[pairs.order] = weighted
    return unsorted.view(m, k, -1).sum(dim=1).to(dtype)


def _grouped_mm_forward(config: MoEConfig, experts: Bf16Experts) -> Forward:
    # torch._grouped_mm multiplies [rows, K] by [E, K, N]: transposed views, no copy.
    w13_t, w2_t = experts.w13.transpose(1, 2), experts.w2.transpose(1, 2)
    k = config.top_k

    def forward(x: torch.Tensor, router_logits: torch.Tensor) -> torch.Tensor:
        topk_weights, topk_ids = route(router_logits, config)
        pairs = _ExpertOrder.of(topk_ids, config.num_experts)
        offsets = pairs.counts.cumsum(0).to(torch.int32)
        rows = x[pairs.order // k]
        h = torch._grouped_mm(rows, w13_t, offs=offsets)
        if experts.w13_bias is not None:
            h = h + experts.w13_bias[pairs.experts]
        y = torch._grouped_mm(_activate(h, config), w2_t, offs=offsets)
        if experts.w2_bias is not None:
            y = y + experts.w2_bias[pairs.experts]
        return _combine(y, pairs, topk_weights, config.dtype)

    return forward


def _loop_forward(config: MoEConfig, experts: Bf16Experts) -> Forward:
    linear = torch.nn.functional.linear
    k = config.top_k

    def bias(stack: torch.Tensor | None, expert: int) -> torch.Tensor | None:
        return None if stack is None else stack[expert]

    def forward(x: torch.Tensor, router_logits: torch.Tensor) -> torch.Tensor:
        topk_weights, topk_ids = route(router_logits, config)
        pairs = _ExpertOrder.of(topk_ids, config.num_experts)
        out = torch.empty(pairs.order.numel(), config.hidden_size, dtype=torch.bfloat16,
                          device=x.device)
        start = 0
        for expert, count in enumerate(pairs.counts.tolist()):
            if count == 0:
                continue
            rows = slice(start, start + count)
            start += count
            h = linear(x[pairs.order[rows] // k], experts.w13[expert], bias(experts.w13_bias, expert))
            out[rows] = linear(_activate(h, config), experts.w2[expert], bias(experts.w2_bias, expert))
        return _combine(out, pairs, topk_weights, config.dtype)

    return forward


def _backend_impl(name: str, config: MoEConfig, weights: ExpertWeights,
                  device: torch.device) -> Impl:
    try:
        layer = FusedMoE(config, backend=_BACKENDS[name], device=device)
    except BackendError as exc:
        raise ImplUnavailable(str(exc).splitlines()[0]) from None
    layer.load_weights(weights.w13, weights.w13_scale, weights.w2, weights.w2_scale,
                       weights.w13_bias, weights.w2_bias)
    return Impl(name, layer)


def _grouped_mm_unavailable(device: torch.device) -> str | None:
    """Why ``torch._grouped_mm`` cannot run BF16 on ``device``, or None if it can."""
    if not hasattr(torch, "_grouped_mm"):
        return f"torch {torch.__version__} has no torch._grouped_mm"
    try:
        a = torch.ones(16, 16, dtype=torch.bfloat16, device=device)
        b = torch.ones(2, 16, 16, dtype=torch.bfloat16, device=device)
        offsets = torch.tensor([8, 16], dtype=torch.int32, device=device)
        torch._grouped_mm(a, b, offs=offsets)
    except Exception as exc:  # noqa: BLE001 - any failure means "not here", with its text
        return f"torch._grouped_mm fails on {device}: {type(exc).__name__}: {exc}"
    return None


class Implementations:
    """Builds implementations of one layer on one device by name, sharing one BF16
    dequantized copy of the weights between the two PyTorch peers."""

    def __init__(self, config: MoEConfig, weights: ExpertWeights, device: torch.device) -> None:
        self.config = config
        self.weights = weights
        self.device = device
        self._bf16: Bf16Experts | None = None

    def _bf16_experts(self) -> Bf16Experts:
        if self._bf16 is None:
            self._bf16 = Bf16Experts.from_mx(self.config, self.weights)
        return self._bf16

    def build(self, name: str) -> Impl:
        """The implementation ``name``; raises :class:`ImplUnavailable` with the reason
        when it cannot run here, ValueError for an unknown name."""
        if name not in IMPL_NAMES:
            raise ValueError(f"impl: unknown implementation {name!r}; expected one of "
                             f"{', '.join(IMPL_NAMES)}")
        if name in _BACKENDS:
            return _backend_impl(name, self.config, self.weights, self.device)
        if self.config.expert_map is not None:
            raise ImplUnavailable(f"{name} runs all experts locally; the config has an expert_map")
        if self.config.activation_format.quantized:
            raise ImplUnavailable(f"{name} computes with BF16 activations; the config has "
                                  f"activation_format={self.config.activation_format.value!r}")
        if name == "torch-grouped-mm-bf16":
            reason = _grouped_mm_unavailable(self.device)
            if reason is not None:
                raise ImplUnavailable(reason)
            return Impl(name, _grouped_mm_forward(self.config, self._bf16_experts()))
        return Impl(name, _loop_forward(self.config, self._bf16_experts()),
                    uncapturable="reads per-expert token counts on the host every forward")
