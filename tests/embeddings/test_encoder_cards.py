"""Encoder cards: a torch-free table that agrees with the registry and the built encoders, spec lookup (aliases,
weights, families, names alkit does not build), and `alkit encoders`."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from alkit.embeddings.encoders import EncoderError, available_encoders, get_encoder
from alkit.embeddings.encoders.cards import NOT_BUILT_IN, EncoderCard, all_cards, encoder_card, short_names

REQUIRED = {"uni", "uni2-h", "virchow", "virchow2", "h-optimus-0", "h-optimus-1", "prov-gigapath", "phikon-v2",
            "conch", "quiltnet", "plip", "handcrafted", "resnet18", "timm:", "open_clip:"}


def test_cards_import_without_torch_or_timm():
    code = ("import sys\nfrom alkit.embeddings.encoders.cards import encoder_card, all_cards, format_table\n"
            "from alkit.embeddings.encoders import EncoderError\n"
            "card = encoder_card('virchow2@/w.safetensors'); format_table(); all_cards()\n"
            "heavy = [m for m in ('torch', 'timm', 'open_clip', 'transformers') if m in sys.modules]\n"
            "assert not heavy, heavy\nprint(card.dim)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "2560"


def test_every_required_encoder_has_a_card_and_a_factory():
    names = {c.name for c in all_cards()}
    assert REQUIRED <= names
    registered = set(available_encoders())
    assert names <= registered  # every card can be built by name
    for name in registered - set(short_names()) - {"timm:", "open_clip:"}:
        pytest.fail(f"registered encoder {name!r} has no card")


def test_card_fields_are_complete_and_frozen():
    for card in all_cards():
        assert isinstance(card, EncoderCard) and card.mpp > 0 and card.licence
        if card.family != "builtin" and not card.name.endswith(":"):
            assert card.hub_repo and card.dim and card.input_size and card.mean and card.std, card.name
    card = encoder_card("uni")
    with pytest.raises(dataclasses.FrozenInstanceError):
        card.dim = 1
    assert (card.dim, card.mpp, card.input_size, card.gated, card.text_tower) == (1024, 0.5, 224, True, False)
    assert encoder_card("h-optimus-0").mean == (0.707223, 0.578729, 0.703617)
    assert encoder_card("h-optimus-0").std == (0.211883, 0.230117, 0.177517)
    assert encoder_card("conch").text_tower and encoder_card("quiltnet").text_tower
    assert encoder_card("virchow2").pooling == "cls+mean" and encoder_card("virchow2").dim == 2560


def test_spec_lookup():
    assert encoder_card("virchow2@/models/v2.safetensors").name == "virchow2"
    assert encoder_card("UNI").name == "uni" and encoder_card("gigapath").name == "prov-gigapath"
    assert encoder_card("resnet18@imagenet").dim == 512 and encoder_card("handcrafted").dim == 97
    timm_card = encoder_card("timm:hf-hub:bioptimus/H-optimus-0")
    assert timm_card.name == "timm:" and timm_card.dim is None and timm_card.hub_repo == "bioptimus/H-optimus-0"
    assert encoder_card("open_clip:ViT-B-32@openai").text_tower
    with pytest.raises(EncoderError, match="did you mean 'virchow2'"):
        encoder_card("virchov2")
    with pytest.raises(EncoderError, match="unknown encoder family"):
        encoder_card("nope:x")
    with pytest.raises(EncoderError, match="nothing after '@'"):
        encoder_card("uni@")
    for name in NOT_BUILT_IN:
        with pytest.raises(EncoderError, match="not loadable with timm or OpenCLIP"):
            encoder_card(name)
        with pytest.raises(EncoderError, match="not loadable with timm or OpenCLIP"):
            get_encoder(name)


def test_cards_of_built_encoders_match_them(tiny_clip_spec):
    for spec in ("handcrafted", "resnet18"):
        encoder, card = get_encoder(spec), encoder_card(spec)
        assert (encoder.dim, encoder.mpp, encoder.input_size, encoder.supports_text) == \
            (card.dim, card.mpp, card.input_size, card.text_tower)
    clip = get_encoder(tiny_clip_spec)
    card = encoder_card(tiny_clip_spec)
    assert card.dim is None and card.mpp == clip.mpp and card.text_tower == clip.supports_text


def test_cli_lists_encoders(capsys):
    from alkit.cli import main

    assert main(["encoders"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["name", "dim", "mpp", "input", "text", "gated", "hub", "licence"]
    rows = {line.split()[0]: line.split() for line in out[1:]}
    assert REQUIRED <= set(rows)
    assert rows["virchow2"][1:6] == ["2560", "0.5", "224", "no", "yes"]
    assert rows["quiltnet"][1:6] == ["512", "0.5", "224", "yes", "no"]
    assert main(["encoders", "--markdown"]) == 0
    assert capsys.readouterr().out.startswith("| name | dim |")
    assert main(["encoders", "h-optimus-1"]) == 0
    assert "bioptimus/H-optimus-1" in capsys.readouterr().out
    assert main(["encoders", "musk"]) == 2
    assert "MUSK" in capsys.readouterr().err
