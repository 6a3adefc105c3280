"""Prototype sets: image preparation that keeps magnification, building, saving / loading, encoder checks, and
the synthetic caption database's "tumor" prototypes coming from tumour images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from alkit.captions import (CaptionDBError, ImagePrep, KeywordQuery, load_arch, load_table, read_hits, search)
from alkit.captions.images import centre_crop_pad, crop_box
from alkit.cli import main
from alkit.embeddings.encoders import get_encoder
from alkit.prototypes.prototype_set import (ClassPrototypes, EncoderMismatchError, PrototypeError, PrototypeSet, build_prototypes,
                              read_boxes, typicality)
from alkit.embeddings.store import write_store
from alkit.synthetic import generate_cohort

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BREAST_WITH = ("breast", "abnormal,tumor,cancer,carcinoma,metastases,metastasis,metastatic")
BREAST_WITHOUT = "IHC,immunohistochemical,immunohistochemistry,immunostain,photomicrograph,photomicrography"
TUMOR = KeywordQuery("tumor", tuple(tuple(g.split(",")) for g in BREAST_WITH), tuple(BREAST_WITHOUT.split(",")))


@pytest.fixture(scope="module")
def handcrafted():
    return get_encoder("handcrafted")


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """The caption database of `alkit synth` (seed 0, 120 caption images), without slides."""
    out = tmp_path_factory.mktemp("synth")
    generate_cohort(out, n_slides=0, seed=0, n_caption_images=120, progress=False)
    return out / "captions"


def _truth(folder: Path) -> dict[str, dict]:
    return {v["uuid"]: v for v in json.loads((folder / "truth.json").read_text()).values()}


# ---------------------------------------------------------------------- image preparation


def _stripes(h: int, w: int, period: int = 8) -> np.ndarray:
    """Vertical stripes (period in px) with a row ramp, so positions can be told apart."""
    x = np.arange(w)
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.where((x // (period // 2)) % 2 == 0, 40, 200)[None, :]
    img[..., 1] = (np.arange(h) % 256)[:, None]
    img[..., 2] = (x % 256)[None, :]
    return img


def test_centre_crop_keeps_pixels_and_pads_white():
    img = _stripes(200, 300)
    out = ImagePrep("crop", size=224).apply(img)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    # columns: the central 224 of 300 (offset 38); rows: all 200, padded by 12 white rows above and below
    assert np.array_equal(out[12:212], img[:, 38:262])
    assert np.all(out[:12] == 255) and np.all(out[212:] == 255)
    # magnification is kept: the stripe period is still 8 px; resize changes it
    red = out[100, :, 0].astype(int)
    assert np.all(np.abs(np.diff(np.flatnonzero(np.diff(red) != 0))) == 4)
    resized = ImagePrep("resize", size=100).apply(img)
    assert resized.shape == (100, 100, 3)
    assert np.array_equal(centre_crop_pad(img, 50), img[75:125, 125:175])


def test_scale_boxes_and_padding():
    img = _stripes(400, 400)
    half = ImagePrep("crop", size=224, scale=0.5).apply(img)  # 400 -> 200 px, then padded to 224
    assert np.all(half[:12] == 255) and not np.all(half[12:212] == 255)
    # a crop box around a "figure", past the image's edge: padded, then resized to 64 x 64
    dot = np.full((100, 100, 3), 230, np.uint8)
    dot[5:15, 5:15] = 0
    box = crop_box(dot, (-10, -10, 40, 40))
    assert box.shape == (40, 40, 3) and np.all(box[:10] == 255) and np.all(box[15:25, 15:25] == 0)
    out = ImagePrep("resize", size=64).apply(dot, box=(0, 0, 20, 20))
    assert out.shape == (64, 64, 3) and out[20:44, 20:44].max() < 30 and out[60:, 60:].min() > 200
    with pytest.raises(CaptionDBError, match="empty"):
        crop_box(dot, (0, 0, 0, 5))
    with pytest.raises(CaptionDBError):
        ImagePrep("stretch")


def test_read_boxes(tmp_path):
    (tmp_path / "b.json").write_text(json.dumps({"u1": [1, 2, 30, 40.4]}))
    assert read_boxes(tmp_path / "b.json") == {"u1": (1, 2, 30, 40)}
    (tmp_path / "l.json").write_text(json.dumps([{"id": "u2", "box": [0, 0, 8, 8]}]))
    assert read_boxes(tmp_path / "l.json") == {"u2": (0, 0, 8, 8)}
    (tmp_path / "bad.json").write_text(json.dumps({"u1": [1, 2, 0, 4]}))
    with pytest.raises(PrototypeError, match="w, h > 0"):
        read_boxes(tmp_path / "bad.json")


# ---------------------------------------------------------------------- the synthetic database


def test_synthetic_tumor_prototypes_come_from_tumour_images(synth, handcrafted, tmp_path):
    db, truth = load_arch(synth), _truth(synth)
    hits = search(db, TUMOR)
    protos = build_prototypes(db, {"tumor": hits.ids}, handcrafted, queries={"tumor": TUMOR.to_dict()},
                              cache_dir=tmp_path)
    kinds = [truth[p["id"]]["kind"] for p in protos.classes["tumor"].provenance]
    assert len(kinds) == len(hits) >= 20
    assert set(kinds) == {"tumour"}  # no artefact, IHC, normal or mitosis image among them
    # whole captions instead of each panel's part would let a benign panel in ("A, Benign lymph node ...
    # B, Lymph node with metastatic breast carcinoma")
    whole = search(db, TUMOR, field="caption")
    assert {truth[i]["kind"] for i in whole.ids} == {"tumour", "normal"}
    # the prototypes find tumour: every other tumour image is closer to them than any artefact, IHC or normal image
    others = [i for i in db.ids if i not in set(hits.ids)]
    emb = build_prototypes(db, {"all": others}, handcrafted, cache_dir=tmp_path)["all"]
    sim = protos.similarity(emb, "tumor")
    kind = np.array([truth[i]["kind"] for i in others])
    tumourish = np.isin(kind, ["tumour", "mitosis"])
    assert tumourish.sum() >= 10 and (kind == "ihc").sum() >= 5 and (kind == "artefact").sum() >= 5
    assert sim[tumourish].min() > sim[~tumourish].max()


def test_save_load_round_trip_and_checks(synth, handcrafted, tmp_path):
    db = load_arch(synth)
    ids = db.ids[:6]
    protos = build_prototypes(db, {"a": ids[:4], "b b/ü": ids[4:]}, handcrafted, prep=ImagePrep("crop", size=200),
                              cache_dir=tmp_path / "cache")
    assert protos["a"].shape == (4, 97) and np.allclose(np.linalg.norm(protos["a"], axis=1), 1)
    folder = protos.save(tmp_path / "protos")
    assert sorted(p.name for p in folder.iterdir()) == ["prototypes.json", "prototypes.npz"]
    back = PrototypeSet.load(folder)
    assert back.names == ["a", "b b/ü"] and back.encoder == "handcrafted" and back.dim == 97
    assert np.array_equal(back["b b/ü"], protos["b b/ü"])
    assert back.preprocessing == {"mode": "crop", "size": 200, "scale": 1.0, "pad_value": 255}
    prov = back.classes["a"].provenance[0]
    assert prov["id"] == ids[0] and prov["caption"] == db.entry(ids[0])["caption"]
    assert prov["image"] == f"images/{ids[0]}.png" and prov["box"] is None
    doc = json.loads((folder / "prototypes.json").read_text())
    assert doc["encoder"]["weights_id"] == handcrafted.weights_id and doc["classes"][0]["k"] == 4
    # encoder checks: name and dimension
    back.check_encoder(handcrafted)
    with pytest.raises(EncoderMismatchError, match="'resnet18'"):
        back.check_encoder("resnet18", 97)
    with pytest.raises(EncoderMismatchError, match="512-d"):
        back.check_encoder("handcrafted", 512)
    store = write_store(tmp_path / "s.h5", np.zeros((2, 2)), np.ones((2, 512), np.float32),
                        {"encoder": "resnet18@imagenet", "weights_id": "x", "mpp": 0.5, "patch": 256, "stride": 256,
                         "slide_dimensions": [512, 512], "slide_mpp": 0.25})
    from alkit.embeddings.store import read_attrs
    with pytest.raises(EncoderMismatchError, match="resnet18@imagenet"):
        back.check_store(read_attrs(store))
    with pytest.raises(EncoderMismatchError):
        back.similarity(np.ones((3, 512)), "a")
    feats = np.random.default_rng(0).standard_normal((5, 97))
    expected = ((feats / np.linalg.norm(feats, axis=1, keepdims=True)) @ back["a"].T).max(axis=1)
    assert np.allclose(back.similarity(feats, "a"), expected, atol=1e-5)
    # files that do not belong together
    other = build_prototypes(db, {"a": ids[:2]}, handcrafted, cache_dir=tmp_path / "cache").save(tmp_path / "other")
    (folder / "prototypes.npz").write_bytes((other / "prototypes.npz").read_bytes())
    with pytest.raises(PrototypeError, match="does not belong"):
        PrototypeSet.load(folder)
    with pytest.raises(PrototypeError, match="not a prototype set"):
        PrototypeSet.load(tmp_path)
    with pytest.raises(PrototypeError, match="no prototypes for class"):
        back["c"]
    with pytest.raises(PrototypeError, match="non-empty"):
        ClassPrototypes("x", np.zeros((0, 3)), [])


def test_missing_images_and_unknown_ids(synth, handcrafted, tmp_path):
    db = load_arch(synth)
    gone = db.ids[0]
    db.table.loc[0, "image"] = None  # as if its file were missing
    with pytest.raises(PrototypeError, match="1 of 3 images are missing"):
        build_prototypes(db, {"t": db.ids[:3]}, handcrafted, cache_dir=tmp_path)
    protos = build_prototypes(db, {"t": db.ids[:3]}, handcrafted, skip_missing=True, cache_dir=tmp_path)
    assert gone not in [p["id"] for p in protos.classes["t"].provenance] and protos.classes["t"].k == 2
    with pytest.raises(CaptionDBError, match="not in the caption database"):
        build_prototypes(db, {"t": ["nope"]}, handcrafted, cache_dir=tmp_path)
    with pytest.raises(PrototypeError, match="crop boxes name ids"):
        build_prototypes(db, {"t": db.ids[1:2]}, handcrafted, boxes={"nope": (0, 0, 5, 5)}, cache_dir=tmp_path)


def test_crop_boxes_around_figures(synth, handcrafted, tmp_path):
    """Mitosis-style prototypes: a box around each figure, resized to 64 x 64, then the encoder's own view."""
    db, truth = load_arch(synth), _truth(synth)
    ids = [i for i, t in truth.items() if t["kind"] == "mitosis"][:3]
    boxes = {i: (10, 20, 48, 40) for i in ids}
    prep = ImagePrep("resize", size=64)
    protos = build_prototypes(db, {"mitosis": ids}, handcrafted, prep=prep, boxes=boxes, cache_dir=tmp_path)
    assert [p["box"] for p in protos.classes["mitosis"].provenance] == [[10, 20, 48, 40]] * 3
    assert protos.preprocessing == {"mode": "resize", "size": 64, "scale": 1.0, "pad_value": 255}
    images = np.stack([prep.apply(db.read_image(i), boxes[i]) for i in ids])
    with torch.inference_mode():
        expected = handcrafted(torch.from_numpy(images)).numpy()
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.allclose(protos["mitosis"], expected, atol=1e-5)
    whole = build_prototypes(db, {"mitosis": ids}, handcrafted, prep=prep, cache_dir=tmp_path)  # its own cache keys
    assert not np.allclose(whole["mitosis"], protos["mitosis"])


