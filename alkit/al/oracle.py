"""Oracles: the annotator of the active-learning loop, simulated from ground truth or read from humans.

An oracle reveals, for a slide, what an annotator would say inside a region: how much of it is
tumour, which cells of a patch grid are tumour, where the mitoses are. The loop only talks to the
:class:`Oracle` protocol, so it runs the same with

- :class:`TumourOracle`: tumour ground truth per slide from CAMELYON16 ASAP XML (groups ``_0``,
  ``_1``, ``Tumor`` are tumour, ``_2`` are exclusions cut out of it), NCRF-style JSON polygons
  (``positive`` minus ``negative``), QuPath GeoJSON, or mask images (PNG/TIFF, any value > 0 is
  tumour, one mask pixel = ``mask_downsample`` level-0 px); optionally with mitoses attached;
- :class:`MitosisOracle`: mitotic figures and hard negatives (lookalikes) as level-0 points from
  SlideRunner SQLite databases (``deleted`` records dropped) or COCO-style JSON (box centres);
- :class:`AnnotationOracle`: what human annotators drew inside the exported regions (QuPath GeoJSON
  or ASAP XML per slide), clipped to those regions.

Geometry rules. Tumour = union of the positive polygons minus the union of the exclusions (so
overlapping annotations are not counted twice). Invalid polygons (CAMELYON16 has self-crossing
rings, e.g. in ``Tumor_001``) are repaired with ``shapely.make_valid``, which keeps every lobe of a
self-crossing ring; ``buffer(0)`` is not used because it silently drops the lobes whose orientation
flips (a figure-eight loses half its area). Rings with fewer than three distinct vertices are
skipped with a warning. ASAP ``Spline`` annotations are taken as the polygon of their control
points. A slide with no ground-truth file is tumour-free (CAMELYON16's normal slides have none); a
slide named explicitly (``from_files``, ``from_folder(slides=...)``) whose file is missing is an
error.

Cell labels (:meth:`TumourOracle.tumour_fraction`) are exact shares of each grid cell covered by the
geometry, computed by :mod:`alkit.wsi.coverage` (exact areas for cells the boundary crosses, one
vectorised inside test for the rest). Areas in reports are mm² and need the slide's µm/px, given per
oracle, per slide, or per call: alkit never guesses a resolution.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, Union, runtime_checkable

import numpy as np
import shapely
from PIL import Image
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from alkit.annotations.asap import read_asap_xml
from alkit.annotations.ncrf import is_ncrf, parse_ncrf
from alkit.annotations.qupath import QuPathFeature, parse_qupath_geojson
from alkit.annotations.sliderunner import read_sliderunner
from alkit.wsi.coverage import (geometry_box_areas, geometry_cell_fractions, mask_box_areas, mask_cell_fractions,
                            point_cell_counts, points_in_box)
from alkit.errors import AlkitError
from alkit.wsi.grid import PatchGrid
from alkit.jsonfile import read_json

if TYPE_CHECKING:
    from alkit.synthetic import SyntheticCohort

log = logging.getLogger(__name__)

__all__ = ["Oracle", "TumourOracle", "MitosisOracle", "AnnotationOracle", "RegionReport", "TumourMask",
           "OracleError", "NotAnnotatedError", "mitosis_label", "tumour_geometry", "load_regions",
           "TUMOUR_CLASSES", "EXCLUSION_CLASSES", "MITOSIS", "HARD_NEGATIVE"]

Box = tuple[float, float, float, float]
MpP = Union[float, Mapping[str, float], None]

#: Class / group names that mean tumour (CAMELYON16 ASAP groups, QuPath's built-in class); case-insensitive.
TUMOUR_CLASSES: tuple[str, ...] = ("_0", "_1", "Tumor", "Tumour")
#: Class / group names of exclusions cut out of the tumour (CAMELYON16 ``_2``, QuPath's ``Ignore*``).
EXCLUSION_CLASSES: tuple[str, ...] = ("_2", "Exclusion", "Ignore*")
MITOSIS: Literal["mitosis"] = "mitosis"
HARD_NEGATIVE: Literal["hard_negative"] = "hard_negative"
MitosisLabel = Literal["mitosis", "hard_negative"]

_ASAP_AREA_TYPES = ("polygon", "spline", "rectangle")
_ASAP_POINT_TYPES = ("dot", "pointset")
_MASK_SUFFIXES = {".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
_EMPTY = Polygon()


class OracleError(AlkitError, ValueError):
    """Bad ground truth or drawings: a malformed or missing file (named), an unknown slide, no mpp."""


class NotAnnotatedError(OracleError):
    """A human-annotation oracle was asked about a box outside the regions that were annotated."""


# ------------------------------------------------------------------------------------------------
# labels and geometry
# ------------------------------------------------------------------------------------------------

_HARD_NEGATIVE_WORDS = ("lookalike", "look alike", "hard negative", "impostor", "imposter", "mimic",
                        "non mitotic", "nonmitotic", "not mitotic", "non mitosis", "not mitosis", "no mitosis")
_MITOSIS_WORDS = ("mitotic figure", "mitosis", "mitoses", "mitotic")


def _norm(name: str) -> str:
    return " ".join(re.sub(r"[_\-]+", " ", name.casefold()).split())


def mitosis_label(name: str | None, classes: Mapping[str, str | None] | None = None) -> MitosisLabel | None:
    """What a class name means for mitosis detection: ``"mitosis"``, ``"hard_negative"`` or ``None``.

    ``classes`` maps exact names (case-insensitive) to a label or ``None`` (ignore) and wins;
    other names follow the rules: hard negative if the name says lookalike / hard negative /
    impostor / mimic / non- or not mitotic ("Mitotic figure lookalike", "not mitotic figure"),
    else mitosis if it says mitotic figure / mitosis / mitotic ("Mitotic figure", "Mitosis"),
    else ``None``.
    """
    if name is None:
        return None
    if classes:
        table = {k.casefold(): v for k, v in classes.items()}
        if name.casefold() in table:
            return table[name.casefold()]  # type: ignore[return-value]
    n = _norm(name)
    if any(w in n for w in _HARD_NEGATIVE_WORDS):
        return HARD_NEGATIVE
    if any(w in n for w in _MITOSIS_WORDS):
        return MITOSIS
    return None


def check_classes(classes: Mapping[str, str | None] | None) -> None:
    """Raise :class:`OracleError` unless every class maps to "mitosis", "hard_negative" or None."""
    for k, v in (classes or {}).items():
        if v not in (MITOSIS, HARD_NEGATIVE, None):
            raise OracleError(f"class {k!r} maps to {v!r}; use 'mitosis', 'hard_negative' or None")


def _polygon_parts(geoms: np.ndarray) -> np.ndarray:
    """The non-empty Polygons inside ``geoms`` (multi-parts and collections flattened)."""
    parts = shapely.get_parts(np.asarray(geoms, dtype=object))
    while len(parts) and np.isin(shapely.get_type_id(parts), (4, 5, 6, 7)).any():
        parts = shapely.get_parts(parts)
    keep = (shapely.get_type_id(parts) == 3) & ~shapely.is_empty(parts)
    return parts[keep]


def _valid_union(geoms: Sequence[BaseGeometry] | np.ndarray) -> BaseGeometry:
    """Union of polygonal ``geoms`` after ``make_valid``; only the polygonal part is kept."""
    geoms = np.asarray(list(geoms) if not isinstance(geoms, np.ndarray) else geoms, dtype=object)
    if not len(geoms):
        return _EMPTY
    bad = ~shapely.is_valid(geoms)
    if bad.any():
        geoms = geoms.copy()
        geoms[bad] = shapely.make_valid(geoms[bad])
    parts = _polygon_parts(geoms)
    if not len(parts):
        return _EMPTY
    union = shapely.union_all(parts)
    return union if union.geom_type in ("Polygon", "MultiPolygon") else shapely.union_all(_polygon_parts([union]))


def _rings(rings: Iterable[np.ndarray], source: str) -> list[BaseGeometry]:
    """Polygons from ``(k, 2)`` vertex arrays; rings with < 3 distinct vertices are skipped (warned)."""
    out = []
    skipped = 0
    for coords in rings:
        coords = np.asarray(coords, float).reshape(-1, 2)
        if len(np.unique(coords, axis=0)) < 3:
            skipped += 1
            continue
        out.append(Polygon(coords))
    if skipped:
        log.warning("%s: %d polygon(s) with fewer than 3 distinct vertices skipped", source, skipped)
    return out


def tumour_geometry(positive: Iterable[BaseGeometry | np.ndarray],
                    exclusions: Iterable[BaseGeometry | np.ndarray] = (), source: str = "") -> BaseGeometry:
    """Union of ``positive`` minus union of ``exclusions`` (shapely polygons or ``(k, 2)`` vertex
    arrays), repaired with ``make_valid``; always a Polygon or MultiPolygon (possibly empty)."""
    def polys(items: Iterable) -> list[BaseGeometry]:
        items = list(items)
        geoms = [g for g in items if isinstance(g, BaseGeometry)]
        return geoms + _rings([g for g in items if not isinstance(g, BaseGeometry)], source)

    pos = _valid_union(polys(positive))
    neg = _valid_union(polys(exclusions))
    geom = pos if neg.is_empty else pos.difference(neg)
    return geom if geom.geom_type in ("Polygon", "MultiPolygon") else _valid_union(_polygon_parts([geom]))


def _names(names: Iterable[str]) -> set[str]:
    return {n.casefold() for n in names}


# ------------------------------------------------------------------------------------------------
# reports and the protocol
# ------------------------------------------------------------------------------------------------

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


@dataclass(frozen=True)
class RegionReport:
    """What the annotator revealed in one region (a level-0 box).

    ``tumour_mm2`` is ``None`` for an oracle without tumour ground truth, ``n_mitoses`` /
    ``n_hard_negatives`` for one without mitosis ground truth; ``tissue_mm2`` is what the caller
    measured on its tissue mask (the oracle does not know the tissue).
    """

    slide_id: str
    box: Box
    mpp: float
    region_mm2: float
    tumour_mm2: float | None
    tissue_mm2: float | None = None
    n_mitoses: int | None = None
    n_hard_negatives: int | None = None

    @property
    def tumour_share(self) -> float | None:
        """Tumour area / region area."""
        return None if self.tumour_mm2 is None else self.tumour_mm2 / self.region_mm2

    @property
    def tumour_tissue_share(self) -> float | None:
        """Tumour area / tissue area (``None`` without both)."""
        if self.tumour_mm2 is None or not self.tissue_mm2:
            return None
        return self.tumour_mm2 / self.tissue_mm2

    def to_dict(self) -> dict:
        """Plain JSON-able values, derived shares included."""
        d = asdict(self)
        d["box"] = [float(v) for v in self.box]
        d["tumour_share"] = self.tumour_share
        d["tumour_tissue_share"] = self.tumour_tissue_share
        return d


@runtime_checkable
class Oracle(Protocol):
    """What the active-learning loop asks of an annotator, simulated or human."""

    def tumour_fraction(self, slide_id: str, grid: PatchGrid) -> np.ndarray:
        """Share of each cell of ``grid`` that is tumour, (rows, cols) float32."""
        ...

    def region_report(self, slide_id: str, box: Box, tissue_mm2: float | None = None) -> RegionReport:
        """Tumour area and mitosis counts inside a level-0 box."""
        ...

    def mitoses(self, slide_id: str) -> np.ndarray:
        """Level-0 ``(x, y)`` of the slide's mitotic figures, (m, 2) float64."""
        ...

    def hard_negatives(self, slide_id: str) -> np.ndarray:
        """Level-0 ``(x, y)`` of the slide's mitosis lookalikes, (k, 2) float64."""
        ...


