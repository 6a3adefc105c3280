"""Caption images -> encoder embeddings: preparation that keeps magnification, and a disk cache.

Slide patches are read at the encoder's resolution; a caption image has its own, usually unknown,
magnification. :class:`ImagePrep` therefore does not rescale by default:

``crop`` (default)  centre-crop to ``size`` (default: the encoder's input size), padding with white
                    (glass) where the image is smaller, so one image pixel stays one input pixel; with
                    ``scale`` (image µm/px ÷ target µm/px) the image is resampled first, when its
                    magnification is known
``resize``          shorter side to ``size``, then centre crop (the CLIP view: magnification changes)

For the field of view of a slide patch, give ``size`` the slides' patch size (``alkit embed --patch``,
when it differs from the encoder's input size): the encoder then rescales prototypes and patches alike.
A per-image crop box ``(x, y, w, h)`` in image pixels (e.g. around a mitotic figure) is cut out
first, then the mode applies (``resize`` with ``size=64`` gives the paper's 64 × 64 mitosis crops).
Resampling uses area averaging when shrinking and bicubic interpolation when enlarging, like
:meth:`alkit.wsi.slide.Slide.read`. The prepared uint8 ``size`` × ``size`` images then go through the
encoder's own preprocessing, exactly like slide patches.

:class:`ImageEmbedder` embeds database images in batches and keeps the L2-normalised embeddings in an
``.npz`` cache per (encoder, weights, preparation), keyed by each image's path, size, modification
time and crop box, so each image goes through the image tower once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from alkit.atomic import atomic_path
from alkit.captions.database import CaptionDB, CaptionDBError
from alkit.embeddings.encoders import Encoder, l2_normalise
from alkit.wsi.box import Box

log = logging.getLogger(__name__)

PREP_MODES = ("crop", "resize")


def default_cache_dir() -> Path:
    """``$ALKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/alkit``, else ``~/.cache/alkit``; plus ``caption_embeddings``."""
    base = os.environ.get("ALKIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "alkit")
    return Path(base) / "caption_embeddings"


@dataclass(frozen=True)
class ImagePrep:
    """How a caption image becomes an encoder input (module docstring)."""

    mode: str = "crop"
    size: int | None = None
    scale: float = 1.0
    pad_value: int = 255

    def __post_init__(self) -> None:
        if self.mode not in PREP_MODES:
            raise CaptionDBError(f"image preparation {self.mode!r}: use one of {', '.join(PREP_MODES)}")
        if self.size is not None and int(self.size) < 1:
            raise CaptionDBError(f"image preparation size must be positive, got {self.size}")
        if not (self.scale > 0 and np.isfinite(self.scale)):
            raise CaptionDBError(f"image preparation scale must be positive, got {self.scale}")
        if not 0 <= int(self.pad_value) <= 255:
            raise CaptionDBError(f"pad value must be 0..255, got {self.pad_value}")

    def for_encoder(self, encoder: Encoder) -> ImagePrep:
        """This preparation with ``size`` filled in from the encoder's input size."""
        return self if self.size is not None else ImagePrep(self.mode, int(encoder.input_size), self.scale,
                                                            self.pad_value)

    @property
    def key(self) -> str:
        return f"{self.mode}{self.size}-x{self.scale:g}-pad{self.pad_value}"

    def to_dict(self) -> dict:
        return asdict(self)

    def apply(self, image: np.ndarray, box: Box | None = None) -> np.ndarray:
        """uint8 ``(H, W, 3)`` -> uint8 ``(size, size, 3)``."""
        if self.size is None:
            raise ValueError("ImagePrep.size is unset; call for_encoder(encoder) first")
        size = int(self.size)
        if box is not None:
            image = crop_box(image, box, self.pad_value)
        if self.scale != 1.0:
            h, w = image.shape[:2]
            image = _resample(image, max(1, round(w * self.scale)), max(1, round(h * self.scale)))
        if self.mode == "resize":
            h, w = image.shape[:2]
            f = size / min(h, w)
            image = _resample(image, max(size, round(w * f)), max(size, round(h * f)))
        return centre_crop_pad(image, size, self.pad_value)


def _resample(image: np.ndarray, w: int, h: int) -> np.ndarray:
    """Area averaging when shrinking, bicubic when enlarging (PIL, on the whole image)."""
    if (w, h) == (image.shape[1], image.shape[0]):
        return image
    shrink = w * h < image.shape[0] * image.shape[1]
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BOX if shrink else Image.BICUBIC))


def centre_crop_pad(image: np.ndarray, size: int, pad_value: int = 255) -> np.ndarray:
    """The central ``size`` × ``size`` window of ``image``; where the image is smaller, ``pad_value`` around it."""
    h, w = image.shape[:2]
    out = np.full((size, size, 3), pad_value, np.uint8)
    sy, sx = max(0, (h - size) // 2), max(0, (w - size) // 2)   # source offsets (crop)
    dy, dx = max(0, (size - h) // 2), max(0, (size - w) // 2)   # destination offsets (pad)
    ch, cw = min(h, size), min(w, size)
    out[dy:dy + ch, dx:dx + cw] = image[sy:sy + ch, sx:sx + cw, :3]
    return out


def crop_box(image: np.ndarray, box: Box, pad_value: int = 255) -> np.ndarray:
    """``image[y:y+h, x:x+w]``, padded with ``pad_value`` where the box leaves the image."""
    x, y, w, h = (int(round(v)) for v in box)
    if w < 1 or h < 1:
        raise CaptionDBError(f"crop box {tuple(box)} is empty (x, y, w, h with w, h > 0)")
    out = np.full((h, w, 3), pad_value, np.uint8)
    ih, iw = image.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, iw), min(y + h, ih)
    if x1 > x0 and y1 > y0:
        out[y0 - y:y1 - y, x0 - x:x1 - x] = image[y0:y1, x0:x1, :3]
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:80] or "x"


