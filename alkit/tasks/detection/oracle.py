"""The mitosis oracle: mitotic figures and hard negatives (lookalikes) as level-0 points per slide.

Read from SlideRunner SQLite databases (``deleted`` records dropped), COCO-style JSON (box
centres, :mod:`alkit.annotations.coco`) or a synthetic cohort's database; class names become labels
through :func:`alkit.tasks.detection.labels.mitosis_label`. Slides it has no records for have no
mitoses. Its :meth:`MitosisOracle.region_report` findings are ``{"mitoses": n, "hard_negatives": k}``
(points inside the half-open box); the detection task also reads the points themselves.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from alkit.al.oracle import (Mpp, OracleError, RegionReport, check_box, load_synthetic_cohort, px2_to_mm2,
                             require_mpp)
from alkit.annotations.coco import read_coco_points
from alkit.annotations.sliderunner import read_sliderunner
from alkit.tasks.detection.labels import HARD_NEGATIVE, MITOSIS, check_classes, mitosis_label
from alkit.wsi.coverage import point_cell_counts, points_in_box
from alkit.wsi.grid import PatchGrid

if TYPE_CHECKING:
    from alkit.synthetic import SyntheticCohort

log = logging.getLogger(__name__)

__all__ = ["MitosisOracle"]


def _points(slide: str, a: object) -> np.ndarray:
    """``(k, 2)`` float64 points of one slide: ``None`` or empty is none, one ``(x, y)`` pair is one point;
    any other shape (``(k, 3)`` rows with a score, say) is refused rather than silently re-paired."""
    points = np.asarray(a if a is not None else np.zeros((0, 2)), np.float64)
    if points.size == 0:
        return np.zeros((0, 2))
    if points.shape == (2,):
        return points.reshape(1, 2)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"slide {slide!r}: points must be (k, 2) x, y pairs, got shape {points.shape}")
    return points


class MitosisOracle:
    """Mitotic figures and hard negatives per slide, as level-0 points.

    Built from SlideRunner databases (:meth:`from_sliderunner`), COCO-style JSON
    (:meth:`from_coco`) or a synthetic cohort (:meth:`from_synthetic`); ``mitoses`` /
    ``hard_negatives`` map slide ids to ``(k, 2)`` points (arrays or lists of pairs). ``mpp``
    (µm/px: one value, or per slide) is only needed for mm² in :meth:`region_report`.
    """

    def __init__(self, mitoses: Mapping[str, object], hard_negatives: Mapping[str, object] | None = None,
                 *, mpp: Mpp = None) -> None:
        self._mitoses = {k: _points(k, v) for k, v in mitoses.items()}
        self._hard = {k: _points(k, v) for k, v in (hard_negatives or {}).items()}
        self._mpp = mpp

    # -- builders ---------------------------------------------------------------------------------
    @classmethod
    def from_sliderunner(cls, paths: str | os.PathLike | Iterable[str | os.PathLike], *,
                         classes: Mapping[str, str | None] | None = None, mpp: Mpp = None) -> MitosisOracle:
        """Mitoses from one or more SlideRunner databases.

        Records flagged ``deleted`` are dropped; a record's position is its centre (spots: the
        point; circles and rectangles: the middle). Slides are keyed by their file name's stem
        (``01_stitched1.tif`` -> ``01_stitched1``); where one database lists several files with the
        same stem (TUPAC's ``01/25.tif``, ``02/25.tif``, ...) those slides are keyed
        ``directory/stem``. Annotations of slides missing from the ``Slides`` table are ignored with a
        warning (a slide uid is no file name: keyed by it they could merge into another slide). Classes the rules of :func:`~alkit.tasks.detection.labels.mitosis_label`
        (and ``classes``) do not map are ignored with a warning.
        """
        check_classes(classes)
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        found: dict[str, dict[str, list]] = {MITOSIS: {}, HARD_NEGATIVE: {}}
        for path in map(Path, paths):
            try:
                records = read_sliderunner(path, drop_deleted=True)
            except FileNotFoundError as exc:
                raise OracleError(f"{path}: no such SlideRunner database") from exc
            except ValueError as exc:
                raise OracleError(str(exc)) from exc
            keys = _sliderunner_slide_keys(path)
            ignored: dict[str, int] = {}
            orphans = 0
            labels = {name: mitosis_label(name, classes) for name in {r.cls for r in records}}
            for r in records:
                label = labels[r.cls]
                if label is None:
                    ignored[str(r.cls)] = ignored.get(str(r.cls), 0) + 1
                    continue
                if r.uid is not None and r.uid not in keys:  # its slide is not in the Slides table
                    orphans += 1
                    continue
                key = keys.get(r.uid) if r.uid is not None else None
                found[label].setdefault(key or Path(r.slide).stem, []).append((r.x, r.y))
            if orphans:
                log.warning("%s: ignored %d annotations of slides missing from the Slides table (no file name "
                            "to key them by)", path, orphans)
            if ignored:
                log.warning("%s: ignored annotations of classes that are neither mitosis nor hard negative: %s "
                            "(map them with classes=)", path, ignored)
        return cls(found[MITOSIS], found[HARD_NEGATIVE], mpp=mpp)

    @classmethod
    def from_coco(cls, path: str | os.PathLike, *, classes: Mapping[str, str | None] | None = None,
                  bbox_format: Literal["auto", "xywh", "xyxy"] = "auto", mpp: Mpp = None) -> MitosisOracle:
        """Mitoses from COCO-style JSON: images are slides (keyed by ``file_name`` stem), each box's
        centre is a point, categories are mapped by name
        (:func:`~alkit.tasks.detection.labels.mitosis_label`, ``classes``).

        COCO boxes are ``[x, y, w, h]``; MIDOG++ writes corners ``[x1, y1, x2, y2]`` in the same
        field: ``bbox_format="auto"`` tells them apart (see :func:`alkit.annotations.coco.read_coco_points`).
        """
        check_classes(classes)
        try:
            coco = read_coco_points(path, bbox_format)
        except (FileNotFoundError, ValueError) as exc:  # both name the file (or the bad bbox_format)
            raise OracleError(str(exc)) from exc
        labels = {name: mitosis_label(name, classes) for name in set(coco.categories)}
        ignored = sorted(name for name, label in labels.items() if label is None)
        if ignored:
            log.warning("%s: ignored categories that are neither mitosis nor hard negative: %s (map them with "
                        "classes=)", Path(path), ignored)
        found = coco.grouped(labels)
        return cls(found.get(MITOSIS, {}), found.get(HARD_NEGATIVE, {}), mpp=mpp)

    @classmethod
    def from_synthetic(cls, cohort: SyntheticCohort | str | os.PathLike) -> MitosisOracle:
        """The mitoses and lookalikes of a synthetic cohort (:class:`alkit.synthetic.SyntheticCohort`
        or its folder), from its SlideRunner database, with each slide's mpp."""
        cohort = load_synthetic_cohort(cohort)
        return cls.from_sliderunner(cohort.mitoses_db, mpp={s.slide_id: s.mpp for s in cohort.slides})

    # -- queries ----------------------------------------------------------------------------------
    @property
    def slides(self) -> list[str]:
        """Slides with at least one mitosis or hard negative."""
        return sorted(set(self._mitoses) | set(self._hard))

    def mitoses(self, slide_id: str) -> np.ndarray:
        """Level-0 ``(x, y)`` of the slide's mitotic figures, (m, 2) float64."""
        return self._mitoses.get(slide_id, np.zeros((0, 2))).copy()

    def hard_negatives(self, slide_id: str) -> np.ndarray:
        """Level-0 ``(x, y)`` of the slide's hard negatives (lookalikes), (k, 2) float64."""
        return self._hard.get(slide_id, np.zeros((0, 2))).copy()

    def mitosis_count(self, slide_id: str, grid: PatchGrid, *, hard_negatives: bool = False) -> np.ndarray:
        """Mitoses (or hard negatives) inside each cell of ``grid``, (rows, cols) int64."""
        pts = self.hard_negatives(slide_id) if hard_negatives else self.mitoses(slide_id)
        return point_cell_counts(pts, grid)

    def counts_in(self, slide_id: str, box: Sequence[float]) -> tuple[int, int]:
        """``(mitoses, hard negatives)`` inside the half-open level-0 box."""
        box = check_box(box, slide_id)
        return (int(points_in_box(self._mitoses.get(slide_id, np.zeros((0, 2))), box).sum()),
                int(points_in_box(self._hard.get(slide_id, np.zeros((0, 2))), box).sum()))

    def region_report(self, slide_id: str, box: Sequence[float], tissue_mm2: float | None = None, *,
                      mpp: float | None = None) -> RegionReport:
        """Mitosis and hard-negative counts in ``box``; ``tissue_mm2`` is passed through."""
        box = check_box(box, slide_id)
        m = require_mpp(mpp, self._mpp, slide_id)
        n_mit, n_hard = self.counts_in(slide_id, box)
        return RegionReport(slide_id, box, m, px2_to_mm2(box[2] * box[3], m),
                            None if tissue_mm2 is None else float(tissue_mm2),
                            {"mitoses": n_mit, "hard_negatives": n_hard})

    def __repr__(self) -> str:
        return (f"MitosisOracle({len(self.slides)} slides, {sum(map(len, self._mitoses.values()))} mitoses, "
                f"{sum(map(len, self._hard.values()))} hard negatives)")


def _sliderunner_slide_keys(path: Path) -> dict[int, str]:
    """Annotation uid -> slide key (file stem, or ``directory/stem`` where stems repeat in the database)."""
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return _slide_keys(con, path)
    except sqlite3.Error as exc:
        raise OracleError(f"{path}: unreadable SlideRunner Slides/Annotations tables ({exc})") from exc
    finally:
        con.close()


def _slide_keys(con: sqlite3.Connection, path: Path) -> dict[int, str]:
    cols = {r[1] for r in con.execute("PRAGMA table_info(Slides)")}
    directory = "directory" if "directory" in cols else "''"
    slides = {uid: (Path(str(name)).stem, str(d or "")) for uid, name, d in
              con.execute(f"SELECT uid, filename, {directory} FROM Slides")}
    stems: dict[str, int] = {}
    for stem, _ in slides.values():
        stems[stem] = stems.get(stem, 0) + 1
    key = {uid: (f"{d or uid}/{stem}" if stems[stem] > 1 else stem) for uid, (stem, d) in slides.items()}
    if any(n > 1 for n in stems.values()):
        log.info("%s: %d file names occur in several slide folders; those slides are keyed 'directory/stem'",
                 path, sum(n > 1 for n in stems.values()))
    return {uid: key[s] for uid, s in con.execute("SELECT uid, slide FROM Annotations") if s in key}
