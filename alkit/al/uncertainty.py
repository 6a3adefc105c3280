"""Uncertainty acquisition measures, per patch and as score maps on a slide's patch grid.

Every measure is "higher = more uncertain = more worth annotating", non-negative, so its map goes
straight into :func:`alkit.selection.regions.select_standard` / :func:`~alkit.selection.adaptive.select_adaptive`
(with the labeled regions passed as ``labeled=``, so they are never picked again).

Probabilities come as arrays ``(..., K)`` whose last axis holds the K class probabilities (rows
summing to 1), or, for binary tasks such as tumour segmentation, as the positive-class
probability ``p`` alone (``binary=True``; ``p`` becomes ``(1 - p, p)``). Monte-Carlo samples carry
the sample axis first: ``(T, ..., K)``.

========================  ==============================================  ===================
measure                   value                                           range (K classes)
========================  ==============================================  ===================
``entropy``               ``H(p) = -Σ_k p_k ln p_k`` (nats)               ``[0, ln K]``
``margin``                ``1 - (p_(1) - p_(2))``: 1 minus the gap        ``[0, 1]``
                          between the two most probable classes
``least_confidence``      ``1 - max_k p_k``                               ``[0, 1 - 1/K]``
``bald``                  mutual information between prediction and       ``[0, ln K]``
                          model weights under MC dropout:
                          ``H(mean_t p_t) - mean_t H(p_t)``
========================  ==============================================  ===================

``margin`` is reported as ``1 - margin`` (not the raw margin) so that all measures rank the same
way. With MC samples, ``entropy``, ``margin`` and ``least_confidence`` are taken on the predictive
mean ``mean_t p_t``; ``bald`` needs the samples. BALD is clipped at 0: mathematically it is ≥ 0
(entropy is concave), and float rounding can only push it a hair below.

Why not modAL: its last release (2023) calls ``check_X_y(force_all_finite=...)``, which
scikit-learn ≥ 1.8 removed (alkit runs 1.9), and its MC-dropout module needs an old skorch.
The four measures are a few lines of numpy each, so they live here instead of pinning
scikit-learn below 1.8.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy.special import entr

if TYPE_CHECKING:
    from alkit.al.task import Task
    from alkit.embeddings.cohort import CohortSlide

MEASURES = ("entropy", "margin", "least_confidence", "bald")
#: slack allowed in probability checks (float32 softmax outputs sum to 1 within ~1e-6)
PROB_TOL = 1e-3


def binary_probs(p: np.ndarray) -> np.ndarray:
    """Positive-class probabilities ``p`` (any shape) → ``(..., 2)`` probabilities ``(1 - p, p)``."""
    p = _check_range(np.asarray(p, np.float64))
    return np.stack([1.0 - p, p], axis=-1)


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each probability row ``(..., K)`` → ``(...)``; ``0 ln 0 = 0``."""
    return entr(_check_probs(probs)).sum(axis=-1)


def margin(probs: np.ndarray) -> np.ndarray:
    """``1 - (p_(1) - p_(2))`` of each row ``(..., K)``: 1 at a tie of the top two classes, 0 when certain."""
    p = _check_probs(probs)
    if p.shape[-1] < 2:
        raise ValueError("margin needs at least two classes")
    top2 = np.partition(p, p.shape[-1] - 2, axis=-1)[..., -2:]
    return 1.0 - (top2[..., 1] - top2[..., 0])


def least_confidence(probs: np.ndarray) -> np.ndarray:
    """``1 - max_k p_k`` of each row ``(..., K)``."""
    return 1.0 - _check_probs(probs).max(axis=-1)


def bald(mc_probs: np.ndarray) -> np.ndarray:
    """BALD (mutual information) from MC-dropout samples ``(T, ..., K)`` → ``(...)``, ≥ 0.

    ``H(mean_t p_t) - mean_t H(p_t)``: high where the samples are individually confident but
    disagree (model uncertainty), 0 where every sample gives the same prediction.
    """
    p = _check_probs(mc_probs)
    if p.ndim < 2:
        raise ValueError(f"bald needs MC samples shaped (T, ..., K), got shape {p.shape}")
    mean_entropy = entr(p).sum(axis=-1).mean(axis=0)
    return np.maximum(entr(p.mean(axis=0)).sum(axis=-1) - mean_entropy, 0.0)


_PER_ROW = {"entropy": entropy, "margin": margin, "least_confidence": least_confidence}


