"""The offline demo: a synthetic cohort, prototypes from its caption database, and two tracked
comparisons of the random, diversity and prototype initial sets against full annotation (the
``full`` strategy, once per seed): tumour segmentation (a few active-learning cycles each) and a
reduced mitotic-figure detection study (64-px grid, mitosis crops as prototypes, a small RetinaNet
trained on each initial set, F1 on the test slides).

Everything is generated, so it runs on a fresh machine without data or downloads; the study config
it writes (``OUT/study.yaml``) is an ordinary config that ``alkit compare`` runs too.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import yaml

from alkit.atomic import atomic_write_text
from alkit.study.config import load_config
from alkit.study.run import run_study
from alkit.study.summary import summarise_study
from alkit.synthetic import SyntheticCohort, generate_cohort

log = logging.getLogger(__name__)

BREAST_TUMOUR = {
    "with": [["breast"], ["abnormal", "tumor", "cancer", "carcinoma", "metastases", "metastasis", "metastatic"]],
    "without": ["IHC", "immunohistochemical", "immunohistochemistry", "immunostain", "photomicrograph",
                "photomicrography"],
}


MITOTIC_FIGURE = {"with": [["mitotic", "mitoses", "mitosis"]], "without": ["IHC", "immunohistochemical"]}


#: the demo cohorts: (slides, side px, seed, share of tumour slides); the full demo is the headline study
#: (experiments/headline.yaml) scaled down to run in minutes
QUICK_COHORT = (5, 4096, 0, 0.6)
DEMO_COHORT = (12, 6144, 1, 0.75)


def _split(cohort_root: Path, quick: bool):
    """``(train, validation, test)`` synthetic slides: the last tumour slides test, the one before validates."""
    cohort = SyntheticCohort.load(cohort_root)
    tumour = [s for s in cohort.slides if s.has_tumour]
    n_test = 1 if quick else 2
    test, validation = tumour[-n_test:], tumour[-n_test - 1:-n_test]
    return [s for s in cohort.slides if s not in test], validation, test


def _segmentation_split(cohort_root: Path):
    """The full demo's tumour study, as the reference sets CAMELYON16 up: training on tumour slides only,
    one fully annotated validation slide (early stopping), tumour and tumour-free test slides."""
    cohort = SyntheticCohort.load(cohort_root)
    tumour = [s for s in cohort.slides if s.has_tumour]
    normal = [s for s in cohort.slides if not s.has_tumour]
    return tumour[:-3], tumour[-3:-2], tumour[-2:] + normal


def demo_detection_config(cohort_root: Path, quick: bool) -> dict:
    """The reduced mitosis study on the synthetic cohort: slides embedded as 64 × 64 px patches at
    0.25 µm/px (stride 64), prototypes from 64-px crops around the figures of the caption database's
    mitosis close-ups, one cycle (the initial sets), a small CPU-sized detector."""
    train, validation, test = _split(cohort_root, quick)
    train = [s for s in train if s not in validation]
    if not quick:  # the full demo's slides are larger: a few of them keep the 64-px detector study short
        train = [s for s in train if s.has_tumour][:2]
        test = test[:1]
    rel = lambda p: os.path.relpath(p, cohort_root.parent)  # noqa: E731 - paths relative to the config
    return {
        "study": "alkit-demo-mitosis-quick" if quick else "alkit-demo-mitosis",
        "cohort": {"slides": [rel(s.path) for s in train], "validation_slides": [rel(s.path) for s in validation],
                   "test_slides": [rel(s.path) for s in test], "ground_truth": {"synthetic": rel(cohort_root)}},
        "embedding": {"encoder": "handcrafted", "mpp": 0.25, "patch": 64, "stride": 64, "workers": 0,
                      "batch_size": 256, "accelerator": "cpu", "out": "embeddings"},
        "prototypes": {"db": rel(cohort_root / "captions"), "classes": {"mitotic figure": MITOTIC_FIGURE},
                       "crops": {"figures": rel(cohort_root / "captions" / "truth.json")}},
        "strategies": ["random", "diversity", "prototype", "full"],
        "selector": "standard",
        "budgets": {"n": [3] if quick else [1, 3], "l": [512]},
        "seeds": [0],
        "loop": {"cycles": 1},
        # a CPU-sized detector: 0.5 µm/px, narrow FPN, ~100 patches per epoch (about 30 s per fit on 2 cores)
        "task": {"kind": "detection", "mpp": 0.5, "patch": 128, "fpn_channels": 64, "patches_per_epoch": 96,
                 "patches_per_epoch_small": 48, "max_epochs": 6, "batch_size": 8, "lr": 2.0e-4, "tile": 512,
                 "accelerator": "cpu"},
        "out": "results-mitosis",
    }


def demo_config(cohort_root: Path, quick: bool) -> dict:
    """The demo's tumour study. Quick (CI-sized): 5 small slides, one budget, one seed. Full: the headline
    study scaled down — tumour training slides, a validation slide, 64-px cells at 0.5 µm/px, full
    annotation beside the initial sets, n ∈ {1, 3} regions of 768 px (about 6 % of a slide's tissue each),
    3 seeds, one active-learning cycle after the initial set."""
    rel = lambda p: os.path.relpath(p, cohort_root.parent)  # noqa: E731 - paths relative to the config
    if quick:
        train, _, test = _split(cohort_root, quick)
        validation: list = []
    else:
        train, validation, test = _segmentation_split(cohort_root)
    cohort = {"slides": [rel(s.path) for s in train], "test_slides": [rel(s.path) for s in test],
              "ground_truth": {"synthetic": rel(cohort_root)}}
    if validation:
        cohort["validation_slides"] = [rel(s.path) for s in validation]
    return {
        "study": "alkit-demo-quick" if quick else "alkit-demo",
        "cohort": cohort,
        "embedding": ({"encoder": "handcrafted", "mpp": 0.5, "patch": 128, "workers": 0, "accelerator": "cpu",
                       "out": "embeddings"} if quick else
                      {"encoder": "handcrafted", "mpp": 0.5, "patch": 64, "workers": 0, "batch_size": 256,
                       "accelerator": "cpu", "out": "embeddings"}),
        "prototypes": {"db": rel(cohort_root / "captions"), "classes": {"tumor": BREAST_TUMOUR}},
        "strategies": ["random", "diversity", "prototype", "full"],
        "selector": "standard",
        "budgets": {"n": [1], "l": [1024]} if quick else {"n": [1, 3], "l": [768]},
        "seeds": [0] if quick else [0, 1, 2],
        "loop": {"cycles": 2, "acquisition": {"measure": "entropy"}},
        "task": {"max_epochs": 30, "min_epochs": 5, "patience": 5},
        "out": "results",
    }


def run_demo(out: str | os.PathLike = "demo_out", quick: bool = False, tracking_uri: str | None = None,
             progress: bool = True) -> dict:
    """Generate (or reuse) the cohort, write ``OUT/study.yaml`` and ``OUT/study-mitosis.yaml``, run and
    summarise both comparisons (segmentation under ``"runs"``/``"summary"``, detection under
    ``"mitosis_runs"``/``"mitosis_summary"``)."""

    out = Path(out)
    cohort_root = out / "cohort"
    n_slides, size, seed, tumour_share = QUICK_COHORT if quick else DEMO_COHORT
    try:
        existing = SyntheticCohort.load(cohort_root)
        reuse = len(existing.slides) == n_slides and existing.slides[0].width == size
    except Exception:  # no cohort yet (or another one): generate
        reuse = False
    if not reuse:
        generate_cohort(cohort_root, n_slides=n_slides, size=size, seed=seed, n_caption_images=120,
                        tumour_slide_fraction=tumour_share, progress=progress)
    result: dict = {"tracking_uri": tracking_uri}
    for key, name, make in (("", "study.yaml", demo_config), ("mitosis_", "study-mitosis.yaml", demo_detection_config)):
        study = out / name
        atomic_write_text(study, yaml.safe_dump(make(cohort_root, quick), sort_keys=False))
        config = load_config(study)
        runs = run_study(config, tracking_uri=tracking_uri, progress=progress)
        result |= {f"{key}config": study, f"{key}runs": runs, f"{key}summary": summarise_study(runs, config.out)}
    return result
