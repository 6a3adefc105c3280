"""The oracle contract module (alkit.al.oracle): RegionReport and the helpers every oracle shares."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from alkit.al.oracle import (NotAnnotatedError, Oracle, OracleError, RegionReport, call_reader, check_box,
                             load_synthetic_cohort, mpp_for, px2_to_mm2, require_mpp)
from alkit.annotations import AnnotationFileError
from alkit.errors import AlkitError


def test_region_report_findings_are_plain_numbers_flattened_into_to_dict():
    r = RegionReport("s", (1.0, 2.0, 3.0, 4.0), 0.5, 3e-6, None,
                     {"mitoses": np.int64(3), "tumour_mm2": np.float32(0.25)})
    assert r.findings == {"mitoses": 3, "tumour_mm2": 0.25}
    assert type(r.findings["mitoses"]) is int and type(r.findings["tumour_mm2"]) is float
    d = r.to_dict()
    assert d == {"slide_id": "s", "box": [1.0, 2.0, 3.0, 4.0], "mpp": 0.5, "region_mm2": 3e-6, "tissue_mm2": None,
                 "mitoses": 3, "tumour_mm2": 0.25}
    assert json.loads(json.dumps(d)) == d
    with pytest.raises(Exception):
        r.slide_id = "other"  # frozen
    assert r == RegionReport("s", (1.0, 2.0, 3.0, 4.0), 0.5, 3e-6, None, {"mitoses": 3, "tumour_mm2": 0.25})
    assert isinstance(hash(r), int)  # hashable despite the findings mapping


def test_region_report_refuses_findings_that_clash_or_are_not_numbers():
    with pytest.raises(ValueError, match="overwrite the report's own fields"):
        RegionReport("s", (0, 0, 1, 1), 1.0, 1e-6, None, {"mpp": 2.0})
    with pytest.raises(TypeError, match="bool"):
        RegionReport("s", (0, 0, 1, 1), 1.0, 1e-6, None, {"found": True})
    with pytest.raises((TypeError, ValueError)):
        RegionReport("s", (0, 0, 1, 1), 1.0, 1e-6, None, {"found": "many"})


def test_check_box():
    assert check_box([1, 2, 3, 4], "s") == (1.0, 2.0, 3.0, 4.0)
    assert all(type(v) is float for v in check_box(np.array([1, 2, 3, 4]), "s"))
    with pytest.raises(OracleError, match=r"s: a region box is \(x, y, w, h\)"):
        check_box((1, 2, 3), "s")
    with pytest.raises(OracleError, match="positive width"):
        check_box((0, 0, 0, 5), "s")
    with pytest.raises(OracleError, match="finite"):
        check_box((0, np.nan, 5, 5), "s")


def test_mpp_lookup_and_areas():
    assert mpp_for(None, "a") is None
    assert mpp_for(0.25, "a") == 0.25
    assert mpp_for({"a": 0.5}, "a") == 0.5 and mpp_for({"a": 0.5}, "b") is None
    assert require_mpp(0.3, {"a": 0.5}, "a") == 0.3  # the call wins
    assert require_mpp(None, {"a": 0.5}, "a") == 0.5
    with pytest.raises(OracleError, match="b: resolution unknown"):
        require_mpp(None, {"a": 0.5}, "b")
    with pytest.raises(OracleError, match="resolution unknown"):
        require_mpp(0.0, None, "a")
    assert px2_to_mm2(4000 ** 2, 0.25) == pytest.approx(1.0)


def test_call_reader_turns_reader_errors_into_oracle_errors(tmp_path):
    def missing(path):
        raise FileNotFoundError(path)

    def bad(path):
        raise AnnotationFileError(f"{path}: broken")

    with pytest.raises(OracleError, match="x.xml: no such file"):
        call_reader(missing, tmp_path / "x.xml")
    with pytest.raises(OracleError, match="x.xml: broken"):
        call_reader(bad, tmp_path / "x.xml")
    assert call_reader(lambda p, k: (p.name, k), Path("a.xml"), 3) == ("a.xml", 3)
    assert issubclass(NotAnnotatedError, OracleError) and issubclass(OracleError, (AlkitError, ValueError))


def test_load_synthetic_cohort_on_a_folder_that_is_not_a_cohort(tmp_path):
    with pytest.raises(OracleError, match="not a synthetic cohort"):
        load_synthetic_cohort(tmp_path)


def test_the_protocol_is_one_method():
    class Minimal:
        def region_report(self, slide_id, box, tissue_mm2=None, *, mpp=None):
            x, y, w, h = check_box(box, slide_id)
            return RegionReport(slide_id, (x, y, w, h), mpp, px2_to_mm2(w * h, mpp), tissue_mm2, {})

    assert isinstance(Minimal(), Oracle)
    assert not isinstance(object(), Oracle)
