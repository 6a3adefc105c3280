"""`alkit compare` from the command line against a real MLflow server on loopback: interrupted with Ctrl-C
(SIGINT) mid-run, killed (SIGKILL) mid-run, then resumed. The resumed command finishes the grid without
rerunning finished runs, and MLflow shows what happened: KILLED for the Ctrl-C'd run (and its parent), FAILED
for the run a SIGKILL left RUNNING (marked on resume, its owner being gone), FINISHED for the rest."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from alkit.atomic import TEMP_NAME
from alkit.synthetic import SyntheticCohort
from mlflow_setup.server import start_server, stop_server

REPO = Path(__file__).resolve().parents[2]
STUDY = "cli-kill-resume"
SEEDS = [0, 1, 2]


@pytest.fixture
def server(tmp_path):
    """A server of this test's own (never shared: the test's assertions count every run on it)."""
    info = start_server(tmp_path / "server", port=0, timeout=120)
    try:
        yield info
    finally:
        stop_server(info)


def alkit_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "alkit", *args]


def env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1"}


def write_study(folder: Path) -> Path:
    """A tiny cohort made by `alkit synth` and a random-only study over it: 3 seeds, one cycle, a short fit."""
    done = subprocess.run(alkit_command("synth", str(folder / "cohort"), "--slides", "3", "--size", "2048",
                                        "--seed", "2", "-q"), cwd=REPO, env=env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    cohort = SyntheticCohort.load(folder / "cohort")
    tumour = [s for s in cohort.slides if s.has_tumour]
    assert len(tumour) == 2
    rel = lambda p: os.path.relpath(p, folder)  # noqa: E731
    config = {
        "study": STUDY,
        "cohort": {"slides": [rel(s.path) for s in cohort.slides if s is not tumour[-1]],
                   "test_slides": [rel(tumour[-1].path)], "ground_truth": {"synthetic": "cohort"}},
        "embedding": {"encoder": "handcrafted", "mpp": 0.5, "patch": 64, "workers": 0, "accelerator": "cpu",
                      "out": "embeddings"},
        "strategies": ["random"], "selector": "standard", "budgets": {"n": [1], "l": [512]}, "seeds": SEEDS,
        "loop": {"cycles": 1}, "task": {"max_epochs": 4, "min_epochs": 4, "patience": 1}, "out": "results",
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def grid_runs(client: MlflowClient) -> list:
    """The study's nested runs (every try of every grid point), oldest first."""
    experiment = client.get_experiment_by_name(STUDY)
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    return [r for r in runs if r.data.tags.get("alkit.role") != "study" and "mlflow.parentRunId" in r.data.tags]


def parents(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name(STUDY)
    return client.search_runs([experiment.experiment_id], "tags.`alkit.role` = 'study'")


def default_sigint() -> None:
    """Run in the child before exec: SIGINT back to its default, as in a terminal. A shell starting a job in
    the background (CI runners do) ignores SIGINT, children inherit that, and Python then installs no
    KeyboardInterrupt handler: Ctrl-C would be ignored, which is not what these tests are about."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_compare(config: Path, uri: str) -> subprocess.Popen:
    return subprocess.Popen(alkit_command("compare", str(config), "--tracking-uri", uri, "-q"), cwd=REPO, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)


def stop_mid_run(proc: subprocess.Popen, client: MlflowClient, finished: int, sig: int) -> str:
    """Wait until ``finished`` grid runs are FINISHED and the next one is RUNNING, send ``sig``; returns the
    id of the run that was RUNNING."""
    deadline = time.monotonic() + 600
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"compare ended (exit {proc.returncode}) first: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("no run started in time")
        runs = grid_runs(client)
        done = [r for r in runs if r.info.status == "FINISHED"]
        running = [r for r in runs if r.info.status == "RUNNING"]
        if len(done) == finished and running:
            proc.send_signal(sig)
            return running[0].info.run_id
        assert len(done) <= finished, "missed the moment: a further run finished"
        time.sleep(0.2)


def test_compare_interrupted_killed_and_resumed(server, tmp_path):
    config = write_study(tmp_path)
    client = MlflowClient(server.uri)

    # 1. Ctrl-C while the second run trains: exit 130, that run and the parent KILLED, the first FINISHED
    proc = start_compare(config, server.uri)
    try:
        interrupted = stop_mid_run(proc, client, finished=1, sig=signal.SIGINT)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "alkit: interrupted: compare stopped (the files it finished are complete)"
    status = {r.info.run_id: r.info.status for r in grid_runs(client)}
    assert status[interrupted] == "KILLED" and sorted(status.values()) == ["FINISHED", "KILLED"]
    first = next(run_id for run_id, s in status.items() if s == "FINISHED")
    (parent,) = parents(client)
    assert parent.info.status == "KILLED" and "KeyboardInterrupt" in parent.data.tags["alkit.error"]
    assert not [p for p in (tmp_path / "results").rglob("*") if TEMP_NAME.match(p.name)]

    # 2. resumed, then SIGKILLed while the third run trains: nothing can mark that run, it stays RUNNING
    proc = start_compare(config, server.uri)
    try:
        orphan = stop_mid_run(proc, client, finished=2, sig=signal.SIGKILL)
        killed_pid = proc.pid
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert client.get_run(orphan).info.status == "RUNNING"
    assert client.get_run(parent.info.run_id).info.status == "RUNNING"  # the resumed study ran again

    # 3. resumed to the end: the orphan is FAILED (its owner is gone), the finished runs are not rerun
    done = subprocess.run(alkit_command("compare", str(config), "--tracking-uri", server.uri, "-q"), cwd=REPO,
                          env=env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    runs = grid_runs(client)
    by_status: dict[str, list] = {}
    for r in runs:
        by_status.setdefault(r.info.status, []).append(r)
    assert sorted(by_status) == ["FAILED", "FINISHED", "KILLED"]
    assert [r.info.run_id for r in by_status["KILLED"]] == [interrupted]
    assert [r.info.run_id for r in by_status["FAILED"]] == [orphan]
    assert client.get_run(orphan).data.tags["alkit.error"] == \
        f"abandoned while RUNNING: its process {killed_pid} on {socket.gethostname()} is gone"
    finished = by_status["FINISHED"]
    assert sorted(int(r.data.tags["seed"]) for r in finished) == SEEDS  # each grid point finished exactly once
    assert first in {r.info.run_id for r in finished}  # the run finished before Ctrl-C was kept, not rerun
    assert len(runs) == len(SEEDS) + 2  # 3 finished + the KILLED and the FAILED try, nothing else
    (parent,) = parents(client)  # one parent across the three commands, FINISHED with the grid
    assert parent.info.status == "FINISHED"
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in runs)
    # what the user sees: the summary table over the three seeds and where the study is in MLflow
    assert "| random | 1 | 512 | 0 |" in done.stdout
    assert f"MLflow UI:     open {server.uri}/#/experiments/" in done.stdout
    assert (tmp_path / "results" / "summary.csv").is_file()
    assert len(list((tmp_path / "results" / "pools").glob("random-n1-l512-s*.json"))) == len(SEEDS)
    assert not [p for p in (tmp_path / "results").rglob("*") if TEMP_NAME.match(p.name)]
