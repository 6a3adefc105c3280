"""QuPath GeoJSON objects: what annotators draw in QuPath and export (File › Export objects as GeoJSON).

QuPath writes either a ``FeatureCollection``, a JSON array of ``Feature`` objects, or (for one object)
a single ``Feature``; this module reads all three. A feature looks like::

    {"type": "Feature", "id": "…uuid…",
     "geometry": {"type": "Polygon", "coordinates": [[[x, y], ...]]},
     "properties": {"objectType": "annotation",
                    "classification": {"name": "Tumor", "color": [200, 0, 0]}, "isLocked": false}}

Coordinates are level-0 pixels with the origin at the top-left of the full-resolution image
(x = column), as in the rest of alkit. Versions differ in details that the reader normalises:

- the object type is ``properties.objectType`` (QuPath ≥ 0.4), ``properties.object_type`` (0.3), or
  the feature's ``id`` naming the Java class (``PathAnnotationObject``, 0.2); default ``annotation``;
- the class is ``properties.classification.name``, or ``names`` joined with ``": "`` (derived
  classes), or a bare string; colours are ``color`` ``[r, g, b]`` or the older packed ``colorRGB``.

The Feature's top-level ``id`` (QuPath ≥ 0.4: the object's UUID) is kept as :attr:`QuPathFeature.uuid`
and written back; 0.2's Java class names there are not ids.

Geometries become shapely geometries as written (Polygon, MultiPolygon, Point, MultiPoint,
LineString, GeometryCollection); validity is the caller's business. Features with a ``null``
geometry are skipped with a warning. Writing is atomic and always uses the ≥ 0.4 layout.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import shapely.geometry
from shapely.errors import ShapelyError
from shapely.geometry.base import BaseGeometry

from alkit.jsonfile import read_json
from alkit.annotations import AnnotationFileError
from alkit.atomic import atomic_write_text

log = logging.getLogger(__name__)

__all__ = ["QuPathFeature", "read_qupath_geojson", "parse_qupath_geojson", "write_qupath_geojson",
           "to_geojson", "class_color"]

#: QuPath 0.2 names the object's Java class in the feature ``id``.
_JAVA_OBJECT_TYPES = {"PathAnnotationObject": "annotation", "PathDetectionObject": "detection",
                      "PathCellObject": "cell", "PathTileObject": "tile", "PathTMACoreObject": "tmaCore",
                      "PathRootObject": "root"}


@dataclass(frozen=True)
class QuPathFeature:
    """One QuPath object: a shapely ``geometry`` in level-0 px, its class name (``None`` when
    unclassified), name, object type (``annotation``, ``detection``, ``cell``, …), and the rest of
    its ``properties`` as read."""

    geometry: BaseGeometry
    classification: str | None = None
    name: str | None = None
    object_type: str = "annotation"
    properties: dict[str, Any] = field(default_factory=dict)
    uuid: str | None = None  # the Feature's top-level ``id`` (QuPath >= 0.4 keeps an object's UUID there)


def _class_name(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value or None
    if isinstance(value, Mapping):
        if isinstance(value.get("name"), str):
            return value["name"] or None
        names = value.get("names")
        if isinstance(names, list) and all(isinstance(n, str) for n in names) and names:
            return ": ".join(names)
    return None


def _feature_list(data: Any, path: Path) -> list[Any]:
    if isinstance(data, list):
        return data
    if isinstance(data, Mapping):
        kind = data.get("type")
        if kind == "FeatureCollection":
            features = data.get("features")
            if not isinstance(features, list):
                raise AnnotationFileError(f"{path}: FeatureCollection without a 'features' list")
            return features
        if kind == "Feature":
            return [data]
        raise AnnotationFileError(f"{path}: GeoJSON object of type {kind!r}, expected a FeatureCollection, "
                                  "a Feature or a list of features")
    raise AnnotationFileError(f"{path}: top-level JSON {type(data).__name__}, expected a FeatureCollection, "
                              "a Feature or a list of features")


def parse_qupath_geojson(data: Any, source: str | os.PathLike = "<geojson>") -> list[QuPathFeature]:
    """Features of already-parsed GeoJSON (``source`` names it in errors), in file order."""
    path = Path(source)
    out: list[QuPathFeature] = []
    for i, feat in enumerate(_feature_list(data, path)):
        if not isinstance(feat, Mapping) or feat.get("type") != "Feature":
            raise AnnotationFileError(f"{path}: item #{i} is not a GeoJSON Feature")
        props = feat.get("properties") or {}
        if not isinstance(props, Mapping):
            raise AnnotationFileError(f"{path}: feature #{i} has properties of type {type(props).__name__}")
        geom_json = feat.get("geometry")
        if geom_json is None:
            log.warning("%s: feature #%d has no geometry; skipped", path, i)
            continue
        try:
            geom = shapely.geometry.shape(geom_json)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, ShapelyError) as exc:
            kind = geom_json.get("type") if isinstance(geom_json, Mapping) else type(geom_json).__name__
            raise AnnotationFileError(f"{path}: feature #{i} has an unreadable {kind} geometry ({exc})") from None
        coords = shapely.get_coordinates(geom)
        if not np.isfinite(coords).all():
            raise AnnotationFileError(f"{path}: feature #{i} has a non-finite coordinate")
        object_type = props.get("objectType") or props.get("object_type") \
            or _JAVA_OBJECT_TYPES.get(str(feat.get("id")), "annotation")
        rest = {k: v for k, v in props.items() if k not in ("objectType", "object_type", "classification", "name")}
        name = props.get("name")
        fid = feat.get("id")
        uuid = str(fid) if isinstance(fid, str) and fid not in _JAVA_OBJECT_TYPES else None
        out.append(QuPathFeature(geom, _class_name(props.get("classification")),
                                 None if name is None else str(name), str(object_type), rest, uuid))
    return out


def read_qupath_geojson(path: str | os.PathLike) -> list[QuPathFeature]:
    """Read a QuPath GeoJSON export (FeatureCollection, list of features or one feature).

    Raises :class:`FileNotFoundError` for a missing file and :class:`AnnotationFileError` (a
    ``ValueError``) naming the file for anything that is not such GeoJSON.
    """
    path = Path(path)
    data = read_json(path, AnnotationFileError, "GeoJSON file", missing=FileNotFoundError)
    return parse_qupath_geojson(data, path)


def class_color(name: str | None) -> list[int]:
    """A stable colour ``[r, g, b]`` for a class name (QuPath shows classes by colour)."""
    digest = hashlib.sha1((name or "").encode("utf-8")).digest()
    return [64 + digest[0] % 192, 64 + digest[1] % 192, 64 + digest[2] % 192]


def _as_feature(item: QuPathFeature | BaseGeometry | tuple) -> QuPathFeature:
    if isinstance(item, QuPathFeature):
        return item
    if isinstance(item, BaseGeometry):
        return QuPathFeature(item)
    geom, *rest = item
    return QuPathFeature(geom, *rest)


def to_geojson(features: Iterable[QuPathFeature | BaseGeometry | tuple], *, feature_collection: bool = True,
               colors: Mapping[str, Iterable[int]] | None = None) -> dict | list:
    """GeoJSON (a FeatureCollection, or a list of features) of ``features``: each a
    :class:`QuPathFeature`, a shapely geometry, or ``(geometry, classification[, name])``."""
    out = []
    for item in features:
        f = _as_feature(item)
        props: dict[str, Any] = {"objectType": f.object_type}
        if f.name is not None:
            props["name"] = f.name
        if f.classification is not None:
            col = (colors or {}).get(f.classification)
            props["classification"] = {"name": f.classification,
                                       "color": [int(c) for c in col] if col is not None
                                       else class_color(f.classification)}
        props.update({k: v for k, v in f.properties.items() if k not in props})
        feature = {"type": "Feature", "geometry": shapely.geometry.mapping(f.geometry), "properties": props}
        if f.uuid is not None:
            feature = {"type": "Feature", "id": f.uuid, **{k: v for k, v in feature.items() if k != "type"}}
        out.append(feature)
    return {"type": "FeatureCollection", "features": out} if feature_collection else out


def write_qupath_geojson(path: str | os.PathLike, features: Iterable[QuPathFeature | BaseGeometry | tuple], *,
                         feature_collection: bool = True,
                         colors: Mapping[str, Iterable[int]] | None = None) -> Path:
    """Write ``features`` (see :func:`to_geojson`) as QuPath-importable GeoJSON, atomically; returns the path."""
    data = to_geojson(features, feature_collection=feature_collection, colors=colors)
    return atomic_write_text(path, json.dumps(data) + "\n")