def uncertainty(measure: str, probs: np.ndarray, *, mc: bool = False, binary: bool = False) -> np.ndarray:
    """One measure (see the module doc) of every patch.

    ``probs``: ``(..., K)``, or ``(T, ..., K)`` with ``mc=True``; ``binary=True`` drops the class axis
    (``p`` of the positive class). ``bald`` requires ``mc=True``; the other measures use the MC mean.
    Returns float64 values shaped like ``probs`` without the sample and class axes.
    """
    if measure not in MEASURES:
        raise ValueError(f"unknown uncertainty measure {measure!r}; choose one of {', '.join(MEASURES)}")
    p = binary_probs(probs) if binary else _check_probs(probs)
    if measure == "bald":
        if not mc:
            raise ValueError("bald needs Monte-Carlo samples (mc=True, samples on the first axis)")
        return bald(p)
    if mc:
        p = p.mean(axis=0)
    return _PER_ROW[measure](p)


def uncertainty_map(measure: str, probs: np.ndarray, valid: np.ndarray, *, mc: bool = False) -> np.ndarray:
    """A float32 ``(rows, cols)`` score map of ``measure``; cells where ``valid`` is False score 0.

    ``valid`` is the ``(rows, cols)`` mask of cells with an embedding (the cells the model scored).
    ``probs`` is a map of tumour probabilities ``(rows, cols)`` or of class probabilities
    ``(rows, cols, K)``; with ``mc=True`` the same with the MC samples first, ``(T, rows, cols[, K])``.
    Values outside ``valid`` are ignored (they may be anything, e.g. 0).
    """
    valid = np.asarray(valid, bool)
    if valid.ndim != 2:
        raise ValueError(f"valid must be a (rows, cols) mask, got shape {valid.shape}")
    probs = np.asarray(probs)
    lead = 1 if mc else 0
    binary = probs.ndim == lead + 2
    if not binary and probs.ndim != lead + 3:
        raise ValueError(f"probabilities of shape {probs.shape} do not fit a {valid.shape} map"
                         f"{' with MC samples first' if mc else ''}")
    if probs.shape[lead:lead + 2] != valid.shape:
        raise ValueError(f"probability map {probs.shape} does not match the grid {valid.shape}")
    out = np.zeros(valid.shape, np.float32)
    cells = probs[:, valid] if mc else probs[valid]  # only scored cells are checked and measured
    if cells.size:
        out[valid] = uncertainty(measure, cells, mc=mc, binary=binary)
    return out


def mc_samples_for(measure: str, mc_samples: int | None = None) -> int:
    """The number of MC-dropout samples ``measure`` is scored with: ``bald`` needs at least 2 (default
    10), the other measures score the deterministic prediction unless ``mc_samples`` asks for samples.
    The one place this rule lives (strategies and configs ask it)."""
    if measure not in MEASURES:
        raise ValueError(f"unknown uncertainty measure {measure!r}; choose one of {', '.join(MEASURES)}")
    if mc_samples is None:
        mc_samples = 10 if measure == "bald" else 0
    if measure == "bald" and mc_samples < 2:
        raise ValueError(f"bald needs at least 2 MC-dropout samples, got mc_samples={mc_samples}")
    if mc_samples < 0:
        raise ValueError(f"mc_samples must be >= 0, got {mc_samples}")
    return int(mc_samples)


def acquisition_map(task: Task, slide: CohortSlide, valid: np.ndarray, measure: str = "entropy",
                    mc_samples: int = 0) -> np.ndarray:
    """The slide's ``(rows, cols)`` uncertainty map under ``task`` (0 outside ``valid``, the slide's
    embedded cells).

    ``mc_samples > 0`` scores the task's MC-dropout samples (required for ``bald``); otherwise its
    deterministic probabilities.
    """
    mc_samples = mc_samples_for(measure, mc_samples)
    if mc_samples > 0:
        return uncertainty_map(measure, task.mc_probabilities(slide, mc_samples), valid, mc=True)
    return uncertainty_map(measure, task.probabilities(slide), valid)


# ---------------------------------------------------------------------------------------- internals

def _check_range(p: np.ndarray) -> np.ndarray:
    if p.size and not (np.isfinite(p).all() and p.min() >= -PROB_TOL and p.max() <= 1 + PROB_TOL):
        raise ValueError("probabilities must be finite and within [0, 1]")
    return np.clip(p, 0.0, 1.0)


def _check_probs(probs: np.ndarray) -> np.ndarray:
    """``probs`` as float64 ``(..., K)`` clipped to [0, 1], after checking that rows sum to 1."""
    p = np.asarray(probs, np.float64)
    if p.ndim < 1 or p.shape[-1] < 1:
        raise ValueError(f"probabilities need a class axis last, got shape {p.shape}")
    p = _check_range(p)
    if p.size and np.abs(p.sum(axis=-1) - 1.0).max() > PROB_TOL:
        raise ValueError("class probabilities must sum to 1 along the last axis "
                         "(for a binary task's positive-class probability use binary=True)")
    return p
