"""The tumour oracle and the human annotator (alkit.tasks.segmentation.oracle / .annotator) on the real
CAMELYON16 files in ../shared/data, on a synthetic cohort, and the annotator round trip (regions out as
QuPath GeoJSON / ASAP XML, drawings back in).

Assumption of these tests: the CAMELYON16 slides themselves are not available, so a slide's size is
the bounding box of its polygons rounded up to 256 px, and its resolution is 0.243 µm/px (the
Radboud/Utrecht scanners of CAMELYON16 are ~0.243 µm/px).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import shapely
import tifffile
from PIL import Image
from shapely.geometry import Polygon

from alkit.al.oracle import NotAnnotatedError, OracleError, RegionReport
from alkit.annotations.asap import write_asap_xml
from alkit.annotations.geometry import union_minus_exclusions
from alkit.annotations.ncrf import write_ncrf_json
from alkit.annotations.qupath import QuPathFeature, write_qupath_geojson
from alkit.errors import AlkitError
from alkit.selection.strategy import RegionPick
from alkit.synthetic import generate_cohort
from alkit.tasks.segmentation.annotator import AnnotationOracle, load_regions
from alkit.tasks.segmentation.oracle import TumourMask, TumourOracle, tumour_share, tumour_tissue_share
from alkit.wsi.grid import PatchGrid

CAMELYON_MPP = 0.243
SLIDES = ("Tumor_001", "Tumor_073", "Tumor_081")


def _reference_geometry(ncrf_json: Path) -> shapely.Geometry:
    """The polygons' area the plain way: union of (made valid) positives minus union of negatives."""
    data = json.loads(ncrf_json.read_text())
    pos = shapely.union_all([shapely.make_valid(Polygon(p["vertices"])) for p in data["positive"]])
    neg = shapely.union_all([shapely.make_valid(Polygon(p["vertices"])) for p in data["negative"]])
    return pos.difference(neg)


def _slide_grid(geom: shapely.Geometry, patch: int = 256, stride: int | None = None) -> PatchGrid:
    _, _, maxx, maxy = geom.bounds
    dims = (math.ceil(maxx / 256) * 256, math.ceil(maxy / 256) * 256)
    return PatchGrid(dims, CAMELYON_MPP, 0.25, patch, stride or patch)


def _mm2(px2: float, mpp: float = CAMELYON_MPP) -> float:
    return px2 * (mpp * 1e-3) ** 2


def _tumour(report: RegionReport) -> float:
    return report.findings["tumour_mm2"]


# ------------------------------------------------------------------------------------------------
# tumour ground truth: CAMELYON16 polygons
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def camelyon(annotations):
    xml = TumourOracle.from_folder(annotations("camelyon16_asap_xml"), mpp=CAMELYON_MPP)
    js = TumourOracle.from_folder(annotations("camelyon16_ncrf_json"), "{slide}.json", mpp=CAMELYON_MPP)
    refs = {s: _reference_geometry(annotations("camelyon16_ncrf_json") / f"{s}.json")
            for s in SLIDES}
    return {"xml": xml, "json": js}, refs


@pytest.mark.parametrize("fmt", ["xml", "json"])
@pytest.mark.parametrize("slide", SLIDES)
def test_whole_slide_tumour_area_equals_the_polygons_area(camelyon, slide, fmt):
    oracles, refs = camelyon
    oracle, ref = oracles[fmt], refs[slide]
    assert oracle.slides == list(SLIDES)
    grid = _slide_grid(ref)  # 256 px at 0.25 µm/px on a 0.243 µm/px slide: fractional 263.4 px cells
    frac = oracle.tumour_fraction(slide, grid)
    assert frac.dtype == np.float32 and frac.shape == grid.shape
    assert frac.min() >= 0 and frac.max() <= 1 and (frac == 1).any()
    via_grid = float(frac.astype(np.float64).sum()) * grid.size0 ** 2
    assert via_grid == pytest.approx(ref.area, rel=0.005)
    assert via_grid == pytest.approx(ref.area, rel=1e-6)  # what the exact method actually achieves

    w, h = grid.dimensions
    report = oracle.region_report(slide, (0, 0, w, h))
    assert isinstance(report, RegionReport)
    assert set(report.findings) == {"tumour_mm2"}
    assert _tumour(report) == pytest.approx(_mm2(ref.area), rel=0.005)
    assert _tumour(report) == pytest.approx(_mm2(ref.area), rel=1e-9)
    assert report.region_mm2 == pytest.approx(_mm2(w * h))
    assert report.tissue_mm2 is None
    assert oracle.tumour_area_px(slide) == pytest.approx(ref.area, rel=1e-12)


