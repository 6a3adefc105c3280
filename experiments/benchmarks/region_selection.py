"""Region selection and k-means speed: are the selectors and the diversity clustering fast enough?

  (a) standard and adaptive selection on a smooth random 2000 × 2000 float32 map (Gaussian-filtered
      noise scaled to [0, 1]), size 64, n = 5; and on the 1560 × 1560 dense mitosis grid. Wall time
      (best and median of --repeats runs after a warm-up) and peak memory (tracemalloc, one run
      apart from the timed ones). For scale, in the same run: a plain scipy.ndimage.uniform_filter(map,
      64) (a box filter alone, what summing every window costs), and the ratio of standard selection
      to it, in wall time and in CPU time of this process (steadier on a machine other jobs share).
      And the one-map path of select_on_maps: five picks from one StandardSearch (window sums reused)
      against five select_standard(n=1) calls with the earlier picks as labeled boxes (the old path).
  (b) k-means of 200k × 512 float32 embeddings (a seeded mixture of 2000 modes on the unit sphere)
      with k = 1000, 20 iterations, through alkit.selection.clustering.kmeans: wall time (training on the
      default subsample, then assigning every row) and the objective (mean squared distance of all
      rows to their centroid), and the same for the scikit-learn fallback on the same subsample
      (--no-sklearn skips it). --kmeans-full also trains faiss on all rows: the subsampling trade-off.

Targets on the project's 2-core machine: standard <= 15 ms (at most 0.4 of the box filter), adaptive
<= 100 ms, k-means <= 30 s.

    .venv/bin/python experiments/benchmarks/region_selection.py [--repeats 15] [--kmeans-full] [--no-sklearn]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import tracemalloc
from collections.abc import Callable

import numpy as np
from scipy.ndimage import gaussian_filter, uniform_filter

from alkit.selection.clustering import faiss_available, kmeans
from alkit.selection.adaptive import select_adaptive
from alkit.selection.regions import StandardSearch, select_standard

TARGETS_MS = {"standard": 15.0, "adaptive": 100.0}
RATIO_TARGET = 0.4  # standard selection / uniform_filter(map, 64)
KMEANS_TARGET_S = 30.0


def smooth_map(side: int, seed: int = 0, sigma: float = 16.0) -> np.ndarray:
    """A smooth random score map in [0, 1], float32 like the similarity maps."""
    noise = np.random.default_rng(seed).standard_normal((side, side), dtype=np.float32)
    m = gaussian_filter(noise, sigma)
    return ((m - m.min()) / (m.max() - m.min())).astype(np.float32)


def embeddings(n: int = 200_000, d: int = 512, modes: int = 2000, seed: int = 0) -> np.ndarray:
    """Unit-norm embeddings drawn around ``modes`` random directions (clustered, like real ones)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((modes, d), dtype=np.float32)
    x = centres[rng.integers(0, modes, n)]
    x += 0.8 * rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def timed(fn: Callable[[], object], repeats: int, clock: Callable[[], float] = time.perf_counter
          ) -> tuple[float, float]:
    """(best, median) seconds of ``clock`` (wall by default) over ``repeats`` calls after a warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return min(times), float(np.median(times))


def per_pick(m: np.ndarray, size: int, n: int) -> list:
    """The old one-map path of select_on_maps: one select_standard call per pick."""
    picks: list = []
    for _ in range(n):
        found = select_standard(m, size, 1, labeled=picks)
        if not found:
            break
        picks += found
    return picks


def reused(m: np.ndarray, size: int, n: int) -> list:
    """The one-map path of select_on_maps now: one StandardSearch, its window sums reused."""
    search = StandardSearch(m, size, expected=n)
    picks = [search.take() for _ in range(n)]
    return [p for p in picks if p is not None]


def peak_mib(fn: Callable[[], object]) -> float:
    """Peak memory traced while ``fn`` runs (numpy buffers included), MiB."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return (peak - base) / 2**20


