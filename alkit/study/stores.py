"""A study on existing embedding stores (``embedding.stores``): TRIDENT / CLAM features imported by
``alkit import-features``, or stores another study or ``alkit embed`` made.

The study then embeds nothing. Before any work (:func:`find_stores`, from
:func:`alkit.study.config.load_config`) every slide of the cohort (training, test and validation)
gets its store from the folder, found by slide id (the slide file's stem, as ``alkit embed`` names
stores), and is checked:

- exactly one store per slide among those matching the ``encoder`` / ``mpp`` / ``patch`` / ``stride``
  the config gives (a folder may hold several encoders' stores; the keys choose);
- one encoder, weights, feature dimension and grid for all slides;
- the store was made for that slide: the same level-0 size, resolution and, where the store records
  one, content id (:attr:`alkit.wsi.slide.Slide.content_id`);
- a readable store with tissue fractions (what the strategies and tasks read).

The stores' encoder, mpp, patch and stride become the study's (its runs' params, the prototype
encoder); their digests enter the run keys as embedded stores' do
(:func:`alkit.study.inputs.input_digests`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alkit.atomic import visible
from alkit.embeddings.cohort import Cohort
from alkit.embeddings.store import StoreHeader, read_attrs
from alkit.errors import AlkitError
from alkit.wsi.slide import Slide

#: config keys that choose among a folder's stores and then take the chosen stores' values
GRID_KEYS = ("encoder", "mpp", "patch", "stride")
#: attributes every store of one study shares
SHARED = ("encoder", "weights_id", "dim", "mpp", "patch", "stride")
#: relative tolerance of a store's recorded slide resolution against the slide's
MPP_TOLERANCE = 1e-3


class StoresError(AlkitError, ValueError):
    """Given stores a study cannot use: names the folder or file and why."""


def _same(a: Any, b: Any) -> bool:
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    return math.isclose(float(a), float(b), rel_tol=1e-9) if numbers else a == b


def _describe(attrs: Mapping[str, Any], keys: Iterable[str] = GRID_KEYS) -> str:
    return ", ".join(f"{k} {attrs.get(k)!r}" for k in keys)


@dataclass(frozen=True)
class GivenStores:
    """The checked stores of a study: each slide's store and what all of them share."""

    folder: Path
    paths: dict[Path, Path]  # slide path -> its store
    attrs: dict  # the SHARED attributes

    @property
    def grid(self) -> dict:
        """``encoder``, ``mpp``, ``patch``, ``stride`` of the stores: the study's ``embedding`` keys."""
        return {k: self.attrs[k] for k in GRID_KEYS}

    def cohort(self, slides: Iterable[str | os.PathLike]) -> Cohort:
        """The embedded cohort of ``slides`` from their stores; each slide's path is the config's (an
        imported store may record another path, or none)."""
        slides = [Path(s) for s in slides]
        missing = [s for s in slides if s not in self.paths]
        if missing:
            raise StoresError(f"{self.folder}: no store was checked for slide {missing[0]}")
        cohort = Cohort.from_stores(self.paths[s] for s in slides)
        return Cohort([dataclasses.replace(c, slide_path=s) for c, s in zip(cohort.slides, slides)], cohort.attrs)

    def check_prototypes(self, encoder: str, dim: int, what: str) -> None:
        """A prototype set (``what``) of ``encoder`` and ``dim`` must live in the stores' feature space."""
        if dim != self.attrs["dim"] or encoder != self.attrs["encoder"]:
            raise StoresError(f"{what}: made with encoder {encoder!r} ({dim}-d), but the stores in {self.folder} "
                              f"hold {self.attrs['dim']}-d features of encoder {self.attrs['encoder']!r}; "
                              "prototypes must come from the stores' encoder")


def unbuildable(folder: Path, encoder: str, exc: BaseException) -> StoresError:
    """The error of a prototype encoder (the stores') that cannot be built here."""
    reason = " ".join(str(exc).split())
    return StoresError(f"the stores in {folder} were made with encoder {encoder!r}, which cannot be built here "
                       f"(offline) to embed the prototypes: {reason}; import the features with --encoder SPEC "
                       "naming an encoder alkit can build, or give prototypes.path (a set made with that encoder)")


def check_prototype_encoder(stores: GivenStores) -> None:
    """Torch-free and before any work: the stores' encoder has its weights here, where alkit can tell
    without building it (:func:`alkit.embeddings.encoders.hub.check_encoder_weights`)."""
    from alkit.embeddings.encoders.hub import check_encoder_weights

    try:
        check_encoder_weights(stores.attrs["encoder"])
    except AlkitError as exc:
        raise unbuildable(stores.folder, stores.attrs["encoder"], exc) from None


