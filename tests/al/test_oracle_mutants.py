"""Oracle helpers' details the other oracle tests leave open (found by mutation testing): box size limits,
reserved finding names, the finding named in a type error, the mpp message, reader keyword arguments and
loading a synthetic cohort from its folder. Expected values are written out by hand."""

from __future__ import annotations

import pytest

from alkit.al.oracle import OracleError, RegionReport, call_reader, check_box, load_synthetic_cohort, require_mpp


def test_boxes_below_one_pixel_are_valid_and_zero_size_is_not():
    assert check_box((0, 0, 0.5, 0.25), "s") == (0.0, 0.0, 0.5, 0.25)
    for box in ((0, 0, 0, 1), (0, 0, 1, 0), (0, 0, 1, -1), (0, 0, float("inf"), 1)):
        with pytest.raises(OracleError, match="must be finite with positive width and height"):
            check_box(box, "s")


@pytest.mark.parametrize("name", ["slide_id", "box", "mpp", "region_mm2", "tissue_mm2"])
def test_findings_may_not_reuse_the_reports_own_field_names(name):
    with pytest.raises(ValueError, match=rf"findings \['{name}'\] would overwrite"):
        RegionReport("s", (0, 0, 1, 1), 0.5, 1e-6, None, {name: 1, "mitoses": 2})


def test_a_bool_finding_is_refused_by_name():
    with pytest.raises(TypeError, match="finding 'mitoses' must be a number, got a bool"):
        RegionReport("s", (0, 0, 1, 1), 0.5, 1e-6, None, {"mitoses": True})


def test_unknown_mpp_message():
    with pytest.raises(OracleError) as err:
        require_mpp(None, {"other": 0.25}, "s1")
    assert str(err.value) == ("s1: resolution unknown; give the oracle mpp= (µm/px, per slide or for all) "
                              "or pass mpp= to region_report")


def test_reader_keyword_arguments_are_passed_on(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"caf\xe9")
    assert call_reader(type(path).read_text, path, encoding="latin-1") == "café"
    with pytest.raises(OracleError):  # read as UTF-8 it is malformed
        call_reader(type(path).read_text, path)


def test_a_cohort_is_loaded_from_its_folder(synthetic_cohort):
    loaded = load_synthetic_cohort(synthetic_cohort.root)
    assert loaded is not synthetic_cohort
    assert [s.slide_id for s in loaded.slides] == [s.slide_id for s in synthetic_cohort.slides]
    assert load_synthetic_cohort(synthetic_cohort) is synthetic_cohort
