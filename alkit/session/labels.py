"""What annotators drew, kept per region, and the oracles a session trains and evaluates with.

``ingest`` turns each annotated region's drawings (already clipped to the region by
:func:`alkit.annotations.roundtrip.read_annotated`) into a label record: drawn tumour (tumour classes
minus exclusion classes, as :mod:`alkit.tasks.segmentation.oracle` reads them) as GeoJSON geometry,
and drawn points split into mitoses and hard negatives (:func:`~alkit.tasks.detection.labels.mitosis_label`).
Records are plain JSON (``labels/cycle-<k>.json``), never pickles.

:func:`drawn_oracle` makes the records of every ingested cycle the oracle the session's task learns from
(the task decides: :meth:`alkit.al.task.Task.oracle_from_drawings`), and
:class:`SlideRouter` answers for the annotated slides from the drawings and for every other slide
(validation slides, test slides) from the ground truth, where the session has one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import shapely
import shapely.geometry
from shapely.geometry.base import BaseGeometry

from alkit.al.task import task_class
from alkit.annotations.drawn import DrawnLabels
from alkit.annotations.geometry import EMPTY_POLYGON, class_names, union_minus_exclusions
from alkit.tasks.detection.labels import HARD_NEGATIVE, MITOSIS, mitosis_label
from alkit.tasks.segmentation.oracle import EXCLUSION_CLASSES, TUMOUR_CLASSES

_POINTS = ("Point", "MultiPoint")


def _matches(name: str | None, names: set[str]) -> bool:
    """Case-insensitive class match; a trailing ``*`` in ``names`` is a prefix (``Ignore*``)."""
    c = (name or "").casefold()
    return any(c.startswith(n[:-1]) if n.endswith("*") else c == n for n in names)


def region_label(drawings: Iterable[tuple[str | None, BaseGeometry]]) -> dict[str, Any]:
    """One region's label record from its ``(class, geometry)`` drawings: ``tumour`` (GeoJSON geometry),
    ``mitoses`` and ``hard_negatives`` (level-0 ``[x, y]`` lists)."""
    pos, neg = class_names(TUMOUR_CLASSES), class_names(EXCLUSION_CLASSES)
    tumour, excluded, points = [], [], {MITOSIS: [], HARD_NEGATIVE: []}
    for cls, geom in drawings:
        if geom.is_empty:
            continue
        if geom.geom_type in _POINTS:
            label = mitosis_label(cls)
            if label is not None:
                points[label] += shapely.get_coordinates(geom).tolist()
        elif _matches(cls, pos):
            tumour.append(geom)
        elif _matches(cls, neg):
            excluded.append(geom)
    area = union_minus_exclusions(tumour, excluded) if tumour else EMPTY_POLYGON
    return {"tumour": shapely.geometry.mapping(area), "tumour_px2": float(area.area),
            "mitoses": points[MITOSIS], "hard_negatives": points[HARD_NEGATIVE]}


def drawn_oracle(kind: str, records: Iterable[Mapping[str, Any]], mpp: Mapping[str, float]):
    """The annotators' labels of ``records`` (``{slide, box, label}`` of every ingested region) as the oracle
    the task ``kind`` learns from (:meth:`~alkit.al.task.Task.oracle_from_drawings`)."""
    return task_class(kind).oracle_from_drawings(DrawnLabels.from_records(records), dict(mpp))


class SlideRouter:
    """An oracle that answers each call for ``slide_id`` (every oracle method's first argument) from the
    oracle of that slide: ``drawn`` for the annotated ``slides``, ``truth`` for the others (or ``drawn`` when
    there is no ground truth)."""

    def __init__(self, drawn: Any, slides: Iterable[str], truth: Any = None) -> None:
        self.drawn, self.truth, self.annotated = drawn, truth, set(slides)

    def oracle_for(self, slide_id: str) -> Any:
        return self.drawn if slide_id in self.annotated or self.truth is None else self.truth

    def __getattr__(self, name: str):
        if name.startswith("_") or not callable(getattr(self.drawn, name, None)):
            raise AttributeError(name)

        def call(slide_id, *args, **kwargs):
            return getattr(self.oracle_for(str(slide_id)), name)(slide_id, *args, **kwargs)

        return call

    def region_report(self, slide_id, box, tissue_mm2=None, *, mpp=None):
        return self.oracle_for(str(slide_id)).region_report(slide_id, box, tissue_mm2, mpp=mpp)

    def __repr__(self) -> str:
        return f"SlideRouter({len(self.annotated)} annotated slides, ground truth: {self.truth is not None})"
