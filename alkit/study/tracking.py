"""Experiment tracking with MLflow: one experiment per study, one run per (strategy, n, l, seed).

Where runs go (:func:`resolve_tracking_uri`): an explicit ``tracking_uri`` wins, then the
``MLFLOW_TRACKING_URI`` environment variable, then :data:`DEFAULT_TRACKING_URI`, an SQLite file
``mlflow.db`` in the working directory (MLflow's embedded store: no server needed). With an SQLite
store, artefacts of a new experiment go to ``mlruns/<experiment>/`` beside the database file unless
``artifact_location`` says otherwise; a server (``http://...``, see ``mlflow_setup/``) decides for
itself.

Every call goes through an explicit :class:`mlflow.MlflowClient`; nothing touches MLflow's global
state (active run, global tracking URI), so several trackers and nested runs in one process do not
interfere.

Runs are identified by a *key* (e.g. ``strategy, n, l, seed, config_hash``) stored as run tags
(and params). :meth:`Tracker.finished_run` finds a FINISHED run with a given key, which is what
makes a study resumable: skip what is done, redo what failed. A failed or killed run is never
deleted or changed; a new run with the same key tags it ``alkit.superseded_by`` so it can be
filtered out in the UI.

A study is one *parent run* (:meth:`Tracker.study_run`, tags ``alkit.role=study``, ``alkit.study``,
``alkit.study_config_hash``) with the grid's runs nested under it (tag ``mlflow.parentRunId``). Every
run gets the system tags ``mlflow.start_run`` would set (:func:`~alkit.study.run_owner.system_tags`: user, source name and
type, and the git commit, branch and remote of the working directory when it is in a git repository).

*Phantoms.* A process killed with SIGKILL (or a lost machine) leaves its run RUNNING. Every run
therefore records its owner: tags ``alkit.host``, ``alkit.pid``, ``alkit.pid_start`` (the process's
start time, so a reused pid is not mistaken for the owner) and ``alkit.heartbeat`` (seconds since
the epoch, updated whenever the run logs metrics, i.e. every cycle). :meth:`Tracker.fail_abandoned`
marks a RUNNING run FAILED (tag ``alkit.error`` says why, its end time is its last heartbeat) when
its owner is gone: on this host, when its pid is not running or is another process; on another host
(which cannot be asked), when its heartbeat is older than ``stale_after`` seconds
(:data:`~alkit.study.run_owner.DEFAULT_STALE_AFTER`, 24 h, or ``$ALKIT_HEARTBEAT_TIMEOUT``). A run whose owner lives is
never touched.

*Creating the SQLite store* (:func:`~alkit.study.sqlite_store.ensure_sqlite_store`) is atomic: MLflow's tables and migrations
are made in a temporary file beside the target, which is then linked into place. A database that an
older, interrupted creation left half-made (not at MLflow's schema head) and that holds no run is
rebuilt.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException

import alkit
from alkit.errors import AlkitError
from alkit.study.run_owner import HEARTBEAT_TAG, abandoned, owner_tags, stale_after_seconds, system_tags
from alkit.study.sqlite_store import ensure_sqlite_store

if TYPE_CHECKING:
    from pytorch_lightning.loggers import MLFlowLogger

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
"""The embedded store: an SQLite file ``mlflow.db`` in the working directory (no server)."""

VERSION_TAG = "alkit.version"
VERSION_PARAM = "alkit_version"
SUPERSEDED_TAG = "alkit.superseded_by"
ERROR_TAG = "alkit.error"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: nests a run under another in the UI
ROLE_TAG = "alkit.role"  # "study" on a study's parent run
STUDY_TAG = "alkit.study"
STUDY_HASH_TAG = "alkit.study_config_hash"
PARENT_SETTLE_S = 1.0
"""Seconds a process that created a study's parent run waits before checking for a concurrent one."""

try:  # MLflow's own limits; the fallbacks are the smallest values older releases used
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH
except ImportError:  # pragma: no cover
    MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH = 500, 5000
