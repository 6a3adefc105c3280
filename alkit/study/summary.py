"""A study's summary: the median over seeds per strategy × budget × cycle, as CSV, markdown and plots.

The columns and plots are the task's (:attr:`alkit.al.task.Task.summary_metrics`,
:attr:`~alkit.al.task.Task.summary_plots`): e.g. tumour IoU and annotated tumour % for segmentation, F1 and
the annotated-mitoses ratio for detection, each plotted against annotated tissue %.

Where the study ran the reference strategy ``full`` (:data:`REFERENCE_STRATEGY`, every tissue cell
labeled; its row has ``n = l = 0``, cycle 0), every metric but the annotated tissue % (the x axis, of
which full annotation is 100 %) also gets a column ``<metric>_of_full``:
per seed, the value over the same seed's full-annotation value, then the median over seeds (NaN where
the reference is missing, NaN or zero; full's own row is 1). The plots answer the paper's question:

* ``<plot>_cycle0.png`` per task plot: the initial sets only (cycle 0, as Fig. 2 a–c of the paper),
  the median over seeds with min–max error bars over seeds on both axes, one marker per (n, l)
  (labeled), one colour per strategy, ``full`` a star with a dashed horizontal line;
* ``al_curves_l<l>.png`` per region size: the active-learning curves, one panel per task plot, one
  line per strategy and n through its cycles, ``full`` a dashed horizontal line;
* ``<plot>.png`` (as before): every cycle and budget, one panel per region size, one line per strategy
  (``full`` a dashed horizontal line).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window (set before pyplot is imported)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from alkit.al.task import DEFAULT_TASK, SummaryPlot, task_class  # noqa: E402
from alkit.atomic import atomic_path, atomic_write_text, remove_stale_staging, staging_folder  # noqa: E402


REFERENCE_STRATEGY = "full"
"""The strategy every other is measured against: all tissue labeled (run once per seed, cycle 0)."""

TABLE_ARTEFACT = "summary_table.json"  # the summary table on the study's parent run (an MLflow table)
TISSUE = "annotated_tissue_pct"  # the x axis of every plot (the loop records it for every task)
SPREAD = "median over seeds; bars: min–max over seeds"
REFERENCE_COLOUR = "black"
REFERENCE_LABEL = f"{REFERENCE_STRATEGY} (all tissue labeled)"

Key = tuple[str, int, int, int]  # (strategy, n, l, cycle)
SeedValues = dict[Key, dict[str, list[tuple[str, float]]]]  # key -> metric -> [(seed, value), ...]


def _median(values: list[float]) -> float:
    """Median ignoring NaN; NaN when nothing is left (e.g. no tumour-free test slide)."""
    finite = [v for v in values if not np.isnan(v)]
    return float(np.median(finite)) if finite else float("nan")


def fraction_column(metric: str) -> str:
    """The summary column of ``metric`` as a fraction of full annotation."""
    return f"{metric}_of_full"


def fraction_metrics(metrics: tuple[str, ...]) -> tuple[str, ...]:
    """The metrics that get a fraction-of-full column: all but the annotated tissue %."""
    return tuple(m for m in metrics if m != TISSUE)


def seed_values(runs: list[dict], metrics: tuple[str, ...]) -> SeedValues:
    """Every run's value of every metric per (strategy, n, l, cycle), with the run's seed."""
    rows: SeedValues = {}
    for r in runs:
        p = r["params"]
        for metric in metrics:
            for step, value in r["history"].get(metric, []):
                rows.setdefault((p["strategy"], int(p["n"]), int(p["l"]), int(step)), {}).setdefault(metric, []) \
                    .append((str(p.get("seed", "")), value))
    return rows


def reference_values(values: SeedValues) -> dict[str, dict[str, float]]:
    """Metric -> seed -> the reference's cycle-0 value (the median where a seed ran more than once)."""
    found: dict[str, dict[str, list[float]]] = {}
    for (strategy, _, _, cycle), by_metric in values.items():
        if strategy == REFERENCE_STRATEGY and cycle == 0:
            for metric, pairs in by_metric.items():
                for seed, value in pairs:
                    found.setdefault(metric, {}).setdefault(seed, []).append(value)
    return {m: {seed: _median(v) for seed, v in by_seed.items()} for m, by_seed in found.items()}


def _fraction(value: float, reference: float | None) -> float:
    """``value / reference``; NaN where either is missing or NaN, or the reference is zero."""
    if reference is None or np.isnan(reference) or reference == 0 or np.isnan(value):
        return float("nan")
    return float(value / reference)


def summary_table(runs: list[dict], metrics: tuple[str, ...]) -> list[dict]:
    """One row per (strategy, n, l, cycle): the seeds it has, the median of every metric and of every
    metric (:func:`fraction_metrics`) as a fraction of the same seed's full annotation."""
    values = seed_values(runs, metrics)
    reference = reference_values(values)
    table = []
    for (s, n, l, c), m in sorted(values.items()):
        row = {"strategy": s, "n": n, "l": l, "cycle": c, "seeds": max(len(v) for v in m.values()),
               **{k: _median([v for _, v in m.get(k, [])]) for k in metrics}}
        row |= {fraction_column(k): _median([_fraction(v, reference.get(k, {}).get(seed))
                                             for seed, v in m.get(k, [])]) for k in fraction_metrics(metrics)}
        table.append(row)
    return table


