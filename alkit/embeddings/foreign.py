"""Features other tools extracted (TRIDENT, CLAM) turned into alkit embedding stores.

Both tools write one HDF5 file per slide, named after the slide, with ``features`` (``N × D``; CLAM's
older files ``1 × N × D``) and ``coords`` (``N × 2``: x, y of each patch's top-left corner in level-0
pixels). What alkit needs beyond that is the grid the patches lie on:

- the **patch side in level-0 pixels**: TRIDENT's ``coords`` attribute ``patch_size_level0`` (or
  ``patch_size`` × ``level0_magnification`` / ``target_magnification``); CLAM's feature files carry
  none, so it comes from CLAM's patch file of the slide (``--coords DIR``: ``coords`` attributes
  ``patch_size`` and ``patch_level`` / ``downsample``) or is given (``--patch-px``);
- the **stride**: TRIDENT's ``patch_size_level0`` minus its ``overlap`` (given at the target
  magnification), checked against the coords; otherwise the most common spacing of the coords;
- the **slide**: its file (matched by stem in ``--slides DIR``) gives the level-0 size, mpp, content id
  and alkit's own tissue fractions; without it TRIDENT's ``level0_width`` / ``level0_height`` and a
  given ``--slide-mpp`` are used, and a cell's tissue fraction is 1 where the tool kept a patch, else 0.

alkit's grids start at the slide's top-left corner, so the coords must be ``(col · stride, row ·
stride)`` (TRIDENT's are). Coords on a shifted grid, or on several grids (CLAM starts one per tissue
contour), are refused unless ``snap`` places each patch in the nearest cell (moving it by at most half
a stride; refused when two patches land in one cell). Every file is checked before any store is
written; each store is then written batch by batch under a temporary name and renamed when complete.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from alkit.atomic import visible
from alkit.embeddings.store import StoreError, StoreHeader, store_path
from alkit.embeddings.writer import IncrementalStore
from alkit.ids import check_id
from alkit.wsi.grid import PatchGrid
from alkit.wsi.slide import Slide

log = logging.getLogger(__name__)

FORMATS = ("trident", "clam")
#: feature rows copied per step (memory: this many rows × D)
CHUNK_ROWS = 4096


class ForeignFeaturesError(StoreError):
    """A feature file of another tool that alkit cannot turn into a store; names the file and why."""


@dataclass(frozen=True)
class ForeignFile:
    """One foreign feature file, read up to its features (which stay on disk)."""

    path: Path
    format: str
    slide_id: str
    coords0: np.ndarray  # (n, 2) int64 level-0 x, y of each patch's top-left corner
    dim: int
    dtype: np.dtype
    encoder: str | None  # the tool's name of the encoder, where it records one
    patch0: float | None  # patch side in level-0 px
    patch_px: int | None  # patch side in px at the extraction resolution
    stride0: float | None  # level-0 stride the attributes imply
    dimensions: tuple[int, int] | None  # level-0 (width, height) the attributes record

    @property
    def n(self) -> int:
        return len(self.coords0)


def _attr(attrs, key: str) -> float | None:
    value = attrs.get(key)
    if value is None:
        return None
    try:
        number = float(np.asarray(value).reshape(-1)[0])
    except (TypeError, ValueError, IndexError):
        return None
    return number if np.isfinite(number) and number > 0 else None


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value) or None


def _clam_patch_attrs(path: Path, slide_id: str, coords_dir: Path | None) -> tuple[float | None, int | None]:
    """Level-0 patch side and its size at the patch level from CLAM's patch file ``coords_dir/SLIDE.h5``."""
    if coords_dir is None:
        return None, None
    patch_file = coords_dir / f"{slide_id}.h5"
    if not patch_file.is_file():
        raise ForeignFeaturesError(f"{path}: no CLAM patch file {patch_file} for slide {slide_id!r}")
    try:
        with h5py.File(patch_file, "r") as f:
            attrs = dict(f["coords"].attrs) if "coords" in f else {}
    except OSError as exc:
        raise ForeignFeaturesError(f"{patch_file}: unreadable HDF5 file ({exc})") from None
    size = _attr(attrs, "patch_size")
    if size is None:
        raise ForeignFeaturesError(f"{patch_file}: CLAM patch file without a 'patch_size' attribute on 'coords'")
    downsample = _attr(attrs, "downsample")
    if downsample is None:
        if "patch_level" in attrs and int(np.asarray(attrs["patch_level"]).reshape(-1)[0]) != 0:
            raise ForeignFeaturesError(f"{patch_file}: 'patch_level' is not 0 and there is no 'downsample' "
                                       "attribute; pass --patch-px (the patch side in level-0 px)")
        downsample = 1.0
    return size * downsample, int(size)


