"""Keyword search details the other search tests leave open (found by mutation testing): blank and missing
terms, the query's description and dict, hit records, the summary, errors of every step, exclusion logging,
and the id-list / hits-file readers' edge cases. Expected values are written out by hand."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from alkit.captions import CaptionDB, CaptionDBError, KeywordQuery, NoHitsError, read_hits, read_id_list, search
from alkit.captions import write_hits
from alkit.captions.database import _finish
from alkit.captions.search import Step


def _db() -> CaptionDB:
    rows = pd.DataFrame({
        "id": ["a", "b", "c", "d"],
        "caption": ["A, breast TUMOUR and Tumour. B, lung.", "Breast, benign.", "Breast carcinoma, IHC.",
                    "Lung tumour."],
        "figure_id": ["f1", "f2", "f3", "f4"], "letter": ["A", "Single", "Single", "Single"],
        "source": ["books", "books", "pubmed", "pubmed"], "tags": [("t1",), (), ("t2", "t3"), ()],
    })
    return _finish(rows, None, "tiny", None)


DB = _db()


def test_blank_and_missing_terms_are_dropped_not_matched():
    # a blank synonym would otherwise match every caption; a blank exclusion would reject every one
    q = KeywordQuery("x", (("tumour", " ", "", None),), (" ", None, ""))
    assert q.with_ == (("tumour",),) and q.without == ()
    assert search(DB, q).ids == ["a", "d"]
    q = KeywordQuery("x", ((" breast ",), ("  ",)), (" ihc ",))
    assert q.with_ == (("breast",),) and q.without == ("ihc",)
    assert search(DB, q).ids == ["a", "b"]


def test_mode_error_names_the_modes():
    with pytest.raises(CaptionDBError) as err:
        KeywordQuery("x", (("a",),), mode="fuzzy")
    assert str(err.value) == "keyword matching mode 'fuzzy': use one of substring, prefix, word"
    with pytest.raises(CaptionDBError) as err:
        KeywordQuery("cls", ())
    assert str(err.value) == "class 'cls': the keyword query needs at least one --with group"


def test_describe_and_to_dict():
    q = KeywordQuery("bc", (("breast", "mamma"), ("tumour",)), ("ihc", "stain"), mode="word")
    assert q.describe() == "with {breast, mamma} and {tumour} without {ihc, stain} (word)"
    assert KeywordQuery("bc", (("breast",),)).describe() == "with {breast} (substring)"
    assert q.to_dict() == {"class": "bc", "with": [["breast", "mamma"], ["tumour"]], "without": ["ihc", "stain"],
                           "mode": "word"}


def test_records_summary_and_matched_terms():
    r = search(DB, KeywordQuery("bc", (("breast",), ("tumour", "carcinoma"))))
    assert len(r) == 2 and r.field == "text"
    assert r.records() == [
        {"id": "a", "caption": "A, breast TUMOUR and Tumour. B, lung.", "text": "A, breast TUMOUR and Tumour.",
         "letter": "A", "figure_id": "f1", "source": "books", "tags": ["t1"], "image": None, "class": "bc",
         "matched": ["breast", "tumour"]},
        {"id": "c", "caption": "Breast carcinoma, IHC.", "text": "Breast carcinoma, IHC.", "letter": "Single",
         "figure_id": "f3", "source": "pubmed", "tags": ["t2", "t3"], "image": None, "class": "bc",
         "matched": ["breast", "carcinoma"]},
    ]
    assert r.summary() == "bc: entries: 4 -> with {breast}: 3 -> with {tumour, carcinoma}: 2"
    assert str(Step("entries", 4)) == "entries: 4"
    # the whole caption is searched on request: panel B's "lung" is in a's caption, not in its text
    whole = search(DB, KeywordQuery("l", (("lung",),)), field="caption")
    assert whole.ids == ["a", "d"] and whole.field == "caption"
    assert search(DB, KeywordQuery("l", (("lung",),))).ids == ["d"]
    with pytest.raises(CaptionDBError) as err:
        search(DB, KeywordQuery("l", (("lung",),)), field="title")
    assert str(err.value) == "search field 'title': use one of text, caption"


def test_the_result_is_logged(caplog):
    with caplog.at_level(logging.INFO, logger="alkit.captions.search"):
        search(DB, KeywordQuery("bc", (("breast",),), ("ihc", "benign")))
    assert [r.getMessage() for r in caplog.records] == [
        "bc: entries: 4 -> with {breast}: 3 -> without {ihc, benign}: 1"]


def test_no_hits_names_the_group_that_emptied_it():
    with pytest.raises(NoHitsError) as err:
        search(DB, KeywordQuery("m", (("breast",), ("mitosis",), ("tumour",))))
    assert str(err.value) == ("class 'm': no caption of tiny matches with {breast} and {mitosis} and {tumour} "
                              "(substring); nothing left after 'with {mitosis}' (entries: 4 -> with {breast}: 3 "
                              "-> with {mitosis}: 0)")


def test_no_hits_after_the_without_step():
    q = KeywordQuery("c", (("carcinoma",),), ("ihc",))
    with pytest.raises(NoHitsError) as err:
        search(DB, q)
    assert str(err.value) == ("class 'c': no caption of tiny matches with {carcinoma} without {ihc} (substring); "
                              "nothing left after 'without {ihc}' (entries: 4 -> with {carcinoma}: 1 -> "
                              "without {ihc}: 0)")


def test_exclusions_label_log_and_no_hits(caplog):
    q = KeywordQuery("bc", (("breast",),))
    with caplog.at_level(logging.WARNING, logger="alkit.captions.search"):
        r = search(DB, q, exclude_ids=["b", "zz", "yy", "xx", "ww", 7])
    assert r.ids == ["a", "c"] and r.steps[-1] == Step("minus excluded ids", 2)
    assert [r.getMessage() for r in caplog.records] == [
        "class 'bc': 5 of the 6 excluded ids are not among the hits (e.g. 7, ww, xx)"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="alkit.captions.search"):
        r = search(DB, q, exclude_ids=["b"], exclude_source="ex.txt")
    assert r.steps[-1] == Step("minus excluded ids (ex.txt)", 2) and not caplog.text
    with pytest.raises(NoHitsError) as err:
        search(DB, q, exclude_ids=["a", "b", "c"], exclude_source="ex.txt")
    assert "nothing left after 'minus excluded ids (ex.txt)'" in str(err.value)


def test_id_list_edge_cases(tmp_path):
    listed = tmp_path / "ids.txt"                  # JSON recognised by its first character, not its suffix
    listed.write_text('  [" a ", 7, {"id": "b "}]')
    assert read_id_list(listed) == ["a", "7", "b"]
    upper = tmp_path / "ids.JSON"
    upper.write_text('["a"]')
    assert read_id_list(upper) == ["a"]
    (tmp_path / "bad.json").write_text("[1, ")
    with pytest.raises(CaptionDBError, match="not valid JSON"):
        read_id_list(tmp_path / "bad.json")
    for item in ('[" "]', '[{"why": "x"}]', "[1.5]", '[{"id": ""}]'):
        (tmp_path / "item.json").write_text(item)
        with pytest.raises(CaptionDBError, match="is not an id or an object"):
            read_id_list(tmp_path / "item.json")
    (tmp_path / "latin.txt").write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(CaptionDBError, match="unreadable id list"):
        read_id_list(tmp_path / "latin.txt")
    (tmp_path / "lines.txt").write_text("a b # c\n#x\n d,e\n\t\nf#g#h\n#i # j\n")
    assert read_id_list(tmp_path / "lines.txt") == ["a", "d", "f"]
    (tmp_path / "dir.txt").mkdir()
    with pytest.raises(CaptionDBError, match="unreadable id list"):
        read_id_list(tmp_path / "dir.txt")


def test_hits_file_keeps_unicode_and_rejects_bad_files(tmp_path):
    path = write_hits(tmp_path / "hits.json", [{"id": "ü", "caption": "Ki-67 ≥ 20 %"}])
    text = path.read_text(encoding="utf-8")
    assert text == '[\n {\n  "id": "ü",\n  "caption": "Ki-67 ≥ 20 %"\n }\n]\n'
    assert read_hits(path) == [{"id": "ü", "caption": "Ki-67 ≥ 20 %"}]
    for bad in ('{"id": "a"}', '[{"id": " "}]', '["a"]', "[]"[:1]):
        (tmp_path / "bad.json").write_text(bad)
        with pytest.raises(CaptionDBError):
            read_hits(tmp_path / "bad.json")
    with pytest.raises(CaptionDBError, match="no such hits file"):
        read_hits(tmp_path / "absent.json")
    (tmp_path / "empty.json").write_text("[]")
    assert read_hits(tmp_path / "empty.json") == []
