"""ASAP XML annotations (the format of the CAMELYON16 ground truth).

A file looks like::

    <ASAP_Annotations>
      <Annotations>
        <Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="_0" Color="#F4FA58">
          <Coordinates>
            <Coordinate Order="0" X="42029.0" Y="41712.0" />
            ...
      <AnnotationGroups>
        <Group Name="_0" PartOfGroup="None" Color="#FF0000"><Attributes /></Group>

Coordinates are level-0 pixels (x = column). This module only reads and writes the file faithfully;
what a group means (in CAMELYON16 ``_0``/``_1``/``Tumor`` are tumour, ``_2`` is an exclusion inside
a tumour) is for the caller to decide. Parsing always goes through :mod:`defusedxml`.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET  # building and serialising only; never used to parse
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import defusedxml.ElementTree as SafeET
import numpy as np
from defusedxml import DefusedXmlException

from alkit.annotations import AnnotationFileError
from alkit.atomic import atomic_write_bytes

__all__ = ["AsapAnnotation", "read_asap_xml", "write_asap_xml", "CAMELYON16_GROUPS"]

#: The groups (name -> colour) that CAMELYON16's XML files declare.
CAMELYON16_GROUPS: dict[str, str] = {"_0": "#FF0000", "_1": "#FF0000", "_2": "#00FF00"}
_DEFAULT_ANNOTATION_COLOR = "#F4FA58"


class AsapAnnotation(NamedTuple):
    """One annotation: its name, the group it is part of (``"None"`` if none) and a ``(k, 2)``
    float array of ``(x, y)`` level-0 vertices in the file's ``Order``."""

    name: str
    group: str
    coords: np.ndarray


def read_asap_xml(path: str | os.PathLike, types: Iterable[str] | None = None) -> list[AsapAnnotation]:
    """Read every annotation of an ASAP XML file.

    ``types`` keeps only annotations whose ``Type`` attribute is one of them (e.g. ``{"Polygon"}``);
    by default all types (Polygon, Spline, Rectangle, Dot, PointSet, ...) are returned.

    Raises :class:`FileNotFoundError` when the file is missing and :class:`AnnotationFileError`, naming the
    file and the problem, when it is not well-formed XML, not an ASAP document, or has a coordinate
    without numeric X/Y.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ASAP XML file")
    try:
        root = SafeET.parse(path).getroot()
    except ET.ParseError as exc:
        raise AnnotationFileError(f"{path}: not well-formed XML ({exc})") from exc
    except DefusedXmlException as exc:
        raise AnnotationFileError(f"{path}: refused unsafe XML construct ({exc!r})") from exc
    if root.tag != "ASAP_Annotations":
        raise AnnotationFileError(f"{path}: root element is <{root.tag}>, expected <ASAP_Annotations>")
    keep = None if types is None else {t.lower() for t in types}
    out: list[AsapAnnotation] = []
    container = root.find("Annotations")
    if container is None:
        return out
    for i, ann in enumerate(container.findall("Annotation")):
        name = ann.get("Name", f"Annotation {i}")
        if keep is not None and ann.get("Type", "").lower() not in keep:
            continue
        group = ann.get("PartOfGroup", "None")
        coords_el = ann.find("Coordinates")
        points: list[tuple[float, float, float]] = []
        for j, c in enumerate(coords_el.findall("Coordinate") if coords_el is not None else []):
            try:
                x, y = float(c.get("X")), float(c.get("Y"))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise AnnotationFileError(f"{path}: annotation {name!r}, coordinate #{j} has no numeric X/Y "
                                 f"(X={c.get('X')!r}, Y={c.get('Y')!r})") from None
            if not (np.isfinite(x) and np.isfinite(y)):
                raise AnnotationFileError(f"{path}: annotation {name!r}, coordinate #{j} is not finite ({x}, {y})")
            order = c.get("Order")
            try:
                key = float(order) if order is not None else float(j)
            except ValueError:
                raise AnnotationFileError(f"{path}: annotation {name!r}, coordinate #{j} has a non-numeric "
                                 f"Order={order!r}") from None
            points.append((key, x, y))
        points.sort(key=lambda p: p[0])  # stable: document order breaks ties
        coords = np.array([(x, y) for _, x, y in points], dtype=float).reshape(-1, 2)
        out.append(AsapAnnotation(name, group, coords))
    return out


def _fmt(v: float) -> str:
    return repr(round(float(v), 3))


def write_asap_xml(path: str | os.PathLike,
                   annotations: Iterable[AsapAnnotation | Sequence],
                   groups: dict[str, str] | Iterable[str] | None = None,
                   *, annotation_type: str = "Polygon",
                   color: str = _DEFAULT_ANNOTATION_COLOR) -> Path:
    """Write annotations ``(name, group, coords)`` as ASAP XML (atomically: temp file + rename).

    ``groups`` are the ``AnnotationGroups`` to declare: a mapping name -> colour, or names (colour
    ``#FF0000``); by default the groups the annotations use. Coordinates are written with ``Order``
    0..k-1. Returns the path written.
    """
    path = Path(path)
    anns = [AsapAnnotation(str(a[0]), str(a[1]), np.asarray(a[2], dtype=float).reshape(-1, 2))
            for a in annotations]
    if groups is None:
        group_colors = {g: CAMELYON16_GROUPS.get(g, "#FF0000")
                        for g in dict.fromkeys(a.group for a in anns) if g != "None"}
    elif isinstance(groups, dict):
        group_colors = dict(groups)
    else:
        group_colors = {g: CAMELYON16_GROUPS.get(g, "#FF0000") for g in groups}

    root = ET.Element("ASAP_Annotations")
    container = ET.SubElement(root, "Annotations")
    for a in anns:
        el = ET.SubElement(container, "Annotation", {"Name": a.name, "Type": annotation_type,
                                                       "PartOfGroup": a.group, "Color": color})
        cs = ET.SubElement(el, "Coordinates")
        for k, (x, y) in enumerate(a.coords):
            if not (np.isfinite(x) and np.isfinite(y)):
                raise ValueError(f"{path}: annotation {a.name!r} has a non-finite vertex ({x}, {y})")
            ET.SubElement(cs, "Coordinate", {"Order": str(k), "X": _fmt(x), "Y": _fmt(y)})
    gs = ET.SubElement(root, "AnnotationGroups")
    for name, col in group_colors.items():
        g = ET.SubElement(gs, "Group", {"Name": name, "PartOfGroup": "None", "Color": col})
        ET.SubElement(g, "Attributes")
    ET.indent(root, space="\t")
    data = b'<?xml version="1.0"?>\n' + ET.tostring(root, encoding="utf-8") + b"\n"

    return atomic_write_bytes(path, data)
