"""``alkit session`` end to end on the synthetic cohort: a human session (annotator files written the way
QuPath exports them), a session answered by the simulated oracle against the loop itself, and the refusals."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import shapely
import shapely.geometry

from alkit.al.loop import ActiveLearningLoop
from alkit.al.pool import LabeledPool
from alkit.cli import main
from alkit.selection.strategy import Budget, get_strategy
from alkit.tasks.segmentation.classifier import PatchClassifierModel
from alkit.tasks.segmentation.oracle import TumourOracle
from alkit.tasks.segmentation.task import SegmentationTask

MODEL = {"max_epochs": 15, "min_epochs": 3, "patience": 3}
SEED = 11


def _init(folder: Path, stores: Path, *extra: str) -> list[str]:
    return ["session", "init", str(folder), "--stores", str(stores), "--task-params", json.dumps(MODEL),
            "--n", "1", "--size", "1024", "--cycles", "2", "--seed", str(SEED), "-q", *extra]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def stores(embedded_cohort) -> Path:
    folders = {s.store_path.parent for s in embedded_cohort}
    assert len(folders) == 1
    return folders.pop()


@pytest.fixture(scope="module")
def truth(synthetic_cohort) -> TumourOracle:
    return TumourOracle.from_synthetic(synthetic_cohort.root)


def annotate_like_qupath(session: Path, cycle: int, out: Path, truth: TumourOracle, *, skip: str | None = None,
                         drop: str | None = None, outside: str | None = None) -> dict[str, float]:
    """What an annotator saves: each slide's exported GeoJSON (the locked Region objects, as QuPath writes them
    back) plus a ``Tumor`` polygon per region where the slide's true tumour lies in it, drawn a little past the
    region's edge as people do. ``skip`` sets a region's class to ``Region: skipped``, ``drop`` deletes a
    region object, ``outside`` adds a drawing outside every region of that slide. Returns the drawn tumour
    area (px², inside the regions) per region id."""
    out.mkdir(parents=True, exist_ok=True)
    regions = json.loads((session / "cycles" / str(cycle) / "regions.json").read_text())["regions"]
    drawn = {}
    for slide in sorted({r["slide"] for r in regions}):
        doc = json.loads((session / "cycles" / str(cycle) / "qupath" / f"{slide}.geojson").read_text())
        features = []
        for f in doc["features"]:
            rid = f["properties"]["name"]
            if rid == drop:
                continue
            if rid == skip:
                f["properties"]["classification"] = {"name": "Region: skipped", "color": [128, 128, 128]}
            features.append(f)
        for r in (r for r in regions if r["slide"] == slide):
            x, y, w, h = r["box_px"]
            box = shapely.box(x, y, x + w, y + h)
            tumour = truth.geometry(slide).intersection(box.buffer(40, join_style="mitre"))  # past the edge
            drawn[r["id"]] = float(tumour.intersection(box).area)
            if not tumour.is_empty and r["id"] != skip:
                features.append({"type": "Feature", "geometry": shapely.geometry.mapping(tumour),
                                 "properties": {"objectType": "annotation",
                                                "classification": {"name": "Tumor", "color": [200, 0, 0]}}})
        if slide == outside:
            xs = [r["box_px"] for r in regions if r["slide"] == slide]
            far = shapely.box(0, 0, 50, 50)
            assert not any(far.intersects(shapely.box(x, y, x + w, y + h)) for x, y, w, h in xs)
            features.append({"type": "Feature", "geometry": shapely.geometry.mapping(far),
                             "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}}})
        (out / f"{slide}.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return drawn


def test_human_session_end_to_end(stores, synthetic_cohort, embedded_cohort, truth, tmp_path, capsys):
    session = tmp_path / "session"
    code, out, _ = _run(capsys, *_init(session, stores, "--truth-synthetic", str(synthetic_cohort.root), "--n", "2"))
    assert code == 0 and (session / "session.json").is_file()
    code, out, _ = _run(capsys, "session", "next", str(session))
    assert code == 0 and "cycle 0: 8 region(s)" in out
    printed = [Path(line.strip()) for line in out.splitlines() if line.startswith("  ")]
    assert all(p.is_file() for p in printed)
    names = {p.name for p in printed}
    assert {"regions.json", "checklist.md", "checklist.csv"} <= names
    assert {f"{s}.geojson" for s in embedded_cohort.ids} | {f"{s}.xml" for s in embedded_cohort.ids} <= names
    regions_bytes = (session / "cycles/0/regions.json").read_bytes()

    # `next` again before ingest: the same cycle, the same files, no new picks
    code, again, _ = _run(capsys, "session", "next", str(session))
    assert code == 0 and "already out" in again
    assert [l for l in again.splitlines() if l.startswith("  ")] == [l for l in out.splitlines() if l.startswith("  ")]
    assert (session / "cycles/0/regions.json").read_bytes() == regions_bytes

    regions = json.loads(regions_bytes)["regions"]
    skip = regions[0]["id"]
    drawn = annotate_like_qupath(session, 0, tmp_path / "annotations0", truth, skip=skip)
    assert sum(drawn.values()) > 0, "the regions should hold some tumour to draw (seeded cohort and picks)"
    code, out, _ = _run(capsys, "session", "ingest", str(session), str(tmp_path / "annotations0"))
    assert code == 0 and "recorded 7 region(s), 1 skipped" in out
    pool = LabeledPool.open(session / "pool.json")
    assert len(pool.regions) == 7 and all(r.cycle == 0 for r in pool.regions)
    # the recorded tumour is what was drawn inside each region (clipped at its edge), measured like the
    # simulated oracle measures the true tumour there (grid-aligned boxes: the same cells)
    by_box = {(r["slide"], tuple(r["box_px"])): r["id"] for r in regions}
    task = SegmentationTask(truth)
    for r in pool.regions:
        expected = task.region_report(embedded_cohort.slide(r.slide), r.box).findings["tumour_mm2"]
        assert r.findings["tumour_mm2"] == pytest.approx(expected, rel=1e-6, abs=1e-12)
        assert (drawn[by_box[(r.slide, r.box)]] > 0) == (r.findings["tumour_mm2"] > 0)
    assert (skip not in {by_box[(r.slide, r.box)] for r in pool.regions})
    rows = list(csv.DictReader((session / "cycles/0/checklist.csv").open()))
    assert {row["id"]: row["status"] for row in rows} == {r["id"]: "skipped" if r["id"] == skip else "done"
                                                         for r in regions}

    # ingest twice: nothing changes
    pool_bytes = (session / "pool.json").read_bytes()
    code, out, _ = _run(capsys, "session", "ingest", str(session), str(tmp_path / "annotations0"))
    assert code == 0 and "nothing changed" in out
    assert (session / "pool.json").read_bytes() == pool_bytes

    code, out, _ = _run(capsys, "session", "train", str(session))
    assert code == 0 and "iou_tumour=" in out
    metrics = LabeledPool.open(session / "pool.json").cycle_metrics[0]
    assert 0.0 <= metrics["iou_tumour"] <= 1.0 and metrics["regions"] == 7
    assert (session / "mlflow.db").is_file()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{session / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.metrics["iou_tumour"] == pytest.approx(metrics["iou_tumour"])

    code, out, _ = _run(capsys, "session", "status", str(session))
    assert code == 0
    assert "7 done, 0 open, 1 skipped" in out and "metrics of cycle 0" in out
    tissue = sum(r.tissue_mm2 for r in pool.regions)
    assert f"{tissue:.4f} mm² of tissue" in out

    # cycle 1: uncertainty acquisition on the trained model, never on labeled or skipped regions
    code, out, _ = _run(capsys, "session", "next", str(session))
    assert code == 0 and "cycle 1:" in out
    new = json.loads((session / "cycles/1/regions.json").read_text())["regions"]
    assert new and {r["strategy"] for r in new} == {"uncertainty"}
    taken = [(r["slide"], r["box_px"]) for r in regions]
    for r in new:
        x, y, w, h = r["box_px"]
        for slide, (a, b, c, d) in taken:
            if slide == r["slide"]:
                assert x + w <= a or a + c <= x or y + h <= b or b + d <= y, "a new region overlaps an old one"
    code, out, err = _run(capsys, "session", "next", str(session))
    assert code == 0 and "already out" in out


def test_simulated_session_labels_what_the_loop_labels(stores, synthetic_cohort, embedded_cohort, tmp_path, capsys):
    session = tmp_path / "sim"
    assert _run(capsys, *_init(session, stores, "--oracle", "simulated", "--truth-synthetic",
                               str(synthetic_cohort.root)))[0] == 0
    for step in ("next", "ingest", "train", "next", "ingest", "train"):
        code, out, err = _run(capsys, "session", step, str(session), "-q")
        assert code == 0, err
    code, out, err = _run(capsys, "session", "next", str(session))
    assert code == 2 and "all 2 cycles are done" in err
    task = SegmentationTask(TumourOracle.from_synthetic(synthetic_cohort.root), PatchClassifierModel(**MODEL, seed=SEED))
    loop = ActiveLearningLoop(task, embedded_cohort, get_strategy("random"), get_strategy("uncertainty", measure="entropy"),
                              Budget(1, 1024), 2, LabeledPool.open(tmp_path / "loop.json"), seed=SEED)
    results = loop.run()
    ours, theirs = LabeledPool.open(session / "pool.json"), LabeledPool.open(tmp_path / "loop.json")
    assert ours.regions == theirs.regions  # boxes, cycles, strategies, scores, tissue and tumour areas
    for r in results:
        mine = ours.cycle_metrics[r.cycle]
        for key in ("iou_tumour", "annotated_tissue_pct", "annotated_tumour_pct", "regions"):
            assert mine[key] == pytest.approx(r.metrics[key], nan_ok=True), key


@pytest.fixture()
def open_session(stores, synthetic_cohort, tmp_path, capsys):
    session = tmp_path / "s"
    assert _run(capsys, *_init(session, stores, "--truth-synthetic", str(synthetic_cohort.root)))[0] == 0
    assert _run(capsys, "session", "next", str(session))[0] == 0
    return session


def _nothing_recorded(session: Path) -> None:
    assert not (session / "pool.json").exists() and not (session / "labels").exists()
    assert json.loads((session / "session.json").read_text())["state"] == "regions_out"


def test_missing_region_is_refused(open_session, truth, tmp_path, capsys):
    regions = json.loads((open_session / "cycles/0/regions.json").read_text())["regions"]
    gone = regions[-1]["id"]
    annotate_like_qupath(open_session, 0, tmp_path / "a", truth, drop=gone)
    code, out, err = _run(capsys, "session", "ingest", str(open_session), str(tmp_path / "a"), "-q")
    assert code == 2 and gone in err and "neither annotated nor marked skipped" in err
    assert len(err.strip().splitlines()) == 1
    _nothing_recorded(open_session)
    (tmp_path / "a" / f"{regions[-1]['slide']}.geojson").unlink()  # a slide's file missing altogether
    code, out, err = _run(capsys, "session", "ingest", str(open_session), str(tmp_path / "a"))
    assert code == 2 and f"no file for slide {regions[-1]['slide']!r}" in err
    _nothing_recorded(open_session)


def test_drawing_outside_regions_is_refused(open_session, truth, tmp_path, capsys):
    regions = json.loads((open_session / "cycles/0/regions.json").read_text())["regions"]
    slide = regions[0]["slide"]
    annotate_like_qupath(open_session, 0, tmp_path / "a", truth, outside=slide)
    code, out, err = _run(capsys, "session", "ingest", str(open_session), str(tmp_path / "a"))
    assert code == 2 and "outside every requested region" in err and f"{slide}.geojson" in err
    _nothing_recorded(open_session)
    # fixed by the annotator: the same folder ingests
    annotate_like_qupath(open_session, 0, tmp_path / "a", truth)
    assert _run(capsys, "session", "ingest", str(open_session), str(tmp_path / "a"))[0] == 0
    assert len(LabeledPool.open(open_session / "pool.json").regions) == len(regions)


def test_bad_input_is_one_line_and_writes_nothing(stores, synthetic_cohort, tmp_path, capsys):
    folder = tmp_path / "bad"
    code, _, err = _run(capsys, *_init(folder, stores, "--oracle", "simulated"))
    assert code == 2 and "needs ground truth" in err and len(err.strip().splitlines()) == 1
    assert not (folder / "session.json").exists()
    code, _, err = _run(capsys, *_init(folder, stores, "--strategy", "randomm"))
    assert code == 2 and "randomm" in err and not (folder / "session.json").exists()
    code, _, err = _run(capsys, *_init(folder, stores, "--task-params", '{"max_epochs": "lots"}'))
    assert code == 2 and "max_epochs" in err and not (folder / "session.json").exists()
    code, _, err = _run(capsys, "session", "next", str(folder))
    assert code == 2 and "no session here" in err
    assert _run(capsys, *_init(folder, stores))[0] == 0
    code, _, err = _run(capsys, *_init(folder, stores))
    assert code == 2 and "--force" in err
    code, _, err = _run(capsys, "session", "ingest", str(folder), str(tmp_path))
    assert code == 2 and "no regions handed out yet" in err
    code, _, err = _run(capsys, "session", "train", str(folder))
    assert code == 2 and "no labeled region yet" in err
    code, _, err = _run(capsys, "session", "ingest", str(folder), "--oracle", "simulated")
    assert code == 2
    before = (folder / "session.json").read_text()
    assert _run(capsys, *_init(folder, stores, "--force", "--n", "2"))[0] == 0
    assert json.loads((folder / "session.json").read_text())["config"]["budget"]["n"] == 2
    aside = list(folder.glob("replaced-*/session.json"))
    assert len(aside) == 1 and aside[0].read_text() == before


def test_size_in_micrometres_is_the_same_physical_region(stores, embedded_cohort, tmp_path, capsys):
    mpp = embedded_cohort.slides[0].grid.slide_mpp
    assert _run(capsys, "session", "init", str(tmp_path / "um"), "--stores", str(stores), "--n", "1",
                "--size-um", str(1024 * mpp), "-q")[0] == 0
    assert _run(capsys, "session", "next", str(tmp_path / "um"), "--no-png")[0] == 0
    regions = json.loads((tmp_path / "um/cycles/0/regions.json").read_text())["regions"]
    assert {tuple(r["box_px"][2:]) for r in regions} == {(1024, 1024)}
    assert all(np.allclose(r["box_um"][2:], 1024 * mpp) for r in regions)


def test_size_in_micrometres_on_a_mixed_resolution_cohort(tmp_path, capsys):
    """Two scanners, 0.25 and 0.5 µm/px: --size-um gives both slides regions of the same physical side, through
    the session's loop (its choose step, which acquisition uses too), not one pixel side for all."""
    from alkit.synthetic import generate_cohort

    stores = tmp_path / "stores"
    for mpp, size in ((0.25, 4096), (0.5, 2048)):  # the same tissue area, scanned at two resolutions
        cohort = generate_cohort(tmp_path / f"cohort-{mpp}", n_slides=1, size=size, seed=5, mpp=mpp,
                                 n_caption_images=0, progress=False)
        slide = cohort.slides[0].path
        renamed = slide.with_name(f"scanner-{mpp}{slide.suffix}")
        slide.rename(renamed)
        assert main(["embed", str(renamed), "--out", str(stores), "--encoder", "handcrafted", "--mpp", "0.5",
                     "--patch", "64", "--workers", "0", "-q"]) == 0
    capsys.readouterr()
    session = tmp_path / "mixed"
    code, _, err = _run(capsys, "session", "init", str(session), "--stores", str(stores), "--n", "2", "--size-um", "256",
                        "--cycles", "2", "-q")
    assert code == 0, err
    assert _run(capsys, "session", "next", str(session), "--no-png")[0] == 0
    regions = json.loads((session / "cycles/0/regions.json").read_text())["regions"]
    assert {r["slide"]: tuple(r["box_px"][2:]) for r in regions} == {"scanner-0.25": (1024, 1024),
                                                                     "scanner-0.5": (512, 512)}
    assert all(np.allclose(r["box_um"][2:], 256) for r in regions)


