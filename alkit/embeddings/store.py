"""Per-slide embedding stores: one HDF5 file per (slide, encoder, mpp, patch size, stride).

A store holds the grid cells that were embedded (``coords``: row, col), their ``features``
(n, C) and attributes that say exactly how they were made (encoder spec and weights id, mpp, patch,
stride, the slide's geometry, the tissue threshold, the alkit version). Files are written to a
temporary name and renamed, so a store on disk is always complete: an interrupted run leaves no
half-written store, and the next run recomputes only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from alkit import __version__
from alkit.atomic import atomic_path
from alkit.errors import AlkitError
from alkit.ids import safe_name, check_id
from alkit.wsi.grid import PatchGrid

FORMAT_VERSION = 2  # 2: tissue fraction of every cell
#: attributes that must match for a store to be reused
#: (``slide_content_id``: the slide's pixels, :attr:`alkit.wsi.slide.Slide.content_id`, so a different slide
#: under the same name, or a rescan, is embedded again)
KEY_ATTRS = ("encoder", "weights_id", "mpp", "patch", "stride", "min_tissue", "slide_dimensions", "slide_mpp",
             "slide_content_id")


class StoreError(AlkitError, ValueError):
    """A store file is missing, unreadable or not an alkit embedding store; names the file."""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def store_path(out_dir: str | os.PathLike, slide_id: str, encoder: str, mpp: float, patch: int,
               stride: int) -> Path:
    """Where the store of one (slide, encoder, mpp, patch, stride) lives under ``out_dir``
    (the slide id made a file name by :func:`alkit.ids.safe_name`; a very long encoder spec is shortened)."""
    enc = _slug(encoder)
    if len(enc) > 80:
        enc = f"{enc[:60]}-{hashlib.sha256(encoder.encode()).hexdigest()[:10]}"
    name = f"{safe_name(slide_id, error=StoreError)}__{enc}__{mpp:g}mpp_{patch}px_s{stride}.h5"
    return Path(out_dir) / name


class _SlideGridMixin:
    """Slide id and patch grid of a store, from its attributes (shared by full stores and headers)."""

    path: Path
    coords: np.ndarray
    attrs: dict
    tissue_fraction: np.ndarray | None

    def embedded_mask(self) -> np.ndarray:
        """``(rows, cols)`` bool: the grid cells that have an embedding (the slide's tissue cells)."""
        mask = np.zeros(self.grid.shape, bool)
        mask[self.coords[:, 0], self.coords[:, 1]] = True
        return mask

    @property
    def slide_id(self) -> str:
        """The slide id the store was made for (its ``slide`` attribute), checked as an id: a store is a
        file that moves between labs, and its ids become file names (:func:`alkit.ids.check_id`)."""
        value = self.attrs.get("slide", self.path.name.split("__")[0])
        return check_id(value, what="'slide' attribute", source=self.path, error=StoreError)

    @property
    def grid(self) -> PatchGrid:
        """The patch grid the coords index (with every cell's tissue fraction when stored)."""
        a = self.attrs
        try:
            return PatchGrid(tuple(int(v) for v in a["slide_dimensions"]), float(a["slide_mpp"]), float(a["mpp"]),
                             int(a["patch"]), int(a["stride"]), self.tissue_fraction)
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{self.path}: grid attributes missing or invalid ({exc})") from None


@dataclass(frozen=True)
class EmbeddingStore(_SlideGridMixin):
    """Embeddings of one slide's tissue cells, loaded in memory."""

    path: Path
    coords: np.ndarray  # (n, 2) int32 row, col
    features: np.ndarray  # (n, C)
    attrs: dict
    tissue_fraction: np.ndarray | None = None  # (rows, cols) tissue share of every grid cell

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def as_map(self) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, cols, C)`` feature map (zeros where not embedded) and its ``(rows, cols)`` validity mask."""
        fmap = np.zeros((*self.grid.shape, self.dim), self.features.dtype)
        fmap[self.coords[:, 0], self.coords[:, 1]] = self.features
        return fmap, self.embedded_mask()

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """Feature rows ``rows`` (any order, repeats allowed) in the stored dtype."""
        return self.features[np.asarray(rows, np.int64).reshape(-1)]

    @classmethod
    def load(cls, path: str | os.PathLike) -> EmbeddingStore:
        """The whole store in memory (:class:`StoreHeader` keeps the features on disk)."""
        path = Path(path)
        with _open_store(path) as f:  # one open for header and features
            header = StoreHeader.from_file(path, f)
            features = f["features"][()]
        return cls(path, header.coords, features, header.attrs, header.tissue_fraction)


#: :meth:`StoreHeader.read_rows`: rows closer than this are read in one go (rows of one grid row of a
#: region are consecutive; a region's grid rows lie a slide row apart)
ROW_GAP = 64
#: :meth:`StoreHeader.read_rows`: no single read spans more rows than this
ROW_CHUNK = 16384


@dataclass(frozen=True)
class StoreHeader(_SlideGridMixin):
    """A store without its features: coords, attributes and tissue fractions in memory, features on disk.

    For dense grids (64-px patches: ~1M cells × C per slide) loading every feature is what a
    :class:`EmbeddingStore` does and what this avoids; :meth:`feature_chunks` streams the ``features``
    rows instead, so memory stays at one chunk.
    """

    path: Path
    coords: np.ndarray  # (n, 2) int32 row, col
    attrs: dict
    n: int
    dim: int
    dtype: np.dtype
    tissue_fraction: np.ndarray | None = None

    @classmethod
    def load(cls, path: str | os.PathLike) -> StoreHeader:
        """Read everything but the features; :class:`StoreError` if ``path`` is not a readable store."""
        path = Path(path)
        with _open_store(path) as f:
            return cls.from_file(path, f)

    @classmethod
    def from_file(cls, path: Path, f: h5py.File) -> StoreHeader:
        """The header of the store open as ``f`` (checked: datasets present, shapes consistent)."""
        if "features" not in f or "coords" not in f:
            raise StoreError(f"{path}: no 'features' / 'coords' datasets")
        feats = f["features"]
        if feats.ndim != 2:
            raise StoreError(f"{path}: features must be (n, C), got shape {feats.shape}")
        try:
            tissue = f["tissue_fraction"][()].astype(np.float32) if "tissue_fraction" in f else None
            coords = f["coords"][()]
        except (TypeError, ValueError, AttributeError) as exc:
            raise StoreError(f"{path}: unreadable 'coords' / 'tissue_fraction' ({exc})") from None
        if coords.ndim != 2 or coords.shape[1] != 2 or not np.issubdtype(coords.dtype, np.integer):
            raise StoreError(f"{path}: coords must be (n, 2) integers, got {coords.dtype} {coords.shape}")
        if len(coords) != feats.shape[0]:
            raise StoreError(f"{path}: {len(coords)} coords but {feats.shape[0]} feature rows")
        if tissue is not None and tissue.ndim != 2:
            raise StoreError(f"{path}: tissue_fraction must be (rows, cols), got shape {tissue.shape}")
        header = cls(path, coords, _attrs(path, f), int(feats.shape[0]), int(feats.shape[1]), feats.dtype, tissue)
        grid = header.grid  # checks the grid attributes (and the tissue fractions' shape)
        if len(coords) and (coords.min() < 0 or (coords.max(axis=0) >= np.array(grid.shape)).any()):
            raise StoreError(f"{path}: coords outside the {grid.shape[0]} x {grid.shape[1]} grid")
        return header

    def read_rows(self, rows: np.ndarray, gap: int = ROW_GAP, chunk: int = ROW_CHUNK) -> np.ndarray:
        """Feature rows ``rows`` (any order, repeats allowed) in the stored dtype, read from disk.

        Only the rows asked for are read, as runs of consecutive rows (runs less than ``gap`` rows apart
        are read as one, and no read spans more than ``chunk`` rows), so a few labeled regions of a large
        store cost their own rows, not the store: memory is the output plus one read.
        """
        rows = np.asarray(rows, np.int64).reshape(-1)
        out = np.empty((len(rows), self.dim), self.dtype)
        if len(rows) == 0:
            return out
        if rows.min() < 0 or rows.max() >= self.n:
            raise IndexError(f"{self.path}: feature rows must lie in [0, {self.n}), got {rows.min()} .. {rows.max()}")
        order = np.argsort(rows, kind="stable")
        wanted = rows[order]
        # reads: [first, last] row pairs, split where rows are far apart or a read grows past ``chunk``
        cuts = np.flatnonzero(np.diff(wanted) >= max(int(gap), 1)) + 1
        firsts, lasts = np.r_[0, cuts], np.r_[cuts, len(wanted)] - 1
        with h5py.File(self.path, "r") as f:
            dset = f["features"]
            for a, z in zip(firsts.tolist(), lasts.tolist()):
                while a <= z:
                    lo = int(wanted[a])
                    b = min(int(np.searchsorted(wanted, lo + max(int(chunk), 1), side="left")) - 1, z)
                    block = dset[lo:int(wanted[b]) + 1]
                    out[order[a:b + 1]] = block[wanted[a:b + 1] - lo]
                    a = b + 1
        return out

    def feature_chunks(self, chunk: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, rows)`` for consecutive blocks of at most ``chunk`` feature rows, read from disk.

        One buffer of ``chunk × C`` in the stored dtype is reused: each yielded block is a view into
        it, valid until the next step (copy it to keep it).
        """
        chunk = max(1, int(chunk))
        with h5py.File(self.path, "r") as f:
            dset = f["features"]
            buf = np.empty((min(chunk, max(self.n, 1)), self.dim), dset.dtype)
            for start in range(0, self.n, chunk):
                stop = min(start + chunk, self.n)
                dset.read_direct(buf, np.s_[start:stop], np.s_[0:stop - start])
                yield start, buf[:stop - start]


