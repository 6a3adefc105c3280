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
    assert "8 regions on 4 slides" in capsys.readouterr().out
    regions = json.loads((out / "regions.json").read_text())
    assert len(regions) == 8
    assert set(regions[0]) == {"slide", "x", "y", "w", "h", "strategy", "class", "score"}
    for slide in embedded_cohort.ids:
        mine = [r for r in regions if r["slide"] == slide]
        geo = json.loads((out / "qupath" / f"{slide}.geojson").read_text())
        assert geo["type"] == "FeatureCollection" and len(geo["features"]) == len(mine) == 2
        ring = geo["features"][0]["geometry"]["coordinates"][0]
        r = mine[0]
        assert ring[0] == [r["x"], r["y"]] and ring[2] == [r["x"] + r["w"], r["y"] + r["h"]]
        assert geo["features"][0]["properties"]["classification"]["name"] == "random"
        xml = read_asap_xml(out / "asap" / f"{slide}.xml")
        assert len(xml) == 2 and xml[0].group == "random"
        np.testing.assert_allclose(xml[0].coords[2], [r["x"] + r["w"], r["y"] + r["h"]])
        png = np.asarray(Image.open(out / "png" / f"{slide}.png"))
        assert png.shape == (1024, 1024, 3)
    again = tmp_path / "again"
    main(["select", "--stores", str(stores), "--strategy", "random", "--n", "2", "--size", "1024",
          "--seed", "5", "--out", str(again), "--no-png"])
    assert json.loads((again / "regions.json").read_text()) == regions
    assert not (again / "png").exists()


def test_select_errors_are_one_line(embedded_cohort, tmp_path, capsys):
    stores = embedded_cohort.slides[0].store_path.parent
    assert main(["select", "--stores", str(stores), "--strategy", "prototype", "--out", str(tmp_path)]) == 2
    assert "--prototypes DIR is required" in capsys.readouterr().err
    assert main(["select", "--stores", str(tmp_path / "none"), "--strategy", "random", "--out", str(tmp_path)]) == 2
    assert "no embedding stores" in capsys.readouterr().err
    assert main(["select", "--stores", str(stores), "--strategy", "magic", "--out", str(tmp_path)]) == 2
    assert "unknown strategy 'magic'" in capsys.readouterr().err
