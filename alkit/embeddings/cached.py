"""Is a cohort already embedded? The torch-free precheck `alkit embed` runs before anything heavy.

A store is reused when its key attributes (:data:`alkit.embeddings.store.KEY_ATTRS`) match what a run would
write; :func:`embedding_attrs` builds those attributes (``Embedder.attrs_for`` calls it too, so the check and
the writer cannot drift apart). What a run would write depends on the encoder only through its spec, its
weights id and its default mpp, and for the encoders in :func:`encoder_identity` those are known without
building the model (or importing torch): for a fully cached rerun :func:`cached_stores` opens each slide
with OpenSlide, computes its store path and attributes and returns the stores, and `alkit embed` answers
in about a second instead of importing torch and Lightning first. For any other encoder, or when any
slide is not cached, it returns ``None`` and the full embedding path runs (and reports any problem).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from alkit.atomic import remove_stale_temps
from alkit.digests import files_sha256
from alkit.errors import AlkitError
from alkit.embeddings.store import is_cached, store_path
from alkit.wsi.grid import PatchGrid
from alkit.wsi.slide import Slide

log = logging.getLogger(__name__)

#: the patch resolution of encoders that set none (:data:`alkit.embeddings.encoders.base.DEFAULT_MPP`)
DEFAULT_MPP = 0.25


@dataclass(frozen=True)
class EncoderIdentity:
    """What an encoder contributes to a store's key attributes: its spec, weights id and default mpp."""

    name: str
    weights_id: str
    mpp: float


def embedding_attrs(encoder: str, weights_id: str, dim: int | None, mpp: float, patch: int, stride: int,
                min_tissue: float, slide: Slide, grid: PatchGrid) -> dict:
    """Store attributes: everything that determines the embeddings (encoder, weights, grid, tissue
    threshold, the slide's pixels and geometry), plus provenance (slide id, path, grid shape)."""
    return {
        "encoder": encoder, "weights_id": weights_id, "dim": dim,
        "mpp": mpp, "patch": patch, "stride": stride,
        "min_tissue": min_tissue, "slide": slide.name, "slide_path": str(slide.path),
        "slide_content_id": slide.content_id,
        "slide_dimensions": list(slide.dimensions), "slide_mpp": slide.mpp, "grid_shape": list(grid.shape),
    }


def _resnet18_identity(spec: str, weights: str | None) -> EncoderIdentity | None:
    """As :class:`alkit.embeddings.encoders.resnet.ResNet18Encoder` names its weights."""
    tag = (weights or "none").strip()
    if tag.lower() in {"none", "random", "random-init"}:
        return EncoderIdentity(spec, "random-init", DEFAULT_MPP)
    if tag.lower() in {"imagenet", "imagenet1k_v1"}:
        return EncoderIdentity(spec, "torchvision:ResNet18_Weights.IMAGENET1K_V1", DEFAULT_MPP)
    path = Path(tag).expanduser()
    if not path.is_file():
        return None  # the encoder itself reports the missing checkpoint
    return EncoderIdentity(spec, files_sha256(path)[:16], DEFAULT_MPP)


def _card_identity(spec: str, weights: str | None) -> EncoderIdentity | None:
    """A pathology foundation model by short name, as :func:`alkit.embeddings.encoders.foundation.resolve_weights`
    names its weights: the digest of the local file(s) given, else the hub cache's snapshot revision."""
    from alkit.embeddings.encoders import hub
    from alkit.embeddings.encoders.cards import encoder_card

    try:
        card = encoder_card(spec)
    except AlkitError:
        return None
    if card.family not in ("timm", "transformers", "open_clip"):  # built-ins above; CONCH needs its package
        return None
    folder = card.family in ("transformers", "open_clip")
    try:
        if weights:
            path = hub.local_weights(card.name, weights, folder=folder)
            files = sorted(list(path.glob("*.safetensors")) or list(path.glob("*.bin"))) if folder else [path]
            weights_id = files_sha256(*files)[:16] if files else f"dir:{path.resolve()}"
        else:  # the cache first; a download, if one is needed, is what the full run would do too
            weights_id = hub.resolve_hub_files(card.hub_repo, card.weight_files, spec_name=card.name,
                                               gated=card.gated, local_hint=hub.local_hint(card)).weights_id
    except AlkitError:
        return None  # the full run reports it
    return EncoderIdentity(spec, weights_id, card.mpp)


def encoder_identity(spec: str) -> EncoderIdentity | None:
    """The identity ``get_encoder(spec)`` would report, without building it or importing torch: the built-in
    encoders, and the foundation models of :mod:`alkit.embeddings.encoders.cards` with local weights or
    weights in the hub cache. ``None`` where it cannot be known without loading the model (``timm:`` and
    ``open_clip:`` families, PLIP, CONCH, plug-ins): those take the full path.

    tests/test_fast_start.py checks every answer here against the built encoder.
    """
    if not isinstance(spec, str) or not spec.strip() or ":" in spec:
        return None
    spec = spec.strip()
    name, _, weights = spec.partition("@")
    if name == "handcrafted" and weights in ("", "v1"):
        return EncoderIdentity(spec, "handcrafted-v1", 0.5)
    if name == "resnet18":
        return _resnet18_identity(spec, weights or None)
    if name in ("handcrafted", "plip"):  # plip names its weights after what it loads
        return None
    return _card_identity(spec, weights or None)


def first_on_node() -> bool:
    """The first process on this node of a launched multi-process run (or a plain run, or the launcher
    before it starts its processes): each node clears its own dead writers' temporary files, whose names
    carry the host (:func:`alkit.atomic.remove_stale_temps`)."""
    return all(int(os.environ.get(name, 0) or 0) == 0 for name in ("LOCAL_RANK", "SLURM_LOCALID"))


def cached_stores(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *, encoder: str,
                  mpp: float | None, patch: int, stride: int | None, min_tissue: float,
                  slide_mpp: float | None = None) -> list[Path] | None:
    """The store of every slide when all of them are complete and made with these options; else ``None``.

    A slide that cannot be opened raises its :class:`~alkit.wsi.slide.SlideError` (as the full run would,
    but before any heavy import); anything else the full run checks (id clashes, a store to recompute)
    makes this return ``None`` so the full run handles it. Nothing is computed, so the memory checks
    of a run that would embed are not made.
    """
    identity = encoder_identity(encoder)
    out = Path(out_dir)
    if identity is None or not out.is_dir():
        return None
    res = float(mpp or identity.mpp)
    step = int(stride or patch)
    stems: set[str] = set()
    stores: list[Path] = []
    for p in map(Path, paths):
        if p.stem in stems:
            return None  # the full run explains the clash
        stems.add(p.stem)
        with Slide(p, fallback_mpp=slide_mpp) as slide:
            grid = PatchGrid.for_slide(slide, res, patch, step)
            attrs = embedding_attrs(identity.name, identity.weights_id, None, res, patch, step, min_tissue, slide, grid)
            try:
                target = store_path(out, slide.name, identity.name, res, patch, step)
            except AlkitError:
                return None
        if not is_cached(target, attrs):
            return None
        log.info("%s: cached in %s", p, target)
        stores.append(target)
    if len(set(stores)) != len(stores):
        return None
    if first_on_node():
        remove_stale_temps(out, ".h5")
    return stores
