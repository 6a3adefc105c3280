"""Task models the active-learning loop trains each cycle.

:class:`PatchClassifierTask` (tumour segmentation by patch classification) and
:class:`MitosisDetectorTask` (mitotic-figure detection, RetinaNet) are the built-in ones; a task
needs only ``fit(examples) -> dict``, ``predict_proba(store) -> (rows, cols)`` and, for MC-dropout
acquisition, ``predict_mc(store, samples) -> (samples, rows, cols)``.
"""

from alkit.tasks.segmentation.classifier import (BalancedSampler, LabeledCells, PatchClassifier, PatchClassifierTask,
                                          default_augmentation, split_by_region)
from alkit.tasks.detection.detector import DetectionExample, MitosisDetectorTask

__all__ = ["BalancedSampler", "DetectionExample", "LabeledCells", "MitosisDetectorTask", "PatchClassifier",
           "PatchClassifierTask", "default_augmentation", "split_by_region"]
