"""Text-to-image retrieval with a tiny random-init OpenCLIP model (offline): ranking (cosine, and the reference's
softmax over class prompts), tags, top-N, contrast prompts, precomputed embeddings checked against the encoder,
image-tower embeddings computed once and cached, and the rank option of class queries and `alkit prototypes build`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from alkit.captions import CaptionDBError, ImageEmbedder, ImagePrep, NoHitsError, load_arch, load_table
from alkit.captions.retrieval import (DEFAULT_TEMPLATE, RANKS, RETRIEVAL_PREP, SOFTMAX_SCALE, format_prompt, retrieve,
                                     softmax_scores, text_embeddings)
from alkit.cli import main
from alkit.embeddings.encoders import get_encoder, l2_normalise
from alkit.prototypes.build import ClassQuery, build_prototype_set, find_class_images, with_softmax_contrast
from alkit.prototypes.prototype_set import EncoderMismatchError, PrototypeError, PrototypeSet
from alkit.synthetic import generate_cohort

CLASSES = ("tumor", "normal", "artefact")


@pytest.fixture(scope="module")
def clip(tiny_clip_spec, one_torch_thread):
    """One torch thread while this module runs (restored after it, not leaked into later modules)."""
    return get_encoder(tiny_clip_spec)


@pytest.fixture(scope="module")
def prompts(clip) -> np.ndarray:
    return text_embeddings(clip, [format_prompt(DEFAULT_TEMPLATE, c) for c in CLASSES])


@pytest.fixture(scope="module")
def precomputed_folder(clip, prompts, tmp_path_factory):
    """An OpenPath-style database (tweets.csv + emb.npy) whose image embeddings sit near the class prompts:
    5 per class, 3 mixed."""
    rng = np.random.default_rng(0)
    rows, emb = [], []
    for c, name in enumerate(CLASSES):
        for i in range(5):
            rows.append({"id": f"{name}{i}", "hashtag": "#BreastPath" if i % 2 == 0 else "#GIPath",
                         "text": f"{name} {i}"})
            emb.append(prompts[c] + 0.01 * rng.standard_normal(prompts.shape[1]))
    for i, w in enumerate((0.4, 0.5, 0.6)):  # between tumour and normal
        rows.append({"id": f"mixed{i}", "hashtag": "#BreastPath", "text": f"mixed {i}"})
        emb.append(w * prompts[0] + (1 - w) * prompts[1])
    folder = tmp_path_factory.mktemp("openpath")
    pd.DataFrame(rows).to_csv(folder / "tweets.csv", index=False)
    np.save(folder / "emb.npy", l2_normalise(np.array(emb, np.float32)))
    return folder


@pytest.fixture(scope="module")
def precomputed(clip, precomputed_folder):
    return load_table(precomputed_folder / "tweets.csv", columns={"tags": "hashtag", "caption": "text"},
                      embeddings=precomputed_folder / "emb.npy", embedding_encoder=clip.name)


def test_ranking_is_cosine_to_the_prompt(clip, prompts, precomputed):
    db = precomputed
    r = retrieve(db, clip, "tumor", top_n=5)
    assert r.prompt == "An H&E image of tumor tissue."
    assert sorted(r.ids) == [f"tumor{i}" for i in range(5)]
    expected = db.embeddings @ prompts[0]
    order = np.argsort(-expected, kind="stable")[:5]
    assert r.ids == [db.ids[i] for i in order] and np.allclose(r.scores, expected[order], atol=1e-5)
    assert np.all(np.diff(r.scores) <= 0)
    assert [str(s) for s in r.steps] == ["entries: 18", "with an image or embedding: 18", "top 5: 5"]
    full = retrieve(db, clip, "tumor")  # default top-N 100 > 18 entries: all of them, ranked
    assert len(full) == 18 and full.ids[:5] == r.ids
    rec = r.records()[0]
    assert rec["rank"] == 1 and rec["id"] == r.ids[0] and rec["class"] == "tumor" and rec["score"] == pytest.approx(
        float(r.scores[0]), abs=1e-5)


def test_tags_exclusions_and_contrast(clip, prompts, precomputed):
    db = precomputed
    tagged = retrieve(db, clip, "tumor", tags=["#breastpath"], top_n=100)
    assert set(tagged.ids) == {"tumor0", "tumor2", "tumor4", "normal0", "normal2", "normal4", "artefact0",
                               "artefact2", "artefact4", "mixed0", "mixed1", "mixed2"}
    assert tagged.steps[2].label == "tagged breastpath" and tagged.steps[2].remaining == 12
    excluded = retrieve(db, clip, "tumor", exclude_ids=["tumor0", "tumor1"], top_n=3)
    assert not {"tumor0", "tumor1"} & set(excluded.ids) and excluded.steps[2].remaining == 16
    # contrast: only images closer to the tumour prompt than to the normal and artefact prompts
    c = retrieve(db, clip, "tumor", contrast=["normal", "artefact", "tumor"], top_n=100)
    sims = db.embeddings @ prompts.T
    closer = sims[:, 0] > sims[:, 1:].max(axis=1)
    assert set(c.ids) == {i for i, k in zip(db.ids, closer) if k}
    assert {f"tumor{i}" for i in range(5)} <= set(c.ids) and "mixed0" not in c.ids
    assert c.contrast_prompts == ["An H&E image of normal tissue.", "An H&E image of artefact tissue."]
    with pytest.raises(NoHitsError, match="'tumor'.*tagged DermPath"):
        retrieve(db, clip, "tumor", tags=["DermPath"])


def test_precomputed_embeddings_must_come_from_the_same_encoder(clip, precomputed):
    db = precomputed.subset(precomputed.ids)
    db.embedding_encoder = "plip"
    with pytest.raises(EncoderMismatchError, match="'plip'"):
        retrieve(db, clip, "tumor")
    with pytest.raises(CaptionDBError, match="no text tower"):
        retrieve(precomputed, get_encoder("handcrafted"), "tumor")
    with pytest.raises(CaptionDBError, match="placeholder"):
        retrieve(precomputed, clip, "tumor", template="An H&E image of tumour tissue.")
    with pytest.raises(CaptionDBError, match="top-N"):
        retrieve(precomputed, clip, "tumor", top_n=0)


@pytest.fixture(scope="module")
def image_db(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    generate_cohort(out, n_slides=0, seed=3, n_caption_images=8, progress=False)
    return load_arch(out / "captions")


def test_image_tower_embeddings_are_computed_once_and_cached(clip, image_db, tmp_path, private_cache_dir):
    # the default cache folder follows ALKIT_CACHE_DIR (a temporary folder during the tests)
    assert ImageEmbedder(clip).cache_dir == private_cache_dir / "caption_embeddings"
    cache = tmp_path / "cache"
    first = ImageEmbedder(clip, RETRIEVAL_PREP, cache_dir=cache)
    r1 = retrieve(image_db, clip, "tumor", top_n=5, embedder=first)
    assert (first.computed, first.from_cache) == (8, 0) and first.cache_file.is_file()
    assert first.cache_file.parent == cache and "resize64" in first.cache_file.name
    # the same as the image tower applied by hand to the CLIP view of every image
    images = np.stack([RETRIEVAL_PREP.for_encoder(clip).apply(image_db.read_image(i)) for i in image_db.ids])
    with torch.inference_mode():
        direct = l2_normalise(clip(torch.from_numpy(images))).numpy()
        text = l2_normalise(clip.encode_text([r1.prompt])).numpy()[0]
    order = np.argsort(-(direct @ text), kind="stable")[:5]
    assert r1.ids == [image_db.ids[i] for i in order]
    assert np.allclose(r1.scores, (direct @ text)[order], atol=1e-5)
    # a second run reads the cache: no image goes through the tower again
    second = ImageEmbedder(clip, RETRIEVAL_PREP, cache_dir=cache)
    r2 = retrieve(image_db, clip, "tumor", top_n=5, embedder=second)
    assert (second.computed, second.from_cache) == (0, 8) and r2.ids == r1.ids
    assert np.allclose(r2.scores, r1.scores)
    # a changed image file is embedded again; the others still come from the cache
    changed = image_db.image_path(image_db.ids[0])
    Image.fromarray(np.full((64, 64, 3), 255, np.uint8)).save(changed)
    third = ImageEmbedder(clip, RETRIEVAL_PREP, cache_dir=cache)
    third.embed(image_db, image_db.ids)
    assert (third.computed, third.from_cache) == (1, 7)
    # another preparation has its own cache file; use_cache=False writes nothing
    crop = ImageEmbedder(clip, ImagePrep("crop"), cache_dir=cache)
    assert crop.cache_file != first.cache_file
    nocache = ImageEmbedder(clip, ImagePrep("crop", size=32), cache_dir=tmp_path / "none", use_cache=False)
    nocache.embed(image_db, image_db.ids[:2])
    assert nocache.computed == 2 and not (tmp_path / "none").exists()


# ---------------------------------------------------------------- rank: the reference's softmax


def _reference_softmax(images: np.ndarray, texts: np.ndarray) -> np.ndarray:
    """The reference's scores, written as it writes them: ``(100 · images @ texts.T).softmax(dim=1)``, per
    image the probability of each prompt (torch, float32)."""
    return (100.0 * torch.from_numpy(images) @ torch.from_numpy(texts).t()).softmax(dim=1).numpy()


def test_softmax_ranks_by_the_class_probability_over_the_class_prompts(clip, prompts, precomputed):
    db = precomputed
    r = retrieve(db, clip, "tumor", contrast=["normal", "artefact"], rank="softmax", top_n=100)
    assert r.rank == "softmax" and r.query()["rank"] == "softmax"
    probs = _reference_softmax(db.embeddings, prompts)
    own = probs[:, 0]
    sims = db.embeddings @ prompts.T
    kept = np.flatnonzero(sims[:, 0] > sims[:, 1:].max(axis=1))  # the images whose predicted class is tumour
    # the reference's argmax keeps these and, on a tie, the first class: the image halfway (mixed1) may go either way
    extra = np.setdiff1d(np.flatnonzero(probs.argmax(axis=1) == 0), kept)
    assert set(kept) <= set(np.flatnonzero(probs.argmax(axis=1) == 0)) and set(db.ids[i] for i in extra) <= {"mixed1"}
    order = kept[np.argsort(-own[kept], kind="stable")]
    assert r.ids == [db.ids[i] for i in order]
    np.testing.assert_allclose(r.scores, own[order], rtol=1e-5, atol=1e-6)
    assert np.all(np.diff(r.scores) <= 0) and np.all((r.scores > 0) & (r.scores <= 1))
    assert [str(s) for s in r.steps][-2:] == [f"closer to 'tumor' than to 'normal', 'artefact': {len(kept)}",
                                              f"top 100: {len(kept)}"]
    assert {f"tumor{i}" for i in range(5)} <= set(r.ids)
    assert retrieve(db, clip, "tumor", contrast=["normal", "artefact"], top_n=100).query().get("rank") is None
    # the probabilities themselves: max-subtracted float64, equal to a plain softmax
    sims = np.array([[0.3, 0.2, -0.1], [0.9, 0.95, 0.1], [1.0, 1.0, 1.0]])
    plain = np.exp(SOFTMAX_SCALE * sims) / np.exp(SOFTMAX_SCALE * sims).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(softmax_scores(sims), plain[:, 0], rtol=1e-12)
    assert softmax_scores(np.array([[1e3, -1e3]]))[0] == 1.0  # no overflow


def test_softmax_and_cosine_order_images_differently(clip, tmp_path):
    """An image on the tumour prompt (cosine 1) is also close to the normal prompt; an image turned away from
    the normal prompt has a lower cosine but a larger margin: cosine ranks the first first, softmax the second."""
    t0, t1 = text_embeddings(clip, [format_prompt(DEFAULT_TEMPLATE, c) for c in ("tumor", "normal")]).astype(np.float64)
    cos_phi = float(t0 @ t1)
    e1 = (t1 - cos_phi * t0) / np.linalg.norm(t1 - cos_phi * t0)
    sin_phi = float(np.sqrt(1 - cos_phi ** 2))
    on_prompt, turned_away = t0, cos_phi * t0 - sin_phi * e1  # cosines to (t0, t1): (1, cos φ), (cos φ, cos 2φ)
    emb = np.stack([on_prompt, turned_away, t1]).astype(np.float32)
    pd.DataFrame({"id": ["on", "away", "normal"], "text": ["a", "b", "c"]}).to_csv(tmp_path / "t.csv", index=False)
    db = load_table(tmp_path / "t.csv", columns={"caption": "text"}, embeddings=emb, embedding_encoder=clip.name)
    assert retrieve(db, clip, "tumor", contrast=["normal"]).ids == ["on", "away"]
    assert retrieve(db, clip, "tumor", contrast=["normal"], rank="softmax").ids == ["away", "on"]


def test_rank_errors(clip, precomputed):
    assert RANKS == ("cosine", "softmax")
    with pytest.raises(CaptionDBError, match="no other class is given to contrast with"):
        retrieve(precomputed, clip, "tumor", rank="softmax")
    with pytest.raises(CaptionDBError, match="no other class"):
        retrieve(precomputed, clip, "tumor", contrast=["tumor"], rank="softmax")  # itself does not count
    with pytest.raises(CaptionDBError, match="rank must be one of cosine, softmax"):
        retrieve(precomputed, clip, "tumor", rank="dot")


def test_class_queries_take_the_rank(clip, precomputed):
    query = ClassQuery.from_config("tumor", {"prompt": DEFAULT_TEMPLATE, "rank": "softmax", "top_n": 3})
    assert query.rank == "softmax" and query.contrast == ()
    assert ClassQuery.from_config("tumor", {"prompt": DEFAULT_TEMPLATE}).rank == "cosine"  # the default
    with pytest.raises(PrototypeError, match=r"key 'prototypes.classes.tumor.rank' must be one of cosine, softmax"):
        ClassQuery.from_config("tumor", {"prompt": DEFAULT_TEMPLATE, "rank": "dot"})
    with pytest.raises(PrototypeError, match=r"'prototypes.classes.tumor.rank' does not go with 'with'"):
        ClassQuery.from_config("tumor", {"with": [["tumor"]], "rank": "softmax"})
    with pytest.raises(PrototypeError, match="rank must be one of"):
        ClassQuery("tumor", prompt=DEFAULT_TEMPLATE, rank="dot")
    # a study's softmax classes are contrasted with its other retrieval classes (keyword classes have no prompt)
    queries = with_softmax_contrast([query, ClassQuery("normal", prompt=DEFAULT_TEMPLATE),
                                     ClassQuery("mitosis", ids=("x",))])
    assert queries[0].contrast == ("normal",) and queries[1:] == [ClassQuery("normal", prompt=DEFAULT_TEMPLATE),
                                                                  ClassQuery("mitosis", ids=("x",))]
    with pytest.raises(PrototypeError, match="rank 'softmax' is over the prompts of several classes"):
        with_softmax_contrast([query, ClassQuery("mitosis", ids=("x",))])
    found = find_class_images(precomputed, queries[0], clip)
    expected = retrieve(precomputed, clip, "tumor", top_n=3, contrast=["normal"], rank="softmax")
    assert found.ids == expected.ids and found.provenance == expected.query() and found.provenance["rank"] == "softmax"


def test_cli_rank_softmax_contrasts_the_retrieval_classes(clip, tiny_clip_spec, precomputed, precomputed_folder,
                                                          tmp_path, capsys):
    db_args = ["--db", str(precomputed_folder / "tweets.csv"), "--columns", "tags=hashtag,caption=text",
               "--embeddings", str(precomputed_folder / "emb.npy"), "--embeddings-encoder", clip.name]
    out = tmp_path / "cli"
    assert main(["prototypes", "build", *db_args, "--encoder", tiny_clip_spec, "--class", "tumor", "--class",
                 "normal", "--rank", "softmax", "--top-n", "3", "--out", str(out), "-q"]) == 0
    api = build_prototype_set(precomputed, [
        ClassQuery("tumor", prompt=DEFAULT_TEMPLATE, top_n=3, contrast=("normal",), rank="softmax"),
        ClassQuery("normal", prompt=DEFAULT_TEMPLATE, top_n=3, contrast=("tumor",), rank="softmax")], clip)
    api.save(tmp_path / "api")
    assert (out / "prototypes.npz").read_bytes() == (tmp_path / "api" / "prototypes.npz").read_bytes()
    docs = [json.loads((d / "prototypes.json").read_text()) for d in (out, tmp_path / "api")]
    for doc in docs:
        doc.pop("created")
    assert docs[0] == docs[1] and {c["query"]["rank"] for c in docs[0]["classes"]} == {"softmax"}
    assert PrototypeSet.load(out).names == ["tumor", "normal"]
    capsys.readouterr()
    # one retrieval class has nothing to take a softmax over: refused, saying why
    assert main(["prototypes", "build", *db_args, "--encoder", tiny_clip_spec, "--class", "tumor", "--rank",
                 "softmax", "--out", str(tmp_path / "one"), "-q"]) == 2
    assert "no other class is given to contrast with" in capsys.readouterr().err
