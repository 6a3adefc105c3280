"""Overview PNGs a pathologist reads at a glance: the slide, the score map, the regions to annotate.

Each picture has a title (slide, strategy, budget, cycle), the thumbnail with the score map tinted over
the scored cells in *cividis* (blue to yellow: nothing like H&E's pink and purple), the regions outlined
with their rank in a readable label, a scale bar in mm, and on the right a colour bar in the score's own
units and a legend. The colour scale is shared by all slides of one selection (:func:`score_range`), so a
slide with low scores looks cool next to one with high scores instead of every slide reaching the top.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from alkit.embeddings.cohort import CohortSlide
from alkit.wsi.slide import Slide, SlideError

log = logging.getLogger(__name__)

__all__ = ["OverlayInfo", "overview_png", "score_range", "resolve_slide_path", "colormap"]

THUMB_SIDE = 1024
HEADER = 70
PANEL = 270
#: region outline colours, by label (class or strategy): chosen to stand out on H&E and on cividis
PALETTE = [(255, 40, 200), (0, 230, 255), (255, 140, 0), (60, 230, 60), (255, 255, 255), (255, 0, 0)]
# cividis at 0, .25, .5, .75, 1 (used only when matplotlib is not installed)
_CIVIDIS = np.array([[0, 34, 78], [62, 77, 108], [124, 123, 120], [188, 175, 111], [254, 232, 56]], float)


@dataclass(frozen=True)
class OverlayInfo:
    """What the title says: strategy, budget text (e.g. ``3 × 1024 µm``), cycle."""

    strategy: str
    budget: str = ""
    cycle: int = 0


def colormap(values: np.ndarray) -> np.ndarray:
    """RGB uint8 of ``values`` in [0, 1] (cividis; a 5-stop table when matplotlib is missing)."""
    v = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0)
    try:
        import matplotlib

        return (matplotlib.colormaps["cividis"](v)[..., :3] * 255).astype(np.uint8)
    except ImportError:
        x = np.linspace(0, 1, len(_CIVIDIS))
        return np.stack([np.interp(v, x, _CIVIDIS[:, k]) for k in range(3)], axis=-1).astype(np.uint8)


def _scored(score_map: np.ndarray) -> np.ndarray:
    return np.isfinite(score_map) & (score_map > 0)


def score_range(maps: Iterable[np.ndarray | None]) -> tuple[float, float] | None:
    """The (low, high) of the scored cells of all ``maps``: one colour scale for a whole selection."""
    lo, hi = math.inf, -math.inf
    for m in maps:
        if m is None or not m.size:
            continue
        values = m[_scored(m)]
        if values.size:
            lo, hi = min(lo, float(values.min())), max(hi, float(values.max()))
    if not math.isfinite(lo):
        return None
    return (lo, hi) if hi > lo else (min(0.0, lo), hi if hi > 0 else lo + 1.0)


def resolve_slide_path(slide: CohortSlide) -> Path:
    """The slide file of a store, absolute: as stored when absolute; a relative path (stores written by
    alkit ≤ 0.1 kept the path as typed) is taken from the working directory when it exists there, else from
    the store's folder; if neither exists, the working-directory reading is returned."""
    p = Path(slide.slide_path)
    if not str(slide.slide_path) or p.is_absolute():
        return p
    here, beside = Path.cwd() / p, Path(slide.store_path).parent / p
    return beside if not here.exists() and beside.exists() else here


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # a scalable font on Pillow >= 10.1
    except TypeError:
        return ImageFont.load_default()


def _nice_length(target_mm: float) -> float:
    """The largest 1, 2 or 5 × 10^k mm not above ``target_mm``."""
    k = 10 ** math.floor(math.log10(target_mm))
    return max(m * k for m in (1, 2, 5) if m * k <= target_mm)


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _thumbnail(slide: CohortSlide, size: tuple[int, int], scale: float) -> Image.Image:
    w0, h0 = slide.grid.dimensions
    try:
        with Slide(resolve_slide_path(slide), mpp=slide.grid.slide_mpp) as s:
            return Image.fromarray(s.read((0, 0, w0, h0), size=size, mpp=s.mpp / scale))
    except SlideError as exc:
        log.warning("%s: no thumbnail (%s); drawing on grey", slide.slide_id, exc.reason)
        return Image.new("RGB", size, (200, 200, 200))


def _tint(base: Image.Image, slide: CohortSlide, score_map: np.ndarray, scale: float,
          low: float, high: float) -> Image.Image:
    heat = colormap((score_map - low) / (high - low))
    rows, cols = score_map.shape
    stride = slide.grid.stride0 * scale
    full = (max(1, round(cols * stride)), max(1, round(rows * stride)))
    heat_img = Image.fromarray(heat).resize(full, Image.Resampling.NEAREST).crop((0, 0, *base.size))
    alpha = Image.fromarray((_scored(score_map) * 140).astype(np.uint8)).resize(full, Image.Resampling.NEAREST)
    return Image.composite(heat_img, base, alpha.crop((0, 0, *base.size)))  # tint only scored cells


