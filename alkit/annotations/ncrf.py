"""NCRF-style JSON tumour polygons (the CAMELYON16 ground truth as Baidu's NCRF ships it).

A file looks like::

    {"positive": [{"name": "Annotation 0", "vertices": [[x, y], [x, y], ...]}, ...],
     "negative": [{"name": "Annotation 3", "vertices": [...]}, ...]}

``positive`` are tumour polygons (CAMELYON16 groups ``_0``/``_1``), ``negative`` are exclusions
inside them (group ``_2``). Vertices are level-0 pixels, x = column; rings are not repeated-closed.
This module reads and writes the file faithfully; what the polygons mean is for the caller.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from alkit.jsonfile import read_json
from alkit.annotations import AnnotationFileError
from alkit.atomic import atomic_write_text

__all__ = ["NcrfPolygon", "NcrfAnnotations", "read_ncrf_json", "parse_ncrf", "write_ncrf_json", "is_ncrf"]


class NcrfPolygon(NamedTuple):
    """One polygon: its name and a ``(k, 2)`` float array of ``(x, y)`` level-0 vertices."""

    name: str
    coords: np.ndarray


class NcrfAnnotations(NamedTuple):
    """The tumour (``positive``) and exclusion (``negative``) polygons of one slide."""

    positive: list[NcrfPolygon]
    negative: list[NcrfPolygon]


def is_ncrf(data: object) -> bool:
    """Whether parsed JSON has NCRF's shape (a dict with a ``positive`` or ``negative`` list)."""
    return isinstance(data, dict) and any(isinstance(data.get(k), list) for k in ("positive", "negative")) \
        and "type" not in data


def _polygons(path: Path, data: dict, kind: str) -> list[NcrfPolygon]:
    items = data.get(kind, [])
    if not isinstance(items, list):
        raise AnnotationFileError(f"{path}: {kind!r} is a {type(items).__name__}, expected a list of polygons")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "vertices" not in item:
            raise AnnotationFileError(f"{path}: {kind}[{i}] has no 'vertices'")
        name = str(item.get("name", f"{kind} {i}"))
        try:
            coords = np.asarray(item["vertices"], dtype=float)
        except (TypeError, ValueError):
            raise AnnotationFileError(f"{path}: {kind}[{i}] ({name!r}) vertices are not [x, y] numbers") from None
        if coords.size == 0:
            coords = coords.reshape(0, 2)
        if coords.ndim != 2 or coords.shape[1] != 2:
            raise AnnotationFileError(f"{path}: {kind}[{i}] ({name!r}) vertices have shape {coords.shape}, "
                                      "expected (k, 2)")
        if not np.isfinite(coords).all():
            raise AnnotationFileError(f"{path}: {kind}[{i}] ({name!r}) has a non-finite vertex")
        out.append(NcrfPolygon(name, coords))
    return out


def parse_ncrf(data: object, source: str | os.PathLike = "<json>") -> NcrfAnnotations:
    """Validate already-parsed NCRF JSON (``source`` names it in errors)."""
    path = Path(source)
    if not (isinstance(data, dict) and ("positive" in data or "negative" in data) and "type" not in data):
        raise AnnotationFileError(f"{path}: not NCRF polygon JSON (expected an object with 'positive' / "
                                  "'negative' lists)")
    assert isinstance(data, dict)
    return NcrfAnnotations(_polygons(path, data, "positive"), _polygons(path, data, "negative"))


def read_ncrf_json(path: str | os.PathLike) -> NcrfAnnotations:
    """Read an NCRF polygon file.

    Raises :class:`FileNotFoundError` for a missing file and :class:`AnnotationFileError` (a
    ``ValueError``) naming the file when it is not JSON, not NCRF-shaped, or has bad vertices.
    """
    path = Path(path)
    data = read_json(path, AnnotationFileError, "NCRF JSON file", missing=FileNotFoundError)
    return parse_ncrf(data, path)


def _vertices(coords: Sequence) -> list[list[float | int]]:
    out = []
    for x, y in np.asarray(coords, dtype=float).reshape(-1, 2):
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ValueError(f"non-finite vertex ({x}, {y})")
        out.append([int(v) if float(v).is_integer() else float(v) for v in (x, y)])
    return out


def write_ncrf_json(path: str | os.PathLike, positive: Iterable[NcrfPolygon | Sequence],
                    negative: Iterable[NcrfPolygon | Sequence] = ()) -> Path:
    """Write ``(name, coords)`` polygons as NCRF JSON (atomically); returns the path.

    Integral coordinates are written as integers, as NCRF's own files have them.
    """
    data = {kind: [{"name": str(p[0]), "vertices": _vertices(p[1])} for p in polys]
            for kind, polys in (("positive", positive), ("negative", negative))}
    return atomic_write_text(path, json.dumps(data, indent=1) + "\n")
