"""The oracle contract: what the active-learning loop asks of an annotator, simulated or human.

An oracle reveals, for a slide, what an annotator would say inside a region (a level-0 box
``(x, y, w, h)``). Every oracle answers :meth:`Oracle.region_report` with a :class:`RegionReport`:
the region's area, the tissue area the caller measured, and the task's *findings* in it. The
oracles themselves live with their task:

- :class:`alkit.tasks.segmentation.oracle.TumourOracle`: tumour ground truth (ASAP XML, NCRF JSON,
  QuPath GeoJSON, mask images); findings ``{"tumour_mm2": float}``;
- :class:`alkit.tasks.detection.oracle.MitosisOracle`: mitotic figures and hard negatives
  (SlideRunner, COCO JSON, a synthetic cohort); findings ``{"mitoses": int, "hard_negatives": int}``;
- :class:`alkit.tasks.segmentation.annotator.AnnotationOracle`: what human annotators drew inside
  the exported regions; findings of both.

Areas in reports are mm² and need the slide's µm/px, given per oracle, per slide, or per call
(:func:`require_mpp`): alkit never guesses a resolution.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, Union, runtime_checkable

import numpy as np

from alkit.errors import AlkitError

if TYPE_CHECKING:
    from alkit.synthetic import SyntheticCohort

__all__ = ["Oracle", "RegionReport", "OracleError", "NotAnnotatedError", "Mpp", "check_box", "mpp_for",
           "px2_to_mm2", "require_mpp", "call_reader", "load_synthetic_cohort"]

#: µm/px: one value for every slide, a value per slide id, or unknown.
Mpp = Union[float, Mapping[str, float], None]

_T = TypeVar("_T")


class OracleError(AlkitError, ValueError):
    """Bad ground truth or drawings: a malformed or missing file (named), an unknown slide, no mpp."""


class NotAnnotatedError(OracleError):
    """A human-annotation oracle was asked about a box outside the regions that were annotated."""


def _plain_number(name: str, value: Any) -> float | int:
    """``value`` as a plain JSON number: integers stay ``int``, everything else becomes ``float``."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"finding {name!r} must be a number, got a bool")
    if isinstance(value, (int, np.integer)):
        return int(value)
    return float(value)


@dataclass(frozen=True)
class RegionReport:
    """What the annotator revealed in one region (a level-0 box).

    ``tissue_mm2`` is what the caller measured on its tissue mask (the oracle does not know the
    tissue) and is passed through. ``findings`` is what the annotator found in the region, per task
    (e.g. ``{"tumour_mm2": 0.8}`` or ``{"mitoses": 3, "hard_negatives": 1}``); its values are
    plain ``int`` / ``float``.
    """

    slide_id: str
    box: tuple[float, float, float, float]
    mpp: float
    region_mm2: float
    tissue_mm2: float | None
    findings: Mapping[str, float | int] = field(hash=False)

    def __post_init__(self) -> None:
        findings = {str(k): _plain_number(k, v) for k, v in self.findings.items()}
        clash = sorted(set(findings) & {"slide_id", "box", "mpp", "region_mm2", "tissue_mm2"})
        if clash:
            raise ValueError(f"findings {clash} would overwrite the report's own fields in to_dict()")
        object.__setattr__(self, "findings", findings)

    def to_dict(self) -> dict:
        """Plain JSON values, the findings flattened in beside the region's fields."""
        d: dict[str, Any] = {"slide_id": self.slide_id, "box": [float(v) for v in self.box], "mpp": self.mpp,
                             "region_mm2": self.region_mm2, "tissue_mm2": self.tissue_mm2}
        d.update(self.findings)
        return d


@runtime_checkable
class Oracle(Protocol):
    """What the active-learning loop asks of an annotator, simulated or human."""

    def region_report(self, slide_id: str, box: Sequence[float], tissue_mm2: float | None = None, *,
                      mpp: float | None = None) -> RegionReport:
        """What the annotator finds inside the level-0 ``box``; ``tissue_mm2`` is passed through."""
        ...


# ------------------------------------------------------------------------------------------------
# helpers shared by the oracles
# ------------------------------------------------------------------------------------------------

def check_box(box: Sequence[float], slide_id: str) -> tuple[float, float, float, float]:
    """``box`` as ``(x, y, w, h)`` floats; :class:`OracleError` unless finite with positive size."""
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError):
        raise OracleError(f"{slide_id}: a region box is (x, y, w, h), got {box!r}") from None
    if not all(np.isfinite((x, y, w, h))) or w <= 0 or h <= 0:
        raise OracleError(f"{slide_id}: region box {box!r} must be finite with positive width and height")
    return x, y, w, h


def mpp_for(mpp: Mpp, slide_id: str) -> float | None:
    """The value ``mpp`` gives ``slide_id`` (one for all, or looked up per slide); ``None`` if none."""
    if mpp is None:
        return None
    if isinstance(mpp, Mapping):
        v = mpp.get(slide_id)
        return None if v is None else float(v)
    return float(mpp)


def require_mpp(call: float | None, own: Mpp, slide_id: str) -> float:
    """The µm/px of ``slide_id``: ``call`` if given, else the oracle's ``own``; an error if neither."""
    m = call if call is not None else mpp_for(own, slide_id)
    if m is None or not m > 0:
        raise OracleError(f"{slide_id}: resolution unknown; give the oracle mpp= (µm/px, per slide or for all) "
                          "or pass mpp= to region_report")
    return float(m)


def px2_to_mm2(px2: float, mpp: float) -> float:
    """Level-0 px² to mm² at ``mpp`` µm/px."""
    return float(px2) * (mpp * 1e-3) ** 2


def call_reader(fn: Callable[..., _T], path: Path, *args: Any, **kwargs: Any) -> _T:
    """Call an annotation reader; its missing-file and format errors become :class:`OracleError` naming ``path``."""
    try:
        return fn(path, *args, **kwargs)
    except FileNotFoundError as exc:
        raise OracleError(f"{path}: no such file") from exc
    except OracleError:
        raise
    except ValueError as exc:  # AnnotationFileError names the file; other ValueErrors come from bad content
        raise OracleError(str(exc)) from exc


def load_synthetic_cohort(cohort: SyntheticCohort | str | os.PathLike) -> SyntheticCohort:
    """``cohort`` itself, or the :class:`alkit.synthetic.SyntheticCohort` in that folder (an
    :class:`OracleError` if it holds none)."""
    from alkit.synthetic import SyntheticCohort  # the generator imports scipy / skimage: only when asked

    if isinstance(cohort, SyntheticCohort):
        return cohort
    try:
        return SyntheticCohort.load(cohort)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OracleError(f"{cohort}: not a synthetic cohort ({exc})") from exc
