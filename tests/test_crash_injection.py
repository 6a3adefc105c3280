"""Crash injection: `alkit embed` killed (SIGKILL) at seeded moments, then rerun, ends as an uninterrupted run.

The killed runs are real processes that kill themselves at the k-th occurrence of a moment that matters:
a batch of rows written into a store's temporary file (the store half filled), a store's temporary file
complete but not yet renamed. Between the kills `alkit select` must work on whatever is
there (hidden temporary files are not stores), and the final rerun must give the same stores as an
uninterrupted run, with nothing hidden left behind.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from alkit.cli import main

#: runs `alkit embed` with a SIGKILL at the CRASH_AT-th CRASH_POINT (batch | temp)
CRASHING_EMBED = r"""
import os, signal, sys
point, at = os.environ["CRASH_POINT"], int(os.environ["CRASH_AT"])
seen = {"n": 0}

def hit(name):
    if name == point:
        seen["n"] += 1
        if seen["n"] == at:
            os.kill(os.getpid(), signal.SIGKILL)

import alkit.atomic as atomic
import alkit.embeddings.writer as writer

replace, write = atomic.os.replace, writer.IncrementalStore.write

def crashing_write(self, *a, **k):
    write(self, *a, **k)
    hit("batch")  # rows on disk in the temporary store, the store not yet complete

def crashing_replace(src, dst):
    if str(dst).endswith(".h5"):
        hit("temp")  # the temporary store is complete, the rename has not happened
    replace(src, dst)

writer.IncrementalStore.write = crashing_write
atomic.os.replace = crashing_replace
from alkit.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def two_slides(tmp_path_factory):
    from alkit.synthetic import generate_cohort

    cohort = generate_cohort(tmp_path_factory.mktemp("crash_cohort"), n_slides=2, size=1024, seed=11,
                             n_caption_images=0, progress=False)
    return [str(s.path) for s in cohort.slides]


def embed_args(slides, out) -> list[str]:
    return ["embed", *slides, "--out", str(out), "--mpp", "1.0", "--patch", "64", "--workers", "0",
            "--batch-size", "8", "--accelerator", "cpu", "--devices", "1", "-q"]


def stores_of(folder) -> dict:
    from alkit.embeddings.store import EmbeddingStore

    return {p.name: EmbeddingStore.load(p) for p in sorted(folder.glob("*.h5")) if not p.name.startswith(".")}


def killed_run(slides, out, point: str, at: int) -> int:
    env = {**os.environ, "CRASH_POINT": point, "CRASH_AT": str(at), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", CRASHING_EMBED, *embed_args(slides, out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, -9), done.stderr[-2000:]
    return done.returncode


def test_killed_embeds_rerun_to_the_uninterrupted_result(two_slides, tmp_path, capsys):
    reference = tmp_path / "reference"
    assert main(embed_args(two_slides, reference)) == 0
    expected = stores_of(reference)
    assert len(expected) == 2

    rng = random.Random(15)  # the moments of the kills: seeded
    out = tmp_path / "stores"
    # first the reported case: killed with a complete temporary store not yet renamed
    assert killed_run(two_slides, out, "temp", rng.choice([1, 2])) == -9
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert any(".tmp.h5" in name for name in leftovers), leftovers
    if stores_of(out):  # select works on what is there: temporary files are not stores
        sel = tmp_path / "sel"
        assert main(["select", "--stores", str(out), "--strategy", "random", "--n", "1", "--size", "128",
                     "--out", str(sel), "--no-png"]) == 0
        assert json.loads((sel / "regions.json").read_text())
    # then a second kill at a seeded moment of the resumed run
    killed_run(two_slides, out, rng.choice(["batch", "temp"]), rng.choice([1, 2, 5]))

    capsys.readouterr()
    assert main(embed_args(two_slides, out)) == 0  # the rerun
    got = stores_of(out)
    assert sorted(got) == sorted(expected)
    for name, store in got.items():
        ref = expected[name]
        np.testing.assert_array_equal(store.coords, ref.coords)
        np.testing.assert_allclose(store.features, ref.features, rtol=1e-5, atol=1e-5)
        assert {k: v for k, v in store.attrs.items()} == ref.attrs
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # nothing left behind
    assert main(embed_args(two_slides, out)) == 0  # and a further run is a cache hit
    assert "(2 were already there)" in capsys.readouterr().out
