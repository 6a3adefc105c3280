"""Fuzzing every file reader: generated and mutated inputs give a result or one AlkitError naming the file.

For each reader (ASAP XML, QuPath GeoJSON, NCRF JSON, SlideRunner SQLite, COCO JSON, caption tables,
embedding stores, pools, region lists) hypothesis mutates real files (../shared/data, or files alkit wrote)
and generates documents from the format's own vocabulary of keys. The property: the reader returns, or
raises an :class:`~alkit.errors.AlkitError` whose one-line message names the file; never another exception,
and nothing is written beside the input. Runs are derandomised (the same examples on every machine) and
small (``EXAMPLES`` each) to keep the suite's time in check.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alkit.errors import AlkitError

EXAMPLES = 30
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def check(read, path: Path, tmp: Path) -> None:
    """The property: ``read(path)`` returns or raises a one-line AlkitError naming ``path``; no new files."""
    before = sorted(tmp.rglob("*"))
    try:
        read(path)
    except AlkitError as exc:
        message = str(exc)
        assert path.name in message, f"error does not name the file: {message}"
        assert "\n" not in message, f"error is not one line: {message!r}"
    assert sorted(tmp.rglob("*")) == before, "a reader wrote files"


# ---------------------------------------------------------------------------------- generators

SCALARS = (st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=6))


def json_values(keys: list[str]) -> st.SearchStrategy:
    """JSON documents built from a format's own keys (so they get past the first checks) and odd scalars."""
    return st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.sampled_from(keys) | st.text(max_size=3), inner, max_size=5),
                        max_leaves=24)


@st.composite
def mutated_json(draw, seed: object, keys: list[str]) -> object:
    """``seed`` with one to three of its values (anywhere in the tree) replaced by generated ones."""
    doc = json.loads(json.dumps(seed))
    for _ in range(draw(st.integers(1, 3))):
        parent, key, node = None, None, doc
        while isinstance(node, (dict, list)) and node and draw(st.booleans()):
            parent = node
            key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
            node = node[key]
        value = draw(json_values(keys))
        if parent is None:
            doc = value
        elif isinstance(parent, list) and draw(st.booleans()):
            del parent[key]
        else:
            parent[key] = value
    return doc


@st.composite
def mutated_bytes(draw, seed: bytes) -> bytes:
    """``seed`` truncated, with bytes flipped, a run inserted or a range deleted (one to three times)."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(("truncate", "flip", "insert", "delete")))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "truncate":
            del data[pos:]
        elif op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[pos:pos + draw(st.integers(1, 64))]
    return bytes(data)


def write_doc(path: Path, doc: object) -> Path:
    path.write_text(json.dumps(doc, allow_nan=True))
    return path


def fresh(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A new empty folder per example (hypothesis reuses the function-scoped tmp_path) and a file in it."""
    folder = Path(tmp_path) / f"ex{len(list(Path(tmp_path).iterdir()))}"
    folder.mkdir()
    return folder, folder / name


# ---------------------------------------------------------------------------------- annotation formats

ASAP_KEYS = ["ASAP_Annotations", "Annotations", "Annotation", "Coordinates", "Coordinate", "AnnotationGroups"]


@pytest.fixture(scope="module")
def asap_seed(shared_data) -> bytes:
    return (shared_data / "annotations" / "camelyon16_asap_xml" / "Tumor_081.xml").read_bytes()


@FUZZ
@given(data=st.data())
def test_asap_xml(tmp_path, asap_seed, data):
    from alkit.annotations.asap import read_asap_xml

    folder, path = fresh(tmp_path, "a.xml")
    if data.draw(st.booleans()):
        path.write_bytes(data.draw(mutated_bytes(asap_seed)))
    else:  # a generated document: elements of ASAP's vocabulary with odd attribute values
        attrs = st.dictionaries(st.sampled_from(["X", "Y", "Order", "Name", "Type", "PartOfGroup"]),
                                st.sampled_from(["1", "-2.5", "nan", "inf", "", "x", "1e400"]), max_size=4)
        coords = "".join(f'<Coordinate {" ".join(f"{k}={v!r}" for k, v in a.items())}/>'
                         for a in data.draw(st.lists(attrs, max_size=4)))
        body = data.draw(st.sampled_from([f"<Annotations><Annotation><Coordinates>{coords}</Coordinates>"
                                          "</Annotation></Annotations>", f"<Annotations>{coords}</Annotations>",
                                          "", "<Annotations/>"]))
        root = data.draw(st.sampled_from(ASAP_KEYS))
        path.write_text(f"<{root}>{body}</{root}>")
    check(read_asap_xml, path, folder)


QUPATH_KEYS = ["type", "features", "geometry", "coordinates", "properties", "classification", "name", "names",
               "objectType", "id", "Feature", "FeatureCollection", "Polygon", "Point", "MultiPolygon"]
QUPATH_SEED = {"type": "FeatureCollection", "features": [
    {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 0]]]},
     "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]}}},
    {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]}, "properties": {"name": "m"}}]}


