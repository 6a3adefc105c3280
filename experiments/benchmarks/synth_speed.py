"""How fast is the synthetic cohort generator, and does its memory stay flat as slides grow?

Each slide size runs in a fresh Python process (so peak RSS is its own) that generates a few
slides without captions; the caption database is timed separately. Prints seconds per slide,
level-0 megapixels per second, peak RSS, and the RSS right after the imports (the baseline).

    python experiments/benchmarks/synth_speed.py                  # sizes 4096 and 8192, 2 slides each
    python experiments/benchmarks/synth_speed.py --sizes 2048 4096 16384 --slides 1
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _child(kind: str, value: int, n: int, workers: int | None) -> dict:
    from alkit.synthetic import generate_cohort

    base = _rss_mb()
    with tempfile.TemporaryDirectory(prefix="alkit-synth-bench-") as tmp:
        # warm-up outside the timing: sprite banks, noise grain, imports of codecs
        generate_cohort(Path(tmp) / "warm", n_slides=1, size=512, seed=99, n_caption_images=0,
                        progress=False, workers=workers)
        t0 = time.perf_counter()
        if kind == "slides":
            c = generate_cohort(Path(tmp) / "c", n_slides=n, size=value, seed=0, n_caption_images=0,
                                progress=False, workers=workers)
            sizes = sum(s.path.stat().st_size for s in c.slides)
        else:
            generate_cohort(Path(tmp) / "c", n_slides=0, size=512, seed=0, n_caption_images=value,
                            progress=False, workers=workers)
            sizes = 0
        dt = time.perf_counter() - t0
    return {"kind": kind, "value": value, "n": n, "seconds": dt, "peak_rss_mb": _rss_mb(),
            "base_rss_mb": base, "bytes": sizes}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192], help="level-0 side(s), px")
    ap.add_argument("--slides", type=int, default=2, help="slides per size (default 2)")
    ap.add_argument("--captions", type=int, default=120, help="caption images to time (0: skip)")
    ap.add_argument("--workers", type=int, default=None, help="tile threads (default: up to 2)")
    ap.add_argument("--child", nargs=3, metavar=("KIND", "VALUE", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, value, n = args.child
        print(json.dumps(_child(kind, int(value), int(n), args.workers)))
        return 0

    jobs = [("slides", s, args.slides) for s in args.sizes]
    if args.captions:
        jobs.append(("captions", args.captions, 1))
    extra = [] if args.workers is None else ["--workers", str(args.workers)]
    print(f"{'what':>16} {'s/slide':>8} {'MPix/s':>7} {'MB/slide':>8} {'peak RSS MB':>11} {'base RSS MB':>11}")
    for kind, value, n in jobs:
        out = subprocess.run([sys.executable, __file__, "--child", kind, str(value), str(n), *extra],
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        if kind == "slides":
            per = r["seconds"] / n
            mpix = value * value * n / 1e6 / r["seconds"]
            print(f"{f'{value}x{value} x{n}':>16} {per:8.2f} {mpix:7.1f} {r['bytes'] / n / 1e6:8.2f} "
                  f"{r['peak_rss_mb']:11.0f} {r['base_rss_mb']:11.0f}")
        else:
            print(f"{f'{value} captions':>16} {r['seconds']:8.2f} {'':>7} {'':>8} "
                  f"{r['peak_rss_mb']:11.0f} {r['base_rss_mb']:11.0f}   "
                  f"({value / r['seconds']:.0f} images/s; s/slide column = total seconds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
