"""The cohort: :func:`generate_cohort` and its manifest (:class:`SyntheticCohort`, ``cohort.json``).

Per slide it plans a layout (:mod:`alkit.synthetic.plan`), streams the rendered pyramid to disk
(:mod:`alkit.synthetic.tiff`) and writes the ground truth (ASAP XML, tissue mask, one SlideRunner
database for all slides); then the caption database (:mod:`alkit.synthetic.captions`) and the manifest.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import uuid as uuidlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
from PIL import Image
from shapely.geometry import Polygon

from alkit.annotations.asap import CAMELYON16_GROUPS, write_asap_xml
from alkit.annotations.sliderunner import SlideRunnerAnnotation, SlideRunnerSlide, write_sliderunner
from alkit.atomic import atomic_write_text
from alkit.errors import AlkitError
from alkit.synthetic.captions import write_captions
from alkit.synthetic.distractors import random_distractor_spec
from alkit.synthetic.layout import LOOKALIKE_CLASS, MITOSIS_CLASS
from alkit.synthetic.plan import make_layout
from alkit.synthetic.render import Renderer
from alkit.synthetic.tiff import JPEG_QUALITY, TILE, write_pyramid

log = logging.getLogger(__name__)


class SyntheticError(AlkitError, ValueError):
    """Invalid arguments for :func:`generate_cohort`; the message names the argument."""


MANIFEST_FORMAT = "alkit.synthetic/1"
#: A fixed "last modified" stamp (2024-01-01) keeps the SQLite output reproducible.
_DB_STAMP = 1704067200.0

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
        from threadpoolctl import threadpool_limits  # local: optional dependency
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
        from tqdm.auto import tqdm  # local: only progress bars need it (~0.1 s to import)
        it = tqdm(it, desc="synthetic slides", unit="slide")
    span = hi - lo
    for i in it:
        sid = f"synth_{i:03d}"
        rng = np.random.default_rng([seed & 0xFFFFFFFF, seed >> 32, 1, i])
        target = float(rng.uniform(lo + 0.15 * span, hi - 0.15 * span)) if i in tumour_set else None
        spec = random_distractor_spec(rng)
        lay = make_layout(rng, width, height, mpp, tumour_fraction=target,
                          distractors=spec)
        renderer = Renderer(lay, seed)
        tif_path = slides_dir / f"{sid}.tif"
        levels, tissue_px = write_pyramid(
            tif_path, width, height, mpp,
            lambda tx, ty, r=renderer: r.render(tx * TILE, ty * TILE, TILE, TILE), workers=workers)
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
        cap_json, cap_truth = write_captions(out / "captions", n_caption_images, seed, progress)
        cap_images = out / "captions" / "images"
    _remove_stale(out, {r.slide_id for r in records}, cap_json)
    params = {"n_slides": n_slides, "size": [width, height], "mpp": mpp,
              "tumour_slide_fraction": float(tumour_slide_fraction),
              "tumour_tissue_fraction": [lo, hi], "n_caption_images": int(n_caption_images),
              "tile": TILE, "jpeg_quality": JPEG_QUALITY}
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