def _patch_attrs(attrs, fmt: str) -> tuple[float | None, float | None, float | None]:
    """Level-0 patch side, patch side at the extraction resolution and level-0 stride from ``coords``
    attributes, as TRIDENT's patcher places its patches (sides and overlap rounded to level-0 pixels)."""
    patch_px = _attr(attrs, "patch_size")
    src, dst = _attr(attrs, "level0_magnification"), _attr(attrs, "target_magnification")
    overlap = (_attr(attrs, "overlap") or 0.0) if fmt == "trident" else None
    if patch_px is not None and src is not None and dst is not None:
        down = src / dst
        patch0 = float(round(patch_px * down))
        return patch0, patch_px, (None if overlap is None else patch0 - round(overlap * down))
    patch0 = _attr(attrs, "patch_size_level0")
    if patch0 is None or patch_px is None or overlap is None:
        return patch0, patch_px, None
    return patch0, patch_px, patch0 - round(overlap * patch0 / patch_px)


def read_foreign(path: str | os.PathLike, fmt: str, coords_dir: str | os.PathLike | None = None) -> ForeignFile:
    """A TRIDENT or CLAM feature file's coords and attributes; :class:`ForeignFeaturesError` if unusable."""
    path = Path(path)
    if fmt not in FORMATS:
        raise ForeignFeaturesError(f"{path}: unknown feature format {fmt!r}; known: {', '.join(FORMATS)}")
    slide_id = check_id(path.stem, source=path, error=ForeignFeaturesError)
    if not path.is_file():
        raise ForeignFeaturesError(f"{path}: no such feature file")
    try:
        with h5py.File(path, "r") as f:
            if not isinstance(f.get("features"), h5py.Dataset) or not isinstance(f.get("coords"), h5py.Dataset):
                raise ForeignFeaturesError(f"{path}: not a {fmt} feature file (needs 'features' and 'coords' datasets)")
            feats, cds = f["features"], f["coords"]
            shape = feats.shape
            if len(shape) == 3 and shape[0] == 1:
                shape = shape[1:]
            if len(shape) != 2 or shape[1] < 1:
                raise ForeignFeaturesError(f"{path}: features must be N x D (or 1 x N x D), got {feats.shape}")
            if not np.issubdtype(feats.dtype, np.floating):
                raise ForeignFeaturesError(f"{path}: features must be floating point, got {feats.dtype}")
            coords, coord_attrs, dtype = cds[()], dict(cds.attrs), np.dtype(feats.dtype)
            encoder = _text(feats.attrs.get("encoder"))
    except OSError as exc:
        raise ForeignFeaturesError(f"{path}: unreadable HDF5 file ({exc})") from None
    if coords.ndim == 3 and coords.shape[0] == 1:
        coords = coords[0]
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ForeignFeaturesError(f"{path}: coords must be N x 2 (x, y), got {coords.shape}")
    if len(coords) != shape[0]:
        raise ForeignFeaturesError(f"{path}: {len(coords)} coords but {shape[0]} feature rows")
    whole = np.issubdtype(coords.dtype, np.integer) or (
        np.issubdtype(coords.dtype, np.floating) and np.isfinite(coords).all() and (coords == np.round(coords)).all())
    if not whole:
        raise ForeignFeaturesError(f"{path}: coords must be whole level-0 pixels, got {coords.dtype} values")
    coords = coords.astype(np.int64)
    if len(coords) and coords.min() < 0:
        raise ForeignFeaturesError(f"{path}: negative coords (level-0 top-left corners must be >= 0)")

    patch0, patch_px, stride0 = _patch_attrs(coord_attrs, fmt)
    if fmt == "clam" and patch0 is None:
        patch0, clam_px = _clam_patch_attrs(path, slide_id, None if coords_dir is None else Path(coords_dir))
        patch_px = clam_px if patch_px is None else patch_px
    width, height = _attr(coord_attrs, "level0_width"), _attr(coord_attrs, "level0_height")
    return ForeignFile(path, fmt, slide_id, coords, int(shape[1]), dtype, encoder, patch0,
                       None if patch_px is None else int(round(patch_px)), stride0,
                       None if width is None or height is None else (int(width), int(height)))


