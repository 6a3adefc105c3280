"""PLIP (Huang et al., Nature Medicine 2023): OpenAI CLIP ViT-B/32 fine-tuned on pathology image-text pairs.

PLIP is published as a Hugging Face ``transformers`` ``CLIPModel`` (``vinid/plip``: ``config.json`` +
``pytorch_model.bin`` + tokenizer files). OpenCLIP cannot load it: the repository has no
``open_clip_config.json`` and OpenCLIP does not convert ``transformers`` CLIP key names. So this
encoder uses ``transformers``, an optional extra (``pip install 'alkit[plip]'``), imported lazily.

- ``plip``: the hub model ``vinid/plip`` (downloaded once; works offline from the HF cache).
- ``plip@DIR``: a local folder as written by ``CLIPModel.save_pretrained`` (or a hub snapshot);
  ``plip@ORG/NAME`` another hub repository holding a ``CLIPModel``.

Weights load with ``weights_only=True`` (safetensors preferred by ``transformers``). Image features
are ``get_image_features`` (projected, 512-d for PLIP); text features ``get_text_features``. Text is
tokenised by the folder's own ``CLIPTokenizer`` when it has one; otherwise by OpenCLIP's bundled
OpenAI CLIP BPE tokenizer (PLIP kept CLIP's vocabulary, so both give the same token ids).
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from pathlib import Path

import torch

from alkit.embeddings.encoders.base import DEFAULT_MPP, Encoder, EncoderError, file_weights_id
from alkit.embeddings.encoders.registry import register_encoder

log = logging.getLogger(__name__)

PLIP_HUB_ID = "vinid/plip"
CLIP_VOCAB_SIZE = 49408
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
INSTALL_HINT = "pip install 'alkit[plip]'"
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json")


def _import_transformers():
    try:
        import transformers
    except ImportError as exc:
        raise EncoderError(f"plip needs the optional package 'transformers': {INSTALL_HINT}") from exc
    return transformers


class PLIPEncoder(Encoder):
    """A ``transformers`` ``CLIPModel``'s projected image and text embeddings."""

    supports_text = True
    interpolation = "bicubic"
    mpp = DEFAULT_MPP

    def __init__(self, weights: str | None = None) -> None:
        super().__init__(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
        transformers = _import_transformers()
        source = (weights or PLIP_HUB_ID).strip()
        local = Path(source).expanduser()
        is_local = local.is_dir()
        if not is_local and (not _HUB_ID.match(source) or local.exists()):
            what = f"{local} is not a folder" if local.exists() else f"no such model folder {local}"
            raise EncoderError(f"plip@{source}: {what} (expected a folder written by "
                               "CLIPModel.save_pretrained, or a hub id such as vinid/plip)")
        where = str(local) if is_local else source
        try:
            model, info = transformers.CLIPModel.from_pretrained(
                where, local_files_only=is_local, weights_only=True, output_loading_info=True)
        except OSError as exc:
            hint = ("" if is_local else " (is the machine offline? HF_HUB_OFFLINE=1 allows only models already in "
                    "the Hugging Face cache; download once online or pass a local folder as plip@DIR)")
            raise EncoderError(f"plip@{source}: could not load a CLIPModel from {where}{hint}: {exc}") from exc
        except pickle.UnpicklingError as exc:
            first = next((ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln or "Unsupported" in ln), "")
            first = first.split(" was not an allowed")[0]
            raise EncoderError(f"plip@{source}: the weights in {where} hold pickled Python objects ({first[:160]}), "
                               "which alkit will not unpickle (that can run code); use a folder with "
                               "model.safetensors (CLIPModel.save_pretrained writes one)") from None
        except (ValueError, RuntimeError, KeyError, TypeError, AttributeError, EOFError) as exc:
            detail = " ".join(str(exc).split())[:200]
            raise EncoderError(f"plip@{source}: {where} does not hold a loadable CLIPModel "
                               f"({type(exc).__name__}: {detail})") from None
        missing = list(info.get("missing_keys", []))
        if missing:
            raise EncoderError(f"plip@{source}: {where} is not a complete CLIPModel checkpoint; "
                               f"{len(missing)} weights missing (e.g. {', '.join(missing[:4])})")
        self.model = model
        self.dim = int(model.config.projection_dim)
        self.context_length = int(model.config.text_config.max_position_embeddings)
        self._configure_preprocessing(where, is_local, model)
        self.hf_tokenizer = self._load_tokenizer(transformers, where, is_local)
        if self.hf_tokenizer is None:
            if model.config.text_config.vocab_size != CLIP_VOCAB_SIZE:
                raise EncoderError(f"plip@{source}: {where} has no tokenizer files and its vocabulary "
                                   f"({model.config.text_config.vocab_size} tokens) is not CLIP's; cannot embed text")
            import open_clip
            self.clip_tokenizer = open_clip.SimpleTokenizer(context_length=self.context_length)
            log.info("plip@%s: no tokenizer files; using OpenCLIP's bundled CLIP BPE tokenizer", source)
        if is_local:
            files = [f for f in sorted(local.glob("*.safetensors")) or sorted(local.glob("pytorch_model*.bin"))
                     if not f.name.startswith(".")]  # not hidden side / temporary files
            self.weights_id = file_weights_id(*files) if files else f"dir:{local.resolve()}"
        else:
            commit = getattr(model.config, "_commit_hash", None)
            self.weights_id = f"hf:{source}" + (f"@{commit[:12]}" if commit else "")

    def _configure_preprocessing(self, where: str, is_local: bool, model: torch.nn.Module) -> None:
        """Mean / std / crop size / resampling from ``preprocessor_config.json`` when there is one."""
        cfg: dict = {}
        try:
            if is_local:
                path = Path(where) / "preprocessor_config.json"
            else:
                from huggingface_hub import hf_hub_download
                path = Path(hf_hub_download(where, "preprocessor_config.json"))
            if path.is_file():
                cfg = json.loads(path.read_text())
        except Exception as exc:  # absent on the hub or offline: fall back to CLIP's constants
            log.info("plip: no preprocessor_config.json for %s (%s); using OpenAI CLIP constants", where, exc)
        size = cfg.get("crop_size", model.config.vision_config.image_size)
        if isinstance(size, dict):
            size = size.get("height", size.get("width"))
        shortest = cfg.get("size", size)
        if isinstance(shortest, dict):
            shortest = shortest.get("shortest_edge", size)
        if shortest != size:
            log.warning("plip: processor resizes to %s then crops %s; alkit resizes straight to %s", shortest, size, size)
        self.input_size = int(size)
        self.interpolation = "bilinear" if cfg.get("resample", 3) == 2 else "bicubic"
        self.set_normalisation(tuple(cfg.get("image_mean", OPENAI_CLIP_MEAN)), tuple(cfg.get("image_std", OPENAI_CLIP_STD)))

    @staticmethod
    def _load_tokenizer(transformers, where: str, is_local: bool):
        if is_local and not any((Path(where) / f).is_file() for f in _TOKENIZER_FILES):
            return None
        try:
            return transformers.CLIPTokenizer.from_pretrained(where, local_files_only=is_local)
        except Exception as exc:  # hub repo without tokenizer files, or offline
            log.info("plip: no CLIPTokenizer for %s (%s)", where, exc)
            return None

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model.get_image_features(pixel_values=images)
        return (out if isinstance(out, torch.Tensor) else out.pooler_output).float()

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask ``(n, L)`` for ``texts`` (truncated to the context length).

        Texts are first cleaned as OpenAI's CLIP tokenizer does (ftfy, HTML entities, whitespace), so
        both tokenizers give the same ids (without it, curly quotes and entities would differ).
        """
        if self.hf_tokenizer is not None:
            enc = self.hf_tokenizer([clean_text(t) for t in texts], padding=True, truncation=True,
                                    max_length=self.context_length, return_tensors="pt")
            return enc["input_ids"], enc["attention_mask"]
        ids = self.clip_tokenizer(list(texts))
        eot = (ids == self.clip_tokenizer.eot_token_id).int().argmax(dim=1, keepdim=True)
        mask = (torch.arange(ids.shape[1]).unsqueeze(0) <= eot).long()
        return ids, mask

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        ids, mask = self.tokenize(texts)
        out = self.model.get_text_features(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
        return (out if isinstance(out, torch.Tensor) else out.pooler_output).float()


def clean_text(text: str) -> str:
    """OpenAI CLIP's text cleaning: ftfy's fixes, HTML entities unescaped (twice), whitespace collapsed."""
    import html

    import ftfy
    return " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).split())


@register_encoder("plip")
def build_plip(weights: str | None) -> Encoder:
    return PLIPEncoder(weights)
