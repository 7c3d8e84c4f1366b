"""The emulation backend's forward pass: tokens grouped by expert, float32 GEMMs.

One call:

1. every (token, slot) pair gets its local expert (through the expert map; pairs
   routed to other ranks' experts are dropped) and the pairs are sorted by expert,
   once;
2. per active local expert, one GEMM over all of its rows for each of the two
   weight matrices (no per-token work);
3. each row's result is weighted by its router weight and scatter-added into its
   token's output row, in float32, rounded once to ``config.dtype``.

Rounding follows a hardware pipeline whose GEMM1 epilogue is fused (as the
``triton`` backend's is): GEMMs take float32 operands (bf16/fp16 activations and
every MX weight are exact in float32) and accumulate in float32; GEMM1's bias and
activation act on the float32 accumulator; the activation is then stored in the form
GEMM2 reads, i.e. rounded to ``config.dtype``, or for a quantized activation format
quantize-dequantized with :func:`mxmoe.formats.fake_quantize_activation` straight
from float32 (no ``config.dtype`` rounding ahead of the quantizer: an FP8 quantizer
turns such a 2**-9 perturbation into whole E4M3 steps on a few percent of elements,
about 1e-2 relative error with tails past 5e-2 at a few tokens, so this backend keeps
the quantizer's input exact, like the reference). GEMM1's input is the layer input
through the same quantizer. Each (token, slot) result is weighted in float32,
summed over the top-k in float32 and rounded once to ``config.dtype``.

Host synchronisation: one per call, the ``.tolist()`` of the per-expert row counts
that sizes the per-expert slices (plus the scale check inside the core's static
FP8 quantizer for ``fp8_static``). That is accepted for this backend: it is the
reference-faithful fallback; the ``triton`` backend is the sync-free one.
"""

from __future__ import annotations

import torch

from mxmoe import MoEConfig
from mxmoe.activations import apply_activation
from mxmoe.formats import fake_quantize_activation

from .dequant import COMPUTE_DTYPE, EmulationWeights

__all__ = ["expert_gemm", "group_by_expert", "run_experts"]


def expert_gemm(rows: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
    """``rows @ weight.T + bias`` for all rows of one expert: the backend's only GEMM."""
    return torch.nn.functional.linear(rows, weight, bias)


def group_by_expert(
    topk_ids: torch.Tensor, expert_map: torch.Tensor | None, num_local_experts: int
) -> tuple[torch.Tensor, list[int]]:
    """Flat (token, slot) pair indices sorted by local expert, and rows per expert.

    Returns ``(pairs, counts)``: ``pairs`` int64 [sum(counts)] indexes
    ``topk_ids.reshape(-1)`` (token = pair // top_k), expert 0's pairs first;
    ``counts[e]`` is local expert ``e``'s number of rows. Pairs whose expert is not
    local (expert map entry -1) are not included.
    """
    local = topk_ids.reshape(-1).long()
    if expert_map is not None:
        local = expert_map.long()[local]
    # Non-local pairs take the sentinel id num_local_experts, so they sort last.
    local = torch.where(local < 0, num_local_experts, local)
    order = torch.argsort(local, stable=True)
    counts = torch.bincount(local, minlength=num_local_experts + 1)[:num_local_experts]
    counts_host = counts.tolist()  # the call's one host sync: sizes the slices below
    return order[: sum(counts_host)], counts_host


def _gemm_input(x: torch.Tensor, config: MoEConfig, static_scale: float | None) -> torch.Tensor:
    """A GEMM's float32 operand: ``x`` (``config.dtype``, or float32 activations for a
    quantized format) through the config's activation format."""
    return fake_quantize_activation(x, config.activation_format, static_scale).to(COMPUTE_DTYPE)


def _expert_ffn(config: MoEConfig, weights: EmulationWeights, expert: int,
                x: torch.Tensor) -> torch.Tensor:
    """Local ``expert`` on its rows ``x`` [n, H] (``config.dtype``) -> float32 [n, H]."""
    w13_bias = None if weights.w13_bias is None else weights.w13_bias[expert]
    w2_bias = None if weights.w2_bias is None else weights.w2_bias[expert]
    gate_up = expert_gemm(_gemm_input(x, config, weights.w13_input_scale),
                          weights.matrix("w13", expert), w13_bias)
    act = apply_activation(gate_up, config)
    if not config.activation_format.quantized:
        act = act.to(config.dtype)  # GEMM2 reads the activation in config.dtype
    return expert_gemm(_gemm_input(act, config, weights.w2_input_scale),
                       weights.matrix("w2", expert), w2_bias)


def run_experts(
    config: MoEConfig,
    weights: EmulationWeights,
    hidden_states: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    expert_map: torch.Tensor | None,
) -> torch.Tensor:
    """The layer's local experts on ``hidden_states`` [M, H] -> [M, H] in ``config.dtype``."""
    m, top_k = topk_ids.shape
    pairs, counts = group_by_expert(topk_ids, expert_map, weights.num_experts)
    tokens = pairs // top_k
    router_weight = topk_weights.reshape(-1)[pairs].to(COMPUTE_DTYPE).unsqueeze(1)
    x = hidden_states[tokens].to(config.dtype)
    if config.apply_router_weight_on_input:
        x = (x.to(COMPUTE_DTYPE) * router_weight).to(config.dtype)
    y = torch.empty((pairs.numel(), weights.hidden_size), dtype=COMPUTE_DTYPE,
                    device=hidden_states.device)
    start = 0
    for expert, count in enumerate(counts):
        if count:
            rows = slice(start, start + count)
            y[rows] = _expert_ffn(config, weights, expert, x[rows])
            start += count
    if not config.apply_router_weight_on_input:
        y *= router_weight
    out = torch.zeros((m, weights.hidden_size), dtype=COMPUTE_DTYPE, device=hidden_states.device)
    out.index_add_(0, tokens, y)
    return out.to(config.dtype)
