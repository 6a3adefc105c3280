"""The QuPath / ASAP round trip: exported region objects (read back by plain json / shapely / defusedxml, not by
alkit), and annotators' edits that must not corrupt labels: moved, resized, reclassified region rectangles,
drawings crossing region boundaries, drawings outside every region, skipped regions."""

from __future__ import annotations

import json
import uuid
import xml.etree.ElementTree as ET

import defusedxml.ElementTree as SafeET
import numpy as np
import pytest
import shapely
import shapely.affinity
import shapely.geometry

from alkit.annotations.roundtrip import (REGION_CLASS, OutsideRegionsError, inspect_annotated, read_annotated,
                                         region_uuid)
from alkit.embeddings.cohort import Cohort, CohortSlide
from alkit.selection.export import write_selection
from alkit.selection.regions_file import read_regions
from alkit.selection.strategy import RegionPick, Selection
from alkit.tasks.segmentation.annotator import AnnotationOracle
from alkit.wsi.grid import PatchGrid

MPP = 0.25
R1, R2 = (0, 0, 1024, 1024), (2048, 2048, 1024, 1024)


def _cohort(tmp_path, slides=("s1",)) -> Cohort:
    grid = PatchGrid((4096, 4096), MPP, 0.5, 64, 64, np.ones((32, 32), np.float32))
    return Cohort([CohortSlide(s, tmp_path / f"{s}.h5", tmp_path / f"{s}.svs", grid) for s in slides],
                  {"encoder": "handcrafted"})


def _export(tmp_path, cycle=2):
    selection = Selection("prototype", [RegionPick("s1", R1, "prototype", "tumour", 0.9),
                                        RegionPick("s1", R2, "prototype", "tumour", 0.7)])
    out = tmp_path / "sel"
    files = write_selection(selection, _cohort(tmp_path), out, png=False, cycle=cycle,
                            provenance={"params": {"selector": "standard"}, "prototype_set": "arch@abc"})
    return out, files


def _rect(box):
    x, y, w, h = box
    return shapely.box(x, y, x + w, y + h)


def _feature(geom, cls, name=None):
    props = {"objectType": "annotation", "classification": {"name": cls, "color": [255, 0, 0]}}
    if name:
        props["name"] = name
    return {"type": "Feature", "geometry": shapely.geometry.mapping(geom), "properties": props}


def test_qupath_export_is_locked_neutral_and_identified(tmp_path):
    out, files = _export(tmp_path)
    assert files.regions == out / "regions.json" and files.files[-1] == files.regions
    geo = json.loads((out / "qupath" / "s1.geojson").read_text())
    doc = json.loads(files.regions.read_text())
    ids = [r["id"] for r in doc["regions"]]
    assert ids == ["s1:c2:r1", "s1:c2:r2"]
    for feat, box, r in zip(geo["features"], (R1, R2), doc["regions"]):
        props = feat["properties"]
        assert props["classification"]["name"] == "Region" == REGION_CLASS
        assert props["isLocked"] is True and props["objectType"] == "annotation"
        assert props["name"] == r["id"]
        u = uuid.UUID(feat["id"])
        assert u.version == 5 and feat["id"] == region_uuid(r["id"])
        assert props["measurements"]["rank"] == r["rank"] and props["measurements"]["score"] == r["score"]
        assert props["strategy"] == "prototype" and "score" not in props
        assert shapely.geometry.shape(feat["geometry"]).equals(_rect(box))
    _, again = _export(tmp_path / "b")  # the same selection: the same ids and UUIDs
    assert json.loads((again.regions.parent / "qupath" / "s1.geojson").read_text())["features"][0]["id"] == \
        geo["features"][0]["id"]


def test_regions_document_fields(tmp_path):
    out, _ = _export(tmp_path)
    doc = json.loads((out / "regions.json").read_text())
    assert doc["format"] == "alkit.regions" and doc["version"] == 2 and doc["created"]
    prov = doc["provenance"]
    assert prov["strategy"] == "prototype" and prov["cycle"] == 2 and prov["encoder"] == "handcrafted"
    assert prov["alkit_version"] and prov["prototype_set"] == "arch@abc"
    r = doc["regions"][1]
    assert r["slide_path"] == str((tmp_path / "s1.svs").absolute()) and r["mpp"] == MPP
    assert r["box_px"] == list(R2) and r["box_um"] == [v * MPP for v in R2]
    assert (r["strategy"], r["cycle"], r["rank"], r["score"], r["class"]) == ("prototype", 2, 2, 0.7, "tumour")
    assert r["params"] == {"selector": "standard"} and r["encoder"] == "handcrafted" and r["prototype_set"] == "arch@abc"
    assert sorted(doc["files"]) == ["asap/s1.xml", "qupath/s1.geojson"]


