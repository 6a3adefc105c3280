"""ASAP XML and SlideRunner SQLite readers/writers, on the real CAMELYON16 / SlideRunner files
in ../shared/data and on round trips and malformed input."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from alkit.annotations.asap import AsapAnnotation, read_asap_xml, write_asap_xml
from alkit.annotations.sliderunner import (CIRCLE, POLYGON, SPOT, SlideRunnerAnnotation,
                                           SlideRunnerSlide, read_sliderunner, write_sliderunner)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
ASAP_DIR = SHARED / "annotations" / "camelyon16_asap_xml"
NCRF_DIR = SHARED / "annotations" / "camelyon16_ncrf_json"
SR_DIR = SHARED / "annotations" / "sliderunner"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real annotation files not found at {path} (the project's ../shared/data)")
    return path


def _asap_files() -> list[Path]:
    return sorted(ASAP_DIR.glob("*.xml")) if ASAP_DIR.is_dir() else []


def _sr_files() -> list[Path]:
    return sorted(SR_DIR.glob("*.sqlite")) if SR_DIR.is_dir() else []


# --------------------------------------------------------------------------------------------
# ASAP XML
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("xml", _asap_files() or [ASAP_DIR / "missing.xml"], ids=lambda p: p.name)
def test_asap_reader_matches_ncrf_polygons(xml):
    _need(xml)
    ref = json.loads(_need(NCRF_DIR / f"{xml.stem}.json").read_text())
    anns = read_asap_xml(xml)
    assert len(anns) == len(ref["positive"]) + len(ref["negative"])
    for a in anns:
        assert isinstance(a, AsapAnnotation) and a.coords.dtype == float and a.coords.shape[1] == 2
    # positives are group _0, negatives (exclusions) _2, in file order, with the same vertices
    # (the converter renamed them, so match by order, not by name)
    for kind, group in (("positive", "_0"), ("negative", "_2")):
        ours = [a for a in anns if a.group == group]
        assert len(ours) == len(ref[kind])
        for a, poly in zip(ours, ref[kind]):
            np.testing.assert_allclose(a.coords, np.asarray(poly["vertices"], float))


def test_asap_reader_filters_by_type(tmp_path):
    p = tmp_path / "a.xml"
    p.write_text('<?xml version="1.0"?><ASAP_Annotations><Annotations>'
                 '<Annotation Name="p" Type="Polygon" PartOfGroup="Tumor"><Coordinates>'
                 '<Coordinate Order="1" X="10" Y="0"/><Coordinate Order="0" X="0" Y="0"/>'
                 '<Coordinate Order="2" X="10" Y="10"/></Coordinates></Annotation>'
                 '<Annotation Name="d" Type="Dot" PartOfGroup="None"><Coordinates>'
                 '<Coordinate Order="0" X="5.5" Y="6.25"/></Coordinates></Annotation>'
                 '</Annotations><AnnotationGroups/></ASAP_Annotations>')
    all_ = read_asap_xml(p)
    assert [(a.name, a.group) for a in all_] == [("p", "Tumor"), ("d", "None")]
    np.testing.assert_array_equal(all_[0].coords, [[0, 0], [10, 0], [10, 10]])  # sorted by Order
    only = read_asap_xml(p, types={"dot"})
    assert len(only) == 1 and only[0].coords.tolist() == [[5.5, 6.25]]


def test_asap_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    anns = [(f"Annotation {i}", g, rng.uniform(0, 1e5, (int(rng.integers(3, 40)), 2)).round(3))
            for i, g in enumerate(["_0", "_0", "_1", "_2"])]
    path = write_asap_xml(tmp_path / "sub" / "x.xml", anns, groups=["_0", "_1", "_2"])
    back = read_asap_xml(path)
    assert [(a.name, a.group) for a in back] == [(n, g) for n, g, _ in anns]
    for a, (_, _, c) in zip(back, anns):
        np.testing.assert_allclose(a.coords, c, atol=1e-9)
    text = path.read_text()
    assert text.startswith('<?xml version="1.0"?>')
    assert '<Group Name="_2" PartOfGroup="None" Color="#00FF00">' in text
    assert 'Type="Polygon" PartOfGroup="_0" Color="#F4FA58"' in text
    assert not list(path.parent.glob(".*tmp"))  # no temp file left behind


def test_asap_empty_annotation_list_round_trips(tmp_path):
    path = write_asap_xml(tmp_path / "e.xml", [], groups=["_0"])
    assert read_asap_xml(path) == []
    assert "<Group Name=\"_0\"" in path.read_text()


@pytest.mark.parametrize("content, fragment", [
    ("this is not xml", "not well-formed XML"),
    ("<ASAP_Annotations><Annotations>", "not well-formed XML"),
    ("<Annotations/>", "root element is <Annotations>"),
    ('<ASAP_Annotations><Annotations><Annotation Name="bad"><Coordinates>'
     '<Coordinate Order="0" X="1"/></Coordinates></Annotation></Annotations></ASAP_Annotations>',
     "annotation 'bad', coordinate #0 has no numeric X/Y"),
    ('<ASAP_Annotations><Annotations><Annotation Name="n"><Coordinates>'
     '<Coordinate Order="0" X="one" Y="2"/></Coordinates></Annotation></Annotations></ASAP_Annotations>',
     "no numeric X/Y"),
    ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>'
     '<ASAP_Annotations>&lol2;</ASAP_Annotations>', "unsafe XML"),
])
def test_asap_malformed_files_raise_annotation_file_error_naming_the_file(tmp_path, content, fragment):
    p = tmp_path / "broken.xml"
    p.write_text(content)
    with pytest.raises(AnnotationFileError) as err:
        read_asap_xml(p)
    assert str(p) in str(err.value) and fragment in str(err.value)


def test_asap_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.xml"):
        read_asap_xml(tmp_path / "nope.xml")


# --------------------------------------------------------------------------------------------
# SlideRunner SQLite
# --------------------------------------------------------------------------------------------

def _sql(path: Path, query: str) -> list[tuple]:
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return con.execute(query).fetchall()
    finally:
        con.close()


@pytest.mark.parametrize("db", _sr_files() or [SR_DIR / "missing.sqlite"], ids=lambda p: p.name)
def test_sliderunner_reader_counts_match_sql(db):
    _need(db)
    recs = read_sliderunner(db)
    n_sql = _sql(db, "SELECT count(*) FROM Annotations WHERE uid IN "
                     "(SELECT annoId FROM Annotations_coordinates)")[0][0]
    assert len(recs) == n_sql > 0
    per_class = dict(_sql(db, "SELECT c.name, count(*) FROM Annotations a JOIN Classes c "
                              "ON a.agreedClass = c.uid GROUP BY c.name"))
    got: dict[str, int] = {}
    for r in recs:
        got[r.cls] = got.get(r.cls, 0) + 1
    assert got == per_class
    per_slide = dict(_sql(db, "SELECT s.filename, count(*) FROM Annotations a JOIN Slides s "
                              "ON a.slide = s.uid GROUP BY s.filename"))
    got_slide: dict[str, int] = {}
    for r in recs:
        got_slide[r.slide] = got_slide.get(r.slide, 0) + 1
    assert got_slide == per_slide
    cols = {r[1] for r in _sql(db, "PRAGMA table_info(Annotations)")}
    if "deleted" in cols:
        n_live = _sql(db, "SELECT count(*) FROM Annotations WHERE deleted = 0")[0][0]
        assert len(read_sliderunner(db, drop_deleted=True)) == n_live
    # spot coordinates are the stored point
    first = _sql(db, "SELECT a.uid, c.coordinateX, c.coordinateY FROM Annotations a JOIN "
                     "Annotations_coordinates c ON c.annoId = a.uid WHERE a.type = 1 "
                     "ORDER BY a.uid, c.orderIdx LIMIT 1")
    if first:
        uid, x, y = first[0]
        rec = next(r for r in recs if r.uid == uid)
        assert (rec.x, rec.y, rec.type) == (x, y, SPOT)


def test_sliderunner_reader_handles_polygons_and_circles():
    db = _need(SR_DIR / "SlideRunner_demo.sqlite")
    recs = read_sliderunner(db)
    types = {r.type for r in recs}
    assert {SPOT, POLYGON, CIRCLE} <= types
    for r in recs:
        n = _sql(db, f"SELECT count(*) FROM Annotations_coordinates WHERE annoId = {r.uid}")[0][0]
        assert r.coords.shape == (n, 2)
        if r.type != SPOT:
            np.testing.assert_allclose((r.x, r.y), r.coords.mean(axis=0))
    assert read_sliderunner(db, classes={"1st class"}) == [r for r in recs if r.cls == "1st class"]


def test_sliderunner_round_trip_and_deleted_flag(tmp_path):
    slides = [SlideRunnerSlide("a.tif", 1000, 800, "slides"), SlideRunnerSlide("b.tif", 500, 500)]
    anns = [SlideRunnerAnnotation("a.tif", 10, 20, "Mitotic figure"),
            SlideRunnerAnnotation("a.tif", 30, 40, "Mitotic figure lookalike"),
            SlideRunnerAnnotation("b.tif", 50, 60, "Mitotic figure", deleted=True),
            ("b.tif", 70.4, 80.6, "Mitotic figure"),
            SlideRunnerAnnotation("b.tif", 0, 0, "Tumor", type=POLYGON,
                                  coords=np.array([[0, 0], [10, 0], [10, 10], [0, 10]]))]
    path = write_sliderunner(tmp_path / "db.sqlite", slides, anns, last_modified=1.0)
    back = read_sliderunner(path)
    assert [(r.slide, r.x, r.y, r.cls, r.deleted, r.type) for r in back] == [
        ("a.tif", 10, 20, "Mitotic figure", False, SPOT),
        ("a.tif", 30, 40, "Mitotic figure lookalike", False, SPOT),
        ("b.tif", 50, 60, "Mitotic figure", True, SPOT),
        ("b.tif", 70, 81, "Mitotic figure", False, SPOT),  # SlideRunner stores integer pixels
        ("b.tif", 5, 5, "Tumor", False, POLYGON)]
    assert back[4].coords.shape == (4, 2)
    live = read_sliderunner(path, drop_deleted=True)
    assert len(live) == 4 and not any(r.deleted for r in live)
    # plain sqlite3 can read and write it (no SlideRunner-only trigger functions)
    con = sqlite3.connect(path)
    con.execute("UPDATE Annotations SET deleted = 1 WHERE uid = 1")
    con.execute("INSERT INTO Classes (name, color) VALUES ('x', '#000000')")
    con.commit()
    assert con.execute("SELECT count(*) FROM Annotations_label").fetchone()[0] == 5
    assert con.execute("SELECT lastModified FROM Annotations").fetchall() == [(1.0,)] * 5
    con.close()
    assert sum(r.deleted for r in read_sliderunner(path)) == 2


def test_sliderunner_writer_mirrors_the_real_schema(tmp_path):
    real = _need(SR_DIR / "MITOS_WSI_CMC_TUPAC_stitched.sqlite")
    ours = write_sliderunner(tmp_path / "s.sqlite", ["x.tif"], [("x.tif", 1, 2, "Mitotic figure")])
    for table in ("Slides", "Classes", "Persons", "Annotations", "Annotations_coordinates",
                  "Annotations_label", "Log"):
        want = [r[1] for r in _sql(real, f"PRAGMA table_info({table})")]
        got = [r[1] for r in _sql(ours, f"PRAGMA table_info({table})")]
        assert sorted(got) == sorted(want), table


def test_sliderunner_errors(tmp_path):
    text = tmp_path / "notes.sqlite"
    text.write_text("not a database at all, just text " * 40)
    with pytest.raises(AnnotationFileError, match="notes.sqlite"):
        read_sliderunner(text)
    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(empty).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(AnnotationFileError, match=r"empty.sqlite: not a SlideRunner database \(missing tables"):
        read_sliderunner(empty)
    with pytest.raises(FileNotFoundError):
        read_sliderunner(tmp_path / "absent.sqlite")
    with pytest.raises(ValueError, match="unknown slide 'zzz.tif'"):
        write_sliderunner(tmp_path / "w.sqlite", ["a.tif"], [("zzz.tif", 1, 1, "c")])
    assert not (tmp_path / "w.sqlite").exists()


# --------------------------------------------------------------------------------------------
# NCRF JSON and QuPath GeoJSON
# --------------------------------------------------------------------------------------------

from alkit.annotations import AnnotationFileError  # noqa: E402
from alkit.annotations.ncrf import read_ncrf_json, write_ncrf_json  # noqa: E402
from alkit.annotations.qupath import QuPathFeature, read_qupath_geojson, write_qupath_geojson  # noqa: E402


def _ncrf_files() -> list[Path]:
    return sorted(NCRF_DIR.glob("*.json")) if NCRF_DIR.is_dir() else []


@pytest.mark.parametrize("path", _ncrf_files() or [NCRF_DIR / "missing.json"], ids=lambda p: p.name)
def test_ncrf_reader_on_the_real_files(path, tmp_path):
    _need(path)
    ref = json.loads(path.read_text())
    got = read_ncrf_json(path)
    for kind in ("positive", "negative"):
        polys = getattr(got, kind)
        assert [p.name for p in polys] == [p["name"] for p in ref[kind]]
        for p, r in zip(polys, ref[kind]):
            np.testing.assert_array_equal(p.coords, np.asarray(r["vertices"], float))
    back = read_ncrf_json(write_ncrf_json(tmp_path / path.name, got.positive, got.negative))
    assert json.loads((tmp_path / path.name).read_text()) == ref  # integers stay integers
    assert len(back.positive) == len(got.positive)


@pytest.mark.parametrize("content, fragment", [
    ("[1, 2", "not valid JSON"),
    ('{"type": "FeatureCollection", "features": []}', "not NCRF polygon JSON"),
    ('{"positive": {"name": "a"}}', "'positive' is a dict, expected a list"),
    ('{"positive": [{"name": "a"}]}', "positive[0] has no 'vertices'"),
    ('{"negative": [{"name": "a", "vertices": [[1, 2], [3]]}]}', "not [x, y] numbers"),
])
def test_ncrf_malformed_files(tmp_path, content, fragment):
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(AnnotationFileError) as err:
        read_ncrf_json(p)
    assert str(p) in str(err.value) and fragment in str(err.value)
    assert isinstance(err.value, ValueError)


def test_qupath_round_trip_and_layouts(tmp_path):
    import shapely

    holed = shapely.Polygon([(0, 0), (100, 0), (100, 100), (0, 100)], [[(10, 10), (20, 10), (20, 20), (10, 20)]])
    multi = shapely.MultiPolygon([shapely.box(200, 0, 250, 50), shapely.box(300, 0, 320, 20)])
    feats = [QuPathFeature(holed, "Tumor", "t1"), (multi, "Stroma"), shapely.MultiPoint([(5, 5), (6, 7)]),
             QuPathFeature(shapely.Point(1.5, 2.5), "Mitosis", object_type="detection", properties={"score": 0.5})]
    for collection in (True, False):
        path = write_qupath_geojson(tmp_path / f"a{collection}.geojson", feats, feature_collection=collection,
                                    colors={"Tumor": (200, 0, 0)})
        data = json.loads(path.read_text())
        assert isinstance(data, dict) == collection
        back = read_qupath_geojson(path)
        assert [(f.classification, f.name, f.object_type) for f in back] == [
            ("Tumor", "t1", "annotation"), ("Stroma", None, "annotation"), (None, None, "annotation"),
            ("Mitosis", None, "detection")]
        assert back[0].geometry.equals(holed) and back[0].geometry.area == pytest.approx(9900)
        assert back[1].geometry.equals(multi)
        assert back[3].properties == {"score": 0.5}
        first = data["features"][0] if collection else data[0]
        assert first["properties"]["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
        assert first["properties"]["objectType"] == "annotation"


def test_qupath_older_layouts_and_single_features(tmp_path):
    old = [{"type": "Feature", "id": "PathAnnotationObject",
            "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 0]]]},
            "properties": {"classification": {"name": "Tumor", "colorRGB": -3670016}, "isLocked": False}},
           {"type": "Feature", "id": "PathDetectionObject",
            "geometry": {"type": "Point", "coordinates": [1, 2]},
            "properties": {"object_type": "cell", "classification": {"names": ["Tumor", "Positive"]}}},
           {"type": "Feature", "geometry": None, "properties": {}}]
    p = tmp_path / "old.json"
    p.write_text(json.dumps(old))
    feats = read_qupath_geojson(p)
    assert [(f.classification, f.object_type) for f in feats] == [("Tumor", "annotation"),
                                                                  ("Tumor: Positive", "cell")]
    one = tmp_path / "one.geojson"
    one.write_text(json.dumps(old[0]))
    assert len(read_qupath_geojson(one)) == 1


@pytest.mark.parametrize("content, fragment", [
    ("{", "not valid JSON"),
    ('{"type": "Polygon", "coordinates": []}', "GeoJSON object of type 'Polygon'"),
    ('"text"', "top-level JSON str"),
    ('[{"type": "Point"}]', "item #0 is not a GeoJSON Feature"),
    ('[{"type": "Feature", "geometry": {"type": "Blob", "coordinates": [1, 2]}}]', "unreadable Blob geometry"),
    ('[{"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, NaN]}}]', "non-finite coordinate"),
    ('[{"type": "Feature", "properties": [1], "geometry": {"type": "Point", "coordinates": [1, 2]}}]',
     "properties of type list"),
])
def test_qupath_malformed_files(tmp_path, content, fragment):
    p = tmp_path / "bad.geojson"
    p.write_text(content)
    with pytest.raises(AnnotationFileError) as err:
        read_qupath_geojson(p)
    assert str(p) in str(err.value) and fragment in str(err.value)
    with pytest.raises(FileNotFoundError):
        read_qupath_geojson(tmp_path / "absent.geojson")
