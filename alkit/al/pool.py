"""The labeled pool: every region an annotator has labeled, saved after every change.

Annotation is the expensive resource, so the pool is a JSON file rewritten atomically (temporary file
+ rename) after each change: whatever happens to the process, the file on disk holds every region
labeled so far and nothing half-written. Loading it resumes where the last run stopped.

The pool knows no task: each region keeps its tissue area and the annotator's *findings*
(:attr:`alkit.al.oracle.RegionReport.findings`: tumour area for segmentation, mitosis counts for
detection), written into the region's JSON record beside its box. A grid cell counts as labeled when
its centre lies inside a labeled region of its slide (each cell belongs to at most one region, since
regions never overlap); what its label is, the task decides from its ground truth.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from alkit.al.oracle import RegionReport
from alkit.atomic import atomic_write_text
from alkit.errors import AlkitError
from alkit.ids import check_id
from alkit.jsonfile import read_json
from alkit.selection.regions import boxes_overlap
from alkit.selection.strategy import Box, RegionPick
from alkit.wsi.grid import PatchGrid

log = logging.getLogger(__name__)

FORMAT = "alkit-pool"
FORMAT_VERSION = 1


class PoolError(AlkitError, ValueError):
    """A pool file that cannot be read, or a change that would break the pool's invariants."""


@dataclass(frozen=True)
class LabeledRegion:
    """One labeled region with what the annotator found in it (``findings``: the task's own counts)."""

    slide: str
    box: Box  # level-0 (x, y, w, h)
    cycle: int
    strategy: str
    cls: str | None = None
    score: float | None = None
    tissue_mm2: float = 0.0
    findings: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The region's JSON record: its fields with the findings alongside (one flat object)."""
        record = {k: v for k, v in asdict(self).items() if k != "findings"}
        return record | {"box": list(self.box)} | dict(self.findings)

    @classmethod
    def from_dict(cls, record: Mapping) -> LabeledRegion:
        own = {f for f in cls.__dataclass_fields__ if f != "findings"}
        findings = {k: v for k, v in record.items() if k not in own and v is not None}
        return cls(**{k: v for k, v in record.items() if k in own} | {"box": tuple(record["box"])},
                   findings=findings)


@dataclass
class LabeledPool:
    """Labeled regions per slide, with the metrics of finished cycles; saved to ``path`` on every change."""

    path: Path | None = None
    regions: list[LabeledRegion] = field(default_factory=list)
    cycle_metrics: dict[int, dict] = field(default_factory=dict)  # cycle -> metrics of its evaluation

    # -- persistence ---------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike) -> LabeledPool:
        """Load the pool at ``path``, or start an empty one there."""
        path = Path(path)
        if not path.exists():
            return cls(path)
        doc = read_json(path, PoolError, "pool file")
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise PoolError(f"{path}: not an alkit pool file")
        records, metrics = doc.get("regions", []), doc.get("cycle_metrics", {})
        if not isinstance(records, list) or not isinstance(metrics, dict):
            raise PoolError(f"{path}: 'regions' must be a list and 'cycle_metrics' an object")
        regions = [_region(path, i, r) for i, r in enumerate(records)]
        try:
            cycles = {int(k): v for k, v in metrics.items()}
        except ValueError:
            raise PoolError(f"{path}: 'cycle_metrics' keys must be cycle numbers, got {sorted(metrics)[:3]}") from None
        return cls(path, regions, cycles)

    def save(self) -> None:
        if self.path is None:
            return
        doc = {"format": FORMAT, "format_version": FORMAT_VERSION,
               "regions": [r.to_dict() for r in self.regions],
               "cycle_metrics": {str(k): v for k, v in sorted(self.cycle_metrics.items())}}
        atomic_write_text(self.path, json.dumps(doc, indent=1) + "\n")

    # -- changes -------------------------------------------------------------------------------
    def add(self, picks: Iterable[RegionPick], cycle: int,
            reports: Iterable[RegionReport | Mapping] | None = None) -> None:
        """Add labeled regions of ``cycle`` (with the annotator's report of each) and save.

        A report is a :class:`~alkit.al.oracle.RegionReport` or a mapping of ``tissue_mm2`` and findings.
        """
        picks = list(picks)
        reports = list(reports) if reports is not None else [{} for _ in picks]
        if len(reports) != len(picks):
            raise PoolError(f"{len(picks)} regions but {len(reports)} reports")
        new = []
        for p, rep in zip(picks, reports):
            clash = [r for r in self.regions + new if r.slide == p.slide and boxes_overlap(r.box, p.box)]
            if clash:
                raise PoolError(f"{p.slide}: region {p.box} overlaps labeled region {clash[0].box} "
                                f"(cycle {clash[0].cycle})")
            tissue, findings = _report_parts(rep)
            new.append(LabeledRegion(p.slide, tuple(int(v) for v in p.box), int(cycle), p.strategy, p.cls,
                                     None if p.score is None or np.isnan(p.score) else float(p.score),
                                     tissue, findings))
        self.regions.extend(new)
        self.save()

    def record_metrics(self, cycle: int, metrics: Mapping) -> None:
        """Remember the evaluation of a finished cycle (and save)."""
        self.cycle_metrics[int(cycle)] = dict(metrics)
        self.save()

    # -- queries -------------------------------------------------------------------------------
    @property
    def last_cycle(self) -> int:
        """Highest cycle with labeled regions; -1 for an empty pool."""
        return max((r.cycle for r in self.regions), default=-1)

    def labeled(self) -> dict[str, list[Box]]:
        """Slide id -> labeled level-0 boxes (what strategies must not overlap)."""
        out: dict[str, list[Box]] = {}
        for r in self.regions:
            out.setdefault(r.slide, []).append(r.box)
        return out

    def for_slide(self, slide: str) -> list[LabeledRegion]:
        return [r for r in self.regions if r.slide == slide]

    def total(self, finding: str) -> float:
        """The sum of one finding (e.g. ``tumour_mm2``, ``mitoses``) over the labeled regions."""
        return float(sum(r.findings.get(finding) or 0 for r in self.regions))

    def budget_used(self, total_tissue_mm2: float | None = None) -> dict:
        """Regions, annotated tissue area (mm²) and, given the cohort's tissue area, its percentage."""
        tissue = sum(r.tissue_mm2 for r in self.regions)
        used = {"regions": len(self.regions), "tissue_mm2": tissue}
        if total_tissue_mm2:
            used["tissue_pct"] = 100.0 * tissue / total_tissue_mm2
        return used

    def cell_region_ids(self, slide: str, grid: PatchGrid, max_cycle: int | None = None) -> np.ndarray:
        """``(rows, cols)`` int32: index (into :attr:`regions`) of the labeled region holding each cell's
        centre, -1 for unlabeled cells; only regions of cycles ≤ ``max_cycle`` when given."""
        rows, cols = grid.shape
        out = np.full((rows, cols), -1, np.int32)
        centres_x = np.arange(cols) * grid.stride0 + grid.size0 / 2
        centres_y = np.arange(rows) * grid.stride0 + grid.size0 / 2
        for i, r in enumerate(self.regions):
            if r.slide != slide or (max_cycle is not None and r.cycle > max_cycle):
                continue
            x, y, w, h = r.box
            cs = np.flatnonzero((centres_x >= x) & (centres_x < x + w))
            rs = np.flatnonzero((centres_y >= y) & (centres_y < y + h))
            if len(cs) and len(rs):
                out[rs[0]:rs[-1] + 1, cs[0]:cs[-1] + 1] = i
        return out


