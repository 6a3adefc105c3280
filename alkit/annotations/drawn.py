"""What annotators drew in the regions of a session, gathered per slide, for a task to turn into its oracle.

A session keeps one label record per annotated region (``{slide, box, label}``, ``label`` as
:func:`alkit.session.labels.region_label` writes it: drawn tumour as GeoJSON, mitoses and hard negatives
as level-0 points). :class:`DrawnLabels` is those records per slide; which of them a task learns from
is the task's choice (:meth:`alkit.al.task.Task.oracle_from_drawings`), so nothing here names a task.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely.geometry
from shapely.geometry.base import BaseGeometry


@dataclass
class DrawnLabels:
    """Per slide: the annotated region boxes (``(k, 4)`` level-0 ``x, y, w, h``), the drawn tumour of each
    region, and the drawn mitoses and hard negatives (``(m, 2)`` level-0 ``x, y``)."""

    boxes: dict[str, np.ndarray] = field(default_factory=dict)
    tumour: dict[str, list[BaseGeometry]] = field(default_factory=dict)
    mitoses: dict[str, np.ndarray] = field(default_factory=dict)
    hard_negatives: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]]) -> DrawnLabels:
        """Gather label records (``{slide, box, label}``) by slide, in the records' order."""
        boxes: dict[str, list] = {}
        tumour: dict[str, list[BaseGeometry]] = {}
        points: dict[str, dict[str, list]] = {"mitoses": {}, "hard_negatives": {}}
        for r in records:
            slide, label = str(r["slide"]), r["label"]
            boxes.setdefault(slide, []).append(list(r["box"]))
            tumour.setdefault(slide, []).append(shapely.geometry.shape(label["tumour"]))
            for key, per_slide in points.items():
                per_slide.setdefault(slide, []).extend(map(tuple, label[key]))
        as_points = {key: {s: np.asarray(v, np.float64).reshape(-1, 2) for s, v in d.items()}
                     for key, d in points.items()}
        return cls({s: np.asarray(b, np.float64).reshape(-1, 4) for s, b in boxes.items()}, tumour,
                   as_points["mitoses"], as_points["hard_negatives"])

    @property
    def slides(self) -> list[str]:
        """The slides with at least one annotated region."""
        return list(self.boxes)
