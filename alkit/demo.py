"""The offline demo: a synthetic cohort, prototypes from its caption database, and a tracked comparison
of the random, diversity and prototype initial sets with a few active-learning cycles each.

Everything is generated, so it runs on a fresh machine without data or downloads; the study config
it writes (``OUT/study.yaml``) is an ordinary config that ``alkit compare`` runs too.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import yaml

from alkit.atomic import atomic_write_text

log = logging.getLogger(__name__)

BREAST_TUMOUR = {
    "with": [["breast"], ["abnormal", "tumor", "cancer", "carcinoma", "metastases", "metastasis", "metastatic"]],
    "without": ["IHC", "immunohistochemical", "immunohistochemistry", "immunostain", "photomicrograph",
                "photomicrography"],
}


def demo_config(cohort_root: Path, quick: bool) -> dict:
    """The demo study on the synthetic cohort at ``cohort_root`` (test slides: the last tumour slides)."""
    from alkit.synthetic import SyntheticCohort

    cohort = SyntheticCohort.load(cohort_root)
    n_test = 1 if quick else 2
    test = [s for s in cohort.slides if s.has_tumour][-n_test:]
    train = [s for s in cohort.slides if s not in test]
    rel = lambda p: os.path.relpath(p, cohort_root.parent)  # noqa: E731 - paths relative to the config
    return {
        "study": "alkit-demo-quick" if quick else "alkit-demo",
        "cohort": {"slides": [rel(s.path) for s in train], "test_slides": [rel(s.path) for s in test],
                   "ground_truth": {"synthetic": rel(cohort_root)}},
        "embedding": {"encoder": "handcrafted", "mpp": 0.5, "patch": 128, "workers": 0, "accelerator": "cpu",
                      "out": "embeddings"},
        "prototypes": {"db": rel(cohort_root / "captions"), "classes": {"tumor": BREAST_TUMOUR}},
        "strategies": ["random", "diversity", "prototype"],
        "selector": "standard",
        "budgets": {"n": [1] if quick else [1, 2], "l": [1024] if quick else [512, 1024]},
        "seeds": [0] if quick else [0, 1],
        "loop": {"cycles": 2 if quick else 3, "acquisition": {"measure": "entropy"}},
        "task": {"max_epochs": 30, "min_epochs": 5, "patience": 5},
        "out": "results",
    }


def run_demo(out: str | os.PathLike = "demo_out", quick: bool = False, tracking_uri: str | None = None,
             progress: bool = True) -> dict:
    """Generate (or reuse) the cohort, write ``OUT/study.yaml``, run and summarise the comparison."""
    from alkit.compare import load_config, run_study, summarise_study
    from alkit.synthetic import SyntheticCohort, generate_cohort

    out = Path(out)
    cohort_root = out / "cohort"
    n_slides, size = (5, 4096) if quick else (8, 4096)
    try:
        existing = SyntheticCohort.load(cohort_root)
        reuse = len(existing.slides) == n_slides
    except Exception:  # no cohort yet (or another one): generate
        reuse = False
    if not reuse:
        generate_cohort(cohort_root, n_slides=n_slides, size=size, seed=0, n_caption_images=120, progress=progress)
    study = out / "study.yaml"
    atomic_write_text(study, yaml.safe_dump(demo_config(cohort_root, quick), sort_keys=False))
    config = load_config(study)
    runs = run_study(config, tracking_uri=tracking_uri, progress=progress)
    paths = summarise_study(runs, config.out)
    return {"config": study, "runs": runs, "summary": paths, "tracking_uri": tracking_uri}
