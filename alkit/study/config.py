"""The study config: one YAML file (see ``experiments/*.yaml``), validated in full before any work.

Keys common to every study are checked here; the task named by ``task.kind`` (default
``segmentation``, any task registered in the ``alkit.tasks`` entry-point group) checks its own parts —
its ``task:`` parameters, ``cohort.ground_truth`` and its prototype rules
(:meth:`alkit.al.task.Task.check_config`). Every problem is one :class:`ConfigError` naming the file,
the key and the reason. Paths are resolved against the config file's folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from alkit.al.task import DEFAULT_TASK, Task, TaskConfigError, TaskError, TaskSettings, available_tasks, task_class
from alkit.al.uncertainty import mc_samples_for
from alkit.embeddings.cohort import expand_slide_paths
from alkit.captions.images import ImagePrep
from alkit.errors import AlkitError
from alkit.prototypes.build import ClassQuery
from alkit.prototypes.prototype_set import PrototypeError
from alkit.selection.regions import check_selector_options
from alkit.selection.strategy import StrategyError, available_strategies, get_strategy

KNOWN_KEYS = ("study", "cohort", "embedding", "prototypes", "strategies", "strategy_params", "selector",
              "selector_options", "budgets", "seeds", "loop", "task", "out")
SELECTORS = ("standard", "adaptive")


class ConfigError(AlkitError, ValueError):
    """An invalid study config: names the file, the key and the reason."""


@dataclass
class StudyConfig:
    """A validated study; paths are resolved against the config file's folder."""

    path: Path
    raw: dict
    study: str
    slides: list[Path]
    test_slides: list[Path]
    ground_truth: dict
    embedding: dict
    prototypes: dict
    strategies: list[str]
    selector: str
    n: list[int]
    l: list[int]
    seeds: list[int]
    cycles: int
    acquisition: dict
    task: dict
    out: Path
    slide_mpp: float | None = None
    validation_slides: list[Path] = field(default_factory=list)
    selector_options: dict = field(default_factory=dict)  # e.g. the reference's adaptive rules
    strategy_params: dict = field(default_factory=dict)  # strategy name -> its parameters
    extra: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """The registered name of the study's task (``task.kind``)."""
        return self.task.get("kind", DEFAULT_TASK)

    @property
    def task_class(self) -> type[Task]:
        """The class of the study's task (found by name in the ``alkit.tasks`` entry-point group)."""
        return task_class(self.kind)

    @property
    def task_params(self) -> dict:
        """The ``task:`` parameters without ``kind``."""
        return {k: v for k, v in self.task.items() if k != "kind"}


def _get(raw: Mapping, key: str, path: Path, kind: type | tuple, default: Any = ...) -> Any:
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            if default is ...:
                raise ConfigError(f"{path}: missing key '{key}'")
            return default
        node = node[part]
    if not isinstance(node, kind) or isinstance(node, bool) and kind in (int, float, (int, float)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ConfigError(f"{path}: key '{key}' must be {names}, got {node!r}")
    return node


def _int_list(raw: Mapping, key: str, path: Path, positive: bool = True) -> list[int]:
    values = _get(raw, key, path, (list, int))
    values = [values] if isinstance(values, int) else values
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"{path}: key '{key}' must be a non-empty list of integers, got {values!r}")
    if positive and min(values) <= 0:
        raise ConfigError(f"{path}: key '{key}' must hold positive integers, got {values!r}")
    return list(values)