def _check_box(box: Sequence[float], slide_id: str) -> Box:
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError):
        raise OracleError(f"{slide_id}: a region box is (x, y, w, h), got {box!r}") from None
    if not all(np.isfinite((x, y, w, h))) or w <= 0 or h <= 0:
        raise OracleError(f"{slide_id}: region box {box!r} must be finite with positive width and height")
    return x, y, w, h


def _mpp_for(mpp: MpP, slide_id: str) -> float | None:
    if mpp is None:
        return None
    if isinstance(mpp, Mapping):
        v = mpp.get(slide_id)
        return None if v is None else float(v)
    return float(mpp)


def _px2_to_mm2(px2: float, mpp: float) -> float:
    return float(px2) * (mpp * 1e-3) ** 2


def _points(a: object) -> np.ndarray:
    return np.asarray(a if a is not None else np.zeros((0, 2)), np.float64).reshape(-1, 2)


# ------------------------------------------------------------------------------------------------
# mitoses
# ------------------------------------------------------------------------------------------------

class MitosisOracle:
    """Mitotic figures and hard negatives per slide, as level-0 points.

    Built from SlideRunner databases (:meth:`from_sliderunner`) or COCO-style JSON
    (:meth:`from_coco`); class names become labels through :func:`mitosis_label`. Slides it has
    no records for have no mitoses.
    """

    def __init__(self, mitoses: Mapping[str, np.ndarray], hard_negatives: Mapping[str, np.ndarray] | None = None,
                 *, mpp: MpP = None) -> None:
        self._mitoses = {k: _points(v) for k, v in mitoses.items()}
        self._hard = {k: _points(v) for k, v in (hard_negatives or {}).items()}
        self._mpp = mpp

    # -- builders ---------------------------------------------------------------------------------
    @classmethod
    def from_sliderunner(cls, paths: str | os.PathLike | Iterable[str | os.PathLike], *,
                         classes: Mapping[str, str | None] | None = None, mpp: MpP = None) -> MitosisOracle:
        """Mitoses from one or more SlideRunner databases.

        Records flagged ``deleted`` are dropped; a record's position is its centre (spots: the
        point; circles and rectangles: the middle). Slides are keyed by their file name's stem
        (``01_stitched1.tif`` -> ``01_stitched1``); where one database lists several files with the
        same stem (TUPAC's ``01/25.tif``, ``02/25.tif``, ...) those slides are keyed
        ``directory/stem``. Classes the rules of :func:`mitosis_label` (and ``classes``) do not
        map are ignored with a warning.
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
            labels = {name: mitosis_label(name, classes) for name in {r.cls for r in records}}
            for r in records:
                label = labels[r.cls]
                if label is None:
                    ignored[str(r.cls)] = ignored.get(str(r.cls), 0) + 1
                    continue
                key = keys.get(r.uid) if r.uid is not None else None
                found[label].setdefault(key or Path(r.slide).stem, []).append((r.x, r.y))
            if ignored:
                log.warning("%s: ignored annotations of classes that are neither mitosis nor hard negative: %s "
                            "(map them with classes=)", path, ignored)
        return cls(*(_stack(found[k]) for k in (MITOSIS, HARD_NEGATIVE)), mpp=mpp)

    @classmethod
    def from_coco(cls, path: str | os.PathLike, *, classes: Mapping[str, str | None] | None = None,
                  bbox_format: Literal["auto", "xywh", "xyxy"] = "auto", mpp: MpP = None) -> MitosisOracle:
        """Mitoses from COCO-style JSON: images are slides (keyed by ``file_name`` stem), each box's
        centre is a point, categories are mapped by name (:func:`mitosis_label`, ``classes``).

        COCO boxes are ``[x, y, w, h]``; MIDOG++ writes corners ``[x1, y1, x2, y2]`` in the same
        field. ``bbox_format="auto"`` reads the boxes as corners only when every box has ordered corners and
        more box centres then fall inside their images (``width``/``height``) than as ``xywh``; the
        choice is logged. Without image sizes it keeps ``xywh``: give ``bbox_format`` then.
        """
        check_classes(classes)
        path = Path(path)
        data = read_json(path, OracleError, "COCO JSON file")
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                                 for k in ("images", "annotations", "categories")):
            raise OracleError(f"{path}: not COCO-style JSON (needs 'images', 'annotations' and 'categories' lists)")
        try:
            images = {im["id"]: im for im in data["images"]}
            stems = {i: Path(str(im["file_name"])).stem for i, im in images.items()}
            cats = {c["id"]: str(c["name"]) for c in data["categories"]}
        except (KeyError, TypeError) as exc:
            raise OracleError(f"{path}: an image lacks 'id'/'file_name' or a category lacks 'id'/'name' ({exc!r})") \
                from None
        anns = data["annotations"]
        try:
            boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
            img_ids = [a["image_id"] for a in anns]
            cat_ids = [a["category_id"] for a in anns]
        except (KeyError, TypeError, ValueError) as exc:
            raise OracleError(f"{path}: every annotation needs 'image_id', 'category_id' and a 4-number 'bbox' "
                              f"({exc!r})") from None
        if not np.isfinite(boxes).all():
            raise OracleError(f"{path}: an annotation has a non-finite bbox")
        for i, (im, cat) in enumerate(zip(img_ids, cat_ids)):
            try:
                if im not in images:
                    raise OracleError(f"{path}: annotation #{i} refers to unknown image_id {im!r}")
                if cat not in cats:
                    raise OracleError(f"{path}: annotation #{i} refers to unknown category_id {cat!r}")
            except TypeError:
                raise OracleError(f"{path}: annotation #{i} has an image_id or category_id that is not a number "
                                  "or string") from None
        fmt = _coco_bbox_format(path, boxes, [images[i] for i in img_ids], bbox_format)
        if fmt == "xywh":
            centres = boxes[:, :2] + boxes[:, 2:] / 2
        else:
            centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        labels = {cid: mitosis_label(name, classes) for cid, name in cats.items()}
        ignored = sorted({cats[c] for c in cat_ids if labels[c] is None})
        if ignored:
            log.warning("%s: ignored categories that are neither mitosis nor hard negative: %s (map them with "
                        "classes=)", path, ignored)
        found: dict[str, dict[str, list]] = {MITOSIS: {}, HARD_NEGATIVE: {}}
        for (x, y), im, cat in zip(centres, img_ids, cat_ids):
            if labels[cat] is not None:
                found[labels[cat]].setdefault(stems[im], []).append((x, y))
        if len(set(stems.values())) < len(stems):
            log.warning("%s: several images share a file-name stem; their points are merged", path)
        return cls(*(_stack(found[k]) for k in (MITOSIS, HARD_NEGATIVE)), mpp=mpp)

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
        box = _check_box(box, slide_id)
        return (int(points_in_box(self._mitoses.get(slide_id, np.zeros((0, 2))), box).sum()),
                int(points_in_box(self._hard.get(slide_id, np.zeros((0, 2))), box).sum()))

    def tumour_fraction(self, slide_id: str, grid: PatchGrid) -> np.ndarray:
        """Not known to a mitosis oracle: raises :class:`OracleError` (attach it to a TumourOracle)."""
        raise OracleError(f"{slide_id}: this oracle knows mitoses only; combine it with tumour ground truth, "
                          "e.g. TumourOracle.from_folder(...).with_mitoses(mitosis_oracle)")

    def region_report(self, slide_id: str, box: Sequence[float], tissue_mm2: float | None = None, *,
                      mpp: float | None = None) -> RegionReport:
        """Mitosis counts in ``box`` (no tumour area: ``tumour_mm2`` is ``None``)."""
        box = _check_box(box, slide_id)
        m = _require_mpp(mpp, self._mpp, slide_id)
        n_mit, n_hard = self.counts_in(slide_id, box)
        return RegionReport(slide_id, box, m, _px2_to_mm2(box[2] * box[3], m), None, tissue_mm2, n_mit, n_hard)

    def __repr__(self) -> str:
        return (f"MitosisOracle({len(self.slides)} slides, {sum(map(len, self._mitoses.values()))} mitoses, "
                f"{sum(map(len, self._hard.values()))} hard negatives)")


def _stack(found: dict[str, list]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, np.float64).reshape(-1, 2) for k, v in found.items()}


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


def _coco_bbox_format(path: Path, boxes: np.ndarray, images: list[dict], fmt: str) -> str:
    if fmt in ("xywh", "xyxy"):
        return fmt
    if fmt != "auto":
        raise OracleError(f"bbox_format must be 'auto', 'xywh' or 'xyxy', got {fmt!r}")
    if not len(boxes):
        return "xywh"
    w = np.array([float(im.get("width") or np.inf) for im in images])
    h = np.array([float(im.get("height") or np.inf) for im in images])
    x, y, a, b = boxes.T

    def inside(cx: np.ndarray, cy: np.ndarray) -> int:
        return int(np.sum((cx >= 0) & (cx <= w) & (cy >= 0) & (cy <= h)))

    xywh_valid, xyxy_valid = bool(np.all((a >= 0) & (b >= 0))), bool(np.all((a >= x) & (b >= y)))
    n_xywh, n_xyxy = inside(x + a / 2, y + b / 2), inside((x + a) / 2, (y + b) / 2)
    if xywh_valid and (not xyxy_valid or n_xywh >= n_xyxy):
        return "xywh"
    if xyxy_valid:
        log.info("%s: boxes read as corners [x1, y1, x2, y2]: %d of %d centres inside their images, against %d "
                 "as [x, y, w, h]", path, n_xyxy, len(boxes), n_xywh)
        return "xyxy"
    raise OracleError(f"{path}: bboxes read neither as [x, y, w, h] (negative sizes) nor as [x1, y1, x2, y2] "
                      "(corners out of order); give bbox_format=")


def _require_mpp(call: float | None, own: MpP, slide_id: str) -> float:
    m = call if call is not None else _mpp_for(own, slide_id)
    if m is None or not m > 0:
        raise OracleError(f"{slide_id}: resolution unknown; give the oracle mpp= (µm/px, per slide or for all) "
                          "or pass mpp= to region_report")
    return float(m)


# ------------------------------------------------------------------------------------------------
# tumour ground truth files
# ------------------------------------------------------------------------------------------------

def _wrap_read(fn, path: Path, *args, **kwargs):  # type: ignore[no-untyped-def]
    """Call a reader; its missing-file and format errors become :class:`OracleError` naming ``path``."""
    try:
        return fn(path, *args, **kwargs)
    except FileNotFoundError as exc:
        raise OracleError(f"{path}: no such file") from exc
    except OracleError:
        raise
    except ValueError as exc:  # AnnotationFileError names the file; other ValueErrors come from bad content
        raise OracleError(str(exc)) from exc


def _split_by_class(items: Iterable[tuple[str | None, BaseGeometry | np.ndarray]], positive: set[str],
                    exclusion: set[str], source: str) -> tuple[list, list]:
    pos, neg, other = [], [], {}
    for cls, geom in items:
        c = (cls or "").casefold()
        if c in positive:
            pos.append(geom)
        elif c in exclusion:
            neg.append(geom)
        else:
            other[cls] = other.get(cls, 0) + 1
    if other:
        log.info("%s: annotations of other classes ignored: %s", source, other)
    return pos, neg


def _qupath_polygons(features: list[QuPathFeature]) -> list[tuple[str | None, BaseGeometry]]:
    """``(class, polygon)`` of every polygon part of the annotation objects (detections, cells and
    tiles are not drawings of areas and are left out)."""
    return [(f.classification, part) for f in features if f.object_type == "annotation"
            for part in _polygon_parts([f.geometry])]


def _qupath_points(features: list[QuPathFeature]) -> list[tuple[str | None, np.ndarray]]:
    out = []
    for f in features:
        if f.geometry.geom_type in ("Point", "MultiPoint"):
            out.append((f.classification, shapely.get_coordinates(f.geometry)))
    return out


def _read_image_mask(path: Path) -> np.ndarray:
    """A mask image as bool (value > 0; colour images: any channel > 0; alpha ignored)."""
    if not path.is_file():
        raise OracleError(f"{path}: no such mask file")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = np.asarray(tifffile.imread(path, key=0))
        else:
            with Image.open(path) as im:
                arr = np.asarray(im)
    except Exception as exc:  # PIL / tifffile raise many kinds on corrupt or non-image files
        raise OracleError(f"{path}: cannot read as a mask image ({type(exc).__name__}: {exc})") from exc
    if arr.ndim == 3 and arr.shape[-1] in (2, 4):
        arr = arr[..., :-1]  # drop alpha (LA, RGBA)
    if arr.ndim == 3 and arr.shape[-1] <= 4:
        arr = arr.max(axis=-1)
    if arr.ndim != 2 or arr.size == 0:
        raise OracleError(f"{path}: a mask image must be one 2-D plane, got shape {arr.shape}")
    return arr > 0


def _load_truth(path: Path, positive: set[str], exclusion: set[str],
                mask_downsample: float | None) -> BaseGeometry | TumourMask:
    """One slide's tumour ground truth from a file, by suffix (and content for ``.json``)."""
    suffix = path.suffix.lower()
    src = str(path)
    if suffix == ".xml":
        anns = _wrap_read(read_asap_xml, path, types=_ASAP_AREA_TYPES)
        pos, neg = _split_by_class(((a.group, a.coords) for a in anns), positive, exclusion, src)
        return tumour_geometry(pos, neg, src)
    if suffix in (".json", ".geojson"):
        data = read_json(path, OracleError, "annotation JSON file")
        if suffix == ".json" and is_ncrf(data):
            ncrf = _wrap_read(lambda p: parse_ncrf(data, p), path)
            return tumour_geometry([p.coords for p in ncrf.positive], [p.coords for p in ncrf.negative], src)
        features = _wrap_read(lambda p: parse_qupath_geojson(data, p), path)
        pos, neg = _split_by_class(_qupath_polygons(features), positive, exclusion, src)
        return tumour_geometry(pos, neg, src)
    if suffix in _MASK_SUFFIXES:
        if mask_downsample is None:
            raise OracleError(f"{path}: a mask image needs mask_downsample= (level-0 px per mask pixel)")
        return TumourMask(_read_image_mask(path), float(mask_downsample))
    raise OracleError(f"{path}: unknown ground-truth format {path.suffix!r} (use .xml, .json, .geojson or a "
                      "mask image)")


