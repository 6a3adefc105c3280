"""A study sharded over two concurrent processes against a PostgreSQL-backed MLflow server: a real local
PostgreSQL cluster and ``mlflow server`` (``mlflow_setup.server start --postgres``) in tmp_path on 127.0.0.1,
two ``alkit compare --shard K/2`` processes at once, every grid point FINISHED exactly once, each by the
shard it belongs to; then both servers stop (no process of the cluster left, ports free)."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from alkit.study.config import load_config
from alkit.study.run import shard_of, study_grid
from mlflow_setup.postgres import PG_FOLDER, find_postgres_bin
from mlflow_setup.server import start_server, status, stop_server

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(find_postgres_bin() is None, reason=(
    "PostgreSQL's server programs (initdb, pg_ctl) are not installed (Debian: apt-get install postgresql; "
    ".ci/run installs them)"))


def _tiny_study(cohort, folder: Path) -> Path:
    """Two strategies x two seeds on the synthetic cohort, cycle 0 only, two epochs: four quick runs."""
    slides = list(cohort.slides)
    tumour = [s for s in slides if s.has_tumour]
    test = tumour[-1:]
    config = {
        "study": "postgres-shards",
        "cohort": {"slides": [str(s.path) for s in slides if s not in test],
                   "test_slides": [str(s.path) for s in test],
                   "ground_truth": {"synthetic": str(cohort.root)}},
        "embedding": {"encoder": "handcrafted", "mpp": 0.5, "patch": 128, "workers": 0, "accelerator": "cpu",
                      "out": "embeddings"},
        "strategies": ["random", "diversity"],
        "budgets": {"n": [1], "l": [1024]},
        "seeds": [0, 1],
        "loop": {"cycles": 1},
        "task": {"max_epochs": 2, "min_epochs": 1, "patience": 1},
        "out": "results",
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid``."""
    from mlflow_setup.server import _live_group_members

    return _live_group_members(pgid)


def test_two_shards_share_a_study_through_postgres(synthetic_cohort, tmp_path):
    config_path = _tiny_study(synthetic_cohort, tmp_path)
    config = load_config(config_path)
    grid = study_grid(config)
    assert len(grid) == 4
    root = tmp_path / "server"
    started = time.monotonic()
    info = start_server(root, port=0, postgres=True, timeout=180)
    print(f"\nPostgreSQL-backed MLflow server answered after {time.monotonic() - started:.1f} s at {info.uri}")
    pg = info.postgres
    try:
        assert pg is not None and pg.uri == f"postgresql+psycopg://mlflow@127.0.0.1:{pg.port}/mlflow"
        assert (pg.data / "PG_VERSION").exists() and pg.data.parent == root / PG_FOLDER
        assert "postgresql+psycopg://" in (root / "server.json").read_text()  # MLflow runs on it, not on SQLite
        assert not (root / "mlflow.db").exists()
        postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])
        # loopback only: the cluster answers on 127.0.0.1 and nowhere else on this machine
        with socket.create_connection(("127.0.0.1", pg.port), timeout=5):
            pass

        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        env |= {"HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))}
        procs = {}
        for k in (1, 2):
            log = open(tmp_path / f"shard{k}.log", "w")
            procs[k] = (subprocess.Popen(
                [sys.executable, "-m", "alkit.cli", "-v", "compare", str(config_path), "--tracking-uri", info.uri,
                 "--shard", f"{k}/2", "--quiet"],
                cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL), log)
        outputs = {}
        for k, (proc, log) in procs.items():
            try:
                proc.wait(timeout=600)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                log.close()
            outputs[k] = (tmp_path / f"shard{k}.log").read_text()
        for k, (proc, _) in procs.items():
            assert proc.returncode == 0, f"shard {k}/2 exited {proc.returncode}:\n{outputs[k][-4000:]}"

        client = MlflowClient(info.uri)
        experiment = client.get_experiment_by_name(config.study)
        assert experiment is not None
        runs = client.search_runs([experiment.experiment_id], max_results=1000)
        by_key: dict[tuple, list] = {}
        for run in runs:
            tags = run.data.tags
            if "strategy" not in tags:  # a study's parent run, not a grid point
                continue
            key = (tags["strategy"], int(tags["n"]), int(tags["l"]), int(tags["seed"]))
            by_key.setdefault(key, []).append(run)
        assert set(by_key) == set(grid)
        for key, found in by_key.items():  # one run per grid point: no shard ran another's point too
            assert [r.info.status for r in found] == ["FINISHED"], (key, [r.info.status for r in found])
            assert "iou_tumour" in found[0].data.metrics
        for k in (1, 2):  # each run is reported by the process of the shard it belongs to, and only there
            mine = {by_key[key][0].info.run_id for key in shard_of(grid, (k, 2))}
            theirs = {by_key[key][0].info.run_id for key in shard_of(grid, (3 - k, 2))}
            assert mine and all(run_id in outputs[k] for run_id in mine), (k, outputs[k][-3000:])
            assert not any(run_id in outputs[k] for run_id in theirs), (k, outputs[k][-3000:])
    finally:
        stop_server(root)
    assert status(root) is None
    assert _members(postmaster) == [] and not (pg.data / "postmaster.pid").exists()
    for port in (info.port, pg.port):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) == errno.ECONNREFUSED
