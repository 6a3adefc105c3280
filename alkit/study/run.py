"""Run a study: a grid of active-learning runs, one MLflow run per (strategy, n, l, seed).

:func:`run_study` embeds the slides (cached stores), builds the prototypes, then runs one
:class:`~alkit.al.loop.ActiveLearningLoop` of the study's task per grid point — a run nested under the
study's parent run (:meth:`~alkit.study.tracking.Tracker.study_run`, FINISHED when the whole grid is)
with per-cycle metrics (step = cycle), every fit's per-epoch training curves (``cycle<k>-…``, the task's
Lightning logger), params, its inputs as ``mlflow.data`` datasets (slide lists with store digests, the
prototypes), and artefacts (regions JSON + QuPath GeoJSON of every cycle's picks, score-map PNGs, the
pool file, the resolved config, the prototypes' provenance). Runs a crash left RUNNING are marked FAILED
first (:meth:`~alkit.study.tracking.Tracker.fail_abandoned`). Runs already
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

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path

from tqdm.auto import tqdm

from alkit import __version__
from alkit.al.loop import ActiveLearningLoop, LoopCallback
from alkit.al.pool import LabeledPool
from alkit.atomic import remove_stale_staging, staging_folder
from alkit.embeddings.cohort import Cohort
from alkit.prototypes.prototype_set import PrototypeSet
from alkit.selection.export import write_selection
from alkit.selection.strategy import Budget, Selection, get_strategy
from alkit.study.config import StudyConfig
from alkit.study.inputs import embed_cohort, input_digests, prototypes_for
from alkit.study.summary import REFERENCE_STRATEGY
from alkit.study.tracking import PARENT_TAG, MlflowLocation, RunHandle, Tracker, config_hash

log = logging.getLogger(__name__)

OVERLAP_TAG = "alkit.evaluation_overlaps_training"
OVERLAP_REASON_TAG = "alkit.evaluation_overlap"


#: the label of the staging folders (:func:`alkit.atomic.staging_folder`) a study's exports are written in
EXPORT_STAGING = "alkit-export"


class SelectionArtefacts(LoopCallback):
    """Logs every cycle's picks to the run: regions.json, QuPath / ASAP files and score-map PNGs, written
    in a hidden staging folder of ``staging`` (the study's output folder) and uploaded from there."""

    def __init__(self, run: RunHandle, staging: Path, provenance: dict | None = None,
                 acquisition_params: dict | None = None) -> None:
        self.run = run
        self.staging = staging
        self.provenance = provenance or {}  # the initial strategy's: run, params, prototype set, budget, seed
        self.acquisition_params = acquisition_params or {}

    def on_labeled(self, loop: ActiveLearningLoop, cycle: int, selection: Selection) -> None:
        provenance = dict(self.provenance)
        if cycle > 0:  # picked by acquisition, not by the initial strategy
            provenance.update(params=self.acquisition_params, prototype_set=None)
        with staging_folder(self.staging, EXPORT_STAGING) as tmp:  # hidden: readers of the folder skip it
            write_selection(selection, loop.cohort, tmp, cycle=cycle, provenance=provenance)
            self.run.log_artifact(tmp, f"cycle_{cycle}")
        self.run.heartbeat()


class FitCurves(LoopCallback):
    """Gives every fit its own metric prefix in the run's Lightning logger (``cycle2-train_loss``:
    the curves of the model trained on the regions of cycles ≤ 2), and beats the run's heartbeat."""

    def __init__(self, run: RunHandle, logger) -> None:
        self.run, self.logger = run, logger

    def on_fit_start(self, loop: ActiveLearningLoop, cycle: int) -> None:
        self.logger.prefix = f"cycle{cycle}"
        self.run.heartbeat()


class StudyRuns(list):
    """The finished runs of a study (dicts, as :meth:`~alkit.study.tracking.Tracker.runs` gives them)
    and, in ``mlflow``, where the study is: tracking URI, experiment and parent run
    (:func:`alkit.study.summary.summarise_study` logs the summary there)."""

    def __init__(self, runs: list[dict], mlflow: MlflowLocation | None = None) -> None:
        super().__init__(runs)
        self.mlflow = mlflow


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


def shard_of(grid: list, shard: tuple[int, int] | None) -> list:
    """The part of ``grid`` that shard ``(k, count)`` (1-based) runs: every ``count``-th grid point
    from the ``k``-th, so shards are disjoint, together cover the grid, and stay balanced across
    strategies. ``None`` is the whole grid."""
    if shard is None:
        return list(grid)
    k, count = shard
    if not (isinstance(k, int) and isinstance(count, int) and 1 <= k <= count):
        raise ValueError(f"shard must be K/N with 1 <= K <= N, got {k}/{count}")
    return list(grid[k - 1::count])


def run_study(config: StudyConfig, tracking_uri: str | None = None, progress: bool = True,
              shard: tuple[int, int] | None = None) -> StudyRuns:
    """Run every (strategy, n, l, seed) of the study not already finished; returns the finished runs
    (of the whole study, whichever process ran them).

    ``shard=(k, count)`` runs only the ``k``-th of ``count`` disjoint parts of the grid
    (:func:`shard_of`), so several processes or machines can share one study through one tracking
    server (PostgreSQL-backed for several machines; see ``mlflow_setup/``).
    """
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
    inputs = StudyInputs(config, cohort, test_cohort, validation_cohort, prototypes)
    digest = study_digest(config, inputs.digests)
    tracker.fail_abandoned({"config_hash": digest})  # runs a crash left RUNNING: FAILED, not phantoms
    remove_stale_staging(config.out, EXPORT_STAGING)  # the exports a killed compare was uploading
    parent, created = tracker.study_run(config.study, digest, params=study_params(config, digest), tags=tags)
    if created:
        inputs.log(parent, with_prototypes=True)
    grid = study_grid(config)
    try:
        _run_grid(config, tracker, parent, shard_of(grid, shard), digest, tags, inputs, oracle, progress)
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        try:
            tracker.set_status(parent.run_id, status, error=f"{type(exc).__name__}: {exc}")
        except Exception:  # the store itself may be what failed: keep the original error
            log.exception("could not mark the parent run %s as %s", parent.run_id, status)
        raise
    parent = tracker.merge_study_runs(config.study, digest, parent)  # one parent, however shards raced
    if all(tracker.finished_run(grid_key(point, digest)) for point in grid):
        if tracker.client.get_run(parent.run_id).info.status != "FINISHED":
            tracker.set_status(parent.run_id, "FINISHED")
            log.info("study %r: every run of the grid is finished; parent run %s FINISHED", config.study,
                     parent.run_id)
    return StudyRuns(tracker.runs({"config_hash": digest}), tracker.location(parent.run_id))


def study_digest(config: StudyConfig, digests: dict) -> str:
    """The key shared by a study's runs: the config as validated, every default filled in
    (:attr:`~alkit.study.config.StudyConfig.resolved`), and the digests of its inputs (each slide's
    store, the prototype set; :func:`~alkit.study.inputs.input_digests`). A changed input or setting
    gives new runs; finished runs with the same key are reused."""
    return config_hash({"config": config.resolved or config.raw, "inputs": digests})


def grid_key(point: tuple[str, int, int, int], digest: str) -> dict[str, str]:
    """The MLflow key (run tags) of grid point ``(strategy, n, l, seed)`` of the study ``digest``."""
    strategy, n, l, seed = point
    return {"strategy": strategy, "n": str(n), "l": str(l), "seed": str(seed), "config_hash": digest}


def study_params(config: StudyConfig, digest: str) -> dict:
    """The parent run's params: the grid and what every run shares."""
    return {"study": config.study, "config_hash": digest, "strategies": config.strategies, "n": config.n,
            "l": config.l, "seeds": config.seeds, "cycles": config.cycles, "task_kind": config.kind,
            "encoder": config.embedding["encoder"], "selector": config.selector, "acquisition": config.acquisition}


class StudyInputs:
    """A study's inputs as MLflow sees them: the slide lists with their store digests and the
    prototypes as ``mlflow.data`` datasets (run inputs), and the prototypes' provenance as an artefact."""

    def __init__(self, config: StudyConfig, cohort: Cohort, test_cohort: Cohort | None,
                 validation_cohort: Cohort | None, prototypes: PrototypeSet | None) -> None:
        self.source = str(config.path)
        self.cohorts = {"train": cohort, "test": test_cohort, "validation": validation_cohort}
        self.prototypes = prototypes
        self.digests = input_digests(cohort, test_cohort, validation_cohort, prototypes)

    def log(self, run: RunHandle, with_prototypes: bool) -> None:
        """Log the slide lists (contexts ``training``, ``testing``, ``validation``) and, with
        ``with_prototypes``, the prototype set (context ``prototypes``) and ``prototypes/provenance.json``."""
        contexts = {"train": "training", "test": "testing", "validation": "validation"}
        for name, cohort in self.cohorts.items():
            if cohort is None:
                continue
            stores = self.digests.get(name, {})
            rows = [{"slide_id": s.slide_id, "slide_path": str(s.slide_path), "store_path": str(s.store_path),
                     "store_digest": stores.get(s.slide_id, "")} for s in cohort.slides]
            run.log_dataset(f"{name}_slides", rows, context=contexts[name], digest=config_hash(stores),
                            source=self.source)
        if with_prototypes and self.prototypes is not None:
            doc = prototype_provenance(self.prototypes)
            rows = [{"class": name, **{k: _cell(v) for k, v in p.items()}}
                    for name, c in doc["classes"].items() for p in c["prototypes"]]
            run.log_dataset("prototypes", rows, context="prototypes", digest=str(self.digests.get("prototypes", ""))
                            or None, source=self.source)
            run.log_dict(doc, "prototypes/provenance.json")


def prototype_provenance(prototypes: PrototypeSet) -> dict:
    """What a prototype set was made of: encoder, weights, preparation, cache key and its inputs, and
    per class the query and each prototype's provenance (database, id, caption, panel text, crop box)."""
    return {"encoder": prototypes.encoder, "dim": prototypes.dim, "weights_id": prototypes.weights_id,
            "preprocessing": prototypes.preprocessing, "meta": prototypes.meta,
            "classes": {name: {"k": c.k, "query": c.query, "prototypes": list(c.provenance)}
                        for name, c in prototypes.classes.items()}}


def _cell(value):
    """A provenance value as a table cell (lists and dicts as JSON text)."""
    return json.dumps(value, default=str) if isinstance(value, (list, tuple, dict)) else value


def _run_grid(config: StudyConfig, tracker: Tracker, parent: RunHandle, points: list, digest: str, tags: dict,
              inputs: StudyInputs, oracle, progress: bool) -> None:
    """Run the grid points not finished yet, nested under ``parent``."""
    task_cls, prototypes = config.task_class, inputs.prototypes
    running = tracker.client.get_run(parent.run_id).info.status == "RUNNING"
    for strategy, n, l, seed in tqdm(points, desc="runs", unit="run", disable=not progress):
        key = grid_key((strategy, n, l, seed), digest)
        finished = tracker.finished_run(key)
        if finished:
            log.info("skipping finished run %s", key)
            tracker.client.set_tag(finished, PARENT_TAG, parent.run_id)  # runs of older alkit versions too
            continue
        if not running:  # resumed: the study runs again
            tracker.set_status(parent.run_id, "RUNNING")
            running = True
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
        with tracker.start_run(name, key, params, tags=tags, parent_run_id=parent.run_id) as run:
            inputs.log(run, with_prototypes=strategy == "prototype")
            initial = get_strategy(strategy, **strategy_params(config, strategy, prototypes))
            acquisition = None if reference else get_strategy(
                "uncertainty", **strategy_params(config, "uncertainty"), **config.acquisition)
            # the reference ignores its budget (n = 0; a Budget needs a positive size)
            budget = Budget(0, max(config.l)) if reference else Budget(n, l)
            export_provenance = {
                "command": f"alkit compare {config.path} (study {config.study!r}, run {name})",
                "params": params["strategy_params"], "prototype_set": params["prototypes"] or None, "selector": config.selector,
                "budget": {"n": n, "size_px": l}, "seed": seed, "run_key": key}
            curves = run.lightning_logger(prefix="cycle0")  # per-epoch training curves of every fit
            task = task_cls.from_params(oracle, config.task_params, seed=seed, logger=curves)
            loop = ActiveLearningLoop(task, inputs.cohorts["train"], initial, acquisition, budget, cycles,
                                      LabeledPool.open(pool_path), test_cohort=inputs.cohorts["test"],
                                      validation_cohort=inputs.cohorts["validation"], seed=seed,
                                      callbacks=[SelectionArtefacts(run, config.out, export_provenance,
                                                                    config.acquisition),
                                                 FitCurves(run, curves)])
            # metrics come from the pool, so cycles finished before an interruption are logged too
            for result in loop.run():
                run.log_metrics(numeric_metrics(result.metrics), step=result.cycle)
            run.log_artifact(pool_path, "pool")
            run.log_dict(config.raw, "config.json")


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
