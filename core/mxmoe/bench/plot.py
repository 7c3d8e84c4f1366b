"""The PNG of a benchmark record: time against M per implementation, log-log, one
panel per shape, with the floor as a dashed line. Needs matplotlib (the ``bench``
extra), imported only when a plot is asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .peers import IMPL_NAMES
from .report import output_path, validate_record

__all__ = ["PlotUnavailable", "plot_record", "require_matplotlib"]


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def require_matplotlib() -> Any:
    """The pyplot module on the non-interactive Agg backend, or PlotUnavailable."""
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable(
            "--plot needs matplotlib, which is not installed: pip install 'mxmoe[bench]', "
            "or write the record with --json and plot it later with "
            "'mxmoe bench --plot-from RECORD.json --plot OUT.png'"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = sorted((r["M"], r[key]) for r in rows if r.get(key))
    return [m for m, _ in points], [v for _, v in points]


def plot_record(record: dict[str, Any], path: str | Path) -> Path:
    """Draw ``record`` to ``path`` (a .png file, or a directory for the default name)."""
    validate_record(record)
    plt = require_matplotlib()
    shapes = list(dict.fromkeys(row["shape"] for row in record["rows"]))
    if not shapes:
        raise ValueError("record: no rows to plot")
    fig, axes = plt.subplots(1, len(shapes), figsize=(7 * len(shapes), 5.5), squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        rows = [r for r in record["rows"] if r["shape"] == shape]
        impls = list(IMPL_NAMES) + sorted({r["impl"] for r in rows} - set(IMPL_NAMES))
        for index, impl in enumerate(impls):
            mine = [r for r in rows if r["impl"] == impl]
            color = f"C{index}"  # one colour per implementation in every panel and run
            ms_x, ms_y = _series(mine, "ms")
            if ms_x:
                ax.plot(ms_x, ms_y, marker="o", color=color, label=impl)
            graph_x, graph_y = _series(mine, "graph_ms")
            if graph_x:
                ax.plot(graph_x, graph_y, marker="x", linestyle=":", color=color,
                        label=f"{impl} (CUDA graph)")
        floor_x, floor_y = _series([r for r in rows if r["impl"] == rows[0]["impl"]], "floor_ms")
        ax.plot(floor_x, floor_y, "k--", linewidth=2, label="floor")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens M")
        ax.set_ylabel("ms per layer forward")
        ax.set_title(f"{shape} on {record['device']}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    target = output_path(path, record, ".png")
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target