class ImageEmbedder:
    """Embeds database images with one encoder and preparation, through a disk cache.

    ``computed`` and ``from_cache`` count the images that went through the image tower and the ones
    found in the cache, over the embedder's life.
    """

    def __init__(self, encoder: Encoder, prep: ImagePrep = ImagePrep(), *, cache_dir: str | os.PathLike | None = None,
                 use_cache: bool = True, batch_size: int = 32, workers: int = 2, progress: bool = False) -> None:
        self.encoder = encoder
        self.prep = prep.for_encoder(encoder)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.use_cache = use_cache
        self.batch_size = max(1, int(batch_size))
        self.workers = max(1, int(workers))
        self.progress = progress
        self.computed = 0
        self.from_cache = 0
        self._cache: dict[str, np.ndarray] | None = None  # the cache file's entries, read once per embedder

    @property
    def cache_file(self) -> Path:
        name = f"{_slug(self.encoder.name or type(self.encoder).__name__)}__{_slug(self.encoder.weights_id)[:24]}"
        return self.cache_dir / f"{name}__{self.prep.key}.npz"

    def _keys(self, db: CaptionDB, ids: Sequence[str], boxes: Mapping[str, Box]) -> list[str]:
        keys = []
        for i in ids:
            path = db.image_path(i)
            if path is None:
                raise CaptionDBError(f"caption database {db.name}: no image for id {i}")
            try:
                st = path.stat()
            except OSError as exc:
                raise CaptionDBError(f"{path}: cannot read image ({exc})") from exc
            box = tuple(int(round(v)) for v in boxes[i]) if i in boxes else None
            raw = f"{path}|{st.st_size}|{st.st_mtime_ns}|{box}"
            keys.append(hashlib.sha1(raw.encode()).hexdigest())
        return keys

    def _load_cache(self) -> dict[str, np.ndarray]:
        if self._cache is None:
            self._cache = self._read_cache()
        return self._cache

    def _read_cache(self) -> dict[str, np.ndarray]:
        if not (self.use_cache and self.cache_file.is_file()):
            return {}
        try:
            with np.load(self.cache_file, allow_pickle=False) as f:
                keys, emb = f["keys"], f["emb"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            # truncated or corrupt (a crash, a full disk): recomputed and rewritten, never a stop
            log.warning("ignoring unreadable embedding cache %s (%s); recomputing it", self.cache_file, exc)
            return {}
        fits = (emb.ndim == 2 and emb.dtype.kind == "f" and emb.shape[1] == self.encoder.dim and keys.ndim == 1
                and keys.dtype.kind == "U" and len(keys) == len(emb))
        if not fits or not np.isfinite(emb).all():
            log.warning("ignoring embedding cache %s: keys %s %s and embeddings %s do not fit encoder dim %d; "
                        "recomputing it", self.cache_file, keys.dtype, keys.shape, emb.shape, self.encoder.dim)
            return {}
        return dict(zip(keys.tolist(), emb))

    def _save_cache(self, cache: dict[str, np.ndarray]) -> None:
        keys = np.array(list(cache), dtype="<U40")
        emb = np.stack(list(cache.values())).astype(np.float32)
        with atomic_path(self.cache_file) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, keys=keys, emb=emb)

    def prepared(self, db: CaptionDB, ids: Sequence[str], boxes: Mapping[str, Box] | None = None) -> np.ndarray:
        """The prepared uint8 ``(n, size, size, 3)`` images of ``ids``."""
        boxes = boxes or {}

        def one(i: str) -> np.ndarray:
            return self.prep.apply(db.read_image(i), boxes.get(i))

        if len(ids) == 0:
            return np.zeros((0, self.prep.size, self.prep.size, 3), np.uint8)
        with ThreadPoolExecutor(self.workers) as pool:  # PIL decodes outside the GIL
            return np.stack(list(pool.map(one, ids)))

    def embed(self, db: CaptionDB, ids: Sequence[str], boxes: Mapping[str, Box] | None = None) -> np.ndarray:
        """L2-normalised float32 ``(len(ids), dim)`` embeddings of the images of ``ids``."""
        ids = [str(i) for i in ids]
        boxes = {str(k): v for k, v in (boxes or {}).items()}
        keys = self._keys(db, ids, boxes)
        cache = self._load_cache()
        todo = [j for j, k in enumerate(keys) if k not in cache]
        self.from_cache += len(ids) - len(todo)
        if todo:
            log.info("embedding %d caption images with %s (%d from the cache)", len(todo), self.encoder.name,
                     len(ids) - len(todo))
            chunks = range(0, len(todo), self.batch_size)
            if self.progress:
                from tqdm.auto import tqdm
                chunks = tqdm(chunks, desc="caption images", unit="batch", leave=False)
            for start in chunks:
                batch = todo[start:start + self.batch_size]
                images = self.prepared(db, [ids[j] for j in batch], boxes)
                with torch.inference_mode():
                    out = l2_normalise(self.encoder(torch.from_numpy(images))).float().cpu().numpy()
                for j, e in zip(batch, out):
                    cache[keys[j]] = e
                self.computed += len(batch)
            if self.use_cache:
                self._save_cache(cache)
        if not ids:
            return np.zeros((0, self.encoder.dim), np.float32)
        return np.stack([cache[k] for k in keys]).astype(np.float32)
