"""One benchmark run: ceilings, then for each preset, implementation and token count
a row of measurements (see benchmarks/README.md for what each field means)."""

from __future__ import annotations

import dataclasses
import datetime
import gc
import platform
import statistics
from importlib import metadata
from typing import Any

import torch

from ..config import MoEConfig, preset
from ..reference import reference_experts, relative_error, tolerance
from ..registry import describe_exception
from ..routing import route
from ..weights import ExpertWeights
from .ceilings import measure_ceilings
from .floors import Ceilings, Floor, layer_floor, touched_experts
from .peers import Impl, Implementations, ImplUnavailable
from .progress import Progress
from .report import finish_rows
from .timing import capture_graphs, peak_extra_bytes, time_calls
from .workload import InputSet, device_weights, input_sets

__all__ = ["Options", "run_benchmark"]

_MIB = float(1 << 20)


@dataclasses.dataclass(frozen=True)
class Options:
    """Everything one run measures, and how (the CLI's flags, parsed)."""

    presets: tuple[str, ...]
    tokens: tuple[int, ...]
    impls: tuple[str, ...]
    device: torch.device
    hbm_bytes: int
    matmul_n: int
    repeats: int = 50
    warmup: int = 10
    warmup_s: float = 0.25
    input_sets: int = 8
    row_budget_s: float = 2.0
    check_max_m: int = 64
    graph_max_m: int = 512
    graph_impls: tuple[str, ...] = ("triton", "torch-grouped-mm-bf16")
    seed: int = 0

    def settings(self) -> dict[str, Any]:
        """The options as the record stores them."""
        data = dataclasses.asdict(self)
        data["device"] = str(self.device)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