def _spacing(coords0: np.ndarray) -> int | None:
    """The most common gap between neighbouring distinct x (and y) values: the stride of a regular grid."""
    gaps = np.concatenate([np.diff(np.unique(coords0[:, 0])), np.diff(np.unique(coords0[:, 1]))])
    if len(gaps) == 0:
        return None
    values, counts = np.unique(gaps, return_counts=True)
    return int(values[np.argmax(counts)])


def grid_cells(ff: ForeignFile, patch0: float, snap: bool = False) -> tuple[int, np.ndarray]:
    """The level-0 stride and each patch's ``(row, col)`` cell on an alkit grid anchored at the slide's corner."""
    where = ff.path
    recovered = _spacing(ff.coords0)
    if ff.stride0 is not None:
        if abs(ff.stride0 - round(ff.stride0)) > 1e-6:
            raise ForeignFeaturesError(f"{where}: the attributes give a stride of {ff.stride0:g} level-0 px, "
                                       "not a whole number of pixels")
        stride0 = int(round(ff.stride0))
        if recovered is not None and recovered % stride0 and not snap:
            raise ForeignFeaturesError(f"{where}: coords are spaced {recovered} px apart, but the attributes "
                                       f"(patch_size_level0, overlap) give a stride of {stride0} px")
    else:
        stride0 = recovered if recovered is not None else int(round(patch0))
        if stride0 > patch0 and stride0 % int(round(patch0)) == 0:  # sparse patches of a gap-free grid
            stride0 = int(round(patch0))
    if stride0 <= 0:
        raise ForeignFeaturesError(f"{where}: cannot recover a grid stride from the coords")
    if stride0 > patch0 + 1e-6:
        raise ForeignFeaturesError(f"{where}: coords are {stride0} px apart but patches are {patch0:g} px: "
                                   "the patch grid cannot be recovered (gaps between patches)")
    offsets = ff.coords0 % stride0
    if not snap:
        distinct = np.unique(offsets, axis=0)
        if len(distinct) > 1:
            raise ForeignFeaturesError(
                f"{where}: coords are not on one regular grid of stride {stride0} px ({len(distinct)} different "
                "offsets, e.g. one grid per tissue contour); pass --snap to place each patch in the nearest "
                "alkit cell (moves patches by at most half a stride)")
        if len(distinct) and distinct[0].any():
            ox, oy = (int(v) for v in distinct[0])
            raise ForeignFeaturesError(
                f"{where}: the coords' grid is shifted by ({ox}, {oy}) px from the slide's top-left corner, "
                "where alkit's grids start; pass --snap to place each patch in the nearest cell")
        cells = ff.coords0[:, ::-1] // stride0
    else:
        cells = np.floor(ff.coords0[:, ::-1] / stride0 + 0.5).astype(np.int64)
    keys = cells[:, 0] * (1 << 32) + cells[:, 1]
    if len(np.unique(keys)) != len(keys):
        raise ForeignFeaturesError(f"{where}: several patches fall into one grid cell of {stride0} px "
                                   + ("after snapping" if snap else "(repeated coords)"))
    return stride0, cells


@dataclass(frozen=True)
class ImportPlan:
    """One checked foreign file and the store it becomes."""

    source: ForeignFile
    slide_path: Path | None
    grid: PatchGrid
    cells: np.ndarray  # (n, 2) row, col of each source row
    out: Path
    attrs: dict


def _find_slide(slides_dir: Path, slide_id: str, source: Path) -> Path:
    matches = [p for p in visible(sorted(slides_dir.iterdir())) if p.is_file() and p.stem == slide_id
               and p.suffix.lower() not in (".h5", ".json", ".txt", ".csv", ".xml", ".geojson")]
    if not matches:
        raise ForeignFeaturesError(f"{source}: no slide file named {slide_id}.* in {slides_dir}")
    if len(matches) > 1:
        raise ForeignFeaturesError(f"{source}: several slide files named {slide_id}.* in {slides_dir}: "
                                   f"{', '.join(p.name for p in matches)}")
    return matches[0]


