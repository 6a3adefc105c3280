"""The steps of a session: ``next`` (regions out), ``ingest`` (labels in), ``train``, ``status``.

Each step is the matching piece of :class:`alkit.al.loop.ActiveLearningLoop` on the session's pool:
``next`` is :meth:`~alkit.al.loop.ActiveLearningLoop.choose` (the initial strategy at cycle 0, then the
uncertainty acquisition on the model refitted on the cycles before: training is seeded, so it is the
model ``train`` fitted), ``ingest`` is :meth:`~alkit.al.loop.ActiveLearningLoop.record` with the reports
of the annotators' drawings or of the simulated oracle, ``train`` is
:meth:`~alkit.al.loop.ActiveLearningLoop.fit` and :meth:`~alkit.al.loop.ActiveLearningLoop.evaluate`.
A session driven by the simulated oracle therefore labels exactly what the loop labels for the same seed.

Order of writes, so that a step interrupted anywhere can be rerun: ``next`` writes the cycle's folder
under a temporary name, renames it into place, then updates ``session.json``; ``ingest`` checks every
file first (nothing is written when one region is missing or one drawing lies outside), then writes the
labels, the pool, the checklist and ``session.json``, each atomically; a pool that already holds the
cycle marks it ingested (:func:`_repair`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from alkit.al.areas import tissue_mm2
from alkit.al.loop import ActiveLearningLoop, train_metrics
from alkit.al.pool import LabeledPool
from alkit.atomic import atomic_write_text, temp_name
from alkit.errors import AlkitError
from alkit.ids import id_path
from alkit.jsonfile import read_json
from alkit.selection.strategy import RegionPick, Selection
from alkit.session.checklist import write_checklist
from alkit.session.labels import SlideRouter, drawn_oracle, region_label
from alkit.session.setup import SessionParts
from alkit.session.state import SessionError, SessionState

log = logging.getLogger(__name__)

DRAWING_SUFFIXES = (".geojson", ".json", ".xml")


def _repair(state: SessionState, pool: LabeledPool) -> None:
    """A pool that holds the open cycle was ingested (interrupted before ``session.json`` was updated)."""
    if state.state == "regions_out" and any(r.cycle == state.cycle for r in pool.regions):
        log.info("%s: the pool already holds cycle %d; marked ingested", state.folder, state.cycle)
        labels = state.labels_path(state.cycle)
        if labels.is_file():  # written before the pool: the skipped regions of that ingest
            state.skipped[str(state.cycle)] = list(read_json(labels, SessionError, "labels file").get("skipped", []))
        state.state = "ingested"
        state.save()


def _open(folder: str | os.PathLike) -> tuple[SessionState, LabeledPool]:
    state = SessionState.load(folder)
    pool = LabeledPool.open(state.pool_path)
    _repair(state, pool)
    return state, pool


def _picks(regions: Sequence[dict]) -> list[RegionPick]:
    return [RegionPick(r["slide"], tuple(r["box"]), r["strategy"], r.get("cls"),
                       float("nan") if r.get("score") is None else float(r["score"])) for r in regions]


def _loop(parts: SessionParts, pool: LabeledPool, oracle: Any, logger: Any = None,
          progress: bool = False) -> ActiveLearningLoop:
    return ActiveLearningLoop(parts.task(oracle, logger, progress), parts.cohort, parts.initial_strategy(), parts.acquisition(),
                              parts.budget(), parts.config["cycles"], pool, test_cohort=parts.test_cohort,
                              validation_cohort=parts.validation_cohort, seed=parts.config["seed"],
                              region_size=parts.region_size())


def _label_docs(state: SessionState, max_cycle: int) -> dict[int, dict]:
    out = {}
    for c in range(max_cycle + 1):
        path = state.labels_path(c)
        if path.is_file():
            out[c] = read_json(path, SessionError, "labels file")
    return out


def training_oracle(state: SessionState, parts: SessionParts, max_cycle: int) -> Any:
    """What the task learns from: the ground truth when every cycle ≤ ``max_cycle`` was answered by the
    simulated oracle, else the annotators' drawings (ground truth, where given, for the slides nobody
    annotated: validation and test slides)."""
    docs = _label_docs(state, max_cycle)
    kinds = {d.get("oracle") for d in docs.values()}
    if kinds <= {"simulated"}:
        truth = parts.truth_oracle()
        if truth is None:
            raise SessionError(f"{state.folder}: the session has no ground truth to train on")
        return truth
    if "simulated" in kinds:
        raise SessionError(f"{state.folder}: cycles answered by the simulated oracle and by annotators cannot be "
                           "trained on together; keep one oracle per session")
    records = [r for d in docs.values() for r in d.get("regions", [])]
    drawn = drawn_oracle(parts.kind, records, parts.slide_mpp())
    return SlideRouter(drawn, parts.cohort.ids, parts.truth_oracle())


# ---------------------------------------------------------------------------------------------- next

@dataclass
class NextResult:
    cycle: int
    files: list[Path]
    regions: int
    repeated: bool = False  # the cycle was already out: nothing new was chosen


def next_regions(folder: str | os.PathLike, *, png: bool = True, progress: bool = False) -> NextResult:
    """Write the next cycle's regions (or name the files of the cycle already out)."""
    state, pool = _open(folder)
    if state.state == "regions_out":
        return NextResult(state.cycle, [state.folder / f for f in state.files.get(str(state.cycle), [])],
                          len(state.open_regions()), repeated=True)
    parts = SessionParts(state.config)
    cycle = 0 if state.state == "new" else state.cycle + 1
    if cycle >= state.config["cycles"]:
        raise SessionError(f"{state.folder}: all {state.config['cycles']} cycles are done (alkit session status "
                           f"{state.folder}); start a new session for more")
    loop = _loop(parts, pool, training_oracle(state, parts, cycle - 1) if cycle else parts.truth_oracle(),
                 progress=progress)
    if cycle == 0:
        strategy = loop.initial_strategy
    else:
        if not pool.regions:
            raise SessionError(f"{state.folder}: no labeled region yet (every region was skipped); the acquisition "
                               "needs a model")
        loop.fit(max_cycle=cycle - 1)  # seeded: the model `train` fitted on the same regions
        strategy = loop.acquisition
    selection = loop.choose(cycle, strategy, exclude=state.skipped_boxes())  # the strategy logs any shortfall
    if not selection.regions:
        raise SessionError(f"{state.folder}: {strategy.name} found no region for cycle {cycle} (no tissue left "
                           "outside the labeled and skipped regions?)")
    files, regions = _write_cycle(state, parts, selection, cycle, png)
    state.regions[str(cycle)] = regions
    state.files[str(cycle)] = [str(f.relative_to(state.folder)) for f in files]
    state.cycle, state.state = cycle, "regions_out"
    state.save()
    return NextResult(cycle, files, len(regions))


