"""alkit.study.tracking against MLflow's embedded SQLite store: runs, params, per-cycle metrics, artefacts,
failure states, resumability lookups, summaries, and Lightning training curves in the same run."""

from __future__ import annotations

import hashlib
import math
import os
import socket
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

import alkit
from alkit.errors import AlkitError
from alkit.study.tracking import (DEFAULT_TRACKING_URI, SUPERSEDED_TAG, Tracker, config_hash,
                            resolve_tracking_uri)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite store for the module (creating its tables takes a second); tests use own experiments."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


KEY = {"strategy": "prototype", "n": "3", "l": "8192", "seed": "0", "config_hash": "abc123"}


def test_run_records_params_metrics_and_artefacts(store, tmp_path):
    tracker = Tracker("records", tracking_uri=store)
    (tmp_path / "regions.json").write_text('[{"slide": "a", "x": 0}]')
    (tmp_path / "png").mkdir()
    (tmp_path / "png" / "a.png").write_bytes(b"\x89PNG fake")
    with tracker.start_run("prototype-n3-l8192-s0", KEY,
                           {"encoder": {"spec": "handcrafted", "mpp": 0.5}, "classes": ["tumor"],
                            "strategy": "prototype", "note": "x" * 7000},
                           tags={"study": "unit"}) as run:
        for cycle in range(3):
            run.log_metrics({"iou_tumour": 0.1 * cycle, "tissue_pct": cycle + 1.5,
                             "f1": None, "odd": math.nan if cycle == 1 else 1.0}, step=cycle)
        run.log_artifact(tmp_path / "regions.json")
        run.log_artifact(tmp_path / "png", artifact_path="png")
        run.log_dict({"n": 3, "strategy": "prototype"}, "config.yaml")
        run.log_text("| a | b |", "summary.md")
        run.set_tags({"extra": 1})

    client = MlflowClient(store)
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.info.run_name == "prototype-n3-l8192-s0"
    params, tags = got.data.params, got.data.tags
    assert params["encoder.spec"] == "handcrafted" and params["encoder.mpp"] == "0.5"
    assert params["classes"] == '["tumor"]' and params["n"] == "3" and params["seed"] == "0"
    assert params["alkit_version"] == alkit.__version__ and tags["alkit.version"] == alkit.__version__
    assert len(params["note"]) <= 6000 and params["note"].endswith("...")
    assert {k: tags[k] for k in KEY} == KEY and tags["study"] == "unit" and tags["extra"] == "1"
    history = [(m.step, m.value) for m in client.get_metric_history(run.run_id, "iou_tumour")]
    assert sorted(history) == [(0, 0.0), (1, 0.1), (2, pytest.approx(0.2))]
    odd = sorted((m.step, m.value) for m in client.get_metric_history(run.run_id, "odd"))
    assert math.isnan(odd[1][1]) and odd[2] == (2, 1.0)  # NaN is kept
    assert "f1" not in got.data.metrics  # None is skipped
    names = {a.path for a in client.list_artifacts(run.run_id)}
    assert names == {"regions.json", "png", "config.yaml", "summary.md"}
    assert [a.path for a in client.list_artifacts(run.run_id, "png")] == ["png/a.png"]
    local = Path(client.download_artifacts(run.run_id, "config.yaml", str(tmp_path / "dl")))
    assert "strategy: prototype" in local.read_text()
    # an SQLite store keeps artefacts beside the database, one folder per experiment
    db_dir = Path(store[len("sqlite:///"):]).parent
    assert (db_dir / "mlruns" / "records" / run.run_id / "artifacts" / "summary.md").is_file()


def test_failure_is_recorded_reraised_and_not_resumed(store):
    tracker = Tracker("failures", tracking_uri=store)
    with pytest.raises(RuntimeError, match="out of memory"):
        with tracker.start_run("first", KEY, {}) as failed:
            failed.log_metrics({"iou_tumour": 0.3}, step=0)
            raise RuntimeError("out of memory")
    client = MlflowClient(store)
    assert client.get_run(failed.run_id).info.status == "FAILED"
    assert client.get_run(failed.run_id).data.tags["alkit.error"] == "RuntimeError: out of memory"
    assert tracker.finished_run(KEY) is None and tracker.runs() == []

    with tracker.start_run("second", KEY, {}) as done:
        done.log_metrics({"iou_tumour": 0.5}, step=0)
    assert tracker.finished_run(KEY) == done.run_id
    assert tracker.finished_run({**KEY, "seed": "1"}) is None
    assert tracker.finished_run({"strategy": "prototype"}) == done.run_id  # a partial key matches too
    old = client.get_run(failed.run_id)
    assert old.info.status == "FAILED" and old.data.tags[SUPERSEDED_TAG] == done.run_id
    assert [r["run_id"] for r in tracker.runs()] == [done.run_id]

    with pytest.raises(KeyboardInterrupt):
        with tracker.start_run("interrupted", {**KEY, "seed": "9"}, {}):
            raise KeyboardInterrupt
    assert tracker.finished_run({**KEY, "seed": "9"}) is None


