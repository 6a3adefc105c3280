"""The human annotator: what people drew inside the regions they were asked to annotate.

Regions go out with :func:`alkit.selection.export.write_selection` (``regions.json`` beside QuPath
GeoJSON / ASAP XML); the annotators' drawings come back per slide as QuPath GeoJSON, NCRF JSON or
ASAP XML, and :class:`AnnotationOracle` turns them into an oracle like the simulated ones. With a
version-2 ``regions.json`` (or its records) the region objects in QuPath / ASAP files are found by their
id (:mod:`alkit.annotations.roundtrip`), never by geometry, and regions the annotator marked skipped
are left out; with bare boxes (a mapping, version-1 lists) a rectangle within 1 px of a region box is
taken for the region itself. Then:
drawn tumour (the geometry rules of :mod:`alkit.annotations.geometry`) clipped to the regions, and
drawn points (mitoses, hard negatives by :func:`alkit.tasks.detection.labels.mitosis_label`) inside
them. Boxes outside the regions were never shown to anyone: asking about them raises
:class:`~alkit.al.oracle.NotAnnotatedError`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Union

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from alkit.al.oracle import Mpp, NotAnnotatedError, OracleError, RegionReport, call_reader, check_box
from alkit.annotations.asap import read_asap_xml
from alkit.annotations.geometry import (EMPTY_POLYGON, boxes_union, class_names, polygon_parts, ring_polygons,
                                        split_by_class, union_minus_exclusions)
from alkit.annotations.ncrf import is_ncrf, parse_ncrf
from alkit.annotations.qupath import QuPathFeature, parse_qupath_geojson
from alkit.annotations.roundtrip import inspect_annotated
from alkit.ids import check_id, safe_name
from alkit.jsonfile import read_json
from alkit.tasks.detection.labels import HARD_NEGATIVE, MITOSIS, check_classes, mitosis_label
from alkit.tasks.detection.oracle import MitosisOracle
from alkit.tasks.segmentation.oracle import (ASAP_AREA_TYPES, EXCLUSION_CLASSES, TUMOUR_CLASSES, TumourOracle,
                                             qupath_polygons)
from alkit.wsi.coverage import geometry_cell_fractions, points_in_box
from alkit.wsi.grid import PatchGrid

log = logging.getLogger(__name__)

__all__ = ["AnnotationOracle", "Regions", "load_regions"]

#: Regions as a ``regions.json`` path, a :class:`~alkit.selection.regions_file.RegionsDocument`, a mapping
#: ``slide -> boxes``, or an iterable of picks / region records / dicts.
Regions = Union[str, os.PathLike, Mapping[str, Iterable[Sequence[float]]], Iterable]

_ASAP_POINT_TYPES = ("dot", "pointset")
_DRAWING_SUFFIXES = (".geojson", ".json", ".xml")


def _records(regions: Regions) -> list | None:
    """The region records (with ids) of a version-2 ``regions.json`` / document / record list, else None."""
    from alkit.selection.regions_file import RegionRecord, RegionsDocument, RegionsFileError, read_regions

    if isinstance(regions, (str, os.PathLike)):
        try:
            doc = read_regions(regions)
        except RegionsFileError as exc:
            raise OracleError(str(exc)) from None
        return doc.regions if doc.version >= 2 else None
    if isinstance(regions, RegionsDocument):
        return regions.regions
    if isinstance(regions, (list, tuple)) and regions and all(isinstance(r, RegionRecord) for r in regions):
        return list(regions)
    return None


def load_regions(regions: Regions) -> dict[str, np.ndarray]:
    """Regions per slide as ``{slide_id: (n, 4) level-0 boxes}`` from a ``regions.json`` written by
    :func:`alkit.selection.export.write_selection` (version 2, or version 1's list of ``{slide, x, y, w, h,
    ...}``), a :class:`~alkit.selection.regions_file.RegionsDocument`, a mapping ``slide -> boxes``, or an
    iterable of :class:`alkit.selection.strategy.RegionPick` / region records / such dicts."""
    from alkit.selection.regions_file import RegionsDocument, RegionsFileError, parse_regions

    source = "regions"
    if isinstance(regions, (str, os.PathLike)):
        source = str(regions)
        data = read_json(Path(regions), OracleError, "regions JSON file")
        if isinstance(data, Mapping) and "format" not in data:
            regions = data  # a JSON {slide: [[x, y, w, h], ...]}
        else:
            try:
                regions = parse_regions(data, source).regions  # type: ignore[assignment]
            except RegionsFileError as exc:
                raise OracleError(str(exc)) from None
    elif isinstance(regions, RegionsDocument):
        regions = regions.regions  # type: ignore[assignment]
    out: dict[str, list] = {}
    if isinstance(regions, Mapping):
        for sid, boxes in regions.items():
            if not isinstance(boxes, (list, tuple, np.ndarray)) or not all(
                    isinstance(b, (list, tuple, np.ndarray)) for b in boxes):
                raise OracleError(f"{source}: slide {str(sid)[:80]!r} must map to a list of [x, y, w, h] boxes")
            out.setdefault(str(sid), []).extend(list(b) for b in boxes)
    else:
        if not isinstance(regions, Iterable):
            raise OracleError(f"{source}: regions must be a list of {{slide, x, y, w, h}} or a mapping")
        for i, r in enumerate(regions):
            if hasattr(r, "box_px"):  # a region record
                out.setdefault(r.slide, []).append(list(r.box_px))
                continue
            d = r.to_dict() if hasattr(r, "to_dict") else r
            try:
                box = d["box_px"] if isinstance(d, Mapping) and "box_px" in d else [d["x"], d["y"], d["w"], d["h"]]
                out.setdefault(str(d["slide"]), []).append(list(box))
            except (KeyError, TypeError, IndexError):
                raise OracleError(f"{source}: region #{i} lacks slide/x/y/w/h") from None
    result = {}
    for sid, boxes in out.items():
        result[sid] = np.array([check_box(b, f"{source}: {sid}") for b in boxes], np.float64).reshape(-1, 4)
    return result


class AnnotationOracle(TumourOracle):
    """What human annotators drew inside the regions they were asked to annotate.

    Only the requested regions count: drawn tumour is clipped to the union of the slide's region
    boxes, and points (mitoses) outside them are dropped. Cells outside every region get tumour
    fraction 0 (use :meth:`annotated_fraction` to know which cells were looked at);
    :meth:`region_report` refuses a box that is not inside the annotated regions
    (:class:`~alkit.al.oracle.NotAnnotatedError`) and reports the drawn tumour and points:
    findings ``{"tumour_mm2": float, "mitoses": int, "hard_negatives": int}``. :attr:`points` is
    the drawn points as a :class:`~alkit.tasks.detection.oracle.MitosisOracle`.
    """

    def __init__(self, truths: Mapping[str, BaseGeometry], regions: Mapping[str, np.ndarray] | None = None, *,
                 mpp: Mpp = None, points: MitosisOracle | None = None,
                 sources: Mapping[str, Path] | None = None) -> None:
        if regions is None:
            raise OracleError("an AnnotationOracle needs the regions that were annotated; build it with "
                              "AnnotationOracle.from_drawings(folder, regions)")
        self._regions = {k: np.asarray(v, np.float64).reshape(-1, 4) for k, v in regions.items()}
        self._region_union = {k: boxes_union(v) for k, v in self._regions.items()}
        clipped = {}
        for sid, geom in truths.items():
            area = self._region_union.get(sid, EMPTY_POLYGON)
            clipped[sid] = geom.intersection(area) if not geom.is_empty else geom
        super().__init__(clipped, mpp=mpp, sources=sources)
        self._points = points if points is not None else MitosisOracle({}, mpp=mpp)

    @classmethod
    def from_drawings(cls, folder: str | os.PathLike, regions: Regions, *,
                      positive: Iterable[str] = TUMOUR_CLASSES, exclusion: Iterable[str] = EXCLUSION_CLASSES,
                      mitosis_classes: Mapping[str, str | None] | None = None, mpp: Mpp = None,
                      allow_missing: bool = False) -> AnnotationOracle:
        """Read annotators' drawings from ``folder``: per slide ``<slide>.geojson`` / ``<slide>.json``
        (QuPath GeoJSON, or NCRF polygons) and/or ``<slide>.xml`` (ASAP); several files of a slide
        are combined.

        ``regions`` are the regions that were exported (see :func:`load_regions`). Areas: QuPath
        annotation objects / ASAP polygons whose class (ASAP: group) is in ``positive`` are tumour,
        in ``exclusion`` cut out, others ignored; the exported region rectangles, if the tool wrote
        them back, are never drawings: with a version-2 ``regions.json`` (or its records) they are
        found by their id (:func:`alkit.annotations.roundtrip.inspect_annotated`; regions marked
        skipped are left out of the oracle's regions, drawings outside every region are ignored
        with a warning), with bare boxes by their geometry (a rectangle within 1 px of a region
        box), whatever their class (a region exported with class "tumour" must not become tumour). Points (QuPath points, ASAP dots) are mitoses or hard negatives by
        :func:`~alkit.tasks.detection.labels.mitosis_label` (``mitosis_classes`` overrides).
        A slide with regions but no drawing file is an error unless ``allow_missing`` (then it
        counts as annotated and tumour-free).
        """
        check_classes(mitosis_classes)
        folder = Path(folder)
        if not folder.is_dir():
            raise OracleError(f"{folder}: no such drawings folder")
        boxes_by_slide = load_regions(regions)
        records = _records(regions)  # with ids: region objects found by id, skipped regions left out
        pos, neg = class_names(positive), class_names(exclusion)
        truths: dict[str, BaseGeometry] = {}
        points: dict[str, dict[str, list]] = {MITOSIS: {}, HARD_NEGATIVE: {}}
        sources: dict[str, Path] = {}
        for sid, boxes in boxes_by_slide.items():
            check_id(sid, source=regions if isinstance(regions, (str, os.PathLike)) else None, error=OracleError)
            names = dict.fromkeys([sid, safe_name(sid)])  # as named, or as the export names its files
            files = [folder / f"{name}{ext}" for name in names for ext in _DRAWING_SUFFIXES]
            files = [f for f in files if f.is_file()]
            if not files:
                if not allow_missing:
                    raise OracleError(f"{folder}: no drawings for slide {sid!r} ({sid}.geojson, {sid}.json or "
                                      f"{sid}.xml), which has {len(boxes)} region(s) to annotate")
                log.info("%s: no drawings for %s; counted as tumour-free", folder, sid)
                truths[sid] = EMPTY_POLYGON
                continue
            areas: list[tuple[str | None, BaseGeometry]] = []
            dots: list[tuple[str | None, np.ndarray]] = []
            mine = [r for r in records if r.slide == sid] if records is not None else None
            skipped: set[str] = set()
            by_id = True
            for f in files:
                if mine is not None and not _is_ncrf_file(f):
                    a, d, sk = _read_by_id(f, mine)
                    skipped |= sk
                else:
                    a, d = _read_drawing(f, pos, neg)
                    by_id = False
                areas += a
                dots += d
            sources[sid] = files[0]
            if skipped:
                log.info("%s: region(s) %s marked skipped; not labeled", sid, sorted(skipped))
                boxes = np.array([r.box_px for r in mine if r.id not in skipped], np.float64).reshape(-1, 4)
                boxes_by_slide[sid] = boxes
            kept = areas if by_id else [(c, g) for c, g in areas if not _is_outline(g, boxes)]
            if len(kept) < len(areas):
                log.debug("%s: %d region outline(s) ignored", sid, len(areas) - len(kept))
            p, n = split_by_class(kept, pos, neg, f"{folder}/{sid}")
            geom = union_minus_exclusions(p, n, str(files[0]))
            inside = geom.intersection(boxes_union(boxes))
            if geom.area - inside.area > 1e-6 * max(geom.area, 1.0):
                log.info("%s: %.0f px² of drawn tumour outside the requested regions ignored", sid,
                         geom.area - inside.area)
            truths[sid] = inside
            for cls_name, xy in dots:
                label = mitosis_label(cls_name, mitosis_classes)
                if label is None:
                    continue
                xy = np.asarray(xy, np.float64).reshape(-1, 2)
                ok = np.zeros(len(xy), bool)
                for b in boxes:
                    ok |= points_in_box(xy, b)
                points[label].setdefault(sid, []).extend(map(tuple, xy[ok]))
        stray = sorted({p.stem for p in folder.iterdir() if p.suffix.lower() in _DRAWING_SUFFIXES}
                       - set(boxes_by_slide) - {"regions"})
        if stray:
            log.warning("%s: drawings for slides without requested regions ignored: %s", folder, stray[:10])
        drawn = MitosisOracle(points[MITOSIS], points[HARD_NEGATIVE], mpp=mpp)
        return cls(truths, boxes_by_slide, mpp=mpp, points=drawn, sources=sources)

    @property
    def points(self) -> MitosisOracle:
        """The drawn mitoses and hard negatives inside the regions (what the detection task reads from human drawings)."""
        return self._points

    def regions(self, slide_id: str) -> np.ndarray:
        """The slide's annotated region boxes, (n, 4) level-0 ``(x, y, w, h)``."""
        return self._regions.get(slide_id, np.zeros((0, 4))).copy()

    def annotated_fraction(self, slide_id: str, grid: PatchGrid) -> np.ndarray:
        """Share of each cell of ``grid`` inside the annotated regions, (rows, cols) float32."""
        return geometry_cell_fractions(self._region_union.get(slide_id), grid)

    def region_report(self, slide_id: str, box: Sequence[float], tissue_mm2: float | None = None, *,
                      mpp: float | None = None) -> RegionReport:
        """Drawn tumour area and points inside ``box``, which must lie inside the annotated regions."""
        x, y, w, h = check_box(box, slide_id)
        rect = shapely.box(x, y, x + w, y + h)
        outside = rect.difference(self._region_union.get(slide_id, EMPTY_POLYGON)).area
        if outside > 1e-6 * rect.area:
            raise NotAnnotatedError(f"{slide_id}: box {(x, y, w, h)} is not inside the annotated regions "
                                    f"({outside / rect.area:.1%} of it was never shown to an annotator)")
        report = super().region_report(slide_id, (x, y, w, h), tissue_mm2, mpp=mpp)
        n_mit, n_hard = self._points.counts_in(slide_id, (x, y, w, h))
        return RegionReport(report.slide_id, report.box, report.mpp, report.region_mm2, report.tissue_mm2,
                            {**report.findings, "mitoses": n_mit, "hard_negatives": n_hard})

    def __repr__(self) -> str:
        return f"AnnotationOracle({len(self._regions)} slides with regions, points={self._points!r})"


