"""One MoE layer as a few kernel launches (see :mod:`.kernels`), no host sync.

[route, when the backend routes] -> [align, unless a small call: GEMM1 groups the slots
and publishes the table] -> GEMM1 ->
[activation, when GEMM1's K is split] -> GEMM2 -> top-k sum (the sum is skipped when
each token's single slot can be written as its output row). On Hopper and later the
launches are programmatic dependent launches (:func:`use_pdl`): each starts while the
previous one drains and waits in-kernel for its inputs.

Every buffer is sized from shapes alone (the worst-case number of blocks, never the
actual per-expert counts), so the whole pipeline can be captured in a CUDA graph.
Extra device memory per call grows with M * top_k only: the block table, the
intermediate activation [M * top_k, I], the per-slot outputs [M * top_k, H] and, with
split K, float32 partial sums [split, M * top_k, 2I] and [split, M * top_k, H].
"""

from __future__ import annotations

import functools
import os

import torch
import triton

from .kernels import (activation_kernel, align_kernel, moe_gemm_kernel, route_kernel,
                      sum_slots_kernel)
from .layout import LayerMath, TritonWeights
from .probe import interpreting
from .tiles import Tiles, tiles_for

__all__ = ["PDL_ENV", "SLOT_LED_MAX_SLOTS", "moe_forward", "num_blocks_bound", "route_topk",
           "slot_led", "use_pdl"]

_REDUCE_BLOCK = 1024

#: Compiler options of every launch. Floating-point contraction (a * b + c as one FMA) is
#: asked for explicitly: it is Triton 3.6's default, under which the kernels were measured
#: and validated, and Triton 3.9 warns that its default changes in 3.10.
_COMPILER = {"enable_fp_fusion": True}


#: Largest [slots, experts] one-hot the one-step align keeps in registers (its column
#: cumsum goes through shared memory; 64 x 128 compiles to 168 registers with 4 warps,
#: 128 x 128 to 255 with 8, 256 x 128 spills with 16).
ONE_HOT_MAX = 8192


