"""One MoE layer as four kernel launches (see :mod:`.kernels`), with no host sync.

Every buffer is sized from shapes alone (the worst-case number of blocks, never the
actual per-expert counts), so the whole pipeline can be captured in a CUDA graph.
Extra device memory per call grows with M * top_k only: the block table, the padded
intermediate activation [rows, I] and the per-slot outputs [M * top_k, H].
"""

from __future__ import annotations

import torch
import triton

from .kernels import align_kernel, moe_gemm_kernel, sum_slots_kernel
from .layout import LayerMath, TritonWeights
from .probe import interpreting
from .tiles import Tiles, tiles_for

__all__ = ["moe_forward", "num_blocks_bound"]

_REDUCE_BLOCK_H = 1024
_ALIGN_CHUNK = 1024


def num_blocks_bound(num_slots: int, num_local_experts: int, block_m: int) -> int:
    """Most blocks the slots can need: whole blocks plus one partial per used expert."""
    return triton.cdiv(num_slots, block_m) + min(num_local_experts, num_slots)


def _align(ids: torch.Tensor, expert_map: torch.Tensor | None, num_local: int,
           block_m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sorted_slots [blocks * block_m], block_expert [blocks], block_rows [blocks])."""
    num_slots = ids.numel()
    blocks = num_blocks_bound(num_slots, num_local, block_m)
    e_pad = triton.next_power_of_2(num_local)
    # one allocation: the outputs, then scratch (counts, row starts, ranks)
    buf = torch.empty(blocks * block_m + 2 * blocks + 2 * e_pad + num_slots, dtype=torch.int32,
                      device=ids.device)
    sorted_slots, block_expert, block_rows, counts, row_start, rank = buf.split(
        [blocks * block_m, blocks, blocks, e_pad, e_pad, num_slots])
    align_kernel[(1,)](
        ids, ids if expert_map is None else expert_map, sorted_slots, block_expert, block_rows,
        counts, rank, row_start, num_slots, blocks,
        NUM_LOCAL=num_local, E_PAD=e_pad, HAS_MAP=expert_map is not None, BLOCK_M=block_m,
        CHUNK=_ALIGN_CHUNK, BLOCK_CHUNK=max(16, 4096 // e_pad), num_warps=8,
    )
    return sorted_slots, block_expert, block_rows


def _gemm(a: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
          out: torch.Tensor, table: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
          route_w: torch.Tensor, n: int, k: int, block_n: int, tiles: Tiles, math: LayerMath,
          *, gated: bool, top_k: int, asm: bool) -> None:
    sorted_slots, block_expert, block_rows = table
    fp4 = math.weight_format == "mxfp4"
    interleaved = gated and math.interleaved
    grid = (block_expert.numel() * triton.cdiv(n, block_n),)
    moe_gemm_kernel[grid](
        a, a.stride(0),
        w, w.stride(0), w.stride(1),
        scale, scale.stride(0), scale.stride(1),
        w if bias is None else bias, 0 if bias is None else bias.stride(0),
        out, out.stride(0),
        sorted_slots, block_expert, block_rows, route_w,
        n, k, (1 if interleaved else n) if gated else 0,
        math.alpha, math.beta, 0.0 if math.limit is None else math.limit,
        TOP_K=top_k, GATED=gated, ROW_STEP=2 if interleaved else 1,
        ACTIVATION=math.activation, HAS_LIMIT=math.limit is not None, HAS_BIAS=bias is not None,
        WEIGHT_ON_INPUT=gated and math.weight_on_input,
        WEIGHT_ON_OUTPUT=not gated and not math.weight_on_input, GATHER_A=gated,
        EPB=2 if fp4 else 1, ASM=asm, SWAP=tiles.swap,
        INTERPRET=interpreting(), BLOCK_M=tiles.block_m, BLOCK_N=block_n, BLOCK_K=tiles.block_k,
        num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )


def moe_forward(
    hidden_states: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    expert_map: torch.Tensor | None,
    weights: TritonWeights,
    tiles: Tiles | None = None,
) -> torch.Tensor:
    """The layer's output [M, H] for contiguous inputs (see the module docstring).

    ``tiles`` overrides the table (benchmarks and tests). The "asm" decode runs on
    NVIDIA GPUs only; the interpreter and ROCm take the portable "manual" one.
    """
    m, hidden = hidden_states.shape
    top_k = topk_ids.shape[1]
    out = torch.empty_like(hidden_states)
    if m == 0:
        return out
    tiles = tiles or tiles_for(m, interpret=interpreting())
    asm = (tiles.decode == "asm" and hidden_states.is_cuda and torch.version.hip is None
           and not interpreting())
    inter = weights.intermediate_size
    num_local = weights.w13.shape[0]
    ids = topk_ids.reshape(-1).to(torch.int32)
    route_w = topk_weights.reshape(-1).to(torch.float32)
    table = _align(ids, expert_map, num_local, tiles.block_m)
    act = torch.empty(table[0].numel(), inter, dtype=hidden_states.dtype,
                      device=hidden_states.device)
    _gemm(hidden_states, weights.w13, weights.w13_scale, weights.w13_bias, act, table, route_w,
          inter, hidden, tiles.block_n1, tiles, weights.math, gated=True, top_k=top_k, asm=asm)
    direct = top_k == 1 and expert_map is None  # each token's one slot is its output row
    slot_out = out if direct else torch.empty(m * top_k, hidden, dtype=hidden_states.dtype,
                                              device=hidden_states.device)
    _gemm(act, weights.w2, weights.w2_scale, weights.w2_bias, slot_out, table, route_w,
          hidden, inter, tiles.block_n2, tiles, weights.math, gated=False, top_k=top_k, asm=asm)
    if not direct:
        sum_slots_kernel[(m, triton.cdiv(hidden, _REDUCE_BLOCK_H))](
            slot_out, ids, ids if expert_map is None else expert_map, out, hidden,
            TOP_K=top_k, HAS_MAP=expert_map is not None, BLOCK_H=_REDUCE_BLOCK_H, INTERPRET=interpreting(),
            num_warps=4,
        )
    return out
