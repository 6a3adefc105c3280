"""``regions.json``: the document that says which regions were asked for, where, and why.

Version 2 (what :func:`alkit.selection.export.write_selection` writes)::

    {"format": "alkit.regions", "version": 2, "created": "2026-01-01T00:00:00+00:00",
     "provenance": {"alkit_version": ..., "command": ..., "strategy": ..., "params": {...},
                    "encoder": ..., "prototype_set": ..., "selector": ..., "budget": {...}, "cycle": 0},
     "files": ["qupath/s1.geojson", ...],
     "regions": [{"id": "s1:c0:r1", "slide": "s1", "slide_path": "/abs/s1.svs", "mpp": 0.25,
                  "box_px": [x, y, w, h], "box_um": [...], "strategy": ..., "params": {...},
                  "encoder": ..., "prototype_set": ..., "cycle": 0, "rank": 1, "score": 0.8,
                  "class": "tumour"}, ...]}

``box_px`` is level 0, half-open, x = column; ``box_um`` the same box times the slide's mpp. ``id`` is
``<slide>:c<cycle>:r<rank>`` (rank per slide, from 1, in the strategy's order): the same selection
always gets the same ids, and the annotation files carry them (:mod:`alkit.annotations.roundtrip`).
``class`` is the class whose map chose the region, for information only: a region is not labeled
with it. ``files`` lists, relative to the document's folder, every file of the export, so a later
export into the same folder removes exactly what this one wrote.

Version 1 (alkit ≤ 0.1's bare list of ``{slide, x, y, w, h, strategy, class, score}``) is still read:
ids are made as above with cycle 0, the fields v1 lacks are ``None``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from alkit.errors import AlkitError
from alkit.ids import check_id
from alkit.jsonfile import read_json

__all__ = ["FORMAT", "VERSION", "RegionRecord", "RegionsDocument", "RegionsFileError", "read_regions",
           "region_id"]

FORMAT = "alkit.regions"
VERSION = 2


class RegionsFileError(AlkitError, ValueError):
    """A ``regions.json`` that is not one alkit can read; the message names the file."""


def region_id(slide: str, cycle: int, rank: int) -> str:
    """The stable id of a region: ``<slide>:c<cycle>:r<rank>``."""
    return f"{slide}:c{int(cycle)}:r{int(rank)}"


@dataclass(frozen=True)
class RegionRecord:
    """One requested region, as ``regions.json`` stores it."""

    id: str
    slide: str
    box_px: tuple[int, int, int, int]  # level-0 (x, y, w, h)
    strategy: str
    rank: int
    cycle: int = 0
    score: float | None = None
    cls: str | None = None  # the class whose map chose it (information only)
    slide_path: str | None = None  # absolute
    mpp: float | None = None  # level-0 µm/px
    params: dict[str, Any] = field(default_factory=dict)
    encoder: str | None = None
    prototype_set: str | None = None

    @property
    def box_um(self) -> list[float] | None:
        return None if self.mpp is None else [round(v * self.mpp, 4) for v in self.box_px]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "slide": self.slide, "slide_path": self.slide_path, "mpp": self.mpp,
                "box_px": list(self.box_px), "box_um": self.box_um, "strategy": self.strategy,
                "params": self.params, "encoder": self.encoder, "prototype_set": self.prototype_set,
                "cycle": self.cycle, "rank": self.rank, "score": self.score, "class": self.cls}


@dataclass
class RegionsDocument:
    """A read (or about to be written) ``regions.json``."""

    regions: list[RegionRecord]
    provenance: dict[str, Any] = field(default_factory=dict)
    version: int = VERSION
    created: str | None = None
    files: list[str] = field(default_factory=list)  # relative to the document's folder
    path: Path | None = None

    def slides(self) -> list[str]:
        """Slide ids in the order of their first region."""
        return list(dict.fromkeys(r.slide for r in self.regions))

    def for_slide(self, slide: str) -> list[RegionRecord]:
        return [r for r in self.regions if r.slide == slide]

    def by_id(self) -> dict[str, RegionRecord]:
        return {r.id: r for r in self.regions}

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION,
                "created": self.created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "provenance": self.provenance, "files": list(self.files),
                "regions": [r.to_dict() for r in self.regions]}


def _number(value: Any, where: str, what: str, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RegionsFileError(f"{where}: {what} must be a finite number, got {value!r:.40}")
    return float(value)


def _box(value: Any, where: str) -> tuple[int, int, int, int]:
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise RegionsFileError(f"{where}: box_px must be [x, y, w, h], got {value!r:.60}")
    x, y, w, h = (_number(v, where, "box_px") for v in value)
    if x < 0 or y < 0 or w <= 0 or h <= 0:  # type: ignore[operator]
        raise RegionsFileError(f"{where}: box_px {list(value)} needs x, y >= 0 and w, h > 0")
    return tuple(int(round(v)) for v in (x, y, w, h))  # type: ignore[return-value]


def _text(value: Any, where: str, what: str, *, optional: bool = True) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise RegionsFileError(f"{where}: {what} must be a string, got {value!r:.40}")
    return value


def _region_id(value: Any, where: str) -> str:
    """A region id: a short printable string (it names objects in QuPath / ASAP, never a file)."""
    if not isinstance(value, str) or not value.strip() or len(value) > 300 or not value.isprintable():
        raise RegionsFileError(f"{where}: id must be a printable string of 1-300 characters, got {value!r:.60}")
    return value


def _record_v2(d: Any, source: Path, i: int) -> RegionRecord:
    where = f"{source}: region #{i}"
    if not isinstance(d, Mapping):
        raise RegionsFileError(f"{where} is not an object")
    missing = [k for k in ("id", "slide", "box_px", "strategy", "rank") if k not in d]
    if missing:
        raise RegionsFileError(f"{where} lacks {', '.join(missing)}")
    slide = check_id(d["slide"], source=source, error=RegionsFileError)
    params = d.get("params") or {}
    if not isinstance(params, Mapping):
        raise RegionsFileError(f"{where}: params must be an object")
    mpp = _number(d.get("mpp"), where, "mpp", optional=True)
    if mpp is not None and mpp <= 0:
        raise RegionsFileError(f"{where}: mpp must be positive, got {mpp}")
    rank, cycle = d["rank"], d.get("cycle", 0)
    for what, v in (("rank", rank), ("cycle", cycle)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise RegionsFileError(f"{where}: {what} must be a whole number >= 0, got {v!r:.40}")
    return RegionRecord(id=_region_id(d["id"], where),
                        slide=slide, box_px=_box(d["box_px"], where),
                        strategy=_text(d["strategy"], where, "strategy", optional=False) or "",
                        rank=rank, cycle=cycle, score=_number(d.get("score"), where, "score", optional=True),
                        cls=_text(d.get("class"), where, "class"),
                        slide_path=_text(d.get("slide_path"), where, "slide_path"), mpp=mpp, params=dict(params),
                        encoder=_text(d.get("encoder"), where, "encoder"),
                        prototype_set=_text(d.get("prototype_set"), where, "prototype_set"))


def _records_v1(items: list, source: Path) -> list[RegionRecord]:
    out, ranks = [], {}
    for i, d in enumerate(items):
        where = f"{source}: region #{i}"
        if not isinstance(d, Mapping) or not all(k in d for k in ("slide", "x", "y", "w", "h")):
            raise RegionsFileError(f"{where} lacks slide/x/y/w/h (a version-1 regions.json is a list of "
                                   "{slide, x, y, w, h, strategy, class, score})")
        slide = check_id(d["slide"], source=source, error=RegionsFileError)
        ranks[slide] = rank = ranks.get(slide, 0) + 1
        out.append(RegionRecord(id=region_id(slide, 0, rank), slide=slide,
                                box_px=_box([d["x"], d["y"], d["w"], d["h"]], where),
                                strategy=_text(d.get("strategy"), where, "strategy") or "unknown", rank=rank,
                                score=_number(d.get("score"), where, "score", optional=True),
                                cls=_text(d.get("class"), where, "class")))
    return out


def parse_regions(data: Any, source: str | os.PathLike = "<regions>") -> RegionsDocument:
    """A :class:`RegionsDocument` from parsed JSON: version 2, or version 1's bare list."""
    source = Path(source)
    if isinstance(data, list):
        doc = RegionsDocument(_records_v1(data, source), version=1, path=source)
    elif isinstance(data, Mapping) and data.get("format") == FORMAT:
        if data.get("version") != VERSION:
            raise RegionsFileError(f"{source}: regions format version {data.get('version')!r}; this alkit reads "
                                   f"versions 1 and {VERSION} (a newer alkit wrote it?)")
        items = data.get("regions")
        if not isinstance(items, list):
            raise RegionsFileError(f"{source}: 'regions' must be a list")
        files = data.get("files") or []
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise RegionsFileError(f"{source}: 'files' must be a list of relative paths")
        prov = data.get("provenance") or {}
        if not isinstance(prov, Mapping):
            raise RegionsFileError(f"{source}: 'provenance' must be an object")
        doc = RegionsDocument([_record_v2(d, source, i) for i, d in enumerate(items)], dict(prov),
                              created=data.get("created") if isinstance(data.get("created"), str) else None,
                              files=list(files), path=source)
    else:
        kind = type(data).__name__ if not isinstance(data, Mapping) else f"object with format {data.get('format')!r}"
        raise RegionsFileError(f"{source}: not an alkit regions file ({kind}); expected a document with "
                               f"\"format\": \"{FORMAT}\" or a version-1 list of regions")
    seen: set[str] = set()
    for r in doc.regions:
        if r.id in seen:
            raise RegionsFileError(f"{source}: region id {r.id!r} appears twice")
        seen.add(r.id)
    return doc


def read_regions(path: str | os.PathLike) -> RegionsDocument:
    """Read a ``regions.json`` (version 2, or version 1's bare list); :class:`RegionsFileError` naming the file
    for anything else."""
    path = Path(path)
    return parse_regions(read_json(path, RegionsFileError, "regions file"), path)
