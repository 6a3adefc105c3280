"""Counter-based hashing, value noise and plan-field resampling: pure functions of global coordinates.

Every level-0 window of a slide is rendered from these alone (:mod:`alkit.synthetic.render`), so
tiles are independent, seamless and deterministic; the plan (:mod:`alkit.synthetic.plan`) uses the
seeded :func:`smooth_noise` for its fields.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

_U = np.uint64


def hash_u64(ix: np.ndarray, iy: np.ndarray, key: int) -> np.ndarray:
    """splitmix64 of (ix, iy, key), elementwise; ``ix``/``iy`` integer arrays (broadcast)."""
    with np.errstate(over="ignore"):
        z = (np.asarray(ix, np.int64).astype(_U) * _U(0x9E3779B97F4A7C15)
             + np.asarray(iy, np.int64).astype(_U) * _U(0xC2B2AE3D27D4EB4F)
             + _U(key & 0xFFFFFFFFFFFFFFFF))
        z = (z ^ (z >> _U(30))) * _U(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> _U(27))) * _U(0x94D049BB133111EB)
        z = z ^ (z >> _U(31))
    return z


def hash01(ix: np.ndarray, iy: np.ndarray, key: int) -> np.ndarray:
    """Uniform float32 in [0, 1) from the hash."""
    return (hash_u64(ix, iy, key) >> _U(40)).astype(np.float32) * np.float32(2.0 ** -24)


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


def value_noise(x0: int, y0: int, w: int, h: int, sx: float, sy: float, key: int) -> np.ndarray:
    """Value noise in [0, 1] over a level-0 window, lattice spacing ``sx`` x ``sy`` px."""
    wx, kx, mx = _noise_matrix(int(x0), int(w), float(sx))
    wy, ky, my = _noise_matrix(int(y0), int(h), float(sy))
    lat = hash01(np.arange(kx, kx + mx)[None, :], np.arange(ky, ky + my)[:, None], key)
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


def plan_window(plan: np.ndarray, f: int, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """Bilinearly upsample the part of a plan field covering a level-0 window."""
    wx, xlo, xhi = _bilinear_matrix(int(x0), int(w), f, plan.shape[1])
    wy, ylo, yhi = _bilinear_matrix(int(y0), int(h), f, plan.shape[0])
    return (wy @ plan[ylo:yhi, xlo:xhi]) @ wx.T


def plan_crop_max(plan: np.ndarray, f: int, x0: int, y0: int, w: int, h: int) -> float:
    """Largest plan value that can influence a level-0 window (cheap presence test)."""
    ph, pw = plan.shape
    c0 = min(max(int(math.floor(x0 / f)) - 1, 0), pw - 1)
    c1 = min(max(int(math.ceil((x0 + w) / f)) + 1, c0 + 1), pw)
    r0 = min(max(int(math.floor(y0 / f)) - 1, 0), ph - 1)
    r1 = min(max(int(math.ceil((y0 + h) / f)) + 1, r0 + 1), ph)
    return float(plan[r0:r1, c0:c1].max())


def sample_plan(plan: np.ndarray, f: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear plan value at level-0 points (the same interpolation as :func:`plan_window`)."""
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


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], corr: float) -> np.ndarray:
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