def plan_import(ff: ForeignFile, out_dir: Path, *, slides_dir: Path | None, slide_mpp: float | None,
                encoder: str | None, patch_px0: float | None, snap: bool) -> ImportPlan:
    """Check one file against its slide and work out its alkit grid, store path and attributes."""
    patch0 = ff.patch0
    if patch0 is None:
        patch0 = patch_px0
    elif patch_px0 is not None and abs(patch_px0 - patch0) > 1e-6:
        raise ForeignFeaturesError(f"{ff.path}: --patch-px {patch_px0:g} contradicts the file's patch size of "
                                   f"{patch0:g} level-0 px")
    if patch0 is None:
        hint = "--coords DIR (CLAM's patches/ folder) or " if ff.format == "clam" else ""
        raise ForeignFeaturesError(f"{ff.path}: no patch size (attribute 'patch_size_level0', or 'patch_size' with "
                                   f"'level0_magnification' / 'target_magnification'); pass {hint}--patch-px "
                                   "(the patch side in level-0 px)")
    stride0, cells = grid_cells(ff, patch0, snap)
    slide_path = None if slides_dir is None else _find_slide(slides_dir, ff.slide_id, ff.path)
    content_id = None
    if slide_path is not None:
        with Slide(slide_path, fallback_mpp=slide_mpp) as slide:
            dims, res0, content_id = tuple(slide.dimensions), slide.mpp, slide.content_id
        if ff.dimensions is not None and tuple(ff.dimensions) != dims:
            raise ForeignFeaturesError(f"{ff.path}: features of a {ff.dimensions[0]} x {ff.dimensions[1]} px slide, "
                                       f"but {slide_path} is {dims[0]} x {dims[1]} px")
    else:
        if ff.dimensions is None:
            raise ForeignFeaturesError(f"{ff.path}: the file does not record the slide's size "
                                       "(level0_width / level0_height); pass --slides DIR")
        if slide_mpp is None:
            raise ForeignFeaturesError(f"{ff.path}: without --slides the slide's resolution is unknown; "
                                       "pass --slide-mpp (level-0 µm/px)")
        dims, res0 = tuple(ff.dimensions), float(slide_mpp)
    if len(ff.coords0) and ((ff.coords0[:, 0] >= dims[0]).any() or (ff.coords0[:, 1] >= dims[1]).any()):
        raise ForeignFeaturesError(f"{ff.path}: coords outside the {dims[0]} x {dims[1]} px slide")
    # the grid at the extraction resolution where that gives whole pixels, else at level 0
    down = patch0 / ff.patch_px if ff.patch_px else 1.0
    patch, stride = patch0 / down, stride0 / down
    if abs(patch - round(patch)) > 1e-6 or abs(stride - round(stride)) > 1e-6:
        down, patch, stride = 1.0, patch0, float(stride0)
    if abs(patch - round(patch)) > 1e-6:
        raise ForeignFeaturesError(f"{ff.path}: a patch side of {patch0:g} level-0 px is not a whole number of pixels")
    grid = PatchGrid(dims, res0, res0 * down, int(round(patch)), int(round(stride)))
    rows, cols = grid.shape
    if len(cells) and (cells.min() < 0 or (cells[:, 0] >= rows).any() or (cells[:, 1] >= cols).any()):
        raise ForeignFeaturesError(f"{ff.path}: patches fall outside the {rows} x {cols} grid of the slide")
    name = encoder or f"{ff.format}:{ff.encoder or 'unknown'}"
    attrs = {
        "encoder": name, "weights_id": f"imported:{ff.format}:{ff.encoder or 'unknown'}", "dim": ff.dim,
        "mpp": grid.mpp, "patch": grid.patch, "stride": grid.stride, "min_tissue": None, "slide": ff.slide_id,
        "slide_path": "" if slide_path is None else str(slide_path), "slide_content_id": content_id,
        "slide_dimensions": list(dims), "slide_mpp": res0, "grid_shape": list(grid.shape),
        "source": {"format": ff.format, "file": str(ff.path), "encoder": ff.encoder, "snapped": bool(snap)},
    }
    out = store_path(out_dir, ff.slide_id, name, grid.mpp, grid.patch, grid.stride)
    return ImportPlan(ff, slide_path, grid, cells, out, attrs)


