"""`alkit select`: regions.json, QuPath GeoJSON, ASAP XML and PNG per slide, from real stores."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from alkit.annotations.asap import read_asap_xml
from alkit.cli import main


def test_select_writes_what_annotators_need(embedded_cohort, tmp_path, capsys):
    stores = embedded_cohort.slides[0].store_path.parent
    out = tmp_path / "sel"
    assert main(["select", "--stores", str(stores), "--strategy", "random", "--n", "2", "--size", "1024",
                 "--seed", "5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "8 regions on 4 slides" in printed
    doc = json.loads((out / "regions.json").read_text())
    assert doc["format"] == "alkit.regions" and doc["version"] == 2
    regions = doc["regions"]
    assert len(regions) == 8
    assert doc["provenance"]["budget"] == {"n": 2, "size_px": 1024}
    for slide in embedded_cohort.ids:
        mine = [r for r in regions if r["slide"] == slide]
        geo = json.loads((out / "qupath" / f"{slide}.geojson").read_text())
        assert geo["type"] == "FeatureCollection" and len(geo["features"]) == len(mine) == 2
        ring = geo["features"][0]["geometry"]["coordinates"][0]
        x, y, w, h = mine[0]["box_px"]
        assert ring[0] == [x, y] and ring[2] == [x + w, y + h]
        assert geo["features"][0]["properties"]["classification"]["name"] == "Region"
        assert geo["features"][0]["properties"]["name"] == mine[0]["id"] == f"{slide}:c0:r1"
        xml = read_asap_xml(out / "asap" / f"{slide}.xml")
        assert len(xml) == 2 and xml[0].group == "Region" and xml[0].name == mine[0]["id"]
        np.testing.assert_allclose(xml[0].coords[2], [x + w, y + h])
        png = np.asarray(Image.open(out / "png" / f"{slide}.png"))
        assert png.ndim == 3 and png.shape[2] == 3 and png.shape[1] > 1024  # the thumbnail plus a legend panel
        for kind, suffix in (("qupath", ".geojson"), ("asap", ".xml"), ("png", ".png")):
            assert str(out / kind / f"{slide}{suffix}") in printed  # every file written is named
    again = tmp_path / "again"
    main(["select", "--stores", str(stores), "--strategy", "random", "--n", "2", "--size", "1024",
          "--seed", "5", "--out", str(again), "--no-png"])
    doc2 = json.loads((again / "regions.json").read_text())
    assert doc2["regions"] == regions
    assert not (again / "png").exists()


def test_select_errors_are_one_line(embedded_cohort, tmp_path, capsys):
    stores = embedded_cohort.slides[0].store_path.parent
    assert main(["select", "--stores", str(stores), "--strategy", "prototype", "--out", str(tmp_path)]) == 2
    assert "--prototypes DIR is required" in capsys.readouterr().err
    assert main(["select", "--stores", str(tmp_path / "none"), "--strategy", "random", "--out", str(tmp_path)]) == 2
    assert "no embedding stores" in capsys.readouterr().err
    assert main(["select", "--stores", str(stores), "--strategy", "magic", "--out", str(tmp_path)]) == 2
    assert "unknown strategy 'magic'" in capsys.readouterr().err
