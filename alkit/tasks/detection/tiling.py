"""Tiled inference of the mitosis detector: the overlapping tiles that cover a level-0 box
(:func:`tile_origins`) and the removal of figures found twice where tiles overlap
(:func:`merge_detections`). :meth:`alkit.tasks.detection.detector.MitosisDetectorModel.detect` uses both."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torchvision.ops import nms

from alkit.tasks.detection.patches import point_boxes


def tile_origins(box: Sequence[float], tile0: float, overlap0: float) -> list[tuple[float, float]]:
    """Top-left level-0 corners of tiles of side ``tile0`` with ``overlap0`` overlap covering ``box``."""
    x, y, w, h = (float(v) for v in box)
    stride = tile0 - overlap0
    if stride <= 0:
        raise ValueError(f"overlap ({overlap0}) must be smaller than the tile ({tile0})")

    def starts(a: float, n: float) -> list[float]:
        if n <= tile0:
            return [a]
        k = math.ceil((n - tile0) / stride)
        return [a + min(i * stride, n - tile0) for i in range(k + 1)]

    return [(tx, ty) for ty in starts(y, h) for tx in starts(x, w)]


def merge_detections(points: np.ndarray, scores: np.ndarray, box0: float,
                     iou: float = 0.3) -> np.ndarray:
    """Indices (by descending score) of detections kept by NMS on ``box0``-sized level-0 squares around
    the points: a figure found by two overlapping tiles is kept once."""
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    if len(pts) == 0:
        return np.zeros(0, np.int64)
    keep = nms(torch.from_numpy(point_boxes(pts, box0)).float(), torch.as_tensor(scores, dtype=torch.float32), iou)
    return keep.numpy().astype(np.int64)
