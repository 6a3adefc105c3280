"""Whole slide images: open anything OpenSlide opens and read any level-0 box at any resolution.

Every read states its resolution in microns per pixel (mpp); boxes are always level-0 pixels
``(x, y, w, h)``, half-open, x = column. Conversions between resolutions happen here and in
:mod:`alkit.wsi.grid`, nowhere else.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openslide
from PIL import Image

from alkit.errors import AlkitError
from alkit.wsi.box import Box
from alkit.wsi.pixels import read_rgb, rgba_to_rgb

log = logging.getLogger(__name__)

#: A pyramid level may be used for a read when its downsample is at most this factor above the
#: target downsample (vendors store 4.0003 for a nominal 4x level; resizing up by <1 % is invisible).
LEVEL_TOLERANCE = 1.01
#: Largest output tile one OpenSlide call produces in :meth:`Slide.read`; bigger reads are chunked.
_CHUNK = 4096
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")



class SlideError(AlkitError):
    """A slide cannot be opened or read. The message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class MppInfo:
    """Resolution of level 0 and where it came from (``"openslide"``, ``"tiff"``, ``"override"``, ``"fallback"``)."""

    x: float
    y: float
    source: str

    @property
    def mean(self) -> float:
        return (self.x + self.y) / 2


def _why_unopenable(path: Path) -> str:
    """Say as precisely as possible why OpenSlide refused ``path``."""
    size = path.stat().st_size
    if size == 0:
        return "the file is empty"
    with path.open("rb") as fh:
        head = fh.read(4)
    if head not in _TIFF_MAGICS:
        return (f"not a slide format OpenSlide supports (no TIFF header; suffix '{path.suffix}', "
                f"{size} bytes)")
    import tifffile  # only on the error path

    tiff_log = logging.getLogger("tifffile")
    heard: list[str] = []  # what tifffile would log (e.g. "invalid page offset"): folded into our one line
    catch = _Collect(heard)
    propagate, tiff_log.propagate = tiff_log.propagate, False
    tiff_log.addHandler(catch)
    try:
        with tifffile.TiffFile(path) as tif:
            pages = list(tif.pages)  # walks every image directory
            offsets = [int(m) for m in re.findall(r"invalid page offset (\d+)", " ".join(heard))]
            if any(o >= size for o in offsets):
                return (f"truncated TIFF ({size} bytes): image directory {len(pages)} should start at byte "
                        f"{min(o for o in offsets if o >= size)}, past the end of the file")
            if not pages:
                return f"truncated or corrupt TIFF ({size} bytes): no readable image directory"
            for page in pages:
                ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts)]
                if ends and max(ends) > size:
                    return (f"truncated TIFF ({size} bytes): image data of page {page.index} "
                            f"ends at byte {max(ends)}")
            if heard:
                return f"corrupt TIFF ({size} bytes): {heard[0]}"
    except Exception as exc:  # tifffile raises many types for broken files
        return f"truncated or corrupt TIFF ({size} bytes): {exc}"
    finally:
        tiff_log.removeHandler(catch)
        tiff_log.propagate = propagate
    return (f"a TIFF file ({size} bytes) that OpenSlide cannot read as a slide: "
            "unsupported layout (e.g. not tiled) or corrupt tiles")


class _Collect(logging.Handler):
    """Keeps the messages of a logger (tifffile's) instead of printing them."""

    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(" ".join(record.getMessage().split()))


