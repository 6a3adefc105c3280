"""Run a study: a grid of active-learning runs, one MLflow run per (strategy, n, l, seed).

:func:`run_study` embeds the slides (cached stores), builds the prototypes, then runs one
:class:`~alkit.al.loop.ActiveLearningLoop` of the study's task per grid point — a run in the study's
MLflow experiment with per-cycle metrics (step = cycle), params, and artefacts (regions JSON + QuPath
GeoJSON of every cycle's picks, score-map PNGs, the pool file, the resolved config). Runs already
FINISHED in MLflow with the same key (and config hash) are skipped, so an interrupted study resumes;
within a run, the pool file resumes the loop. Nothing here depends on the task: the task class comes
from the config (:attr:`~alkit.study.config.StudyConfig.task_class`).
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
from alkit.study.tracking import RunHandle, Tracker, config_hash

log = logging.getLogger(__name__)


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


def run_study(config: StudyConfig, tracking_uri: str | None = None, progress: bool = True) -> list[dict]:
    """Run every (strategy, n, l, seed) of the study not already finished; returns the finished runs."""
    cohort = embed_cohort(config, config.slides, progress)
    test_cohort = embed_cohort(config, config.test_slides, progress) if config.test_slides else None
    validation_cohort = embed_cohort(config, config.validation_slides, progress) if config.validation_slides else None
    task_cls = config.task_class
    oracle = task_cls.build_oracle(config.ground_truth, config.slide_mpp)
    prototypes = prototypes_for(config) if "prototype" in config.strategies else None
    tracker = Tracker(config.study, tracking_uri)
    digest = config_hash(config.raw)
    grid = [(s, n, l, seed) for s in config.strategies for n in config.n for l in config.l for seed in config.seeds]
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
            task = task_cls.from_params(oracle, config.task_params, seed=seed)
            loop = ActiveLearningLoop(task, cohort, initial, acquisition, Budget(n, l), config.cycles,
                                      LabeledPool.open(pool_path), test_cohort=test_cohort,
                                      validation_cohort=validation_cohort, seed=seed,
                                      callbacks=[SelectionArtefacts(run)])
            # metrics come from the pool, so cycles finished before an interruption are logged too
            for result in loop.run():
                run.log_metrics(numeric_metrics(result.metrics), step=result.cycle)
            run.log_artifact(pool_path, "pool")
            run.log_dict(config.raw, "config.json")
    return tracker.runs({"config_hash": digest})


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
