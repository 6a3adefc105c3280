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
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path(__file__).resolve().parent / "data"
DEFAULT_PORT = 5000  # the command line's default; the Python API defaults to a free port
PID_FILE, INFO_FILE, LOG_FILE = "server.pid", "server.json", "server.log"
DEFAULT_SHUTDOWN_TIMEOUT = 3.0  # seconds uvicorn lets open requests finish after SIGTERM
#: the PostgreSQL cluster of ``--postgres``: ROOT/postgres/ (owned by the user PostgreSQL runs as) holds
#: the cluster ``data/`` and its log; ROOT/pgpass (libpq password file) and ROOT/postgres.json stay with ROOT
PG_FOLDER, PG_PASSFILE, PG_INFO = "postgres", "pgpass", "postgres.json"
PG_USER = PG_DATABASE = "mlflow"
PG_SYSTEM_USER = "postgres"  # who runs the cluster when we are root (PostgreSQL refuses to run as root)

_children: dict[int, subprocess.Popen] = {}  # servers this process started, reaped when stopped


class ServerError(RuntimeError):
    """The server could not be started or stopped; the message says why (with its log's tail)."""


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


@dataclass(frozen=True)
class PostgresInfo:
    """A running PostgreSQL cluster of ``--postgres``: MLflow's URI (no password: libpq reads it from
    ``passfile``), its port on 127.0.0.1, the cluster folder and its log."""

    uri: str
    port: int
    data: Path
    log_path: Path
    passfile: Path
    bin_dir: Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it; another process could take it first)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _port_in_use(host: str, port: int) -> bool:
    """Whether something already accepts connections on ``port`` (so /health would not be ours)."""
    target = _client_host(host)
    with socket.socket(socket.AF_INET6 if ":" in target else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((target, port)) == 0


def _client_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to ``host`` (wildcards -> loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


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


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:]) or "(empty log)"


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


# ------------------------------------------------------------------------------------- PostgreSQL

