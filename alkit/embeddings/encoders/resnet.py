"""ResNet-18 backbone (torchvision), 512-d pooled features, with three weight sources.

- ``resnet18`` / ``resnet18@none``: random initialisation (seeded, so the same on every run); the
  features carry no meaning, which is only useful for plumbing tests, and a warning says so.
- ``resnet18@imagenet``: torchvision's ``IMAGENET1K_V1`` weights via torchvision's weights API
  (downloaded once into the torch hub cache; hash-checked by torchvision).
- ``resnet18@PATH``: a local checkpoint, either a plain state dict or a training checkpoint such as
  Ciga et al.'s self-supervised histopathology model (``tenpercent_resnet18.ckpt``, a Lightning
  checkpoint whose ``state_dict`` keys carry ``model.resnet.``). The common key prefix is detected and
  stripped; ``fc.*`` and heads outside the backbone are dropped. Loaded with ``weights_only=True``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from alkit.embeddings.encoders.base import (IMAGENET_MEAN, IMAGENET_STD, Encoder, EncoderError, file_weights_id,
                                 safe_torch_load, seeded_init, strip_common_prefix, unwrap_state_dict)
from alkit.embeddings.encoders.registry import register_encoder

log = logging.getLogger(__name__)

RANDOM_TAGS = {"none", "random", "random-init"}
IMAGENET_TAGS = {"imagenet", "imagenet1k_v1"}


class ResNet18Encoder(Encoder):
    """torchvision ResNet-18 with ``fc`` replaced by identity: global-average-pooled 512-d features."""

    dim = 512
    input_size = 224
    supports_text = False

    def __init__(self, weights: str | None = None) -> None:
        super().__init__(IMAGENET_MEAN, IMAGENET_STD)
        from torchvision.models import ResNet18_Weights, resnet18

        tag = (weights or "none").strip()
        if tag.lower() in RANDOM_TAGS:
            log.warning("resnet18 with random weights: its features are meaningless; use resnet18@imagenet or "
                        "resnet18@PATH for a trained model")
            with seeded_init(0):
                net = resnet18(weights=None)
            self.weights_id = "random-init"
        elif tag.lower() in IMAGENET_TAGS:
            try:
                net = resnet18(weights=ResNet18_Weights.IMAGENET1K_V1)
            except Exception as exc:  # offline, proxy, corrupt cache ...
                raise EncoderError(
                    f"resnet18@{tag}: could not get torchvision's ImageNet weights ({exc}); they are downloaded "
                    f"once from {ResNet18_Weights.IMAGENET1K_V1.url} into the torch hub cache "
                    "(TORCH_HOME), so run once online or pass a local checkpoint as resnet18@PATH") from exc
            self.weights_id = "torchvision:ResNet18_Weights.IMAGENET1K_V1"
        else:
            path = Path(tag).expanduser()
            if not path.is_file():
                raise EncoderError(f"resnet18@{tag}: no such checkpoint file {path} (weights must be 'none', "
                                   "'imagenet' or the path of a checkpoint)")
            net = resnet18(weights=None)
            load_resnet_checkpoint(net, path)
            self.weights_id = file_weights_id(path)
        net.fc = torch.nn.Identity()
        self.backbone = net

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images).float()


def load_resnet_checkpoint(net: torch.nn.Module, path: Path) -> None:
    """Load a checkpoint's backbone weights into ``net`` (a torchvision ResNet), strictly, or raise
    :class:`EncoderError` naming the file and the keys that do not match."""
    state = unwrap_state_dict(safe_torch_load(path), path)
    expected = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    prefix, found = strip_common_prefix(state, set(expected))
    if not found:
        sample = ", ".join(list(state)[:5])
        raise EncoderError(f"checkpoint {path}: no key looks like a ResNet-18 backbone parameter "
                           f"(first keys: {sample})")
    found = {k: v for k, v in found.items() if not k.startswith("fc.")}
    missing = sorted(k for k in expected if k not in found and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in found if k not in expected)
    wrong_shape = sorted(f"{k} {tuple(found[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
                         if k in found and found[k].shape != v.shape)
    if missing or wrong_shape:
        problems = []
        if missing:
            problems.append(f"{len(missing)} backbone keys missing (e.g. {', '.join(missing[:4])})")
        if wrong_shape:
            problems.append(f"{len(wrong_shape)} with wrong shapes (e.g. {'; '.join(wrong_shape[:3])})")
        raise EncoderError(f"checkpoint {path} does not match torchvision resnet18 after stripping prefix "
                           f"{prefix!r}: {'; '.join(problems)}")
    if unexpected:
        log.warning("checkpoint %s: ignoring %d keys under %r that resnet18 lacks (e.g. %s)", path,
                    len(unexpected), prefix, ", ".join(unexpected[:4]))
    outside = sum(1 for k in state if not k.startswith(prefix))
    if outside:
        log.info("checkpoint %s: ignoring %d keys outside the backbone prefix %r (heads, projectors)",
                 path, outside, prefix)
    found = {k: v for k, v in found.items() if k in expected}
    for key in expected:  # old checkpoints lack BatchNorm counters; they do not affect inference
        found.setdefault(key, expected[key])
    net.load_state_dict(found, strict=False)
    log.info("loaded resnet18 weights from %s (prefix %r, %d tensors)", path, prefix, len(found))


@register_encoder("resnet18")
def build_resnet18(weights: str | None) -> Encoder:
    return ResNet18Encoder(weights)
