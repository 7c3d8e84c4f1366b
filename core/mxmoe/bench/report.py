"""The benchmark record: derived fields, schema check, the printed table, the JSON file.

A record is ``{"device", "date", "ceilings": {"hbm_read_TBps", "bf16_TFLOPs"},
"rows": [...]}`` plus free extra fields; each row names ``shape``, ``M`` and ``impl``
and has ``ms`` (None when the row was skipped or failed, with ``skipped`` or ``error``
saying why).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

__all__ = [
    "SUBJECT",
    "default_filename",
    "finish_rows",
    "format_table",
    "load_record",
    "output_path",
    "validate_record",
    "write_json",
]

#: The implementation every other one is compared with.
SUBJECT = "triton"

_SHORT = {"torch-grouped-mm-bf16": "grouped", "torch-loop-bf16": "loop", "emulation": "emu",
          "triton": "triton"}


def _rates(row: dict[str, Any], key: str, prefix: str) -> None:
    ms = row.get(key)
    if not ms:
        return
    row[f"{prefix}pct_of_floor"] = 100.0 * row["floor_ms"] / ms
    row[f"{prefix}tbps"] = row["touched_bytes"] / (ms * 1e-3) / 1e12
    row[f"{prefix}tflops"] = row["flops"] / (ms * 1e-3) / 1e12


def _speedups(subject: dict[str, Any], peers: list[dict[str, Any]], key: str) -> dict[str, float]:
    mine = subject.get(key)
    if not mine:
        return {}
    return {p["impl"]: p[key] / mine for p in peers if p.get(key)}


def finish_rows(rows: list[dict[str, Any]]) -> None:
    """Add the derived fields in place: ``pct_of_floor`` (floor / time, %), ``tbps``
    (touched bytes / time), ``tflops``, the same of the graph time with a ``graph_``
    prefix, and on each ``triton`` row ``speedup_over`` / ``graph_speedup_over``
    {peer: peer time / triton time}."""
    for row in rows:
        _rates(row, "ms", "")
        _rates(row, "graph_ms", "graph_")
    for subject in rows:
        if subject["impl"] != SUBJECT:
            continue
        peers = [r for r in rows if r["shape"] == subject["shape"] and r["M"] == subject["M"]
                 and r["impl"] != SUBJECT]
        for key, field in (("ms", "speedup_over"), ("graph_ms", "graph_speedup_over")):
            ratios = _speedups(subject, peers, key)
            if ratios:
                subject[field] = ratios


def _fail(where: str, what: str) -> None:
    raise ValueError(f"benchmark record: {where}: {what}")


def _check_number(value: Any, where: str, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(where, f"expected a finite number, got {value!r}")


def validate_record(record: Any) -> None:
    """Raise ValueError naming the first field that breaks the record format."""
    if not isinstance(record, dict):
        _fail("record", f"expected a JSON object, got {type(record).__name__}")
    for key in ("device", "date"):
        if not isinstance(record.get(key), str) or not record[key]:
            _fail(key, f"expected a non-empty string, got {record.get(key)!r}")
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", record["date"]):
        _fail("date", f"expected yyyy-mm-dd, got {record['date']!r}")
    ceilings = record.get("ceilings")
    if not isinstance(ceilings, dict):
        _fail("ceilings", "expected an object")
    for key in ("hbm_read_TBps", "bf16_TFLOPs"):
        _check_number(ceilings.get(key), f"ceilings.{key}")
    rows = record.get("rows")
    if not isinstance(rows, list):
        _fail("rows", "expected a list")
    for index, row in enumerate(rows):
        where = f"rows[{index}]"
        if not isinstance(row, dict):
            _fail(where, "expected an object")
        if not isinstance(row.get("shape"), str) or not isinstance(row.get("impl"), str):
            _fail(where, "expected string fields 'shape' and 'impl'")
        if isinstance(row.get("M"), bool) or not isinstance(row.get("M"), int) or row["M"] <= 0:
            _fail(f"{where}.M", f"expected a positive int, got {row.get('M')!r}")
        _check_number(row.get("ms"), f"{where}.ms", optional=True)
        if row.get("ms") is None and not (row.get("skipped") or row.get("error")):
            _fail(where, "a row without 'ms' must say why in 'skipped' or 'error'")


def _fmt(value: Any, spec: str) -> str:
    """``value`` formatted by ``spec`` ("9.4f"), or "-" right-aligned to its width."""
    if value is None:
        return "-".rjust(int(re.match(r"\d*", spec).group() or 0))
    return format(value, spec)


def _speedup_text(row: dict[str, Any]) -> str:
    eager = row.get("speedup_over", {})
    graph = row.get("graph_speedup_over", {})
    parts = []
    for peer, ratio in eager.items():
        text = f"{_SHORT.get(peer, peer)} {ratio:.1f}x"
        if peer in graph:
            text += f" (graph {graph[peer]:.1f}x)"
        parts.append(text)
    return ", ".join(parts)


_HEADER = (f"{'M':>6} {'impl':<22} {'ms':>9} {'graph ms':>9} {'floor ms':>9} {'bound':<7} "
           f"{'%floor':>6} {'%fl grf':>7} {'TB/s':>6} {'TFLOP/s':>7} {'rel err':>8} "
           f"{'peak MB':>8}  speed-up")


def _table_line(row: dict[str, Any]) -> str:
    head = f"{row['M']:>6} {row['impl']:<22} "
    if row.get("ms") is None:
        return head + ("skipped (see below)" if row.get("skipped") else "error (see below)")
    line = (head + f"{_fmt(row['ms'], '9.4f')} {_fmt(row.get('graph_ms'), '9.4f')} "
            f"{row['floor_ms']:9.4f} {row['floor_bound']:<7} "
            f"{_fmt(row.get('pct_of_floor'), '6.1f')} {_fmt(row.get('graph_pct_of_floor'), '7.1f')} "
            f"{_fmt(row.get('graph_tbps', row.get('tbps')), '6.2f')} "
            f"{_fmt(row.get('graph_tflops', row.get('tflops')), '7.1f')} "
            f"{_fmt(row.get('rel_err'), '8.1e')} {_fmt(row.get('peak_extra_mb'), '8.1f')}  "
            f"{_speedup_text(row)}")
    return line.rstrip()


def _notes(rows: list[dict[str, Any]]) -> list[str]:
    """Each distinct reason a row was skipped, failed or has no graph time, once per
    implementation, with the token counts it applies to."""
    where: dict[str, list[int]] = {}
    for row in rows:
        for key, label in (("skipped", "skipped"), ("error", "error"),
                           ("graph_skipped", "graph not timed")):
            if row.get(key):
                where.setdefault(f"{row['impl']}: {label}: {row[key]}", []).append(row["M"])
    return [f"{text} (M={','.join(map(str, sorted(ms)))})" for text, ms in where.items()]


def format_table(record: dict[str, Any]) -> str:
    """The record as a plain-text table, one block per shape. TB/s and TFLOP/s are
    those of the row's best time: the CUDA graph's where one was timed."""
    c = record["ceilings"]
    lines = [f"{record['device']}, {record['date']}: HBM read {c['hbm_read_TBps']:.3g} TB/s, "
             f"dense BF16 {c['bf16_TFLOPs']:.4g} TFLOP/s"]
    shapes = list(dict.fromkeys(row["shape"] for row in record["rows"]))
    presets = record.get("presets", {})
    for shape in shapes:
        lines += ["", presets.get(shape, shape), _HEADER]
        rows = [r for r in record["rows"] if r["shape"] == shape]
        for row in sorted(rows, key=lambda r: r["M"]):
            lines.append(_table_line(row))
        lines += [f"  {note}" for note in _notes(rows)]
    return "\n".join(lines)


def default_filename(record: dict[str, Any], suffix: str) -> str:
    """``<device>-<yyyy-mm-dd><suffix>``, the device name lowercased with runs of other
    characters turned into '-' (``nvidia-h100-80gb-hbm3-2026-11-23.json``)."""
    slug = re.sub(r"[^a-z0-9]+", "-", record["device"].lower()).strip("-") or "device"
    return f"{slug}-{record['date']}{suffix}"


def output_path(path: str | Path, record: dict[str, Any], suffix: str) -> Path:
    """``path`` itself, or the default file name inside it when it is a directory."""
    target = Path(path)
    return target / default_filename(record, suffix) if target.is_dir() else target


def write_json(record: dict[str, Any], path: str | Path) -> Path:
    """Validate and write the record; returns the file written."""
    validate_record(record)
    target = output_path(path, record, ".json")
    target.write_text(json.dumps(record, indent=1) + "\n")
    return target


def load_record(path: str | Path) -> dict[str, Any]:
    """Read and validate a record written by :func:`write_json`."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read a benchmark record: {exc}") from None
    validate_record(record)
    return record
