"""Start-up of commands with nothing to compute: wall time of fresh `alkit` processes, and what they import.

Embeds one slide once (the full path), then times ``--help``, ``info``, the fully cached ``embed``
rerun, ``select`` (random, diversity) and ``encoders`` as new processes, each ``--repeat`` times, and
prints the median and fastest wall time of each and whether torch / Lightning got imported.

    python experiments/benchmarks/fast_start.py [--slide PATH] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SLIDE = REPO.parent / "shared" / "data" / "wsi" / "CMU-1-Small-Region.svs"
PROBE = ("import sys, runpy; sys.argv = ['alkit', *sys.argv[1:]]\n"
         "try:\n    runpy.run_module('alkit.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
         "print('HEAVY', [m for m in ('torch', 'pytorch_lightning') if m in sys.modules], file=sys.stderr)")


def timed(argv: list[str]) -> tuple[float, str]:
    """Seconds one fresh ``alkit ARGV`` process took, and the heavy modules it imported."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    heavy = next((line[6:] for line in proc.stderr.splitlines() if line.startswith("HEAVY ")), "?")
    if proc.returncode != 0:
        raise SystemExit(f"alkit {' '.join(argv)} failed: {proc.stderr.strip()[-400:]}")
    return seconds, heavy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slide", default=str(DEFAULT_SLIDE))
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="alkit-fast-start-") as tmp:
        stores = Path(tmp) / "stores"
        embed = ["embed", args.slide, "--out", str(stores), "-q"]
        first, heavy = timed([*embed, "--workers", "0"])
        print(f"{'embed (first run, computes)':32} {first:6.2f} s          imports {heavy}")
        commands = {
            "--help": ["--help"],
            "info": ["info", args.slide],
            "embed (fully cached)": embed,
            "select random": ["select", "--stores", str(stores), "--strategy", "random", "--size", "1024",
                              "--no-png", "--out", str(Path(tmp) / "sel_random")],
            "select diversity": ["select", "--stores", str(stores), "--strategy", "diversity", "--size", "1024",
                                 "--no-png", "--out", str(Path(tmp) / "sel_diversity")],
            "encoders": ["encoders"],
        }
        rows = {}
        for name, argv in commands.items():
            runs = [timed(argv) for _ in range(args.repeat)]
            times = [t for t, _ in runs]
            rows[name] = {"median_s": statistics.median(times), "min_s": min(times), "imports": runs[-1][1]}
            print(f"{name:32} {rows[name]['median_s']:6.2f} s (min {rows[name]['min_s']:.2f})  imports {runs[-1][1]}")
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
