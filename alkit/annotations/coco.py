"""COCO-style JSON object annotations read as points: each box's centre, keyed by image and category.

A file has ``images`` (``id``, ``file_name``, optionally ``width`` / ``height``), ``categories``
(``id``, ``name``) and ``annotations`` (``image_id``, ``category_id``, ``bbox``). Images are keyed
by their file name's stem (``slides/x.tiff`` -> ``x``), categories by name. COCO boxes are
``[x, y, w, h]``; MIDOG++ writes corners ``[x1, y1, x2, y2]`` in the same field, so the format can
be detected (:func:`read_coco_points`, ``bbox_format="auto"``). What a category means is for the
caller to decide.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from alkit.annotations import AnnotationFileError
from alkit.jsonfile import read_json

log = logging.getLogger(__name__)

__all__ = ["CocoPoints", "read_coco_points"]

BboxFormat = Literal["auto", "xywh", "xyxy"]


@dataclass(frozen=True)
class CocoPoints:
    """The box centres of a COCO file's annotations, in file order.

    ``points`` (n, 2) float64 level-0 ``(x, y)``; ``stems`` and ``categories`` give each point's
    image file-name stem and category name; ``bbox_format`` is how the boxes were read.
    """

    points: np.ndarray
    stems: tuple[str, ...]
    categories: tuple[str, ...]
    bbox_format: Literal["xywh", "xyxy"]

    def grouped(self, label: Mapping[str, str | None] | Callable[[str], str | None] | None = None
                ) -> dict[str, dict[str, np.ndarray]]:
        """``{group: {stem: (k, 2) points}}``, points in file order. The group of a point is its
        category name, or what ``label`` (a mapping or function of the category name) makes of it;
        points whose group is ``None`` are left out."""
        of = label.get if isinstance(label, Mapping) else label or (lambda name: name)
        groups = {name: of(name) for name in set(self.categories)}
        found: dict[str, dict[str, list]] = {}
        for xy, stem, cat in zip(self.points, self.stems, self.categories):
            group = groups[cat]
            if group is not None:
                found.setdefault(group, {}).setdefault(stem, []).append(xy)
        return {g: {s: np.asarray(v, np.float64).reshape(-1, 2) for s, v in by_stem.items()}
                for g, by_stem in found.items()}


def read_coco_points(path: str | os.PathLike, bbox_format: BboxFormat = "auto") -> CocoPoints:
    """The box centres of every annotation in the COCO-style JSON file ``path``.

    ``bbox_format="auto"`` reads the boxes as corners only when every box has ordered corners and
    more box centres then fall inside their images (``width``/``height``) than as ``xywh``; the
    choice is logged. Without image sizes it keeps ``xywh``: give ``bbox_format`` then.

    Raises :class:`FileNotFoundError` when the file is missing, :class:`AnnotationFileError`
    (naming the file) when it is not COCO-style JSON or refers to unknown images / categories, and
    :class:`ValueError` for an unknown ``bbox_format``.
    """
    path = Path(path)
    data = read_json(path, AnnotationFileError, "COCO JSON file", missing=FileNotFoundError)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                             for k in ("images", "annotations", "categories")):
        raise AnnotationFileError(f"{path}: not COCO-style JSON (needs 'images', 'annotations' and "
                                  "'categories' lists)")
    try:
        images = {im["id"]: im for im in data["images"]}
        stems = {i: Path(str(im["file_name"])).stem for i, im in images.items()}
        cats = {c["id"]: str(c["name"]) for c in data["categories"]}
    except (KeyError, TypeError) as exc:
        raise AnnotationFileError(f"{path}: an image lacks 'id'/'file_name' or a category lacks 'id'/'name' "
                                  f"({exc!r})") from None
    anns = data["annotations"]
    try:
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        img_ids = [a["image_id"] for a in anns]
        cat_ids = [a["category_id"] for a in anns]
    except (KeyError, TypeError, ValueError) as exc:
        raise AnnotationFileError(f"{path}: every annotation needs 'image_id', 'category_id' and a 4-number "
                                  f"'bbox' ({exc!r})") from None
    if not np.isfinite(boxes).all():
        raise AnnotationFileError(f"{path}: an annotation has a non-finite bbox")
    for i, (im, cat) in enumerate(zip(img_ids, cat_ids)):
        try:
            if im not in images:
                raise AnnotationFileError(f"{path}: annotation #{i} refers to unknown image_id {im!r}")
            if cat not in cats:
                raise AnnotationFileError(f"{path}: annotation #{i} refers to unknown category_id {cat!r}")
        except TypeError:
            raise AnnotationFileError(f"{path}: annotation #{i} has an image_id or category_id that is not a "
                                      "number or string") from None
    fmt = _bbox_format(path, boxes, [images[i] for i in img_ids], bbox_format)
    if fmt == "xywh":
        centres = boxes[:, :2] + boxes[:, 2:] / 2
    else:
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    if len(set(stems.values())) < len(stems):
        log.warning("%s: several images share a file-name stem; their points are merged", path)
    return CocoPoints(centres, tuple(stems[i] for i in img_ids), tuple(cats[c] for c in cat_ids), fmt)


def _bbox_format(path: Path, boxes: np.ndarray, images: list[dict], fmt: str) -> Literal["xywh", "xyxy"]:
    """``fmt`` checked, or (``"auto"``) the layout under which the boxes make sense (see :func:`read_coco_points`)."""
    if fmt in ("xywh", "xyxy"):
        return fmt  # type: ignore[return-value]
    if fmt != "auto":
        raise ValueError(f"bbox_format must be 'auto', 'xywh' or 'xyxy', got {fmt!r}")
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
    raise AnnotationFileError(f"{path}: bboxes read neither as [x, y, w, h] (negative sizes) nor as "
                              "[x1, y1, x2, y2] (corners out of order); give bbox_format=")
