"""The active-learning loop for mitotic-figure detection (the paper's MITOS_WSI_CMC experiment).

The cycle is :class:`~alkit.al.loop.ActiveLearningLoop`'s (label → train → evaluate → acquire, resumable
from the pool file); what differs is what the annotator reveals and how a model is judged:

* **Labeling:** the annotator marks every mitotic figure (and lookalike) inside a region; the pool
  records per region its tissue area and the counts (``mitoses``, ``hard_negatives``).
* **Training examples:** one :class:`~alkit.tasks.DetectionExample` per slide of the cohort, with its
  labeled regions, the oracle's points and the slide's tissue area (the detector's
  small-labeled-area rule needs the cohort's tissue, so slides without regions come too).
* **Evaluation** (:mod:`alkit.tasks.detection.metrics`): the detector runs over the tissue of every test
  slide, and detections and mitoses count where they lie on the slide's embedded (tissue) cells —
  what the model is meant for; a pen stroke across the glass is not scored. The score threshold is
  chosen for the best pooled F1 on the validation slides, or — without validation slides — on the
  labeled regions of the cohort (in-sample, so optimistic; a warning says so); F1 / precision /
  recall are then pooled over the test slides at that threshold, and per slide. The annotated-mitoses
  ratio is the share of the cohort's mitoses inside labeled regions.
* **Acquisition:** the detector's per-cell map (:meth:`MitosisDetectorTask.predict_proba`: the best
  detection score in each cell) goes through the uncertainty strategy like a classifier's map, so
  cells with detections near 0.5 are the most uncertain.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from alkit.embeddings.cohort import Cohort, CohortSlide
from alkit.tasks.detection.metrics import RADIUS_PX, annotated_mitoses_ratio, choose_threshold, evaluate_detections
from alkit.al.loop import ActiveLearningLoop, LoopCallback
from alkit.al.pool import LabeledPool
from alkit.embeddings.store import StoreHeader
from alkit.selection.strategy import Box, Budget, Strategy

log = logging.getLogger(__name__)


class MitosisOracleLike(Protocol):
    """What the detection loop needs of its annotator (e.g. :class:`alkit.al.oracle.MitosisOracle`)."""

    def mitoses(self, slide_id: str) -> np.ndarray: ...

    def hard_negatives(self, slide_id: str) -> np.ndarray: ...

    def counts_in(self, slide_id: str, box: Box) -> tuple[int, int]: ...


class DetectionLoop(ActiveLearningLoop):
    """Runs ``cycles`` detection cycles on ``cohort``; F1 on ``test_cohort``, threshold on ``validation_cohort``."""

    def __init__(self, cohort: Cohort, initial_strategy: Strategy, acquisition: Strategy | None, task,
                 oracle: MitosisOracleLike, budget_per_cycle: Budget, cycles: int, pool: LabeledPool,
                 test_cohort: Cohort | None = None, validation_cohort: Cohort | None = None, seed: int = 0,
                 radius: float = RADIUS_PX, callbacks: Sequence[LoopCallback] = ()):
        super().__init__(cohort, initial_strategy, acquisition, task, oracle, budget_per_cycle, cycles, pool,
                         test_cohort=test_cohort, seed=seed, callbacks=callbacks)
        self.validation_cohort = validation_cohort
        self.radius = float(radius)
        self._embedded: dict[str, np.ndarray] = {}

    def embedded(self, slide: CohortSlide) -> np.ndarray:
        """The slide's embedded (tissue) cells, ``(rows, cols)`` bool (read once from its store)."""
        if slide.slide_id not in self._embedded:
            self._embedded[slide.slide_id] = StoreHeader.load(slide.store_path).embedded_mask()
        return self._embedded[slide.slide_id]

    def on_tissue(self, slide: CohortSlide, points: np.ndarray) -> np.ndarray:
        """Mask of the level-0 ``points`` that lie in one of the slide's embedded (tissue) cells."""
        return slide.grid.points_on(self.embedded(slide), points)

    # -- what the annotator reports ----------------------------------------------------------------
    def region_report(self, slide: CohortSlide, box: Box) -> dict:
        mitoses, hard = self.oracle.counts_in(slide.slide_id, box)
        return {"tissue_mm2": self._area_mm2(slide, slide.grid.tissue_fraction, box), "mitoses": int(mitoses),
                "hard_negatives": int(hard)}

    def totals_mm2(self) -> tuple[float, float]:
        """Tissue area (mm²) of the cohort; a detection task knows no tumour area (0)."""
        return self.tissue_mm2(), 0.0

    def _labeled_boxes(self, max_cycle: int | None = None) -> dict[str, np.ndarray]:
        out: dict[str, list] = {}
        for r in self.pool.regions:
            if max_cycle is None or r.cycle <= max_cycle:
                out.setdefault(r.slide, []).append(r.box)
        return {k: np.asarray(v, np.float64).reshape(-1, 4) for k, v in out.items()}

    def training_examples(self, max_cycle: int | None = None) -> list:
        """One :class:`DetectionExample` per cohort slide (regions of cycles ≤ ``max_cycle``, default all)."""
        from alkit.tasks import DetectionExample

        boxes = self._labeled_boxes(max_cycle)
        examples = []
        for slide in self.cohort:
            grid = slide.grid
            tissue_px = float(grid.tissue_fraction.sum()) * grid.stride0 ** 2
            regions = boxes.get(slide.slide_id, np.zeros((0, 4)))
            examples.append(DetectionExample(slide.slide_id, slide.slide_path, regions,
                                             self.oracle.mitoses(slide.slide_id),
                                             self.oracle.hard_negatives(slide.slide_id),
                                             tissue_area_px=tissue_px, slide_mpp=grid.slide_mpp))
        return examples

    # -- evaluation --------------------------------------------------------------------------------
    def _detect(self, slide: CohortSlide, boxes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        where = np.asarray([slide.grid.bounding_box(np.argwhere(self.embedded(slide)))]) if boxes is None else boxes
        where = where[(where[:, 2] > 0) & (where[:, 3] > 0)]
        if len(where) == 0:
            return np.zeros((0, 2)), np.zeros(0, np.float32)
        pts, scores = self.task.detect(slide.slide_path, where, slide_mpp=slide.grid.slide_mpp)
        keep = self.on_tissue(slide, pts)
        return pts[keep], scores[keep]

    def _mitoses_of(self, cohort: Cohort) -> dict[str, np.ndarray]:
        """Every mitosis of the cohort's slides (for the annotated-mitoses ratio)."""
        return {s.slide_id: self.oracle.mitoses(s.slide_id) for s in cohort}

    def _scored_mitoses(self, cohort: Cohort) -> dict[str, np.ndarray]:
        """The mitoses F1 is scored against: those on the slides' tissue cells."""
        found = {}
        for s in cohort:
            pts = self.oracle.mitoses(s.slide_id)
            found[s.slide_id] = pts[self.on_tissue(s, pts)]
        return found

    def choose_threshold(self) -> tuple[float, float, str]:
        """``(threshold, F1 there, where it was chosen)``: validation slides, else the labeled regions."""
        if self.validation_cohort is not None and len(self.validation_cohort):
            dets = {s.slide_id: self._detect(s) for s in self.validation_cohort}
            t, f1 = choose_threshold(dets, self._scored_mitoses(self.validation_cohort), radius=self.radius)
            return t, f1, "validation"
        log.warning("no validation slides: the score threshold is chosen on the labeled regions the detector was "
                    "trained on (optimistic); give validation slides for an unbiased threshold")
        boxes = self._labeled_boxes()
        dets = {s.slide_id: self._detect(s, boxes[s.slide_id]) for s in self.cohort if s.slide_id in boxes}
        t, f1 = choose_threshold(dets, self._scored_mitoses(self.cohort), boxes=boxes, radius=self.radius)
        return t, f1, "labeled regions"

    def evaluate(self) -> dict:
        """Pooled F1 / precision / recall on the test slides at the chosen threshold, per-slide F1, and the
        annotation budget used so far (tissue %, annotated-mitoses ratio)."""
        threshold, f1_val, where = self.choose_threshold()
        dets = {s.slide_id: self._detect(s) for s in self.test_cohort}
        result = evaluate_detections(dets, self._scored_mitoses(self.test_cohort), threshold=threshold,
                                     radius=self.radius)
        pooled = result["pooled"]
        tissue = self.tissue_mm2()
        used = self.pool.budget_used(tissue)
        ratio = annotated_mitoses_ratio(self._mitoses_of(self.cohort), self._labeled_boxes())
        return {"f1": pooled["f1"], "precision": pooled["precision"], "recall": pooled["recall"],
                "tp": pooled["tp"], "fp": pooled["fp"], "fn": pooled["fn"], "threshold": threshold,
                "f1_threshold_choice": f1_val, "threshold_chosen_on": where,
                "annotated_mitoses_ratio": ratio,
                "annotated_mitoses": int(sum(r.mitoses or 0 for r in self.pool.regions)),
                "annotated_tissue_pct": used.get("tissue_pct", 0.0), "regions": used["regions"],
                "annotated_tissue_mm2": used["tissue_mm2"],
                "f1_per_slide": {k: (None if math.isnan(v["f1"]) else v["f1"]) for k, v in result["slides"].items()}}
