"""OpenCLIP image-text models (``open_clip:ARCH[@WEIGHTS]`` or ``open_clip:hf-hub:ORG/NAME``).

``WEIGHTS`` is an OpenCLIP pretrained tag (``laion2b_s34b_b79k``, downloaded by OpenCLIP), a local
checkpoint file (e.g. QuiltNet's ``open_clip_pytorch_model.bin``), or absent for a (seeded) random
initialisation; a local checkpoint needs the architecture it was trained with (``ViT-B-32-quickgelu``
for OpenAI-initialised models trained with QuickGELU). ``hf-hub:ORG/NAME`` takes architecture and weights from the hub repository's
``open_clip_config.json``; ``local-dir:DIR`` does the same for a folder laid out like such a repository.

Weights go through OpenCLIP's own loader with ``weights_only=True`` (OpenCLIP 3.x calls
``torch.load(..., weights_only=True)``, or safetensors for ``.safetensors`` files). Preprocessing uses
the model's own constants (mean / std / image size / interpolation) but runs on tensors.
The tokenizer's BPE vocabulary ships inside the open_clip package, so text works offline.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import torch

from alkit.embeddings.encoders.base import Encoder, EncoderError, file_weights_id, seeded_init
from alkit.embeddings.encoders.registry import register_encoder

log = logging.getLogger(__name__)

SCHEMAS = ("hf-hub:", "local-dir:")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


def _looks_like_path(weights: str) -> bool:
    return "/" in weights or "\\" in weights or weights.endswith(CHECKPOINT_SUFFIXES) or Path(weights).exists()


class OpenCLIPEncoder(Encoder):
    """An OpenCLIP model's image and text towers; embeddings before L2 normalisation."""

    supports_text = True
    interpolation = "bicubic"

    def __init__(self, arg: str) -> None:
        super().__init__()
        import open_clip

        quick_gelu = False
        if arg.startswith(SCHEMAS):
            model_name, pretrained = arg, None
            self.weights_id = arg
        else:
            model_name, _, pretrained = arg.partition("@")
            pretrained = pretrained or None
            if model_name not in open_clip.list_models():
                import difflib
                close = difflib.get_close_matches(model_name, open_clip.list_models(), n=5)
                raise EncoderError(f"open_clip:{arg}: unknown OpenCLIP architecture {model_name!r}"
                                   + (f" (close: {', '.join(close)})" if close else ""))
            if pretrained is None:
                log.warning("open_clip:%s with random weights: its features are meaningless", model_name)
                self.weights_id = "random-init"
            elif pretrained in open_clip.list_pretrained_tags_by_model(model_name):
                self.weights_id = f"open_clip:{model_name}@{pretrained}"
                # e.g. ViT-B-32@openai was trained with QuickGELU; the plain config would silently differ
                quick_gelu = bool(open_clip.get_pretrained_cfg(model_name, pretrained).get("quick_gelu", False))
            elif _looks_like_path(pretrained):
                path = Path(pretrained).expanduser()
                if not path.is_file():
                    raise EncoderError(f"open_clip:{arg}: no such checkpoint file {path}")
                pretrained = str(path)
                self.weights_id = file_weights_id(path)
            else:
                tags = open_clip.list_pretrained_tags_by_model(model_name)
                raise EncoderError(f"open_clip:{arg}: {pretrained!r} is neither a pretrained tag of {model_name} "
                                   f"({', '.join(tags) or 'none known'}) nor a checkpoint file")
        try:
            with seeded_init(0):
                model = open_clip.create_model(model_name, pretrained=pretrained, weights_only=True,
                                               force_quick_gelu=quick_gelu)
            tokenizer = open_clip.get_tokenizer(model_name)
        except pickle.UnpicklingError as exc:
            raise EncoderError(
                f"open_clip:{arg}: the checkpoint holds pickled non-tensor Python objects, which alkit will not "
                "unpickle (weights_only=True); re-save it as a plain state dict (torch.save(model.state_dict(), "
                f"'weights.pt')) and pass that file ({exc})") from exc
        except EncoderError:
            raise
        except Exception as exc:  # open_clip raises RuntimeError / ValueError / hub errors
            raise EncoderError(f"open_clip:{arg}: could not build the model ({type(exc).__name__}: {exc})") from exc

        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg.get("size", 224)
        if isinstance(size, (tuple, list)):
            if len(set(size)) != 1:
                raise EncoderError(f"open_clip:{arg}: non-square input size {tuple(size)} is not supported")
            size = size[0]
        self.set_normalisation(tuple(cfg["mean"]), tuple(cfg["std"]))
        self.input_size = int(size)
        self.interpolation = "bicubic" if cfg.get("interpolation", "bicubic") == "bicubic" else "bilinear"
        self.model = model
        self.tokenizer = tokenizer
        self.dim = int(self._embed_dim(model))

    @staticmethod
    def _embed_dim(model: torch.nn.Module) -> int:
        visual = model.visual
        out = getattr(visual, "output_dim", None)
        if out:
            return out
        with torch.no_grad():  # rare towers without output_dim: measure it
            size = visual.image_size if isinstance(visual.image_size, int) else visual.image_size[0]
            return model.encode_image(torch.zeros(1, 3, size, size)).shape[-1]

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images).float()

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        tokens = self.tokenizer(list(texts)).to(self.device)
        return self.model.encode_text(tokens).float()


@register_encoder("open_clip", family=True)
def build_open_clip(arg: str | None) -> Encoder:
    if not arg:
        raise EncoderError("open_clip needs an architecture: open_clip:ViT-B-32@laion2b_s34b_b79k, "
                           "open_clip:ViT-B-32@/path/weights.pt or open_clip:hf-hub:ORG/NAME")
    return OpenCLIPEncoder(arg)