def _is_outline(geom: BaseGeometry, boxes: np.ndarray, tol: float = 1.0) -> bool:
    """Whether ``geom`` is one of the region rectangles themselves (re-exported by the annotation tool)."""
    if not len(boxes) or geom.geom_type != "Polygon":
        return False
    b = np.asarray(geom.bounds)
    corners = np.stack([boxes[:, 0], boxes[:, 1], boxes[:, 0] + boxes[:, 2], boxes[:, 1] + boxes[:, 3]], axis=1)
    near = np.all(np.abs(corners - b) <= tol, axis=1)
    return bool(near.any()) and abs(geom.area - (b[2] - b[0]) * (b[3] - b[1])) <= 1e-3 * geom.area + tol


def _is_ncrf_file(path: Path) -> bool:
    return path.suffix.lower() == ".json" and is_ncrf(read_json(path, OracleError, "drawings JSON file"))


def _read_by_id(path: Path, regions: list) -> tuple[list, list, set[str]]:
    """``(areas, points, skipped region ids)`` of a QuPath / ASAP file whose region objects carry their ids."""
    annotated = call_reader(lambda p: inspect_annotated(p, regions), path)
    if annotated.outside:
        log.warning("%s: %d drawing(s) outside every requested region ignored (%s)", path, len(annotated.outside),
                    "; ".join(o.describe() for o in annotated.outside[:3]))
    areas, dots, skipped = [], [], set()
    for rid, ann in annotated.regions.items():
        if ann.skipped:
            skipped.add(rid)
            continue
        for cls_name, geom in ann.drawings:
            if geom.geom_type in ("Point", "MultiPoint"):
                dots.append((cls_name, shapely.get_coordinates(geom)))
            else:
                areas += [(cls_name, part) for part in polygon_parts([geom])]
    return areas, dots, skipped


