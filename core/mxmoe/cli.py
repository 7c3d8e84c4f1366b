"""The ``mxmoe`` command line.

``mxmoe backends``  what is installed and what each backend says about a layer here
``mxmoe run``       the main job: build a layer with random MX weights on the best
                    device, run it, check it against the reference, time it
``mxmoe bench``     the GPU benchmark (see benchmarks/README.md)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence

import torch

from . import bench
from .config import PRESETS, MoEConfig, preset
from .layer import FusedMoE
from .reference import reference_moe, relative_error, tolerance
from .selection import BackendError, BackendRecord, default_device, explain
from .weights import random_weights

DEFAULT_PRESET = "gpt-oss-mini"


def _config(name: str) -> MoEConfig:
    try:
        return preset(name)
    except ValueError as exc:
        raise SystemExit(f"mxmoe: {exc}") from None


def _table(records: Sequence[BackendRecord]) -> str:
    rows = [("", "backend", "distribution", "priority", "verdict")]
    for r in records:
        dist = f"{r.distribution} {r.version}" if r.distribution else "(in-process)"
        verdict = "supported" if r.supported else f"unsupported: {r.reason}"
        if r.supported and r.padded_sizes:
            verdict += f" (H,I padded to {r.padded_sizes[0]},{r.padded_sizes[1]})"
        priority = "" if r.priority is None else f"{r.priority:g}"
        rows.append(("*" if r.selected else "", r.name, dist, priority, verdict))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4]
             for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def cmd_backends(args: argparse.Namespace) -> int:
    config = _config(args.preset)
    device = torch.device(args.device) if args.device else default_device()
    records = explain(config, device)
    if args.json:
        print(json.dumps([r.to_dict() for r in records], indent=2))
        return 0
    print(f"layer: {config.describe()}")
    print(f"device: {device}")
    if not records:
        print("no backends installed: pip install mxmoe-emulation (any device), "
              "or the plugin for your hardware")
        return 0
    print(_table(records))
    chosen = next((r.name for r in records if r.selected), None)
    print(f"selected: {chosen}" if chosen else "selected: none (no backend supports this layer here)")
    return 0


def _why(records: Sequence[BackendRecord], chosen: str) -> str:
    """Why ``chosen`` won: its priority, the supported ones it beat, the others' reasons."""
    me = next(r for r in records if r.name == chosen)
    text = f"priority {me.priority:g}"
    beaten = [f"{r.name} ({r.priority:g})" for r in records if r.supported and r.name != chosen]
    if beaten:
        text += ", ahead of " + ", ".join(beaten)
    for r in records:
        if not r.supported:
            text += f"\n  not usable: {r.name}: {r.reason}"
    return text


def _time_forward(layer: FusedMoE, x: torch.Tensor, logits: torch.Tensor,
                  repeats: int) -> float:
    """Median wall time of one forward, in milliseconds (synchronised on GPUs)."""
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    layer(x, logits)
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        layer(x, logits)
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def cmd_run(args: argparse.Namespace) -> int:
    config = _config(args.preset)
    device = torch.device(args.device) if args.device else default_device()
    if args.tokens < 0:
        raise SystemExit("mxmoe: --tokens must be >= 0")
    print(f"layer: {config.describe()}")
    print(f"device: {device}")
    try:
        layer = FusedMoE(config, backend=args.backend, device=device)
    except BackendError as exc:
        print(f"mxmoe: {exc}", file=sys.stderr)
        return 2
    records = explain(config, device, args.backend)
    print(f"backend: {layer.backend_name} — {_why(records, layer.backend_name)}")
    weights = random_weights(config, seed=args.seed)
    layer.load_weights(**weights.to(device).tensors())
    gen = torch.Generator().manual_seed(args.seed + 1)
    x = torch.randn(args.tokens, config.hidden_size, generator=gen).to(config.dtype)
    logits = torch.randn(args.tokens, config.num_experts, generator=gen) * 2.0
    x_dev, logits_dev = x.to(device), logits.to(device)
    ms = _time_forward(layer, x_dev, logits_dev, args.repeats)
    out = layer(x_dev, logits_dev).cpu()
    tol = tolerance(config)
    if args.tokens == 0:
        err = 0.0
    else:
        err = relative_error(out, reference_moe(config, weights, x, logits))
    ok = err <= tol
    print(f"tokens: {args.tokens}")
    print(f"relative error vs mxmoe.reference: {err:.2e} ({'ok' if ok else 'FAIL'}: "
          f"tolerance {tol:.0e})")
    print(f"time: {ms:.3f} ms per forward (median of {args.repeats})")
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mxmoe", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    presets = sorted(PRESETS)

    p = sub.add_parser("backends", help="list backends and their verdicts for a layer")
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=presets)
    p.add_argument("--device", default=None, help="default: the GPU if present, else cpu")
    p.add_argument("--json", action="store_true", help="print a JSON list of records")
    p.set_defaults(func=cmd_backends)

    p = sub.add_parser("run", help="run one layer with random weights, check and time it")
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=presets)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--backend", default=None, help="force a backend (default: the best)")
    p.add_argument("--device", default=None, help="default: the GPU if present, else cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=10)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("bench", help="benchmark backends and peers on a GPU")
    bench.add_arguments(p)
    p.set_defaults(func=bench.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
