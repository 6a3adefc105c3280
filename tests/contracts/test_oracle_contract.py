"""The contract every oracle passes (alkit.al.oracle.Oracle), each built on the same tiny case: one slide
with a 100 x 100 px tumour square and a few mitoses / lookalikes inside it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely

from alkit.al.oracle import NotAnnotatedError, Oracle, OracleError, RegionReport
from alkit.annotations.qupath import QuPathFeature, write_qupath_geojson
from alkit.annotations.sliderunner import SlideRunnerAnnotation, write_sliderunner
from alkit.tasks.detection.oracle import MitosisOracle
from alkit.tasks.segmentation.annotator import AnnotationOracle
from alkit.tasks.segmentation.oracle import TumourOracle

MPP = 0.25
REGION = (0, 0, 400, 300)  # the annotated region (AnnotationOracle)
BOX = (50.0, 40.0, 200.0, 120.5)  # inside it; float sizes are allowed
TUMOUR = shapely.box(100, 50, 200, 150)
MITOSES = [(120.0, 60.0), (150.0, 100.0)]
LOOKALIKES = [(180.0, 140.0)]


def _tumour(tmp_path):
    return TumourOracle({"s": TUMOUR}, mpp=MPP)


def _mitosis_points(tmp_path):
    return MitosisOracle({"s": MITOSES}, {"s": LOOKALIKES}, mpp=MPP)


def _mitosis_sliderunner(tmp_path):
    anns = [SlideRunnerAnnotation("s.svs", x, y, "Mitotic figure") for x, y in MITOSES]
    anns += [SlideRunnerAnnotation("s.svs", x, y, "Mitotic figure lookalike") for x, y in LOOKALIKES]
    return MitosisOracle.from_sliderunner(write_sliderunner(tmp_path / "m.sqlite", ["s.svs"], anns), mpp=MPP)


def _annotation(tmp_path):
    feats = [QuPathFeature(TUMOUR, "Tumor"), QuPathFeature(shapely.MultiPoint(MITOSES), "Mitosis"),
             QuPathFeature(shapely.MultiPoint(LOOKALIKES), "Mitotic figure lookalike")]
    write_qupath_geojson(tmp_path / "drawings" / "s.geojson", feats)
    return AnnotationOracle.from_drawings(tmp_path / "drawings", {"s": [REGION]}, mpp=MPP)


BUILDERS = {"tumour": _tumour, "mitosis-points": _mitosis_points, "mitosis-sliderunner": _mitosis_sliderunner,
            "annotation": _annotation}
#: What each oracle finds in BOX: its task's findings, exactly.
EXPECTED = {"tumour": {"tumour_mm2": 100 * 100 * (MPP * 1e-3) ** 2},
            "mitosis-points": {"mitoses": 2, "hard_negatives": 1},
            "mitosis-sliderunner": {"mitoses": 2, "hard_negatives": 1},
            "annotation": {"tumour_mm2": 100 * 100 * (MPP * 1e-3) ** 2, "mitoses": 2, "hard_negatives": 1}}


@pytest.fixture(params=sorted(BUILDERS))
def built(request, tmp_path):
    return request.param, BUILDERS[request.param](tmp_path)


def test_every_oracle_class_is_covered(tmp_path):
    assert {type(build(tmp_path)) for build in BUILDERS.values()} == {TumourOracle, MitosisOracle, AnnotationOracle}


def test_every_oracle_honours_the_contract(built):
    name, oracle = built
    assert isinstance(oracle, Oracle)
    report = oracle.region_report("s", BOX, 0.0123)
    assert isinstance(report, RegionReport)
    assert report.slide_id == "s" and report.mpp == MPP
    assert tuple(report.box) == BOX and all(type(v) is float for v in report.box)
    assert report.region_mm2 == pytest.approx(BOX[2] * BOX[3] * (MPP * 1e-3) ** 2, rel=1e-12)
    assert report.tissue_mm2 == 0.0123  # passed through, not measured
    assert oracle.region_report("s", BOX).tissue_mm2 is None
    assert report.findings and all(isinstance(k, str) for k in report.findings)
    assert all(type(v) in (int, float) and math.isfinite(v) for v in report.findings.values())
    assert report.findings == pytest.approx(EXPECTED[name])
    d = report.to_dict()
    assert {k: d[k] for k in report.findings} == report.findings
    # mpp per call wins over the oracle's own
    assert oracle.region_report("s", BOX, mpp=0.5).region_mm2 == pytest.approx(BOX[2] * BOX[3] * 0.5e-3 ** 2)


@pytest.mark.parametrize("box", [(0, 0, 0, 10), (0, 0, 10, -1), (0, 0, 10), (0, np.inf, 10, 10), "nope", None])
def test_every_oracle_refuses_a_bad_box(built, box):
    _, oracle = built
    with pytest.raises(OracleError):
        oracle.region_report("s", box)


def test_the_human_annotator_refuses_boxes_never_shown(tmp_path):
    oracle = _annotation(tmp_path)
    with pytest.raises(NotAnnotatedError):
        oracle.region_report("s", (350, 250, 100, 100))
