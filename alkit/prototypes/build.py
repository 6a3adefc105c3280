"""Building a prototype set from a caption database: the one pipeline of ``alkit prototypes build`` and of studies.

Each class is a :class:`ClassQuery`, saying how its images are found: given ``ids``, the ids of a
hits file (``alkit prototypes search``, after the manual clean-up), a keyword query
(:mod:`alkit.captions.search`) or text-to-image retrieval with a prompt (:mod:`alkit.captions.retrieval`).
:func:`find_class_images` runs one query (minus excluded ids) and returns a :class:`FoundImages`: the
ids and the provenance the prototype set records for the class. :func:`build_prototype_set` finds every
class and embeds the images: whole images (:func:`alkit.prototypes.prototype_set.build_prototypes`), or,
given a :class:`CropSpec`, one class of object-centred crops
(:func:`alkit.prototypes.crops.build_crop_prototypes`, the mitosis task's 64 × 64 px figure crops).

A study config gives the classes as ``prototypes.classes.<name>`` mappings
(:meth:`ClassQuery.from_config`) and the crops as ``prototypes.crops`` (:meth:`CropSpec.from_config`);
:func:`study_prototypes` builds the set its ``prototypes`` mapping describes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from alkit.captions.database import CaptionDB, open_database
from alkit.captions.images import Box, ImageEmbedder, ImagePrep
from alkit.captions.retrieval import DEFAULT_TEMPLATE, DEFAULT_TOP_N, RANKS, RETRIEVAL_PREP, RetrievalResult, retrieve
from alkit.captions.search import MODES, KeywordQuery, SearchResult, Step, read_hits, read_id_list, search
from alkit.prototypes.crops import PATCH_PX, build_crop_prototypes, synthetic_mitosis_boxes
from alkit.prototypes.prototype_set import PrototypeError, PrototypeSet, build_prototypes, read_boxes

log = logging.getLogger(__name__)

#: the keys of a study config's ``prototypes.classes.<name>`` mapping, per way of finding images
CLASS_KEYS = {"ids": ("ids",), "with": ("with", "without", "mode"), "prompt": ("prompt", "top_n", "tags", "rank")}
#: the keys of a study config's ``prototypes.crops`` mapping
CROP_KEYS = ("figures", "boxes", "side")


def _is_text_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


# ---------------------------------------------------------------------- how a class is found


@dataclass(frozen=True)
class ClassQuery:
    """How the images of one class are found: exactly one of ``ids``, ``hits_file``, ``keywords`` or
    ``prompt`` (a retrieval template with ``{class_name}``; ``top_n``, ``tags`` and the ``contrast``
    class names refine the retrieval, ``rank`` orders it: ``"cosine"`` or ``"softmax"``, which needs
    ``contrast``, :mod:`alkit.captions.retrieval`)."""

    name: str
    ids: tuple[str | int, ...] | None = None
    hits_file: str | None = None
    keywords: KeywordQuery | None = None
    prompt: str | None = None
    top_n: int = DEFAULT_TOP_N
    tags: tuple[str, ...] = ()
    contrast: tuple[str, ...] = ()
    rank: str = RANKS[0]

    def __post_init__(self) -> None:
        given = [k for k in ("ids", "hits_file", "keywords", "prompt") if getattr(self, k) is not None]
        if len(given) != 1:
            raise PrototypeError(f"class {self.name!r}: give exactly one of ids, a hits file, keywords or a "
                                 f"retrieval prompt, got {', '.join(given) or 'none'}")
        if self.ids is not None and not self.ids:
            raise PrototypeError(f"class {self.name!r}: no ids given")
        if self.keywords is not None and self.keywords.name != self.name:
            raise PrototypeError(f"class {self.name!r}: its keyword query is named {self.keywords.name!r}")
        if self.rank not in RANKS:
            raise PrototypeError(f"class {self.name!r}: rank must be one of {', '.join(RANKS)}, got {self.rank!r}")

    @property
    def source(self) -> str:
        """``"ids"``, ``"hits_file"``, ``"keywords"`` or ``"prompt"``: how the images are found."""
        return next(k for k in ("ids", "hits_file", "keywords", "prompt") if getattr(self, k) is not None)

    @classmethod
    def from_config(cls, name: str, mapping: Mapping[str, Any], *, key: str | None = None) -> ClassQuery:
        """The query of a study config's ``prototypes.classes.<name>`` mapping: ``ids`` (a list), ``with``
        (groups of synonyms; + ``without`` terms, ``mode``) or ``prompt`` (+ ``top_n``, ``tags``, ``rank``;
        a ``softmax`` class gets its contrast classes from :func:`with_softmax_contrast`).

        A bad mapping raises :class:`PrototypeError` naming the key (``key``: the mapping's own key,
        default ``prototypes.classes.<name>``).
        """
        key = key or f"prototypes.classes.{name}"
        if not isinstance(mapping, Mapping):
            raise PrototypeError(f"key '{key}' must be a mapping, got {mapping!r}")
        kinds = [k for k in CLASS_KEYS if k in mapping]
        if len(kinds) != 1:
            raise PrototypeError(f"key '{key}' needs exactly one of 'with' (keyword groups), 'prompt' (retrieval) "
                                 f"or 'ids', got {sorted(mapping) if kinds else 'none of them'}")
        kind = kinds[0]
        unknown = sorted(k for k in mapping if k not in CLASS_KEYS[kind])
        if unknown:
            raise PrototypeError(f"key '{key}.{unknown[0]}' does not go with '{kind}' (it knows "
                                 f"{', '.join(CLASS_KEYS[kind])})")
        if kind == "ids":
            ids = mapping["ids"]
            if not (isinstance(ids, list) and ids
                    and all(isinstance(i, (str, int)) and not isinstance(i, bool) for i in ids)):
                raise PrototypeError(f"key '{key}.ids' must be a non-empty list of image ids, got {ids!r}")
            return cls(name, ids=tuple(ids))
        if kind == "with":
            groups, without = mapping["with"], mapping.get("without", [])
            mode = mapping.get("mode", "substring")
            if not (isinstance(groups, list) and groups and all(_is_text_list(g) for g in groups)):
                raise PrototypeError(f"key '{key}.with' must be a list of synonym lists, got {groups!r}")
            if not _is_text_list(without):
                raise PrototypeError(f"key '{key}.without' must be a list of terms, got {without!r}")
            if mode not in MODES:
                raise PrototypeError(f"key '{key}.mode' must be one of {', '.join(MODES)}, got {mode!r}")
            return cls(name, keywords=KeywordQuery(name, tuple(map(tuple, groups)), tuple(without), mode))
        prompt, top_n, tags = mapping["prompt"], mapping.get("top_n", DEFAULT_TOP_N), mapping.get("tags", [])
        rank = mapping.get("rank", RANKS[0])
        if not isinstance(prompt, str):
            raise PrototypeError(f"key '{key}.prompt' must be a prompt template, e.g. {DEFAULT_TEMPLATE!r}")
        if not isinstance(top_n, int) or isinstance(top_n, bool) or top_n < 1:
            raise PrototypeError(f"key '{key}.top_n' must be a positive integer, got {top_n!r}")
        if not _is_text_list(tags):
            raise PrototypeError(f"key '{key}.tags' must be a list of tags, got {tags!r}")
        if rank not in RANKS:
            raise PrototypeError(f"key '{key}.rank' must be one of {', '.join(RANKS)}, got {rank!r}")
        return cls(name, prompt=prompt, top_n=top_n, tags=tuple(tags), rank=rank)


@dataclass(frozen=True)
class CropSpec:
    """Object-centred crops: boxes around the figures of a synthetic cohort's ``truth.json``
    (``figures``), from a crop-box JSON (``boxes``), else ``side`` × ``side`` px at each image's centre."""

    figures: str | None = None
    boxes: str | None = None
    side: float = PATCH_PX

    def __post_init__(self) -> None:
        if self.figures is not None and self.boxes is not None:
            raise PrototypeError("crops come from 'figures' or from 'boxes', not both")
        if not self.side > 0:
            raise PrototypeError(f"the crop side must be positive, got {self.side}")

    @classmethod
    def from_config(cls, mapping: Mapping[str, Any], *, key: str = "prototypes.crops") -> CropSpec:
        """The crops of a study config's ``prototypes.crops`` mapping (``figures`` | ``boxes`` | ``side``;
        paths as given, i.e. already resolved); a bad key raises :class:`PrototypeError` naming it."""
        if not isinstance(mapping, Mapping):
            raise PrototypeError(f"key '{key}' must be a mapping, got {mapping!r}")
        unknown = sorted(set(mapping) - set(CROP_KEYS))
        if unknown:
            raise PrototypeError(f"key '{key}' knows 'figures' (a synthetic truth.json), 'boxes' (a crop-box JSON) "
                                 f"and 'side' (centre crops, px); got {unknown}")
        if "figures" in mapping and "boxes" in mapping:
            raise PrototypeError(f"key '{key}': give 'figures' or 'boxes', not both")
        for name in ("figures", "boxes"):
            if name in mapping and not isinstance(mapping[name], (str, os.PathLike)):
                raise PrototypeError(f"key '{key}.{name}' must be a file path, got {mapping[name]!r}")
        side = mapping.get("side", PATCH_PX)
        if not isinstance(side, (int, float)) or isinstance(side, bool) or not side > 0:
            raise PrototypeError(f"key '{key}.side' must be a positive number of px, got {side!r}")
        paths = {k: str(mapping[k]) for k in ("figures", "boxes") if k in mapping}
        return cls(side=side, **paths)

    def read_boxes(self) -> dict[str, Box]:
        """Per image id, its crop box (image px); empty when every image is cropped at its centre."""
        if self.figures is not None:
            return synthetic_mitosis_boxes(self.figures)
        return read_boxes(self.boxes) if self.boxes is not None else {}