def test_xml_and_json_ground_truth_are_the_same_geometry(camelyon):
    oracles, refs = camelyon
    for s in SLIDES:
        a, b = oracles["xml"].geometry(s), oracles["json"].geometry(s)
        assert a.symmetric_difference(b).area <= 1e-9 * a.area
        assert a.geom_type in ("Polygon", "MultiPolygon") and a.is_valid


def test_cell_fractions_are_exact_on_an_overlapping_grid(camelyon):
    """Stride 128 with 256-px cells: every cell's share equals shapely's own intersection area."""
    oracles, refs = camelyon
    ref = refs["Tumor_081"]
    grid = _slide_grid(ref, patch=256, stride=128)
    frac = oracles["xml"].tumour_fraction("Tumor_081", grid)
    boxes = grid.cell_boxes()
    rects = shapely.box(boxes[:, 0], boxes[:, 1], boxes[:, 0] + boxes[:, 2], boxes[:, 1] + boxes[:, 3])
    hit = shapely.intersects(ref, rects)
    want = np.zeros(len(boxes))
    want[hit] = shapely.area(shapely.intersection(ref, rects[hit])) / grid.size0 ** 2
    np.testing.assert_allclose(frac.ravel(), want, atol=1e-6)
    assert 0 < ((want > 0) & (want < 1)).sum() < hit.sum()  # both boundary and interior cells exist


def test_region_report_of_a_partial_box_and_a_box_without_tumour(camelyon):
    oracles, refs = camelyon
    ref = refs["Tumor_073"]
    x0, y0, x1, y1 = ref.bounds
    box = (x0, y0, (x1 - x0) / 2, (y1 - y0) / 2)
    want = ref.intersection(shapely.box(box[0], box[1], box[0] + box[2], box[1] + box[3])).area
    r = oracles["json"].region_report("Tumor_073", box, tissue_mm2=1.5)
    assert _tumour(r) == pytest.approx(_mm2(want), rel=1e-9)
    assert r.tissue_mm2 == 1.5 and tumour_tissue_share(r) == pytest.approx(_tumour(r) / 1.5)
    assert tumour_share(r) == pytest.approx(want / (box[2] * box[3]))
    assert r.to_dict()["tumour_mm2"] == _tumour(r)
    assert _tumour(oracles["json"].region_report("Tumor_073", (0, 0, 1000, 1000))) == 0
    assert tumour_tissue_share(oracles["json"].region_report("Tumor_073", box)) is None


# ------------------------------------------------------------------------------------------------
# geometry rules, masks, missing files
# ------------------------------------------------------------------------------------------------

def test_groups_exclusions_and_invalid_polygons(tmp_path):
    bowtie = [(0, 0), (100, 100), (100, 0), (0, 100)]  # self-crossing: two 2500 px² lobes
    square = [(200, 0), (400, 0), (400, 200), (200, 200)]
    overlap = [(300, 0), (500, 0), (500, 200), (300, 200)]  # half on top of the square
    hole = [(220, 20), (260, 20), (260, 60), (220, 60)]
    stray = [(0, 500), (50, 500), (50, 550)]
    write_asap_xml(tmp_path / "s.xml", [("a", "_0", bowtie), ("b", "_1", square), ("c", "Tumor", overlap),
                                        ("d", "_2", hole), ("e", "None", stray), ("f", "_0", [(1, 1), (2, 2)])])
    o = TumourOracle.from_files({"s": tmp_path / "s.xml"})
    # make_valid keeps both lobes of the bow-tie (buffer(0) would keep one); overlaps count once
    assert o.tumour_area_px("s") == pytest.approx(5000 + 300 * 200 - 40 * 40)
    assert o.geometry("s").is_valid
    assert union_minus_exclusions([np.array(bowtie, float)]).area == pytest.approx(5000)
    assert Polygon(bowtie).buffer(0).area == pytest.approx(2500)  # why buffer(0) is not used
    custom = TumourOracle.from_files({"s": tmp_path / "s.xml"}, positive=["None"], exclusion=[])
    assert custom.tumour_area_px("s") == pytest.approx(50 * 50 / 2)


