"""Compare initial-set strategies: a grid of active-learning runs tracked in MLflow, and its summary.

A study is a YAML file (see ``experiments/*.yaml``). ``run_study`` validates all of it before any
work (an invalid key fails with the key and the reason), embeds the slides (cached stores), builds the
prototypes, then runs one active-learning loop per (strategy, n, l, seed) — a run in the study's
MLflow experiment with per-cycle metrics (step = cycle), params, and artefacts (regions JSON +
QuPath GeoJSON of the initial set, score-map PNGs, the pool file, the resolved config). Runs already
FINISHED in MLflow with the same key (and config hash) are skipped, so an interrupted study resumes.
``summarise_study`` takes the median over seeds per strategy × setting and cycle, writes a CSV and a
markdown table, and plots metric vs annotated tissue % (Fig. 2 of the paper), one line per strategy.
"""

from __future__ import annotations

import csv
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from alkit import __version__
from alkit.errors import AlkitError

log = logging.getLogger(__name__)

METRICS = ("miou_tumour", "annotated_tissue_pct", "annotated_tumour_pct", "fp_rate_tumour_free")
DETECTION_METRICS = ("f1", "precision", "recall", "annotated_mitoses_ratio", "annotated_tissue_pct", "threshold")
#: per task kind: the summary's metrics and its plots (y metric, file name), each against annotated tissue %
SUMMARY = {
    "segmentation": (METRICS, (("miou_tumour", "miou_vs_tissue"), ("annotated_tumour_pct", "tumour_vs_tissue"))),
    "detection": (DETECTION_METRICS, (("f1", "f1_vs_tissue"), ("annotated_mitoses_ratio", "mitoses_vs_tissue"))),
}
TASK_KINDS = tuple(SUMMARY)


class ConfigError(AlkitError, ValueError):
    """An invalid study config: names the file, the key and the reason."""


# ------------------------------------------------------------------------------------------ config
@dataclass
class StudyConfig:
    """A validated study; paths are resolved against the config file's folder."""

    path: Path
    raw: dict
    study: str
    slides: list[Path]
    test_slides: list[Path]
    ground_truth: dict
    embedding: dict
    prototypes: dict
    strategies: list[str]
    selector: str
    n: list[int]
    l: list[int]
    seeds: list[int]
    cycles: int
    acquisition: dict
    task: dict
    out: Path
    slide_mpp: float | None = None
    validation_slides: list[Path] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """The task: ``"segmentation"`` (tumour, mIoU) or ``"detection"`` (mitotic figures, F1)."""
        return self.task.get("kind", "segmentation")


def _get(raw: Mapping, key: str, path: Path, kind: type | tuple, default: Any = ...) -> Any:
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            if default is ...:
                raise ConfigError(f"{path}: missing key '{key}'")
            return default
        node = node[part]
    if not isinstance(node, kind) or isinstance(node, bool) and kind in (int, float, (int, float)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ConfigError(f"{path}: key '{key}' must be {names}, got {node!r}")
    return node


def _int_list(raw: Mapping, key: str, path: Path, positive: bool = True) -> list[int]:
    values = _get(raw, key, path, (list, int))
    values = [values] if isinstance(values, int) else values
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"{path}: key '{key}' must be a non-empty list of integers, got {values!r}")
    if positive and min(values) <= 0:
        raise ConfigError(f"{path}: key '{key}' must hold positive integers, got {values!r}")
    return list(values)


