"""The synthetic cohort: real pyramidal TIFFs OpenSlide opens, H&E-like pixels that agree with the
ground truth (ASAP polygons, SlideRunner mitoses), determinism, and an ARCH-like caption database
whose keyword searches find the intended kinds of image."""

from __future__ import annotations

import hashlib
import json
import math
import re
import sqlite3
import uuid
from pathlib import Path

import numpy as np
import openslide
import pytest
import shapely
import tifffile
from PIL import Image
from scipy import ndimage
from shapely.geometry import Polygon

from alkit.annotations.asap import read_asap_xml
from alkit.annotations.sliderunner import read_sliderunner
from alkit.synthetic import (CAPTION_KINDS, LOOKALIKE_CLASS, MITOSIS_CLASS, SyntheticCohort,
                             generate_cohort)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
N, SIZE, SEED, N_CAPTIONS = 4, 2048, 0, 80
LO, HI = 0.02, 0.10


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> SyntheticCohort:
    return generate_cohort(tmp_path_factory.mktemp("cohort"), n_slides=N, size=SIZE, seed=SEED,
                           n_caption_images=N_CAPTIONS, progress=False)


@pytest.fixture(scope="module")
def records(cohort):
    return read_sliderunner(cohort.mitoses_db)


def _level_image(slide, level: int) -> np.ndarray:
    with openslide.OpenSlide(str(slide.path)) as o:
        w, h = o.level_dimensions[level]
        return np.asarray(o.read_region((0, 0), level, (w, h)).convert("RGB")).astype(float)


def _tissue_mask(slide, shape: tuple[int, int]) -> np.ndarray:
    m = Image.open(slide.tissue_mask_path).resize(shape[::-1], Image.NEAREST)
    return np.asarray(m) > 0


def _tumour_mask(slide, shape: tuple[int, int], downsample: float) -> np.ndarray:
    from skimage.draw import polygon
    mask = np.zeros(shape, bool)
    for a in read_asap_xml(slide.annotation_path):
        rr, cc = polygon(a.coords[:, 1] / downsample, a.coords[:, 0] / downsample, shape=shape)
        mask[rr, cc] = True
    return mask


# --------------------------------------------------------------------------------------------
# files, manifest, OpenSlide
# --------------------------------------------------------------------------------------------

def test_layout_and_manifest_round_trip(cohort):
    root = cohort.root
    assert sorted(p.name for p in (root / "slides").iterdir()) == [f"synth_{i:03d}.tif" for i in range(N)]
    assert sorted(p.name for p in (root / "annotations").glob("*.xml")) == \
        [f"synth_{i:03d}.xml" for i in range(N)]
    assert (root / "annotations" / "mitoses.sqlite").is_file()
    assert not [p for p in root.rglob("*") if p.name.startswith(".")]  # no temp files left
    loaded = SyntheticCohort.load(root / "cohort.json")
    assert loaded.slides == cohort.slides and loaded.seed == SEED
    assert SyntheticCohort.load(root).params == cohort.params == {
        "n_slides": N, "size": [SIZE, SIZE], "mpp": 0.25, "tumour_slide_fraction": 0.6,
        "tumour_tissue_fraction": [LO, HI], "n_caption_images": N_CAPTIONS, "tile": 512,
        "jpeg_quality": 85}
    raw = json.loads((root / "cohort.json").read_text())
    assert raw["slides"][0]["path"] == "slides/synth_000.tif"  # relative: the folder can move
    for s in cohort.slides:
        assert s.path.is_file() and s.annotation_path.is_file() and s.tissue_mask_path.is_file()
        assert (s.width, s.height, s.mpp) == (SIZE, SIZE, 0.25)
        assert 0.1 * SIZE ** 2 < s.tissue_area_px < 0.8 * SIZE ** 2


def test_manifest_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        SyntheticCohort.load(tmp_path)
    (tmp_path / "cohort.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not an alkit synthetic cohort manifest"):
        SyntheticCohort.load(tmp_path)


