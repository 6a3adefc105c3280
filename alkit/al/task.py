"""The one contract for *what is being learned*, and the registry that finds tasks by name.

A task is everything of an active-learning study that depends on what the model learns, in one place,
so the loop (:mod:`alkit.al.loop`) and the study runner (:mod:`alkit.study.run`) never say "tumour" or
"mitosis":

* its ground truth: the oracle it builds from a study's ``cohort.ground_truth`` (and checks);
* what an annotator reports for a region (:meth:`Task.region_report`, stored in the labeled pool);
* the training examples drawn from the labeled pool, and ``fit`` on them (a fresh seeded model per call);
* the score map it hands to uncertainty acquisition: per-cell probabilities of the positive class
  (a classifier's output, or a detector's best detection score per cell), with MC-dropout samples where
  the model has dropout;
* evaluation and its metric names, the summary columns and plots of a study;
* its own config schema and checks: :attr:`Task.params_schema` (the ``task:`` parameters) and
  :attr:`Task.ground_truth_schema` (``cohort.ground_truth``), pydantic models derived from
  :class:`ConfigSection` that the study config validates every key against (and documents), then
  :meth:`Task.check_config` for what a schema cannot say (paths exist, prototype and acquisition rules).

Built-ins: ``segmentation`` (:class:`alkit.tasks.segmentation.task.SegmentationTask`, tumour by patch
classification, mIoU) and ``detection`` (:class:`alkit.tasks.detection.task.DetectionTask`, mitotic
figures, F1). Both are registered in the ``alkit.tasks`` entry-point group by alkit's
``pyproject.toml``; a third-party task registers the same way and is named in a study's ``task.kind``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict

from alkit.al.oracle import Oracle, RegionReport
from alkit.errors import AlkitError
from alkit.plugins import plugin_entry, plugin_names

if TYPE_CHECKING:
    from alkit.al.pool import LabeledPool
    from alkit.annotations.drawn import DrawnLabels
    from alkit.embeddings.cohort import Cohort, CohortSlide

ENTRY_POINT_GROUP = "alkit.tasks"
DEFAULT_TASK = "segmentation"


class TaskError(AlkitError, ValueError):
    """Unknown task, or a task that cannot work with what it was given."""


class TaskConfigError(TaskError):
    """A study-config value a task refuses: ``key`` is its dotted path (``task.max_epochs``)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"key '{key}'{'' if reason.startswith(':') else ' '}{reason}")
        self.key, self.reason = key, reason


class ConfigSection(BaseModel):
    """A mapping of a study config with known keys: unknown keys are refused and values are not coerced
    (YAML's types count: ``"lots"`` is no integer, ``true`` no number). Each field's ``description`` is
    its line in the generated key reference (``alkit compare --schema``)."""

    model_config = ConfigDict(extra="forbid", strict=True)


@dataclass(frozen=True)
class SummaryPlot:
    """One summary plot: ``metric`` (y) against annotated tissue %, saved as ``<name>.png``."""

    metric: str
    name: str


@dataclass
class TaskSettings:
    """The parts of a study config a task checks (:meth:`Task.check_config`) before any work."""

    params: dict  # the ``task:`` section without ``kind``
    ground_truth: dict  # ``cohort.ground_truth``
    prototypes: dict  # the ``prototypes:`` section ({} without the prototype strategy)
    acquisition: dict  # ``loop.acquisition``
    has_validation_slides: bool
    resolve: Callable[[str], str]  # a config-relative path made absolute
    slide_mpp: float | None = None