def file_fingerprint(path: Path, edge: int = 1 << 20) -> str:
    """``<size>:<sha256 of the first and last edge bytes>``: a content identity that reads at most 2 MiB."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(edge))
        if size > edge:
            f.seek(max(edge, size - edge))
            digest.update(f.read(edge))
    return f"{size}:{digest.hexdigest()[:32]}"


def _mpp_from_properties(props: openslide._PropertyMap) -> MppInfo | None:
    """Microns per pixel from OpenSlide's normalised properties, else from TIFF resolution tags."""
    mx, my = props.get(openslide.PROPERTY_NAME_MPP_X), props.get(openslide.PROPERTY_NAME_MPP_Y)
    try:
        if mx and my and float(mx) > 0 and float(my) > 0:
            return MppInfo(float(mx), float(my), "openslide")
    except ValueError:
        pass
    unit = props.get("tiff.ResolutionUnit", "").lower()
    xres, yres = props.get("tiff.XResolution"), props.get("tiff.YResolution")
    per_unit_um = {"centimeter": 1e4, "inch": 25400.0}.get(unit)
    try:
        if per_unit_um and xres and yres and float(xres) > 0 and float(yres) > 0:
            return MppInfo(per_unit_um / float(xres), per_unit_um / float(yres), "tiff")
    except ValueError:
        pass
    return None