# ---------------------------------------------------------------------- finding and building


@dataclass(frozen=True)
class FoundImages:
    """The images found for one class: ``ids`` in order, the ``provenance`` its prototypes record (the
    set's per-class ``query``), and the search or retrieval ``result`` (steps, hit records) if any."""

    query: ClassQuery
    ids: list[str]
    provenance: dict
    result: SearchResult | RetrievalResult | None = None

    @property
    def steps(self) -> list[Step]:
        """The filtering steps of a search or retrieval, with what remained after each."""
        return list(self.result.steps) if self.result is not None else []


def find_class_images(db: CaptionDB, query: ClassQuery, encoder, *, exclude: Iterable[str] = (),
                      embedder: ImageEmbedder | None = None) -> FoundImages:
    """The ids of ``query``'s images in ``db``, minus ``exclude``, and the provenance recorded for them.

    Retrieval ranks images with ``encoder``'s text tower; ``embedder`` (made with
    :data:`~alkit.captions.retrieval.RETRIEVAL_PREP`) embeds the database images, through its cache.
    A search or retrieval that finds nothing raises :class:`~alkit.captions.search.NoHitsError`; the
    ids of a hits file may all be excluded (an empty list, refused by :func:`build_prototype_set`).
    """
    excluded = {str(i) for i in exclude}
    if query.hits_file is not None:
        ids = [str(h["id"]) for h in read_hits(query.hits_file)]
        kept = [i for i in ids if i not in excluded]
        return FoundImages(query, kept, {"hits_file": str(query.hits_file), "excluded": len(ids) - len(kept)})
    if query.ids is not None:
        kept = [str(i) for i in query.ids if str(i) not in excluded]
        provenance = {"ids": list(query.ids)}
        if excluded:
            provenance["excluded"] = len(query.ids) - len(kept)
        return FoundImages(query, kept, provenance)
    if query.keywords is not None:
        hits = search(db, query.keywords, exclude_ids=excluded)
        provenance = {"keywords": {"with": [list(g) for g in query.keywords.with_],
                                   "without": list(query.keywords.without)}}
        if excluded:
            provenance["excluded"] = hits.steps[-2].remaining - hits.steps[-1].remaining
        return FoundImages(query, list(hits.ids), provenance, hits)
    result = retrieve(db, encoder, query.name, template=query.prompt, top_n=query.top_n, tags=query.tags,
                      contrast=query.contrast, exclude_ids=excluded, embedder=embedder, rank=query.rank)
    return FoundImages(query, list(result.ids), result.query(), result)