def _pattern_regex(pattern: str) -> re.Pattern:
    if pattern.count("{slide}") != 1:
        raise OracleError(f"file pattern {pattern!r} must contain '{{slide}}' exactly once")
    head, tail = pattern.split("{slide}")
    return re.compile(re.escape(head) + r"(?P<slide>.+?)" + re.escape(tail) + r"\Z")


# ------------------------------------------------------------------------------------------------
# tumour oracle
# ------------------------------------------------------------------------------------------------

class TumourOracle:
    """Tumour ground truth per slide (polygons or masks), optionally with mitoses attached.

    Slides without ground truth are tumour-free. ``mpp`` (µm/px: one value, or per slide) is only
    needed for mm² in :meth:`region_report`.
    """

    def __init__(self, truths: Mapping[str, BaseGeometry | TumourMask], *, mpp: MpP = None,
                 mitosis: MitosisOracle | None = None, sources: Mapping[str, Path] | None = None) -> None:
        self._truths: dict[str, BaseGeometry | TumourMask] = {}
        for sid, t in truths.items():
            if isinstance(t, BaseGeometry) and t.geom_type not in ("Polygon", "MultiPolygon"):
                t = _valid_union(_polygon_parts([t]))
            elif isinstance(t, BaseGeometry) and not t.is_valid:
                t = _valid_union([t])
            self._truths[sid] = t
        self._mpp = mpp
        self._mitosis = mitosis
        self.sources: dict[str, Path] = dict(sources or {})
        self._warned: set[str] = set()

    # -- builders ---------------------------------------------------------------------------------
    @classmethod
    def from_files(cls, files: Mapping[str, str | os.PathLike], *, mpp: MpP = None,
                   mask_downsample: float | Mapping[str, float] | None = None,
                   positive: Iterable[str] = TUMOUR_CLASSES, exclusion: Iterable[str] = EXCLUSION_CLASSES,
                   mitosis: MitosisOracle | None = None) -> TumourOracle:
        """Ground truth from ``{slide_id: file}``; every file must exist.

        The format follows the suffix: ``.xml`` ASAP (groups in ``positive`` are tumour, in
        ``exclusion`` cut out; others ignored), ``.json`` NCRF polygons or QuPath GeoJSON (by
        content), ``.geojson`` QuPath (classes as for ASAP groups), images (``.png``, ``.tif``, …)
        masks at ``mask_downsample`` level-0 px per pixel.
        """
        pos, neg = _names(positive), _names(exclusion)
        truths: dict[str, BaseGeometry | TumourMask] = {}
        sources: dict[str, Path] = {}
        for sid, p in files.items():
            path = Path(p)
            if not path.is_file():
                raise OracleError(f"{path}: ground-truth file of slide {sid!r} not found")
            ds = _mpp_for(mask_downsample, sid)  # same per-slide lookup as mpp
            truths[sid] = _load_truth(path, pos, neg, ds)
            sources[sid] = path
        log.info("tumour ground truth for %d slides (%d with tumour)", len(truths),
                 sum(not _is_empty(t) for t in truths.values()))
        return cls(truths, mpp=mpp, mitosis=mitosis, sources=sources)

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
            if m and path.is_file():
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
        """The full ground truth of a synthetic cohort (:class:`alkit.synthetic.SyntheticCohort` or
        its folder): tumour polygons, mitoses and lookalikes, each slide's mpp."""
        from alkit.synthetic import SyntheticCohort

        if not isinstance(cohort, SyntheticCohort):
            try:
                cohort = SyntheticCohort.load(cohort)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise OracleError(f"{cohort}: not a synthetic cohort ({exc})") from exc
        mpp = {s.slide_id: s.mpp for s in cohort.slides}
        mitosis = MitosisOracle.from_sliderunner(cohort.mitoses_db, mpp=mpp)
        return cls.from_files({s.slide_id: s.annotation_path for s in cohort.slides}, mpp=mpp, mitosis=mitosis)

    def with_mitoses(self, mitosis: MitosisOracle | None) -> TumourOracle:
        """A copy of this oracle whose mitoses come from ``mitosis``."""
        other = type(self).__new__(type(self))
        other.__dict__.update(self.__dict__)
        other._mitosis = mitosis
        other._warned = set()
        return other

    # -- queries ----------------------------------------------------------------------------------
    @property
    def slides(self) -> list[str]:
        """Slides with a ground-truth file (others are tumour-free)."""
        return sorted(self._truths)

    @property
    def mitosis(self) -> MitosisOracle | None:
        """The attached mitosis ground truth, if any."""
        return self._mitosis

    def slide_mpp(self, slide_id: str) -> float | None:
        """The µm/px this oracle knows for ``slide_id`` (``None`` if none)."""
        return _mpp_for(self._mpp, slide_id)

    def _truth(self, slide_id: str) -> BaseGeometry | TumourMask:
        t = self._truths.get(slide_id)
        if t is None:
            if slide_id not in self._warned:
                self._warned.add(slide_id)
                log.debug("%s: no ground truth, tumour-free", slide_id)
            return _EMPTY
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

    def mitoses(self, slide_id: str) -> np.ndarray:
        """Level-0 points of mitotic figures (empty without attached mitosis ground truth)."""
        return self._mitosis.mitoses(slide_id) if self._mitosis else np.zeros((0, 2))

    def hard_negatives(self, slide_id: str) -> np.ndarray:
        """Level-0 points of hard negatives (empty without attached mitosis ground truth)."""
        return self._mitosis.hard_negatives(slide_id) if self._mitosis else np.zeros((0, 2))

    def mitosis_count(self, slide_id: str, grid: PatchGrid, *, hard_negatives: bool = False) -> np.ndarray:
        """Mitoses (or hard negatives) per cell of ``grid``, (rows, cols) int64."""
        pts = self.hard_negatives(slide_id) if hard_negatives else self.mitoses(slide_id)
        return point_cell_counts(pts, grid)

    def region_report(self, slide_id: str, box: Sequence[float], tissue_mm2: float | None = None, *,
                      mpp: float | None = None) -> RegionReport:
        """Tumour area (exact) and mitoses inside the level-0 ``box``; ``tissue_mm2`` is passed through."""
        box = _check_box(box, slide_id)
        m = _require_mpp(mpp, self._mpp, slide_id)
        tumour_px = float(self.tumour_areas_px(slide_id, np.array([box]))[0])
        n_mit = n_hard = None
        if self._mitosis is not None:
            n_mit, n_hard = self._mitosis.counts_in(slide_id, box)
        return RegionReport(slide_id, box, m, _px2_to_mm2(box[2] * box[3], m), _px2_to_mm2(tumour_px, m),
                            None if tissue_mm2 is None else float(tissue_mm2), n_mit, n_hard)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self._truths)} slides, mitoses={self._mitosis!r})"