def test_mask_ground_truth_png_and_tiff(tmp_path):
    mask = np.zeros((40, 60), np.uint8)
    mask[5:20, 10:35] = 255
    mask[30:, 50:] = 1
    Image.fromarray(mask).save(tmp_path / "m1_mask.png")
    tifffile.imwrite(tmp_path / "m2_mask.tif", mask)
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[..., 1] = mask
    Image.fromarray(rgb).save(tmp_path / "m3_mask.png")
    o = TumourOracle.from_files({k: tmp_path / f"{k}_mask.{e}" for k, e in
                                 (("m1", "png"), ("m2", "tif"), ("m3", "png"))}, mask_downsample=16, mpp=0.5)
    area = (15 * 25 + 10 * 10) * 16 * 16
    grid = PatchGrid((60 * 16, 40 * 16), 0.5, 0.5, 100, 100)  # 100-px cells across 16-px mask pixels
    for s in ("m1", "m2", "m3"):
        assert o.tumour_area_px(s) == area
        assert float(o.tumour_fraction(s, grid).astype(np.float64).sum()) * 100 ** 2 == pytest.approx(area, rel=1e-6)
        # a box cutting through mask pixels: exact partial-pixel area
        got = _tumour(o.region_report(s, (10 * 16 + 8, 5 * 16 + 4, 100, 50)))
        assert got == pytest.approx(100 * 50 * (0.5e-3) ** 2)
    with pytest.raises(OracleError, match="m1_mask.png: a mask image needs mask_downsample"):
        TumourOracle.from_files({"m1": tmp_path / "m1_mask.png"})
    assert TumourOracle({"a": TumourMask(mask > 0, 16)}).tumour_area_px("a") == area


def test_missing_files_unknown_slides_and_missing_mpp(tmp_path, annotations):
    folder = annotations("camelyon16_asap_xml")
    with pytest.raises(OracleError, match=r"Normal_001.xml: ground-truth file of slide 'Normal_001' not found"):
        TumourOracle.from_files({"Normal_001": folder / "Normal_001.xml"})
    with pytest.raises(OracleError, match=r"no ground-truth file for slide\(s\) 'Normal_001'"):
        TumourOracle.from_folder(folder, slides=["Tumor_001", "Normal_001"])
    with pytest.raises(OracleError, match=r"no file matches '\{slide\}.geojson'"):
        TumourOracle.from_folder(folder, "{slide}.geojson")
    with pytest.raises(OracleError, match="no such ground-truth folder"):
        TumourOracle.from_folder(tmp_path / "nope")
    only = TumourOracle.from_folder(folder, slides=["Tumor_081"])
    assert only.slides == ["Tumor_081"]
    # a slide without a file is tumour-free
    grid = PatchGrid((4096, 4096), 0.25, 0.25, 256, 256)
    assert not only.tumour_fraction("Normal_001", grid).any()
    assert _tumour(only.region_report("Normal_001", (0, 0, 512, 512), mpp=0.25)) == 0
    with pytest.raises(OracleError, match="Tumor_081: resolution unknown"):
        only.region_report("Tumor_081", (0, 0, 512, 512))
    with pytest.raises(OracleError, match="positive width"):
        only.region_report("Tumor_081", (0, 0, 0, 512), mpp=0.25)


