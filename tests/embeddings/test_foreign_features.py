"""TRIDENT and CLAM feature files as embedding stores: `alkit import-features`, then `alkit select` on them.

The feature files are written here with h5py in each tool's layout (TRIDENT: ``features`` N x D, ``coords``
N x 2 level-0 x, y with patch_size / patch_size_level0 / level0_magnification / target_magnification /
overlap / level0_width / level0_height attributes; CLAM: ``features`` 1 x N x D and int32 ``coords``
without attributes, the patch size in CLAM's separate patch file), holding the real embeddings of real
slides that `alkit embed` made. The oracle is that store: the import must give back its cells, features
and tissue fractions, and selections on both must pick the same regions.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from alkit.cli import main
from alkit.embeddings.store import EmbeddingStore, store_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SLIDES = ("CMU-1-Small-Region.svs", "tcga-cr-7395-01a-01-ts1.svs")
FALLBACK_MPP = 0.499  # the TCGA slide records no mpp; the CMU slide has 0.499
PATCH, DOWN = 128, 2  # 128 px at 2 x the slides' mpp: 256-px level-0 cells


@pytest.fixture(scope="module")
def embedded(wsi, tmp_path_factory):
    """``(slides_dir, stores_dir, {slide id: EmbeddingStore})``: the real slides (linked, not copied) and
    their handcrafted embeddings by `alkit embed`."""
    from alkit.embeddings.embed import EmbedConfig, embed_slides

    root = tmp_path_factory.mktemp("foreign")
    slides = root / "slides"
    slides.mkdir()
    for name in SLIDES:
        (slides / name).symlink_to(wsi(name))
    config = EmbedConfig(encoder="handcrafted", mpp=FALLBACK_MPP * DOWN, patch=PATCH, min_tissue=0.3,
                         batch_size=64, num_workers=0, accelerator="cpu", devices=1)
    paths = embed_slides(sorted(slides.iterdir()), root / "stores", config, slide_mpp=FALLBACK_MPP, progress=False)
    stores = {EmbeddingStore.load(p).slide_id: EmbeddingStore.load(p) for p in paths}
    assert all(len(s.coords) > 20 for s in stores.values())
    return slides, root / "stores", stores


def _level0(store: EmbeddingStore) -> np.ndarray:
    """Each embedded cell's level-0 top-left corner (x, y), as the other tools record patches."""
    return store.grid.cell_boxes(store.coords)[:, :2].round().astype(np.int64)


def write_trident(folder: Path, store: EmbeddingStore, *, shift: int = 0, seed: int = 0, **attrs) -> Path:
    """``folder/SLIDE.h5`` in TRIDENT's layout, rows in a shuffled order; ``attrs`` override the coords'."""
    order = np.random.default_rng(seed).permutation(len(store.coords))
    w, h = store.grid.dimensions
    coord_attrs = {"patch_size": PATCH, "patch_size_level0": PATCH * DOWN, "level0_magnification": 20,
                   "target_magnification": 20 // DOWN, "overlap": 0, "name": store.slide_id,
                   "savetodir": str(folder), "level0_width": w, "level0_height": h, **attrs}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{store.slide_id}.h5"
    with h5py.File(path, "w") as f:
        feats = f.create_dataset("features", data=store.features[order])
        feats.attrs.update({"name": store.slide_id, "savetodir": str(folder), "encoder": "handcrafted_v1"})
        coords = f.create_dataset("coords", data=_level0(store)[order] + shift)
        for key, value in coord_attrs.items():
            if value is not None:
                coords.attrs[key] = value
    return path


def write_clam(root: Path, store: EmbeddingStore, seed: int = 1) -> tuple[Path, Path]:
    """CLAM's feature file (h5_files/SLIDE.h5: 1 x N x D features, int32 coords, no attributes) and its patch
    file (patches/SLIDE.h5: coords with patch_size / patch_level / downsample attributes)."""
    order = np.random.default_rng(seed).permutation(len(store.coords))
    (root / "h5_files").mkdir(parents=True, exist_ok=True)
    (root / "patches").mkdir(parents=True, exist_ok=True)
    with h5py.File(root / "h5_files" / f"{store.slide_id}.h5", "w") as f:
        f.create_dataset("features", data=store.features[order][None])
        f.create_dataset("coords", data=_level0(store)[order].astype(np.int32))
    with h5py.File(root / "patches" / f"{store.slide_id}.h5", "w") as f:
        c = f.create_dataset("coords", data=_level0(store))
        c.attrs.update({"patch_size": PATCH * DOWN, "patch_level": 0, "downsample": np.array([1.0, 1.0]),
                        "name": store.slide_id})
    return root / "h5_files", root / "patches"