def _is_empty(t: BaseGeometry | TumourMask) -> bool:
    return (not t.mask.any()) if isinstance(t, TumourMask) else t.is_empty


# ------------------------------------------------------------------------------------------------
# human annotations
# ------------------------------------------------------------------------------------------------

Regions = Union[str, os.PathLike, Mapping[str, Iterable[Sequence[float]]], Iterable]


def load_regions(regions: Regions) -> dict[str, np.ndarray]:
    """Regions per slide as ``{slide_id: (n, 4) level-0 boxes}`` from a ``regions.json`` written by
    :func:`alkit.selection.export.write_selection` (a list of ``{slide, x, y, w, h, ...}``), a mapping
    ``slide -> boxes``, or an iterable of :class:`alkit.selection.strategy.RegionPick` / such dicts."""
    source = "regions"
    if isinstance(regions, (str, os.PathLike)):
        source = str(regions)
        regions = read_json(Path(regions), OracleError, "regions JSON file")  # type: ignore[assignment]
    out: dict[str, list] = {}
    if isinstance(regions, Mapping):
        for sid, boxes in regions.items():
            out.setdefault(str(sid), []).extend(list(b) for b in boxes)
    else:
        if not isinstance(regions, Iterable):
            raise OracleError(f"{source}: regions must be a list of {{slide, x, y, w, h}} or a mapping")
        for i, r in enumerate(regions):
            d = r.to_dict() if hasattr(r, "to_dict") else r
            try:
                out.setdefault(str(d["slide"]), []).append([d["x"], d["y"], d["w"], d["h"]])
            except (KeyError, TypeError, IndexError):
                raise OracleError(f"{source}: region #{i} lacks slide/x/y/w/h") from None
    result = {}
    for sid, boxes in out.items():
        result[sid] = np.array([_check_box(b, f"{source}: {sid}") for b in boxes], np.float64).reshape(-1, 4)
    return result