def test_openslide_opens_every_slide_as_generic_tiff_at_025_mpp(cohort):
    for s in cohort.slides:
        with openslide.OpenSlide(str(s.path)) as o:
            assert o.properties["openslide.vendor"] == "generic-tiff"
            assert float(o.properties["openslide.mpp-x"]) == pytest.approx(0.25, rel=1e-6)
            assert float(o.properties["openslide.mpp-y"]) == pytest.approx(0.25, rel=1e-6)
            assert o.dimensions == (SIZE, SIZE)
            assert o.level_count >= 3 and o.level_count == s.levels
            for k, ds in enumerate(o.level_downsamples):
                assert ds == pytest.approx(2 ** k, rel=1e-3)
        with tifffile.TiffFile(s.path) as tif:
            page = tif.pages[0]
            assert page.is_tiled and page.compression == tifffile.COMPRESSION.JPEG
            assert (page.tilewidth, page.tilelength) == (512, 512)


def test_pixels_look_like_h_and_e(cohort):
    for s in cohort.slides:
        img = _level_image(s, s.levels - 1)  # the smallest level
        tissue = ndimage.binary_erosion(_tissue_mask(s, img.shape[:2]), iterations=2)
        background = ~ndimage.binary_dilation(tissue, iterations=6)
        bg = np.median(img[background], axis=0)
        assert (bg > 225).all(), bg  # glass is near white
        tis = np.median(img[tissue], axis=0)
        r, g, b = tis
        assert g < r - 20 and g < b - 20 and tis.mean() < 215, tis  # pink/purple: green absorbed
    # a level-0 tile from inside the tissue, straight from the file: the same stain colours
    s = cohort.slides[0]
    small = _level_image(s, s.levels - 1)
    inner = ndimage.binary_erosion(_tissue_mask(s, small.shape[:2]), iterations=3)
    row, col = np.argwhere(inner)[len(np.argwhere(inner)) // 2]
    scale = SIZE / small.shape[1]
    with openslide.OpenSlide(str(s.path)) as o:
        tile = np.asarray(o.read_region((int(col * scale), int(row * scale)), 0, (128, 128)).convert("RGB"))
    stained = tile[tile.mean(axis=2) < 225]
    assert len(stained) > 0.5 * 128 * 128
    r, g, b = np.median(stained, axis=0)
    assert g < r - 20 and g < b - 20, (r, g, b)


def test_tumour_is_darker_more_purple_with_larger_nuclei_than_other_tissue(cohort):
    n = 0
    for s in cohort.tumour_slides:
        img = _level_image(s, 0)
        shape = img.shape[:2]
        tum = ndimage.binary_erosion(_tumour_mask(s, shape, 1.0), iterations=4)
        other = _tissue_mask(s, shape) & ~ndimage.binary_dilation(tum, iterations=60)
        t, o = img[tum], img[other]
        assert len(t) > 2000
        # hematoxylin absorbs red: red drops far more in tumour (crowded, hyperchromatic nuclei)
        assert np.median(t[:, 0]) < np.median(o[:, 0]) - 15
        assert t.mean() < o.mean() - 10
        # nuclei (dark purple-blue blobs) are larger than elsewhere, lymphocyte aggregates included
        nuclear = (img[..., 0] < 150) & (img[..., 2] > img[..., 1])

        def median_blob(mask):
            lab, _ = ndimage.label(nuclear & mask)
            areas = np.bincount(lab.ravel())[1:]
            return np.median(areas[areas > 30])

        assert median_blob(tum) > 1.4 * median_blob(other)
        n += 1
    assert n == 2


# --------------------------------------------------------------------------------------------
# ground truth: tumour polygons
# --------------------------------------------------------------------------------------------

def test_tumour_share_and_fractions(cohort):
    assert len(cohort.tumour_slides) == math.floor(0.6 * N + 0.5)
    for s in cohort.slides:
        anns = read_asap_xml(s.annotation_path)
        text = s.annotation_path.read_text()
        assert '<Group Name="_0" PartOfGroup="None" Color="#FF0000">' in text
        if not s.has_tumour:
            assert anns == [] and s.tumour_fraction == 0 and s.tumour_area_px == 0
            continue
        assert anns and all(a.group == "_0" and a.name.startswith("Annotation ") for a in anns)
        assert s.n_tumour_regions == len(anns)
        polys = [Polygon(a.coords) for a in anns]
        assert all(p.is_valid for p in polys)
        for a in anns:
            assert (a.coords >= 0).all() and (a.coords[:, 0] < s.width).all() and (a.coords[:, 1] < s.height).all()
        area = sum(p.area for p in polys)
        assert area == pytest.approx(s.tumour_area_px, rel=1e-3)
        assert LO <= area / s.tissue_area_px <= HI
        assert s.tumour_fraction == pytest.approx(area / s.tissue_area_px, rel=1e-3)
        # polygons lie inside the tissue mask
        mask = np.asarray(Image.open(s.tissue_mask_path)) > 0
        f = s.tissue_mask_downsample
        xy = np.concatenate([a.coords for a in anns])
        col = np.clip(np.round((xy[:, 0] + 0.5) / f - 0.5).astype(int), 0, mask.shape[1] - 1)
        row = np.clip(np.round((xy[:, 1] + 0.5) / f - 0.5).astype(int), 0, mask.shape[0] - 1)
        assert mask[row, col].mean() > 0.99


def test_exact_tumour_share_over_many_small_slides(tmp_path):
    c = generate_cohort(tmp_path, n_slides=10, size=512, seed=3, tumour_slide_fraction=0.3,
                        tumour_tissue_fraction=(0.04, 0.08), n_caption_images=0, progress=False)
    assert sum(s.has_tumour for s in c.slides) == 3
    for s in c.slides:
        assert (0.04 <= s.tumour_fraction <= 0.08) if s.has_tumour else s.tumour_fraction == 0
    assert c.captions_json is None and not (tmp_path / "captions").exists()


# --------------------------------------------------------------------------------------------
# ground truth: mitoses
# --------------------------------------------------------------------------------------------

def test_sqlite_mitoses_match_manifest_and_schema(cohort, records):
    names = {s.path.name for s in cohort.slides}
    assert {r.slide for r in records} <= names
    for s in cohort.slides:
        mine = [r for r in records if r.slide == s.path.name]
        assert all(r.type == 1 and 0 <= r.x < s.width and 0 <= r.y < s.height for r in mine)
        assert sum(r.cls == MITOSIS_CLASS and not r.deleted for r in mine) == s.n_mitoses
        assert sum(r.cls == LOOKALIKE_CLASS and not r.deleted for r in mine) == s.n_lookalikes
        assert sum(r.deleted for r in mine) == s.n_deleted
        assert s.n_mitoses == s.n_mitoses_tumour + s.n_mitoses_normal
        if s.has_tumour:
            assert s.n_mitoses_tumour >= 4
    assert sum(s.n_deleted for s in cohort.slides) > 0
    live = read_sliderunner(cohort.mitoses_db, drop_deleted=True)
    assert len(live) == len(records) - sum(s.n_deleted for s in cohort.slides)
    con = sqlite3.connect(cohort.mitoses_db)
    try:
        classes = dict(con.execute("SELECT name, uid FROM Classes"))
        assert set(classes) == {MITOSIS_CLASS, LOOKALIKE_CLASS}
        slides = con.execute("SELECT filename, width, height FROM Slides ORDER BY uid").fetchall()
        assert slides == [(s.path.name, SIZE, SIZE) for s in cohort.slides]
        n_labels = con.execute("SELECT count(*) FROM Annotations_label").fetchone()[0]
        assert n_labels == len(records)
    finally:
        con.close()


def test_mitoses_are_denser_in_tumour(cohort, records):
    mm2 = (0.25e-3) ** 2
    for s in cohort.tumour_slides:
        geom = shapely.union_all([Polygon(a.coords) for a in read_asap_xml(s.annotation_path)])
        mit = [r for r in records if r.slide == s.path.name and r.cls == MITOSIS_CLASS and not r.deleted]
        inside = shapely.contains_xy(geom, [r.x for r in mit], [r.y for r in mit])
        assert inside.sum() == s.n_mitoses_tumour
        d_t = inside.sum() / (geom.area * mm2)
        d_o = (~inside).sum() / ((s.tissue_area_px - geom.area) * mm2)
        assert d_t > 5 * d_o


def _very_dark_pixels(o, x: float, y: float, r: int = 20) -> int:
    reg = np.asarray(o.read_region((int(x) - r, int(y) - r), 0, (2 * r, 2 * r)).convert("RGB"))
    return int((reg.astype(int).sum(axis=-1) < 150).sum())


def test_drawn_figures_are_dark_clumps_and_deleted_records_are_not_drawn(cohort, records):
    drawn, deleted = [], []
    for s in cohort.slides:
        with openslide.OpenSlide(str(s.path)) as o:
            for r in records:
                if r.slide != s.path.name:
                    continue
                if r.deleted:
                    deleted.append(_very_dark_pixels(o, r.x, r.y))
                elif r.cls == MITOSIS_CLASS:
                    drawn.append(_very_dark_pixels(o, r.x, r.y))
    assert drawn and deleted
    assert min(drawn) > 60, drawn  # every mitotic figure is a very dark clump (in a 10 µm box)
    assert max(deleted) < 30, deleted  # nothing is drawn where a deleted record points


# --------------------------------------------------------------------------------------------
# determinism
# --------------------------------------------------------------------------------------------

def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_gives_identical_outputs(cohort, tmp_path):
    again = generate_cohort(tmp_path, n_slides=N, size=SIZE, seed=SEED, n_caption_images=N_CAPTIONS,
                            progress=False)
    for a, b in zip(cohort.slides, again.slides):
        assert _digest(a.path) == _digest(b.path)  # pixels and tags, byte for byte
        assert a.annotation_path.read_bytes() == b.annotation_path.read_bytes()
        assert (a.tissue_area_px, a.tumour_fraction, a.distractors) == \
            (b.tissue_area_px, b.tumour_fraction, b.distractors)
    strip = lambda rs: [(r.slide, r.x, r.y, r.cls, r.deleted, r.guid) for r in rs]  # noqa: E731
    assert strip(read_sliderunner(again.mitoses_db)) == strip(read_sliderunner(cohort.mitoses_db))
    assert again.captions_json.read_bytes() == cohort.captions_json.read_bytes()
    caps = json.loads(again.captions_json.read_text())
    for e in list(caps.values())[:10]:
        name = f"{e['uuid']}.png"
        assert _digest(again.captions_images / name) == _digest(cohort.captions_images / name)
    assert again.to_dict()["slides"] == cohort.to_dict()["slides"]


def test_different_seed_gives_a_different_cohort(cohort, tmp_path):
    other = generate_cohort(tmp_path, n_slides=1, size=SIZE, seed=SEED + 1, n_caption_images=0,
                            progress=False)
    a, b = cohort.slides[0], other.slides[0]
    assert a.tissue_area_px != b.tissue_area_px
    with tifffile.TiffFile(a.path) as ta, tifffile.TiffFile(b.path) as tb:
        pa, pb = ta.pages[0].asarray(), tb.pages[0].asarray()
    assert pa.shape == pb.shape and np.abs(pa.astype(int) - pb.astype(int)).mean() > 5


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError, match="size"):
        generate_cohort(tmp_path, size=100, progress=False)
    with pytest.raises(ValueError, match="tumour_tissue_fraction"):
        generate_cohort(tmp_path, tumour_tissue_fraction=(0.2, 0.1), progress=False)
    with pytest.raises(ValueError, match="tumour_slide_fraction"):
        generate_cohort(tmp_path, tumour_slide_fraction=1.5, progress=False)
    assert not (tmp_path / "slides").exists()