def test_session_from_a_study_yaml(synthetic_cohort, embedded_cohort, tmp_path, capsys):
    import shutil

    import yaml

    cache = tmp_path / "embeddings"  # the fixture's stores as the study's embedding cache: reused, not recomputed
    cache.mkdir()
    for s in embedded_cohort:
        shutil.copy(s.store_path, cache / s.store_path.name)
    slides = [str(s.path) for s in synthetic_cohort.slides]
    study = {"study": "session-yaml", "cohort": {"slides": slides[:3], "test_slides": slides[3:],
                                                  "ground_truth": {"synthetic": str(synthetic_cohort.root)}},
             "embedding": {"encoder": "handcrafted", "mpp": 0.5, "patch": 128, "workers": 0, "accelerator": "cpu",
                           "out": str(cache)},
             "strategies": ["diversity", "random"], "budgets": {"n": [1], "l": [1024, 2048]}, "seeds": [5],
             "loop": {"cycles": 3}, "task": MODEL, "out": str(tmp_path / "results")}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    session = tmp_path / "from_yaml"
    code, out, err = _run(capsys, "session", "init", str(session), "--study", str(path), "--strategy", "random", "-q")
    assert code == 0, err
    config = json.loads((session / "session.json").read_text())["config"]
    expected = sorted(str(cache / embedded_cohort.slide(Path(s).stem).store_path.name) for s in slides[:3])
    assert sorted(config["stores"]) == expected
    assert len(list(cache.glob("*.h5"))) == len(embedded_cohort)  # nothing embedded anew
    assert len(config["test_stores"]) == 1 and config["name"] == "session-yaml"
    assert (config["initial"], config["budget"], config["cycles"], config["seed"]) == (
        "random", {"n": 1, "size_px": 1024, "size_um": None}, 3, 5)
    assert config["ground_truth"]["synthetic"] == str(synthetic_cohort.root)
    code, out, err = _run(capsys, "session", "init", str(tmp_path / "x"), "--study", str(path), "--stores", "y")
    assert code == 2 and "--stores" in err
    assert _run(capsys, "session", "next", str(session), "--no-png")[0] == 0
    code, out, err = _run(capsys, "session", "ingest", str(session), "--oracle", "simulated")
    assert code == 0 and "recorded 3 region(s), 0 skipped" in out, err
    code, out, _ = _run(capsys, "session", "status", str(session))
    assert "cycle 0 of 3 (ingested)" in out and "3 done, 0 open, 0 skipped" in out and "no model trained yet" in out


