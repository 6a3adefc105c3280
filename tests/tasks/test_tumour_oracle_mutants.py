"""Tumour oracle details the other tumour oracle tests leave open (found by mutation testing): QuPath
GeoJSON ground truth (``.geojson`` and ``.json``), which ASAP annotation types outline an area, geometries
and masks given directly, per-slide mask downsamples, ``sources``, the folder scan (hidden files,
directories), the error and log messages that name the slide or file, and the report's fields.

The QuPath files are written here from the real CAMELYON16 polygons in ../shared/data, so the expected
geometry is the one the ASAP XML of the same slide gives."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import shapely
from PIL import Image
from shapely.geometry import GeometryCollection, LineString, MultiPolygon, Point, Polygon

from alkit.al.oracle import OracleError
from alkit.annotations.asap import write_asap_xml
from alkit.annotations.ncrf import write_ncrf_json
from alkit.annotations.qupath import QuPathFeature, write_qupath_geojson
from alkit.tasks.segmentation.oracle import TumourMask, TumourOracle, tumour_share

CAMELYON_MPP = 0.243
ORACLE_LOG = "alkit.tasks.segmentation.oracle"
GEOMETRY_LOG = "alkit.annotations.geometry"


def _ncrf_parts(path: Path) -> tuple[list[Polygon], list[Polygon]]:
    """The positive and negative polygons of an NCRF file, made valid, read the plain way."""
    data = json.loads(path.read_text())
    return ([shapely.make_valid(Polygon(p["vertices"])) for p in data["positive"]],
            [shapely.make_valid(Polygon(p["vertices"])) for p in data["negative"]])


def _messages(caplog: pytest.LogCaptureFixture, logger: str, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno == level]


# ------------------------------------------------------------------------------------------------
# QuPath GeoJSON ground truth
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("slide", ["Tumor_073", "Tumor_081"])
def test_qupath_ground_truth_equals_the_asap_xml_of_the_same_slide(annotations, tmp_path, slide):
    """CAMELYON16 polygons as QuPath annotations (class Tumour) with an exclusion (Ignore*) drawn inside,
    a stray unclassified annotation and a Tumour *detection* (neither is ground truth): the ASAP XML's
    geometry less the exclusion, read from ``.geojson`` and from a FeatureCollection saved as ``.json``."""
    pos, _ = _ncrf_parts(annotations("camelyon16_ncrf_json") / f"{slide}.json")
    x0, y0, _, _ = shapely.union_all(pos).bounds
    centre = shapely.union_all(pos).representative_point()
    hole = shapely.box(centre.x - 100, centre.y - 100, centre.x + 100, centre.y + 100)
    feats = ([QuPathFeature(p, "Tumour") for p in pos] + [QuPathFeature(hole, "Ignore*")]
             + [QuPathFeature(shapely.box(x0 - 900, y0 - 900, x0 - 500, y0 - 500), None, "stray"),
                QuPathFeature(shapely.box(x0 - 400, y0 - 400, x0 - 100, y0 - 100), "Tumour", "cell",
                              object_type="detection")])
    write_qupath_geojson(tmp_path / f"{slide}.geojson", feats)
    write_qupath_geojson(tmp_path / f"{slide}.json", feats)
    xml = TumourOracle.from_files({slide: annotations("camelyon16_asap_xml") / f"{slide}.xml"})
    ref = xml.geometry(slide).difference(hole)
    assert ref.area < xml.tumour_area_px(slide) - 1000  # the exclusion removes tumour
    for suffix in (".geojson", ".json"):
        got = TumourOracle.from_files({slide: tmp_path / f"{slide}{suffix}"}).geometry(slide)
        assert got.geom_type in ("Polygon", "MultiPolygon")
        assert got.symmetric_difference(ref).area <= 1e-9 * ref.area


def test_qupath_classes_follow_positive_and_exclusion(tmp_path):
    """``positive`` / ``exclusion`` choose the QuPath classes (case-insensitive), as for ASAP groups."""
    write_qupath_geojson(tmp_path / "s.geojson", [
        QuPathFeature(shapely.box(0, 0, 100, 100), "Metastasis"),
        QuPathFeature(shapely.box(10, 10, 30, 30), "Necrosis"),
        QuPathFeature(shapely.box(200, 0, 250, 50), "Tumor")])
    o = TumourOracle.from_files({"s": tmp_path / "s.geojson"}, positive=["metastasis"], exclusion=["NECROSIS"])
    assert o.tumour_area_px("s") == pytest.approx(100 * 100 - 20 * 20)
    default = TumourOracle.from_files({"s": tmp_path / "s.geojson"})
    assert default.tumour_area_px("s") == pytest.approx(50 * 50)


def test_a_geojson_file_is_read_as_qupath_even_if_it_looks_like_ncrf(tmp_path):
    """Only ``.json`` is told apart by content: NCRF content in a ``.geojson`` file is malformed GeoJSON."""
    write_ncrf_json(tmp_path / "s.geojson", [("t", [(0, 0), (100, 0), (100, 100), (0, 100)])])
    with pytest.raises(OracleError, match="s.geojson"):
        TumourOracle.from_files({"s": tmp_path / "s.geojson"})
    write_ncrf_json(tmp_path / "s.json", [("t", [(0, 0), (100, 0), (100, 100), (0, 100)])])
    assert TumourOracle.from_files({"s": tmp_path / "s.json"}).tumour_area_px("s") == pytest.approx(1e4)


# ------------------------------------------------------------------------------------------------
# ASAP annotation types, suffix case
# ------------------------------------------------------------------------------------------------

def test_only_asap_area_types_outline_tumour(tmp_path):
    """Polygon, Spline and Rectangle annotations are areas; a PointSet (and Dots) of the tumour group are
    not, even with enough points to close a ring. The suffix is matched case-insensitively."""
    square = [(0, 0), (100, 0), (100, 100), (0, 100)]
    spline = [(200, 0), (300, 0), (300, 100), (200, 100)]
    rect = [(400, 0), (450, 0), (450, 50), (400, 50)]
    points = [(600, 0), (900, 0), (900, 300), (600, 300)]
    path = write_asap_xml(tmp_path / "s.XML", [("a", "_0", square), ("b", "_0", spline), ("c", "_1", rect),
                                               ("d", "_0", points), ("e", "_0", [(700, 100)])])
    text = path.read_text()
    for name, kind in (("b", "Spline"), ("c", "Rectangle"), ("d", "PointSet"), ("e", "Dot")):
        text = text.replace(f'Name="{name}" Type="Polygon"', f'Name="{name}" Type="{kind}"')
    path.write_text(text)
    assert text.count('Type="Polygon"') == 1
    o = TumourOracle.from_files({"s": path})
    assert o.tumour_area_px("s") == pytest.approx(100 * 100 + 100 * 100 + 50 * 50)


# ------------------------------------------------------------------------------------------------
# geometries and masks given directly
# ------------------------------------------------------------------------------------------------

def test_geometries_given_directly_are_made_polygonal_and_valid():
    """A collection keeps its polygonal part; an invalid polygon is repaired (both bow-tie lobes); a
    valid (Multi)Polygon is kept as it is."""
    square = shapely.box(0, 0, 10, 10)
    collection = GeometryCollection([square, LineString([(20, 20), (30, 30)]), Point(50, 50)])
    bowtie = Polygon([(0, 0), (100, 100), (100, 0), (0, 100)])
    multi = MultiPolygon([shapely.box(0, 0, 10, 10), shapely.box(20, 0, 30, 10)])
    lines = LineString([(0, 0), (10, 10)])
    o = TumourOracle({"gc": collection, "bowtie": bowtie, "multi": multi, "square": square, "lines": lines})
    assert o.geometry("gc").geom_type == "Polygon" and o.tumour_area_px("gc") == pytest.approx(100)
    assert o.geometry("bowtie").is_valid and o.tumour_area_px("bowtie") == pytest.approx(5000)
    assert not bowtie.is_valid and bowtie.area == 0  # what an unrepaired bow-tie would measure
    assert o.tumour_area_px("multi") == pytest.approx(200) and o.tumour_area_px("square") == pytest.approx(100)
    assert o.geometry("lines").is_empty and o.geometry("lines").geom_type == "Polygon"
    grid_box = np.array([[0, 0, 100, 100]], float)
    assert o.tumour_areas_px("gc", grid_box)[0] == pytest.approx(100)
    assert o.slides == ["bowtie", "gc", "lines", "multi", "square"]


def test_tumour_mask_shape_and_downsample_checks():
    mask = np.zeros((4, 6), bool)
    mask[1:3, 2:5] = True
    with pytest.raises(ValueError, match=re.escape("must be 2-D, got shape (2, 4, 6)")):
        TumourMask(np.stack([mask, mask]), 4)
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match=f"mask downsample must be positive, got {bad}"):
            TumourMask(mask, bad)
    for ds in (0.5, 1):  # finer than level 0 and level 0 itself are valid
        assert TumourOracle({"m": TumourMask(mask, ds)}).tumour_area_px("m") == pytest.approx(6 * ds * ds)


def test_a_mask_has_no_polygons_and_the_error_names_its_source(tmp_path):
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 2:6] = 255
    Image.fromarray(mask).save(tmp_path / "a_mask.png")
    o = TumourOracle.from_files({"a": tmp_path / "a_mask.png"}, mask_downsample=4)
    assert o.sources == {"a": tmp_path / "a_mask.png"}
    with pytest.raises(OracleError, match=re.escape(f"a: ground truth is a mask ({tmp_path / 'a_mask.png'})")):
        o.geometry("a")
    direct = TumourOracle({"b": TumourMask(mask > 0, 4)})
    assert direct.sources == {}
    with pytest.raises(OracleError, match=re.escape("b: ground truth is a mask (array)")):
        direct.geometry("b")


def test_mask_downsample_per_slide(tmp_path):
    mask = np.zeros((10, 10), np.uint8)
    mask[:5, :4] = 1
    for s in ("a", "b"):
        Image.fromarray(mask).save(tmp_path / f"{s}.png")
    o = TumourOracle.from_files({s: tmp_path / f"{s}.png" for s in ("a", "b")}, mask_downsample={"a": 2, "b": 8})
    assert o.tumour_area_px("a") == 20 * 2 ** 2 and o.tumour_area_px("b") == 20 * 8 ** 2
    with pytest.raises(OracleError, match="b.png: a mask image needs mask_downsample"):
        TumourOracle.from_files({"b": tmp_path / "b.png"}, mask_downsample={"a": 2})


# ------------------------------------------------------------------------------------------------
# folders, files and sources
# ------------------------------------------------------------------------------------------------

def test_folder_scan_skips_hidden_files_and_directories(annotations, tmp_path):
    """A hidden leftover (``.Tumor_081.xml``) and a directory named like a ground-truth file are not
    ground truth; the real files are, and ``sources`` names them."""
    src = annotations("camelyon16_asap_xml")
    folder = tmp_path / "gt"
    folder.mkdir()
    (folder / "Tumor_081.xml").write_bytes((src / "Tumor_081.xml").read_bytes())
    (folder / ".Tumor_073.xml").write_bytes((src / "Tumor_073.xml").read_bytes())
    (folder / "Tumor_001.xml").mkdir()
    o = TumourOracle.from_folder(folder)
    assert o.slides == ["Tumor_081"]
    assert o.sources == {"Tumor_081": folder / "Tumor_081.xml"}
    assert repr(o) == "TumourOracle(1 slides)"
    with pytest.raises(OracleError, match=re.escape("slide(s) 'Tumor_073', 'Tumor_001' (expected Tumor_073.xml)")):
        TumourOracle.from_folder(folder, slides=["Tumor_081", "Tumor_073", "Tumor_001"])


def test_a_pattern_without_exactly_one_slide_placeholder_is_refused(tmp_path):
    for pattern in ("truth.xml", "{slide}_{slide}.xml"):
        with pytest.raises(OracleError, match=re.escape(f"file pattern {pattern!r} must contain '{{slide}}' exactly")):
            TumourOracle.from_folder(tmp_path, pattern)


# ------------------------------------------------------------------------------------------------
# reports and messages naming the slide
# ------------------------------------------------------------------------------------------------

def test_region_report_names_its_slide_and_resolution(annotations):
    o = TumourOracle.from_files({"Tumor_081": annotations("camelyon16_asap_xml") / "Tumor_081.xml"},
                                mpp=CAMELYON_MPP)
    x0, y0, x1, y1 = o.geometry("Tumor_081").bounds
    box = (x0, y0, x1 - x0, y1 - y0)
    r = o.region_report("Tumor_081", box)
    assert (r.slide_id, r.box, r.mpp) == ("Tumor_081", box, CAMELYON_MPP)
    assert 0 < tumour_share(r) < 1
    assert o.region_report("Tumor_081", box, mpp=0.5).mpp == 0.5
    with pytest.raises(OracleError, match=r"Tumor_081: region box \(0, 0, -5, 5\)"):
        o.region_report("Tumor_081", (0, 0, -5, 5))


def test_logs_name_the_file_and_count_the_slides_with_tumour(annotations, tmp_path, caplog):
    """The load summary counts slides and those with tumour; skipped degenerate rings and ignored
    classes are logged naming the file; a slide without ground truth is logged once."""
    xml = write_asap_xml(tmp_path / "x.xml", [("a", "_0", [(0, 0), (10, 0), (10, 10)]),
                                              ("b", "_0", [(1, 1), (2, 2)]), ("c", "Stroma", [(0, 0), (5, 0), (5, 5)])])
    ncrf = write_ncrf_json(tmp_path / "n.json", [("a", [(0, 0), (10, 0), (10, 10)]), ("b", [(3, 3), (3, 3), (4, 4)])])
    geojson = write_qupath_geojson(tmp_path / "q.geojson", [QuPathFeature(shapely.box(0, 0, 5, 5), "Stroma")])
    real = annotations("camelyon16_asap_xml") / "Tumor_081.xml"
    mask = np.zeros((8, 8), np.uint8)
    mask[:2, :2] = 1
    Image.fromarray(mask).save(tmp_path / "m.png")
    with caplog.at_level(logging.DEBUG):
        o = TumourOracle.from_files({"x": xml, "n": ncrf, "q": geojson, "Tumor_081": real, "m": tmp_path / "m.png"},
                                    mask_downsample=4)
        for _ in range(3):
            o.tumour_area_px("Normal_001")
    summary = _messages(caplog, ORACLE_LOG, logging.INFO)
    assert len(summary) == 1 and "5 slides (4 with tumour)" in summary[0]
    skipped = _messages(caplog, GEOMETRY_LOG, logging.WARNING)
    assert sorted(m.split(": ")[0] for m in skipped) == sorted([str(xml), str(ncrf)])
    assert all("1 polygon(s) with fewer than 3 distinct vertices skipped" in m for m in skipped)
    ignored = _messages(caplog, GEOMETRY_LOG, logging.INFO)
    assert sorted(m.split(": ")[0] for m in ignored) == sorted([str(xml), str(geojson)])
    assert all("{'Stroma': 1}" in m for m in ignored)
    free = _messages(caplog, ORACLE_LOG, logging.DEBUG)
    assert len(free) == 1 and "Normal_001" in free[0] and "tumour-free" in free[0]
