"""The shipped protocol configs are the paper's setups: slide lists, split and exclusions as the reference
code has them, the authors' manual prototype clean-up, the 3 x 3 budget grid over 5 seeds, and the
detector's ImageNet backbone (facts from ../shared/data/reference/, read in place)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from alkit.captions import KeywordQuery, open_database, search

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def _stems(paths: list[str]) -> list[str]:
    return [Path(p).stem for p in paths]


@pytest.fixture(scope="module")
def reference(shared_data):
    return json.loads((shared_data / "reference" / "camelyon16_protocol.json").read_text())


@pytest.fixture(scope="module")
def kept(shared_data):
    return json.loads((shared_data / "reference" / "arch_prototypes_kept_by_paper.json").read_text())["classes"]


@pytest.mark.parametrize("name", ["camelyon16.yaml", "camelyon16_plip.yaml"])
def test_camelyon16_configs_follow_the_reference_split(name, reference):
    config = yaml.safe_load((EXPERIMENTS / name).read_text())
    cohort = config["cohort"]
    assert _stems(cohort["slides"]) == reference["train_slides"] and len(cohort["slides"]) == 77
    assert _stems(cohort["validation_slides"]) == reference["validation_slides"]
    assert _stems(cohort["test_slides"]) == reference["test_slides"] and len(cohort["test_slides"]) == 128
    assert not set(_stems(cohort["test_slides"])) & set(reference["test_slides_excluded"])
    assert not any(s.startswith("normal") for s in _stems(cohort["slides"] + cohort["validation_slides"]))
    assert config["budgets"] == {"n": [1, 3, 5], "l": [4096, 8192, 12288]} and config["seeds"] == [0, 1, 2, 3, 4]
    assert "full" in config["strategies"] and config["task"]["mode"] == "finetune"
    assert config["embedding"]["patch"] == reference["training"]["patch_px"]


def test_arch_exclusions_leave_exactly_the_images_the_authors_kept(shared_data, kept):
    """exclude = the keyword hits on the real ARCH captions minus the 21 / 19 images the paper kept."""
    db = open_database(shared_data / "captions" / "arch")
    for config_name, class_name in (("camelyon16.yaml", "breast tumor"), ("mitos_wsi_cmc.yaml", "mitotic figure")):
        protos = yaml.safe_load((EXPERIMENTS / config_name).read_text())["prototypes"]
        query = protos["classes"][class_name]
        hits = search(db, KeywordQuery(class_name, tuple(map(tuple, query["with"])), tuple(query.get("without", ())),
                                       query.get("mode", "substring"))).ids
        left = [i for i in hits if i not in set(protos["exclude"])]
        assert sorted(left) == sorted(d["uuid"] for d in kept[class_name]), config_name
        assert len(left) == {"breast tumor": 21, "mitotic figure": 19}[class_name]


def test_mitosis_config_uses_the_papers_detector(reference):
    config = yaml.safe_load((EXPERIMENTS / "mitos_wsi_cmc.yaml").read_text())
    assert config["task"]["kind"] == "detection" and config["task"]["backbone_weights"] == "imagenet"
    assert config["task"]["box_um"] == 12.5 and "full" in config["strategies"]
