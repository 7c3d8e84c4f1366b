"""`mxmoe bench` on the CPU: floors arithmetic, the peers against the reference, the
timing helpers, the record format and a whole (tiny) run. The GPU numbers themselves
come from running it on a GPU (benchmarks/README.md)."""

from __future__ import annotations

import json
import sys
import time

import pytest
import torch

from mxmoe import MoEConfig, hookimpl, preset, reference_experts, reference_moe, relative_error
from mxmoe.bench import peers
from mxmoe.bench.__main__ import main as bench_main
from mxmoe.bench.floors import (
    Ceilings, expert_bytes, layer_bytes, layer_flops, layer_floor, touched_experts,
)
from mxmoe.bench.report import finish_rows, format_table, load_record, validate_record
from mxmoe.bench.timing import MIN_RUNS, time_calls
from mxmoe.bench.workload import device_weights, input_sets
from mxmoe.reference import tolerance
from mxmoe.registry import register_backend

CPU = torch.device("cpu")

# Small enough to check by hand: w13 is 2I x H = 64 x 64, w2 is H x I = 64 x 32.
TINY = MoEConfig(num_experts=4, top_k=2, hidden_size=64, intermediate_size=32,
                 activation="swigluoai", has_bias=True)


# -- floors -------------------------------------------------------------------------


def test_expert_bytes_by_hand():
    # w13: 4096 FP4 values = 2048 B; w2: 2048 values = 1024 B; one E8M0 byte per 32
    # values: 192 B; biases 2I + H = 128 bf16 values = 256 B.
    assert expert_bytes(TINY) == 2048 + 1024 + 192 + 256
    assert expert_bytes(TINY.replace(has_bias=False)) == 2048 + 1024 + 192
    # MXFP8 stores one byte per element.
    assert expert_bytes(TINY.replace(weight_format="mxfp8")) == 4096 + 2048 + 192 + 256


def test_touched_experts_counts_distinct_local_experts():
    ids = torch.tensor([[0, 1], [1, 3], [3, 0]], dtype=torch.int32)
    assert touched_experts(ids, TINY) == 3
    # Expert parallelism, rank 0 of 2 holds experts 0 and 1: 3 is another rank's.
    assert touched_experts(ids, TINY.with_expert_parallel(2, 0)) == 2


def test_bytes_flops_and_floor_by_hand():
    # 3 experts of 3520 B, plus the [2, 64] bf16 input read and output written.
    assert layer_bytes(TINY, 2, 3) == 3 * 3520 + 2 * 2 * 64 * 2
    # 2 * M * k * (H * 2I + I * H) = 2 * 2 * 2 * (64*64 + 32*64)
    assert layer_flops(TINY, 2) == 8 * 6144
    floor = layer_floor(TINY, 2, 3, Ceilings(hbm_read_TBps=1e-9, bf16_TFLOPs=1e-9))
    assert floor.hbm_ms == pytest.approx(11072.0)  # 11072 B at 1 kB/s
    assert floor.compute_ms == pytest.approx(49152.0)  # 49152 FLOPs at 1 kFLOP/s
    assert floor.ms == floor.compute_ms and floor.bound == "compute"


def test_floor_matches_the_h100_figures_in_facts():
    h100 = Ceilings(hbm_read_TBps=2.99, bf16_TFLOPs=754)
    config = preset("gpt-oss-120b")
    decode = layer_floor(config, 1, 4, h100)
    assert decode.bound == "hbm" and decode.ms == pytest.approx(0.0177, abs=5e-4)
    prefill = layer_floor(config, 4096, 128, h100)
    assert prefill.bound == "compute" and prefill.ms == pytest.approx(1.08, abs=0.01)


def test_floor_rejects_bad_input():
    with pytest.raises(ValueError, match="hbm_read_TBps"):
        Ceilings(hbm_read_TBps=0.0, bf16_TFLOPs=1.0)
    with pytest.raises(ValueError, match="m: expected a positive"):
        layer_floor(TINY, 0, 1, Ceilings(1.0, 1.0))


# -- the peers against the reference ---------------------------------------------------


class _ReferenceDouble:
    """A backend computing the float64 reference: stands in for a real backend so
    the FusedMoE path of the benchmark is checked without any plugin installed."""

    MXMOE_API_VERSION = 1

    @hookimpl
    def supports_config(self, config, device):
        from mxmoe import Verdict
        return Verdict.yes(0)

    @hookimpl
    def convert_weights(self, weights):
        return weights

    @hookimpl
    def apply(self, config, weights, hidden_states, topk_weights, topk_ids):
        return reference_experts(config, weights, hidden_states, topk_weights,
                                 topk_ids).to(config.dtype)


