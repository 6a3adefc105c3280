"""The PostgreSQL cluster of ``python -m mlflow_setup.server start --postgres``: created under
``ROOT/postgres/`` on first use, loopback TCP only, a generated password in a libpq password file, run as
the ``postgres`` system user when we are root."""

from __future__ import annotations

import json
import logging
import os
import pwd
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mlflow_setup.common import ServerError, _port_in_use, _tail, free_port

log = logging.getLogger(__name__)

#: the PostgreSQL cluster of ``--postgres``: ROOT/postgres/ (owned by the user PostgreSQL runs as) holds
#: the cluster ``data/`` and its log; ROOT/pgpass (libpq password file) and ROOT/postgres.json stay with ROOT
PG_FOLDER, PG_PASSFILE, PG_INFO = "postgres", "pgpass", "postgres.json"
PG_USER = PG_DATABASE = "mlflow"
PG_SYSTEM_USER = "postgres"  # who runs the cluster when we are root (PostgreSQL refuses to run as root)


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
