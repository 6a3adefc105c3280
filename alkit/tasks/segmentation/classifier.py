"""Tumour segmentation by patch classification: a LightningModule (backbone + MLP head) and the task
object the active-learning loop trains every cycle.

Two modes:

* ``frozen`` (default, fast on CPU): the backbone is the encoder that made the embedding store, already
  applied; training and inference run on the cached store features (standardised with the training
  set's mean and std). Only the head learns.
* ``finetune`` (for GPUs): the backbone comes from the encoder registry (``backbone="resnet18@PATH"``,
  ``"open_clip:..."``, ...) and is trained end to end, at a tenth of the head's learning rate, on
  patches read from the slides (the store's grid says where and at which mpp / size) by DataLoader
  workers with their own OpenSlide handles (:class:`alkit.embeddings.embed.PatchDataset`). Training patches are
  augmented with albumentations (:func:`default_augmentation`): flips and 90° rotations (the
  dihedral group: tissue has no orientation), hue / saturation / value jitter and brightness /
  contrast jitter (scanner and staining variation) and H&E stain-matrix augmentation.

The head is ``Linear → ReLU → Dropout → Linear`` with two outputs (normal, tumour); its dropout is
what MC-dropout inference (:meth:`PatchClassifierTask.predict_mc`) samples.

Training data and rules (:meth:`PatchClassifierTask.fit`):

* Examples are the labeled cells of the labeled regions (:class:`LabeledCells`); only cells with an
  embedding in the store (enough tissue) are used, the same cells inference scores.
* Held-out set for early stopping: whole labeled *regions* (a region is ``(slide_id, region_id)``),
  ``val_fraction`` of them (at least one, leaving at least one for training), drawn with the seed;
  the first of up to 64 seeded draws in which both parts hold every labeled class is used. Patches
  of one region are spatially correlated, so splitting by patch would make the held-out loss
  optimistic. Fallbacks: with a single labeled region, a seeded per-class split of its patches
  (logged as a warning: early stopping is then optimistic); when no draw gives both parts every
  class (typically: tumour in one region only), ``val_fraction=0``, or fewer than 2 patches, there
  is no held-out set and training runs ``max_epochs`` on everything. A held-out set without tumour
  would stop training as soon as tumour predictions start to cost normal patches a little loss.
* Class balance: every epoch draws ``max(n_train, batch_size)`` training patches with replacement,
  an equal number from each class present (:class:`BalancedSampler`, seeded per epoch).
* Loss: cross-entropy; the held-out loss is class-balanced (mean over classes of each class's mean
  loss) so that the abundant normal class does not drown tumour errors. Early stopping watches it
  from epoch ``min_epochs`` on (a warm-up: on a handful of held-out tumour patches a barely trained
  model can score the lowest loss) with ``patience`` epochs; the weights of the best watched epoch
  are kept (in memory, no checkpoint files).
* A fresh model and a fresh ``Trainer`` every call (cold start each cycle; nothing carries over).
* Deterministic for a seed: initialisation, dropout, split, sampling and augmentation all draw from
  seeded generators; the caller's global torch RNG state is restored afterwards (on GPUs also pass
  ``deterministic=True``, which makes Lightning select deterministic kernels).
* Quiet: no progress bar, model summary or Lightning info lines unless ``progress=True``.
* One device: ``accelerator="gpu"`` (or ``"cpu"``) with ``devices=1``; the balanced sampler is not
  sharded, so multi-device (DDP) training is refused rather than silently duplicated. Inference
  runs on the GPU when ``accelerator`` asks for one (or is ``"auto"`` and one is there).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from alkit.embeddings.embed import PatchDataset
from alkit.embeddings.store import EmbeddingStore

log = logging.getLogger(__name__)

MODES = ("frozen", "finetune")
N_CLASSES = 2  # 0 normal, 1 tumour
SPLIT_ATTEMPTS = 64


# ------------------------------------------------------------------------------------------- examples

@dataclass
class LabeledCells:
    """The labeled cells of one slide: ``cells`` (m, 2) grid (row, col), ``labels`` (m,) 0 normal /
    1 tumour, ``region_ids`` (m,) the labeled region each cell lies in (split unit for early stopping;
    regions are keyed by ``(slide_id, region_id)``, so ids may repeat across slides)."""

    slide_id: str
    store_path: str | os.PathLike
    cells: np.ndarray
    labels: np.ndarray
    region_ids: np.ndarray
    store: EmbeddingStore | None = field(default=None, repr=False)  # loaded store, saves a re-read
    slide_path: str | os.PathLike | None = None  # finetune: overrides the store's slide_path

    def __post_init__(self) -> None:
        self.cells = np.asarray(self.cells, np.int64).reshape(-1, 2)
        self.labels = np.asarray(self.labels).reshape(-1)
        self.region_ids = np.asarray(self.region_ids, np.int64).reshape(-1)
        if not (len(self.cells) == len(self.labels) == len(self.region_ids)):
            raise ValueError(f"{self.slide_id}: {len(self.cells)} cells, {len(self.labels)} labels and "
                             f"{len(self.region_ids)} region ids must match")
        if self.labels.size and not np.isin(self.labels, (0, 1)).all():
            raise ValueError(f"{self.slide_id}: labels must be 0 (normal) or 1 (tumour)")
        self.labels = self.labels.astype(np.int64)

    def load_store(self) -> EmbeddingStore:
        return self.store if self.store is not None else EmbeddingStore.load(self.store_path)


@dataclass
class _Pool:
    """All usable examples of one fit, flattened."""

    group: np.ndarray  # (n,) index into the LabeledCells list
    local: np.ndarray  # (n,) position among that LabeledCells' cells
    labels: np.ndarray  # (n,)
    regions: np.ndarray  # (n,) dense region index, one per (slide id, region id)
    rows: np.ndarray  # (n,) row of each cell in its store's features
    dropped: int  # labeled cells without an embedding


def _gather(examples: Sequence[LabeledCells], stores: Sequence[EmbeddingStore]) -> _Pool:
    slide_index: dict[str, int] = {}
    groups, local, labels, keys, rows, dropped = [], [], [], [], [], 0
    for g, (ex, store) in enumerate(zip(examples, stores)):
        index = _row_index(store)
        rr, cc = ex.cells[:, 0], ex.cells[:, 1]
        if len(rr) and (rr.min() < 0 or cc.min() < 0 or rr.max() >= index.shape[0] or cc.max() >= index.shape[1]):
            raise ValueError(f"{ex.slide_id}: labeled cells outside its {index.shape[0]}x{index.shape[1]} grid")
        row = index[rr, cc]
        kept = np.flatnonzero(row >= 0)
        dropped += len(rr) - len(kept)
        slide = slide_index.setdefault(ex.slide_id, len(slide_index))
        groups.append(np.full(len(kept), g, np.int64))
        local.append(kept)
        labels.append(ex.labels[kept])
        keys.append(np.stack([np.full(len(kept), slide, np.int64), ex.region_ids[kept]], axis=1))
        rows.append(row[kept])

    def cat(parts: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(shape, np.int64)

    all_keys = cat(keys, (0, 2))
    regions = (np.unique(all_keys, axis=0, return_inverse=True)[1].reshape(-1) if len(all_keys)
               else np.zeros(0, np.int64))
    return _Pool(cat(groups, (0,)), cat(local, (0,)), cat(labels, (0,)), regions.astype(np.int64),
                 cat(rows, (0,)), dropped)


def _row_index(store: EmbeddingStore) -> np.ndarray:
    """``(rows, cols)`` int64: each cell's row in ``store.features``, -1 where not embedded."""
    index = np.full(store.grid.shape, -1, np.int64)
    index[store.coords[:, 0], store.coords[:, 1]] = np.arange(len(store.coords))
    return index


