"""The ``segmentation`` task: tumour segmentation by patch classification (the paper's CAMELYON16 study).

* **Ground truth** (:class:`~alkit.tasks.segmentation.oracle.TumourOracle`): tumour polygons or masks
  per slide, from ``cohort.ground_truth.folder`` (+ ``pattern``, default ``{slide}.xml``) or a
  synthetic cohort (``synthetic``).
* **What the annotator reports** for a region: its tissue and tumour area (mm²), both measured on the
  grid cells the model learns from (per-cell shares summed), like the cohort's totals.
* **Training examples**: the embedded cells inside labeled regions, tumour when at least
  ``tumour_threshold`` (default 0.5) of the cell is tumour (:class:`LabeledCells`). Validation slides
  (``cohort.validation_slides``, e.g. the reference's 30 % of the CAMELYON16 tumour slides) are fully
  annotated: all their cells are the held-out set the classifier early-stops on, never trained on.
* **Model**: :class:`~alkit.tasks.segmentation.classifier.PatchClassifierModel` (the ``task:``
  parameters of a study config are its parameters); its per-cell tumour probability is the score map
  of uncertainty acquisition, with MC-dropout samples for BALD.
* **Evaluation** (:mod:`alkit.tasks.segmentation.metrics`): mIoU(tumour) over test slides with tumour,
  false-positive rate on tumour-free ones, and the annotated share of the cohort's tumour; beside them the
  reference's metrics (:mod:`alkit.tasks.segmentation.reference`: ``miou_reference`` of both classes after
  hole filling and isolated-tumour-cell removal, ``auc_reference``) on the same per-cell maps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from alkit.al.areas import box_mm2, total_mm2
from alkit.al.oracle import RegionReport
from alkit.al.pool import LabeledPool
from alkit.al.task import ConfigSection, SummaryPlot, TaskConfigError, TaskSettings
from alkit.annotations.drawn import DrawnLabels
from alkit.annotations.geometry import valid_union
from alkit.embeddings.cohort import Cohort, CohortSlide
from alkit.tasks.segmentation.classifier import MODES, PatchClassifierModel
from alkit.tasks.segmentation.examples import LabeledCells
from alkit.tasks.segmentation.metrics import evaluate_slide, summarise
from alkit.tasks.detection.oracle import MitosisOracle
from alkit.tasks.segmentation.annotator import AnnotationOracle
from alkit.tasks.segmentation.oracle import TumourOracle
from alkit.tasks.segmentation.reference import auc_reference, miou_reference
from alkit.tasks.settings import check_model_params, resolve_existing

#: ``task:`` keys that are not model parameters
RESERVED = {"kind", "tumour_threshold"}
#: ground-truth keys that hold mitosis points (another task's)
POINT_SOURCES = ("sliderunner", "coco")


class SegmentationParams(ConfigSection):
    """``task:`` of a segmentation study: :class:`PatchClassifierModel`'s parameters and the label rule."""

    tumour_threshold: float = Field(0.5, ge=0, le=1, description="a cell is tumour when at least this share of it "
                                                                  "is tumour (training labels and evaluation)")
    mode: Literal[MODES] = Field("frozen", description="`frozen`: an MLP head on the cached features; `finetune`: "
                                                       "the backbone trained end to end on the slide patches")
    backbone: str = Field("resnet18", description="encoder spec of the fine-tuned backbone (finetune mode)")
    backbone_lr_factor: float = Field(0.1, ge=0, description="backbone learning rate / head learning rate")
    hidden: int = Field(128, ge=1, description="units of the head's hidden layer")
    dropout: float = Field(0.3, ge=0, lt=1, description="dropout of the head (also MC-dropout for BALD)")
    lr: float = Field(1e-3, gt=0, description="learning rate (Adam)")
    weight_decay: float = Field(1e-4, ge=0, description="weight decay")
    max_epochs: int = Field(50, ge=1, description="most epochs per fit")
    min_epochs: int = Field(10, ge=0, description="epochs before early stopping may stop")
    patience: int = Field(5, ge=1, description="epochs without validation improvement before stopping")
    batch_size: int = Field(256, ge=1, description="training batch size")
    val_fraction: float = Field(0.2, ge=0, lt=1, description="share of the labeled regions held out for early "
                                                             "stopping when the study has no validation slides")
    augment: bool = Field(True, description="flip / rotate / colour augmentation (finetune mode)")
    accelerator: str = Field("cpu", description="Lightning accelerator: cpu, gpu, auto")
    devices: int | list[int] = Field(1, description="one device: 1 or [index]")
    precision: str | int | None = Field(None, description="Lightning precision, e.g. bf16-mixed")
    deterministic: bool = Field(False, description="deterministic algorithms (slower)")
    num_workers: int = Field(0, ge=0, description="patch-reader processes (finetune mode)")
    predict_batch_size: int = Field(1024, ge=1, description="batch size of prediction")
    progress: bool = Field(False, description="Lightning progress bars")


