"""The active-learning loop end to end on the synthetic cohort, and resuming after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from alkit.al.loop import ActiveLearningLoop
from alkit.al.pool import LabeledPool
from alkit.embeddings.cohort import Cohort
from alkit.selection.strategy import Budget, get_strategy
from alkit.tasks.segmentation.classifier import PatchClassifierModel
from alkit.tasks.segmentation.oracle import TumourOracle
from alkit.tasks.segmentation.task import SegmentationTask

BUDGET = Budget(n=1, size=1024)


def build_loop(cohort: Cohort, cohort_root: str | Path, pool_path: Path, initial: str = "random",
               cycles: int = 2, prototypes=None) -> ActiveLearningLoop:
    """The loop both the tests and the killed subprocess run (same seeds: same regions)."""
    params = {"prototypes": prototypes} if initial == "prototype" else {}
    task = SegmentationTask(TumourOracle.from_synthetic(cohort_root),
                            PatchClassifierModel(max_epochs=15, min_epochs=3, patience=3, seed=0))
    return ActiveLearningLoop(
        task, cohort, get_strategy(initial, **params), get_strategy("uncertainty", measure="entropy"),
        BUDGET, cycles, LabeledPool.open(pool_path), seed=11)


def _tumour_prototypes(synthetic_cohort):
    from alkit.captions import load_arch_set
    from alkit.embeddings.encoders import get_encoder
    from alkit.prototypes.prototype_set import build_prototypes

    truth = json.loads(synthetic_cohort.captions_truth.read_text())
    ids = [v["uuid"] for v in truth.values() if v["kind"] == "tumour"]
    return build_prototypes(load_arch_set(synthetic_cohort.captions_json.parent), {"tumor": ids},
                            get_encoder("handcrafted"))


@pytest.mark.parametrize("initial", ["random", "diversity", "prototype"])
def test_two_cycles_with_each_initial_strategy(initial, embedded_cohort, synthetic_cohort, tmp_path):
    prototypes = _tumour_prototypes(synthetic_cohort) if initial == "prototype" else None
    loop = build_loop(embedded_cohort, synthetic_cohort.root, tmp_path / "pool.json", initial, prototypes=prototypes)
    results = loop.run()
    assert [r.cycle for r in results] == [0, 1]
    pool = LabeledPool.open(tmp_path / "pool.json")
    per_cycle = [[r for r in pool.regions if r.cycle == c] for c in (0, 1)]
    assert len(per_cycle[0]) == len(per_cycle[1]) == len(embedded_cohort) * BUDGET.n
    assert {r.strategy for r in per_cycle[0]} == {initial} and {r.strategy for r in per_cycle[1]} == {"uncertainty"}
    m0, m1 = (r.metrics for r in results)
    for m in (m0, m1):
        assert np.isfinite(m["iou_tumour"]) and 0.0 <= m["iou_tumour"] <= 1.0
    # the labeled area grows by one cycle's budget: each cycle adds N regions of the same size
    assert m1["regions"] == 2 * m0["regions"]
    assert m1["annotated_tissue_mm2"] > m0["annotated_tissue_mm2"] > 0
    assert m1["annotated_tissue_pct"] > m0["annotated_tissue_pct"]
    boxes = [(r.slide, r.box) for r in pool.regions]
    assert len(set(boxes)) == len(boxes)


def test_killed_loop_resumes_without_losing_or_duplicating_regions(embedded_cohort, synthetic_cohort, tmp_path):
    stores = [str(s.store_path) for s in embedded_cohort]
    pool_path = tmp_path / "pool.json"
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]);\n"
        "from test_loop import build_loop; from alkit.embeddings.cohort import Cohort\n"
        "loop = build_loop(Cohort.from_stores(sys.argv[4:]), sys.argv[2], __import__('pathlib').Path(sys.argv[3]),"
        " cycles=3)\n"
        "loop.run()\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(Path(__file__).parent), str(synthetic_cohort.root),
                             str(pool_path), *stores], env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:  # kill it once cycle 0 is evaluated: it is then inside cycle 1
            if pool_path.exists() and json.loads(pool_path.read_text() or "{}").get("cycle_metrics", {}).get("0"):
                break
            if proc.poll() is not None:
                pytest.fail(f"the loop ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
        else:
            pytest.fail("cycle 0 never finished")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed = LabeledPool.open(pool_path)
    assert 0 in killed.cycle_metrics and 2 not in killed.cycle_metrics
    resumed = build_loop(embedded_cohort, synthetic_cohort.root, pool_path, cycles=3).run()
    assert [r.cycle for r in resumed] == [0, 1, 2]
    final = LabeledPool.open(pool_path)
    assert [r for r in final.regions if r.cycle == 0] == [r for r in killed.regions if r.cycle == 0]
    # the same as a run that was never interrupted (every choice is seeded)
    straight = build_loop(embedded_cohort, synthetic_cohort.root, tmp_path / "straight.json", cycles=3).run()
    reference = LabeledPool.open(tmp_path / "straight.json")
    assert [(r.slide, r.box, r.cycle) for r in final.regions] == [(r.slide, r.box, r.cycle) for r in reference.regions]
    assert [r.metrics["regions"] for r in resumed] == [r.metrics["regions"] for r in straight] == [4, 8, 12]
