"""Test double of ``aiter.ops.triton.moe_routing.routing``: top-k routing, tokens sorted
by expert, as the a8w4 GEMM consumes them.

``routing(logits, n_expts_act, sm_first=False)`` returns ``(RoutingData, gather_indx,
scatter_indx)``: the k choices of all tokens, flattened token-major (``t * k + j``) with
each token's choices sorted by expert id, are stably sorted by expert; ``gather_indx[p]``
is the flat choice at sorted position ``p`` (its token is ``gather_indx[p] // k``),
``scatter_indx`` the inverse permutation, ``gate_scal[p]`` the router weight at ``p``
(in the logits' dtype). Weights: ``sm_first=False`` takes the top k logits and a softmax
over them; ``sm_first=True`` a softmax over all experts first, not renormalized.
"""

from __future__ import annotations

import dataclasses

import torch

from ...._contract import expect


@dataclasses.dataclass
class ExptData:
    hist: torch.Tensor  # int32 [E]: rows per expert
    token_offs_raw: torch.Tensor  # int32 [E + 1]: first sorted row of each expert
    token_offs_pad: torch.Tensor  # int32 [E + 1]: first block of each expert
    block_pid_map: torch.Tensor  # int32: (block << 16) + expert per block, -1 unused


@dataclasses.dataclass
class RoutingData:
    block_m: int
    gate_scal: torch.Tensor
    expt_hist: torch.Tensor
    n_expts_tot: int
    n_expts_act: int
    expt_data: ExptData | None = None


def _block_m(n_gates: int, n_experts: int) -> int:
    per_expert = max(1, n_gates // n_experts)
    return max(16, min(1 << (per_expert - 1).bit_length(), 128))


def _expt_data(hist: torch.Tensor, n_gates: int, block_m: int) -> ExptData:
    device = hist.device
    zero = torch.zeros(1, dtype=torch.int32, device=device)
    offs_raw = torch.cat((zero, hist.cumsum(0).int()))
    tiles = (hist + block_m - 1) // block_m
    offs_pad = torch.cat((zero, tiles.cumsum(0).int()))
    n_experts = hist.numel()
    max_tiles = n_gates if n_gates <= n_experts else \
        n_experts - 1 - ((n_experts - n_gates - 1) // block_m)
    pid_map = torch.full((max_tiles,), -1, dtype=torch.int32, device=device)
    for expert in range(n_experts):
        for block in range(int(tiles[expert])):
            pid_map[int(offs_pad[expert]) + block] = (block << 16) + expert
    return ExptData(hist, offs_raw, offs_pad, pid_map)


def routing(logits: torch.Tensor, n_expts_act: int, sm_first: bool = False,
            expt_indx: torch.Tensor | None = None
            ) -> tuple[RoutingData, torch.Tensor, torch.Tensor]:
    expect(isinstance(logits, torch.Tensor) and logits.dim() == 2
           and logits.is_floating_point(), "logits: expected a 2-D floating-point tensor")
    expect(expt_indx is None, "expt_indx: this double routes itself only")
    n_tokens, n_experts = logits.shape
    expect(isinstance(n_expts_act, int) and 1 <= n_expts_act <= n_experts,
           f"n_expts_act: expected an int in [1, {n_experts}], got {n_expts_act!r}")
    k = n_expts_act
    scores = logits.float()
    if sm_first:
        scores = torch.softmax(scores, dim=-1)
    picked = torch.argsort(-scores, dim=1, stable=True)[:, :k]  # ties: the lower id
    weights = scores.gather(1, picked)
    if not sm_first:
        weights = torch.softmax(weights, dim=-1)
    ids, order = torch.sort(picked, dim=1)
    weights = weights.gather(1, order)
    flat_ids = ids.reshape(-1)
    gather_indx = torch.argsort(flat_ids, stable=True)
    scatter_indx = torch.argsort(gather_indx, stable=True)
    gate_scal = weights.reshape(-1)[gather_indx].to(logits.dtype)
    hist = torch.bincount(flat_ids, minlength=n_experts).int()
    block_m = _block_m(n_tokens * k, n_experts)
    data = RoutingData(block_m, gate_scal, hist, n_experts, k,
                       _expt_data(hist, n_tokens * k, block_m))
    return data, gather_indx.int(), scatter_indx.int()
