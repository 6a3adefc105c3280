"""Mitotic-figure detection: the model object the active-learning loop trains every cycle
(:class:`MitosisDetectorModel`), a torchvision RetinaNet on a ResNet-18 FPN backbone
(:mod:`alkit.tasks.detection.network`) trained on patches sampled from labeled regions
(:mod:`alkit.tasks.detection.patches`), and tiled inference over slides that returns level-0 points
(:mod:`alkit.tasks.detection.tiling`).

Training data (:meth:`MitosisDetectorModel.fit`), one
:class:`alkit.tasks.detection.examples.DetectionExample` per slide:

* Ground truth: square boxes of a fixed size around point annotations, ``box_um`` µm (default
  12.5 µm = 50 px at 0.25 µm/px; in patch pixels ``box_um / mpp``). Only mitoses inside the slide's
  labeled regions are used. Hard negatives (lookalikes) are never boxes: they are background, and a
  share of the patches (``hard_negative_fraction``) is centred near them so the model sees them.
* Patches: ``patch`` px at ``mpp`` µm/px (default 256 px at 0.25), read at level-0 boxes of side
  ``patch * mpp / slide_mpp``. A patch lies inside one labeled region when the region is large
  enough (else it is centred on it); pixels outside the slide's labeled regions are painted white,
  so unlabeled tissue never becomes an implicit negative.
* Per epoch ``patches_per_epoch`` patches (default 5000), or ``patches_per_epoch_small`` (default
  1000) when the labeled area is under ``small_area_fraction`` (5 %) of the tissue (the paper's
  rule; tissue areas come from the examples, all of them, including slides without labeled regions;
  without tissue areas the full count is used).
  ``positive_fraction`` of them (default 0.5) contain a mitosis (centred near one, with a random
  offset), the rest are uniform over the labeled area (regions weighted by area).
* Augmentation (optional, default on): albumentations dihedral group (flips + 90° rotations) with
  the boxes transformed alongside (``bbox_params``), seeded per patch.
* A fresh model and a fresh ``Trainer`` every fit; seeded (initialisation, sampling, augmentation);
  the caller's torch RNG state is restored; quiet unless ``progress=True``. Loss: RetinaNet's focal
  classification loss + L1 box regression; ``fit`` returns the per-epoch mean losses.

Inference (:meth:`MitosisDetectorModel.detect`): the requested level-0 boxes (default: the whole
slide) are cut into tiles of ``tile`` px at ``mpp`` (default 512; the network is fully
convolutional, so tiles need not match the training patch) with ``overlap`` px of overlap (default
1.5 box sides, so every figure lies whole inside some tile; tiles at a box's edge are shifted
inwards rather than padded; :func:`alkit.tasks.detection.tiling.tile_origins`); detections become
level-0 centres with scores of at least ``score_thresh`` (default 0.01, below torchvision's 0.05: a
briefly trained detector's scores stay near the focal loss's 0.01 prior, and the operating threshold
is chosen on validation data anyway); a detection is kept when its centre is inside the requested
box; duplicates from overlapping tiles are removed by NMS on fixed-size level-0 boxes around the
centres (:func:`alkit.tasks.detection.tiling.merge_detections`, ``torchvision.ops.nms``).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader

from alkit.embeddings.store import StoreHeader
from alkit.tasks.detection.examples import DetectionExample
from alkit.tasks.detection.metrics import points_in_boxes
from alkit.tasks.detection.network import MitosisDetectorNet, build_retinanet, to_float
from alkit.tasks.detection.patches import DetectionPatchDataset, PatchSampler, collate, default_detection_augmentation
from alkit.tasks.detection.tiling import merge_detections, tile_origins
from alkit.tasks.training import EpochMeanLoss, inference_device, quiet, rng_scope
from alkit.wsi.slide import Slide

log = logging.getLogger(__name__)


class MitosisDetectorModel:
    """Trains a fresh RetinaNet on :class:`DetectionExample` s and detects mitoses on slides (see the
    module doc for the rules)."""

    #: reads slide pixels, not embeddings: acquisition passes it a store's header (dense grids: GBs of features)

    def __init__(self, *, mpp: float = 0.25, patch: int = 256, box_um: float = 12.5,
                 patches_per_epoch: int = 5000, patches_per_epoch_small: int = 1000,
                 small_area_fraction: float = 0.05, positive_fraction: float = 0.5,
                 hard_negative_fraction: float = 0.2, max_epochs: int = 10, batch_size: int = 8,
                 lr: float = 1e-4, weight_decay: float = 1e-4, augment: bool = True,
                 backbone_weights: str | None = None, trainable_layers: int = 5, fpn_channels: int = 256,
                 tile: int = 512, overlap: int | None = None, score_thresh: float = 0.01,
                 nms_iou: float = 0.3, predict_batch_size: int = 8, num_workers: int = 0, seed: int = 0,
                 accelerator: str = "auto", precision: str | int = "32-true", deterministic: bool = False,
                 progress: bool = False, logger=None, callbacks: Sequence[Callback] = ()):
        if positive_fraction + hard_negative_fraction > 1 or min(positive_fraction, hard_negative_fraction) < 0:
            raise ValueError("positive_fraction and hard_negative_fraction must be >= 0 and sum to at most 1")
        self.mpp, self.patch, self.box_um = float(mpp), int(patch), float(box_um)
        self.patches_per_epoch, self.patches_per_epoch_small = int(patches_per_epoch), int(patches_per_epoch_small)
        self.small_area_fraction = float(small_area_fraction)
        self.positive_fraction, self.hard_negative_fraction = positive_fraction, hard_negative_fraction
        self.max_epochs, self.batch_size, self.lr, self.weight_decay = max_epochs, batch_size, lr, weight_decay
        self.augment, self.backbone_weights, self.trainable_layers = augment, backbone_weights, trainable_layers
        self.fpn_channels = int(fpn_channels)
        self.tile = int(tile)
        self.overlap = int(overlap) if overlap is not None else int(math.ceil(1.5 * self.box_px))
        if not 0 <= self.overlap < self.tile:
            raise ValueError(f"overlap ({self.overlap}) must be in [0, tile={self.tile})")
        self.score_thresh, self.nms_iou = score_thresh, nms_iou
        self.predict_batch_size, self.num_workers, self.seed = predict_batch_size, num_workers, seed
        self.accelerator, self.precision, self.deterministic = accelerator, precision, deterministic
        self.progress, self.logger, self.callbacks = progress, logger, list(callbacks)
        self.model: nn.Module | None = None
        self.trainer: pl.Trainer | None = None
        self.summary: dict = {}

    @property
    def box_px(self) -> float:
        """Ground-truth box side in patch pixels (``box_um / mpp``)."""
        return self.box_um / self.mpp

    def patches_for(self, examples: Sequence[DetectionExample]) -> tuple[int, float | None]:
        """Patches per epoch for these examples and the labeled share of tissue (``None`` if unknown)."""
        if any(ex.tissue_area_px is None for ex in examples):
            return self.patches_per_epoch, None
        tissue = sum(float(ex.tissue_area_px) for ex in examples)
        share = sum(ex.labeled_area_px for ex in examples) / tissue if tissue > 0 else 1.0
        return (self.patches_per_epoch_small if share < self.small_area_fraction else self.patches_per_epoch), share

    def _new_model(self) -> nn.Module:
        return build_retinanet(self.box_px, self.patch, self.backbone_weights, self.trainable_layers,
                               self.fpn_channels, self.score_thresh, self.nms_iou)

    def fit(self, examples: Sequence[DetectionExample]) -> dict:
        """Train a fresh detector on the labeled regions of ``examples``; returns a summary dict
        (per-epoch mean losses, patches per epoch, labeled share, counts, seconds)."""
        start = time.perf_counter()
        n_patches, share = self.patches_for(examples)  # over all slides: unlabeled tissue counts too
        examples = [ex for ex in examples if len(ex.regions)]
        if not examples:
            raise ValueError("no labeled regions to train on")
        mpps = [ex.slide_mpp if ex.slide_mpp is not None else Slide(ex.slide_path).mpp for ex in examples]
        sizes0 = [self.patch * self.mpp / m for m in mpps]
        n_mit = sum(len(ex.labeled_mitoses()) for ex in examples)
        n_hard = sum(len(ex.labeled_hard_negatives()) for ex in examples)
        if n_mit == 0:
            log.warning("no mitoses inside the labeled regions: the detector only learns background")
        sampler = PatchSampler(examples, sizes0, n_patches, self.seed, self.positive_fraction,
                               self.hard_negative_fraction)
        dataset = DetectionPatchDataset(examples, mpps, self.mpp, self.patch, self.box_px,
                                        default_detection_augmentation() if self.augment else None)
        with rng_scope(self.seed), quiet(not self.progress):
            module = MitosisDetectorNet(self._new_model(), self.lr, self.weight_decay)
            loader = DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, collate_fn=collate,
                                num_workers=self.num_workers, persistent_workers=False)
            curves = [EpochMeanLoss()] if self.logger not in (None, False) else []  # one loss point per epoch
            self.trainer = trainer = pl.Trainer(
                accelerator=self.accelerator, devices=1, precision=self.precision, max_epochs=self.max_epochs,
                logger=self.logger if self.logger is not None else False,
                callbacks=[*self.callbacks, *curves],
                enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=self.progress,
                num_sanity_val_steps=0, limit_val_batches=0, deterministic=self.deterministic,
                log_every_n_steps=max(1, min(50, len(loader))), use_distributed_sampler=False)
            trainer.fit(module, train_dataloaders=loader)
        self.model = module.model.cpu().eval()
        self.summary = {
            "epochs": int(trainer.current_epoch), "patches_per_epoch": n_patches, "labeled_tissue_share": share,
            "small_labeled_area": share is not None and share < self.small_area_fraction,
            "n_regions": int(sum(len(ex.regions) for ex in examples)), "n_mitoses": int(n_mit),
            "n_hard_negatives": int(n_hard), "epoch_losses": list(module.epoch_losses),
            "step_losses": list(module.step_losses), "seconds": time.perf_counter() - start,
        }
        log.info("trained mitosis detector: %s", {k: v for k, v in self.summary.items() if k != "step_losses"})
        return dict(self.summary)

    # -- inference ---------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        return inference_device(self.accelerator)

    @torch.no_grad()
    def detect(self, slide_path: str | os.PathLike, boxes: Sequence[Sequence[float]] | np.ndarray | None = None, *,
               slide_mpp: float | None = None, min_score: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Mitoses in the level-0 ``boxes`` of a slide (default: the whole slide).

        Returns level-0 centres ``(k, 2)`` float64 and scores ``(k,)`` float32, by descending score,
        after NMS across tiles (and across overlapping boxes). ``min_score`` defaults to the model's
        ``score_thresh``; choose the operating threshold on validation data
        (:func:`alkit.tasks.detection.metrics.choose_threshold`).
        """
        if self.model is None:
            raise RuntimeError("the detector has not been fitted yet; call fit() first")
        device = self._device()
        model = self.model.to(device).eval()
        model.transform.min_size, model.transform.max_size = (self.tile,), self.tile  # tiles are not resized
        slide = Slide(slide_path, mpp=slide_mpp)
        scale = self.mpp / slide.mpp  # level-0 px per patch px
        tile0, overlap0 = self.tile * scale, self.overlap * scale
        req = (np.array([[0, 0, *slide.dimensions]], np.float64) if boxes is None
               else np.asarray(boxes, np.float64).reshape(-1, 4))
        pts_parts, score_parts = [], []
        origins = [(o, b) for b in req for o in tile_origins(b, tile0, overlap0)]
        for i in range(0, len(origins), self.predict_batch_size):
            chunk = origins[i:i + self.predict_batch_size]
            images = [torch.from_numpy(slide.read((tx, ty, tile0, tile0), mpp=self.mpp, size=(self.tile, self.tile)))
                      for (tx, ty), _ in chunk]
            outputs = model(to_float(images, device))
            for ((tx, ty), b), out in zip(chunk, outputs):
                bx = out["boxes"].cpu().numpy().astype(np.float64)
                centres = np.stack([tx + (bx[:, 0] + bx[:, 2]) / 2 * scale, ty + (bx[:, 1] + bx[:, 3]) / 2 * scale], 1)
                inside = points_in_boxes(centres, b[None])
                pts_parts.append(centres[inside])
                score_parts.append(out["scores"].cpu().numpy()[inside])
        slide.close()
        pts = np.concatenate(pts_parts) if pts_parts else np.zeros((0, 2))
        scores = np.concatenate(score_parts).astype(np.float32) if score_parts else np.zeros(0, np.float32)
        keep = merge_detections(pts, scores, self.box_px * scale, self.nms_iou)
        pts, scores = pts[keep], scores[keep]
        thr = self.score_thresh if min_score is None else min_score
        sel = scores >= thr
        return pts[sel].reshape(-1, 2), scores[sel]

    # -- acquisition -------------------------------------------------------------------------------
    def predict_proba(self, store) -> np.ndarray:
        """``(rows, cols)`` float32 map of the store's grid: the best detection score whose centre lies in
        each cell (the probability that the cell holds a mitosis), 0 where nothing is embedded.

        This is what uncertainty acquisition scores (:func:`alkit.al.uncertainty.acquisition_map`): the
        entropy of a cell is highest where the detector's best guess there is near 0.5. The detector
        runs over the bounding box of the embedded cells, at the task's ``score_thresh``.
        """
        header = store if hasattr(store, "coords") else StoreHeader.load(store)
        grid = header.grid
        out = np.zeros(grid.shape, np.float32)
        if len(header.coords) == 0:
            return out
        box = grid.bounding_box(header.coords)
        pts, scores = self.detect(header.attrs["slide_path"], [box], slide_mpp=grid.slide_mpp)
        keep = grid.points_on(header.embedded_mask(), pts)
        np.maximum.at(out, tuple(grid.cells_of_points(pts[keep]).T), scores[keep].astype(np.float32))
        return out

    def predict_mc(self, store, samples: int = 20) -> np.ndarray:
        """Not defined for the detector (no dropout): use entropy, margin or least confidence."""
        raise NotImplementedError("MC-dropout (bald) acquisition is not available for the mitosis detector; "
                                  "use measure entropy, margin or least_confidence")
