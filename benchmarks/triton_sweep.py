"""Iteration tool for the ``triton`` backend: time launch-configuration variants per M.

Runs :func:`mxmoe_emulation.triton_backend.launch.moe_forward` directly (no layer, no
routing in the timed region) on gpt-oss-shaped random MX weights, for each token count
and each named :class:`Tiles` variant, and prints per variant: eager and CUDA-graph
time (medians over rotating input sets, so small M is not timed out of a warm L2), the
floor (touched MXFP4 bytes over 2.99 TB/s or FLOPs over 754 TFLOP/s, FACTS.md), the
per-kernel split from the profiler, and the relative difference from the first
variant (every variant must compute the same function). ``mxmoe bench`` is the
harness of record; this is the quick loop behind benchmarks/triton_notes.md.

    PYTHONPATH=core:plugins/emulation python benchmarks/triton_sweep.py \
        --preset gpt-oss-120b --tokens 1,64,4096 --variants all --json $OUT/sweep.json
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import statistics
import sys

import torch

from mxmoe import preset, reference_experts, relative_error, route
from mxmoe.reference import tolerance
from mxmoe.bench.floors import Ceilings, layer_floor, touched_experts
from mxmoe.bench.timing import capture_graphs, time_calls
from mxmoe.bench.workload import device_weights, input_sets
from mxmoe_emulation.triton_backend.layout import convert
from mxmoe_emulation.triton_backend.launch import moe_forward
from mxmoe_emulation.triton_backend.tiles import Tiles, tiles_for

FACTS_CEILINGS = Ceilings(hbm_read_TBps=2.99, bf16_TFLOPs=754.0)

#: Named candidates; "table" means whatever tiles.py picks for the M.
VARIANTS: dict[str, Tiles | None] = {
    "table": None,
    # decode: many small N tiles, two warps of 16 weight rows, few pipeline stages
    "s16-32x256-w2-s3": Tiles(16, 32, 32, 256, 2, 3),
    "s16-32x128-w2-s3": Tiles(16, 32, 32, 128, 2, 3),
    "s16-32x128-w2-s4": Tiles(16, 32, 32, 128, 2, 4),
    "s16-32x64-w2-s4": Tiles(16, 32, 32, 64, 2, 4),
    "s16-32x64-w2-s6": Tiles(16, 32, 32, 64, 2, 6),
    "s16-64x64-w4-s4": Tiles(16, 64, 64, 64, 4, 4),
    "s16-32x64-w1-s4": Tiles(16, 32, 32, 64, 1, 4),
    "s16-16x128-w1-s3": Tiles(16, 16, 16, 128, 1, 3),
    "s16-32x128-w2-s2": Tiles(16, 32, 32, 128, 2, 2),
    "s16-32x64-w2-s4-k2": Tiles(16, 32, 32, 64, 2, 4, split_k=2),
    # prefill
    "b128-64x128-w4-s2": Tiles(128, 64, 64, 128, 4, 2),
    "b64-128x64-w8": Tiles(64, 128, 128, 64, 8, 3),
    "b64-64x128-w4-s2": Tiles(64, 64, 64, 128, 4, 2),
    "b128-64x64-w4-s2": Tiles(128, 64, 64, 64, 4, 2),
    "b64-128x128-w8-s2": Tiles(64, 128, 128, 128, 8, 2),
    "b128-64x256-w4-s2": Tiles(128, 64, 64, 256, 4, 2),
    # prefill with few rows per expert (M * top_k / E of 16-32): smaller token blocks
    "b32-64x128-w4-s3": Tiles(32, 64, 64, 128, 4, 3),
    "b32-32x128-w2-s3": Tiles(32, 32, 32, 128, 2, 3),
    "b32-64x64-w4-s3": Tiles(32, 64, 64, 64, 4, 3),
    "b64-64x128-w4-s3": Tiles(64, 64, 64, 128, 4, 3),
    "b32-64x128-w4-s2": Tiles(32, 64, 64, 128, 4, 2),
    "b32-64x128-w4-s4": Tiles(32, 64, 64, 128, 4, 4),
    "b32-64x256-w4-s3": Tiles(32, 64, 64, 256, 4, 3),
    "b32-128x128-w8-s3": Tiles(32, 128, 128, 128, 8, 3),
    # prefill with many rows per expert: deeper pipelines, wider token blocks
    "b128-64x128-w4-s3": Tiles(128, 64, 64, 128, 4, 3),
    "b128-128x64-w8-s2": Tiles(128, 128, 128, 64, 8, 2),
    "b256-64x64-w8-s2": Tiles(256, 64, 64, 64, 8, 2),
    # v7: wgmma decode tiles and more prefill shapes
    "s16-64x128-w4-s3": Tiles(16, 64, 64, 128, 4, 3),
    "s16-64x256-w4-s3": Tiles(16, 64, 64, 256, 4, 3),
    "s16-64x128-w4-s2": Tiles(16, 64, 64, 128, 4, 2),
    "s16-128x128-w8-s3": Tiles(16, 128, 128, 128, 8, 3),
    "b128-128x128-w8-s2": Tiles(128, 128, 128, 128, 8, 2),
    "s16-64x64-w4-s3": Tiles(16, 64, 64, 64, 4, 3),
    "b128-64x64-w4-s3": Tiles(128, 64, 64, 64, 4, 3),
    "b128-64x128-w4-s4": Tiles(128, 64, 64, 128, 4, 4),
    # v10: split K on the decode tiles (the v2 trial used 64-deep K steps only)
    "s16-32x256-w2-s3-k2": Tiles(16, 32, 32, 256, 2, 3, split_k=2),
    "s16-32x256-w2-s3-k3": Tiles(16, 32, 32, 256, 2, 3, split_k=3),
    "s16-32x128-w2-s3-k2": Tiles(16, 32, 32, 128, 2, 3, split_k=2),
    "s16-32x128-w2-s3-k4": Tiles(16, 32, 32, 128, 2, 3, split_k=4),
    "s16-64x128-w4-s3-k2": Tiles(16, 64, 64, 128, 4, 3, split_k=2),
    # v13: three K slices at M <= 4 (with 128-deep steps), one-warp split tiles
    "s16-32x128-w2-s3-k3": Tiles(16, 32, 32, 128, 2, 3, split_k=3),
    "s16-16x128-w1-s3-k2": Tiles(16, 16, 16, 128, 1, 3, split_k=2),
    "s16-32x64-w2-s4-k3": Tiles(16, 32, 32, 64, 2, 4, split_k=3),
    # v15: wider and deeper 8-warp prefill tiles with the fragment decode
    "b64-128x64-w8-s4": Tiles(64, 128, 128, 64, 8, 4),
    "b128-128x64-w8-s3": Tiles(128, 128, 128, 64, 8, 3),
    "b64-128x128-w8-s3": Tiles(64, 128, 128, 128, 8, 3),
    "b64-256x64-w8": Tiles(64, 256, 256, 64, 8, 3),
    "b64-128x64-w8-s2": Tiles(64, 128, 128, 64, 8, 2),
    "b32-128x64-w8": Tiles(32, 128, 128, 64, 8, 3),
    "b64-64x64-w4-s3": Tiles(64, 64, 64, 64, 4, 3),
    # v15: activations as the left operand ("-n"): the decoded weight tile goes through
    # shared memory (stmatrix) into wgmma, and 128-token blocks decode each weight once
    "b128-128x64-w8-n": Tiles(128, 128, 128, 64, 8, 3, swap=False),
    "b128-128x64-w8-s4-n": Tiles(128, 128, 128, 64, 8, 4, swap=False),
    "b64-128x64-w4-n": Tiles(64, 128, 128, 64, 4, 3, swap=False),
    "b128-64x64-w8-n": Tiles(128, 64, 64, 64, 8, 3, swap=False),
    "b128-128x128-w8-s2-n": Tiles(128, 128, 128, 128, 8, 2, swap=False),
    # v13i: after the C7515 fix, deeper pipelines on the decode tile
    "s16-64x128-w4-s4": Tiles(16, 64, 64, 128, 4, 4),
    "s16-64x128-w4-s5": Tiles(16, 64, 64, 128, 4, 5),
    "s16-64x128-w4-s3-k3": Tiles(16, 64, 64, 128, 4, 3, split_k=3),
    "s16-64x128-w4-s3-k4": Tiles(16, 64, 64, 128, 4, 3, split_k=4),
    "s16-64x128-w4-s4-k2": Tiles(16, 64, 64, 128, 4, 4, split_k=2),
    "s16-64x64-w4-s4-k2": Tiles(16, 64, 64, 64, 4, 4, split_k=2),
    "s16-128x128-w8-s3-k2": Tiles(16, 128, 128, 128, 8, 3, split_k=2),
    "s16-64x128-w4-s4-k3": Tiles(16, 64, 64, 128, 4, 4, split_k=3),
    "s16-64x64-w4-s4-k3": Tiles(16, 64, 64, 64, 4, 4, split_k=3),
    "s16-128x128-w8-s3-k3": Tiles(16, 128, 128, 128, 8, 3, split_k=3),
    "b32-64x128-w4-s3-k2": Tiles(32, 64, 64, 128, 4, 3, split_k=2),
    "b64-128x64-w8-s3-k2": Tiles(64, 128, 128, 64, 8, 3, split_k=2),
    "b128-64x128-w4-s3-k2": Tiles(128, 64, 64, 128, 4, 3, split_k=2),
    # v19: an expert's last, nearly empty block as a narrower tile ("-tNN": tail_m)
    "b64-128x64-w8-t16": Tiles(64, 128, 128, 64, 8, 3, tail_m=16),
    "b64-128x64-w8-t32": Tiles(64, 128, 128, 64, 8, 3, tail_m=32),
    "b128-128x64-w8-t16": Tiles(128, 128, 128, 64, 8, 3, tail_m=16),
    "b128-128x64-w8-t32": Tiles(128, 128, 128, 64, 8, 3, tail_m=32),
    "b128-128x64-w8-t64": Tiles(128, 128, 128, 64, 8, 3, tail_m=64),
    "b32-64x128-w4-s3-t16": Tiles(32, 64, 64, 128, 4, 3, tail_m=16),
    # v25: GEMM2's own K split ("-gN": split_k2) on the decode tile
    "s16-64x128-w4-s3-k2-g1": Tiles(16, 64, 64, 128, 4, 3, split_k=2, split_k2=1),
    "s16-64x128-w4-s3-k2-g3": Tiles(16, 64, 64, 128, 4, 3, split_k=2, split_k2=3),
    "s16-64x128-w4-s3-k3-g2": Tiles(16, 64, 64, 128, 4, 3, split_k=3, split_k2=2),
    "s16-64x128-w4-s3-k1-g2": Tiles(16, 64, 64, 128, 4, 3, split_k2=2),
    "s16-64x128-w4-s3-k3-g1": Tiles(16, 64, 64, 128, 4, 3, split_k=3, split_k2=1),
    # v26: GEMM2 on GEMM1's tile shape, 128 weight rows per program ("-n128": block_n2)
    "s16-64x128-w4-s3-k2-n128g1": Tiles(16, 64, 128, 128, 4, 3, split_k=2, split_k2=1),
    "s16-64x128-w4-s3-k2-n128g2": Tiles(16, 64, 128, 128, 4, 3, split_k=2, split_k2=2),
    "s16-64x128-w4-s3-k2-n128g3": Tiles(16, 64, 128, 128, 4, 3, split_k=2, split_k2=3),
    "s16-64x128-w4-s3-n128": Tiles(16, 64, 128, 128, 4, 3),
    "s16-64x128-w4-s3-n128g2": Tiles(16, 64, 128, 128, 4, 3, split_k2=2),
    "s16-64x128-w4-s4-k2-g1": Tiles(16, 64, 64, 128, 4, 4, split_k=2, split_k2=1),
    "s16-64x128-w4-s3-k2-g1-t4": Tiles(16, 64, 64, 128, 4, 3, split_k=2, split_k2=1, num_stages2=4),
    "s16-64x128-w4-s3-k2-g1-t5": Tiles(16, 64, 64, 128, 4, 3, split_k=2, split_k2=1, num_stages2=5),
    "s16-64x128-w4-s3-k2-g1-t6": Tiles(16, 64, 64, 128, 4, 3, split_k=2, split_k2=1, num_stages2=6),
    "s16-64x128-w4-s3-t4": Tiles(16, 64, 64, 128, 4, 3, num_stages2=4),
    "s16-64x128-w4-s3-t5": Tiles(16, 64, 64, 128, 4, 3, num_stages2=5),
    # v27: splits against the number of experts touched (wave quantization)
    "s16-64x128-w4-s3-k2-g2-t4": Tiles(16, 64, 64, 128, 4, 3, split_k=2, num_stages2=4),
    "s16-64x128-w4-s3-k3-g1-t4": Tiles(16, 64, 64, 128, 4, 3, split_k=3, split_k2=1, num_stages2=4),
    "s16-64x128-w4-s3-k3-g2-t4": Tiles(16, 64, 64, 128, 4, 3, split_k=3, split_k2=2, num_stages2=4),
    "s16-64x128-w4-s3-k4-g2-t4": Tiles(16, 64, 64, 128, 4, 3, split_k=4, split_k2=2, num_stages2=4),
}

DECODE_VARIANTS = ("table", "s16-32x256-w2-s3", "s16-32x128-w2-s3", "s16-32x128-w2-s4",
                   "s16-32x64-w2-s4", "s16-32x64-w2-s6", "s16-64x64-w4-s4", "s16-32x64-w1-s4",
                   "s16-16x128-w1-s3", "s16-32x128-w2-s2", "s16-32x64-w2-s4-k2")
PREFILL_VARIANTS = ("table", "b128-64x128-w4-s2", "b64-128x64-w8", "b64-64x128-w4-s2",
                    "b128-64x64-w4-s2", "b64-128x128-w8-s2", "b128-64x256-w4-s2")


#: Per-M candidates of the prefill table sweep (v6); "table" runs first and last, so the
#: two give the run-to-run spread.
PREFILL_TABLE_VARIANTS = {
    512: ("table", "b32-64x128-w4-s3", "b32-32x128-w2-s3", "b32-64x64-w4-s3",
          "s16-32x128-w2-s3", "table"),
    1024: ("table", "b32-64x128-w4-s3", "b64-64x128-w4-s3", "b64-128x128-w8-s2", "table"),
    4096: ("table", "b128-64x128-w4-s3", "b128-128x64-w8-s2", "b64-64x128-w4-s2",
           "b256-64x64-w8-s2", "table"),
    16384: ("table", "b128-64x128-w4-s3", "b256-64x64-w8-s2", "table"),
}


#: Per-M candidates for the fragment-word decode (v15): the table's tiles and their
#: neighbours in depth, width and K split.
FRAGMENT_VARIANTS = {
    1: ("table", "s16-64x128-w4-s3", "s16-64x128-w4-s4-k2", "s16-64x128-w4-s3-k3", "table"),
    8: ("table", "s16-64x128-w4-s4-k3", "s16-64x128-w4-s3-k2", "s16-64x256-w4-s3",
        "s16-128x128-w8-s3-k3", "table"),
    64: ("table", "s16-64x128-w4-s4-k3", "s16-64x128-w4-s3-k2", "s16-128x128-w8-s3-k3",
         "s16-64x128-w4-s3", "table"),
    4096: ("table", "b128-64x128-w4-s4", "b128-64x128-w4-s2", "b128-128x64-w8-s2",
           "b64-128x128-w8-s2", "table"),
}


def variants_for(m: int, spec: str) -> list[str]:
    """Variant names to run at M: "all" picks the decode or prefill set, "prefill-table"
    and "fragments" the per-M candidates above, else a comma-separated list."""
    if spec == "all":
        return list(DECODE_VARIANTS if m <= 256 else PREFILL_VARIANTS)
    if spec == "prefill-table":
        return list(PREFILL_TABLE_VARIANTS[m])
    if spec == "fragments":
        return list(FRAGMENT_VARIANTS[m])
    return spec.split(",")


def resolve(name: str, m: int, rows_per_expert: float) -> Tiles:
    """The tiles of a variant name: a key of VARIANTS, optionally with "@r<N>" for a
    register limit of N per thread (v13), e.g. "table@r112"."""
    base, _, cap = name.partition("@r")
    tiles = VARIANTS[base] or tiles_for(m, rows_per_expert)
    return dataclasses.replace(tiles, max_registers=int(cap)) if cap else tiles


def replayer(graphs: list[torch.cuda.CUDAGraph]):
    """call(i) replaying the i-th captured forward (rotating)."""
    return lambda i: graphs[i % len(graphs)].replay()


def kernel_split(call, runs: int) -> dict[str, float]:
    """Mean device microseconds per forward of each kernel, from the profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(runs):
            call(i)
        torch.cuda.synchronize()
    totals: dict[str, float] = collections.defaultdict(float)
    for event in prof.key_averages():
        if event.device_type.name == "CUDA" and event.device_time_total > 0:
            totals[event.key[:40]] += event.device_time_total / runs
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt-oss-120b")
    parser.add_argument("--tokens", default="1,64,4096")
    parser.add_argument("--variants", default="all")
    parser.add_argument("--sets", type=int, default=8, help="rotating input sets")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--budget-s", type=float, default=5.0,
                        help="time budget per timing (runs are cut to fit)")
    parser.add_argument("--check-tokens", type=int, default=64,
                        help="tokens compared with the float64 reference per variant")
    parser.add_argument("--json", default=None)
    parser.add_argument("--no-kernel-split", action="store_true",
                        help="skip the torch profiler (when running under ncu)")
    args = parser.parse_args(argv)

    device = torch.device("cuda", torch.cuda.current_device())
    config = preset(args.preset)
    raw = device_weights(config, device, seed=1)
    weights = convert(config, raw)
    limit = tolerance(config)
    rows = []
    for m in [int(t) for t in args.tokens.split(",")]:
        sets = input_sets(config, m, args.sets, device, seed=2)
        routed = [route(s.router_logits, config) for s in sets]
        experts = statistics.mean(touched_experts(ids, config) for _, ids in routed)
        floor = layer_floor(config, m, experts, FACTS_CEILINGS)
        # float64 reference on the first tokens of input set 0 (rows are independent)
        rows_checked = min(m, args.check_tokens)
        (tw0, ti0), x0 = routed[0], sets[0].hidden_states[:rows_checked]
        ref = reference_experts(config, raw, x0, tw0[:rows_checked], ti0[:rows_checked])
        first = None
        for name in variants_for(m, args.variants):
            tiles = resolve(name, m, m * config.top_k / config.num_experts)

            def call(i: int, tiles: Tiles = tiles) -> torch.Tensor:
                s, (tw, ti) = sets[i % len(sets)], routed[i % len(routed)]
                return moe_forward(s.hidden_states, tw, ti, None, weights, tiles)

            try:
                out = call(0)
                torch.cuda.synchronize()
            except Exception as exc:  # noqa: BLE001 - a variant that fails to compile is a result
                print(f"M={m:5d} {name:20s} FAILED {type(exc).__name__}: {str(exc)[:300]}", flush=True)
                continue
            ref_err = relative_error(out[:rows_checked], ref)
            diff = 0.0 if first is None else relative_error(out, first)
            first = out if first is None else first
            eager = time_calls(call, device, warmup=3, repeats=args.repeats, budget_s=args.budget_s).ms
            graph = time_calls(replayer(capture_graphs(call, len(sets), device)), device,
                               warmup=3, repeats=args.repeats, budget_s=args.budget_s).ms
            split = {} if args.no_kernel_split else kernel_split(call, len(sets))
            row = {"M": m, "variant": name, "tiles": repr(tiles), "eager_ms": eager,
                   "graph_ms": graph, "floor_ms": floor.ms, "bound": floor.bound,
                   "experts": experts, "TBps": floor.bytes / graph / 1e9,
                   "TFLOPs": floor.flops / graph / 1e9, "diff_vs_first": diff,
                   "ref_err": ref_err, "ref_rows": rows_checked, "ref_ok": ref_err <= limit,
                   "finite": bool(torch.isfinite(out).all()), "kernels_us": split}
            rows.append(row)
            kern = " ".join(f"{k.split('_kernel')[0][-14:]}={v:.0f}" for k, v in list(split.items())[:4])
            print(f"M={m:5d} {name:20s} eager {eager:8.4f} graph {graph:8.4f} ms | floor "
                  f"{floor.ms:.4f} ({100 * floor.ms / graph:5.1f}%) {row['TBps']:5.2f} TB/s "
                  f"{row['TFLOPs']:6.1f} TF/s | diff {diff:.1e} ref {ref_err:.1e}"
                  f"{'' if row['ref_ok'] else ' FAIL'} | us: {kern}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "preset": args.preset,
                       "triton": __import__("triton").__version__, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