class Slide:
    """A whole slide image opened through OpenSlide.

    ``mpp`` overrides the resolution stored in the file (microns per level-0 pixel);
    ``fallback_mpp`` is used only by a slide whose file has no resolution (a cohort-wide default that
    never overrides real metadata). A slide without resolution metadata and without either raises
    :class:`SlideError`. A ``Slide`` pickles as its path and resolution arguments, so DataLoader
    workers each reopen their own OpenSlide handle.
    """

    def __init__(self, path: str | os.PathLike, mpp: float | None = None, fallback_mpp: float | None = None):
        # absolute (not symlink-resolved): stores and exports record where the slide is wherever they are read
        self.path = Path(os.path.abspath(path))
        self._mpp_override, self._fallback_mpp = mpp, fallback_mpp
        for name, value in (("mpp override", mpp), ("fallback mpp", fallback_mpp)):
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise SlideError(self.path, f"{name} must be a positive number, got {value!r}")
        self._osr = self._open()
        metadata_mpp = _mpp_from_properties(self._osr.properties)
        if mpp is None and metadata_mpp is None and fallback_mpp is not None:
            log.info("%s: no mpp metadata; using the fallback %.4g µm/px", self.path, fallback_mpp)
            self.mpp_info = MppInfo(float(fallback_mpp), float(fallback_mpp), "fallback")
        elif mpp is not None:
            if metadata_mpp and abs(metadata_mpp.mean - mpp) / mpp > 0.05:
                log.warning("%s: mpp override %.4g differs from the file's %.4g (%s)",
                            self.path, mpp, metadata_mpp.mean, metadata_mpp.source)
            self.mpp_info = MppInfo(float(mpp), float(mpp), "override")
        elif metadata_mpp is None:
            self._osr.close()
            raise SlideError(
                self.path,
                "no microns-per-pixel metadata; pass the level-0 resolution explicitly: Slide(path, mpp=0.25) "
                "in Python, `alkit info --mpp 0.25`, or `alkit embed --slide-mpp 0.25` (used only for "
                "slides without metadata)",
            )
        else:
            self.mpp_info = metadata_mpp

    def _open(self) -> openslide.OpenSlide:
        path = self.path
        if not path.exists():
            raise SlideError(path, "no such file")
        if path.is_dir():
            raise SlideError(path, "is a directory, not a slide file")
        if not path.is_file():  # a FIFO or device (a path inside a store may name anything): never opened
            raise SlideError(path, "not a regular file")
        try:
            return openslide.OpenSlide(str(path))
        except openslide.OpenSlideUnsupportedFormatError:
            raise SlideError(path, _why_unopenable(path)) from None
        except (openslide.OpenSlideError, OSError) as exc:
            raise SlideError(path, f"OpenSlide could not open it: {exc}") from None

    # -- pickling: reopen in the receiving process instead of sharing a handle ----------------
    def __getstate__(self) -> dict:
        return {"path": self.path, "mpp": self._mpp_override, "fallback_mpp": self._fallback_mpp}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], mpp=state["mpp"], fallback_mpp=state.get("fallback_mpp"))

    def close(self) -> None:
        self._osr.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        return f"Slide({str(self.path)!r}, {w}x{h}, mpp={self.mpp:.4g}, vendor={self.vendor!r})"

    # -- metadata ------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """Slide id: the file name without its suffix."""
        return self.path.stem

    @property
    def content_id(self) -> str:
        """What identifies the slide's pixels, not its path: OpenSlide's ``quickhash-1`` (a hash of the
        smallest level and the properties) where the format has one, else the file's size and the
        SHA-256 of its first and last MiB. A slide copied or renamed keeps it; a rescan does not."""
        quickhash = self._osr.properties.get("openslide.quickhash-1")
        if quickhash:
            return f"quickhash-1:{quickhash}"
        return f"file:{file_fingerprint(self.path)}"

    @property
    def mpp(self) -> float:
        """Microns per level-0 pixel (mean of x and y)."""
        return self.mpp_info.mean

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 ``(width, height)`` in pixels."""
        return self._osr.dimensions

    @property
    def level_count(self) -> int:
        return self._osr.level_count

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self._osr.level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self._osr.level_downsamples

    @property
    def vendor(self) -> str:
        return self._osr.properties.get(openslide.PROPERTY_NAME_VENDOR, "unknown")

    @property
    def objective_power(self) -> float | None:
        value = self._osr.properties.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)
        try:
            return float(value) if value else None
        except ValueError:
            return None

    @property
    def properties(self) -> dict[str, str]:
        return dict(self._osr.properties)

    @property
    def associated_images(self) -> list[str]:
        """Names of the associated images (label, macro, thumbnail, ...)."""
        return sorted(self._osr.associated_images)

    def associated_image(self, name: str) -> np.ndarray:
        """An associated image as RGB uint8."""
        if name not in self._osr.associated_images:
            raise SlideError(self.path, f"no associated image {name!r}; has {self.associated_images}")
        return rgba_to_rgb(np.asarray(self._osr.associated_images[name].convert("RGBA")))

    # -- reading -------------------------------------------------------------------------------
    def best_level(self, downsample: float) -> int:
        """The coarsest level whose downsample is at most ``downsample`` (within 1 %)."""
        usable = [i for i, d in enumerate(self.level_downsamples) if d <= downsample * LEVEL_TOLERANCE]
        return max(usable, key=lambda i: self.level_downsamples[i]) if usable else 0

    def output_size(self, box: Box, mpp: float) -> tuple[int, int]:
        """Pixel size ``(width, height)`` of :meth:`read` of ``box`` at ``mpp``."""
        scale = self.mpp / mpp
        return max(1, round(box[2] * scale)), max(1, round(box[3] * scale))

    def read(self, box: Box, mpp: float | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
        """Read the level-0 box ``(x, y, w, h)`` at ``mpp`` microns per pixel as RGB uint8 (H, W, 3).

        The pixels come from the coarsest pyramid level that is at least as fine as ``mpp``
        (:meth:`best_level`), resized with area averaging (PIL ``BOX``) when shrinking and
        bicubic interpolation when enlarging; box coordinates may be fractional. ``size``
        fixes the output ``(width, height)`` (default: the box at ``mpp``, :meth:`output_size`).
        Parts of the box outside the slide are white; transparent pixels are composited on white.
        """
        mpp = self.mpp if mpp is None else float(mpp)
        if not mpp > 0:
            raise ValueError(f"mpp must be positive, got {mpp}")
        x, y, w, h = (float(v) for v in box)
        if w <= 0 or h <= 0:
            raise ValueError(f"box must have a positive size, got {box}")
        out_w, out_h = size if size is not None else self.output_size((x, y, w, h), mpp)
        if out_w > _CHUNK or out_h > _CHUNK:
            return self._read_chunked((x, y, w, h), out_w, out_h, mpp)
        return self._read_one((x, y, w, h), out_w, out_h, mpp)

    def _read_chunked(self, box: Box, out_w: int, out_h: int, mpp: float) -> np.ndarray:
        x, y, w, h = box
        out = np.empty((out_h, out_w, 3), np.uint8)
        sx, sy = w / out_w, h / out_h  # level-0 pixels per output pixel
        for oy in range(0, out_h, _CHUNK):
            ch = min(_CHUNK, out_h - oy)
            for ox in range(0, out_w, _CHUNK):
                cw = min(_CHUNK, out_w - ox)
                sub = (x + ox * sx, y + oy * sy, cw * sx, ch * sy)
                out[oy:oy + ch, ox:ox + cw] = self._read_one(sub, cw, ch, mpp)
        return out

    def _read_one(self, box: Box, out_w: int, out_h: int, mpp: float) -> np.ndarray:
        x, y, w, h = box
        level = self.best_level((w / out_w) if out_w else mpp / self.mpp)
        ds = self.level_downsamples[level]
        # level pixels covering the box
        lx0, ly0 = math.floor(x / ds), math.floor(y / ds)
        lx1, ly1 = math.ceil((x + w) / ds), math.ceil((y + h) / ds)
        canvas = self.level_canvas(level, lx0, ly0, lx1, ly1)
        # the exact box inside the canvas, in (fractional) canvas pixels
        src = (x / ds - lx0, y / ds - ly0, (x + w) / ds - lx0, (y + h) / ds - ly0)
        return resample(canvas, src, out_w, out_h)

    def level_canvas(self, level: int, lx0: int, ly0: int, lx1: int, ly1: int) -> np.ndarray:
        """Level pixels ``[lx0, lx1) × [ly0, ly1)`` of ``level`` as RGB uint8, white outside the level."""
        ds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        cx0, cy0, cx1, cy1 = max(lx0, 0), max(ly0, 0), min(lx1, lw), min(ly1, lh)
        inside = (cx0, cy0, cx1, cy1) == (lx0, ly0, lx1, ly1)
        canvas = None if inside else np.full((ly1 - ly0, lx1 - lx0, 3), 255, np.uint8)
        if cx1 > cx0 and cy1 > cy0:
            # read_region takes level-0 coordinates for the origin and level pixels for the size
            origin = (round(cx0 * ds), round(cy0 * ds))
            try:
                rgb = read_rgb(self._osr, origin, level, (cx1 - cx0, cy1 - cy0))
            except openslide.OpenSlideError as exc:
                raise SlideError(self.path, f"reading level {level} at {origin} failed: {exc}") from None
            if inside:
                return rgb
            canvas[cy0 - ly0:cy1 - ly0, cx0 - lx0:cx1 - lx0] = rgb
        return canvas

    def thumbnail(self, mpp: float | None = None, max_size: int | None = None) -> np.ndarray:
        """The whole slide as RGB uint8 at ``mpp`` µm/px, or with its longer side ``max_size`` px.

        Defaults to 8 µm/px. Read through :meth:`read`, so memory stays bounded by the output.
        """
        w, h = self.dimensions
        if max_size is not None:
            mpp = self.mpp * max(w, h) / max_size
        elif mpp is None:
            mpp = 8.0
        return self.read((0, 0, w, h), mpp)


def resample(canvas: np.ndarray, src: tuple[float, float, float, float], out_w: int, out_h: int) -> np.ndarray:
    """The fractional box ``src`` (x0, y0, x1, y1 in canvas pixels) of ``canvas`` at ``out_w × out_h``:
    the canvas itself when they coincide, else PIL ``BOX`` when shrinking and bicubic when enlarging."""
    if canvas.shape[1] == out_w and canvas.shape[0] == out_h and src == (0, 0, out_w, out_h):
        return canvas
    shrinking = (src[2] - src[0]) >= out_w
    method = Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC
    return np.array(Image.fromarray(canvas).resize((out_w, out_h), method, box=src))  # a writable copy
