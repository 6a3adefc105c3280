"""Cache keys over every input: prototype sets keyed by what shapes them, stores by the slide's content,
caption databases by their content (not their folder)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import yaml

from alkit.captions.database import open_database
from alkit.embeddings.embed import EmbedConfig, Embedder
from alkit.study.config import load_config
from alkit.study.demo import demo_config
from alkit.study.inputs import input_digests, prototypes_for
from alkit.embeddings.cohort import Cohort
from alkit.wsi.slide import Slide

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NORMAL = {"with": [["normal", "benign"]], "without": []}


def _study(cohort_root: Path, folder: Path, **prototype_changes) -> Path:
    """The quick demo's config over the shared cohort, written to ``folder`` (absolute paths)."""
    config = demo_config(cohort_root, quick=True)
    base = cohort_root.parent

    def absolute(p):
        return [str(base / q) for q in p] if isinstance(p, list) else str(base / p)

    config["cohort"]["slides"] = absolute(config["cohort"]["slides"])
    config["cohort"]["test_slides"] = absolute(config["cohort"]["test_slides"])
    config["cohort"]["ground_truth"]["synthetic"] = absolute(config["cohort"]["ground_truth"]["synthetic"])
    config["prototypes"]["db"] = absolute(config["prototypes"]["db"])
    config["prototypes"] |= prototype_changes
    config["out"] = str(folder / "out")
    config["embedding"]["out"] = str(folder / "stores")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"study{len(list(folder.glob('study*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _ids(prototypes) -> dict[str, list[str]]:
    return {name: [p["id"] for p in c.provenance] for name, c in prototypes.classes.items()}


def test_prototype_sets_are_keyed_by_their_inputs(synthetic_cohort, tmp_path, caplog):
    root = Path(synthetic_cohort.root)
    tumour = load_config(_study(root, tmp_path))
    first = prototypes_for(tumour)
    folders = sorted((tmp_path / "out" / "prototypes").iterdir())
    assert len(folders) == 1 and first.meta["cache_key"] == folders[0].name
    assert first.meta["key_inputs"]["database"] == open_database(tumour.prototypes["db"]).digest()

    with caplog.at_level(logging.INFO, logger="alkit.study.inputs"):
        again = prototypes_for(load_config(_study(root, tmp_path)))  # the same inputs: reused, and said so
    assert _ids(again) == _ids(first) and "reusing the prototype set" in caplog.text

    # the case: only the keywords differ -> another set, not the cached one
    normal = prototypes_for(load_config(_study(root, tmp_path, classes={"tumor": NORMAL})))
    assert normal.meta["cache_key"] != first.meta["cache_key"]
    assert set(_ids(normal)["tumor"]) != set(_ids(first)["tumor"])

    dropped = _ids(first)["tumor"][:2]
    excluded = prototypes_for(load_config(_study(root, tmp_path, exclude=dropped)))
    assert excluded.meta["cache_key"] not in (first.meta["cache_key"], normal.meta["cache_key"])
    assert set(_ids(excluded)["tumor"]) == set(_ids(first)["tumor"]) - set(dropped)
    assert len(list((tmp_path / "out" / "prototypes").iterdir())) == 3
    saved = json.loads((tmp_path / "out" / "prototypes" / excluded.meta["cache_key"] / "prototypes.json").read_text())
    assert saved["key_inputs"]["exclude"] == sorted(dropped)  # the key's inputs are kept with the set


def test_caption_database_digest_follows_content_not_folder(synthetic_cohort, tmp_path):
    source = Path(synthetic_cohort.root) / "captions"
    a, b = tmp_path / "a" / "captions", tmp_path / "b" / "captions"  # moved, not renamed (a set is named by its folder)
    shutil.copytree(source, a)
    shutil.copytree(source, b)
    digest = open_database(source).digest()
    assert open_database(a).digest() == digest == open_database(b).digest()
    captions = json.loads((b / "captions.json").read_text())
    first = next(iter(captions))
    captions[first]["caption"] += " (edited)"
    (b / "captions.json").write_text(json.dumps(captions))
    assert open_database(b).digest() != digest
    image = next(p for p in sorted(a.rglob("*")) if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    image.write_bytes(image.read_bytes() + b"\0")  # a replaced image of another size
    assert open_database(a).digest() != digest


def test_stores_are_keyed_by_slide_content(synthetic_cohort, tmp_path):
    slides = [s.path for s in synthetic_cohort.slides]
    copy = tmp_path / "copy" / Path(slides[0]).name
    copy.parent.mkdir()
    shutil.copy(slides[0], copy)
    with Slide(slides[0]) as a, Slide(copy) as same, Slide(slides[1]) as other:
        assert a.content_id == same.content_id != other.content_id
        assert a.dimensions == other.dimensions  # so only the content tells them apart

    config = EmbedConfig(encoder="handcrafted", mpp=1.0, patch=256, batch_size=64, num_workers=0,
                         accelerator="cpu", devices=1)
    target = tmp_path / "cohort" / "slide.tif"
    target.parent.mkdir()
    shutil.copy(slides[0], target)
    embedder = Embedder(config, tmp_path / "stores", progress=False)
    first = input_digests(Cohort.from_stores(embedder.embed([target])))
    embedder.embed([target])
    assert embedder.cache_hits == 1  # the same slide again: reused
    shutil.copy(slides[1], target)  # another slide under the same path and name
    second = Cohort.from_stores(embedder.embed([target]))
    assert embedder.cache_hits == 1 and embedder.forward_passes == 2
    assert first["train"] != input_digests(second)["train"]
    assert input_digests(second) == input_digests(Cohort.from_stores([second.slides[0].store_path]))


def test_run_key_covers_the_resolved_config_and_the_inputs(synthetic_cohort, tmp_path):
    from alkit.study.run import study_digest

    root = Path(synthetic_cohort.root)

    def config(folder: str, **changes):
        path = _study(root, tmp_path / folder)
        raw = yaml.safe_load(path.read_text())
        for key, value in changes.items():
            section, name = key.split(".")
            if value is None:
                raw[section].pop(name)
            else:
                raw[section][name] = value
        path.write_text(yaml.safe_dump(raw))
        return load_config(path)

    inputs = {"train": {"synth_000": "aaaa"}}
    base = config("a", **{"loop.cycles": 3})
    implicit = config("a", **{"loop.cycles": None})  # the same, with loop.cycles left to its default (3)
    assert implicit.resolved["loop"]["cycles"] == 3  # the default, spelled out
    assert study_digest(base, inputs) == study_digest(implicit, inputs)
    assert study_digest(config("a", **{"loop.cycles": 2}), inputs) != study_digest(base, inputs)
    assert study_digest(config("a", **{"task.max_epochs": 31}), inputs) != study_digest(base, inputs)
    assert study_digest(base, {"train": {"synth_000": "bbbb"}}) != study_digest(base, inputs)
