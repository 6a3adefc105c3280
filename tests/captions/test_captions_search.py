"""Keyword search: groups of synonyms, exclusions, matching modes, exclusion files, per-step counts, and the
paper's two keyword sets on the real ARCH captions (both sets)."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest

from alkit.captions import (CaptionDB, CaptionDBError, KeywordQuery, NoHitsError, open_database, read_hits,
                            read_id_list, search, write_hits)
from alkit.cli import main

BREAST = KeywordQuery(
    "breast cancer",
    (("breast",), ("abnormal", "tumor", "cancer", "carcinoma", "metastases", "metastasis", "metastatic")),
    ("IHC", "immunohistochemical", "immunohistochemistry", "immunostain", "photomicrograph", "photomicrography"))
MITOSIS = KeywordQuery("mitotic figures", (("arrow", "arrowhead", "circle"), ("mitotic", "mitoses")))


def _db(captions: dict[str, str]) -> CaptionDB:
    from alkit.captions.database import _finish
    rows = pd.DataFrame({"id": list(captions), "caption": list(captions.values())})
    return _finish(rows, None, "test", None)


SMALL = _db({
    "a": "Invasive ductal carcinoma of the BREAST.",
    "b": "Breast tissue, benign.",
    "c": "Breast carcinoma, HER2 IHC.",
    "d": "Metastatic tumours in the breasts (arrows).",
    "e": "Lymph node, sparrow-like mitotic figures, arrowheads.",
    "f": "A mitotic figure (arrow)   in breast\ncancer.",
})


def test_groups_must_all_match_synonyms_any():
    q = KeywordQuery("bc", (("breast",), ("carcinoma", "tumour")))
    r = search(SMALL, q)
    assert r.ids == ["a", "c", "d"]
    assert [str(s) for s in r.steps] == ["entries: 6", "with {breast}: 5", "with {carcinoma, tumour}: 3"]
    assert r.matched["a"] == ["breast", "carcinoma"] and r.matched["d"] == ["breast", "tumour"]


def test_without_rejects_and_counts():
    q = KeywordQuery("bc", (("breast",), ("carcinoma", "tumour", "cancer")), ("ihc", "Photomicrograph"))
    r = search(SMALL, q)
    assert r.ids == ["a", "d", "f"] and r.steps[-1].label.startswith("without") and r.steps[-1].remaining == 3


def test_matching_modes():
    def ids(terms, mode):
        return search(SMALL, KeywordQuery("x", (tuple(terms),), mode=mode)).ids

    # substring: inside words; prefix: at a word start; word: whole words only
    assert ids(["arrow"], "substring") == ["d", "e", "f"]   # arrows, sparrow / arrowheads, arrow
    assert ids(["arrow"], "prefix") == ["d", "e", "f"]      # arrows, arrowheads, arrow
    assert ids(["arrow"], "word") == ["f"]
    assert ids(["breast"], "word") == ["a", "b", "c", "f"]  # not "breasts"
    assert ids(["breast"], "substring") == ["a", "b", "c", "d", "f"]
    # whitespace inside a term matches any whitespace; matching ignores case
    assert ids(["arrow) in breast cancer"], "substring") == ["f"]
    assert ids(["BREAST carcinoma"], "word") == ["c"]
    with pytest.raises(CaptionDBError, match="matching mode"):
        KeywordQuery("x", (("a",),), mode="fuzzy")
    with pytest.raises(CaptionDBError, match="at least one --with"):
        KeywordQuery("x", ((" ",),))


def test_prefix_mode_does_not_match_inside_words():
    assert search(SMALL, KeywordQuery("x", (("parrow",),), mode="substring")).ids == ["e"]
    with pytest.raises(NoHitsError):
        search(SMALL, KeywordQuery("x", (("parrow",),), mode="prefix"))
    with pytest.raises(NoHitsError):
        search(SMALL, KeywordQuery("x", (("tumour",),), mode="word"))  # only "tumours" is there


def test_zero_hits_names_class_keywords_and_step():
    q = KeywordQuery("mitosis", (("breast",), ("mitoses", "karyorrhexis")), ("ihc",))
    with pytest.raises(NoHitsError) as err:
        search(SMALL, q)
    msg = str(err.value)
    assert "'mitosis'" in msg and "mitoses" in msg and "karyorrhexis" in msg and "{breast}" in msg
    assert "with {mitoses, karyorrhexis}" in msg and "entries: 6" in msg
    assert isinstance(err.value, CaptionDBError)


def test_exclusion_files(tmp_path, caplog):
    q = KeywordQuery("bc", (("breast",),))
    text = tmp_path / "exclude.txt"
    text.write_text("# reviewed 2024-05-01\nb   # benign, not cancer\n\n  c, IHC\nzz\n")
    assert read_id_list(text) == ["b", "c", "zz"]
    r = search(SMALL, q, exclude_ids=read_id_list(text), exclude_source=str(text))
    assert r.ids == ["a", "d", "f"]
    assert r.steps[-1].label == f"minus excluded ids ({text})" and r.steps[-1].remaining == 3
    assert "1 of the 3 excluded ids are not among the hits" in caplog.text
    as_json = tmp_path / "exclude.json"
    as_json.write_text(json.dumps(["b", {"id": "c", "why": "IHC"}]))
    assert read_id_list(as_json) == ["b", "c"]
    with pytest.raises(NoHitsError, match="minus excluded ids"):
        search(SMALL, q, exclude_ids=SMALL.ids)
    (tmp_path / "bad.json").write_text(json.dumps({"b": 1}))
    with pytest.raises(CaptionDBError, match="expected a JSON list"):
        read_id_list(tmp_path / "bad.json")
    with pytest.raises(CaptionDBError, match="no such id list"):
        read_id_list(tmp_path / "absent.txt")


def test_hits_file_round_trip(tmp_path):
    r = search(SMALL, KeywordQuery("bc", (("breast",),)))
    path = write_hits(tmp_path / "hits.json", r.records())
    hits = read_hits(path)
    assert [h["id"] for h in hits] == r.ids
    assert all(h["class"] == "bc" and h["caption"] == SMALL.entry(h["id"])["caption"] for h in hits)
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind
    (tmp_path / "bad.json").write_text(json.dumps([{"caption": "no id"}]))
    with pytest.raises(CaptionDBError, match="with an 'id'"):
        read_hits(tmp_path / "bad.json")


# ---------------------------------------------------------------------- the real ARCH captions


@pytest.fixture(scope="module")
def arch(shared_data) -> CaptionDB:
    return open_database(shared_data / "captions" / "arch")


def test_paper_breast_cancer_keywords_on_arch(arch):
    r = search(arch, BREAST)
    assert [s.remaining for s in r.steps] == [7614, 93, 70, 43]
    assert pd.Series([arch.entry(i)["source"] for i in r.ids]).value_counts().to_dict() == {"books_set": 33,
                                                                                          "pubmed_set": 10}
    hits = set(r.ids)
    # spot checks: a plain hit, a panel of a multi-panel figure (its siblings are about prostate and stomach)
    assert "dd9ec793-43b6-4220-9016-f50f3c5cc553" in hits   # ". Signet-ring cells, breast carcinoma."
    assert "338da1f7-73c0-4534-9b2d-85c7dd8623ab" in hits   # "B, Osteoblastic metastasis of carcinoma from the breast."
    fig = arch.entry("338da1f7-73c0-4534-9b2d-85c7dd8623ab")
    siblings = arch.table[(arch.table["caption"] == fig["caption"]) & (arch.table["id"] != fig["id"])]
    assert len(siblings) == 2 and not hits & set(siblings["id"])
    # excluded: IHC and photomicrograph captions
    ihc, photo = "07bea95b-baa4-454c-a56c-2fa5657c04a9", "3c3a4a91-ae38-4ee1-a73b-910268db0ef2"
    assert "IHC" in arch.entry(ihc)["caption"] and "Photomicrograph" in arch.entry(photo)["caption"]
    assert not hits & {ihc, photo}
    assert {ihc, photo} <= set(search(arch, dataclasses.replace(BREAST, without=())).ids)
    for h in r.records():
        text = h["text"].lower()
        assert "breast" in text and not any(t.lower() in text for t in BREAST.without)


def test_paper_mitosis_keywords_on_arch(arch):
    r = search(arch, MITOSIS)
    assert [s.remaining for s in r.steps] == [7614, 692, 41]
    assert pd.Series([arch.entry(i)["source"] for i in r.ids]).value_counts().to_dict() == {"books_set": 32,
                                                                                          "pubmed_set": 9}
    hits = set(r.ids)
    assert "a2fd4b7f-70f4-4df6-85d3-ef6082d36d98" in hits  # "Atypical mitotic figure (arrow) seen in the tumor island"
    panel_d = "e8375045-2aec-4fd3-a7cc-8738fc7c7024"       # "D, Occasional mitotic figures (arrow) ..."
    assert panel_d in hits and r.matched[panel_d] == ["arrow", "mitotic"]
    fig = arch.entry(panel_d)
    others = set(arch.table["id"][(arch.table["caption"] == fig["caption"])]) - {panel_d}
    assert len(others) == 3 and not hits & others
    # why the paper cleaned its hits by hand: "absence of mitoses" matches too
    assert "absence of mitoses" in arch.entry("5a43fa21-0b2d-427f-8790-f40e50718bc6")["text"]
    assert "5a43fa21-0b2d-427f-8790-f40e50718bc6" in hits


@pytest.mark.parametrize("mode, field, breast, mitosis", [
    ("substring", "caption", 47, 54),  # whole captions: sibling panels come along
    ("prefix", "text", 42, 41),        # "adenocarcinoma" no longer contains a match for "carcinoma"
    ("word", "text", 44, 35),          # "arrow" no longer matches "arrows"; "photomicrographs" is not excluded
])
def test_arch_counts_under_other_rules(arch, mode, field, breast, mitosis):
    assert len(search(arch, dataclasses.replace(BREAST, mode=mode), field=field)) == breast
    assert len(search(arch, dataclasses.replace(MITOSIS, mode=mode), field=field)) == mitosis


def test_cli_search_writes_hits_and_fails_in_one_line(shared_data, tmp_path, capsys):
    root = shared_data / "captions" / "arch"
    out = tmp_path / "hits.json"
    rc = main(["prototypes", "search", "--db", str(root), "--with", "arrow,arrowhead,circle",
               "--with", "mitotic, mitoses", "--class", "mitosis", "--out", str(out)])
    assert rc == 0
    hits = json.loads(out.read_text())
    assert isinstance(hits, list) and len(hits) == 41
    assert all(set(h) >= {"id", "caption"} and h["class"] == "mitosis" for h in hits)
    printed = capsys.readouterr().out
    assert "692  with {arrow, arrowhead, circle}" in printed and "wrote 41 hits" in printed
    # an exclusion file and a single set
    (tmp_path / "ex.txt").write_text("\n".join(h["id"] for h in hits[:5]))
    rc = main(["prototypes", "search", "--db", str(root / "pubmed_set"), "--with", "arrow,arrowhead,circle",
               "--with", "mitotic,mitoses", "--exclude", str(tmp_path / "ex.txt"), "--out", str(out)])
    assert rc == 0 and len(json.loads(out.read_text())) == 9  # the 5 excluded are books-set ids
    rc = main(["prototypes", "search", "--db", str(root), "--with", "zebra", "--class", "stripes", "--out",
               str(tmp_path / "none.json")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "'stripes'" in err and "zebra" in err
    assert not (tmp_path / "none.json").exists()
