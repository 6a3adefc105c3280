"""A seeded synthetic cohort: H&E-like pyramidal TIFF slides with ground truth and a caption database.

:func:`generate_cohort` writes, under ``out``::

    slides/synth_000.tif ...        tiled pyramidal TIFFs (JPEG tiles, mpp in the resolution tags;
                                    OpenSlide opens them as ``generic-tiff``)
    annotations/synth_000.xml ...   tumour polygons as CAMELYON16-style ASAP XML (group ``_0``)
    annotations/mitoses.sqlite      mitotic figures and lookalikes, one SlideRunner database
    masks/synth_000_tissue.png ...  the generator's tissue mask at the planning resolution
    captions/captions.json          an ARCH-like caption database (books-set layout) ...
    captions/images/<uuid>.png      ... with its images
    captions/truth.json             the true kind of every caption image (not part of ARCH); for
                                    mitosis close-ups also ``figures``: [x, y] image px of each figure
    cohort.json                     the manifest (:class:`SyntheticCohort`)

How a slide is made. A low-resolution *plan* (one plan pixel is ``f`` level-0 pixels, about
1 µm, at most ~1024 plan pixels across) decides where things are: irregular tissue pieces
(thresholded smooth noise), lymphoid patches, tumour regions (polygons grown from a few foci inside
the tissue until they cover the drawn fraction of it), distractors kept off the tumour (pen strokes,
folds, air bubbles, out-of-focus patches) and mitotic figures / lookalikes (points, kept away from
the distractors). Pixels are then rendered window by window, each window a pure function of its
level-0 coordinates: plan fields are upsampled bilinearly, the tumour polygons are rasterised, stroma
texture is value noise hashed from global lattice coordinates, and nuclei sit on jittered global
lattices whose points are accepted, typed and given a pre-rendered sprite by hashes of their lattice
indices. So tiles are independent, seamless and deterministic, and the slide streams to disk tile
by tile (reduced levels go through a disk-backed buffer): memory does not grow with the slide.
Colour is Beer-Lambert mixing of hematoxylin, eosin (and, for IHC caption images, DAB) densities.

Everything random descends from ``seed`` (numpy ``Generator`` streams keyed by slide, plus a counter
hash for pixels). The same arguments give the same ground truth and, on the same machine and
library versions, byte-identical files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import tempfile
import uuid as uuidlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path

import numpy as np
import shapely
from PIL import Image, ImageDraw
from scipy import ndimage
from shapely.geometry import Polygon, box
from skimage.draw import line as draw_line
from skimage.measure import find_contours

from alkit.atomic import atomic_path, atomic_write_text
from alkit.errors import AlkitError
from alkit.annotations.asap import CAMELYON16_GROUPS, write_asap_xml
from alkit.annotations.sliderunner import SlideRunnerAnnotation, SlideRunnerSlide, write_sliderunner

log = logging.getLogger(__name__)


class SyntheticError(AlkitError, ValueError):
    """Invalid arguments for :func:`generate_cohort`; the message names the argument."""

__all__ = ["generate_cohort", "SyntheticCohort", "SyntheticError", "SyntheticSlide", "MITOSIS_CLASS",
           "LOOKALIKE_CLASS", "CAPTION_KINDS"]

MITOSIS_CLASS = "Mitotic figure"
LOOKALIKE_CLASS = "Mitotic figure lookalike"
CAPTION_KINDS = ("tumour", "normal", "mitosis", "artefact", "ihc")
MANIFEST_FORMAT = "alkit.synthetic/1"

_TILE = 512
_JPEG_QUALITY = 85
_LN10 = np.float32(math.log(10.0))
#: A fixed "last modified" stamp (2024-01-01) keeps the SQLite output reproducible.
_DB_STAMP = 1704067200.0

# Optical density (log10) per unit stain concentration, tuned by eye for H&E-like colour.
_V_H = np.array([0.58, 0.68, 0.26], np.float32)   # hematoxylin: blue-purple
_V_E = np.array([0.09, 0.72, 0.31], np.float32)   # eosin: pink
_V_DAB = np.array([0.27, 0.57, 0.78], np.float32)  # DAB: brown (IHC)
_V_BG = np.array([0.030, 0.032, 0.026], np.float32)
_INKS = {  # pen ink OD per unit concentration
    "green": np.array([0.70, 0.26, 0.52], np.float32),
    "blue": np.array([0.72, 0.50, 0.16], np.float32),
    "black": np.array([0.85, 0.85, 0.78], np.float32),
}

# Nucleus sprite classes.
_LYMPH, _SPINDLE, _ROUND, _TUMOUR, _MITOSIS, _LOOKALIKE = range(6)
_BANK_SIZES = {_LYMPH: 32, _SPINDLE: 32, _ROUND: 32, _TUMOUR: 64, _MITOSIS: 24, _LOOKALIKE: 24}
_SPACING_A_UM = 12.0   # lattice of tumour / stromal / epithelial nuclei
_SPACING_B_UM = 7.0    # lattice of lymphocytes
_JITTER = 0.38


# ----------------------------------------------------------------------------------------------
# counter-based hashing and value noise (pure functions of global coordinates)
# ----------------------------------------------------------------------------------------------

_U = np.uint64


def _hash_u64(ix: np.ndarray, iy: np.ndarray, key: int) -> np.ndarray:
    """splitmix64 of (ix, iy, key), elementwise; ``ix``/``iy`` integer arrays (broadcast)."""
    with np.errstate(over="ignore"):
        z = (np.asarray(ix, np.int64).astype(_U) * _U(0x9E3779B97F4A7C15)
             + np.asarray(iy, np.int64).astype(_U) * _U(0xC2B2AE3D27D4EB4F)
             + _U(key & 0xFFFFFFFFFFFFFFFF))
        z = (z ^ (z >> _U(30))) * _U(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> _U(27))) * _U(0x94D049BB133111EB)
        z = z ^ (z >> _U(31))
    return z


def _hash01(ix: np.ndarray, iy: np.ndarray, key: int) -> np.ndarray:
    """Uniform float32 in [0, 1) from the hash."""
    return (_hash_u64(ix, iy, key) >> _U(40)).astype(np.float32) * np.float32(2.0 ** -24)


@lru_cache(maxsize=1024)
def _noise_matrix(start: int, n: int, spacing: float) -> tuple[np.ndarray, int, int]:
    """Smoothstep interpolation weights from lattice points (every ``spacing`` px) to pixels."""
    u = (np.arange(start, start + n, dtype=np.float64) + 0.5) / spacing
    k = np.floor(u).astype(np.int64)
    t = u - k
    t = (t * t * (3.0 - 2.0 * t)).astype(np.float32)
    lo = int(k.min())
    m = int(k.max()) - lo + 2
    w = np.zeros((n, m), np.float32)
    rows = np.arange(n)
    w[rows, k - lo] = 1.0 - t
    w[rows, k - lo + 1] = t
    w.setflags(write=False)
    return w, lo, m


def _value_noise(x0: int, y0: int, w: int, h: int, sx: float, sy: float, key: int) -> np.ndarray:
    """Value noise in [0, 1] over a level-0 window, lattice spacing ``sx`` x ``sy`` px."""
    wx, kx, mx = _noise_matrix(int(x0), int(w), float(sx))
    wy, ky, my = _noise_matrix(int(y0), int(h), float(sy))
    lat = _hash01(np.arange(kx, kx + mx)[None, :], np.arange(ky, ky + my)[:, None], key)
    return (wy @ lat) @ wx.T


@lru_cache(maxsize=1024)
def _bilinear_matrix(start: int, n: int, f: int, size: int) -> tuple[np.ndarray, int, int]:
    """Bilinear weights from plan pixels (centres at ``(k + 0.5) f - 0.5``) to level-0 pixels
    ``start .. start+n-1``; indices clip to the plan (edge values extend outwards)."""
    u = (np.arange(start, start + n, dtype=np.float64) + 0.5) / f - 0.5
    k = np.floor(u).astype(np.int64)
    t = (u - k).astype(np.float32)
    k0 = np.clip(k, 0, size - 1)
    k1 = np.clip(k + 1, 0, size - 1)
    lo, hi = int(k0.min()), int(k1.max()) + 1
    w = np.zeros((n, hi - lo), np.float32)
    rows = np.arange(n)
    np.add.at(w, (rows, k0 - lo), 1.0 - t)
    np.add.at(w, (rows, k1 - lo), t)
    w.setflags(write=False)
    return w, lo, hi


def _plan_window(plan: np.ndarray, f: int, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """Bilinearly upsample the part of a plan field covering a level-0 window."""
    wx, xlo, xhi = _bilinear_matrix(int(x0), int(w), f, plan.shape[1])
    wy, ylo, yhi = _bilinear_matrix(int(y0), int(h), f, plan.shape[0])
    return (wy @ plan[ylo:yhi, xlo:xhi]) @ wx.T


def _plan_crop_max(plan: np.ndarray, f: int, x0: int, y0: int, w: int, h: int) -> float:
    """Largest plan value that can influence a level-0 window (cheap presence test)."""
    ph, pw = plan.shape
    c0 = min(max(int(math.floor(x0 / f)) - 1, 0), pw - 1)
    c1 = min(max(int(math.ceil((x0 + w) / f)) + 1, c0 + 1), pw)
    r0 = min(max(int(math.floor(y0 / f)) - 1, 0), ph - 1)
    r1 = min(max(int(math.ceil((y0 + h) / f)) + 1, r0 + 1), ph)
    return float(plan[r0:r1, c0:c1].max())


def _sample_plan(plan: np.ndarray, f: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear plan value at level-0 points (the same interpolation as :func:`_plan_window`)."""
    ph, pw = plan.shape
    u = (np.asarray(x, np.float64) + 0.5) / f - 0.5
    v = (np.asarray(y, np.float64) + 0.5) / f - 0.5
    ku, kv = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    tu, tv = (u - ku).astype(np.float32), (v - kv).astype(np.float32)
    u0, u1 = np.clip(ku, 0, pw - 1), np.clip(ku + 1, 0, pw - 1)
    v0, v1 = np.clip(kv, 0, ph - 1), np.clip(kv + 1, 0, ph - 1)
    top = plan[v0, u0] * (1 - tu) + plan[v0, u1] * tu
    bot = plan[v1, u0] * (1 - tu) + plan[v1, u1] * tu
    return top * (1 - tv) + bot * tv


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], corr: float) -> np.ndarray:
    """Zero-mean, unit-std smooth noise with correlation length ``corr`` px (coarse grid + smoothstep)."""
    corr = max(float(corr), 1.0)
    h, w = shape
    wy, _, my = _noise_matrix(0, h, corr)
    wx, _, mx = _noise_matrix(0, w, corr)
    coarse = rng.standard_normal((my, mx))  # float64: the plan (ground truth) should not hinge
    out = (wy.astype(np.float64) @ coarse) @ wx.T.astype(np.float64)  # on float32 rounding
    out -= out.mean()
    sd = float(out.std())
    return (out / sd if sd > 0 else out).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# nucleus sprites
# ----------------------------------------------------------------------------------------------

