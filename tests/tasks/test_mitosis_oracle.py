"""The mitosis oracle (alkit.tasks.detection.oracle) and class labelling (alkit.tasks.detection.labels) on
the real SlideRunner / MIDOG++ files in ../shared/data, on small written databases and COCO files, and on a
synthetic cohort."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from alkit.al.oracle import OracleError
from alkit.annotations.sliderunner import SlideRunnerAnnotation, write_sliderunner
from alkit.synthetic import generate_cohort
from alkit.tasks.detection.labels import HARD_NEGATIVE, MITOSIS, check_classes, mitosis_label
from alkit.tasks.detection.oracle import MitosisOracle
from alkit.wsi.grid import PatchGrid


def _sql_counts(db: Path) -> dict[tuple[str, str], int]:
    """(slide key, class) -> records, straight from SQL: deleted excluded, records with coordinates.
    Keys follow the documented rule: file stem, or directory/stem where stems repeat."""
    con = sqlite3.connect(db)
    try:
        a_cols = {r[1] for r in con.execute("PRAGMA table_info(Annotations)")}
        s_cols = {r[1] for r in con.execute("PRAGMA table_info(Slides)")}
        slides = {uid: (Path(f).stem, d) for uid, f, d in con.execute(
            f"SELECT uid, filename, {'directory' if 'directory' in s_cols else 'NULL'} FROM Slides")}
        stems = [s for s, _ in slides.values()]
        key = {u: (f"{d}/{s}" if stems.count(s) > 1 else s) for u, (s, d) in slides.items()}
        deleted = "AND a.deleted = 0" if "deleted" in a_cols else ""
        rows = con.execute(f"""SELECT a.slide, c.name, COUNT(*) FROM Annotations a
                               JOIN Classes c ON c.uid = a.agreedClass
                               WHERE EXISTS (SELECT 1 FROM Annotations_coordinates k WHERE k.annoId = a.uid)
                               {deleted} GROUP BY a.slide, c.name""").fetchall()
    finally:
        con.close()
    out: dict[tuple[str, str], int] = {}
    for slide, cls, n in rows:
        out[(key[slide], cls)] = out.get((key[slide], cls), 0) + n
    return out


@pytest.mark.parametrize("db, classes", [
    ("MITOS_WSI_CMC_TUPAC_stitched.sqlite", None),
    ("SlideRunner_TUPAC.sqlite", None),
    ("SlideRunner_demo.sqlite", {"1st class": MITOSIS, "2nd class": HARD_NEGATIVE}),
])
def test_sliderunner_counts_equal_plain_sql_counts(annotations, db, classes):
    path = annotations("sliderunner") / db
    oracle = MitosisOracle.from_sliderunner(path, classes=classes)
    sql = _sql_counts(path)
    want_mit: dict[str, int] = {}
    want_hard: dict[str, int] = {}
    for (slide, cls), n in sql.items():
        label = mitosis_label(cls, classes)
        target = want_mit if label == MITOSIS else want_hard if label == HARD_NEGATIVE else None
        if target is not None:
            target[slide] = target.get(slide, 0) + n
    assert sum(want_mit.values()) > 0
    assert {s: len(oracle.mitoses(s)) for s in oracle.slides if len(oracle.mitoses(s))} == want_mit
    assert {s: len(oracle.hard_negatives(s)) for s in oracle.slides if len(oracle.hard_negatives(s))} == want_hard


def test_sliderunner_deleted_and_lookalikes(tmp_path):
    anns = [SlideRunnerAnnotation("a.svs", 10, 10, "Mitotic figure"),
            SlideRunnerAnnotation("a.svs", 20, 20, "Mitotic figure", deleted=True),
            SlideRunnerAnnotation("a.svs", 30, 30, "Mitotic figure lookalike"),
            SlideRunnerAnnotation("a.svs", 40, 40, "Mitotic figure lookalike", deleted=True),
            SlideRunnerAnnotation("dir/b.tif", 50, 60, "Mitotic figure"),
            SlideRunnerAnnotation("dir/b.tif", 5, 6, "Granulocyte")]
    db = write_sliderunner(tmp_path / "m.sqlite", ["a.svs", "dir/b.tif"], anns)
    o = MitosisOracle.from_sliderunner(db, mpp=0.25)
    assert o.slides == ["a", "b"]
    np.testing.assert_array_equal(o.mitoses("a"), [[10, 10]])
    np.testing.assert_array_equal(o.hard_negatives("a"), [[30, 30]])
    np.testing.assert_array_equal(o.mitoses("b"), [[50, 60]])
    assert {k: v for k, v in _sql_counts(db).items()} == {("a", "Mitotic figure"): 1,
                                                           ("a", "Mitotic figure lookalike"): 1,
                                                           ("b", "Mitotic figure"): 1, ("b", "Granulocyte"): 1}
    r = o.region_report("a", (0, 0, 31, 31))  # half-open: (30, 30) inside, (31, 31) would not be
    assert r.findings == {"mitoses": 1, "hard_negatives": 1}
    assert isinstance(r.findings["mitoses"], int) and r.region_mm2 == pytest.approx(31 * 31 * 0.25e-3 ** 2)
    assert o.region_report("a", (0, 0, 30, 30)).findings["hard_negatives"] == 0
    assert o.counts_in("a", (0, 0, 31, 31)) == (1, 1)
    grid = PatchGrid((48, 48), 0.25, 0.25, 16, 16)
    np.testing.assert_array_equal(o.mitosis_count("a", grid), [[1, 0, 0], [0, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(o.mitosis_count("a", grid, hard_negatives=True), [[0, 0, 0], [0, 1, 0], [0, 0, 0]])
    text = tmp_path / "notes.sqlite"
    text.write_text("not a database " * 50)
    with pytest.raises(OracleError, match="notes.sqlite"):
        MitosisOracle.from_sliderunner(text)
    with pytest.raises(OracleError, match="absent.sqlite"):
        MitosisOracle.from_sliderunner(tmp_path / "absent.sqlite")


def test_coco_counts_from_midogpp_equal_direct_json_counts(annotations):
    path = annotations("midogpp") / "MIDOGpp.json"
    data = json.loads(path.read_text())
    oracle = MitosisOracle.from_coco(path)
    cats = {c["id"]: c["name"] for c in data["categories"]}
    stem = {im["id"]: Path(im["file_name"]).stem for im in data["images"]}
    want: dict[tuple[str, str], int] = {}
    for a in data["annotations"]:
        k = (stem[a["image_id"]], cats[a["category_id"]])
        want[k] = want.get(k, 0) + 1
    got = {}
    for s in oracle.slides:
        if len(oracle.mitoses(s)):
            got[(s, "mitotic figure")] = len(oracle.mitoses(s))
        if len(oracle.hard_negatives(s)):
            got[(s, "not mitotic figure")] = len(oracle.hard_negatives(s))
    assert got == want
    assert sum(len(oracle.mitoses(s)) for s in oracle.slides) == 11937
    # MIDOG++ writes corners [x1, y1, x2, y2]: the point is the box middle
    first = data["annotations"][0]
    x1, y1, x2, y2 = first["bbox"]
    pts = (oracle.mitoses if cats[first["category_id"]] == "mitotic figure" else oracle.hard_negatives)(
        stem[first["image_id"]])
    assert [(x1 + x2) / 2, (y1 + y2) / 2] in pts.tolist()


def test_coco_standard_boxes_and_errors(tmp_path):
    coco = {"images": [{"id": 7, "file_name": "slides/x.tiff", "width": 1000, "height": 800}],
            "categories": [{"id": 1, "name": "Mitotic figure"}, {"id": 2, "name": "Lookalike"},
                           {"id": 3, "name": "Tumour cell"}],
            "annotations": [{"image_id": 7, "category_id": 1, "bbox": [900, 700, 50, 40]},
                            {"image_id": 7, "category_id": 2, "bbox": [10, 20, 30, 40]},
                            {"image_id": 7, "category_id": 3, "bbox": [1, 1, 2, 2]}]}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(coco))
    o = MitosisOracle.from_coco(path)
    np.testing.assert_array_equal(o.mitoses("x"), [[925, 720]])
    np.testing.assert_array_equal(o.hard_negatives("x"), [[25, 40]])
    o2 = MitosisOracle.from_coco(path, classes={"Tumour cell": MITOSIS}, bbox_format="xywh")
    assert len(o2.mitoses("x")) == 2
    coco["annotations"][0]["image_id"] = 8
    path.write_text(json.dumps(coco))
    with pytest.raises(OracleError, match=r"c.json: annotation #0 refers to unknown image_id 8"):
        MitosisOracle.from_coco(path)
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(OracleError, match="c.json: not COCO-style JSON"):
        MitosisOracle.from_coco(path)
    with pytest.raises(OracleError, match="use 'mitosis', 'hard_negative' or None"):
        MitosisOracle.from_coco(path, classes={"a": "tumour"})


@pytest.mark.parametrize("name, label", [
    ("Mitotic figure", MITOSIS), ("Mitosis", MITOSIS), ("mitotic figure", MITOSIS), ("MITOSES", MITOSIS),
    ("Mitotic figure lookalike", HARD_NEGATIVE), ("not mitotic figure", HARD_NEGATIVE),
    ("Non-mitotic figure", HARD_NEGATIVE), ("hard_negative", HARD_NEGATIVE), ("Imposter", HARD_NEGATIVE),
    ("Granulocyte", None), ("1st class", None), (None, None),
])
def test_mitosis_label_rules(name, label):
    assert mitosis_label(name) == label


def test_check_classes():
    check_classes({"a": MITOSIS, "b": HARD_NEGATIVE, "c": None})
    check_classes(None)
    with pytest.raises(OracleError, match="class 'a' maps to 'tumour'"):
        check_classes({"a": "tumour"})
    assert mitosis_label("1st class", {"1ST CLASS": MITOSIS}) == MITOSIS
    assert mitosis_label("Mitotic figure", {"mitotic figure": None}) is None


def test_synthetic_cohort_mitoses_match_the_manifest(tmp_path):
    cohort = generate_cohort(tmp_path, n_slides=2, size=2048, seed=1, n_caption_images=0, progress=False)
    oracle = MitosisOracle.from_synthetic(cohort)
    assert sum(s.n_mitoses for s in cohort.slides) > 0
    for s in cohort.slides:
        grid = PatchGrid((s.width, s.height), s.mpp, 0.5, 128, 128)
        assert len(oracle.mitoses(s.slide_id)) == s.n_mitoses
        assert len(oracle.hard_negatives(s.slide_id)) == s.n_lookalikes
        assert int(oracle.mitosis_count(s.slide_id, grid).sum()) == s.n_mitoses
        r = oracle.region_report(s.slide_id, (0, 0, s.width, s.height))  # each slide's own mpp
        assert r.findings == {"mitoses": s.n_mitoses, "hard_negatives": s.n_lookalikes}
        assert r.mpp == s.mpp
    same = MitosisOracle.from_synthetic(cohort.root)
    for s in cohort.slides:
        np.testing.assert_array_equal(same.mitoses(s.slide_id), oracle.mitoses(s.slide_id))
    with pytest.raises(OracleError, match="not a synthetic cohort"):
        MitosisOracle.from_synthetic(tmp_path / "slides")