def _write_cycle(state: SessionState, parts: SessionParts, selection: Selection, cycle: int,
                 png: bool) -> tuple[list[Path], list[dict]]:
    """The cycle's folder (regions.json, QuPath, ASAP, PNGs, checklist), written beside it and renamed into place."""
    from alkit.selection.export import write_selection
    from alkit.selection.regions_file import read_regions

    final = state.cycle_dir(cycle)
    tmp = temp_name(final)
    try:
        b = parts.config["budget"]
        budget = {"n": b["n"], "size_px": b["size_px"]} if b["size_px"] is not None else {"n": b["n"],
                                                                                          "size_um": b["size_um"]}
        provenance = {"command": "alkit session next", "session": str(state.folder.resolve()),
                      "params": parts.config.get("initial_params") if cycle == 0 else parts.config["acquisition"],
                      "prototype_set": parts.config.get("prototypes") if cycle == 0 else None,
                      "selector": parts.config["selector"], "budget": budget}
        written = write_selection(selection, parts.cohort, tmp, png=png, cycle=cycle, provenance=provenance)
        doc = read_regions(written.regions)
        ids = {(r.slide, tuple(r.box_px)): r.id for r in doc.regions}
        regions = [{"id": ids[(p.slide, tuple(int(v) for v in p.box))], "slide": p.slide,
                    "box": [int(v) for v in p.box], "strategy": p.strategy, "cls": p.cls,
                    "score": None if np.isnan(p.score) else float(p.score)} for p in selection.regions]
        checklist = write_checklist(tmp, cycle, regions, {})
        rel = [Path(f).relative_to(tmp) for f in [*written.files, *checklist]]
        if final.exists():  # left by a `next` interrupted before session.json was updated: our own folder
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return [final / f for f in dict.fromkeys(rel)], regions


# -------------------------------------------------------------------------------------------- ingest

@dataclass
class IngestResult:
    cycle: int
    done: int = 0
    skipped: int = 0
    already: bool = False
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def _drawing_file(folder: Path, slide: str) -> Path | None:
    found = [id_path(folder, slide, ext) for ext in DRAWING_SUFFIXES]
    found = [p for p in found if p.is_file()]
    if len(found) > 1:
        raise SessionError(f"{folder}: slide {slide!r} has {len(found)} annotation files "
                           f"({', '.join(p.name for p in found)}); keep the one the annotator saved")
    return found[0] if found else None


