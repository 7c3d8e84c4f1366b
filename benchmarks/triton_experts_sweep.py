"""Graph time of the `triton` experts against the number of distinct experts touched.

At decode sizes the GEMMs' grids scale with the experts a call touches, and their
programs run in waves of (programs per SM x SMs): a call that needs a few programs past
a whole wave pays a tail. Random routing hides that in an average over draws; this
sweep builds routings that touch exactly E_t experts (fixed routing, no router; each
token's top-k distinct) and times each tile variant per E_t, so the steps show:

    python3 benchmarks/triton_experts_sweep.py --tokens 8 --experts 26,28,29,30,31,32 \
        --variants table,s16-64x128-w4-s3-k2-g2-t4 --json et.json
"""

from __future__ import annotations

import argparse
import json
import random

import torch

from mxmoe import preset
from mxmoe.bench.timing import capture_graphs, time_calls
from mxmoe.bench.workload import device_weights
from mxmoe_emulation.triton_backend.launch import moe_forward
from mxmoe_emulation.triton_backend.layout import convert
from triton_sweep import replayer, resolve

SETS = 4


def routing(rng: random.Random, num_experts: int, tokens: int, top_k: int, touched: int,
            device: torch.device) -> torch.Tensor:
    """topk_ids [tokens, top_k] touching exactly ``touched`` experts, every token's k
    experts distinct."""
    if not top_k <= touched <= min(num_experts, tokens * top_k):
        raise ValueError(f"touched: expected {top_k}..{min(num_experts, tokens * top_k)}, "
                         f"got {touched}")
    chosen = rng.sample(range(num_experts), touched)
    rows: list[list[int]] = [[] for _ in range(tokens)]
    for j, expert in enumerate(chosen):  # every chosen expert once, at most k per token
        rows[j % tokens].append(expert)
    for row in rows:  # then each token's other experts among the chosen
        row += rng.sample([x for x in chosen if x not in row], top_k - len(row))
    rng.shuffle(rows)
    return torch.tensor(rows, dtype=torch.int32, device=device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt-oss-120b")
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--experts", default="26,28,29,30,31,32")
    parser.add_argument("--variants", default="table")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    device = torch.device("cuda", torch.cuda.current_device())
    config = preset(args.preset)
    weights = convert(config, device_weights(config, device, seed=1))
    m, k, e = args.tokens, config.top_k, config.num_experts
    variants = args.variants.split(",")
    rng = random.Random(0)
    xs = [torch.randn(m, config.hidden_size, device=device).to(config.dtype) for _ in range(SETS)]
    results: dict[str, dict[int, list[float]]] = {}
    for touched in [int(t) for t in args.experts.split(",")]:
        ids = [routing(rng, e, m, k, touched, device) for _ in range(SETS)]
        tw = [torch.softmax(torch.randn(m, k, device=device), -1) for _ in range(SETS)]
        for _ in range(args.rounds):
            for name in variants:
                tiles = resolve(name, m, m * k / e)

                def call(i: int, tiles=tiles) -> torch.Tensor:
                    return moe_forward(xs[i % SETS], tw[i % SETS], ids[i % SETS], None,
                                       weights, tiles)

                us = 1e3 * time_calls(replayer(capture_graphs(call, SETS, device)), device,
                                      warmup=20, repeats=200, budget_s=0.5).ms
                results.setdefault(name, {}).setdefault(touched, []).append(us)
        print(f"E_t={touched:3d} " + " ".join(
            f"{name}: {' / '.join(f'{t:.1f}' for t in results[name][touched])} us"
            for name in variants), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(device), "preset": args.preset,
                       "M": m, "us": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
