"""Run a study: a grid of active-learning runs, one MLflow run per (strategy, n, l, seed).

:func:`run_study` embeds the slides (cached stores), builds the prototypes, then runs one
:class:`~alkit.al.loop.ActiveLearningLoop` of the study's task per grid point — a run in the study's
MLflow experiment with per-cycle metrics (step = cycle), params, and artefacts (regions JSON + QuPath
GeoJSON of every cycle's picks, score-map PNGs, the pool file, the resolved config). Runs already
FINISHED in MLflow with the same key (and config hash) are skipped, so an interrupted study resumes;
within a run, the pool file resumes the loop. Nothing here depends on the task: the task class comes
from the config (:attr:`~alkit.study.config.StudyConfig.task_class`).

The reference strategy ``full`` (:data:`alkit.study.summary.REFERENCE_STRATEGY`: every tissue cell
labeled, the budget ignored) runs once per seed, not per budget: its run key has ``n = 0`` and
``l = 0`` (no real budget has either), and it runs cycle 0 only (nothing is left to acquire), however
many cycles the other strategies run.

When the evaluation slides overlap the training slides — some ``cohort.test_slides`` are also
``cohort.slides``, or there are no test slides and the loop evaluates on the training cohort — the
study logs a warning and tags every run ``alkit.evaluation_overlaps_training=true`` (``false``
otherwise), with the reason in ``alkit.evaluation_overlap``.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

from tqdm.auto import tqdm

from alkit import __version__
from alkit.al.loop import ActiveLearningLoop, LoopCallback
from alkit.al.pool import LabeledPool
from alkit.embeddings.cohort import Cohort
from alkit.embeddings.embed import EmbedConfig, Embedder
from alkit.embeddings.encoders import get_encoder
from alkit.prototypes.build import study_prototypes
from alkit.prototypes.prototype_set import PrototypeSet
from alkit.selection.export import write_selection
from alkit.selection.strategy import Budget, Selection, get_strategy
from alkit.study.config import StudyConfig
from alkit.study.summary import REFERENCE_STRATEGY
from alkit.study.tracking import RunHandle, Tracker, config_hash

log = logging.getLogger(__name__)

OVERLAP_TAG = "alkit.evaluation_overlaps_training"
OVERLAP_REASON_TAG = "alkit.evaluation_overlap"


class SelectionArtefacts(LoopCallback):
    """Logs every cycle's picks to the run: regions.json, QuPath / ASAP files and score-map PNGs."""

    def __init__(self, run: RunHandle) -> None:
        self.run = run

    def on_labeled(self, loop: ActiveLearningLoop, cycle: int, selection: Selection) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            write_selection(selection, loop.cohort, tmp)  # regions.json, qupath/, asap/, png/
            self.run.log_artifact(tmp, f"cycle_{cycle}")


def embed_cohort(config: StudyConfig, paths: list[Path], progress: bool) -> Cohort:
    """The slides at ``paths`` embedded as the study says (cached stores are reused)."""
    e = config.embedding
    cfg = EmbedConfig(encoder=e["encoder"], mpp=e.get("mpp"), patch=e.get("patch", 256), stride=e.get("stride"),
                      min_tissue=e.get("min_tissue", 0.5), batch_size=e.get("batch_size", 64),
                      num_workers=e.get("workers", 2), accelerator=e.get("accelerator", "auto"),
                      devices=e.get("devices", 1))
    return Cohort.from_stores(Embedder(cfg, e["out"], progress=progress).embed(paths, slide_mpp=config.slide_mpp))


def prototypes_for(config: StudyConfig) -> PrototypeSet:
    """The study's prototype set: a built one (``prototypes.path``), or built now from the caption
    database and cached in ``<out>/prototypes``."""
    p = config.prototypes
    if "path" in p:
        return PrototypeSet.load(p["path"])
    folder = config.out / "prototypes"
    if (folder / "prototypes.json").exists():
        return PrototypeSet.load(folder)
    prototypes = study_prototypes(p, get_encoder(config.embedding["encoder"]), crops=config.task_class.prototype_crops)
    prototypes.save(folder)
    return prototypes


def study_grid(config: StudyConfig) -> list[tuple[str, int, int, int]]:
    """The ``(strategy, n, l, seed)`` runs of a study, in the config's strategy order: every budget of
    every seed, except for the reference strategy, which runs once per seed as ``n = l = 0``."""
    grid = []
    for s in config.strategies:
        budgets = [(0, 0)] if s == REFERENCE_STRATEGY else [(n, l) for n in config.n for l in config.l]
        grid += [(s, n, l, seed) for n, l in budgets for seed in config.seeds]
    return grid


