"""The reference code's CAMELYON16 scores (mIoU over both classes, slide-level AUC), beside alkit's own.

alkit's own metrics (:mod:`alkit.tasks.segmentation.metrics`) score the tumour class on the embedded
cells of the patch grid. The paper's reference code (DeepMicroscopy/AdaptiveRegionSelection, the rules
in ``camelyon16_protocol.json``, key ``evaluation``) scores differently; these functions follow its
rules as written, on plain arrays, so both can be reported side by side. Every name carries
``reference`` so the two are never confused.

Rules, per slide, on a 2-D tumour probability map at ``mpp`` µm per pixel (the reference works at
pyramid level 8 of a 0.243 µm/px slide, 62.2 µm/px):

* **post-processing** (:func:`reference_mask`): predicted tumour where ``p > threshold`` (strictly;
  0.5), holes filled (:func:`scipy.ndimage.binary_fill_holes`, 4-connected background), then
  isolated tumour cells removed: components labeled with 8-connectivity, kept only when their
  ``regionprops`` major axis (``axis_major_length``, formerly ``major_axis_length``) is
  ``> int(200 / mpp)`` px (:func:`itc_threshold_px`; 3 px at 62.2 µm/px as at 64 µm/px).
* **IoU** (:func:`slide_iou_reference`): a confusion matrix over *both* classes (normal 0, tumour 1) over
  every pixel of the map, ``IoU_c = tp_c / (pred_c + gt_c - tp_c + 1e-4)``. The ``1e-4`` makes the
  tumour IoU of a slide with neither predicted nor true tumour 0, not undefined.
* **mIoU** (:func:`miou_reference`): each class's IoU averaged over the slides with tumour (the
  reference's list of tumour test slides; by default here, those whose truth map has tumour), then
  the two class means averaged.
* **AUC** (:func:`auc_reference`): slide confidence (:func:`slide_confidence_reference`) = the largest
  (by area; ties: first in raster order) component of the post-processed mask (ITCs already
  removed), when its major axis is ``> int(200 / mpp)``, gives the max probability inside it, times
  the slide's max probability (ITCs included); 0 without a predicted component. ROC AUC of tumour vs
  normal slides (:func:`sklearn.metrics.roc_auc_score`; the reference adds a CI from 1000 bootstrap resamples).

No evaluated-cell mask: the reference has none. Its pixels off tissue were never predicted, so their
probability is 0 and they count as predicted normal, and in the truth as whatever the annotation says
(normal, unless annotated tumour). Callers give 0 probability where the model did not score, as
alkit's classifier does off the embedded cells.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import binary_fill_holes
from skimage.measure import label, regionprops
from sklearn.metrics import roc_auc_score

from alkit.tasks.segmentation.metrics import check_mask

#: the reference's post-processing threshold: tumour where ``p > PRED_THRESHOLD``
PRED_THRESHOLD = 0.5
#: largest isolated-tumour-cell cluster, µm (CAMELYON16: ITC ≤ 0.2 mm)
ITC_UM = 200.0
#: the reference's IoU denominator guard
EPS = 1e-4


def itc_threshold_px(mpp: float) -> int:
    """The reference's ITC size in pixels of a map at ``mpp`` µm/px: ``int(200 / mpp)`` (truncated)."""
    if not mpp > 0:
        raise ValueError(f"mpp must be positive, got {mpp}")
    return int(ITC_UM / mpp)


def _prob_map(prob: np.ndarray) -> np.ndarray:
    prob = np.asarray(prob, np.float64)
    if prob.ndim != 2:
        raise ValueError(f"a probability map must be 2-D, got shape {prob.shape}")
    if not np.isfinite(prob).all():
        raise ValueError("probability maps must be finite")
    return prob


def _components(mask: np.ndarray) -> tuple[np.ndarray, list]:
    """8-connected labels of ``mask`` and their region properties (label i at index i - 1)."""
    labels = label(mask, connectivity=2)
    return labels, regionprops(labels)


def reference_mask(prob: np.ndarray, mpp: float, threshold: float = PRED_THRESHOLD) -> np.ndarray:
    """The reference's predicted tumour mask: ``p > threshold``, holes filled, ITCs removed."""
    pred = binary_fill_holes(_prob_map(prob) > threshold)
    labels, props = _components(pred)
    limit = itc_threshold_px(mpp)
    keep = [p.label for p in props if p.axis_major_length > limit]
    return np.isin(labels, keep) if keep else np.zeros(pred.shape, bool)


