"""Tissue masks: where on a slide is tissue, at low resolution, with a transform to level 0.

Detection (:func:`tissue_mask_from_rgb`) works at about 8 µm/px:

1. the image is shrunk to the detection resolution by area averaging and lightly smoothed;
2. pen ink is set aside: red more saturated than eosin gets, green and blue hues (H&E lives in the
   purple-to-pink hues) and very dark pixels (marker, debris, slide edges), with a one-pixel fringe;
   components whose mean hue is redder than eosin (``RED_INK_HUE``) are red ink's blurred fringe;
3. Otsu's threshold (scikit-image) on the HSV saturation channel separates stained tissue from the
   unstained glass; the threshold is clipped to ``[MIN_THRESHOLD, MAX_THRESHOLD]`` so that an
   all-background image yields an empty mask (its Otsu split would otherwise cut noise in two) and an
   all-tissue image yields a full mask (its split would otherwise cut pale from dark tissue);
4. specks under ``min_object_um2`` are removed and holes under ``max_hole_um2`` filled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import morphology
from skimage.color import rgb2hsv
from skimage.filters import threshold_otsu

from alkit.wsi.slide import Slide

DETECTION_MPP = 8.0
MIN_THRESHOLD = 0.05
MAX_THRESHOLD = 0.15
MIN_OBJECT_UM2 = 5_000.0
RED_INK_HUE = 0.955  # eosin's hue stays below this; red ink and its blurred fringe lie above
MAX_HOLE_UM2 = 10_000.0


@dataclass(frozen=True)
class TissueMask:
    """Boolean tissue mask; mask pixel ``(r, c)`` covers level-0 ``[c*sx, (c+1)*sx) × [r*sy, (r+1)*sy)``."""

    mask: np.ndarray
    scale: tuple[float, float]  # level-0 pixels per mask pixel along (x, y)
    threshold: float  # saturation threshold that was applied

    @property
    def fraction(self) -> float:
        """Share of the mask's pixels that are tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def box_fractions(self, boxes: np.ndarray) -> np.ndarray:
        """Tissue fraction of each level-0 box ``(x, y, w, h)`` (array (n, 4)); vectorised.

        A box counts the mask pixels whose centres fall inside it; a box smaller than a mask pixel
        takes the pixel under its centre. Parts of a box outside the mask count as background.
        """
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        sx, sy = self.scale
        rows, cols = self.mask.shape
        integral = np.zeros((rows + 1, cols + 1), np.int64)
        np.cumsum(np.cumsum(self.mask, axis=0, dtype=np.int64), axis=1, out=integral[1:, 1:])

        def pixel_span(lo: np.ndarray, size: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
            first = np.floor(lo / step + 0.5)  # first pixel whose centre is >= lo
            last = np.floor((lo + size) / step + 0.5)  # one past the last centre < lo + size
            centre = np.floor((lo + size / 2) / step)
            tiny = last <= first
            return np.where(tiny, centre, first), np.where(tiny, centre + 1, last)

        c0, c1 = pixel_span(boxes[:, 0], boxes[:, 2], sx)
        r0, r1 = pixel_span(boxes[:, 1], boxes[:, 3], sy)
        area = (c1 - c0) * (r1 - r0)
        c0, c1 = np.clip(c0, 0, cols).astype(np.int64), np.clip(c1, 0, cols).astype(np.int64)
        r0, r1 = np.clip(r0, 0, rows).astype(np.int64), np.clip(r1, 0, rows).astype(np.int64)
        inside = integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]
        return inside / np.maximum(area, 1)


def _ink_mask(hsv: np.ndarray) -> np.ndarray:
    """Pen ink and dark marks at detection resolution, grown by one pixel to take the ink's fringe.

    Red ink is more saturated than any eosin; green and blue inks have hues H&E never shows; at
    ~8 µm/px even dense nuclei average out well above ``val < 0.35``.
    """
    hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    red = ((hue > 0.92) | (hue < 0.03)) & (sat > 0.6)
    green_blue = (hue > 0.15) & (hue < 0.66) & (sat > 0.3)
    dark = val < 0.35
    return ndimage.binary_dilation(red | green_blue | dark, iterations=1)


def _fill_small_holes(mask: np.ndarray, max_pixels: int) -> np.ndarray:
    """Fill background components of at most ``max_pixels`` that do not touch the image border."""
    labels, count = ndimage.label(~mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    fill = sizes <= max_pixels
    fill[0] = False
    fill[border] = False
    return mask | fill[labels]


def _drop_red_components(mask: np.ndarray, hue: np.ndarray) -> np.ndarray:
    """Remove components whose mean hue is redder than eosin: the blurred fringe of red ink."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    unwrapped = np.where(hue < 0.5, hue + 1.0, hue)  # reds just above 0 continue past 1
    mean_hue = np.asarray(ndimage.mean(unwrapped, labels, index=np.arange(1, count + 1)))
    keep = np.concatenate([[False], mean_hue <= RED_INK_HUE])
    return keep[labels]


def tissue_mask_from_rgb(
    rgb: np.ndarray,
    mpp: float,
    *,
    detection_mpp: float = DETECTION_MPP,
    min_object_um2: float = MIN_OBJECT_UM2,
    max_hole_um2: float = MAX_HOLE_UM2,
) -> TissueMask:
    """Tissue mask of an RGB uint8 image whose pixels are ``mpp`` µm wide (see the module doc).

    The mask is at ``detection_mpp`` (or at ``mpp`` when that is already coarser); its ``scale``
    maps mask pixels to pixels of ``rgb``.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {rgb.dtype} {rgb.shape}")
    h, w = rgb.shape[:2]
    factor = detection_mpp / mpp
    if factor > 1.5:
        out = (max(1, round(w / factor)), max(1, round(h / factor)))
        small = np.asarray(Image.fromarray(np.ascontiguousarray(rgb[..., :3])).resize(out, Image.Resampling.BOX))
    else:
        small = rgb[..., :3]
    scale = (w / small.shape[1], h / small.shape[0])
    px_um2 = (mpp * scale[0]) * (mpp * scale[1])

    hsv = rgb2hsv(ndimage.uniform_filter(small.astype(np.float32), size=(3, 3, 1)) / 255.0)
    ink = _ink_mask(hsv)
    saturation = hsv[..., 1]  # ink pixels are excluded below, from the threshold and from the mask
    values = saturation[~ink]
    if values.size == 0 or np.ptp(values) < 1e-6:
        threshold = MAX_THRESHOLD if (values.size and values[0] > MAX_THRESHOLD) else MIN_THRESHOLD
    else:
        threshold = float(np.clip(threshold_otsu(values), MIN_THRESHOLD, MAX_THRESHOLD))
    mask = _drop_red_components((saturation > threshold) & ~ink, hsv[..., 0])
    mask = morphology.remove_small_objects(mask, max_size=max(0, int(min_object_um2 / px_um2) - 1))
    mask = _fill_small_holes(mask, int(max_hole_um2 / px_um2))
    return TissueMask(mask=mask, scale=scale, threshold=threshold)


def detect_tissue(slide: Slide, mpp: float = DETECTION_MPP, **kwargs) -> TissueMask:
    """Tissue mask of a whole slide, detected on a thumbnail at ``mpp`` µm/px; scale is to level 0."""
    thumb = slide.thumbnail(mpp=max(mpp, slide.mpp))
    found = tissue_mask_from_rgb(thumb, max(mpp, slide.mpp), detection_mpp=mpp, **kwargs)
    w, h = slide.dimensions
    return TissueMask(found.mask, (w / found.mask.shape[1], h / found.mask.shape[0]), found.threshold)
