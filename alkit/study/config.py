"""The study config: one YAML file (see ``experiments/*.yaml``), validated in full before any work.

Three steps, all before anything is read or written beside the config:

1. the file: UTF-8 YAML, one mapping, no key given twice;
2. the schema (:mod:`alkit.study.schema`, pydantic): every key at every depth is known (a typo is
   refused with the closest valid name), of its type and in its range; the task named by ``task.kind``
   (default ``segmentation``, any task registered in the ``alkit.tasks`` entry-point group) validates
   its own ``task:`` parameters and ``cohort.ground_truth`` against its declared schemas;
3. what a schema cannot say: strategies are registered and their parameters accepted, selector options,
   slides and the other input paths exist, the prototype strategy's ``prototypes``, the task's own rules
   (:meth:`alkit.al.task.Task.check_config`: ground-truth paths, prototype and acquisition rules), and
   with ``embedding.stores`` every slide's store (:mod:`alkit.study.stores`).

Every problem is one :class:`ConfigError` line naming the file, the dotted key path and the reason.
Paths are resolved against the config file's folder.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from alkit.al.task import DEFAULT_TASK, Task, TaskConfigError, TaskError, TaskSettings, available_tasks, task_class
from alkit.al.uncertainty import mc_samples_for
from alkit.embeddings.cohort import expand_slide_paths
from alkit.captions.images import ImagePrep
from alkit.errors import AlkitError
from alkit.plugins import plugin_entry
from alkit.prototypes.build import ClassQuery
from alkit.prototypes.prototype_set import PrototypeError
from alkit.selection.regions import SELECTOR_OPTIONS, check_selector_options
from alkit.selection.strategy import ENTRY_POINT_GROUP as STRATEGIES, StrategyError, available_strategies, get_strategy
from alkit.study.schema import StudySchema, closest, describe, keys_of, task_schemas
from alkit.study.stores import GRID_KEYS, GivenStores, check_prototype_encoder, find_stores

KNOWN_KEYS = tuple(keys_of(StudySchema))
#: parameters the study itself gives these strategies (not ``strategy_params``): the key that sets each
STUDY_SET = {"prototype": {"prototypes": "prototypes", "selector": "selector", "selector_options": "selector_options"},
             "uncertainty": {"task": "task", "selector": "selector", "selector_options": "selector_options",
                             "measure": "loop.acquisition.measure", "mc_samples": "loop.acquisition.mc_samples"}}


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
    #: the checked stores of ``embedding.stores`` (None: the study embeds its slides)
    stores: GivenStores | None = None
    #: the config as validated, every default filled in (task parameters included): what a run's key
    #: hashes, so a config that spells out a default and one that leaves it out are the same study
    resolved: dict = field(default_factory=dict)

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


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last silently)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _read(path: Path) -> dict:
    """The config file as a mapping: UTF-8 YAML, no key twice; every problem a one-line :class:`ConfigError`."""
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a BOM (some Windows editors) is no key
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a config file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: unreadable ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        line = exc.object[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} on line {line}); "
                          "save the config as UTF-8") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: unreadable YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a study config is a mapping of keys, got {type(raw).__name__}")
    return raw


def _validate(path: Path, schema: type[BaseModel], data: Any, prefix: tuple[str, ...] = (),
              unknown: str = "unknown key(s) {dotted}") -> BaseModel:
    """``data`` validated against ``schema``; its first problem is a :class:`ConfigError` (see :func:`describe`)."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe(exc, schema, prefix, unknown)}") from None


def _closest(name: str, known: list[str]) -> str:
    close = closest(name, known)
    return f"; did you mean {close!r}?" if close else ""


def _task(spec: StudySchema, raw: dict, path: Path) -> tuple[dict, type[Task], dict]:
    """The ``task:`` section, the class of its registered ``kind`` (whose schemas then validate the
    ``task:`` parameters and ``cohort.ground_truth``) and the section with every default filled in."""
    task = dict(raw.get("task") or {})
    kind = spec.task.kind
    registered = available_tasks()
    if kind not in registered:
        known = sorted(registered, key=lambda name: (name != DEFAULT_TASK, name))  # the default first
        raise ConfigError(f"{path}: key 'task.kind' must be one of {known}, got {kind!r}{_closest(kind, known)}")
    try:
        cls = task_class(kind)
    except TaskError as exc:
        raise ConfigError(f"{path}: key 'task.kind': {exc}") from None
    params_schema, truth_schema = task_schemas(cls)
    resolved = {"kind": kind, **{k: v for k, v in task.items() if k != "kind"}}
    if params_schema is not None:
        params = _validate(path, params_schema, {k: v for k, v in task.items() if k != "kind"}, ("task",),
                           unknown=f"key 'task' has unknown parameter(s) {{relative}} for task {kind!r}")
        resolved = {"kind": kind, **params.model_dump(mode="json")}
    if truth_schema is not None:
        _validate(path, truth_schema, raw["cohort"]["ground_truth"], ("cohort", "ground_truth"))
    return task, cls, resolved


