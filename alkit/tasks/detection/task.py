"""The ``detection`` task: mitotic-figure detection (the paper's MITOS_WSI_CMC study).

* **Ground truth** (:class:`~alkit.tasks.detection.oracle.MitosisOracle`): mitotic figures and
  lookalikes as level-0 points, from SlideRunner databases (``sliderunner``: paths or globs; or
  ``folder`` + ``pattern``, default one ``{slide}.sqlite`` per slide), COCO JSON (``coco``) or a
  synthetic cohort (``synthetic``); ``classes`` maps further class names.
* **What the annotator reports** for a region: its tissue area and the mitoses and hard negatives
  inside it (``mitoses``, ``hard_negatives``).
* **Training examples**: one :class:`~alkit.tasks.detection.examples.DetectionExample` per slide of the
  cohort, with its labeled regions, the oracle's points and the slide's tissue area (the detector's
  small-labeled-area rule needs the cohort's tissue, so slides without regions come too).
* **Model**: :class:`~alkit.tasks.detection.detector.MitosisDetectorModel` (RetinaNet). Its per-cell map
  (the best detection score in each cell) is the score map of uncertainty acquisition, so cells with
  detections near 0.5 are the most uncertain; it has no dropout, so no BALD.
* **Evaluation** (:mod:`alkit.tasks.detection.metrics`): the detector runs over the tissue of every
  test slide, and detections and mitoses count where they lie on the slide's embedded (tissue) cells —
  what the model is meant for; a pen stroke across the glass is not scored. The score threshold is
  chosen for the best pooled F1 on the validation slides, or — without validation slides — on the
  labeled regions of the cohort (in-sample, so optimistic; a warning says so); F1 / precision /
  recall are then pooled over the test slides at that threshold, and per slide. Beside alkit's one-to-one
  F1, the reference's many-to-many ``f1_reference`` (:mod:`alkit.tasks.detection.reference`) at its own
  threshold, chosen the same way. The annotated-mitoses ratio is the share of the cohort's mitoses inside
  labeled regions.
* **Prototypes** are crops around the figures of the caption images (``prototypes.crops``), one class.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from alkit.al.areas import box_mm2
from alkit.al.oracle import RegionReport
from alkit.al.pool import LabeledPool
from alkit.al.task import ConfigSection, SummaryPlot, TaskConfigError, TaskSettings
from alkit.annotations.drawn import DrawnLabels
from alkit.atomic import visible
from alkit.embeddings.cohort import Cohort, CohortSlide, expand_slide_paths
from alkit.embeddings.store import StoreHeader
from alkit.errors import AlkitError
from alkit.prototypes.build import CropSpec
from alkit.prototypes.prototype_set import PrototypeError
from alkit.tasks.detection.detector import MitosisDetectorModel
from alkit.tasks.detection.examples import DetectionExample
from alkit.tasks.detection.labels import check_classes
from alkit.tasks.detection.metrics import RADIUS_PX, annotated_mitoses_ratio, choose_threshold, evaluate_detections
from alkit.tasks.detection.oracle import MitosisOracle
from alkit.tasks.detection.reference import choose_threshold_reference, pooled_f1_reference
from alkit.tasks.settings import check_model_params, resolve_existing

log = logging.getLogger(__name__)

RESERVED = {"kind"}


class DetectionParams(ConfigSection):
    """``task:`` of a detection study: :class:`MitosisDetectorModel`'s parameters."""

    mpp: float = Field(0.25, gt=0, description="µm/px the detector sees")
    patch: int = Field(256, ge=1, description="training patch side, px at `mpp`")
    box_um: float = Field(12.5, gt=0, description="side of the box trained around each point, µm")
    patches_per_epoch: int = Field(5000, ge=1, description="training patches per epoch")
    patches_per_epoch_small: int = Field(1000, ge=1, description="patches per epoch when the labeled area is under "
                                                                 "`small_area_fraction` of the tissue")
    small_area_fraction: float = Field(0.05, ge=0, le=1, description="see `patches_per_epoch_small`")
    positive_fraction: float = Field(0.5, ge=0, le=1, description="share of patches centred near a mitosis")
    hard_negative_fraction: float = Field(0.2, ge=0, le=1, description="share of patches centred near a "
                                                                                "lookalike")
    max_epochs: int = Field(10, ge=1, description="epochs per fit")
    batch_size: int = Field(8, ge=1, description="training batch size")
    lr: float = Field(1e-4, gt=0, description="learning rate")
    weight_decay: float = Field(1e-4, ge=0, description="weight decay")
    augment: bool = Field(True, description="flips and 90° rotations")
    backbone_weights: str | None = Field(None, description="ResNet-18 weights: null (random), `imagenet` or a "
                                                           "checkpoint path")
    trainable_layers: int = Field(5, ge=0, le=5, description="backbone stages trained (5: all)")
    fpn_channels: int = Field(256, ge=1, description="feature-pyramid channels")
    tile: int = Field(512, ge=1, description="detection tile side, px at `mpp`")
    overlap: int | None = Field(None, ge=0, description="tile overlap, px (default 1.5 box sides)")
    score_thresh: float = Field(0.01, ge=0, le=1, description="lowest detection score kept")
    nms_iou: float = Field(0.3, ge=0, le=1, description="IoU of non-maximum suppression across tiles")
    predict_batch_size: int = Field(8, ge=1, description="batch size of detection")
    num_workers: int = Field(0, ge=0, description="patch-reader processes")
    accelerator: str = Field("auto", description="Lightning accelerator: cpu, gpu, auto")
    precision: str | int = Field("32-true", description="Lightning precision")
    deterministic: bool = Field(False, description="deterministic algorithms (slower)")
    progress: bool = Field(False, description="Lightning progress bars")


