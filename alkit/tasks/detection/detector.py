"""Mitotic-figure detection: torchvision RetinaNet on a ResNet-18 FPN backbone, trained on patches
sampled from labeled regions, and tiled inference over slides that returns level-0 points.

Training data (:meth:`MitosisDetectorTask.fit`), one :class:`DetectionExample` per slide:

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

Inference (:meth:`MitosisDetectorTask.detect`): the requested level-0 boxes (default: the whole
slide) are cut into tiles of ``tile`` px at ``mpp`` (default 512; the network is fully
convolutional, so tiles need not match the training patch) with ``overlap`` px of overlap (default
1.5 box sides, so every figure lies whole inside some tile; tiles at a box's edge are shifted
inwards rather than padded); detections
become level-0 centres with scores of at least ``score_thresh`` (default 0.01, below torchvision's
0.05: a briefly trained detector's scores stay near the focal loss's 0.01 prior, and the operating
threshold is chosen on validation data anyway); a detection is kept when its centre is inside the
requested box; duplicates
from overlapping tiles are removed by NMS on fixed-size level-0 boxes around the centres
(:func:`merge_detections`, ``torchvision.ops.nms``).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from alkit.tasks.detection.metrics import points_in_boxes
from alkit.wsi.slide import Slide
from alkit.tasks.segmentation.classifier import _quiet, _rng_scope

log = logging.getLogger(__name__)

MITOSIS_LABEL = 1  # torchvision detection convention: 0 is background
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------------------- examples

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


# -------------------------------------------------------------------------------------------- sampling

@dataclass(frozen=True)
class PatchSpec:
    """One training patch: example index, level-0 top-left, augmentation seed."""

    group: int
    x: float
    y: float
    seed: int


class PatchSampler(Sampler):
    """Draws ``num_samples`` :class:`PatchSpec` per epoch (a pure function of seed and epoch).

    Each patch is, with probabilities ``positive_fraction`` / ``hard_negative_fraction`` / the
    rest, centred near a labeled mitosis / a labeled hard negative / uniform in the labeled area
    (a missing kind falls back to uniform). ``sizes0[g]`` is the patch side in level-0 px of
    example ``g``.
    """

    def __init__(self, examples: Sequence[DetectionExample], sizes0: Sequence[float], num_samples: int,
                 seed: int = 0, positive_fraction: float = 0.5, hard_negative_fraction: float = 0.0,
                 jitter: float = 0.35):
        self.examples, self.sizes0 = list(examples), np.asarray(sizes0, np.float64)
        self.num_samples, self.seed = int(num_samples), int(seed)
        self.positive_fraction, self.hard_fraction, self.jitter = positive_fraction, hard_negative_fraction, jitter
        # flat tables: (group, region) and (group, point) for the weighted draws
        self.regions = [(g, r) for g, ex in enumerate(self.examples) for r in range(len(ex.regions))]
        if not self.regions:
            raise ValueError("no labeled regions to sample patches from")
        areas = np.array([self.examples[g].regions[r, 2] * self.examples[g].regions[r, 3] for g, r in self.regions])
        self.region_p = areas / areas.sum()
        self.positives = [(g, p) for g, ex in enumerate(self.examples) for p in ex.labeled_mitoses()]
        self.hard = [(g, p) for g, ex in enumerate(self.examples) for p in ex.labeled_hard_negatives()]
        self.epoch = 0

    def __len__(self) -> int:
        return self.num_samples

    def draw(self, epoch: int) -> list[PatchSpec]:
        rng = np.random.default_rng([self.seed, 11, epoch])
        out = []
        for _ in range(self.num_samples):
            u = rng.random()
            pool = (self.positives if u < self.positive_fraction else
                    self.hard if u < self.positive_fraction + self.hard_fraction else [])
            if pool:
                g, centre = pool[rng.integers(len(pool))]
                ex, s = self.examples[g], self.sizes0[g]
                reg = ex.regions[_containing(centre, ex.regions)[0]]
                x, y = centre + rng.uniform(-self.jitter, self.jitter, 2) * s - s / 2
            else:
                g, r = self.regions[rng.choice(len(self.regions), p=self.region_p)]
                reg, s = self.examples[g].regions[r], self.sizes0[g]
                x = reg[0] + rng.random() * max(reg[2] - s, 0.0)
                y = reg[1] + rng.random() * max(reg[3] - s, 0.0)
            out.append(PatchSpec(int(g), _clamp(x, reg[0], reg[2], s), _clamp(y, reg[1], reg[3], s),
                                 int(rng.integers(0, 2**31 - 1))))
        return out

    def __iter__(self) -> Iterator[PatchSpec]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        return iter(self.draw(epoch))


def _containing(point: np.ndarray, regions: np.ndarray) -> np.ndarray:
    p = np.asarray(point, np.float64)
    return np.flatnonzero((p[0] >= regions[:, 0]) & (p[0] < regions[:, 0] + regions[:, 2])
                          & (p[1] >= regions[:, 1]) & (p[1] < regions[:, 1] + regions[:, 3]))


def _clamp(v: float, start: float, length: float, size: float) -> float:
    """Patch origin along one axis kept inside ``[start, start + length)``; centred where it cannot fit."""
    if length <= size:
        return float(start + (length - size) / 2)
    return float(min(max(v, start), start + length - size))


# -------------------------------------------------------------------------------------------- datasets

def point_boxes(points: np.ndarray, size: float) -> np.ndarray:
    """Square ``(x1, y1, x2, y2)`` boxes of side ``size`` centred on ``points`` (k, 2)."""
    p = np.asarray(points, np.float64).reshape(-1, 2)
    h = size / 2
    return np.concatenate([p - h, p + h], axis=1)


def default_detection_augmentation():
    """Flips and 90° rotations (the dihedral group) with boxes in ``pascal_voc`` format."""
    import albumentations as A

    return A.Compose([A.SquareSymmetry(p=1.0)],
                     bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"], min_visibility=0.0))


class _DetectionPatchDataset(Dataset):
    """Reads the patch of a :class:`PatchSpec` (one slide handle per worker process), whites out
    pixels outside the labeled regions, and returns ``(image uint8 (H, W, 3), target dict)``."""

    def __init__(self, examples: Sequence[DetectionExample], slide_mpps: Sequence[float], mpp: float, patch: int,
                 box_px: float, augment=None):
        self.examples, self.slide_mpps = list(examples), list(slide_mpps)
        self.mpp, self.patch, self.box_px, self.augment = mpp, patch, box_px, augment
        self._slides: dict[int, Slide] = {}
        self._pid: int | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_slides": {}, "_pid": None}

    def __len__(self) -> int:  # sampled, not indexed
        return 0

    def _slide(self, g: int) -> Slide:
        if self._pid != os.getpid():
            self._slides, self._pid = {}, os.getpid()
        if g not in self._slides:
            self._slides[g] = Slide(self.examples[g].slide_path, mpp=self.slide_mpps[g])
        return self._slides[g]

    def __getitem__(self, spec: PatchSpec) -> tuple[torch.Tensor, dict]:
        ex = self.examples[spec.group]
        scale = self.mpp / self.slide_mpps[spec.group]  # level-0 px per patch px
        s0 = self.patch * scale
        image = self._slide(spec.group).read((spec.x, spec.y, s0, s0), mpp=self.mpp, size=(self.patch, self.patch))
        # white out what is not labeled (unlabeled mitoses must not become negatives)
        edges = spec.x + (np.arange(self.patch) + 0.5) * scale, spec.y + (np.arange(self.patch) + 0.5) * scale
        labeled = np.zeros((self.patch, self.patch), bool)
        for rx, ry, rw, rh in ex.regions:
            cols = (edges[0] >= rx) & (edges[0] < rx + rw)
            rows = (edges[1] >= ry) & (edges[1] < ry + rh)
            if cols.any() and rows.any():
                labeled |= rows[:, None] & cols[None, :]
        image[~labeled] = 255
        pts = ex.labeled_mitoses()
        local = (pts - (spec.x, spec.y)) / scale
        keep = (local[:, 0] >= 0) & (local[:, 0] < self.patch) & (local[:, 1] >= 0) & (local[:, 1] < self.patch)
        boxes = np.clip(point_boxes(local[keep], self.box_px), 0, self.patch)
        labels = np.full(len(boxes), MITOSIS_LABEL, np.int64)
        if self.augment is not None:
            self.augment.set_random_seed(spec.seed)
            res = self.augment(image=image, bboxes=boxes, labels=labels)
            image = np.ascontiguousarray(res["image"])
            boxes = np.asarray(res["bboxes"], np.float32).reshape(-1, 4)
            labels = np.asarray(res["labels"], np.int64).reshape(-1)
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        ok = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        return torch.from_numpy(image), {"boxes": torch.from_numpy(boxes[ok]),
                                         "labels": torch.from_numpy(labels[ok])}


def _collate(batch: list) -> tuple[list[torch.Tensor], list[dict]]:
    return [b[0] for b in batch], [b[1] for b in batch]


def _to_float(images: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """uint8 ``(H, W, 3)`` → float ``(3, H, W)`` in [0, 1] (RetinaNet's transform normalises)."""
    return [im.to(device).permute(2, 0, 1).float().div_(255.0) for im in images]


# ---------------------------------------------------------------------------------------------- model

def build_retinanet(box_px: float, image_size: int, backbone_weights: str | None = None,
                    trainable_layers: int = 5, fpn_channels: int = 256, score_thresh: float = 0.05,
                    nms_thresh: float = 0.3, detections_per_img: int = 100) -> nn.Module:
    """torchvision RetinaNet, ResNet-18 FPN (P3–P7), one foreground class, square anchors sized to ``box_px``.

    ``backbone_weights``: ``None`` / ``"none"`` (random init, trainable BatchNorm) or a local
    ResNet-18 checkpoint path (loaded like the encoder registry's ``resnet18@PATH``,
    ``weights_only=True``; frozen BatchNorm, the torchvision convention for pretrained backbones).
    ``fpn_channels`` is the width of the FPN and of RetinaNet's heads (256 as in the paper; the heads
    dominate the cost of small patches, so tiny CPU runs use less). Images are not resized
    (``min_size = max_size = image_size``).
    """
    from torchvision.models import resnet18
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops import FrozenBatchNorm2d
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    tag = (backbone_weights or "none").strip()
    if tag.lower() in ("none", "random"):
        net = resnet18(weights=None, norm_layer=nn.BatchNorm2d)
    else:
        from alkit.embeddings.encoders.resnet import load_resnet_checkpoint

        path = Path(tag).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"backbone_weights {tag!r}: no such checkpoint file (use None or a local path)")
        net = resnet18(weights=None, norm_layer=FrozenBatchNorm2d)
        load_resnet_checkpoint(net, path)
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in [0, 5], got {trainable_layers}")
    trained = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers] + (["bn1"] if trainable_layers == 5
                                                                                     else [])
    for name, param in net.named_parameters():  # as torchvision's _resnet_fpn_extractor
        if not any(name.startswith(layer) for layer in trained):
            param.requires_grad_(False)
    backbone = BackboneWithFPN(net, {"layer2": "0", "layer3": "1", "layer4": "2"}, [128, 256, 512], fpn_channels,
                               extra_blocks=LastLevelP6P7(fpn_channels, fpn_channels))
    base = 0.8 * box_px  # P3 anchors of 0.8, 1.0, 1.26 × the box; coarser levels double
    sizes = tuple(tuple(base * 2 ** lvl * 2 ** (k / 3) for k in range(3)) for lvl in range(5))
    anchors = AnchorGenerator(sizes, ((1.0,),) * 5)
    return RetinaNet(backbone, num_classes=2, anchor_generator=anchors, min_size=image_size, max_size=image_size,
                     image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD), score_thresh=score_thresh,
                     nms_thresh=nms_thresh, detections_per_img=detections_per_img)


