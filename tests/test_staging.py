"""Staging folders: removed when their block ends, and only a dead process's left-overs are cleared."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from alkit.atomic import TEMP_NAME, remove_stale_staging, staging_folder


def _owner(folder: Path) -> tuple[str, str, int]:
    """``(label, host, pid)`` of a staging folder's name."""
    m = TEMP_NAME.match(folder.name)
    label, _, host = m["stem"].rpartition("@")
    return label, host, int(m["pid"])

KILLED_WRITER = """
import os, signal, sys
from alkit.atomic import staging_folder
with staging_folder(sys.argv[1], "alkit-export") as folder:
    (folder / "png").mkdir()
    (folder / "png" / "slide.png").write_bytes(b"half")
    os.kill(os.getpid(), signal.SIGKILL)  # no clean-up runs: the folder stays behind
"""


def test_a_staging_folder_is_hidden_named_for_its_owner_and_removed_however_the_block_ends(tmp_path):
    with staging_folder(tmp_path / "out", "alkit-export") as folder:
        (folder / "file.txt").write_text("x")
        assert folder.parent == tmp_path / "out" and folder.name.startswith(".")
        assert TEMP_NAME.match(folder.name)  # the tests' "nothing temporary left" check sees it too
        label, host, pid = _owner(folder)
        assert label == "alkit-export" and host and pid == os.getpid()
    assert not folder.exists()
    with pytest.raises(RuntimeError):
        with staging_folder(tmp_path / "out", "alkit-export") as failed:
            raise RuntimeError("upload failed")
    assert not failed.exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_only_the_folders_of_dead_processes_on_this_host_with_the_label_are_removed(tmp_path):
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], capture_output=True, timeout=60)
    assert done.returncode == -signal.SIGKILL
    (killed,) = [p for p in tmp_path.iterdir() if TEMP_NAME.match(p.name)]
    assert (killed / "png" / "slide.png").is_file()
    _, host, dead_pid = _owner(killed)
    elsewhere = tmp_path / f".alkit-export@not-{host}.{dead_pid}.0123abcd.tmp"  # another machine's, same pid
    other_label = tmp_path / f".alkit-summary@{host}.{dead_pid}.0123abcd.tmp"
    user_folder = tmp_path / "alkit-export"  # not a staging name at all
    for folder in (elsewhere, other_label, user_folder):
        folder.mkdir()
    with staging_folder(tmp_path, "alkit-export") as live:  # ours, alive
        assert remove_stale_staging(tmp_path, "alkit-export") == [killed]
        assert live.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (elsewhere, other_label, user_folder))
    assert remove_stale_staging(tmp_path / "missing", "alkit-export") == []
    assert isinstance(killed, Path) and not killed.exists()