@runtime_checkable
class Task(Protocol):
    """What an active-learning loop learns; one object per run (its model is seeded with the run)."""

    #: the name the task is registered under (``task.kind`` in a study config)
    name: ClassVar[str]
    #: the metrics of a study summary (median over seeds per strategy × budget × cycle)
    summary_metrics: ClassVar[tuple[str, ...]]
    #: the summary plots, each against annotated tissue %
    summary_plots: ClassVar[tuple[SummaryPlot, ...]]
    #: whether the model can draw MC-dropout samples (BALD acquisition)
    mc_dropout: ClassVar[bool]
    #: whether prototypes are object-centred crops of one class (``prototypes.crops``), not whole images
    prototype_crops: ClassVar[bool]
    #: the schema of the ``task:`` parameters without ``kind`` (a :class:`ConfigSection`); a task without
    #: one is left to :meth:`check_config` alone
    params_schema: ClassVar[type[ConfigSection]]
    #: the schema of ``cohort.ground_truth`` (a :class:`ConfigSection`)
    ground_truth_schema: ClassVar[type[ConfigSection]]

    oracle: Oracle

    # -- study set-up (class-level: before any run) -----------------------------------------------
    @classmethod
    def check_config(cls, settings: TaskSettings) -> dict:
        """Check the task's parts of a study config (raise :class:`TaskConfigError`); returns the
        ground truth with its paths resolved."""
        ...

    @classmethod
    def build_oracle(cls, ground_truth: Mapping[str, Any], slide_mpp: float | None = None) -> Oracle:
        """The simulated annotator of a checked ``ground_truth`` section (once per study)."""
        ...

    @classmethod
    def oracle_from_drawings(cls, drawn: DrawnLabels, mpp: Mapping[str, float]) -> Oracle:
        """The oracle of what annotators drew (``drawn``: per slide the annotated region boxes and the
        drawings inside them; ``mpp``: each slide's µm/px), as the task learns from it (``alkit session``)."""
        ...

    @classmethod
    def from_params(cls, oracle: Oracle, params: Mapping[str, Any], *, seed: int, logger: Any = None) -> Task:
        """A task for one run: ``params`` are the config's ``task:`` parameters (checked)."""
        ...

    # -- the loop ---------------------------------------------------------------------------------
    def region_report(self, slide: CohortSlide, box: Sequence[int]) -> RegionReport:
        """What the annotator reports for a labeled region (its findings go into the pool)."""
        ...

    def training_examples(self, pool: LabeledPool, cohort: Cohort, max_cycle: int | None = None,
                          validation_cohort: Cohort | None = None) -> list:
        """Training examples from the labeled regions of cycles ≤ ``max_cycle`` (default all); a task that
        tunes on fully annotated ``validation_cohort`` slides (early stopping) adds them, marked held out."""
        ...

    def fit(self, examples: list) -> dict:
        """Train a fresh model on ``examples``; returns a training summary (numbers are logged)."""
        ...

    def probabilities(self, slide: CohortSlide) -> np.ndarray:
        """``(rows, cols)`` probability of the positive class per grid cell, for acquisition."""
        ...

    def mc_probabilities(self, slide: CohortSlide, samples: int) -> np.ndarray:
        """``(samples, rows, cols)`` MC-dropout samples of :meth:`probabilities` (where ``mc_dropout``)."""
        ...

    def evaluate(self, pool: LabeledPool, cohort: Cohort, test_cohort: Cohort,
                 validation_cohort: Cohort | None = None) -> dict:
        """The task's metrics of the current model (and its share of the labeled pool)."""
        ...


def available_tasks() -> list[str]:
    """Names registered in the ``alkit.tasks`` entry-point group."""
    return plugin_names(ENTRY_POINT_GROUP)


def task_class(name: str) -> type[Task]:
    """The task class registered as ``name``."""
    entry = plugin_entry(ENTRY_POINT_GROUP, name, "task", TaskError)
    cls = entry.load()
    missing = [m for m in ("check_config", "build_oracle", "from_params", "region_report", "training_examples",
                           "fit", "probabilities", "mc_probabilities", "evaluate", "summary_metrics",
                           "summary_plots", "mc_dropout", "prototype_crops")
               if not hasattr(cls, m)]
    if missing:
        raise TaskError(f"entry point {entry.value} does not implement the Task contract (missing {missing})")
    return cls