def _slides(spec: StudySchema, path: Path, resolve) -> tuple[list[Path], list[Path], list[Path]]:
    found = []
    for key in ("slides", "test_slides", "validation_slides"):
        try:
            paths = expand_slide_paths([resolve(s) for s in getattr(spec.cohort, key) or []])
        except AlkitError as exc:
            raise ConfigError(f"{path}: key 'cohort.{key}': {exc}") from None
        for p in paths:
            if not p.exists():
                raise ConfigError(f"{path}: key 'cohort.{key}': {p} does not exist")
        found.append(paths)
    if not found[0]:
        raise ConfigError(f"{path}: key 'cohort.slides' names no slide")
    return found[0], found[1], found[2]


def _prototypes(raw: dict, path: Path, strategies: list[str], resolve) -> dict:
    protos = dict(raw.get("prototypes") or {})
    if "prototype" not in strategies:
        return protos
    if not protos:
        raise ConfigError(f"{path}: key 'prototypes' is required by the prototype strategy")
    exclude = protos.get("exclude", [])
    if isinstance(exclude, str):  # a file of ids (one per line, or a JSON list)
        protos["exclude"] = resolve(exclude)
        if not Path(protos["exclude"]).is_file():
            raise ConfigError(f"{path}: key 'prototypes.exclude': no file {protos['exclude']}")
    prep = protos.get("prep")
    if prep is not None:
        try:
            ImagePrep(prep.get("mode", "crop"), prep.get("size"), prep.get("scale", 1.0))
        except (AlkitError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: key 'prototypes.prep': {exc}") from None
    if "path" in protos:
        protos["path"] = resolve(protos["path"])
        if not Path(protos["path"]).is_dir():
            raise ConfigError(f"{path}: key 'prototypes.path': no prototype set folder {protos['path']}")
    elif "db" in protos:
        protos["db"] = resolve(protos["db"])
        if not Path(protos["db"]).exists():
            raise ConfigError(f"{path}: key 'prototypes.db': no caption database {protos['db']}")
        if not protos.get("classes"):
            raise ConfigError(f"{path}: key 'prototypes.classes' is required with 'prototypes.db' (class name -> "
                              "its query)")
        for name, q in protos["classes"].items():
            if not ("with" in q or "prompt" in q or "ids" in q):
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
    acquisition = dict((raw.get("loop") or {}).get("acquisition") or {"measure": "entropy"})
    measure = acquisition.get("measure", "entropy")
    try:
        samples = mc_samples_for(measure, acquisition.get("mc_samples"))
    except ValueError as exc:
        raise ConfigError(f"{path}: key 'loop.acquisition': {exc}") from None
    if samples > 0 and not task.mc_dropout:
        raise ConfigError(f"{path}: key 'loop.acquisition.measure': {measure!r} needs MC dropout, which the "
                          f"{task.name} task's model has not; use entropy, margin or least_confidence")
    return acquisition


def _selector_options(path: Path, selector: str, options: dict) -> None:
    for name in options:
        known = list(SELECTOR_OPTIONS.get(selector, {}))
        if name not in known:
            raise ConfigError(f"{path}: key 'selector_options': the {selector} selector has no option {name!r} "
                              f"(it has {', '.join(known) or 'none'}){_closest(name, known)}")
    try:
        check_selector_options(selector, options)
    except ValueError as exc:
        raise ConfigError(f"{path}: key 'selector_options': {exc}") from None


def _strategy_params(path: Path, strategies: list[str], strategy_params: dict, selector: str,
                     selector_options: dict, acquisition: dict, prototype_classes: list[str]) -> None:
    """Every strategy's parameters as the study will build it, so a bad one fails here, not mid-study:
    the initial-set strategies built as given; the prototype strategy's (built with the study's
    prototypes later) and the uncertainty acquisition's (with the study's task) checked by name, and
    the acquisition strategy built without its task."""
    for name, params in strategy_params.items():
        key = f"strategy_params.{name}"
        if name not in strategies and name != "uncertainty":
            raise ConfigError(f"{path}: key {key!r}: {name!r} is not among 'strategies' {strategies}"
                              f"{_closest(name, strategies)}")
        factory = plugin_entry(STRATEGIES, name, "strategy", StrategyError).load()
        signature = inspect.signature(factory).parameters
        study_set = STUDY_SET.get(name, {})
        accepted = [p for p in signature if p not in study_set]
        open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.values())
        for param in params:
            if param in study_set:
                raise ConfigError(f"{path}: key '{key}.{param}': the study sets it (key '{study_set[param]}')")
            if param not in accepted and not open_ended:
                raise ConfigError(f"{path}: key '{key}.{param}': the {name} strategy has no such parameter "
                                  f"(it has {', '.join(accepted) or 'none'}){_closest(param, accepted)}")
        if name not in STUDY_SET:  # the values too: built as the study will build it
            try:
                get_strategy(name, **params)
            except StrategyError as exc:
                raise ConfigError(f"{path}: key {key!r}: {exc}") from None
            continue
        classes = params.get("classes")
        if name == "prototype" and classes is not None and prototype_classes:
            if not (isinstance(classes, list) and set(map(str, classes)) <= set(prototype_classes)):
                raise ConfigError(f"{path}: key '{key}.classes' must be a list of the prototype classes "
                                  f"{prototype_classes}, got {classes!r}")
    if "uncertainty" in available_strategies():  # the acquisition of every cycle after the initial set
        try:
            get_strategy("uncertainty", **strategy_params.get("uncertainty", {}), **acquisition, selector=selector,
                         selector_options=selector_options)
        except StrategyError as exc:
            raise ConfigError(f"{path}: key 'loop.acquisition': {exc}") from None