def load_config(path: str | os.PathLike) -> StudyConfig:
    """Read and validate a study config; every problem is a :class:`ConfigError` before any work."""
    from alkit.embeddings.cohort import expand_slide_paths
    from alkit.wsi.slide import SlideError
    from alkit.selection.strategy import available_strategies

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: unreadable YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a study config is a mapping of keys, got {type(raw).__name__}")
    known = {"study", "cohort", "embedding", "prototypes", "strategies", "selector", "budgets", "seeds", "loop",
             "task", "out"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; known: {sorted(known)}")
    base = path.parent

    def resolve(p: str) -> str:
        return str(p if os.path.isabs(p) else base / p)

    task = dict(_get(raw, "task", path, dict, {}))
    kind = task.get("kind", "segmentation")
    if kind not in TASK_KINDS:
        raise ConfigError(f"{path}: key 'task.kind' must be one of {list(TASK_KINDS)}, got {kind!r}")
    _check_task_params(task, path)
    strategies = _get(raw, "strategies", path, list)
    registered = available_strategies()
    for s in strategies:
        if s not in registered:
            raise ConfigError(f"{path}: key 'strategies' names unknown strategy {s!r}; available: {registered}")
    selector = _get(raw, "selector", path, str, "standard")
    if selector not in ("standard", "adaptive"):
        raise ConfigError(f"{path}: key 'selector' must be 'standard' or 'adaptive', got {selector!r}")
    try:
        slides = expand_slide_paths([resolve(s) for s in _as_list(_get(raw, "cohort.slides", path, (str, list)))])
        test = _get(raw, "cohort.test_slides", path, (str, list), None)
        test_slides = expand_slide_paths([resolve(s) for s in _as_list(test)]) if test else []
        val = _get(raw, "cohort.validation_slides", path, (str, list), None)
        validation_slides = expand_slide_paths([resolve(s) for s in _as_list(val)]) if val else []
    except SlideError as exc:
        raise ConfigError(f"{path}: key 'cohort.slides': {exc}") from None
    for p in slides + test_slides + validation_slides:
        if not p.exists():
            raise ConfigError(f"{path}: key 'cohort.slides': {p} does not exist")
    if validation_slides and kind != "detection":
        raise ConfigError(f"{path}: key 'cohort.validation_slides' is used by task.kind 'detection' only "
                          "(segmentation has no threshold to choose)")
    truth = dict(_get(raw, "cohort.ground_truth", path, dict))
    point_sources = [k for k in ("sliderunner", "coco") if k in truth]
    if point_sources and kind != "detection":
        raise ConfigError(f"{path}: key 'cohort.ground_truth.{point_sources[0]}' holds mitosis points, for "
                          "task.kind 'detection'; tumour ground truth is 'folder' (+ 'pattern') or 'synthetic'")
    if "sliderunner" in truth:
        try:
            truth["sliderunner"] = [str(p) for p in expand_slide_paths(
                [resolve(s) for s in _as_list(truth["sliderunner"])])]
        except SlideError as exc:
            raise ConfigError(f"{path}: key 'cohort.ground_truth.sliderunner': {exc}") from None
        for db in truth["sliderunner"]:
            if not Path(db).is_file():
                raise ConfigError(f"{path}: key 'cohort.ground_truth.sliderunner': no file {db}")
    elif "coco" in truth:
        truth["coco"] = resolve(truth["coco"])
        if not Path(truth["coco"]).is_file():
            raise ConfigError(f"{path}: key 'cohort.ground_truth.coco': no file {truth['coco']}")
    elif "synthetic" in truth:
        truth["synthetic"] = resolve(truth["synthetic"])
        if not Path(truth["synthetic"]).is_dir():
            raise ConfigError(f"{path}: key 'cohort.ground_truth.synthetic': no folder {truth['synthetic']}")
    elif "folder" in truth:
        truth["folder"] = resolve(truth["folder"])
        if not Path(truth["folder"]).is_dir():
            raise ConfigError(f"{path}: key 'cohort.ground_truth.folder': no folder {truth['folder']}")
    else:
        extra = " or, for detection, 'sliderunner' / 'coco'" if kind == "detection" else ""
        raise ConfigError(f"{path}: key 'cohort.ground_truth' needs 'folder' (+ 'pattern') or 'synthetic'{extra}")
    if kind == "detection":
        from alkit.al.oracle import OracleError, check_classes

        try:
            check_classes(truth.get("classes"))
        except OracleError as exc:
            raise ConfigError(f"{path}: key 'cohort.ground_truth.classes': {exc}") from None
        if "folder" in truth and not _sliderunner_files(truth):
            raise ConfigError(f"{path}: key 'cohort.ground_truth.folder': no SlideRunner database matches "
                              f"{truth.get('pattern', '{slide}.sqlite')!r} in {truth['folder']}")
    embedding = dict(_get(raw, "embedding", path, dict))
    _get(raw, "embedding.encoder", path, str)
    embedding["out"] = resolve(_get(raw, "embedding.out", path, str))
    protos = dict(_get(raw, "prototypes", path, dict, {}))
    if "prototype" in strategies:
        if not protos:
            raise ConfigError(f"{path}: key 'prototypes' is required by the prototype strategy")
        if "path" in protos:
            protos["path"] = resolve(protos["path"])
        elif "db" in protos:
            protos["db"] = resolve(protos["db"])
            classes = _get(raw, "prototypes.classes", path, dict)
            for name, q in classes.items():
                if not isinstance(q, dict) or not ("with" in q or "prompt" in q or "ids" in q):
                    raise ConfigError(f"{path}: key 'prototypes.classes.{name}' needs 'with' (keyword groups), "
                                      "'prompt' (retrieval) or 'ids'")
        else:
            raise ConfigError(f"{path}: key 'prototypes' needs 'path' (a built set) or 'db' + 'classes'")
        if kind == "detection" and "db" in protos:
            if len(protos["classes"]) != 1:
                raise ConfigError(f"{path}: key 'prototypes.classes': detection prototypes are one class of mitosis "
                                  f"crops, got {sorted(protos['classes'])}")
            crops = dict(_get(raw, "prototypes.crops", path, dict, {}))
            unknown_crops = sorted(set(crops) - {"figures", "boxes", "side"})
            if unknown_crops:
                raise ConfigError(f"{path}: key 'prototypes.crops' knows 'figures' (a synthetic truth.json), "
                                  f"'boxes' (a crop-box JSON) and 'side' (centre crops, px); got {unknown_crops}")
            for key in ("figures", "boxes"):
                if key in crops:
                    crops[key] = resolve(crops[key])
                    if not Path(crops[key]).is_file():
                        raise ConfigError(f"{path}: key 'prototypes.crops.{key}': no file {crops[key]}")
            protos["crops"] = crops
    cycles = _get(raw, "loop.cycles", path, int, 3)
    if cycles < 1:
        raise ConfigError(f"{path}: key 'loop.cycles' must be >= 1, got {cycles}")
    acquisition = dict(_get(raw, "loop.acquisition", path, dict, {"measure": "entropy"}))
    if kind == "detection" and acquisition.get("measure") == "bald":
        raise ConfigError(f"{path}: key 'loop.acquisition.measure': 'bald' needs MC dropout, which the mitosis "
                          "detector has not; use entropy, margin or least_confidence")
    return StudyConfig(
        path=path, raw=raw, study=_get(raw, "study", path, str), slides=slides, test_slides=test_slides,
        ground_truth=truth, embedding=embedding, prototypes=protos, strategies=list(strategies), selector=selector,
        n=_int_list(raw, "budgets.n", path), l=_int_list(raw, "budgets.l", path),
        seeds=_int_list(raw, "seeds", path, positive=False), cycles=cycles, acquisition=acquisition, task=task,
        out=Path(resolve(_get(raw, "out", path, str))),
        slide_mpp=_get(raw, "cohort.slide_mpp", path, (int, float), None), validation_slides=validation_slides)


def _sliderunner_files(truth: dict) -> list[Path]:
    """The SlideRunner databases of ``ground_truth.folder`` that match its ``pattern`` (default one per slide)."""
    return sorted(Path(truth["folder"]).glob(truth.get("pattern", "{slide}.sqlite").replace("{slide}", "*")))


def _task_class(kind: str) -> type:
    from alkit.tasks import MitosisDetectorTask, PatchClassifierTask

    return MitosisDetectorTask if kind == "detection" else PatchClassifierTask


def _check_task_params(task: dict, path: Path) -> None:
    """Every key of ``task`` (but ``kind``) must be a parameter of the task's model."""
    import inspect

    cls = _task_class(task.get("kind", "segmentation"))
    accepted = set(inspect.signature(cls).parameters) - {"seed", "logger", "callbacks", "self"}
    unknown = sorted(set(task) - accepted - {"kind"})
    if unknown:
        raise ConfigError(f"{path}: key 'task' has unknown parameter(s) {unknown} for {cls.__name__}; "
                          f"known: {sorted(accepted)}")


def _as_list(value: Any) -> list:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


# ------------------------------------------------------------------------------------------ inputs
def _oracle(config: StudyConfig):
    """The simulated annotator: tumour ground truth, or (detection) mitosis points."""
    from alkit.al.oracle import MitosisOracle, TumourOracle

    truth = config.ground_truth
    if config.kind == "detection":
        classes = truth.get("classes")
        if "sliderunner" in truth:
            return MitosisOracle.from_sliderunner(truth["sliderunner"], classes=classes, mpp=config.slide_mpp)
        if "coco" in truth:
            return MitosisOracle.from_coco(truth["coco"], classes=classes, mpp=config.slide_mpp)
        if "synthetic" in truth:
            return TumourOracle.from_synthetic(truth["synthetic"]).mitosis
        return MitosisOracle.from_sliderunner(_sliderunner_files(truth), classes=classes, mpp=config.slide_mpp)
    if "synthetic" in truth:
        return TumourOracle.from_synthetic(truth["synthetic"])
    return TumourOracle.from_folder(truth["folder"], truth.get("pattern", "{slide}.xml"), mpp=config.slide_mpp)


def _embed(config: StudyConfig, paths: list[Path], progress: bool):
    from alkit.embeddings.cohort import Cohort
    from alkit.embeddings.embed import EmbedConfig, Embedder

    e = config.embedding
    cfg = EmbedConfig(encoder=e["encoder"], mpp=e.get("mpp"), patch=e.get("patch", 256), stride=e.get("stride"),
                      min_tissue=e.get("min_tissue", 0.5), batch_size=e.get("batch_size", 64),
                      num_workers=e.get("workers", 2), accelerator=e.get("accelerator", "auto"),
                      devices=e.get("devices", 1))
    return Cohort.from_stores(Embedder(cfg, e["out"], progress=progress).embed(paths, slide_mpp=config.slide_mpp))


def _prototypes(config: StudyConfig):
    """The study's prototype set: a built one, or built now from the caption database (cached on disk)."""
    from alkit.captions import open_database
    from alkit.embeddings.encoders import get_encoder
    from alkit.prototypes.prototype_set import PrototypeSet, build_prototypes

    p = config.prototypes
    if "path" in p:
        return PrototypeSet.load(p["path"])
    folder = config.out / "prototypes"
    if (folder / "prototypes.json").exists():
        return PrototypeSet.load(folder)
    db = open_database(p["db"])
    encoder = get_encoder(config.embedding["encoder"])
    if config.kind == "detection":
        prototypes = _mitosis_prototypes(db, p, encoder)
        prototypes.save(folder)
        return prototypes
    ids, queries = {}, {}
    for name, q in p["classes"].items():
        ids[name], query = _class_ids(db, name, q, encoder)
        if "ids" not in query:
            queries[name] = query
    prototypes = build_prototypes(db, ids, encoder, queries=queries)
    prototypes.save(folder)
    return prototypes


def _class_ids(db, name: str, q: dict, encoder) -> tuple[list[str], dict]:
    """The image ids of one prototype class (given, found by keyword search, or retrieved with a text
    prompt by ``encoder``, which must embed text: open_clip / plip) and the query that found them."""
    from alkit.captions import KeywordQuery, search

    if "ids" in q:
        return list(q["ids"]), {"ids": list(q["ids"])}
    if "prompt" in q:
        from alkit.captions.retrieval import DEFAULT_TOP_N, retrieve

        result = retrieve(db, encoder, name, template=q["prompt"], top_n=q.get("top_n", DEFAULT_TOP_N),
                          tags=q.get("tags", ()))
        return list(result.ids), result.query()
    query = KeywordQuery(name, tuple(tuple(g) for g in q["with"]), tuple(q.get("without", ())),
                         q.get("mode", "substring"))
    return list(search(db, query).ids), {"keywords": {"with": q["with"], "without": q.get("without", [])}}


def _mitosis_prototypes(db, p: dict, encoder):
    """Detection prototypes: 64 × 64 crops around the figure of every image found for the one class."""
    from alkit.prototypes.crops import PATCH_PX, build_mitosis_prototypes, synthetic_mitosis_boxes
    from alkit.prototypes.prototype_set import read_boxes

    ((name, q),) = p["classes"].items()
    ids, query = _class_ids(db, name, q, encoder)
    crops = p.get("crops", {})
    boxes = (synthetic_mitosis_boxes(crops["figures"]) if "figures" in crops
             else read_boxes(crops["boxes"]) if "boxes" in crops else {})
    return build_mitosis_prototypes(db, ids, encoder, boxes=boxes, side=crops.get("side", PATCH_PX), name=name,
                                    query=query)


def _task(config: StudyConfig, seed: int, logger=None):
    params = {k: v for k, v in config.task.items() if k != "kind"}
    return _task_class(config.kind)(seed=seed, logger=logger, **params)


# ------------------------------------------------------------------------------------------ running
def run_study(config: StudyConfig, tracking_uri: str | None = None, progress: bool = True) -> list[dict]:
    """Run every (strategy, n, l, seed) of the study not already finished; returns the finished runs."""
    from alkit.tasks.detection.loop import DetectionLoop
    from alkit.selection.export import write_selection
    from alkit.al.loop import ActiveLearningLoop, LoopCallback
    from alkit.al.pool import LabeledPool
    from alkit.selection.strategy import Budget, get_strategy
    from alkit.study.tracking import Tracker, config_hash

    cohort = _embed(config, config.slides, progress)
    test_cohort = _embed(config, config.test_slides, progress) if config.test_slides else None
    validation_cohort = _embed(config, config.validation_slides, progress) if config.validation_slides else None
    oracle = _oracle(config)
    prototypes = _prototypes(config) if "prototype" in config.strategies else None
    tracker = Tracker(config.study, tracking_uri)
    digest = config_hash(config.raw)
    grid = [(s, n, l, seed) for s in config.strategies for n in config.n for l in config.l for seed in config.seeds]
    from tqdm.auto import tqdm

    for strategy, n, l, seed in tqdm(grid, desc="runs", unit="run", disable=not progress):
        key = {"strategy": strategy, "n": str(n), "l": str(l), "seed": str(seed), "config_hash": digest}
        if tracker.finished_run(key):
            log.info("skipping finished run %s", key)
            continue
        params = {"strategy": strategy, "n": n, "l": l, "seed": seed, "encoder": config.embedding["encoder"],
                  "selector": config.selector, "cycles": config.cycles, "acquisition": config.acquisition,
                  "task_kind": config.kind,
                  "prototypes": prototypes.meta if prototypes is not None and strategy == "prototype" else "",
                  "alkit_version": __version__, "config_hash": digest}
        name = f"{strategy}-n{n}-l{l}-s{seed}"
        pool_path = config.out / "pools" / f"{name}-{digest}.json"
        with tracker.start_run(name, key, params) as run:
            initial = get_strategy(strategy, **({"prototypes": prototypes, "selector": config.selector}
                                                if strategy == "prototype" else {}))
            acquisition = get_strategy("uncertainty", selector=config.selector, **config.acquisition)
            task = _task(config, seed)

            class Tracking(LoopCallback):
                def on_labeled(self, loop, cycle, selection):
                    with tempfile.TemporaryDirectory() as tmp:  # regions + score-map PNGs of every cycle
                        write_selection(selection, loop.cohort, tmp)  # regions.json, qupath/, asap/, png/
                        run.log_artifact(tmp, f"cycle_{cycle}")

            common = dict(test_cohort=test_cohort, seed=seed, callbacks=[Tracking()])
            if config.kind == "detection":
                common["validation_cohort"] = validation_cohort
            loop = (DetectionLoop if config.kind == "detection" else ActiveLearningLoop)(
                cohort, initial, acquisition, task, oracle, Budget(n, l), config.cycles, LabeledPool.open(pool_path),
                **common)
            # metrics come from the pool, so cycles finished before an interruption are logged too
            for result in loop.run():
                run.log_metrics(numeric_metrics(result.metrics), step=result.cycle)
            run.log_artifact(pool_path, "pool")
            run.log_dict(config.raw, "config.json")
    return tracker.runs({"config_hash": digest})


def numeric_metrics(metrics: Mapping) -> dict[str, float]:
    """The numbers of a cycle's metrics, one level of mappings flattened (``f1_per_slide.SLIDE``)
    with names MLflow accepts; text and missing values are left out."""
    import re

    out: dict[str, float] = {}
    for key, value in metrics.items():
        items = value.items() if isinstance(value, Mapping) else [(None, value)]
        for sub, v in items:
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                name = key if sub is None else f"{key}.{sub}"
                out[re.sub(r"[^\w\-. /]", "_", name)] = float(v)
    return out


# ------------------------------------------------------------------------------------------ summary
def _median(values: list[float]) -> float:
    """Median ignoring NaN; NaN when nothing is left (e.g. no tumour-free test slide)."""
    finite = [v for v in values if not np.isnan(v)]
    return float(np.median(finite)) if finite else float("nan")


def summarise_study(runs: list[dict], out: str | os.PathLike) -> dict[str, Path]:
    """Median over seeds per (strategy, n, l, cycle): CSV, markdown table and Fig.2-style plots.

    The metrics follow the runs' task (param ``task_kind``): mIoU and annotated tumour % for
    segmentation, F1 and the annotated-mitoses ratio for detection; each plotted against annotated tissue %.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from alkit.atomic import atomic_path, atomic_write_text

    out = Path(out)
    kinds = {r["params"].get("task_kind", "segmentation") for r in runs} or {"segmentation"}
    if len(kinds) > 1:
        raise ValueError(f"runs of different tasks ({sorted(kinds)}) cannot share one summary")
    metrics, plots = SUMMARY[kinds.pop()]
    rows: dict[tuple, dict[str, list[float]]] = {}
    for r in runs:
        p = r["params"]
        for metric in metrics:
            for step, value in r["history"].get(metric, []):
                rows.setdefault((p["strategy"], int(p["n"]), int(p["l"]), int(step)), {}).setdefault(metric, []) \
                    .append(value)
    table = [{"strategy": s, "n": n, "l": l, "cycle": c, "seeds": max(len(v) for v in m.values()),
              **{k: _median(m.get(k, [])) for k in metrics}}
             for (s, n, l, c), m in sorted(rows.items())]
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
    for y, name in plots:
        fig, axes = plt.subplots(1, max(1, len({r["l"] for r in table})), figsize=(5 * len({r["l"] for r in table}), 4),
                                 squeeze=False)
        for ax, l in zip(axes[0], sorted({r["l"] for r in table})):
            for strategy in sorted({r["strategy"] for r in table}):
                pts = sorted((r["annotated_tissue_pct"], r[y]) for r in table
                             if r["strategy"] == strategy and r["l"] == l)
                ax.plot([a for a, _ in pts], [b for _, b in pts], marker="o", label=strategy)
            ax.set(title=f"l = {l} px", xlabel="annotated tissue (%)", ylabel=y.replace("_", " "))
            ax.grid(alpha=0.3)
        axes[0][0].legend()
        fig.tight_layout()
        with atomic_path(out / f"{name}.png") as tmp:
            fig.savefig(tmp, dpi=110)
        plt.close(fig)
        paths[name] = out / f"{name}.png"
    return paths