def test_regenerating_into_the_same_folder_leaves_no_stale_files(tmp_path):
    generate_cohort(tmp_path, n_slides=3, size=512, seed=4, n_caption_images=3, progress=False)
    mine = tmp_path / "slides" / "my_own.tif"
    mine.write_bytes(b"not ours")
    c = generate_cohort(tmp_path, n_slides=2, size=512, seed=4, n_caption_images=0, progress=False)
    assert sorted(p.name for p in (tmp_path / "slides").iterdir()) == ["my_own.tif", "synth_000.tif",
                                                                       "synth_001.tif"]
    assert len(list((tmp_path / "annotations").glob("*.xml"))) == 2 == len(c.slides)
    assert not list((tmp_path / "captions").rglob("*.*"))


def test_rectangular_size(tmp_path):
    c = generate_cohort(tmp_path, n_slides=1, size=(768, 512), seed=2, n_caption_images=0,
                        progress=False)
    with openslide.OpenSlide(str(c.slides[0].path)) as o:
        assert o.dimensions == (768, 512)


# --------------------------------------------------------------------------------------------
# the caption database
# --------------------------------------------------------------------------------------------

Q_TUMOUR = ([["breast"], ["tumor", "cancer", "carcinoma", "metastases", "metastasis", "metastatic",
                          "abnormal"]],
            ["ihc", "immunohistochemical", "immunohistochemistry", "immunostain", "photomicrograph",
             "photomicrography"])