def _scale_bar(draw: ImageDraw.ImageDraw, origin: tuple[int, int], thumb_w: int, mm_per_px: float) -> None:
    length_mm = _nice_length(0.2 * thumb_w * mm_per_px)
    px = round(length_mm / mm_per_px)
    x, y = origin
    label = f"{length_mm:g} mm"
    font = _font(18)
    draw.rectangle([x - 8, y - 30, x + px + 8, y + 12], fill=(255, 255, 255))
    draw.rectangle([x, y, x + px, y + 6], fill=(0, 0, 0))
    draw.text((x + px / 2, y - 4), label, fill=(0, 0, 0), font=font, anchor="mb")


def _panel(canvas: Image.Image, draw: ImageDraw.ImageDraw, x0: int, y0: int, labels: list[str], score: tuple[float, float] | None,
           map_name: str) -> None:
    small, text = _font(16), _font(18)
    y = y0 + 10
    if score is not None:
        low, high = score
        draw.text((x0 + 14, y), map_name, fill=(0, 0, 0), font=text)
        y += 30
        bar_h, bar_w = 280, 26
        ramp = colormap(np.linspace(1, 0, bar_h)[:, None].repeat(bar_w, axis=1))
        canvas.paste(Image.fromarray(ramp), (x0 + 14, y))
        draw.rectangle([x0 + 14, y, x0 + 14 + bar_w, y + bar_h], outline=(0, 0, 0))
        for t in np.linspace(0, 1, 5):
            ty = y + round((1 - t) * bar_h)
            draw.line([x0 + 14 + bar_w, ty, x0 + 20 + bar_w, ty], fill=(0, 0, 0))
            draw.text((x0 + 26 + bar_w, ty), _fmt(low + t * (high - low)), fill=(0, 0, 0), font=small, anchor="lm")
        y += bar_h + 14
        draw.text((x0 + 14, y), "shared by every slide", fill=(90, 90, 90), font=small)
        y += 20
        draw.text((x0 + 14, y), "of this selection", fill=(90, 90, 90), font=small)
        y += 34
    draw.text((x0 + 14, y), "Regions", fill=(0, 0, 0), font=text)
    y += 28
    for i, label in enumerate(labels):
        colour = PALETTE[i % len(PALETTE)]
        draw.rectangle([x0 + 14, y, x0 + 40, y + 18], outline=colour, width=4, fill=(60, 60, 60))
        draw.text((x0 + 50, y + 9), label, fill=(0, 0, 0), font=small, anchor="lm")
        y += 26
    draw.text((x0 + 14, y + 6), "1, 2, ...: rank (1 = first choice)", fill=(0, 0, 0), font=small)


def overview_png(slide: CohortSlide, boxes: Sequence[tuple[Sequence[float], str]], score_map: np.ndarray | None,
                 info: OverlayInfo, score: tuple[float, float] | None = None, map_name: str = "score",
                 labels: Sequence[str] | None = None) -> np.ndarray:
    """RGB overview of one slide: ``boxes`` are ``(level-0 box, label)`` in rank order; ``score`` the shared
    colour scale (default: this map's own range); ``labels`` all labels of the selection (fixes colours)."""
    w0, h0 = slide.grid.dimensions
    scale = THUMB_SIDE / max(w0, h0)
    size = (max(1, round(w0 * scale)), max(1, round(h0 * scale)))
    base = _thumbnail(slide, size, scale)
    if score_map is not None and score_map.size:
        score = score or score_range([score_map])
        if score is not None:
            base = _tint(base, slide, score_map, scale, *score)
    else:
        score = None
    labels = list(labels) if labels is not None else sorted({lab for _, lab in boxes})
    canvas = Image.new("RGB", (size[0] + PANEL, HEADER + max(size[1], 600)), (255, 255, 255))
    canvas.paste(base, (0, HEADER))
    draw = ImageDraw.Draw(canvas)
    draw.text((12, 8), slide.slide_id, fill=(0, 0, 0), font=_font(28))
    subtitle = " · ".join(t for t in (f"strategy {info.strategy}", f"budget {info.budget}" if info.budget else "",
                                      f"cycle {info.cycle}", f"{len(boxes)} region(s)") if t)
    draw.text((12, 42), subtitle, fill=(40, 40, 40), font=_font(19))
    font = _font(26)
    for rank, (box, label) in enumerate(boxes, 1):
        x, y, w, h = (v * scale for v in box)
        y += HEADER
        colour = PALETTE[labels.index(label) % len(PALETTE)] if label in labels else PALETTE[0]
        draw.rectangle([x - 1, y - 1, x + max(w, 3), y + max(h, 3)], outline=(0, 0, 0), width=5)  # a dark halo
        draw.rectangle([x, y, x + max(w, 3) - 1, y + max(h, 3) - 1], outline=colour, width=3)
        tx, ty = x + 3, (y - 32 if y - 32 >= HEADER else y + 5)  # above the box, else inside it
        l, t, r, b = draw.textbbox((tx, ty), str(rank), font=font)
        draw.rectangle([l - 4, t - 3, r + 4, b + 3], fill=(20, 20, 20), outline=colour, width=2)
        draw.text((tx, ty), str(rank), fill=(255, 255, 255), font=font)
    _scale_bar(draw, (20, HEADER + max(size[1], 60) - 20), size[0], slide.grid.slide_mpp / scale / 1000)
    _panel(canvas, draw, size[0], HEADER, labels, score, map_name)
    return np.asarray(canvas)
