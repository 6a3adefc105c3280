"""Start, check and stop a local MLflow tracking server (``mlflow server``) for alkit studies.

    python -m mlflow_setup.server start [--root DIR] [--host 127.0.0.1] [--port 5000] [--postgres]
    python -m mlflow_setup.server status [--root DIR]
    python -m mlflow_setup.server stop [--root DIR]

Everything of one server lives in its root folder (default ``mlflow_setup/data/``): the SQLite
backend ``mlflow.db``, the artefacts ``artifacts/`` (served through the server, so clients need no
access to the folder), the log ``server.log``, the process id ``server.pid`` and ``server.json``
(URI, port, host). ``--postgres`` keeps the runs in a PostgreSQL cluster of its own instead
(``ROOT/postgres/``, loopback only, started and stopped with the server); ``--backend-store-uri`` /
``--artifacts-destination`` point a server at an existing database and an object store (README.md).

The server runs in its own process group (session), so ``stop`` ends it together with the workers
it spawned: SIGTERM, then SIGKILL after a grace period. Two things keep start and stop prompt:
MLflow's job runner (about eight extra Python processes for GenAI jobs that alkit never submits) is
off unless ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION`` is set, and uvicorn is told to cancel requests
still open a few seconds after SIGTERM (``--shutdown-timeout``; without it a half-sent upload
keeps it waiting for ever). Linux and macOS.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mlflow_setup.common import ServerError, _client_host, _port_in_use, _tail, free_port
from mlflow_setup.postgres import PG_FOLDER, PostgresInfo, _pg_status, start_postgres, stop_postgres

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path(__file__).resolve().parent / "data"
DEFAULT_PORT = 5000  # the command line's default; the Python API defaults to a free port
PID_FILE, INFO_FILE, LOG_FILE = "server.pid", "server.json", "server.log"
DEFAULT_SHUTDOWN_TIMEOUT = 3.0  # seconds uvicorn lets open requests finish after SIGTERM

_children: dict[int, subprocess.Popen] = {}  # servers this process started, reaped when stopped


@dataclass(frozen=True)
class ServerInfo:
    """A running server: the URI clients use, its process id (= process group id), port and log."""

    uri: str
    pid: int
    port: int
    log_path: Path
    host: str = "127.0.0.1"
    root: Path | None = None
    postgres: "PostgresInfo | None" = None  # the cluster of ``--postgres``, else None


def _url(host: str, port: int) -> str:
    host = _client_host(host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _healthy(uri: str, timeout: float = 2.0) -> bool:
    """Whether ``GET <uri>/health`` answers 200 (proxies bypassed: the server is local)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{uri}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _redact(text: str) -> str:
    """A URI without the password of its ``user:password@`` part (for files others may read)."""
    return re.sub(r"(://[^:/@\s]+):[^@/\s]+@", r"\1:***@", text)