def iou_from_masks(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """``(IoU normal, IoU tumour)`` of boolean masks over all their pixels, with the reference's ``+1e-4``."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    n = pred.size
    tp1 = int(np.count_nonzero(pred & truth))
    pred1, gt1 = int(np.count_nonzero(pred)), int(np.count_nonzero(truth))
    tp0 = n - pred1 - gt1 + tp1  # neither predicted nor true tumour
    pred0, gt0 = n - pred1, n - gt1
    return tp0 / (pred0 + gt0 - tp0 + EPS), tp1 / (pred1 + gt1 - tp1 + EPS)


def slide_iou_reference(prob: np.ndarray, truth: np.ndarray, mpp: float,
                        threshold: float = PRED_THRESHOLD) -> tuple[float, float]:
    """``(IoU normal, IoU tumour)`` of one slide: ``prob`` its tumour probability map, ``truth`` its
    boolean tumour map, both at ``mpp`` µm/px."""
    pred = reference_mask(prob, mpp, threshold)
    return iou_from_masks(pred, check_mask(truth, pred.shape, "truth map (tumour)"))


def miou_reference(probabilities: Sequence[np.ndarray], truths: Sequence[np.ndarray], mpp: float,
                   threshold: float = PRED_THRESHOLD, *, has_tumour: Sequence[bool] | None = None) -> dict:
    """The reference mIoU over slides given as per-slide 2-D maps (tumour probability, boolean truth).

    ``has_tumour`` says which slides enter the means (the reference uses the slide labels of the
    CAMELYON16 test set); by default the slides whose truth map has a tumour pixel. Returns
    ``{"miou", "iou_normal", "iou_tumour", "per_slide"}``: the class means over those slides, their
    mean, and per slide (input order) ``{"iou_normal", "iou_tumour", "has_tumour"}``. NaN means when no
    slide has tumour.
    """
    if len(probabilities) != len(truths):
        raise ValueError(f"{len(probabilities)} probability maps but {len(truths)} truth maps")
    if has_tumour is not None and len(has_tumour) != len(truths):
        raise ValueError(f"{len(has_tumour)} has_tumour flags for {len(truths)} slides")
    per_slide = []
    for i, (prob, truth) in enumerate(zip(probabilities, truths)):
        iou0, iou1 = slide_iou_reference(prob, truth, mpp, threshold)
        counted = bool(np.any(truth)) if has_tumour is None else bool(has_tumour[i])
        per_slide.append({"iou_normal": iou0, "iou_tumour": iou1, "has_tumour": counted})
    counted = [s for s in per_slide if s["has_tumour"]]
    if not counted:
        nan = float("nan")
        return {"miou": nan, "iou_normal": nan, "iou_tumour": nan, "per_slide": per_slide}
    iou0 = float(np.mean([s["iou_normal"] for s in counted]))
    iou1 = float(np.mean([s["iou_tumour"] for s in counted]))
    return {"miou": (iou0 + iou1) / 2, "iou_normal": iou0, "iou_tumour": iou1, "per_slide": per_slide}


def slide_confidence_reference(prob: np.ndarray, mpp: float, threshold: float = PRED_THRESHOLD) -> float:
    """The reference's slide-level tumour confidence (see the module doc); 0 without a predicted component."""
    prob = _prob_map(prob)
    labels, props = _components(reference_mask(prob, mpp, threshold))
    if not props:
        return 0.0
    largest = props[int(np.argmax([p.area for p in props]))]  # ties: the first in label (raster) order
    if not largest.axis_major_length > itc_threshold_px(mpp):
        return 0.0
    return float(prob[labels == largest.label].max() * prob.max())


def auc_reference(probabilities: Sequence[np.ndarray], has_tumour: Sequence[bool], mpp: float,
                  threshold: float = PRED_THRESHOLD) -> float:
    """The reference's slide-level ROC AUC, tumour (``has_tumour``) vs normal slides, of
    :func:`slide_confidence_reference`; NaN when either class has no slide."""
    if len(probabilities) != len(has_tumour):
        raise ValueError(f"{len(probabilities)} probability maps but {len(has_tumour)} labels")
    y = np.asarray(has_tumour, bool)
    conf = [slide_confidence_reference(p, mpp, threshold) for p in probabilities]
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, conf))
