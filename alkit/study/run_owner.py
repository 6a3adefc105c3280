"""Who owns a tracked run, and whether it is still alive: the context tags ``mlflow.start_run`` sets, and
the owner tags and heartbeat that let a resumed study tell a crashed run (a phantom) from a live one
(see :mod:`alkit.study.tracking`)."""

from __future__ import annotations

import functools
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path

from alkit.atomic import process_alive
from alkit.errors import AlkitError

HOST_TAG = "alkit.host"
PID_TAG = "alkit.pid"
PID_START_TAG = "alkit.pid_start"
HEARTBEAT_TAG = "alkit.heartbeat"
DEFAULT_STALE_AFTER = 24 * 3600.0
"""Seconds without a heartbeat after which a RUNNING run of another host counts as abandoned."""


def system_tags() -> dict[str, str]:
    """The tags ``mlflow.start_run`` sets from the context: ``mlflow.user``, ``mlflow.source.name`` and
    ``mlflow.source.type`` (MLflow's own context providers, :func:`mlflow.tracking.context.registry.resolve_tags`),
    and ``mlflow.source.git.commit`` / ``.branch`` / ``.repoURL`` of the *working directory* (where
    the study's config and data usually live) when it is in a git repository; none outside one."""
    return dict(_context_tags(os.getcwd()))


@functools.cache
def _context_tags(cwd: str) -> tuple[tuple[str, str], ...]:
    from mlflow.tracking.context.git_context import GitRunContext
    from mlflow.tracking.context.registry import resolve_tags
    from mlflow.utils.git_utils import get_git_branch, get_git_commit, get_git_repo_url
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_BRANCH, MLFLOW_GIT_COMMIT, MLFLOW_GIT_REPO_URL

    tags = resolve_tags(ignore=[GitRunContext])  # MLflow's git provider looks at sys.argv[0], not the data
    commit = get_git_commit(cwd)
    if commit:
        tags[MLFLOW_GIT_COMMIT] = commit
        for name, value in ((MLFLOW_GIT_BRANCH, get_git_branch(cwd)), (MLFLOW_GIT_REPO_URL, get_git_repo_url(cwd))):
            if value:
                tags[name] = value
    return tuple(sorted((str(k), str(v)) for k, v in tags.items()))


def _process_start(pid: int) -> str:
    """A process's start time (clock ticks since boot, from ``/proc``), "" where it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]  # field 22: starttime (the name may hold spaces)
    except (OSError, IndexError):
        return ""


def owner_tags() -> dict[str, str]:
    """The tags that say which process owns a run, and that it is alive now (the heartbeat)."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()), PID_START_TAG: _process_start(os.getpid()),
            HEARTBEAT_TAG: f"{time.time():.0f}"}


def abandoned(tags: Mapping[str, str], start_time_ms: int | None, stale_after: float) -> str | None:
    """Why a RUNNING run with these tags has no living owner, or None when it may have one: on this
    host, its pid is not running (or runs another process, by its start time); elsewhere (or without
    owner tags, as older alkit wrote) its last heartbeat (else its start) is older than ``stale_after``."""
    host, pid, started = tags.get(HOST_TAG), tags.get(PID_TAG, ""), tags.get(PID_START_TAG, "")
    if host == socket.gethostname() and pid.isdigit():
        now = _process_start(int(pid))
        alive = process_alive(int(pid)) and (not started or not now or now == started)
        return None if alive else f"its process {pid} on {host} is gone"
    try:
        beat = float(tags[HEARTBEAT_TAG])
    except (KeyError, ValueError):
        beat = (start_time_ms or 0) / 1000
    age = time.time() - beat
    if age > stale_after:
        return f"no heartbeat for {age / 3600:.1f} h (owner {pid or '?'} on {host or 'an unknown host'})"
    return None


def stale_after_seconds(value: float | None) -> float:
    if value is not None:
        return float(value)
    env = os.environ.get("ALKIT_HEARTBEAT_TIMEOUT")
    try:
        return float(env) if env else DEFAULT_STALE_AFTER
    except ValueError:
        raise AlkitError(f"ALKIT_HEARTBEAT_TIMEOUT must be a number of seconds, got {env!r}") from None
