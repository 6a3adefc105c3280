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

if TYPE_CHECKING:
    from pytorch_lightning.loggers import MLFlowLogger

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
"""The embedded store: an SQLite file ``mlflow.db`` in the working directory (no server)."""

VERSION_TAG = "alkit.version"
VERSION_PARAM = "alkit_version"
SUPERSEDED_TAG = "alkit.superseded_by"
ERROR_TAG = "alkit.error"

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

    def lightning_logger(self, prefix: str = "") -> MLFlowLogger:
        """A Lightning ``MLFlowLogger`` that writes training curves into this run (same tracking URI).

        The logger never ends the run (the :class:`Tracker` does) and does not change MLflow's global
        tracking URI. Metric steps are Lightning's global steps, which restart with every ``fit``: give
        each fit its own ``prefix`` (e.g. ``"cycle2"`` -> ``cycle2-train_loss``) to keep curves apart.
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

        def finalize(self, status: str = "success") -> None:
            checkpoints = getattr(self, "_checkpoint_callback", None)
            if checkpoints is not None:  # log_model=True: upload the best checkpoints, as upstream does
                self._scan_and_log_checkpoints(checkpoints)

    return RunLogger


class Tracker:
    """The runs of one study (an MLflow experiment, created when missing) in one tracking store."""

    def __init__(self, experiment: str, tracking_uri: str | None = None,
                 artifact_location: str | None = None) -> None:
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        if self.tracking_uri.startswith(("http://", "https://")):
            _check_server(self.tracking_uri)
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

    def _search(self, key: Mapping[str, Any], finished_only: bool) -> list:
        """All active runs whose tags equal ``key`` (newest first), following MLflow's result pages."""
        wanted = {str(k): str(v) for k, v in key.items()}
        clauses = ["attributes.status = 'FINISHED'"] if finished_only else []
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

    @contextmanager
    def start_run(self, name: str, key: Mapping[str, str], params: Mapping[str, Any],
                  tags: Mapping[str, str] | None = None) -> Iterator[RunHandle]:
        """Record one run: ``with tracker.start_run(name, key, params) as run: run.log_metrics(...)``.

        ``key`` is stored as tags (what :meth:`finished_run` matches) and as params, beside ``params``
        (a param given in both must agree) and the alkit version (param ``alkit_version``, tag
        ``alkit.version``). The run ends FINISHED when the block completes, FAILED when it raises
        (tag ``alkit.error`` holds the exception; it is re-raised), KILLED on Ctrl-C. Earlier runs with
        the same key that are not FINISHED are left as they are, tagged ``alkit.superseded_by=<new id>``.
        A ``mlflow.parentRunId`` tag nests the run under another one in the UI.
        """
        key = {str(k): str(v) for k, v in key.items()}
        merged = _params(params)
        for k, v in _params(key).items():
            if k in merged and merged[k] != v:
                raise ValueError(f"param {k!r} is {merged[k]!r} but the run key says {v!r}")
            merged[k] = v
        merged[VERSION_PARAM] = alkit.__version__
        earlier = [r.info.run_id for r in self._search(key, finished_only=False)
                   if r.info.status != RunStatus.to_string(RunStatus.FINISHED)]
        all_tags = {**_tags(tags or {}), **_tags(key), VERSION_TAG: alkit.__version__}
        run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=name)
        handle = RunHandle(self.client, run.info.run_id, self.experiment_name, self.tracking_uri)
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


__all__ = ["DEFAULT_TRACKING_URI", "RunHandle", "Tracker", "config_hash", "resolve_tracking_uri"]
