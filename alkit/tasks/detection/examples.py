"""Training examples of the mitosis detector: the labeled part of one slide (:class:`DetectionExample`),
its labeled regions and the mitoses and lookalikes inside them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alkit.tasks.detection.metrics import points_in_boxes


@dataclass
class DetectionExample:
    """The labeled part of one slide: level-0 ``regions`` (r, 4) ``(x, y, w, h)``, the slide's
    ``mitoses`` and ``hard_negatives`` as level-0 ``(x, y)`` points (any points outside the regions
    are ignored), and optionally the slide's tissue area in level-0 px² (for the small-labeled-area
    rule) and its mpp (default: read from the slide)."""

    slide_id: str
    slide_path: str | os.PathLike
    regions: np.ndarray
    mitoses: np.ndarray
    hard_negatives: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    tissue_area_px: float | None = None
    slide_mpp: float | None = None

    def __post_init__(self) -> None:
        self.slide_path = Path(self.slide_path)
        self.regions = np.asarray(self.regions, np.float64).reshape(-1, 4)
        if len(self.regions) and (self.regions[:, 2:] <= 0).any():
            raise ValueError(f"{self.slide_id}: labeled regions need a positive width and height")
        self.mitoses = np.asarray(self.mitoses, np.float64).reshape(-1, 2)
        self.hard_negatives = np.asarray(self.hard_negatives, np.float64).reshape(-1, 2)

    @property
    def labeled_area_px(self) -> float:
        """Summed area of the labeled regions (overlaps counted twice), level-0 px²."""
        return float((self.regions[:, 2] * self.regions[:, 3]).sum())

    def labeled_mitoses(self) -> np.ndarray:
        return self.mitoses[points_in_boxes(self.mitoses, self.regions)]

    def labeled_hard_negatives(self) -> np.ndarray:
        return self.hard_negatives[points_in_boxes(self.hard_negatives, self.regions)]
