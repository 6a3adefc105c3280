"""What users take away from a selection: regions.json, QuPath GeoJSON, ASAP XML and overview PNGs.

``write_selection`` writes, under ``out``:

- ``regions.json``: the regions document, version 2 (:mod:`alkit.selection.regions_file`): per region a
  stable id, the slide and its absolute path and mpp, the box in level-0 px and µm, strategy, parameters,
  encoder, prototype set, cycle, rank and score, and the selection's provenance;
- ``qupath/<slide>.geojson``: one locked object of class ``Region`` per region (id, UUID, rank / score /
  cycle in ``measurements``), importable in QuPath (File › Import objects); see
  :mod:`alkit.annotations.roundtrip` for the round trip back;
- ``asap/<slide>.xml``: the same rectangles for ASAP, in the group ``Region``, named with their id;
- ``png/<slide>.png``: the overview (:mod:`alkit.selection.overlay`) of every slide of the cohort.

Annotation files are written for the slides that got regions. An ``out`` that already holds an export is
cleaned: the files the previous ``regions.json`` lists (for a version-1 file: every ``qupath/*.geojson``,
``asap/*.xml`` and ``png/*.png``, all alkit wrote then) that this export does not rewrite are removed. A
file in ``qupath/``, ``asap/`` or ``png/`` that the previous ``regions.json`` does not list (an annotator's
file saved there, or what an export killed before writing its ``regions.json`` left) is never overwritten
or removed: the export is refused before anything is written, naming it.

Every file is written atomically. Per-slide file names come from :func:`alkit.ids.id_path` (the slide id
checked as an id, never used as a path), so a store whose ``slide`` attribute is ``../../x`` or ``/tmp/x``
fails with an error instead of writing outside ``out``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from alkit import __version__
from alkit.annotations.asap import write_asap_xml
from alkit.annotations.roundtrip import REGION_CLASS, asap_region_annotations, qupath_region_features
from alkit.atomic import atomic_path, atomic_write_text, is_hidden
from alkit.embeddings.cohort import Cohort
from alkit.errors import AlkitError
from alkit.ids import id_path
from alkit.selection.overlay import OverlayInfo, overview_png, resolve_slide_path, score_range
from alkit.selection.regions_file import RegionRecord, RegionsDocument, RegionsFileError, read_regions, region_id
from alkit.selection.strategy import Selection

log = logging.getLogger(__name__)

__all__ = ["SelectionFiles", "write_selection", "region_records", "budget_text", "EXPORT_KINDS"]

#: the per-slide folders of an export and their file suffixes
EXPORT_KINDS = {"qupath": ".geojson", "asap": ".xml", "png": ".png"}


@dataclass
class SelectionFiles:
    """What :func:`write_selection` wrote: ``regions`` (regions.json), ``files`` (every file written, regions.json
    last) and ``removed`` (stale files of an earlier export to the same folder)."""

    regions: Path
    files: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)

    def by_kind(self) -> dict[str, list[Path]]:
        """Files per folder (``qupath``, ``asap``, ``png``; ``regions.json`` under ``""``)."""
        out: dict[str, list[Path]] = {}
        for f in self.files:
            out.setdefault(f.parent.name if f.parent != self.regions.parent else "", []).append(f)
        return out


def budget_text(budget: dict | None) -> str:
    """``3 x 1024 µm`` / ``3 x 8192 px`` from a provenance budget ``{n, size_um | size_px}``."""
    if not budget:
        return ""
    n = budget.get("n")
    if budget.get("size_um") is not None:
        return f"{n} x {budget['size_um']:g} µm"
    if budget.get("size_px") is not None:
        return f"{n} x {budget['size_px']} px"
    return f"{n} per slide" if n is not None else ""


def region_records(selection: Selection, cohort: Cohort, *, cycle: int = 0,
                   provenance: dict | None = None) -> list[RegionRecord]:
    """The selection's regions as ``regions.json`` records (ids ``<slide>:c<cycle>:r<rank>``)."""
    prov = provenance or {}
    params = prov.get("params") or {}
    encoder = prov.get("encoder", cohort.attrs.get("encoder"))
    slides = {s.slide_id: s for s in cohort}
    out, ranks = [], {}
    for p in selection.regions:
        ranks[p.slide] = rank = ranks.get(p.slide, 0) + 1
        s = slides.get(p.slide)
        path = resolve_slide_path(s) if s is not None and str(s.slide_path) else None
        out.append(RegionRecord(
            id=region_id(p.slide, cycle, rank), slide=p.slide, box_px=tuple(int(v) for v in p.box),
            strategy=p.strategy, rank=rank, cycle=int(cycle),
            score=None if p.score is None or np.isnan(p.score) else float(p.score), cls=p.cls,
            slide_path=None if path is None else str(path.absolute()),
            mpp=None if s is None else float(s.grid.slide_mpp), params=dict(params), encoder=encoder,
            prototype_set=prov.get("prototype_set")))
    return out


def _previous_export(out: Path) -> set[Path]:
    """Files an earlier export wrote into ``out`` (from its regions.json; only ``qupath/``, ``asap/``, ``png/``
    files of their kind)."""
    doc_path = out / "regions.json"
    if not doc_path.exists():
        return set()
    try:
        doc = read_regions(doc_path)
    except RegionsFileError as exc:
        raise AlkitError(f"{exc}; --out {out} holds a regions.json alkit cannot read: choose another folder or "
                         "remove it") from None
    if doc.version == 1:  # alkit <= 0.1 wrote exactly these
        return {p for kind, suffix in EXPORT_KINDS.items() for p in (out / kind).glob(f"*{suffix}")}
    return {out / rel for rel in doc.files if _is_export_file(rel)}


