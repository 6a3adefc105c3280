"""Mutation score of the core modules: how many small planted bugs each module's own tests catch.

A benchmark, not a CI gate. For every module asked for, the working tree is copied to a scratch folder
(mutants are never written into the tree this script lives in: other work may be running its tests there),
``mutmut`` (3.x) mutates that one file inside the copy and runs the module's own test files against each
mutant, and the script prints killed / survived / timeout / untested per module with the score
``(killed + timeout) / (mutants - skipped)`` and, as a lower bound, ``killed / (mutants - skipped)`` (mutmut's
time limit is scaled from the tests' measured time, which leaves out shared fixtures, so on a loaded machine a
slow but correct mutant can time out), then the surviving mutants (``--show`` prints their diffs).

    .venv/bin/python -m pip install 'mutmut>=3.3,<4'      # not in the dev extra: it brings textual, libcst
    nice .venv/bin/python experiments/benchmarks/mutation_score.py                 # every module (about 1 h here)
    nice .venv/bin/python experiments/benchmarks/mutation_score.py detection.metrics pool --show

A survivor is either a bug the tests miss (write the test that kills it) or an equivalent mutant (no input
can tell it apart from the original: e.g. a changed error message or log text, a default that every caller
overrides); judge each by reading its diff.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: module name -> (the file mutated, that module's own test files)
MODULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "selection.regions": ("alkit/selection/regions.py", ("tests/selection/test_regions.py",
                                                         "tests/selection/test_regions_mutants.py")),
    "selection.adaptive": ("alkit/selection/adaptive.py", ("tests/selection/test_adaptive_oracle.py",
                                                           "tests/selection/test_regions.py")),
    "prototypes.maps": ("alkit/prototypes/maps.py", ("tests/prototypes/test_maps.py",
                                                     "tests/prototypes/test_maps_mutants.py")),
    "segmentation.metrics": ("alkit/tasks/segmentation/metrics.py", ("tests/tasks/test_metrics.py",
                                                                     "tests/tasks/test_iou_oracle.py")),
    "detection.metrics": ("alkit/tasks/detection/metrics.py", ("tests/tasks/test_detection_metrics.py",
                                                               "tests/tasks/test_detection_matching_oracle.py",
                                                               "tests/tasks/test_detection_threshold_oracle.py")),
    "pool": ("alkit/al/pool.py", ("tests/al/test_pool.py", "tests/al/test_pool_cells_oracle.py")),
    "strategies.diversity": ("strategies/diversity.py", ("tests/selection/test_diversity.py",
                                                         "tests/selection/test_diversity_oracle.py",
                                                         "tests/selection/test_diversity_nearest.py",
                                                         "tests/selection/test_diversity_mutants.py")),
    "strategies.common": ("strategies/_common.py", ("tests/selection/test_common_mutants.py",
                                                    "tests/contracts/test_strategies.py")),
    "captions.search": ("alkit/captions/search.py", ("tests/captions/test_captions_search.py",
                                                     "tests/captions/test_search_oracle.py",
                                                     "tests/captions/test_search_mutants.py")),
    "oracle": ("alkit/al/oracle.py", ("tests/al/test_oracle.py", "tests/contracts/test_oracle_contract.py",
                                      "tests/al/test_oracle_mutants.py")),
    "segmentation.oracle": ("alkit/tasks/segmentation/oracle.py", ("tests/tasks/test_tumour_oracle.py",
                                                                   "tests/tasks/test_tumour_oracle_mutants.py")),
    "detection.oracle": ("alkit/tasks/detection/oracle.py", ("tests/tasks/test_mitosis_oracle.py",
                                                             "tests/tasks/test_mitosis_oracle_mutants.py")),
}

#: not copied into the scratch tree (environments, caches, outputs)
SKIP = shutil.ignore_patterns(".venv", ".git", "mutants", "__pycache__", ".hypothesis", ".pytest_cache",
                              "*.egg-info", "demo_out", "mlruns", "mlflow.db")

#: mutmut's exit-code meaning (mutmut.stats.status_by_exit_code), folded into the columns printed
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "untested", 33: "untested", 34: "skipped",
          36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 37: "killed", None: "not run"}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mutmut_section(source: str, tests: tuple[str, ...]) -> str:
    """The ``[tool.mutmut]`` table for one module (TOML arrays of strings are JSON arrays)."""
    return "\n".join([
        "", "[tool.mutmut]",
        f"source_paths = {json.dumps(['alkit', 'strategies'])}",
        f"only_mutate = {json.dumps([source])}",
        f"also_copy = {json.dumps(['mlflow_setup', 'experiments'])}",
        f"pytest_add_cli_args = {json.dumps(['-p', 'no:randomly', '-p', 'no:cacheprovider', '-q'])}",
        f"pytest_add_cli_args_test_selection = {json.dumps(list(tests))}",
        "",
    ])


def prepare(scratch: Path, name: str) -> Path:
    """A copy of the tree under ``scratch/name`` configured to mutate module ``name``; ``shared/`` beside
    it links to the real test data the tests find as ``REPO.parent / "shared"``."""
    source, tests = MODULES[name]
    copy = scratch / name
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(REPO, copy, ignore=SKIP, symlinks=True)
    with open(copy / "pyproject.toml", "a") as fh:
        fh.write(mutmut_section(source, tests))
    shared = REPO.parent / "shared"
    if shared.is_dir() and not (scratch / "shared").exists():
        (scratch / "shared").symlink_to(shared)
    if shared.is_dir() and not (copy / "shared").exists():  # mutants/ sits one level deeper than the tree
        (copy / "shared").symlink_to(shared)
    return copy


def counts(copy: Path, source: str) -> tuple[dict[str, int], list[str]]:
    """Mutants per status from mutmut's record (``mutants/<source>.meta``), and the survivors' names."""
    meta = copy / "mutants" / f"{source}.meta"
    if not meta.exists():
        return {}, []
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    tally: dict[str, int] = {}
    survivors = []
    for mutant, code in sorted(codes.items()):
        status = STATUS.get(code, "suspicious")
        tally[status] = tally.get(status, 0) + 1
        if status == "survived":
            survivors.append(mutant)
    return tally, survivors


def run_module(scratch: Path, name: str, children: int, limit_s: float, show: bool) -> dict:
    source, _ = MODULES[name]
    copy = prepare(scratch, name)
    # one thread per test process: mutmut's time limit counts CPU seconds, which torch / BLAS threads
    # spend faster than wall time (strategy tests then "time out" on every mutant)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    mutmut = [sys.executable, "-c", "import sys; from mutmut.__main__ import cli; sys.exit(cli())"]
    started = time.monotonic()
    # its own process group, so that stopping it at the limit stops its workers too
    proc = subprocess.Popen([*mutmut, "run", "--max-children", str(children)], cwd=copy, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=limit_s)
        note = "" if proc.returncode == 0 else f"mutmut exit {proc.returncode}: {stderr.strip()[-400:]}"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        note = f"stopped after {limit_s:.0f} s (partial counts)"
    seconds = time.monotonic() - started
    tally, survivors = counts(copy, source)
    tested = sum(tally.values()) - tally.get("skipped", 0) - tally.get("not run", 0)
    score = (tally.get("killed", 0) + tally.get("timeout", 0)) / tested if tested else float("nan")
    # a lower bound: mutmut's time limit is scaled from the tests' measured time, which leaves out building
    # shared fixtures (a synthetic cohort: ~30 s under load), so a slow but correct mutant may "time out"
    strict = tally.get("killed", 0) / tested if tested else float("nan")
    diffs = {}
    if show:
        for mutant in survivors:
            out = subprocess.run([*mutmut, "show", mutant], cwd=copy, env=env, capture_output=True, text=True,
                                 timeout=120)
            diffs[mutant] = out.stdout.strip()
    return {"module": name, "source": source, "seconds": seconds, "counts": tally, "score": score, "strict": strict,
            "survivors": survivors, "diffs": diffs, "note": note}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", metavar="MODULE",
                        help=f"modules to mutate (default all): {', '.join(MODULES)}")
    parser.add_argument("--scratch", default=None, help="scratch folder for the copies (default: a new temp dir)")
    parser.add_argument("--children", type=int, default=2, help="mutants tested in parallel (default 2)")
    parser.add_argument("--limit", type=float, default=900, help="seconds per module before stopping (default 900)")
    parser.add_argument("--show", action="store_true", help="print the diff of every surviving mutant")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copies (mutmut browse works there)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {', '.join(unknown)}; choose from {', '.join(MODULES)}")
    if importlib.util.find_spec("mutmut") is None:
        parser.error("mutmut is not installed: .venv/bin/python -m pip install 'mutmut>=3.3,<4'")
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="alkit-mutation-")).resolve()
    if scratch == REPO or REPO in scratch.parents:
        parser.error(f"--scratch {scratch} lies inside the tree under test; give a folder outside {REPO}")
    scratch.mkdir(parents=True, exist_ok=True)
    names = args.modules or list(MODULES)
    originals = {name: digest(REPO / MODULES[name][0]) for name in names}
    results = []
    print(f"{'module':<22} {'mutants':>7} {'killed':>6} {'survived':>8} {'timeout':>7} {'untested':>8} "
          f"{'score':>6} {'killed only':>11} {'time':>7}", flush=True)
    try:
        for name in names:
            r = run_module(scratch, name, args.children, args.limit, args.show)
            results.append(r)
            c = r["counts"]
            print(f"{name:<22} {sum(c.values()):>7} {c.get('killed', 0):>6} {c.get('survived', 0):>8} "
                  f"{c.get('timeout', 0):>7} {c.get('untested', 0):>8} {r['score']:>6.1%} {r['strict']:>11.1%} "
                  f"{r['seconds']:>6.0f}s"
                  + (f"  [{r['note']}]" if r["note"] else ""), flush=True)
            assert digest(REPO / r["source"]) == originals[name], f"{r['source']} changed under the benchmark"
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    for r in results:
        if r["survivors"]:
            print(f"\nsurvivors in {r['source']}:")
            for mutant in r["survivors"]:
                print(f"  {mutant}")
                if mutant in r["diffs"]:
                    print("    " + r["diffs"][mutant].replace("\n", "\n    "))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
