"""Foundation-model encoders by short name, offline: every timm architecture built full-size on the meta device
(dimension and output handling without memory), small variants of the same configs with seeded random weights in
local safetensors files (outputs against timm directly with the authors' pooling written out, preprocessing against
torchvision transforms, determinism), hub-cache layouts found with HF_HUB_OFFLINE=1, one-line errors without
weights, transformers backbones (Phikon), and QuiltNet's text tower driving text-to-image retrieval by name."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from alkit.embeddings.encoders import EncoderError, get_encoder
from alkit.embeddings.encoders.cards import HOPTIMUS_MEAN, HOPTIMUS_STD, IMAGENET_MEAN, IMAGENET_STD, all_cards
from alkit.embeddings.encoders.foundation import build_foundation
from alkit.embeddings.encoders.hub import check_encoder_weights, weights_identity
from alkit.embeddings.encoders.timm_family import TimmEncoder, resolve_layers

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TIMM_CARDS = [c for c in all_cards() if c.family == "timm" and c.arch]
SMALL = {"depth": 2, "embed_dim": 96, "num_heads": 2}  # same family and recipe, tiny width / depth
#: prefix tokens (class + register tokens) as the authors document them
PREFIX = {"virchow": 1, "virchow2": 5, "uni2-h": 9, "h-optimus-0": 5, "h-optimus-1": 5}
REVISION = "0123456789abcdef0123456789abcdef01234567"


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))


def _small_reference(card, seed: int = 1):
    """timm's own model of the card's small variant (built directly, not through alkit) and its weights file."""
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(card.arch, pretrained=False, **resolve_layers({**card.kwargs, **SMALL}))
    return model.eval()


def _save(model: torch.nn.Module, path) -> None:
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def _hub_snapshot(cache, repo: str) -> object:
    """An empty snapshot folder ``models--org--name/snapshots/<rev>/`` with ``refs/main`` in a hub cache."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(REVISION)
    snapshot = root / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.mark.parametrize("card", TIMM_CARDS, ids=lambda c: c.name)
def test_full_size_architecture_has_the_card_dimension(card):
    """The real configuration, built on the meta device (no memory, no weights): dimension and token layout."""
    with torch.device("meta"):
        encoder = TimmEncoder(card.arch, card.kwargs, weights=None, weights_id="meta", spec=card.name,
                              mean=card.mean, std=card.std, input_size=card.input_size, pooling=card.pooling)
        out = encoder.encode_images(torch.zeros(2, 3, card.input_size, card.input_size))
    assert encoder.dim == card.dim and tuple(out.shape) == (2, card.dim)
    if card.name in PREFIX:
        assert encoder.model.num_prefix_tokens == PREFIX[card.name]


@pytest.mark.parametrize("card", TIMM_CARDS, ids=lambda c: c.name)
def test_small_variant_from_local_weights(card, tmp_path):
    reference = _small_reference(card)
    weights = tmp_path / "weights.safetensors"
    _save(reference, weights)
    encoder = build_foundation(card.name, str(weights), arch_overrides=SMALL)
    assert encoder.weights_id != "random-init" and encoder.mpp == card.mpp == 0.5
    assert weights_identity(f"{card.name}@{weights}") == encoder.weights_id  # known without building
    assert encoder.input_size == card.input_size == 224 and not encoder.supports_text
    expected_mean = HOPTIMUS_MEAN if card.name.startswith("h-optimus") else IMAGENET_MEAN
    expected_std = HOPTIMUS_STD if card.name.startswith("h-optimus") else IMAGENET_STD
    assert torch.allclose(encoder.pixel_mean.flatten(), torch.tensor(expected_mean))
    assert torch.allclose(encoder.pixel_std.flatten(), torch.tensor(expected_std))
    images = _images(3, 256, seed=len(card.name))
    with torch.no_grad():
        x = encoder.preprocess(images)
        out = encoder(images)
        if card.pooling == "cls+mean":  # the authors' recipe: class token ++ mean of the patch tokens
            tokens = reference.forward_features(x)
            expected = torch.cat([tokens[:, 0], tokens[:, PREFIX[card.name]:].mean(1)], dim=-1)
            assert encoder.dim == 2 * SMALL["embed_dim"]
        else:
            expected = reference(x)
            assert encoder.dim == SMALL["embed_dim"]
    assert out.shape == (3, encoder.dim)
    assert torch.allclose(out, expected, atol=1e-5)
    again = build_foundation(card.name, str(weights), arch_overrides=SMALL)
    with torch.no_grad():
        assert torch.equal(again(images), out)  # deterministic