@FUZZ
@given(doc=mutated_json(QUPATH_SEED, QUPATH_KEYS) | json_values(QUPATH_KEYS))
def test_qupath_geojson(tmp_path, doc):
    from alkit.annotations.qupath import read_qupath_geojson

    folder, path = fresh(tmp_path, "q.geojson")
    check(read_qupath_geojson, write_doc(path, doc), folder)


NCRF_KEYS = ["positive", "negative", "name", "vertices", "type"]


@pytest.fixture(scope="module")
def ncrf_seed(shared_data) -> object:
    return json.loads((shared_data / "annotations" / "camelyon16_ncrf_json" / "Tumor_081.json").read_text())


@FUZZ
@given(data=st.data())
def test_ncrf_json(tmp_path, ncrf_seed, data):
    from alkit.annotations.ncrf import read_ncrf_json

    folder, path = fresh(tmp_path, "n.json")
    doc = data.draw(mutated_json(ncrf_seed, NCRF_KEYS) | json_values(NCRF_KEYS))
    if data.draw(st.booleans()):
        path.write_bytes(data.draw(mutated_bytes(json.dumps(doc).encode())))
    else:
        write_doc(path, doc)
    check(read_ncrf_json, path, folder)


COCO_KEYS = ["images", "annotations", "categories", "id", "file_name", "width", "height", "bbox", "image_id",
             "category_id", "name"]


@pytest.fixture(scope="module")
def coco_seed(shared_data) -> dict:
    """The first three images of MIDOG++ (real COCO), with their categories and annotations."""
    full = json.loads((shared_data / "annotations" / "midogpp" / "MIDOGpp.json").read_text())
    images = full["images"][:3]
    ids = {im["id"] for im in images}
    return {"images": images, "categories": full["categories"],
            "annotations": [a for a in full["annotations"] if a["image_id"] in ids][:6]}


@FUZZ
@given(data=st.data())
def test_coco_json(tmp_path, coco_seed, data):
    from alkit.annotations.coco import read_coco_points

    folder, path = fresh(tmp_path, "c.json")
    write_doc(path, data.draw(mutated_json(coco_seed, COCO_KEYS) | json_values(COCO_KEYS)))
    fmt = data.draw(st.sampled_from(["auto", "xywh", "xyxy"]))
    check(lambda p: read_coco_points(p, fmt), path, folder)


ODD_SQL_VALUES = [None, "x", "", 1e308, -1, 2**62, b"\x00\xff", 3.5, "nan"]


@pytest.fixture(scope="module")
def sliderunner_seed(shared_data) -> bytes:
    return (shared_data / "annotations" / "sliderunner" / "SlideRunner_demo.sqlite").read_bytes()


@FUZZ
@given(data=st.data())
def test_sliderunner(tmp_path, sliderunner_seed, data):
    from alkit.annotations.sliderunner import read_sliderunner

    folder, path = fresh(tmp_path, "s.sqlite")
    if data.draw(st.booleans()):
        path.write_bytes(data.draw(mutated_bytes(sliderunner_seed)))
    else:  # a valid database with odd values and missing pieces (what other tools write)
        path.write_bytes(sliderunner_seed)
        con = sqlite3.connect(path)
        for _ in range(data.draw(st.integers(1, 4))):
            table, column = data.draw(st.sampled_from([
                ("Annotations", "type"), ("Annotations", "agreedClass"), ("Annotations", "deleted"),
                ("Annotations", "slide"), ("Annotations_coordinates", "coordinateX"),
                ("Annotations_coordinates", "annoId"), ("Classes", "name"), ("Slides", "filename"),
                ("Annotations_label", "class")]))
            if data.draw(st.integers(0, 5)) == 0:
                con.execute(f"DROP TABLE IF EXISTS {table}")
            else:
                value, rows = data.draw(st.sampled_from(ODD_SQL_VALUES)), data.draw(st.integers(0, 2))
                try:
                    con.execute(f"UPDATE {table} SET {column} = ? WHERE uid % 3 = ?", (value, rows))
                except sqlite3.OperationalError:  # a column or table this schema version lacks
                    pass
        con.commit()
        con.close()
    drop = data.draw(st.booleans())
    check(lambda p: read_sliderunner(p, drop_deleted=drop), path, folder)


# ---------------------------------------------------------------------------------- caption tables

CAPTION_KEYS = ["id", "uuid", "caption", "text", "image", "tags", "source", "figure_id", "letter"]