def _index(folder: Path) -> dict[str, list[tuple[Path, dict]]]:
    """slide id -> ``(store path, attributes)`` of every visible store in ``folder``."""
    if not folder.is_dir():
        raise StoresError(f"{folder}: no such folder of embedding stores")
    paths = visible(sorted(folder.glob("*.h5")))
    if not paths:
        raise StoresError(f"{folder}: no embedding stores (*.h5) in this folder; alkit embed or alkit "
                          "import-features writes them")
    index: dict[str, list[tuple[Path, dict]]] = {}
    for p in paths:
        attrs = read_attrs(p)  # a file that is no alkit store (a raw TRIDENT file) is refused, naming it
        index.setdefault(str(attrs.get("slide", p.name.split("__")[0])), []).append((p, attrs))
    return index


def _chosen(folder: Path, slide: Path, candidates: list[tuple[Path, dict]], wanted: Mapping[str, Any]) -> Path:
    found = [(p, a) for p, a in candidates if all(_same(a.get(k), v) for k, v in wanted.items())]
    if len(found) == 1:
        return found[0][0]
    if not candidates:
        raise StoresError(f"{folder}: no store for slide {slide.stem!r} ({slide}); every slide of the cohort "
                          "needs one")
    names = ", ".join(p.name for p, _ in (found or candidates))
    if not found:
        raise StoresError(f"{folder}: no store of slide {slide.stem!r} has {_describe(wanted, wanted)} "
                          f"(the config's embedding keys); it has {names}")
    raise StoresError(f"{folder}: {len(found)} stores of slide {slide.stem!r} ({names}); set embedding.encoder, "
                      "mpp, patch or stride to choose one")


def _check_slide(store: Path, attrs: Mapping[str, Any], slide_path: Path, slide_mpp: float | None) -> None:
    """The store was made for this slide: its level-0 size, resolution and content id."""
    fallback = slide_mpp if slide_mpp is not None else attrs.get("slide_mpp")
    with Slide(slide_path, fallback_mpp=fallback) as slide:
        dims, mpp, content = tuple(slide.dimensions), slide.mpp, slide.content_id
    recorded = tuple(int(v) for v in attrs.get("slide_dimensions") or ())
    if recorded != dims:
        raise StoresError(f"{store}: made for a slide of {' x '.join(map(str, recorded)) or 'unknown size'} px, but "
                          f"{slide_path} is {dims[0]} x {dims[1]} px")
    store_mpp = attrs.get("slide_mpp")
    if not isinstance(store_mpp, (int, float)) or abs(float(store_mpp) - mpp) > MPP_TOLERANCE * mpp:
        raise StoresError(f"{store}: made for a slide at {store_mpp} µm/px, but {slide_path} is at {mpp:g} µm/px "
                          "(cohort.slide_mpp sets it for files without one)")
    if attrs.get("slide_content_id") and attrs["slide_content_id"] != content:
        raise StoresError(f"{store}: made for other pixels than {slide_path} (its content id differs: another "
                          "scan, or another slide of the same name)")


def find_stores(folder: str | os.PathLike, slides: Iterable[Path], wanted: Mapping[str, Any],
                slide_mpp: float | None = None) -> GivenStores:
    """Each of ``slides``' store in ``folder``, among those with the ``wanted`` encoder / mpp / patch /
    stride, checked as the module says; :class:`StoresError` (or the store's or slide's error) names
    the folder or file otherwise."""
    folder = Path(folder)
    index = _index(folder)
    paths: dict[Path, Path] = {}
    first: tuple[Path, dict] | None = None
    for slide in dict.fromkeys(map(Path, slides)):
        store = _chosen(folder, slide, index.get(slide.stem, []), wanted)
        header = StoreHeader.load(store)  # readable, coords on the grid
        if header.tissue_fraction is None:
            raise StoresError(f"{store}: store has no tissue fractions (made by an older alkit); re-run alkit embed")
        attrs = header.attrs
        if first is None:
            first = store, attrs
        elif not all(_same(attrs.get(k), first[1].get(k)) for k in SHARED):
            raise StoresError(f"{store}: made with {_describe(attrs, SHARED)}, but {first[0]} with "
                              f"{_describe(first[1], SHARED)}; a study needs one encoder and grid for all its slides")
        _check_slide(store, attrs, slide, slide_mpp)
        paths[slide] = store
    if first is None:
        raise StoresError(f"{folder}: the cohort names no slide")
    return GivenStores(folder, paths, {k: first[1].get(k) for k in SHARED})
