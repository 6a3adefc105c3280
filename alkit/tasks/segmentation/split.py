"""The held-out set the patch classifier early-stops on: whole labeled regions, drawn with the seed
(the rule is in :mod:`alkit.tasks.segmentation.classifier`)."""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

SPLIT_ATTEMPTS = 64  # seeded region draws tried before giving up on a held-out set


def split_by_region(regions: np.ndarray, labels: np.ndarray, val_fraction: float,
                    seed: int) -> tuple[np.ndarray, str]:
    """Held-out mask over examples (``True`` = validation) and the kind of split made.

    ``"region"``: whole regions held out (see :mod:`alkit.tasks.segmentation.classifier` for the
    rule); ``"patch"``: the single-region fallback, a seeded per-class split of patches; ``"none"``: no
    held-out set (asked for, too few examples, or no split gives the held-out part every class the
    training part has).
    """
    regions, labels = np.asarray(regions), np.asarray(labels)
    none = np.zeros(len(labels), bool)
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0 or len(labels) < 2:
        return none, "none"
    rng = np.random.default_rng([seed, 1])
    classes = np.unique(labels)
    ids = np.unique(regions)
    if len(ids) >= 2:
        n_val = min(max(1, round(val_fraction * len(ids))), len(ids) - 1)
        for _ in range(SPLIT_ATTEMPTS):
            val = np.isin(regions, rng.permutation(ids)[:n_val])
            if np.isin(classes, labels[val]).all() and np.isin(classes, labels[~val]).all():
                return val, "region"
        log.info("no split of the %d labeled regions puts every class on both sides: training on all of them "
                 "for max_epochs, without early stopping", len(ids))
        return none, "none"
    val = none.copy()
    for c in classes:
        members = rng.permutation(np.flatnonzero(labels == c))
        val[members[:min(round(val_fraction * len(members)), len(members) - 1)]] = True
    if not np.isin(classes, labels[val]).all():
        return none, "none"
    log.warning("only one labeled region: holding out %.0f%% of its patches per class for early stopping "
                "(patches of one region are correlated, so the held-out loss is optimistic)", 100 * val_fraction)
    return val, "patch"
