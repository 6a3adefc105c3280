"""Tumour segmentation by patch classification: the model object the active-learning loop trains every
cycle (:class:`PatchClassifierModel`) around a LightningModule, backbone + MLP head
(:class:`alkit.tasks.segmentation.network.PatchClassifierNet`).

Two modes:

* ``frozen`` (default, fast on CPU): the backbone is the encoder that made the embedding store, already
  applied; training and inference run on the cached store features (standardised with the training
  set's mean and std). Only the head learns.
* ``finetune`` (for GPUs): the backbone comes from the encoder registry (``backbone="resnet18@PATH"``,
  ``"open_clip:..."``, ...) and is trained end to end, at a tenth of the head's learning rate, on
  patches read from the slides (the store's grid says where and at which mpp / size) by DataLoader
  workers with their own OpenSlide handles (:class:`alkit.embeddings.embed.PatchDataset`). Training patches are
  augmented with albumentations (:func:`alkit.tasks.segmentation.dataset.default_augmentation`): flips and
  90° rotations (the dihedral group: tissue has no orientation), hue / saturation / value jitter and
  brightness / contrast jitter (scanner and staining variation) and H&E stain-matrix augmentation.

The head is ``Linear → ReLU → Dropout → Linear`` with two outputs (normal, tumour); its dropout is
what MC-dropout inference (:meth:`PatchClassifierModel.predict_mc`) samples.

Training data and rules (:meth:`PatchClassifierModel.fit`):

* Examples are the labeled cells of the labeled regions
  (:class:`alkit.tasks.segmentation.examples.LabeledCells`); only cells with an embedding in the store
  (enough tissue) are used, the same cells inference scores.
* Held-out set for early stopping: with validation slides (examples marked ``held_out``: every embedded
  cell of fully annotated slides, as in the reference's 70/30 split of the CAMELYON16 tumour slides),
  their cells. Otherwise whole labeled *regions* (a region is ``(slide_id, region_id)``),
  ``val_fraction`` of them (at least one, leaving at least one for training), drawn with the seed
  (:func:`alkit.tasks.segmentation.split.split_by_region`); the first of up to 64 seeded draws in which
  both parts hold every labeled class is used. Patches of one region are spatially correlated, so
  splitting by patch would make the held-out loss optimistic. Fallbacks: with a single labeled
  region, a seeded per-class split of its patches (logged as a warning: early stopping is then
  optimistic); when no draw gives both parts every class (typically: tumour in one region only),
  ``val_fraction=0``, or fewer than 2 patches, there is no held-out set and training runs
  ``max_epochs`` on everything. A held-out set without tumour
  would stop training as soon as tumour predictions start to cost normal patches a little loss.
* Class balance: every epoch draws ``max(n_train, batch_size)`` training patches with replacement,
  an equal number from each class present (:class:`alkit.tasks.segmentation.sampler.BalancedSampler`,
  seeded per epoch).
* Loss: cross-entropy; the held-out loss is class-balanced (mean over classes of each class's mean
  loss) so that the abundant normal class does not drown tumour errors. Early stopping watches it
  from epoch ``min_epochs`` on (a warm-up: on a handful of held-out tumour patches a barely trained
  model can score the lowest loss) with ``patience`` epochs; the weights of the best watched epoch
  are kept (in memory, no checkpoint files; :class:`alkit.tasks.training.EarlyStopping`).
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

import logging
import os
import time
from collections.abc import Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from alkit.embeddings.encoders import get_encoder
from alkit.embeddings.store import EmbeddingStore, StoreHeader
from alkit.tasks.segmentation.dataset import PatchLabelDataset, default_augmentation, slide_reader
from alkit.tasks.segmentation.examples import ExamplePool, LabeledCells, gather_examples
from alkit.tasks.segmentation.network import N_CLASSES, PatchClassifierNet
from alkit.tasks.segmentation.sampler import BalancedSampler
from alkit.tasks.segmentation.split import split_by_region
from alkit.tasks.training import EarlyStopping, inference_device, quiet, rng_scope

log = logging.getLogger(__name__)

MODES = ("frozen", "finetune")


class PatchClassifierModel:
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
        self.model: PatchClassifierNet | None = None
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
        pool = gather_examples(examples, stores)
        if len(pool.labels) == 0:
            raise ValueError("no labeled cell has an embedding: nothing to train on")
        if pool.dropped:
            log.info("%d labeled cells have no embedding (too little tissue) and are not used", pool.dropped)
        classes = np.unique(pool.labels)
        if len(classes) < N_CLASSES:
            log.warning("all %d labeled cells are %s: the model can only learn that class", len(pool.labels),
                        "tumour" if classes[0] == 1 else "normal")
        if pool.held_out is not None and pool.held_out.any():  # validation slides: the held-out set is theirs
            val, split = pool.held_out.copy(), "validation slides"
        else:
            val, split = split_by_region(pool.regions, pool.labels, self.val_fraction, self.seed)
        train = ~val
        if not train.any():
            raise ValueError("no labeled cell outside the validation slides: nothing to train on")
        n_train = int(train.sum())
        sampler = BalancedSampler(pool.labels[train], max(n_train, self.batch_size), self.seed,
                                  with_seeds=self.mode == "finetune")
        # frozen mode: the labeled rows only, read once from each store (never a whole store in memory)
        feats = pool.features(stores) if self.mode == "frozen" else None
        with rng_scope(self.seed), quiet(not self.progress):
            model = self._new_model(pool, train, feats)
            train_set, val_set = self._datasets(examples, stores, pool, train, val, feats)
            loader_kw = {"batch_size": self.batch_size, "num_workers": self.num_workers,
                         "persistent_workers": False, "pin_memory": self._device().type == "cuda"}
            train_loader = DataLoader(train_set, sampler=sampler, **loader_kw)
            val_loader = DataLoader(val_set, shuffle=False, **loader_kw) if val_set is not None else None
            keep = EarlyStopping(self.patience, self.min_epochs)
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
    def _check_stores(stores: Sequence[EmbeddingStore | StoreHeader]) -> dict:
        """The common encoder / grid key of the stores (one model needs one of each)."""
        keys = [_store_key(s) for s in stores]
        if not keys:
            raise ValueError("no labeled examples to train on")
        for s, k in zip(stores, keys):
            if k != keys[0]:
                raise ValueError(f"{s.path}: embedded with {k}, but {stores[0].path} with {keys[0]}; "
                                 "one model needs one encoder and grid")
        return keys[0]

    def _new_model(self, pool: ExamplePool, train: np.ndarray, feats: np.ndarray | None) -> PatchClassifierNet:
        if feats is not None:  # frozen mode
            feats = feats[train]
            model = PatchClassifierNet(feats.shape[1], self.hidden, self.dropout, self.lr, self.weight_decay)
            model.feature_mean.copy_(torch.from_numpy(feats.mean(axis=0)))
            model.feature_std.copy_(torch.from_numpy(np.maximum(feats.std(axis=0), 1e-6)))
            return model
        backbone = self._fresh_backbone().train()  # the registry hands encoders out in eval mode
        return PatchClassifierNet(backbone.dim, self.hidden, self.dropout, self.lr, self.weight_decay,
                                  backbone=backbone, backbone_lr_factor=self.backbone_lr_factor)

    def _fresh_backbone(self):
        """The registry's backbone with its initial weights (built once, copied for every fit)."""
        backbone = get_encoder(self.backbone_spec)
        if self._backbone_init is None:
            self._backbone_init = {k: v.clone() for k, v in backbone.state_dict().items()}
        else:
            backbone.load_state_dict(self._backbone_init)
        return backbone

    def _datasets(self, examples: Sequence[LabeledCells], stores: Sequence[EmbeddingStore | StoreHeader],
                  pool: ExamplePool, train: np.ndarray, val: np.ndarray,
                  feats: np.ndarray | None) -> tuple[Dataset, Dataset | None]:
        """Training and held-out datasets: cached features (frozen) or patches read from the slides."""
        if feats is not None:  # frozen mode
            feats, labels = torch.from_numpy(feats), torch.from_numpy(pool.labels)
            tr, va = torch.from_numpy(train), torch.from_numpy(val)
            return TensorDataset(feats[tr], labels[tr]), (TensorDataset(feats[va], labels[va]) if val.any() else None)
        readers = [slide_reader(store, ex.slide_path, ex.cells) for ex, store in zip(examples, stores)]
        augment = default_augmentation() if self.augment else None
        train_set = PatchLabelDataset(readers, pool.group[train], pool.local[train], pool.labels[train], augment)
        val_set = PatchLabelDataset(readers, pool.group[val], pool.local[val], pool.labels[val]) if val.any() else None
        return train_set, val_set

    # -- inference ---------------------------------------------------------------------------------
    def _ready(self, store: EmbeddingStore | str | os.PathLike) -> tuple[PatchClassifierNet, EmbeddingStore]:
        if self.model is None:
            raise RuntimeError("the task has not been fitted yet; call fit() first")
        store = store if isinstance(store, EmbeddingStore) else EmbeddingStore.load(store)
        key = _store_key(store)
        if key != self._store_key:
            raise ValueError(f"{store.path}: embedded with {key}, but the model was trained on {self._store_key}")
        return self.model, store

    def _device(self) -> torch.device:
        return inference_device(self.accelerator)

    @torch.no_grad()
    def _head_inputs(self, model: PatchClassifierNet, store: EmbeddingStore, device: torch.device) -> torch.Tensor:
        """Standardised head inputs ``(n, F)`` of every embedded cell of the store (backbone in eval)."""
        model.eval()
        if model.backbone is None:
            return model.features(torch.from_numpy(np.asarray(store.features, np.float32)).to(device))
        reader = slide_reader(store, None, store.coords)
        data = PatchLabelDataset([reader], np.zeros(len(store.coords), np.int64), np.arange(len(store.coords)), None)
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
            with torch.no_grad(), rng_scope(self.seed if seed is None else seed):
                for m in model.head.modules():
                    if isinstance(m, nn.Dropout):
                        m.train()
                for t in range(samples):
                    out[t, store.coords[:, 0], store.coords[:, 1]] = (
                        torch.softmax(model.head(inputs), dim=1)[:, 1].cpu().numpy())
        finally:
            model.eval()
        return out


def _store_key(store: EmbeddingStore | StoreHeader) -> dict:
    """What one model needs to be common to every store it trains on or scores: encoder and grid."""
    a = store.attrs
    return {k: a.get(k) for k in ("encoder", "weights_id", "dim", "mpp", "patch", "stride")}