CONFIGS = {
    "swigluoai-bias": TINY.replace(num_experts=8, top_k=4, intermediate_size=64),
    "silu-halves-no-bias": TINY.replace(num_experts=6, activation="silu", has_bias=False),
}


@pytest.mark.parametrize("impl", ["torch-grouped-mm-bf16", "torch-loop-bf16", "emulation"])
@pytest.mark.parametrize("case", list(CONFIGS))
@pytest.mark.parametrize("m", [1, 5, 33])
def test_peer_matches_the_reference(impl, case, m):
    config = CONFIGS[case]
    if impl == "emulation":  # the benchmark's backend path, run on a reference double
        register_backend("emulation", _ReferenceDouble())
    weights = device_weights(config, CPU, seed=m)
    built = peers.Implementations(config, weights, CPU).build(impl)
    for inputs in input_sets(config, m, 2, CPU, seed=7):  # fresh random inputs, twice
        out = built.forward(inputs.hidden_states, inputs.router_logits)
        assert out.shape == (m, config.hidden_size) and out.dtype == config.dtype
        ref = reference_moe(config, weights, inputs.hidden_states, inputs.router_logits)
        assert relative_error(out, ref) < tolerance(config)


def test_loop_peer_says_it_cannot_be_captured():
    built = peers.Implementations(TINY, device_weights(TINY, CPU), CPU).build("torch-loop-bf16")
    assert "host" in built.uncapturable