@pytest.mark.parametrize("name, content, fragment", [
    ("bad.xml", "<ASAP_Annotations><Annotations>", "not well-formed XML"),
    ("bad.xml", "<Annotations/>", "root element is <Annotations>"),
    ("bad.json", "{not json", "not valid JSON"),
    ("bad.json", '{"positive": [{"name": "a", "vertices": [[1, 2, 3]]}]}', "vertices have shape"),
    ("bad.json", '{"positive": [{"name": "a", "vertices": [["x", 2], [3, 4]]}]}', "not [x, y] numbers"),
    ("bad.geojson", '{"type": "FeatureCollection"}', "without a 'features' list"),
    ("bad.geojson", '[{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[1]]}}]',
     "unreadable Polygon geometry"),
    ("bad.png", "this is no image", "cannot read as a mask image"),
    ("bad.txt", "whatever", "unknown ground-truth format"),
])
def test_malformed_ground_truth_raises_an_alkit_error_naming_the_file(tmp_path, name, content, fragment):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(AlkitError) as err:
        TumourOracle.from_files({"s": path}, mask_downsample=4)
    assert isinstance(err.value, OracleError)
    assert str(path) in str(err.value) and fragment in str(err.value)


# ------------------------------------------------------------------------------------------------
# synthetic cohort
# ------------------------------------------------------------------------------------------------

def test_synthetic_cohort_oracle_matches_the_manifest(tmp_path):
    cohort = generate_cohort(tmp_path, n_slides=2, size=2048, seed=1, n_caption_images=0, progress=False)
    oracle = TumourOracle.from_synthetic(cohort)
    assert any(s.has_tumour for s in cohort.slides)
    for s in cohort.slides:
        grid = PatchGrid((s.width, s.height), s.mpp, 0.5, 128, 128)  # 256-px level-0 cells
        frac = oracle.tumour_fraction(s.slide_id, grid)
        area = float(frac.astype(np.float64).sum()) * grid.size0 ** 2
        assert area == pytest.approx(s.tumour_area_px, rel=0.01, abs=1.0)
        assert oracle.slide_mpp(s.slide_id) == s.mpp
        tissue_mm2 = s.tissue_area_px * (s.mpp * 1e-3) ** 2
        r = oracle.region_report(s.slide_id, (0, 0, s.width, s.height), tissue_mm2)
        assert set(r.findings) == {"tumour_mm2"}
        assert _tumour(r) == pytest.approx(s.tumour_area_px * (s.mpp * 1e-3) ** 2, rel=0.01, abs=1e-9)
        assert tumour_tissue_share(r) == pytest.approx(s.tumour_fraction, rel=0.01, abs=1e-9)
    assert TumourOracle.from_synthetic(cohort.root).slides == oracle.slides


def test_from_synthetic_on_a_folder_that_is_not_a_cohort(tmp_path):
    with pytest.raises(OracleError, match="not a synthetic cohort"):
        TumourOracle.from_synthetic(tmp_path)

# ------------------------------------------------------------------------------------------------
# annotator round trip
# ------------------------------------------------------------------------------------------------

def _v1_region_features(picks) -> list[dict]:
    """Region rectangles as alkit 0.1 exported them (class = the target class, not locked, no id): files
    annotators still have; with a version-1 regions.json they are recognised by geometry."""
    out = []
    for rank, p in enumerate(picks, 1):
        x, y, w, h = p.box
        out.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [
            [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]]},
            "properties": {"objectType": "annotation", "name": f"{p.strategy} #{rank}",
                           "classification": {"name": p.cls or p.strategy, "color": [230, 25, 75]}}})
    return out


def _rect(b):
    x, y, w, h = b
    return shapely.box(x, y, x + w, y + h)