_BATCH = 100  # params / tags per log_batch call (MLflow's limit); metrics allow 1000
_METRIC_BATCH = 1000


def resolve_tracking_uri(uri: str | None) -> str:
    """The tracking URI to use: ``uri`` if given, else ``$MLFLOW_TRACKING_URI``, else the default.

    A relative ``sqlite:///`` path is made absolute against the working directory now: MLflow caches
    its stores by URI, so a relative URI would otherwise keep pointing at the folder where it was
    first used.
    """
    uri = str(uri) if uri else os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    path = _sqlite_path(uri)
    if path is not None and not uri.startswith("sqlite:////"):
        query = uri.split("?", 1)[1] if "?" in uri else ""
        uri = f"sqlite:///{path}" + (f"?{query}" if query else "")
    return uri


def config_hash(config: Mapping[str, Any]) -> str:
    """A short, stable id of a configuration: the first 12 hex digits of the SHA-256 of its canonical
    JSON (sorted keys, no whitespace). Paths become strings, tuples lists, sets sorted lists, numpy
    scalars and arrays Python numbers and lists, dataclasses dicts. ``1`` and ``1.0`` hash differently,
    as in JSON. Other types raise ``TypeError`` rather than hash a ``repr`` that may change."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_canonical)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def _canonical(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=lambda v: json.dumps(v, sort_keys=True, default=_canonical))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy scalars and arrays
        return value.tolist()
    raise TypeError(f"config_hash: cannot canonicalise a {type(value).__name__} ({value!r})")


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings become dotted keys (``encoder.spec``), so the MLflow UI can compare them."""
    flat: dict[str, Any] = {}
    for k, v in values.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            flat.update(_flatten(v, f"{name}."))
        else:
            flat[name] = v
    return flat


def _stringify(value: Any, limit: int, what: str) -> str:
    """A param or tag value as MLflow stores it: text, cut to MLflow's length limit (with a warning)."""
    if isinstance(value, (list, tuple)):
        text = json.dumps(value, default=str, ensure_ascii=False)
    else:
        text = str(value)
    if len(text) > limit:
        log.warning("%s is %d characters long; truncated to MLflow's limit of %d", what, len(text), limit)
        text = text[: limit - 3] + "..."
    return text


def _params(values: Mapping[str, Any]) -> dict[str, str]:
    return {k: _stringify(v, MAX_PARAM_VAL_LENGTH, f"param {k!r}") for k, v in _flatten(values).items()}


def _tags(values: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): _stringify(v, MAX_TAG_VAL_LENGTH, f"tag {k!r}") for k, v in values.items()}


def _filter_value(value: str) -> str | None:
    """``value`` quoted for an MLflow search filter, or None when it cannot be (both quote kinds)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    return None


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "experiment"


def _sqlite_path(uri: str) -> Path | None:
    """The database file of an ``sqlite:///`` URI (relative to the working directory), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = unquote(uri[len("sqlite:///"):].split("?", 1)[0])
    return Path(path).absolute() if path and path != ":memory:" else None


def _check_server(uri: str, timeout: float = 5.0) -> None:
    """Fail fast (instead of MLflow's minutes of retries) when an HTTP tracking server does not answer."""
    url = uri.rstrip("/") + "/health"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}) if _is_loopback(uri) else
                                         urllib.request.ProxyHandler())
    try:
        with opener.open(url, timeout=timeout) as response:
            if response.status == 200:
                return
            problem = f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):  # authenticated servers answer, but not to us: let MLflow deal with it
            return
        problem = f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        problem = str(getattr(exc, "reason", exc))
    raise AlkitError(f"MLflow tracking server {uri} does not answer ({problem}); start it "
                     "(python -m mlflow_setup.server start) or use another --tracking-uri")


def _is_loopback(uri: str) -> bool:
    return re.match(r"^https?://(127\.|localhost[:/]|localhost$|\[::1\])", uri) is not None


