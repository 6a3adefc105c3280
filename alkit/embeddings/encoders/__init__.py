"""Patch encoders behind one small interface (:class:`Encoder`), built by name with :func:`get_encoder`.

Built-in specs (``alkit encoders`` lists them with their cards, :mod:`alkit.embeddings.encoders.cards`):

- ``handcrafted`` (default): colour-deconvolution, nuclear-density and texture statistics; offline.
- ``resnet18[@none|@imagenet|@PATH]``: torchvision ResNet-18 backbone (512-d), e.g. Ciga et al.'s
  self-supervised histopathology checkpoint at ``resnet18@/models/tenpercent_resnet18.ckpt``.
- ``open_clip:ARCH[@TAG|@PATH]`` / ``open_clip:hf-hub:ORG/NAME``: any OpenCLIP model, image and text.
- ``plip[@DIR]``: PLIP (``vinid/plip``), a Hugging Face CLIP model; needs ``pip install 'alkit[plip]'``.
- ``timm:ARCH[@TAG|@PATH]`` / ``timm:hf-hub:ORG/NAME``: any timm image model.
- pathology foundation models by short name, ``NAME[@PATH]``: ``uni``, ``uni2-h``, ``virchow``, ``virchow2``,
  ``h-optimus-0``, ``h-optimus-1``, ``prov-gigapath``, ``phikon``, ``phikon-v2``, and the image-text
  models ``conch`` and ``quiltnet``.

This package imports nothing heavy itself: the names below are loaded on first use, so the card table
(``from alkit.embeddings.encoders.cards import encoder_card``) stays torch-free.
"""

from __future__ import annotations

import importlib

DEFAULT_ENCODER = "handcrafted"

_LAZY = {
    "Encoder": "base", "l2_normalise": "base", "EncoderError": "error",
    "available_encoders": "registry", "get_encoder": "registry", "parse_spec": "registry",
    "register_encoder": "registry", "EncoderCard": "cards", "encoder_card": "cards", "all_cards": "cards",
}

__all__ = ["DEFAULT_ENCODER", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
