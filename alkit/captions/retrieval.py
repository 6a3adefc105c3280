"""Text-to-image retrieval: the images of a caption database closest to a class's text prompt.

The prompt (default :data:`DEFAULT_TEMPLATE`, "An H&E image of {class_name} tissue.") goes through
the CLIP text tower of the encoder; each database image's embedding comes from the database
(precomputed, e.g. OpenPath's, which must have been made by the same encoder) or from the image tower,
computed once and cached (:class:`~alkit.captions.images.ImageEmbedder`). Images are ranked by cosine
similarity. Optional steps, each counted: keep images carrying one of ``tags`` (OpenPath hashtags,
e.g. ``BreastPath``), drop ``exclude_ids``, keep only images closer to this class's prompt than to
every ``contrast`` class's prompt, and keep the ``top_n`` best (default 100).

``rank="softmax"`` ranks as the reference code of Qiu et al. does (CLIP zero-shot classification):
per image, the softmax over the logits ``SOFTMAX_SCALE · cosine`` (100, fixed, not the model's own
logit scale) of this class's prompt and its ``contrast`` prompts, which it needs; the images kept
are those closest to this class's prompt (its predicted class) and the score is this class's
probability. As the softmax is monotone in the cosine of this class only at fixed contrast
cosines, the order differs from ``rank="cosine"``: an image close to no prompt can rank high.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from alkit.captions.database import CaptionDB, CaptionDBError
from alkit.captions.images import ImageEmbedder, ImagePrep
from alkit.captions.search import NoHitsError, Step
from alkit.embeddings.encoders import Encoder, l2_normalise
from alkit.prototypes.prototype_set import check_encoder_match

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "An H&E image of {class_name} tissue."
DEFAULT_TOP_N = 100
#: how retrieved images are ranked (the first is the default): cosine to the prompt, or the softmax
#: over the class's and its contrast classes' prompts (the reference's ranking)
RANKS = ("cosine", "softmax")
#: the fixed logit scale of ``rank="softmax"`` (the reference's, from CLIP's zero-shot example)
SOFTMAX_SCALE = 100.0
#: retrieval looks at images the way CLIP models were trained: shorter side resized, centre crop
RETRIEVAL_PREP = ImagePrep(mode="resize")


def format_prompt(template: str, class_name: str) -> str:
    """``template`` with ``{class_name}`` filled in; a template without the placeholder is an error."""
    if "{class_name}" not in template:
        raise CaptionDBError(f"prompt template {template!r} has no {{class_name}} placeholder, e.g. "
                             f"{DEFAULT_TEMPLATE!r}")
    try:
        return template.format(class_name=class_name)
    except (KeyError, IndexError, ValueError) as exc:
        raise CaptionDBError(f"prompt template {template!r}: {exc}; write literal braces as {{{{ }}}}") from exc


def text_embeddings(encoder: Encoder, prompts: Sequence[str]) -> np.ndarray:
    """L2-normalised ``(n, dim)`` text embeddings; an image-only encoder is an error."""
    if not getattr(encoder, "supports_text", False):
        raise CaptionDBError(f"encoder {encoder.name!r} has no text tower, so it cannot retrieve images by "
                             "text; use an image-text encoder (e.g. plip, open_clip:hf-hub:wisdomik/QuiltNet-B-32) "
                             "or keyword search")
    with torch.inference_mode():
        return l2_normalise(encoder.encode_text(list(prompts))).float().cpu().numpy()


def softmax_scores(sims: np.ndarray, scale: float = SOFTMAX_SCALE) -> np.ndarray:
    """Per row of ``sims`` (images × prompts, this class's prompt first), the softmax probability of the
    first prompt over the logits ``scale · sims`` (float64, max-subtracted, so it never overflows)."""
    logits = scale * np.asarray(sims, np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights[:, 0] / weights.sum(axis=1)


@dataclass
class RetrievalResult:
    """The retrieved ids, best first, with their scores (cosine similarity to the prompt, or under
    ``rank="softmax"`` this class's probability) and the steps."""

    class_name: str
    prompt: str
    db: CaptionDB
    ids: list[str]
    scores: np.ndarray
    steps: list[Step] = field(default_factory=list)
    contrast_prompts: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    rank: str = RANKS[0]

    def __len__(self) -> int:
        return len(self.ids)

    def records(self) -> list[dict]:
        """JSON-ready hit objects, like keyword hits, plus ``score`` and ``rank``."""
        out = []
        for rank, (rec, score) in enumerate(zip(self.db.to_records(self.ids), self.scores), start=1):
            out.append({"id": rec["id"], "caption": rec["caption"], "text": rec["text"], "letter": rec["letter"],
                        "figure_id": rec["figure_id"], "source": rec["source"], "tags": rec["tags"],
                        "image": rec["image"], "class": self.class_name, "score": round(float(score), 6),
                        "rank": rank})
        return out

    def query(self) -> dict:
        """The provenance a prototype set records; ``rank`` only when it is not the default (cosine)."""
        query = {"class": self.class_name, "prompt": self.prompt, "contrast_prompts": self.contrast_prompts,
                 "tags": self.tags, "top_n": len(self.ids), "steps": [str(s) for s in self.steps]}
        if self.rank != RANKS[0]:
            query["rank"] = self.rank
        return query

    def summary(self) -> str:
        return f"{self.class_name}: " + " -> ".join(str(s) for s in self.steps)


def database_embeddings(db: CaptionDB, encoder: Encoder, rows: np.ndarray, *, prep: ImagePrep = RETRIEVAL_PREP,
                        embedder: ImageEmbedder | None = None, cache_dir: str | os.PathLike | None = None,
                        use_cache: bool = True, batch_size: int = 32, progress: bool = False) -> np.ndarray:
    """L2-normalised image embeddings of the given rows: precomputed ones (checked to be ``encoder``'s),
    else computed with the image tower through the cache."""
    if db.embeddings is not None:
        check_encoder_match(db.embedding_encoder or "unknown", db.embeddings.shape[1], encoder.name, encoder.dim,
                            what=f"the precomputed image embeddings of {db.name}", against="the text prompts")
        return db.embeddings[rows]
    embedder = embedder or ImageEmbedder(encoder, prep, cache_dir=cache_dir, use_cache=use_cache,
                                         batch_size=batch_size, progress=progress)
    return embedder.embed(db, db.table["id"].iloc[rows].tolist())


def retrieve(db: CaptionDB, encoder: Encoder, class_name: str, *, template: str = DEFAULT_TEMPLATE,
             top_n: int = DEFAULT_TOP_N, tags: Iterable[str] = (), contrast: Iterable[str] = (),
             exclude_ids: Iterable[str] = (), prep: ImagePrep = RETRIEVAL_PREP, embedder: ImageEmbedder | None = None,
             cache_dir: str | os.PathLike | None = None, use_cache: bool = True, batch_size: int = 32,
             progress: bool = False, rank: str = RANKS[0]) -> RetrievalResult:
    """The ``top_n`` images of ``db`` closest to ``template`` filled with ``class_name`` (module docstring).

    ``contrast`` names other classes: an image stays only if it is closer to this class's prompt than
    to each of theirs. ``rank``: ``"cosine"`` or ``"softmax"`` (over this class's and the contrast
    classes' prompts, so it needs ``contrast``). Raises :class:`~alkit.captions.search.NoHitsError`
    when nothing is left.
    """
    if int(top_n) < 1:
        raise CaptionDBError(f"top-N must be at least 1, got {top_n}")
    if rank not in RANKS:
        raise CaptionDBError(f"retrieval rank must be one of {', '.join(RANKS)}, got {rank!r}")
    prompt = format_prompt(template, class_name)
    contrast = [c for c in dict.fromkeys(str(c) for c in contrast) if c != class_name]
    if rank == "softmax" and not contrast:
        raise CaptionDBError(f"class {class_name!r}: softmax ranking is over the prompts of several classes, but no "
                             "other class is given to contrast with (a softmax over one prompt is 1 for every image)")
    contrast_prompts = [format_prompt(template, c) for c in contrast]
    tags = [t.lstrip("#") for t in tags if t.strip().lstrip("#")]
    steps = [Step("entries", len(db))]

    def no_hits(label: str) -> NoHitsError:
        return NoHitsError(f"class {class_name!r}: text-to-image retrieval with prompt {prompt!r} found nothing "
                           f"in {db.name}; nothing left after '{label}' ({' -> '.join(map(str, steps))})")

    keep = db.has_image | (db.embeddings is not None)
    steps.append(Step("with an image or embedding", int(keep.sum())))
    if not keep.any():
        raise no_hits(steps[-1].label)
    if tags:
        wanted = {t.lower() for t in tags}
        keep &= np.array([bool(wanted & {t.lower() for t in row}) for row in db.table["tags"]], bool)
        steps.append(Step(f"tagged {' or '.join(tags)}", int(keep.sum())))
        if not keep.any():
            raise no_hits(steps[-1].label)
    excluded = {str(i) for i in exclude_ids}
    if excluded:
        keep &= ~db.table["id"].isin(excluded).to_numpy()
        steps.append(Step("minus excluded ids", int(keep.sum())))
        if not keep.any():
            raise no_hits(steps[-1].label)
    rows = np.flatnonzero(keep)
    texts = text_embeddings(encoder, [prompt, *contrast_prompts])
    images = database_embeddings(db, encoder, rows, prep=prep, embedder=embedder, cache_dir=cache_dir,
                                 use_cache=use_cache, batch_size=batch_size, progress=progress)
    if images.shape[1] != texts.shape[1]:
        raise CaptionDBError(f"image embeddings are {images.shape[1]}-d but text embeddings {texts.shape[1]}-d")
    sims = images @ texts.T  # (n, 1 + contrasts)
    own = sims[:, 0] if rank == "cosine" else softmax_scores(sims)
    if contrast:
        closer = sims[:, 0] > sims[:, 1:].max(axis=1)
        rows, own = rows[closer], own[closer]
        steps.append(Step(f"closer to {class_name!r} than to {', '.join(map(repr, contrast))}", len(rows)))
        if len(rows) == 0:
            raise no_hits(steps[-1].label)
    order = np.argsort(-own, kind="stable")[:int(top_n)]
    steps.append(Step(f"top {int(top_n)}", len(order)))
    result = RetrievalResult(class_name, prompt, db, db.table["id"].iloc[rows[order]].tolist(), own[order], steps,
                             contrast_prompts, tags, rank)
    log.info("%s", result.summary())
    return result
