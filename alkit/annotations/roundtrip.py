"""The annotation round trip: region objects out to QuPath / ASAP, annotators' drawings back in.

Out. Every requested region becomes one object of the class :data:`REGION_CLASS` (``"Region"``), never
the target class, so a region cannot be taken for a label:

- QuPath GeoJSON: a locked (``isLocked``) annotation with ``classification = {"name": "Region", ...}``,
  the region id as ``properties.name``, a UUID derived from the id (UUID5) as the Feature's ``id`` (QuPath
  ≥ 0.4 keeps it as the object's UUID), and ``rank``, ``score``, ``cycle`` in ``properties.measurements``
  (shown in QuPath's measurement table) beside ``strategy`` and ``alkit_region_id`` properties;
- ASAP XML: a rectangle named with the region id in the group ``Region``; the file also declares the
  empty group :data:`ASAP_SKIPPED_GROUP`.

In. :func:`read_annotated` reads what an annotator saved (a QuPath GeoJSON export or an ASAP XML) for one
slide. Region objects are found by their id (QuPath: the UUID, else the name; ASAP: the name), never by
geometry; the box used is always the exported one, so moving, resizing or reclassifying a region object
changes nothing (a note says so). Objects of the class ``Region`` (or ``Region: ...``) and objects in
the ASAP group ``Region`` are never drawings. Every other annotation is a drawing, clipped to each region
box it overlaps (so a drawing crossing a region boundary counts only inside); a drawing that overlaps no
region is reported (:class:`OutsideRegionsError`), never silently dropped.

Skipping a region (the annotator could not or would not annotate it): in QuPath, set the region object's
class to ``Region: skipped`` (or any class named ``Skipped``), or add the word ``skip`` after the id in
its name (Annotations › Set properties works on locked objects); in ASAP, move the rectangle into the group
``Region skipped`` or add ``skip`` to its name.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from alkit.annotations import AnnotationFileError
from alkit.annotations.asap import read_asap_xml
from alkit.annotations.qupath import QuPathFeature, read_qupath_geojson
from alkit.errors import AlkitError

log = logging.getLogger(__name__)

__all__ = ["REGION_CLASS", "REGION_COLOR", "SKIPPED_CLASS", "ASAP_SKIPPED_GROUP", "RegionAnnotation",
           "AnnotatedFile", "OutsideDrawing", "OutsideRegionsError", "read_annotated", "inspect_annotated",
           "region_uuid", "qupath_region_features", "asap_region_annotations"]

#: The class of exported region objects (never a label).
REGION_CLASS = "Region"
#: QuPath's colour of the region class (cyan: unlike any stain or the usual tumour red).
REGION_COLOR = (0, 190, 255)
#: The class (a QuPath derived class) that marks a region as skipped.
SKIPPED_CLASS = "Region: skipped"
#: The ASAP group that marks a region as skipped.
ASAP_SKIPPED_GROUP = "Region skipped"
_SKIP_WORD = re.compile(r"\bskip(ped)?\b", re.IGNORECASE)
_NAMESPACE = uuid.UUID("5b0e7c1c-3f7e-5d4a-9a57-a1c0de5e9105")  # alkit's namespace for region UUIDs
_ASAP_AREA_TYPES = ("polygon", "spline", "rectangle")
_ASAP_POINT_TYPES = ("dot", "pointset")
_BOX_TOLERANCE = 1.0  # px: a region object farther than this from its box was moved or resized


def region_uuid(region_id: str) -> str:
    """The UUID (version 5, alkit's namespace) that identifies the region's QuPath object."""
    return str(uuid.uuid5(_NAMESPACE, region_id))


def _ring(box: Sequence[float]) -> list[list[float]]:
    x, y, w, h = box
    return [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]


def qupath_region_features(regions: Iterable) -> list[dict]:
    """GeoJSON Features (QuPath ≥ 0.4 layout) of region records: locked, class ``Region``, stable UUID."""
    out = []
    for r in regions:
        measurements = {"rank": int(r.rank), "cycle": int(r.cycle)}
        if r.score is not None and np.isfinite(r.score):
            measurements["score"] = float(r.score)
        out.append({"type": "Feature", "id": region_uuid(r.id),
                    "geometry": {"type": "Polygon", "coordinates": [_ring(r.box_px)]},
                    "properties": {"objectType": "annotation", "name": r.id, "isLocked": True,
                                   "classification": {"name": REGION_CLASS, "color": list(REGION_COLOR)},
                                   "measurements": measurements, "strategy": r.strategy,
                                   "alkit_region_id": r.id}})
    return out


def asap_region_annotations(regions: Iterable) -> tuple[list[tuple[str, str, list]], dict[str, str]]:
    """``(annotations, groups)`` for :func:`alkit.annotations.asap.write_asap_xml`: one rectangle per region,
    named with its id, in the group ``Region``; the groups declare ``Region`` and ``Region skipped``."""
    anns = [(r.id, REGION_CLASS, _ring(r.box_px)[:4]) for r in regions]
    return anns, {REGION_CLASS: "#%02X%02X%02X" % REGION_COLOR, ASAP_SKIPPED_GROUP: "#808080"}


@dataclass
class RegionAnnotation:
    """What the annotator did in one region: ``drawings`` ``[(class, geometry clipped to the box)]``, whether
    they marked it ``skipped``, whether its region object was ``present`` in the file, and ``notes``
    (moved / resized / reclassified region objects)."""

    drawings: list[tuple[str | None, BaseGeometry]] = field(default_factory=list)
    skipped: bool = False
    present: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class OutsideDrawing:
    """A drawing that overlaps no requested region: its position in the file, class and level-0 bounds."""

    index: int
    cls: str | None
    bounds: tuple[float, float, float, float]

    def describe(self) -> str:
        x0, y0, x1, y1 = self.bounds
        return f"#{self.index} ({self.cls or 'unclassified'}) at x {x0:.0f}-{x1:.0f}, y {y0:.0f}-{y1:.0f}"


class OutsideRegionsError(AlkitError, ValueError):
    """Drawings outside every requested region: ``path`` and ``outside`` (the :class:`OutsideDrawing` list)."""

    def __init__(self, path: Path, outside: list[OutsideDrawing]):
        self.path, self.outside = path, outside
        shown = "; ".join(o.describe() for o in outside[:5]) + ("; ..." if len(outside) > 5 else "")
        super().__init__(f"{path}: {len(outside)} drawing(s) outside every requested region ({shown}); "
                         "draw only inside the Region rectangles, or delete these objects")


@dataclass
class AnnotatedFile:
    """One annotator's file, read: per region id its :class:`RegionAnnotation`, and the drawings outside."""

    path: Path
    regions: dict[str, RegionAnnotation]
    outside: list[OutsideDrawing] = field(default_factory=list)

    def check(self) -> dict[str, RegionAnnotation]:
        """The regions, or :class:`OutsideRegionsError` when drawings lie outside every region."""
        if self.outside:
            raise OutsideRegionsError(self.path, self.outside)
        return self.regions


def _is_region_class(cls: str | None) -> bool:
    return cls is not None and (cls == REGION_CLASS or cls.startswith(REGION_CLASS + ":"))


def _is_skip_class(cls: str | None) -> bool:
    return cls is not None and (cls.lower() in ("skipped", "skip") or bool(
        _is_region_class(cls) and _SKIP_WORD.search(cls[len(REGION_CLASS):])))


class _Matcher:
    """Finds the region an object names: by UUID, else by a name that is the id (plus, maybe, words after it)."""

    def __init__(self, regions: list) -> None:
        self.by_uuid = {region_uuid(r.id): r for r in regions}
        self.ids = sorted((r.id for r in regions), key=len, reverse=True)  # longest first: "s:c0:r1" vs "s:c0:r10"
        self.by_id = {r.id: r for r in regions}

    def match(self, uuid_: str | None, name: str | None):
        """``(region, the name's words after the id)``, or ``(None, "")`` when the object names no region."""
        text = (name or "").strip()
        named = next((rid for rid in self.ids
                      if text == rid or (text.startswith(rid) and not text[len(rid)].isalnum())), None)
        region = self.by_uuid.get(uuid_) if uuid_ is not None else None
        if region is None and named is not None:
            region = self.by_id[named]
        if region is None:
            return None, ""
        return region, text[len(region.id):] if text.startswith(region.id) else text


def _clip(geom: BaseGeometry, box: Sequence[float]) -> BaseGeometry | None:
    """``geom`` inside the box, or None when nothing of it is (polygons: no area; lines: no length)."""
    x, y, w, h = box
    rect = shapely.box(x, y, x + w, y + h)
    if geom.geom_type in ("Point", "MultiPoint"):
        pts = shapely.get_coordinates(geom)
        keep = pts[(pts[:, 0] >= x) & (pts[:, 0] < x + w) & (pts[:, 1] >= y) & (pts[:, 1] < y + h)]
        if not len(keep):
            return None
        return shapely.Point(keep[0]) if len(keep) == 1 and geom.geom_type == "Point" else shapely.MultiPoint(keep)
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    piece = geom.intersection(rect)
    if piece.is_empty or (geom.area > 0 and piece.area <= 0) or (geom.area == 0 and piece.length <= 0):
        return None
    return piece


class _Collector:
    def __init__(self, path: Path, regions: list) -> None:
        self.path, self.regions = path, regions
        self.out = {r.id: RegionAnnotation() for r in regions}
        self.outside: list[OutsideDrawing] = []

    def region_object(self, region, geom: BaseGeometry, cls: str | None, rest: str, region_group: bool) -> None:
        ann = self.out[region.id]
        ann.present = True
        if _is_skip_class(cls) or _SKIP_WORD.search(rest):
            ann.skipped = True
        elif not (region_group or _is_region_class(cls)):
            ann.notes.append(f"{self.path}: region {region.id} was reclassified to {cls!r}; it stays a region "
                             "(draw labels as separate objects)")
        bx, by, bw, bh = region.box_px
        if np.abs(np.asarray(geom.bounds) - [bx, by, bx + bw, by + bh]).max() > _BOX_TOLERANCE:
            ann.notes.append(f"{self.path}: region {region.id} was moved or resized; the exported box "
                             f"{list(region.box_px)} is used")
        for note in ann.notes:
            log.warning("%s", note)

    def drawing(self, index: int, cls: str | None, geom: BaseGeometry) -> None:
        hit = False
        for r in self.regions:
            piece = _clip(geom, r.box_px)
            if piece is not None:
                self.out[r.id].drawings.append((cls, piece))
                hit = True
        if not hit:
            self.outside.append(OutsideDrawing(index, cls, tuple(float(v) for v in geom.bounds)))


def _check_regions(regions: list) -> None:
    slides = {r.slide for r in regions}
    if len(slides) > 1:
        raise ValueError(f"read_annotated takes the regions of one slide, got {sorted(slides)}")


def _read_qupath(path: Path, c: _Collector, matcher: _Matcher) -> None:
    try:
        features: list[QuPathFeature] = read_qupath_geojson(path)
    except FileNotFoundError:
        raise AnnotationFileError(f"{path}: no such annotation file") from None
    for i, f in enumerate(features):
        region, rest = matcher.match(f.uuid, f.name)
        if region is None and isinstance(f.properties.get("alkit_region_id"), str):
            region, rest = matcher.by_id.get(f.properties["alkit_region_id"]), ""
        if region is not None:
            c.region_object(region, f.geometry, f.classification, rest, False)
        elif _is_region_class(f.classification) or _is_skip_class(f.classification):
            log.warning("%s: object #%d of class %r names no requested region; ignored", path, i, f.classification)
        elif f.object_type != "annotation":
            log.debug("%s: %s object #%d ignored (only annotations are drawings)", path, f.object_type, i)
        elif not f.geometry.is_empty:
            c.drawing(i, f.classification, f.geometry)


def _read_asap(path: Path, c: _Collector, matcher: _Matcher) -> None:
    try:
        areas = read_asap_xml(path, types=_ASAP_AREA_TYPES)
        dots = read_asap_xml(path, types=_ASAP_POINT_TYPES)
    except FileNotFoundError:
        raise AnnotationFileError(f"{path}: no such annotation file") from None
    for i, a in enumerate(areas):
        region, rest = matcher.match(None, a.name)
        in_region_group = a.group in (REGION_CLASS, ASAP_SKIPPED_GROUP)
        if region is not None:
            geom = shapely.MultiPoint(a.coords) if len(a.coords) else shapely.Point()
            skip_rest = rest + (" skipped" if a.group == ASAP_SKIPPED_GROUP else "")
            c.region_object(region, geom.envelope if len(a.coords) else geom, a.group, skip_rest, in_region_group)
        elif in_region_group:
            log.warning("%s: annotation %r in group %r names no requested region; ignored", path, a.name, a.group)
        elif len(np.unique(a.coords, axis=0)) >= 3:
            c.drawing(i, a.group, shapely.Polygon(a.coords))
        else:
            log.warning("%s: annotation %r has fewer than 3 distinct vertices; skipped", path, a.name)
    for j, a in enumerate(dots):
        if a.group in (REGION_CLASS, ASAP_SKIPPED_GROUP) or not len(a.coords):
            continue
        c.drawing(len(areas) + j, a.group, shapely.MultiPoint(a.coords) if len(a.coords) > 1
                  else shapely.Point(a.coords[0]))


def inspect_annotated(path: str | os.PathLike, regions: Sequence) -> AnnotatedFile:
    """Read an annotator's QuPath GeoJSON (``.geojson`` / ``.json``) or ASAP XML (``.xml``) for the
    ``regions`` of one slide (records with ``id``, ``slide``, ``box_px``); drawings outside every region are
    collected in :attr:`AnnotatedFile.outside`, not raised."""
    path, regions = Path(path), list(regions)
    _check_regions(regions)
    c, matcher = _Collector(path, regions), _Matcher(regions)
    if path.suffix.lower() == ".xml":
        _read_asap(path, c, matcher)
    elif path.suffix.lower() in (".geojson", ".json"):
        _read_qupath(path, c, matcher)
    else:
        raise AnnotationFileError(f"{path}: not a QuPath GeoJSON (.geojson, .json) or ASAP XML (.xml) file")
    return AnnotatedFile(path, c.out, c.outside)


def read_annotated(path: str | os.PathLike, regions: Sequence) -> dict[str, RegionAnnotation]:
    """Per region id what the annotator did (see :class:`RegionAnnotation`); :class:`OutsideRegionsError`
    (naming the file, how many and where) when drawings lie outside every region."""
    return inspect_annotated(path, regions).check()