def test_interrupted_steps_resume(open_session, truth, tmp_path, capsys):
    state_file = open_session / "session.json"
    regions = json.loads((open_session / "cycles/0/regions.json").read_text())["regions"]
    skip = regions[1]["id"]
    annotate_like_qupath(open_session, 0, tmp_path / "a", truth, skip=skip)
    out_state = state_file.read_text()
    assert _run(capsys, "session", "ingest", str(open_session), str(tmp_path / "a"), "-q")[0] == 0
    pool_bytes = (open_session / "pool.json").read_bytes()
    state_file.write_text(out_state)  # killed after the pool was saved, before session.json was
    code, out, _ = _run(capsys, "session", "ingest", str(open_session), str(tmp_path / "a"), "-q")
    assert code == 0 and "already ingested" in out
    assert (open_session / "pool.json").read_bytes() == pool_bytes
    state = json.loads(state_file.read_text())
    assert state["state"] == "ingested" and state["skipped"]["0"] == [skip]
    code, out, _ = _run(capsys, "session", "status", str(open_session))
    assert f"{len(regions) - 1} done, 0 open, 1 skipped" in out


def test_interrupted_next_is_redone(stores, synthetic_cohort, tmp_path, capsys):
    session = tmp_path / "n"
    assert _run(capsys, *_init(session, stores))[0] == 0
    fresh = (session / "session.json").read_text()
    assert _run(capsys, "session", "next", str(session), "--no-png", "-q")[0] == 0
    first = (session / "cycles/0/regions.json").read_text()
    (session / "session.json").write_text(fresh)  # killed after the folder was renamed into place
    code, out, _ = _run(capsys, "session", "next", str(session), "--no-png", "-q")
    assert code == 0 and "cycle 0:" in out
    again = json.loads((session / "cycles/0/regions.json").read_text())
    assert again["regions"] == json.loads(first)["regions"]  # seeded: the same picks, written once
    assert not [p for p in (session / "cycles").iterdir() if p.name.startswith(".")]


