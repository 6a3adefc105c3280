"""Training patches of the mitosis detector: where they are drawn (:class:`PatchSampler`, one
:class:`PatchSpec` each), and what is read there (:class:`DetectionPatchDataset`): the patch with
pixels outside the labeled regions whitened, the mitoses' ground-truth boxes (:func:`point_boxes`)
and the optional dihedral augmentation (:func:`default_detection_augmentation`). The rules are in
:mod:`alkit.tasks.detection.detector`."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from alkit.tasks.detection.examples import DetectionExample
from alkit.wsi.slide import Slide

MITOSIS_LABEL = 1  # torchvision detection convention: 0 is background


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
    import albumentations as A  # local: albumentations takes a second to import, unaugmented runs never need it

    return A.Compose([A.SquareSymmetry(p=1.0)],
                     bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"], min_visibility=0.0))


class DetectionPatchDataset(Dataset):
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


def collate(batch: list) -> tuple[list[torch.Tensor], list[dict]]:
    """Batches stay lists: images and targets differ in size (RetinaNet takes lists)."""
    return [b[0] for b in batch], [b[1] for b in batch]