class SegmentationGroundTruth(ConfigSection):
    """``cohort.ground_truth`` of a segmentation study: tumour annotations per slide, or a synthetic cohort."""

    folder: str | None = Field(None, description="folder of tumour annotation files (XML, JSON or mask "
                                                 "images); a slide without a file is tumour-free")
    pattern: str = Field("{slide}.xml", description="annotation file name in `folder`; `{slide}` is the slide id "
                                                        "(e.g. `{slide}.json`, `{slide}_mask.png`)")
    synthetic: str | None = Field(None, description="a synthetic cohort's folder (`alkit synth`)")

    @model_validator(mode="before")
    @classmethod
    def _no_points(cls, data: Any) -> Any:
        """Mitosis points belong to the detection task: say so instead of only "unknown key"."""
        points = [k for k in POINT_SOURCES if isinstance(data, Mapping) and k in data]
        if points:
            raise ValueError(f"holds mitosis points ('{points[0]}'), for task.kind 'detection'; tumour ground "
                             "truth is 'folder' (+ 'pattern') or 'synthetic'")
        return data


class SegmentationTask:
    """Tumour segmentation by patch classification; ``model`` is trained afresh at every ``fit``."""

    name: ClassVar[str] = "segmentation"
    summary_metrics: ClassVar[tuple[str, ...]] = ("iou_tumour", "annotated_tissue_pct", "annotated_tumour_pct",
                                                  "fp_rate_tumour_free", "miou_reference", "iou_normal_reference",
                                                  "iou_tumour_reference", "auc_reference")
    summary_plots: ClassVar[tuple[SummaryPlot, ...]] = (SummaryPlot("iou_tumour", "iou_tumour_vs_tissue"),
                                                        SummaryPlot("annotated_tumour_pct", "tumour_vs_tissue"))
    mc_dropout: ClassVar[bool] = True
    prototype_crops: ClassVar[bool] = False
    params_schema: ClassVar[type[ConfigSection]] = SegmentationParams
    ground_truth_schema: ClassVar[type[ConfigSection]] = SegmentationGroundTruth

    def __init__(self, oracle: TumourOracle, model: PatchClassifierModel | None = None, *,
                 tumour_threshold: float = 0.5) -> None:
        self.oracle = oracle
        self.model = model or PatchClassifierModel()
        self.tumour_threshold = float(tumour_threshold)
        self._truth: dict[str, np.ndarray] = {}

    # -- study set-up -----------------------------------------------------------------------------
    @classmethod
    def check_config(cls, settings: TaskSettings) -> dict:
        check_model_params(cls.name, PatchClassifierModel, settings.params, RESERVED)
        truth = dict(settings.ground_truth)
        points = [k for k in POINT_SOURCES if k in truth]
        if points:
            raise TaskConfigError(f"cohort.ground_truth.{points[0]}", "holds mitosis points, for task.kind "
                                  "'detection'; tumour ground truth is 'folder' (+ 'pattern') or 'synthetic'")
        if "synthetic" in truth:
            resolve_existing(truth, "synthetic", settings, "folder")
        elif "folder" in truth:
            resolve_existing(truth, "folder", settings, "folder")
        else:
            raise TaskConfigError("cohort.ground_truth", "needs 'folder' (+ 'pattern') or 'synthetic'")
        return truth

    @classmethod
    def build_oracle(cls, ground_truth: Mapping[str, Any], slide_mpp: float | None = None) -> TumourOracle:
        if "synthetic" in ground_truth:
            return TumourOracle.from_synthetic(ground_truth["synthetic"])
        return TumourOracle.from_folder(ground_truth["folder"], ground_truth.get("pattern", "{slide}.xml"),
                                        mpp=slide_mpp)

    @classmethod
    def oracle_from_drawings(cls, drawn: DrawnLabels, mpp: Mapping[str, float]) -> AnnotationOracle:
        """The drawn tumour of each slide's regions (cells outside every region are not annotated), with the
        drawn points kept beside it."""
        points = MitosisOracle(drawn.mitoses, drawn.hard_negatives, mpp=dict(mpp))
        truths = {s: valid_union(g) for s, g in drawn.tumour.items()}
        return AnnotationOracle(truths, drawn.boxes, mpp=dict(mpp), points=points)

    @classmethod
    def from_params(cls, oracle: TumourOracle, params: Mapping[str, Any], *, seed: int,
                    logger: Any = None) -> SegmentationTask:
        model_params = {k: v for k, v in params.items() if k not in RESERVED}
        return cls(oracle, PatchClassifierModel(seed=seed, logger=logger, **model_params),
                   tumour_threshold=params.get("tumour_threshold", 0.5))

    # -- ground truth -----------------------------------------------------------------------------
    def truth(self, slide: CohortSlide) -> np.ndarray:
        """The oracle's tumour fraction of every cell of ``slide`` (cached)."""
        if slide.slide_id not in self._truth:
            self._truth[slide.slide_id] = np.asarray(self.oracle.tumour_fraction(slide.slide_id, slide.grid),
                                                     np.float32)
        return self._truth[slide.slide_id]

    def region_report(self, slide: CohortSlide, box: Sequence[int]) -> RegionReport:
        x, y, w, h = (int(v) for v in box)
        mpp = slide.grid.slide_mpp
        return RegionReport(slide.slide_id, (x, y, w, h), mpp, w * h * (mpp / 1000.0) ** 2,
                            box_mm2(slide, slide.grid.tissue_fraction, box),
                            {"tumour_mm2": box_mm2(slide, self.truth(slide), box)})

    # -- training ---------------------------------------------------------------------------------
    def training_examples(self, pool: LabeledPool, cohort: Cohort, max_cycle: int | None = None,
                          validation_cohort: Cohort | None = None) -> list:
        """The labeled cells of the labeled regions; with ``validation_cohort``, every embedded cell of those
        fully annotated slides too, marked held out (the classifier early-stops on them)."""
        examples = []
        for slide in cohort:
            region_of = pool.cell_region_ids(slide.slide_id, slide.grid, max_cycle)
            if (region_of < 0).all():
                continue
            store = slide.store()
            rid = region_of[store.coords[:, 0], store.coords[:, 1]]
            inside = rid >= 0
            if not inside.any():
                continue
            cells = store.coords[inside]
            labels = (self.truth(slide)[cells[:, 0], cells[:, 1]] >= self.tumour_threshold).astype(np.int64)
            examples.append(LabeledCells(slide.slide_id, slide.store_path, cells, labels, rid[inside]))
        for slide in validation_cohort or ():
            store = slide.store()
            cells = store.coords
            labels = (self.truth(slide)[cells[:, 0], cells[:, 1]] >= self.tumour_threshold).astype(np.int64)
            examples.append(LabeledCells(slide.slide_id, slide.store_path, cells, labels, np.zeros(len(cells)),
                                         store=store, held_out=True))
        return examples

    def fit(self, examples: list) -> dict:
        return self.model.fit(examples)

    def probabilities(self, slide: CohortSlide) -> np.ndarray:
        return self.model.predict_proba(slide.store())

    def mc_probabilities(self, slide: CohortSlide, samples: int) -> np.ndarray:
        return self.model.predict_mc(slide.store(), samples)

    # -- evaluation -------------------------------------------------------------------------------
    def evaluate(self, pool: LabeledPool, cohort: Cohort, test_cohort: Cohort,
                 validation_cohort: Cohort | None = None) -> dict:
        """mIoU(tumour) over test slides with tumour, false positives on the tumour-free ones, the
        annotated share of the cohort's tumour, and the reference code's scores
        (:mod:`alkit.tasks.segmentation.reference`: ``miou_reference`` with its two class IoUs, and
        ``auc_reference``).

        The reference scores take every test slide's per-cell probability map (0 off the embedded cells)
        and boolean truth (cell tumour fraction >= ``tumour_threshold``) at the grid's cell step in µm
        (``stride0 * slide_mpp``): 256-px patches at 0.25 µm/px give 64 µm/px, about the reference's
        level 8 of a 0.243 µm/px slide (62.2 µm/px; ITC size 3 px at both). A slide is a tumour slide
        (mIoU mean, AUC positive) when its truth map has a tumour cell, as in alkit's own ``iou_tumour``.
        """
        results, probs, truths, steps = [], [], [], set()
        for slide in test_cohort:
            store = slide.store()
            prob = self.model.predict_proba(store)
            results.append(evaluate_slide(slide.slide_id, prob, self.truth(slide),
                                          store.embedded_mask(), truth_threshold=self.tumour_threshold))
            probs.append(prob)
            truths.append(self.truth(slide) >= self.tumour_threshold)
            steps.add(round(slide.grid.stride0 * slide.grid.slide_mpp, 6))
        summary = summarise(results)
        tumour = total_mm2(cohort, self.truth)
        metrics = {"iou_tumour": summary["iou_tumour"], "fp_rate_tumour_free": summary["fp_rate_tumour_free"],
                   "annotated_tumour_pct": 100.0 * pool.total("tumour_mm2") / tumour if tumour else 0.0}
        if len(steps) > 1:
            raise ValueError(f"test slides on grids of different cell steps ({sorted(steps)} µm) cannot share "
                             f"the reference scores' ITC size")
        mpp = steps.pop() if steps else 1.0  # no test slide: every reference score is NaN
        ref = miou_reference(probs, truths, mpp)
        return metrics | {"miou_reference": ref["miou"], "iou_normal_reference": ref["iou_normal"],
                          "iou_tumour_reference": ref["iou_tumour"],
                          "auc_reference": auc_reference(probs, [bool(t.any()) for t in truths], mpp)}

