"""``mxmoe bench``: time the mxmoe ``triton`` backend against the implementations a
user would otherwise pick, on one device, next to the floor the hardware allows.

One run measures the device's ceilings (HBM read bandwidth, dense BF16 rate), then
for each preset and token count M the floor and every implementation's time, and
prints a table; ``--json`` writes the record, ``--plot`` the PNG. The CLI wires
:func:`add_arguments` and :func:`run` as the ``bench`` subcommand; ``python -m
mxmoe.bench`` runs the same without the console script. benchmarks/README.md says
what every column means.

Optional: tqdm (a progress bar; without it, one line per row) and matplotlib
(``--plot``; without it, ``--plot`` stops the run before anything is measured, with
a message saying how to install it or plot later with ``--plot-from``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import torch

from ..config import PRESETS
from .peers import IMPL_NAMES
from .runner import Options

__all__ = ["add_arguments", "run"]

GPU_PRESETS = ("gpt-oss-120b", "gpt-oss-20b")
GPU_TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)
CPU_PRESETS = ("gpt-oss-mini",)
CPU_TOKENS = (1, 4, 16)

#: The flags' defaults are the :class:`Options` defaults, stated once there.
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Options)
             if f.default is not dataclasses.MISSING}


def _names(choices: tuple[str, ...], what: str):
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
        unknown = [n for n in names if n not in choices]
        if not names or unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(map(repr, unknown)) or '(none given)'}; "
                f"expected a comma-separated list of {', '.join(choices)}")
        return names
    return parse


def _token_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        counts = ()
    if not counts or any(c <= 0 for c in counts):
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of positive token counts, got {text!r}")
    return tuple(sorted(set(counts)))


def _positive(kind: type):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``mxmoe bench`` flags."""
    parser.add_argument("--preset", type=_names(tuple(PRESETS), "preset"), default=None,
                        help="comma-separated presets (default: "
                             f"{','.join(GPU_PRESETS)} on a GPU, {','.join(CPU_PRESETS)} on the CPU)")
    parser.add_argument("--tokens", type=_token_counts, default=None,
                        help="comma-separated token counts M (default on a GPU: "
                             f"{','.join(map(str, GPU_TOKENS))}; on the CPU: "
                             f"{','.join(map(str, CPU_TOKENS))})")
    parser.add_argument("--impls", type=_names(IMPL_NAMES, "implementation"), default=IMPL_NAMES,
                        help=f"comma-separated implementations (default: {','.join(IMPL_NAMES)})")
    parser.add_argument("--json", metavar="PATH", default=None,
                        help="write the record here (a directory: <device>-<date>.json inside)")
    parser.add_argument("--plot", metavar="PATH", default=None,
                        help="draw time vs M with the floor to this PNG (a directory: "
                             "<device>-<date>.png inside); needs matplotlib")
    parser.add_argument("--plot-from", metavar="RECORD", default=None,
                        help="measure nothing: print and --plot a record written by --json")
    parser.add_argument("--device", default=None,
                        help="torch device (default: the GPU if there is one, else cpu)")
    parser.add_argument("--repeats", type=_positive(int), default=_DEFAULTS["repeats"],
                        help="timed runs per row, median reported "
                             f"(default {_DEFAULTS['repeats']})")
    parser.add_argument("--warmup", type=int, default=_DEFAULTS["warmup"],
                        help=f"untimed runs before timing (default {_DEFAULTS['warmup']})")
    parser.add_argument("--warmup-s", type=float, default=_DEFAULTS["warmup_s"],
                        help="and at least this many seconds of untimed runs, so a row is "
                             "timed at the clock its own load settles at, not the previous "
                             f"row's (default {_DEFAULTS['warmup_s']}; warm-up never takes "
                             "more than a fifth of --row-budget-s)")
    parser.add_argument("--input-sets", type=_positive(int), default=_DEFAULTS["input_sets"],
                        help="input sets rotated between runs, so decode sizes are not "
                             f"timed from a warm cache (default {_DEFAULTS['input_sets']})")
    parser.add_argument("--row-budget-s", type=_positive(float),
                        default=_DEFAULTS["row_budget_s"],
                        help="seconds one timing may take; a slower implementation gets "
                             "fewer runs (at least 5; the row's 'runs' says how many)")
    parser.add_argument("--check-max-m", type=int, default=_DEFAULTS["check_max_m"],
                        help="check outputs against the float64 reference up to this M "
                             f"(default {_DEFAULTS['check_max_m']})")
    parser.add_argument("--graph-max-m", type=int, default=_DEFAULTS["graph_max_m"],
                        help="also time CUDA-graph replays up to this M "
                             f"(default {_DEFAULTS['graph_max_m']})")
    parser.add_argument("--graph-impls", type=_names(IMPL_NAMES, "implementation"),
                        default=_DEFAULTS["graph_impls"],
                        help="implementations whose forward is captured in a CUDA graph "
                             f"(default: {','.join(_DEFAULTS['graph_impls'])})")
    parser.add_argument("--hbm-gib", type=_positive(float), default=None,
                        help="size of the bandwidth-ceiling tensor (default 4 GiB on a GPU, 1/16 on the CPU)")
    parser.add_argument("--matmul-n", type=_positive(int), default=None,
                        help="size of the BF16-ceiling product (default 8192 on a GPU, 256 on the CPU)")
    parser.add_argument("--seed", type=int, default=_DEFAULTS["seed"],
                        help="seed of weights and inputs")


def _device(text: str | None) -> torch.device:
    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError as exc:
        raise ValueError(f"--device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device: CUDA was asked for, but torch sees no CUDA device")
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"--device: expected cuda or cpu, got {text!r}")
    return device


def _options(args: argparse.Namespace) -> Options:
    device = _device(args.device)
    gpu = device.type == "cuda"
    return Options(
        presets=args.preset or (GPU_PRESETS if gpu else CPU_PRESETS),
        tokens=args.tokens or (GPU_TOKENS if gpu else CPU_TOKENS),
        impls=args.impls,
        device=device,
        hbm_bytes=int((args.hbm_gib or (4.0 if gpu else 1 / 16)) * (1 << 30)),
        matmul_n=args.matmul_n or (8192 if gpu else 256),
        repeats=args.repeats,
        warmup=max(0, args.warmup),
        warmup_s=max(0.0, args.warmup_s),
        input_sets=args.input_sets,
        row_budget_s=args.row_budget_s,
        check_max_m=args.check_max_m,
        graph_max_m=args.graph_max_m,
        graph_impls=args.graph_impls,
        seed=args.seed,
    )


def run(args: argparse.Namespace) -> int:
    """Run ``mxmoe bench``. Returns 0, 1 when a row recorded an error (the record is
    still written), 2 for unusable arguments (message on stderr)."""
    from .plot import PlotUnavailable, plot_record, require_matplotlib
    from .report import format_table, load_record, write_json
    from .runner import run_benchmark

    try:
        if args.plot:
            require_matplotlib()
        if args.plot_from:
            record = load_record(args.plot_from)
        else:
            record = run_benchmark(_options(args))
    except (PlotUnavailable, ValueError) as exc:
        print(f"mxmoe bench: error: {exc}", file=sys.stderr)
        return 2
    print(format_table(record))
    if args.json and not args.plot_from:
        print(f"wrote {write_json(record, args.json)}")
    if args.plot:
        print(f"wrote {plot_record(record, args.plot)}")
    return 1 if any(row.get("error") for row in record["rows"]) else 0
