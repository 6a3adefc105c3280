"""write_selection: stale exports cleaned or refused, regions.json versions, µm region sizes on mixed-resolution
cohorts, overview pictures with a shared colour scale and a true scale bar."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from alkit.cli import main
from alkit.embeddings.cohort import Cohort, CohortSlide
from alkit.errors import AlkitError
from alkit.selection.export import write_selection
from alkit.selection.overlay import HEADER, overview_png, OverlayInfo, resolve_slide_path
from alkit.selection.regions_file import RegionsFileError, read_regions
from alkit.selection.sizing import RegionSize, select_regions
from alkit.selection.strategy import Budget, RegionPick, Selection, get_strategy
from alkit.wsi.grid import PatchGrid


def _slide(tmp_path, sid, slide_mpp=0.25, side=4096, patch=64, mpp=0.5):
    stride0 = patch * mpp / slide_mpp
    n = int(side // stride0)
    grid = PatchGrid((side, side), slide_mpp, mpp, patch, patch, np.ones((n, n), np.float32))
    return CohortSlide(sid, tmp_path / f"{sid}.h5", tmp_path / f"{sid}.svs", grid)


def _files(out):
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def test_stale_exports_are_removed_and_foreign_files_refused(tmp_path, caplog):
    cohort = Cohort([_slide(tmp_path, "a"), _slide(tmp_path, "b")])
    out = tmp_path / "sel"
    first = Selection("random", [RegionPick("a", (0, 0, 512, 512), "random"),
                                 RegionPick("b", (0, 0, 512, 512), "random")])
    files = write_selection(first, cohort, out)
    assert _files(out) == ["asap/a.xml", "asap/b.xml", "png/a.png", "png/b.png", "qupath/a.geojson",
                           "qupath/b.geojson", "regions.json"]
    assert sorted(str(p.relative_to(out)) for p in files.files) == _files(out)
    second = Selection("random", [RegionPick("a", (1024, 0, 512, 512), "random")])
    files = write_selection(second, cohort, out, png=False)
    assert _files(out) == ["asap/a.xml", "qupath/a.geojson", "regions.json"]  # b's files and the PNGs: gone
    assert {p.name for p in files.removed} == {"a.png", "b.png", "b.xml", "b.geojson"}
    assert [r.box_px for r in read_regions(out / "regions.json").regions] == [(1024, 0, 512, 512)]

    mine = out / "qupath" / "b.geojson"  # an annotator's file saved into the export folder
    mine.write_text("{}")
    before = (out / "regions.json").read_text()
    with pytest.raises(AlkitError, match=r"sel: holds 1 file\(s\) no earlier alkit export wrote \(qupath/b.geojson\)"):
        write_selection(first, cohort, out)
    assert mine.read_text() == "{}" and (out / "regions.json").read_text() == before  # nothing touched

    # an edited regions.json listing other files: only its qupath/ asap/ png/ files of their kind are removable
    doc = json.loads((out / "regions.json").read_text())
    keep = {"stores/a.h5": "features", "notes.txt": "mine", "qupath/a.xml": "odd", "../outside.png": "theirs"}
    for rel, text in keep.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text)
    mine.unlink()
    doc["files"] += list(keep)
    (out / "regions.json").write_text(json.dumps(doc))
    with pytest.raises(AlkitError, match=r"holds 1 file\(s\) no earlier alkit export wrote \(qupath/a.xml\)"):
        write_selection(first, cohort, out)  # listed, but not an export of its kind: not ours to overwrite
    (out / "qupath" / "a.xml").unlink()
    write_selection(Selection("random", []), cohort, out, png=False)
    assert all((out / rel).read_text() == text for rel, text in keep.items() if rel != "qupath/a.xml")
    assert not (out / "qupath" / "a.geojson").exists()  # the real stale export is still removed

    legacy = tmp_path / "legacy"  # an export of alkit 0.1 (bare list): all its per-slide files are its own
    for kind, suffix in (("qupath", ".geojson"), ("asap", ".xml"), ("png", ".png")):
        (legacy / kind).mkdir(parents=True)
        (legacy / kind / f"old{suffix}").write_text("x")
    (legacy / "regions.json").write_text(json.dumps([{"slide": "old", "x": 0, "y": 0, "w": 8, "h": 8}]))
    write_selection(second, cohort, legacy, png=False)
    assert _files(legacy) == ["asap/a.xml", "qupath/a.geojson", "regions.json"]


def test_regions_reader_versions_and_errors(tmp_path):
    v1 = tmp_path / "v1.json"
    v1.write_text(json.dumps([{"slide": "s", "x": 1, "y": 2, "w": 30, "h": 40, "strategy": "random",
                               "class": None, "score": None},
                              {"slide": "s", "x": 100, "y": 2, "w": 30, "h": 40, "strategy": "random"}]))
    doc = read_regions(v1)
    assert doc.version == 1 and [r.id for r in doc.regions] == ["s:c0:r1", "s:c0:r2"]
    assert doc.regions[1].box_px == (100, 2, 30, 40) and doc.regions[0].mpp is None
    bad = tmp_path / "v9.json"
    bad.write_text(json.dumps({"format": "alkit.regions", "version": 9, "regions": []}))
    with pytest.raises(RegionsFileError, match=r"v9.json: regions format version 9"):
        read_regions(bad)
    bad.write_text(json.dumps({"regions": []}))
    with pytest.raises(RegionsFileError, match=r"v9.json: not an alkit regions file"):
        read_regions(bad)
    bad.write_text(json.dumps({"format": "alkit.regions", "version": 2, "regions": [
        {"id": "x", "slide": "../up", "box_px": [0, 0, 1, 1], "strategy": "r", "rank": 1}]}))
    with pytest.raises(RegionsFileError, match=r"v9.json: slide id '../up' is not an id"):
        read_regions(bad)
    bad.write_text(json.dumps({"format": "alkit.regions", "version": 2, "regions": [
        {"id": "x", "slide": "s", "box_px": [0, 0, -1, 1], "strategy": "r", "rank": 1}]}))
    with pytest.raises(RegionsFileError, match=r"region #0: box_px \[0, 0, -1, 1\] needs"):
        read_regions(bad)


def test_size_um_gives_equal_physical_regions_on_mixed_resolutions(tmp_path):
    fine, coarse = _slide(tmp_path, "fine", 0.25, 8192), _slide(tmp_path, "coarse", 0.5, 4096)
    cohort = Cohort([fine, coarse])
    random = get_strategy("random")
    sel = select_regions(random, cohort, 2, RegionSize(um=256), np.random.default_rng(0))
    write_selection(sel, cohort, tmp_path / "out", png=False,
                    provenance={"budget": RegionSize(um=256).budget_dict(2)})
    doc = read_regions(tmp_path / "out" / "regions.json")
    assert len(doc.regions) == 4 and doc.provenance["budget"] == {"n": 2, "size_um": 256.0}
    for r in doc.regions:
        assert r.box_um[2:] == [256.0, 256.0]  # the same tissue area on both scanners
    assert {r.slide: r.box_px[2] for r in doc.regions} == {"fine": 1024, "coarse": 512}
    # a level-0 px budget would not: the coarse slide's regions are twice as wide in µm
    px = random.select(cohort, Budget(2, 1024), np.random.default_rng(0))
    widths = {p.slide: p.box[2] * s.grid.slide_mpp for p in px.regions for s in cohort if s.slide_id == p.slide}
    assert widths == {"fine": 256.0, "coarse": 512.0}
    # one resolution: exactly the px selection of the converted side (same strategy call, same rng)
    same = Cohort([fine, _slide(tmp_path, "fine2", 0.25, 8192)])
    a = select_regions(random, same, 3, RegionSize(um=256), np.random.default_rng(4))
    b = random.select(same, Budget(3, 1024), np.random.default_rng(4))
    assert [(p.slide, p.box) for p in a.regions] == [(p.slide, p.box) for p in b.regions]


def test_overview_shares_one_colour_scale_and_has_a_true_scale_bar(tmp_path):
    import matplotlib

    hot, cool = _slide(tmp_path, "hot"), _slide(tmp_path, "cool")  # no slide files: drawn on grey (200)
    hot_map = np.full((32, 32), 1.0)
    hot_map[0, 0] = 0.2
    cool_map = np.full((32, 32), 0.4)
    sel = Selection("prototype", [RegionPick("hot", (2048, 2048, 512, 512), "prototype", "tumour", 0.9)],
                    score_maps={"hot": {"similarity:tumour": hot_map}, "cool": {"similarity:tumour": cool_map}})
    out = tmp_path / "out"
    write_selection(sel, Cohort([hot, cool]), out, provenance={"budget": {"n": 1, "size_px": 512}})
    png = np.asarray(Image.open(out / "png" / "cool.png").convert("RGB")).astype(int)
    # 4096 px at 0.25 µm/px on a 1024-px thumbnail: 4 level-0 px per thumbnail px; cells are 32 thumbnail px
    pixel = png[HEADER + 5 * 32 + 16, 5 * 32 + 16]
    shared = (0.4 - 0.2) / (1.0 - 0.2)  # the cool slide's score on the selection's scale, not its own
    heat = np.asarray(matplotlib.colormaps["cividis"](shared)[:3]) * 255
    np.testing.assert_allclose(pixel, heat * 140 / 255 + 200 * (1 - 140 / 255), atol=2)
    own_scale = np.asarray(matplotlib.colormaps["cividis"](1.0)[:3]) * 255
    assert np.abs(pixel - (own_scale * 140 / 255 + 200 * 115 / 255)).max() > 20
    # scale bar: 1024 thumbnail px are 1.024 mm, a fifth is 0.2048 mm -> a 0.2 mm bar, 200 px long
    bar_row = png[HEADER + 1024 - 20 + 3, :1024]
    black = np.flatnonzero((bar_row < 10).all(axis=1))
    assert len(black) == 201 and black[0] == 20  # x from 20 to 220 inclusive
    # colormap: no pink or purple (H&E): cividis has red never above blue and green together
    ramp = np.asarray(matplotlib.colormaps["cividis"](np.linspace(0, 1, 50))[:, :3])
    assert not ((ramp[:, 0] > ramp[:, 1] + 0.1) & (ramp[:, 2] > ramp[:, 1])).any()


def test_overview_reads_the_slide_from_anywhere(tmp_path, wsi, monkeypatch):
    """A store written with a relative slide path still finds the slide when run from elsewhere."""
    from alkit.wsi.slide import Slide

    path = wsi("CMU-1-Small-Region.svs").absolute()
    with Slide(path) as s:
        grid = PatchGrid(s.dimensions, s.mpp, 2.0, 64, 64)
    store_dir = path.parent
    slide = CohortSlide("cmu", store_dir / "cmu.h5", path.relative_to(store_dir), grid)  # relative to the store
    monkeypatch.chdir(tmp_path)
    assert resolve_slide_path(slide) == path
    picture = overview_png(slide, [], None, OverlayInfo("random"))
    thumb = picture[HEADER:HEADER + 50, :50].reshape(-1, 3)
    assert thumb.std(axis=0).max() > 5  # the slide's pixels, not flat grey
    monkeypatch.chdir(path.parent)  # a slide opened by a relative path records its absolute path (stores use it)
    with Slide(path.name) as s:
        assert s.path.is_absolute() and s.path.samefile(path)  # the shared folder may be a symlink


def test_cli_size_um_and_files_printed(embedded_cohort, tmp_path, capsys):
    stores = embedded_cohort.slides[0].store_path.parent
    out = tmp_path / "um"
    assert main(["select", "--stores", str(stores), "--strategy", "random", "--n", "1", "--size-um", "256",
                 "--out", str(out), "--no-png"]) == 0
    printed = capsys.readouterr().out
    doc = read_regions(out / "regions.json")
    mpp = embedded_cohort.slides[0].grid.slide_mpp
    assert all(r.box_px[2] == round(256 / mpp) and r.box_um[2] == pytest.approx(256) for r in doc.regions)
    assert doc.provenance["budget"] == {"n": 1, "size_um": 256.0} and doc.provenance["command"].startswith("alkit")
    assert all(str(f) in printed for f in out.rglob("*.geojson"))
    assert main(["select", "--stores", str(stores), "--strategy", "random", "--size", "512", "--size-um", "256",
                 "--out", str(out)]) == 2
    assert "--size (level-0 px) or --size-um" in capsys.readouterr().err
