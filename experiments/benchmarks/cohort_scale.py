"""A CAMELYON16-sized dry run: how long, and in how much memory, does one study run take per strategy?

Writes synthetic embedding stores (:func:`alkit.embeddings.store.write_store`) for ``--slides-train``
training and ``--slides-test`` test slides (CAMELYON16: 270 and 129) with ``--cells-min`` to
``--cells-max`` tissue cells each (CAMELYON16 at 0.25 µm/px and 256-px patches: about 20k–150k), of
``--dim``-d features, instead of embedding slides. Each slide's grid has a smooth tissue shape; cells get
one of a few tissue types (smooth patches of the slide) and, on tumour slides (CAMELYON16: 111 of the
270, 49 of the 129), tumour blobs; a cell's feature is its type's centre plus noise, so the similarity to
tumour prototypes and the diversity clusters mean something. The ground truth is a tumour mask per
tumour slide at one pixel per grid cell (``truth/<slide>_mask.png``), read by
:meth:`alkit.tasks.segmentation.oracle.TumourOracle.from_folder` as a study's ``cohort.ground_truth``
folder would be; the prototypes are a handful of tumour-cell features of training slides.

Then, per strategy (random, diversity, prototype), one study run at the "3_M" cell (n = 3 regions of
l = 8192 px per slide) of the segmentation task through :class:`alkit.al.loop.ActiveLearningLoop`
(one cycle): selection (maps, window features, k-means, the selector), the oracle's region reports,
training (frozen mode: the head on the stored features; ``--max-epochs``) and evaluation on the test
slides. Per stage it prints wall time, CPU time of the process (all threads: steadier than wall time on
a machine other jobs share) and peak resident memory above the stage's start (sampled every 20 ms), and
the extrapolation to 512-d features (stages that read features scaled by the dimension: an upper bound)
and to the 9 × 3 × 5 grid (9 budgets × 3 strategies × 5 seeds). The stores are removed at the end
unless ``--keep``. Measured at full CAMELYON16 size on the project's machine: README, "Scale".

    nice .venv/bin/python experiments/benchmarks/cohort_scale.py [--quick] [--slides-train 270 ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter, zoom

from alkit.al.loop import ActiveLearningLoop
from alkit.al.pool import LabeledPool
from alkit.embeddings.cohort import Cohort
from alkit.embeddings.store import store_path, write_store
from alkit.prototypes.prototype_set import ClassPrototypes, PrototypeSet
from alkit.selection.strategy import Budget, get_strategy
from alkit.tasks.segmentation.oracle import TumourOracle
from alkit.tasks.segmentation.task import SegmentationTask

ENCODER, MPP, PATCH = "synthetic-cohort-scale", 0.25, 256
TYPES = 8  # normal tissue types; the tumour is type TYPES
TUMOUR_SHARE = {"train": 111 / 270, "test": 49 / 129}  # CAMELYON16's tumour slides


# ------------------------------------------------------------------------------------------ memory

def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Stages:
    """Wall time and peak RSS (above the stage's start) per named stage; a sampler thread every 20 ms."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, float, float, float, float]] = []  # strategy, stage, s, MiB, RSS, CPU s
        self._peak = 0.0
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self._peak = max(self._peak, rss_mib())

    @contextmanager
    def stage(self, strategy: str, name: str):
        start_rss = rss_mib()
        self._peak = start_rss
        start, cpu = time.perf_counter(), time.process_time()
        yield
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        peak = max(self._peak, rss_mib())
        self.rows.append((strategy, name, seconds, peak - start_rss, peak, cpu))
        print(f"  {strategy:9s} {name:22s} {seconds:8.1f} s wall {cpu:8.1f} s CPU   peak +{peak - start_rss:7.0f} MiB "
              f"(RSS {peak:6.0f} MiB)", flush=True)

    def seconds(self, strategy: str, name: str) -> float:
        """CPU seconds of a stage (all threads of this process): on a machine shared with other jobs,
        closer to what the stage costs than wall time."""
        return sum(r[5] for r in self.rows if r[0] == strategy and r[1] == name)


def timed_calls(stages: Stages, owner, attribute: str, strategy: list[str], name: str) -> None:
    """Time every call of ``owner.attribute`` as stage ``name`` (of the strategy running), summed."""
    inner = getattr(owner, attribute)
    totals: dict[str, float] = {}

    def wrapper(*args, **kwargs):
        start = time.process_time()
        try:
            return inner(*args, **kwargs)
        finally:
            totals[strategy[0]] = totals.get(strategy[0], 0.0) + time.process_time() - start

    setattr(owner, attribute, wrapper)
    stages.inner = getattr(stages, "inner", {})
    stages.inner[name] = totals


# --------------------------------------------------------------------------------- synthetic stores

def smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Smooth noise: coarse Gaussian noise blurred and zoomed up (cheap at any grid size)."""
    coarse = (max(2, int(shape[0] / scale)), max(2, int(shape[1] / scale)))
    field = gaussian_filter(rng.standard_normal(coarse), 1.0)
    return zoom(field, (shape[0] / coarse[0], shape[1] / coarse[1]), order=1)[:shape[0], :shape[1]]


def write_slide(rng: np.random.Generator, slide_id: str, cells: int, tumour: bool, centres: np.ndarray,
                folder: Path, truth: Path, dtype: np.dtype) -> Path:
    """One slide's store (tissue shape, types, tumour blobs) and, for a tumour slide, its mask."""
    area = cells / 0.45  # tissue covers ~45 % of the grid
    rows = max(8, int(np.sqrt(area / 2)))
    cols = max(8, int(area / rows) + 1)
    field = smooth_field(rng, (rows, cols), 24.0)
    level = np.partition(field.ravel(), field.size - cells)[field.size - cells]
    tissue = (field >= level).astype(np.float32)
    coords = np.argwhere(tissue > 0).astype(np.int32)
    kinds = np.digitize(smooth_field(rng, (rows, cols), 12.0), np.linspace(-1.2, 1.2, TYPES - 1))
    mask = np.zeros((rows, cols), bool)
    if tumour:
        blobs = smooth_field(rng, (rows, cols), 8.0)
        share = rng.uniform(0.01, 0.12)
        inside = blobs[tissue > 0]
        cut = np.quantile(inside, 1 - share)
        mask = (blobs >= cut) & (tissue > 0)
        Image.fromarray(mask.astype(np.uint8) * 255).save(truth / f"{slide_id}_mask.png")
    kind = np.where(mask, TYPES, kinds)[coords[:, 0], coords[:, 1]]
    feats = centres[kind] + 0.6 * rng.standard_normal((len(coords), centres.shape[1]), dtype=np.float32)
    attrs = {"slide": slide_id, "encoder": ENCODER, "weights_id": "synthetic", "mpp": MPP, "patch": PATCH,
             "stride": PATCH, "min_tissue": 0.5, "slide_dimensions": [cols * PATCH, rows * PATCH],
             "slide_mpp": MPP, "slide_content_id": f"synthetic-{slide_id}", "slide_path": ""}
    path = store_path(folder, slide_id, ENCODER, MPP, PATCH, PATCH)
    return write_store(path, coords, feats.astype(dtype), attrs, tissue)


def write_cohort(args: argparse.Namespace, root: Path) -> tuple[list[Path], list[Path], np.ndarray]:
    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((TYPES + 1, args.dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True) / 1.5
    truth = root / "truth"
    truth.mkdir(parents=True, exist_ok=True)
    paths = {"train": [], "test": []}
    start = time.perf_counter()
    for part, count in (("train", args.slides_train), ("test", args.slides_test)):
        tumour = rng.random(count) < TUMOUR_SHARE[part]
        for i in range(count):
            cells = int(rng.integers(args.cells_min, args.cells_max + 1))
            paths[part].append(write_slide(rng, f"{part}_{i:03d}", cells, bool(tumour[i]), centres,
                                           root / part, truth, np.dtype(args.dtype)))
    size = sum(p.stat().st_size for ps in paths.values() for p in ps) / 2**30
    print(f"wrote {args.slides_train} + {args.slides_test} stores ({size:.2f} GiB, {args.dim}-d {args.dtype}) "
          f"in {time.perf_counter() - start:.0f} s", flush=True)
    return paths["train"], paths["test"], centres


def prototypes_of(centres: np.ndarray, rng: np.random.Generator, k: int = 5) -> PrototypeSet:
    """Tumour prototypes: tumour-type features (centre plus the stores' noise), as if from captions."""
    emb = centres[TYPES] + 0.6 * rng.standard_normal((k, centres.shape[1])).astype(np.float32)
    origin = [{"source": "synthetic", "row": i} for i in range(k)]
    return PrototypeSet(ENCODER, centres.shape[1], "synthetic", {"tumour": ClassPrototypes("tumour", emb, origin)})


# ------------------------------------------------------------------------------------------- runs

def run_strategy(name: str, stages: Stages, current: list[str], cohort: Cohort, test: Cohort,
                 oracle: TumourOracle, prototypes: PrototypeSet, args: argparse.Namespace, root: Path) -> dict:
    current[0] = name
    params = {"prototypes": prototypes} if name == "prototype" else {}
    strategy = get_strategy(name, **params)
    task = SegmentationTask.from_params(oracle, {"max_epochs": args.max_epochs, "min_epochs": 0,
                                                 "predict_batch_size": 8192}, seed=0)
    loop = ActiveLearningLoop(task, cohort, strategy, None, Budget(args.n, args.l), 1,
                              LabeledPool.open(root / f"pool-{name}.json"), test_cohort=test, seed=0)
    with stages.stage(name, "selection (all)"):
        selection = loop.choose(0, strategy)
    with stages.stage(name, "oracle reports"):
        loop.record(0, selection)
    with stages.stage(name, "training"):
        summary = loop.fit()
    with stages.stage(name, "evaluation"):
        metrics = loop.evaluate()
    cells = int(summary.get("n_train", 0) or 0) if isinstance(summary, dict) else 0
    print(f"  {name}: {len(selection.regions)} regions, iou_tumour {metrics.get('iou_tumour', float('nan')):.3f}, "
          f"annotated tumour {metrics.get('annotated_tumour_pct', 0):.1f} %, training summary "
          f"{ {k: v for k, v in summary.items() if not isinstance(v, (list, dict))} }", flush=True)
    return {"regions": len(selection.regions), "cells": cells, "metrics": metrics}


def report(stages: Stages, args: argparse.Namespace, strategies: list[str]) -> None:
    inner = getattr(stages, "inner", {})
    print("\nper stage (CPU s, all threads / peak RSS above the stage's start; inner parts: CPU s):")
    print(f"| strategy | {' | '.join(n for n in ('selection (all)', *inner, 'oracle reports', 'training', 'evaluation'))} |")
    for s in strategies:
        cells = []
        for st in ("selection (all)", *inner, "oracle reports", "training", "evaluation"):
            if st in inner:
                cells.append(f"{inner[st].get(s, 0.0):.1f} s" if s in inner[st] else "–")
                continue
            row = [r for r in stages.rows if r[0] == s and r[1] == st]
            cells.append(f"{row[0][5]:.1f} s / {row[0][3]:.0f} MiB" if row else "–")
        print(f"| {s} | {' | '.join(cells)} |")
    # extrapolation: stages that read features scale with the dimension, the rest do not
    scale_dim = 512 / args.dim
    print(f"\nextrapolation (feature-bound stages x {scale_dim:g} for 512-d; per slide linear):")
    total64 = total512 = 0.0
    for s in strategies:
        t = {st: stages.seconds(s, st) for st in ("selection (all)", "oracle reports", "training", "evaluation")}
        run64 = sum(t.values())
        run512 = (t["selection (all)"] * (scale_dim if s != "random" else 1.0) + t["oracle reports"]
                  + t["training"] * scale_dim + t["evaluation"] * scale_dim)
        total64 += run64 * 9 * 5
        total512 += run512 * 9 * 5
        print(f"  {s:9s} one run {run64:7.0f} CPU s at {args.dim}-d, <= ~{run512:7.0f} CPU s at 512-d")
    print(f"  9 budgets x 3 strategies x 5 seeds (135 runs, each budget costed like 3_M): ~{total64 / 3600:.1f} CPU h at "
          f"{args.dim}-d, <= ~{total512 / 3600:.1f} CPU h at 512-d (training at --max-epochs {args.max_epochs})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slides-train", type=int, default=270)
    parser.add_argument("--slides-test", type=int, default=129)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--cells-min", type=int, default=20_000)
    parser.add_argument("--cells-max", type=int, default=150_000)
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    parser.add_argument("--out", type=Path, default=Path("/tmp/alkit-cohort-scale"))
    parser.add_argument("--strategies", default="random,diversity,prototype")
    parser.add_argument("--n", type=int, default=3)
    parser.add_argument("--l", type=int, default=8192)
    parser.add_argument("--max-epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the stores (default: removed at the end)")
    parser.add_argument("--quick", action="store_true", help="a smoke-test scale: 6 + 4 slides of 2k-6k cells, 16-d")
    args = parser.parse_args()
    if args.quick:
        args.slides_train, args.slides_test, args.cells_min, args.cells_max, args.dim = 6, 4, 2000, 6000, 16
        args.l, args.max_epochs = 2048, 1
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    root = args.out
    if root.exists():
        sys.exit(f"{root} exists; give a new --out (it is removed at the end)")
    print(f"{args.slides_train} training + {args.slides_test} test slides, {args.cells_min}-{args.cells_max} "
          f"tissue cells, {args.dim}-d, n = {args.n}, l = {args.l} px; {os.cpu_count()} cores", flush=True)
    stages = Stages()
    try:
        with stages.stage("cohort", "write stores"):
            train_paths, test_paths, centres = write_cohort(args, root)
        with stages.stage("cohort", "open cohorts + oracle"):
            cohort, test = Cohort.from_stores(train_paths), Cohort.from_stores(test_paths)
            oracle = TumourOracle.from_folder(root / "truth", "{slide}_mask.png", mpp=MPP, mask_downsample=float(PATCH))
        prototypes = prototypes_of(centres, np.random.default_rng(args.seed + 1))
        current = ["-"]
        import strategies.diversity as diversity
        import strategies.prototype as prototype
        timed_calls(stages, prototype, "similarity_maps", current, "maps")
        timed_calls(stages, prototype, "select_on_maps", current, "selector")
        timed_calls(stages, diversity.DiversityStrategy, "windows", current, "window features")
        timed_calls(stages, diversity, "kmeans", current, "k-means")
        for name in strategies:
            run_strategy(name, stages, current, cohort, test, oracle, prototypes, args, root)
        report(stages, args, strategies)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