# ---------------------------------------------------------------------------------------------- split

def split_by_region(regions: np.ndarray, labels: np.ndarray, val_fraction: float,
                    seed: int) -> tuple[np.ndarray, str]:
    """Held-out mask over examples (``True`` = validation) and the kind of split made.

    ``"region"``: whole regions held out (see the module doc for the rule); ``"patch"``: the
    single-region fallback, a seeded per-class split of patches; ``"none"``: no held-out set (asked
    for, too few examples, or no split gives the held-out part every class the training part has).
    """
    regions, labels = np.asarray(regions), np.asarray(labels)
    none = np.zeros(len(labels), bool)
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0 or len(labels) < 2:
        return none, "none"
    rng = np.random.default_rng([seed, 1])
    classes = np.unique(labels)
    ids = np.unique(regions)
    if len(ids) >= 2:
        n_val = min(max(1, round(val_fraction * len(ids))), len(ids) - 1)
        for _ in range(SPLIT_ATTEMPTS):
            val = np.isin(regions, rng.permutation(ids)[:n_val])
            if np.isin(classes, labels[val]).all() and np.isin(classes, labels[~val]).all():
                return val, "region"
        log.info("no split of the %d labeled regions puts every class on both sides: training on all of them "
                 "for max_epochs, without early stopping", len(ids))
        return none, "none"
    val = none.copy()
    for c in classes:
        members = rng.permutation(np.flatnonzero(labels == c))
        val[members[:min(round(val_fraction * len(members)), len(members) - 1)]] = True
    if not np.isin(classes, labels[val]).all():
        return none, "none"
    log.warning("only one labeled region: holding out %.0f%% of its patches per class for early stopping "
                "(patches of one region are correlated, so the held-out loss is optimistic)", 100 * val_fraction)
    return val, "patch"