class MitosisDetector(pl.LightningModule):
    """RetinaNet in a LightningModule: summed focal + box-regression loss, AdamW, per-epoch mean losses."""

    def __init__(self, model: nn.Module, lr: float = 1e-4, weight_decay: float = 1e-4):
        super().__init__()
        self.model, self.lr, self.weight_decay = model, lr, weight_decay
        self.epoch_losses: list[float] = []
        self.step_losses: list[float] = []
        self._sum, self._n = 0.0, 0

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        images = _to_float(images, self.device)
        targets = [{k: v.to(self.device) for k, v in t.items()} for t in targets]
        losses = self.model(images, targets)
        loss = sum(losses.values())
        value = float(loss.detach())
        self.step_losses.append(value)
        self._sum, self._n = self._sum + value, self._n + 1
        self.log("train_loss", loss, batch_size=len(images), prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        self.epoch_losses.append(self._sum / max(self._n, 1))
        self._sum, self._n = 0.0, 0

    def configure_optimizers(self):
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=self.lr,
                                 weight_decay=self.weight_decay)


# ----------------------------------------------------------------------------------------- inference

def tile_origins(box: Sequence[float], tile0: float, overlap0: float) -> list[tuple[float, float]]:
    """Top-left level-0 corners of tiles of side ``tile0`` with ``overlap0`` overlap covering ``box``."""
    x, y, w, h = (float(v) for v in box)
    stride = tile0 - overlap0
    if stride <= 0:
        raise ValueError(f"overlap ({overlap0}) must be smaller than the tile ({tile0})")

    def starts(a: float, n: float) -> list[float]:
        if n <= tile0:
            return [a]
        k = math.ceil((n - tile0) / stride)
        return [a + min(i * stride, n - tile0) for i in range(k + 1)]

    return [(tx, ty) for ty in starts(y, h) for tx in starts(x, w)]


