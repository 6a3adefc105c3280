"""Checks every task makes on its part of a study config: model parameters and ground-truth paths."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from alkit.al.task import TaskConfigError, TaskSettings


def model_parameters(cls: type) -> set[str]:
    """Parameters a study's ``task:`` section may set on a model class (not the run's seed / logger)."""
    return set(inspect.signature(cls).parameters) - {"seed", "logger", "callbacks", "self"}


def check_model_params(task: str, model: type, params: Mapping[str, Any], reserved: set[str]) -> None:
    """Refuse ``task:`` keys that are neither ``reserved`` nor parameters of ``model``."""
    accepted = model_parameters(model)
    unknown = sorted(set(params) - accepted - reserved)
    if unknown:
        raise TaskConfigError("task", f"has unknown parameter(s) {unknown} for task {task!r} "
                                      f"({model.__name__}); known: {sorted(accepted | reserved - {'kind'})}")


def resolve_existing(truth: dict, key: str, settings: TaskSettings, kind: str) -> None:
    """Resolve ``truth[key]`` against the config's folder; it must be an existing ``kind`` ("file"/"folder")."""
    truth[key] = settings.resolve(truth[key])
    ok = Path(truth[key]).is_file() if kind == "file" else Path(truth[key]).is_dir()
    if not ok:
        raise TaskConfigError(f"cohort.ground_truth.{key}", f": no {kind} {truth[key]}")
