"""MLflow's SQLite tracking store, created so that a process killed at any moment leaves either no
database or a complete one (:func:`ensure_sqlite_store`)."""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from alkit.atomic import remove_stale_temps, temp_name
from alkit.errors import AlkitError

log = logging.getLogger(__name__)


def _schema_state(path: Path) -> tuple[str | None, int, bool]:
    """``(alembic revision or None, number of runs, whether a migration's temporary tables are left)``
    of an SQLite file; ``(None, 0, False)`` for one without MLflow's schema (e.g. empty). Opening it
    also rolls back a transaction that a killed writer left in its journal."""
    con = sqlite3.connect(f"file:{quote(str(path))}?mode=rw", uri=True, timeout=60)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        revision = None
        if "alembic_version" in tables:
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
            revision = row[0] if row else None
        runs = con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] if "runs" in tables else 0
        return revision, int(runs), any(t.startswith("_alembic_tmp") for t in tables)
    except sqlite3.DatabaseError as exc:
        raise AlkitError(f"{path}: not a usable MLflow SQLite database ({exc})") from None
    finally:
        con.close()


@functools.cache
def _head_revision() -> str | None:
    """The schema revision this MLflow creates (None if it cannot be told: then any revision is fine)."""
    try:
        from mlflow.store.db.utils import _get_latest_schema_revision

        return _get_latest_schema_revision()
    except Exception:  # pragma: no cover (MLflow moved it)
        return None


def _complete(state: tuple[str | None, int, bool]) -> bool:
    revision, _, leftovers = state
    head = _head_revision()
    return revision is not None and not leftovers and (head is None or revision == head)


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``folder`` itself (no lock file), where the platform has one."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover (Windows: no lock; creation is still atomic)
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _remove_db(path: Path) -> None:
    for side in (path, Path(f"{path}-journal"), Path(f"{path}-wal"), Path(f"{path}-shm")):
        side.unlink(missing_ok=True)


def ensure_sqlite_store(path: str | os.PathLike) -> Path:
    """Make sure ``path`` is a complete MLflow SQLite store, creating it atomically when missing.

    MLflow creates its tables and then migrates them in place, so a process killed meanwhile leaves a
    half-made file on which every later run fails (``table datasets already exists``). Here the store
    is built in a temporary file beside ``path`` (tables, migrations, MLflow's default experiment with
    artefacts in ``mlruns/`` beside it) and hard-linked into place: another process sees no file or
    the whole store, never a part. A file without a schema version that holds no run (what an
    interrupted creation by an older alkit or by MLflow itself leaves: no schema version, an older one,
    or a migration's temporary tables) is removed and rebuilt, with a warning; a half-migrated one with
    runs is refused with a message naming it. Concurrent callers on one machine are
    serialised by a lock on the folder. Returns ``path``.
    """
    path = Path(path).absolute()
    if path.is_file() and _complete(_schema_state(path)):
        return path  # the usual case: no lock needed
    path.parent.mkdir(parents=True, exist_ok=True)
    with _folder_lock(path.parent):
        for suffix in (path.suffix, f"{path.suffix}-journal"):  # temp files of killed creators
            remove_stale_temps(path.parent, suffix=suffix or None)
        if path.exists():
            state = _schema_state(path)
            revision, runs, leftovers = state
            if _complete(state):
                return path  # made meanwhile by another process
            if runs:
                if not leftovers:
                    return path  # an older schema with runs: MLflow says how to upgrade it
                raise AlkitError(f"{path}: an interrupted schema migration left this MLflow database half-made "
                                 f"({runs} run(s) in it); back it up, then run 'mlflow db upgrade sqlite:///{path}'")
            log.warning("%s: an interrupted creation left this MLflow database half-made (schema %s, no runs); "
                        "rebuilding it", path, revision or "missing")
            _remove_db(path)
        else:
            _remove_db(path)  # a journal without its database is stale: it must not meet the new one
        tmp = temp_name(path)
        try:
            _build_store(tmp, path.parent / "mlruns")
            try:
                os.link(tmp, path)  # never replaces a store that appeared meanwhile
            except FileExistsError:
                pass
            except OSError:  # no hard links on this file system: a rename (the lock keeps alkit out)
                if not path.exists():
                    os.replace(tmp, path)
        finally:
            _remove_db(tmp)
        log.info("created the MLflow database %s", path)
    return path


def _build_store(path: Path, artifact_root: Path) -> None:
    """MLflow's tables, migrations and default experiment in a new SQLite file ``path``."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(f"sqlite:///{path}", str(artifact_root))
    store.engine.dispose()
