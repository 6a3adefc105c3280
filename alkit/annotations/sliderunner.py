"""SlideRunner SQLite annotation databases (MITOS_WSI_CMC / MITOS_WSI_CCMCT / TUPAC style).

One database holds many slides. The tables that matter::

    Slides(uid, filename, width, height, directory, uuid, exactImageID, EXACTUSER)
    Classes(uid, name, color)
    Persons(uid, name, isExactUser)
    Annotations(uid, slide, guid, lastModified, deleted, type, agreedClass, description)
    Annotations_coordinates(uid, coordinateX, coordinateY, coordinateZ, slide, annoId, orderIdx)
    Annotations_label(uid, person, class, exact_id, annoId)

``type`` is SlideRunner's annotation type: 1 spot (one point), 2 rectangle (two corners),
3 polygon, 4 special spot, 5 circle (two corners of the bounding box). ``agreedClass`` is the
consensus class; the per-person votes are in ``Annotations_label``. Older databases (SlideRunner's
own TUPAC and demo files) lack ``deleted``, ``guid``, ``coordinateZ`` and colours; the reader
accepts both. Coordinates are level-0 pixels. Annotations flagged ``deleted`` are still in the
file: readers must honour the flag (``drop_deleted=True``).

The writer creates the MITOS_WSI_CMC schema without SlideRunner's triggers, which call SQL
functions (``pycurrent_time``, ``generate_uuid``, ``randcolor``) that only SlideRunner registers;
with them every plain ``sqlite3`` insert would fail.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import time
import uuid as uuidlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alkit.annotations import AnnotationFileError
from alkit.atomic import atomic_path

log = logging.getLogger(__name__)

__all__ = ["SlideRunnerAnnotation", "SlideRunnerSlide", "read_sliderunner", "write_sliderunner",
           "SPOT", "AREA", "POLYGON", "SPECIAL_SPOT", "CIRCLE"]

SPOT, AREA, POLYGON, SPECIAL_SPOT, CIRCLE = 1, 2, 3, 4, 5

_REQUIRED = ("Slides", "Annotations", "Annotations_coordinates", "Classes")

_SCHEMA = """
CREATE TABLE `Annotations_label` (`uid` INTEGER PRIMARY KEY AUTOINCREMENT UNIQUE, `person` INTEGER,
    `class` INTEGER, `exact_id` INTEGER, `annoId` INTEGER);
CREATE TABLE `Annotations_coordinates` (`uid` INTEGER PRIMARY KEY AUTOINCREMENT UNIQUE,
    `coordinateX` INTEGER, `coordinateY` INTEGER, `coordinateZ` INTEGER DEFAULT 0, `slide` INTEGER,
    `annoId` INTEGER, `orderIdx` INTEGER);
CREATE TABLE `Annotations` (`uid` INTEGER PRIMARY KEY AUTOINCREMENT UNIQUE, `slide` INTEGER,
    `guid` TEXT, `lastModified` REAL DEFAULT 0, `deleted` INTEGER DEFAULT 0, `type` INTEGER,
    `agreedClass` INTEGER, `description` TEXT);
CREATE TABLE `Classes` (`uid` INTEGER PRIMARY KEY AUTOINCREMENT UNIQUE, `name` TEXT, `color` TEXT);
CREATE TABLE `Persons` (`uid` INTEGER PRIMARY KEY AUTOINCREMENT UNIQUE, `name` TEXT,
    `isExactUser` INTEGER DEFAULT 0);
CREATE TABLE `Slides` (`uid` INTEGER PRIMARY KEY AUTOINCREMENT UNIQUE, `filename` TEXT,
    `width` INTEGER, `height` INTEGER, `directory` TEXT, `uuid` TEXT, `exactImageID` TEXT,
    `EXACTUSER` INTEGER DEFAULT 0);