def _boxes_union(boxes: np.ndarray) -> BaseGeometry:
    if not len(boxes):
        return _EMPTY
    x, y, w, h = boxes.T
    return shapely.union_all(shapely.box(x, y, x + w, y + h))


def _is_outline(geom: BaseGeometry, boxes: np.ndarray, tol: float = 1.0) -> bool:
    """Whether ``geom`` is one of the region rectangles themselves (re-exported by the annotation tool)."""
    if not len(boxes) or geom.geom_type != "Polygon":
        return False
    b = np.asarray(geom.bounds)
    corners = np.stack([boxes[:, 0], boxes[:, 1], boxes[:, 0] + boxes[:, 2], boxes[:, 1] + boxes[:, 3]], axis=1)
    near = np.all(np.abs(corners - b) <= tol, axis=1)
    return bool(near.any()) and abs(geom.area - (b[2] - b[0]) * (b[3] - b[1])) <= 1e-3 * geom.area + tol


class AnnotationOracle(TumourOracle):
    """What human annotators drew inside the regions they were asked to annotate.

    Only the requested regions count: drawn tumour is clipped to the union of the slide's region
    boxes, and points (mitoses) outside them are dropped. Cells outside every region get tumour
    fraction 0 (use :meth:`annotated_fraction` to know which cells were looked at);
    :meth:`region_report` refuses a box that is not inside the annotated regions
    (:class:`NotAnnotatedError`).
    """

    def __init__(self, truths: Mapping[str, BaseGeometry], regions: Mapping[str, np.ndarray] | None = None, *,
                 mpp: MpP = None, mitosis: MitosisOracle | None = None,
                 sources: Mapping[str, Path] | None = None) -> None:
        if regions is None:
            raise OracleError("an AnnotationOracle needs the regions that were annotated; build it with "
                              "AnnotationOracle.from_drawings(folder, regions)")
        self._regions = {k: np.asarray(v, np.float64).reshape(-1, 4) for k, v in regions.items()}
        self._region_union = {k: _boxes_union(v) for k, v in self._regions.items()}
        clipped = {}
        for sid, geom in truths.items():
            area = self._region_union.get(sid, _EMPTY)
            clipped[sid] = geom.intersection(area) if not geom.is_empty else geom
        super().__init__(clipped, mpp=mpp, mitosis=mitosis, sources=sources)

    @classmethod
    def from_drawings(cls, folder: str | os.PathLike, regions: Regions, *,
                      positive: Iterable[str] = TUMOUR_CLASSES, exclusion: Iterable[str] = EXCLUSION_CLASSES,
                      mitosis_classes: Mapping[str, str | None] | None = None, mpp: MpP = None,
                      allow_missing: bool = False) -> AnnotationOracle:
        """Read annotators' drawings from ``folder``: per slide ``<slide>.geojson`` / ``<slide>.json``
        (QuPath GeoJSON, or NCRF polygons) and/or ``<slide>.xml`` (ASAP); several files of a slide
        are combined.

        ``regions`` are the regions that were exported (see :func:`load_regions`). Areas: QuPath
        annotation objects / ASAP polygons whose class (ASAP: group) is in ``positive`` are tumour,
        in ``exclusion`` cut out, others ignored; the exported region rectangles, if the tool wrote
        them back, are recognised by their geometry (a rectangle within 1 px of a region box) and
        ignored, whatever their class (a region exported with class "tumour" must not become tumour). Points (QuPath points, ASAP dots)
        are mitoses or hard negatives by :func:`mitosis_label` (``mitosis_classes`` overrides).
        A slide with regions but no drawing file is an error unless ``allow_missing`` (then it
        counts as annotated and tumour-free).
        """
        check_classes(mitosis_classes)
        folder = Path(folder)
        if not folder.is_dir():
            raise OracleError(f"{folder}: no such drawings folder")
        boxes_by_slide = load_regions(regions)
        pos, neg = _names(positive), _names(exclusion)
        truths: dict[str, BaseGeometry] = {}
        points: dict[str, dict[str, list]] = {MITOSIS: {}, HARD_NEGATIVE: {}}
        sources: dict[str, Path] = {}
        for sid, boxes in boxes_by_slide.items():
            files = [folder / f"{sid}{ext}" for ext in (".geojson", ".json", ".xml")]
            files = [f for f in files if f.is_file()]
            if not files:
                if not allow_missing:
                    raise OracleError(f"{folder}: no drawings for slide {sid!r} ({sid}.geojson, {sid}.json or "
                                      f"{sid}.xml), which has {len(boxes)} region(s) to annotate")
                log.info("%s: no drawings for %s; counted as tumour-free", folder, sid)
                truths[sid] = _EMPTY
                continue
            areas: list[tuple[str | None, BaseGeometry]] = []
            dots: list[tuple[str | None, np.ndarray]] = []
            for f in files:
                a, d = _read_drawing(f, pos, neg)
                areas += a
                dots += d
            sources[sid] = files[0]
            kept = [(c, g) for c, g in areas if not _is_outline(g, boxes)]
            if len(kept) < len(areas):
                log.debug("%s: %d region outline(s) ignored", sid, len(areas) - len(kept))
            p, n = _split_by_class(kept, pos, neg, f"{folder}/{sid}")
            geom = tumour_geometry(p, n, str(files[0]))
            inside = geom.intersection(_boxes_union(boxes))
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
        stray = sorted({p.stem for p in folder.iterdir() if p.suffix.lower() in (".geojson", ".json", ".xml")}
                       - set(boxes_by_slide) - {"regions"})
        if stray:
            log.warning("%s: drawings for slides without requested regions ignored: %s", folder, stray[:10])
        mitosis = MitosisOracle(_stack(points[MITOSIS]), _stack(points[HARD_NEGATIVE]), mpp=mpp)
        return cls(truths, boxes_by_slide, mpp=mpp, mitosis=mitosis, sources=sources)

    def regions(self, slide_id: str) -> np.ndarray:
        """The slide's annotated region boxes, (n, 4) level-0 ``(x, y, w, h)``."""
        return self._regions.get(slide_id, np.zeros((0, 4))).copy()

    def annotated_fraction(self, slide_id: str, grid: PatchGrid) -> np.ndarray:
        """Share of each cell of ``grid`` inside the annotated regions, (rows, cols) float32."""
        return geometry_cell_fractions(self._region_union.get(slide_id), grid)

    def region_report(self, slide_id: str, box: Sequence[float], tissue_mm2: float | None = None, *,
                      mpp: float | None = None) -> RegionReport:
        """As :meth:`TumourOracle.region_report`, for boxes inside the annotated regions only."""
        x, y, w, h = _check_box(box, slide_id)
        rect = shapely.box(x, y, x + w, y + h)
        outside = rect.difference(self._region_union.get(slide_id, _EMPTY)).area
        if outside > 1e-6 * rect.area:
            raise NotAnnotatedError(f"{slide_id}: box {(x, y, w, h)} is not inside the annotated regions "
                                    f"({outside / rect.area:.1%} of it was never shown to an annotator)")
        return super().region_report(slide_id, (x, y, w, h), tissue_mm2, mpp=mpp)


