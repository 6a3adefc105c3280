"""A session's configuration (from a study YAML or from options), checked in full at ``init``, and the
loop parts it describes (cohorts, task, strategies, budget, oracles), rebuilt by every later step.

The configuration is plain JSON in ``session.json``: absolute store paths (the cohort as embedded), the
task's kind and parameters, the initial strategy and its parameters, the uncertainty acquisition, the
budget (regions per slide and their side in level-0 px or in µm), cycles, seed, the oracle (``human``:
annotators' files; ``simulated``: the ground truth answers) and the ground truth where there is one
(simulated answers, evaluation).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from alkit.al.task import Task, TaskConfigError, TaskError, TaskSettings, available_tasks, task_class
from alkit.al.uncertainty import mc_samples_for
from alkit.embeddings.cohort import Cohort
from alkit.errors import AlkitError
from alkit.selection.sizing import RegionSize, size_px_for
from alkit.selection.strategy import Budget, Strategy, StrategyError, available_strategies, get_strategy
from alkit.session.state import SessionError

log = logging.getLogger(__name__)

ORACLES = ("human", "simulated")
MAP_STRATEGIES = ("prototype", "uncertainty")  # strategies the session gives its selector


def _budget(n: int, size_px: int | None, size_um: float | None) -> dict:
    if n < 1:
        raise SessionError(f"--n must be at least 1 region per slide, got {n}")
    if (size_px is None) == (size_um is None):
        raise SessionError("give the region side once: --size (level-0 px) or --size-um (µm)")
    if size_px is not None and size_px <= 0 or size_um is not None and not size_um > 0:
        raise SessionError(f"the region side must be positive, got {size_px if size_um is None else size_um}")
    return {"n": int(n), "size_px": None if size_px is None else int(size_px),
            "size_um": None if size_um is None else float(size_um)}


def check_config(config: dict) -> dict:
    """``config`` checked by building everything it names once (cohorts, task, strategies, oracle);
    every problem is one :class:`SessionError` line. Returns ``config`` with its ground truth resolved."""
    if config["task"].get("kind") not in available_tasks():
        raise SessionError(f"--task must be one of {sorted(available_tasks())}, got {config['task'].get('kind')!r}")
    if config["oracle"] not in ORACLES:
        raise SessionError(f"--oracle must be one of {', '.join(ORACLES)}, got {config['oracle']!r}")
    if config["initial"] not in available_strategies():
        raise SessionError(f"--strategy {config['initial']!r} is not a registered strategy; available: "
                           f"{', '.join(available_strategies())}")
    if config["cycles"] < 1:
        raise SessionError(f"--cycles must be at least 1, got {config['cycles']}")
    _budget(config["budget"]["n"], config["budget"]["size_px"], config["budget"]["size_um"])
    cls = task_class(config["task"]["kind"])
    params = {k: v for k, v in config["task"].items() if k != "kind"}
    schema = getattr(cls, "params_schema", None)
    if schema is not None:
        try:
            schema.model_validate(params)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise SessionError(f"task parameter {'.'.join(map(str, first['loc'])) or '?'}: {first['msg']}") from None
    measure = config["acquisition"].get("measure", "entropy")
    try:
        samples = mc_samples_for(measure, config["acquisition"].get("mc_samples"))
    except ValueError as exc:
        raise SessionError(f"acquisition: {exc}") from None
    if samples > 0 and not cls.mc_dropout:
        raise SessionError(f"--measure {measure} needs MC dropout, which the {cls.name} task's model has not; use "
                           "entropy, margin or least_confidence")
    truth = config.get("ground_truth")
    if truth:
        settings = TaskSettings(params=params, ground_truth=dict(truth), prototypes={},
                                acquisition=dict(config["acquisition"]),
                                has_validation_slides=bool(config["validation_stores"]),
                                resolve=lambda p: str(Path(p).resolve()), slide_mpp=config.get("slide_mpp"))
        try:
            config["ground_truth"] = cls.check_config(settings)
        except TaskConfigError as exc:
            raise SessionError(f"ground truth: {exc}") from None
    elif config["oracle"] == "simulated":
        raise SessionError("--oracle simulated needs ground truth (--truth-synthetic DIR or --truth-folder DIR, or "
                           "cohort.ground_truth in the study YAML)")
    elif config["validation_stores"]:
        raise SessionError("validation slides are fully annotated slides: they need ground truth "
                           "(--truth-synthetic / --truth-folder)")
    parts = SessionParts(config)
    parts.cohort, parts.test_cohort, parts.validation_cohort  # noqa: B018 - the stores are read and checked
    parts.initial_strategy()
    parts.acquisition()
    parts.budget()
    if truth:
        parts.truth_oracle()
    return config


@dataclass
class SessionParts:
    """The loop parts of a session's configuration, built on first use."""

    config: dict

    def __post_init__(self) -> None:
        self._cohorts: dict[str, Cohort | None] = {}
        self._truth: Any = None

    # -- cohorts --------------------------------------------------------------------------------
    def _cohort(self, key: str) -> Cohort | None:
        if key not in self._cohorts:
            paths = [Path(p) for p in self.config.get(key) or []]
            missing = [p for p in paths if not p.is_file()]
            if missing:
                raise SessionError(f"{missing[0]}: embedding store of the session is gone ({key}); restore it or "
                                   "start a new session")
            self._cohorts[key] = Cohort.from_stores(paths) if paths else None
        return self._cohorts[key]

    @property
    def cohort(self) -> Cohort:
        return self._cohort("stores")  # type: ignore[return-value]

    @property
    def test_cohort(self) -> Cohort | None:
        return self._cohort("test_stores")

    @property
    def validation_cohort(self) -> Cohort | None:
        return self._cohort("validation_stores")

    # -- strategies and budget ------------------------------------------------------------------
    def initial_strategy(self) -> Strategy:
        name = self.config["initial"]
        params = dict(self.config.get("initial_params") or {})
        if name in MAP_STRATEGIES:
            params |= {"selector": self.config["selector"], "selector_options": self.config["selector_options"]}
        if name == "prototype":
            if not self.config.get("prototypes"):
                raise SessionError("the prototype strategy needs --prototypes DIR (alkit prototypes build)")
            params["prototypes"] = self.config["prototypes"]
        try:
            return get_strategy(name, **params)
        except (StrategyError, AlkitError) as exc:
            raise SessionError(f"initial strategy {name!r}: {exc}") from None

    def acquisition(self) -> Strategy | None:
        if self.config["cycles"] < 2:
            return None
        try:
            return get_strategy("uncertainty", **self.config["acquisition"], selector=self.config["selector"],
                                selector_options=self.config["selector_options"])
        except StrategyError as exc:
            raise SessionError(f"acquisition: {exc}") from None

    def region_size(self) -> RegionSize:
        """The region side as given: level-0 px, or µm (converted per slide, so a cohort mixing scanner
        resolutions gets regions of one physical size)."""
        b = self.config["budget"]
        return RegionSize(px=b["size_px"]) if b["size_px"] is not None else RegionSize(um=b["size_um"])

    def budget(self) -> Budget:
        """Regions per slide and their side in level-0 px; a side in µm in px of the cohort's first slide
        (the loop converts it per slide: :meth:`region_size`)."""
        return Budget(self.config["budget"]["n"], size_px_for(self.region_size(), self.cohort.slides[0].grid.slide_mpp))

    # -- task and oracles -----------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return self.config["task"]["kind"]

    @property
    def task_params(self) -> dict:
        return {k: v for k, v in self.config["task"].items() if k != "kind"}

    def truth_oracle(self) -> Any:
        """The ground truth's oracle (simulated answers, evaluation), or None without ground truth."""
        truth = self.config.get("ground_truth")
        if not truth:
            return None
        if self._truth is None:
            try:
                self._truth = task_class(self.kind).build_oracle(truth, self.config.get("slide_mpp"))
            except (TaskError, AlkitError) as exc:
                raise SessionError(f"ground truth: {exc}") from None
        return self._truth

    def task(self, oracle: Any, logger: Any = None, progress: bool = False) -> Task:
        """A task for this session (its model seeded with the session); ``progress`` turns on the model's
        training progress bars where its parameters have them (nothing it learns depends on them)."""
        cls = task_class(self.kind)
        params = self.task_params
        if progress and "progress" in getattr(getattr(cls, "params_schema", None), "model_fields", {}):
            params = params | {"progress": True}
        return cls.from_params(oracle, params, seed=self.config["seed"], logger=logger)

    def slide_mpp(self) -> dict[str, float]:
        return {s.slide_id: float(s.grid.slide_mpp) for s in self.cohort}


