"""Each panel's own part of a multi-panel caption: the rules on written examples and on real ARCH captions."""

from __future__ import annotations

import json

import pytest

from alkit.captions.panels import cited_letters, panel_text, split_panels

TWO = " A, Lymph node with metastatic carcinoma. B, Normal breast tissue with fibrous stroma."


def test_leading_labels_split_the_caption():
    assert panel_text(TWO, "A") == "A, Lymph node with metastatic carcinoma."
    assert panel_text(TWO, "B") == "B, Normal breast tissue with fibrous stroma."
    assert panel_text(TWO, "b") == panel_text(TWO, "B")  # letters are case-insensitive
    parse = split_panels(TWO)
    assert parse.labelled == {"A", "B"} and parse.parts[0].text.strip() == ""


@pytest.mark.parametrize("letter", ["Single", "", None, "AB", "Z"])
def test_single_or_unknown_letters_give_the_whole_caption(letter):
    assert panel_text(TWO, letter) == TWO.strip()


def test_title_is_shared_and_a_part_runs_to_the_next_label():
    caption = (" Large B-cell lymphoma, leg type. A, Sheets of large lymphocytes. B, Oval nuclei. Cleaves are absent. "
               "C, Tumor cells are positive for CD20.")
    assert panel_text(caption, "B") == "Large B-cell lymphoma, leg type. B, Oval nuclei. Cleaves are absent."
    assert panel_text(caption, "C") == "Large B-cell lymphoma, leg type. C, Tumor cells are positive for CD20."


@pytest.mark.parametrize("caption, letter, expected", [
    # lists and ranges name every letter they cover
    (" A and B, Atypical mitotic figures. C, Stroma.", "B", "A and B, Atypical mitotic figures."),
    (" Sarcoma. A-B, Low-power view. C, High power.", "A", "Sarcoma. A-B, Low-power view."),
    (" Sarcoma. (d–f)Another example. (g) Other.", "E", "Sarcoma. (d–f)Another example."),
    (" Things. A, B, and C, Sections. D, Other.", "C", "Things. A, B, and C, Sections."),
    # bare capitals count when the caption has other labels ...
    (" Tubular carcinoma. A There are tubules. B The cells lack atypia.", "B",
     "Tubular carcinoma. B The cells lack atypia."),
    # ... and (A) / a) forms
    (" Title. (A) First. (B) Second.", "A", "Title. (A) First."),
    (" Title. a) first. b) second.", "B", "Title. b) second."),
])
def test_label_forms(caption, letter, expected):
    assert panel_text(caption, letter) == expected


def test_an_article_is_not_a_label():
    caption = " A Spitz nevus with large cells. A prominent junctional component is seen."
    assert split_panels(caption).labelled == frozenset()
    assert panel_text(caption, "A") == caption.strip()


def test_sentences_citing_only_other_panels_are_left_out():
    caption = (" Brenner tumor. Nests and papillae (A) are lined by epithelium. Atypia is mild (B). "
               "The stroma is fibrous.")
    assert panel_text(caption, "B") == "Brenner tumor. Atypia is mild (B). The stroma is fibrous."
    assert panel_text(caption, "A") == ("Brenner tumor. Nests and papillae (A) are lined by epithelium. "
                                        "The stroma is fibrous.")
    # inside a labelled part too
    caption = " MSI carcinoma. (A) Poorly differentiated. Positive for MLH1 (B) and negative for MSH2 (C)."
    assert panel_text(caption, "A") == "MSI carcinoma. (A) Poorly differentiated."
    assert cited_letters("figures (a and b, arrow) and nuclei (arrows, c) (see 12.3) (T)") == {"A", "B", "C"}


@pytest.fixture(scope="module")
def books(shared_data) -> dict[str, dict]:
    data = json.loads((shared_data / "captions" / "arch" / "books_set" / "captions.json").read_text())
    return {v["uuid"]: v for v in data.values()}


def _text(books, uuid: str) -> str:
    e = books[uuid]
    return panel_text(e["caption"], e["letter"])


def test_real_books_captions(books):
    # "A, ... prostate ... B, ... breast. C, ... stomach ...": each panel gets its own sentence(s)
    b = "338da1f7-73c0-4534-9b2d-85c7dd8623ab"
    assert books[b]["letter"] == "B" and "stomach" in books[b]["caption"]
    assert _text(books, b) == "B, Osteoblastic metastasis of carcinoma from the breast."
    siblings = [u for u, e in books.items()
                if e["figure_id"] == books[b]["figure_id"] and e["caption"] == books[b]["caption"]]
    texts = {books[u]["letter"]: _text(books, u) for u in siblings}
    assert texts["A"].startswith("A, Low-power view of a metastatic adenocarcinoma from the prostate")
    assert texts["C"] == ("C, Metastatic adenocarcinoma from the stomach. Only a few malignant cells are scattered "
                          "in the intertrabecular fibrous stroma.")
    # panel D of a four-panel figure, with the shared title
    assert _text(books, "e8375045-2aec-4fd3-a7cc-8738fc7c7024") == (
        "Proliferating trichilemmal cyst/tumor. D, Occasional mitotic figures (arrow) can be observed in the more "
        "proliferative zones of the lesion.")
    # trailing citations: panel B keeps the sentence citing (B), loses the one citing (A)
    fa = "fa43ae4b-11b8-4361-bf34-10f8b3f4f98b"
    assert "(A)" in books[fa]["caption"]
    assert _text(books, fa) == ("Metastatic breast carcinoma. A nest of neoplastic cells are present in a "
                                "lymphovascular space (B).")
    # one sentence citing several panels cannot be told apart: the whole caption
    hg = "6c9f7c34-0f68-4da0-b684-48bdf5d22396"
    assert _text(books, hg) == books[hg]["caption"].strip()


def test_real_books_captions_overall(books):
    multi = [e for e in books.values() if e["letter"] != "Single"]
    texts = [panel_text(e["caption"], e["letter"]) for e in multi]
    narrowed = sum(t != e["caption"].strip() for t, e in zip(texts, multi))
    assert len(multi) == 1585
    assert narrowed > 0.75 * len(multi)  # most multi-panel captions can be told apart
    for t, e in zip(texts, multi):  # a panel's text is made of the caption's own words, never more
        assert t and set(t.split()) <= set(e["caption"].split()) and len(t) <= len(e["caption"]), e["uuid"]
    single = [e for e in books.values() if e["letter"] == "Single"]
    assert all(panel_text(e["caption"], e["letter"]) == e["caption"].strip() for e in single)