@FUZZ
@given(data=st.data())
def test_caption_tables(tmp_path, data):
    from alkit.captions.database import open_database

    kind = data.draw(st.sampled_from(["captions.json", "t.json", "t.jsonl", "t.csv", "t.tsv"]))
    folder, path = fresh(tmp_path, kind)
    if kind.endswith(".json"):
        seed = {"0": {"caption": "A, tumour. B, mitosis", "uuid": "u0", "letter": "A"},
                "1": {"caption": "normal", "uuid": "u1", "image": "../../etc/passwd"}}
        write_doc(path, data.draw(mutated_json(seed, CAPTION_KEYS) | json_values(CAPTION_KEYS)))
    elif kind.endswith(".jsonl"):
        rows = data.draw(st.lists(json_values(CAPTION_KEYS), max_size=4))
        path.write_text("\n".join(json.dumps(r) for r in rows))
    else:
        sep = "," if kind.endswith(".csv") else "\t"
        cell = st.sampled_from(["id", "caption", "image", "x", "", '"', "a,b", "../x.png", "1"])
        lines = data.draw(st.lists(st.lists(cell, min_size=1, max_size=4), max_size=5))
        path.write_bytes(data.draw(mutated_bytes("\n".join(sep.join(r) for r in lines).encode())))
    check(open_database, path, folder)


# ---------------------------------------------------------------------------------- stores, pools, regions

STORE_ATTRS = {"encoder": "handcrafted", "weights_id": "w", "dim": 4, "mpp": 0.5, "patch": 32, "stride": 32,
               "min_tissue": 0.5, "slide": "s1", "slide_path": "/nonexistent/s1.svs", "slide_content_id": "file:x",
               "slide_dimensions": [128, 96], "slide_mpp": 0.25, "grid_shape": [2, 4]}
STORE_KEYS = list(STORE_ATTRS)


@pytest.fixture(scope="module")
def store_seed(tmp_path_factory) -> bytes:
    from alkit.embeddings.store import write_store

    path = tmp_path_factory.mktemp("store_seed") / "s.h5"
    rng = np.random.default_rng(0)
    write_store(path, [[0, 0], [1, 3]], rng.normal(size=(2, 4)).astype(np.float32), STORE_ATTRS,
                np.full((2, 4), 0.75, np.float32))
    return path.read_bytes()


def read_store_every_way(path: Path) -> None:
    from alkit.embeddings.cohort import Cohort
    from alkit.embeddings.store import EmbeddingStore, StoreHeader, is_cached, read_attrs

    assert is_cached(path, STORE_ATTRS) in (True, False)  # a cache check never raises
    read_attrs(path)
    header = StoreHeader.load(path)
    list(header.feature_chunks(1))
    store = EmbeddingStore.load(path)
    store.as_map()
    Cohort.from_stores([path]).ids


@FUZZ
@given(data=st.data())
def test_stores(tmp_path, store_seed, data):
    folder, path = fresh(tmp_path, "s.h5")
    if data.draw(st.booleans()):  # truncated (a crash, a copy cut short); see SECURITY.md for crafted HDF5
        path.write_bytes(store_seed[:data.draw(st.integers(0, len(store_seed) - 1))])
    else:  # a well-formed HDF5 file with odd attributes and datasets
        path.write_bytes(store_seed)
        with h5py.File(path, "a") as f:
            attrs = json.loads(f.attrs["alkit"])
            f.attrs["alkit"] = json.dumps(data.draw(mutated_json(attrs, STORE_KEYS)), allow_nan=True)
            name = data.draw(st.sampled_from(["coords", "features", "tissue_fraction", None]))
            if name is not None:
                del f[name]
                if data.draw(st.booleans()):
                    shape = data.draw(st.lists(st.integers(0, 5), max_size=3))
                    dtype = data.draw(st.sampled_from(["f4", "i4", "u1", "S3"]))
                    f.create_dataset(name, data=np.zeros(shape, dtype))
    check(read_store_every_way, path, folder)


POOL_KEYS = ["format", "format_version", "regions", "cycle_metrics", "slide", "box", "cycle", "strategy",
             "cls", "score", "tissue_mm2", "tumour_mm2"]
POOL_SEED = {"format": "alkit-pool", "format_version": 1,
             "regions": [{"slide": "s1", "box": [0, 0, 64, 64], "cycle": 0, "strategy": "random", "cls": None,
                          "score": None, "tissue_mm2": 0.1, "tumour_mm2": 0.0}],
             "cycle_metrics": {"0": {"miou": 0.5}}}


@FUZZ
@given(doc=mutated_json(POOL_SEED, POOL_KEYS) | json_values(POOL_KEYS))
def test_pools(tmp_path, doc):
    from alkit.al.pool import LabeledPool

    folder, path = fresh(tmp_path, "pool.json")

    def read(p: Path) -> None:
        pool = LabeledPool.open(p)
        pool.labeled()
        pool.budget_used(1.0)
        pool.last_cycle

    check(read, write_doc(path, doc), folder)


REGION_KEYS = ["slide", "x", "y", "w", "h", "strategy", "class", "score"]
REGION_SEED = [{"slide": "s1", "x": 0, "y": 0, "w": 64, "h": 64, "strategy": "random", "class": None, "score": 0.5}]


@FUZZ
@given(doc=mutated_json(REGION_SEED, REGION_KEYS) | json_values(REGION_KEYS))
def test_region_lists(tmp_path, doc):
    from alkit.tasks.segmentation.annotator import load_regions

    folder, path = fresh(tmp_path, "regions.json")
    check(load_regions, write_doc(path, doc), folder)
