"""Text-to-image retrieval with a tiny random-init OpenCLIP model (offline): ranking, tags, top-N, contrast
prompts, precomputed embeddings checked against the encoder, and image-tower embeddings computed once and cached."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from alkit.captions import CaptionDBError, ImageEmbedder, ImagePrep, NoHitsError, load_arch, load_table
from alkit.captions.retrieval import (DEFAULT_TEMPLATE, RETRIEVAL_PREP, format_prompt, retrieve, text_embeddings)
from alkit.embeddings.encoders import get_encoder, l2_normalise
from alkit.prototypes.prototype_set import EncoderMismatchError
from alkit.synthetic import generate_cohort

CLASSES = ("tumor", "normal", "artefact")


@pytest.fixture(scope="module")
def clip(tiny_clip_spec):
    torch.set_num_threads(1)
    return get_encoder(tiny_clip_spec)


@pytest.fixture(scope="module")
def prompts(clip) -> np.ndarray:
    return text_embeddings(clip, [format_prompt(DEFAULT_TEMPLATE, c) for c in CLASSES])


@pytest.fixture(scope="module")
def precomputed(clip, prompts, tmp_path_factory):
    """An OpenPath-style database whose image embeddings sit near the class prompts: 5 per class, 3 mixed."""
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
    return load_table(folder / "tweets.csv", columns={"tags": "hashtag", "caption": "text"},
                      embeddings=folder / "emb.npy", embedding_encoder=clip.name)


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
