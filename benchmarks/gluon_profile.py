"""Profiling driver: two forwards of the gpt-oss-120b layer per named sweep variant
(benchmarks/triton_sweep.py names) at M = argv[1], for ncu (triton_notes.md v18, v20, v21)."""
import sys, torch
sys.path.insert(0, "benchmarks")
import triton_sweep as ts
from mxmoe import preset, route
from mxmoe.bench.workload import device_weights, input_sets
dev = torch.device("cuda", 0)
cfg = preset("gpt-oss-120b")
w = ts.convert(cfg, device_weights(cfg, dev, seed=1))
m = int(sys.argv[1])
s = input_sets(cfg, m, 1, dev, seed=2)[0]
tw, ti = route(s.router_logits, cfg)
for name in sys.argv[2].split(","):
    tiles = ts.resolve(name, m, m * cfg.top_k / cfg.num_experts)
    for _ in range(2):
        ts.moe_forward(s.hidden_states, tw, ti, None, w, tiles)
    torch.cuda.synchronize()
    print(name, tiles, flush=True)
