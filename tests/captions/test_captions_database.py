"""Caption databases as one table: ARCH (real captions, synthetic images), hostile folders, generic tables,
OpenPath-style embeddings."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from alkit.captions import (CaptionDB, CaptionDBError, load_arch, load_arch_set, load_openpath, load_table,
                            open_database, parse_columns)
from alkit.synthetic import generate_cohort


@pytest.fixture(scope="module")
def synth_db_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth_captions")
    generate_cohort(out, n_slides=0, seed=5, n_caption_images=12, progress=False)
    return out / "captions"


def _png(path: Path, rgb=(200, 100, 150), size=(40, 30), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = rgb if mode == "RGB" else (*rgb, 0)
    Image.new(mode, size, colour).save(path)


# ---------------------------------------------------------------------- ARCH


def test_real_arch_captions_without_images(shared_data):
    root = shared_data / "captions" / "arch"
    db = open_database(root)
    assert len(db) == 4305 + 3309 and db.name == "arch"
    assert db.table["source"].value_counts().to_dict() == {"books_set": 4305, "pubmed_set": 3309}
    r = db.report
    assert (r.rows, r.with_image, r.missing_images, r.duplicate_ids, r.escaping_paths) == (7614, 0, 7614, 0, 0)
    assert r.empty_captions == 4 and "captions only" in r.summary()
    assert not db.has_image.any()
    books = load_arch_set(root / "books_set")
    e = books.entry("338da1f7-73c0-4534-9b2d-85c7dd8623ab")
    assert (e["letter"], e["figure_id"], e["source"]) == ("B", "020", "books_set")
    assert e["text"] == "B, Osteoblastic metastasis of carcinoma from the breast." and "stomach" in e["caption"]
    pub = db.entry("3f93c716-8fc9-42e9-bc29-bec52a51ab4b")
    assert pub["letter"] == "" and pub["text"] == pub["caption"].strip()
    with pytest.raises(CaptionDBError, match="no image for id"):
        db.read_image("3f93c716-8fc9-42e9-bc29-bec52a51ab4b")
    # the same set through its captions.json
    assert len(open_database(root / "pubmed_set" / "captions.json")) == 3309


def test_synthetic_arch_set_with_images(synth_db_dir):
    db = load_arch(synth_db_dir)
    caps = json.loads((synth_db_dir / "captions.json").read_text())
    assert len(db) == 12 == db.report.with_image and db.has_image.all()
    assert db.ids == [v["uuid"] for v in caps.values()]
    first = next(iter(caps.values()))
    image = db.read_image(first["uuid"])
    with Image.open(synth_db_dir / "images" / f"{first['uuid']}.png") as im:
        assert np.array_equal(image, np.asarray(im.convert("RGB")))
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


def test_hostile_arch_set_is_counted_and_never_read_outside(tmp_path):
    root, outside = tmp_path / "db" / "books_set", tmp_path / "secret"
    _png(outside / "secret.png")
    for name in ("u1", "u2", "u4"):
        _png(root / "images" / f"{name}.png")
    (root / "images" / "u5.png").symlink_to(outside / "secret.png")  # a link leading out of the root
    _png(root / "images" / "u6.jpg", size=(8, 8))
    entries = [
        {"uuid": "u1", "caption": " A, one. B, two.", "letter": "A", "figure_id": "0"},
        {"uuid": "u2", "caption": " two", "letter": "Single", "figure_id": "1"},
        {"uuid": "u1", "caption": " duplicate of u1", "letter": "Single", "figure_id": "2"},
        {"uuid": "u3", "caption": " image missing", "letter": "Single", "figure_id": "3"},
        {"uuid": "../../secret/secret", "caption": " escapes with ../", "letter": "Single", "figure_id": "4"},
        {"uuid": "u5", "caption": " symlink out", "letter": "Single", "figure_id": "5"},
        {"uuid": "u6", "caption": " a jpg", "letter": "Single", "figure_id": "6"},
    ]
    (root / "captions.json").write_text(json.dumps({str(i): e for i, e in enumerate(entries)}))
    db = open_database(tmp_path / "db")  # an ARCH root holding one set
    r = db.report
    assert (r.rows, r.with_image, r.duplicate_ids, r.missing_images, r.escaping_paths) == (6, 3, 1, 1, 2)
    assert r.examples["duplicate_ids"] == ["u1"] and r.examples["missing_images"] == ["u3"]
    assert set(r.examples["escaping_paths"]) == {"../../secret/secret", "u5"}
    assert db.entry("u1")["caption"] == " A, one. B, two." and db.entry("u1")["text"] == "A, one."
    assert db.read_image("u6").shape == (8, 8, 3)
    for bad in ("../../secret/secret", "u5", "u3"):
        with pytest.raises(CaptionDBError, match="no image"):
            db.read_image(bad)
    # a path planted in the table afterwards is refused at read time as well
    db.table.loc[db.table["id"] == "u2", "image"] = str(outside / "secret.png")
    with pytest.raises(CaptionDBError, match="outside the caption database root"):
        db.read_image("u2")


def test_arch_errors(tmp_path):
    with pytest.raises(CaptionDBError, match="no such"):
        open_database(tmp_path / "absent")
    with pytest.raises(CaptionDBError, match="neither an ARCH set"):
        open_database(tmp_path)
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "captions.json").write_text("{not json")
    with pytest.raises(CaptionDBError, match="not valid JSON"):
        load_arch(tmp_path / "set")
    (tmp_path / "set" / "captions.json").write_text(json.dumps({"0": {"caption": "no uuid"}}))
    with pytest.raises(CaptionDBError, match="lack 'uuid'"):
        load_arch(tmp_path / "set")


def test_concat_drops_and_counts_duplicates(synth_db_dir, tmp_path):
    a = load_arch(synth_db_dir)
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "captions.json").write_text((synth_db_dir / "captions.json").read_text())
    b = load_arch(copy)  # same ids, no images
    both = CaptionDB.concat([a, b])
    assert len(both) == 12 and both.report.duplicate_ids == 12 and both.has_image.all()


# ---------------------------------------------------------------------- tables


def _table_rows(tmp_path: Path) -> list[dict]:
    for name in ("a.png", "sub/b.png"):
        _png(tmp_path / name)
    _png(tmp_path / "c.png", mode="RGBA")  # fully transparent: composited on white
    return [
        {"image_id": 10, "text": "tumour one", "file": "a.png", "labels": "#BreastPath, #Pathology"},
        {"image_id": 11, "text": "tumour two", "file": "sub/b.png", "labels": ""},
        {"image_id": 12, "text": "transparent", "file": "c.png", "labels": "#BreastPath"},
        {"image_id": 13, "text": "escapes", "file": "../outside.png", "labels": ""},
        {"image_id": 14, "text": "absolute inside", "file": str(tmp_path / "a.png"), "labels": ""},
        {"image_id": 15, "text": "missing", "file": "nope.png", "labels": ""},
        {"image_id": 10, "text": "duplicate", "file": "a.png", "labels": ""},
    ]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "json", "parquet"])
def test_generic_tables_with_a_column_mapping(tmp_path, fmt):
    rows = _table_rows(tmp_path)
    _png(tmp_path.parent / "outside.png")
    path = tmp_path / f"table.{fmt}"
    df = pd.DataFrame(rows)
    if fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "tsv":
        df.to_csv(path, sep="\t", index=False)
    elif fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    else:
        df.to_parquet(path)
    db = load_table(path, columns=parse_columns("id=image_id,caption=text,image=file,tags=labels"))
    r = db.report
    assert (r.rows, r.with_image, r.duplicate_ids, r.escaping_paths, r.missing_images) == (6, 4, 1, 1, 1)
    assert db.ids == ["10", "11", "12", "13", "14", "15"]
    assert db.entry("10")["tags"] == ("BreastPath", "Pathology") and db.entry("11")["tags"] == ()
    assert db.entry("10")["caption"] == "tumour one" == db.entry("10")["text"]
    assert np.all(db.read_image("12") == 255)
    assert db.read_image("11").shape == (30, 40, 3)
    assert db.entry("10")["source"] == path.name


def test_table_default_column_names_and_errors(tmp_path):
    _png(tmp_path / "x.png")
    path = tmp_path / "t.csv"
    pd.DataFrame({"uuid": ["u"], "caption": ["c"], "path": ["x.png"]}).to_csv(path, index=False)
    db = load_table(path)
    assert db.ids == ["u"] and db.has_image.all()
    with pytest.raises(CaptionDBError, match="no column 'nope'"):
        load_table(path, columns={"caption": "nope"})
    with pytest.raises(CaptionDBError, match="unknown column role"):
        load_table(path, columns={"picture": "path"})
    pd.DataFrame({"key": ["u"], "words": ["c"]}).to_csv(path, index=False)
    with pytest.raises(CaptionDBError, match="which column is the id"):
        load_table(path)
    with pytest.raises(CaptionDBError, match="ROLE=COLUMN"):
        parse_columns("id:key")
    with pytest.raises(CaptionDBError, match="unknown table format"):
        (tmp_path / "t.xlsx").write_text("x")
        load_table(tmp_path / "t.xlsx")


def test_openpath_style_embeddings_and_table(tmp_path, caplog):
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((5, 8)).astype(np.float32)
    np.save(tmp_path / "emb.npy", emb)  # not normalised: normalised on loading, with a warning
    pd.DataFrame({"id": [f"t{i}" for i in range(5)], "hashtag": ["#BreastPath", "#GIPath", "#BreastPath #DermPath",
                                                                  "", "#gipath"],
                  "text": [f"tweet {i}" for i in range(5)]}).to_csv(tmp_path / "tweets.tsv", sep="\t", index=False)
    db = load_openpath(tmp_path / "emb.npy", tmp_path / "tweets.tsv")
    assert db.embedding_encoder == "plip" and db.embeddings.shape == (5, 8)
    assert np.allclose(np.linalg.norm(db.embeddings, axis=1), 1)
    assert np.allclose(db.embeddings, emb / np.linalg.norm(emb, axis=1, keepdims=True))
    assert "not L2-normalised" in caplog.text
    assert db.entry("t2")["tags"] == ("BreastPath", "DermPath") and db.entry("t1")["caption"] == "tweet 1"
    assert db.report.missing_images == 0 and not db.has_image.any()
    # npz with a named array, through open_database
    np.savez(tmp_path / "emb.npz", image_embeddings=emb[:4])
    with pytest.raises(CaptionDBError, match="5 table rows but 4 embedding rows"):
        open_database(tmp_path / "tweets.tsv", embeddings=tmp_path / "emb.npz", embedding_encoder="plip")
    with pytest.raises(CaptionDBError, match="need the name of the encoder"):
        open_database(tmp_path / "tweets.tsv", embeddings=tmp_path / "emb.npy")
    # duplicate ids drop their embedding rows too
    pd.DataFrame({"id": ["a", "b", "a", "c", "d"], "caption": list("vwxyz")}).to_csv(tmp_path / "d.csv", index=False)
    db = load_table(tmp_path / "d.csv", embeddings=emb, embedding_encoder="plip")
    assert db.ids == ["a", "b", "c", "d"] and db.report.duplicate_ids == 1
    assert np.allclose(db.embeddings[2], emb[3] / np.linalg.norm(emb[3]))
    sub = db.subset(["d", "a"])
    assert sub.ids == ["d", "a"] and np.allclose(sub.embeddings, db.embeddings[[3, 0]])
    with pytest.raises(CaptionDBError, match="not in the caption database"):
        db.subset(["zz"])
    os.remove(tmp_path / "emb.npy")
    with pytest.raises(CaptionDBError, match="no such embeddings file"):
        load_openpath(tmp_path / "emb.npy", tmp_path / "tweets.tsv")