# -------------------------------------------------------------------------------------------- sampling

class BalancedSampler(Sampler):
    """Draws ``num_samples`` indices per epoch, with replacement, equally many from each class present.

    With ``n`` samples and ``K`` classes every class gets ``n // K`` draws and ``n % K`` randomly chosen
    classes one more. Epoch ``e`` uses ``numpy.random.default_rng([seed, 2, e])``, so a fresh sampler
    repeats the same sequence. With ``with_seeds=True`` it yields ``(index, augmentation seed)`` pairs.
    """

    def __init__(self, labels: np.ndarray, num_samples: int, seed: int = 0, with_seeds: bool = False):
        self.labels = np.asarray(labels)
        if len(self.labels) == 0:
            raise ValueError("cannot sample from no examples")
        self.num_samples, self.seed, self.with_seeds = int(num_samples), int(seed), with_seeds
        self.by_class = [np.flatnonzero(self.labels == c) for c in np.unique(self.labels)]
        self.epoch = 0

    def __len__(self) -> int:
        return self.num_samples

    def draw(self, epoch: int) -> np.ndarray:
        """The indices of one epoch (a pure function of seed and epoch)."""
        rng = np.random.default_rng([self.seed, 2, epoch])
        k = len(self.by_class)
        counts = np.full(k, self.num_samples // k)
        counts[rng.permutation(k)[:self.num_samples % k]] += 1
        picks = np.concatenate([rng.choice(members, size=c, replace=True)
                                for members, c in zip(self.by_class, counts)])
        return rng.permutation(picks)

    def __iter__(self) -> Iterator:
        epoch, self.epoch = self.epoch, self.epoch + 1
        picks = self.draw(epoch)
        if not self.with_seeds:
            return iter(picks.tolist())
        seeds = np.random.default_rng([self.seed, 3, epoch]).integers(0, 2**31 - 1, len(picks))
        return iter(zip(picks.tolist(), seeds.tolist()))


# -------------------------------------------------------------------------------------------- datasets

def default_augmentation():
    """The fine-tuning augmentation (albumentations), applied to uint8 RGB patches.

    Dihedral symmetries (flips + 90° rotations: a patch has no preferred orientation), mild HSV and
    brightness / contrast jitter (scanners, section thickness) and H&E stain-matrix jitter
    (staining protocols). Seeded per sample by the sampler, so runs repeat exactly.
    """
    import albumentations as A

    return A.Compose([
        A.SquareSymmetry(p=1.0),
        A.HueSaturationValue(hue_shift_limit=8, sat_shift_limit=12, val_shift_limit=8, p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
        A.HEStain(method="random_preset", intensity_scale_range=(0.9, 1.1),
                  intensity_shift_range=(-0.05, 0.05), p=0.3),
    ])


class _PatchLabelDataset(Dataset):
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


# ---------------------------------------------------------------------------------------------- model

class PatchClassifier(pl.LightningModule):
    """Backbone + MLP head with dropout → 2 logits (normal, tumour).

    ``backbone=None`` (frozen mode) takes cached features, standardised with the ``feature_mean`` /
    ``feature_std`` buffers; otherwise the backbone is an :class:`alkit.embeddings.encoders.Encoder` taking uint8
    ``(B, H, W, 3)`` patches, trained at ``backbone_lr_factor`` × ``lr``.
    """

    def __init__(self, in_dim: int, hidden: int = 128, dropout: float = 0.3, lr: float = 1e-3,
                 weight_decay: float = 1e-4, backbone: nn.Module | None = None, backbone_lr_factor: float = 0.1):
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"])  # what a logger (e.g. MLflow) records as params
        self.backbone = backbone
        self.lr, self.weight_decay, self.backbone_lr_factor = lr, weight_decay, backbone_lr_factor
        self.register_buffer("feature_mean", torch.zeros(in_dim))
        self.register_buffer("feature_std", torch.ones(in_dim))
        self.head = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(hidden, N_CLASSES))
        self.sampled_counts = torch.zeros(N_CLASSES, dtype=torch.int64)  # labels seen in training batches
        self._val_sum = torch.zeros(N_CLASSES, dtype=torch.float64)
        self._val_n = torch.zeros(N_CLASSES, dtype=torch.float64)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Head input: standardised cached features, or the backbone's embedding of uint8 patches."""
        if self.backbone is not None:
            x = self.backbone(x)
        return (x.float() - self.feature_mean) / self.feature_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.sampled_counts += torch.bincount(y.detach().cpu(), minlength=N_CLASSES)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_sum.zero_()
        self._val_n.zero_()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        losses = F.cross_entropy(self(x), y, reduction="none").detach().double().cpu()
        y = y.cpu()
        self._val_sum.index_add_(0, y, losses)
        self._val_n.index_add_(0, y, torch.ones_like(losses))

    def on_validation_epoch_end(self) -> None:
        present = self._val_n > 0
        if present.any():  # class-balanced: mean over classes of each class's mean loss
            value = (self._val_sum[present] / self._val_n[present]).mean().float()
            self.log("val_loss", value)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = [{"params": self.head.parameters(), "lr": self.lr}]
        if self.backbone is not None:
            groups.append({"params": self.backbone.parameters(), "lr": self.lr * self.backbone_lr_factor})
        return torch.optim.AdamW(groups, weight_decay=self.weight_decay)


class _EarlyStopping(Callback):
    """Early stopping on ``val_loss`` after a warm-up, keeping the best weights in memory (no files).

    Epochs before ``min_epochs`` are not judged: on a few held-out tumour patches the balanced loss of
    a barely trained model (all probabilities near 0.5) can beat a trained one that misses a single
    patch with confidence, and stopping there leaves an uninformative model. From ``min_epochs`` on,
    the best epoch's weights are kept and training stops after ``patience`` epochs without improvement.
    """

    def __init__(self, patience: int, min_epochs: int) -> None:
        self.patience, self.min_epochs = patience, min_epochs
        self.best, self.best_epoch, self.state, self.wait = math.inf, -1, None, 0

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get("val_loss")
        epoch = trainer.current_epoch
        if value is None or epoch + 1 < self.min_epochs:
            return
        if float(value) < self.best:
            self.best, self.best_epoch, self.wait = float(value), epoch, 0
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()}
        else:
            self.wait += 1
            if self.wait >= self.patience:
                trainer.should_stop = True


