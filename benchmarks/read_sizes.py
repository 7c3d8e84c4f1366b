"""How fast can the bytes of one decode-size layer be read at all? (notes, v30)

Times ``torch.sum`` (the bench's HBM ceiling) over tensors the size of gpt-oss-120b's
touched weights at M = 8 -- GEMM1's 251 MB, GEMM2's 126 MB, both (377 MB), and both
read as two sums in a row, as the two GEMMs are -- against the bench's 4 GiB, as
CUDA-graph replays (no launch gaps). Run on the GPU machine:
``python3 benchmarks/read_sizes.py``.
"""

from __future__ import annotations

import argparse
import json

import torch
from mxmoe.bench.timing import capture_graphs, time_calls

MB = 1_000_000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes-mb", default="126,251,377,530,4295")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    dev = torch.device("cuda")
    sizes = [int(v) for v in args.sizes_mb.split(",")]
    data = torch.rand(max(sizes) * MB // 4, device=dev)
    rows = []

    def measure(label: str, parts: list[int]) -> None:
        views, start = [], 0
        for mb in parts:  # disjoint pieces, as two GEMMs read different weights
            views.append(data[start:start + mb * MB // 4])
            start += mb * MB // 4
        graphs = capture_graphs(lambda i: [v.sum() for v in views], 1, dev)
        ms = time_calls(lambda i: graphs[0].replay(), dev, warmup=5, repeats=50,
                        budget_s=2.0).ms
        total = sum(parts) * MB
        rows.append({"read": label, "MB": total / MB, "ms": ms, "TBps": total / ms / 1e9})
        print(f"{label:28s} {total / MB:6.0f} MB {ms * 1e3:8.1f} us {total / ms / 1e9:.2f} TB/s",
              flush=True)

    for mb in sizes:
        measure(f"one sum of {mb} MB", [mb])
    measure("two sums, 251 + 126 MB", [251, 126])
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