Q_MITOSIS = ([["arrow", "arrowhead", "circle"], ["mitotic", "mitoses"]], [])


def _matches(caption: str, query, words: bool) -> bool:
    groups, excluded = query
    text = caption.lower()
    if words:  # a keyword matches the start of a word ("arrow" -> "arrows", "arrowheads")
        has = lambda w: re.search(r"\b" + re.escape(w), text) is not None  # noqa: E731
    else:      # plain substring search
        has = lambda w: w in text  # noqa: E731
    return all(any(has(w) for w in g) for g in groups) and not any(has(w) for w in excluded)


def test_captions_follow_the_arch_books_layout(cohort):
    caps = json.loads(cohort.captions_json.read_text())
    truth = json.loads(cohort.captions_truth.read_text())
    assert list(caps) == [str(i) for i in range(N_CAPTIONS)] == list(truth)
    real = SHARED / "captions" / "arch" / "books_set" / "captions.json"
    real_keys = ({"figure_id", "letter", "caption", "uuid"} if not real.is_file()
                 else set(next(iter(json.loads(real.read_text()).values()))))
    figures: dict[str, list] = {}
    for k, e in caps.items():
        assert set(e) == real_keys
        assert e["caption"].startswith(" ") and len(e["caption"]) > 20
        assert str(uuid.UUID(e["uuid"])) == e["uuid"] and truth[k]["uuid"] == e["uuid"]
        assert e["letter"] in {"Single", "A", "B", "C"}
        with Image.open(cohort.captions_images / f"{e['uuid']}.png") as im:
            assert im.mode == "RGB" and 224 <= min(im.size) and max(im.size) <= 512
            assert im.size == (truth[k]["width"], truth[k]["height"])
        figures.setdefault(e["figure_id"], []).append(e)
    multi = [v for v in figures.values() if len(v) > 1]
    assert multi, "some figures should have several panels"
    for panels in multi:
        assert [p["letter"] for p in panels] == list("ABC"[:len(panels)])
        assert len({p["caption"] for p in panels}) == 1
        assert panels[0]["caption"].lstrip().startswith("A")
    assert {t["kind"] for t in truth.values()} == set(CAPTION_KINDS)
    assert len(list(cohort.captions_images.glob("*.png"))) == N_CAPTIONS