# ----------------------------------------------------------------------------------------------- task

class PatchClassifierTask:
    """Train-and-predict object for the active-learning loop (see the module doc for the rules)."""

    def __init__(self, mode: str = "frozen", hidden: int = 128, dropout: float = 0.3, lr: float = 1e-3,
                 weight_decay: float = 1e-4, max_epochs: int = 50, min_epochs: int = 10, patience: int = 5,
                 batch_size: int = 256,
                 val_fraction: float = 0.2, seed: int = 0, accelerator: str = "cpu", devices: int | list[int] = 1,
                 precision: str | int | None = None, deterministic: bool = False,
                 logger: pl.loggers.Logger | bool | None = None, callbacks: Sequence[Callback] = (),
                 progress: bool = False, backbone: str = "resnet18", backbone_lr_factor: float = 0.1,
                 augment: bool = True, num_workers: int = 0, predict_batch_size: int = 1024):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if not (devices == 1 or (isinstance(devices, (list, tuple)) and len(devices) == 1)):
            raise ValueError(f"training runs on one device (devices=1 or [index]), got devices={devices!r}")
        if max_epochs < 1 or patience < 1 or batch_size < 1 or min_epochs < 0:
            raise ValueError("max_epochs, patience and batch_size must be positive, min_epochs not negative")
        self.mode, self.hidden, self.dropout, self.lr, self.weight_decay = mode, hidden, dropout, lr, weight_decay
        self.max_epochs, self.min_epochs, self.patience, self.batch_size = max_epochs, min_epochs, patience, batch_size
        self.val_fraction, self.seed = val_fraction, seed
        self.accelerator, self.devices, self.precision = accelerator, devices, precision
        self.deterministic = deterministic
        self.logger, self.callbacks, self.progress = logger, list(callbacks), progress
        self.backbone_spec, self.backbone_lr_factor, self.augment = backbone, backbone_lr_factor, augment
        self.num_workers, self.predict_batch_size = num_workers, predict_batch_size
        self.model: PatchClassifier | None = None
        self.trainer: pl.Trainer | None = None  # the Trainer of the last fit (a new one every fit)
        self.summary: dict = {}
        self._store_key: dict | None = None  # encoder / grid of the stores the model was trained on
        self._backbone_init: dict | None = None  # finetune: the registry's weights, loaded once

    # -- training ----------------------------------------------------------------------------------
    def fit(self, examples: Sequence[LabeledCells]) -> dict:
        """Train a fresh model on the labeled cells; returns the training summary."""
        start = time.perf_counter()
        examples = list(examples)
        stores = [ex.load_store() for ex in examples]
        key = self._check_stores(stores)
        pool = _gather(examples, stores)
        if len(pool.labels) == 0:
            raise ValueError("no labeled cell has an embedding: nothing to train on")
        if pool.dropped:
            log.info("%d labeled cells have no embedding (too little tissue) and are not used", pool.dropped)
        classes = np.unique(pool.labels)
        if len(classes) < N_CLASSES:
            log.warning("all %d labeled cells are %s: the model can only learn that class", len(pool.labels),
                        "tumour" if classes[0] == 1 else "normal")
        val, split = split_by_region(pool.regions, pool.labels, self.val_fraction, self.seed)
        train = ~val
        n_train = int(train.sum())
        sampler = BalancedSampler(pool.labels[train], max(n_train, self.batch_size), self.seed,
                                  with_seeds=self.mode == "finetune")
        with _rng_scope(self.seed), _quiet(not self.progress):
            model = self._new_model(stores, pool, train)
            train_set, val_set = self._datasets(examples, stores, pool, train, val)
            loader_kw = {"batch_size": self.batch_size, "num_workers": self.num_workers,
                         "persistent_workers": False, "pin_memory": self._device().type == "cuda"}
            train_loader = DataLoader(train_set, sampler=sampler, **loader_kw)
            val_loader = DataLoader(val_set, shuffle=False, **loader_kw) if val_set is not None else None
            keep = _EarlyStopping(self.patience, self.min_epochs)
            callbacks: list[Callback] = [keep, *self.callbacks]
            steps = len(train_loader)
            self.trainer = trainer = pl.Trainer(
                accelerator=self.accelerator, devices=self.devices, precision=self.precision,
                max_epochs=self.max_epochs, logger=self.logger if self.logger is not None else False,
                callbacks=callbacks, enable_checkpointing=False, enable_model_summary=False,
                enable_progress_bar=self.progress, num_sanity_val_steps=0, deterministic=self.deterministic,
                limit_val_batches=1.0 if val_loader is not None else 0, log_every_n_steps=max(1, min(50, steps)),
                use_distributed_sampler=False)
            trainer.fit(model, train_dataloaders=train_loader, val_dataloaders=val_loader)
        if keep.state is not None:
            model.load_state_dict(keep.state)
        self.model, self._store_key = model.cpu().eval(), key
        counts = np.bincount(pool.labels[train], minlength=N_CLASSES)
        val_counts = np.bincount(pool.labels[val], minlength=N_CLASSES)
        self.summary = {
            "mode": self.mode, "split": split, "epochs": int(trainer.current_epoch),
            "best_epoch": int(keep.best_epoch), "best_val_loss": keep.best if keep.state is not None else float("nan"),
            "stopped_early": bool(trainer.current_epoch < self.max_epochs),
            "n_train": n_train, "n_val": int(val.sum()),
            "n_train_regions": int(len(np.unique(pool.regions[train]))),
            "n_val_regions": int(len(np.unique(pool.regions[val]))),
            "n_train_tumour": int(counts[1]), "n_train_normal": int(counts[0]),
            "n_val_tumour": int(val_counts[1]), "n_val_normal": int(val_counts[0]),
            "sampled_tumour": int(model.sampled_counts[1]), "sampled_normal": int(model.sampled_counts[0]),
            "n_without_embedding": int(pool.dropped), "seconds": time.perf_counter() - start,
        }
        log.info("trained %s patch classifier: %s", self.mode, self.summary)
        return dict(self.summary)

    @staticmethod
    def _check_stores(stores: Sequence[EmbeddingStore]) -> dict:
        """The common encoder / grid key of the stores (one model needs one of each)."""
        keys = [_store_key(s) for s in stores]
        if not keys:
            raise ValueError("no labeled examples to train on")
        for s, k in zip(stores, keys):
            if k != keys[0]:
                raise ValueError(f"{s.path}: embedded with {k}, but {stores[0].path} with {keys[0]}; "
                                 "one model needs one encoder and grid")
        return keys[0]

    def _new_model(self, stores: Sequence[EmbeddingStore], pool: _Pool, train: np.ndarray) -> PatchClassifier:
        if self.mode == "frozen":
            feats = self._pool_features(stores, pool)[train]
            model = PatchClassifier(feats.shape[1], self.hidden, self.dropout, self.lr, self.weight_decay)
            model.feature_mean.copy_(torch.from_numpy(feats.mean(axis=0)))
            model.feature_std.copy_(torch.from_numpy(np.maximum(feats.std(axis=0), 1e-6)))
            return model
        backbone = self._fresh_backbone().train()  # the registry hands encoders out in eval mode
        return PatchClassifier(backbone.dim, self.hidden, self.dropout, self.lr, self.weight_decay,
                               backbone=backbone, backbone_lr_factor=self.backbone_lr_factor)

    def _fresh_backbone(self):
        """The registry's backbone with its initial weights (built once, copied for every fit)."""
        from alkit.embeddings.encoders import get_encoder

        backbone = get_encoder(self.backbone_spec)
        if self._backbone_init is None:
            self._backbone_init = {k: v.clone() for k, v in backbone.state_dict().items()}
        else:
            backbone.load_state_dict(self._backbone_init)
        return backbone

    @staticmethod
    def _pool_features(stores: Sequence[EmbeddingStore], pool: _Pool) -> np.ndarray:
        feats = np.empty((len(pool.labels), stores[0].dim), np.float32)
        for g, store in enumerate(stores):
            sel = pool.group == g
            feats[sel] = store.features[pool.rows[sel]]
        return feats

    def _datasets(self, examples: Sequence[LabeledCells], stores: Sequence[EmbeddingStore], pool: _Pool,
                  train: np.ndarray, val: np.ndarray) -> tuple[Dataset, Dataset | None]:
        """Training and held-out datasets: cached features (frozen) or patches read from the slides."""
        if self.mode == "frozen":
            feats, labels = torch.from_numpy(self._pool_features(stores, pool)), torch.from_numpy(pool.labels)
            tr, va = torch.from_numpy(train), torch.from_numpy(val)
            return TensorDataset(feats[tr], labels[tr]), (TensorDataset(feats[va], labels[va]) if val.any() else None)
        readers = [_reader(store, ex.slide_path, ex.cells) for ex, store in zip(examples, stores)]
        augment = default_augmentation() if self.augment else None
        train_set = _PatchLabelDataset(readers, pool.group[train], pool.local[train], pool.labels[train], augment)
        val_set = _PatchLabelDataset(readers, pool.group[val], pool.local[val], pool.labels[val]) if val.any() else None
        return train_set, val_set

    # -- inference ---------------------------------------------------------------------------------
    def _ready(self, store: EmbeddingStore | str | os.PathLike) -> tuple[PatchClassifier, EmbeddingStore]:
        if self.model is None:
            raise RuntimeError("the task has not been fitted yet; call fit() first")
        store = store if isinstance(store, EmbeddingStore) else EmbeddingStore.load(store)
        key = _store_key(store)
        if key != self._store_key:
            raise ValueError(f"{store.path}: embedded with {key}, but the model was trained on {self._store_key}")
        return self.model, store

    def _device(self) -> torch.device:
        wants_gpu = self.accelerator in ("gpu", "cuda") or (self.accelerator == "auto" and torch.cuda.is_available())
        return torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")

    @torch.no_grad()
    def _head_inputs(self, model: PatchClassifier, store: EmbeddingStore, device: torch.device) -> torch.Tensor:
        """Standardised head inputs ``(n, F)`` of every embedded cell of the store (backbone in eval)."""
        model.eval()
        if model.backbone is None:
            return model.features(torch.from_numpy(np.asarray(store.features, np.float32)).to(device))
        reader = _reader(store, None, store.coords)
        data = _PatchLabelDataset([reader], np.zeros(len(store.coords), np.int64), np.arange(len(store.coords)), None)
        loader = DataLoader(data, batch_size=self.predict_batch_size, num_workers=self.num_workers, shuffle=False)
        parts = [model.features(images.to(device)) for images, _ in loader]
        return torch.cat(parts) if parts else torch.zeros(0, model.feature_mean.numel(), device=device)

    def predict_probs(self, store: EmbeddingStore | str | os.PathLike) -> np.ndarray:
        """``(rows, cols, 2)`` float32 class probabilities (normal, tumour); 0 where not embedded."""
        model, store = self._ready(store)
        device = self._device()
        model.to(device)  # stays there for the next slide
        with torch.no_grad():
            probs = torch.softmax(model.head(self._head_inputs(model, store, device)), dim=1).cpu().numpy()
        out = np.zeros((*store.grid.shape, N_CLASSES), np.float32)
        out[store.coords[:, 0], store.coords[:, 1]] = probs
        return out

    def predict_proba(self, store: EmbeddingStore | str | os.PathLike) -> np.ndarray:
        """``(rows, cols)`` float32 tumour probability map; 0 where not embedded."""
        return self.predict_probs(store)[..., 1]

    def predict_mc(self, store: EmbeddingStore | str | os.PathLike, samples: int = 20,
                   seed: int | None = None) -> np.ndarray:
        """``(samples, rows, cols)`` float32 tumour probabilities under MC dropout (0 where not embedded).

        The backbone runs once in eval mode; only the head's dropout is sampled, ``samples`` times,
        from a generator seeded with ``seed`` (default: the task's seed), so results repeat.
        """
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        model, store = self._ready(store)
        device = self._device()
        model.to(device)
        out = np.zeros((samples, *store.grid.shape), np.float32)
        inputs = self._head_inputs(model, store, device)
        try:
            with torch.no_grad(), _rng_scope(self.seed if seed is None else seed):
                for m in model.head.modules():
                    if isinstance(m, nn.Dropout):
                        m.train()
                for t in range(samples):
                    out[t, store.coords[:, 0], store.coords[:, 1]] = (
                        torch.softmax(model.head(inputs), dim=1)[:, 1].cpu().numpy())
        finally:
            model.eval()
        return out


