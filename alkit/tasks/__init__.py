"""The built-in tasks, one folder each: everything that depends on what the loop learns.

* :mod:`alkit.tasks.segmentation` — tumour segmentation by patch classification
  (:class:`~alkit.tasks.segmentation.task.SegmentationTask`: tumour oracle, patch classifier, mIoU);
* :mod:`alkit.tasks.detection` — mitotic-figure detection
  (:class:`~alkit.tasks.detection.task.DetectionTask`: point oracle, RetinaNet detector, F1).

Each implements the :class:`alkit.al.task.Task` contract and is registered in the ``alkit.tasks``
entry-point group; both models train with the Lightning helpers of :mod:`alkit.tasks.training`, and
:mod:`alkit.tasks.settings` holds the config checks tasks share. Nothing is re-exported here: import
from the defining modules.
"""