CREATE TABLE `Log` (`uid` INTEGER PRIMARY KEY AUTOINCREMENT, `dateTime` FLOAT, `labelId` INTEGER);
CREATE INDEX `coord_anno` ON `Annotations_coordinates` (`annoId`);
CREATE INDEX `anno_slide` ON `Annotations` (`slide`);
"""

_PALETTE = ["#00ff00", "#ff00ff", "#0000ff", "#ffff00", "#ff7f00", "#00ffff", "#7f007f"]


@dataclass(frozen=True)
class SlideRunnerSlide:
    """A row of ``Slides``."""

    filename: str
    width: int | None = None
    height: int | None = None
    directory: str = ""
    uuid: str | None = None


@dataclass(frozen=True)
class SlideRunnerAnnotation:
    """One annotation: slide filename, centre ``(x, y)`` in level-0 px, class name, deleted flag.

    For a spot ``(x, y)`` is the point; for other types it is the mean of the stored vertices
    (the centre for rectangles and circles). ``coords`` holds every stored vertex as ``(k, 2)``.
    """

    slide: str
    x: float
    y: float
    cls: str | None
    deleted: bool = False
    type: int = SPOT
    coords: np.ndarray | None = None
    uid: int | None = None
    guid: str | None = None
    description: str | None = None

    def __eq__(self, other: object) -> bool:  # numpy coords make the default __eq__ ambiguous
        if not isinstance(other, SlideRunnerAnnotation):
            return NotImplemented
        return (self.slide, self.x, self.y, self.cls, self.deleted, self.type) == \
            (other.slide, other.x, other.y, other.cls, other.deleted, other.type)

    __hash__ = None  # type: ignore[assignment]


def _connect_ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


def read_sliderunner(path: str | os.PathLike, *, drop_deleted: bool = False,
                     classes: Iterable[str] | None = None) -> list[SlideRunnerAnnotation]:
    """Read every annotation of a SlideRunner database, in ``Annotations.uid`` order.

    ``drop_deleted`` leaves out annotations flagged ``deleted``; ``classes`` keeps only those class
    names. The class is ``agreedClass``; where that is missing, the latest vote in
    ``Annotations_label``. Annotations without coordinates are skipped with a warning.

    Raises :class:`FileNotFoundError` for a missing file and :class:`AnnotationFileError` naming the file when
    it is not an SQLite database or lacks SlideRunner's tables.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such SlideRunner database")
    keep = None if classes is None else set(classes)
    try:
        con = _connect_ro(path)
    except sqlite3.Error as exc:
        raise AnnotationFileError(f"{path}: cannot open as SQLite ({exc})") from exc
    try:
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as exc:
            raise AnnotationFileError(f"{path}: not an SQLite database ({exc})") from exc
        missing = [t for t in _REQUIRED if t not in tables]
        if missing:
            raise AnnotationFileError(f"{path}: not a SlideRunner database (missing tables {', '.join(missing)})")
        cols = {r[1] for r in con.execute("PRAGMA table_info(Annotations)")}
        for need in ("uid", "slide", "type"):
            if need not in cols:
                raise AnnotationFileError(f"{path}: table Annotations has no column {need!r}")
        deleted_sql = "a.deleted" if "deleted" in cols else "0"
        guid_sql = "a.guid" if "guid" in cols else "NULL"
        agreed_sql = "a.agreedClass" if "agreedClass" in cols else "NULL"
        desc_sql = "a.description" if "description" in cols else "NULL"

        class_names = {uid: name for uid, name in con.execute("SELECT uid, name FROM Classes")}
        slide_names = {uid: name for uid, name in con.execute("SELECT uid, filename FROM Slides")}
        votes: dict[int, int] = {}
        if "Annotations_label" in tables:
            for anno, cls in con.execute(
                    "SELECT annoId, class FROM Annotations_label ORDER BY uid"):
                votes[anno] = cls  # the latest vote wins
        coords: dict[int, list[tuple[float, float]]] = {}
        for anno, x, y in con.execute(
                "SELECT annoId, coordinateX, coordinateY FROM Annotations_coordinates "
                "ORDER BY annoId, orderIdx, uid"):
            try:
                point = (float(x), float(y))
            except (TypeError, ValueError):
                point = (math.nan, math.nan)
            if not (math.isfinite(point[0]) and math.isfinite(point[1])):
                raise AnnotationFileError(f"{path}: annotation {anno!r} has a coordinate that is not a finite "
                                          f"number ({x!r:.40}, {y!r:.40})")
            coords.setdefault(anno, []).append(point)

        out: list[SlideRunnerAnnotation] = []
        n_nocoord = 0
        rows = con.execute(f"SELECT a.uid, a.slide, a.type, {agreed_sql}, {deleted_sql}, {guid_sql}, "
                           f"{desc_sql} FROM Annotations a ORDER BY a.uid")
        for uid, slide, typ, agreed, deleted, guid, desc in rows:
            deleted = bool(deleted)
            if drop_deleted and deleted:
                continue
            cls_id = agreed if agreed in class_names else votes.get(uid)
            cls = class_names.get(cls_id)
            if keep is not None and cls not in keep:
                continue
            pts = coords.get(uid)
            if not pts:
                n_nocoord += 1
                continue
            arr = np.asarray(pts, dtype=float)
            if typ is not None and (isinstance(typ, bool) or not isinstance(typ, int)):
                raise AnnotationFileError(f"{path}: annotation {uid!r} has type {typ!r:.40}, expected a number 1-5")
            cx, cy = (arr[0] if typ in (SPOT, SPECIAL_SPOT) else arr.mean(axis=0))
            out.append(SlideRunnerAnnotation(slide=slide_names.get(slide, str(slide)), x=float(cx),
                                             y=float(cy), cls=cls, deleted=deleted,
                                             type=int(typ) if typ is not None else SPOT, coords=arr,
                                             uid=int(uid), guid=guid, description=desc))
        if n_nocoord:
            log.warning("%s: %d annotation(s) without coordinates skipped", path, n_nocoord)
        return out
    except sqlite3.DatabaseError as exc:
        raise AnnotationFileError(f"{path}: unreadable SlideRunner database ({exc})") from exc
    finally:
        con.close()


