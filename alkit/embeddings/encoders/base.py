"""The one interface every patch encoder implements, plus helpers the encoders share.

An :class:`Encoder` turns a batch of uint8 RGB patches into one embedding per patch. Preprocessing
(resize, crop, normalise) is part of the encoder and runs on tensors on the encoder's device, so
data loaders only ship raw uint8 patches and the accelerator does the rest.
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from alkit.digests import files_sha256
from alkit.embeddings.encoders.error import EncoderError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_MPP = 0.25

ArrayT = TypeVar("ArrayT", torch.Tensor, np.ndarray)


class Encoder(torch.nn.Module):
    """uint8 RGB patches ``(B, H, W, 3)`` -> float32 embeddings ``(B, dim)``.

    Subclasses set the class attributes below (or assign them in ``__init__``) and implement
    :meth:`encode_images`; image-text models also implement :meth:`encode_text`. The default
    :meth:`preprocess` resizes (antialiased) so the shorter side is ``input_size``, centre-crops to a
    square and normalises with the ``pixel_mean`` / ``pixel_std`` buffers, which suits most networks.
    """

    name: str = ""  # registry spec it was built from; set by get_encoder
    dim: int
    input_size: int
    mpp: float = DEFAULT_MPP
    weights_id: str = "random-init"
    supports_text: bool = False
    interpolation: str = "bilinear"  # "bilinear" | "bicubic" (CLIP models were trained with bicubic)

    def __init__(self, mean: tuple[float, float, float] = (0.0, 0.0, 0.0),
                 std: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> None:
        super().__init__()
        # buffers so that .to(device) moves them and they tell us where the encoder lives
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)

    def set_normalisation(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        """Per-channel mean / std (of [0, 1] RGB) that :meth:`preprocess` normalises with."""
        self.pixel_mean.copy_(torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.pixel_std.copy_(torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, H, W, 3)`` RGB on any device -> float ``(B, 3, S, S)`` normalised network input."""
        x = check_uint8_batch(images).to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        x = resize_center_crop(x, self.input_size, self.interpolation)
        return ((x - self.pixel_mean) / self.pixel_std).contiguous()

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed ``(B, 3, S, S)`` -> ``(B, dim)`` float32 embeddings (not normalised)."""
        raise NotImplementedError

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """``(n, dim)`` text embeddings in the image space; only image-text encoders have them."""
        raise NotImplementedError(
            f"encoder {self.name or type(self).__name__!r} is image-only and cannot embed text; use an "
            "image-text encoder (e.g. 'plip' or 'open_clip:hf-hub:wisdomik/QuiltNet-B-32') for text prompts, "
            "or build prototypes from example images instead")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, H, W, 3)`` patches -> ``(B, dim)`` float32 embeddings."""
        if check_uint8_batch(images).shape[0] == 0:  # an empty batch (e.g. a slide without tissue)
            return torch.zeros(0, self.dim, dtype=torch.float32, device=self.device)
        return self.encode_images(self.preprocess(images))

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, dim={getattr(self, 'dim', '?')}, input_size={getattr(self, 'input_size', '?')}, "
                f"mpp={self.mpp}, weights_id={self.weights_id!r}, supports_text={self.supports_text}")


def l2_normalise(x: ArrayT, eps: float = 1e-12) -> ArrayT:
    """Rows of ``x`` scaled to unit L2 norm (all-zero rows stay zero); torch tensors or numpy arrays."""
    if isinstance(x, torch.Tensor):
        return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)
    x = np.asarray(x)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def check_uint8_batch(images: torch.Tensor) -> torch.Tensor:
    """Raises a clear ``ValueError`` unless ``images`` is a uint8 ``(B, H, W, 3)`` tensor."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"encoders take a torch.Tensor of uint8 RGB patches (B, H, W, 3), got {type(images).__name__}")
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError("encoders take uint8 RGB patches shaped (B, H, W, 3), "
                         f"got dtype {images.dtype} and shape {tuple(images.shape)}")
    return images


def resize_center_crop(x: torch.Tensor, size: int, interpolation: str = "bilinear") -> torch.Tensor:
    """Float ``(B, C, H, W)`` in [0, 1] -> ``(B, C, size, size)``: shorter side to ``size``, centre crop.

    Antialiased, like PIL / torchvision resizing; bicubic overshoot is clipped back into [0, 1].
    """
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        scale = size / min(h, w)
        new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
        x = F.interpolate(x, size=(new_h, new_w), mode=interpolation, antialias=True, align_corners=False)
        if interpolation == "bicubic":
            x = x.clamp_(0.0, 1.0)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        x = x[..., top:top + size, left:left + size]
    return x


def file_weights_id(*paths: Path) -> str:
    """First 16 hex digits of the sha256 of the given files' bytes (in order): a stable weights id."""
    return files_sha256(*paths)[:16]


def safe_torch_load(path: Path) -> object:
    """``torch.load(path, weights_only=True)`` with errors a user can act on.

    ``weights_only=True`` refuses to unpickle arbitrary Python objects (unpickling can run code), so a
    checkpoint that stores e.g. custom classes is rejected with instructions for re-saving it.
    ``argparse.Namespace`` (plain hyper-parameter bags found in old Lightning checkpoints) is allowed.
    """
    import argparse

    path = Path(path).expanduser()
    if not path.is_file():
        raise EncoderError(f"checkpoint {path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise EncoderError(f"checkpoint {path}: not a readable safetensors file ({exc})") from exc
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()
        detail = next((line for line in reason if "GLOBAL" in line or "Unsupported" in line), reason[0] if reason else "")
        raise EncoderError(
            f"checkpoint {path}: holds pickled non-tensor Python objects ({detail.strip()}), which alkit will not "
            "unpickle because that can run arbitrary code (torch.load weights_only=True). If you trust the file, "
            "re-save its weights as a plain state dict once, e.g. "
            "`ck = torch.load(PATH, weights_only=False); torch.save(ck.get('state_dict', ck), 'weights.pt')`, "
            "and pass weights.pt") from exc
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise EncoderError(f"checkpoint {path}: not a readable torch checkpoint ({exc})") from exc


def unwrap_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """The tensor mapping inside a loaded checkpoint: the object itself, or its ``state_dict`` /
    ``model_state_dict`` / ``model`` entry (Lightning and common training-script layouts)."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return dict(inner)
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) == len(obj):
            return dict(tensors)
        keys = ", ".join(map(str, list(obj)[:8]))
        raise EncoderError(f"checkpoint {path}: found no state dict in it (top-level keys: {keys})")
    raise EncoderError(f"checkpoint {path}: expected a dict of tensors, found a {type(obj).__name__}")


def strip_common_prefix(state: Mapping[str, torch.Tensor], target_keys: set[str]) -> tuple[str, dict[str, torch.Tensor]]:
    """Find the key prefix (``"model.resnet."``, ``"module."``, ``""`` ...) under which ``state`` holds the
    most of ``target_keys``; return it and the entries under it with the prefix removed."""
    counts: dict[str, int] = {}
    for key in state:
        parts = key.split(".")
        for i in range(len(parts)):
            if ".".join(parts[i:]) in target_keys:
                prefix = ".".join(parts[:i]) + ("." if i else "")
                counts[prefix] = counts.get(prefix, 0) + 1
    if not counts:
        return "", {}
    prefix = max(counts, key=lambda p: (counts[p], -len(p)))
    return prefix, {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


@contextlib.contextmanager
def seeded_init(seed: int = 0) -> Iterator[None]:
    """Random initialisation inside this block is the same on every run (the global CPU RNG is restored after)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
