"""A study's inputs: the embedded cohorts and the prototype set, built or reused from their caches."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from alkit.captions.database import CaptionDB, open_database
from alkit.captions.search import read_id_list
from alkit.digests import files_sha256
from alkit.embeddings.cohort import Cohort
from alkit.embeddings.embed import EmbedConfig, Embedder
from alkit.embeddings.encoders import get_encoder
from alkit.embeddings.store import KEY_ATTRS, read_attrs
from alkit.prototypes.build import study_prototypes
from alkit.prototypes.prototype_set import PrototypeSet
from alkit.errors import AlkitError
from alkit.study.config import StudyConfig
from alkit.study.stores import unbuildable
from alkit.study.tracking import config_hash

log = logging.getLogger(__name__)

PROTOTYPE_KEY_VERSION = 1  # bump when what a prototype set depends on changes


def embed_cohort(config: StudyConfig, paths: list[Path], progress: bool) -> Cohort:
    """The slides at ``paths`` embedded as the study says (cached stores are reused), or with
    ``embedding.stores`` their given stores (nothing is embedded)."""
    if config.stores is not None:
        return config.stores.cohort(paths)
    e = config.embedding
    cfg = EmbedConfig(encoder=e["encoder"], mpp=e.get("mpp"), patch=e.get("patch", 256), stride=e.get("stride"),
                      min_tissue=e.get("min_tissue", 0.5), batch_size=e.get("batch_size", 64),
                      num_workers=e.get("workers", 2), accelerator=e.get("accelerator", "auto"),
                      devices=e.get("devices", 1))
    return Cohort.from_stores(Embedder(cfg, e["out"], progress=progress).embed(paths, slide_mpp=config.slide_mpp))


def prototypes_for(config: StudyConfig) -> PrototypeSet:
    """The study's prototype set: a built one (``prototypes.path``), or built from the caption database
    and cached in ``<out>/prototypes/<key>/``, where the key is the digest of every input that shapes
    the set (:func:`prototype_key_inputs`). A changed input builds a new set beside the old one; an
    unchanged one is reused, and the log says which."""
    p = config.prototypes
    if "path" in p:
        prototypes = PrototypeSet.load(p["path"])
        if config.stores is not None:
            config.stores.check_prototypes(prototypes.encoder, prototypes.dim, f"key 'prototypes.path' {p['path']}")
        return prototypes
    encoder = prototype_encoder(config)
    db = open_database(p["db"])
    crops = config.task_class.prototype_crops
    inputs = prototype_key_inputs(p, encoder, db, crops=crops)
    key = config_hash(inputs)
    folder = config.out / "prototypes" / key
    if (folder / "prototypes.json").exists():
        log.info("reusing the prototype set %s (same caption database, classes, exclusions, preparation and "
                 "encoder)", folder)
        return PrototypeSet.load(folder)
    log.info("building the prototype set %s (inputs: database %s, encoder %s)", folder, inputs["database"],
             inputs["encoder"])
    prototypes = study_prototypes(p, encoder, crops=crops, db=db)
    prototypes.meta |= {"cache_key": key, "key_inputs": inputs}
    prototypes.save(folder)
    return prototypes


def prototype_encoder(config: StudyConfig) -> Any:
    """The encoder that embeds the caption images: the study's, or the given stores' (which must be
    one alkit can build here, offline, and of the stores' dimension)."""
    spec = config.embedding["encoder"]
    if config.stores is None:
        return get_encoder(spec)
    try:
        encoder = get_encoder(spec)
    except (AlkitError, OSError, ImportError, RuntimeError, ValueError) as exc:
        raise unbuildable(config.stores.folder, spec, exc) from None
    config.stores.check_prototypes(spec, encoder.dim, f"encoder {spec!r}")
    return encoder


def prototype_key_inputs(settings: Mapping[str, Any], encoder: Any, db: CaptionDB, *, crops: bool) -> dict:
    """What a built prototype set depends on, as plain data: the caption database's content digest,
    each class's query (keywords, exclusions, prompt, top-N, tags, rank, ids), the excluded ids (read
    from their file), the image preparation, the crop boxes (their files' digests) where the task's
    prototypes are crops, and the encoder with its weights."""
    exclude = settings.get("exclude", ())
    exclude = read_id_list(exclude) if isinstance(exclude, (str, os.PathLike)) else [str(i) for i in exclude]
    crop_inputs = None
    if crops:
        crop_inputs = {k: (files_sha256(v)[:16] if k in ("figures", "boxes") else v)
                       for k, v in sorted(dict(settings.get("crops", {})).items())}
    return {
        "format": PROTOTYPE_KEY_VERSION,
        "database": db.digest(),
        "classes": settings["classes"],
        "exclude": sorted(set(exclude)),
        "prep": settings.get("prep"),
        "crops": crop_inputs,
        "encoder": encoder.name,
        "weights_id": getattr(encoder, "weights_id", ""),
    }


def store_digest(attrs: Mapping[str, Any]) -> str:
    """A store's identity from its attributes: the slide's content id, the encoder and its weights, the
    grid and the cell count (what determines its features), not its path or creation time."""
    keys = (*KEY_ATTRS, "dim", "n", "grid_shape")
    return config_hash({k: attrs.get(k) for k in keys})[:16]


def input_digests(cohort: Cohort, test_cohort: Cohort | None = None, validation_cohort: Cohort | None = None,
                  prototypes: PrototypeSet | None = None) -> dict[str, Any]:
    """The digests of a study's inputs: per cohort (``train``, ``test``, ``validation``) slide id ->
    store digest (:func:`store_digest`), and the prototype set's cache key. Part of every run's key,
    so a run is reused only when its inputs are the same, and logged to MLflow beside the run."""
    digests: dict[str, Any] = {}
    for name, c in (("train", cohort), ("test", test_cohort), ("validation", validation_cohort)):
        if c is not None:
            digests[name] = {s.slide_id: store_digest(read_attrs(s.store_path)) for s in c.slides}
    if prototypes is not None:
        digests["prototypes"] = prototypes.meta.get("cache_key") or config_hash(
            {"encoder": prototypes.encoder, "weights_id": prototypes.weights_id,
             "classes": {n: [str(i) for i in c.provenance] for n, c in prototypes.classes.items()}})
    return digests