def test_moved_resized_reclassified_regions_change_nothing(tmp_path):
    out, _ = _export(tmp_path)
    regions = read_regions(out / "regions.json").for_slide("s1")
    geo = json.loads((out / "qupath" / "s1.geojson").read_text())
    f1, f2 = geo["features"]
    f1["geometry"] = shapely.geometry.mapping(shapely.affinity.translate(_rect(R1), 3, 3))  # moved 3 px
    f2["geometry"] = shapely.geometry.mapping(_rect((2000, 2000, 1200, 1200)))  # resized
    f2["properties"]["classification"] = {"name": "Tumor", "color": [200, 0, 0]}  # reclassified as the target
    crossing = shapely.box(800, 800, 1300, 1300)  # crosses R1's lower-right corner
    inside = shapely.Polygon([(2100, 2100), (2300, 2100), (2300, 2400)])
    geo["features"] += [_feature(crossing, "Tumor"), _feature(inside, "Tumor"),
                        _feature(shapely.Point(2500, 2500), "Mitosis")]
    drawn = tmp_path / "drawn"
    drawn.mkdir()
    (drawn / "s1.geojson").write_text(json.dumps(geo))

    got = read_annotated(drawn / "s1.geojson", regions)
    a1, a2 = got["s1:c2:r1"], got["s1:c2:r2"]
    assert a1.present and a2.present and not a1.skipped and not a2.skipped
    assert [c for c, _ in a1.drawings] == ["Tumor"]
    assert a1.drawings[0][1].area == pytest.approx(crossing.intersection(_rect(R1)).area) == 224 * 224
    assert sorted(c for c, _ in a2.drawings) == ["Mitosis", "Tumor"]
    assert any("moved or resized" in n for n in a1.notes)
    assert any("reclassified" in n for n in a2.notes) and any("moved or resized" in n for n in a2.notes)

    # the case: the oracle counts only what was drawn, never the (moved) region rectangle
    oracle = AnnotationOracle.from_drawings(drawn, out / "regions.json", mpp=MPP)
    want = crossing.intersection(_rect(R1)).area + inside.area
    assert oracle.tumour_area_px("s1") == pytest.approx(want)
    np.testing.assert_array_equal(oracle.regions("s1"), [R1, R2])
    assert oracle.region_report("s1", R2).findings["mitoses"] == 1


def test_drawings_outside_every_region_are_refused(tmp_path):
    out, _ = _export(tmp_path)
    regions = read_regions(out / "regions.json").for_slide("s1")
    geo = json.loads((out / "qupath" / "s1.geojson").read_text())
    geo["features"] += [_feature(shapely.box(3500, 100, 3600, 200), "Tumor"),
                        _feature(shapely.box(100, 100, 200, 200), "Tumor"),
                        _feature(shapely.Point(1500, 10), "Mitosis")]
    path = tmp_path / "s1.geojson"
    path.write_text(json.dumps(geo))
    with pytest.raises(OutsideRegionsError, match=r"s1\.geojson: 2 drawing\(s\) outside every requested region") as e:
        read_annotated(path, regions)
    assert "x 3500-3600, y 100-200" in str(e.value) and len(e.value.outside) == 2
    found = inspect_annotated(path, regions)
    assert [o.cls for o in found.outside] == ["Tumor", "Mitosis"]
    assert found.regions["s1:c2:r1"].drawings[0][1].area == 100 * 100  # the one inside still counts