def evaluation_overlap(cohort: Cohort, test_cohort: Cohort | None) -> str | None:
    """Why the evaluation is not on held-out slides (evaluation slides that are training slides too),
    or None when it is."""
    if test_cohort is None:
        return "no cohort.test_slides: evaluation runs on the training cohort"
    shared = sorted(set(cohort.ids) & set(test_cohort.ids))
    if shared:
        return f"{len(shared)} of {len(test_cohort)} test slide(s) are training slides too: {', '.join(shared)}"
    return None


def run_study(config: StudyConfig, tracking_uri: str | None = None, progress: bool = True) -> list[dict]:
    """Run every (strategy, n, l, seed) of the study not already finished; returns the finished runs."""
    cohort = embed_cohort(config, config.slides, progress)
    test_cohort = embed_cohort(config, config.test_slides, progress) if config.test_slides else None
    validation_cohort = embed_cohort(config, config.validation_slides, progress) if config.validation_slides else None
    overlap = evaluation_overlap(cohort, test_cohort)
    if overlap is not None:
        log.warning("study %r: the evaluation slides overlap the training slides (%s); its scores are not "
                    "held-out scores", config.study, overlap)
    tags = {OVERLAP_TAG: "false"} if overlap is None else {OVERLAP_TAG: "true", OVERLAP_REASON_TAG: overlap}
    task_cls = config.task_class
    oracle = task_cls.build_oracle(config.ground_truth, config.slide_mpp)
    prototypes = prototypes_for(config) if "prototype" in config.strategies else None
    tracker = Tracker(config.study, tracking_uri)
    digest = config_hash(config.raw)
    for strategy, n, l, seed in tqdm(study_grid(config), desc="runs", unit="run", disable=not progress):
        key = {"strategy": strategy, "n": str(n), "l": str(l), "seed": str(seed), "config_hash": digest}
        if tracker.finished_run(key):
            log.info("skipping finished run %s", key)
            continue
        reference = strategy == REFERENCE_STRATEGY  # cycle 0 only: nothing is left to acquire
        cycles = 1 if reference else config.cycles
        params = {"strategy": strategy, "n": n, "l": l, "seed": seed, "encoder": config.embedding["encoder"],
                  "selector": config.selector, "cycles": cycles,
                  "acquisition": "none" if reference else config.acquisition, "task_kind": config.kind,
                  "prototypes": prototypes.meta if prototypes is not None and strategy == "prototype" else "",
                  "strategy_params": config.strategy_params.get(strategy, {}),
                  "selector_options": config.selector_options, "alkit_version": __version__, "config_hash": digest}
        name = f"{strategy}-n{n}-l{l}-s{seed}"
        pool_path = config.out / "pools" / f"{name}-{digest}.json"
        with tracker.start_run(name, key, params, tags=tags) as run:
            initial = get_strategy(strategy, **strategy_params(config, strategy, prototypes))
            acquisition = None if reference else get_strategy(
                "uncertainty", **strategy_params(config, "uncertainty"), **config.acquisition)
            # the reference ignores its budget (n = 0; a Budget needs a positive size)
            budget = Budget(0, max(config.l)) if reference else Budget(n, l)
            task = task_cls.from_params(oracle, config.task_params, seed=seed)
            loop = ActiveLearningLoop(task, cohort, initial, acquisition, budget, cycles,
                                      LabeledPool.open(pool_path), test_cohort=test_cohort,
                                      validation_cohort=validation_cohort, seed=seed,
                                      callbacks=[SelectionArtefacts(run)])
            # metrics come from the pool, so cycles finished before an interruption are logged too
            for result in loop.run():
                run.log_metrics(numeric_metrics(result.metrics), step=result.cycle)
            run.log_artifact(pool_path, "pool")
            run.log_dict(config.raw, "config.json")
    return tracker.runs({"config_hash": digest})


def strategy_params(config: StudyConfig, strategy: str, prototypes: PrototypeSet | None = None) -> dict:
    """The parameters a study gives ``strategy``: its ``strategy_params`` entry, and for the map-based
    strategies (prototype, uncertainty) the study's selector, selector options and prototypes."""
    params = dict(config.strategy_params.get(strategy, {}))
    if strategy in ("prototype", "uncertainty"):
        params |= {"selector": config.selector, "selector_options": config.selector_options}
    if strategy == "prototype":
        params["prototypes"] = prototypes
    return params


def numeric_metrics(metrics: Mapping) -> dict[str, float]:
    """The numbers of a cycle's metrics, one level of mappings flattened (``f1_per_slide.SLIDE``)
    with names MLflow accepts; text and missing values are left out."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        items = value.items() if isinstance(value, Mapping) else [(None, value)]
        for sub, v in items:
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                name = key if sub is None else f"{key}.{sub}"
                out[re.sub(r"[^\w\-. /]", "_", name)] = float(v)
    return out