def _region(path: Path, i: int, record: object) -> LabeledRegion:
    """Region ``i`` of the pool file ``path``, checked: an id as its slide, four finite numbers as its box."""
    where = f"{path}: region #{i}"
    if not isinstance(record, dict):
        raise PoolError(f"{where} is a JSON {type(record).__name__}, expected an object")
    check_id(record.get("slide"), what=f"region #{i}'s slide id", source=path, error=PoolError)
    box = record.get("box")
    if not (isinstance(box, list) and len(box) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in box)):
        raise PoolError(f"{where}: 'box' must be four numbers [x, y, w, h], got {box!r:.80}")
    if isinstance(record.get("cycle"), bool) or not isinstance(record.get("cycle"), int):
        raise PoolError(f"{where}: 'cycle' must be a whole number, got {record.get('cycle')!r:.40}")
    if not isinstance(record.get("strategy"), str):
        raise PoolError(f"{where}: 'strategy' must be a string, got {record.get('strategy')!r:.40}")
    if record.get("cls") is not None and not isinstance(record["cls"], str):
        raise PoolError(f"{where}: 'cls' must be a string or null, got {record['cls']!r:.40}")
    own = set(LabeledRegion.__dataclass_fields__) - {"findings"}
    numbers = {"score": record.get("score"), "tissue_mm2": record.get("tissue_mm2"),
               **{k: v for k, v in record.items() if k not in own}}  # the findings: the task's counts and areas
    for key, value in numbers.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise PoolError(f"{where}: {key!r} must be a number, got {value!r:.40}")
    tissue = record.get("tissue_mm2")
    if tissue is not None and not (np.isfinite(tissue) and tissue >= 0):
        raise PoolError(f"{where}: 'tissue_mm2' must be a finite area >= 0, got {tissue!r}")
    try:
        return LabeledRegion.from_dict(record)
    except (KeyError, TypeError, ValueError) as exc:
        raise PoolError(f"{where} is malformed ({exc!r})") from None


def _report_parts(report: RegionReport | Mapping) -> tuple[float, dict]:
    """``(tissue_mm2, findings)`` of an annotator's report."""
    if isinstance(report, RegionReport):
        return float(report.tissue_mm2 or 0.0), dict(report.findings)
    findings = {k: v for k, v in report.items() if k != "tissue_mm2" and v is not None}
    return float(report.get("tissue_mm2", 0.0)), findings
