"""The command line: output of `alkit info` and one-line errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alkit", *args], capture_output=True, text=True, timeout=120)


def test_info_prints_vendor_size_levels_mpp_and_tissue(wsi):
    done = run_cli("info", str(wsi("CMU-1-Small-Region.svs")))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "aperio" in out and "2220 x 2967 px" in out and "0.499 x 0.499 µm/px  (from openslide)" in out
    assert "levels           1" in out
    fraction = float(out.split("tissue fraction")[1].split()[0])
    assert 0.2 < fraction < 0.5


def test_info_with_mpp_override(wsi):
    done = run_cli("info", "--mpp", "0.5", str(wsi("tcga-cr-7395-01a-01-ts1.svs")))
    assert done.returncode == 0, done.stderr
    assert "(from override)" in done.stdout and "levels           2" in done.stdout


def test_errors_are_one_line_with_exit_code_2(tmp_path, wsi):
    text = tmp_path / "notes.svs"
    text.write_text("not a slide")
    for path, reason in [(wsi("tcga-cr-7395-01a-01-ts1.svs"), "--mpp"), (text, "no TIFF header"),
                         (tmp_path / "missing.svs", "no such file")]:
        done = run_cli("info", str(path))
        assert done.returncode == 2
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("alkit: error: ")
        assert str(path) in lines[0] and reason in lines[0]
        assert done.stdout == ""
