"""A store written batch by batch: memory bounded by the batch, not by the slide.

The tissue cells of a slide are known before any patch is embedded, so the store's datasets are
created at their final size up front (``coords`` written at once, ``features`` chunked along the
rows) and every batch of embeddings goes straight to its rows on disk. The file is written under a
hidden temporary name (:func:`alkit.atomic.temp_name`, tagged with the writer's pid so
:func:`alkit.atomic.remove_stale_temps` clears what a killed writer left) and renamed over the store
only once every row is filled, so a store on disk is always complete.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import h5py
import numpy as np

from alkit.atomic import temp_name
from alkit.embeddings.store import store_attrs

log = logging.getLogger(__name__)

#: target bytes of one ``features`` chunk (rows × dim × itemsize)
CHUNK_BYTES = 256 << 10
#: HDF5 chunk cache of an open store: enough for the chunks a band of blocks touches on wide grids
CACHE_BYTES = 32 << 20


def chunk_rows(n: int, dim: int, itemsize: int = 4) -> int:
    """Rows per ``features`` chunk: about :data:`CHUNK_BYTES`, at least 1, at most ``n``."""
    return max(1, min(max(n, 1), CHUNK_BYTES // max(1, dim * itemsize)))


class IncrementalStore:
    """One slide's store being filled: ``write(index, features)`` per batch, ``commit()`` when full.

    ``index`` are positions in ``coords`` (the slide's tissue cells, row-major); a row written twice
    is an error, and :meth:`commit` refuses a store with rows missing.
    """

    def __init__(self, path: str | os.PathLike, coords: np.ndarray, attrs: dict, dim: int,
                 tissue_fraction: np.ndarray | None = None, dtype: np.dtype = np.float32):
        self.path = Path(path)
        coords = np.asarray(coords, np.int32).reshape(-1, 2)
        self.n, self.dim = len(coords), int(dim)
        self._filled = np.zeros(self.n, bool)
        self.written = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temp_name(self.path)
        self._file: h5py.File | None = h5py.File(self.tmp, "w", rdcc_nbytes=CACHE_BYTES, rdcc_nslots=100003)
        try:
            f = self._file
            f.attrs["alkit"] = json.dumps(store_attrs(attrs, self.n, self.dim))
            f.create_dataset("coords", data=coords)
            rows = chunk_rows(self.n, self.dim, np.dtype(dtype).itemsize)
            self._features = f.create_dataset("features", shape=(self.n, self.dim), dtype=dtype,
                                              chunks=(rows, max(self.dim, 1)) if self.n and self.dim else None)
            if tissue_fraction is not None:
                f.create_dataset("tissue_fraction", data=np.asarray(tissue_fraction, np.float16),
                                 compression="gzip")
        except BaseException:
            self.abort()
            raise

    @property
    def complete(self) -> bool:
        return self.written == self.n

    def write(self, index: np.ndarray, features: np.ndarray) -> None:
        """Put ``features`` (k, dim) at rows ``index`` (k,) of the store."""
        assert self._file is not None, f"{self.path}: store already closed"
        index = np.asarray(index, np.int64).reshape(-1)
        features = np.asarray(features).reshape(len(index), self.dim)
        if len(index) == 0:
            return
        if index.min() < 0 or index.max() >= self.n:
            raise ValueError(f"{self.path}: rows {index.min()}..{index.max()} outside 0..{self.n - 1}")
        order = np.argsort(index, kind="stable")
        index, features = index[order], features[order]
        if (np.diff(index) == 0).any() or self._filled[index].any():
            raise ValueError(f"{self.path}: rows written twice")
        if index[-1] - index[0] + 1 == len(index):  # contiguous: one hyperslab
            self._features[int(index[0]):int(index[-1]) + 1] = features
        else:  # runs of consecutive rows, one hyperslab each (a block spans a few grid rows)
            cuts = np.flatnonzero(np.diff(index) != 1) + 1
            for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(index)]):
                self._features[int(index[lo]):int(index[hi - 1]) + 1] = features[lo:hi]
        self._filled[index] = True
        self.written += len(index)

    def commit(self) -> Path:
        """Close the file and rename it over the store; ``ValueError`` if rows are missing."""
        if not self.complete:
            missing = self.n - self.written
            self.abort()
            raise ValueError(f"{self.path}: {missing} of {self.n} rows never written; store discarded")
        assert self._file is not None
        self._file.close()
        self._file = None
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Close and remove the temporary file (the store on disk, if any, is untouched)."""
        if self._file is not None:
            try:
                self._file.close()
            except Exception:  # noqa: BLE001 - closing a file whose write failed: removal matters, not this
                log.debug("%s: closing the temporary store failed", self.tmp, exc_info=True)
            self._file = None
        self.tmp.unlink(missing_ok=True)