def _output(path: Path, key: str, folder: str) -> None:
    if Path(folder).exists() and not Path(folder).is_dir():
        raise ConfigError(f"{path}: key {key!r}: {folder} is a file, not a folder")


def load_config(path: str | os.PathLike) -> StudyConfig:
    """Read and validate a study config; every problem is a :class:`ConfigError` before any work
    (nothing is read beside the config's input paths, nothing is written)."""
    path = Path(path)
    raw = _read(path)
    spec = _validate(path, StudySchema, raw)
    base = path.parent

    def resolve(p: str) -> str:
        return str(p if os.path.isabs(p) else base / p)

    task, task_cls, resolved_task = _task(spec, raw, path)
    strategies = list(spec.strategies)
    registered = available_strategies()
    for s in strategies:
        if s not in registered:
            raise ConfigError(f"{path}: key 'strategies' names unknown strategy {s!r}; available: {registered}"
                              f"{_closest(s, registered)}")
    selector = spec.selector
    selector_options = dict(raw.get("selector_options") or {})
    _selector_options(path, selector, selector_options)
    strategy_params = dict(raw.get("strategy_params") or {})
    slides, test_slides, validation_slides = _slides(spec, path, resolve)
    protos = _prototypes(raw, path, strategies, resolve)
    embedding = dict(raw["embedding"])
    if spec.embedding.stores is None:
        embedding["out"] = resolve(embedding["out"])
        _output(path, "embedding.out", embedding["out"])
    out = resolve(spec.out)
    _output(path, "out", out)
    acquisition = _acquisition(raw, path, task_cls)
    _strategy_params(path, strategies, strategy_params, selector, selector_options, acquisition,
                     sorted(protos.get("classes") or {}))
    slide_mpp = spec.cohort.slide_mpp
    settings = TaskSettings(params={k: v for k, v in task.items() if k != "kind"},
                            ground_truth=dict(raw["cohort"]["ground_truth"]), prototypes=protos,
                            acquisition=acquisition, has_validation_slides=bool(validation_slides), resolve=resolve,
                            slide_mpp=slide_mpp)
    try:
        truth = task_cls.check_config(settings)
    except TaskConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    stores = _stores(spec, embedding, path, resolve, [*slides, *test_slides, *validation_slides],  # opens slides
                     builds_prototypes="prototype" in strategies and "db" in protos)
    return StudyConfig(
        path=path, raw=raw, study=spec.study, slides=slides, test_slides=test_slides,
        ground_truth=truth, embedding=embedding, prototypes=settings.prototypes, strategies=strategies,
        selector=selector, n=list(spec.budgets.n), l=list(spec.budgets.l), seeds=list(spec.seeds),
        cycles=spec.loop.cycles, acquisition=acquisition, task=task, out=Path(out), slide_mpp=slide_mpp,
        validation_slides=validation_slides, selector_options=selector_options, strategy_params=strategy_params,
        stores=stores, resolved=_resolved(spec, resolved_task, stores))


def _stores(spec: StudySchema, embedding: dict, path: Path, resolve, slides: list[Path], *,
            builds_prototypes: bool) -> GivenStores | None:
    """With ``embedding.stores``: every slide's store found and checked (:mod:`alkit.study.stores`), the
    stores' encoder, mpp, patch and stride written into ``embedding``, and where the study builds its
    prototypes, the stores' encoder's weights looked for; None without it."""
    if spec.embedding.stores is None:
        return None
    embedding["stores"] = resolve(spec.embedding.stores)
    wanted = {k: embedding[k] for k in GRID_KEYS if embedding.get(k) is not None}  # the keys the config gives
    try:
        stores = find_stores(embedding["stores"], slides, wanted, spec.cohort.slide_mpp)
        if builds_prototypes:
            check_prototype_encoder(stores)
    except AlkitError as exc:
        raise ConfigError(f"{path}: key 'embedding.stores': {exc}") from None
    embedding |= stores.grid
    return stores


def _resolved(spec: StudySchema, task: dict, stores: GivenStores | None) -> dict:
    """The validated config with every default filled in; given stores' grid replaces the defaults."""
    resolved = spec.model_dump(mode="json") | {"task": task}
    if stores is not None:
        resolved["embedding"] |= stores.grid
    return resolved
