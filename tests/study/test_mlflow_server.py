"""mlflow_setup.server: a real ``mlflow server`` on a free loopback port, a tiny comparison tracked
through it, the runs read back with the MLflow client; start.sh / stop.sh as a user runs them, with a
request still open at stop (it must not need SIGKILL), and a clean stop (process gone, port free).
Each test starts what it needs: the module's shared server is never stopped by a test."""

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
from mlflow_setup.server import (ServerError, ServerInfo, _live_group_members, _with_shutdown_timeout, start_server,
                                 status, stop_server)

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


def test_the_server_runs_without_mlflows_job_runner(server):
    """MLflow's GenAI job runner (huey consumers) is off: the group is the server and its uvicorn worker."""
    commands = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in _live_group_members(server.pid)]
    assert len(commands) == 2 and not any(b"huey" in c or b"_job_runner" in c for c in commands), commands
    assert b"--timeout-graceful-shutdown" in b" ".join(commands)


def test_shutdown_timeout_is_added_to_uvicorns_options_only():
    assert _with_shutdown_timeout([], 3.0) == ["--uvicorn-opts", "--timeout-graceful-shutdown 3"]
    assert _with_shutdown_timeout(["--uvicorn-opts", "--log-level debug"], 2.5) == [
        "--uvicorn-opts", "--log-level debug --timeout-graceful-shutdown 2.5"]
    assert _with_shutdown_timeout(["--uvicorn-opts=--timeout-graceful-shutdown 9"], 3) == [
        "--uvicorn-opts=--timeout-graceful-shutdown 9"]
    assert _with_shutdown_timeout(["--gunicorn-opts", "--timeout 60"], 3) == ["--gunicorn-opts", "--timeout 60"]
    assert _with_shutdown_timeout(["--allowed-hosts", "a"], 0) == ["--allowed-hosts", "a"]


def test_scripts_start_and_stop_promptly_even_with_a_request_open(tmp_path):
    root = tmp_path / "scripts"
    started = time.monotonic()
    out = subprocess.run(["sh", str(REPO / "mlflow_setup" / "start.sh"), "--root", str(root), "--port", "0"],
                         capture_output=True, text=True, timeout=180)
    start_s = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    info = status(root)
    assert info is not None and out.stdout.strip() == info.uri
    port, pid = info.port, info.pid
    try:
        # a client that sent the headers of a request but not its whole body (an upload under way):
        # uvicorn waits for it for ever unless told otherwise, and stop then had to SIGKILL
        client = socket.create_connection(("127.0.0.1", port))
        client.sendall(b"POST /api/2.0/mlflow/experiments/create HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                       b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"na")
        time.sleep(0.5)
        started = time.monotonic()
        out = subprocess.run(["sh", str(REPO / "mlflow_setup" / "stop.sh"), "--root", str(root), "--grace", "20"],
                             capture_output=True, text=True, timeout=60)
        stop_s = time.monotonic() - started
        print(f"\nstart.sh answered after {start_s:.1f} s, stop.sh (one request open) took {stop_s:.1f} s")
        assert out.returncode == 0 and out.stdout.strip() == "stopped", out.stderr
        assert "killing it" not in out.stderr and stop_s < 15, (stop_s, out.stderr)
        assert "timeout graceful shutdown exceeded" in (root / "server.log").read_text()
        client.close()
    finally:
        stop_server(root)  # only does something when the script did not
    assert _live_group_members(pid) == []
    assert not (root / "server.pid").exists()
    with socket.socket() as sock:  # nobody accepts connections on the port any more
        assert sock.connect_ex(("127.0.0.1", port)) == errno.ECONNREFUSED
    with socket.socket() as sock:  # and it can be bound again
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
    assert stop_server(root) is False  # stopping twice is harmless


def test_postgres_and_a_backend_uri_exclude_each_other(tmp_path):
    with pytest.raises(ServerError, match="not both"):
        start_server(tmp_path, postgres=True, backend_store_uri="sqlite:///x.db")
    assert not (tmp_path / "server.pid").exists() and not (tmp_path / "postgres").exists()
