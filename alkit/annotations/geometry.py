"""Areas from annotated polygons: repair, union, exclusions, class filtering.

Geometry rules. The annotated area = union of the positive polygons minus the union of the
exclusions (so overlapping annotations are not counted twice). Invalid polygons (CAMELYON16 has
self-crossing rings, e.g. in ``Tumor_001``) are repaired with ``shapely.make_valid``, which keeps
every lobe of a self-crossing ring; ``buffer(0)`` is not used because it silently drops the lobes
whose orientation flips (a figure-eight loses half its area). Rings with fewer than three distinct
vertices are skipped with a warning. Results are always a Polygon or MultiPolygon (possibly empty):
points, lines and collections that repairs or differences produce are dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import numpy as np
import shapely
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

log = logging.getLogger(__name__)

__all__ = ["EMPTY_POLYGON", "polygon_parts", "valid_union", "ring_polygons", "union_minus_exclusions",
           "class_names", "split_by_class", "boxes_union"]

#: The empty polygon (what a slide without annotated area has).
EMPTY_POLYGON = Polygon()

_MULTI_TYPE_IDS = (4, 5, 6, 7)  # MultiPoint, MultiLineString, MultiPolygon, GeometryCollection
_POLYGON_TYPE_ID = 3


def polygon_parts(geoms: Sequence[BaseGeometry] | np.ndarray) -> np.ndarray:
    """The non-empty Polygons inside ``geoms`` (multi-parts and collections flattened)."""
    parts = shapely.get_parts(np.asarray(geoms, dtype=object))
    while len(parts) and np.isin(shapely.get_type_id(parts), _MULTI_TYPE_IDS).any():
        parts = shapely.get_parts(parts)
    keep = (shapely.get_type_id(parts) == _POLYGON_TYPE_ID) & ~shapely.is_empty(parts)
    return parts[keep]


def valid_union(geoms: Sequence[BaseGeometry] | np.ndarray) -> BaseGeometry:
    """Union of polygonal ``geoms`` after ``make_valid``; only the polygonal part is kept."""
    geoms = np.asarray(list(geoms) if not isinstance(geoms, np.ndarray) else geoms, dtype=object)
    if not len(geoms):
        return EMPTY_POLYGON
    bad = ~shapely.is_valid(geoms)
    if bad.any():
        geoms = geoms.copy()
        geoms[bad] = shapely.make_valid(geoms[bad])
    parts = polygon_parts(geoms)
    if not len(parts):
        return EMPTY_POLYGON
    union = shapely.union_all(parts)
    return union if union.geom_type in ("Polygon", "MultiPolygon") else shapely.union_all(polygon_parts([union]))


def ring_polygons(rings: Iterable[np.ndarray], source: str) -> list[BaseGeometry]:
    """Polygons from ``(k, 2)`` vertex arrays; rings with < 3 distinct vertices are skipped (warned,
    naming ``source``)."""
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


def union_minus_exclusions(positive: Iterable[BaseGeometry | np.ndarray],
                           exclusions: Iterable[BaseGeometry | np.ndarray] = (), source: str = "") -> BaseGeometry:
    """Union of ``positive`` minus union of ``exclusions`` (shapely polygons or ``(k, 2)`` vertex
    arrays), repaired with ``make_valid``; always a Polygon or MultiPolygon (possibly empty)."""
    def polys(items: Iterable) -> list[BaseGeometry]:
        items = list(items)
        geoms = [g for g in items if isinstance(g, BaseGeometry)]
        return geoms + ring_polygons([g for g in items if not isinstance(g, BaseGeometry)], source)

    pos = valid_union(polys(positive))
    neg = valid_union(polys(exclusions))
    geom = pos if neg.is_empty else pos.difference(neg)
    return geom if geom.geom_type in ("Polygon", "MultiPolygon") else valid_union(polygon_parts([geom]))


def class_names(names: Iterable[str]) -> set[str]:
    """Class / group names, case-folded for case-insensitive matching."""
    return {n.casefold() for n in names}


def split_by_class(items: Iterable[tuple[str | None, BaseGeometry | np.ndarray]], positive: set[str],
                   exclusion: set[str], source: str) -> tuple[list, list]:
    """``(positives, exclusions)`` of ``(class, shape)`` items by case-folded class name (see
    :func:`class_names`); shapes of other classes are dropped and counted in an info log."""
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


def boxes_union(boxes: np.ndarray) -> BaseGeometry:
    """Union of the level-0 ``(x, y, w, h)`` rectangles of ``boxes`` (n, 4)."""
    if not len(boxes):
        return EMPTY_POLYGON
    x, y, w, h = boxes.T
    return shapely.union_all(shapely.box(x, y, x + w, y + h))
