"""What users take away from a selection: regions JSON, QuPath GeoJSON, ASAP XML and overview PNGs.

``write_selection`` writes, under ``out``:

- ``regions.json``: a list of ``{slide, x, y, w, h, strategy, class, score}`` (level-0 pixels);
- ``qupath/<slide>.geojson``: a FeatureCollection of rectangle annotations, ``properties.classification``
  = the class (or the strategy when it has none), importable in QuPath (File › Import objects);
- ``asap/<slide>.xml``: the same rectangles as ASAP polygons, one group per class;
- ``png/<slide>.png``: the slide thumbnail with the score map over it (where the strategy has one)
  and the boxes with their rank.

Every file is written atomically. Per-slide file names come from :func:`alkit.ids.id_path` (the slide id
checked as an id, never used as a path), so a store whose ``slide`` attribute is ``../../x`` or ``/tmp/x``
fails with an error instead of writing outside ``out``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from alkit.annotations.asap import write_asap_xml
from alkit.atomic import atomic_path, atomic_write_text
from alkit.embeddings.cohort import Cohort, CohortSlide
from alkit.errors import AlkitError
from alkit.ids import id_path
from alkit.wsi.slide import Slide, SlideError
from alkit.selection.strategy import RegionPick, Selection

log = logging.getLogger(__name__)

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]
THUMB_SIDE = 1024


def _label(pick: RegionPick) -> str:
    return pick.cls or pick.strategy


def _colour(label: str, labels: list[str]) -> tuple[int, int, int]:
    return PALETTE[labels.index(label) % len(PALETTE)]


def regions_geojson(picks: list[RegionPick]) -> dict:
    """QuPath GeoJSON FeatureCollection of the picks as rectangle annotations."""
    labels = sorted({_label(p) for p in picks})
    features = []
    for rank, p in enumerate(picks, 1):
        x, y, w, h = p.box
        ring = [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"objectType": "annotation", "name": f"{p.strategy} #{rank}",
                           "classification": {"name": _label(p), "color": list(_colour(_label(p), labels))},
                           "strategy": p.strategy, "score": None if np.isnan(p.score) else float(p.score)},
        })
    return {"type": "FeatureCollection", "features": features}


def overview_png(slide: CohortSlide, picks: list[RegionPick], score_map: np.ndarray | None) -> np.ndarray:
    """RGB overview: thumbnail (or grey where the slide file is gone), score map blended in, ranked boxes."""
    w0, h0 = slide.grid.dimensions
    scale = THUMB_SIDE / max(w0, h0)
    size = (max(1, round(w0 * scale)), max(1, round(h0 * scale)))
    try:
        with Slide(slide.slide_path, mpp=slide.grid.slide_mpp) as s:
            base = Image.fromarray(s.read((0, 0, w0, h0), size=size, mpp=s.mpp / scale))
    except SlideError as exc:
        log.warning("%s: no thumbnail (%s); drawing on grey", slide.slide_id, exc.reason)
        base = Image.new("RGB", size, (200, 200, 200))
    if score_map is not None and score_map.size:
        import matplotlib

        top = float(score_map.max()) or 1.0
        heat = (matplotlib.colormaps["magma"](score_map / top)[..., :3] * 255).astype(np.uint8)
        rows, cols = score_map.shape
        stride = slide.grid.stride0 * scale
        full = (max(1, round(cols * stride)), max(1, round(rows * stride)))
        heat_img = Image.fromarray(heat).resize(full, Image.Resampling.NEAREST).crop((0, 0, *size))
        alpha = Image.fromarray(((score_map > 0) * 115).astype(np.uint8)).resize(full, Image.Resampling.NEAREST)
        base = Image.composite(heat_img, base, alpha.crop((0, 0, *size)))  # tint only scored cells
    draw = ImageDraw.Draw(base)
    labels = sorted({_label(p) for p in picks})
    for rank, p in enumerate(picks, 1):
        x, y, w, h = (v * scale for v in p.box)
        colour = _colour(_label(p), labels)
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline=colour, width=3)
        draw.text((x + 4, y + 2), str(rank), fill=colour)
    return np.asarray(base)


def write_selection(selection: Selection, cohort: Cohort, out: str | os.PathLike, png: bool = True) -> Path:
    """Write regions.json and per-slide GeoJSON, ASAP XML and PNG under ``out``; returns regions.json."""
    out = Path(out)
    names: dict[str, str] = {}  # file name -> slide id: two ids must not share the files
    for slide in cohort:  # every name checked before anything is written
        name = id_path(out, slide.slide_id, source=slide.store_path).name
        if names.setdefault(name, slide.slide_id) != slide.slide_id:
            raise AlkitError(f"{slide.store_path}: slide ids {names[name]!r} and {slide.slide_id!r} make the same "
                             f"file name {name!r}; rename one of the slides")
    regions_json = atomic_write_text(out / "regions.json",
                                     json.dumps([p.to_dict() for p in selection.regions], indent=1) + "\n")
    for slide in cohort:
        picks = selection.for_slide(slide.slide_id)

        def per_slide(kind: str, suffix: str) -> Path:
            return id_path(out / kind, slide.slide_id, suffix, source=slide.store_path)

        atomic_write_text(per_slide("qupath", ".geojson"), json.dumps(regions_geojson(picks)) + "\n")
        annotations = [(f"{p.strategy} #{rank}", _label(p),
                        [(p.box[0], p.box[1]), (p.box[0] + p.box[2], p.box[1]),
                         (p.box[0] + p.box[2], p.box[1] + p.box[3]), (p.box[0], p.box[1] + p.box[3])])
                       for rank, p in enumerate(picks, 1)]
        groups = {lab: "#%02X%02X%02X" % _colour(lab, sorted({_label(p) for p in picks}))
                  for lab in sorted({_label(p) for p in picks})}
        write_asap_xml(per_slide("asap", ".xml"), annotations, groups=groups)
        if png:
            maps = selection.score_maps.get(slide.slide_id, {})
            score_map = np.max(np.stack(list(maps.values())), axis=0) if maps else None
            with atomic_path(per_slide("png", ".png")) as tmp:
                Image.fromarray(overview_png(slide, picks, score_map)).save(tmp)
    return regions_json
