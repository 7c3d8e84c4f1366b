"""Kernel timeline of the `triton` backend's layer inside CUDA-graph replays.

Replays the bench's forward (routing + experts, its inputs: seed 0, 8 rotating sets)
one replay at a time under the torch profiler and prints, per kernel, the median start
and end relative to the replay's first kernel: what runs serially, what overlaps under
programmatic dependent launch, and how long each GEMM streams. Used for
benchmarks/triton_notes.md (v26):

    python3 benchmarks/triton_timeline.py --tokens 1,8,64,4096 --json timeline.json
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics

import torch
from torch.profiler import ProfilerActivity, profile

from mxmoe import FusedMoE, preset
from mxmoe.bench.timing import capture_graphs
from mxmoe.bench.workload import device_weights, input_sets


def replay_timelines(graphs: list[torch.cuda.CUDAGraph], replays: int) -> list[list[tuple]]:
    """(start µs, end µs, kernel name) per kernel of each replay, in start order."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(replays):
            graphs[i % len(graphs)].replay()
            torch.cuda.synchronize()  # one replay at a time: clean per-replay timelines
    kernels = sorted((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                     if e.device_type.name == "CUDA" and e.time_range.end > e.time_range.start)
    timelines, current = [], []
    for kernel in kernels:  # a replay starts with its routing launch
        if "route" in kernel[2] and current:
            timelines.append(current)
            current = []
        current.append(kernel)
    return timelines + [current]


def summarize(timelines: list[list[tuple]]) -> dict:
    """Median span and, per kernel (name#occurrence), median start and end."""
    starts, ends, spans = collections.defaultdict(list), collections.defaultdict(list), []
    for kernels in timelines:
        t0 = kernels[0][0]
        spans.append(kernels[-1][1] - t0)
        seen: collections.Counter = collections.Counter()
        for start, end, name in kernels:
            key = f"{name[:24]}#{seen[name]}"
            seen[name] += 1
            starts[key].append(start - t0)
            ends[key].append(end - t0)
    rows = {k: (statistics.median(starts[k]), statistics.median(ends[k])) for k in starts}
    return {"span_us": statistics.median(spans),
            "kernels": dict(sorted(rows.items(), key=lambda kv: kv[1][0]))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt-oss-120b")
    parser.add_argument("--tokens", default="1,8,64,4096")
    parser.add_argument("--replays", type=int, default=64)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    device = torch.device("cuda", torch.cuda.current_device())
    config = preset(args.preset)
    weights = device_weights(config, device, seed=0)
    layer = FusedMoE(config, backend="triton", device=device)
    layer.load_weights(weights.w13, weights.w13_scale, weights.w2, weights.w2_scale,
                       weights.w13_bias, weights.w2_bias)
    record = {"device": torch.cuda.get_device_name(device), "preset": args.preset, "M": {}}
    for m in [int(t) for t in args.tokens.split(",")]:
        sets = input_sets(config, m, 8, device, seed=0)
        graphs = capture_graphs(lambda i: layer(sets[i].hidden_states, sets[i].router_logits),
                                len(sets), device)
        for i in range(200):  # warm-up
            graphs[i % len(graphs)].replay()
        summary = summarize(replay_timelines(graphs, args.replays))
        record["M"][m] = summary
        print(f"M={m} span {summary['span_us']:.2f} us")
        for name, (start, end) in summary["kernels"].items():
            print(f"   {name:30s} start {start:8.2f}  end {end:8.2f}  dur {end - start:8.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