def device_name(device: torch.device) -> str:
    """``torch.cuda.get_device_name`` on a GPU; ``cpu (<machine>)`` on the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine() or 'unknown'})"


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class _Layer:
    """One preset on the device: its weights, its input sets and floors per M, and
    its float64 references (computed on first use, for M up to ``check_max_m``)."""

    def __init__(self, config: MoEConfig, ceilings: Ceilings, options: Options) -> None:
        self.config = config
        self.options = options
        self.weights: ExpertWeights = device_weights(config, options.device, options.seed)
        self.inputs: dict[int, list[InputSet]] = {}
        self.floors: dict[int, Floor] = {}
        for m in options.tokens:
            sets = input_sets(config, m, options.input_sets, options.device, options.seed)
            self.inputs[m] = sets
            touched = statistics.fmean(touched_experts(s.topk_ids, config) for s in sets)
            self.floors[m] = layer_floor(config, m, touched, ceilings)
        self._references: dict[int, torch.Tensor] = {}

    def reference(self, m: int) -> torch.Tensor | None:
        """The float64 reference output for input set 0 of M tokens (None above
        ``check_max_m``, where the float64 reference would cost more than the run)."""
        if m > self.options.check_max_m:
            return None
        if m not in self._references:
            first = self.inputs[m][0]
            topk_weights, topk_ids = route(first.router_logits, self.config)
            self._references[m] = reference_experts(self.config, self.weights,
                                                    first.hidden_states, topk_weights, topk_ids)
        return self._references[m]


def _base_row(config: MoEConfig, m: int, impl: str, floor: Floor) -> dict[str, Any]:
    return {
        "shape": config.name, "M": m, "impl": impl, "ms": None,
        "floor_ms": floor.ms, "floor_bound": floor.bound, "floor_hbm_ms": floor.hbm_ms,
        "floor_compute_ms": floor.compute_ms, "experts_touched": floor.experts_touched,
        "touched_bytes": floor.bytes, "flops": floor.flops,
    }


def _graph_fields(impl: Impl, call: Any, m: int, options: Options) -> dict[str, Any]:
    """CUDA-graph replay time at decode sizes, or why there is none."""
    if m > options.graph_max_m:
        return {}
    if options.device.type != "cuda":
        return {"graph_skipped": "CUDA graphs need a CUDA device"}
    if impl.name not in options.graph_impls:
        return {"graph_skipped": "not captured: not in --graph-impls"}
    if impl.uncapturable:
        return {"graph_skipped": f"cannot be captured: {impl.uncapturable}"}
    try:
        graphs = capture_graphs(call, options.input_sets, options.device)
    except Exception as exc:  # noqa: BLE001 - recorded in the row, the run goes on
        torch.cuda.synchronize(options.device)
        return {"graph_skipped": f"capture failed: {describe_exception(exc)}"}
    timing = time_calls(lambda i: graphs[i % len(graphs)].replay(), options.device,
                        warmup=options.warmup, warmup_s=options.warmup_s,
                        repeats=options.repeats, budget_s=options.row_budget_s)
    return {"graph_ms": timing.ms, "graph_runs": timing.runs}


def _measure(layer: _Layer, impl: Impl, m: int) -> dict[str, Any]:
    """One row: correctness (small M), eager time, peak extra memory, graph time."""
    options, config = layer.options, layer.config
    row = _base_row(config, m, impl.name, layer.floors[m])
    sets = layer.inputs[m]

    def call(i: int) -> torch.Tensor:
        chosen = sets[i % len(sets)]
        return impl.forward(chosen.hidden_states, chosen.router_logits)

    try:
        reference = layer.reference(m)
        out = call(0)  # also the first run: compilation stays out of the timing
        if reference is not None:
            row["rel_err"] = relative_error(out, reference)
            row["rel_err_tolerance"] = tolerance(config)
        del out
        timing = time_calls(call, options.device, warmup=options.warmup,
                            warmup_s=options.warmup_s, repeats=options.repeats,
                            budget_s=options.row_budget_s)
        row["ms"], row["runs"] = timing.ms, timing.runs
        extra = peak_extra_bytes(lambda: call(0), options.device)
        if extra is not None:
            row["peak_extra_mb"] = extra / _MIB
        row.update(_graph_fields(impl, call, m, options))
    except Exception as exc:  # noqa: BLE001 - a broken implementation is a row, not a crash
        row["error"] = describe_exception(exc)
    return row


def _bench_preset(name: str, ceilings: Ceilings, options: Options,
                  progress: Progress) -> list[dict[str, Any]]:
    config = preset(name)
    progress.note(f"{name}: generating weights and inputs on {options.device}")
    layer = _Layer(config, ceilings, options)
    impls = Implementations(config, layer.weights, options.device)
    rows = []
    for impl_name in options.impls:
        try:
            impl = impls.build(impl_name)
            problem = None
        except ImplUnavailable as exc:
            problem = {"skipped": str(exc)}
        except Exception as exc:  # noqa: BLE001 - e.g. convert_weights raising
            problem = {"error": f"building failed: {describe_exception(exc)}"}
        for m in options.tokens:
            if problem is None:
                rows.append(_measure(layer, impl, m))
            else:
                rows.append({**_base_row(config, m, impl_name, layer.floors[m]), **problem})
            progress.step(f"{name} {impl_name} M={m}")
        impl = None
        _release_memory(options.device)
    return rows


def run_benchmark(options: Options) -> dict[str, Any]:
    """Measure everything ``options`` asks for; returns the JSON record."""
    for name in options.presets:
        config = preset(name)
        if config.activation_format.quantized:
            raise ValueError(f"preset: {name!r} has activation_format="
                             f"{config.activation_format.value!r}; the benchmark measures "
                             "BF16-activation layers")
    progress = Progress(len(options.presets) * len(options.impls) * len(options.tokens))
    progress.note(f"measuring the ceilings on {options.device}")
    ceilings = measure_ceilings(options.device, hbm_bytes=options.hbm_bytes,
                                matmul_n=options.matmul_n)
    _release_memory(options.device)
    rows = []
    try:
        for name in options.presets:
            rows.extend(_bench_preset(name, ceilings, options, progress))
            _release_memory(options.device)
    finally:
        progress.close()
    finish_rows(rows)
    return {
        "device": device_name(options.device),
        "date": datetime.date.today().isoformat(),
        "ceilings": dataclasses.asdict(ceilings),
        "rows": rows,
        "presets": {name: preset(name).describe() for name in options.presets},
        "versions": {"torch": torch.__version__, "triton": _version("triton"),
                     "mxmoe": _version("mxmoe"), "mxmoe-emulation": _version("mxmoe-emulation")},
        "settings": options.settings(),
    }
