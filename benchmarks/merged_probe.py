"""Both GEMMs in one launch at decode sizes? (notes, v31)

v30's first reading (timed with a synchronize after every launch, since corrected)
made the weights at M = 8 look as if they already streamed as fast as a plain read, and
put what is left in the GEMMs' start-up and drain: four launches in a row, GEMM2 a
short two-wave stream. This probe tests that. It runs GEMM1 and GEMM2 as the work
units of one launch, one unit a program:

* each program takes the next unit from a counter, GEMM1's units first;
* a GEMM2 unit of a block waits until every GEMM1 unit of that block has stored its
  activation rows: a counter per block, raised after a barrier by a release increment,
  read by an acquire spin followed by a barrier;
* units go out in the order programs start, so a waiting program only waits for units
  that started programs hold: it cannot deadlock;
* GEMM1 runs unsplit, so its epilogue applies the activation and no activation launch
  remains; the top-k sum stays a launch of its own.

A persistent form (programs looping over units) needed 216 registers against the
GEMMs' ~100 and spilled under a limit, so it is not measured.

It times, as CUDA-graph replays on the bench's inputs (gpt-oss-120b):

* ``table``: the backend as shipped (``moe_forward``);
* ``wait-sS[-rR]``: align, the merged launch (S pipeline stages, a register limit of
  R), the top-k sum;
* ``nowait-…``: the same without the waits (wrong results, so only a bound on what
  the ordering costs).

Run on the GPU machine: ``python3 benchmarks/merged_probe.py --tokens 8,16``.
"""

from __future__ import annotations

import argparse
import json

import torch
import triton
import triton.language as tl
from mxmoe import preset, reference_experts, relative_error, route
from mxmoe.bench.floors import layer_floor, touched_experts
from mxmoe.bench.timing import capture_graphs, time_calls
from mxmoe.bench.workload import device_weights, input_sets
from mxmoe_emulation.triton_backend.kernels import _block_product, _table_rows, sum_slots_kernel
from mxmoe_emulation.triton_backend.launch import _align, moe_forward
from mxmoe_emulation.triton_backend.layout import convert
from triton_sweep import FACTS_CEILINGS, replayer