def test_annotator_round_trip_qupath_and_asap(tmp_path, camelyon):
    """Regions go out as QuPath GeoJSON / ASAP XML; the annotator draws the true tumour (a little past
    the region edges, as people do), an exclusion, a stray polygon and points; the drawings come back
    as an oracle whose reports equal the truth inside the regions."""
    _, refs = camelyon
    picks = []
    for slide in ("Tumor_081", "Tumor_073"):
        x0, y0, x1, y1 = refs[slide].bounds
        picks.append(RegionPick(slide, (int(x0) - 200, int(y0) - 200, 1024, 1024), "prototype", "tumour", 0.9))
        picks.append(RegionPick(slide, (int(x1) - 600, int(y1) - 500, 1024, 1024), "prototype", "tumour", 0.8))
    out = tmp_path / "selection"
    (out / "regions.json").parent.mkdir(parents=True)
    (out / "regions.json").write_text(json.dumps([p.to_dict() for p in picks]))
    drawings = tmp_path / "drawings"
    truth_in: dict[str, shapely.Geometry] = {}
    exclusion = {}
    for slide in ("Tumor_081", "Tumor_073"):
        boxes = [p.box for p in picks if p.slide == slide]
        reach = shapely.union_all([_rect(b).buffer(150, join_style="mitre") for b in boxes])
        drawn = refs[slide].intersection(reach)  # the annotator outlines tumour a bit past the region edges
        bx, by, _, _ = boxes[0]
        exclusion[slide] = shapely.box(bx + 300, by + 300, bx + 340, by + 380)
        stray = _rect((bx - 5000, by - 5000, 400, 400))  # far outside any region: must not count
        truth_in[slide] = drawn.difference(exclusion[slide]).intersection(
            shapely.union_all([_rect(b) for b in boxes]))
        mit_inside = (bx + 10.0, by + 10.0)
        mit_outside = (bx - 10.0, by - 10.0)
        if slide == "Tumor_081":
            # QuPath: the imported region rectangles come back too (class "tumour"!), as a list of features
            exported = _v1_region_features([p for p in picks if p.slide == slide])
            feats = [QuPathFeature(drawn, "Tumor", "tumour"), QuPathFeature(exclusion[slide], "Ignore*"),
                     QuPathFeature(stray, "Tumor"), QuPathFeature(shapely.MultiPoint([mit_inside, mit_outside]),
                                                                  "Mitosis"),
                     QuPathFeature(shapely.Point(bx + 20, by + 20), "Mitotic figure lookalike")]
            path = write_qupath_geojson(drawings / f"{slide}.geojson", feats, feature_collection=False)
            data = json.loads(path.read_text())
            path.write_text(json.dumps(exported + data))
        else:
            anns = [(f"region {i}", "tumour", np.asarray(_rect(b).exterior.coords)[:-1]) for i, b in enumerate(boxes)]
            for i, part in enumerate(getattr(drawn, "geoms", [drawn])):
                anns.append((f"tumour {i}", "Tumor", np.asarray(part.exterior.coords)[:-1]))
            anns.append(("excl", "_2", np.asarray(exclusion[slide].exterior.coords)[:-1]))
            anns.append(("stray", "Tumor", np.asarray(stray.exterior.coords)[:-1]))
            anns.append(("m", "mitotic figure", np.array([mit_inside])))
            path = write_asap_xml(drawings / f"{slide}.xml", anns)
            # the point as an ASAP dot (the writer gives every annotation one type)
            text = path.read_text().replace('Type="Polygon" PartOfGroup="mitotic figure"',
                                            'Type="Dot" PartOfGroup="mitotic figure"')
            path.write_text(text)
            write_asap_xml(drawings / f"{slide}_extra.xml", anns)  # no regions for "Tumor_073_extra": ignored

    oracle = AnnotationOracle.from_drawings(drawings, out / "regions.json", mpp=CAMELYON_MPP)
    for slide in ("Tumor_081", "Tumor_073"):
        assert oracle.geometry(slide).symmetric_difference(truth_in[slide]).area <= 1e-6 * truth_in[slide].area
        for p in (p for p in picks if p.slide == slide):
            want = truth_in[slide].intersection(_rect(p.box)).area
            assert want > 0
            r = oracle.region_report(slide, p.box)
            assert _tumour(r) == pytest.approx(_mm2(want), rel=1e-6)
            # the same as the simulated oracle inside the region, less the drawn exclusion
            sim = TumourOracle({slide: refs[slide]}, mpp=CAMELYON_MPP).region_report(slide, p.box)
            excl = refs[slide].intersection(exclusion[slide]).intersection(_rect(p.box)).area
            assert _tumour(r) == pytest.approx(_tumour(sim) - _mm2(excl), rel=1e-6)
        first = next(p for p in picks if p.slide == slide)
        assert oracle.region_report(slide, first.box).findings["mitoses"] == 1
        assert oracle.points.counts_in(slide, first.box)[0] == 1
        regions = shapely.union_all([_rect(p.box) for p in picks if p.slide == slide])
        grid = _slide_grid(refs[slide].union(regions))
        frac = oracle.tumour_fraction(slide, grid)
        assert float(frac.astype(np.float64).sum()) * grid.size0 ** 2 == pytest.approx(truth_in[slide].area, rel=1e-6)
        seen = oracle.annotated_fraction(slide, grid)
        assert float(seen.astype(np.float64).sum()) * grid.size0 ** 2 == pytest.approx(regions.area, rel=1e-6)
        np.testing.assert_array_equal(oracle.regions(slide), [p.box for p in picks if p.slide == slide])
        x0, y0, _, _ = refs[slide].bounds
        with pytest.raises(NotAnnotatedError, match="not inside the annotated regions"):
            oracle.region_report(slide, (x0 + 500, y0 + 500, 1024, 1024))
    assert len(oracle.points.hard_negatives("Tumor_081")) == 1
    assert oracle.points.slides == ["Tumor_073", "Tumor_081"]
    # the exported ASAP regions, written back by the tool, are recognised as outlines too
    assert tumour_share(oracle.region_report("Tumor_073", picks[2].box)) < 1