def test_precomputed_embeddings_become_prototypes(tiny_clip_spec, tmp_path):
    clip = get_encoder(tiny_clip_spec)
    emb = np.random.default_rng(1).standard_normal((4, clip.dim)).astype(np.float32)
    pd.DataFrame({"id": list("abcd"), "text": list("wxyz")}).to_csv(tmp_path / "t.csv", index=False)
    db = load_table(tmp_path / "t.csv", embeddings=emb, embedding_encoder=clip.name)
    protos = build_prototypes(db, {"t": ["c", "a"]}, clip)
    assert np.allclose(protos["t"], db.embeddings[[2, 0]]) and protos.preprocessing["mode"] == "precomputed"
    db.embedding_encoder = "plip"
    with pytest.raises(EncoderMismatchError, match="precomputed embeddings"):
        build_prototypes(db, {"t": ["a"]}, clip)


def test_typicality_marks_the_odd_one_out():
    base = np.array([1.0, 0.0, 0.0])
    emb = np.stack([base + [0, 0.1, 0], base + [0, 0, 0.1], base + [0, -0.1, 0], [0.0, 1.0, 0.0]])
    t = typicality(emb)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    for i in range(4):  # cosine to the mean of the other rows
        mean = np.delete(unit, i, axis=0).sum(axis=0)
        assert t[i] == pytest.approx(unit[i] @ mean / np.linalg.norm(mean), abs=1e-6)
    assert t.argmin() == 3 and t[:3].min() > 0.8 and abs(t[3]) < 0.2
    with pytest.raises(PrototypeError, match="at least two"):
        typicality(emb[:1])


