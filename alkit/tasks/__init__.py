"""Task models the active-learning loop trains each cycle, one folder per task.

:class:`alkit.tasks.segmentation.classifier.PatchClassifierModel` (tumour segmentation by patch
classification) and :class:`alkit.tasks.detection.detector.MitosisDetectorModel` (mitotic-figure
detection, RetinaNet) are the built-in ones; both train with the Lightning helpers of
:mod:`alkit.tasks.training`. A model needs only ``fit(examples) -> dict``,
``predict_proba(store) -> (rows, cols)`` and, for MC-dropout acquisition,
``predict_mc(store, samples) -> (samples, rows, cols)``.

Nothing is re-exported here: import from the defining modules.
"""
