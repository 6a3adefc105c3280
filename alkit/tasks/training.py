"""Lightning helpers both task models train with: a seeded torch RNG scope, a quiet Lightning, an
early-stopping callback that keeps the best weights in memory, and the device inference runs on.

The patch classifier (:mod:`alkit.tasks.segmentation.classifier`) and the mitosis detector
(:mod:`alkit.tasks.detection.detector`) build a fresh model and ``Trainer`` every fit inside
:func:`rng_scope` and :func:`quiet`, and log per-epoch curves to the Lightning logger they are
given (:class:`EpochMeanLoss` where a model logs its loss per step); :data:`LIGHTNING_LOGGERS` is
also what the CLI sets to its own verbosity.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterator

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

#: the loggers Lightning writes its info lines (devices, tips) to
LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric")


def follow_root_log_level() -> None:
    """Lightning sets its loggers to INFO when imported (device summaries, tips); the command line calls this
    after the import so they follow ``-v`` / ``-q`` (the root logger's level) instead."""
    level = logging.getLogger().level
    for chatty in LIGHTNING_LOGGERS:
        logging.getLogger(chatty).setLevel(level)


@contextlib.contextmanager
def rng_scope(seed: int) -> Iterator[None]:
    """Seeded torch RNG inside the block; the caller's CPU (and CUDA) RNG state is restored after."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def quiet(enabled: bool) -> Iterator[None]:
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


class EarlyStopping(Callback):
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


class EpochMeanLoss(Callback):
    """Logs the mean training loss of every epoch as ``name`` (for models that log their loss per
    step only), so a logger such as MLflow gets one point per epoch: the fit's training curve."""

    def __init__(self, name: str = "train_loss_epoch") -> None:
        self.name, self._sum, self._n = name, 0.0, 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sum, self._n = 0.0, 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            self._sum, self._n = self._sum + float(loss.detach() if torch.is_tensor(loss) else loss), self._n + 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._n:
            pl_module.log(self.name, self._sum / self._n, on_step=False, on_epoch=True)


def inference_device(accelerator: str) -> torch.device:
    """The device inference runs on: the GPU when ``accelerator`` asks for one (or is ``"auto"`` and one
    is there), else the CPU."""
    wants_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")