def test_drawings_missing_and_region_inputs(tmp_path):
    (tmp_path / "d").mkdir()
    regions = {"s1": [(0, 0, 100, 100)], "s2": [(0, 0, 50, 50), (50, 0, 50, 50)]}
    write_qupath_geojson(tmp_path / "d" / "s1.geojson", [(shapely.box(-50, -50, 50, 50), "Tumour")])
    with pytest.raises(OracleError, match=r"no drawings for slide 's2'"):
        AnnotationOracle.from_drawings(tmp_path / "d", regions)
    o = AnnotationOracle.from_drawings(tmp_path / "d", regions, allow_missing=True, mpp=1.0)
    assert o.tumour_area_px("s1") == pytest.approx(2500)  # clipped to the region
    assert o.tumour_area_px("s2") == 0
    r = o.region_report("s2", (0, 0, 100, 50))  # inside the union of two regions
    assert r.findings == {"tumour_mm2": 0.0, "mitoses": 0, "hard_negatives": 0}
    picks = [RegionPick("s1", (0, 0, 100, 100), "random")]
    assert load_regions(picks)["s1"].tolist() == [[0, 0, 100, 100]]
    (tmp_path / "r.json").write_text('[{"slide": "s1", "x": 0}]')
    with pytest.raises(OracleError, match=r"r.json: region #0 lacks slide/x/y/w/h"):
        load_regions(tmp_path / "r.json")
    write_ncrf_json(tmp_path / "d" / "s2.json", [("t", [(0, 0), (100, 0), (100, 50), (0, 50)])],
                    [("n", [(10, 10), (20, 10), (20, 20), (10, 20)])])
    o2 = AnnotationOracle.from_drawings(tmp_path / "d", regions)
    assert o2.tumour_area_px("s2") == pytest.approx(100 * 50 - 100)
    (tmp_path / "d" / "s1.geojson").write_text('{"type": "Feature", "geometry": {"type": "Polygon"}}')
    with pytest.raises(OracleError, match="s1.geojson: feature #0 has an unreadable Polygon geometry"):
        AnnotationOracle.from_drawings(tmp_path / "d", regions)

