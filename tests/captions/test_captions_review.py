"""Contact sheets for the manual clean-up: every hit shown with number, id, panel letter and caption."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from alkit.captions import CaptionDBError, KeywordQuery, load_table, search
from alkit.captions.review import contact_sheet


@pytest.fixture()
def db(tmp_path):
    colours = {"a": (200, 30, 30), "b": (30, 200, 30), "c": (30, 30, 200)}
    for name, colour in colours.items():
        Image.new("RGB", (300, 150), colour).save(tmp_path / f"{name}.png")
    two = "A, Breast carcinoma <b>bold</b> & more. B, Normal breast."
    rows = [
        {"id": "a", "caption": two, "letter": "A", "image": "a.png"},
        {"id": "b", "caption": two, "letter": "B", "image": "b.png"},
        {"id": "c", "caption": "Single breast carcinoma image.", "letter": "Single", "image": "c.png"},
        {"id": "d", "caption": "Breast carcinoma, image missing.", "letter": "Single", "image": "d.png"},
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    return load_table(tmp_path / "t.csv")


def test_png_sheet_shows_every_hit(db, tmp_path):
    hits = search(db, KeywordQuery("bc", (("breast",),))).records()
    assert [h["id"] for h in hits] == ["a", "b", "c", "d"]
    out = contact_sheet(hits, db, tmp_path / "sheet.png", thumb=100, columns=3)
    with Image.open(out) as im:
        sheet = np.asarray(im.convert("RGB")).astype(int)
    assert sheet.shape[1] == 3 * (100 + 16)  # three thumbnails per row
    # each image's colour appears (thumbnails keep the aspect ratio: 100 x 50)
    for colour in ((200, 30, 30), (30, 200, 30), (30, 30, 200)):
        assert (np.abs(sheet - colour).sum(axis=-1) < 10).sum() >= 100 * 50 * 0.9
    assert not list(tmp_path.glob(".*tmp*"))


def test_html_sheet_escapes_marks_and_names_panels(db, tmp_path):
    hits = search(db, KeywordQuery("bc", (("breast",), ("carcinoma",)))).records()
    assert [h["id"] for h in hits] == ["a", "c", "d"]  # panel B's own part has no carcinoma
    page = contact_sheet(hits, db, tmp_path / "sheet.html", title="bc <hits>").read_text()
    assert "<title>bc &lt;hits&gt;</title>" in page and "<b>bold</b>" not in page and "&lt;b&gt;bold" in page
    assert "<b>Panel A:</b>" in page and "<mark>Breast</mark> <mark>carcinoma</mark>" in page
    assert page.count('class="ex"') == 3 and 'value="d"' in page and "image missing" in page
    assert len(re.findall(r'src="data:image/jpeg;base64,', page)) == 2
    assert "http://" not in page and "https://" not in page  # self-contained


def test_sheet_errors(db, tmp_path):
    with pytest.raises(CaptionDBError, match=".png, .jpg or .html"):
        contact_sheet([{"id": "a"}], db, tmp_path / "sheet.pdf")
    with pytest.raises(CaptionDBError, match="no hits"):
        contact_sheet([], db, tmp_path / "sheet.png")
    # hits from another database are shown without image, not dropped
    page = contact_sheet([{"id": "zz", "caption": "elsewhere"}], db, tmp_path / "s.html").read_text()
    assert "not in this database" in page and "elsewhere" in page