def test_skipped_regions_qupath(tmp_path):
    out, _ = _export(tmp_path)
    regions = read_regions(out / "regions.json").for_slide("s1")
    geo = json.loads((out / "qupath" / "s1.geojson").read_text())
    geo["features"][0]["properties"]["name"] += " skip"  # Set properties > Name on the locked object
    geo["features"][1]["properties"]["classification"] = {"names": ["Region", "skipped"], "color": [1, 2, 3]}
    path = tmp_path / "s1.geojson"
    path.write_text(json.dumps(geo))
    got = read_annotated(path, regions)
    assert got["s1:c2:r1"].skipped and got["s1:c2:r2"].skipped
    # UUID kept but the name changed beyond recognition: still the same region (found by UUID)
    geo["features"][0]["properties"]["name"] = "hard to read, skipped"
    geo["features"][1]["properties"]["classification"] = {"name": "Region", "color": [1, 2, 3]}
    path.write_text(json.dumps(geo))
    got = read_annotated(path, regions)
    assert got["s1:c2:r1"].skipped and not got["s1:c2:r2"].skipped
    # an object of class Region that names no region is never a drawing
    geo["features"].append(_feature(shapely.box(5, 5, 50, 50), "Region", "my own box"))
    path.write_text(json.dumps(geo))
    assert read_annotated(path, regions)["s1:c2:r1"].drawings == []
    # regions deleted from the file: not present, drawings still found by the exported boxes
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [_feature(_rect(R1), "Tumor")]}))
    got = read_annotated(path, regions)
    assert not got["s1:c2:r1"].present and got["s1:c2:r1"].drawings[0][1].equals(_rect(R1))


def test_asap_round_trip(tmp_path):
    out, _ = _export(tmp_path)
    regions = read_regions(out / "regions.json").for_slide("s1")
    root = SafeET.parse(out / "asap" / "s1.xml").getroot()
    anns = root.find("Annotations").findall("Annotation")
    assert [a.get("Name") for a in anns] == ["s1:c2:r1", "s1:c2:r2"]
    assert {a.get("PartOfGroup") for a in anns} == {"Region"}
    assert {g.get("Name") for g in root.find("AnnotationGroups")} == {"Region", "Region skipped"}
    xy = [(float(c.get("X")), float(c.get("Y"))) for c in anns[1].find("Coordinates")]
    assert shapely.Polygon(xy).equals(_rect(R2))

    for c in anns[0].find("Coordinates"):  # the annotator drags region 1 by 5 px
        c.set("X", str(float(c.get("X")) + 5))
    anns[1].set("PartOfGroup", "Region skipped")  # and moves region 2 into the skipped group

    def add(name, kind, group, points):
        el = ET.SubElement(root.find("Annotations"), "Annotation",
                           {"Name": name, "Type": kind, "PartOfGroup": group, "Color": "#FF0000"})
        cs = ET.SubElement(el, "Coordinates")
        for k, (x, y) in enumerate(points):
            ET.SubElement(cs, "Coordinate", {"Order": str(k), "X": str(x), "Y": str(y)})

    crossing = [(-100, 500), (300, 500), (300, 700), (-100, 700)]
    add("Annotation 0", "Polygon", "Tumor", crossing)
    add("Annotation 1", "Dot", "mitotic figure", [(10, 10)])
    path = tmp_path / "s1.xml"
    ET.ElementTree(root).write(path)
    got = read_annotated(path, regions)
    a1, a2 = got["s1:c2:r1"], got["s1:c2:r2"]
    assert a2.skipped and not a1.skipped
    areas = [g for c, g in a1.drawings if c == "Tumor"]
    assert len(areas) == 1 and areas[0].area == pytest.approx(300 * 200)
    assert [c for c, g in a1.drawings if g.geom_type == "Point"] == ["mitotic figure"]
    assert any("moved or resized" in n for n in a1.notes)
    oracle = AnnotationOracle.from_drawings(tmp_path, out / "regions.json", mpp=MPP)
    np.testing.assert_array_equal(oracle.regions("s1"), [R1])  # the skipped region is not labeled
    assert oracle.tumour_area_px("s1") == pytest.approx(300 * 200)


def test_qupath_feature_ids_are_kept(tmp_path):
    from alkit.annotations.qupath import QuPathFeature, parse_qupath_geojson, to_geojson

    data = to_geojson([QuPathFeature(shapely.box(0, 0, 5, 5), "Tumor", uuid="6f1e0a52-1111-4c1e-9d6b-0a0b0c0d0e0f")])
    assert data["features"][0]["id"] == "6f1e0a52-1111-4c1e-9d6b-0a0b0c0d0e0f"
    assert parse_qupath_geojson(data)[0].uuid == "6f1e0a52-1111-4c1e-9d6b-0a0b0c0d0e0f"
    old = {"type": "Feature", "id": "PathAnnotationObject", "geometry": shapely.geometry.mapping(shapely.box(0, 0, 1, 1)),
           "properties": {"classification": {"name": "Tumor"}}}  # QuPath 0.2 names the Java class there
    got = parse_qupath_geojson([old])[0]
    assert got.uuid is None and got.object_type == "annotation"
