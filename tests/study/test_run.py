"""Strategy comparison under MLflow: config validation, the tracked grid (with the full-annotation reference),
resuming, the evaluation-overlap warning, summary, demo, server."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from pathlib import Path

from matplotlib.image import imread
import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from alkit.cli import _print_summary, main
from alkit.embeddings.cohort import Cohort, CohortSlide
from alkit.study.config import ConfigError, load_config
from alkit.study.run import OVERLAP_TAG, evaluation_overlap, run_study
from alkit.study.summary import summarise_study, summary_table
from alkit.study.demo import demo_config
from conftest import on_tissue_count


@pytest.fixture(scope="module")
def demo_study(synthetic_cohort, tmp_path_factory):
    """The quick demo's config over the shared synthetic cohort (written beside it)."""
    root = Path(synthetic_cohort.root)
    config = demo_config(root, quick=True)
    path = root.parent / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _write(tmp_path, base: dict, **changes) -> Path:
    config = json.loads(json.dumps(base))
    for key, value in changes.items():
        node = config
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        if value is None:
            node.pop(last)
        else:
            node[last] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_invalid_configs_fail_before_any_work_naming_the_key(demo_study, tmp_path):
    base = yaml.safe_load(demo_study.read_text())
    # absolute paths so the copies in tmp_path still find the cohort
    base["cohort"]["slides"] = [str(demo_study.parent / p) for p in base["cohort"]["slides"]]
    base["cohort"]["test_slides"] = [str(demo_study.parent / p) for p in base["cohort"]["test_slides"]]
    base["cohort"]["ground_truth"]["synthetic"] = str(demo_study.parent / base["cohort"]["ground_truth"]["synthetic"])
    base["prototypes"]["db"] = str(demo_study.parent / base["prototypes"]["db"])
    load_config(_write(tmp_path, base))  # the base itself is valid
    cases = [
        ("study", None, "missing key 'study'"),
        ("strategies", ["random", "magic"], "unknown strategy 'magic'"),
        ("budgets.n", [0], "key 'budgets.n' must hold positive integers"),
        ("budgets.l", "big", "key 'budgets.l' must be"),
        ("cohort.slides", ["/nowhere/*.tif"], "key 'cohort.slides'"),
        ("selector", "best", "key 'selector'"),
        ("loop.cycles", 0, "key 'loop.cycles' must be >= 1"),
        ("task", {"kind": "tracking"}, "key 'task.kind' must be one of ['segmentation', 'detection']"),
        ("task", {"epochs": 3}, "key 'task' has unknown parameter(s) ['epochs'] for task 'segmentation'"),
        ("selector_options", {"rule": "area"}, "key 'selector_options'"),
        ("strategy_params", {"diversity": {"features": "pixels"}}, "key 'strategy_params.diversity'"),
        ("strategy_params", {"magic": {}}, "key 'strategy_params.magic'"),
        ("prototypes", {**base["prototypes"], "exclude": "/nowhere/ids.txt"}, "key 'prototypes.exclude': no file"),
        ("cohort.ground_truth", {"sliderunner": "x.sqlite"}, "for task.kind 'detection'"),
        ("prototypes", None, "key 'prototypes' is required"),
        ("colour", "red", "unknown key(s) ['colour']"),
    ]
    for key, value, message in cases:
        with pytest.raises(ConfigError) as err:
            load_config(_write(tmp_path, base, **{key: value}))
        assert message in str(err.value), (key, str(err.value))
    assert main(["compare", str(_write(tmp_path, base, study=None))]) == 2
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.yaml")


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _non_trivial_png(path: Path) -> bool:
    """A real plot: a PNG of some size that is not one flat colour."""
    pixels = imread(path)[..., :3]
    return path.stat().st_size > 1000 and (pixels < 0.9).mean() > 0.005