def test_grouped_mm_unavailable_is_a_reason(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("grouped GEMM needs SM90")

    monkeypatch.setattr(torch, "_grouped_mm", broken)
    impls = peers.Implementations(TINY, device_weights(TINY, CPU), CPU)
    with pytest.raises(peers.ImplUnavailable, match="torch._grouped_mm fails on cpu.*SM90"):
        impls.build("torch-grouped-mm-bf16")


def test_backend_not_installed_is_a_reason_and_unknown_name_an_error():
    impls = peers.Implementations(TINY, device_weights(TINY, CPU), CPU)
    with pytest.raises(peers.ImplUnavailable, match="'triton'.*no such backend is installed"):
        impls.build("triton")
    with pytest.raises(ValueError, match="impl: unknown implementation 'cutlass'"):
        impls.build("cutlass")


# -- timing -----------------------------------------------------------------------------


def test_time_calls_rotates_inputs_and_respects_the_budget():
    seen = []
    timing = time_calls(seen.append, CPU, warmup=2, repeats=7, budget_s=10.0)
    assert timing.runs == 7 and timing.ms >= 0
    assert set(seen) == set(range(7))  # warm-ups, the estimate and runs 0..6

    def slow(_):
        time.sleep(0.02)

    timing = time_calls(slow, CPU, warmup=50, repeats=50, budget_s=0.01)
    assert timing.runs == MIN_RUNS and timing.ms >= 20.0
    with pytest.raises(ValueError, match="repeats"):
        time_calls(slow, CPU, warmup=0, repeats=0, budget_s=1.0)


def test_warm_up_runs_for_its_seconds_and_stays_within_a_fifth_of_the_budget():
    stamps = []

    def sleepy(_):
        stamps.append(time.perf_counter())
        time.sleep(0.005)

    # after the warm-up come the one-run estimate and the 3 timed runs: stamps[-4] is
    # the estimate, which starts only once 0.1 s of warm-up have passed
    time_calls(sleepy, CPU, warmup=1, repeats=3, budget_s=10.0, warmup_s=0.1)
    assert stamps[-4] - stamps[0] >= 0.1
    # 100 warm-up runs (0.5 s) asked for, but a 0.25 s budget allows 0.05 s of warm-up
    stamps.clear()
    time_calls(sleepy, CPU, warmup=100, repeats=3, budget_s=0.25)
    assert len(stamps) - 4 < 100
    with pytest.raises(ValueError, match="warmup_s: expected seconds >= 0"):
        time_calls(sleepy, CPU, warmup=0, repeats=1, budget_s=1.0, warmup_s=-1.0)


# -- the record ---------------------------------------------------------------------------


def _row(impl, ms, **extra):
    return {"shape": "gpt-oss-120b", "M": 64, "impl": impl, "ms": ms, "floor_ms": 0.5,
            "floor_bound": "hbm", "touched_bytes": 1.5e9, "flops": 1e10, **extra}


def _record(rows):
    return {"device": "NVIDIA H100 80GB HBM3", "date": "2026-11-23",
            "ceilings": {"hbm_read_TBps": 2.99, "bf16_TFLOPs": 754.0}, "rows": rows}


def test_finish_rows_derives_rates_and_speedups():
    rows = [_row("triton", 0.625, graph_ms=0.5), _row("torch-grouped-mm-bf16", 2.5, graph_ms=2.0),
            _row("torch-loop-bf16", None, skipped="no GPU")]
    finish_rows(rows)
    triton = rows[0]
    assert triton["pct_of_floor"] == pytest.approx(80.0)
    assert triton["graph_pct_of_floor"] == pytest.approx(100.0)
    assert triton["tbps"] == pytest.approx(2.4)  # 1.5 GB in 0.625 ms
    assert triton["tflops"] == pytest.approx(16.0)
    assert triton["graph_tbps"] == pytest.approx(3.0)  # the same bytes in 0.5 ms
    assert triton["speedup_over"] == {"torch-grouped-mm-bf16": pytest.approx(4.0)}
    assert triton["graph_speedup_over"] == {"torch-grouped-mm-bf16": pytest.approx(4.0)}
    assert "speedup_over" not in rows[1] and "pct_of_floor" not in rows[2]
    validate_record(_record(rows))
    table = format_table(_record(rows))
    assert "grouped 4.0x (graph 4.0x)" in table
    assert "skipped (see below)" in table and "torch-loop-bf16: skipped: no GPU (M=64)" in table


@pytest.mark.parametrize("breakage, message", [
    (lambda r: r.pop("ceilings"), "ceilings"),
    (lambda r: r.update(date="23.11.2026"), "yyyy-mm-dd"),
    (lambda r: r["ceilings"].update(bf16_TFLOPs=float("nan")), "bf16_TFLOPs"),
    (lambda r: r["rows"][0].update(M=0), r"rows\[0\].M"),
    (lambda r: r["rows"][0].update(ms=None), "must say why"),
    (lambda r: r["rows"][0].pop("impl"), "'shape' and 'impl'"),
])
def test_validate_record_names_what_is_wrong(breakage, message):
    record = _record([_row("triton", 0.6)])
    breakage(record)
    with pytest.raises(ValueError, match=message):
        validate_record(record)


# -- a whole run ---------------------------------------------------------------------------

TINY_RUN = ["--device", "cpu", "--preset", "gpt-oss-mini", "--tokens", "1,4",
            "--repeats", "3", "--warmup", "1", "--input-sets", "2", "--hbm-gib", "0.001",
            "--matmul-n", "64"]


def test_cpu_run_writes_a_valid_record(tmp_path, capsys):
    assert bench_main([*TINY_RUN, "--impls", "torch-loop-bf16,triton", "--json", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    files = list(tmp_path.glob("cpu-*.json"))
    assert len(files) == 1 and f"wrote {files[0]}" in out
    record = load_record(files[0])
    assert [(r["M"], r["impl"]) for r in record["rows"]] == [
        (1, "torch-loop-bf16"), (4, "torch-loop-bf16"), (1, "triton"), (4, "triton")]
    for row in record["rows"][:2]:
        assert row["ms"] > 0 and row["runs"] == 3
        assert row["rel_err"] < row["rel_err_tolerance"]
        assert row["floor_ms"] > 0 and row["experts_touched"] >= 4
        assert row["graph_skipped"] == "CUDA graphs need a CUDA device"
    # autoload is off in this suite: the triton backend is recorded as skipped, not a crash
    assert all("no such backend" in r["skipped"] for r in record["rows"][2:])
    assert record["ceilings"]["hbm_read_TBps"] > 0


def test_plot_without_matplotlib_stops_before_measuring(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert bench_main([*TINY_RUN, "--plot", "out.png"]) == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err


def test_plot_from_a_record(tmp_path):
    pytest.importorskip("matplotlib", reason="plotting needs the bench extra (matplotlib)")
    rows = [_row("triton", 0.6), _row("torch-grouped-mm-bf16", 2.5)]
    rows.append({**_row("triton", 1.2), "M": 128})
    path = tmp_path / "record.json"
    path.write_text(json.dumps(_record(rows)))
    assert bench_main(["--plot-from", str(path), "--plot", str(tmp_path)]) == 0
    png = tmp_path / "nvidia-h100-80gb-hbm3-2026-11-23.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("flag, value", [("--tokens", "1,x"), ("--tokens", "0"),
                                         ("--impls", "triton,cutlass"), ("--preset", "llama")])
def test_bad_flags_are_rejected(flag, value, capsys):
    with pytest.raises(SystemExit):
        bench_main([flag, value])
    assert "expected" in capsys.readouterr().err
