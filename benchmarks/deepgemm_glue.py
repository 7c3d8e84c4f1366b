"""Time the deepgemm-mxfp4 backend's glue kernels on a GPU, next to their bandwidth floors.

The backend runs DeepGEMM's two grouped FP8 x FP4 GEMMs (SM100 only) and, around them,
four steps of its own (plugins/cuda_deepgemm/mxmoe_cuda_deepgemm/glue.py): the
permutation plan, FP8 quantization into the permuted rows, bias + activation + FP8
re-quantization, and the weighted un-permute + reduce. Those steps run on any NVIDIA
GPU, so they are timed here -- Triton glue and PyTorch glue -- at gpt-oss-120b's shape:
128 experts, top-4, biases, SWIGLUOAI, H = I = 2944 (2880 padded to whole 128-channel
groups, as the backend pads it), activation scales packed UE8M0.

Each step's floor is the bytes it must move through HBM at least (read its inputs once,
write its outputs once; listed in ``step_bytes``) over the measured HBM read rate of an
H100 (2.99 TB/s, FACTS.md). Times are medians of CUDA-event brackets around each eager
call, rotating over several input sets (mxmoe.bench.timing), so they include launch
gaps; at small M every step is launch-bound and far above its floor. Each step is also
captured in a CUDA graph (possible because no step synchronises with the host) and its
replays timed: that is the GPU's own time.

    PYTHONPATH=core:plugins/cuda_deepgemm python benchmarks/deepgemm_glue.py \
        --json $OUT/deepgemm-glue-h100.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
from collections.abc import Callable

import torch

from mxmoe import MoEConfig
from mxmoe.bench.timing import capture_graphs, time_calls
from mxmoe_cuda_deepgemm import glue_torch, glue_triton
from mxmoe_cuda_deepgemm.glue import RoutingPlan, workspace_rows
from mxmoe_cuda_deepgemm.layouts import ScaleFormat, packed_columns

HBM_READ_TBPS = 2.99  # H100 80GB HBM3, FACTS.md
STEPS = ("plan", "quantize_permute", "activate_quantize", "unpermute_reduce")
INPUT_SETS_BYTES = 256 << 20  # rotate over at least this much data: L2 is 50 MB


@dataclasses.dataclass
class Inputs:
    """One set of a step's inputs at one token count (routing, activations, biases)."""

    topk_ids: torch.Tensor
    topk_weights: torch.Tensor
    x: torch.Tensor
    plan: RoutingPlan
    h: torch.Tensor
    y: torch.Tensor
    bias13: torch.Tensor
    bias2: torch.Tensor


def make_inputs(config: MoEConfig, tokens: int, alignment: int, seed: int,
                device: torch.device) -> Inputs:
    gen = torch.Generator(device=device).manual_seed(seed)
    e, k, h, i = config.num_experts, config.top_k, config.hidden_size, config.intermediate_size
    logits = torch.randn(tokens, e, generator=gen, device=device)
    weights, ids = torch.topk(logits, k, dim=1)
    ids = ids.to(torch.int32)
    plan = glue_torch.plan_permutation(ids, None, e, alignment)
    return Inputs(
        topk_ids=ids, topk_weights=torch.softmax(weights, dim=1),
        x=torch.randn(tokens, h, generator=gen, device=device).to(torch.bfloat16), plan=plan,
        h=torch.randn(plan.rows, 2 * i, generator=gen, device=device).to(torch.bfloat16),
        y=torch.randn(plan.rows, h, generator=gen, device=device).to(torch.bfloat16),
        bias13=torch.randn(e, 2 * i, generator=gen, device=device) * 0.1,
        bias2=torch.randn(e, h, generator=gen, device=device) * 0.1,
    )