def _blob(rng: np.random.Generator, a: float, b: float, theta: float, pert: float,
          soft: float = 0.8, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Alpha and normalised radius of an irregular ellipse (semi-axes ``a``, ``b`` px)."""
    rmax = max(a, b) * (1 + 2.5 * pert) + 2
    s = size or 2 * int(math.ceil(rmax)) + 1
    c = (s - 1) / 2
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) - np.float32(c)
    ct, st = math.cos(theta), math.sin(theta)
    xr = (xx * ct + yy * st) / a
    yr = (-xx * st + yy * ct) / b
    r = np.sqrt(xr * xr + yr * yr)
    phi = np.arctan2(yr, xr)
    mod = np.ones_like(r)
    for k in range(2, 6):
        mod += np.float32(pert * rng.standard_normal() / (k - 1) ** 0.5) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    rho = r / np.maximum(mod, 0.3)
    alpha = np.clip((1.0 - rho) * min(a, b) / soft + 0.5, 0.0, 1.0)
    return alpha.astype(np.float32), rho.astype(np.float32)


def _texture(rng: np.random.Generator, s: int, sigma: float) -> np.ndarray:
    t = ndimage.gaussian_filter(rng.standard_normal((s, s)).astype(np.float32), max(sigma, 0.5))
    sd = float(t.std())
    return t / sd if sd > 0 else t


def _gauss_sum(s: int, pts: np.ndarray, sig: np.ndarray) -> np.ndarray:
    c = (s - 1) / 2
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) - np.float32(c)
    d2 = (xx[..., None] - pts[:, 0]) ** 2 + (yy[..., None] - pts[:, 1]) ** 2
    return np.exp(-d2 / (2 * sig ** 2)).sum(axis=-1).astype(np.float32)


class _SpriteBank:
    """Pre-rendered hematoxylin-concentration sprites per nucleus class at one mpp."""

    def __init__(self, mpp: float, seed: int):
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 7919, int(round(mpp * 1e4))])
        self.mpp = mpp
        p = 1.0 / mpp  # px per µm
        self.sprites: dict[int, list[np.ndarray]] = {}
        self.halos: dict[int, list[np.ndarray]] = {}
        mk = {_LYMPH: self._lymph, _SPINDLE: self._spindle, _ROUND: self._round,
              _TUMOUR: self._tumour, _MITOSIS: self._mitosis, _LOOKALIKE: self._lookalike}
        for cls, n in _BANK_SIZES.items():
            items = [mk[cls](rng, p) for _ in range(n)]
            self.sprites[cls] = [it[0] for it in items]
            self.halos[cls] = [it[1] for it in items]
        self.max_half = max(s.shape[0] // 2 for lst in self.sprites.values() for s in lst)
        self.max_half = max(self.max_half, max(h.shape[0] // 2 for lst in self.halos.values()
                                               for h in lst if h is not None))

    @staticmethod
    def _lymph(rng, p):
        a = rng.uniform(2.6, 3.3) * p
        al, _ = _blob(rng, a, a * rng.uniform(0.85, 1.0), rng.uniform(0, np.pi), 0.03)
        tex = _texture(rng, al.shape[0], 0.4 * p)
        return al * np.float32(rng.uniform(0.95, 1.2)) * (1 + 0.12 * tex), None

    @staticmethod
    def _spindle(rng, p):
        a = rng.uniform(5.0, 8.5) * p
        al, _ = _blob(rng, a, rng.uniform(1.1, 1.8) * p, rng.uniform(0, np.pi), 0.05)
        tex = _texture(rng, al.shape[0], 0.4 * p)
        return al * np.float32(rng.uniform(0.6, 0.85)) * (1 + 0.15 * tex), None

    @staticmethod
    def _round(rng, p):
        a = rng.uniform(3.0, 4.3) * p
        al, _ = _blob(rng, a, a * rng.uniform(0.7, 1.0), rng.uniform(0, np.pi), 0.04)
        tex = _texture(rng, al.shape[0], 0.4 * p)
        return al * np.float32(rng.uniform(0.55, 0.75)) * (1 + 0.18 * tex), None

    @staticmethod
    def _tumour(rng, p):
        a = rng.uniform(4.3, 7.2) * p
        al, rho = _blob(rng, a, a * rng.uniform(0.6, 0.95), rng.uniform(0, np.pi),
                        rng.uniform(0.05, 0.15))
        s = al.shape[0]
        tex = _texture(rng, s, 0.6 * p)
        conc = al * np.float32(rng.uniform(0.72, 1.05)) * (1 + 0.3 * tex)
        conc *= 0.62 + 0.5 * np.clip(rho, 0, 1) ** 2  # chromatin along the membrane (vesicular)
        for _ in range(rng.integers(0, 3)):
            off = rng.uniform(-0.4, 0.4, 2) * a
            conc += 0.5 * al * _gauss_sum(s, off[None, :], np.array([0.55 * p], np.float32))
        return conc.astype(np.float32), None

    @staticmethod
    def _mitosis(rng, p):
        s = 2 * int(math.ceil(9.0 * p)) + 1
        kind = rng.integers(0, 3)
        th = rng.uniform(0, np.pi)
        d = np.array([math.cos(th), math.sin(th)], np.float32)
        nrm = np.array([-d[1], d[0]], np.float32)
        if kind == 0:  # metaphase plate with ragged projections
            L = rng.uniform(7, 11) * p
            t = rng.uniform(-0.5, 0.5, 28)[:, None] * L
            off = rng.normal(0, 0.55 * p, 28)[:, None]
            spikes = rng.normal(0, 1.6 * p, 8)[:, None]
            pts = np.concatenate([t * d + off * nrm, rng.uniform(-0.5, 0.5, 8)[:, None] * L * d + spikes * nrm])
        elif kind == 1:  # clumped chromosomes
            pts = rng.normal(0, 1.7 * p, (18, 2))
        else:  # anaphase: two parallel plates
            L = rng.uniform(6, 9) * p
            sep = rng.uniform(2.2, 3.5) * p
            t = rng.uniform(-0.5, 0.5, 36)[:, None] * L
            side = np.where(np.arange(36) % 2 == 0, 1.0, -1.0)[:, None] * sep
            pts = t * d + (side + rng.normal(0, 0.5 * p, (36, 1))) * nrm
        sig = rng.uniform(0.45, 0.9, len(pts)).astype(np.float32) * p
        g = _gauss_sum(s, pts.astype(np.float32), sig)
        conc = np.clip(g, 0, 1) ** 0.7 * np.float32(rng.uniform(1.5, 1.9))
        halo_a, _ = _blob(rng, rng.uniform(6.5, 8.5) * p, rng.uniform(6, 8) * p, 0.0, 0.05, soft=2 * p,
                          size=s)
        return conc.astype(np.float32), (halo_a * np.float32(0.6)).astype(np.float32)

    @staticmethod
    def _lookalike(rng, p):
        s = 2 * int(math.ceil(8.0 * p)) + 1
        if rng.random() < 0.6:  # pyknotic nucleus: round, smooth, very dark
            a = rng.uniform(2.2, 3.6) * p
            al, _ = _blob(rng, a, a * rng.uniform(0.8, 1.0), 0.0, 0.02, soft=0.5, size=s)
            conc = al * np.float32(rng.uniform(1.4, 1.8))
        else:  # apoptotic fragments
            pts = rng.normal(0, 1.6 * p, (rng.integers(3, 6), 2)).astype(np.float32)
            g = _gauss_sum(s, pts, rng.uniform(0.7, 1.3, len(pts)).astype(np.float32) * p)
            conc = np.clip(g * 1.6, 0, 1) * np.float32(rng.uniform(1.3, 1.7))
        halo_a, _ = _blob(rng, rng.uniform(4.5, 6.0) * p, rng.uniform(4.5, 6.0) * p, 0.0, 0.05,
                          soft=1.5 * p, size=s)
        return conc.astype(np.float32), (-halo_a * np.float32(0.5)).astype(np.float32)  # eosinophilic


_BANKS: dict[tuple[float, int], _SpriteBank] = {}


def _bank(mpp: float, seed: int) -> _SpriteBank:
    key = (round(float(mpp), 6), int(seed))
    bank = _BANKS.get(key)
    if bank is None:
        if len(_BANKS) > 32:
            _BANKS.clear()
        bank = _BANKS[key] = _SpriteBank(mpp, seed)
    return bank


# ----------------------------------------------------------------------------------------------
# the plan: where tissue, tumour, figures and distractors are
# ----------------------------------------------------------------------------------------------

@dataclass
class _Figure:
    """A mitotic figure or lookalike (``deleted`` ones are only in the database, never drawn)."""

    x: float
    y: float
    cls: str
    deleted: bool
    in_tumour: bool
    sprite: int


@dataclass
class _Layout:
    width: int
    height: int
    mpp: float
    f: int                                   # level-0 px per plan px
    tissue_bin: np.ndarray                   # plan, bool
    tissue: np.ndarray                       # plan, smoothed; the tissue mask is tissue > 0.5
    key: int                                 # noise key
    lymph: np.ndarray | None = None
    fold: np.ndarray | None = None
    pen: np.ndarray | None = None            # (3, ph, pw) ink optical density
    bubble_rim: np.ndarray | None = None
    bubble_in: np.ndarray | None = None
    blur: np.ndarray | None = None
    blur_sigma_px: float = 0.0
    tumour_polys: list[np.ndarray] = field(default_factory=list)   # level-0 (k, 2) x, y
    tumour_geom: object | None = None
    figures: list[_Figure] = field(default_factory=list)
    v_h: np.ndarray = field(default_factory=lambda: _V_H.copy())
    v_e: np.ndarray = field(default_factory=lambda: _V_E.copy())
    ihc: str | None = None                   # None, "membrane" or "nuclear"
    distractors: dict[str, int] = field(default_factory=dict)
    tissue_dist: np.ndarray | None = None    # plan, distance to the tissue edge (planning only)

    @property
    def plan_shape(self) -> tuple[int, int]:
        return self.tissue.shape  # type: ignore[return-value]

    def um_to_plan(self, um: float) -> float:
        return um / (self.f * self.mpp)


def _plan_factor(width: int, height: int, mpp: float) -> int:
    """Power of two; about 1 µm per plan pixel, at most ~1024 plan pixels across."""
    by_size = 2 ** max(0, math.ceil(math.log2(max(width, height) / 1024)))
    by_phys = 1
    while by_phys * 2 * mpp <= 1.0 + 1e-9:
        by_phys *= 2
    return int(max(by_size, min(4, by_phys)))


def _remove_small(mask: np.ndarray, min_px: float) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())
    keep = sizes >= min_px
    keep[0] = False
    return keep[lab]


def _tissue_bin(rng: np.random.Generator, ph: int, pw: int, mode: str) -> np.ndarray:
    if mode == "full":
        return np.ones((ph, pw), bool)
    m = min(ph, pw)
    yy, xx = np.ogrid[0:ph, 0:pw]
    yy, xx = yy.astype(np.float32), xx.astype(np.float32)
    noise = _smooth_noise(rng, (ph, pw), corr=m * 0.16)
    best = None
    for _ in range(30):
        env = np.full((ph, pw), -np.inf, np.float32)
        n = int(rng.integers(1, 4)) if mode == "pieces" else 1
        for _ in range(n):
            if mode == "pieces":
                cx, cy = rng.uniform(0.25, 0.75) * pw, rng.uniform(0.25, 0.75) * ph
                r = rng.uniform(0.22, 0.36) * m / n ** 0.35
            else:  # "partial": one big piece leaving part of the field empty
                cx, cy = rng.uniform(-0.1, 1.1) * pw, rng.uniform(-0.1, 1.1) * ph
                r = rng.uniform(0.55, 0.8) * m
            rx, ry = r, r * rng.uniform(0.55, 1.0)
            th = rng.uniform(0, np.pi)
            dx, dy = xx - np.float32(cx), yy - np.float32(cy)
            xr = (dx * math.cos(th) + dy * math.sin(th)) / rx
            yr = (-dx * math.sin(th) + dy * math.cos(th)) / ry
            np.maximum(env, 1.0 - (xr * xr + yr * yr), out=env)
        mask = _remove_small(env + 0.5 * noise > 0, 0.002 * ph * pw)
        frac = float(mask.mean())
        if best is None or abs(frac - 0.4) < abs(float(best.mean()) - 0.4):
            best = mask
        if 0.2 <= frac <= 0.65:
            break
    return best


def _polys_from_field(fieldv: np.ndarray, level: float, min_area: float,
                      tol: float) -> list[Polygon]:
    """Hole-free polygons (plan coordinates x=col, y=row) enclosing ``fieldv > level``."""
    padded = np.pad(fieldv, 1, constant_values=float(fieldv.min()) - 1.0)
    parts = []
    for c in find_contours(padded, level):
        if len(c) < 4:
            continue
        p = Polygon(np.stack([c[:, 1] - 1, c[:, 0] - 1], axis=1))
        if not p.is_valid:
            p = shapely.make_valid(p)
        for g in getattr(p, "geoms", [p]):
            if isinstance(g, Polygon) and not g.is_empty:
                parts.append(Polygon(g.exterior))
    if not parts:
        return []
    merged = shapely.union_all(parts)
    out = []
    for g in getattr(merged, "geoms", [merged]):
        if isinstance(g, Polygon) and g.area >= min_area:
            s = Polygon(g.exterior).simplify(tol, preserve_topology=True)
            if s.is_valid and s.area >= min_area:
                out.append(s)
    return out


def _plan_to_level0(p: Polygon, f: int) -> np.ndarray:
    xy = np.asarray(p.exterior.coords, dtype=float)[:-1]
    return (xy + 0.5) * f - 0.5


def _tumour_regions(rng: np.random.Generator, lay: _Layout,
                    target: float) -> tuple[list[np.ndarray], float]:
    """Tumour polygons (level 0) covering about ``target`` of the tissue; returns (polys, area px)."""
    tb = lay.tissue_bin
    ph, pw = tb.shape
    tissue_px = float(tb.sum())
    target_px = target * tissue_px
    dist = lay.tissue_dist
    margin = lay.um_to_plan(20.0)
    while margin > 1.0 and (dist > margin).sum() < 4 * target_px:
        margin *= 0.6
    inner = dist > margin
    idx = np.flatnonzero(inner)
    if idx.size == 0:
        return [], 0.0
    n_foci = int(rng.integers(1, 4))
    yy, xx = np.ogrid[0:ph, 0:pw]
    yy, xx = yy.astype(np.float32), xx.astype(np.float32)
    base_sigma = math.sqrt(target_px / (n_foci * math.pi))
    fieldv = np.zeros((ph, pw), np.float32)
    for _ in range(n_foci):
        c = int(rng.choice(idx))
        cy, cx = divmod(c, pw)
        s = base_sigma * rng.uniform(0.8, 1.3)
        fieldv += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / np.float32(2 * s * s))
    fieldv += np.float32(0.18) * _smooth_noise(rng, (ph, pw), corr=max(base_sigma * 0.6, 2.0))
    fieldv[~inner] = -10.0
    vals = fieldv[inner]
    n_px = int(max(1, min(round(target_px), vals.size)))
    min_area = max(4.0, 0.02 * target_px)
    polys: list[Polygon] = []
    area = 0.0
    for _ in range(10):
        level = float(np.partition(vals, -n_px)[-n_px])
        polys = _polys_from_field(fieldv, level, min_area, tol=0.35)
        area = sum(p.area for p in polys)
        if area <= 0:
            n_px = min(vals.size, n_px * 2)
            continue
        if abs(area / target_px - 1) < 0.015:
            break
        n_px = int(max(1, min(vals.size, round(n_px * target_px / area))))
    f = lay.f
    return [_plan_to_level0(p, f) for p in polys], area * f * f


def _stroke_field(rng: np.random.Generator, shape: tuple[int, int], start: tuple[float, float],
                  length: float, width: float, soft: float) -> np.ndarray:
    """A smooth random curve of the given width, as a [0, 1] plan field."""
    ph, pw = shape
    step = max(2.0, length / 40)
    n = max(2, int(length / step))
    heading = rng.uniform(0, 2 * np.pi)
    curv = 0.0
    pts = [np.array(start, float)]
    for _ in range(n):
        curv = float(np.clip(curv + rng.normal(0, 0.06), -0.12, 0.12))
        heading += curv
        pts.append(pts[-1] + step * np.array([math.cos(heading), math.sin(heading)]))
    pts = np.array(pts)
    pad = width / 2 + 2 * soft + 2
    x0 = int(max(0, math.floor(pts[:, 0].min() - pad)))
    x1 = int(min(pw, math.ceil(pts[:, 0].max() + pad)))
    y0 = int(max(0, math.floor(pts[:, 1].min() - pad)))
    y1 = int(min(ph, math.ceil(pts[:, 1].max() + pad)))
    out = np.zeros(shape, np.float32)
    if x1 <= x0 or y1 <= y0:
        return out
    # rasterise the centre line in a box enlarged by the pad, so parts just outside still count
    ex0, ey0 = int(math.floor(pts[:, 0].min() - pad)), int(math.floor(pts[:, 1].min() - pad))
    ew = int(math.ceil(pts[:, 0].max() + pad)) - ex0 + 1
    eh = int(math.ceil(pts[:, 1].max() + pad)) - ey0 + 1
    mask = np.ones((eh, ew), bool)
    ip = np.round(pts - [ex0, ey0]).astype(int)
    for (ax, ay), (bx, by) in zip(ip[:-1], ip[1:]):
        rr, cc = draw_line(ay, ax, by, bx)
        mask[rr, cc] = False
    d = ndimage.distance_transform_edt(mask)
    fv = np.clip((width / 2 - d) / soft + 0.5, 0, 1).astype(np.float32)
    out[y0:y1, x0:x1] = fv[y0 - ey0:y1 - ey0, x0 - ex0:x1 - ex0]
    return out


def _random_tissue_point(rng: np.random.Generator, mask: np.ndarray) -> tuple[float, float]:
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return rng.uniform(0, mask.shape[1]), rng.uniform(0, mask.shape[0])
    r, c = divmod(int(rng.choice(idx)), mask.shape[1])
    return c + rng.uniform(-0.5, 0.5), r + rng.uniform(-0.5, 0.5)


def _tumour_plan_mask(lay: _Layout, grow_um: float = 0.0) -> np.ndarray | None:
    """The tumour polygons rasterised on the plan grid, grown by ``grow_um``."""
    if not lay.tumour_polys:
        return None
    ph, pw = lay.plan_shape
    mask = np.zeros((ph, pw), bool)
    for poly in lay.tumour_polys:
        mask |= _raster_polygon((poly + 0.5) / lay.f - 0.5, 0, 0, pw, ph)
    if grow_um > 0:
        mask = ndimage.distance_transform_edt(~mask) <= lay.um_to_plan(grow_um)
    return mask


def _add_distractors(rng: np.random.Generator, lay: _Layout, spec: dict) -> None:
    """Pen strokes, folds, air bubbles and out-of-focus patches. None of them is tumour, and they
    are kept off the tumour (a pathologist's pen circles a lesion rather than covering it)."""
    ph, pw = lay.plan_shape
    m = min(ph, pw)
    tb = lay.tissue_bin
    avoid = _tumour_plan_mask(lay, grow_um=25.0)
    m_um = m * lay.f * lay.mpp
    counts = {"pen": 0, "fold": 0, "bubble": 0, "blur": 0}

    def clear_of_tumour(make: Callable[[], np.ndarray]) -> np.ndarray:
        fv = make()
        for _ in range(15):
            test = fv.max(axis=0) if fv.ndim == 3 else fv
            if avoid is None or not (test[avoid] > 0.02).any():
                break
            fv = make()
        return fv

    yy, xx = np.ogrid[0:ph, 0:pw]
    yy, xx = yy.astype(np.float32), xx.astype(np.float32)
    for _ in range(int(spec.get("pen", 0))):
        colour = spec.get("pen_colour") or ["green", "blue", "black"][int(rng.integers(0, 3))]
        fv = clear_of_tumour(lambda: _stroke_field(
            rng, (ph, pw), _random_tissue_point(rng, np.ones_like(tb)), rng.uniform(0.4, 0.9) * m,
            lay.um_to_plan(rng.uniform(45, 140)), soft=max(1.0, lay.um_to_plan(4))))
        if lay.pen is None:
            lay.pen = np.zeros((3, ph, pw), np.float32)
        lay.pen += fv[None] * (_INKS[colour] * np.float32(rng.uniform(0.45, 0.75)))[:, None, None]
        counts["pen"] += 1
    for _ in range(int(spec.get("fold", 0))):
        fv = clear_of_tumour(lambda: _stroke_field(
            rng, (ph, pw), _random_tissue_point(rng, tb), rng.uniform(*spec.get("fold_len", (0.2, 0.45))) * m,
            lay.um_to_plan(rng.uniform(*spec.get("fold_um", (25, 70)))), soft=max(1.0, lay.um_to_plan(6))))
        fv *= np.clip(lay.tissue, 0, 1)
        lay.fold = fv if lay.fold is None else np.maximum(lay.fold, fv)
        counts["fold"] += 1
    if spec.get("bubble", 0):
        rim = np.zeros((ph, pw), np.float32)
        inn = np.zeros((ph, pw), np.float32)

        def bubble() -> np.ndarray:
            r = lay.um_to_plan(rng.uniform(*spec.get("bubble_um", (min(40, 0.06 * m_um),
                                                                   min(160, 0.12 * m_um)))))
            cx, cy = _random_tissue_point(rng, tb)
            cx += rng.uniform(-0.5, 0.5) * r
            cy += rng.uniform(-0.5, 0.5) * r
            rw = max(0.8, lay.um_to_plan(rng.uniform(1.5, 3.5)))
            d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
            return np.stack([np.exp(-((d - r) / rw) ** 2), np.clip((r - d) / rw, 0, 1)])

        for _ in range(int(spec["bubble"])):
            b = clear_of_tumour(bubble)
            np.maximum(rim, b[0], out=rim)
            np.maximum(inn, b[1], out=inn)
            counts["bubble"] += 1
        lay.bubble_rim, lay.bubble_in = rim, inn
    if spec.get("blur", 0):
        def blur() -> np.ndarray:
            cx, cy = _random_tissue_point(rng, tb)
            r = lay.um_to_plan(rng.uniform(*spec.get("blur_um", (min(100, 0.1 * m_um),
                                                                 min(250, 0.2 * m_um)))))
            ry = r * rng.uniform(0.6, 1.0)
            d = np.sqrt(((xx - cx) / r) ** 2 + ((yy - cy) / ry) ** 2)
            return np.clip((1.0 - d) / 0.3, 0, 1).astype(np.float32)

        lay.blur = clear_of_tumour(blur)
        lay.blur_sigma_px = max(rng.uniform(2.0, 4.0) / lay.mpp, rng.uniform(3.0, 5.0))
        counts["blur"] = 1
    lay.distractors = counts


def _random_distractor_spec(rng: np.random.Generator) -> dict:
    return {"pen": int(rng.integers(1, 3)) if rng.random() < 0.5 else 0,
            "fold": 1 if rng.random() < 0.4 else 0,
            "bubble": int(rng.integers(1, 4)) if rng.random() < 0.4 else 0,
            "blur": 1 if rng.random() < 0.35 else 0}


def _sample_points(rng: np.random.Generator, lay: _Layout, n: int, where: str,
                   taken: list[tuple[float, float]], min_sep: float) -> list[tuple[float, float]]:
    """``n`` level-0 points ``min_sep`` apart in the tumour, the non-tumour tissue ("normal"), plain
    stroma (non-tumour, non-lymphoid) or any tissue."""
    if n <= 0:
        return []
    f = lay.f
    tb = lay.tissue_bin
    inner = lay.tissue_dist > lay.um_to_plan(10.0)
    if not inner.any():
        inner = tb
    clutter = _clutter_mask(lay)
    if clutter is not None and (inner & ~clutter).any():
        inner = inner & ~clutter
    geom = lay.tumour_geom
    if where == "tumour":
        if geom is None:
            return []
        shrunk = geom.buffer(-6.0 / lay.mpp)
        g = shrunk if not shrunk.is_empty and shrunk.area > 0.2 * geom.area else geom
        shapely.prepare(g)
        bx0, by0, bx1, by1 = g.bounds
    cand_idx = np.flatnonzero(inner)
    out: list[tuple[float, float]] = []
    placed = np.empty((len(taken) + n, 2))  # every point so far (earlier calls' first), for the spacing test
    placed[:len(taken)] = np.asarray(taken, np.float64).reshape(-1, 2)
    k = len(taken)
    for _ in range(200):
        if len(out) >= n:
            break
        if where == "tumour":
            xs = rng.uniform(bx0, bx1, 64)
            ys = rng.uniform(by0, by1, 64)
            ok = shapely.contains_xy(g, xs, ys)
            if clutter is not None:
                pc = np.clip(((xs + 0.5) / f).astype(int), 0, tb.shape[1] - 1)
                pr = np.clip(((ys + 0.5) / f).astype(int), 0, tb.shape[0] - 1)
                ok &= ~clutter[pr, pc]
        else:
            if cand_idx.size == 0:
                break
            pick = rng.choice(cand_idx, 64)
            r, c = np.divmod(pick, tb.shape[1])
            xs = (c + rng.uniform(0, 1, 64)) * f - 0.5
            ys = (r + rng.uniform(0, 1, 64)) * f - 0.5
            ok = (xs >= 0) & (ys >= 0) & (xs < lay.width) & (ys < lay.height)
            ok &= _sample_plan(lay.tissue, f, xs, ys) > 0.5
            if where in ("normal", "stroma") and geom is not None:
                ok &= ~shapely.contains_xy(geom, xs, ys)
                ok &= shapely.distance(geom, shapely.points(xs, ys)) > 10.0 / lay.mpp
            if where == "stroma" and lay.lymph is not None:
                ok &= _sample_plan(lay.lymph, f, xs, ys) < 0.02
        for x, y in zip(xs[ok], ys[ok]):  # in order: each accepted point constrains the next candidates
            if ((placed[:k, 0] - x) ** 2 + (placed[:k, 1] - y) ** 2 < min_sep ** 2).any():
                continue
            placed[k] = x, y
            k += 1
            out.append((float(x), float(y)))
            if len(out) >= n:
                break
    taken.extend(out)
    return out


def _clutter_mask(lay: _Layout) -> np.ndarray | None:
    """Plan pixels near a distractor (figures are not placed there: nobody annotates under ink)."""
    parts = [lay.pen.max(axis=0) if lay.pen is not None else None, lay.fold, lay.bubble_rim,
             lay.bubble_in, lay.blur]
    parts = [p > 0.02 for p in parts if p is not None]
    if not parts:
        return None
    mask = np.logical_or.reduce(parts)
    return ndimage.distance_transform_edt(~mask) <= lay.um_to_plan(12.0)


def _place_figures(rng: np.random.Generator, lay: _Layout, tumour_area_px: float,
                   tissue_area_px: float) -> None:
    """Mitotic figures (dense in tumour, ~10x rarer elsewhere), lookalikes and deleted records."""
    mm2 = (lay.mpp * 1e-3) ** 2
    has_t = lay.tumour_geom is not None
    dens = rng.uniform(2.0, 6.0)  # per mm² in tumour
    n_t = max(int(rng.poisson(dens * tumour_area_px * mm2)), int(rng.integers(4, 7))) if has_t else 0
    n_n = int(rng.poisson(dens / 10.0 * (tissue_area_px - tumour_area_px) * mm2))
    n_l = max(int(rng.poisson(12.0 * tissue_area_px * mm2)), 3)
    n_d = int(rng.integers(1, 4)) if rng.random() < 0.6 else 0
    sep = 20.0 / lay.mpp
    taken: list[tuple[float, float]] = []
    figs: list[_Figure] = []
    nb_m, nb_l = _BANK_SIZES[_MITOSIS], _BANK_SIZES[_LOOKALIKE]
    for x, y in _sample_points(rng, lay, n_t, "tumour", taken, sep):
        figs.append(_Figure(x, y, MITOSIS_CLASS, False, True, int(rng.integers(nb_m))))
    for x, y in _sample_points(rng, lay, n_n, "normal", taken, sep):
        figs.append(_Figure(x, y, MITOSIS_CLASS, False, False, int(rng.integers(nb_m))))
    for x, y in _sample_points(rng, lay, n_l, "any", taken, sep):
        inside = bool(has_t and shapely.contains_xy(lay.tumour_geom, x, y))
        figs.append(_Figure(x, y, LOOKALIKE_CLASS, False, inside, int(rng.integers(nb_l))))
    # deleted records sit in plain stroma, where nothing is drawn: counting them is a visible error
    for x, y in _sample_points(rng, lay, n_d, "stroma", taken, sep):
        inside = bool(has_t and shapely.contains_xy(lay.tumour_geom, x, y))
        cls = MITOSIS_CLASS if rng.random() < 0.7 else LOOKALIKE_CLASS
        figs.append(_Figure(x, y, cls, True, inside, 0))
    lay.figures = figs


def _stain_variation(rng: np.random.Generator, lay: _Layout) -> None:
    lay.v_h = (_V_H * np.float32(rng.uniform(0.88, 1.12))
               * rng.uniform(0.95, 1.05, 3).astype(np.float32)).astype(np.float32)
    lay.v_e = (_V_E * np.float32(rng.uniform(0.85, 1.15))
               * rng.uniform(0.95, 1.05, 3).astype(np.float32)).astype(np.float32)


def _make_layout(rng: np.random.Generator, width: int, height: int, mpp: float, *,
                 tissue: str = "pieces", tumour_fraction: float | None = None,
                 tumour_full: bool = False, distractors: dict | None = None,
                 figures: bool = True, lymph_level: float | None = None,
                 ihc: str | None = None) -> _Layout:
    """Plan one slide or crop: tissue, tumour, distractors and figures."""
    f = _plan_factor(width, height, mpp)
    ph, pw = math.ceil(height / f), math.ceil(width / f)
    tb = _tissue_bin(rng, ph, pw, tissue)
    sm = ndimage.gaussian_filter(tb.astype(np.float32), 1.0, mode="nearest")
    if tissue == "full":
        sm[:] = 1.0
    lay = _Layout(width, height, float(mpp), f, tb, sm.astype(np.float32),
                  key=int(rng.integers(1, 2 ** 62)), ihc=ihc)
    full = tissue == "full"
    lay.tissue_dist = ndimage.distance_transform_edt(np.pad(tb, 1, constant_values=full))[1:-1, 1:-1]
    _stain_variation(rng, lay)
    tissue_px = float((lay.tissue > 0.5).sum()) * f * f
    # lymphoid patches
    lvl = rng.uniform(0.0, 1.0) if lymph_level is None else lymph_level
    if lvl > 0:
        n = _smooth_noise(rng, (ph, pw), corr=lay.um_to_plan(110.0))
        lay.lymph = (np.clip((n - (1.4 - lvl)) * 1.3, 0, 1) * tb).astype(np.float32)
        if not lay.lymph.any():
            lay.lymph = None
    # tumour
    tumour_px = 0.0
    if tumour_full:
        lay.tumour_polys = [np.array([[-f, -f], [width + f, -f], [width + f, height + f],
                                      [-f, height + f]], float)]
        tumour_px = tissue_px
    elif tumour_fraction:
        lay.tumour_polys, tumour_px = _tumour_regions(rng, lay, tumour_fraction)
    if lay.tumour_polys:
        geom = shapely.MultiPolygon([Polygon(p) for p in lay.tumour_polys])
        shapely.prepare(geom)
        lay.tumour_geom = geom
    if distractors:
        _add_distractors(rng, lay, distractors)
    else:
        lay.distractors = {"pen": 0, "fold": 0, "bubble": 0, "blur": 0}
    if figures:
        _place_figures(rng, lay, tumour_px, tissue_px)
    lay.tissue_dist = None
    return lay


# ----------------------------------------------------------------------------------------------
# rendering: every window is a pure function of its level-0 coordinates
# ----------------------------------------------------------------------------------------------

_GRAIN: dict[int, np.ndarray] = {}
_GRAIN_N = 512


def _grain(seed: int) -> np.ndarray:
    g = _GRAIN.get(seed)
    if g is None:
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 4441])
        g = (rng.integers(-2, 3, (2 * _GRAIN_N, 2 * _GRAIN_N, 3)).astype(np.float32)
             + rng.integers(-1, 2, (2 * _GRAIN_N, 2 * _GRAIN_N, 3)).astype(np.float32))
        if len(_GRAIN) > 4:
            _GRAIN.clear()
        _GRAIN[seed] = g
    return g


