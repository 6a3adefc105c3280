"""mlflow_setup.server: a real ``mlflow server`` on a free loopback port, a tiny comparison tracked
through it, the runs read back with the MLflow client, then a clean stop (process gone, port free)."""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from alkit.study.tracking import Tracker
from mlflow_setup.server import ServerError, ServerInfo, _live_group_members, start_server, stop_server

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> ServerInfo:
    """A server of its own for this module, always stopped at the end (even when a test failed)."""
    root = tmp_path_factory.mktemp("mlflow_server")
    started = time.monotonic()
    info = start_server(root, port=0, timeout=120)
    print(f"\nMLflow server answered after {time.monotonic() - started:.1f} s at {info.uri}")
    try:
        yield info
    finally:
        stop_server(info)


def test_server_tracks_a_tiny_comparison(server, tmp_path):
    assert server.uri == f"http://127.0.0.1:{server.port}"
    assert (server.root / "server.pid").read_text().strip() == str(server.pid)
    tracker = Tracker("tiny-comparison", tracking_uri=server.uri)
    grid = [(strategy, seed) for strategy in ("random", "prototype") for seed in (0, 1)]

    def run_grid() -> int:
        done = 0
        for strategy, seed in grid:
            key = {"strategy": strategy, "n": "1", "l": "4096", "seed": str(seed), "config_hash": "c0ffee"}
            if tracker.finished_run(key):
                continue
            with tracker.start_run(f"{strategy}-s{seed}", key, {"encoder": "handcrafted"}) as run:
                for cycle in range(3):
                    run.log_metrics({"iou_tumour": 0.2 * cycle + (strategy == "prototype") * 0.1,
                                     "tissue_pct": 1.0 + cycle}, step=cycle)
                run.log_dict({"strategy": strategy, "seed": seed}, "config.json")
            done += 1
        return done

    assert run_grid() == 4
    assert run_grid() == 0  # finished runs are skipped

    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("tiny-comparison")
    runs = client.search_runs([experiment.experiment_id], "tags.strategy = 'prototype'")
    assert {r.data.tags["seed"] for r in runs} == {"0", "1"}
    assert all(r.info.status == "FINISHED" and r.data.params["encoder"] == "handcrafted" for r in runs)
    history = client.get_metric_history(runs[0].info.run_id, "iou_tumour")
    assert sorted((m.step, round(m.value, 6)) for m in history) == [(0, 0.1), (1, 0.3), (2, 0.5)]
    # artefacts travel through the server into its root folder
    assert runs[0].info.artifact_uri.startswith("mlflow-artifacts:")
    local = client.download_artifacts(runs[0].info.run_id, "config.json", str(tmp_path))
    assert '"strategy": "prototype"' in Path(local).read_text()
    assert list((server.root / "artifacts").rglob("config.json"))
    summary = tracker.runs({"strategy": "random"})
    assert len(summary) == 2 and summary[0]["history"]["tissue_pct"] == [(0, 1.0), (1, 2.0), (2, 3.0)]


def test_command_line_status_and_second_start(server):
    out = subprocess.run([sys.executable, "-m", "mlflow_setup.server", "status", "--root", str(server.root)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith(f"{server.uri} (pid {server.pid}, answering")
    with pytest.raises(ServerError, match="already running"):
        start_server(server.root)


def test_a_busy_port_is_refused_before_starting(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(ServerError, match="already in use"):
            start_server(tmp_path, port=busy.getsockname()[1])
    assert not (tmp_path / "server.pid").exists()


def test_stop_ends_the_process_group_and_frees_the_port(server):
    assert _live_group_members(server.pid)
    started = time.monotonic()
    assert stop_server(server.root) is True
    print(f"\nMLflow server stopped after {time.monotonic() - started:.1f} s")
    assert _live_group_members(server.pid) == []
    assert not (server.root / "server.pid").exists()
    with socket.socket() as sock:  # nobody accepts connections on the port any more
        assert sock.connect_ex(("127.0.0.1", server.port)) == errno.ECONNREFUSED
    with socket.socket() as sock:  # and it can be bound again
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", server.port))
    assert stop_server(server.root) is False  # stopping twice is harmless