def config_from_options(*, stores: str | os.PathLike, test_stores: str | os.PathLike | None = None,
                        validation_stores: str | os.PathLike | None = None, encoder: str | None = None,
                        task: str = "segmentation", task_params: Mapping[str, Any] | None = None,
                        strategy: str = "random", strategy_params: Mapping[str, Any] | None = None,
                        prototypes: str | None = None, measure: str = "entropy", selector: str = "standard",
                        n: int = 1, size: int | None = None, size_um: float | None = None, cycles: int = 2,
                        seed: int = 0, oracle: str = "human", ground_truth: Mapping[str, Any] | None = None,
                        name: str | None = None) -> dict:
    """A session configuration from command-line options (store folders as ``alkit embed --out`` wrote them)."""
    def stores_of(folder) -> list[str]:
        if folder is None:
            return []
        return [str(s.store_path.resolve()) for s in Cohort.from_store_dir(folder, encoder=encoder)]

    return {"name": name, "source": None, "task": {"kind": task, **dict(task_params or {})},
            "stores": stores_of(stores), "test_stores": stores_of(test_stores),
            "validation_stores": stores_of(validation_stores), "initial": strategy,
            "initial_params": dict(strategy_params or {}),
            "prototypes": str(Path(prototypes).resolve()) if prototypes else None,
            "acquisition": {"measure": measure}, "selector": selector, "selector_options": {},
            "budget": _budget(n, size, size_um), "cycles": int(cycles), "seed": int(seed), "oracle": oracle,
            "ground_truth": dict(ground_truth) if ground_truth else None, "slide_mpp": None}


