"""The tumour oracle: tumour ground truth per slide, as polygons or a mask.

:class:`TumourOracle` reads CAMELYON16 ASAP XML (groups ``_0``, ``_1``, ``Tumor`` are tumour, ``_2``
are exclusions cut out of it), NCRF-style JSON polygons (``positive`` minus ``negative``), QuPath
GeoJSON, or mask images (PNG/TIFF, any value > 0 is tumour, one mask pixel = ``mask_downsample``
level-0 px, :mod:`alkit.annotations.masks`). Its :meth:`TumourOracle.region_report` findings are
``{"tumour_mm2": float}``; :func:`tumour_share` and :func:`tumour_tissue_share` derive shares from
such a report.

Polygons follow the geometry rules of :mod:`alkit.annotations.geometry` (union of tumour minus
union of exclusions, invalid rings repaired with ``make_valid``, degenerate rings skipped). ASAP
``Spline`` annotations are taken as the polygon of their control points. A slide with no
ground-truth file is tumour-free (CAMELYON16's normal slides have none); a slide named explicitly
(``from_files``, ``from_folder(slides=...)``) whose file is missing is an error.

Cell labels (:meth:`TumourOracle.tumour_fraction`) are exact shares of each grid cell covered by the
geometry, computed by :mod:`alkit.wsi.coverage` (exact areas for cells the boundary crosses, one
vectorised inside test for the rest). Areas in reports are mm² and need the slide's µm/px, given per
oracle, per slide, or per call: alkit never guesses a resolution.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from shapely.geometry.base import BaseGeometry

from alkit.al.oracle import (Mpp, OracleError, RegionReport, call_reader, check_box, load_synthetic_cohort, mpp_for,
                             px2_to_mm2, require_mpp)
from alkit.annotations.asap import read_asap_xml
from alkit.annotations.geometry import (EMPTY_POLYGON, class_names, polygon_parts, split_by_class,
                                        union_minus_exclusions, valid_union)
from alkit.annotations.masks import MASK_SUFFIXES, read_mask_image
from alkit.annotations.ncrf import is_ncrf, parse_ncrf
from alkit.annotations.qupath import QuPathFeature, parse_qupath_geojson
from alkit.atomic import is_hidden
from alkit.jsonfile import read_json
from alkit.wsi.coverage import geometry_box_areas, geometry_cell_fractions, mask_box_areas, mask_cell_fractions
from alkit.wsi.grid import PatchGrid

if TYPE_CHECKING:
    from alkit.synthetic import SyntheticCohort

log = logging.getLogger(__name__)

__all__ = ["TumourOracle", "TumourMask", "TUMOUR_CLASSES", "EXCLUSION_CLASSES", "ASAP_AREA_TYPES",
           "qupath_polygons", "tumour_share", "tumour_tissue_share"]

#: Class / group names that mean tumour (CAMELYON16 ASAP groups, QuPath's built-in class); case-insensitive.
TUMOUR_CLASSES: tuple[str, ...] = ("_0", "_1", "Tumor", "Tumour")
#: Class / group names of exclusions cut out of the tumour (CAMELYON16 ``_2``, QuPath's ``Ignore*``).
EXCLUSION_CLASSES: tuple[str, ...] = ("_2", "Exclusion", "Ignore*")
#: ASAP annotation types that outline an area.
ASAP_AREA_TYPES: tuple[str, ...] = ("polygon", "spline", "rectangle")


@dataclass(frozen=True)
class TumourMask:
    """A tumour mask: ``mask`` (bool, rows × cols), one pixel = ``downsample`` level-0 px each way."""

    mask: np.ndarray
    downsample: float

    def __post_init__(self) -> None:
        if self.mask.ndim != 2:
            raise ValueError(f"a tumour mask must be 2-D, got shape {self.mask.shape}")
        if not self.downsample > 0:
            raise ValueError(f"mask downsample must be positive, got {self.downsample}")


def tumour_share(report: RegionReport) -> float:
    """Tumour area / region area of a :class:`TumourOracle` report."""
    return report.findings["tumour_mm2"] / report.region_mm2


def tumour_tissue_share(report: RegionReport) -> float | None:
    """Tumour area / tissue area of a :class:`TumourOracle` report (``None`` without a tissue area)."""
    if not report.tissue_mm2:
        return None
    return report.findings["tumour_mm2"] / report.tissue_mm2


def qupath_polygons(features: list[QuPathFeature]) -> list[tuple[str | None, BaseGeometry]]:
    """``(class, polygon)`` of every polygon part of the annotation objects (detections, cells and
    tiles are not drawings of areas and are left out)."""
    return [(f.classification, part) for f in features if f.object_type == "annotation"
            for part in polygon_parts([f.geometry])]


class TumourOracle:
    """Tumour ground truth per slide (polygons or masks).

    Slides without ground truth are tumour-free. ``mpp`` (µm/px: one value, or per slide) is only
    needed for mm² in :meth:`region_report`.
    """

    def __init__(self, truths: Mapping[str, BaseGeometry | TumourMask], *, mpp: Mpp = None,
                 sources: Mapping[str, Path] | None = None) -> None:
        self._truths: dict[str, BaseGeometry | TumourMask] = {}
        for sid, t in truths.items():
            if isinstance(t, BaseGeometry) and t.geom_type not in ("Polygon", "MultiPolygon"):
                t = valid_union(polygon_parts([t]))
            elif isinstance(t, BaseGeometry) and not t.is_valid:
                t = valid_union([t])
            self._truths[sid] = t
        self._mpp = mpp
        self.sources: dict[str, Path] = dict(sources or {})
        self._warned: set[str] = set()

    # -- builders ---------------------------------------------------------------------------------
    @classmethod
    def from_files(cls, files: Mapping[str, str | os.PathLike], *, mpp: Mpp = None,
                   mask_downsample: float | Mapping[str, float] | None = None,
                   positive: Iterable[str] = TUMOUR_CLASSES, exclusion: Iterable[str] = EXCLUSION_CLASSES
                   ) -> TumourOracle:
        """Ground truth from ``{slide_id: file}``; every file must exist.

        The format follows the suffix: ``.xml`` ASAP (groups in ``positive`` are tumour, in
        ``exclusion`` cut out; others ignored), ``.json`` NCRF polygons or QuPath GeoJSON (by
        content), ``.geojson`` QuPath (classes as for ASAP groups), images (``.png``, ``.tif``, …)
        masks at ``mask_downsample`` level-0 px per pixel.
        """
        pos, neg = class_names(positive), class_names(exclusion)
        truths: dict[str, BaseGeometry | TumourMask] = {}
        sources: dict[str, Path] = {}
        for sid, p in files.items():
            path = Path(p)
            if not path.is_file():
                raise OracleError(f"{path}: ground-truth file of slide {sid!r} not found")
            ds = mpp_for(mask_downsample, sid)  # same per-slide lookup as mpp
            truths[sid] = _load_truth(path, pos, neg, ds)
            sources[sid] = path
        log.info("tumour ground truth for %d slides (%d with tumour)", len(truths),
                 sum(not _is_empty(t) for t in truths.values()))
        return cls(truths, mpp=mpp, sources=sources)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, pattern: str = "{slide}.xml", *,
                    slides: Iterable[str] | None = None, **kwargs) -> TumourOracle:  # type: ignore[no-untyped-def]
        """Ground truth from the files in ``folder`` matching ``pattern`` (``{slide}`` = the slide id),
        e.g. ``"{slide}.xml"``, ``"{slide}.json"``, ``"{slide}_mask.png"``.

        Slides without a file are tumour-free, except those listed in ``slides``: each of them must
        have its file. A folder with no matching file at all is an error (a wrong pattern would
        otherwise make every slide tumour-free). Other keywords go to :meth:`from_files`.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise OracleError(f"{folder}: no such ground-truth folder")
        regex = _pattern_regex(pattern)
        files: dict[str, Path] = {}
        for path in sorted(folder.glob(pattern.replace("{slide}", "*"))):
            m = regex.match(path.relative_to(folder).as_posix())
            if m and path.is_file() and not is_hidden(path):  # leftovers (.NAME.tmp) and hidden files are not truth
                files[m["slide"]] = path
        if slides is not None:
            wanted = list(slides)
            missing = [s for s in wanted if s not in files]
            if missing:
                raise OracleError(f"{folder}: no ground-truth file for slide(s) {', '.join(map(repr, missing))} "
                                  f"(expected {pattern.replace('{slide}', missing[0])})")
            files = {s: files[s] for s in wanted}
        elif not files:
            raise OracleError(f"{folder}: no file matches {pattern!r}")
        return cls.from_files(files, **kwargs)

    @classmethod
    def from_synthetic(cls, cohort: SyntheticCohort | str | os.PathLike) -> TumourOracle:
        """The tumour ground truth of a synthetic cohort (:class:`alkit.synthetic.SyntheticCohort` or
        its folder): its tumour polygons, each slide's mpp. Its mitoses:
        :meth:`alkit.tasks.detection.oracle.MitosisOracle.from_synthetic`."""
        cohort = load_synthetic_cohort(cohort)
        mpp = {s.slide_id: s.mpp for s in cohort.slides}
        return cls.from_files({s.slide_id: s.annotation_path for s in cohort.slides}, mpp=mpp)

    # -- queries ----------------------------------------------------------------------------------
    @property
    def slides(self) -> list[str]:
        """Slides with a ground-truth file (others are tumour-free)."""
        return sorted(self._truths)

    def slide_mpp(self, slide_id: str) -> float | None:
        """The µm/px this oracle knows for ``slide_id`` (``None`` if none)."""
        return mpp_for(self._mpp, slide_id)

    def _truth(self, slide_id: str) -> BaseGeometry | TumourMask:
        t = self._truths.get(slide_id)
        if t is None:
            if slide_id not in self._warned:
                self._warned.add(slide_id)
                log.debug("%s: no ground truth, tumour-free", slide_id)
            return EMPTY_POLYGON
        return t

    def geometry(self, slide_id: str) -> BaseGeometry:
        """The slide's tumour as a (Multi)Polygon in level-0 px (empty when tumour-free)."""
        t = self._truth(slide_id)
        if isinstance(t, TumourMask):
            raise OracleError(f"{slide_id}: ground truth is a mask ({self.sources.get(slide_id, 'array')}), "
                              "not polygons")
        return t

    def tumour_areas_px(self, slide_id: str, boxes: np.ndarray) -> np.ndarray:
        """Exact tumour area (level-0 px²) inside each box ``(x, y, w, h)`` of ``boxes`` (n, 4)."""
        t = self._truth(slide_id)
        if isinstance(t, TumourMask):
            return mask_box_areas(t.mask, t.downsample, boxes)
        return geometry_box_areas(t, boxes)

    def tumour_area_px(self, slide_id: str) -> float:
        """The slide's whole tumour area in level-0 px²."""
        t = self._truth(slide_id)
        if isinstance(t, TumourMask):
            return float(t.mask.sum()) * t.downsample ** 2
        return float(t.area)

    def tumour_fraction(self, slide_id: str, grid: PatchGrid) -> np.ndarray:
        """Share of each cell of ``grid`` that is tumour, (rows, cols) float32 (exact; see :mod:`alkit.wsi.coverage`)."""
        t = self._truth(slide_id)
        if isinstance(t, TumourMask):
            return mask_cell_fractions(t.mask, t.downsample, grid)
        return geometry_cell_fractions(t, grid)

    def region_report(self, slide_id: str, box: Sequence[float], tissue_mm2: float | None = None, *,
                      mpp: float | None = None) -> RegionReport:
        """Tumour area (exact) inside the level-0 ``box``; ``tissue_mm2`` is passed through."""
        box = check_box(box, slide_id)
        m = require_mpp(mpp, self._mpp, slide_id)
        tumour_px = float(self.tumour_areas_px(slide_id, np.array([box]))[0])
        return RegionReport(slide_id, box, m, px2_to_mm2(box[2] * box[3], m),
                            None if tissue_mm2 is None else float(tissue_mm2),
                            {"tumour_mm2": px2_to_mm2(tumour_px, m)})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self._truths)} slides)"


