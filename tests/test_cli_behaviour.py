"""The command line as a user meets it, each command in a subprocess of its own: `alkit synth` writes a
cohort OpenSlide reads; argparse usage errors exit 2 with the usage on stderr and nothing on stdout; Ctrl-C
(SIGINT) during a long command exits 130 with one line and leaves only complete files behind;
mlflow_setup/start.sh serves MLflow over HTTP on loopback and stop.sh frees its port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import openslide
import pytest

from alkit.atomic import TEMP_NAME

REPO = Path(__file__).resolve().parents[1]


def alkit(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alkit", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def temp_files(folder: Path) -> list[Path]:
    """Files an atomic write left behind (``.NAME.PID.TAG.tmp.SUFFIX``)."""
    return [p for p in folder.rglob("*") if TEMP_NAME.match(p.name)]


def test_synth_writes_a_cohort_that_openslide_reads(tmp_path):
    out = tmp_path / "cohort"
    done = alkit("synth", str(out), "--slides", "2", "--size", "640", "--seed", "4", "-q")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("wrote 2 slides (") and str(out) in done.stdout
    slides = sorted((out / "slides").glob("*.tif"))
    assert [p.stem for p in slides] == ["synth_000", "synth_001"]
    for path in slides:
        with openslide.OpenSlide(str(path)) as slide:
            assert slide.dimensions == (640, 640)
            assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.25)
            region = slide.read_region((0, 0), 0, (640, 640))
            assert region.size == (640, 640)
    assert (out / "cohort.json").is_file() and list((out / "captions").iterdir())
    assert not temp_files(out)


@pytest.mark.parametrize("argv, complaint", [
    ((), "the following arguments are required: COMMAND"),
    (("conjure",), "invalid choice: 'conjure'"),
    (("synth",), "the following arguments are required: OUT"),
    (("synth", "OUT", "--slides", "0"), "argument --slides: must be between 1 and 1000, got 0"),
    (("synth", "OUT", "--size", "big"), "argument --size: expected a whole number, got 'big'"),
    (("synth", "OUT", "--mpp", "nan"), "argument --mpp: must be at least 0.05 and at most 10, got nan"),
    (("compare", "study.yaml", "--shard", "3/2"), "argument --shard: expected K/N with 1 <= K <= N"),
    (("select", "--stores", "s", "--strategy", "random", "--out", "o", "--selector", "best"),
     "argument --selector: invalid choice: 'best'"),
    (("embed", "x.tif", "--out", "o", "--frobnicate"), "unrecognized arguments: --frobnicate"),
])
def test_usage_errors_exit_2_with_the_usage_on_stderr(tmp_path, argv, complaint):
    done = subprocess.run([sys.executable, "-m", "alkit", *argv], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == 2, (argv, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("usage: alkit"), done.stderr
    assert lines[-1].startswith("alkit") and ": error: " in lines[-1] and complaint in lines[-1], lines[-1]
    assert not list(tmp_path.iterdir())  # nothing written (no OUT, no o/)


def default_sigint() -> None:
    """Run in the child before exec: SIGINT back to its default, as in a terminal. A shell starting a job in
    the background (CI runners do) ignores SIGINT, children inherit that, and Python then installs no
    KeyboardInterrupt handler: Ctrl-C would be ignored, which is not what these tests are about."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(condition, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the command ended (exit {proc.returncode}) before {what}: "
                                 f"{proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.1)


def test_ctrl_c_during_synth_exits_130_with_one_line_and_only_complete_files(tmp_path):
    out = tmp_path / "cohort"
    proc = subprocess.Popen([sys.executable, "-m", "alkit", "synth", str(out), "--slides", "40", "--size", "3072",
                             "-q"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    try:
        # interrupt while the second slide is being written: the first is complete, the second half done
        wait_for(lambda: (out / "slides" / "synth_000.tif").exists() and temp_files(out / "slides"), proc, 240,
                 "first slide and a second one under way")
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines() == ["alkit: interrupted: synth stopped (the files it finished are complete)"]
    assert stdout == ""
    assert not temp_files(out)  # the half-written slide went with the interrupt
    slides = sorted((out / "slides").glob("*.tif"))
    assert 1 <= len(slides) < 40
    for path in slides:  # every slide that is there is whole: its last tile of level 0 decodes
        with openslide.OpenSlide(str(path)) as slide:
            assert slide.dimensions == (3072, 3072)
            corner = slide.read_region((3072 - 256, 3072 - 256), 0, (256, 256))
            assert corner.getextrema()[3] == (255, 255)  # opaque: the tile exists


def test_start_sh_serves_health_over_http_and_stop_sh_frees_the_port(tmp_path):
    root = tmp_path / "mlflow"
    started = subprocess.run(["sh", str(REPO / "mlflow_setup" / "start.sh"), "--root", str(root), "--port", "0"],
                             capture_output=True, text=True, timeout=240)
    assert started.returncode == 0, started.stderr
    uri = started.stdout.strip().splitlines()[-1]
    assert uri.startswith("http://127.0.0.1:")
    port = int(uri.rsplit(":", 1)[1])
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=30) as answer:  # MLflow's own health endpoint
            assert answer.status == 200 and answer.read().strip() == b"OK"
        with urllib.request.urlopen(f"{uri}/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default",
                                    timeout=30) as answer:  # and its REST API answers
            assert json.loads(answer.read())["experiment"]["name"] == "Default"
    finally:
        stopped = subprocess.run(["sh", str(REPO / "mlflow_setup" / "stop.sh"), "--root", str(root)],
                                 capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{uri}/health", timeout=5)
    with socket.socket() as sock:  # the port can be bound again
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