def _as_list(value: Any) -> list:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def _read(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: unreadable YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a study config is a mapping of keys, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(KNOWN_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; known: {sorted(KNOWN_KEYS)}")
    return raw


def _task(raw: dict, path: Path) -> tuple[dict, type[Task]]:
    task = dict(_get(raw, "task", path, dict, {}))
    kind = task.get("kind", DEFAULT_TASK)
    registered = available_tasks()
    if kind not in registered:
        known = sorted(registered, key=lambda name: (name != DEFAULT_TASK, name))  # the default first
        raise ConfigError(f"{path}: key 'task.kind' must be one of {known}, got {kind!r}")
    try:
        return task, task_class(kind)
    except TaskError as exc:
        raise ConfigError(f"{path}: key 'task.kind': {exc}") from None


def _slides(raw: dict, path: Path, resolve) -> tuple[list[Path], list[Path], list[Path]]:
    try:
        slides = expand_slide_paths([resolve(s) for s in _as_list(_get(raw, "cohort.slides", path, (str, list)))])
        test = _get(raw, "cohort.test_slides", path, (str, list), None)
        test_slides = expand_slide_paths([resolve(s) for s in _as_list(test)]) if test else []
        val = _get(raw, "cohort.validation_slides", path, (str, list), None)
        validation_slides = expand_slide_paths([resolve(s) for s in _as_list(val)]) if val else []
    except AlkitError as exc:
        raise ConfigError(f"{path}: key 'cohort.slides': {exc}") from None
    for p in slides + test_slides + validation_slides:
        if not p.exists():
            raise ConfigError(f"{path}: key 'cohort.slides': {p} does not exist")
    return slides, test_slides, validation_slides


def _prototypes(raw: dict, path: Path, strategies: list[str], resolve) -> dict:
    protos = dict(_get(raw, "prototypes", path, dict, {}))
    if "prototype" not in strategies:
        return protos
    if not protos:
        raise ConfigError(f"{path}: key 'prototypes' is required by the prototype strategy")
    exclude = protos.get("exclude", [])
    if isinstance(exclude, str):  # a file of ids (one per line, or a JSON list)
        protos["exclude"] = resolve(exclude)
        if not Path(protos["exclude"]).is_file():
            raise ConfigError(f"{path}: key 'prototypes.exclude': no file {protos['exclude']}")
    elif not isinstance(exclude, list) or not all(isinstance(i, (str, int)) for i in exclude):
        raise ConfigError(f"{path}: key 'prototypes.exclude' must be a list of image ids or an id file, got {exclude!r}")
    prep = protos.get("prep")
    if prep is not None:
        if not isinstance(prep, dict) or set(prep) - {"mode", "size", "scale"}:
            raise ConfigError(f"{path}: key 'prototypes.prep' is a mapping of 'mode' (crop | resize), 'size' (px) "
                              f"and 'scale', got {prep!r}")
        try:
            ImagePrep(prep.get("mode", "crop"), prep.get("size"), prep.get("scale", 1.0))
        except (AlkitError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: key 'prototypes.prep': {exc}") from None
    if "path" in protos:
        protos["path"] = resolve(protos["path"])
    elif "db" in protos:
        protos["db"] = resolve(protos["db"])
        classes = _get(raw, "prototypes.classes", path, dict)
        for name, q in classes.items():
            if not isinstance(q, dict) or not ("with" in q or "prompt" in q or "ids" in q):
                raise ConfigError(f"{path}: key 'prototypes.classes.{name}' needs 'with' (keyword groups), "
                                  "'prompt' (retrieval) or 'ids'")
            try:
                ClassQuery.from_config(name, q)
            except PrototypeError as exc:
                raise ConfigError(f"{path}: {exc}") from None
    else:
        raise ConfigError(f"{path}: key 'prototypes' needs 'path' (a built set) or 'db' + 'classes'")
    return protos


def _acquisition(raw: dict, path: Path, task: type[Task]) -> dict:
    acquisition = dict(_get(raw, "loop.acquisition", path, dict, {"measure": "entropy"}))
    measure = acquisition.get("measure", "entropy")
    try:
        samples = mc_samples_for(measure, acquisition.get("mc_samples"))
    except ValueError as exc:
        raise ConfigError(f"{path}: key 'loop.acquisition': {exc}") from None
    if samples > 0 and not task.mc_dropout:
        raise ConfigError(f"{path}: key 'loop.acquisition.measure': {measure!r} needs MC dropout, which the "
                          f"{task.name} task's model has not; use entropy, margin or least_confidence")
    return acquisition


def load_config(path: str | os.PathLike) -> StudyConfig:
    """Read and validate a study config; every problem is a :class:`ConfigError` before any work."""
    path = Path(path)
    raw = _read(path)
    base = path.parent

    def resolve(p: str) -> str:
        return str(p if os.path.isabs(p) else base / p)

    task, task_cls = _task(raw, path)
    strategies = _get(raw, "strategies", path, list)
    registered = available_strategies()
    for s in strategies:
        if s not in registered:
            raise ConfigError(f"{path}: key 'strategies' names unknown strategy {s!r}; available: {registered}")
    selector = _get(raw, "selector", path, str, "standard")
    if selector not in SELECTORS:
        raise ConfigError(f"{path}: key 'selector' must be 'standard' or 'adaptive', got {selector!r}")
    strategy_params = dict(_get(raw, "strategy_params", path, dict, {}))
    for name, params in strategy_params.items():
        if name not in strategies and name != "uncertainty":
            raise ConfigError(f"{path}: key 'strategy_params.{name}': {name!r} is not among 'strategies' {strategies}")
        if not isinstance(params, dict):
            raise ConfigError(f"{path}: key 'strategy_params.{name}' must be a mapping of parameters, got {params!r}")
        if name not in ("prototype", "uncertainty"):  # those two need the study's prototypes / task: checked there
            try:
                get_strategy(name, **params)
            except StrategyError as exc:
                raise ConfigError(f"{path}: key 'strategy_params.{name}': {exc}") from None
    selector_options = dict(_get(raw, "selector_options", path, dict, {}))
    try:
        check_selector_options(selector, selector_options)
    except ValueError as exc:
        raise ConfigError(f"{path}: key 'selector_options': {exc}") from None
    slides, test_slides, validation_slides = _slides(raw, path, resolve)
    protos = _prototypes(raw, path, strategies, resolve)
    embedding = dict(_get(raw, "embedding", path, dict))
    _get(raw, "embedding.encoder", path, str)
    embedding["out"] = resolve(_get(raw, "embedding.out", path, str))
    cycles = _get(raw, "loop.cycles", path, int, 3)
    if cycles < 1:
        raise ConfigError(f"{path}: key 'loop.cycles' must be >= 1, got {cycles}")
    acquisition = _acquisition(raw, path, task_cls)
    slide_mpp = _get(raw, "cohort.slide_mpp", path, (int, float), None)
    settings = TaskSettings(params={k: v for k, v in task.items() if k != "kind"},
                            ground_truth=dict(_get(raw, "cohort.ground_truth", path, dict)), prototypes=protos,
                            acquisition=acquisition, has_validation_slides=bool(validation_slides), resolve=resolve,
                            slide_mpp=slide_mpp)
    try:
        truth = task_cls.check_config(settings)
    except TaskConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return StudyConfig(
        path=path, raw=raw, study=_get(raw, "study", path, str), slides=slides, test_slides=test_slides,
        ground_truth=truth, embedding=embedding, prototypes=settings.prototypes, strategies=list(strategies),
        selector=selector, n=_int_list(raw, "budgets.n", path), l=_int_list(raw, "budgets.l", path),
        seeds=_int_list(raw, "seeds", path, positive=False), cycles=cycles, acquisition=acquisition, task=task,
        out=Path(resolve(_get(raw, "out", path, str))), slide_mpp=slide_mpp, validation_slides=validation_slides,
        selector_options=selector_options, strategy_params=strategy_params)