def _live_group_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that are still running (zombies do not count)."""
    proc = Path("/proc")
    if not proc.is_dir():  # macOS: ask the kernel whether anything is left in the group
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, _ppid, pgrp = stat[stat.rfind(")") + 2:].split()[:3]
        if int(pgrp) == pgid and state not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def _is_mlflow_server(pid: int) -> bool:
    """Whether ``pid`` runs and is an ``mlflow server`` (guards against a recycled process id)."""
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # someone else's process: not ours to stop
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        try:
            words = cmdline.read_bytes().split(b"\0")
        except OSError:
            return False
        return b"mlflow" in words and b"server" in words
    return True


def _read_info(root: Path) -> ServerInfo | None:
    """The server recorded in ``root`` (pid file + info file), whether or not it still runs."""
    try:
        pid = int((root / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        meta = json.loads((root / INFO_FILE).read_text())
    except (OSError, ValueError):
        meta = {}
    port = int(meta.get("port", 0))
    host = meta.get("host", "127.0.0.1")
    return ServerInfo(uri=meta.get("uri", _url(host, port)), pid=pid, port=port, log_path=root / LOG_FILE,
                      host=host, root=root)


def _forget(root: Path) -> None:
    for name in (PID_FILE, INFO_FILE):
        (root / name).unlink(missing_ok=True)


def status(root: str | os.PathLike = DEFAULT_ROOT) -> ServerInfo | None:
    """The server running from ``root``, or None (a pid file of a dead process is removed)."""
    root = Path(root).absolute()
    info = _read_info(root)
    if info is None:
        return None
    if not _is_mlflow_server(info.pid):
        log.info("removing the stale pid file of process %d in %s", info.pid, root)
        _forget(root)
        return None
    return info


def _with_shutdown_timeout(extra: Sequence[str], seconds: float) -> list[str]:
    """``extra`` with uvicorn's ``--timeout-graceful-shutdown`` added to its ``--uvicorn-opts`` (or a new
    ``--uvicorn-opts``), unless it picks another server (gunicorn, waitress) or sets the timeout itself."""
    extra = list(extra)
    if seconds <= 0 or any(a.split("=")[0] in ("--gunicorn-opts", "--waitress-opts") for a in extra):
        return extra
    opt = f"--timeout-graceful-shutdown {seconds:g}"
    for i, arg in enumerate(extra):
        if arg == "--uvicorn-opts" and i + 1 < len(extra):
            if "--timeout-graceful-shutdown" not in extra[i + 1]:
                extra[i + 1] = f"{extra[i + 1]} {opt}"
            return extra
        if arg.startswith("--uvicorn-opts="):
            if "--timeout-graceful-shutdown" not in arg:
                extra[i] = f"{arg} {opt}"
            return extra
    return [*extra, "--uvicorn-opts", opt]


def start_server(root: str | os.PathLike = DEFAULT_ROOT, host: str = "127.0.0.1", port: int = 0,
                 timeout: float = 60.0, *, backend_store_uri: str | None = None,
                 artifacts_destination: str | None = None, workers: int = 1, postgres: bool = False,
                 pg_port: int = 0, pg_bin: str | os.PathLike | None = None,
                 shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT, extra_args: Sequence[str] = ()) -> ServerInfo:
    """Start ``mlflow server`` in the background and wait until ``/health`` answers.

    Defaults: SQLite backend ``root/mlflow.db``, artefacts served from ``root/artifacts``, bound to
    loopback, ``port=0`` picks a free port, one worker (enough for a study; ``workers`` for more).
    ``postgres=True`` first starts the PostgreSQL cluster of ``root/postgres`` (:func:`start_postgres`:
    created on first use, 127.0.0.1 only, ``pg_port`` 0 picks a free port) and keeps the runs there.
    ``shutdown_timeout``: seconds uvicorn lets open requests finish after SIGTERM (0: uvicorn's default,
    for ever). ``extra_args`` go to ``mlflow server`` unchanged (e.g. ``--allowed-hosts``). MLflow's job
    runner stays off unless ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION`` is set in the environment. Raises
    :class:`ServerError` with the tail of ``root/server.log`` if the server exits or stays silent for
    ``timeout`` seconds (it is then stopped, with its PostgreSQL), or if a server from ``root`` runs already.
    """
    root = Path(root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    running = status(root)
    if running is not None:
        raise ServerError(f"an MLflow server from {root} is already running at {running.uri} "
                          f"(pid {running.pid}); stop it first")
    if postgres and backend_store_uri:
        raise ServerError("--postgres starts a database of its own: give it or --backend-store-uri, not both")
    if postgres and importlib.util.find_spec("psycopg") is None:
        raise ServerError("--postgres needs MLflow's PostgreSQL driver psycopg 3: pip install 'psycopg[binary]'")
    if port == 0:
        port = free_port(_client_host(host))
    elif _port_in_use(host, port):
        raise ServerError(f"port {port} on {_client_host(host)} is already in use; choose another --port "
                          "(0 picks a free one)")
    env = dict(os.environ)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # GenAI jobs: ~8 processes alkit never uses
    pg = None
    if postgres:
        pg = start_postgres(root, port=pg_port, bin_dir=pg_bin, timeout=timeout)
        env["PGPASSFILE"] = str(pg.passfile)  # libpq (under psycopg) reads the password there
    backend = pg.uri if pg is not None else backend_store_uri or f"sqlite:///{root / 'mlflow.db'}"
    artifacts = artifacts_destination or str(root / "artifacts")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
           "--serve-artifacts", "--artifacts-destination", artifacts,
           "--host", host, "--port", str(port), "--workers", str(workers),
           *_with_shutdown_timeout(extra_args, shutdown_timeout)]
    log_path = root / LOG_FILE
    uri = _url(host, port)
    started = time.monotonic()
    with open(log_path, "wb") as log_file:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, cwd=root, stdin=subprocess.DEVNULL, stdout=log_file, env=env,
                                stderr=subprocess.STDOUT, start_new_session=True)
    _children[proc.pid] = proc
    info = ServerInfo(uri=uri, pid=proc.pid, port=port, log_path=log_path, host=host, root=root, postgres=pg)
    (root / PID_FILE).write_text(f"{proc.pid}\n")
    (root / INFO_FILE).write_text(json.dumps({"uri": uri, "pid": proc.pid, "port": port, "host": host,
                                              "backend_store_uri": _redact(backend),
                                              "artifacts_destination": _redact(artifacts),
                                              "postgres": pg is not None,
                                              "command": [_redact(word) for word in cmd]}, indent=2))
    log.info("starting MLflow server (pid %d) at %s, log %s", proc.pid, uri, log_path)
    while True:
        if proc.poll() is not None:
            _children.pop(proc.pid, None)
            _forget(root)
            if pg is not None:
                stop_postgres(root)
            raise ServerError(f"the MLflow server exited with code {proc.returncode} before answering "
                              f"at {uri}; last lines of {log_path}:\n{_tail(log_path)}")
        if _healthy(uri, timeout=1.0):
            break
        if time.monotonic() - started > timeout:
            stop_server(info)
            raise ServerError(f"the MLflow server did not answer at {uri}/health within {timeout:.0f} s "
                              f"(stopped it); last lines of {log_path}:\n{_tail(log_path)}")
        time.sleep(0.1)
    log.info("MLflow server at %s answered after %.1f s", uri, time.monotonic() - started)
    return info


def stop_server(root_or_info: str | os.PathLike | ServerInfo = DEFAULT_ROOT, grace: float = 10.0) -> bool:
    """Stop the server started from a root folder (or described by a :class:`ServerInfo`): SIGTERM to
    its process group, SIGKILL to whatever is left after ``grace`` seconds; removes the pid file. Then
    the PostgreSQL cluster of ``root/postgres``, if one runs (also when the MLflow server had died).
    Returns False when neither was running."""
    if isinstance(root_or_info, ServerInfo):
        root = root_or_info.root
        pid = root_or_info.pid
    else:
        root = Path(root_or_info).absolute()
        recorded = _read_info(root)
        pid = recorded.pid if recorded else None
    stopped = _stop_mlflow(root, pid, grace)
    if root is not None and (root / PG_FOLDER / "data").exists():
        stopped = stop_postgres(root) or stopped
    return stopped


def _stop_mlflow(root: Path | None, pid: int | None, grace: float) -> bool:
    """Stop the ``mlflow server`` process ``pid`` and its process group (see :func:`stop_server`)."""
    if pid is None or not _is_mlflow_server(pid):
        if root is not None:
            _forget(root)
        _reap(pid)
        return False
    pgid = os.getpgid(pid)
    own_group = pgid == pid and pgid != os.getpgrp()  # started by start_server: a session of its own

    def send(sig: signal.Signals) -> None:
        try:
            if own_group:
                os.killpg(pgid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def gone(deadline: float) -> bool:
        while time.monotonic() < deadline:
            _reap(pid)
            if not (_live_group_members(pgid) if own_group else _is_mlflow_server(pid)):
                return True
            time.sleep(0.1)
        return False

    log.info("stopping MLflow server (pid %d)", pid)
    send(signal.SIGTERM)
    if not gone(time.monotonic() + grace):
        log.warning("MLflow server (pid %d) still running after %.0f s: killing it", pid, grace)
        send(signal.SIGKILL)
        if not gone(time.monotonic() + 5.0):
            raise ServerError(f"could not stop the MLflow server (process group {pgid})")
    _children.pop(pid, None)
    if root is not None:
        _forget(root)
    return True


def _reap(pid: int | None) -> None:
    """Collect the exit status of a server this process started (so it leaves no zombie)."""
    child = _children.get(pid) if pid is not None else None
    if child is not None and child.poll() is not None:
        _children.pop(pid, None)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mlflow_setup.server start|stop|status``; prints the URI, exit code 1 on failure."""
    parser = argparse.ArgumentParser(prog="python -m mlflow_setup.server", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("start", "start a server in the background and wait until it answers"),
                       ("stop", "stop the server started from --root"),
                       ("status", "say whether a server from --root runs, and where")):
        sub = commands.add_parser(name, help=text, epilog=(
            "Other options are handed to `mlflow server` (e.g. --allowed-hosts, --gunicorn-opts)."
            if name == "start" else None))
        sub.add_argument("--root", type=Path, default=DEFAULT_ROOT,
                         help="folder of the database, artefacts, log and pid file (default: %(default)s)")
    start = commands.choices["start"]
    start.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s, this machine only)")
    start.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port (default: %(default)s)")
    start.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for /health (default: %(default)s)")
    start.add_argument("--workers", type=int, default=1, help="server worker processes (default: %(default)s)")
    start.add_argument("--backend-store-uri",
                       help="e.g. postgresql+psycopg://user@db/mlflow (default: ROOT/mlflow.db)")
    start.add_argument("--postgres", action="store_true",
                       help="keep the runs in a PostgreSQL cluster of its own in ROOT/postgres (created on first "
                            "use, 127.0.0.1 only; stopped by stop), for concurrent writers such as study shards")
    start.add_argument("--pg-port", type=int, default=0, help="PostgreSQL's port on 127.0.0.1 (default: a free one)")
    start.add_argument("--pg-bin", help="folder of initdb and pg_ctl (default: PATH, else /usr/lib/postgresql/*/bin)")
    start.add_argument("--shutdown-timeout", type=float, default=DEFAULT_SHUTDOWN_TIMEOUT,
                       help="seconds uvicorn lets open requests finish after SIGTERM (default: %(default)s)")
    start.add_argument("--artifacts-destination", help="e.g. s3://bucket/mlflow (default: ROOT/artifacts)")
    commands.choices["stop"].add_argument("--grace", type=float, default=10.0,
                                          help="seconds between SIGTERM and SIGKILL (default: %(default)s)")
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "start":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        if args.command == "start":
            info = start_server(args.root, host=args.host, port=args.port, timeout=args.timeout,
                                backend_store_uri=args.backend_store_uri,
                                artifacts_destination=args.artifacts_destination, workers=args.workers,
                                postgres=args.postgres, pg_port=args.pg_port, pg_bin=args.pg_bin,
                                shutdown_timeout=args.shutdown_timeout, extra_args=extra)
            print(info.uri)
            database = (f"PostgreSQL on 127.0.0.1:{info.postgres.port} ({info.postgres.data}), "
                        if info.postgres else "")
            print(f"# pid {info.pid}, {database}log {info.log_path}; use it with: "
                  f"export MLFLOW_TRACKING_URI={info.uri}", file=sys.stderr)
        elif args.command == "stop":
            print("stopped" if stop_server(args.root, grace=args.grace) else f"no server running from {args.root}")
        else:
            info = status(args.root)
            database = _pg_status(args.root)
            if info is None:
                print(f"no server running from {args.root}" + (f" ({database})" if database else ""))
                return 1
            health = "answering" if _healthy(info.uri) else "NOT answering"
            print(f"{info.uri} (pid {info.pid}, {health}; log {info.log_path})"
                  + (f"; {database}" if database else ""))
    except (ServerError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