@contextmanager
def _open_store(path: Path) -> Iterator[h5py.File]:
    """The store file open for reading; :class:`StoreError` if it is missing, unreadable or not ours."""
    if not path.is_file():
        raise StoreError(f"{path}: no such store file")
    try:
        with h5py.File(path, "r") as f:
            if "alkit" not in f.attrs:
                raise StoreError(f"{path}: not an alkit embedding store (no 'alkit' attribute)")
            yield f
    except OSError as exc:
        raise StoreError(f"{path}: unreadable HDF5 file: {exc}") from None


def _attrs(path: Path, f: h5py.File) -> dict:
    """The ``alkit`` attribute of an open store as a dict; :class:`StoreError` if it is not one."""
    try:
        raw = f.attrs["alkit"]
        attrs = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except (TypeError, ValueError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path}: the 'alkit' attribute is not JSON ({exc})") from None
    if not isinstance(attrs, dict):
        raise StoreError(f"{path}: the 'alkit' attribute is a JSON {type(attrs).__name__}, expected an object")
    return attrs


def read_attrs(path: str | os.PathLike) -> dict:
    """A store's attributes; :class:`StoreError` if it is not a readable alkit store."""
    path = Path(path)
    with _open_store(path) as f:
        return _attrs(path, f)


def is_cached(path: str | os.PathLike, attrs: dict) -> bool:
    """Whether ``path`` holds a complete store made with the same key attributes as ``attrs``."""
    try:
        found = read_attrs(path)
    except StoreError:
        return False
    if found.get("format_version") != FORMAT_VERSION:
        return False
    return all(_same(found.get(k), attrs.get(k)) for k in KEY_ATTRS)


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
        return numbers and abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def store_attrs(attrs: dict, n: int, dim: int) -> dict:
    """The ``alkit`` attribute a store of ``n`` rows of ``dim`` features is written with: the caller's
    ``attrs`` plus the row count, dimension, alkit version and format version."""
    return {**attrs, "n": int(n), "dim": int(dim), "alkit_version": __version__, "format_version": FORMAT_VERSION}


def write_store(path: str | os.PathLike, coords: np.ndarray, features: np.ndarray, attrs: dict,
                tissue_fraction: np.ndarray | None = None) -> Path:
    """Write a store held in memory atomically (temporary file in the same folder, then rename);
    :class:`alkit.embeddings.writer.IncrementalStore` fills one batch by batch instead.

    ``tissue_fraction`` (rows, cols) keeps every cell's tissue share, so region strategies can work
    from stores alone without reopening slides.
    """
    path = Path(path)
    coords = np.asarray(coords, np.int32).reshape(-1, 2)
    features = np.asarray(features)
    if len(coords) != len(features):
        raise ValueError(f"{path}: {len(coords)} coords but {len(features)} feature rows")
    full = store_attrs(attrs, len(coords), int(features.shape[1]) if features.ndim == 2 else 0)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["alkit"] = json.dumps(full)
        f.create_dataset("coords", data=coords)
        f.create_dataset("features", data=features)
        if tissue_fraction is not None:
            f.create_dataset("tissue_fraction", data=np.asarray(tissue_fraction, np.float16), compression="gzip")
    return path
