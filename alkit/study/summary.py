"""A study's summary: the median over seeds per strategy × budget × cycle, as CSV, markdown and plots.

The columns and plots are the task's (:attr:`alkit.al.task.Task.summary_metrics`,
:attr:`~alkit.al.task.Task.summary_plots`): e.g. mIoU and annotated tumour % for segmentation, F1 and
the annotated-mitoses ratio for detection, each plotted against annotated tissue % (Fig. 2 of the
paper), one line per strategy and one panel per region size.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window (set before pyplot is imported)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from alkit.al.task import DEFAULT_TASK, task_class  # noqa: E402
from alkit.atomic import atomic_path, atomic_write_text  # noqa: E402


def _median(values: list[float]) -> float:
    """Median ignoring NaN; NaN when nothing is left (e.g. no tumour-free test slide)."""
    finite = [v for v in values if not np.isnan(v)]
    return float(np.median(finite)) if finite else float("nan")


def summary_table(runs: list[dict], metrics: tuple[str, ...]) -> list[dict]:
    """One row per (strategy, n, l, cycle): the seeds it has and the median of every metric."""
    rows: dict[tuple, dict[str, list[float]]] = {}
    for r in runs:
        p = r["params"]
        for metric in metrics:
            for step, value in r["history"].get(metric, []):
                rows.setdefault((p["strategy"], int(p["n"]), int(p["l"]), int(step)), {}).setdefault(metric, []) \
                    .append(value)
    return [{"strategy": s, "n": n, "l": l, "cycle": c, "seeds": max(len(v) for v in m.values()),
             **{k: _median(m.get(k, [])) for k in metrics}}
            for (s, n, l, c), m in sorted(rows.items())]


def summarise_study(runs: list[dict], out: str | os.PathLike) -> dict[str, Path]:
    """Median over seeds per (strategy, n, l, cycle): CSV, markdown table and Fig.2-style plots, in the
    metrics of the runs' task (param ``task_kind``)."""
    out = Path(out)
    kinds = {r["params"].get("task_kind", DEFAULT_TASK) for r in runs} or {DEFAULT_TASK}
    if len(kinds) > 1:
        raise ValueError(f"runs of different tasks ({sorted(kinds)}) cannot share one summary")
    task = task_class(kinds.pop())
    metrics = task.summary_metrics
    table = summary_table(runs, metrics)
    fields = ["strategy", "n", "l", "cycle", "seeds", *metrics]
    with atomic_path(out / "summary.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(table)
    md = ["| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
    md += ["| " + " | ".join(f"{row[f]:.3f}" if isinstance(row[f], float) else str(row[f]) for f in fields) + " |"
           for row in table]
    atomic_write_text(out / "summary.md", "\n".join(md) + "\n")
    paths = {"csv": out / "summary.csv", "markdown": out / "summary.md"}
    for plot in task.summary_plots:
        paths[plot.name] = _plot(table, plot.metric, out / f"{plot.name}.png")
    return paths


def _plot(table: list[dict], y: str, path: Path) -> Path:
    """``y`` against annotated tissue %, one panel per region size, one line per strategy."""
    sizes = sorted({r["l"] for r in table})
    fig, axes = plt.subplots(1, max(1, len(sizes)), figsize=(5 * len(sizes), 4), squeeze=False)
    for ax, l in zip(axes[0], sizes):
        for strategy in sorted({r["strategy"] for r in table}):
            pts = sorted((r["annotated_tissue_pct"], r[y]) for r in table if r["strategy"] == strategy and r["l"] == l)
            ax.plot([a for a, _ in pts], [b for _, b in pts], marker="o", label=strategy)
        ax.set(title=f"l = {l} px", xlabel="annotated tissue (%)", ylabel=y.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path