class RunHandle:
    """One MLflow run that is being recorded; hand it to the code that produces metrics and files."""

    def __init__(self, client: MlflowClient, run_id: str, experiment_name: str, tracking_uri: str) -> None:
        self.client = client
        self.run_id = run_id
        self.experiment_name = experiment_name
        self.tracking_uri = tracking_uri

    def log_metrics(self, metrics: Mapping[str, float | None], step: int) -> None:
        """Metrics at ``step`` (the AL cycle). ``None`` values are skipped (a metric that does not apply,
        e.g. F1 without detection); NaN is kept (MLflow stores it), ±inf is stored clamped to ±1.8e308."""
        now = int(time.time() * 1000)
        entries = [Metric(str(k), float(v), now, int(step)) for k, v in metrics.items() if v is not None]
        for i in range(0, len(entries), _METRIC_BATCH):
            self.client.log_batch(self.run_id, metrics=entries[i:i + _METRIC_BATCH])
        self.heartbeat()

    def heartbeat(self) -> None:
        """Say that the run's owner is alive (tag ``alkit.heartbeat``; see the module doc on phantoms)."""
        self.client.set_tag(self.run_id, HEARTBEAT_TAG, f"{time.time():.0f}")

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Params: nested mappings flattened to dotted keys, values as text cut to MLflow's limit.
        MLflow refuses to change a param already logged with another value."""
        entries = [Param(k, v) for k, v in _params(params).items()]
        for i in range(0, len(entries), _BATCH):
            self.client.log_batch(self.run_id, params=entries[i:i + _BATCH])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Tags (values as text, cut to MLflow's limit); unlike params they may be overwritten."""
        entries = [RunTag(k, v) for k, v in _tags(tags).items()]
        for i in range(0, len(entries), _BATCH):
            self.client.log_batch(self.run_id, tags=entries[i:i + _BATCH])

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Copy a file, or a folder's contents, into the run's artefacts (under ``artifact_path``)."""
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        elif path.is_file():
            self.client.log_artifact(self.run_id, str(path), artifact_path)
        else:
            raise FileNotFoundError(f"artefact {path} does not exist")

    def log_dict(self, obj: Any, name: str) -> None:
        """``obj`` as an artefact file ``name``: JSON, or YAML when ``name`` ends in .yaml / .yml."""
        self.client.log_dict(self.run_id, obj, name)

    def log_text(self, text: str, name: str) -> None:
        """``text`` as an artefact file ``name`` (e.g. ``summary.md``)."""
        self.client.log_text(self.run_id, text, name)

    def log_table(self, rows: list[dict[str, Any]], name: str) -> None:
        """``rows`` (one dict per row) as an MLflow table artefact ``name`` (JSON, shown in the UI's
        artefact view and comparable across runs with ``mlflow.load_table``)."""
        import pandas as pd

        self.client.log_table(self.run_id, pd.DataFrame(rows), name)

    def log_dataset(self, name: str, rows: list[dict[str, Any]], *, context: str, digest: str | None = None,
                    source: str | None = None) -> None:
        """A dataset as a run input (``mlflow.data``): ``rows`` as a pandas dataset named ``name`` with
        ``digest`` (default: MLflow's digest of the rows) and ``source`` (a file or URI it came from;
        default: the code, with the system tags), tagged ``mlflow.data.context=<context>``."""
        import mlflow.data
        import pandas as pd
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        with warnings.catch_warnings():  # MLflow registers its local-file source twice, then warns it is ambiguous
            warnings.filterwarnings("ignore", message=r".*can be interpreted in multiple ways.*")
            dataset = mlflow.data.from_pandas(pd.DataFrame(rows), source=source or CodeDatasetSource(system_tags()),
                                              name=name, digest=digest)
        entity = Dataset(**{k: v for k, v in dataset.to_dict().items()
                            if k in ("name", "digest", "source_type", "source", "schema", "profile")})
        self.client.log_inputs(self.run_id, [DatasetInput(entity, [InputTag(MLFLOW_DATASET_CONTEXT, context)])])

    def lightning_logger(self, prefix: str = "") -> MLFlowLogger:
        """A Lightning ``MLFlowLogger`` that writes training curves into this run (same tracking URI).

        The logger never ends the run (the :class:`Tracker` does) and does not change MLflow's global
        tracking URI. Metric steps are Lightning's global steps, which restart with every ``fit``: give
        each fit its own ``prefix`` (e.g. ``"cycle2"`` -> ``cycle2-train_loss``) to keep curves apart;
        ``logger.prefix`` may be changed between fits.
        """
        run = self.client.get_run(self.run_id)
        logger = _run_logger_class()(experiment_name=self.experiment_name, tracking_uri=self.tracking_uri,
                                     run_id=self.run_id, prefix=prefix)
        # Upstream resolves the run lazily and then calls mlflow.set_tracking_uri(), which also sets
        # $MLFLOW_TRACKING_URI for the whole process; resolving it here skips that global change.
        logger._experiment_id = run.info.experiment_id
        logger._initialized = True
        return logger


@functools.cache
def _run_logger_class() -> type:
    """``MLFlowLogger`` minus ending the run in ``finalize`` (imported late: Lightning pulls in torch)."""
    from pytorch_lightning.loggers import MLFlowLogger

    class RunLogger(MLFlowLogger):
        """Bound to an existing run; the run's owner, not Lightning, decides when it ends."""

        @property
        def prefix(self) -> str:
            """What every metric name starts with (joined by ``-``); set it before each fit."""
            return self._prefix

        @prefix.setter
        def prefix(self, value: str) -> None:
            self._prefix = value

        def finalize(self, status: str = "success") -> None:
            checkpoints = getattr(self, "_checkpoint_callback", None)
            if checkpoints is not None:  # log_model=True: upload the best checkpoints, as upstream does
                self._scan_and_log_checkpoints(checkpoints)

    return RunLogger


