"""Embedding slides through Lightning predict into cached stores: content, cache hits, resume, DDP."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from alkit.embeddings.embed import EmbedConfig, Embedder, embed_slides
from alkit.wsi.grid import PatchGrid
from alkit.wsi.slide import Slide
from alkit.embeddings.store import EmbeddingStore
from alkit.wsi.tissue import detect_tissue

CONFIG = EmbedConfig(encoder="handcrafted", mpp=0.5, patch=128, batch_size=32, num_workers=0,
                     accelerator="cpu", devices=1)


@pytest.fixture()
def two_slides(tmp_path, wsi):
    """The real CMU slide under two slide ids (a symlink), so a cohort has two members."""
    first = wsi("CMU-1-Small-Region.svs")
    second = tmp_path / "cmu_copy.svs"
    second.symlink_to(first)
    return [first, second]


def test_store_holds_every_tissue_cell(tmp_path, wsi):
    [path] = embed_slides([wsi("CMU-1-Small-Region.svs")], tmp_path / "emb", CONFIG, progress=False)
    store = EmbeddingStore.load(path)
    with Slide(wsi("CMU-1-Small-Region.svs")) as slide:
        grid = PatchGrid.for_slide(slide, 0.5, 128, tissue=detect_tissue(slide))
    expected = grid.tissue_cells(0.5)
    assert len(expected) > 50
    np.testing.assert_array_equal(store.coords, expected)  # row-major, one row per tissue cell
    assert store.features.shape == (len(expected), 97) and np.isfinite(store.features).all()
    assert store.attrs["encoder"] == "handcrafted" and store.attrs["weights_id"] == "handcrafted-v1"
    assert store.grid.shape == grid.shape
    np.testing.assert_allclose(store.tissue_fraction, grid.tissue_fraction, atol=1e-3)  # stored as float16
    fmap, valid = store.as_map()
    assert valid.sum() == len(expected) and fmap.shape == (*grid.shape, 97)


def test_second_run_is_a_cache_hit_and_cohorts_resume(tmp_path, two_slides):
    out = tmp_path / "emb"
    first = Embedder(CONFIG, out, progress=False)
    [store_a] = first.embed(two_slides[:1])
    assert first.forward_passes == 1
    stamp = os.stat(store_a).st_mtime_ns
    again = Embedder(CONFIG, out, progress=False)
    stores = again.embed(two_slides)  # the first slide is finished: only the second is computed
    assert again.forward_passes == 1 and os.stat(store_a).st_mtime_ns == stamp
    a, b = (EmbeddingStore.load(p) for p in stores)
    np.testing.assert_allclose(a.features, b.features, rtol=1e-5, atol=1e-5)
    third = Embedder(CONFIG, out, progress=False)
    third.embed(two_slides)
    assert third.forward_passes == 0
    other = Embedder(EmbedConfig(**{**CONFIG.__dict__, "patch": 64}), out, progress=False)
    other.embed(two_slides[:1])  # another patch size is another store
    assert other.forward_passes == 1 and len(list(out.glob("*.h5"))) == 3


def test_ddp_with_two_cpu_processes_gives_the_same_stores(tmp_path, wsi):
    """Slide-parallel ranks (gloo, 2 CPU processes): slide i is embedded whole by rank i % 2, the stores
    equal one process's, nothing hidden is left, and a rerun is a full cache hit."""
    first = wsi("CMU-1-Small-Region.svs")
    slides = [first]
    for name in ("cmu_b.svs", "cmu_c.svs"):  # the same pixels under three slide ids: three stores
        (tmp_path / name).symlink_to(first)
        slides.append(tmp_path / name)
    singles = embed_slides(slides, tmp_path / "one", CONFIG, progress=False)
    cmd = [sys.executable, "-m", "alkit", "-v", "embed", *map(str, slides), "--out", str(tmp_path / "ddp"),
           "--encoder", "handcrafted", "--mpp", "0.5", "--patch", "128", "--batch-size", "16",
           "--workers", "1", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "-q"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    for i, single in enumerate(singles):
        ddp = tmp_path / "ddp" / single.name
        a, b = EmbeddingStore.load(single), EmbeddingStore.load(ddp)
        np.testing.assert_array_equal(a.coords, b.coords)
        np.testing.assert_allclose(a.features, b.features, rtol=1e-5, atol=1e-5)
        assert a.attrs == b.attrs
        assert f"{ddp}: {len(a.coords)} cells embedded (rank {i % 2})" in done.stderr, done.stderr[-3000:]
    assert not list((tmp_path / "ddp").glob(".*"))  # no temporary files left
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert again.returncode == 0 and "(3 were already there)" in again.stdout, again.stderr[-3000:]


def test_embed_cli_errors_name_the_input(tmp_path):
    for args, reason in [(["missing.svs"], "no such file"), (["*.nothing"], "no slide matches"),
                         (["x.svs", "--encoder", "nope"], "nope")]:
        done = subprocess.run([sys.executable, "-m", "alkit", "embed", *args, "--out", str(tmp_path)],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and reason in lines[0], done.stderr


def test_slide_mpp_fills_in_only_where_metadata_is_missing(tmp_path, wsi):
    config = EmbedConfig(**{**CONFIG.__dict__, "mpp": 1.0, "patch": 64})
    stores = embed_slides([wsi("CMU-1-Small-Region.svs"), wsi("tcga-cr-7395-01a-01-ts1.svs")], tmp_path, config,
                          slide_mpp=0.25, progress=False)
    cmu, tcga = (EmbeddingStore.load(p) for p in stores)
    assert cmu.attrs["slide_mpp"] == pytest.approx(0.499) and tcga.attrs["slide_mpp"] == 0.25


def test_a_temporary_store_left_by_a_killed_run_is_cleared_and_the_slide_embedded(tmp_path, wsi):
    """A killed run left its half-filled temporary store (named with its dead pid); the rerun removes it
    and writes the complete store."""
    from alkit.atomic import TEMP_NAME

    slide = wsi("CMU-1-Small-Region.svs")
    [path] = embed_slides([slide], tmp_path / "emb", CONFIG, progress=False)
    expected = EmbeddingStore.load(path)
    path.unlink()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()  # a pid that no longer runs
    stale = path.with_name(f".{path.stem}.{dead}.0123abcd.tmp.h5")
    stale.write_bytes(b"half a store")
    assert TEMP_NAME.match(stale.name)
    [again] = embed_slides([slide], tmp_path / "emb", CONFIG, progress=False)
    store = EmbeddingStore.load(again)
    np.testing.assert_array_equal(store.coords, expected.coords)
    np.testing.assert_allclose(store.features, expected.features, rtol=1e-5, atol=1e-5)
    assert not stale.exists() and not list((tmp_path / "emb").glob(".*"))
