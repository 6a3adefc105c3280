"""Mask images (PNG, TIFF, JPEG, ...) as boolean arrays: any value > 0 is inside the mask.

Colour images count a pixel as inside when any colour channel is > 0; an alpha channel is ignored.
What a mask pixel measures at level 0 (its downsample) is for the caller to know.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from alkit.annotations import AnnotationFileError

__all__ = ["MASK_SUFFIXES", "read_mask_image"]

#: File suffixes read as mask images (lower case).
MASK_SUFFIXES: frozenset[str] = frozenset({".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})


def read_mask_image(path: str | os.PathLike) -> np.ndarray:
    """A mask image as a 2-D bool array (value > 0; colour images: any channel > 0; alpha ignored).

    Raises :class:`FileNotFoundError` when the file is missing and :class:`AnnotationFileError`,
    naming the file, when it is no readable image or not one 2-D plane.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such mask file")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile  # only TIFF masks need it (~0.3 s to import)

            arr = np.asarray(tifffile.imread(path, key=0))
        else:
            with Image.open(path) as im:
                arr = np.asarray(im)
    except Exception as exc:  # PIL / tifffile raise many kinds on corrupt or non-image files
        raise AnnotationFileError(f"{path}: cannot read as a mask image ({type(exc).__name__}: {exc})") from exc
    if arr.ndim == 3 and arr.shape[-1] in (2, 4):
        arr = arr[..., :-1]  # drop alpha (LA, RGBA)
    if arr.ndim == 3 and arr.shape[-1] <= 4:
        arr = arr.max(axis=-1)
    if arr.ndim != 2 or arr.size == 0:
        raise AnnotationFileError(f"{path}: a mask image must be one 2-D plane, got shape {arr.shape}")
    return arr > 0
