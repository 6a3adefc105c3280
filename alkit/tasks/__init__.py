"""Task models the active-learning loop trains each cycle.

:class:`PatchClassifierTask` (tumour segmentation by patch classification) is the built-in one; a task
needs only ``fit(examples) -> dict``, ``predict_proba(store) -> (rows, cols)`` and, for MC-dropout
acquisition, ``predict_mc(store, samples) -> (samples, rows, cols)``.
"""

from alkit.tasks.patch_classifier import (BalancedSampler, LabeledCells, PatchClassifier, PatchClassifierTask,
                                          default_augmentation, split_by_region)

__all__ = ["BalancedSampler", "LabeledCells", "PatchClassifier", "PatchClassifierTask", "default_augmentation",
           "split_by_region"]
