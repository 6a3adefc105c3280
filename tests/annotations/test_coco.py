"""COCO-style JSON read as box centres (alkit.annotations.coco): box layouts, grouping, malformed files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from alkit.annotations import AnnotationFileError
from alkit.annotations.coco import read_coco_points


def _write(tmp_path, boxes, *, size=(1000, 800), cats=("a", "b"), name="c.json"):
    coco = {"images": [{"id": 1, "file_name": "dir/x.tiff", "width": size[0], "height": size[1]},
                       {"id": 2, "file_name": "y.png"}],
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(cats)],
            "annotations": [{"image_id": im, "category_id": c, "bbox": b} for im, c, b in boxes]}
    path = tmp_path / name
    path.write_text(json.dumps(coco))
    return path


def test_xywh_boxes_and_file_order_grouping(tmp_path):
    path = _write(tmp_path, [(1, 1, [900, 700, 50, 40]), (1, 2, [10, 20, 30, 40]), (2, 1, [0, 0, 2, 2]),
                             (1, 1, [100, 100, 10, 10])])
    pts = read_coco_points(path)
    assert pts.bbox_format == "xywh"
    np.testing.assert_array_equal(pts.points, [[925, 720], [25, 40], [1, 1], [105, 105]])
    assert pts.stems == ("x", "x", "y", "x") and pts.categories == ("a", "b", "a", "a")
    by_cat = pts.grouped()
    assert set(by_cat) == {"a", "b"}
    np.testing.assert_array_equal(by_cat["a"]["x"], [[925, 720], [105, 105]])
    np.testing.assert_array_equal(by_cat["a"]["y"], [[1, 1]])
    # two categories into one group keep the file's order; None drops a category
    merged = pts.grouped({"a": "one", "b": "one"})
    np.testing.assert_array_equal(merged["one"]["x"], [[925, 720], [25, 40], [105, 105]])
    assert set(pts.grouped(lambda name: None if name == "b" else name)) == {"a"}


def test_corner_boxes_are_detected_and_can_be_forced(tmp_path):
    # as xywh these centres fall outside the 1000 x 800 image; as corners they are inside
    path = _write(tmp_path, [(1, 1, [700, 600, 720, 620]), (1, 2, [10, 20, 40, 60])])
    pts = read_coco_points(path)
    assert pts.bbox_format == "xyxy"
    np.testing.assert_array_equal(pts.points, [[710, 610], [25, 40]])
    assert read_coco_points(path, "xywh").bbox_format == "xywh"
    with pytest.raises(ValueError, match="bbox_format must be"):
        read_coco_points(path, "cxcywh")
    neither = _write(tmp_path, [(1, 1, [50, 50, 10, -5])], name="n.json")
    with pytest.raises(AnnotationFileError, match="n.json: bboxes read neither"):
        read_coco_points(neither)


@pytest.mark.parametrize("content, fragment", [
    ({"images": []}, "not COCO-style JSON"),
    ({"images": [{"id": 1}], "annotations": [], "categories": []}, "an image lacks 'id'/'file_name'"),
    ({"images": [], "annotations": [{"image_id": 1}], "categories": []}, "every annotation needs"),
    ({"images": [{"id": 1, "file_name": "a"}], "categories": [{"id": 1, "name": "m"}],
      "annotations": [{"image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1]}]}, "refers to unknown image_id 2"),
    ({"images": [{"id": 1, "file_name": "a"}], "categories": [{"id": 1, "name": "m"}],
      "annotations": [{"image_id": 1, "category_id": 1, "bbox": [0, 0, "nan", 1]}]}, "non-finite bbox"),
])
def test_malformed_files_name_the_file(tmp_path, content, fragment):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(AnnotationFileError, match=fragment) as err:
        read_coco_points(path)
    assert str(path) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.json: no such COCO JSON file"):
        read_coco_points(tmp_path / "absent.json")