DETECTOR = dict(mpp=0.5, patch=64, fpn_channels=32, patches_per_epoch=6, patches_per_epoch_small=6, max_epochs=1,
                batch_size=3, tile=256, accelerator="cpu")


def test_detection_session_end_to_end(stores, synthetic_cohort, embedded_cohort, tmp_path, capsys):
    """The detection task through the same session: annotators click mitoses and lookalikes (QuPath points)
    inside the regions; the pool holds the clicked counts, the detector trains on them and is scored by F1."""
    from alkit.tasks.detection.oracle import MitosisOracle

    truth = MitosisOracle.from_synthetic(synthetic_cohort.root)
    session = tmp_path / "session"
    code, _, err = _run(capsys, "session", "init", str(session), "--stores", str(stores), "--task", "detection",
                        "--task-params", json.dumps(DETECTOR), "--truth-synthetic", str(synthetic_cohort.root),
                        "--n", "2", "--size", "2048", "--cycles", "2", "--seed", str(SEED), "-q")
    assert code == 0, err  # 2048-px regions: the cohort's 11 mitoses lie on two slides
    code, out, err = _run(capsys, "session", "next", str(session))
    regions = json.loads((session / "cycles/0/regions.json").read_text())["regions"]
    assert code == 0 and f"cycle 0: {len(regions)} region(s)" in out and len(regions) >= 4, err
    clicked = {}
    annotations = tmp_path / "clicks"
    annotations.mkdir()
    for slide in sorted({r["slide"] for r in regions}):
        doc = json.loads((session / "cycles/0/qupath" / f"{slide}.geojson").read_text())
        features = list(doc["features"])
        for r in (r for r in regions if r["slide"] == slide):
            x, y, w, h = r["box_px"]
            for name, points in (("Mitotic figure", truth.mitoses(slide)),
                                 ("Mitotic figure lookalike", truth.hard_negatives(slide))):
                inside = points[(points[:, 0] >= x) & (points[:, 0] < x + w) & (points[:, 1] >= y) & (points[:, 1] < y + h)]
                clicked[(r["id"], name)] = len(inside)
                if len(inside):
                    features.append({"type": "Feature", "geometry": shapely.geometry.mapping(shapely.MultiPoint(inside)),
                                     "properties": {"objectType": "annotation", "classification": {"name": name}}})
        doc["features"] = features
        (annotations / f"{slide}.geojson").write_text(json.dumps(doc))
    assert sum(v for (_, name), v in clicked.items() if name == "Mitotic figure") > 0, "seeded picks hold mitoses"

    code, out, err = _run(capsys, "session", "ingest", str(session), str(annotations))
    assert code == 0 and f"recorded {len(regions)} region(s), 0 skipped" in out, err
    pool = LabeledPool.open(session / "pool.json")
    by_box = {(r["slide"], tuple(r["box_px"])): r["id"] for r in regions}
    for r in pool.regions:  # the clicked counts, and exactly the ground truth's there (every figure clicked)
        rid = by_box[(r.slide, r.box)]
        assert r.findings["mitoses"] == clicked[(rid, "Mitotic figure")]
        assert r.findings["hard_negatives"] == clicked[(rid, "Mitotic figure lookalike")]
        assert (r.findings["mitoses"], r.findings["hard_negatives"]) == truth.counts_in(r.slide, r.box)

    code, out, err = _run(capsys, "session", "train", str(session))
    assert code == 0 and "f1=" in out, err
    metrics = LabeledPool.open(session / "pool.json").cycle_metrics[0]
    assert 0.0 <= metrics["f1"] <= 1.0 and metrics["regions"] == len(regions)
    code, out, _ = _run(capsys, "session", "next", str(session))
    assert code == 0 and "cycle 1:" in out
    assert {r["strategy"] for r in json.loads((session / "cycles/1/regions.json").read_text())["regions"]} == \
        {"uncertainty"}
