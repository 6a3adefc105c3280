"""Encoders through their real loaders: checkpoints written here, tiny OpenCLIP / CLIP models, real H&E tiles.

No network: the big pretrained weights are never fetched; tiny models with random weights go through
exactly the code paths real checkpoints take.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alkit.embeddings.encoders import (DEFAULT_ENCODER, Encoder, EncoderError, available_encoders, get_encoder, l2_normalise,
                            parse_spec)
from alkit.embeddings.encoders.handcrafted import feature_names, rgb_to_hed
from conftest import TINY_CLIP, TINY_CLIP_CFG  # the tiny OpenCLIP model's fixture (tiny_clip) lives there too

CAPTIONS = ["an H&E image of invasive carcinoma", "benign stroma", "“tag along” lymphocytes &amp; ER&#945",
            "a very long caption " + "with many words " * 40]


class NotAStateDict:
    """A custom class: pickling it into a checkpoint must make alkit refuse the file."""

    def __init__(self) -> None:
        self.payload = [1, 2, 3]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tests run many small ops: one intra-op thread avoids OpenMP spin-waiting (several-fold
    slowdowns) when other processes load the machine; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _images(n: int = 3, size: int = 256, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))


# ---------------------------------------------------------------- registry and specs

def test_spec_parsing():
    assert parse_spec("handcrafted") == ("handcrafted", None)
    assert parse_spec("resnet18@/m/x@y.ckpt") == ("resnet18", "/m/x@y.ckpt")
    assert parse_spec("open_clip:ViT-B-32@laion2b_s34b_b79k") == ("open_clip", "ViT-B-32@laion2b_s34b_b79k")
    assert parse_spec("open_clip:hf-hub:wisdomik/QuiltNet-B-32") == ("open_clip", "hf-hub:wisdomik/QuiltNet-B-32")
    assert parse_spec("open_clip:ViT-B-32@/models/quilt.pt") == ("open_clip", "ViT-B-32@/models/quilt.pt")
    for bad in ("", "resnet18@", "open_clip@ViT-B-32", "resnet18:imagenet"):
        with pytest.raises(EncoderError):
            parse_spec(bad)


def test_unknown_encoder_lists_available():
    with pytest.raises(EncoderError) as err:
        get_encoder("nope")
    message = str(err.value)
    assert "'nope'" in message
    for name in ("handcrafted", "resnet18", "open_clip:", "plip"):
        assert name in message
    assert set(available_encoders()) >= {"handcrafted", "resnet18", "open_clip:", "plip"}
    assert DEFAULT_ENCODER == "handcrafted"


def test_l2_normalise_torch_and_numpy():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    assert torch.allclose(l2_normalise(x), torch.tensor([[0.6, 0.8], [0.0, 0.0]]))
    assert np.allclose(l2_normalise(x.numpy()), [[0.6, 0.8], [0.0, 0.0]])


# ---------------------------------------------------------------- resnet18

@pytest.fixture(scope="module")
def reference_resnet() -> torch.nn.Module:
    from torchvision.models import resnet18
    torch.manual_seed(123)
    net = resnet18(weights=None)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a wrongly loaded buffer would show
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def _backbone_outputs(net: torch.nn.Module, encoder: Encoder, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    fc, net.fc = net.fc, torch.nn.Identity()
    try:
        with torch.no_grad():
            x = encoder.preprocess(images)
            return net(x), encoder(images)
    finally:
        net.fc = fc


def test_resnet18_ciga_lightning_checkpoint(tmp_path, reference_resnet):
    state = reference_resnet.state_dict()
    ckpt = {
        "epoch": 99, "global_step": 12345, "pytorch-lightning_version": "1.0.0",
        "state_dict": {**{f"model.resnet.{k}": v for k, v in state.items()},
                       "model.projection.0.weight": torch.randn(128, 512)},  # SimCLR head: not backbone
        "optimizer_states": [{"state": {0: {"momentum_buffer": torch.zeros(3)}},
                              "param_groups": [{"lr": 0.1, "params": [0]}]}],
        "lr_schedulers": [],
        "hparams": argparse.Namespace(batch_size=512, lr=0.1),  # plain hyper-parameter bag: allowed
    }
    path = tmp_path / "tenpercent_resnet18.ckpt"
    torch.save(ckpt, path)
    encoder = get_encoder(f"resnet18@{path}")
    assert encoder.name == f"resnet18@{path}" and encoder.dim == 512 and not encoder.supports_text
    assert len(encoder.weights_id) == 16 and encoder.weights_id != "random-init"
    expected, got = _backbone_outputs(reference_resnet, encoder, _images(2, 224))
    assert got.shape == (2, 512) and got.dtype == torch.float32
    assert torch.allclose(got, expected, atol=1e-5)


def test_resnet18_plain_state_dict(tmp_path, reference_resnet):
    path = tmp_path / "plain.pt"
    torch.save(reference_resnet.state_dict(), path)
    encoder = get_encoder(f"resnet18@{path}")
    expected, got = _backbone_outputs(reference_resnet, encoder, _images(2, 256))
    assert torch.allclose(got, expected, atol=1e-5)
    # the same bytes give the same weights id; random init is seeded, so reproducible too
    assert get_encoder(f"resnet18@{path}").weights_id == encoder.weights_id
    a, b = get_encoder("resnet18"), get_encoder("resnet18@none")
    assert a.weights_id == "random-init"
    with torch.no_grad():
        assert torch.equal(a(_images(1, 224)), b(_images(1, 224)))


def test_resnet18_refuses_pickled_objects(tmp_path, reference_resnet):
    path = tmp_path / "unsafe.ckpt"
    torch.save({"state_dict": reference_resnet.state_dict(), "extra": NotAStateDict()}, path)
    with pytest.raises(EncoderError, match="non-tensor") as err:
        get_encoder(f"resnet18@{path}")
    assert str(path) in str(err.value) and "state dict" in str(err.value)


def test_resnet18_mismatched_and_missing_files(tmp_path, reference_resnet):
    partial = {f"model.{k}": v for k, v in reference_resnet.state_dict().items() if not k.startswith("layer4")}
    path = tmp_path / "partial.pt"
    torch.save(partial, path)
    with pytest.raises(EncoderError, match="missing") as err:
        get_encoder(f"resnet18@{path}")
    assert str(path) in str(err.value) and "layer4" in str(err.value)

    unrelated = tmp_path / "unrelated.pt"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, unrelated)
    with pytest.raises(EncoderError, match="unrelated.pt"):
        get_encoder(f"resnet18@{unrelated}")

    with pytest.raises(EncoderError, match="no such checkpoint file"):
        get_encoder(f"resnet18@{tmp_path / 'absent.ckpt'}")


# ---------------------------------------------------------------- open_clip

def test_open_clip_local_checkpoint_matches_model(tiny_clip):
    import open_clip
    model, weights = tiny_clip
    encoder = get_encoder(f"open_clip:{TINY_CLIP}@{weights}")
    assert encoder.dim == 32 and encoder.input_size == 64 and encoder.supports_text
    images = _images(2, 256)
    with torch.no_grad():
        x = encoder.preprocess(images)
        assert torch.allclose(encoder.encode_images(x), model.encode_image(x), atol=1e-5)
        tokens = open_clip.get_tokenizer(TINY_CLIP)(CAPTIONS)
        text = encoder.encode_text(CAPTIONS)
        assert text.shape == (len(CAPTIONS), 32)
        assert torch.allclose(text, model.encode_text(tokens), atol=1e-5)
        # tensor preprocessing agrees with OpenCLIP's own PIL transform (same constants, same geometry)
        cfg = model.visual.preprocess_cfg
        transform = open_clip.image_transform(cfg["size"], is_train=False, mean=cfg["mean"], std=cfg["std"],
                                              interpolation=cfg["interpolation"], resize_mode=cfg["resize_mode"])
        reference = torch.stack([transform(Image.fromarray(im.numpy())) for im in images])
    assert (x - reference).abs().mean() < 0.03
    assert torch.allclose(encoder.pixel_mean.flatten(), torch.tensor(open_clip.OPENAI_DATASET_MEAN))


def test_open_clip_local_dir_like_a_hub_repo(tiny_clip, tmp_path):
    from safetensors.torch import save_file
    model, _ = tiny_clip
    (tmp_path / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": TINY_CLIP_CFG, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "open_clip_model.safetensors"))
    encoder = get_encoder(f"open_clip:local-dir:{tmp_path}")
    assert torch.allclose(encoder.pixel_mean.flatten(), torch.tensor([0.5] * 3))
    with torch.no_grad():
        x = encoder.preprocess(_images(2, 224))
        assert torch.allclose(encoder.encode_images(x), model.encode_image(x), atol=1e-5)


def test_open_clip_errors(tiny_clip, tmp_path):
    model, _ = tiny_clip
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"state_dict": model.state_dict(), "extra": NotAStateDict()}, unsafe)
    with pytest.raises(EncoderError, match="non-tensor"):
        get_encoder(f"open_clip:{TINY_CLIP}@{unsafe}")
    with pytest.raises(EncoderError, match="unknown OpenCLIP architecture"):
        get_encoder("open_clip:ViT-Nope-32")
    with pytest.raises(EncoderError, match="no such checkpoint"):
        get_encoder(f"open_clip:{TINY_CLIP}@{tmp_path / 'absent.pt'}")
    with pytest.raises(EncoderError, match="neither a pretrained tag"):
        get_encoder("open_clip:ViT-B-32@not_a_tag")
    with pytest.raises(EncoderError, match="needs an architecture"):
        get_encoder("open_clip")


# ---------------------------------------------------------------- plip (transformers CLIPModel)

def _write_clip_tokenizer(folder: Path) -> None:
    """vocab.json + merges.txt of OpenAI CLIP's BPE, written from the copy OpenCLIP ships."""
    import open_clip
    bpe = open_clip.SimpleTokenizer()
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    (folder / "vocab.json").write_text(json.dumps({names.get(k, k): v for k, v in bpe.encoder.items()}))
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")


