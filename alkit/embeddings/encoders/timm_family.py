"""timm image encoders: ``timm:ARCH[@TAG|@PATH]``, ``timm:hf-hub:ORG/NAME`` and the timm-backed foundation models.

The network is always built from its architecture config with ``timm.create_model(ARCH, pretrained=False,
num_classes=0, **kwargs)`` and the weights are loaded by alkit from a local file or the Hugging Face hub
cache (:mod:`alkit.embeddings.encoders.hub`): safetensors, or ``torch.load(weights_only=True)``, strictly.

- ``timm:ARCH``: seeded random weights (plumbing only; a warning says so).
- ``timm:ARCH@TAG``: timm's pretrained tag, e.g. ``timm:vit_small_patch16_224@augreg_in21k``; its hub
  repository comes from timm's pretrained config.
- ``timm:ARCH@PATH``: a local state dict (``.safetensors`` preferred).
- ``timm:hf-hub:ORG/NAME``: a hub repository in timm's layout (``config.json`` with ``architecture`` and
  ``model_args``, plus ``model.safetensors`` or ``pytorch_model.bin``).

Preprocessing follows timm's pretrained config (input size, mean / std, interpolation, ``crop_pct``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from alkit.embeddings.encoders.base import (DEFAULT_MPP, Encoder, EncoderError, check_uint8_batch, file_weights_id,
                                            resize_center_crop, safe_torch_load, seeded_init, unwrap_state_dict)
from alkit.embeddings.encoders.cards import TIMM_WEIGHT_FILES
from alkit.embeddings.encoders.hub import local_weights, resolve_hub_files
from alkit.embeddings.encoders.registry import register_encoder

log = logging.getLogger(__name__)

POOLINGS = ("head", "cls+mean")


def resolve_layers(kwargs: dict) -> dict:
    """Card keyword arguments with layer names (``"swiglu_packed"``, ``"silu"``) replaced by the classes."""
    import timm.layers

    names = {"swiglu_packed": timm.layers.SwiGLUPacked, "swiglu": timm.layers.SwiGLU, "silu": torch.nn.SiLU,
             "gelu": torch.nn.GELU}
    names.update({"timm.layers.SwiGLUPacked": names["swiglu_packed"], "timm.layers.SwiGLU": names["swiglu"],
                  "torch.nn.SiLU": names["silu"], "torch.nn.GELU": names["gelu"]})  # as hub configs spell them
    out = dict(kwargs)
    for key in ("mlp_layer", "act_layer"):
        if isinstance(out.get(key), str):
            if out[key] not in names:
                raise EncoderError(f"unknown timm layer name {out[key]!r} for {key}")
            out[key] = names[out[key]]
    return out


def load_weights(model: torch.nn.Module, path: Path, spec: str) -> None:
    """Load ``path`` into ``model`` strictly (a ``module.`` / ``model.`` wrapper prefix is removed)."""
    state = unwrap_state_dict(safe_torch_load(path), path)
    expected = model.state_dict()
    for prefix in ("module.", "model.", "backbone."):
        if not (set(state) & set(expected)) and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("head.") or k in expected}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} of another shape (e.g. {'; '.join(shapes[:2])})")
        raise EncoderError(f"encoder {spec!r}: weights {path} do not fit the architecture: {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)


class TimmEncoder(Encoder):
    """A head-less timm model; ``pooling="cls+mean"`` concatenates the class token with the mean of the
    patch tokens (all prefix tokens, i.e. class and register tokens, excluded), as Virchow's authors do."""

    def __init__(self, arch: str, kwargs: dict, *, weights: Path | None, weights_id: str, spec: str,
                 mean: tuple[float, ...], std: tuple[float, ...], input_size: int, resize_size: int | None = None,
                 interpolation: str = "bilinear", pooling: str = "head", mpp: float = DEFAULT_MPP) -> None:
        super().__init__(tuple(mean), tuple(std))
        import timm

        if pooling not in POOLINGS:
            raise EncoderError(f"encoder {spec!r}: unknown pooling {pooling!r} (one of {', '.join(POOLINGS)})")
        if arch not in timm.list_models():
            import difflib
            close = difflib.get_close_matches(arch, timm.list_models(), n=3)
            raise EncoderError(f"encoder {spec!r}: unknown timm architecture {arch!r}"
                               + (f" (close: {', '.join(close)})" if close else ""))
        kwargs = resolve_layers({"num_classes": 0, **kwargs})
        try:
            with seeded_init(0):
                model = timm.create_model(arch, pretrained=False, **kwargs)
        except (TypeError, ValueError, RuntimeError, AssertionError) as exc:
            raise EncoderError(f"encoder {spec!r}: timm cannot build {arch} with {kwargs} ({exc})") from exc
        if weights is not None:
            load_weights(model, weights, spec)
        elif weights_id == "random-init":
            log.warning("%s with random weights: its features are meaningless", spec)
        self.model = model
        self.pooling = pooling
        self.input_size = int(input_size)
        self.resize_size = int(resize_size or input_size)
        self.interpolation = interpolation
        self.mpp = float(mpp)
        self.weights_id = weights_id
        width = int(model.num_features)
        self.dim = 2 * width if pooling == "cls+mean" else width

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Shorter side to ``resize_size`` (e.g. 256 for Prov-GigaPath), centre crop ``input_size``, normalise."""
        x = check_uint8_batch(images).to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        x = resize_center_crop(x, self.resize_size, self.interpolation)
        if self.resize_size != self.input_size:
            top = (x.shape[-2] - self.input_size) // 2
            left = (x.shape[-1] - self.input_size) // 2
            x = x[..., top:top + self.input_size, left:left + self.input_size]
        return ((x - self.pixel_mean) / self.pixel_std).contiguous()

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        if self.pooling == "head":
            return self.model(images).float()
        tokens = self.model.forward_features(images)  # (B, prefix + patches, C), final norm applied
        prefix = int(getattr(self.model, "num_prefix_tokens", 1))
        return torch.cat([tokens[:, 0], tokens[:, prefix:].mean(dim=1)], dim=-1).float()


def _preprocessing_of(pretrained_cfg: dict) -> dict:
    """Mean / std / sizes / interpolation of a timm pretrained config."""
    size = pretrained_cfg.get("input_size", (3, 224, 224))[-1]
    crop_pct = float(pretrained_cfg.get("crop_pct") or 1.0)
    interpolation = "bicubic" if pretrained_cfg.get("interpolation", "bicubic") == "bicubic" else "bilinear"
    return {"mean": tuple(pretrained_cfg.get("mean", (0.485, 0.456, 0.406))),
            "std": tuple(pretrained_cfg.get("std", (0.229, 0.224, 0.225))), "input_size": int(size),
            "resize_size": int(size / crop_pct) if crop_pct < 1 else int(size), "interpolation": interpolation}


def build_timm_spec(arg: str) -> TimmEncoder:
    """The encoder of ``timm:ARG`` (module docstring)."""
    spec = f"timm:{arg}"
    if arg.startswith("hf-hub:"):
        repo = arg[len("hf-hub:"):]
        files = resolve_hub_files(repo, ("config.json", "|".join(TIMM_WEIGHT_FILES)), spec_name=spec,
                                  local_hint="timm:ARCH@/path/to/weights.safetensors")
        try:
            config = json.loads(files.paths[0].read_text())
            arch = config["architecture"]
        except (OSError, ValueError, KeyError) as exc:
            raise EncoderError(f"encoder {spec!r}: {files.paths[0]} is not a timm config.json ({exc})") from exc
        kwargs = dict(config.get("model_args", {}))
        prep = _preprocessing_of(config.get("pretrained_cfg", {}))
        return TimmEncoder(arch, kwargs, weights=files.paths[1], weights_id=files.weights_id, spec=spec, **prep)
    arch, _, weights = arg.partition("@")
    import timm

    tag_cfg = None
    if weights and not _is_path(weights):
        try:
            tag_cfg = timm.models.get_pretrained_cfg(f"{arch}.{weights}")
        except Exception:  # timm raises RuntimeError for unknown names
            tag_cfg = None
        if tag_cfg is None:
            tags = [m.split(".", 1)[1] for m in timm.list_pretrained(f"{arch}.*")]
            raise EncoderError(f"encoder {spec!r}: {weights!r} is neither a pretrained tag of {arch} "
                               f"({', '.join(tags[:8]) or 'none known'}) nor a weights file")
    base_cfg = tag_cfg.to_dict() if tag_cfg is not None else _default_cfg(arch, spec)
    prep = _preprocessing_of(base_cfg)
    if tag_cfg is not None:
        if not tag_cfg.hf_hub_id:
            raise EncoderError(f"encoder {spec!r}: timm has no hub repository for this tag; download the weights "
                               f"and pass them as timm:{arch}@/path/to/weights.safetensors")
        files = resolve_hub_files(tag_cfg.hf_hub_id, ("|".join(TIMM_WEIGHT_FILES),), spec_name=spec,
                                  local_hint=f"timm:{arch}@/path/to/weights.safetensors")
        return TimmEncoder(arch, {}, weights=files.paths[0], weights_id=files.weights_id, spec=spec, **prep)
    if weights:
        path = local_weights(spec.split("@")[0], weights)
        return TimmEncoder(arch, {}, weights=path, weights_id=file_weights_id(path), spec=spec, **prep)
    return TimmEncoder(arch, {}, weights=None, weights_id="random-init", spec=spec, **prep)


def _is_path(weights: str) -> bool:
    return "/" in weights or "\\" in weights or weights.endswith((".safetensors", ".bin", ".pt", ".pth")) \
        or Path(weights).expanduser().exists()


def _default_cfg(arch: str, spec: str) -> dict:
    import timm

    if arch not in timm.list_models():
        import difflib
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        raise EncoderError(f"encoder {spec!r}: unknown timm architecture {arch!r}"
                           + (f" (close: {', '.join(close)})" if close else ""))
    try:
        cfg = timm.models.get_pretrained_cfg(arch)
    except Exception:  # an architecture without any pretrained config
        cfg = None
    return cfg.to_dict() if cfg is not None else {}


@register_encoder("timm", family=True)
def build_timm(arg: str | None) -> Encoder:
    if not arg:
        raise EncoderError("timm needs an architecture: timm:ARCH[@TAG|@PATH] or timm:hf-hub:ORG/NAME")
    return build_timm_spec(arg)