def test_runs_returns_params_final_metrics_and_histories(store):
    tracker = Tracker("summaries", tracking_uri=store)
    for strategy in ("random", "prototype"):
        for seed in (0, 1):
            key = {"strategy": strategy, "seed": str(seed), "config_hash": "h"}
            with tracker.start_run(f"{strategy}-{seed}", key, {"n": 3}) as run:
                for cycle in range(3):
                    run.log_metrics({"iou_tumour": cycle + seed / 10}, step=cycle)
                run.log_metrics({"iou_tumour": 9.0}, step=2)  # logged again: replaces step 2
    everything = tracker.runs()
    assert [r["name"] for r in everything] == ["random-0", "random-1", "prototype-0", "prototype-1"]
    chosen = tracker.runs({"strategy": "prototype", "seed": "1"})
    assert len(chosen) == 1
    one = chosen[0]
    assert one["params"]["n"] == "3" and one["tags"]["strategy"] == "prototype"
    assert one["metrics"]["iou_tumour"] == 9.0
    assert one["history"]["iou_tumour"] == [(0, 0.1), (1, 1.1), (2, 9.0)]
    assert one["end_time"] >= one["start_time"]
    assert tracker.runs({"strategy": "diversity"}) == []
    assert tracker.runs({"strategy": "random"}, histories=False)[0]["history"] == {}


def test_key_values_with_quotes_and_param_conflicts(store):
    tracker = Tracker("quotes", tracking_uri=store)
    key = {"prototypes": "it's \"odd\"", "seed": "0"}
    with tracker.start_run("q", key, {}) as run:
        pass
    assert tracker.finished_run(key) == run.run_id
    with pytest.raises(ValueError, match="seed"):
        with tracker.start_run("bad", {"seed": "0"}, {"seed": 1}):
            pass
    assert len(MlflowClient(store).search_runs([tracker.experiment_id])) == 1  # nothing was created


def test_lightning_logger_writes_into_the_same_run(store, tmp_path, monkeypatch):
    import pytorch_lightning as pl
    import torch

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, _):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.layer(x), y)
            self.log("train_loss", loss, on_step=False, on_epoch=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    global_uri = mlflow.get_tracking_uri()
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
    tracker = Tracker("lightning", tracking_uri=store)
    with tracker.start_run("fit", {"seed": "0"}, {}) as run:
        for cycle in range(2):
            trainer = pl.Trainer(max_epochs=2, logger=run.lightning_logger(prefix=f"cycle{cycle}"),
                                 accelerator="cpu", devices=1, enable_checkpointing=False,
                                 enable_progress_bar=False, enable_model_summary=False,
                                 default_root_dir=tmp_path, log_every_n_steps=1)
            trainer.fit(Tiny(), torch.utils.data.DataLoader(data, batch_size=8))
            # Lightning does not end the run: the tracker does
            assert MlflowClient(store).get_run(run.run_id).info.status == "RUNNING"
            run.log_metrics({"iou_tumour": 0.5 + cycle}, step=cycle)
    assert "MLFLOW_TRACKING_URI" not in os.environ and mlflow.get_tracking_uri() == global_uri
    summary = tracker.runs({"seed": "0"})[0]
    assert summary["tags"]["alkit.version"] == alkit.__version__
    for cycle in range(2):
        curve = summary["history"][f"cycle{cycle}-train_loss"]
        assert [step for step, _ in curve] == [3, 7] and all(np.isfinite(v) for _, v in curve)
    assert summary["history"]["iou_tumour"] == [(0, 0.5), (1, 1.5)]
    assert MlflowClient(store).get_run(run.run_id).info.status == "FINISHED"


def test_tracking_uri_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert DEFAULT_TRACKING_URI == "sqlite:///mlflow.db"
    # relative SQLite paths are pinned to the working directory (MLflow caches stores by URI)
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri(None) == "http://127.0.0.1:5000"
    assert resolve_tracking_uri("sqlite:///other.db") == f"sqlite:///{tmp_path}/other.db"
    assert resolve_tracking_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"


def test_default_store_is_mlflow_db_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    tracker = Tracker("default")
    with tracker.start_run("r", {"seed": "0"}, {}) as run:
        run.log_text("hi", "note.txt")
    assert (tmp_path / "mlflow.db").is_file()
    assert (tmp_path / "mlruns" / "default" / run.run_id / "artifacts" / "note.txt").is_file()


def test_unreachable_server_and_deleted_experiment_fail_clearly(store):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(AlkitError, match="does not answer"):
        Tracker("x", tracking_uri=f"http://127.0.0.1:{port}")
    gone = Tracker("deleted", tracking_uri=store)
    MlflowClient(store).delete_experiment(gone.experiment_id)
    with pytest.raises(AlkitError, match="deleted"):
        Tracker("deleted", tracking_uri=store)


def test_config_hash_is_stable_and_canonical():
    a = {"strategy": "prototype", "n": [1, 3, 5], "paths": {"slides": Path("/data/s")}, "seeds": {2, 1}}
    b = {"seeds": {1, 2}, "paths": {"slides": "/data/s"}, "n": (1, 3, 5), "strategy": "prototype"}
    assert config_hash(a) == config_hash(b) and len(config_hash(a)) == 12
    assert config_hash({**a, "n": [1, 3]}) != config_hash(a)
    assert config_hash({"x": np.float64(0.25), "y": np.arange(3)}) == config_hash({"x": 0.25, "y": [0, 1, 2]})
    assert config_hash({}) == hashlib.sha256(b"{}").hexdigest()[:12]  # the same on every machine
    with pytest.raises(TypeError, match="object"):
        config_hash({"x": object()})
