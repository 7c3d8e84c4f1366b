"""How long a light layer's time depends on the heavy work before it (GPU only).

Times CUDA-graph replays of the one-token gpt-oss-120b ``triton`` layer (the bench's
harness: same weights, inputs and graphs), fresh, and then continuously for a few
seconds right after 200 BF16 8192^3 matmuls, printing the median of each 50 replays
with the time since the matmuls ended, and the SM clock, power and temperature
(nvidia-smi) before, right after the matmuls and at the end. The bench's time-based
warm-up (``--warmup-s``, benchmarks/README.md) is chosen from this curve.

    python3 benchmarks/clock_settle.py > settle.txt
"""

from __future__ import annotations

import subprocess
import time

import torch

from mxmoe import FusedMoE, preset
from mxmoe.bench.timing import capture_graphs, time_calls
from mxmoe.bench.workload import device_weights, input_sets


def _clock() -> str:
    query = ["nvidia-smi", "--query-gpu=clocks.sm,power.draw,temperature.gpu",
             "--format=csv,noheader"]
    return subprocess.run(query, capture_output=True, text=True, check=False).stdout.strip()


def main() -> None:
    device = torch.device("cuda")
    config = preset("gpt-oss-120b")
    w = device_weights(config, device, seed=0)
    layer = FusedMoE(config, backend="triton", device=device)
    layer.load_weights(w.w13, w.w13_scale, w.w2, w.w2_scale, w.w13_bias, w.w2_bias)
    sets = input_sets(config, 1, 8, device, seed=0)
    graphs = capture_graphs(lambda i: layer(sets[i % 8].hidden_states, sets[i % 8].router_logits),
                            8, device)

    def median_us() -> float:
        """The bench's timing of 50 replays, without its warm-up."""
        timing = time_calls(lambda i: graphs[i % 8].replay(), device, warmup=0, repeats=50,
                            budget_s=1.0)
        return timing.ms * 1e3

    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(20):
        median_us()
    print(f"fresh: {median_us():.1f} us ({_clock()})", flush=True)
    for _ in range(200):
        a @ a
    torch.cuda.synchronize()
    print(f"after 200 matmuls: {_clock()}", flush=True)
    start = time.perf_counter()
    marks = [0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 3.0]
    while marks:
        since = time.perf_counter() - start
        us = median_us()
        if since >= marks[0]:
            print(f"{since:6.3f} s after: {us:.1f} us", flush=True)
            while marks and since >= marks[0]:
                marks.pop(0)
    print(f"end: {_clock()}", flush=True)


if __name__ == "__main__":
    main()