class DetectionGroundTruth(ConfigSection):
    """``cohort.ground_truth`` of a detection study: mitotic figures and lookalikes as points (one source)."""

    sliderunner: str | list[str] | None = Field(None, description="SlideRunner database(s): paths, globs or .txt "
                                                                  "lists")
    coco: str | None = Field(None, description="COCO JSON (images are slides, box centres the points)")
    folder: str | None = Field(None, description="folder of SlideRunner databases, one per slide (`pattern`)")
    pattern: str = Field("{slide}.sqlite", description="database name in `folder`; `{slide}` is the slide id")
    synthetic: str | None = Field(None, description="a synthetic cohort's folder (`alkit synth`)")
    classes: dict[str, str | None] | None = Field(
        None, description="further class names mapped to `mitosis`, `hard_negative` or null (ignored)")


def sliderunner_files(truth: Mapping[str, Any]) -> list[Path]:
    """The SlideRunner databases of ``ground_truth.folder`` that match its ``pattern`` (default one per slide)."""
    return visible(sorted(Path(truth["folder"]).glob(truth.get("pattern", "{slide}.sqlite").replace("{slide}", "*"))))


class DetectionTask:
    """Mitotic-figure detection; ``model`` is trained afresh at every ``fit``."""

    name: ClassVar[str] = "detection"
    summary_metrics: ClassVar[tuple[str, ...]] = ("f1", "precision", "recall", "annotated_mitoses_ratio",
                                                  "annotated_tissue_pct", "threshold", "f1_reference",
                                                  "tp_reference", "fp_reference", "fn_reference",
                                                  "threshold_reference")
    summary_plots: ClassVar[tuple[SummaryPlot, ...]] = (SummaryPlot("f1", "f1_vs_tissue"),
                                                        SummaryPlot("annotated_mitoses_ratio", "mitoses_vs_tissue"))
    mc_dropout: ClassVar[bool] = False
    #: prototypes are object-centred crops (``prototypes.crops``), of one class
    prototype_crops: ClassVar[bool] = True
    params_schema: ClassVar[type[ConfigSection]] = DetectionParams
    ground_truth_schema: ClassVar[type[ConfigSection]] = DetectionGroundTruth

    def __init__(self, oracle: MitosisOracle, model: MitosisDetectorModel | None = None, *,
                 radius: float = RADIUS_PX) -> None:
        self.oracle = oracle
        self.model = model or MitosisDetectorModel()
        self.radius = float(radius)
        self._embedded: dict[str, np.ndarray] = {}

    # -- study set-up -----------------------------------------------------------------------------
    @classmethod
    def check_config(cls, settings: TaskSettings) -> dict:
        check_model_params(cls.name, MitosisDetectorModel, settings.params, RESERVED)
        truth = dict(settings.ground_truth)
        if "sliderunner" in truth:
            items = [truth["sliderunner"]] if isinstance(truth["sliderunner"], str) else list(truth["sliderunner"])
            try:
                truth["sliderunner"] = [str(p) for p in expand_slide_paths([settings.resolve(s) for s in items])]
            except AlkitError as exc:
                raise TaskConfigError("cohort.ground_truth.sliderunner", f": {exc}") from None
            for db in truth["sliderunner"]:
                if not Path(db).is_file():
                    raise TaskConfigError("cohort.ground_truth.sliderunner", f": no file {db}")
        elif "coco" in truth:
            resolve_existing(truth, "coco", settings, "file")
        elif "synthetic" in truth:
            resolve_existing(truth, "synthetic", settings, "folder")
        elif "folder" in truth:
            resolve_existing(truth, "folder", settings, "folder")
            if not sliderunner_files(truth):
                raise TaskConfigError("cohort.ground_truth.folder", f": no SlideRunner database matches "
                                      f"{truth.get('pattern', '{slide}.sqlite')!r} in {truth['folder']}")
        else:
            raise TaskConfigError("cohort.ground_truth", "needs 'folder' (+ 'pattern') or 'synthetic' or, for "
                                                         "detection, 'sliderunner' / 'coco'")
        try:
            check_classes(truth.get("classes"))
        except AlkitError as exc:
            raise TaskConfigError("cohort.ground_truth.classes", f": {exc}") from None
        cls._check_prototypes(settings)
        return truth

    @staticmethod
    def _check_prototypes(settings: TaskSettings) -> None:
        protos = settings.prototypes
        if "db" not in protos:
            return
        if len(protos.get("classes", {})) != 1:
            raise TaskConfigError("prototypes.classes", f": detection prototypes are one class of mitosis crops, "
                                                        f"got {sorted(protos.get('classes', {}))}")
        crops = protos.get("crops", {})
        try:
            CropSpec.from_config(crops)  # the keys and values the prototype builder accepts
        except PrototypeError as exc:
            found = re.match(r"key '([^']+)'(.*)", str(exc), re.S)
            key, reason = found.groups() if found else ("prototypes.crops", f": {exc}")
            raise TaskConfigError(key, reason.lstrip(" ")) from None
        crops = dict(crops)
        for key in ("figures", "boxes"):
            if key in crops:
                crops[key] = settings.resolve(crops[key])
                if not Path(crops[key]).is_file():
                    raise TaskConfigError(f"prototypes.crops.{key}", f": no file {crops[key]}")
        protos["crops"] = dict(crops)

    @classmethod
    def build_oracle(cls, ground_truth: Mapping[str, Any], slide_mpp: float | None = None) -> MitosisOracle:
        classes = ground_truth.get("classes")
        if "sliderunner" in ground_truth:
            return MitosisOracle.from_sliderunner(ground_truth["sliderunner"], classes=classes, mpp=slide_mpp)
        if "coco" in ground_truth:
            return MitosisOracle.from_coco(ground_truth["coco"], classes=classes, mpp=slide_mpp)
        if "synthetic" in ground_truth:
            return MitosisOracle.from_synthetic(ground_truth["synthetic"])
        return MitosisOracle.from_sliderunner(sliderunner_files(ground_truth), classes=classes, mpp=slide_mpp)

    @classmethod
    def oracle_from_drawings(cls, drawn: DrawnLabels, mpp: Mapping[str, float]) -> MitosisOracle:
        """The drawn mitoses and hard negatives (the detector learns from points only)."""
        return MitosisOracle(drawn.mitoses, drawn.hard_negatives, mpp=dict(mpp))

    @classmethod
    def from_params(cls, oracle: MitosisOracle, params: Mapping[str, Any], *, seed: int,
                    logger: Any = None) -> DetectionTask:
        model_params = {k: v for k, v in params.items() if k not in RESERVED}
        return cls(oracle, MitosisDetectorModel(seed=seed, logger=logger, **model_params))

    # -- slides -----------------------------------------------------------------------------------
    def embedded(self, slide: CohortSlide) -> np.ndarray:
        """The slide's embedded (tissue) cells, ``(rows, cols)`` bool (read once from its store)."""
        if slide.slide_id not in self._embedded:
            self._embedded[slide.slide_id] = StoreHeader.load(slide.store_path).embedded_mask()
        return self._embedded[slide.slide_id]

    def on_tissue(self, slide: CohortSlide, points: np.ndarray) -> np.ndarray:
        """Mask of the level-0 ``points`` that lie in one of the slide's embedded (tissue) cells."""
        return slide.grid.points_on(self.embedded(slide), points)

    def region_report(self, slide: CohortSlide, box: Sequence[int]) -> RegionReport:
        return self.oracle.region_report(slide.slide_id, box, box_mm2(slide, slide.grid.tissue_fraction, box),
                                         mpp=slide.grid.slide_mpp)

    # -- training ---------------------------------------------------------------------------------
    def training_examples(self, pool: LabeledPool, cohort: Cohort, max_cycle: int | None = None,
                          validation_cohort: Cohort | None = None) -> list:
        """One example per cohort slide; validation slides choose the score threshold, they are not trained on."""
        boxes = labeled_boxes(pool, max_cycle)
        examples = []
        for slide in cohort:
            grid = slide.grid
            tissue_px = float(grid.tissue_fraction.sum()) * grid.stride0 ** 2
            examples.append(DetectionExample(slide.slide_id, slide.slide_path, boxes.get(slide.slide_id, np.zeros((0, 4))),
                                             self.oracle.mitoses(slide.slide_id),
                                             self.oracle.hard_negatives(slide.slide_id),
                                             tissue_area_px=tissue_px, slide_mpp=grid.slide_mpp))
        return examples

    def fit(self, examples: list) -> dict:
        return self.model.fit(examples)

    def probabilities(self, slide: CohortSlide) -> np.ndarray:
        return self.model.predict_proba(StoreHeader.load(slide.store_path))

    def mc_probabilities(self, slide: CohortSlide, samples: int) -> np.ndarray:
        return self.model.predict_mc(StoreHeader.load(slide.store_path), samples)

    # -- evaluation -------------------------------------------------------------------------------
    def detect(self, slide: CohortSlide, boxes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Detections ``(points, scores)`` on the slide's tissue (inside ``boxes`` when given)."""
        where = np.asarray([slide.grid.bounding_box(np.argwhere(self.embedded(slide)))]) if boxes is None else boxes
        where = where[(where[:, 2] > 0) & (where[:, 3] > 0)]
        if len(where) == 0:
            return np.zeros((0, 2)), np.zeros(0, np.float32)
        pts, scores = self.model.detect(slide.slide_path, where, slide_mpp=slide.grid.slide_mpp)
        keep = self.on_tissue(slide, pts)
        return pts[keep], scores[keep]

    def scored_mitoses(self, cohort: Cohort) -> dict[str, np.ndarray]:
        """The mitoses F1 is scored against: those on the slides' tissue cells."""
        found = {}
        for s in cohort:
            pts = self.oracle.mitoses(s.slide_id)
            found[s.slide_id] = pts[self.on_tissue(s, pts)]
        return found

    def threshold_slides(self, pool: LabeledPool, cohort: Cohort, validation_cohort: Cohort | None) -> tuple:
        """What the score threshold is chosen on, ``(detections, mitoses, boxes, where)``: the validation
        slides (``boxes`` None), else the labeled regions of the cohort (in-sample, a warning says so)."""
        if validation_cohort is not None and len(validation_cohort):
            dets = {s.slide_id: self.detect(s) for s in validation_cohort}
            return dets, self.scored_mitoses(validation_cohort), None, "validation"
        log.warning("no validation slides: the score threshold is chosen on the labeled regions the detector was "
                    "trained on (optimistic); give validation slides for an unbiased threshold")
        boxes = labeled_boxes(pool)
        dets = {s.slide_id: self.detect(s, boxes[s.slide_id]) for s in cohort if s.slide_id in boxes}
        return dets, self.scored_mitoses(cohort), boxes, "labeled regions"

    def choose_threshold(self, pool: LabeledPool, cohort: Cohort, validation_cohort: Cohort | None,
                         slides: tuple | None = None) -> tuple[float, float, str]:
        """``(threshold, F1 there, where it was chosen)``: validation slides, else the labeled regions
        (``slides``: :meth:`threshold_slides`' answer, computed when not given)."""
        dets, truth, boxes, where = slides or self.threshold_slides(pool, cohort, validation_cohort)
        t, f1 = choose_threshold(dets, truth, boxes=boxes, radius=self.radius)
        return t, f1, where

    def choose_threshold_reference(self, pool: LabeledPool, cohort: Cohort, validation_cohort: Cohort | None,
                                   slides: tuple | None = None) -> tuple[float, float, str]:
        """Like :meth:`choose_threshold`, for the best pooled reference F1
        (:func:`~alkit.tasks.detection.reference.choose_threshold_reference`)."""
        dets, truth, boxes, where = slides or self.threshold_slides(pool, cohort, validation_cohort)
        t, f1 = choose_threshold_reference(dets, truth, boxes=boxes, radius=self.radius)
        return t, f1, where

    def evaluate(self, pool: LabeledPool, cohort: Cohort, test_cohort: Cohort,
                 validation_cohort: Cohort | None = None) -> dict:
        """Pooled F1 / precision / recall on the test slides at the chosen threshold, per-slide F1, the
        annotated-mitoses ratio, and the reference code's F1 (:mod:`alkit.tasks.detection.reference`:
        ``f1_reference``, ``tp/fp/fn_reference``) pooled over the test slides at ``threshold_reference``,
        chosen for the best reference F1 on the slides the alkit threshold is chosen on."""
        slides = self.threshold_slides(pool, cohort, validation_cohort)
        threshold, f1_val, where = self.choose_threshold(pool, cohort, validation_cohort, slides)
        threshold_ref, f1_val_ref, _ = self.choose_threshold_reference(pool, cohort, validation_cohort, slides)
        dets = {s.slide_id: self.detect(s) for s in test_cohort}
        test_mitoses = self.scored_mitoses(test_cohort)
        result = evaluate_detections(dets, test_mitoses, threshold=threshold, radius=self.radius)
        reference = pooled_f1_reference(dets, test_mitoses, threshold=threshold_ref, radius=self.radius)
        pooled = result["pooled"]
        ratio = annotated_mitoses_ratio({s.slide_id: self.oracle.mitoses(s.slide_id) for s in cohort},
                                        labeled_boxes(pool))
        return {"f1": pooled["f1"], "precision": pooled["precision"], "recall": pooled["recall"],
                "tp": pooled["tp"], "fp": pooled["fp"], "fn": pooled["fn"], "threshold": threshold,
                "f1_threshold_choice": f1_val, "threshold_chosen_on": where,
                "annotated_mitoses_ratio": ratio, "annotated_mitoses": int(pool.total("mitoses")),
                "f1_per_slide": {k: (None if math.isnan(v["f1"]) else v["f1"]) for k, v in result["slides"].items()},
                "f1_reference": reference["f1"], "tp_reference": reference["tp"], "fp_reference": reference["fp"],
                "fn_reference": reference["fn"], "threshold_reference": threshold_ref,
                "f1_threshold_choice_reference": f1_val_ref}


def labeled_boxes(pool: LabeledPool, max_cycle: int | None = None) -> dict[str, np.ndarray]:
    """Slide id -> ``(r, 4)`` level-0 boxes of the regions labeled in cycles ≤ ``max_cycle`` (default all)."""
    out: dict[str, list] = {}
    for r in pool.regions:
        if max_cycle is None or r.cycle <= max_cycle:
            out.setdefault(r.slide, []).append(r.box)
    return {k: np.asarray(v, np.float64).reshape(-1, 4) for k, v in out.items()}