def test_comparison_is_tracked_resumable_and_summarised(demo_study, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = load_config(demo_study)
    config.out = tmp_path / "results"  # pools and prototypes of this test's own, none another test left
    assert config.cycles == 2 and "full" in config.strategies
    runs = run_study(config, tracking_uri=uri, progress=False)
    assert sorted(r["params"]["strategy"] for r in runs) == ["diversity", "full", "prototype", "random"]
    for r in runs:
        full = r["params"]["strategy"] == "full"
        assert r["params"]["seed"] == "0" and r["tags"][OVERLAP_TAG] == "false"  # held-out test slides
        assert (r["params"]["n"], r["params"]["l"]) == (("0", "0") if full else ("1", "1024"))
        assert {"encoder", "selector", "config_hash", "alkit_version"} <= set(r["params"])
        steps = [s for s, _ in r["history"]["iou_tumour"]]
        assert steps == ([0] if full else [0, 1])  # full: cycle 0 only, the others all their cycles
        tissue = [v for _, v in r["history"]["annotated_tissue_pct"]]
        if full:
            assert tissue == [pytest.approx(100.0)] and r["params"]["cycles"] == "1"
        else:
            assert tissue[1] > tissue[0] > 0
        artefacts = {a.path for a in MlflowClient(uri).list_artifacts(r["run_id"])}
        assert {"cycle_0", "pool", "config.json"} <= artefacts and ("cycle_1" in artefacts) != full
        cycle0 = {a.path for a in MlflowClient(uri).list_artifacts(r["run_id"], "cycle_0")}
        assert {"cycle_0/regions.json", "cycle_0/qupath", "cycle_0/png"} <= cycle0
        if not full:  # each export says which run, strategy, budget and prototype set picked its regions
            for cycle in (0, 1):
                doc = json.loads(Path(MlflowClient(uri).download_artifacts(
                    r["run_id"], f"cycle_{cycle}/regions.json", str(tmp_path / r["run_id"] / str(cycle)))).read_text())
                prov = doc["provenance"]
                assert prov["cycle"] == cycle and prov["run_key"] and prov["seed"] == 0
                assert prov["budget"] == {"n": 1, "size_px": 1024}
                assert prov["strategy"] == (r["params"]["strategy"] if cycle == 0 else "uncertainty")
                assert bool(prov["prototype_set"]) == (cycle == 0 and r["params"]["strategy"] == "prototype")
                assert {reg["cycle"] for reg in doc["regions"]} <= {cycle}
    client = MlflowClient(uri)
    parent = client.get_run(runs.mlflow.run_id)  # one parent run per study, the grid nested under it
    assert parent.data.tags["alkit.role"] == "study" and parent.data.tags["alkit.study"] == config.study
    assert parent.info.status == "FINISHED" and parent.data.params["strategies"] == json.dumps(config.strategies)
    for r in runs:
        assert r["tags"]["mlflow.parentRunId"] == parent.info.run_id
        assert {"mlflow.user", "mlflow.source.name", "mlflow.source.type", "alkit.host", "alkit.pid",
                "alkit.heartbeat"} <= set(r["tags"])
        inputs = {d.dataset.name: d for d in client.get_run(r["run_id"]).inputs.dataset_inputs}
        assert {"train_slides", "test_slides"} <= set(inputs) and ("prototypes" in inputs) == \
            (r["params"]["strategy"] == "prototype")
        rows = json.loads(inputs["train_slides"].dataset.profile)["num_rows"]
        assert rows == len(config.slides) and inputs["test_slides"].tags[0].value == "testing"
        # per-epoch training curves of every fit (cycle k: the model trained on cycles <= k)
        for cycle in ([0] if r["params"]["strategy"] == "full" else [0, 1]):
            curve = client.get_metric_history(r["run_id"], f"cycle{cycle}-train_loss")
            assert len(curve) == len({m.step for m in curve}) >= 2, (r["name"], cycle)
            held_out = dict(r["history"]["train_n_val"])[cycle] > 0  # a validation loss needs held-out cells
            assert bool(client.get_metric_history(r["run_id"], f"cycle{cycle}-val_loss")) == held_out
    (proto,) = [r for r in runs if r["params"]["strategy"] == "prototype"]
    provenance = client.download_artifacts(proto["run_id"], "prototypes/provenance.json", str(tmp_path))
    classes = json.loads(Path(provenance).read_text())["classes"]
    assert classes["tumor"]["prototypes"] and {"id", "caption"} <= set(classes["tumor"]["prototypes"][0])
    again = run_study(config, tracking_uri=uri, progress=False)  # finished runs are skipped
    assert sorted(r["run_id"] for r in again) == sorted(r["run_id"] for r in runs)
    assert again.mlflow.run_id == parent.info.run_id  # the same parent on resume
    experiment = MlflowClient(uri).get_experiment_by_name(config.study)
    assert len(MlflowClient(uri).search_runs([experiment.experiment_id])) == 4 + 1
    summary = summarise_study(again, tmp_path / "summary")
    summarise_study(again, tmp_path / "summary")  # a second summary replaces the first on the parent
    on_parent = {a.path for a in client.list_artifacts(parent.info.run_id, "summary")}
    assert {"summary/summary.csv", "summary/summary.md", "summary/al_curves_l1024.png"} <= on_parent
    logged = json.loads(client.get_run(parent.info.run_id).data.tags["mlflow.loggedArtifacts"])
    assert {"path": "summary_table.json", "type": "table"} in logged  # an MLflow table (log_table)
    table = json.loads(Path(client.download_artifacts(parent.info.run_id, "summary_table.json",
                                                      str(tmp_path))).read_text())
    strategies = [row[table["columns"].index("strategy")] for row in table["data"]]
    assert len(strategies) == 3 * 2 + 1 and set(strategies) == {"random", "diversity", "prototype", "full"}
    table = summary["markdown"].read_text()
    assert table.count("\n") == 2 + 3 * 2 + 1  # header, rule, 3 strategies x 2 cycles, full at cycle 0
    assert "| full | 0 | 0 | 0 | 1 |" in table and "iou_tumour_of_full" in table.splitlines()[0]
    rows = {(r["strategy"], r["cycle"]): r for r in _csv_rows(summary["csv"])}
    assert float(rows["full", "0"]["iou_tumour_of_full"]) == 1.0
    for strategy in ("random", "diversity", "prototype"):
        row = rows[strategy, "1"]
        ratio = float(row["iou_tumour_of_full"])
        assert ratio == pytest.approx(float(row["iou_tumour"]) / float(rows["full", "0"]["iou_tumour"]))
    assert summary["iou_tumour_vs_tissue"].stat().st_size > 1000 and summary["csv"].exists()
    for name in ("iou_tumour_vs_tissue_cycle0", "tumour_vs_tissue_cycle0", "al_curves_l1024"):
        assert summary[name] == tmp_path / "summary" / f"{name}.png" and _non_trivial_png(summary[name]), name


def test_full_runs_once_per_seed_and_evaluation_on_training_slides_is_flagged(demo_study, tmp_path, caplog):
    config = yaml.safe_load(demo_study.read_text())
    config["cohort"].pop("test_slides")
    config |= {"strategies": ["full"], "seeds": [0, 1], "budgets": {"n": [1, 2], "l": [512, 1024]},
               "out": "results-full-test"}
    path = demo_study.parent / "study-full.yaml"
    path.write_text(yaml.safe_dump(config))
    with caplog.at_level(logging.WARNING, logger="alkit.study.run"):
        runs = run_study(load_config(path), tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", progress=False)
    assert "evaluation runs on the training cohort" in caplog.text and "overlap the training slides" in caplog.text
    assert sorted((r["params"]["n"], r["params"]["l"], r["params"]["seed"]) for r in runs) == \
        [("0", "0", "0"), ("0", "0", "1")]  # once per seed, not per n x l
    for r in runs:
        assert [s for s, _ in r["history"]["iou_tumour"]] == [0]
        assert r["tags"][OVERLAP_TAG] == "true" and "training cohort" in r["tags"]["alkit.evaluation_overlap"]
    summary = summarise_study(runs, tmp_path / "summary")
    (row,) = _csv_rows(summary["csv"])
    assert row["strategy"] == "full" and row["seeds"] == "2" and float(row["iou_tumour_of_full"]) == 1.0
    assert not [k for k in summary if k.startswith("al_curves")]  # no budgets, no curves
    assert _non_trivial_png(summary["iou_tumour_vs_tissue_cycle0"])


def test_evaluation_overlap_names_the_shared_slides():
    def cohort(*ids):
        return Cohort([CohortSlide(i, Path(f"{i}.h5"), Path(f"{i}.tif"), None) for i in ids])

    assert evaluation_overlap(cohort("a", "b"), cohort("c")) is None
    assert evaluation_overlap(cohort("a", "b"), cohort("b", "c")) == \
        "1 of 2 test slide(s) are training slides too: b"
    assert "training cohort" in evaluation_overlap(cohort("a"), None)


def test_summary_fractions_of_full_are_per_seed_and_nan_safe(tmp_path):
    def run(strategy, n, l, seed, miou, tissue):
        return {"params": {"strategy": strategy, "n": str(n), "l": str(l), "seed": str(seed)},
                "history": {"iou_tumour": [(0, miou)], "annotated_tissue_pct": [(0, tissue)]}}

    runs = [run("full", 0, 0, 0, 0.8, 100.0), run("full", 0, 0, 1, 0.4, 100.0), run("full", 0, 0, 2, 0.0, 100.0),
            run("random", 1, 512, 0, 0.4, 2.0), run("random", 1, 512, 1, 0.4, 3.0),
            run("random", 1, 512, 2, 0.3, 2.5), run("random", 1, 512, 3, 0.1, 2.0)]  # seed 3 has no full run
    rows = {r["strategy"]: r for r in summary_table(runs, ("iou_tumour", "annotated_tissue_pct"))}
    assert rows["random"]["iou_tumour_of_full"] == pytest.approx(0.75)  # median of 0.5 and 1.0
    assert rows["full"]["iou_tumour_of_full"] == 1.0 and "annotated_tissue_pct_of_full" not in rows["full"]
    alone = summary_table([run("random", 1, 512, 0, float("nan"), 2.0)], ("iou_tumour",))
    assert np.isnan(alone[0]["iou_tumour_of_full"])
    paths = summarise_study(runs, tmp_path)  # NaN medians and a missing reference do not break the plots
    assert _non_trivial_png(paths["iou_tumour_vs_tissue_cycle0"]) and _non_trivial_png(paths["al_curves_l512"])


def test_demo_quick_runs_from_the_command_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default embedded MLflow store lands in the working directory
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "4 runs of" in out and "| prototype | 1 | 1024 | 0 |" in out and "| full | 0 | 0 | 0 |" in out
    assert "(mitotic-figure detection)" in out and "annotated_mitoses_ratio" in out
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db" in out
    assert "then open http://127.0.0.1:5000/#/experiments/" in out and "in a browser" not in out
    assert (tmp_path / "mlflow.db").exists() and (tmp_path / "demo" / "results" / "summary.csv").exists()
    assert (tmp_path / "demo" / "results-mitosis" / "mitoses_vs_tissue.png").exists()
    assert (tmp_path / "demo" / "results" / "iou_tumour_vs_tissue_cycle0.png").exists()
    assert (tmp_path / "demo" / "results-mitosis" / "f1_vs_tissue_cycle0.png").exists()


def test_comparison_against_a_real_tracking_server(demo_study, tmp_path, capsys):
    from mlflow_setup.server import start_server, stop_server

    info = start_server(tmp_path / "server", port=0, timeout=90)
    try:
        config = load_config(demo_study)
        config.strategies = ["random"]
        config.out = tmp_path / "results"  # no pool another test left: the run trains through the server
        runs = run_study(config, tracking_uri=info.uri, progress=False)
        client = MlflowClient(info.uri)
        experiment = client.get_experiment_by_name(config.study).experiment_id
        found = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{runs.mlflow.run_id}'")
        assert [r.info.run_id for r in found] == [runs[0]["run_id"]]
        assert found[0].info.status == "FINISHED" and found[0].data.params["strategy"] == "random"
        assert len(client.get_metric_history(found[0].info.run_id, "iou_tumour")) == 2
        # trained here, through the server (not resumed from a pool file): every fit logged its curve
        assert client.get_metric_history(found[0].info.run_id, "cycle1-train_loss")
        summary = summarise_study(runs, tmp_path / "summary")  # on the server: teammates see it
        assert "summary/summary.md" in {a.path for a in client.list_artifacts(runs.mlflow.run_id, "summary")}
        _print_summary(summary, info.uri)
        hint = capsys.readouterr().out.splitlines()[-1]
        assert hint == f"MLflow UI:     open {info.uri}/#/experiments/{experiment}/runs/{runs.mlflow.run_id} in a browser"
    finally:
        stop_server(info)
    assert not os.path.exists(tmp_path / "server" / "server.pid")


def test_shards_of_a_study_share_one_parent_finished_with_the_grid(demo_study, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = load_config(demo_study)
    config.strategies, config.cycles = ["random", "full"], 1
    config.out = tmp_path / "results"  # a 2-cycle pool of another test would otherwise resume these runs
    first = run_study(config, tracking_uri=uri, progress=False, shard=(1, 2))
    client = MlflowClient(uri)
    assert [r["params"]["strategy"] for r in first] == ["random"]
    assert client.get_run(first.mlflow.run_id).info.status == "RUNNING"  # half the grid is done
    second = run_study(config, tracking_uri=uri, progress=False, shard=(2, 2))
    assert second.mlflow.run_id == first.mlflow.run_id and len(second) == 2
    assert {r["tags"]["mlflow.parentRunId"] for r in second} == {first.mlflow.run_id}
    assert client.get_run(first.mlflow.run_id).info.status == "FINISHED"


def test_shipped_configs_are_well_formed():
    experiments = Path(__file__).resolve().parents[2] / "experiments"
    # the paper's configs point at data this machine does not have: validation gets as far as the slides
    with pytest.raises(ConfigError, match="key 'cohort.slides'"):
        load_config(experiments / "camelyon16.yaml")
    with pytest.raises(ConfigError, match="key 'cohort.slides'"):
        load_config(experiments / "mitos_wsi_cmc.yaml")
    mitos = yaml.safe_load((experiments / "mitos_wsi_cmc.yaml").read_text())
    assert mitos["task"]["kind"] == "detection" and mitos["embedding"]["patch"] == mitos["embedding"]["stride"] == 64
    with pytest.raises(ConfigError, match="key 'cohort.slides'"):
        load_config(experiments / "camelyon16_plip.yaml")
    for name in ("synthetic.yaml", "headline.yaml", "camelyon16.yaml", "camelyon16_plip.yaml", "mitos_wsi_cmc.yaml"):
        config = yaml.safe_load((experiments / name).read_text())  # full annotation beside every comparison
        assert config["strategies"] == ["full", "random", "diversity", "prototype"], name
    headline = yaml.safe_load((experiments / "headline.yaml").read_text())
    assert headline["seeds"] == [0, 1, 2, 3, 4] and headline["budgets"]["n"] == [1, 3, 5]


# ------------------------------------------------------------------------------------------ detection

TINY_DETECTOR = {"kind": "detection", "mpp": 0.5, "patch": 64, "fpn_channels": 32, "patches_per_epoch": 6,
                 "patches_per_epoch_small": 6, "max_epochs": 1, "batch_size": 3, "tile": 256, "accelerator": "cpu",
                 "score_thresh": 0.01}


@pytest.fixture(scope="module")
def detection_study(synthetic_cohort):
    """The quick demo's detection study over the shared synthetic cohort, with a tiny detector and the
    mitoses read from the cohort's SlideRunner database (``ground_truth.sliderunner``)."""
    from alkit.study.demo import demo_detection_config

    root = Path(synthetic_cohort.root)
    config = demo_detection_config(root, quick=True)
    config["task"] = dict(TINY_DETECTOR)
    config["cohort"]["ground_truth"] = {"sliderunner": os.path.relpath(synthetic_cohort.mitoses_db, root.parent)}
    config["strategies"] = ["random", "prototype"]
    config["out"] = "results-detection-test"
    # 2 of the 4 slides carry tumour (and nearly all mitoses): one tests, the other is labeled, none validates
    config["cohort"]["slides"] += config["cohort"].pop("validation_slides")
    path = root.parent / "study-detection.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_detection_configs_are_validated(detection_study, tmp_path):
    base = yaml.safe_load(detection_study.read_text())
    here = detection_study.parent
    base["cohort"]["validation_slides"] = base["cohort"]["slides"][-1:]
    for key in ("slides", "validation_slides", "test_slides"):
        base["cohort"][key] = [str(here / p) for p in base["cohort"][key]]
    base["cohort"]["ground_truth"]["sliderunner"] = str(here / base["cohort"]["ground_truth"]["sliderunner"])
    base["prototypes"]["db"] = str(here / base["prototypes"]["db"])
    base["prototypes"]["crops"]["figures"] = str(here / base["prototypes"]["crops"]["figures"])
    config = load_config(_write(tmp_path, base))
    assert config.kind == "detection" and len(config.validation_slides) == 1
    cases = [
        ("loop.acquisition", {"measure": "bald"}, "'bald' needs MC dropout"),
        ("prototypes.classes", {"a": {"ids": ["1"]}, "b": {"ids": ["2"]}}, "one class of mitosis crops"),
        ("prototypes.crops", {"centre": 3}, "key 'prototypes.crops' knows"),
        ("prototypes.crops", {"boxes": "/nowhere/boxes.json"}, "key 'prototypes.crops.boxes': no file"),
        ("cohort.ground_truth", {"sliderunner": "/nowhere/*.sqlite"}, "key 'cohort.ground_truth.sliderunner'"),
        ("cohort.ground_truth", {"coco": "/nowhere.json"}, "key 'cohort.ground_truth.coco': no file"),
        ("cohort.ground_truth", {"folder": str(tmp_path)}, "no SlideRunner database matches"),
        ("cohort.ground_truth", {"sliderunner": base["cohort"]["ground_truth"]["sliderunner"],
                                 "classes": {"Mitotic figure": "yes"}}, "key 'cohort.ground_truth.classes'"),
        ("task", {"kind": "detection", "fpn": 3}, "unknown parameter(s) ['fpn'] for task 'detection'"),
    ]
    for key, value, message in cases:
        with pytest.raises(ConfigError) as err:
            load_config(_write(tmp_path, base, **{key: value}))
        assert message in str(err.value), (key, str(err.value))


def test_detection_study_is_tracked_and_summarised(detection_study, synthetic_cohort, tmp_path):
    from alkit.embeddings.cohort import Cohort
    from alkit.tasks.detection.oracle import MitosisOracle
    from alkit.prototypes.prototype_set import PrototypeSet

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = load_config(detection_study)
    runs = run_study(config, tracking_uri=uri, progress=False)
    assert sorted(r["params"]["strategy"] for r in runs) == ["prototype", "random"]
    oracle = MitosisOracle.from_sliderunner(synthetic_cohort.mitoses_db)
    train_ids = {Path(p).stem for p in config.slides}
    total = sum(len(oracle.mitoses(s)) for s in train_ids)
    for r in runs:
        assert r["params"]["task_kind"] == "detection"
        assert [s for s, _ in r["history"]["f1"]] == [0]  # one cycle: the initial set
        (_, ratio), = r["history"]["annotated_mitoses_ratio"]
        pool = json.loads(next((config.out / "pools").glob(f"{r['params']['strategy']}-*.json")).read_text())
        assert all(reg["mitoses"] is not None for reg in pool["regions"])
        assert ratio == pytest.approx(sum(reg["mitoses"] for reg in pool["regions"]) / total)
        metrics = pool["cycle_metrics"]["0"]
        test_ids = [Path(p).stem for p in config.test_slides]
        assert {f"f1_per_slide.{s}" for s in test_ids} <= set(r["history"])  # per-slide F1 in MLflow too
        (point,) = r["history"]["cycle0-train_loss_epoch"]  # the detector's curve: max_epochs 1, one point
        assert math.isfinite(point[1]) and r["history"]["cycle0-train_loss"]  # and its per-step losses
        assert metrics["threshold_chosen_on"] == "labeled regions"
        test = Cohort.from_stores(sorted(Path(config.embedding["out"]).glob("*_64px_s64.h5")))
        scored = sum(on_tissue_count(s, oracle.mitoses(s.slide_id)) for s in test
                     if s.slide_id in {Path(p).stem for p in config.test_slides})
        assert metrics["tp"] + metrics["fn"] == scored
    (built,) = (config.out / "prototypes").glob("*/prototypes.json")  # <out>/prototypes/<cache key>/
    prototypes = PrototypeSet.load(built.parent)
    assert list(prototypes.classes) == ["mitotic figure"]
    assert prototypes.preprocessing["mode"] == "resize" and prototypes.preprocessing["size"] == 64
    summary = summarise_study(runs, tmp_path / "summary")
    header = summary["markdown"].read_text().splitlines()[0]
    assert "| f1 |" in header and "annotated_mitoses_ratio" in header and "miou" not in header
    assert summary["f1_vs_tissue"].stat().st_size > 1000 and summary["mitoses_vs_tissue"].exists()
    with pytest.raises(ValueError, match="different tasks"):
        summarise_study(runs + [{**runs[0], "params": {**runs[0]["params"], "task_kind": "segmentation"}}],
                        tmp_path / "mixed")


def test_numeric_metrics_flatten_one_level_for_mlflow():
    from alkit.study.run import numeric_metrics

    got = numeric_metrics({"f1": 0.5, "tp": 3, "where": "validation", "ok": True, "none": None,
                           "f1_per_slide": {"a b": 0.25, "c:d": None, "e(1)": 1}})
    assert got == {"f1": 0.5, "tp": 3.0, "f1_per_slide.a b": 0.25, "f1_per_slide.e_1_": 1.0}