def _align_chunk(num_slots: int, e_pad: int) -> tuple[int, bool, int]:
    """(slots per step, one step in registers, warps) of the one-program align kernel.
    Calls whose [slots, experts] one-hot fits in registers take one step without atomics
    (gpt-oss-120b up to 64 slots, gpt-oss-20b up to 256); larger ones up to 4096 slots a
    step, where each step waits a round trip for its atomics. The kernel is a chain of
    dependent steps in one program, so more warps than its tiles need shorten it: 8 and
    16 warps measured 1-5 µs faster than 4 (benchmarks/triton_notes.md, v26: 256 slots
    12.2 -> 10.0 µs, 16384 slots 52.7 -> 48.8 µs)."""
    chunk = max(16, triton.next_power_of_2(num_slots))
    if chunk * e_pad <= ONE_HOT_MAX:
        return chunk, True, max(8, min(16, chunk * e_pad // 2048))
    return min(4096, max(128, chunk)), False, 16


def _global_experts(num_local: int, expert_map: torch.Tensor | None) -> int:
    """The routing's expert count E: the local experts, or the expert map's length."""
    return num_local if expert_map is None else expert_map.numel()


def _map_argument(ids: torch.Tensor, expert_map: torch.Tensor | None) -> torch.Tensor:
    """A kernel's expert-map pointer: the map, or the ids standing in for it when there is
    none (the kernels then never read it: HAS_MAP is False)."""
    return ids if expert_map is None else expert_map


def num_blocks_bound(num_slots: int, num_local_experts: int, block_m: int) -> int:
    """Most blocks the slots can need: whole blocks plus one partial per used expert."""
    return triton.cdiv(num_slots, block_m) + min(num_local_experts, num_slots)


#: Most (token, k) slots for which GEMM1's programs may group the slots themselves
#: (:func:`.kernels._slot_led_block`) instead of an align launch; each program then scans
#: this many ids at most (GEMM2 reads the blocks GEMM1 publishes).
SLOT_LED_MAX_SLOTS = 128


def slot_led(num_slots: int, num_local_experts: int, block_m: int) -> bool:
    """Whether a call's blocks are led by its slots (no align launch). Every GEMM1 program
    then pays a scan over the ids before its first load, which beats the align launch
    only while nearly every slot has an expert to itself: up to 8 slots, or up to a
    quarter of a slot per local expert (benchmarks/triton_notes.md, v17: gpt-oss-120b
    −5 % at 8 slots, −1.6 % at 32; +4 % at 64; gpt-oss-20b +4 % at 32 slots on 32
    experts). The grid (a block per slot) is never larger than the align step's bound."""
    return (num_slots <= SLOT_LED_MAX_SLOTS
            and (num_slots <= 8 or 4 * num_slots <= num_local_experts)
            and num_slots <= num_blocks_bound(num_slots, num_local_experts, block_m))


#: Environment switch for programmatic dependent launch on Hopper and later ("0" or "1").
PDL_ENV = "MXMOE_TRITON_PDL"


def use_pdl(device: torch.device) -> bool:
    """Whether the layer's launches overlap their neighbours' start-up and tail through
    programmatic dependent launch: NVIDIA GPUs of compute capability >= 9.0, not under
    the interpreter, unless ``MXMOE_TRITON_PDL=0``."""
    setting = os.environ.get(PDL_ENV, "1").strip()
    if setting not in ("0", "1"):
        raise ValueError(f"{PDL_ENV}: expected '0' or '1', got {setting!r}")
    return (setting == "1" and device.type == "cuda" and torch.version.hip is None
            and not interpreting() and _capability(device.index)[0] >= 9)


def route_topk(router_logits: torch.Tensor, method: str,
               top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(topk_weights float32 [M, k], topk_ids int32 [M, k]) of ``router_logits`` [M, E]
    (last dimension contiguous) by one of mxmoe's plain routing methods, in one launch."""
    m, e = router_logits.shape
    weights = torch.empty(m, top_k, dtype=torch.float32, device=router_logits.device)
    ids = torch.empty(m, top_k, dtype=torch.int32, device=router_logits.device)
    if m:
        e_pad = triton.next_power_of_2(e)
        block_t = min(16, max(1, 2048 // e_pad))
        pdl = use_pdl(router_logits.device)
        route_kernel[(triton.cdiv(m, block_t),)](
            router_logits, router_logits.stride(0), weights, ids, m, e, TOP_K=top_k,
            K_PAD=triton.next_power_of_2(top_k), METHOD=method, E_PAD=e_pad, BLOCK_T=block_t,
            PDL=pdl, num_warps=4, launch_pdl=pdl, **_COMPILER,
        )
    return weights, ids


@functools.lru_cache(maxsize=None)
def _capability(index: int | None) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def _block_table(blocks: int, block_m: int, device: torch.device,
                 scratch: tuple[int, ...] = ()) -> tuple[torch.Tensor, ...]:
    """The GEMMs' block table, uninitialized, as one int32 allocation: (sorted_slots
    [blocks * block_m], block_expert [blocks], block_rows [blocks]), then one tensor per
    ``scratch`` length. Written by the align step, or by GEMM1's slot-led programs."""
    sizes = [blocks * block_m, blocks, blocks, *scratch]
    return torch.empty(sum(sizes), dtype=torch.int32, device=device).split(sizes)


def _align(ids: torch.Tensor, expert_map: torch.Tensor | None, num_local: int,
           num_experts: int, block_m: int,
           pdl: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sorted_slots [blocks * block_m], block_expert [blocks], block_rows [blocks])."""
    num_slots = ids.numel()
    blocks = num_blocks_bound(num_slots, num_local, block_m)
    e_pad = triton.next_power_of_2(num_local)
    # the table, then scratch (counts, row starts, ranks)
    sorted_slots, block_expert, block_rows, counts, row_start, rank = _block_table(
        blocks, block_m, ids.device, (e_pad, e_pad, num_slots))
    chunk, one_step, warps = _align_chunk(num_slots, e_pad)
    align_kernel[(1,)](
        ids, _map_argument(ids, expert_map), sorted_slots, block_expert, block_rows,
        counts, rank, row_start, num_slots, blocks, num_experts,
        NUM_LOCAL=num_local, E_PAD=e_pad, HAS_MAP=expert_map is not None, BLOCK_M=block_m,
        CHUNK=chunk, ONE_STEP=one_step, BLOCK_CHUNK=max(16, ONE_HOT_MAX // e_pad), PDL=pdl,
        num_warps=warps, launch_pdl=pdl, **_COMPILER,
    )
    return sorted_slots, block_expert, block_rows


class _Launcher:
    """The constants of one forward: layer math, tiles, decode, interpreter and routing
    tensors."""

    def __init__(self, weights: TritonWeights, tiles: Tiles, asm: bool, interpret: bool,
                 dtype: torch.dtype, ids: torch.Tensor, route_w: torch.Tensor,
                 expert_map: torch.Tensor | None, num_experts: int, top_k: int) -> None:
        self.weights, self.tiles, self.asm, self.dtype, self.top_k = weights, tiles, asm, dtype, top_k
        self.interpret = interpret
        self.pdl = use_pdl(ids.device)
        self.math: LayerMath = weights.math
        self.ids, self.route_w, self.expert_map = ids, route_w, expert_map
        self.num_experts = num_experts
        # small calls: every slot may lead a block, found by GEMM1's programs (no align
        # launch), which write the table GEMM2 reads; the grid: a block per slot
        num_local = weights.w13.shape[0]
        num_slots = ids.numel()
        self.slots_pad = (triton.next_power_of_2(num_slots)
                          if slot_led(num_slots, num_local, tiles.block_m) else 0)
        if self.slots_pad:
            self.table = _block_table(num_slots, tiles.block_m, ids.device)
        else:
            self.table = _align(ids, expert_map, num_local, num_experts, tiles.block_m,
                                self.pdl)

    @property
    def register_limit(self) -> dict[str, int]:
        """The GEMMs' register limit as a launch option: PTX's ``.maxnreg``, so only with
        the NVIDIA (inline-PTX) decode."""
        limit = self.tiles.max_registers
        return {"maxnreg": limit} if limit is not None and self.asm else {}

    def _scale_bias(self, bias: int) -> tuple[int, float]:
        """(scale_bias, acc_scale) of a GEMM: only the bf16 PTX decode biases scales."""
        if self.asm and self.math.weight_format == "mxfp4" and self.dtype == torch.bfloat16:
            return bias, 2.0 ** (126 - bias)
        return 0, 1.0

    def gemm(self, a: torch.Tensor, out: torch.Tensor, *, gated: bool, split: int) -> None:
        """GEMM1 (gated) or GEMM2 of every block into ``out`` (rows per slot; with split
        K, [split, slots, ...] float32 partials)."""
        w, math, tiles = self.weights, self.math, self.tiles
        sorted_slots, block_expert, block_rows = self.table
        if gated:
            wq, scale, bias, block_n = w.w13, w.w13_scale, w.w13_bias, tiles.block_n1
            n, k, scale_bias = w.intermediate_size, w.hidden_size, w.w13_scale_bias
            stages = tiles.num_stages
        else:
            wq, scale, bias, block_n = w.w2, w.w2_scale, w.w2_bias, tiles.block_n2
            n, k, scale_bias = w.hidden_size, w.intermediate_size, w.w2_scale_bias
            stages = tiles.gemm2_stages
        scale_bias, acc_scale = self._scale_bias(scale_bias)
        fp4 = math.weight_format == "mxfp4"
        if fp4:  # fragment words: the kernel addresses 32-bit words (layout.py)
            wq = wq.view(torch.int32)
        row_stride = out.stride(-2)
        grid = (block_expert.numel() * triton.cdiv(n, block_n) * split,)
        moe_gemm_kernel[grid](
            a, a.stride(0),
            wq, wq.stride(0), wq.stride(1),
            scale, scale.stride(0), scale.stride(1), scale.shape[2],
            wq if bias is None else bias, 0 if bias is None else bias.stride(0),
            out, row_stride, out.stride(0) if split > 1 else 0,
            sorted_slots, block_expert, block_rows, self.ids,
            _map_argument(self.ids, self.expert_map), self.route_w,
            n, k, self.ids.numel(), self.num_experts, acc_scale,
            math.alpha, math.beta, 0.0 if math.limit is None else math.limit,
            TOP_K=self.top_k, GATED=gated,
            ACTIVATION=math.activation, HAS_LIMIT=math.limit is not None,
            HAS_BIAS=bias is not None, WEIGHT_ON_INPUT=gated and math.weight_on_input,
            WEIGHT_ON_OUTPUT=not gated and not math.weight_on_input, GATHER_A=gated,
            EPB=2 if fp4 else 1, ASM=self.asm, SWAP=tiles.swap, INTERPRET=self.interpret,
            SCALE_BIAS=scale_bias, SPLIT_K=split, HAS_MAP=self.expert_map is not None,
            SLOTS_PAD=self.slots_pad if gated else 0, TAIL_M=tiles.tail_m,
            BLOCK_M=tiles.block_m, BLOCK_N=block_n, BLOCK_K=tiles.block_k,
            PDL=self.pdl, num_warps=tiles.num_warps, num_stages=stages,
            launch_pdl=self.pdl, **self.register_limit, **_COMPILER,
        )

    def activation(self, partials: torch.Tensor, act: torch.Tensor) -> None:
        """GEMM1's epilogue after a split K."""
        w, math = self.weights, self.math
        n, split, slots = w.intermediate_size, partials.shape[0], partials.shape[1]
        bias = w.w13_bias
        activation_kernel[(slots, triton.cdiv(n, _REDUCE_BLOCK))](
            partials, self.ids, _map_argument(self.ids, self.expert_map),
            partials if bias is None else bias, 0 if bias is None else bias.stride(0), act,
            slots, self.num_experts, n,
            math.alpha, math.beta, 0.0 if math.limit is None else math.limit,
            SPLIT_K=split, ACTIVATION=math.activation,
            HAS_LIMIT=math.limit is not None, HAS_BIAS=bias is not None,
            HAS_MAP=self.expert_map is not None, INTERPRET=self.interpret, BLOCK=_REDUCE_BLOCK,
            PDL=self.pdl, num_warps=4, launch_pdl=self.pdl, **_COMPILER,
        )

    def sum_slots(self, slot_out: torch.Tensor, out: torch.Tensor) -> None:
        """Each token's output: the sum of its slots' rows (and K splits)."""
        split, slots, hidden = slot_out.shape
        sum_slots_kernel[(out.shape[0], triton.cdiv(hidden, _REDUCE_BLOCK))](
            slot_out, self.ids, _map_argument(self.ids, self.expert_map), out,
            hidden, slots, self.num_experts, TOP_K=self.top_k, SPLIT_K=split,
            HAS_MAP=self.expert_map is not None,
            BLOCK_H=_REDUCE_BLOCK, INTERPRET=self.interpret, PDL=self.pdl, num_warps=4,
            launch_pdl=self.pdl, **_COMPILER,
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
    interpret = interpreting()
    num_experts = _global_experts(weights.w13.shape[0], expert_map)
    tiles = tiles or tiles_for(m, m * top_k / num_experts, interpret=interpret)
    asm = (tiles.decode == "asm" and hidden_states.is_cuda and torch.version.hip is None
           and not interpret)
    dev, dtype, slots = hidden_states.device, hidden_states.dtype, m * top_k
    run = _Launcher(weights, tiles, asm, interpret, dtype, topk_ids.reshape(-1).to(torch.int32),
                    topk_weights.reshape(-1).to(torch.float32), expert_map, num_experts, top_k)
    split, split2 = tiles.split_k, tiles.gemm2_split
    act = torch.empty(slots, weights.intermediate_size, dtype=dtype, device=dev)
    if split > 1:
        partials = torch.empty(split, slots, 2 * weights.intermediate_size, dtype=torch.float32,
                               device=dev)
        run.gemm(hidden_states, partials, gated=True, split=split)
        run.activation(partials, act)
    else:
        run.gemm(hidden_states, act, gated=True, split=1)
    if split2 == 1 and top_k == 1 and expert_map is None:
        run.gemm(act, out, gated=False, split=1)  # each token's one slot is its output row
        return out
    slot_out = torch.empty(split2, slots, hidden, dtype=torch.float32 if split2 > 1 else dtype,
                           device=dev)
    run.gemm(act, slot_out, gated=False, split=split2)
    run.sum_slots(slot_out, out)
    return out
