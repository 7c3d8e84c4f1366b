"""Timing one implementation: medians of many runs, CUDA-graph replays, peak memory.

On a GPU every run is bracketed by its own pair of CUDA events, queued back to back
without host synchronisation, and the median of the per-run times is reported (so a
launch-bound implementation is charged its launch gaps, as in eager use). On the CPU
the host clock brackets each run. ``call(i)`` runs the i-th run on one of several
input sets in turn (the caller rotates them), so small layers are not timed out of a
warm cache.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable

import torch

__all__ = ["Timing", "capture_graphs", "peak_extra_bytes", "synchronize", "time_calls"]

#: Fewest timed runs even for an implementation too slow for the per-row time budget.
MIN_RUNS = 5


@dataclasses.dataclass(frozen=True)
class Timing:
    """Median milliseconds of ``runs`` timed runs."""

    ms: float
    runs: int


def synchronize(device: torch.device) -> None:
    """Wait for all queued work on ``device`` (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _planned_runs(call: Callable[[int], object], device: torch.device, repeats: int,
                  budget_s: float) -> int:
    """``repeats``, cut down (to no fewer than MIN_RUNS) when one run is so slow that
    ``repeats`` runs would overrun ``budget_s``."""
    synchronize(device)
    start = time.perf_counter()
    call(0)
    synchronize(device)
    one_run_s = max(time.perf_counter() - start, 1e-9)
    affordable = int(budget_s / one_run_s)
    return min(repeats, max(MIN_RUNS, affordable))


#: Warm-up runs queued between host synchronisations, so the host never runs far ahead
#: of the device while it watches the warm-up's time.
_WARMUP_SYNC_EVERY = 16


def _warm_up(call: Callable[[int], object], device: torch.device, runs: int, seconds: float,
             budget_s: float) -> None:
    """At least ``runs`` calls and ``seconds`` of calling, but no more than a fifth of
    ``budget_s``. The time matters on a GPU: its clock follows its recent power draw,
    and for tens of milliseconds after heavy work (the previous row, the ceilings) it
    runs a light workload at a throttled clock, so a count of fast calls alone times
    the previous row's aftermath (benchmarks/triton_notes.md, v16)."""
    limit = budget_s / 5
    start = time.perf_counter()
    i = 0
    while True:
        elapsed = time.perf_counter() - start
        if elapsed >= limit or (i >= runs and elapsed >= seconds):
            break
        call(i)
        i += 1
        if i % _WARMUP_SYNC_EVERY == 0:
            synchronize(device)


def time_calls(call: Callable[[int], object], device: torch.device, *, warmup: int,
               repeats: int, budget_s: float, warmup_s: float = 0.0) -> Timing:
    """Median time of ``call(i)`` over up to ``repeats`` runs, after a warm-up of
    ``warmup`` runs and ``warmup_s`` seconds (capped at a fifth of ``budget_s``)."""
    if repeats <= 0:
        raise ValueError(f"repeats: expected a positive count, got {repeats}")
    if warmup_s < 0:
        raise ValueError(f"warmup_s: expected seconds >= 0, got {warmup_s}")
    _warm_up(call, device, warmup, warmup_s, budget_s)
    runs = _planned_runs(call, device, repeats, budget_s)
    if device.type == "cuda":
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
        for i in range(runs):
            starts[i].record()
            call(i)
            ends[i].record()
        synchronize(device)
        times = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    else:
        times = []
        for i in range(runs):
            start = time.perf_counter()
            call(i)
            times.append((time.perf_counter() - start) * 1e3)
    return Timing(ms=statistics.median(times), runs=runs)


def capture_graphs(call: Callable[[int], object], sets: int,
                   device: torch.device) -> list[torch.cuda.CUDAGraph]:
    """One CUDA graph per input set, each capturing ``call(i)``; replaying graph i
    re-runs the forward on set i without launch gaps. Warms up on a side stream first,
    as capture requires (allocator and library handles created outside the capture).
    Raises whatever the capture raises (a host synchronisation inside, typically)."""
    if device.type != "cuda":
        raise ValueError(f"device: CUDA graphs need a CUDA device, got {device}")
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for i in range(sets):
            call(i)
    torch.cuda.current_stream(device).wait_stream(side)
    graphs = []
    for i in range(sets):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            call(i)
        graphs.append(graph)
    synchronize(device)
    return graphs


def peak_extra_bytes(call: Callable[[], object], device: torch.device) -> int | None:
    """Device memory one ``call()`` allocates at its peak beyond what was already
    allocated (its output included); None on devices without allocator statistics."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    result = call()
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del result
    return peak - before
