"""Mitosis oracle details the other mitosis oracle tests leave open (found by mutation testing): classes that
are ignored (counted, logged, and not stopping the read), slide keys where file stems repeat (with and
without a ``directory`` column, with empty directories), annotations of slides missing from ``Slides``,
points given directly, unknown slides, the report's fields, COCO box formats and categories, and the
messages naming the file or slide. Expected values are written out by hand."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from alkit.al.oracle import OracleError
from alkit.annotations.sliderunner import SlideRunnerAnnotation, SlideRunnerSlide, write_sliderunner
from alkit.tasks.detection.labels import HARD_NEGATIVE, MITOSIS
from alkit.tasks.detection.oracle import MitosisOracle

ORACLE_LOG = "alkit.tasks.detection.oracle"


def _messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == ORACLE_LOG and r.levelno == level]


def _db(path: Path, slides: list[SlideRunnerSlide], files: list[str]) -> Path:
    """A database with one mitosis at (10 * i, 10 * i) on the i-th (1-based) file of ``files``."""
    anns = [SlideRunnerAnnotation(f, 10.0 * i, 10.0 * i, "Mitotic figure") for i, f in enumerate(files, 1)]
    return write_sliderunner(path, slides, anns)


# ------------------------------------------------------------------------------------------------
# SlideRunner: ignored classes, slide keys
# ------------------------------------------------------------------------------------------------

def test_ignored_classes_are_counted_logged_and_do_not_stop_the_read(annotations, caplog):
    """SlideRunner's demo database: with only "1st class" mapped, its two records (a polygon and a
    rectangle, read as their centres) are mitoses although ignored "2nd class" records lie between them;
    the warning names the file and counts the ignored records per class."""
    path = annotations("sliderunner") / "SlideRunner_demo.sqlite"
    with caplog.at_level(logging.WARNING, logger=ORACLE_LOG):
        o = MitosisOracle.from_sliderunner(path, classes={"1st class": MITOSIS})
    assert o.slides == ["9374efe6ac06388cc877"]
    assert len(o.mitoses("9374efe6ac06388cc877")) == 2 and len(o.hard_negatives("9374efe6ac06388cc877")) == 0
    con = sqlite3.connect(path)
    try:
        want = [con.execute("SELECT AVG(coordinateX), AVG(coordinateY) FROM Annotations_coordinates WHERE annoId = ?",
                            (uid,)).fetchone() for uid in (1, 8)]
    finally:
        con.close()
    np.testing.assert_allclose(o.mitoses("9374efe6ac06388cc877"), want)
    warnings = _messages(caplog, logging.WARNING)
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{path}: ") and "{'2nd class': 3}" in warnings[0]
    assert "(map them with classes=)" in warnings[0]
    with pytest.raises(OracleError, match="class '1st class' maps to 'tumour'"):
        MitosisOracle.from_sliderunner(path, classes={"1st class": "tumour"})


def test_repeated_stems_are_keyed_by_directory_or_slide_uid(tmp_path, caplog):
    """Two files named ``25.tif`` in folders ``01`` and ``02`` are keyed ``01/25`` and ``02/25``; with
    empty directories, or an old ``Slides`` table without the column, by slide uid (``1/25``); the
    log names the file and counts the repeated names, and says nothing when no name repeats."""
    files = ["01/25.tif", "02/25.tif", "a.tif"]
    with_dirs = _db(tmp_path / "dirs.sqlite", [SlideRunnerSlide("01/25.tif", directory="01"),
                                               SlideRunnerSlide("02/25.tif", directory="02"),
                                               SlideRunnerSlide("a.tif", directory="01")], files)
    empty_dirs = _db(tmp_path / "empty.sqlite", [SlideRunnerSlide(f) for f in files], files)
    no_column = _db(tmp_path / "old.sqlite", [SlideRunnerSlide(f) for f in files], files)
    con = sqlite3.connect(no_column)
    con.execute("ALTER TABLE Slides DROP COLUMN directory")
    con.commit()
    con.close()
    unique = _db(tmp_path / "unique.sqlite", [SlideRunnerSlide(f, directory="d") for f in ("x.tif", "y.tif")],
                 ["x.tif", "y.tif"])

    with caplog.at_level(logging.INFO, logger=ORACLE_LOG):
        assert MitosisOracle.from_sliderunner(with_dirs).slides == ["01/25", "02/25", "a"]
        assert MitosisOracle.from_sliderunner(unique).slides == ["x", "y"]
    info = _messages(caplog, logging.INFO)
    assert len(info) == 1 and info[0].startswith(f"{with_dirs}: 1 file names occur in several slide folders")
    for db in (empty_dirs, no_column):
        o = MitosisOracle.from_sliderunner(db)
        assert o.slides == ["1/25", "2/25", "a"]
        np.testing.assert_array_equal(o.mitoses("2/25"), [[20, 20]])
    both = MitosisOracle.from_sliderunner([str(with_dirs), unique])
    assert both.slides == ["01/25", "02/25", "a", "x", "y"]


def test_annotations_of_a_slide_missing_from_the_slides_table_are_ignored_with_a_warning(tmp_path, caplog):
    """Keyed by the slide uid they name ("2"), they would merge into a real slide whose file is 2.tif."""
    db = _db(tmp_path / "m.sqlite", [SlideRunnerSlide("2.tif"), SlideRunnerSlide("b.tif")], ["2.tif", "b.tif"])
    con = sqlite3.connect(db)
    con.execute("DELETE FROM Slides WHERE filename = 'b.tif'")
    con.commit()
    con.close()
    with caplog.at_level(logging.WARNING, logger="alkit.tasks.detection.oracle"):
        o = MitosisOracle.from_sliderunner(db)
    assert o.slides == ["2"]
    np.testing.assert_array_equal(o.mitoses("2"), [[10, 10]])
    assert "m.sqlite: ignored 1 annotations of slides missing from the Slides table" in caplog.text


def test_points_of_any_other_shape_than_pairs_are_refused():
    for bad in ([[10, 20, 0.9], [30, 40, 0.8]], [1, 2, 3, 4], np.zeros((2, 2, 2))):
        with pytest.raises(ValueError, match=r"slide 'a': points must be \(k, 2\)"):
            MitosisOracle({"a": bad})
        with pytest.raises(ValueError, match=r"slide 'a': points must be \(k, 2\)"):
            MitosisOracle({}, {"a": bad})
    assert MitosisOracle({"a": []}).mitoses("a").shape == (0, 2)


# ------------------------------------------------------------------------------------------------
# points given directly, unknown slides, counts and reports
# ------------------------------------------------------------------------------------------------

def test_points_given_directly_and_unknown_slides():
    o = MitosisOracle({"a": None, "b": [[1, 2], [3, 4]], "c": np.array([5, 6])}, {"b": None, "c": [(7, 8)]})
    for s in ("a", "zzz"):
        assert o.mitoses(s).shape == (0, 2) and o.hard_negatives(s).shape == (0, 2)
    assert o.mitoses("b").dtype == np.float64 and o.mitoses("b").tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert o.mitoses("c").tolist() == [[5.0, 6.0]] and o.hard_negatives("c").tolist() == [[7.0, 8.0]]
    assert o.slides == ["a", "b", "c"]
    assert repr(o) == "MitosisOracle(3 slides, 3 mitoses, 1 hard negatives)"
    assert repr(MitosisOracle({})) == "MitosisOracle(0 slides, 0 mitoses, 0 hard negatives)"
    o.mitoses("b")[0] = 99  # a copy: the oracle's points stay
    assert o.mitoses("b")[0].tolist() == [1.0, 2.0]


def test_counts_in_a_box_for_slides_without_points_of_one_kind():
    o = MitosisOracle({"m": [(1, 1), (5, 5)]}, {"h": [(2, 2)]})
    assert o.counts_in("m", (0, 0, 10, 10)) == (2, 0)  # no hard negatives on "m"
    assert o.counts_in("h", (0, 0, 10, 10)) == (0, 1)
    assert o.counts_in("zzz", (0, 0, 10, 10)) == (0, 0)  # the origin is inside, yet nothing is there
    with pytest.raises(OracleError, match=r"m: region box \(0, 0, 0, 10\) must be finite"):
        o.counts_in("m", (0, 0, 0, 10))


def test_region_report_fields():
    o = MitosisOracle({"m": [(1, 1), (30, 5)]}, mpp=0.25)
    r = o.region_report("m", (0, 0, 40, 10), tissue_mm2=2)
    assert (r.slide_id, r.box, r.mpp) == ("m", (0.0, 0.0, 40.0, 10.0), 0.25)
    assert r.region_mm2 == pytest.approx(40 * 10 * 0.25e-3 ** 2)  # not square: width times height
    assert r.tissue_mm2 == 2.0 and isinstance(r.tissue_mm2, float)
    assert r.findings == {"mitoses": 2, "hard_negatives": 0}
    assert o.region_report("m", (0, 0, 40, 10), mpp=0.5).mpp == 0.5  # the call's mpp wins
    with pytest.raises(OracleError, match=r"m: region box \(0, 0, 40, -1\) must be finite"):
        o.region_report("m", (0, 0, 40, -1))


# ------------------------------------------------------------------------------------------------
# COCO
# ------------------------------------------------------------------------------------------------

def test_coco_bbox_format_is_passed_on(annotations):
    """MIDOG++ writes corners, which ``auto`` detects; ``bbox_format="xywh"`` reads the same numbers as
    width and height instead."""
    path = annotations("midogpp") / "MIDOGpp.json"
    data = json.loads(path.read_text())
    first = data["annotations"][0]
    stem = Path(next(im["file_name"] for im in data["images"] if im["id"] == first["image_id"])).stem
    cats = {c["id"]: c["name"] for c in data["categories"]}
    x1, y1, x2, y2 = first["bbox"]
    for fmt, point in (("auto", [(x1 + x2) / 2, (y1 + y2) / 2]), ("xywh", [x1 + x2 / 2, y1 + y2 / 2])):
        o = MitosisOracle.from_coco(path, bbox_format=fmt)
        pts = o.mitoses(stem) if cats[first["category_id"]] == "mitotic figure" else o.hard_negatives(stem)
        assert point in pts.tolist()


def test_coco_ignored_categories_hard_negatives_only_and_mpp(tmp_path, caplog):
    coco = {"images": [{"id": 1, "file_name": "x.tiff", "width": 100, "height": 100}],
            "categories": [{"id": 1, "name": "Lookalike"}, {"id": 2, "name": "Tumour cell"},
                           {"id": 3, "name": "Eosinophil"}],
            "annotations": [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 4, 4]},
                            {"image_id": 1, "category_id": 2, "bbox": [50, 50, 4, 4]},
                            {"image_id": 1, "category_id": 3, "bbox": [70, 70, 4, 4]}]}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(coco))
    with caplog.at_level(logging.WARNING, logger=ORACLE_LOG):
        o = MitosisOracle.from_coco(path, mpp=0.5)
    assert o.slides == ["x"] and o.mitoses("x").shape == (0, 2)
    assert o.hard_negatives("x").tolist() == [[12.0, 12.0]]
    assert o.region_report("x", (0, 0, 20, 20)).mpp == 0.5
    warnings = _messages(caplog, logging.WARNING)
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{path}: ") and "['Eosinophil', 'Tumour cell']" in warnings[0]
    assert "(map them with classes=)" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=ORACLE_LOG):
        mapped = MitosisOracle.from_coco(path, classes={"Tumour cell": HARD_NEGATIVE, "Eosinophil": HARD_NEGATIVE})
    assert _messages(caplog, logging.WARNING) == []  # every category mapped: nothing to warn about
    assert len(mapped.hard_negatives("x")) == 3
