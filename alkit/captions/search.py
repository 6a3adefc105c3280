"""Keyword search of a caption database: the paper's way of finding typical images of a class.

A :class:`KeywordQuery` has ``with_``, a list of groups of synonyms (a caption must match at least
one synonym of *every* group), and ``without``, terms of which any match rejects the caption.
Matching is case-insensitive, whitespace inside a term matches any run of whitespace, and the mode
says what counts as a match:

``substring`` (default)  the term anywhere, also inside words: "tumor" finds "tumors" and "tumoral",
                         "arrow" finds "arrows" and "arrowheads", "IHC" would also find "vehicle"
``prefix``               the term at the start of a word: "arrow" finds "arrows", not "sparrow"
``word``                 the term as a whole word: "arrow" finds "arrow" only, not "arrows"

By default the search looks at each image's own part of a multi-panel caption (the ``text`` column,
see :mod:`alkit.captions.panels`); ``field="caption"`` searches whole captions. Ids listed in an
exclusion file (the manual clean-up step) are removed last. The count after every step is kept in
:attr:`SearchResult.steps` and logged; a search that ends with no hits raises :class:`NoHitsError`
naming the class, the keywords and the step that emptied it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alkit.jsonfile import read_json
from alkit.captions.database import CaptionDB, CaptionDBError
from alkit.atomic import atomic_write_text

log = logging.getLogger(__name__)

MODES = ("substring", "prefix", "word")
FIELDS = ("text", "caption")


class NoHitsError(CaptionDBError):
    """A search or retrieval left nothing: names the class, the keywords and the step."""


@dataclass(frozen=True)
class KeywordQuery:
    """Groups of synonyms that must all match, terms that must not, and how terms match."""

    name: str
    with_: tuple[tuple[str, ...], ...]
    without: tuple[str, ...] = ()
    mode: str = "substring"

    def __post_init__(self) -> None:
        groups = tuple(tuple(t.strip() for t in g if t and t.strip()) for g in self.with_)
        object.__setattr__(self, "with_", tuple(g for g in groups if g))
        object.__setattr__(self, "without", tuple(t.strip() for t in self.without if t and t.strip()))
        if self.mode not in MODES:
            raise CaptionDBError(f"keyword matching mode {self.mode!r}: use one of {', '.join(MODES)}")
        if not self.with_:
            raise CaptionDBError(f"class {self.name!r}: the keyword query needs at least one --with group")

    def pattern(self, terms: Sequence[str]) -> re.Pattern:
        """One case-insensitive regular expression matching any of ``terms`` in this mode."""
        alternatives = "|".join(r"\s+".join(map(re.escape, t.split())) for t in terms)
        if self.mode == "substring":
            body = f"(?:{alternatives})"
        elif self.mode == "prefix":
            body = rf"(?<!\w)(?:{alternatives})"
        else:
            body = rf"(?<!\w)(?:{alternatives})(?!\w)"
        return re.compile(body, re.IGNORECASE)

    def describe(self) -> str:
        groups = " and ".join("{" + ", ".join(g) + "}" for g in self.with_)
        without = f" without {{{', '.join(self.without)}}}" if self.without else ""
        return f"with {groups}{without} ({self.mode})"

    def to_dict(self) -> dict:
        return {"class": self.name, "with": [list(g) for g in self.with_], "without": list(self.without),
                "mode": self.mode}


@dataclass(frozen=True)
class Step:
    """One filtering step and how many entries remained after it."""

    label: str
    remaining: int

    def __str__(self) -> str:
        return f"{self.label}: {self.remaining}"


@dataclass
class SearchResult:
    """The hits of a query: their ids in database order, the terms each matched, the steps."""

    query: KeywordQuery
    db: CaptionDB
    ids: list[str]
    matched: dict[str, list[str]]
    steps: list[Step] = field(default_factory=list)
    field: str = "text"

    def __len__(self) -> int:
        return len(self.ids)

    def records(self) -> list[dict]:
        """JSON-ready hit objects: ``id``, ``caption`` and the rest of the row, ``class``, ``matched``."""
        out = []
        for rec in self.db.to_records(self.ids):
            out.append({"id": rec["id"], "caption": rec["caption"], "text": rec["text"], "letter": rec["letter"],
                        "figure_id": rec["figure_id"], "source": rec["source"], "tags": rec["tags"],
                        "image": rec["image"], "class": self.query.name, "matched": self.matched[rec["id"]]})
        return out

    def summary(self) -> str:
        return f"{self.query.name}: " + " -> ".join(str(s) for s in self.steps)


def search(db: CaptionDB, query: KeywordQuery, *, exclude_ids: Iterable[str] = (), exclude_source: str = "",
           field: str = "text") -> SearchResult:
    """Entries of ``db`` matching ``query`` (module docstring), minus ``exclude_ids``; counts per step."""
    if field not in FIELDS:
        raise CaptionDBError(f"search field {field!r}: use one of {', '.join(FIELDS)}")
    text = db.table[field]
    keep = np.ones(len(db), bool)
    steps = [Step("entries", len(db))]

    def no_hits(step: str) -> NoHitsError:
        return NoHitsError(f"class {query.name!r}: no caption of {db.name} matches {query.describe()}; "
                           f"nothing left after '{step}' ({' -> '.join(str(s) for s in steps)})")

    for group in query.with_:
        keep &= text.str.contains(query.pattern(group), regex=True).to_numpy()
        steps.append(Step(f"with {{{', '.join(group)}}}", int(keep.sum())))
        if not keep.any():
            raise no_hits(steps[-1].label)
    if query.without:
        keep &= ~text.str.contains(query.pattern(query.without), regex=True).to_numpy()
        steps.append(Step(f"without {{{', '.join(query.without)}}}", int(keep.sum())))
        if not keep.any():
            raise no_hits(steps[-1].label)
    excluded = {str(i) for i in exclude_ids}
    if excluded:
        hit_ids = set(db.table["id"][keep])
        unused = excluded - hit_ids
        if unused:
            log.warning("class %r: %d of the %d excluded ids are not among the hits (e.g. %s)", query.name,
                        len(unused), len(excluded), ", ".join(sorted(unused)[:3]))
        keep &= ~db.table["id"].isin(excluded).to_numpy()
        label = f"minus excluded ids{f' ({exclude_source})' if exclude_source else ''}"
        steps.append(Step(label, int(keep.sum())))
        if not keep.any():
            raise no_hits(label)
    ids = db.table["id"][keep].tolist()
    every = query.pattern([t for g in query.with_ for t in g])
    matched = {i: sorted({m.lower() for m in every.findall(t)})
               for i, t in zip(ids, text[keep])}
    result = SearchResult(query, db, ids, matched, steps, field)
    log.info("%s", result.summary())
    return result


# ------------------------------------------------------------------------------------------------
# files: exclusion lists and hits


def read_id_list(path: str | os.PathLike) -> list[str]:
    """Ids from a file: a JSON list (of ids, or of objects with ``id``, e.g. a hits file), or text with
    one id per line (the first token; ``#`` starts a comment, blank lines are skipped)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CaptionDBError(f"{path}: no such id list") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CaptionDBError(f"{path}: unreadable id list ({exc})") from exc
    if path.suffix.lower() == ".json" or text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CaptionDBError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(data, list):
            raise CaptionDBError(f"{path}: expected a JSON list of ids or of objects with 'id'")
        ids = []
        for item in data:
            value = item.get("id") if isinstance(item, dict) else item
            if not isinstance(value, (str, int)) or str(value).strip() == "":
                raise CaptionDBError(f"{path}: list item {item!r} is not an id or an object with 'id'")
            ids.append(str(value).strip())
        return ids
    ids = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].replace(",", " ").strip()
        if line:
            ids.append(line.split()[0])
    return ids


def read_hits(path: str | os.PathLike) -> list[dict]:
    """A hits file (a JSON list of objects with at least ``id``), as written by :func:`write_hits`."""
    path = Path(path)
    data = read_json(path, CaptionDBError, "hits file")
    if not isinstance(data, list) or not all(isinstance(h, dict) and str(h.get("id", "")).strip() for h in data):
        raise CaptionDBError(f"{path}: expected a JSON list of objects with an 'id' each")
    return data


def write_hits(path: str | os.PathLike, hits: list[dict]) -> Path:
    """Write hit objects as a JSON list, atomically."""
    return atomic_write_text(path, json.dumps(hits, indent=1, ensure_ascii=False) + "\n")
