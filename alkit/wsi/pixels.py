"""Level pixels from OpenSlide's C reader straight into numpy, without the copies of the public path.

``OpenSlide.read_region`` allocates a zeroed ctypes buffer, converts OpenSlide's premultiplied ARGB to
straight RGBA in C, wraps it in a PIL image, and ``np.asarray`` copies it once more before the alpha is
dropped: for a 2048² block read that is about a fifth of the read (measured in
``experiments/benchmarks/reader_throughput.py``). Here OpenSlide's ``openslide_read_region`` writes into
a numpy buffer; where every pixel is opaque (alpha 255, where premultiplied and straight colours are
the same) the RGB pixels are copied out of it channel by channel (bytes B, G, R, A on little-endian
machines; three plain strided copies, 3x faster than one copy of the channel-reversed view). A read
holding any pixel that is not fully opaque goes the public way, so compositing on white stays exactly
that of :func:`rgba_to_rgb` over ``read_region``.

The C call is reached through openslide-python's ``lowlevel`` module, whose wrapper names are not part
of its documented API: where they are missing (another openslide-python), every read takes the public
path, which returns the same pixels.
"""

from __future__ import annotations

import ctypes
import sys

import numpy as np
import openslide
from openslide import lowlevel

_C_READ = getattr(lowlevel, "_read_region", None)
#: whether reads can skip openslide-python's conversions (its C wrapper exists, bytes are little-endian)
FAST_READS = callable(_C_READ) and sys.byteorder == "little"
_OPAQUE = np.uint32(0xFF000000)


def rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """Composite (non-premultiplied) RGBA on white; fully opaque input passes through."""
    alpha = rgba[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    a = alpha.astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) * a + 255.0 * (1.0 - a)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def read_rgb(osr: openslide.OpenSlide, origin: tuple[int, int], level: int, size: tuple[int, int],
             fast: bool = True) -> np.ndarray:
    """``size`` (w, h) pixels of ``level`` from the level-0 ``origin`` as RGB uint8 (h, w, 3), transparent
    pixels composited on white; ``fast=False`` takes the public path (the same pixels)."""
    w, h = size
    handle = getattr(osr, "_osr", None)
    if fast and FAST_READS and handle is not None and w > 0 and h > 0:
        argb = np.empty((h, w), np.uint32)
        _C_READ(handle, argb.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32)), int(origin[0]), int(origin[1]),
                int(level), int(w), int(h))
        if argb.min() >= _OPAQUE:
            bgra, rgb = argb.view(np.uint8).reshape(h, w, 4), np.empty((h, w, 3), np.uint8)
            for channel in range(3):
                rgb[..., channel] = bgra[..., 2 - channel]
            return rgb
    return rgba_to_rgb(np.asarray(osr.read_region(origin, level, (w, h))))