def config_from_study(path: str | os.PathLike, *, strategy: str | None = None, n: int | None = None,
                      size: int | None = None, size_um: float | None = None, seed: int | None = None,
                      cycles: int | None = None, oracle: str = "human", progress: bool = True) -> dict:
    """A session configuration from a study YAML (validated by :func:`alkit.study.config.load_config`): its
    cohort embedded (cached stores), task, ground truth, selector and acquisition; of its grid the first
    strategy, n, l and seed unless given."""
    from alkit.study.config import load_config
    from alkit.study.inputs import embed_cohort, prototypes_for

    study = load_config(path)
    strategy = strategy or study.strategies[0]
    stores = {key: [str(s.store_path.resolve()) for s in embed_cohort(study, paths, progress)] if paths else []
              for key, paths in (("stores", study.slides), ("test_stores", study.test_slides),
                                 ("validation_stores", study.validation_slides))}
    protos = None
    if strategy == "prototype":
        ps = prototypes_for(study)
        protos = study.prototypes.get("path") or str(study.out / "prototypes" / ps.meta.get("cache_key", ""))
    side_px = size if size is not None or size_um is not None else study.l[0]
    return {"name": study.study, "source": str(Path(path).resolve()), "task": dict(study.task) | {"kind": study.kind},
            **stores, "initial": strategy, "initial_params": dict(study.strategy_params.get(strategy, {})),
            "prototypes": protos, "acquisition": dict(study.acquisition), "selector": study.selector,
            "selector_options": dict(study.selector_options),
            "budget": _budget(n if n is not None else study.n[0], side_px, size_um),
            "cycles": int(cycles if cycles is not None else study.cycles),
            "seed": int(seed if seed is not None else study.seeds[0]), "oracle": oracle,
            "ground_truth": dict(study.ground_truth), "slide_mpp": study.slide_mpp}


def parse_json_option(option: str, text: str | None) -> dict:
    """A ``--task-params`` / ``--strategy-params`` JSON object."""
    import json

    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SessionError(f"{option}: not JSON ({exc.msg} at column {exc.colno}): {text[:60]!r}") from None
    if not isinstance(value, dict):
        raise SessionError(f"{option}: a JSON object of parameters, got {type(value).__name__}")
    return value