@pytest.mark.parametrize("words", [False, True], ids=["substring", "word-prefix"])
def test_keyword_searches_find_the_intended_kinds(cohort, words):
    caps = json.loads(cohort.captions_json.read_text())
    truth = json.loads(cohort.captions_truth.read_text())
    for query, kind in ((Q_TUMOUR, "tumour"), (Q_MITOSIS, "mitosis")):
        hits = [k for k, e in caps.items() if _matches(e["caption"], query, words)]
        assert len(hits) >= 8, (kind, len(hits))
        precision = np.mean([truth[k]["kind"] == kind for k in hits])
        assert precision >= 0.8, (kind, precision)
        # ... and the search is not trivial: it misses some images of the kind (synonyms,
        # exclusion words), and distractor captions exist
        n_kind = sum(t["kind"] == kind for t in truth.values())
        assert len([k for k in hits if truth[k]["kind"] == kind]) < n_kind
    ihc_caps = [e["caption"].lower() for k, e in caps.items() if truth[k]["kind"] == "ihc"]
    assert any("immuno" in c or "ihc" in c for c in ihc_caps)


def test_caption_images_show_their_kind(cohort):
    truth = json.loads(cohort.captions_truth.read_text())

    def load(k):
        with Image.open(cohort.captions_images / f"{truth[k]['uuid']}.png") as im:
            return np.asarray(im.convert("RGB")).astype(int)

    def brown(a):   # DAB: red > green > blue
        return ((a[..., 0] > a[..., 1] + 15) & (a[..., 1] > a[..., 2] + 10) & (a[..., 0] < 200)).mean()

    ihc = [brown(load(k)) for k, t in truth.items() if t["kind"] == "ihc"]
    he = [brown(load(k)) for k, t in truth.items() if t["kind"] in ("tumour", "normal")]
    assert ihc and he and np.median(ihc) > 0.05 > max(he)
    # mitosis close-ups are at high magnification and contain very dark clumps
    for k, t in truth.items():
        if t["kind"] == "mitosis":
            assert t["mpp"] <= 0.3 and t["n_mitoses"] >= 1
            assert (load(k).sum(axis=-1) < 150).sum() > 50 * t["n_mitoses"]