def _raster_polygon(poly: np.ndarray, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """Pixels of a window whose centres (integer level-0 coordinates) lie inside a polygon
    (even-odd rule; scanline crossings counted with a cumulative sum, no per-pixel loop)."""
    xa, ya = poly[:, 0], poly[:, 1]
    xb, yb = np.roll(xa, -1), np.roll(ya, -1)
    keep = (ya != yb) & (np.maximum(ya, yb) >= y0) & (np.minimum(ya, yb) <= y0 + h - 1)
    xa, ya, xb, yb = xa[keep], ya[keep], xb[keep], yb[keep]
    if xa.size == 0:
        return np.zeros((h, w), bool)
    ys = np.arange(y0, y0 + h, dtype=np.float64)[:, None]
    cross = ((ya <= ys) & (ys < yb)) | ((yb <= ys) & (ys < ya))
    r, e = np.nonzero(cross)
    xi = xa[e] + (ys[r, 0] - ya[e]) * (xb[e] - xa[e]) / (yb[e] - ya[e])
    col = np.clip(np.floor(xi - x0).astype(np.int64) + 1, 0, w)
    acc = np.bincount(r * (w + 1) + col, minlength=h * (w + 1)).reshape(h, w + 1)[:, :w]
    return (np.cumsum(acc, axis=1) & 1).astype(bool)


def _box_blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-like blur of the first two axes: three box filters of matching variance
    (cost independent of sigma)."""
    width = max(1, int(round(math.sqrt(4 * sigma * sigma + 1))))
    out = a
    for axis in (0, 1):
        for _ in range(3):
            out = ndimage.uniform_filter1d(out, width, axis=axis, mode="nearest")
    return out


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0, 1)
    return x * x * (3 - 2 * x)


class _Renderer:
    """Renders any level-0 window of a layout as RGB."""

    def __init__(self, lay: _Layout, seed: int):
        self.lay = lay
        self.seed = int(seed)
        self.bank = _bank(lay.mpp, seed)
        p = 1.0 / lay.mpp
        self.p = p
        self.s_a = _SPACING_A_UM * p
        self.s_b = _SPACING_B_UM * p
        self.reach = self.bank.max_half + 1          # sprites centred this far out touch a window
        self.margin = self.reach + self.bank.max_half + 1  # canvas border that holds them whole
        self.edge_k = np.float32(1.25 * lay.f)
        drawn = [g for g in lay.figures if not g.deleted]
        self.fig_x = np.array([g.x for g in drawn], float)
        self.fig_y = np.array([g.y for g in drawn], float)
        self.fig_cls = [(_MITOSIS if g.cls == MITOSIS_CLASS else _LOOKALIKE) for g in drawn]
        self.fig_spr = [g.sprite for g in drawn]
        self.polys = [(p_, p_[:, 0].min(), p_[:, 1].min(), p_[:, 0].max(), p_[:, 1].max())
                      for p_ in lay.tumour_polys]
        self.grain = _grain(self.seed)
        self.pen_max = lay.pen.max(axis=0) if lay.pen is not None else None

    # -- pieces -------------------------------------------------------------------------------
    def _present(self, plan: np.ndarray | None, x0: int, y0: int, w: int, h: int) -> bool:
        return plan is not None and _plan_crop_max(plan, self.lay.f, x0, y0, w, h) > 1e-3

    def _tumour_mask(self, x0: int, y0: int, w: int, h: int) -> np.ndarray | None:
        mask = None
        for poly, bx0, by0, bx1, by1 in self.polys:
            if bx1 < x0 or by1 < y0 or bx0 > x0 + w or by0 > y0 + h:
                continue
            if mask is None:
                mask = np.zeros((h, w), bool)
            if bx0 <= x0 and by0 <= y0 and bx1 >= x0 + w and by1 >= y0 + h and \
                    Polygon(poly).contains(box(x0, y0, x0 + w - 1, y0 + h - 1)):
                mask[:] = True
                continue
            mask |= _raster_polygon(poly, x0, y0, w, h)
        return mask

    def _lattice(self, x0: int, y0: int, w: int, h: int, spacing: float, key: int):
        reach = self.reach
        i0 = int(math.floor((x0 - reach) / spacing)) - 1
        i1 = int(math.ceil((x0 + w + reach) / spacing)) + 1
        j0 = int(math.floor((y0 - reach) / spacing)) - 1
        j1 = int(math.ceil((y0 + h + reach) / spacing)) + 1
        ii, jj = np.meshgrid(np.arange(i0, i1), np.arange(j0, j1))
        px = (ii + 0.5 + (_hash01(ii, jj, key + 11) - 0.5) * 2 * _JITTER) * spacing
        py = (jj + 0.5 + (_hash01(ii, jj, key + 12) - 0.5) * 2 * _JITTER) * spacing
        ok = (px >= x0 - reach) & (px < x0 + w + reach) & (py >= y0 - reach) & (py < y0 + h + reach)
        ii, jj, px, py = ii[ok], jj[ok], px[ok], py[ok]
        u = _hash01(ii, jj, key + 13)
        z = _hash01(ii, jj, key + 14)
        sel = _hash_u64(ii, jj, key + 15)
        return px, py, u, z, sel

    def _nuclei(self, x0: int, y0: int, w: int, h: int):
        """Nuclei (and drawn figures) touching the window: (x, y, class, sprite index, to_dab)."""
        lay = self.lay
        key = lay.key
        xs, ys, cls, spr, dab = [], [], [], [], []
        # figures near enough to displace a nucleus of this window (not every figure of the slide)
        clear, m = 9.0 * self.p, 9.0 * self.p + self.reach
        near_window = ((self.fig_x >= x0 - m) & (self.fig_x < x0 + w + m)
                       & (self.fig_y >= y0 - m) & (self.fig_y < y0 + h + m))
        fig_x, fig_y = self.fig_x[near_window], self.fig_y[near_window]
        for lattice, spacing in ((0, self.s_a), (1, self.s_b)):
            px, py, u, z, sel = self._lattice(x0, y0, w, h, spacing, key + 100 * lattice)
            if px.size == 0:
                continue
            vt = _sample_plan(lay.tissue, lay.f, px, py) > 0.5
            if not vt.any():
                continue
            px, py, u, z, sel = px[vt], py[vt], u[vt], z[vt], sel[vt]
            in_t = (shapely.contains_xy(lay.tumour_geom, px, py) if lay.tumour_geom is not None
                    else np.zeros(px.shape, bool))
            lym = (_sample_plan(lay.lymph, lay.f, px, py) if lay.lymph is not None
                   else np.zeros(px.shape, np.float32))
            if lattice == 0:
                prob = np.where(in_t, 0.92, 0.15 * (1 - lym) + 0.02)
                c = np.where(in_t, _TUMOUR, np.where(z < 0.72, _SPINDLE, _ROUND))
            else:
                prob = np.where(in_t, 0.04, 0.025 + 0.85 * lym)
                c = np.full(px.shape, _LYMPH)
            acc = u < prob
            if fig_x.size:
                acc &= ~((px[:, None] - fig_x) ** 2 + (py[:, None] - fig_y) ** 2 < clear ** 2).any(axis=1)
            xs.append(px[acc])
            ys.append(py[acc])
            cls.append(c[acc])
            spr.append(sel[acc])
            if lay.ihc == "nuclear":
                dab.append(in_t[acc] & (z[acc] * 7 % 1 < 0.7))
            else:
                dab.append(np.zeros(int(acc.sum()), bool))
        if xs:
            return (np.concatenate(xs), np.concatenate(ys), np.concatenate(cls),
                    np.concatenate(spr), np.concatenate(dab))
        e = np.zeros(0)
        return e, e, e.astype(int), e.astype(np.uint64), e.astype(bool)

    def _stain_maps(self, x0: int, y0: int, w: int, h: int):
        """Hematoxylin, eosin and DAB concentration maps and the tissue field of a window."""
        lay = self.lay
        f = lay.f
        v = _plan_window(lay.tissue, f, x0, y0, w, h)
        alpha = np.clip((v - 0.5) * self.edge_k + 0.5, 0, 1)
        if not alpha.any():
            return None, None, None, v
        p = self.p
        k = lay.key
        wb = _value_noise(x0, y0, w, h, 160 * p, 160 * p, k + 1)
        warp = _value_noise(x0, y0, w, h, 70 * p, 70 * p, k + 2)
        warp2 = _value_noise(x0, y0, w, h, 22 * p, 22 * p, k + 3)
        fine = _value_noise(x0, y0, w, h, 2.5 * p, 2.5 * p, k + 4)
        large = _value_noise(x0, y0, w, h, 250 * p, 250 * p, k + 5)
        th = (k % 6283) / 1000.0
        lam = np.float32(2 * np.pi / (9.0 * p))
        phase = ((np.arange(x0, x0 + w, dtype=np.float32) * np.float32(math.cos(th) * lam))[None, :]
                 + (np.arange(y0, y0 + h, dtype=np.float32) * np.float32(math.sin(th) * lam))[:, None])
        phase += 12.0 * warp + 5.0 * warp2
        seg = _value_noise(x0, y0, w, h, 30 * p, 30 * p, k + 6)
        iso = _value_noise(x0, y0, w, h, 10 * p, 10 * p, k + 7)
        fib = _smoothstep((0.5 + 0.5 * np.sin(phase) - 0.3) * 1.8) * _smoothstep((seg - 0.2) * 2.0)
        fib = fib * (0.6 + 0.4 * wb)
        e = 0.09 + 0.24 * fib + 0.12 * iso + 0.05 * (fine - 0.5) + 0.08 * (large - 0.5)
        hh = 0.02 + 0.02 * fine
        if self._present(lay.lymph, x0, y0, w, h):
            ly = _plan_window(lay.lymph, f, x0, y0, w, h)
            e *= 1 - 0.55 * ly
            hh += 0.05 * ly
        tmask = self._tumour_mask(x0, y0, w, h)
        if tmask is not None:
            e = np.where(tmask, 0.25 + 0.07 * (fine - 0.5) + 0.06 * (large - 0.5), e)
            hh = np.where(tmask, 0.075 + 0.05 * fine, hh)
        # nuclei and mitotic figures, stamped on a canvas with a margin
        m = self.margin
        canvas = np.zeros((h + 2 * m, w + 2 * m), np.float32)
        dab_canvas = np.zeros_like(canvas) if lay.ihc == "nuclear" else None
        halo = None
        nx, ny, ncls, nspr, ndab = self._nuclei(x0, y0, w, h)
        sprites = self.bank.sprites
        for x, y, c, s, d in zip(nx.tolist(), ny.tolist(), ncls.tolist(), nspr.tolist(), ndab.tolist()):
            lst = sprites[c]
            sp = lst[s % len(lst)]
            hs = sp.shape[0] // 2
            cx, cy = int(round(x)) - x0 + m, int(round(y)) - y0 + m
            target = dab_canvas if d else canvas
            sl = target[cy - hs:cy + hs + 1, cx - hs:cx + hs + 1]
            np.maximum(sl, sp, out=sl)
        if self.fig_x.size:
            sel = np.flatnonzero((self.fig_x > x0 - m + 1) & (self.fig_x < x0 + w + m - 1)
                                 & (self.fig_y > y0 - m + 1) & (self.fig_y < y0 + h + m - 1))
            for i in sel.tolist():
                c, s = self.fig_cls[i], self.fig_spr[i]
                sp = sprites[c][s % len(sprites[c])]
                hl = self.bank.halos[c][s % len(sprites[c])]
                hs = sp.shape[0] // 2
                cx, cy = int(round(self.fig_x[i])) - x0 + m, int(round(self.fig_y[i])) - y0 + m
                if cx - hs < 0 or cy - hs < 0 or cx + hs + 1 > w + 2 * m or cy + hs + 1 > h + 2 * m:
                    continue
                sl = canvas[cy - hs:cy + hs + 1, cx - hs:cx + hs + 1]
                np.maximum(sl, sp, out=sl)
                if hl is not None:
                    if halo is None:
                        halo = np.zeros_like(canvas)
                    halo[cy - hs:cy + hs + 1, cx - hs:cx + hs + 1] += hl
        nuc = canvas[m:m + h, m:m + w]
        e *= 1 - np.clip(0.9 * nuc, 0, 0.85)
        if halo is not None:
            e *= 1 - np.clip(halo[m:m + h, m:m + w], -0.6, 0.7)
        hh = hh + nuc
        hh *= alpha
        e *= alpha
        if self._present(lay.fold, x0, y0, w, h):
            fo = _plan_window(lay.fold, f, x0, y0, w, h)
            hh *= 1 + 0.9 * fo
            e *= 1 + 1.1 * fo
        dab = None
        if lay.ihc:
            hh *= 0.5
            e *= 0.12
            if lay.ihc == "nuclear":
                dab = dab_canvas[m:m + h, m:m + w] * np.float32(0.9) * alpha
            elif tmask is not None:
                dab = tmask * (0.3 + 0.35 * fine + 0.2 * fib) * alpha * (1 - np.clip(nuc, 0, 0.8))
        return hh.astype(np.float32), e.astype(np.float32), dab, v

    def _od(self, x0: int, y0: int, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
        hh, e, dab, v = self._stain_maps(x0, y0, w, h)
        lay = self.lay
        od = np.empty((h, w, 3), np.float32)
        od[:] = _V_BG
        if hh is not None:
            od += hh[..., None] * lay.v_h
            od += e[..., None] * lay.v_e
            if dab is not None:
                od += dab[..., None].astype(np.float32) * _V_DAB
        return od, v

    # -- public -------------------------------------------------------------------------------
    def render(self, x0: int, y0: int, w: int, h: int) -> tuple[np.ndarray, int]:
        """RGB uint8 ``(h, w, 3)`` of the window and its tissue pixel count (inside the image)."""
        lay = self.lay
        f = lay.f
        if self._present(lay.blur, x0, y0, w, h):
            m = int(math.ceil(3 * lay.blur_sigma_px)) + 1
            big, _ = self._od(x0 - m, y0 - m, w + 2 * m, h + 2 * m)
            s = lay.blur_sigma_px
            blurred = _box_blur(big, s)
            b = _plan_window(lay.blur, f, x0, y0, w, h)[..., None]
            od = big[m:m + h, m:m + w] * (1 - b) + blurred[m:m + h, m:m + w] * b
            v = _plan_window(lay.tissue, f, x0, y0, w, h)
        else:
            od, v = self._od(x0, y0, w, h)
        if self._present(lay.bubble_rim, x0, y0, w, h):
            rim = _plan_window(lay.bubble_rim, f, x0, y0, w, h)[..., None]
            inn = _plan_window(lay.bubble_in, f, x0, y0, w, h)[..., None]
            od = od * (1 - 0.22 * inn) + rim * np.array([0.42, 0.42, 0.38], np.float32)
        if self._present(self.pen_max, x0, y0, w, h):
            streak = 0.75 + 0.5 * _value_noise(x0, y0, w, h, 30 * self.p, 8 * self.p, lay.key + 9)
            for c in range(3):
                od[..., c] += _plan_window(lay.pen[c], f, x0, y0, w, h) * streak
        np.multiply(od, -_LN10, out=od)
        np.exp(od, out=od)
        od *= 255.0
        gy = int(_hash_u64(np.array(x0), np.array(y0), self.seed) % np.uint64(_GRAIN_N))
        gx = int(_hash_u64(np.array(y0), np.array(x0), self.seed + 1) % np.uint64(_GRAIN_N))
        if h <= _GRAIN_N and w <= _GRAIN_N:
            od += self.grain[gy:gy + h, gx:gx + w]
        else:
            od += self.grain[np.ix_((gy + np.arange(h)) % _GRAIN_N, (gx + np.arange(w)) % _GRAIN_N)]
        np.clip(od, 0, 255, out=od)
        rgb = od.astype(np.uint8)
        vw, vh = min(w, lay.width - x0), min(h, lay.height - y0)
        vx, vy = max(0, -x0), max(0, -y0)
        count = int((v[vy:vh, vx:vw] > 0.5).sum()) if vw > vx and vh > vy else 0
        return rgb, count


# ----------------------------------------------------------------------------------------------
# streaming pyramidal TIFF writer
# ----------------------------------------------------------------------------------------------

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


def _write_pyramid(path: Path, width: int, height: int, mpp: float,
                   render_tile: Callable[[int, int], tuple[np.ndarray, int]], *, tile: int = _TILE,
                   quality: int = _JPEG_QUALITY, workers: int = 2) -> tuple[int, int]:
    """Stream a tiled JPEG pyramid to ``path`` (atomically). ``render_tile(tx, ty)`` returns a
    full ``(tile, tile, 3)`` uint8 tile of level 0 and its tissue pixel count. Each reduced level
    is built while the level above streams past. Returns (number of levels, tissue pixel count)."""
    import tifffile

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


# ----------------------------------------------------------------------------------------------
# the caption database (ARCH books-set layout)
# ----------------------------------------------------------------------------------------------

def _pick(rng: np.random.Generator, options: list):
    return options[int(rng.integers(len(options)))]


def _wpick(rng: np.random.Generator, options: list[tuple]):
    w = np.array([o[0] for o in options], float)
    return options[int(rng.choice(len(options), p=w / w.sum()))][1:]


_STAINS = ["", " (H&E)", " (hematoxylin and eosin)", " (H&E, high power)"]
_T_FEATS = ["sheets of pleomorphic cells with hyperchromatic nuclei",
            "crowded, enlarged nuclei with prominent nucleoli",
            "solid nests of atypical epithelial cells",
            "cohesive clusters of large tumor cells with vesicular chromatin",
            "marked nuclear pleomorphism and scant stroma"]
_CARC = ["carcinoma", "cancer", "ductal carcinoma", "lobular carcinoma"]
_DESC = ["Invasive", "Poorly differentiated", "High-grade", "Infiltrating"]
_MAGS = ["Low-power view", "Medium-power view", "High-power view", "Overview", "Detail"]


def _tumour_phrase(rng) -> tuple[str, dict]:
    st, ft, ca, de, mg = (_pick(rng, _STAINS), _pick(rng, _T_FEATS), _pick(rng, _CARC),
                          _pick(rng, _DESC), _pick(rng, _MAGS))
    (text,) = _wpick(rng, [
        (0.26, f"{mg} of metastatic breast {ca} in a lymph node, with {ft}{st}."),
        (0.24, f"{de} breast {ca} composed of {ft}{st}."),
        (0.20, f"Lymph node replaced by metastatic breast {ca}; {ft}."),
        (0.10, f"{de} carcinoma with {ft}{st}."),
        (0.12, f"Photomicrograph of {de.lower()} breast {ca} ({_pick(rng, ['H&E', 'hematoxylin-eosin'])})."),
        (0.08, "Nests of malignant cells infiltrating the breast stroma (tumour cells, H&E)."),
    ])
    return text, {}


def _normal_phrase(rng) -> tuple[str, dict]:
    st = _pick(rng, _STAINS)
    nf = _pick(rng, ["fibrous stroma and scattered stromal cells", "dense collagenous stroma",
                     "bland spindle cells in a fibrous background"])
    lf = _pick(rng, ["reactive lymphoid follicles", "sheets of small mature lymphocytes",
                     "preserved nodal architecture"])
    text, lymph = _wpick(rng, [
        (0.28, f"Normal breast tissue with {nf}{st}.", 0.2),
        (0.25, f"Benign lymph node showing {lf}{st}.", 0.95),
        (0.17, "Reactive lymphoid tissue; no abnormal cells are seen.", 0.95),
        (0.15, f"Unremarkable fibrous stroma{st}.", 0.0),
        (0.03, f"Sentinel lymph node from a patient with breast cancer, negative for metastatic tumor{st}.", 0.95),
        (0.02, "Normal breast stroma next to the carcinoma shown in the previous figure.", 0.1),
    ])
    return text, {"lymph": lymph}


def _mitosis_phrase(rng) -> tuple[str, dict]:
    st = _pick(rng, _STAINS)
    mk = _pick(rng, ["arrowheads", "arrows"])
    text, marker = _wpick(rng, [
        (0.28, f"High-power view of a high-grade carcinoma; {mk} mark mitotic figures.", mk),
        (0.20, f"Numerous mitoses ({mk}) in a poorly differentiated carcinoma.", mk),
        (0.16, f"An atypical mitotic figure is circled{st}.", "circle"),
        (0.12, f"Mitotic figure in metaphase at the centre of the field{st}.", None),
        (0.16, "Photomicrograph of breast carcinoma with mitoses (arrowheads).", "arrowheads"),
        (0.04, "Breast carcinoma with brisk mitotic activity; mitotic figures are indicated by arrows.",
         "arrows"),
    ])
    return text, {"marker": marker}


def _artefact_phrase(rng, sub: str | None = None) -> tuple[str, dict]:
    sub = sub or _wpick(rng, [(0.3, "pen"), (0.25, "fold"), (0.25, "bubble"), (0.2, "blur")])[0]
    st = _pick(rng, _STAINS)
    meta: dict = {"subkind": sub}
    if sub == "pen":
        colour = _pick(rng, ["green", "blue", "black"])
        meta["pen_colour"] = colour
        (text,) = _wpick(rng, [
            (0.45, f"{colour.capitalize()} ink from a marker pen overlying the tissue (artefact)."),
            (0.43, f"Surgical ink marking on the slide surface{st}."),
            (0.08, "Pen marking on a breast cancer slide, not to be confused with tumor."),
        ])
    elif sub == "fold":
        (text,) = _wpick(rng, [(0.5, "Tissue fold producing a dark, overstained band (artefact)."),
                               (0.5, f"Folded section, an artefact of processing{st}.")])
    elif sub == "bubble":
        (text,) = _wpick(rng, [(0.5, "Air bubble trapped under the coverslip."),
                               (0.5, "Circular air bubbles obscure detail (artefact).")])
    else:
        (text,) = _wpick(rng, [(0.5, "Out-of-focus area of a scanned slide."),
                               (0.5, "Blurred region caused by a focus error during scanning.")])
    return text, meta


def _ihc_phrase(rng) -> tuple[str, dict]:
    text, mode, frac = _wpick(rng, [
        (0.24, "Immunohistochemistry for HER2 shows membranous staining of the carcinoma cells.",
         "membrane", None),
        (0.18, "ER immunostain with nuclear positivity in most tumor cells.", "nuclear", None),
        (0.18, "Cytokeratin IHC highlights isolated tumor cells in a sentinel lymph node from a "
               "breast cancer.", "membrane", 0.06),
        (0.22, "Immunohistochemical staining for Ki-67 in breast carcinoma; many nuclei are positive.",
         "nuclear", None),
        (0.10, "Photomicrography of an immunoperoxidase stain for progesterone receptor.", "nuclear", None),
        (0.04, "HER2-positive breast carcinoma with strong, complete membranous brown (DAB) staining.",
         "membrane", None),
    ])
    return text, {"ihc": mode, "tumour_fraction": frac}


_PHRASES = {"tumour": _tumour_phrase, "normal": _normal_phrase, "mitosis": _mitosis_phrase,
            "artefact": _artefact_phrase, "ihc": _ihc_phrase}
_SINGLE_WEIGHTS = [(0.36, "tumour"), (0.18, "normal"), (0.20, "mitosis"), (0.13, "artefact"),
                   (0.13, "ihc")]


def _multi_panel(rng) -> tuple[str, list[tuple[str, dict]]]:
    """A multi-panel figure: (caption, [(kind, meta) per panel])."""
    ca, ft = _pick(rng, _CARC), _pick(rng, _T_FEATS)
    (combo,) = _wpick(rng, [(3, "tumour+ihc"), (2, "tumour+tumour"), (2, "mitosis+mitosis"),
                            (1, "artefact+artefact"), (0.2, "normal+tumour"), (0.3, "tumour+mitosis"),
                            (1, "ihc+ihc")])
    if combo == "tumour+ihc":
        mode = _pick(rng, ["membrane", "nuclear"])
        marker = "cytokeratin" if mode == "membrane" else "estrogen receptor"
        return (f"A, Metastatic breast {ca} in a lymph node. B, Immunohistochemistry for {marker} "
                f"highlights the tumor cells.", [("tumour", {}), ("ihc", {"ihc": mode})])
    if combo == "tumour+tumour":
        return (f"A, Low-power view of metastatic breast {ca}. B, Higher magnification showing {ft}.",
                [("tumour", {"mpp": 1.0}), ("tumour", {"mpp": 0.25})])
    if combo == "mitosis+mitosis":
        mk = _pick(rng, ["arrows", "arrowheads"])
        return (f"A and B, Atypical mitotic figures ({mk}) in a high-grade carcinoma.",
                [("mitosis", {"marker": mk}), ("mitosis", {"marker": mk})])
    if combo == "artefact+artefact":
        return ("A, Tissue fold. B, Air bubble under the coverslip.",
                [("artefact", {"subkind": "fold"}), ("artefact", {"subkind": "bubble"})])
    if combo == "normal+tumour":
        return (f"A, Benign lymph node for comparison. B, Lymph node with metastatic breast {ca}.",
                [("normal", {"lymph": 0.95}), ("tumour", {})])
    if combo == "tumour+mitosis":
        return (f"A, Invasive breast {ca}. B, Higher magnification; arrowheads mark mitotic figures.",
                [("tumour", {}), ("mitosis", {"marker": "arrowheads"})])
    return ("A, Estrogen receptor immunostain. B, HER2 immunohistochemistry in the same breast "
            "carcinoma.", [("ihc", {"ihc": "nuclear"}), ("ihc", {"ihc": "membrane"})])


_SIZES = [224, 256, 288, 320, 384, 448, 512]


def _draw_markers(rgb: np.ndarray, pts: list[tuple[float, float]], marker: str | None,
                  mpp: float, rng: np.random.Generator) -> np.ndarray:
    if not marker or not pts:
        return rgb
    img = Image.fromarray(rgb)
    d = ImageDraw.Draw(img)
    p = 1.0 / mpp
    for x, y in pts:
        if marker == "circle":
            r = 12 * p
            d.ellipse([x - r, y - r, x + r, y + r], outline=(10, 10, 10), width=max(2, int(0.8 * p)))
            continue
        th = rng.uniform(0, 2 * np.pi)
        u = np.array([math.cos(th), math.sin(th)])
        v = np.array([-u[1], u[0]])
        tip = np.array([x, y]) + u * 8 * p
        size = max(10.0, 5 * p)
        base = tip + u * size
        tri = [tuple(tip), tuple(base + v * size * 0.45), tuple(base - v * size * 0.45)]
        d.polygon(tri, fill=(10, 10, 10))
        if marker == "arrows":
            d.line([tuple(base), tuple(base + u * size * 1.8)], fill=(10, 10, 10), width=max(2, int(0.6 * p)))
    return np.asarray(img)


def _caption_image(rng: np.random.Generator, kind: str, meta: dict, seed: int) -> tuple[np.ndarray, dict]:
    w, h = int(_pick(rng, _SIZES)), int(_pick(rng, _SIZES))
    truth: dict = {"kind": kind}
    pts: list[tuple[float, float]] = []
    if kind == "tumour":
        mpp = meta.get("mpp") or float(_pick(rng, [0.25, 0.25, 0.5, 1.0]))
        lay = _make_layout(rng, w, h, mpp, tissue="full" if mpp < 1 else "partial",
                                 tumour_fraction=rng.uniform(0.55, 0.9), figures=False,
                                 lymph_level=rng.uniform(0, 0.5))
    elif kind == "normal":
        mpp = float(_pick(rng, [0.25, 0.5, 1.0]))
        lay = _make_layout(rng, w, h, mpp, tissue="full" if mpp < 1 else "partial",
                                 figures=False, lymph_level=meta.get("lymph", 0.3))
    elif kind == "mitosis":
        mpp = float(_pick(rng, [0.2, 0.25, 0.3]))
        lay = _make_layout(rng, w, h, mpp, tissue="full", tumour_full=True, figures=False,
                                 lymph_level=0.0)
        n = int(rng.integers(1, 4))
        taken: list[tuple[float, float]] = []
        for _ in range(60):
            if len(taken) >= n:
                break
            x, y = rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h
            if all((x - a) ** 2 + (y - b) ** 2 > (20 / mpp) ** 2 for a, b in taken):
                taken.append((x, y))
        lay.figures = [_Figure(x, y, MITOSIS_CLASS, False, True, int(rng.integers(_BANK_SIZES[_MITOSIS])))
                       for x, y in taken]
        pts = taken
        truth["marker"] = meta.get("marker")
        truth["n_mitoses"] = len(taken)
        truth["figures"] = [[round(float(x), 1), round(float(y), 1)] for x, y in taken]  # image px (x, y)
    elif kind == "artefact":
        sub = meta["subkind"]
        mpp = float(_pick(rng, [0.5, 1.0, 2.0]))
        spec: dict = {sub: 1}
        size_um = min(w, h) * mpp
        if sub == "pen":
            spec["pen_colour"] = meta.get("pen_colour")
        elif sub == "bubble":
            spec["bubble"] = int(rng.integers(1, 4))
            spec["bubble_um"] = (0.15 * size_um, 0.4 * size_um)
        elif sub == "blur":
            spec["blur_um"] = (0.6 * size_um, 1.0 * size_um)
        elif sub == "fold":
            spec["fold_um"] = (0.06 * size_um, 0.15 * size_um)
            spec["fold_len"] = (0.7, 1.2)
        lay = _make_layout(rng, w, h, mpp, tissue=_pick(rng, ["full", "partial"]),
                                 distractors=spec, figures=False)
        truth["subkind"] = sub
    elif kind == "ihc":
        mpp = float(_pick(rng, [0.25, 0.5, 1.0]))
        frac = meta.get("tumour_fraction") or rng.uniform(0.4, 0.85)
        lay = _make_layout(rng, w, h, mpp, tissue="full" if mpp < 1 else "partial",
                                 tumour_fraction=frac, figures=False, ihc=meta.get("ihc", "membrane"),
                                 lymph_level=rng.uniform(0, 0.5))
        truth["ihc"] = lay.ihc
    else:  # pragma: no cover - internal
        raise ValueError(kind)
    rgb, _ = _Renderer(lay, seed).render(0, 0, w, h)
    if kind == "mitosis":
        rgb = _draw_markers(rgb, pts, meta.get("marker"), mpp, rng)
    truth.update({"mpp": mpp, "width": w, "height": h,
                  "stain": "IHC (DAB)" if lay.ihc else "H&E"})
    return rgb, truth


def _write_captions(out: Path, n: int, seed: int, progress: bool) -> tuple[Path, Path]:
    """Write ``captions.json``, ``images/<uuid>.png`` and ``truth.json`` under ``out``."""
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 2])
    panels: list[tuple[int, str, str, str, dict]] = []  # (figure, letter, caption, kind, meta)
    fig = 0
    while len(panels) < n:
        if n - len(panels) >= 2 and rng.random() < 0.2:
            caption, parts = _multi_panel(rng)
            for letter, (kind, meta) in zip("ABC", parts):
                panels.append((fig, letter, caption, kind, meta))
        else:
            (kind,) = _wpick(rng, _SINGLE_WEIGHTS)
            caption, meta = _PHRASES[kind](rng)
            panels.append((fig, "Single", caption, kind, meta))
        fig += 1
    panels = panels[:n]
    captions: dict[str, dict] = {}
    truth: dict[str, dict] = {}
    it = enumerate(panels)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, total=n, desc="caption images", unit="img", leave=False)
    for i, (fig_i, letter, caption, kind, meta) in it:
        uid = str(uuidlib.UUID(bytes=rng.bytes(16), version=4))
        img_rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 3, i])
        rgb, t = _caption_image(img_rng, kind, meta, seed)
        Image.fromarray(rgb).save(img_dir / f"{uid}.png", compress_level=1)
        fid = f"{fig_i:02d}"
        captions[str(i)] = {"figure_id": fid, "letter": letter, "caption": " " + caption, "uuid": uid}
        truth[str(i)] = {"uuid": uid, "figure_id": fid, "letter": letter, **t}
    cap_path, truth_path = out / "captions.json", out / "truth.json"
    atomic_write_text(cap_path, json.dumps(captions, indent=1, ensure_ascii=False) + "\n")
    atomic_write_text(truth_path, json.dumps(truth, indent=1, ensure_ascii=False) + "\n")
    return cap_path, truth_path


# ----------------------------------------------------------------------------------------------
# the manifest and the cohort
# ----------------------------------------------------------------------------------------------

_PATH_FIELDS = ("path", "annotation_path", "tissue_mask_path")


@dataclass
class SyntheticSlide:
    """One generated slide and its ground-truth summary (paths absolute once loaded)."""

    slide_id: str
    path: Path
    annotation_path: Path
    tissue_mask_path: Path
    tissue_mask_downsample: int     # level-0 px per tissue-mask pixel
    width: int
    height: int
    mpp: float
    levels: int
    has_tumour: bool
    tissue_area_px: int             # level-0 px inside the generator's tissue mask
    tumour_area_px: float           # area of the tumour polygons, level-0 px
    tumour_fraction: float          # tumour_area_px / tissue_area_px
    target_tumour_fraction: float   # what the generator aimed at (0 for tumour-free slides)
    n_tumour_regions: int
    n_mitoses: int                  # drawn, non-deleted mitotic figures
    n_mitoses_tumour: int
    n_mitoses_normal: int
    n_lookalikes: int
    n_deleted: int                  # database records flagged deleted (not drawn)
    distractors: dict[str, int] = field(default_factory=dict)

    @property
    def filename(self) -> str:
        return self.path.name


@dataclass
class SyntheticCohort:
    """The manifest written to ``cohort.json`` (see :meth:`load`)."""

    root: Path
    seed: int
    params: dict
    slides: list[SyntheticSlide]
    mitoses_db: Path
    captions_json: Path | None = None
    captions_truth: Path | None = None
    captions_images: Path | None = None
    format: str = MANIFEST_FORMAT

    @property
    def manifest_path(self) -> Path:
        return self.root / "cohort.json"

    @property
    def tumour_slides(self) -> list[SyntheticSlide]:
        return [s for s in self.slides if s.has_tumour]

    def slide(self, slide_id: str) -> SyntheticSlide:
        for s in self.slides:
            if s.slide_id == slide_id:
                return s
        raise KeyError(f"no slide {slide_id!r} in {self.manifest_path}")

    def __len__(self) -> int:
        return len(self.slides)

    def __iter__(self):
        return iter(self.slides)

    def to_dict(self) -> dict:
        def rel(p: Path | None) -> str | None:
            return None if p is None else Path(os.path.relpath(p, self.root)).as_posix()

        slides = []
        for s in self.slides:
            d = asdict(s)
            for k in _PATH_FIELDS:
                d[k] = rel(getattr(s, k))
            slides.append(d)
        return {"format": self.format, "seed": self.seed, "params": self.params,
                "mitoses_db": rel(self.mitoses_db), "captions_json": rel(self.captions_json),
                "captions_truth": rel(self.captions_truth),
                "captions_images": rel(self.captions_images), "slides": slides}

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write the manifest (paths relative to the cohort root); returns its path."""
        path = Path(path) if path is not None else self.manifest_path
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SyntheticCohort":
        """Read ``cohort.json`` (or the directory holding it); paths come back absolute."""
        path = Path(path)
        if path.is_dir():
            path = path / "cohort.json"
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no synthetic cohort manifest") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: manifest is not valid JSON ({exc})") from exc
        if not isinstance(d, dict) or d.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"{path}: not an alkit synthetic cohort manifest "
                             f"(format {d.get('format') if isinstance(d, dict) else None!r}, "
                             f"expected {MANIFEST_FORMAT!r})")
        root = path.resolve().parent

        def ab(p: str | None) -> Path | None:
            return None if p is None else root / p

        names = {f.name for f in fields(SyntheticSlide)}
        slides = []
        for sd in d["slides"]:
            missing = names - set(sd) - {"distractors"}
            if missing:
                raise ValueError(f"{path}: slide entry {sd.get('slide_id')!r} lacks {sorted(missing)}")
            sd = {k: v for k, v in sd.items() if k in names}
            for k in _PATH_FIELDS:
                sd[k] = ab(sd[k])
            slides.append(SyntheticSlide(**sd))
        return cls(root=root, seed=int(d["seed"]), params=d["params"], slides=slides,
                   mitoses_db=ab(d["mitoses_db"]), captions_json=ab(d.get("captions_json")),
                   captions_truth=ab(d.get("captions_truth")),
                   captions_images=ab(d.get("captions_images")), format=d["format"])