class StudySummary(dict):
    """The summary's files (name -> path, as :func:`summarise_study` documents) and, in ``mlflow``,
    the parent run they were logged to (None where the runs did not say where they are)."""

    def __init__(self, paths: dict[str, Path], mlflow=None) -> None:
        super().__init__(paths)
        self.mlflow = mlflow


def summarise_study(runs: list[dict], out: str | os.PathLike) -> StudySummary:
    """Median over seeds per (strategy, n, l, cycle): CSV, markdown table and plots, in the metrics of
    the runs' task (param ``task_kind``). Returns the paths: ``csv``, ``markdown``, one per task plot
    (its name), ``<plot>_cycle0`` per task plot and ``al_curves_l<l>`` per region size.

    When ``runs`` come from :func:`alkit.study.run.run_study` (they carry the study's parent run in
    ``runs.mlflow``), the summary also goes to that parent run, so that everyone with access to the
    tracking server sees it (:func:`log_summary`)."""
    paths = _write_summary(runs, Path(out))
    location = getattr(runs, "mlflow", None)
    if location is not None and location.run_id:
        log_summary(paths, location)
    return StudySummary(paths, location)


#: the label of the staging folder (:func:`alkit.atomic.staging_folder`) a replaced summary table is written in
SUMMARY_STAGING = "alkit-summary"


def log_summary(paths: dict[str, Path], location) -> None:
    """Log a summary's files to the run at ``location`` (an :class:`~alkit.study.tracking.MlflowLocation`):
    the table as an MLflow table (``summary_table.json``, ``client.log_table``), the CSV, markdown
    and plots under ``summary/``. Logging again replaces them (a resumed or sharded study), where
    ``log_table`` alone would append the rows to the old table."""
    import pandas as pd
    from mlflow import MlflowClient

    with open(paths["csv"], newline="") as fh:
        rows = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(fh)]
    client = MlflowClient(tracking_uri=location.tracking_uri)
    table = pd.DataFrame(rows, columns=list(rows[0]) if rows else None)
    if TABLE_ARTEFACT in {a.path for a in client.list_artifacts(location.run_id)}:
        # log_table would append the new rows to the old table: replace the file instead (same format)
        folder = Path(paths["csv"]).parent
        remove_stale_staging(folder, SUMMARY_STAGING)
        with staging_folder(folder, SUMMARY_STAGING) as tmp:
            table.to_json(Path(tmp) / TABLE_ARTEFACT, orient="split", index=False, date_format="iso")
            client.log_artifact(location.run_id, str(Path(tmp) / TABLE_ARTEFACT))
    else:
        client.log_table(location.run_id, table, TABLE_ARTEFACT)
    for path in paths.values():
        client.log_artifact(location.run_id, str(path), "summary")


def _number(text: str):
    """A CSV cell as a number where it is one (the table's columns are numeric but for the strategy)."""
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def _write_summary(runs: list[dict], out: Path) -> dict[str, Path]:
    """The summary's files in ``out`` (see :func:`summarise_study`)."""
    kinds = {r["params"].get("task_kind", DEFAULT_TASK) for r in runs} or {DEFAULT_TASK}
    if len(kinds) > 1:
        raise ValueError(f"runs of different tasks ({sorted(kinds)}) cannot share one summary")
    task = task_class(kinds.pop())
    metrics = task.summary_metrics
    table = summary_table(runs, metrics)
    fields = ["strategy", "n", "l", "cycle", "seeds", *metrics, *map(fraction_column, fraction_metrics(metrics))]
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
    values = seed_values(runs, tuple(dict.fromkeys((*metrics, TISSUE, *(p.metric for p in task.summary_plots)))))
    colours = _colours(values)
    for plot in task.summary_plots:
        paths[f"{plot.name}_cycle0"] = _initial_plot(values, plot.metric, colours, out / f"{plot.name}_cycle0.png")
    for l in sorted({l for s, _, l, _ in values if s != REFERENCE_STRATEGY}):
        paths[f"al_curves_l{l}"] = _curves_plot(values, task.summary_plots, l, colours, out / f"al_curves_l{l}.png")
    return paths