# ---------------------------------------------------------------------- the command line


def test_cli_search_review_exclude_build(tmp_path, handcrafted, capsys):
    """The paper's workflow on a database whose keyword hits need cleaning: search, review, exclude, build."""
    generate_cohort(tmp_path / "c", n_slides=0, seed=2, n_caption_images=60, progress=False)
    db_dir, truth = tmp_path / "c" / "captions", _truth(tmp_path / "c" / "captions")
    hits_file = tmp_path / "hits.json"
    args = ["prototypes", "search", "--db", str(db_dir), "--class", "tumor", "--out", str(hits_file)]
    for g in BREAST_WITH:
        args += ["--with", g]
    assert main(args + ["--without", BREAST_WITHOUT]) == 0
    hits = read_hits(hits_file)
    kinds = {h["id"]: truth[h["id"]]["kind"] for h in hits}
    odd = sorted(i for i, k in kinds.items() if k != "tumour")
    assert len(hits) >= 15 and 1 <= len(odd) <= 3 and "ihc" in kinds.values()  # a HER2 "DAB" caption slips through
    # review: contact sheets with every hit; typicality puts the IHC image first
    assert main(["prototypes", "review", str(hits_file), "--db", str(db_dir), "--out", str(tmp_path / "s.html"),
                 "--encoder", "handcrafted", "--cache", str(tmp_path / "cache")]) == 0
    page = (tmp_path / "s.html").read_text()
    assert all(h["id"] in page for h in hits) and page.count("<img src=\"data:image/jpeg;base64,") == len(hits)
    first = page.index('value="', page.index('class="ex"') - 40)
    ihc = next(i for i, k in kinds.items() if k == "ihc")
    assert page[first + 7:first + 7 + len(ihc)] == ihc and "typicality" in page
    assert main(["prototypes", "review", str(hits_file), "--db", str(db_dir), "--out", str(tmp_path / "s.png")]) == 0
    # the reviewer lists what is not tumour; build leaves it out
    (tmp_path / "exclude.txt").write_text("".join(f"{i}  # {kinds[i]}\n" for i in odd))
    out = tmp_path / "protos"
    assert main(["prototypes", "build", "--db", str(db_dir), "--class", f"tumor={hits_file}", "--encoder",
                 "handcrafted", "--exclude", str(tmp_path / "exclude.txt"), "--cache", str(tmp_path / "cache"),
                 "--out", str(out), "-q"]) == 0
    protos = PrototypeSet.load(out)
    assert {truth[p["id"]]["kind"] for p in protos.classes["tumor"].provenance} == {"tumour"}
    assert protos.classes["tumor"].k == len(hits) - len(odd)
    assert protos.classes["tumor"].query["excluded"] == len(odd)
    # slides embedded with another encoder: refused, in one line
    store = write_store(tmp_path / "s.h5", np.zeros((1, 2)), np.ones((1, 512), np.float32),
                        {"encoder": "resnet18", "weights_id": "x", "mpp": 0.5, "patch": 256, "stride": 256,
                         "slide_dimensions": [256, 256], "slide_mpp": 0.25})
    capsys.readouterr()
    rc = main(["prototypes", "build", "--db", str(db_dir), "--class", f"tumor={hits_file}", "--encoder", "handcrafted",
               "--check-store", str(store), "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "p2"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "'resnet18'" in err and not (tmp_path / "p2").exists()


def test_cli_build_by_retrieval(tmp_path, tiny_clip_spec, capsys):
    generate_cohort(tmp_path / "c", n_slides=0, seed=4, n_caption_images=10, progress=False)
    db_dir, out = tmp_path / "c" / "captions", tmp_path / "p"
    rc = main(["prototypes", "build", "--db", str(db_dir), "--encoder", tiny_clip_spec, "--class", "tumor",
               "--class", "normal", "--top-n", "3", "--cache", str(tmp_path / "cache"), "--out", str(out), "-q"])
    assert rc == 0
    protos = PrototypeSet.load(out)
    assert protos.encoder == tiny_clip_spec and protos.dim == 32 and set(protos.names) == {"tumor", "normal"}
    tumor_ids = [h["id"] for h in read_hits(out / "retrieved_tumor.json")]
    assert len(tumor_ids) == 3 and [p["id"] for p in protos.classes["tumor"].provenance] == tumor_ids
    assert protos.classes["tumor"].query["prompt"] == "An H&E image of tumor tissue."
    assert protos.preprocessing["mode"] == "crop"  # ranked on the CLIP view, embedded without rescaling
    assert "prompt 'An H&E image of normal tissue.'" in capsys.readouterr().out
    rc = main(["prototypes", "build", "--db", str(db_dir), "--encoder", "handcrafted", "--class", "tumor",
               "--out", str(tmp_path / "p2")])
    assert rc == 2 and "no text tower" in capsys.readouterr().err


def test_cli_build_from_openpath_style_embeddings(tmp_path, tiny_clip_spec):
    """Precomputed embeddings near the class prompts (like OpenPath's PLIP embeddings), a tag filter, contrast."""
    from alkit.captions.retrieval import format_prompt, text_embeddings
    clip = get_encoder(tiny_clip_spec)
    prompts = text_embeddings(clip, [format_prompt("A photo of {class_name}.", c) for c in ("tumor", "normal")])
    rng = np.random.default_rng(0)
    ids = [f"{c}{i}" for c in ("tumor", "normal") for i in range(4)] + ["mixed"]
    emb = np.concatenate([prompts[[0] * 4 + [1] * 4] + 0.01 * rng.standard_normal((8, 32)),
                          0.3 * prompts[[0]] + 0.7 * prompts[[1]]])
    np.save(tmp_path / "emb.npy", emb / np.linalg.norm(emb, axis=1, keepdims=True))
    pd.DataFrame({"id": ids, "hashtag": ["#BreastPath"] * 9, "text": ids}).to_csv(tmp_path / "t.csv", index=False)
    common = ["prototypes", "build", "--db", str(tmp_path / "t.csv"), "--embeddings", str(tmp_path / "emb.npy"),
              "--columns", "tags=hashtag,caption=text", "--encoder", tiny_clip_spec,
              "--prompt", "A photo of {class_name}.",
              "--tag", "BreastPath", "--class", "tumor", "--class", "normal", "--top-n", "5", "-q"]
    assert main(common + ["--embeddings-encoder", tiny_clip_spec, "--contrast", "--out", str(tmp_path / "p")]) == 0
    protos = PrototypeSet.load(tmp_path / "p")
    got = {n: sorted(p["id"] for p in c.provenance) for n, c in protos.classes.items()}
    assert got == {"tumor": [f"tumor{i}" for i in range(4)],
                   "normal": sorted([f"normal{i}" for i in range(4)] + ["mixed"])}
    assert protos.preprocessing["mode"] == "precomputed"
    assert main(common + ["--embeddings-encoder", "plip", "--out", str(tmp_path / "p2")]) == 2