def _as_slide(s: SlideRunnerSlide | Mapping | str) -> SlideRunnerSlide:
    if isinstance(s, SlideRunnerSlide):
        return s
    if isinstance(s, str):
        return SlideRunnerSlide(s)
    return SlideRunnerSlide(**dict(s))


def _as_annotation(a: SlideRunnerAnnotation | Mapping | tuple) -> SlideRunnerAnnotation:
    if isinstance(a, SlideRunnerAnnotation):
        return a
    if isinstance(a, Mapping):
        return SlideRunnerAnnotation(**dict(a))
    return SlideRunnerAnnotation(*a)


def write_sliderunner(path: str | os.PathLike,
                      slides: Iterable[SlideRunnerSlide | Mapping | str],
                      annotations: Iterable[SlideRunnerAnnotation | Mapping | tuple],
                      *, classes: Mapping[str, str] | Iterable[str] | None = None,
                      person: str = "alkit", last_modified: float | None = None) -> Path:
    """Write a SlideRunner database (replacing ``path`` atomically).

    ``slides`` are :class:`SlideRunnerSlide` (or dicts / bare filenames); ``annotations`` are
    :class:`SlideRunnerAnnotation` (or ``(slide, x, y, cls[, deleted])`` tuples / dicts) whose
    ``slide`` names one of the slides' filenames. Spots are written as one coordinate; an
    annotation with ``coords`` writes those vertices. ``classes`` fixes the class table (names, or
    name -> colour) and its order; by default the classes used, in order of first use. Every
    annotation gets one label by ``person``. ``last_modified`` (seconds since the epoch; default
    now) and per-annotation ``guid`` (default random) make the output reproducible when given.
    """
    path = Path(path)
    slides = [_as_slide(s) for s in slides]
    anns = [_as_annotation(a) for a in annotations]
    slide_uid = {}
    for i, s in enumerate(slides, start=1):
        if s.filename in slide_uid:
            raise ValueError(f"{path}: slide {s.filename!r} listed twice")
        slide_uid[s.filename] = i
    if isinstance(classes, Mapping):
        class_colors = dict(classes)
    else:
        names = list(classes) if classes is not None else list(
            dict.fromkeys(a.cls for a in anns if a.cls is not None))
        class_colors = {n: _PALETTE[i % len(_PALETTE)] for i, n in enumerate(names)}
    class_uid = {n: i for i, n in enumerate(class_colors, start=1)}
    stamp = time.time() if last_modified is None else float(last_modified)

    with atomic_path(path) as tmp:
        con = sqlite3.connect(tmp)
        try:
            con.executescript(_SCHEMA)
            con.execute("INSERT INTO Persons (uid, name, isExactUser) VALUES (1, ?, 0)", (person,))
            con.executemany("INSERT INTO Classes (uid, name, color) VALUES (?, ?, ?)",
                            [(class_uid[n], n, c) for n, c in class_colors.items()])
            con.executemany(
                "INSERT INTO Slides (uid, filename, width, height, directory, uuid, exactImageID, "
                "EXACTUSER) VALUES (?, ?, ?, ?, ?, ?, NULL, 0)",
                [(slide_uid[s.filename], s.filename, s.width, s.height, s.directory, s.uuid)
                 for s in slides])
            anno_rows, coord_rows, label_rows = [], [], []
            for uid, a in enumerate(anns, start=1):
                if a.slide not in slide_uid:
                    raise ValueError(f"{path}: annotation #{uid} refers to unknown slide {a.slide!r}")
                if a.cls is not None and a.cls not in class_uid:
                    raise ValueError(f"{path}: annotation #{uid} has class {a.cls!r} not in classes")
                cid = class_uid.get(a.cls) if a.cls is not None else None
                sid = slide_uid[a.slide]
                guid = a.guid or str(uuidlib.uuid4())
                anno_rows.append((uid, sid, guid, stamp, int(bool(a.deleted)), int(a.type), cid,
                                  a.description))
                pts = (np.asarray(a.coords, dtype=float).reshape(-1, 2) if a.coords is not None
                       else np.array([[a.x, a.y]], dtype=float))
                if not np.isfinite(pts).all():
                    raise ValueError(f"{path}: annotation #{uid} has non-finite coordinates")
                for k, (x, y) in enumerate(pts, start=1):
                    coord_rows.append((int(round(x)), int(round(y)), 0, sid, uid, k))
                if cid is not None:
                    label_rows.append((1, cid, None, uid))
            con.executemany("INSERT INTO Annotations (uid, slide, guid, lastModified, deleted, type, "
                            "agreedClass, description) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", anno_rows)
            con.executemany("INSERT INTO Annotations_coordinates (coordinateX, coordinateY, "
                            "coordinateZ, slide, annoId, orderIdx) VALUES (?, ?, ?, ?, ?, ?)",
                            coord_rows)
            con.executemany("INSERT INTO Annotations_label (person, class, exact_id, annoId) "
                            "VALUES (?, ?, ?, ?)", label_rows)
            con.commit()
        finally:
            con.close()
    return path