def _check_args(n_slides, size, seed, mpp, tumour_slide_fraction, tumour_tissue_fraction,
                n_caption_images) -> tuple[int, int, float, float]:
    if isinstance(size, (int, np.integer)):
        width = height = int(size)
    else:
        try:
            width, height = (int(v) for v in size)
        except (TypeError, ValueError):
            raise SyntheticError(f"size must be an int or (width, height), got {size!r}") from None
    if width < 256 or height < 256:
        raise SyntheticError(f"size must be at least 256 px a side, got {width}x{height}")
    if int(n_slides) < 0:
        raise SyntheticError(f"n_slides must be >= 0, got {n_slides}")
    if int(seed) < 0:
        raise SyntheticError(f"seed must be >= 0, got {seed}")
    if not (0.05 <= float(mpp) <= 10):
        raise SyntheticError(f"mpp must be in [0.05, 10] µm/px, got {mpp}")
    if not 0.0 <= float(tumour_slide_fraction) <= 1.0:
        raise SyntheticError(f"tumour_slide_fraction must be in [0, 1], got {tumour_slide_fraction}")
    lo, hi = (float(v) for v in tumour_tissue_fraction)
    if not 0.0 < lo <= hi <= 0.5:
        raise SyntheticError(f"tumour_tissue_fraction must be (lo, hi) with 0 < lo <= hi <= 0.5, got "
                         f"{tumour_tissue_fraction}")
    if int(n_caption_images) < 0:
        raise SyntheticError(f"n_caption_images must be >= 0, got {n_caption_images}")
    return width, height, lo, hi


