"""Does the MXFP4 fragment-word layout cost HBM bandwidth at decode sizes? (notes, v30)

GEMM2 of gpt-oss-120b at M = 8 streams its weights at ~73 % of HBM, GEMM1 at ~83 %.
This probe reads the same bytes the way the GEMMs' programs do, without decoding or
multiplying anything, so only the access pattern is left. Layouts of one expert's
words (``LAYOUT``), for programs of 64 weight rows (four 16-row groups) reading 128
columns a step:

* ``groups``: the backend's. Per step a program reads one 1 KB run from each of its
  four groups, which lie ``K / 2 * 16`` bytes apart: four interleaved streams.
* ``contiguous``: each program's bytes in the order it reads them: one 4 KB piece a
  step, one stream a program.
* ``run-major``: a 64-column run of every tile, then the next: the programs of an
  expert that run side by side read neighbouring bytes, as a plain reduction does.

Copies go through Triton's pipeliner (asynchronous copies into shared memory,
``DEPTH`` steps deep, as in the GEMMs) or, with ``REGISTERS``, three steps ahead in
registers. The words are folded into a checksum. Programs are persistent, ``PER_SM``
per SM, and take their (expert, tile) units in the GEMMs' order, so the waves are the
GEMMs' too. Times are the bench's (``mxmoe.bench.timing.time_calls``: medians of CUDA
events, launches back to back), and a ``torch.sum`` of the whole tensor is timed the
same way for comparison.

Run on the GPU machine: ``python3 benchmarks/stream_probe.py``.
"""

from __future__ import annotations

import argparse
import json

import torch
import triton
import triton.language as tl
from mxmoe.bench.timing import time_calls


@triton.jit
def _step_words(base, tile, step, steps, tiles, LAYOUT: tl.constexpr):
    """The words [group, run, 128] of one program's step (zeros past the last step)."""
    g = tl.arange(0, 4)[:, None, None]
    run = tl.arange(0, 2)[None, :, None]
    lane = tl.arange(0, 128)[None, None, :]
    if LAYOUT == "contiguous":  # [tile][step][group][run][128]
        offs = ((tile * steps + step) * 4 + g) * 256 + run * 128 + lane
    elif LAYOUT == "run-major":  # [run][tile][group][128]: a run of every tile, then the next
        offs = (((2 * step + run) * tiles + tile) * 4 + g) * 128 + lane
    else:  # "groups", the backend's: [group][run of 64 columns][128]
        offs = (tile * 4 + g) * (steps * 256) + (2 * step + run) * 128 + lane
    return tl.load(base + offs, mask=(offs * 0 + step) < steps, other=0)


@triton.jit
def stream_kernel(w_ptr, experts_ptr, out_ptr, units, tiles_per_expert, steps,
                  expert_words, LAYOUT: tl.constexpr, DEPTH: tl.constexpr,
                  REGISTERS: tl.constexpr):
    pid = tl.program_id(0)
    check = tl.zeros([4, 2, 128], dtype=tl.int32)
    for unit in range(pid, units, tl.num_programs(0)):
        expert = tl.load(experts_ptr + unit // tiles_per_expert).to(tl.int64)
        tile = unit % tiles_per_expert
        base = w_ptr + expert * expert_words
        if REGISTERS:  # three steps ahead in registers, no shared memory
            w0 = _step_words(base, tile, 0, steps, tiles_per_expert, LAYOUT)
            w1 = _step_words(base, tile, 1, steps, tiles_per_expert, LAYOUT)
            w2 = _step_words(base, tile, 2, steps, tiles_per_expert, LAYOUT)
            for step in tl.range(0, steps, num_stages=1):
                w3 = _step_words(base, tile, step + 3, steps, tiles_per_expert, LAYOUT)
                check ^= w0
                w0, w1, w2 = w1, w2, w3
        else:  # Triton's pipeliner: asynchronous copies through shared memory
            for step in tl.range(0, steps, num_stages=DEPTH):
                check ^= _step_words(base, tile, step, steps, tiles_per_expert, LAYOUT)
    g = tl.arange(0, 4)[:, None, None]
    run = tl.arange(0, 2)[None, :, None]
    lane = tl.arange(0, 128)[None, None, :]
    tl.store(out_ptr + pid * 1024 + g * 256 + run * 128 + lane, check)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experts", default="29,128", help="experts touched, comma-separated")
    p.add_argument("--total-experts", type=int, default=128,
                   help="experts stored (more than 128 for multi-GB reads)")
    p.add_argument("--rows", type=int, default=2880, help="weight rows N (GEMM2: H)")
    p.add_argument("--k", type=int, default=2944, help="K, padded to 128 (GEMM2: I)")
    p.add_argument("--per-sm", default="4,5,6")
    p.add_argument("--depth", default="3,4")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    dev = torch.device("cuda")
    total_experts = args.total_experts
    n, k = args.rows, args.k
    steps = k // 128
    expert_words = n * k // 8
    w = torch.randint(-2**31, 2**31 - 1, (total_experts * expert_words,), device=dev,
                      dtype=torch.int32)
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    rows = []
    # the bench's ceiling, on the same bytes: torch.sum of the whole tensor
    flat = w.view(torch.float32)
    ms = time_calls(lambda _: flat.sum(), dev, warmup=3, repeats=10, budget_s=2.0).ms
    print(f"torch.sum of all {w.numel() * 4 / 1e6:.0f} MB: {ms * 1e3:.1f} us "
          f"{w.numel() * 4 / ms / 1e9:.2f} TB/s", flush=True)
    rows.append({"experts": total_experts, "layout": "torch.sum", "ms": ms,
                 "TBps": w.numel() * 4 / ms / 1e9})
    for e_t in (int(v) for v in args.experts.split(",")):
        experts = torch.randperm(total_experts, device=dev)[:e_t].to(torch.int32)
        tiles = n // 64
        units = e_t * tiles
        nbytes = units * 64 * k // 2
        for per_sm in (int(v) for v in args.per_sm.split(",")):
            for depth in (int(v) for v in args.depth.split(",")):
                grid = (min(units, per_sm * sms),)
                out = torch.empty(grid[0] * 1024, device=dev, dtype=torch.int32)
                for layout, regs in (("groups", False), ("contiguous", False),
                                     ("run-major", False), ("groups", True)):
                    def call(lay=layout, d=depth, g=grid, o=out, r=regs):
                        stream_kernel[g](w, experts, o, units, tiles, steps, expert_words,
                                         LAYOUT=lay, DEPTH=d, REGISTERS=r, num_warps=4)
                    ms = time_calls(lambda _, f=call: f(), dev, warmup=3, repeats=30,
                                    budget_s=2.0).ms
                    row = {"experts": e_t, "per_sm": per_sm, "depth": depth,
                           "layout": layout,
                           "copies": "registers" if regs else "pipeliner", "ms": ms,
                           "TBps": nbytes / ms / 1e9}
                    rows.append(row)
                    print(f"E_t={e_t:3d} per_sm={per_sm} depth={depth} {row['layout']:10s} "
                          f"{row['copies']:9s} "
                          f"{ms * 1e3:8.1f} us {row['TBps']:.2f} TB/s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