def build_prototype_set(db: CaptionDB, queries: Sequence[ClassQuery], encoder, *, crops: CropSpec | None = None,
                        prep: ImagePrep | None = None, boxes: Mapping[str, Box] | None = None,
                        exclude: Iterable[str] = (), skip_missing: bool = False,
                        cache_dir: str | os.PathLike | None = None, use_cache: bool = True, batch_size: int = 32,
                        progress: bool = False, on_found: Callable[[FoundImages], None] | None = None) -> PrototypeSet:
    """Find the images of every class (:func:`find_class_images`, minus ``exclude``) and embed them with
    ``encoder`` into a :class:`PrototypeSet`.

    Without ``crops``: whole images prepared with ``prep`` (default ``ImagePrep()``; ``boxes``: per-id
    crop boxes). With ``crops``: exactly one class, of object-centred crops resized to 64 px (``prep``
    and ``boxes`` come from the crops). ``on_found`` sees each class's :class:`FoundImages` as soon as
    it is found (the CLI prints it). ``cache_dir``, ``use_cache``, ``batch_size`` and ``progress`` go to
    the image embedders; ``skip_missing`` leaves out ids without an image.
    """
    if not queries:
        raise PrototypeError("no classes to build prototypes for")
    names = [q.name for q in queries]
    if len(set(names)) != len(names):
        raise PrototypeError(f"class names must be unique, got {', '.join(names)}")
    if crops is not None and len(queries) != 1:
        raise PrototypeError(f"crop prototypes are one class, got {', '.join(names)}")
    if crops is not None and (prep is not None or boxes is not None):
        raise PrototypeError("crop prototypes make their own image preparation and boxes; give crops or prep/boxes")
    cache = dict(cache_dir=cache_dir, use_cache=use_cache, batch_size=batch_size, progress=progress)
    embedder = (ImageEmbedder(encoder, RETRIEVAL_PREP, **cache)
                if any(q.prompt is not None for q in queries) else None)  # one cache read for all prompts
    excluded = {str(i) for i in exclude}
    found: dict[str, FoundImages] = {}
    for query in queries:
        images = find_class_images(db, query, encoder, exclude=excluded, embedder=embedder)
        log.info("class %r: %d images (%s)", query.name, len(images.ids), query.source)
        if on_found is not None:
            on_found(images)
        if not images.ids:  # every id of a hits file (or given ids) excluded
            origin = f" from {query.hits_file}" if query.hits_file is not None else ""
            raise PrototypeError(f"class {query.name!r}: no ids left{origin} after --exclude")
        found[query.name] = images
    if crops is not None:
        (images,) = found.values()
        return build_crop_prototypes(db, images.ids, encoder, name=images.query.name, boxes=crops.read_boxes(),
                                     side=crops.side, query=images.provenance, skip_missing=skip_missing, **cache)
    # a whole-image class given by ids records no query: its rows' provenance lists the ids already
    provenance = {n: f.provenance for n, f in found.items() if f.query.ids is None}
    return build_prototypes(db, {n: f.ids for n, f in found.items()}, encoder,
                            prep=prep if prep is not None else ImagePrep(), boxes=boxes, queries=provenance,
                            skip_missing=skip_missing, **cache)


