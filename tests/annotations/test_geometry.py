"""Geometry rules of annotated areas (alkit.annotations.geometry): repair, union, exclusions, classes."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import shapely
from shapely.geometry import LineString, Point, Polygon

from alkit.annotations.geometry import (EMPTY_POLYGON, boxes_union, class_names, polygon_parts, ring_polygons,
                                        split_by_class, union_minus_exclusions, valid_union)

BOWTIE = [(0, 0), (100, 100), (100, 0), (0, 100)]  # self-crossing: two 2500 px² lobes


def test_make_valid_keeps_both_lobes_where_buffer0_drops_one():
    assert valid_union([Polygon(BOWTIE)]).area == pytest.approx(5000)
    assert Polygon(BOWTIE).buffer(0).area == pytest.approx(2500)  # why buffer(0) is not used
    assert union_minus_exclusions([np.array(BOWTIE, float)]).area == pytest.approx(5000)


def test_union_counts_overlaps_once_and_cuts_exclusions():
    square = shapely.box(0, 0, 200, 200)
    overlap = shapely.box(100, 0, 300, 200)
    hole = np.array([(20, 20), (60, 20), (60, 60), (20, 60)], float)
    geom = union_minus_exclusions([square, overlap], [hole])
    assert geom.area == pytest.approx(300 * 200 - 40 * 40)
    assert geom.geom_type in ("Polygon", "MultiPolygon") and geom.is_valid
    # touching exclusions leave no slivers of other types: the result stays polygonal
    assert union_minus_exclusions([square], [square]).geom_type in ("Polygon", "MultiPolygon")
    assert union_minus_exclusions([]).is_empty


def test_degenerate_rings_are_skipped_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="alkit.annotations.geometry"):
        polys = ring_polygons([np.array([(1, 1), (2, 2)]), np.array([(0, 0), (0, 0), (1, 1)]),
                               np.array([(0, 0), (4, 0), (4, 4)])], "src.xml")
    assert len(polys) == 1 and polys[0].area == pytest.approx(8)
    assert "src.xml: 2 polygon(s) with fewer than 3 distinct vertices skipped" in caplog.text


def test_polygon_parts_flatten_collections_and_drop_other_types():
    coll = shapely.GeometryCollection([shapely.MultiPolygon([shapely.box(0, 0, 1, 1), shapely.box(2, 2, 3, 3)]),
                                       Point(5, 5), LineString([(0, 0), (1, 1)]), Polygon()])
    parts = polygon_parts([coll])
    assert len(parts) == 2 and all(p.geom_type == "Polygon" for p in parts)
    assert valid_union([]) is EMPTY_POLYGON


def test_split_by_class_is_case_insensitive():
    pos, neg = split_by_class([("TUMOR", "a"), ("_2", "b"), (None, "c"), ("other", "d")],
                              class_names(["tumor"]), class_names(["_2"]), "src")
    assert (pos, neg) == (["a"], ["b"])


def test_boxes_union():
    u = boxes_union(np.array([[0, 0, 10, 10], [5, 0, 10, 10]], float))
    assert u.area == pytest.approx(150)
    assert boxes_union(np.zeros((0, 4))).is_empty
