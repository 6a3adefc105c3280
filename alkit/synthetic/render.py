"""Rendering: every window of a layout is a pure function of its level-0 coordinates.

Plan fields are upsampled bilinearly, the tumour polygons are rasterised, stroma texture is value
noise hashed from global lattice coordinates (:mod:`alkit.synthetic.noise`), and nuclei sit on
jittered global lattices whose points are accepted, typed and given a sprite
(:mod:`alkit.synthetic.sprites`) by hashes of their lattice indices. Colour is Beer-Lambert mixing
of the stain densities (:mod:`alkit.synthetic.stains`).
"""

from __future__ import annotations

import math

import numpy as np
import shapely
from scipy import ndimage
from shapely.geometry import Polygon, box

from alkit.synthetic.layout import MITOSIS_CLASS, Layout
from alkit.synthetic.noise import hash01, hash_u64, plan_crop_max, plan_window, sample_plan, value_noise
from alkit.synthetic.sprites import LOOKALIKE, LYMPH, MITOSIS, ROUND, SPINDLE, TUMOUR, sprite_bank
from alkit.synthetic.stains import V_BG, V_DAB

_LN10 = np.float32(math.log(10.0))
_SPACING_A_UM = 12.0   # lattice of tumour / stromal / epithelial nuclei
_SPACING_B_UM = 7.0    # lattice of lymphocytes
_JITTER = 0.38

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


def raster_polygon(poly: np.ndarray, x0: int, y0: int, w: int, h: int) -> np.ndarray:
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


