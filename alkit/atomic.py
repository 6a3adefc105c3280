"""Atomic file writes: write a temporary file in the target's folder, then rename it over the target.

A reader (or a rerun after a crash) therefore sees either the old file or the complete new one,
never a half-written file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

#: the name of :func:`atomic_path`'s temporary files and :func:`staging_folder`'s folders:
#: ``.NAME@HOST.PID.TAG.tmp.SUFFIX`` (TAG: 8 hex digits; no suffix for folders; names of older alkit
#: versions lack ``@HOST``)
TEMP_NAME = re.compile(r"^\.(?P<stem>.*)\.(?P<pid>\d+)\.(?P<tag>[0-9a-f]{8})\.tmp(?P<suffix>\.[^.]*)?$")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path next to ``path`` (same suffix, so writers that look at it still work);
    renames it to ``path`` when the block succeeds and removes it when the block fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # our own unique name (not mkstemp, whose files are private 0600): normal permissions after rename
    tmp_path = temp_name(path)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def temp_name(path: str | os.PathLike) -> Path:
    """A fresh temporary name next to ``path``, matching :data:`TEMP_NAME` (hidden, so readers skip it)."""
    path = Path(path)
    return path.with_name(f".{path.stem}@{_host()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


def is_hidden(path: str | os.PathLike) -> bool:
    """Whether ``path``'s name starts with a dot: alkit's temporary files and shard folders, editors' and
    macOS's side files (``._x.h5``). Readers that list folders skip such names."""
    return Path(path).name.startswith(".")


def visible(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """``paths`` without hidden names (see :func:`is_hidden`), in the given order."""
    return [Path(p) for p in paths if not is_hidden(p)]


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (ours, or another user's, counts as running)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process (or we cannot tell): keep its file
    return True


def _dead_writers(folder: Path) -> Iterator[tuple[Path, re.Match]]:
    """The entries of ``folder`` named like :data:`TEMP_NAME` whose writer was a process of this machine
    that is no longer running. Another machine's (another ``@HOST`` on a shared folder: its pid says
    nothing here) and live writers' are never listed; a name without ``@HOST`` (an older alkit's) counts
    as this machine's."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        m = TEMP_NAME.match(entry.name)
        if not m:
            continue
        _, at, host = m.group("stem").rpartition("@")
        if (at and host != _host()) or process_alive(int(m.group("pid"))):
            continue
        yield entry, m


def remove_stale_temps(folder: str | os.PathLike, suffix: str | None = None) -> list[Path]:
    """Remove the temporary files that crashed writers left in ``folder`` (optionally only ``suffix``):
    see :func:`_dead_writers` for whose. Returns the files removed."""
    folder = Path(folder)
    removed: list[Path] = []
    for entry, m in _dead_writers(folder):
        if (suffix is not None and m.group("suffix") != suffix) or not entry.is_file():
            continue
        try:
            entry.unlink()
        except FileNotFoundError:
            continue
        removed.append(entry)
    if removed:
        log.info("%s: removed %d temporary file(s) of interrupted runs", folder, len(removed))
    return removed


@contextlib.contextmanager
def staging_folder(parent: str | os.PathLike, label: str) -> Iterator[Path]:
    """Yields a fresh hidden folder in ``parent`` for files that are written, used (uploaded), then
    dropped; removes it when the block ends, however it ends. Its name is a :func:`temp_name` of
    ``label`` (host and process in it), so :func:`remove_stale_staging` can clear what a killed process
    left there without touching a live one's, on this or another machine sharing the folder."""
    folder = temp_name(Path(parent) / label)
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.mkdir()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def remove_stale_staging(parent: str | os.PathLike, label: str) -> list[Path]:
    """Remove the ``label`` staging folders (see :func:`staging_folder`) in ``parent`` whose process on
    this host is gone (a SIGKILL or power cut skips the clean-up). Returns the folders removed."""
    parent = Path(parent)
    removed: list[Path] = []
    for entry, m in _dead_writers(parent):
        if m.group("stem") == f"{label}@{_host()}" and not m.group("suffix") and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    if removed:
        log.info("%s: removed %d staging folder(s) of interrupted runs", parent, len(removed))
    return removed


def _host() -> str:
    """This machine's name as staging folders carry it (no dots or slashes, so names stay parseable)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()) or "host"
