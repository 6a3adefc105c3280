"""The mitosis detector's network: torchvision RetinaNet on a ResNet-18 FPN with anchors sized to the
ground-truth boxes (:func:`build_retinanet`), trained in a LightningModule (:class:`MitosisDetectorNet`).
:mod:`alkit.tasks.detection.detector` builds and trains it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from alkit.embeddings.encoders.base import IMAGENET_MEAN, IMAGENET_STD
from alkit.embeddings.encoders.resnet import IMAGENET_TAGS, load_resnet_checkpoint


def to_float(images: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """uint8 ``(H, W, 3)`` → float ``(3, H, W)`` in [0, 1] (RetinaNet's transform normalises)."""
    return [im.to(device).permute(2, 0, 1).float().div_(255.0) for im in images]


def build_retinanet(box_px: float, image_size: int, backbone_weights: str | None = None,
                    trainable_layers: int = 5, fpn_channels: int = 256, score_thresh: float = 0.05,
                    nms_thresh: float = 0.3, detections_per_img: int = 100) -> nn.Module:
    """torchvision RetinaNet, ResNet-18 FPN (P3–P7), one foreground class, square anchors sized to ``box_px``.

    ``backbone_weights``: ``None`` / ``"none"`` (random init, trainable BatchNorm), ``"imagenet"``
    (torchvision's ``IMAGENET1K_V1`` ResNet-18, the paper's backbone; downloaded once into the torch hub
    cache, ``TORCH_HOME``) or a local ResNet-18 checkpoint path (loaded like the encoder registry's
    ``resnet18@PATH``, ``weights_only=True``). Pretrained backbones get frozen BatchNorm, the
    torchvision convention.
    ``fpn_channels`` is the width of the FPN and of RetinaNet's heads (256 as in the paper; the heads
    dominate the cost of small patches, so tiny CPU runs use less). Images are not resized
    (``min_size = max_size = image_size``).
    """
    tag = (backbone_weights or "none").strip()
    if tag.lower() in ("none", "random"):
        net = resnet18(weights=None, norm_layer=nn.BatchNorm2d)
    elif tag.lower() in IMAGENET_TAGS:
        try:
            net = resnet18(weights=ResNet18_Weights.IMAGENET1K_V1, norm_layer=FrozenBatchNorm2d)
        except Exception as exc:  # offline without a cached copy, proxy, corrupt cache ...
            raise FileNotFoundError(
                f"backbone_weights {tag!r}: could not get torchvision's ImageNet ResNet-18 ({exc}); it is downloaded "
                f"once from {ResNet18_Weights.IMAGENET1K_V1.url} into the torch hub cache (TORCH_HOME): run once "
                "online, or give a local checkpoint path") from exc
    else:
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


class MitosisDetectorNet(pl.LightningModule):
    """RetinaNet in a LightningModule: summed focal + box-regression loss, AdamW, per-epoch mean losses."""

    def __init__(self, model: nn.Module, lr: float = 1e-4, weight_decay: float = 1e-4):
        super().__init__()
        self.model, self.lr, self.weight_decay = model, lr, weight_decay
        self.epoch_losses: list[float] = []
        self.step_losses: list[float] = []
        self._sum, self._n = 0.0, 0

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        images = to_float(images, self.device)
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