def find_postgres_bin(bin_dir: str | os.PathLike | None = None) -> Path | None:
    """The folder of PostgreSQL's server programs (``initdb``, ``pg_ctl``): ``bin_dir`` if given, else
    the one of ``pg_ctl`` on PATH, else the newest ``/usr/lib/postgresql/VERSION/bin`` (Debian's
    ``postgresql`` package puts them there, off PATH); None when there is none."""
    def complete(folder: Path) -> bool:
        return all(os.access(folder / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres"))

    if bin_dir is not None:
        return Path(bin_dir) if complete(Path(bin_dir)) else None
    on_path = shutil.which("pg_ctl")
    if on_path and complete(Path(on_path).resolve().parent):
        return Path(on_path).resolve().parent
    versions = []
    for folder in Path("/usr/lib/postgresql").glob("*/bin"):
        version = folder.parent.name
        if complete(folder):
            versions.append((tuple(int(x) for x in re.findall(r"\d+", version)), folder))
    return max(versions)[1] if versions else None


def _pg_prefix(root: Path) -> tuple[list[str], pwd.struct_passwd | None]:
    """How to run PostgreSQL's server programs: directly, or, when we are root (PostgreSQL refuses
    to run as root), as the ``postgres`` system user through ``setpriv``. When that user cannot reach
    ``root`` (a parent folder closed to others, e.g. pytest's ``/tmp/pytest-of-root``), it also gets
    CAP_DAC_READ_SEARCH (read and traverse any folder, no writing), or CAP_DAC_OVERRIDE where the
    container allows only that, so the cluster can stay under ``root``."""
    if os.geteuid() != 0:
        return [], None
    try:
        user = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        raise ServerError(f"running as root, PostgreSQL needs the {PG_SYSTEM_USER!r} system user to run as "
                          "(Debian's postgresql package creates it); or start the server as another user") from None
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise ServerError("running as root, PostgreSQL is started as the 'postgres' user through setpriv "
                          "(util-linux), which is not installed; or start the server as another user")
    prefix = [setpriv, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups"]

    def reaches(cmd: list[str]) -> bool:  # chdir, not access(2): that one ignores capabilities
        return subprocess.run([*cmd, "/bin/sh", "-c", 'cd "$1"', "sh", str(root)], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0

    if reaches(prefix):
        return prefix, user
    # the narrowest capability that lets it through; Docker's default set lacks dac_read_search
    for cap in ("dac_read_search", "dac_override"):
        with_cap = [*prefix, f"--inh-caps=+{cap}", f"--ambient-caps=+{cap}"]
        if reaches(with_cap):
            log.info("%s cannot reach %s: running PostgreSQL with CAP_%s", PG_SYSTEM_USER, root, cap.upper())
            return with_cap, user
    raise ServerError(f"the {PG_SYSTEM_USER!r} user, which runs PostgreSQL when we are root, cannot reach {root} "
                      "(a parent folder is closed to others) and cannot be given the capability to: choose a "
                      "--root it can reach")


def _run_checked(cmd: Sequence[str], what: str, log_path: Path | None = None, env: dict | None = None,
                 timeout: float = 120.0) -> str:
    """Run a PostgreSQL program; a failure becomes a :class:`ServerError` with its output (and log)."""
    try:
        out = subprocess.run(list(cmd), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ServerError(f"{what} did not finish within {timeout:.0f} s") from None
    if out.returncode != 0:
        tail = f"\nlast lines of {log_path}:\n{_tail(log_path)}" if log_path is not None else ""
        raise ServerError(f"{what} failed (exit {out.returncode}): {(out.stderr or out.stdout).strip()}{tail}")
    return out.stdout


def _pg_env(passfile: Path) -> dict:
    """The environment of PostgreSQL's clients (and of MLflow): the password from ``passfile``."""
    return {**os.environ, "PGPASSFILE": str(passfile), "PGCONNECT_TIMEOUT": "10"}


def postgres_running(root: str | os.PathLike) -> bool:
    """Whether the cluster of ``root/postgres`` runs (``pg_ctl status``)."""
    root = Path(root).absolute()
    data = root / PG_FOLDER / "data"
    bin_dir = _recorded_pg_bin(root)
    if not (data / "PG_VERSION").exists() or bin_dir is None:
        return False
    prefix, _ = _pg_prefix(root)
    return subprocess.run([*prefix, str(bin_dir / "pg_ctl"), "status", "-D", str(data)], stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def _recorded_pg_bin(root: Path) -> Path | None:
    try:
        return Path(json.loads((root / PG_INFO).read_text())["bin_dir"])
    except (OSError, ValueError, KeyError, TypeError):
        return find_postgres_bin()


def start_postgres(root: str | os.PathLike, port: int = 0, bin_dir: str | os.PathLike | None = None,
                   timeout: float = 60.0) -> PostgresInfo:
    """Start (creating it on first use) the PostgreSQL cluster of ``root/postgres``, listening on
    127.0.0.1 only (no Unix socket) at ``port`` (0: a free one), with a database and owner ``mlflow``
    whose generated password is in ``root/pgpass`` (mode 0600, libpq's format; the URI carries none).
    A cluster of ``root`` that already runs is reused. Raises :class:`ServerError` with the reason."""
    root = Path(root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    found = find_postgres_bin(bin_dir)
    if found is None:
        raise ServerError("PostgreSQL's server programs (initdb, pg_ctl) were not found"
                          + (f" in {bin_dir}" if bin_dir else " on PATH or in /usr/lib/postgresql/*/bin")
                          + ": install them (Debian: apt-get install postgresql) or pass --pg-bin DIR")
    bin_dir = found
    prefix, user = _pg_prefix(root)
    folder, passfile = root / PG_FOLDER, root / PG_PASSFILE
    data, log_path = folder / "data", folder / "postgres.log"
    folder.mkdir(mode=0o700, exist_ok=True)
    if user is not None:
        os.chown(folder, user.pw_uid, user.pw_gid)
    if not (data / "PG_VERSION").exists():
        _init_cluster(bin_dir, prefix, user, folder, passfile)
    pg_ctl = str(bin_dir / "pg_ctl")
    if postgres_running(root):
        try:
            port = int(json.loads((root / PG_INFO).read_text())["port"])
        except (OSError, ValueError, KeyError, TypeError):
            raise ServerError(f"a PostgreSQL cluster runs from {data} but {root / PG_INFO} does not say on which "
                              f"port; stop it ({pg_ctl} stop -D {data}) and start again") from None
        log.info("reusing the PostgreSQL cluster running from %s on port %d", data, port)
    else:
        if port == 0:
            port = free_port()
        elif _port_in_use("127.0.0.1", port):
            raise ServerError(f"port {port} on 127.0.0.1 is already in use; choose another --pg-port (0 picks a "
                              "free one)")
        started = time.monotonic()
        _run_checked([*prefix, pg_ctl, "start", "-D", str(data), "-l", str(log_path), "-w", "-t",
                      str(int(timeout)), "-o", f"-p {port}"], f"starting PostgreSQL from {data}", log_path,
                     timeout=timeout + 10)
        log.info("PostgreSQL (%s) answered on 127.0.0.1:%d after %.1f s", data, port, time.monotonic() - started)
    (root / PG_INFO).write_text(json.dumps({"port": port, "data": str(data), "bin_dir": str(bin_dir),
                                            "log": str(log_path), "user": PG_USER, "database": PG_DATABASE},
                                           indent=2))
    try:
        _ensure_database(bin_dir, port, passfile)
    except ServerError:
        stop_postgres(root)
        raise
    uri = f"postgresql+psycopg://{PG_USER}@127.0.0.1:{port}/{PG_DATABASE}"  # psycopg 3, whatever SQLAlchemy's default
    return PostgresInfo(uri=uri, port=port, data=data, log_path=log_path, passfile=passfile, bin_dir=bin_dir)


def _init_cluster(bin_dir: Path, prefix: list[str], user: pwd.struct_passwd | None, folder: Path,
                  passfile: Path) -> None:
    """``initdb`` a new cluster into ``folder/data``: superuser ``mlflow`` with a generated password
    (scram-sha-256 for every connection), loopback TCP only. It is built in ``data.partial`` and renamed
    at the end, so a start killed half-way leaves nothing that looks like a cluster."""
    partial, data = folder / "data.partial", folder / "data"
    if partial.exists():
        shutil.rmtree(partial)
    password = secrets.token_urlsafe(24)  # [A-Za-z0-9_-]: nothing to escape in the pgpass file
    tmp = passfile.with_name(passfile.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"127.0.0.1:*:*:{PG_USER}:{password}\n")
    os.replace(tmp, passfile)
    pwfile = folder / "initdb.pw"  # read by initdb, which runs as the cluster's owner
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    if user is not None:
        os.chown(pwfile, user.pw_uid, user.pw_gid)
    try:
        log.info("creating a PostgreSQL cluster in %s", data)
        _run_checked([*prefix, str(bin_dir / "initdb"), "-D", str(partial), "-U", PG_USER, "--pwfile", str(pwfile),
                      "--auth=scram-sha-256", "-E", "UTF8", "--no-locale"], f"initdb of {partial}")
    finally:
        pwfile.unlink(missing_ok=True)
    with open(partial / "postgresql.conf", "a") as conf:  # owned by the cluster's user; root may append
        conf.write("\n# mlflow_setup: loopback TCP only, no Unix socket\n"
                   "listen_addresses = '127.0.0.1'\nunix_socket_directories = ''\n")
    os.rename(partial, data)


def _ensure_database(bin_dir: Path, port: int, passfile: Path) -> None:
    """Create database ``mlflow`` unless it exists (a start killed before this step is repaired here)."""
    env = _pg_env(passfile)
    conn = ["-h", "127.0.0.1", "-p", str(port), "-U", PG_USER]
    exists = _run_checked([str(bin_dir / "psql"), *conn, "-d", "postgres", "-tAc",
                           f"SELECT 1 FROM pg_database WHERE datname = '{PG_DATABASE}'"],
                          "checking for the mlflow database", env=env)
    if exists.strip() != "1":
        _run_checked([str(bin_dir / "createdb"), *conn, PG_DATABASE], "creating the mlflow database", env=env)


def stop_postgres(root: str | os.PathLike, timeout: float = 60.0) -> bool:
    """Stop the cluster of ``root/postgres`` ("fast": open sessions are ended); False if it was not running."""
    root = Path(root).absolute()
    if not postgres_running(root):
        return False
    prefix, _ = _pg_prefix(root)
    data = root / PG_FOLDER / "data"
    _run_checked([*prefix, str(_recorded_pg_bin(root) / "pg_ctl"), "stop", "-D", str(data), "-m", "fast", "-w",
                  "-t", str(int(timeout))], f"stopping PostgreSQL ({data})", root / PG_FOLDER / "postgres.log",
                 timeout=timeout + 10)
    log.info("stopped PostgreSQL (%s)", data)
    return True


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


def _pg_status(root: Path) -> str | None:
    """"PostgreSQL on 127.0.0.1:PORT running" when the cluster of ``root`` runs, else None."""
    root = Path(root).absolute()
    if not (root / PG_FOLDER / "data").exists() or not postgres_running(root):
        return None
    try:
        port = json.loads((root / PG_INFO).read_text())["port"]
    except (OSError, ValueError, KeyError, TypeError):
        port = "?"
    return f"PostgreSQL on 127.0.0.1:{port} running"


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