def _is_empty(t: BaseGeometry | TumourMask) -> bool:
    return (not t.mask.any()) if isinstance(t, TumourMask) else t.is_empty


def _load_truth(path: Path, positive: set[str], exclusion: set[str],
                mask_downsample: float | None) -> BaseGeometry | TumourMask:
    """One slide's tumour ground truth from a file, by suffix (and content for ``.json``)."""
    suffix = path.suffix.lower()
    src = str(path)
    if suffix == ".xml":
        anns = call_reader(read_asap_xml, path, types=ASAP_AREA_TYPES)
        pos, neg = split_by_class(((a.group, a.coords) for a in anns), positive, exclusion, src)
        return union_minus_exclusions(pos, neg, src)
    if suffix in (".json", ".geojson"):
        data = read_json(path, OracleError, "annotation JSON file")
        if suffix == ".json" and is_ncrf(data):
            ncrf = call_reader(lambda p: parse_ncrf(data, p), path)
            return union_minus_exclusions([p.coords for p in ncrf.positive], [p.coords for p in ncrf.negative], src)
        features = call_reader(lambda p: parse_qupath_geojson(data, p), path)
        pos, neg = split_by_class(qupath_polygons(features), positive, exclusion, src)
        return union_minus_exclusions(pos, neg, src)
    if suffix in MASK_SUFFIXES:
        if mask_downsample is None:
            raise OracleError(f"{path}: a mask image needs mask_downsample= (level-0 px per mask pixel)")
        return TumourMask(call_reader(read_mask_image, path), float(mask_downsample))
    raise OracleError(f"{path}: unknown ground-truth format {path.suffix!r} (use .xml, .json, .geojson or a "
                      "mask image)")


def _pattern_regex(pattern: str) -> re.Pattern:
    if pattern.count("{slide}") != 1:
        raise OracleError(f"file pattern {pattern!r} must contain '{{slide}}' exactly once")
    head, tail = pattern.split("{slide}")
    return re.compile(re.escape(head) + r"(?P<slide>.+?)" + re.escape(tail) + r"\Z")