def merge_detections(points: np.ndarray, scores: np.ndarray, box0: float,
                     iou: float = 0.3) -> np.ndarray:
    """Indices (by descending score) of detections kept by NMS on ``box0``-sized level-0 squares around
    the points: a figure found by two overlapping tiles is kept once."""
    from torchvision.ops import nms

    pts = np.asarray(points, np.float64).reshape(-1, 2)
    if len(pts) == 0:
        return np.zeros(0, np.int64)
    keep = nms(torch.from_numpy(point_boxes(pts, box0)).float(), torch.as_tensor(scores, dtype=torch.float32), iou)
    return keep.numpy().astype(np.int64)


# ---------------------------------------------------------------------------------------------- task

class MitosisDetectorTask:
    """Trains a fresh RetinaNet on :class:`DetectionExample` s and detects mitoses on slides."""

    #: reads slide pixels, not embeddings: acquisition passes it a store's header (dense grids: GBs of features)
    reads_features = False

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
        dataset = _DetectionPatchDataset(examples, mpps, self.mpp, self.patch, self.box_px,
                                         default_detection_augmentation() if self.augment else None)
        with _rng_scope(self.seed), _quiet(not self.progress):
            module = MitosisDetector(self._new_model(), self.lr, self.weight_decay)
            loader = DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, collate_fn=_collate,
                                num_workers=self.num_workers, persistent_workers=False)
            self.trainer = trainer = pl.Trainer(
                accelerator=self.accelerator, devices=1, precision=self.precision, max_epochs=self.max_epochs,
                logger=self.logger if self.logger is not None else False, callbacks=list(self.callbacks),
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
        wants_gpu = self.accelerator in ("gpu", "cuda") or (self.accelerator == "auto" and torch.cuda.is_available())
        return torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")

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
            outputs = model(_to_float(images, device))
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
        from alkit.embeddings.store import StoreHeader

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