def with_softmax_contrast(queries: Sequence[ClassQuery]) -> list[ClassQuery]:
    """``queries`` with every ``rank="softmax"`` query contrasted with the other retrieval classes (the
    reference's softmax over all the class prompts); the others as they are. A softmax query with no
    other retrieval class to contrast with raises :class:`PrototypeError`."""
    prompted = [q.name for q in queries if q.prompt is not None]
    out = []
    for query in queries:
        if query.rank == "softmax":
            contrast = tuple(dict.fromkeys([*query.contrast, *(n for n in prompted if n != query.name)]))
            if not contrast:
                raise PrototypeError(f"class {query.name!r}: rank 'softmax' is over the prompts of several classes; "
                                     "give at least one other class a 'prompt', or use rank 'cosine'")
            query = replace(query, contrast=contrast)
        out.append(query)
    return out


def study_prototypes(settings: Mapping[str, Any], encoder, *, crops: bool = False,
                     db: CaptionDB | None = None) -> PrototypeSet:
    """The prototype set a study config's ``prototypes`` mapping describes: the caption database ``db``
    (path resolved), one :class:`ClassQuery` per ``classes`` entry (a ``rank: softmax`` one contrasted
    with the other retrieval classes, :func:`with_softmax_contrast`) and, when the task's prototypes are
    object-centred crops (``crops``), its ``crops`` mapping as a :class:`CropSpec` (exactly one class).

    Built with :func:`build_prototype_set`'s defaults (image cache in ``~/.cache/alkit``, batches of 32,
    no progress bars), so a study and ``alkit prototypes build`` with the same classes agree.
    """
    queries = with_softmax_contrast([ClassQuery.from_config(name, q) for name, q in settings["classes"].items()])
    spec = CropSpec.from_config(settings.get("crops", {})) if crops else None
    exclude = settings.get("exclude", ())  # the manual clean-up: ids, or a file of ids
    exclude = read_id_list(exclude) if isinstance(exclude, (str, os.PathLike)) else [str(i) for i in exclude]
    prep = settings.get("prep")  # whole-image preparation, e.g. {mode: crop, size: 256}: the slides' patch field
    prep = ImagePrep(prep.get("mode", "crop"), prep.get("size"), prep.get("scale", 1.0)) if prep else None
    db = db if db is not None else open_database(settings["db"])  # ``db``: the database already opened
    return build_prototype_set(db, queries, encoder, crops=spec, exclude=exclude, prep=prep)
