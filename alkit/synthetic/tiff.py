"""A streaming pyramidal TIFF writer: tiled JPEG levels (OpenSlide opens them as ``generic-tiff``).

Level-0 tiles are rendered by a few threads in order; each reduced level is built from the level
above as it streams past, through a disk-backed buffer, so memory does not grow with the slide.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from alkit.atomic import atomic_path

TILE = 512
JPEG_QUALITY = 85


def _ordered_map(fn: Callable, items: list, workers: int) -> Iterator:
    """``map(fn, items)`` computed by a few threads, yielded in order, at most 2*workers ahead."""
    if workers <= 1:
        for it in items:
            yield fn(it)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="alkit-synth") as ex:
        pending = []
        it = iter(items)
        for x in it:
            pending.append(ex.submit(fn, x))
            if len(pending) >= 2 * workers:
                break
        while pending:
            fut = pending.pop(0)
            nxt = next(it, None)
            if nxt is not None:
                pending.append(ex.submit(fn, nxt))
            yield fut.result()


def _halve(tile: np.ndarray) -> np.ndarray:
    """2x2 block means of a tile with even sides."""
    t = tile.astype(np.uint16)
    s = t[0::2, 0::2] + t[1::2, 0::2] + t[0::2, 1::2] + t[1::2, 1::2]
    return ((s + 2) >> 2).astype(np.uint8)


class _LevelBuffer:
    """One reduced pyramid level, built from the level above as it streams past and kept in a
    temporary raw file: only one strip of tile rows is ever in memory."""

    def __init__(self, width: int, height: int, tile: int, folder: Path):
        self.width, self.height, self.tile = width, height, tile
        half = tile // 2
        self.strip = np.zeros((half, math.ceil(width / half) * half + tile, 3), np.uint8)
        fd, name = tempfile.mkstemp(prefix=".alkit-level-", suffix=".raw", dir=folder)
        self.path = Path(name)
        self.fh = os.fdopen(fd, "w+b")
        self.rows = 0

    def put(self, tx: int, tile: np.ndarray) -> None:
        """The 2x reduction of tile ``tx`` of the current tile row of the level above."""
        half = self.tile // 2
        self.strip[:, tx * half:(tx + 1) * half] = _halve(tile)

    def end_row(self) -> None:
        n = min(self.tile // 2, self.height - self.rows)
        if n > 0:
            self.fh.write(np.ascontiguousarray(self.strip[:n, :self.width]).tobytes())
            self.rows += n

    def tiles(self) -> Iterator[tuple[int, int, np.ndarray, bool]]:
        """This level's tiles, row-major, edge tiles padded: (tx, ty, tile, last in its row)."""
        t, w = self.tile, self.width
        self.fh.flush()
        nx = math.ceil(w / t)
        for ty in range(math.ceil(self.height / t)):
            n = min(t, self.height - ty * t)
            self.fh.seek(ty * t * w * 3)
            buf = np.frombuffer(self.fh.read(n * w * 3), np.uint8).reshape(n, w, 3)
            for tx in range(nx):
                tl = buf[:, tx * t:(tx + 1) * t]
                if tl.shape[:2] != (t, t):
                    tl = np.pad(tl, ((0, t - tl.shape[0]), (0, t - tl.shape[1]), (0, 0)), mode="edge")
                yield tx, ty, np.ascontiguousarray(tl), tx == nx - 1

    def close(self) -> None:
        self.fh.close()
        self.path.unlink(missing_ok=True)


def write_pyramid(path: Path, width: int, height: int, mpp: float,
                  render_tile: Callable[[int, int], tuple[np.ndarray, int]], *, tile: int = TILE,
                  quality: int = JPEG_QUALITY, workers: int = 2) -> tuple[int, int]:
    """Stream a tiled JPEG pyramid to ``path`` (atomically). ``render_tile(tx, ty)`` returns a
    full ``(tile, tile, 3)`` uint8 tile of level 0 and its tissue pixel count. Each reduced level
    is built while the level above streams past. Returns (number of levels, tissue pixel count)."""
    import tifffile  # local: only slide writing needs it (~0.1 s to import)

    dims = [(width, height)]
    while max(dims[-1]) > tile // 2:
        w, h = dims[-1]
        dims.append(((w + 1) // 2, (h + 1) // 2))
    buffers: list[_LevelBuffer] = []
    tissue = 0

    def options(level: int) -> dict:
        res = 1e4 / (mpp * 2 ** level)  # pixels per centimetre
        return dict(tile=(tile, tile), compression="jpeg", compressionargs={"level": quality},
                    photometric="rgb", resolution=(res, res), resolutionunit="CENTIMETER",
                    subfiletype=0 if level == 0 else 1, metadata=None, maxworkers=workers,
                    buffersize=16 * tile * tile * 3,  # compress 16 tiles at a time, not 512 MB
                    software="alkit.synthetic" if level == 0 else None)

    def feed(tiles: Iterable[tuple[int, int, np.ndarray, bool]],
             below: _LevelBuffer | None) -> Iterator[np.ndarray]:
        for tx, _, t, row_end in tiles:
            if below is not None:
                below.put(tx, t)
                if row_end:
                    below.end_row()
            yield t

    try:
        for w, h in dims[1:]:
            buffers.append(_LevelBuffer(w, h, tile, path.parent))
        nx, ny = math.ceil(width / tile), math.ceil(height / tile)
        coords = [(tx, ty) for ty in range(ny) for tx in range(nx)]

        def level0() -> Iterator[tuple[int, int, np.ndarray, bool]]:
            nonlocal tissue
            for (tx, ty), (rgb, count) in zip(coords, _ordered_map(lambda c: render_tile(*c),
                                                                   coords, workers)):
                tissue += count
                yield tx, ty, rgb, tx == nx - 1

        with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=width * height * 3 > 2 ** 31) as tif:
            tif.write(feed(level0(), buffers[0] if buffers else None), shape=(height, width, 3),
                      dtype=np.uint8, **options(0))
            for level in range(1, len(dims)):
                below = buffers[level] if level < len(buffers) else None
                lw, lh = dims[level]
                tif.write(feed(buffers[level - 1].tiles(), below), shape=(lh, lw, 3), dtype=np.uint8,
                          **options(level))
                buffers[level - 1].close()
    finally:
        for b in buffers:
            b.close()
    return len(dims), tissue
