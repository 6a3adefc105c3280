"""Cohorts: slide paths as users name them (globs, list files), and embedded cohorts for strategies."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from alkit.atomic import visible
from alkit.wsi.grid import PatchGrid
from alkit.wsi.slide import SlideError
from alkit.embeddings.store import EmbeddingStore, StoreError, StoreHeader, read_attrs

LIST_SUFFIXES = (".txt", ".lst", ".list")


def expand_slide_paths(items: Iterable[str | os.PathLike]) -> list[Path]:
    """Paths, globs (``slides/*.svs``, ``**`` allowed) and list files (one path per line, ``#`` comments,
    relative paths taken from the list's folder) → slide paths in the given order, without repeats.

    A glob that matches nothing or a missing list file raises :class:`SlideError` naming it.
    """
    out: list[Path] = []
    for item in map(str, items):
        if any(ch in item for ch in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise SlideError(item, "no slide matches this pattern")
            out.extend(Path(m) for m in matches)
        elif item.endswith(LIST_SUFFIXES):
            listing = Path(item)
            if not listing.is_file():
                raise SlideError(listing, "no such slide-list file")
            for line in listing.read_text().splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    p = Path(line)
                    out.append(p if p.is_absolute() else listing.parent / p)
        else:
            out.append(Path(item))
    seen: set[Path] = set()
    return [p for p in out if not (p in seen or seen.add(p))]


@dataclass(frozen=True)
class CohortSlide:
    """One slide of a cohort as its embedding store knows it; features load on demand."""

    slide_id: str
    store_path: Path
    slide_path: Path
    grid: PatchGrid  # with every cell's tissue fraction

    def store(self) -> EmbeddingStore:
        """The slide's embeddings (read from disk at each call: memory stays per slide)."""
        return EmbeddingStore.load(self.store_path)


class Cohort:
    """The slides a strategy chooses regions from, all embedded with the same encoder and grid."""

    def __init__(self, slides: Sequence[CohortSlide], attrs: dict | None = None):
        ids = [s.slide_id for s in slides]
        if len(set(ids)) != len(ids):
            raise StoreError(f"cohort has repeated slide ids: {sorted({i for i in ids if ids.count(i) > 1})}")
        self.slides = list(slides)
        self.attrs = attrs or {}

    @classmethod
    def from_stores(cls, paths: Iterable[str | os.PathLike]) -> Cohort:
        """A cohort from embedding stores; they must share encoder, weights, mpp, patch and stride."""
        slides, key, first = [], None, None
        for path in map(Path, paths):
            store = StoreHeader.load(path)  # features stay on disk (dense grids: GBs per slide)
            this = {k: store.attrs.get(k) for k in ("encoder", "weights_id", "dim", "mpp", "patch", "stride")}
            if key is None:
                key, first = this, path
            elif this != key:
                raise StoreError(f"{path}: made with {this}, but {first} with {key}; a cohort needs one encoder/grid")
            if store.tissue_fraction is None:
                raise StoreError(f"{path}: store has no tissue fractions (made by an older alkit); re-run alkit embed")
            slides.append(CohortSlide(store.slide_id, path, Path(store.attrs.get("slide_path", "")), store.grid))
        if not slides:
            raise StoreError("no embedding stores given")
        return cls(slides, dict(key or {}))

    @classmethod
    def from_store_dir(cls, folder: str | os.PathLike, encoder: str | None = None) -> Cohort:
        """All stores in ``folder`` (of one encoder when several were embedded there). Hidden files
        (alkit's temporary ``.NAME.PID.TAG.tmp.h5`` of an interrupted run, ``._x.h5`` side files) are skipped."""
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise StoreError(f"{folder}: not a folder of embedding stores")
        paths = visible(sorted(folder.glob("*.h5")))
        if encoder is not None:
            paths = [p for p in paths if read_attrs(p).get("encoder") == encoder]
        if not paths:
            raise StoreError(f"{folder}: no embedding stores{f' for encoder {encoder}' if encoder else ''} "
                             "(run alkit embed first)")
        return cls.from_stores(paths)

    @property
    def ids(self) -> list[str]:
        return [s.slide_id for s in self.slides]

    def slide(self, slide_id: str) -> CohortSlide:
        for s in self.slides:
            if s.slide_id == slide_id:
                return s
        raise KeyError(slide_id)

    def __iter__(self):
        return iter(self.slides)

    def __len__(self) -> int:
        return len(self.slides)
