"""Nucleus sprites: pre-rendered hematoxylin-concentration stamps per nucleus class at one mpp.

:mod:`alkit.synthetic.render` stamps them onto each window at hashed lattice points (and at the
mitotic figures / lookalikes of the plan); banks are cached per (mpp, seed).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

# Nucleus sprite classes.
LYMPH, SPINDLE, ROUND, TUMOUR, MITOSIS, LOOKALIKE = range(6)
BANK_SIZES = {LYMPH: 32, SPINDLE: 32, ROUND: 32, TUMOUR: 64, MITOSIS: 24, LOOKALIKE: 24}


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


class SpriteBank:
    """Pre-rendered hematoxylin-concentration sprites per nucleus class at one mpp."""

    def __init__(self, mpp: float, seed: int):
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 7919, int(round(mpp * 1e4))])
        self.mpp = mpp
        p = 1.0 / mpp  # px per µm
        self.sprites: dict[int, list[np.ndarray]] = {}
        self.halos: dict[int, list[np.ndarray]] = {}
        mk = {LYMPH: self._lymph, SPINDLE: self._spindle, ROUND: self._round,
              TUMOUR: self._tumour, MITOSIS: self._mitosis, LOOKALIKE: self._lookalike}
        for cls, n in BANK_SIZES.items():
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


_BANKS: dict[tuple[float, int], SpriteBank] = {}


def sprite_bank(mpp: float, seed: int) -> SpriteBank:
    """The bank for ``(mpp, seed)``, built once and cached."""
    key = (round(float(mpp), 6), int(seed))
    bank = _BANKS.get(key)
    if bank is None:
        if len(_BANKS) > 32:
            _BANKS.clear()
        bank = _BANKS[key] = SpriteBank(mpp, seed)
    return bank
