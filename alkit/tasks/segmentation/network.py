"""The patch classifier's network as a LightningModule (:class:`PatchClassifierNet`): an optional
backbone and an MLP head with dropout, trained with cross-entropy and validated with a
class-balanced loss. :mod:`alkit.tasks.segmentation.classifier` builds and trains it."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

N_CLASSES = 2  # 0 normal, 1 tumour


class PatchClassifierNet(pl.LightningModule):
    """Backbone + MLP head with dropout → 2 logits (normal, tumour).

    ``backbone=None`` (frozen mode) takes cached features, standardised with the ``feature_mean`` /
    ``feature_std`` buffers; otherwise the backbone is an :class:`alkit.embeddings.encoders.Encoder` taking uint8
    ``(B, H, W, 3)`` patches, trained at ``backbone_lr_factor`` × ``lr``. The head is
    ``Linear → ReLU → Dropout → Linear``; its dropout is what MC-dropout inference samples.
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