class Renderer:
    """Renders any level-0 window of a layout as RGB."""

    def __init__(self, lay: Layout, seed: int):
        self.lay = lay
        self.seed = int(seed)
        self.bank = sprite_bank(lay.mpp, seed)
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
        self.fig_cls = [(MITOSIS if g.cls == MITOSIS_CLASS else LOOKALIKE) for g in drawn]
        self.fig_spr = [g.sprite for g in drawn]
        self.polys = [(p_, p_[:, 0].min(), p_[:, 1].min(), p_[:, 0].max(), p_[:, 1].max())
                      for p_ in lay.tumour_polys]
        self.grain = _grain(self.seed)
        self.pen_max = lay.pen.max(axis=0) if lay.pen is not None else None

    # -- pieces -------------------------------------------------------------------------------
    def _present(self, plan: np.ndarray | None, x0: int, y0: int, w: int, h: int) -> bool:
        return plan is not None and plan_crop_max(plan, self.lay.f, x0, y0, w, h) > 1e-3

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
            mask |= raster_polygon(poly, x0, y0, w, h)
        return mask

    def _lattice(self, x0: int, y0: int, w: int, h: int, spacing: float, key: int):
        reach = self.reach
        i0 = int(math.floor((x0 - reach) / spacing)) - 1
        i1 = int(math.ceil((x0 + w + reach) / spacing)) + 1
        j0 = int(math.floor((y0 - reach) / spacing)) - 1
        j1 = int(math.ceil((y0 + h + reach) / spacing)) + 1
        ii, jj = np.meshgrid(np.arange(i0, i1), np.arange(j0, j1))
        px = (ii + 0.5 + (hash01(ii, jj, key + 11) - 0.5) * 2 * _JITTER) * spacing
        py = (jj + 0.5 + (hash01(ii, jj, key + 12) - 0.5) * 2 * _JITTER) * spacing
        ok = (px >= x0 - reach) & (px < x0 + w + reach) & (py >= y0 - reach) & (py < y0 + h + reach)
        ii, jj, px, py = ii[ok], jj[ok], px[ok], py[ok]
        u = hash01(ii, jj, key + 13)
        z = hash01(ii, jj, key + 14)
        sel = hash_u64(ii, jj, key + 15)
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
            vt = sample_plan(lay.tissue, lay.f, px, py) > 0.5
            if not vt.any():
                continue
            px, py, u, z, sel = px[vt], py[vt], u[vt], z[vt], sel[vt]
            in_t = (shapely.contains_xy(lay.tumour_geom, px, py) if lay.tumour_geom is not None
                    else np.zeros(px.shape, bool))
            lym = (sample_plan(lay.lymph, lay.f, px, py) if lay.lymph is not None
                   else np.zeros(px.shape, np.float32))
            if lattice == 0:
                prob = np.where(in_t, 0.92, 0.15 * (1 - lym) + 0.02)
                c = np.where(in_t, TUMOUR, np.where(z < 0.72, SPINDLE, ROUND))
            else:
                prob = np.where(in_t, 0.04, 0.025 + 0.85 * lym)
                c = np.full(px.shape, LYMPH)
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
        v = plan_window(lay.tissue, f, x0, y0, w, h)
        alpha = np.clip((v - 0.5) * self.edge_k + 0.5, 0, 1)
        if not alpha.any():
            return None, None, None, v
        p = self.p
        k = lay.key
        wb = value_noise(x0, y0, w, h, 160 * p, 160 * p, k + 1)
        warp = value_noise(x0, y0, w, h, 70 * p, 70 * p, k + 2)
        warp2 = value_noise(x0, y0, w, h, 22 * p, 22 * p, k + 3)
        fine = value_noise(x0, y0, w, h, 2.5 * p, 2.5 * p, k + 4)
        large = value_noise(x0, y0, w, h, 250 * p, 250 * p, k + 5)
        th = (k % 6283) / 1000.0
        lam = np.float32(2 * np.pi / (9.0 * p))
        phase = ((np.arange(x0, x0 + w, dtype=np.float32) * np.float32(math.cos(th) * lam))[None, :]
                 + (np.arange(y0, y0 + h, dtype=np.float32) * np.float32(math.sin(th) * lam))[:, None])
        phase += 12.0 * warp + 5.0 * warp2
        seg = value_noise(x0, y0, w, h, 30 * p, 30 * p, k + 6)
        iso = value_noise(x0, y0, w, h, 10 * p, 10 * p, k + 7)
        fib = _smoothstep((0.5 + 0.5 * np.sin(phase) - 0.3) * 1.8) * _smoothstep((seg - 0.2) * 2.0)
        fib = fib * (0.6 + 0.4 * wb)
        e = 0.09 + 0.24 * fib + 0.12 * iso + 0.05 * (fine - 0.5) + 0.08 * (large - 0.5)
        hh = 0.02 + 0.02 * fine
        if self._present(lay.lymph, x0, y0, w, h):
            ly = plan_window(lay.lymph, f, x0, y0, w, h)
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
            fo = plan_window(lay.fold, f, x0, y0, w, h)
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
        od[:] = V_BG
        if hh is not None:
            od += hh[..., None] * lay.v_h
            od += e[..., None] * lay.v_e
            if dab is not None:
                od += dab[..., None].astype(np.float32) * V_DAB
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
            b = plan_window(lay.blur, f, x0, y0, w, h)[..., None]
            od = big[m:m + h, m:m + w] * (1 - b) + blurred[m:m + h, m:m + w] * b
            v = plan_window(lay.tissue, f, x0, y0, w, h)
        else:
            od, v = self._od(x0, y0, w, h)
        if self._present(lay.bubble_rim, x0, y0, w, h):
            rim = plan_window(lay.bubble_rim, f, x0, y0, w, h)[..., None]
            inn = plan_window(lay.bubble_in, f, x0, y0, w, h)[..., None]
            od = od * (1 - 0.22 * inn) + rim * np.array([0.42, 0.42, 0.38], np.float32)
        if self._present(self.pen_max, x0, y0, w, h):
            streak = 0.75 + 0.5 * value_noise(x0, y0, w, h, 30 * self.p, 8 * self.p, lay.key + 9)
            for c in range(3):
                od[..., c] += plan_window(lay.pen[c], f, x0, y0, w, h) * streak
        np.multiply(od, -_LN10, out=od)
        np.exp(od, out=od)
        od *= 255.0
        gy = int(hash_u64(np.array(x0), np.array(y0), self.seed) % np.uint64(_GRAIN_N))
        gx = int(hash_u64(np.array(y0), np.array(x0), self.seed + 1) % np.uint64(_GRAIN_N))
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