def _regions(out: Path) -> list[tuple]:
    data = json.loads((out / "regions.json").read_text())
    items = data["regions"] if isinstance(data, dict) else data
    def box(r: dict) -> tuple:
        return tuple(r["box_px"]) if "box_px" in r else (r["x"], r["y"], r["w"], r["h"])

    def score(r: dict) -> float | None:
        return None if r.get("score") is None else round(float(r["score"]), 6)

    return sorted((r["slide"], *box(r), str(score(r))) for r in items)


def _select(stores: Path, out: Path, strategy: str, *extra: str) -> list[tuple]:
    assert main(["select", "--stores", str(stores), "--strategy", strategy, "--n", "2", "--size", "1024",
                 "--seed", "3", "--no-png", "--out", str(out), *extra]) == 0
    return _regions(out)


def _prototypes(store: EmbeddingStore, folder: Path, encoder: str = "handcrafted") -> Path:
    """A prototype set of three of the store's own embeddings (a class that exists on the slide)."""
    from alkit.prototypes.prototype_set import ClassPrototypes, PrototypeSet

    rows = store.features[[0, len(store.features) // 2, -1]]
    prov = [{"id": str(i)} for i in range(3)]
    PrototypeSet(encoder, store.dim, "handcrafted-v1", {"tissue": ClassPrototypes("tissue", rows, prov)}).save(folder)
    return folder


def _same_store(imported: Path, original: EmbeddingStore, tissue: bool = True) -> EmbeddingStore:
    got = EmbeddingStore.load(imported)
    assert got.slide_id == original.slide_id
    np.testing.assert_array_equal(got.coords, original.coords)
    np.testing.assert_array_equal(got.features, original.features)
    assert got.grid.shape == original.grid.shape and got.grid.stride0 == original.grid.stride0
    assert got.grid.size0 == original.grid.size0
    if tissue:
        np.testing.assert_array_equal(got.tissue_fraction, original.tissue_fraction)
    return got


def test_trident_files_become_the_stores_alkit_would_write(embedded, tmp_path, capsys):
    slides, stores, originals = embedded
    for store in originals.values():
        write_trident(tmp_path / "features_handcrafted_v1", store, seed=len(store.coords))
    out = tmp_path / "imported"
    assert main(["import-features", "--format", "trident", "--features", str(tmp_path / "features_handcrafted_v1"),
                 "--slides", str(slides), "--slide-mpp", str(FALLBACK_MPP), "--encoder", "handcrafted",
                 "--out", str(out), "-q"]) == 0
    assert "imported 2 trident feature files" in capsys.readouterr().out
    for slide_id, original in originals.items():
        got = _same_store(store_path(out, slide_id, "handcrafted", FALLBACK_MPP * DOWN, PATCH, PATCH), original)
        assert got.attrs["source"]["format"] == "trident" and got.attrs["source"]["encoder"] == "handcrafted_v1"
        assert got.attrs["slide_content_id"] == original.attrs["slide_content_id"]
    for strategy in ("random", "diversity"):
        want = _select(stores, tmp_path / f"want_{strategy}", strategy)
        assert want and _select(out, tmp_path / f"got_{strategy}", strategy) == want
    protos = _prototypes(next(iter(originals.values())), tmp_path / "protos")
    want = _select(stores, tmp_path / "want_proto", "prototype", "--prototypes", str(protos))
    assert want and _select(out, tmp_path / "got_proto", "prototype", "--prototypes", str(protos)) == want


def test_clam_files_with_their_patch_files(embedded, tmp_path, capsys):
    slides, stores, originals = embedded
    for store in originals.values():
        feats, patches = write_clam(tmp_path / "clam", store)
    out = tmp_path / "imported"
    base = ["import-features", "--format", "clam", "--features", str(feats), "--slides", str(slides),
            "--slide-mpp", str(FALLBACK_MPP), "-q"]
    args = [*base, "--out", str(out)]
    assert main(args) == 2  # CLAM's feature files do not say how large a patch is
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no patch size" in err and "--coords" in err and "h5_files" in err
    assert not out.exists() or not list(out.glob("*.h5"))
    assert main([*args, "--coords", str(patches)]) == 0
    for slide_id, original in originals.items():  # at level-0 resolution: 256 px at 0.499 µm/px
        got = _same_store(store_path(out, slide_id, "clam:unknown", FALLBACK_MPP, PATCH * DOWN, PATCH * DOWN),
                          original)
        assert got.attrs["encoder"] == "clam:unknown" and got.dim == original.dim
    want = _select(stores, tmp_path / "want", "diversity")
    assert _select(out, tmp_path / "got", "diversity") == want
    by_px = tmp_path / "by_px"  # the patch side given instead of CLAM's patch files
    assert main([*base, "--patch-px", "256", "--out", str(by_px)]) == 0
    assert _select(by_px, tmp_path / "got_px", "diversity") == want


def test_shifted_grids_are_refused_unless_snapped(embedded, tmp_path, capsys):
    slides, stores, originals = embedded
    store = originals["CMU-1-Small-Region"]
    src = write_trident(tmp_path / "shifted", store, shift=40)  # CLAM-like: a grid not starting at the corner
    args = ["import-features", "--format", "trident", "--features", str(src), "--slides", str(slides),
            "--encoder", "handcrafted", "-q"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert str(src) in err and "shifted by (40, 40) px" in err and "--snap" in err and len(err.splitlines()) == 1
    assert main([*args, "--snap", "--out", str(tmp_path / "b")]) == 0
    got = _same_store(next((tmp_path / "b").glob("*.h5")), store)
    assert got.attrs["source"]["snapped"] is True


def _bad_files(folder: Path, store: EmbeddingStore) -> dict[str, tuple[Path, str]]:
    """name -> (feature file, what the one-line error must say)."""
    cases = {}
    path = write_trident(folder / "offgrid", store)
    with h5py.File(path, "a") as f:  # one patch nudged off the grid
        c = f["coords"][()]
        c[3, 0] += 17
        f["coords"][...] = c
    cases["off_grid"] = path, "not on one regular grid"
    path = write_trident(folder / "lengths", store)
    with h5py.File(path, "a") as f:
        f.create_dataset("extra", data=f["features"][:-1])
        del f["features"]
        f["features"] = f["extra"]
    cases["lengths"] = path, f"{len(store.coords)} coords but {len(store.coords) - 1} feature rows"
    path = write_trident(folder / "nocoords", store)
    with h5py.File(path, "a") as f:
        del f["coords"]
    cases["no_coords"] = path, "needs 'features' and 'coords' datasets"
    path = write_trident(folder / "float", store)
    with h5py.File(path, "a") as f:
        c = f["coords"][()].astype(np.float64) + 0.5
        del f["coords"]
        f["coords"] = c
    cases["fractional"] = path, "whole level-0 pixels"
    cases["no_size"] = (write_trident(folder / "nosize", store, patch_size_level0=None, patch_size=None),
                        "no patch size")
    cases["wrong_slide"] = (write_trident(folder / "dims", store, level0_width=999), "a 999 x")
    cases["stride"] = (write_trident(folder / "overlap", store, overlap=32), "give a stride of 192 px")
    (folder / "garbage").mkdir()
    (folder / "garbage" / f"{store.slide_id}.h5").write_bytes(b"not hdf5 at all")
    cases["not_hdf5"] = folder / "garbage" / f"{store.slide_id}.h5", "unreadable HDF5 file"
    return cases


def test_bad_files_are_refused_in_one_line_and_nothing_is_written(embedded, tmp_path, capsys):
    slides, _, originals = embedded
    good = write_trident(tmp_path / "good", originals["tcga-cr-7395-01a-01-ts1"])
    for name, (path, says) in _bad_files(tmp_path / "bad", originals["CMU-1-Small-Region"]).items():
        out = tmp_path / f"out_{name}"
        code = main(["import-features", "--format", "trident", "--features", str(good), str(path),
                     "--slides", str(slides), "--slide-mpp", str(FALLBACK_MPP), "--out", str(out), "-q"])
        err = capsys.readouterr().err.strip()
        assert code == 2, name
        assert len(err.splitlines()) == 1 and str(path) in err and says in err, (name, err)
        assert not out.exists() or not any(out.iterdir()), name  # not even the good file's store


def test_without_slides_the_files_own_geometry_and_tissue(embedded, tmp_path, capsys):
    _, _, originals = embedded
    store = originals["CMU-1-Small-Region"]
    src = write_trident(tmp_path / "f", store)
    out = tmp_path / "imported"
    assert main(["import-features", "--format", "trident", "--features", str(src), "--out", str(out), "-q"]) == 2
    assert "--slide-mpp" in capsys.readouterr().err
    assert main(["import-features", "--format", "trident", "--features", str(src), "--slide-mpp", "0.499",
                 "--out", str(out), "-q"]) == 0
    got = _same_store(next(out.glob("*.h5")), store, tissue=False)
    assert got.attrs["slide_path"] == "" and got.attrs["encoder"] == "trident:handcrafted_v1"
    np.testing.assert_array_equal(got.tissue_fraction > 0, got.embedded_mask())  # the tool's tissue decision
    regions = _select(out, tmp_path / "sel", "random")
    assert regions and {r[0] for r in regions} == {store.slide_id}
