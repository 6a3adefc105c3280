"""Patches the fine-tuned patch classifier reads from slides: one reader per slide at its store's
grid (:func:`slide_reader`), labeled and optionally augmented (:class:`PatchLabelDataset`,
:func:`default_augmentation`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from alkit.embeddings.embed import PatchDataset
from alkit.embeddings.store import EmbeddingStore, StoreHeader


def default_augmentation():
    """The fine-tuning augmentation (albumentations), applied to uint8 RGB patches.

    Dihedral symmetries (flips + 90° rotations: a patch has no preferred orientation), mild HSV and
    brightness / contrast jitter (scanners, section thickness) and H&E stain-matrix jitter
    (staining protocols). Seeded per sample by the sampler, so runs repeat exactly.
    """
    import albumentations as A  # local: albumentations takes a second to import, frozen mode never needs it

    return A.Compose([
        A.SquareSymmetry(p=1.0),
        A.HueSaturationValue(hue_shift_limit=8, sat_shift_limit=12, val_shift_limit=8, p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
        A.HEStain(method="random_preset", intensity_scale_range=(0.9, 1.1),
                  intensity_shift_range=(-0.05, 0.05), p=0.3),
    ])


class PatchLabelDataset(Dataset):
    """Patches read from slides (one :class:`PatchDataset` per slide), optionally augmented, with labels.

    Items are ``index`` or ``(index, augmentation seed)``; images stay uint8 ``(H, W, 3)``.
    """

    def __init__(self, readers: Sequence[PatchDataset], group: np.ndarray, local: np.ndarray,
                 labels: np.ndarray | None, augment=None):
        self.readers, self.group, self.local = list(readers), np.asarray(group), np.asarray(local)
        self.labels, self.augment = labels, augment

    def __len__(self) -> int:
        return len(self.group)

    def __getitem__(self, item) -> tuple[torch.Tensor, torch.Tensor]:
        i, seed = item if isinstance(item, tuple) else (item, None)
        image = self.readers[self.group[i]][int(self.local[i])]["image"]
        if self.augment is not None:
            self.augment.set_random_seed(int(seed) if seed is not None else int(i))
            image = torch.from_numpy(np.ascontiguousarray(self.augment(image=image.numpy())["image"]))
        label = int(self.labels[i]) if self.labels is not None else -1
        return image, torch.tensor(label, dtype=torch.int64)


def slide_reader(store: EmbeddingStore | StoreHeader, slide_path: str | os.PathLike | None,
                 cells: np.ndarray) -> PatchDataset:
    """A patch reader over ``cells`` of the store's slide, at the store's grid (mpp, patch size)."""
    path = Path(slide_path or store.attrs.get("slide_path", ""))
    if not path.is_file():
        raise FileNotFoundError(f"{store.path}: slide {path} not found (fine-tuning reads patches from slides; "
                                "pass LabeledCells.slide_path)")
    grid = store.grid
    return PatchDataset(path, store.attrs.get("slide_mpp"), grid.cell_boxes(cells), cells, grid.mpp, grid.patch)
