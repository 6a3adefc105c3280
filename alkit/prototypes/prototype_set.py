"""Prototype sets: per task class, a k × C matrix of L2-normalised embeddings of typical images.

The prototypes of a class are embeddings of images found in a caption database (keyword search or
text-to-image retrieval, :mod:`alkit.captions`), made with the *same encoder as the slide patches*:
the similarity map of a slide is, per patch, the highest cosine similarity to a class's prototypes
(:meth:`PrototypeSet.similarity`), which only means something when both live in one embedding space.
So a set records its encoder (name, dimension, weights id) and :meth:`PrototypeSet.check_encoder` /
:meth:`PrototypeSet.check_store` refuse a mismatch in name or dimension.

Each row keeps its provenance (database, id, caption, panel text, crop box) and the set keeps how the
images were prepared (:class:`~alkit.captions.images.ImagePrep`) and how each class was found (the
keyword query or the retrieval prompt). On disk a set is a folder with ``prototypes.npz`` (one array
per class) and ``prototypes.json`` (everything else, including the npz's sha256), both written
atomically; :meth:`PrototypeSet.load` checks that they belong together.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from alkit import __version__
from alkit.digests import files_sha256
from alkit.jsonfile import read_json
from alkit.atomic import atomic_path, atomic_write_text
from alkit.errors import AlkitError
from alkit.wsi.box import Box

if TYPE_CHECKING:  # the image side imports torch: only building a set needs it, not loading one
    from alkit.captions.database import CaptionDB
    from alkit.captions.images import ImagePrep

log = logging.getLogger(__name__)

FORMAT = "alkit-prototypes"
FORMAT_VERSION = 1
NPZ_NAME, JSON_NAME = "prototypes.npz", "prototypes.json"


class PrototypeError(AlkitError, ValueError):
    """Prototypes that cannot be built, read or used as asked; says which and why."""


class EncoderMismatchError(PrototypeError):
    """Prototypes and slide embeddings (or database embeddings) come from different encoders."""


def check_encoder_match(have_name: str, have_dim: int, want_name: str, want_dim: int, *, what: str,
                        against: str) -> None:
    """Raise :class:`EncoderMismatchError` unless names and dimensions agree."""
    if have_name != want_name or int(have_dim) != int(want_dim):
        raise EncoderMismatchError(
            f"{what} were made with encoder {have_name!r} ({have_dim}-d) but {against} with {want_name!r} "
            f"({want_dim}-d); similarities across encoders are meaningless: use the same encoder for both "
            f"(e.g. rebuild with --encoder {want_name!r})")


@dataclass
class ClassPrototypes:
    """One class: ``(k, C)`` float32 L2-normalised embeddings, one provenance dict per row, the query."""

    name: str
    embeddings: np.ndarray
    provenance: list[dict]
    query: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        emb = np.asarray(self.embeddings, np.float32)
        if emb.ndim != 2 or len(emb) == 0:
            raise PrototypeError(f"class {self.name!r}: prototypes must be a non-empty k x C matrix, got "
                                 f"shape {emb.shape}")
        if not np.isfinite(emb).all():
            raise PrototypeError(f"class {self.name!r}: prototypes contain NaN or infinite values")
        norms = np.linalg.norm(emb, axis=1)
        if (norms == 0).any():
            raise PrototypeError(f"class {self.name!r}: {int((norms == 0).sum())} prototypes are all zero")
        self.embeddings = emb / norms[:, None]
        if len(self.provenance) != len(emb):
            raise PrototypeError(f"class {self.name!r}: {len(emb)} prototypes but {len(self.provenance)} "
                                 "provenance records")

    @property
    def k(self) -> int:
        return int(len(self.embeddings))


@dataclass
class PrototypeSet:
    """class name -> :class:`ClassPrototypes`, all made with one encoder and one image preparation."""

    encoder: str
    dim: int
    weights_id: str
    classes: dict[str, ClassPrototypes]
    preprocessing: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.classes:
            raise PrototypeError("a prototype set needs at least one class")
        for c in self.classes.values():
            if c.embeddings.shape[1] != self.dim:
                raise PrototypeError(f"class {c.name!r}: prototypes are {c.embeddings.shape[1]}-d, the set's "
                                     f"encoder {self.encoder!r} is {self.dim}-d")

    @property
    def names(self) -> list[str]:
        return list(self.classes)

    def __getitem__(self, name: str) -> np.ndarray:
        """The ``(k, C)`` matrix of class ``name``."""
        if name not in self.classes:
            raise PrototypeError(f"no prototypes for class {name!r}; classes: {', '.join(self.classes)}")
        return self.classes[name].embeddings

    def __repr__(self) -> str:
        ks = ", ".join(f"{n}: {c.k}" for n, c in self.classes.items())
        return f"PrototypeSet(encoder={self.encoder!r}, dim={self.dim}, {{{ks}}})"

    # ------------------------------------------------------------------ using them

    def check_encoder(self, encoder: object, dim: int | None = None) -> None:
        """Refuse an encoder (an :class:`~alkit.embeddings.encoders.Encoder`, or a name plus ``dim``) other than ours."""
        name = encoder if isinstance(encoder, str) else getattr(encoder, "name", None)
        dim = dim if dim is not None else getattr(encoder, "dim", None)
        if name is None or dim is None:
            raise TypeError("check_encoder takes an Encoder, or an encoder name and its dim")
        check_encoder_match(self.encoder, self.dim, name, dim, what="the prototypes", against="the slides")

    def check_store(self, store: object) -> None:
        """Refuse a slide embedding store (:class:`alkit.embeddings.store.EmbeddingStore` or its attrs) of another encoder."""
        attrs = store if isinstance(store, Mapping) else getattr(store, "attrs", {})
        name, dim = attrs.get("encoder"), attrs.get("dim")
        if dim is None and hasattr(store, "dim"):
            dim = store.dim
        if name is None or dim is None:
            raise PrototypeError("the embedding store does not say which encoder made it")
        check_encoder_match(self.encoder, self.dim, name, int(dim), what="the prototypes",
                            against=f"the slide embeddings {getattr(store, 'path', '')}".rstrip())

    def similarity(self, features: np.ndarray, name: str) -> np.ndarray:
        """Per feature row, the highest cosine similarity to class ``name``'s prototypes (rows need
        not be normalised; all-zero rows give 0)."""
        feats = np.asarray(features, np.float32)
        if feats.ndim != 2 or feats.shape[1] != self.dim:
            raise EncoderMismatchError(f"features of shape {feats.shape} do not fit {self.dim}-d prototypes "
                                       f"of encoder {self.encoder!r}")
        norms = np.linalg.norm(feats, axis=1, keepdims=True)
        unit = feats / np.maximum(norms, 1e-12)
        return (unit @ self[name].T).max(axis=1)

    # ------------------------------------------------------------------ files

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``prototypes.npz`` and ``prototypes.json`` into ``folder`` (each atomically)."""
        folder = Path(folder)
        arrays = {f"class_{i}": c.embeddings for i, c in enumerate(self.classes.values())}
        with atomic_path(folder / NPZ_NAME) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
            digest = files_sha256(tmp)
        doc = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "alkit_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "encoder": {"name": self.encoder, "dim": self.dim, "weights_id": self.weights_id},
            "preprocessing": self.preprocessing, "npz": {"file": NPZ_NAME, "sha256": digest}, **self.meta,
            "classes": [{"name": c.name, "key": f"class_{i}", "k": c.k, "query": c.query, "prototypes": c.provenance}
                        for i, c in enumerate(self.classes.values())],
        }
        atomic_write_text(folder / JSON_NAME, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
        log.info("wrote %r to %s", self, folder)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> PrototypeSet:
        """Read a set written by :meth:`save` (``folder`` or its ``prototypes.json``)."""
        folder = Path(folder)
        if folder.name == JSON_NAME:
            folder = folder.parent
        jpath, npath = folder / JSON_NAME, folder / NPZ_NAME
        try:
            doc = json.loads(jpath.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PrototypeError(f"{folder}: no {JSON_NAME} (not a prototype set folder)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PrototypeError(f"{jpath}: unreadable ({exc})") from exc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise PrototypeError(f"{jpath}: not an alkit prototype set")
        if doc.get("format_version", 0) > FORMAT_VERSION:
            raise PrototypeError(f"{jpath}: format version {doc['format_version']} is newer than this alkit "
                                 f"understands ({FORMAT_VERSION}); upgrade alkit")
        if not npath.is_file():
            raise PrototypeError(f"{folder}: {NPZ_NAME} is missing")
        if doc.get("npz", {}).get("sha256") not in (None, files_sha256(npath)):
            raise PrototypeError(f"{npath}: does not belong to {jpath} (sha256 differs); were the files copied "
                                 "from different builds?")
        try:
            with np.load(npath, allow_pickle=False) as arrays:
                mats = {k: arrays[k] for k in arrays.files}
        except (OSError, ValueError) as exc:
            raise PrototypeError(f"{npath}: unreadable ({exc})") from exc
        enc = doc["encoder"]
        classes = {}
        for c in doc["classes"]:
            if c["key"] not in mats:
                raise PrototypeError(f"{npath}: no array for class {c['name']!r}")
            classes[c["name"]] = ClassPrototypes(c["name"], mats[c["key"]], list(c["prototypes"]), c.get("query", {}))
        meta = {k: v for k, v in doc.items() if k not in {"format", "format_version", "alkit_version", "created",
                                                           "encoder", "preprocessing", "npz", "classes"}}
        return cls(enc["name"], int(enc["dim"]), enc.get("weights_id", ""), classes, doc.get("preprocessing", {}),
                   meta)


# ---------------------------------------------------------------------- building


def typicality(embeddings: np.ndarray) -> np.ndarray:
    """Per row, the cosine similarity to the mean of the *other* rows: low values mark images unlike the
    rest of a class's hits (an IHC stain or a pen mark among H&E tumour images), for the review step."""
    emb = np.asarray(embeddings, np.float64)
    if emb.ndim != 2 or len(emb) < 2:
        raise PrototypeError(f"typicality needs at least two embeddings, got shape {emb.shape}")
    unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    others = unit.sum(axis=0, keepdims=True) - unit
    others /= np.maximum(np.linalg.norm(others, axis=1, keepdims=True), 1e-12)
    return (unit * others).sum(axis=1).astype(np.float32)



def build_prototypes(db: CaptionDB, ids_by_class: Mapping[str, Sequence[str]], encoder, *,
                     prep: ImagePrep | None = None, boxes: Mapping[str, Box] | None = None,
                     queries: Mapping[str, dict] | None = None, skip_missing: bool = False,
                     cache_dir: str | os.PathLike | None = None, use_cache: bool = True, batch_size: int = 32,
                     progress: bool = False) -> PrototypeSet:
    """Embed the images of each class's ids with ``encoder`` into a :class:`PrototypeSet`.

    Images are prepared with ``prep`` (default ``ImagePrep()``; ``boxes``: per-id crop boxes). A database
    without images but with precomputed embeddings (OpenPath) gives those embeddings, if they were made by
    ``encoder``.
    Ids without an image are an error unless ``skip_missing``, which leaves them out with a warning.
    ``queries`` (class -> how its ids were found) goes into the provenance.
    """
    if not ids_by_class:
        raise PrototypeError("no classes to build prototypes for")
    boxes = {str(k): tuple(v) for k, v in (boxes or {}).items()}
    unknown_boxes = [k for k in boxes if k not in set(db.ids)]
    if unknown_boxes:
        raise PrototypeError(f"{len(unknown_boxes)} crop boxes name ids that are not in the caption database "
                             f"{db.name} (e.g. {', '.join(unknown_boxes[:3])})")
    from alkit.captions.images import ImageEmbedder, ImagePrep

    prep = (prep or ImagePrep()).for_encoder(encoder)
    precomputed = db.embeddings is not None
    embedder = ImageEmbedder(encoder, prep, cache_dir=cache_dir, use_cache=use_cache, batch_size=batch_size,
                             progress=progress)
    classes: dict[str, ClassPrototypes] = {}
    for name, ids in ids_by_class.items():
        ids = list(dict.fromkeys(str(i) for i in ids))  # unique, in order
        if not ids:
            raise PrototypeError(f"class {name!r}: no ids to build prototypes from")
        pos = db.positions(ids, what=f"ids of class {name!r}")
        has = db.has_image[pos]
        if precomputed and not has.all():  # no images to embed: the database's own embeddings, if ours
            check_encoder_match(db.embedding_encoder or "unknown", db.embeddings.shape[1], encoder.name, encoder.dim,
                                what=f"the precomputed embeddings of {db.name}", against="the prototypes' encoder")
            emb_rows = pos
            use_images = False
        else:
            use_images = True
            if not has.all():
                lacking = [i for i, h in zip(ids, has) if not h]
                if not skip_missing:
                    raise PrototypeError(
                        f"class {name!r}: {len(lacking)} of {len(ids)} images are missing from {db.name} "
                        f"(e.g. {', '.join(lacking[:3])}); add them, drop those ids, or skip them (--skip-missing)")
                log.warning("class %r: skipping %d of %d ids without images (e.g. %s)", name, len(lacking),
                            len(ids), ", ".join(lacking[:3]))
                ids = [i for i, h in zip(ids, has) if h]
                if not ids:
                    raise PrototypeError(f"class {name!r}: none of its images is in {db.name}")
        if use_images:
            emb = embedder.embed(db, ids, boxes)
        else:
            emb = db.embeddings[emb_rows]
        records = db.to_records(ids)
        prov = [{"id": r["id"], "db": db.name, "source": r["source"], "caption": r["caption"], "text": r["text"],
                 "letter": r["letter"], "image": r["image"], "box": list(boxes[r["id"]]) if r["id"] in boxes else None}
                for r in records]
        classes[name] = ClassPrototypes(name, emb, prov, dict((queries or {}).get(name, {})))
        log.info("class %r: %d prototypes", name, len(ids))
    preprocessing = ({"mode": "precomputed", "embeddings_of": db.embedding_encoder}
                     if precomputed and not any(db.has_image) else prep.to_dict())
    return PrototypeSet(encoder.name, int(encoder.dim), getattr(encoder, "weights_id", ""), classes, preprocessing,
                        {"database": db.name})


def read_boxes(path: str | os.PathLike) -> dict[str, Box]:
    """Per-image crop boxes from JSON: ``{id: [x, y, w, h]}`` or ``[{"id": ..., "box": [x, y, w, h]}, ...]``
    (image pixels, x = column)."""
    path = Path(path)
    data = read_json(path, PrototypeError, "crop-box file")
    items = data.items() if isinstance(data, dict) else (
        ((d.get("id"), d.get("box")) for d in data if isinstance(d, dict)) if isinstance(data, list) else None)
    if items is None:
        raise PrototypeError(f"{path}: expected {{id: [x, y, w, h]}} or a list of {{id, box}} objects")
    boxes: dict[str, Box] = {}
    for key, box in items:
        ok = (key is not None and isinstance(box, (list, tuple)) and len(box) == 4
              and all(isinstance(v, (int, float)) and np.isfinite(v) for v in box) and box[2] > 0 and box[3] > 0)
        if not ok:
            raise PrototypeError(f"{path}: entry {key!r}: a box is [x, y, w, h] with w, h > 0, got {box!r}")
        boxes[str(key)] = tuple(int(round(v)) for v in box)  # type: ignore[assignment]
    return boxes