@pytest.mark.parametrize("name", ["prov-gigapath", "virchow2", "uni"])
def test_preprocessing_matches_torchvision(name, tmp_path):
    from torchvision import transforms as T

    card = next(c for c in TIMM_CARDS if c.name == name)
    _save(_small_reference(card), tmp_path / "w.safetensors")
    encoder = build_foundation(name, str(tmp_path / "w.safetensors"), arch_overrides=SMALL)
    mode = T.InterpolationMode.BICUBIC if card.interpolation == "bicubic" else T.InterpolationMode.BILINEAR
    resize = 256 if name == "prov-gigapath" else 224  # Prov-GigaPath: resize to 256, centre crop 224
    transform = T.Compose([T.Resize(resize, interpolation=mode), T.CenterCrop(224), T.ToTensor(),
                           T.Normalize(card.mean, card.std)])
    images = _images(2, 300, seed=4)
    with torch.no_grad():
        x = encoder.preprocess(images)
    reference = torch.stack([transform(Image.fromarray(im.numpy())) for im in images])
    assert x.shape == reference.shape == (2, 3, 224, 224)
    assert (x - reference).abs().mean() < 0.03


def test_weights_of_another_architecture_are_refused(tmp_path):
    card = next(c for c in TIMM_CARDS if c.name == "uni")
    _save(_small_reference(card), tmp_path / "uni.safetensors")
    with pytest.raises(EncoderError, match="do not fit the architecture"):
        build_foundation("virchow2", str(tmp_path / "uni.safetensors"), arch_overrides=SMALL)
    with pytest.raises(EncoderError, match="no such weights file"):
        get_encoder(f"uni@{tmp_path / 'absent.safetensors'}")


def test_hub_cache_layout_is_found_offline(hub_cache):
    card = next(c for c in TIMM_CARDS if c.name == "virchow2")
    reference = _small_reference(card, seed=3)
    _save(reference, _hub_snapshot(hub_cache, "paige-ai/Virchow2") / "model.safetensors")
    check_encoder_weights("virchow2")  # the CLI's torch-free check passes
    encoder = build_foundation("virchow2", arch_overrides=SMALL)
    assert encoder.weights_id == f"hf:paige-ai/Virchow2@{REVISION[:12]}" == weights_identity("virchow2")
    with torch.no_grad():
        x = encoder.preprocess(_images(1, 224))
        tokens = reference.forward_features(x)
        assert torch.allclose(encoder.encode_images(x), torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], -1),
                              atol=1e-5)


@pytest.mark.parametrize("spec, repo", [("uni", "MahmoodLab/UNI"), ("virchow2", "paige-ai/Virchow2"),
                                        ("quiltnet", "wisdomik/QuiltNet-B-32"), ("phikon-v2", "owkin/phikon-v2"),
                                        ("timm:hf-hub:bioptimus/H-optimus-0", "bioptimus/H-optimus-0")])
def test_missing_weights_fail_in_one_line(hub_cache, spec, repo):
    for attempt in (check_encoder_weights, get_encoder):
        with pytest.raises(EncoderError) as err:
            attempt(spec)
        message = str(err.value)
        assert "\n" not in message and repo in message and str(hub_cache) in message
        assert "HF_HUB_OFFLINE" in message and "@/path/to/" in message
    if spec in ("uni", "virchow2"):
        assert "hf auth login" in message and "accept the licence" in message


