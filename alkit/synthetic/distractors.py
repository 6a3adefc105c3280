"""Distractors on the plan: pen strokes, tissue folds, air bubbles and out-of-focus patches.

None of them is tumour, and they are kept off the tumour (a pathologist's pen circles a lesion
rather than covering it); :mod:`alkit.synthetic.figures` keeps figures away from them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import ndimage
from skimage.draw import line as draw_line

from alkit.synthetic.layout import Layout
from alkit.synthetic.render import raster_polygon
from alkit.synthetic.stains import INKS


def _stroke_field(rng: np.random.Generator, shape: tuple[int, int], start: tuple[float, float],
                  length: float, width: float, soft: float) -> np.ndarray:
    """A smooth random curve of the given width, as a [0, 1] plan field."""
    ph, pw = shape
    step = max(2.0, length / 40)
    n = max(2, int(length / step))
    heading = rng.uniform(0, 2 * np.pi)
    curv = 0.0
    pts = [np.array(start, float)]
    for _ in range(n):
        curv = float(np.clip(curv + rng.normal(0, 0.06), -0.12, 0.12))
        heading += curv
        pts.append(pts[-1] + step * np.array([math.cos(heading), math.sin(heading)]))
    pts = np.array(pts)
    pad = width / 2 + 2 * soft + 2
    x0 = int(max(0, math.floor(pts[:, 0].min() - pad)))
    x1 = int(min(pw, math.ceil(pts[:, 0].max() + pad)))
    y0 = int(max(0, math.floor(pts[:, 1].min() - pad)))
    y1 = int(min(ph, math.ceil(pts[:, 1].max() + pad)))
    out = np.zeros(shape, np.float32)
    if x1 <= x0 or y1 <= y0:
        return out
    # rasterise the centre line in a box enlarged by the pad, so parts just outside still count
    ex0, ey0 = int(math.floor(pts[:, 0].min() - pad)), int(math.floor(pts[:, 1].min() - pad))
    ew = int(math.ceil(pts[:, 0].max() + pad)) - ex0 + 1
    eh = int(math.ceil(pts[:, 1].max() + pad)) - ey0 + 1
    mask = np.ones((eh, ew), bool)
    ip = np.round(pts - [ex0, ey0]).astype(int)
    for (ax, ay), (bx, by) in zip(ip[:-1], ip[1:]):
        rr, cc = draw_line(ay, ax, by, bx)
        mask[rr, cc] = False
    d = ndimage.distance_transform_edt(mask)
    fv = np.clip((width / 2 - d) / soft + 0.5, 0, 1).astype(np.float32)
    out[y0:y1, x0:x1] = fv[y0 - ey0:y1 - ey0, x0 - ex0:x1 - ex0]
    return out


def _random_tissue_point(rng: np.random.Generator, mask: np.ndarray) -> tuple[float, float]:
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return rng.uniform(0, mask.shape[1]), rng.uniform(0, mask.shape[0])
    r, c = divmod(int(rng.choice(idx)), mask.shape[1])
    return c + rng.uniform(-0.5, 0.5), r + rng.uniform(-0.5, 0.5)


def _tumour_plan_mask(lay: Layout, grow_um: float = 0.0) -> np.ndarray | None:
    """The tumour polygons rasterised on the plan grid, grown by ``grow_um``."""
    if not lay.tumour_polys:
        return None
    ph, pw = lay.plan_shape
    mask = np.zeros((ph, pw), bool)
    for poly in lay.tumour_polys:
        mask |= raster_polygon((poly + 0.5) / lay.f - 0.5, 0, 0, pw, ph)
    if grow_um > 0:
        mask = ndimage.distance_transform_edt(~mask) <= lay.um_to_plan(grow_um)
    return mask


def add_distractors(rng: np.random.Generator, lay: Layout, spec: dict) -> None:
    """Pen strokes, folds, air bubbles and out-of-focus patches. None of them is tumour, and they
    are kept off the tumour (a pathologist's pen circles a lesion rather than covering it)."""
    ph, pw = lay.plan_shape
    m = min(ph, pw)
    tb = lay.tissue_bin
    avoid = _tumour_plan_mask(lay, grow_um=25.0)
    m_um = m * lay.f * lay.mpp
    counts = {"pen": 0, "fold": 0, "bubble": 0, "blur": 0}

    def clear_of_tumour(make: Callable[[], np.ndarray]) -> np.ndarray:
        fv = make()
        for _ in range(15):
            test = fv.max(axis=0) if fv.ndim == 3 else fv
            if avoid is None or not (test[avoid] > 0.02).any():
                break
            fv = make()
        return fv

    yy, xx = np.ogrid[0:ph, 0:pw]
    yy, xx = yy.astype(np.float32), xx.astype(np.float32)
    for _ in range(int(spec.get("pen", 0))):
        colour = spec.get("pen_colour") or ["green", "blue", "black"][int(rng.integers(0, 3))]
        fv = clear_of_tumour(lambda: _stroke_field(
            rng, (ph, pw), _random_tissue_point(rng, np.ones_like(tb)), rng.uniform(0.4, 0.9) * m,
            lay.um_to_plan(rng.uniform(45, 140)), soft=max(1.0, lay.um_to_plan(4))))
        if lay.pen is None:
            lay.pen = np.zeros((3, ph, pw), np.float32)
        lay.pen += fv[None] * (INKS[colour] * np.float32(rng.uniform(0.45, 0.75)))[:, None, None]
        counts["pen"] += 1
    for _ in range(int(spec.get("fold", 0))):
        fv = clear_of_tumour(lambda: _stroke_field(
            rng, (ph, pw), _random_tissue_point(rng, tb), rng.uniform(*spec.get("fold_len", (0.2, 0.45))) * m,
            lay.um_to_plan(rng.uniform(*spec.get("fold_um", (25, 70)))), soft=max(1.0, lay.um_to_plan(6))))
        fv *= np.clip(lay.tissue, 0, 1)
        lay.fold = fv if lay.fold is None else np.maximum(lay.fold, fv)
        counts["fold"] += 1
    if spec.get("bubble", 0):
        rim = np.zeros((ph, pw), np.float32)
        inn = np.zeros((ph, pw), np.float32)

        def bubble() -> np.ndarray:
            r = lay.um_to_plan(rng.uniform(*spec.get("bubble_um", (min(40, 0.06 * m_um),
                                                                   min(160, 0.12 * m_um)))))
            cx, cy = _random_tissue_point(rng, tb)
            cx += rng.uniform(-0.5, 0.5) * r
            cy += rng.uniform(-0.5, 0.5) * r
            rw = max(0.8, lay.um_to_plan(rng.uniform(1.5, 3.5)))
            d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
            return np.stack([np.exp(-((d - r) / rw) ** 2), np.clip((r - d) / rw, 0, 1)])

        for _ in range(int(spec["bubble"])):
            b = clear_of_tumour(bubble)
            np.maximum(rim, b[0], out=rim)
            np.maximum(inn, b[1], out=inn)
            counts["bubble"] += 1
        lay.bubble_rim, lay.bubble_in = rim, inn
    if spec.get("blur", 0):
        def blur() -> np.ndarray:
            cx, cy = _random_tissue_point(rng, tb)
            r = lay.um_to_plan(rng.uniform(*spec.get("blur_um", (min(100, 0.1 * m_um),
                                                                 min(250, 0.2 * m_um)))))
            ry = r * rng.uniform(0.6, 1.0)
            d = np.sqrt(((xx - cx) / r) ** 2 + ((yy - cy) / ry) ** 2)
            return np.clip((1.0 - d) / 0.3, 0, 1).astype(np.float32)

        lay.blur = clear_of_tumour(blur)
        lay.blur_sigma_px = max(rng.uniform(2.0, 4.0) / lay.mpp, rng.uniform(3.0, 5.0))
        counts["blur"] = 1
    lay.distractors = counts


def random_distractor_spec(rng: np.random.Generator) -> dict:
    return {"pen": int(rng.integers(1, 3)) if rng.random() < 0.5 else 0,
            "fold": 1 if rng.random() < 0.4 else 0,
            "bubble": int(rng.integers(1, 4)) if rng.random() < 0.4 else 0,
            "blur": 1 if rng.random() < 0.35 else 0}