class Tracker:
    """The runs of one study (an MLflow experiment, created when missing) in one tracking store."""

    def __init__(self, experiment: str, tracking_uri: str | None = None,
                 artifact_location: str | None = None, stale_after: float | None = None) -> None:
        """``stale_after``: seconds without a heartbeat after which another host's RUNNING run is
        abandoned (default ``$ALKIT_HEARTBEAT_TIMEOUT``, else :data:`~alkit.study.run_owner.DEFAULT_STALE_AFTER`)."""
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.stale_after = stale_after_seconds(stale_after)
        if self.tracking_uri.startswith(("http://", "https://")):
            _check_server(self.tracking_uri)
        db = _sqlite_path(self.tracking_uri)
        if db is not None:
            ensure_sqlite_store(db)
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        self.experiment_name = experiment
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            db = _sqlite_path(self.tracking_uri)
            if artifact_location is None and db is not None:
                artifact_location = str(db.parent / "mlruns" / _slug(experiment))
            try:
                self.experiment_id = self.client.create_experiment(experiment, artifact_location=artifact_location)
                log.info("created MLflow experiment %r in %s", experiment, self.tracking_uri)
            except MlflowException:  # created meanwhile by another process
                found = self.client.get_experiment_by_name(experiment)
                if found is None:
                    raise
        if found is not None:
            if found.lifecycle_stage == "deleted":
                raise AlkitError(f"MLflow experiment {experiment!r} in {self.tracking_uri} is deleted; restore it "
                                 "(mlflow experiments restore) or delete it for good (mlflow gc), or pick another name")
            self.experiment_id = found.experiment_id

    def _search(self, key: Mapping[str, Any], finished_only: bool = False, status: str | None = None) -> list:
        """All active runs whose tags equal ``key`` (newest first), following MLflow's result pages;
        only FINISHED ones with ``finished_only``, only those of ``status`` if given."""
        wanted = {str(k): str(v) for k, v in key.items()}
        status = "FINISHED" if finished_only else status
        clauses = [f"attributes.status = '{status}'"] if status else []
        for k, v in wanted.items():
            quoted = _filter_value(v)
            if quoted is not None and "`" not in k:
                clauses.append(f"tags.`{k}` = {quoted}")
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], " AND ".join(clauses), max_results=1000,
                                           order_by=["attributes.start_time DESC"], page_token=token)
            runs.extend(r for r in page if all(r.data.tags.get(k) == v for k, v in wanted.items()))
            token = page.token
            if not token:
                return runs

    def finished_run(self, key: Mapping[str, str]) -> str | None:
        """The id of the newest FINISHED run whose tags match every item of ``key``, else None.
        Running, failed, killed and deleted runs do not count: a study reruns them. This is a lookup,
        not a lock: two processes working through the same grid at once may both start a key."""
        runs = self._search(key, finished_only=True)
        return runs[0].info.run_id if runs else None

    def location(self, run_id: str | None = None) -> MlflowLocation:
        """Where this experiment (and run ``run_id``) is, e.g. for the closing hint."""
        return MlflowLocation(self.tracking_uri, self.experiment_id, run_id)

    def study_run(self, study: str, config_hash: str, params: Mapping[str, Any] | None = None,
                  tags: Mapping[str, Any] | None = None) -> tuple[RunHandle, bool]:
        """The parent run of a study (``alkit.role=study``, ``alkit.study``, ``alkit.study_config_hash``):
        the existing one, found again on resume and by every process that runs a shard of it, else a
        new RUNNING one with ``params`` and ``tags``. Returns ``(run, created)``.

        Creation is race-tolerant without a lock: after creating its run, a process waits
        :data:`PARENT_SETTLE_S` (longer than a concurrent creation takes to become visible), searches
        again and keeps the oldest (by start time, then id); a process whose run is not the oldest
        deletes it. Should two parents still survive (clocks of two machines far apart, a store slower
        than the wait), :meth:`merge_study_runs` at the end of every shard moves the runs of the
        younger ones under the oldest and deletes them, so the study converges to one parent.
        """
        key = {ROLE_TAG: "study", STUDY_TAG: study, STUDY_HASH_TAG: config_hash}
        found = self._search(key)
        if found:
            return self._handle(_oldest(found).info.run_id), False
        all_tags = {**system_tags(), **_tags(tags or {}), **_tags(key), VERSION_TAG: alkit.__version__}
        mine = self.client.create_run(self.experiment_id, tags=all_tags, run_name=study).info.run_id
        time.sleep(PARENT_SETTLE_S)  # let a concurrent creation become visible before choosing
        keep = _oldest(self._search(key)).info.run_id
        if keep != mine:
            self.client.delete_run(mine)
            log.info("another process created the parent run %s of study %r meanwhile; using it", keep, study)
            return self._handle(keep), False
        handle = self._handle(mine)
        handle.log_params({**(params or {}), VERSION_PARAM: alkit.__version__})
        log.info("MLflow parent run %s of study %r created", mine, study)
        return handle, True

    def merge_study_runs(self, study: str, config_hash: str, parent: RunHandle) -> RunHandle:
        """The study's one parent run: where several parents of ``(study, config_hash)`` exist (see
        :meth:`study_run`), the runs nested under the younger ones move under the oldest, and the
        younger ones are deleted. Returns the oldest (``parent`` itself in the usual case)."""
        key = {ROLE_TAG: "study", STUDY_TAG: study, STUDY_HASH_TAG: config_hash}
        found = self._search(key)
        if not found:
            return parent
        keep = _oldest(found).info.run_id
        for other in (r.info.run_id for r in found if r.info.run_id != keep):
            for child in self._search({PARENT_TAG: other}):
                self.client.set_tag(child.info.run_id, PARENT_TAG, keep)
            try:
                self.client.delete_run(other)
                log.info("study %r: merged the duplicate parent run %s into %s", study, other, keep)
            except MlflowException:  # deleted meanwhile by another shard doing the same
                pass
        return parent if keep == parent.run_id else self._handle(keep)

    def _handle(self, run_id: str) -> RunHandle:
        return RunHandle(self.client, run_id, self.experiment_name, self.tracking_uri)

    def set_status(self, run_id: str, status: str, error: str | None = None) -> None:
        """Set a run's status: ``RUNNING`` (again), or a final one (``FINISHED``, ``FAILED``, ``KILLED``,
        with the end time now and ``error`` in tag ``alkit.error``)."""
        if error is not None:
            self.client.set_tag(run_id, ERROR_TAG, _stringify(error, MAX_TAG_VAL_LENGTH, "error"))
        if status == "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
        else:
            self.client.set_terminated(run_id, status)

    def fail_abandoned(self, key_filter: Mapping[str, str] | None = None) -> list[str]:
        """Mark FAILED the RUNNING runs matching ``key_filter`` whose owner is gone (see the module doc
        on phantoms; parent runs are left alone); returns their ids. Runs with a living owner, and
        runs of other hosts with a recent heartbeat, are not touched."""
        failed = []
        for run in self._search(key_filter or {}, status="RUNNING"):
            if run.data.tags.get(ROLE_TAG) == "study":
                continue
            reason = abandoned(run.data.tags, run.info.start_time, self.stale_after)
            if reason is not None:
                self._fail_abandoned(run, reason)
                failed.append(run.info.run_id)
        return failed

    def _fail_abandoned(self, run, reason: str) -> None:
        try:
            beat = int(float(run.data.tags[HEARTBEAT_TAG]) * 1000)
        except (KeyError, ValueError):
            beat = run.info.start_time
        self.client.set_tag(run.info.run_id, ERROR_TAG, f"abandoned while RUNNING: {reason}")
        self.client.set_terminated(run.info.run_id, "FAILED", end_time=max(beat, run.info.start_time or 0))
        log.warning("MLflow run %s (%s) was left RUNNING by a crash (%s); marked FAILED", run.info.run_name,
                    run.info.run_id, reason)

    @contextmanager
    def start_run(self, name: str, key: Mapping[str, str], params: Mapping[str, Any],
                  tags: Mapping[str, str] | None = None, parent_run_id: str | None = None) -> Iterator[RunHandle]:
        """Record one run: ``with tracker.start_run(name, key, params) as run: run.log_metrics(...)``.

        ``key`` is stored as tags (what :meth:`finished_run` matches) and as params, beside ``params``
        (a param given in both must agree) and the alkit version (param ``alkit_version``, tag
        ``alkit.version``). The run ends FINISHED when the block completes, FAILED when it raises
        (tag ``alkit.error`` holds the exception; it is re-raised), KILLED on Ctrl-C. Earlier runs with
        the same key that are not FINISHED are tagged ``alkit.superseded_by=<new id>``; those a crash
        left RUNNING are marked FAILED first (:meth:`fail_abandoned`), those whose owner still runs
        are not touched. ``parent_run_id`` nests the run under it (tag ``mlflow.parentRunId``). The run
        also gets the system tags (:func:`system_tags`) and its owner's (:func:`owner_tags`).
        """
        key = {str(k): str(v) for k, v in key.items()}
        merged = _params(params)
        for k, v in _params(key).items():
            if k in merged and merged[k] != v:
                raise ValueError(f"param {k!r} is {merged[k]!r} but the run key says {v!r}")
            merged[k] = v
        merged[VERSION_PARAM] = alkit.__version__
        earlier = []
        for r in self._search(key, finished_only=False):
            if r.info.status == RunStatus.to_string(RunStatus.FINISHED) or r.data.tags.get(ROLE_TAG) == "study":
                continue
            if r.info.status == RunStatus.to_string(RunStatus.RUNNING):
                reason = abandoned(r.data.tags, r.info.start_time, self.stale_after)
                if reason is None:
                    continue  # another process is working on it: its business
                self._fail_abandoned(r, reason)
            earlier.append(r.info.run_id)
        all_tags = {**system_tags(), **_tags(tags or {}), **_tags(key), VERSION_TAG: alkit.__version__,
                    **owner_tags()}
        if parent_run_id:
            all_tags[PARENT_TAG] = parent_run_id
        run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=name)
        handle = self._handle(run.info.run_id)
        log.info("MLflow run %s (%s) started in experiment %r", name, handle.run_id, self.experiment_name)
        try:
            for old in earlier:
                self.client.set_tag(old, SUPERSEDED_TAG, handle.run_id)
            handle.log_params(merged)
            yield handle
        except BaseException as exc:
            status = "KILLED" if isinstance(exc, (KeyboardInterrupt, GeneratorExit)) else "FAILED"
            try:
                self.client.set_tag(handle.run_id, ERROR_TAG,
                                    _stringify(f"{type(exc).__name__}: {exc}", MAX_TAG_VAL_LENGTH, "error"))
                self.client.set_terminated(handle.run_id, status)
            except Exception:  # the store itself may be what failed: keep the original error
                log.exception("could not mark MLflow run %s as %s", handle.run_id, status)
            log.info("MLflow run %s (%s) ended %s", name, handle.run_id, status)
            raise
        self.client.set_terminated(handle.run_id, "FINISHED")
        log.info("MLflow run %s (%s) finished", name, handle.run_id)

    def runs(self, key_filter: Mapping[str, str] | None = None, histories: bool = True) -> list[dict[str, Any]]:
        """Finished runs whose tags match ``key_filter``, oldest first, as plain dicts:
        ``run_id, name, start_time, end_time`` (ms since the epoch), ``params``, ``tags``, ``metrics``
        (each metric's value at its highest step), and ``history`` ``{metric: [(step, value), ...]}`` sorted by step, one
        value per step (a value logged again at the same step replaces the earlier one)."""
        found = self._search(key_filter or {}, finished_only=True)
        result = []
        for run in reversed(found):
            history: dict[str, list[tuple[int, float]]] = {}
            if histories:
                for name in run.data.metrics:
                    latest: dict[int, Metric] = {}
                    for m in self.client.get_metric_history(run.info.run_id, name):
                        if m.step not in latest or m.timestamp >= latest[m.step].timestamp:
                            latest[m.step] = m
                    history[name] = [(step, latest[step].value) for step in sorted(latest)]
            result.append({
                "run_id": run.info.run_id,
                "name": run.info.run_name,
                "start_time": run.info.start_time,
                "end_time": run.info.end_time,
                "params": dict(run.data.params),
                "tags": dict(run.data.tags),
                "metrics": dict(run.data.metrics),
                "history": history,
            })
        return result


def _oldest(runs: list):
    return min(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))


@dataclasses.dataclass(frozen=True)
class MlflowLocation:
    """Where a study is in MLflow: the tracking URI, the experiment and (optionally) a run."""

    tracking_uri: str
    experiment_id: str
    run_id: str | None = None

    @property
    def is_server(self) -> bool:
        """Whether the store is a tracking server (``http(s)://``) rather than a local file."""
        return self.tracking_uri.startswith(("http://", "https://"))

    def ui_url(self, base: str | None = None) -> str:
        """The MLflow UI's page of the run (else the experiment), on the server or on ``base``
        (where ``mlflow ui`` serves a local store; default http://127.0.0.1:5000)."""
        root = (self.tracking_uri if self.is_server else base or "http://127.0.0.1:5000").rstrip("/")
        page = f"{root}/#/experiments/{self.experiment_id}"
        return f"{page}/runs/{self.run_id}" if self.run_id else page


__all__ = ["DEFAULT_TRACKING_URI", "MlflowLocation", "RunHandle", "Tracker", "config_hash", "resolve_tracking_uri"]