def _read_annotations(state: SessionState, folder: Path,
                      progress: bool = False) -> tuple[list[dict], list[str], list[str]]:
    """``(label records of the annotated regions, skipped ids, notes)`` of the open cycle's regions from the
    annotators' files in ``folder``; a :class:`SessionError` listing every problem when a region is neither
    annotated nor skipped, a drawing lies outside the regions, or a file cannot be read."""
    from alkit.annotations.roundtrip import read_annotated
    from alkit.selection.regions_file import read_regions

    if not folder.is_dir():
        raise SessionError(f"{folder}: no such annotations folder")
    doc = read_regions(state.cycle_dir(state.cycle) / "regions.json")
    by_id = {r["id"]: r for r in state.open_regions()}
    records, skipped, notes, problems = [], [], [], []
    for slide in tqdm(doc.slides(), desc="annotation files", unit="slide", disable=not progress):
        wanted = doc.for_slide(slide)
        path = _drawing_file(folder, slide)
        if path is None:
            problems.append(f"no file for slide {slide!r} ({slide}.geojson or {slide}.xml) with {len(wanted)} "
                            "region(s)")
            continue
        try:
            got = read_annotated(path, wanted)
        except AlkitError as exc:
            problems.append(str(exc))
            continue
        missing = []
        for rec in wanted:
            ann = got[rec.id]
            notes += ann.notes
            if ann.skipped:
                skipped.append(rec.id)
            elif ann.present:
                r = by_id[rec.id]
                records.append({"id": rec.id, "slide": slide, "box": list(r["box"]), "label": region_label(ann.drawings)})
            else:
                missing.append(rec.id)
        if missing:
            problems.append(f"{path}: region(s) {', '.join(missing)} neither annotated nor marked skipped (keep "
                            "the Region objects in the export; skip one with the class 'Region: skipped')")
    if problems:
        raise SessionError(f"{folder}: nothing recorded, {len(problems)} problem(s): " + " | ".join(problems))
    return records, skipped, notes


def ingest(folder: str | os.PathLike, annotations: str | os.PathLike | None = None, *,
           oracle: str | None = None, progress: bool = False) -> IngestResult:
    """Record the open cycle's labels: from the annotators' files in ``annotations``, or from the
    simulated oracle (``oracle="simulated"``, the session's default when it was made so). A cycle already
    recorded is left as it is."""
    state, pool = _open(folder)
    if state.state == "new":
        raise SessionError(f"{state.folder}: no regions handed out yet; run alkit session next {state.folder}")
    if state.state in ("ingested", "trained"):
        return IngestResult(state.cycle, already=True)
    oracle = oracle or state.config["oracle"]
    parts = SessionParts(state.config)
    regions = state.open_regions()
    if oracle == "simulated":
        truth = parts.truth_oracle()
        if truth is None:
            raise SessionError(f"{state.folder}: --oracle simulated needs the session's ground truth, and it has none")
        if annotations is not None:
            raise SessionError("give ANNOTATIONS_DIR or --oracle simulated, not both")
        done, skipped, notes = [{"id": r["id"], "slide": r["slide"], "box": r["box"]} for r in regions], [], []
        doc = {"cycle": state.cycle, "oracle": "simulated", "regions": done, "skipped": []}
    elif oracle == "human":
        if annotations is None:
            raise SessionError("ingest needs ANNOTATIONS_DIR (the annotators' files), or --oracle simulated")
        done, skipped, notes = _read_annotations(state, Path(annotations), progress)
        doc = {"cycle": state.cycle, "oracle": "human", "source": str(Path(annotations).resolve()),
               "regions": done, "skipped": skipped}
    else:
        raise SessionError(f"--oracle must be human or simulated, got {oracle!r}")
    labels = atomic_write_text(state.labels_path(state.cycle), json.dumps(doc, indent=1) + "\n")
    loop = _loop(parts, pool, training_oracle(state, parts, state.cycle))
    done_ids = {r["id"] for r in done}
    selection = Selection(regions[0]["strategy"] if regions else "", _picks([r for r in regions if r["id"] in done_ids]))
    loop.record(state.cycle, selection)  # the task's reports on each region, from the oracle just written
    status = {r["id"]: ("skipped" if r["id"] in skipped else "done") for r in regions}
    checklist = write_checklist(state.cycle_dir(state.cycle), state.cycle, regions, status)
    state.skipped[str(state.cycle)] = list(skipped)
    state.state = "ingested"
    state.save()
    return IngestResult(state.cycle, len(done), len(skipped), notes=notes, files=[labels, state.pool_path, *checklist])