# ------------------------------------------------------------------------------------------ internals

def _store_key(store: EmbeddingStore) -> dict:
    a = store.attrs
    return {k: a.get(k) for k in ("encoder", "weights_id", "dim", "mpp", "patch", "stride")}


def _reader(store: EmbeddingStore, slide_path: str | os.PathLike | None, cells: np.ndarray) -> PatchDataset:
    """A patch reader over ``cells`` of the store's slide, at the store's grid (mpp, patch size)."""
    path = Path(slide_path or store.attrs.get("slide_path", ""))
    if not path.is_file():
        raise FileNotFoundError(f"{store.path}: slide {path} not found (fine-tuning reads patches from slides; "
                                "pass LabeledCells.slide_path)")
    grid = store.grid
    return PatchDataset(path, store.attrs.get("slide_mpp"), grid.cell_boxes(cells), cells, grid.mpp, grid.patch)


@contextlib.contextmanager
def _rng_scope(seed: int) -> Iterator[None]:
    """Seeded torch RNG inside the block; the caller's CPU (and CUDA) RNG state is restored after."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric")


@contextlib.contextmanager
def _quiet(enabled: bool) -> Iterator[None]:
    """Silence Lightning's info lines (devices, tips) and its data-loader advice while training."""
    if not enabled:
        yield
        return
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
            warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
            warnings.filterwarnings("ignore", message=r".*no `val_dataloader`.*")  # no held-out set: intended
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