def _read_drawing(path: Path, positive: set[str], exclusion: set[str]) -> tuple[list, list]:
    """``(areas, points)`` of one drawing file: ``[(class, polygon)]``, ``[(class, (k, 2) points)]``."""
    def polygons(items: list[tuple[str | None, np.ndarray]]) -> list[tuple[str | None, BaseGeometry]]:
        return [(c, g) for c, coords in items for g in _rings([coords], str(path))]

    if path.suffix.lower() == ".xml":
        areas = _wrap_read(read_asap_xml, path, types=_ASAP_AREA_TYPES)
        dots = _wrap_read(read_asap_xml, path, types=_ASAP_POINT_TYPES)
        return polygons([(a.group, a.coords) for a in areas]), [(a.group, a.coords) for a in dots]
    data = read_json(path, OracleError, "drawings JSON file")
    if is_ncrf(data):
        ncrf = _wrap_read(lambda p: parse_ncrf(data, p), path)
        tumour, excluded = min(positive, default=None), min(exclusion, default=None)
        return polygons([(tumour, p.coords) for p in ncrf.positive]
                        + [(excluded, p.coords) for p in ncrf.negative]), []
    features = _wrap_read(lambda p: parse_qupath_geojson(data, p), path)
    return _qupath_polygons(features), _qupath_points(features)
