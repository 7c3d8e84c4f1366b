"""One ``triton`` forward per variant, for profiling under Nsight Compute.

Builds the sweep's workload (gpt-oss weights seed 1, input set 0 of seed 2), runs each
variant twice (compile and warm-up, then the profiled run) inside an NVTX range named
"v<i>" for the i-th variant, so ncu can select its kernels by range:

    ncu --clock-control none --nvtx --nvtx-include "v1/" \\
        --section SpeedOfLight --section Occupancy --section WarpStateStats \\
        python3 benchmarks/ncu_forward.py --tokens 8 --variants table,table@r112
"""

from __future__ import annotations

import argparse

import torch

from mxmoe import preset, route
from mxmoe.bench.workload import device_weights, input_sets
from mxmoe_emulation.triton_backend.launch import moe_forward
from mxmoe_emulation.triton_backend.layout import convert
from triton_sweep import resolve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt-oss-120b")
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--variants", default="table")
    args = parser.parse_args(argv)
    device = torch.device("cuda", torch.cuda.current_device())
    config = preset(args.preset)
    weights = convert(config, device_weights(config, device, seed=1))
    inputs = input_sets(config, args.tokens, 1, device, seed=2)[0]
    topk_weights, topk_ids = route(inputs.router_logits, config)
    for i, name in enumerate(args.variants.split(",")):
        tiles = resolve(name, args.tokens, args.tokens * config.top_k / config.num_experts)
        moe_forward(inputs.hidden_states, topk_weights, topk_ids, None, weights, tiles)
        torch.cuda.synchronize()
        with torch.cuda.nvtx.range(f"v{i}"):
            moe_forward(inputs.hidden_states, topk_weights, topk_ids, None, weights, tiles)
            torch.cuda.synchronize()
        print(f"v{i}", name, tiles, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