def _tissue(plan: ImportPlan, slide_mpp: float | None) -> np.ndarray:
    """Tissue fraction of every cell: alkit's own from the slide, else 1 where the tool kept a patch."""
    if plan.slide_path is not None:
        from alkit.wsi.tissue import detect_tissue

        with Slide(plan.slide_path, fallback_mpp=slide_mpp) as slide:
            return plan.grid.with_tissue(detect_tissue(slide)).tissue_fraction
    fraction = np.zeros(plan.grid.shape, np.float32)
    fraction[plan.cells[:, 0], plan.cells[:, 1]] = 1.0
    return fraction


def write_plan(plan: ImportPlan, slide_mpp: float | None = None, chunk_rows: int = CHUNK_ROWS) -> Path:
    """Copy one file's features into its store, ``chunk_rows`` at a time, in row-major cell order."""
    cells = plan.cells
    order = np.lexsort((cells[:, 1], cells[:, 0]))  # row-major, as alkit writes its stores
    dest = np.empty(len(order), np.int64)
    dest[order] = np.arange(len(order))
    ff = plan.source
    store = IncrementalStore(plan.out, cells[order], plan.attrs, ff.dim, _tissue(plan, slide_mpp),
                             dtype=np.float32 if ff.dtype.itemsize > 4 else ff.dtype)
    try:
        with h5py.File(ff.path, "r") as f:
            feats = f["features"]
            squeeze = feats.ndim == 3
            for start in range(0, ff.n, chunk_rows):
                stop = min(start + chunk_rows, ff.n)
                block = feats[0, start:stop] if squeeze else feats[start:stop]
                if not np.isfinite(block).all():
                    raise ForeignFeaturesError(f"{ff.path}: features rows {start}..{stop - 1} hold NaN or infinity")
                store.write(dest[start:stop], block)
        path = store.commit()
    except BaseException:
        store.abort()
        raise
    StoreHeader.load(path)  # what alkit reads back
    return path


def foreign_files(items: Sequence[str | os.PathLike]) -> list[Path]:
    """Feature files: ``.h5`` files as given, and the visible ``*.h5`` of given folders (sorted)."""
    out: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found = visible(sorted(item.glob("*.h5")))
            if not found:
                raise ForeignFeaturesError(f"{item}: no .h5 feature files in this folder")
            out.extend(found)
        elif item.is_file():
            out.append(item)
        else:
            raise ForeignFeaturesError(f"{item}: no such feature file or folder")
    return list(dict.fromkeys(out))


def import_features(features: Sequence[str | os.PathLike], out_dir: str | os.PathLike, fmt: str, *,
                    slides_dir: str | os.PathLike | None = None, slide_mpp: float | None = None,
                    encoder: str | None = None, patch_px: float | None = None,
                    coords_dir: str | os.PathLike | None = None, snap: bool = False,
                    progress: bool = False) -> list[Path]:
    """Turn TRIDENT or CLAM feature files into alkit stores under ``out_dir``; returns the store paths.

    Every file is read and checked (grid, slide, one encoder and dimension for all) before the first
    store is written, so a bad file leaves nothing behind.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ForeignFeaturesError(f"{out}: exists and is not a folder (the stores go into a folder)")
    slides = None if slides_dir is None else Path(slides_dir)
    if slides is not None and not slides.is_dir():
        raise ForeignFeaturesError(f"{slides}: --slides must be a folder of slide files")
    plans: list[ImportPlan] = []
    for path in foreign_files(features):
        ff = read_foreign(path, fmt, coords_dir)
        plan = plan_import(ff, out, slides_dir=slides, slide_mpp=slide_mpp, encoder=encoder, patch_px0=patch_px,
                           snap=snap)
        if plans:
            first = plans[0]
            if (ff.dim, ff.encoder) != (first.source.dim, first.source.encoder):
                raise ForeignFeaturesError(f"{path}: {ff.dim}-d features of encoder {ff.encoder!r}, but "
                                           f"{first.source.path} has {first.source.dim}-d of {first.source.encoder!r}; "
                                           "import one encoder at a time")
            if any(p.out == plan.out for p in plans):
                raise ForeignFeaturesError(f"{path}: slide {ff.slide_id!r} is given twice")
        plans.append(plan)
    from tqdm.auto import tqdm

    stores = []
    for plan in tqdm(plans, desc="stores", unit="slide", disable=not progress):
        stores.append(write_plan(plan, slide_mpp))
        log.info("%s -> %s (%d patches)", plan.source.path, plan.out, plan.source.n)
    return stores