def step_bytes(config: MoEConfig, tokens: int, rows: int) -> dict[str, int]:
    """The HBM bytes each step must move at least (no expert-parallel: every slot local)."""
    e, k, h, i = config.num_experts, config.top_k, config.hidden_size, config.intermediate_size
    slots = tokens * k
    experts_used = min(e, slots)
    scales = lambda channels: slots * packed_columns(channels // 128) * 4  # noqa: E731
    return {
        # ids in; slot expert and slot row out; the layout initialised and written; counts
        "plan": 4 * slots + 8 * slots + 4 * rows + 4 * e,
        # bf16 tokens in, their slot rows; FP8 rows and packed scales out
        "quantize_permute": 2 * tokens * h + 4 * slots + slots * h + scales(h),
        # real rows of FC1's bf16 output, slot rows/experts, used biases in; FP8 rows,
        # scales out
        "activate_quantize": (2 * slots * 2 * i + 8 * slots + 4 * experts_used * 2 * i
                              + slots * i + scales(i)),
        # FC2's bf16 rows, slot rows/experts/weights, used biases in; bf16 tokens out
        "unpermute_reduce": 2 * slots * h + 12 * slots + 4 * experts_used * h + 2 * tokens * h,
    }


def step_calls(glue: object, config: MoEConfig, alignment: int
               ) -> dict[str, Callable[[Inputs], object]]:
    fmt = ScaleFormat.UE8M0
    return {
        "plan": lambda s: glue.plan_permutation(s.topk_ids, None, config.num_experts, alignment),
        "quantize_permute": lambda s: glue.quantize_permute(s.x, s.plan, fmt),
        "activate_quantize": lambda s: glue.activate_quantize(s.h, s.plan, s.bias13, config,
                                                              fmt),
        "unpermute_reduce": lambda s: glue.unpermute_reduce(s.y, s.plan, s.topk_weights,
                                                            s.bias2, torch.bfloat16),
    }


def graph_us(run_set: Callable[[int], object], sets: int, repeats: int,
             device: torch.device) -> float | str:
    """Median microseconds of CUDA-graph replays of ``run_set``, or why it could not be
    captured (a host synchronisation inside, typically)."""
    try:
        graphs = capture_graphs(run_set, sets, device)
    except RuntimeError as exc:
        return f"not capturable: {exc}".splitlines()[0]
    timing = time_calls(lambda i: graphs[i % len(graphs)].replay(), device,
                        warmup=5, repeats=repeats, budget_s=2.0)
    return timing.ms * 1e3


def run(config: MoEConfig, token_counts: list[int], alignment: int, repeats: int,
        device: torch.device) -> list[dict]:
    rows_out = []
    for tokens in token_counts:
        rows = workspace_rows(tokens, config.top_k, config.num_experts, alignment)
        need = step_bytes(config, tokens, rows)
        per_set = sum(need.values())
        sets = [make_inputs(config, tokens, alignment, seed, device)
                for seed in range(max(1, min(8, INPUT_SETS_BYTES // max(per_set, 1))))]
        times = {}
        for name, glue in (("triton", glue_triton), ("torch", glue_torch)):
            for step, call in step_calls(glue, config, alignment).items():
                run_set = lambda i, c=call: c(sets[i % len(sets)])  # noqa: E731
                timing = time_calls(run_set, device, warmup=5, repeats=repeats, budget_s=2.0)
                times[(name, step)] = timing.ms * 1e3
                # Replayed as CUDA graphs (the glue never synchronises, so it captures):
                # the GPU's time without Python's launch gaps.
                times[(f"{name}_graph", step)] = graph_us(run_set, len(sets), repeats, device)
        for step in STEPS:
            floor_us = need[step] / (HBM_READ_TBPS * 1e12) * 1e6
            rows_out.append({
                "tokens": tokens, "workspace_rows": rows, "step": step, "bytes": need[step],
                "floor_us": floor_us, "triton_us": times[("triton", step)],
                "triton_graph_us": times[("triton_graph", step)],
                "torch_us": times[("torch", step)],
                "torch_graph_us": times[("torch_graph", step)],
                "triton_graph_floor_ratio": _ratio(times[("triton_graph", step)], floor_us),
            })
        print_rows(rows_out[-len(STEPS):])
    return rows_out


def _ratio(time_us: float | str, floor_us: float) -> float | None:
    return time_us / floor_us if isinstance(time_us, float) else None


def _us(value: float | str | None, suffix: str = " us") -> str:
    return f"{value:8.2f}{suffix}" if isinstance(value, float) else str(value)


def print_rows(rows: list[dict]) -> None:
    for r in rows:
        print(f"M={r['tokens']:>5} rows={r['workspace_rows']:>6} {r['step']:<18} "
              f"{r['bytes'] / 1e6:8.3f} MB floor {r['floor_us']:7.2f} us | triton "
              f"{_us(r['triton_us'])}, graph {_us(r['triton_graph_us'])} "
              f"({_us(r['triton_graph_floor_ratio'], 'x')} floor) | torch {_us(r['torch_us'])}, "
              f"graph {_us(r['torch_graph_us'])}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", default="1,64,1024,4096")
    parser.add_argument("--experts", type=int, default=128)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=2944)
    parser.add_argument("--intermediate", type=int, default=2944)
    parser.add_argument("--alignment", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--json", help="write the record to this file")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("deepgemm_glue: needs a CUDA GPU (the Triton glue runs there)", file=sys.stderr)
        return 2
    device = torch.device("cuda", torch.cuda.current_device())
    config = MoEConfig(num_experts=args.experts, top_k=args.top_k, hidden_size=args.hidden,
                       intermediate_size=args.intermediate, activation="swigluoai",
                       has_bias=True, activation_format="fp8_dynamic_1x128_pow2")
    tokens = [int(t) for t in args.tokens.split(",")]
    rows = run(config, tokens, args.alignment, args.repeats, device)
    record = {
        "benchmark": "deepgemm-mxfp4 glue kernels",
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "triton": __import__("triton").__version__,
        "hbm_read_TBps_for_floors": HBM_READ_TBPS,
        "layer": {"experts": args.experts, "top_k": args.top_k, "hidden": args.hidden,
                  "intermediate": args.intermediate, "activation": "swigluoai",
                  "bias": True, "alignment": args.alignment, "scale_format": "ue8m0"},
        "timing": ("median of CUDA-event brackets per call (mxmoe.bench.timing): eager "
                   "(*_us, Python launch gaps included) and CUDA-graph replay (*_graph_us)"),
        "rows": rows,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