def test_cli_fails_before_touching_slides_and_torch(hub_cache, tmp_path):
    """`alkit embed` with absent weights: exit 2 and one line naming the repository, without importing torch
    (a subprocess, since this one has torch loaded) and before the (absent) slide is looked at."""
    import os
    import subprocess
    import sys

    code = ("import sys\nfrom alkit.cli import main\nrc = main(['embed', 'no_such_slide.svs', '--encoder', 'uni', "
            f"'--out', {str(tmp_path / 'out')!r}])\nassert 'torch' not in sys.modules, 'torch imported'\nsys.exit(rc)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "MahmoodLab/UNI" in lines[0] and "no_such_slide" not in lines[0]


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=64, image_size=224, patch_size=14)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        model = transformers.Dinov2Model(config).eval()
    folder = tmp_path_factory.mktemp("phikon_v2")
    model.save_pretrained(folder)
    return model, folder


def test_phikon_v2_from_a_folder_and_the_hub_cache(tiny_dinov2, hub_cache):
    import shutil

    model, folder = tiny_dinov2
    encoder = get_encoder(f"phikon-v2@{folder}")
    assert encoder.dim == 32 and encoder.input_size == 224 and encoder.mpp == 0.5
    images = _images(2, 256)
    with torch.no_grad():
        x = encoder.preprocess(images)
        assert torch.allclose(encoder(images), model(pixel_values=x).last_hidden_state[:, 0], atol=1e-5)
    snapshot = _hub_snapshot(hub_cache, "owkin/phikon-v2")
    for name in ("config.json", "model.safetensors"):
        shutil.copy(folder / name, snapshot / name)
    cached = get_encoder("phikon-v2")
    assert cached.weights_id == f"hf:owkin/phikon-v2@{REVISION[:12]}" == weights_identity("phikon-v2")
    assert weights_identity(f"phikon-v2@{folder}") == encoder.weights_id
    assert weights_identity("handcrafted") is None and weights_identity("timm:hf-hub:a/b") is None
    with torch.no_grad():
        assert torch.allclose(cached(images), encoder(images))


def test_conch_without_its_package_says_how_to_install(monkeypatch):
    import importlib.util

    if importlib.util.find_spec("conch") is not None:
        pytest.skip("the CONCH package is installed here")
    for attempt in (check_encoder_weights, get_encoder):
        with pytest.raises(EncoderError, match="Mahmoodlab/CONCH"):
            attempt("conch")


# ------------------------------------------------------------------ QuiltNet: text-to-image retrieval by name

@pytest.fixture
def quiltnet_cache(hub_cache, tiny_clip):
    """wisdomik/QuiltNet-B-32 in the hub cache, with the tiny OpenCLIP model's config and weights."""
    from tests.conftest import TINY_CLIP_CFG

    model, _ = tiny_clip
    snapshot = _hub_snapshot(hub_cache, "wisdomik/QuiltNet-B-32")
    (snapshot / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP_CFG, "preprocess_cfg": {
        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}}))
    _save(model, snapshot / "open_clip_model.safetensors")
    return hub_cache


@pytest.fixture(scope="module")
def image_db(tmp_path_factory):
    from alkit.synthetic import generate_cohort

    out = tmp_path_factory.mktemp("cohort")
    generate_cohort(out, n_slides=0, seed=3, n_caption_images=8, progress=False)
    return out / "captions"