@pytest.fixture(scope="module")
def tiny_plip(tmp_path_factory) -> tuple[torch.nn.Module, Path, Path]:
    transformers = pytest.importorskip("transformers")
    layers = {"num_hidden_layers": 2, "num_attention_heads": 2, "hidden_size": 32, "intermediate_size": 64}
    config = transformers.CLIPConfig(
        text_config={**layers, "vocab_size": 49408, "max_position_embeddings": 77},
        vision_config={**layers, "image_size": 64, "patch_size": 16}, projection_dim=24)
    torch.manual_seed(11)
    model = transformers.CLIPModel(config).eval()
    bare = tmp_path_factory.mktemp("plip_bare")
    model.save_pretrained(bare)
    full = tmp_path_factory.mktemp("plip_full")
    model.save_pretrained(full)
    transformers.CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}).save_pretrained(full)
    _write_clip_tokenizer(full)
    return model, bare, full


def _features(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def test_plip_local_dir_matches_model(tiny_plip):
    model, _, full = tiny_plip
    encoder = get_encoder(f"plip@{full}")
    assert encoder.dim == 24 and encoder.input_size == 64 and encoder.supports_text
    assert encoder.hf_tokenizer is not None
    with torch.no_grad():
        x = encoder.preprocess(_images(2, 256))
        assert torch.allclose(encoder.encode_images(x), _features(model.get_image_features(pixel_values=x)), atol=1e-5)
        ids, mask = encoder.tokenize(CAPTIONS)
        expected = _features(model.get_text_features(input_ids=ids, attention_mask=mask))
        assert torch.allclose(encoder.encode_text(CAPTIONS), expected, atol=1e-5)


def test_plip_tokenizers_agree(tiny_plip):
    """PLIP kept CLIP's vocabulary: the folder's CLIPTokenizer and OpenCLIP's bundled BPE give the same
    ids (on real ARCH captions), hence the same text embeddings."""
    _, bare, full = tiny_plip
    with_tok, without_tok = get_encoder(f"plip@{full}"), get_encoder(f"plip@{bare}")
    assert without_tok.hf_tokenizer is None
    captions = list(CAPTIONS)
    arch = Path(__file__).resolve().parents[3] / "shared" / "data" / "captions" / "arch" / "books_set" / "captions.json"
    if arch.is_file():  # real pathology captions when the shared data is there
        captions += [c["caption"] for c in json.loads(arch.read_text()).values()][:400]
    (a, _), (b, _) = with_tok.tokenize(captions), without_tok.tokenize(captions)
    for i in range(len(captions)):  # same ids up to and including end-of-text (padding differs)
        end_a, end_b = int((a[i] == 49407).nonzero()[0]), int((b[i] == 49407).nonzero()[0])
        assert end_a == end_b and torch.equal(a[i, :end_a + 1], b[i, :end_b + 1]), captions[i]
    with torch.no_grad():
        assert torch.allclose(with_tok.encode_text(CAPTIONS), without_tok.encode_text(CAPTIONS), atol=1e-5)


def test_plip_folder_errors(tmp_path):
    pytest.importorskip("transformers")
    with pytest.raises(EncoderError, match="no such model folder"):
        get_encoder(f"plip@{tmp_path / 'absent'}")
    with pytest.raises(EncoderError, match="could not load a CLIPModel"):
        get_encoder(f"plip@{tmp_path}")  # an empty folder


def test_plip_without_transformers_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if the optional extra were not installed
    with pytest.raises(EncoderError, match=r"pip install 'alkit\[plip\]'"):
        get_encoder(f"plip@{tmp_path}")


# ---------------------------------------------------------------- every encoder

_BUILT: dict[str, Encoder] = {}


def _encoder_of_kind(kind: str, request: pytest.FixtureRequest) -> Encoder:
    """One encoder per kind, built once; plip's fixture (which needs transformers) only when asked."""
    if kind not in _BUILT:
        if kind == "open_clip":
            spec = f"open_clip:{TINY_CLIP}@{request.getfixturevalue('tiny_clip')[1]}"
        elif kind == "plip":
            spec = f"plip@{request.getfixturevalue('tiny_plip')[2]}"
        else:
            spec = kind
        _BUILT[kind] = get_encoder(spec)
    return _BUILT[kind]


@pytest.mark.parametrize("kind", ["handcrafted", "resnet18", "open_clip", "plip"])
@pytest.mark.parametrize("size", [224, 256])
def test_every_encoder_contract(request, kind, size):
    encoder = _encoder_of_kind(kind, request)
    assert not encoder.training and encoder.mpp > 0 and encoder.weights_id
    images = _images(2, size, seed=size)
    with torch.no_grad():
        x = encoder.preprocess(images)
        assert x.shape == (2, 3, encoder.input_size, encoder.input_size) and x.dtype == torch.float32
        out = encoder(images)
    assert out.shape == (2, encoder.dim) and out.dtype == torch.float32 and torch.isfinite(out).all()
    if encoder.supports_text:
        with torch.no_grad():
            assert encoder.encode_text(["tumour"]).shape == (1, encoder.dim)
    else:
        with pytest.raises(NotImplementedError, match="image-only"):
            encoder.encode_text(["tumour"])
    with pytest.raises(ValueError, match="uint8"):
        encoder.preprocess(images.float())
    assert encoder(images[:0]).shape == (0, encoder.dim)


# ---------------------------------------------------------------- handcrafted on real H&E tiles

def _crops(path: Path, halve: bool = False) -> torch.Tensor:
    """The four corner 256-px crops of a tile (level-0 tiles halved to about 0.5 µm/px)."""
    tile = Image.open(path).convert("RGB")
    if halve:
        tile = tile.resize((tile.width // 2, tile.height // 2), Image.LANCZOS)
    a = np.asarray(tile)
    h, w = a.shape[:2]
    return torch.from_numpy(np.stack([a[y:y + 256, x:x + 256] for y in (0, h - 256) for x in (0, w - 256)]))


@pytest.fixture(scope="module")
def tiles(shared_data) -> dict[str, torch.Tensor]:
    root = shared_data / "tiles"
    return {
        "tumour": _crops(root / "histolab" / "high-nuclei-score-level0.png", halve=True),
        "tumour_ref": _crops(root / "he_reference" / "tiatoolbox_target_image.png", halve=True),
        "stroma": _crops(root / "histolab" / "medium-nuclei-score-level0.png", halve=True),
        "fat": _crops(root / "histolab" / "low-nuclei-score-level0.png"),
        "glass": _crops(root / "histolab" / "no-tissue.png"),
        "almost_white": _crops(root / "histolab" / "almost-white-2.png"),
        "pen": _crops(root / "histolab" / "no-tissue-red-pen.png"),
    }


@pytest.fixture(scope="module")
def handcrafted() -> Encoder:
    return get_encoder("handcrafted")


def test_handcrafted_deconvolution_matches_skimage(tiles):
    from skimage.color import rgb2hed
    rgb = tiles["tumour"][:2].numpy().astype(np.float64) / 255
    ours = rgb_to_hed(torch.from_numpy(rgb).permute(0, 3, 1, 2).float()).permute(0, 2, 3, 1).numpy()
    theirs = np.stack([rgb2hed((255 * im + 1) / 256) for im in rgb]) * math.log(1e6)
    assert np.allclose(ours, theirs, atol=1e-4)


def test_handcrafted_nuclear_features_rank_tiles(handcrafted, tiles):
    names = feature_names()
    assert handcrafted.dim == len(names) and 64 <= handcrafted.dim <= 128
    with torch.no_grad():
        raw = {k: handcrafted.raw_features(handcrafted.preprocess(v)) for k, v in tiles.items()}
    for feature in ("nuclear_fraction_h0.7", "nuclear_fraction_tissue_h0.7", "nuclei_per_1k_px_w5", "h_mean"):
        i = names.index(feature)
        tumour = torch.cat([raw["tumour"][:, i], raw["tumour_ref"][:, i]])
        assert tumour.min() > raw["stroma"][:, i].max() and tumour.min() > raw["fat"][:, i].max(), feature
        assert raw["tumour"][:, i].min() > raw["glass"][:, i].max(), feature
    i = names.index("tissue_fraction")
    assert raw["tumour"][:, i].min() > 0.9 and raw["glass"][:, i].max() < 0.05


def test_handcrafted_separates_tumour_normal_background(handcrafted, tiles):
    with torch.no_grad():
        emb = {k: l2_normalise(handcrafted(v)) for k, v in tiles.items()}
    prototype = l2_normalise(emb["tumour_ref"].mean(dim=0))  # prototype from one source, queries from another
    sim = {k: v @ prototype for k, v in emb.items()}
    for other in ("stroma", "fat", "glass", "almost_white", "pen"):
        assert sim["tumour"].min() > sim[other].max() + 0.2, other
    assert sim["glass"].max() < 0 and sim["almost_white"].max() < 0
    # background is far from every kind of tissue
    tissue = torch.cat([emb["tumour"], emb["tumour_ref"], emb["stroma"]])
    assert (torch.cat([emb["glass"], emb["almost_white"]]) @ tissue.T).max() < 0


def test_handcrafted_is_deterministic_and_batch_invariant(handcrafted, tiles):
    batch = torch.cat([tiles["tumour"], tiles["stroma"], tiles["glass"], tiles["pen"]])
    with torch.no_grad():
        together = handcrafted(batch)
        one_by_one = torch.cat([handcrafted(batch[i:i + 1]) for i in range(len(batch))])
        again = handcrafted(batch)
    assert together.shape == (len(batch), handcrafted.dim) and torch.isfinite(together).all()
    assert torch.equal(together, again)
    assert torch.allclose(together, one_by_one, atol=1e-4)
    assert together.abs().max() <= 8.0  # standardised and clipped
    flat = handcrafted(torch.full((2, 256, 256, 3), 255, dtype=torch.uint8))  # degenerate input stays finite
    assert torch.isfinite(flat).all()
