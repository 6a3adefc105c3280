"""A fast start: commands with nothing to compute import neither torch nor Lightning.

Each command runs in a fresh interpreter (the test process itself has torch loaded) and reports which
heavy modules ended up in ``sys.modules``. The cache precheck of `alkit embed` is checked against the
real thing: its encoder identities against the built encoders, its answers against stores `alkit embed`
wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from alkit.cli import build_parser, main
from alkit.embeddings.cached import cached_stores, encoder_identity
from alkit.embeddings.store import EmbeddingStore
from alkit.wsi.slide import SlideError

HEAVY = ("torch", "pytorch_lightning", "lightning", "torchvision")
SLIDE = "CMU-1-Small-Region.svs"
PROBE = """
import contextlib, io, json, sys
from alkit.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        rc = main(sys.argv[1:])
    except SystemExit as exc:
        rc = exc.code
print(json.dumps({"rc": rc, "stdout": out.getvalue(), "heavy": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


def run_fresh(*argv: str) -> dict:
    """``alkit ARGV`` in a new interpreter: exit code, its stdout and the heavy modules it imported."""
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cached(wsi, tmp_path_factory):
    """``(slide, stores)``: the real CMU slide embedded once by `alkit embed` (the full path)."""
    stores = tmp_path_factory.mktemp("fast") / "stores"
    args = ["embed", str(wsi(SLIDE)), "--out", str(stores), "--patch", "128", "--mpp", "1.0", "--workers", "0",
            "--accelerator", "cpu", "--devices", "1", "-q"]
    assert main(args) == 0
    return wsi(SLIDE), stores


def test_cached_commands_import_neither_torch_nor_lightning(cached, tmp_path):
    from alkit.prototypes.prototype_set import ClassPrototypes, PrototypeSet

    slide, stores = cached
    store = EmbeddingStore.load(next(stores.glob("*.h5")))
    rows = store.features[[0, len(store.features) // 2]]
    PrototypeSet("handcrafted", store.dim, "handcrafted-v1",
                 {"tissue": ClassPrototypes("tissue", rows, [{"id": "a"}, {"id": "b"}])}).save(tmp_path / "protos")
    embed = run_fresh("embed", str(slide), "--out", str(stores), "--patch", "128", "--mpp", "1.0", "-q")
    assert embed["rc"] == 0 and embed["heavy"] == []
    assert embed["stdout"].strip() == f"1 stores in {stores} (1 were already there)"
    commands = [["--help"], ["info", str(slide)]]
    for strategy in ("random", "diversity", "prototype"):
        commands.append(["select", "--stores", str(stores), "--strategy", strategy, "--n", "2", "--size", "1024",
                         "--prototypes", str(tmp_path / "protos"), "--out", str(tmp_path / strategy)])
    with h5py.File(tmp_path / f"{store.slide_id}.h5", "w") as f:  # its features in TRIDENT's layout, 256-px grid
        f["features"] = store.features
        f["coords"] = store.coords[:, ::-1].astype(np.int64) * 256
        (w, h) = store.grid.dimensions
        f["coords"].attrs.update({"patch_size_level0": 256, "level0_width": w, "level0_height": h})
    commands.append(["import-features", "--format", "trident", "--features", str(tmp_path / f"{store.slide_id}.h5"),
                     "--slide-mpp", "0.5", "--out", str(tmp_path / "imported"), "-q"])
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    if "encoders" in sub.choices:  # `alkit encoders` lists the registry from its cards
        commands.append(["encoders"])
    for argv in commands:
        got = run_fresh(*argv)
        assert got["rc"] == 0 and got["heavy"] == [], (argv, got)
    assert (tmp_path / "prototype" / "regions.json").is_file() and list((tmp_path / "imported").glob("*.h5"))


def test_the_precheck_agrees_with_the_stores_embed_wrote(cached, tmp_path):
    slide, stores = cached
    options = dict(encoder="handcrafted", mpp=1.0, patch=128, stride=None, min_tissue=0.5)
    found = cached_stores([slide], stores, **options)
    assert found == sorted(stores.glob("*.h5"))
    assert cached_stores([slide], stores, **{**options, "encoder": "handcrafted@v1"}) is None  # another spec
    assert cached_stores([slide], stores, **{**options, "min_tissue": 0.4}) is None
    assert cached_stores([slide], stores, **{**options, "stride": 64}) is None
    assert cached_stores([slide], stores, **{**options, "mpp": None}) is None  # the encoder's 0.5 µm/px
    assert cached_stores([slide], stores, **{**options, "encoder": "open_clip:ViT-B-32"}) is None
    assert cached_stores([slide, slide], stores, **options) is None  # a repeated slide: the full run explains
    assert cached_stores([slide], tmp_path / "none", **options) is None
    with pytest.raises(SlideError, match="nope.svs"):
        cached_stores([tmp_path / "nope.svs"], stores, **options)


def _checkpoint(tmp_path: Path) -> Path:
    import torch
    from torchvision.models import resnet18

    torch.manual_seed(0)
    path = tmp_path / "resnet18.pt"
    torch.save(resnet18(weights=None).state_dict(), path)
    return path


def test_encoder_identities_are_those_of_the_built_encoders(tmp_path):
    from alkit.embeddings.encoders import get_encoder

    specs = ["handcrafted", "handcrafted@v1", "resnet18", "resnet18@none", f"resnet18@{_checkpoint(tmp_path)}"]
    for spec in specs:
        built, known = get_encoder(spec), encoder_identity(spec)
        assert known is not None, spec
        assert (known.name, known.weights_id, known.mpp) == (built.name, built.weights_id, built.mpp), spec
    for spec in ("open_clip:ViT-B-32", "plip", "resnet18@/no/such.ckpt", "unknown-encoder", ""):
        assert encoder_identity(spec) is None, spec


def test_the_imagenet_identity_when_its_weights_are_at_hand():
    from alkit.embeddings.encoders import EncoderError, get_encoder

    try:
        built = get_encoder("resnet18@imagenet")
    except EncoderError as exc:
        pytest.skip(f"torchvision's ImageNet weights are not in the local cache: {str(exc)[:80]}")
    assert encoder_identity("resnet18@imagenet").weights_id == built.weights_id


def test_foundation_model_identities_follow_their_weights(tmp_path, monkeypatch):
    """Short names of foundation models: the weights id the loader would give (local file, local folder,
    hub cache snapshot), from the card and file digests alone."""
    from alkit.embeddings.cached import EncoderIdentity
    from alkit.embeddings.encoders.cards import encoder_card
    from alkit.embeddings.encoders.foundation import resolve_weights

    weights = tmp_path / "uni.safetensors"
    weights.write_bytes(b"stand-in weights: only their digest matters here")
    folder = tmp_path / "phikon"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"more stand-in bytes")
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--MahmoodLab--UNI"
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "snapshots" / revision / "model.safetensors").write_bytes(b"cached stand-in")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for spec in (f"uni@{weights}", f"phikon@{folder}", "uni", f"virchow2@{weights}"):
        local = spec.partition("@")[2]
        card = encoder_card(spec)
        assert encoder_identity(spec) == EncoderIdentity(spec, resolve_weights(card, local or None)[1], card.mpp)
    assert encoder_identity("uni").weights_id == f"hf:MahmoodLab/UNI@{revision[:12]}"
    assert encoder_identity("virchow2") is None  # not in the cache: the full run says so
    assert encoder_identity(f"uni@{tmp_path / 'missing.safetensors'}") is None