def generate_cohort(out: str | os.PathLike, n_slides: int = 6, size: int | tuple[int, int] = 4096,
                    seed: int = 0, *, mpp: float = 0.25, tumour_slide_fraction: float = 0.6,
                    tumour_tissue_fraction: tuple[float, float] = (0.02, 0.10),
                    n_caption_images: int = 120, progress: bool = True,
                    workers: int | None = None) -> SyntheticCohort:
    """Generate a synthetic cohort under ``out`` and return its manifest (also in ``cohort.json``).

    Exactly ``round(tumour_slide_fraction * n_slides)`` slides (halves round up) carry tumour,
    covering a fraction of their tissue drawn inside ``tumour_tissue_fraction``; the others are
    tumour-free. ``size`` is the level-0 side in pixels (or ``(width, height)``) at ``mpp`` µm/px.
    ``workers`` threads render and compress tiles (default: up to 2). Same arguments, same files.
    """
    width, height, lo, hi = _check_args(n_slides, size, seed, mpp, tumour_slide_fraction,
                                        tumour_tissue_fraction, n_caption_images)
    with _blas_single_thread():
        return _generate(Path(out), int(n_slides), width, height, int(seed), float(mpp),
                         float(tumour_slide_fraction), lo, hi, int(n_caption_images), progress,
                         workers)