def test_quiltnet_by_name_retrieves_like_its_open_clip_model(quiltnet_cache, tiny_clip, tiny_clip_spec, image_db,
                                                            tmp_path):
    import open_clip

    from alkit.captions import load_arch
    from alkit.captions.retrieval import retrieve

    model, _ = tiny_clip
    quilt = get_encoder("quiltnet")
    assert quilt.supports_text and quilt.dim == 32 and quilt.mpp == 0.5
    assert quilt.weights_id == f"hf:wisdomik/QuiltNet-B-32@{REVISION[:12]}" == weights_identity("quiltnet")
    with torch.no_grad():  # its text tower is the model's, tokenised by OpenCLIP
        tokens = open_clip.get_tokenizer("ViT-B-32")(["tumor"])
        assert torch.allclose(quilt.encode_text(["tumor"]), model.encode_text(tokens), atol=1e-5)
    db = load_arch(image_db)
    reference = get_encoder(tiny_clip_spec)
    reference.set_normalisation(IMAGENET_MEAN, IMAGENET_STD)  # the cached config's preprocessing
    a = retrieve(db, quilt, "tumor", top_n=4, cache_dir=tmp_path / "a")
    b = retrieve(db, reference, "tumor", top_n=4, cache_dir=tmp_path / "b")
    assert a.ids == b.ids and np.allclose(a.scores, b.scores, atol=1e-5) and len(a.ids) == 4


def test_cli_prototypes_by_text_with_quiltnet(quiltnet_cache, image_db, tmp_path):
    from alkit.cli import main
    from alkit.prototypes.prototype_set import PrototypeSet

    out = tmp_path / "protos"
    assert main(["prototypes", "build", "--db", str(image_db), "--encoder", "quiltnet", "--class", "tumor",
                 "--prompt", "An H&E image of {class_name} tissue.", "--top-n", "3", "--out", str(out)]) == 0
    protos = PrototypeSet.load(out)
    assert protos.encoder == "quiltnet" and protos.dim == 32 and protos["tumor"].shape == (3, 32)


# ------------------------------------------------------------------ the generic timm family

def test_timm_family_local_file_hub_repo_and_tags(tmp_path, hub_cache):
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        reference = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0).eval()
    _save(reference, tmp_path / "tiny.safetensors")
    encoder = get_encoder(f"timm:vit_tiny_patch16_224@{tmp_path / 'tiny.safetensors'}")
    cfg = timm.models.get_pretrained_cfg("vit_tiny_patch16_224")  # timm's own preprocessing constants
    assert encoder.dim == 192 and encoder.input_size == 224 and encoder.resize_size == int(224 / cfg.crop_pct)
    assert torch.allclose(encoder.pixel_mean.flatten(), torch.tensor(cfg.mean))
    images = _images(2, 256)
    with torch.no_grad():
        x = encoder.preprocess(images)
        assert torch.allclose(encoder(images), reference(x), atol=1e-5)
    # a hub repository in timm's layout (config.json with architecture / model_args / pretrained_cfg)
    snapshot = _hub_snapshot(hub_cache, "someone/tiny-vit")
    (snapshot / "config.json").write_text(json.dumps({
        "architecture": "vit_tiny_patch16_224", "model_args": {"num_classes": 0},
        "pretrained_cfg": {"input_size": [3, 224, 224], "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6],
                           "interpolation": "bilinear", "crop_pct": 1.0}}))
    _save(reference, snapshot / "model.safetensors")
    hub = get_encoder("timm:hf-hub:someone/tiny-vit")
    assert hub.weights_id == f"hf:someone/tiny-vit@{REVISION[:12]}" and hub.resize_size == 224
    assert torch.allclose(hub.pixel_std.flatten(), torch.tensor([0.4, 0.5, 0.6]))
    with torch.no_grad():
        x = hub.preprocess(images)
        assert torch.allclose(hub.encode_images(x), reference(x), atol=1e-5)
    with pytest.raises(EncoderError, match="timm/vit_tiny_patch16_224.augreg_in21k") as err:
        get_encoder("timm:vit_tiny_patch16_224@augreg_in21k")  # a tag, offline and not cached
    assert "timm:vit_tiny_patch16_224@/path/to/weights.safetensors" in str(err.value)
    with pytest.raises(EncoderError, match="neither a pretrained tag"):
        get_encoder("timm:vit_tiny_patch16_224@no_such_tag")
    with pytest.raises(EncoderError, match="unknown timm architecture"):
        get_encoder("timm:vit_tinyy_patch16_224")
