"""Hostile-but-realistic input: ids that are paths, crash leftovers, corrupt caches, absurd options.

Each writer that makes per-slide files is tried with hostile slide ids and must fail with a one-line
error before writing anything, never write outside its output folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from alkit.cli import build_parser, main
from alkit.errors import AlkitError
from alkit.ids import MAX_ID_LENGTH, IdError, check_id, id_path, safe_name

HOSTILE_IDS = ["../x", "../../x", "/tmp/x", "a/../../x", "..", ".", "x\x00y", "a\\..\\x", "C:x", "x" * 5000,
               "\u2215tmp\u2215x", "\uff0e\uff0e", "\u2024\u2024", "a\uff0fb", "x\u202ey", "", "   ", "a\nb"]


def tree(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ---------------------------------------------------------------------------------- ids


@pytest.mark.parametrize("bad", HOSTILE_IDS)
def test_check_id_refuses_paths_and_lookalikes(bad):
    with pytest.raises(IdError, match="store.h5: slide id .* is not an id") as info:
        check_id(bad, source="store.h5")
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


@pytest.mark.parametrize("good, name", [("Tumor_001", "Tumor_001"), ("slide A", "slide-A"), ("a.b-c", "a.b-c"),
                                        (".hidden", "_hidden"), ("..x", "__x"), ("TCGA-AB-01.1", "TCGA-AB-01.1")])
def test_safe_name_is_a_plain_visible_file_name(good, name):
    assert check_id(good) == good
    assert safe_name(good) == name


def test_safe_name_of_ids_without_ascii_or_too_long_is_a_digest():
    assert safe_name("病理").startswith("id-") and safe_name("病理") != safe_name("切片")
    long = safe_name("a" * MAX_ID_LENGTH)
    assert len(long) <= 120 and long != safe_name("a" * (MAX_ID_LENGTH - 1))
    with pytest.raises(IdError, match="more than 200"):
        check_id("a" * (MAX_ID_LENGTH + 1))
    with pytest.raises(IdError, match="must be a string"):
        check_id(["x"])


def test_id_path_stays_in_its_folder(tmp_path):
    assert id_path(tmp_path / "qupath", "slide A", ".geojson") == tmp_path / "qupath" / "slide-A.geojson"
    for bad in HOSTILE_IDS:
        with pytest.raises(IdError):
            id_path(tmp_path, bad, ".png")


# ---------------------------------------------------------------------------------- writers with hostile ids

STORE_ATTRS = {"encoder": "handcrafted", "weights_id": "w", "dim": 4, "mpp": 0.5, "patch": 32, "stride": 32,
               "min_tissue": 0.5, "slide_content_id": "file:x", "slide_dimensions": [256, 256], "slide_mpp": 0.25,
               "grid_shape": [4, 4]}


def write_stores(folder, ids) -> list:
    from alkit.embeddings.store import write_store

    rng = np.random.default_rng(0)
    coords = np.array([(r, c) for r in range(4) for c in range(4)])
    return [write_store(folder / f"s{i}.h5", coords, rng.normal(size=(16, 4)).astype(np.float32),
                        {**STORE_ATTRS, "slide": sid, "slide_path": str(folder / f"{i}.svs")},
                        np.ones((4, 4), np.float32)) for i, sid in enumerate(ids)]


@pytest.mark.parametrize("bad", ["/tmp/alkit-hostile-x", "../../x", "..", "a\u2215b", "x\x00y"])
def test_select_refuses_a_store_whose_slide_id_is_a_path(tmp_path, capsys, bad):
    stores = tmp_path / "lab" / "stores"
    stores.mkdir(parents=True)
    write_stores(stores, ["ok", bad])
    out = tmp_path / "lab" / "sel"
    before = tree(tmp_path)
    assert main(["select", "--stores", str(stores), "--strategy", "random", "--n", "1", "--size", "64",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("alkit: error:") and "s1.h5" in err and "'slide' attribute" in err and "\n" not in err
    assert tree(tmp_path) == before  # nothing written anywhere
    assert not os.path.exists("/tmp/alkit-hostile-x.geojson")


def test_select_still_exports_plain_ids_under_their_names(tmp_path):
    stores = tmp_path / "stores"
    stores.mkdir()
    write_stores(stores, ["slide A", "B_2"])
    out = tmp_path / "sel"
    assert main(["select", "--stores", str(stores), "--strategy", "random", "--n", "1", "--size", "64",
                 "--out", str(out)]) == 0
    assert {p.name for p in (out / "qupath").iterdir()} == {"slide-A.geojson", "B_2.geojson"}
    assert {p.name for p in (out / "png").iterdir()} == {"slide-A.png", "B_2.png"}
    regions = json.loads((out / "regions.json").read_text())["regions"]
    assert {r["slide"] for r in regions} == {"slide A", "B_2"}  # the ids themselves, unchanged


@pytest.mark.parametrize("bad", ["../escape", "/tmp/alkit-hostile-y", "\uff0e\uff0e"])
def test_export_writer_checks_ids_itself(tmp_path, bad):
    """write_selection given a cohort built in code (no store check) still refuses, before any write."""
    from alkit.embeddings.cohort import Cohort, CohortSlide
    from alkit.selection.export import write_selection
    from alkit.selection.strategy import RegionPick, Selection
    from alkit.wsi.grid import PatchGrid

    grid = PatchGrid((256, 256), 0.25, 0.5, 32, 32, np.ones((4, 4), np.float32))
    cohort = Cohort([CohortSlide("fine", tmp_path / "a.h5", tmp_path / "a.svs", grid),
                     CohortSlide(bad, tmp_path / "b.h5", tmp_path / "b.svs", grid)])
    selection = Selection("random", [RegionPick(bad, (0, 0, 64, 64), "random")])
    out = tmp_path / "out"
    with pytest.raises(IdError, match="b.h5"):
        write_selection(selection, cohort, out)
    assert not out.exists() and tree(tmp_path) == []


def test_export_refuses_two_ids_sharing_a_file_name(tmp_path):
    stores = tmp_path / "stores"
    stores.mkdir()
    write_stores(stores, ["a b", "a-b"])
    out = tmp_path / "sel"
    assert main(["select", "--stores", str(stores), "--strategy", "random", "--n", "1", "--size", "64",
                 "--out", str(out)]) == 2
    assert not out.exists()


@pytest.mark.parametrize("bad", ["../x", "/abs/x", "a\x00", "\u2044x"])
def test_store_paths_and_pools_refuse_hostile_ids(tmp_path, bad):
    from alkit.al.pool import LabeledPool, PoolError
    from alkit.embeddings.store import StoreError, store_path

    with pytest.raises(StoreError):
        store_path(tmp_path, bad, "handcrafted", 0.5, 256, 256)
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps({"format": "alkit-pool", "format_version": 1, "cycle_metrics": {},
                                "regions": [{"slide": bad, "box": [0, 0, 8, 8], "cycle": 0, "strategy": "r"}]}))
    with pytest.raises(PoolError, match="pool.json: region #0's slide id"):
        LabeledPool.open(pool)


def test_embed_refuses_a_slide_file_whose_name_is_not_an_id(tmp_path, wsi, capsys):
    odd = tmp_path / "a\u2215b.svs"
    shutil.copy(wsi("small.svs"), odd)
    out = tmp_path / "stores"
    assert main(["embed", str(odd), "--out", str(out), "--workers", "0", "--accelerator", "cpu", "-q"]) == 2
    assert "look-alike" in capsys.readouterr().err
    assert not out.exists()


# ---------------------------------------------------------------------------------- leftovers and caches


def test_readers_skip_temporary_and_hidden_files(tmp_path):
    from alkit.embeddings.cohort import Cohort

    write_stores(tmp_path, ["s"])
    (tmp_path / ".s0.4242.0123abcd.tmp.h5").write_bytes(b"half a store")  # what a killed writer leaves
    (tmp_path / "._s0.h5").write_bytes(b"\x00\x05\x16\x07")  # macOS side file
    assert Cohort.from_store_dir(tmp_path).ids == ["s"]


def test_stale_temporary_files_go_live_ones_stay(tmp_path):
    from alkit.atomic import TEMP_NAME, remove_stale_temps, temp_name

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".x.{int(dead.stdout)}.0123abcd.tmp.h5"
    mine = temp_name(tmp_path / "y.h5")
    other_suffix = tmp_path / f".z.{int(dead.stdout)}.0123abcd.tmp.json"
    plain = tmp_path / ".keep"
    here = TEMP_NAME.match(mine.name)["stem"].rpartition("@")[2]  # this machine, as temporary names carry it
    dead_here = tmp_path / f".w@{here}.{int(dead.stdout)}.0123abcd.tmp.h5"
    # another node writing into the same shared folder, with a pid that is dead here: still writing there
    elsewhere = tmp_path / f".v@not-{here}.{int(dead.stdout)}.0123abcd.tmp.h5"
    for p in (stale, mine, other_suffix, plain, dead_here, elsewhere):
        p.write_bytes(b"x")
    assert mine.name.startswith(".y@") and here
    assert sorted(remove_stale_temps(tmp_path, ".h5")) == sorted([stale, dead_here])
    assert mine.exists() and other_suffix.exists() and plain.exists() and elsewhere.exists()


def test_a_truncated_caption_embedding_cache_is_recomputed(tmp_path, caplog):
    from PIL import Image

    from alkit.captions import ImagePrep, open_database
    from alkit.captions.images import ImageEmbedder
    from alkit.embeddings.encoders import get_encoder

    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "db.csv").write_text("id,caption,image\n" + "".join(f"i{i},tumour {i},{i}.png\n" for i in range(3)))
    db = open_database(tmp_path / "db.csv")
    encoder = get_encoder("handcrafted")

    def embedder() -> ImageEmbedder:
        return ImageEmbedder(encoder, ImagePrep("crop", 64), cache_dir=tmp_path / "cache", workers=1)

    first = embedder()
    expected = first.embed(db, db.ids)
    cache = first.cache_file
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])  # a crash or a full disk
    again = embedder()
    with caplog.at_level(logging.WARNING):
        got = again.embed(db, db.ids)
    assert again.computed == 3 and again.from_cache == 0
    assert "unreadable embedding cache" in caplog.text and "recomputing" in caplog.text
    np.testing.assert_allclose(got, expected, atol=1e-6)
    third = embedder()
    third.embed(db, db.ids)
    assert third.from_cache == 3  # rewritten whole


# ---------------------------------------------------------------------------------- options at parse time

BAD_OPTIONS = [
    ["embed", "s.svs", "--out", "o", "--patch", "0"], ["embed", "s.svs", "--out", "o", "--patch", "-128"],
    ["embed", "s.svs", "--out", "o", "--patch", "100000000"], ["embed", "s.svs", "--out", "o", "--stride", "0"],
    ["embed", "s.svs", "--out", "o", "--stride", "-64"], ["embed", "s.svs", "--out", "o", "--mpp", "-0.5"],
    ["embed", "s.svs", "--out", "o", "--mpp", "0"], ["embed", "s.svs", "--out", "o", "--mpp", "nan"],
    ["embed", "s.svs", "--out", "o", "--batch-size", "0"], ["embed", "s.svs", "--out", "o", "--workers", "-1"],
    ["embed", "s.svs", "--out", "o", "--min-tissue", "2"], ["embed", "s.svs", "--out", "o", "--min-tissue", "-0.1"],
    ["embed", "s.svs", "--out", "o", "--slide-mpp", "inf"], ["embed", "s.svs", "--out", "o", "--num-nodes", "0"],
    ["embed", "s.svs", "--out", "o", "--patch", "2.5"], ["info", "s.svs", "--mpp", "0"],
    ["synth", "o", "--slides", "0"], ["synth", "o", "--size", "-1"], ["synth", "o", "--seed", "-1"],
    ["select", "--stores", "s", "--strategy", "random", "--out", "o", "--n", "0"],
    ["select", "--stores", "s", "--strategy", "random", "--out", "o", "--size", "0"],
    ["select", "--stores", "s", "--strategy", "random", "--out", "o", "--seed", "-3"],
    ["prototypes", "review", "h.json", "--db", "d", "--out", "s.png", "--thumb", "0"],
    ["prototypes", "build", "--db", "d", "--class", "a", "--encoder", "e", "--out", "o", "--top-n", "0"],
    ["prototypes", "build", "--db", "d", "--class", "a", "--encoder", "e", "--out", "o", "--scale", "0"],
    ["prototypes", "build", "--db", "d", "--class", "a", "--encoder", "e", "--out", "o", "--batch-size", "-1"],
]


@pytest.mark.parametrize("argv", BAD_OPTIONS, ids=lambda a: " ".join(a[:1] + a[-2:]))
def test_numeric_options_are_range_checked_at_parse_time(argv, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {argv[-2]}" in err and ("must be" in err or "expected" in err)


def test_out_naming_a_file_fails_up_front(tmp_path, capsys):
    afile = tmp_path / "stores.txt"
    afile.write_text("not a folder")
    for argv in (["embed", "s.svs", "--out", str(afile)], ["embed", "s.svs", "--out", str(afile / "sub")],
                 ["select", "--stores", "s", "--strategy", "random", "--out", str(afile)],
                 ["synth", str(afile)], ["prototypes", "search", "--db", "d", "--with", "x", "--out", str(tmp_path)]):
        with pytest.raises(SystemExit) as info:
            build_parser().parse_args(argv)
        assert info.value.code == 2
        assert "argument" in capsys.readouterr().err
    assert afile.read_text() == "not a folder"


def test_memory_an_option_implies_is_refused_before_any_work(tmp_path, wsi, capsys):
    out = tmp_path / "stores"
    argv = ["embed", str(wsi("small.svs")), "--out", str(out), "--patch", "20000", "--min-tissue", "0", "-q"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--patch 20000" in err and "GiB" in err
    assert not out.exists()


def test_a_grid_too_dense_for_memory_is_refused_naming_the_slide():
    from alkit.embeddings.embed import EmbedConfig, EmbedError

    with pytest.raises(EmbedError, match="mpp must be a positive"):
        EmbedConfig(mpp=0.0)
    with pytest.raises(EmbedError, match="stride must be a whole number >= 1"):
        EmbedConfig(stride=0)
    config = EmbedConfig(patch=4096, batch_size=1024, num_workers=0)
    with pytest.raises(EmbedError, match="needs about"):
        config.check_memory(limit=1 << 30)
    EmbedConfig().check_memory(limit=1 << 30)  # the defaults fit in 1 GiB


# ---------------------------------------------------------------------------------- bad files, one line each


@pytest.mark.parametrize("name, text", [("db.json", "{}"), ("db.csv", "id,caption\n"), ("db.jsonl", ""),
                                        ("captions.json", "{}"), ("captions.json", "{not json")])
def test_empty_or_broken_caption_databases_are_one_line_errors(tmp_path, capsys, name, text):
    db = tmp_path / name
    db.write_text(text)
    out = tmp_path / "hits.json"
    assert main(["prototypes", "search", "--db", str(db), "--with", "tumour", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("alkit: error:") and name in err and "\n" not in err
    assert not out.exists()


def test_plip_folder_with_pickled_weights_is_refused(tmp_path):
    transformers = pytest.importorskip("transformers")
    import datetime

    import torch

    from alkit.embeddings.encoders import EncoderError, get_encoder

    cfg = transformers.CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 16}, projection_dim=8)
    folder = tmp_path / "plip"
    cfg.save_pretrained(folder)
    torch.save({"w": datetime.datetime(2020, 1, 1)}, folder / "pytorch_model.bin")  # any non-tensor object
    with pytest.raises(EncoderError, match="pickled Python objects") as info:
        get_encoder(f"plip@{folder}")
    assert str(folder) in str(info.value) and "\n" not in str(info.value)


def test_a_truncated_svs_says_truncated_in_one_line(tmp_path, wsi, capsys):
    data = wsi("CMU-1-Small-Region.svs").read_bytes()
    cut = tmp_path / "cut.svs"
    cut.write_bytes(data[:1_500_000])
    assert main(["info", str(cut)]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "cut.svs: truncated TIFF" in captured.err
    assert "tifffile" not in captured.err + captured.out


def test_a_fifo_as_slide_is_refused_not_opened(tmp_path):
    from alkit.wsi.slide import Slide, SlideError

    fifo = tmp_path / "slide.svs"
    os.mkfifo(fifo)
    with pytest.raises(SlideError, match="not a regular file"):
        Slide(fifo)


def test_unreadable_store_attributes_are_a_store_error_and_a_cache_miss(tmp_path):
    import h5py

    from alkit.embeddings.store import StoreError, is_cached, read_attrs

    [path] = write_stores(tmp_path, ["s"])
    with h5py.File(path, "a") as f:
        f.attrs["alkit"] = "{truncated"
    with pytest.raises(StoreError, match="s0.h5: the 'alkit' attribute is not JSON"):
        read_attrs(path)
    assert is_cached(path, STORE_ATTRS) is False
    assert isinstance(StoreError("x"), AlkitError)
