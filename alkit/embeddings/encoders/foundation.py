"""Pathology foundation models by short name (``uni``, ``virchow2``, ``h-optimus-0``, ``conch``, ``quiltnet`` …).

Each name's card (:mod:`alkit.embeddings.encoders.cards`) fixes the architecture, preprocessing, output
handling and hub repository. ``NAME`` takes the weights from the Hugging Face hub cache (downloaded once
when online; gated models need a login and the licence accepted), ``NAME@PATH`` from a local file
(timm models, CONCH) or folder (transformers and OpenCLIP models). The weights are found before
anything heavy is imported, so a missing file fails in one line
(:func:`alkit.embeddings.encoders.hub.resolve_weights`).

Loaders by family: ``timm`` (:class:`~alkit.embeddings.encoders.timm_family.TimmEncoder`), ``transformers``
(``AutoModel``, class token of the last hidden state: Phikon, Phikon-v2), ``open_clip`` (a folder in
OpenCLIP's hub layout: QuiltNet) and ``conch`` (the CONCH package's CoCa model, image and text towers).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import torch

from alkit.embeddings.encoders.base import Encoder, EncoderError, safe_torch_load, unwrap_state_dict
from alkit.embeddings.encoders.cards import EncoderCard, all_cards, encoder_card
from alkit.embeddings.encoders.hub import resolve_weights
from alkit.embeddings.encoders.registry import register_encoder

log = logging.getLogger(__name__)

LOADED_FAMILIES = ("timm", "transformers", "open_clip", "conch")
CONCH_INSTALL = "pip install git+https://github.com/Mahmoodlab/CONCH.git"
CONCH_CONFIG = "conch_ViT-B-16"


def build_foundation(name: str, weights: str | None = None, *, arch_overrides: dict | None = None) -> Encoder:
    """The encoder a short name's card describes, with weights from ``weights`` (a local path) or the hub cache.

    ``arch_overrides`` changes timm architecture arguments (e.g. ``depth`` / ``embed_dim`` of a smaller
    variant trained with the same recipe); the dimension then follows the built model.
    """
    card = encoder_card(name)
    spec = name if weights is None else f"{name}@{weights}"
    if card.family == "conch":
        _require_conch(spec)
    path, weights_id = resolve_weights(card, weights)  # before timm / transformers / open_clip are imported
    if card.family == "timm":
        from alkit.embeddings.encoders.timm_family import TimmEncoder

        encoder: Encoder = TimmEncoder(
            card.arch, {**card.kwargs, **(arch_overrides or {})}, weights=path, weights_id=weights_id, spec=spec,
            mean=card.mean, std=card.std, input_size=card.input_size, resize_size=card.resize_size,
            interpolation=card.interpolation, pooling=card.pooling, mpp=card.mpp)
    elif arch_overrides:
        raise EncoderError(f"encoder {spec!r}: architecture overrides apply to timm models only")
    elif card.family == "transformers":
        encoder = HFVisionEncoder(path, card, spec)
    elif card.family == "open_clip":
        from alkit.embeddings.encoders.openclip import OpenCLIPEncoder

        encoder = OpenCLIPEncoder(f"local-dir:{path}")
        encoder.mpp = card.mpp
    else:
        encoder = CONCHEncoder(path, card, spec)
    encoder.weights_id = weights_id
    return encoder


class HFVisionEncoder(Encoder):
    """A ``transformers`` vision backbone (ViT / DINOv2): the class token of the last hidden state."""

    def __init__(self, folder: Path, card: EncoderCard, spec: str) -> None:
        super().__init__(card.mean, card.std)
        try:
            import transformers
        except ImportError as exc:
            raise EncoderError(f"encoder {spec!r} needs the optional package 'transformers': "
                               "pip install 'alkit[plip]'") from exc
        try:
            model = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True)
        except Exception as exc:  # OSError, ValueError, unpickling refusals ...
            raise EncoderError(f"encoder {spec!r}: {folder} does not hold a loadable transformers model "
                               f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
        self.model = model
        self.dim = int(model.config.hidden_size)
        self.input_size = int(card.input_size)
        self.mpp = card.mpp
        self.interpolation = card.interpolation

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=images).last_hidden_state[:, 0].float()


def _require_conch(spec: str) -> None:
    if importlib.util.find_spec("conch") is None:
        raise EncoderError(f"encoder {spec!r} needs the CONCH package (its CoCa model code is not in OpenCLIP): "
                           f"{CONCH_INSTALL}")


class CONCHEncoder(Encoder):
    """CONCH v1 (Lu et al., Nature Medicine 2024) through the CONCH package: the contrastive image
    embedding (``encode_image(proj_contrast=True)``, 512-d, the space its text tower embeds prompts in).

    Not exercised by alkit's tests (the CONCH package is not on PyPI); the weights load with
    ``weights_only=True`` and strictly apart from the caption decoder's buffers.
    """

    supports_text = True

    def __init__(self, path: Path, card: EncoderCard, spec: str) -> None:
        super().__init__(card.mean, card.std)
        from conch.open_clip_custom import get_tokenizer
        from conch.open_clip_custom.coca_model import CoCa
        from conch.open_clip_custom.factory import CFG_DIR

        cfg = json.loads((Path(CFG_DIR) / f"{CONCH_CONFIG}.json").read_text())
        cfg.pop("custom_text", None)
        model = CoCa(**cfg)
        state = unwrap_state_dict(safe_torch_load(path), path)
        missing, _ = model.load_state_dict(state, strict=False)
        if missing:
            raise EncoderError(f"encoder {spec!r}: {path} is not a CONCH checkpoint ({len(missing)} weights missing, "
                               f"e.g. {', '.join(missing[:3])})")
        self.model = model
        self.tokenizer = get_tokenizer()
        self.dim = int(card.dim)
        self.input_size = int(card.input_size)
        self.mpp = card.mpp
        self.interpolation = card.interpolation

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images, proj_contrast=True, normalize=False).float()

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        from conch.open_clip_custom import tokenize

        tokens = tokenize(self.tokenizer, [texts] if isinstance(texts, str) else list(texts))
        return self.model.encode_text(tokens.to(self.device), normalize=False).float()


def _factory(name: str):
    def build(weights: str | None) -> Encoder:
        return build_foundation(name, weights)

    build.__qualname__ = f"build_{name.replace('-', '_')}"
    return build


for _card in all_cards():
    if _card.family in LOADED_FAMILIES and _card.hub_repo and _card.name != "plip":
        for _name in (_card.name, *_card.aliases):
            register_encoder(_name)(_factory(_name))