# --------------------------------------------------------------------------------------------- train

@dataclass
class TrainResult:
    cycle: int
    metrics: dict
    tracking_uri: str
    run_id: str


def default_tracking_uri(folder: Path) -> str:
    return f"sqlite:///{(folder / 'mlflow.db').resolve()}"


def train(folder: str | os.PathLike, *, tracking_uri: str | None = None, progress: bool = False) -> TrainResult:
    """Fit the task on every labeled region, evaluate where there is ground truth, record the metrics in
    the pool and log them (every cycle so far, step = cycle) with the training curves to an MLflow run."""
    from alkit.study.run import numeric_metrics
    from alkit.study.tracking import Tracker

    state, pool = _open(folder)
    cycle = state.cycle if state.state in ("ingested", "trained") else state.cycle - 1
    if cycle < 0 or not pool.regions:
        raise SessionError(f"{state.folder}: no labeled region yet; run alkit session next and ingest first")
    parts = SessionParts(state.config)
    name = state.config.get("name") or f"session-{state.folder.resolve().name}"
    tracker = Tracker(name, tracking_uri or default_tracking_uri(state.folder))
    key = {"alkit.session": str(state.folder.resolve()), "cycle": str(cycle)}
    params = {"task_kind": parts.kind, "initial": state.config["initial"],
              **parts.region_size().budget_dict(state.config["budget"]["n"]),  # n, and size_px or size_um
              "seed": state.config["seed"], "cycles": state.config["cycles"],
              "acquisition": state.config["acquisition"], "task": parts.task_params}
    with tracker.start_run(f"{name}-cycle{cycle}", key, params) as run:
        curves = run.lightning_logger(prefix=f"cycle{cycle}")
        loop = _loop(parts, pool, training_oracle(state, parts, cycle), logger=curves, progress=progress)
        summary = loop.fit(max_cycle=cycle)
        truth = parts.truth_oracle()
        if truth is not None:  # judged against the ground truth, whatever the model learned from
            judge = _loop(parts, pool, truth)
            judge.task.model = loop.task.model
            metrics = judge.evaluate()
        else:
            used = pool.budget_used(tissue_mm2(parts.cohort))
            metrics = {"annotated_tissue_pct": used.get("tissue_pct", 0.0), "regions": used["regions"],
                       "annotated_tissue_mm2": used["tissue_mm2"]}
        metrics |= train_metrics(summary)
        pool.record_metrics(cycle, metrics)
        for c, m in sorted(pool.cycle_metrics.items()):
            run.log_metrics(numeric_metrics(m), step=c)
        run.log_artifact(state.pool_path, "pool")
        if (state.cycle_dir(cycle) / "regions.json").is_file():
            run.log_artifact(state.cycle_dir(cycle) / "regions.json", f"cycle_{cycle}")
        run_id = run.run_id
    if state.state == "ingested":
        state.state = "trained"
        state.save()
    return TrainResult(cycle, metrics, tracker.tracking_uri, run_id)


# -------------------------------------------------------------------------------------------- status

def status(folder: str | os.PathLike) -> dict:
    """Where the session stands: cycle and state, per cycle the regions done / open / skipped, the area
    annotated (mm²: tissue inside labeled regions, and the regions' own area) and the metrics so far."""
    state, pool = _open(folder)
    cycles = []
    for c in sorted(int(k) for k in state.regions):
        regions = state.regions[str(c)]
        labeled = [r for r in pool.regions if r.cycle == c]
        skipped = len(state.skipped.get(str(c), []))
        cycles.append({"cycle": c, "regions": len(regions), "done": len(labeled), "skipped": skipped,
                       "open": len(regions) - len(labeled) - skipped,
                       "tissue_mm2": sum(r.tissue_mm2 for r in labeled)})
    mpp = {}
    try:
        mpp = SessionParts(state.config).slide_mpp()
    except AlkitError as exc:  # stores moved: the counts still come from the pool
        log.warning("%s", exc)
    region_mm2 = sum(r.box[2] * r.box[3] * (mpp.get(r.slide, np.nan) / 1000.0) ** 2 for r in pool.regions)
    return {"folder": str(state.folder), "cycle": state.cycle, "state": state.state,
            "cycles": state.config["cycles"], "per_cycle": cycles,
            "done": sum(c["done"] for c in cycles), "open": sum(c["open"] for c in cycles),
            "skipped": sum(c["skipped"] for c in cycles),
            "tissue_mm2": float(sum(r.tissue_mm2 for r in pool.regions)), "region_mm2": float(region_mm2),
            "metrics": {c: m for c, m in sorted(pool.cycle_metrics.items())}}