def _plot(table: list[dict], y: str, path: Path) -> Path:
    """``y`` against annotated tissue %, one panel per region size, one line per strategy."""
    reference = [r[y] for r in table if r["strategy"] == REFERENCE_STRATEGY and not np.isnan(r[y])]
    table = [r for r in table if r["strategy"] != REFERENCE_STRATEGY]
    sizes = sorted({r["l"] for r in table})
    fig, axes = plt.subplots(1, max(1, len(sizes)), figsize=(5 * max(1, len(sizes)), 4), squeeze=False)
    for ax, l in zip(axes[0], sizes or [None]):  # None: a study of the reference alone
        for strategy in sorted({r["strategy"] for r in table}):
            pts = sorted((r["annotated_tissue_pct"], r[y]) for r in table if r["strategy"] == strategy and r["l"] == l)
            ax.plot([a for a, _ in pts], [b for _, b in pts], marker="o", label=strategy)
        if reference:
            ax.axhline(_median(reference), color=REFERENCE_COLOUR, linestyle="--", label=REFERENCE_LABEL)
        ax.set(title=f"l = {l} px" if l is not None else REFERENCE_STRATEGY, xlabel="annotated tissue (%)",
               ylabel=y.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    return _save(fig, path)


def _colours(values: SeedValues) -> dict[str, str]:
    """One colour per strategy, the same in every plot (and as in :func:`_plot`); the reference black."""
    strategies = sorted({s for s, _, _, _ in values if s != REFERENCE_STRATEGY})
    return {s: f"C{i % 10}" for i, s in enumerate(strategies)} | {REFERENCE_STRATEGY: REFERENCE_COLOUR}


def _spread(pairs: list[tuple[str, float]]) -> tuple[float, float, float]:
    """``(median, median - min, max - median)`` of the finite values (NaNs where there are none)."""
    finite = [v for _, v in pairs if not np.isnan(v)]
    if not finite:
        return float("nan"), float("nan"), float("nan")
    mid = float(np.median(finite))
    return mid, mid - min(finite), max(finite) - mid


def _initial_plot(values: SeedValues, y: str, colours: dict[str, str], path: Path) -> Path:
    """The initial sets (cycle 0): ``y`` against annotated tissue %, median over seeds with min–max
    bars, one labeled marker per (n, l), one colour per strategy, the reference a star and a line."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs, labeled = [], set()
    for (strategy, n, l, cycle), m in sorted(values.items()):
        if cycle != 0 or y not in m or TISSUE not in m:
            continue
        (x, x_lo, x_hi), (v, v_lo, v_hi) = _spread(m[TISSUE]), _spread(m[y])
        if np.isnan(x) or np.isnan(v):
            continue
        reference = strategy == REFERENCE_STRATEGY
        label = None if strategy in labeled else REFERENCE_LABEL if reference else strategy
        labeled.add(strategy)
        ax.errorbar([x], [v], xerr=[[x_lo], [x_hi]], yerr=[[v_lo], [v_hi]], color=colours[strategy],
                    marker="*" if reference else "o", markersize=14 if reference else 6, capsize=3,
                    linestyle="none", label=label)
        if reference:
            ax.axhline(v, color=colours[strategy], linestyle="--", linewidth=1)
        else:
            ax.annotate(f"n={n}, l={l}", (x, v), textcoords="offset points", xytext=(5, 4), fontsize=7,
                        color=colours[strategy])
        xs.append(x - x_lo)
    if len(set(xs)) > 1 and min(xs) > 0:
        ax.set_xscale("log")  # initial sets hold a few % of the tissue, full annotation 100 %
    ax.set(title=f"initial sets (cycle 0): {y.replace('_', ' ')}\n{SPREAD}", xlabel="annotated tissue (%)",
           ylabel=y.replace("_", " "))
    ax.grid(alpha=0.3)
    if labeled:
        ax.legend(fontsize=8)
    return _save(fig, path)


def _curves_plot(values: SeedValues, plots: tuple[SummaryPlot, ...], l: int, colours: dict[str, str],
                 path: Path) -> Path:
    """Active-learning curves at region size ``l``: each plot's metric against annotated tissue %
    through the cycles (medians over seeds), one line per strategy and n, the reference a line."""
    sizes = sorted({n for s, n, size, _ in values if size == l and s != REFERENCE_STRATEGY})
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, max(1, len(plots)), figsize=(5.5 * max(1, len(plots)), 4), squeeze=False)
    for ax, plot in zip(axes[0], plots):
        for strategy in sorted({s for s, _, size, _ in values if size == l and s != REFERENCE_STRATEGY}):
            for i, n in enumerate(sizes):
                pts = [(_median([v for _, v in m.get(TISSUE, [])]), _median([v for _, v in m.get(plot.metric, [])]))
                       for (s, nn, size, _), m in sorted(values.items()) if (s, nn, size) == (strategy, n, l)]
                if pts:
                    ax.plot([a for a, _ in pts], [b for _, b in pts], marker="o", color=colours[strategy],
                            linestyle=styles[i % len(styles)], label=f"{strategy} n={n}")
        reference = [v for (s, _, _, c), m in values.items() if s == REFERENCE_STRATEGY and c == 0
                     for _, v in m.get(plot.metric, [])]
        if not np.isnan(_median(reference)):
            ax.axhline(_median(reference), color=REFERENCE_COLOUR, linestyle="--", label=REFERENCE_LABEL)
        ax.set(title=f"l = {l} px", xlabel="annotated tissue (%)", ylabel=plot.metric.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("active-learning curves: every cycle, median over seeds")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path
