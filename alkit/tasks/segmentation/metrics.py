"""Evaluation metrics: tumour IoU per slide, slide-averaged mIoU(tumour), annotated area shares.

Resolution and rules (the paper's metric, made exact at the patch grid):

* IoU is computed **per slide on its patch grid** (one value per grid cell, e.g. 256-px patches at
  0.25 µm/px), not at pixel level.
* A cell is **predicted tumour** when the model's tumour probability is ``>= 0.5``.
* A cell is **tumour in the ground truth** when at least half of its area (``tumour fraction
  >= 0.5``, e.g. from ``TumourOracle.tumour_fraction``) is tumour.
* Only the **evaluated cells** count (``valid``: the cells with an embedding, i.e. enough tissue
  for the model to score them; all cells when not given).
* ``IoU = |pred ∩ truth| / |pred ∪ truth|``. When the union is empty (no tumour predicted nor true)
  the IoU is undefined and returned as NaN; such a slide is tumour-free and never enters the mean.
* **mIoU(tumour)** is the mean of the per-slide IoUs over test slides *with* tumour (at least one
  ground-truth tumour cell among the evaluated cells), as in Qiu et al. Tumour-free slides are
  excluded; what the model does on them is reported separately as the **false-positive rate**
  (share of their evaluated cells predicted tumour), averaged over those slides. A lesion smaller
  than half a cell has no tumour cell at this resolution, so its slide counts as tumour-free.

Annotated shares: ``annotated tissue %`` = tissue area inside labeled regions / total tissue area of
the cohort, ``annotated tumour %`` likewise for tumour, both from per-cell area fractions (tissue
fraction of the grid, tumour fraction of the ground truth) summed over the labeled cells of every
slide, in percent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

#: predicted tumour: probability at or above this
PRED_THRESHOLD = 0.5
#: ground-truth tumour cell: tumour fraction at or above this
TRUTH_THRESHOLD = 0.5


def slide_iou(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> float:
    """IoU of the tumour class between boolean ``(rows, cols)`` maps, over the ``valid`` cells.

    NaN when neither map has a tumour cell there (empty union).
    """
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    if valid is not None:
        valid = check_mask(valid, pred.shape)
        pred, truth = pred & valid, truth & valid
    union = int(np.count_nonzero(pred | truth))
    return float("nan") if union == 0 else np.count_nonzero(pred & truth) / union


@dataclass(frozen=True)
class SlideMetrics:
    """Confusion counts of one slide's evaluated cells, with its tumour IoU."""

    slide_id: str
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def n_cells(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    @property
    def has_tumour(self) -> bool:
        """Whether the slide has a ground-truth tumour cell (it then counts in mIoU)."""
        return self.tp + self.fn > 0

    @property
    def iou(self) -> float:
        """Tumour IoU; NaN when the union is empty."""
        union = self.tp + self.fp + self.fn
        return float("nan") if union == 0 else self.tp / union

    @property
    def fp_rate(self) -> float:
        """Share of the ground-truth normal cells predicted tumour; NaN without normal cells."""
        negatives = self.fp + self.tn
        return float("nan") if negatives == 0 else self.fp / negatives

    def to_dict(self) -> dict:
        return asdict(self) | {"iou": self.iou, "fp_rate": self.fp_rate, "has_tumour": self.has_tumour}


def evaluate_slide(slide_id: str, prob: np.ndarray, truth_fraction: np.ndarray, valid: np.ndarray | None = None,
                   threshold: float = PRED_THRESHOLD, truth_threshold: float = TRUTH_THRESHOLD) -> SlideMetrics:
    """Score one slide: ``prob`` the ``(rows, cols)`` tumour probability map, ``truth_fraction`` the
    tumour share of every cell, ``valid`` the evaluated cells (default: all)."""
    prob, truth_fraction = np.asarray(prob), np.asarray(truth_fraction)
    if prob.shape != truth_fraction.shape or prob.ndim != 2:
        raise ValueError(f"probability map {prob.shape} and truth {truth_fraction.shape} must be the same 2-D shape")
    if not (np.isfinite(prob).all() and np.isfinite(truth_fraction).all()):
        raise ValueError(f"{slide_id}: probability and truth maps must be finite")
    valid = np.ones(prob.shape, bool) if valid is None else check_mask(valid, prob.shape)
    pred = (prob >= threshold)[valid]
    truth = (truth_fraction >= truth_threshold)[valid]
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred & ~truth))
    fn = int(np.count_nonzero(~pred & truth))
    return SlideMetrics(slide_id, tp, fp, fn, int(pred.size) - tp - fp - fn)


def summarise(results: Iterable[SlideMetrics]) -> dict:
    """Cohort figures: ``iou_tumour`` (mean IoU over slides with tumour), ``fp_rate_tumour_free`` (mean
    false-positive rate over the others), their slide counts, and the IoU of each slide with tumour.

    A mean over no slide is NaN.
    """
    results = list(results)
    ious = {r.slide_id: r.iou for r in results if r.has_tumour}
    fprs = [r.fp_rate for r in results if not r.has_tumour and r.n_cells > 0]
    return {"iou_tumour": float(np.mean(list(ious.values()))) if ious else float("nan"),
            "n_tumour_slides": len(ious),
            "fp_rate_tumour_free": float(np.mean(fprs)) if fprs else float("nan"),
            "n_tumour_free_slides": len(fprs),
            "iou_per_slide": ious}


def annotated_percent(slides: Iterable[tuple[np.ndarray, np.ndarray]]) -> float:
    """``100 · Σ area inside labeled cells / Σ area`` over slides given as ``(area_fraction, labeled)``
    pairs of ``(rows, cols)`` maps (e.g. the grid's tissue fraction and the mask of labeled cells).

    Cells of one cohort share one size, so fractions add up like areas. NaN when the total is 0.
    """
    inside = total = 0.0
    for fraction, labeled in slides:
        fraction = np.asarray(fraction, np.float64)
        labeled = check_mask(labeled, fraction.shape)
        if not np.isfinite(fraction).all() or (fraction < 0).any():
            raise ValueError("area fractions must be finite and non-negative")
        inside += float(fraction[labeled].sum())
        total += float(fraction.sum())
    return float("nan") if total == 0 else 100.0 * inside / total


def annotated_tissue_percent(slides: Iterable[tuple[np.ndarray, np.ndarray]]) -> float:
    """Annotated tissue %: ``(tissue_fraction, labeled_mask)`` per slide (see :func:`annotated_percent`)."""
    return annotated_percent(slides)


def annotated_tumour_percent(slides: Iterable[tuple[np.ndarray, np.ndarray]]) -> float:
    """Annotated tumour %: ``(tumour_fraction, labeled_mask)`` per slide; NaN for a tumour-free cohort."""
    return annotated_percent(slides)


def check_mask(mask: np.ndarray, shape: tuple[int, ...], what: str = "mask") -> np.ndarray:
    """``mask`` as a boolean array of ``shape``, or a ValueError naming ``what`` is wrong."""
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise ValueError(f"{what} of shape {mask.shape} does not match the map {tuple(shape)}")
    if mask.dtype != bool:
        raise ValueError(f"{what} must be boolean, got dtype {mask.dtype}")
    return mask