def _qupath_points(features: list[QuPathFeature]) -> list[tuple[str | None, np.ndarray]]:
    out = []
    for f in features:
        if f.geometry.geom_type in ("Point", "MultiPoint"):
            out.append((f.classification, shapely.get_coordinates(f.geometry)))
    return out


def _read_drawing(path: Path, positive: set[str], exclusion: set[str]) -> tuple[list, list]:
    """``(areas, points)`` of one drawing file: ``[(class, polygon)]``, ``[(class, (k, 2) points)]``."""
    def polygons(items: list[tuple[str | None, np.ndarray]]) -> list[tuple[str | None, BaseGeometry]]:
        return [(c, g) for c, coords in items for g in ring_polygons([coords], str(path))]

    if path.suffix.lower() == ".xml":
        areas = call_reader(read_asap_xml, path, types=ASAP_AREA_TYPES)
        dots = call_reader(read_asap_xml, path, types=_ASAP_POINT_TYPES)
        return polygons([(a.group, a.coords) for a in areas]), [(a.group, a.coords) for a in dots]
    data = read_json(path, OracleError, "drawings JSON file")
    if is_ncrf(data):
        ncrf = call_reader(lambda p: parse_ncrf(data, p), path)
        tumour, excluded = min(positive, default=None), min(exclusion, default=None)
        return polygons([(tumour, p.coords) for p in ncrf.positive]
                        + [(excluded, p.coords) for p in ncrf.negative]), []
    features = call_reader(lambda p: parse_qupath_geojson(data, p), path)
    return qupath_polygons(features), _qupath_points(features)
