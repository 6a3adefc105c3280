"""Keyword search checked against an independent matcher over every entry of the real ARCH database.

The oracle does not use regular expressions: it lower-cases the text, collapses every run of whitespace
to one space (a term's inner whitespace matches any run), finds each occurrence of the term with
``str.find`` and checks the characters around it by hand (``prefix``: no word character before it;
``word``: none before or after). It is the plain reading of the modes documented in
:mod:`alkit.captions.search`, run for the queries of ``experiments/*.yaml`` and of the demo, in every
mode and on both searchable fields; the hit id sets (and their database order) must be the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from alkit.captions.database import open_database
from alkit.captions.search import FIELDS, MODES, KeywordQuery, NoHitsError, search
from alkit.study.demo import BREAST_TUMOUR, MITOTIC_FIGURE

REPO = Path(__file__).resolve().parents[2]
ARCH = REPO.parent / "shared" / "data" / "captions" / "arch"


def _is_word_char(c: str) -> bool:
    """What a regular expression's ``\\w`` is in Python: letters, digits (of any script) and ``_``."""
    return c.isalnum() or c == "_"


def _normalise(text: str) -> str:
    return " ".join(text.lower().split()) if text else ""


def _has(text: str, term: str, mode: str) -> bool:
    """Whether the normalised ``text`` contains ``term`` as ``mode`` says (no regular expressions)."""
    needle = _normalise(term)
    start = text.find(needle)
    while start >= 0:
        end = start + len(needle)
        before_ok = start == 0 or not _is_word_char(text[start - 1])
        after_ok = end == len(text) or not _is_word_char(text[end])
        if mode == "substring" or (mode == "prefix" and before_ok) or (mode == "word" and before_ok and after_ok):
            return True
        start = text.find(needle, start + 1)
    return False


def _oracle(texts, ids, groups, without, mode) -> list[str]:
    out = []
    for i, raw in zip(ids, texts):
        text = _normalise(raw if isinstance(raw, str) else "")
        if all(any(_has(text, t, mode) for t in g) for g in groups) and not any(_has(text, t, mode) for t in without):
            out.append(i)
    return out


def _queries() -> list[tuple[str, dict]]:
    """The keyword classes of every experiment config, the demo's two and a multi-word one."""
    out = [("demo: breast tumour", BREAST_TUMOUR), ("demo: mitotic figure", MITOTIC_FIGURE)]
    for path in sorted((REPO / "experiments").glob("*.yaml")):
        classes = (yaml.safe_load(path.read_text()).get("prototypes") or {}).get("classes") or {}
        out += [(f"{path.name}: {name}", spec) for name, spec in classes.items() if "with" in spec]
    out.append(("multi-word", {"with": [["mitotic figure", "lymph node"]], "without": ["h&e", "IHC"]}))
    unique: dict[str, tuple[str, dict]] = {}  # the same query in several configs is checked once
    for name, spec in out:
        unique.setdefault(repr((spec["with"], spec.get("without", []))), (name, spec))
    return list(unique.values())


QUERIES = _queries()


@pytest.fixture(scope="module")
def arch():
    if not ARCH.is_dir():
        pytest.skip(f"the real ARCH caption database is not at {ARCH} (the project's ../shared/data)")
    return open_database(ARCH)


def test_the_configs_queries_are_found():
    names = [n for n, _ in QUERIES]  # the demo's tumour query is the configs' (checked once)
    assert len(QUERIES) == 4 and "mitos_wsi_cmc.yaml: mitotic figure" in names
    assert {repr(s["with"]) for _, s in QUERIES} >= {repr(BREAST_TUMOUR["with"]), repr(MITOTIC_FIGURE["with"])}


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("mode", MODES)
def test_search_hits_equal_the_independent_matcher_over_all_of_arch(arch, mode, field):
    texts, ids = arch.table[field].tolist(), arch.table["id"].tolist()
    # all of ARCH, not a sample: one entry per image of every set's captions.json
    assert len(ids) == sum(len(json.loads(f.read_text())) for f in ARCH.glob("*_set/captions.json")) > 7000
    nonempty = 0
    for name, spec in QUERIES:
        groups = [list(g) for g in spec["with"]]
        without = list(spec.get("without", []))
        expected = _oracle(texts, ids, groups, without, mode)
        query = KeywordQuery(name, tuple(map(tuple, groups)), tuple(without), mode=mode)
        try:
            got = search(arch, query, field=field).ids
        except NoHitsError:
            got = []
        assert got == expected, (name, mode, field, sorted(set(got) ^ set(expected))[:5])
        nonempty += bool(expected)
    assert nonempty >= len(QUERIES) - 1  # the comparison is over real hits, not empty sets


def test_the_modes_differ_on_arch(arch):
    """The three modes give different hit sets on ARCH, so the comparison above separates them."""
    texts, ids = arch.table["text"].tolist(), arch.table["id"].tolist()
    spec = MITOTIC_FIGURE
    hits = {m: set(_oracle(texts, ids, spec["with"], spec["without"], m)) for m in MODES}
    assert hits["word"] < hits["prefix"] <= hits["substring"]
    tumour = {m: set(_oracle(texts, ids, BREAST_TUMOUR["with"], BREAST_TUMOUR["without"], m)) for m in MODES}
    assert tumour["prefix"] != tumour["substring"] or hits["prefix"] != hits["substring"]