@triton.jit
def merged_kernel(
    x_ptr, stride_x, w1_ptr, w1_se, w1_sn, s1_ptr, s1_se, s1_sn, s1_cols, b1_ptr, b1_se,
    act_ptr, stride_act,
    w2_ptr, w2_se, w2_sn, s2_ptr, s2_se, s2_sn, s2_cols, b2_ptr, b2_se,
    y_ptr, stride_y,
    sorted_slots_ptr, block_expert_ptr, block_rows_ptr, route_w_ptr, done_ptr,
    N1, K1, N2, K2, blocks, alpha, beta, limit,
    WAIT: tl.constexpr, TOP_K: tl.constexpr, ACTIVATION: tl.constexpr,
    HAS_LIMIT: tl.constexpr, SCALE_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    n1 = tl.cdiv(N1, BLOCK_N)
    n2 = tl.cdiv(N2, BLOCK_N)
    units1 = blocks * n1
    # the unit from a counter, not the program id: units are then taken in the order
    # programs start, so every unit a program may wait for is held by a running one
    unit = tl.atomic_add(done_ptr + blocks, 1, sem="relaxed", scope="gpu")
    gemm1 = unit < units1
    u = tl.where(gemm1, unit, unit - units1)
    n_tiles = tl.where(gemm1, n1, n2)
    blk = u // n_tiles
    rows = tl.load(block_rows_ptr + blk)
    if rows > 0:
        expert = tl.load(block_expert_ptr + blk).to(tl.int64)
        slots, m_mask = _table_rows(sorted_slots_ptr, blk, rows, BLOCK_M, BLOCK_M)
        if gemm1:
            _block_product(
                x_ptr, stride_x, w1_ptr, w1_se, w1_sn, s1_ptr, s1_se, s1_sn, s1_cols,
                b1_ptr, b1_se, act_ptr, stride_act, 0, route_w_ptr,
                N1, K1, 1.0, alpha, beta, limit, 0, u, n_tiles, expert, slots, m_mask,
                TOP_K, True, ACTIVATION, HAS_LIMIT, True, False, False, True,
                2, True, True, False, SCALE_BIAS, 1, BLOCK_M, BLOCK_N, BLOCK_K, False)
            if WAIT:
                tl.debug_barrier()  # every thread's stores, then one release
                tl.atomic_add(done_ptr + blk, 1, sem="release", scope="gpu")
        else:
            if WAIT:
                while tl.atomic_add(done_ptr + blk, 0, sem="acquire", scope="gpu") < n1:
                    pass
                tl.debug_barrier()
            _block_product(
                act_ptr, stride_act, w2_ptr, w2_se, w2_sn, s2_ptr, s2_se, s2_sn, s2_cols,
                b2_ptr, b2_se, y_ptr, stride_y, 0, route_w_ptr,
                N2, K2, 1.0, alpha, beta, limit, 0, u, n_tiles, expert, slots, m_mask,
                TOP_K, False, ACTIVATION, HAS_LIMIT, True, False, True, False,
                2, True, True, False, SCALE_BIAS, 1, BLOCK_M, BLOCK_N, BLOCK_K, False)


def merged_forward(x, topk_weights, topk_ids, weights, *, wait: bool, stages: int,
                   registers: int | None, block_n: int = 64,
                   block_k: int = 128) -> torch.Tensor:
    """Align, the merged launch, the top-k sum (block_m 16, gpt-oss layer, bf16)."""
    m, hidden = x.shape
    top_k = topk_ids.shape[1]
    ids = topk_ids.reshape(-1).to(torch.int32)
    route_w = topk_weights.reshape(-1).to(torch.float32)
    num_local = weights.w13.shape[0]
    sorted_slots, block_expert, block_rows = _align(ids, None, num_local, num_local, 16)
    blocks = block_expert.numel()
    slots = ids.numel()
    inter = weights.intermediate_size
    act = torch.empty(slots, inter, dtype=x.dtype, device=x.device)
    y = torch.empty(1, slots, hidden, dtype=x.dtype, device=x.device)
    done = torch.zeros(blocks + 1, dtype=torch.int32, device=x.device)  # + the unit counter
    w1, w2 = weights.w13.view(torch.int32), weights.w2.view(torch.int32)
    s1, s2 = weights.w13_scale, weights.w2_scale
    math = weights.math
    units = blocks * (triton.cdiv(inter, block_n) + triton.cdiv(hidden, block_n))
    merged_kernel[(units,)](
        x, x.stride(0), w1, w1.stride(0), w1.stride(1), s1, s1.stride(0), s1.stride(1),
        s1.shape[2], weights.w13_bias, weights.w13_bias.stride(0), act, act.stride(0),
        w2, w2.stride(0), w2.stride(1), s2, s2.stride(0), s2.stride(1), s2.shape[2],
        weights.w2_bias, weights.w2_bias.stride(0), y, y.stride(1),
        sorted_slots, block_expert, block_rows, route_w, done,
        inter, hidden, hidden, inter, blocks, math.alpha, math.beta,
        0.0 if math.limit is None else math.limit,
        WAIT=wait, TOP_K=top_k, ACTIVATION=math.activation, HAS_LIMIT=math.limit is not None,
        SCALE_BIAS=weights.w13_scale_bias, BLOCK_M=16, BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=4, num_stages=stages, enable_fp_fusion=True,
        **({} if registers is None else {"maxnreg": registers}))
    out = torch.empty_like(x)
    sum_slots_kernel[(m, triton.cdiv(hidden, 1024))](
        y, ids, ids, out, hidden, slots, num_local, TOP_K=top_k, SPLIT_K=1, HAS_MAP=False,
        BLOCK_H=1024, INTERPRET=False, PDL=False, num_warps=4, enable_fp_fusion=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", default="8,16")
    p.add_argument("--variants", default="wait-s3,wait-s3-r128,nowait-s3-r128,wait-s4-r128",
                   help="merged variants: wait|nowait, -sN stages, -rN register limit")
    p.add_argument("--sets", type=int, default=4)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    device = torch.device("cuda")
    config = preset("gpt-oss-120b")
    raw = device_weights(config, device, seed=1)
    weights = convert(config, raw)
    if weights.w13_scale_bias != weights.w2_scale_bias:
        raise SystemExit("the probe passes one scale bias for both GEMMs")
    rows = []
    for m in (int(v) for v in args.tokens.split(",")):
        sets = input_sets(config, m, args.sets, device, seed=2)
        routed = [route(s.router_logits, config) for s in sets]
        experts = sum(touched_experts(ids, config) for _, ids in routed) / len(routed)
        floor = layer_floor(config, m, experts, FACTS_CEILINGS)
        (tw0, ti0), x0 = routed[0], sets[0].hidden_states
        ref = reference_experts(config, raw, x0, tw0, ti0)
        for label in ["table", *args.variants.split(",")]:
            parts = label.split("-")
            wait = None if label == "table" else parts[0] == "wait"
            stages = next((int(x[1:]) for x in parts if x.startswith("s")), 3)
            regs = next((int(x[1:]) for x in parts if x.startswith("r")), None)

            def call(i, wait=wait, stages=stages, regs=regs):
                s, (tw, ti) = sets[i % len(sets)], routed[i % len(routed)]
                if wait is None:
                    return moe_forward(s.hidden_states, tw, ti, None, weights)
                return merged_forward(s.hidden_states, tw, ti, weights, wait=wait,
                                      stages=stages, registers=regs)
            out = call(0)
            torch.cuda.synchronize()
            err = relative_error(out, ref)
            graph = time_calls(replayer(capture_graphs(call, len(sets), device)), device,
                               warmup=3, repeats=50, budget_s=1.0).ms
            tbps = floor.bytes / graph / 1e9
            print(f"M={m:3d} {label:22s} graph {graph:.4f} ms {tbps:.2f} TB/s "
                  f"ref err {err:.1e}", flush=True)
            rows.append({"M": m, "variant": label, "graph_ms": graph, "TBps": tbps,
                         "ref_err": err, "experts": experts})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