def _is_export_file(rel: str) -> bool:
    """Whether ``rel`` (a name from regions.json's ``files``) names an export alkit writes, ``KIND/NAME.SUFFIX``
    of :data:`EXPORT_KINDS`: only such files are ever removed as stale, whatever an edited regions.json lists."""
    parts = Path(rel).parts
    return (len(parts) == 2 and parts[0] in EXPORT_KINDS and parts[1] not in (".", "..")
            and not is_hidden(parts[1]) and parts[1].endswith(EXPORT_KINDS[parts[0]]))


def _foreign_files(out: Path, ours: set[Path]) -> list[Path]:
    found = []
    for kind in EXPORT_KINDS:
        folder = out / kind
        if folder.is_dir():
            found += [p for p in sorted(folder.iterdir()) if not is_hidden(p) and p not in ours]
    return found


def write_selection(selection: Selection, cohort: Cohort, out: str | os.PathLike, *, png: bool = True,
                    cycle: int = 0, provenance: dict | None = None) -> SelectionFiles:
    """Write regions.json, the slides' QuPath GeoJSON and ASAP XML, and (``png``) overview PNGs under ``out``.

    ``provenance`` (command, params, prototype_set, selector, budget ``{n, size_px | size_um}``, ...) goes into
    regions.json; ``alkit_version``, ``strategy``, ``encoder`` and ``cycle`` are filled in. Stale files of an
    earlier export into ``out`` are removed; files in ``qupath/``, ``asap/``, ``png/`` that alkit did not write
    make it refuse (:class:`AlkitError`) before writing anything.
    """
    out = Path(out)
    prov = {"alkit_version": __version__, "command": None, "strategy": selection.strategy, "params": {},
            "encoder": cohort.attrs.get("encoder"), "prototype_set": None, "selector": None, "budget": None,
            **(provenance or {}), "cycle": int(cycle)}
    names: dict[str, str] = {}  # file name -> slide id: two ids must not share the files
    paths: dict[str, dict[str, Path]] = {}
    for slide in cohort:  # every name checked before anything is written
        name = id_path(out, slide.slide_id, source=slide.store_path).name
        if names.setdefault(name, slide.slide_id) != slide.slide_id:
            raise AlkitError(f"{slide.store_path}: slide ids {names[name]!r} and {slide.slide_id!r} make the same "
                             f"file name {name!r}; rename one of the slides")
        paths[slide.slide_id] = {kind: id_path(out / kind, slide.slide_id, suffix, source=slide.store_path)
                                 for kind, suffix in EXPORT_KINDS.items()}
    records = region_records(selection, cohort, cycle=cycle, provenance=prov)
    with_regions = {r.slide for r in records}
    planned = [paths[s.slide_id][kind] for s in cohort for kind in ("qupath", "asap") if s.slide_id in with_regions]
    planned += [paths[s.slide_id]["png"] for s in cohort] if png else []
    previous = _previous_export(out)
    foreign = _foreign_files(out, previous)  # never overwritten, never removed
    if foreign:
        shown = ", ".join(str(p.relative_to(out)) for p in foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise AlkitError(f"--out {out}: holds {len(foreign)} file(s) no earlier alkit export wrote ({shown}); "
                         "choose an empty folder or move them away")

    written: list[Path] = []
    maps = {s: (np.max(np.stack(list(m.values())), axis=0) if m else None) for s, m in selection.score_maps.items()}
    scale = score_range(maps.values())
    map_names = sorted({name for m in selection.score_maps.values() for name in m})
    map_name = "score" if len(map_names) != 1 or not map_names[0] else f"score ({map_names[0]})"
    if len(map_names) > 1:
        map_name = "score (max over " + ", ".join(map_names[:3]) + ("..." if len(map_names) > 3 else "") + ")"
    labels = sorted({r.cls or r.strategy for r in records})
    info = OverlayInfo(selection.strategy, budget_text(prov.get("budget")), int(cycle))
    for slide in cohort:
        mine = [r for r in records if r.slide == slide.slide_id]
        if mine:
            data = {"type": "FeatureCollection", "features": qupath_region_features(mine)}
            written.append(atomic_write_text(paths[slide.slide_id]["qupath"], json.dumps(data) + "\n"))
            annotations, groups = asap_region_annotations(mine)
            written.append(write_asap_xml(paths[slide.slide_id]["asap"], annotations, groups=groups,
                                          color=groups[REGION_CLASS]))
        if png:
            picture = overview_png(slide, [(r.box_px, r.cls or r.strategy) for r in mine],
                                   maps.get(slide.slide_id), info, scale, map_name, labels)
            with atomic_path(paths[slide.slide_id]["png"]) as tmp:
                Image.fromarray(picture).save(tmp)
            written.append(paths[slide.slide_id]["png"])
    removed = sorted(p for p in previous - set(written) if p.is_file())
    for p in removed:
        p.unlink()
    for kind in EXPORT_KINDS:  # folders a previous export left empty
        folder = out / kind
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    if removed:
        log.info("%s: removed %d file(s) of an earlier export", out, len(removed))
    doc = RegionsDocument(records, prov, files=[str(p.relative_to(out)) for p in written])
    regions = atomic_write_text(out / "regions.json", json.dumps(doc.to_dict(), indent=1) + "\n")
    return SelectionFiles(regions, written + [regions], removed)