@contextlib.contextmanager
def _blas_single_thread():
    """Our matrix products are small and our own threads run tiles in parallel: a multi-threaded
    BLAS only spins (4x slower on a busy 2-core machine), so pin it to one thread meanwhile."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _generate(out: Path, n_slides: int, width: int, height: int, seed: int, mpp: float,
              tumour_slide_fraction: float, lo: float, hi: float, n_caption_images: int,
              progress: bool, workers: int | None) -> SyntheticCohort:
    workers = max(1, min(2, os.cpu_count() or 1)) if workers is None else max(1, int(workers))
    slides_dir, ann_dir, mask_dir = out / "slides", out / "annotations", out / "masks"
    for d in (slides_dir, ann_dir, mask_dir):
        d.mkdir(parents=True, exist_ok=True)
    n_tumour = int(math.floor(tumour_slide_fraction * n_slides + 0.5))
    master = np.random.default_rng([seed & 0xFFFFFFFF, seed >> 32, 0])
    tumour_set = set(master.permutation(n_slides)[:n_tumour].tolist()) if n_slides else set()
    log.info("generating %d synthetic slides (%dx%d px at %.3g µm/px, %d with tumour) in %s",
             n_slides, width, height, mpp, n_tumour, out)

    records: list[SyntheticSlide] = []
    db_slides: list[SlideRunnerSlide] = []
    db_annos: list[SlideRunnerAnnotation] = []
    it: Iterable[int] = range(n_slides)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc="synthetic slides", unit="slide")
    span = hi - lo
    for i in it:
        sid = f"synth_{i:03d}"
        rng = np.random.default_rng([seed & 0xFFFFFFFF, seed >> 32, 1, i])
        target = float(rng.uniform(lo + 0.15 * span, hi - 0.15 * span)) if i in tumour_set else None
        spec = _random_distractor_spec(rng)
        lay = _make_layout(rng, width, height, mpp, tumour_fraction=target,
                                         distractors=spec)
        renderer = _Renderer(lay, seed)
        tif_path = slides_dir / f"{sid}.tif"
        levels, tissue_px = _write_pyramid(
            tif_path, width, height, mpp,
            lambda tx, ty, r=renderer: r.render(tx * _TILE, ty * _TILE, _TILE, _TILE), workers=workers)
        xml_path = write_asap_xml(ann_dir / f"{sid}.xml",
                                  [(f"Annotation {k}", "_0", p) for k, p in enumerate(lay.tumour_polys)],
                                  groups=CAMELYON16_GROUPS)
        mask_path = mask_dir / f"{sid}_tissue.png"
        Image.fromarray(((lay.tissue > 0.5) * 255).astype(np.uint8)).save(mask_path)
        tumour_area = float(sum(Polygon(p).area for p in lay.tumour_polys))
        frac = tumour_area / tissue_px if tissue_px else 0.0
        if target is not None and not lo <= frac <= hi:
            log.warning("%s: tumour covers %.4f of the tissue, outside [%g, %g]", sid, frac, lo, hi)
        drawn = [g for g in lay.figures if not g.deleted]
        mit = [g for g in drawn if g.cls == MITOSIS_CLASS]
        records.append(SyntheticSlide(
            slide_id=sid, path=tif_path, annotation_path=xml_path, tissue_mask_path=mask_path,
            tissue_mask_downsample=lay.f, width=width, height=height, mpp=mpp, levels=levels,
            has_tumour=bool(lay.tumour_polys), tissue_area_px=int(tissue_px),
            tumour_area_px=round(tumour_area, 2), tumour_fraction=round(frac, 6),
            target_tumour_fraction=round(target or 0.0, 6), n_tumour_regions=len(lay.tumour_polys),
            n_mitoses=len(mit), n_mitoses_tumour=sum(g.in_tumour for g in mit),
            n_mitoses_normal=sum(not g.in_tumour for g in mit),
            n_lookalikes=sum(g.cls == LOOKALIKE_CLASS for g in drawn),
            n_deleted=sum(g.deleted for g in lay.figures), distractors=dict(lay.distractors)))
        db_slides.append(SlideRunnerSlide(tif_path.name, width, height, directory="slides",
                                          uuid=str(uuidlib.UUID(bytes=master.bytes(16), version=4))))
        for g in lay.figures:
            db_annos.append(SlideRunnerAnnotation(
                slide=tif_path.name, x=float(round(g.x)), y=float(round(g.y)), cls=g.cls,
                deleted=g.deleted, type=1, guid=str(uuidlib.UUID(bytes=master.bytes(16), version=4))))
        log.debug("%s: tissue %d px, tumour %.4f, %d mitoses, distractors %s", sid, tissue_px, frac,
                  len(mit), lay.distractors)
    db_path = write_sliderunner(ann_dir / "mitoses.sqlite", db_slides, db_annos,
                                classes={MITOSIS_CLASS: "#00ff00", LOOKALIKE_CLASS: "#ff00ff"},
                                person="alkit synthetic ground truth", last_modified=_DB_STAMP)
    cap_json = cap_truth = cap_images = None
    if n_caption_images:
        cap_json, cap_truth = _write_captions(out / "captions", n_caption_images, seed, progress)
        cap_images = out / "captions" / "images"
    _remove_stale(out, {r.slide_id for r in records}, cap_json)
    params = {"n_slides": n_slides, "size": [width, height], "mpp": mpp,
              "tumour_slide_fraction": float(tumour_slide_fraction),
              "tumour_tissue_fraction": [lo, hi], "n_caption_images": int(n_caption_images),
              "tile": _TILE, "jpeg_quality": _JPEG_QUALITY}
    cohort = SyntheticCohort(root=out.resolve(), seed=seed, params=params,
                             slides=[_absolute(r, out) for r in records],
                             mitoses_db=db_path.resolve(), captions_json=_res(cap_json),
                             captions_truth=_res(cap_truth), captions_images=_res(cap_images))
    cohort.save()
    log.info("synthetic cohort written: %s", cohort.manifest_path)
    return cohort


def _remove_stale(out: Path, slide_ids: set[str], cap_json: Path | None) -> None:
    """Delete files a previous, larger cohort left in ``out`` (only names this module writes), so
    that globbing ``slides/*.tif`` sees exactly this cohort."""
    stale = []
    for folder, pattern, suffix in (("slides", "synth_*.tif", ".tif"), ("annotations", "synth_*.xml", ".xml"),
                                    ("masks", "synth_*_tissue.png", "_tissue.png")):
        for p in (out / folder).glob(pattern):
            sid = p.name[: -len(suffix)]
            if re.fullmatch(r"synth_\d{3,}", sid) and sid not in slide_ids:
                stale.append(p)
    img_dir = out / "captions" / "images"
    if img_dir.is_dir():
        keep = set()
        if cap_json is not None:
            keep = {e["uuid"] for e in json.loads(cap_json.read_text(encoding="utf-8")).values()}
        for p in img_dir.glob("*.png"):
            try:
                uuidlib.UUID(p.stem)
            except ValueError:
                continue
            if p.stem not in keep:
                stale.append(p)
        if cap_json is None:
            stale += [p for p in (out / "captions" / "captions.json", out / "captions" / "truth.json")
                      if p.exists()]
    for p in stale:
        p.unlink(missing_ok=True)
    if stale:
        log.info("removed %d stale file(s) of an earlier cohort in %s", len(stale), out)


def _res(p: Path | None) -> Path | None:
    return None if p is None else p.resolve()


def _absolute(s: SyntheticSlide, out: Path) -> SyntheticSlide:
    for k in _PATH_FIELDS:
        setattr(s, k, getattr(s, k).resolve())
    return s
