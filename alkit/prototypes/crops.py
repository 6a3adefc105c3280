"""Crop prototypes: caption images cropped around an object (the mitotic figure) and resized to 64 × 64 px.

Mitoses are small (a figure is ~10–15 µm across), so the mitosis task embeds slides as 64 × 64 px
patches at 0.25 µm/px with stride 64 (a 16 µm field of view per grid cell). Its prototypes are made
the same way (Qiu et al., MICCAI 2024): each mitosis image is cropped to a square around its figure
and the crop is resized to 64 × 64 (:class:`~alkit.captions.images.ImagePrep` ``mode="resize",
size=64``), then embedded by the slides' encoder exactly like a slide patch
(:func:`build_crop_prototypes`; a study's ``prototypes.crops`` is a :class:`alkit.prototypes.build.CropSpec`).

Where the crop boxes come from:

* :func:`figure_boxes`: from figure positions ``{id: [(x, y), ...]}`` in image pixels (an annotator's
  clicks, or a synthetic cohort's ``truth.json``: :func:`synthetic_mitosis_boxes`); one box per
  image, around its first figure;
* :func:`centre_boxes`: the image centre, for close-ups whose figure sits in the middle;
* any ``{id: (x, y, w, h)}`` mapping (``alkit prototypes build --boxes``, :func:`alkit.prototypes.prototype_set.read_boxes`).

The crop side should cover the same field of view as a slide patch: ``FIELD_UM`` (16 µm) divided by
the image's µm/px when that is known (``side_for_mpp``); for images of unknown magnification the
side is a choice (e.g. 64 image px, or what a reviewer drew).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image

from alkit.captions.database import CaptionDB
from alkit.captions.images import Box, ImagePrep
from alkit.prototypes.prototype_set import PrototypeError, PrototypeSet, build_prototypes

log = logging.getLogger(__name__)

#: slide side of the mitosis task: 64 × 64 px patches at 0.25 µm/px, stride 64
PATCH_PX, PATCH_MPP = 64, 0.25
FIELD_UM = PATCH_PX * PATCH_MPP  # 16 µm: the field of view of one grid cell


def side_for_mpp(mpp: float, field_um: float = FIELD_UM) -> int:
    """Crop side in image px covering ``field_um`` at ``mpp`` µm/px (at least 1 px)."""
    if not mpp > 0:
        raise PrototypeError(f"image resolution must be positive, got {mpp} µm/px")
    return max(1, int(round(field_um / mpp)))


def figure_box(x: float, y: float, side: float) -> Box:
    """The integer ``side × side`` box ``(x, y, w, h)`` centred on image point ``(x, y)``."""
    s = max(1, int(round(side)))
    return int(round(x - s / 2)), int(round(y - s / 2)), s, s


def figure_boxes(points: Mapping[str, Sequence[Sequence[float]]],
                 side: float | Mapping[str, float]) -> dict[str, Box]:
    """Per image id, a square crop box of ``side`` px (per id, or one for all) around its first figure.

    Ids without figures are left out (with a warning): they would give a prototype of no mitosis.
    """
    out: dict[str, Box] = {}
    empty = []
    for key, pts in points.items():
        if len(pts) == 0:
            empty.append(str(key))
            continue
        s = side[key] if isinstance(side, Mapping) else side
        x, y = pts[0][:2]
        out[str(key)] = figure_box(float(x), float(y), float(s))
    if empty:
        log.warning("%d images without a figure position get no crop box (e.g. %s)", len(empty),
                    ", ".join(empty[:3]))
    return out


def centre_boxes(db: CaptionDB, ids: Sequence[str], side: float) -> dict[str, Box]:
    """Per id, the ``side × side`` box at the centre of its image (the image header is read, not decoded)."""
    out: dict[str, Box] = {}
    for i in map(str, ids):
        path = db.image_path(i)
        if path is None:
            raise PrototypeError(f"caption database {db.name}: no image for id {i}")
        with Image.open(path) as im:
            w, h = im.size
        out[i] = figure_box(w / 2, h / 2, side)
    return out


def synthetic_mitosis_boxes(truth: str | os.PathLike | Mapping[str, dict],
                            field_um: float = FIELD_UM) -> dict[str, Box]:
    """Crop boxes of a synthetic cohort's mitosis close-ups (``captions/truth.json``), keyed by image uuid.

    Each box is centred on the image's first figure and covers ``field_um`` at the image's own
    µm/px, so after resizing to 64 px the crop has the slide patches' magnification.
    """
    doc = truth if isinstance(truth, Mapping) else json.loads(Path(truth).read_text(encoding="utf-8"))
    rows = [v for v in doc.values() if v.get("kind") == "mitosis"]
    if any("figures" not in v for v in rows):
        raise PrototypeError("truth.json has no figure positions (made by an older alkit synth); regenerate it")
    points = {v["uuid"]: v["figures"] for v in rows}
    sides = {v["uuid"]: side_for_mpp(float(v["mpp"]), field_um) for v in rows}
    return figure_boxes(points, sides)


def build_crop_prototypes(db: CaptionDB, ids: Sequence[str], encoder, *, name: str,
                          boxes: Mapping[str, Box] | None = None, side: float = PATCH_PX, size: int = PATCH_PX,
                          query: dict | None = None, **kwargs) -> PrototypeSet:
    """A :class:`PrototypeSet` with one class ``name`` of ``size × size`` crops around objects (mitotic figures).

    ``boxes``: per-id crop boxes (image px); ids without one are cropped at the image centre with a
    ``side``-px box. Crops are resized to ``size`` (``ImagePrep("resize", size)``) and embedded with
    ``encoder``; ``query`` (how the ids were found) goes into the class's query, other keyword
    arguments to :func:`alkit.prototypes.prototype_set.build_prototypes`.
    """
    ids = list(dict.fromkeys(map(str, ids)))
    if not ids:
        raise PrototypeError(f"class {name!r}: no images to build crop prototypes from")
    given = {str(k): tuple(v) for k, v in (boxes or {}).items()}
    missing = [i for i in ids if i not in given]
    all_boxes = {**centre_boxes(db, missing, side), **{k: v for k, v in given.items() if k in set(ids)}}
    if missing:
        log.info("class %r: %d of %d images cropped at their centre (%g px)", name, len(missing), len(ids), side)
    prep = ImagePrep(mode="resize", size=int(size))
    q = {"crops": f"{size}x{size} resized crops around the figure", **(query or {})}
    return build_prototypes(db, {name: ids}, encoder, prep=prep, boxes=all_boxes, queries={name: q}, **kwargs)