def bench_selectors(repeats: int) -> None:
    print("region selection (size 64, n = 5), float32 maps; best / median of", repeats, "runs")
    for side in (2000, 1560):
        m = smooth_map(side)
        box = timed(lambda: uniform_filter(m, 64), repeats)
        box_cpu = timed(lambda: uniform_filter(m, 64), repeats, time.process_time)
        print(f"  {side} x {side}  reference: uniform_filter(map, 64)  "
              f"{box[0] * 1e3:7.1f} / {box[1] * 1e3:7.1f} ms  (CPU {box_cpu[0] * 1e3:.1f} / {box_cpu[1] * 1e3:.1f} ms)")
        for name, select in (("standard", select_standard), ("adaptive", select_adaptive)):
            picks = select(m, 64, 5)
            best, median = timed(lambda: select(m, 64, 5), repeats)
            mem = peak_mib(lambda: select(m, 64, 5))
            target = TARGETS_MS[name] if side == 2000 else None
            verdict = "" if target is None else ("  ok" if median * 1e3 <= target else f"  OVER {target:.0f} ms")
            print(f"  {side} x {side}  {name:8s} {len(picks)} boxes  {best * 1e3:7.1f} / {median * 1e3:7.1f} ms"
                  f"  peak {mem:6.1f} MiB{verdict}")
            print(f"      {picks}")
            if name == "standard":
                cpu = timed(lambda: select(m, 64, 5), repeats, time.process_time)
                ratio, ratio_cpu = median / box[1], cpu[1] / box_cpu[1]
                verdict = "  ok" if min(ratio, ratio_cpu) <= RATIO_TARGET else f"  OVER {RATIO_TARGET}"
                print(f"      / uniform_filter: {ratio:.2f} wall (best {best / box[0]:.2f}), {ratio_cpu:.2f} CPU "
                      f"(best {cpu[0] / box_cpu[0]:.2f}){verdict}")
                assert reused(m, 64, 5) == per_pick(m, 64, 5) == picks
                old, new = timed(lambda: per_pick(m, 64, 5), repeats), timed(lambda: reused(m, 64, 5), repeats)
                print(f"      select_on_maps, one map, 5 picks: {old[1] * 1e3:.1f} ms a pick at a time, "
                      f"{new[1] * 1e3:.1f} ms reusing the window sums (medians)")


def objective(x: np.ndarray, centroids: np.ndarray, assignment: np.ndarray) -> float:
    """Mean squared distance of every row to its centroid, in chunks."""
    total = 0.0
    for a in range(0, len(x), 20_000):
        diff = x[a:a + 20_000] - centroids[assignment[a:a + 20_000]]
        total += float(np.einsum("ij,ij->", diff, diff, dtype=np.float64))
    return total / len(x)


def bench_kmeans(full: bool, sklearn: bool, niter: int) -> None:
    start = time.perf_counter()
    x = embeddings()
    print(f"k-means: {x.shape[0]} x {x.shape[1]} float32 embeddings, k = 1000, {niter} iterations "
          f"(data made in {time.perf_counter() - start:.1f} s)")
    runs = []
    if faiss_available():
        runs.append(("faiss, 64 points/centroid (default)", dict(backend="faiss")))
        if full:
            runs.append(("faiss, all rows", dict(backend="faiss", max_points_per_centroid=None)))
    else:
        print("  faiss is not importable: the scikit-learn fallback is what alkit would use")
    if sklearn or not faiss_available():
        runs.append(("scikit-learn, 64 points/centroid", dict(backend="sklearn")))
    for label, kwargs in runs:
        start = time.perf_counter()
        centroids, assignment = kmeans(x, 1000, seed=0, niter=niter, **kwargs)
        seconds = time.perf_counter() - start
        verdict = "ok" if seconds <= KMEANS_TARGET_S else f"OVER {KMEANS_TARGET_S:.0f} s"
        print(f"  {label:38s} {seconds:6.1f} s  objective {objective(x, centroids, assignment):.5f}  "
              f"clusters used {len(np.unique(assignment))}  {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--skip-kmeans", action="store_true")
    parser.add_argument("--kmeans-full", action="store_true", help="also train faiss on all rows (10-45 s)")
    parser.add_argument("--no-sklearn", dest="sklearn", action="store_false",
                        help="skip the scikit-learn fallback (~10 s)")
    parser.add_argument("--niter", type=int, default=20)
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}")
    bench_selectors(args.repeats)
    if not args.skip_kmeans:
        bench_kmeans(args.kmeans_full, args.sklearn, args.niter)


if __name__ == "__main__":
    main()
