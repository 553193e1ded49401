"""Selection kernels at scale, side by side in one run on the same seeded embeddings.

1. k-means on N x D clustered-Gaussian embeddings with k clusters: faiss (what `kmeans`, `dpp`
   and `cluster_margin` run) vs scikit-learn's KMeans as the strategies ran it before
   (k-means++, one init, up to 300 iterations): wall time and the k-means objective (inertia),
   the sum of squared distances to the nearest centroid, computed the same way for both
   (float64, exact, by `min_sq_dist_to_set`).
2. coreset and badge selecting k from BIG x D embeddings: wall time and peak memory, measured
   as tracemalloc's peak of traced allocations during the call (numpy registers its buffers with
   tracemalloc, so every array they allocate counts; the inputs, allocated before, do not).
   Time is measured with tracemalloc on.

    .venv/bin/python benchmarks/selection_kernels.py [--n 100000] [--big 1000000] [--dim 64] [--k 1000] [--repeats 1]

--n 0 or --big 0 skips that part.
"""
from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
from sklearn.cluster import KMeans

from autoal.strategies import PoolStats, get
from autoal.strategies.diversity import kmeans_centers, min_sq_dist_to_set

CLASSES = 10


def clustered_gaussian(n: int, dim: int, blobs: int, seed: int) -> np.ndarray:
    """n float32 rows around `blobs` Gaussian centres (spread 4, unit noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(blobs, dim)).astype(np.float32)
    return centres[rng.integers(0, blobs, n)] + rng.normal(size=(n, dim)).astype(np.float32)


def inertia(x: np.ndarray, centers: np.ndarray) -> float:
    return float(min_sq_dist_to_set(x.astype(np.float64), centers.astype(np.float64)).sum())


def timed(fn, repeats: int = 1):
    """(last result, best wall seconds of `repeats` calls): the best, as the machine may be shared."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def traced(fn):
    """(seconds, peak traced bytes) of one call."""
    tracemalloc.start()
    try:
        _, seconds = timed(fn)
        return seconds, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def compare_kmeans(x: np.ndarray, k: int, seed: int, repeats: int) -> None:
    print(f"k-means, N={len(x):,} x D={x.shape[1]}, k={k}, best of {repeats}")
    print(f"  {'':12} {'seconds':>9} {'inertia':>14}")
    faiss_centers, faiss_s = timed(lambda: kmeans_centers(x, k, seed), repeats)
    faiss_obj = inertia(x, faiss_centers)
    print(f"  {'faiss':12} {faiss_s:9.2f} {faiss_obj:14.6g}", flush=True)
    sk, sk_s = timed(lambda: KMeans(n_clusters=k, n_init=1, random_state=seed).fit(x), repeats)
    sk_obj = inertia(x, sk.cluster_centers_)
    print(f"  {'scikit-learn':12} {sk_s:9.2f} {sk_obj:14.6g}   ({sk.n_iter_} iterations)")
    print(f"  faiss / scikit-learn: time {faiss_s / sk_s:.3f}x, inertia {faiss_obj / sk_obj:.4f}x")


def diversity_at_scale(x: np.ndarray, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(len(x), CLASSES)) * 2
    probs = np.exp(z - z.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    stats = PoolStats(ids=np.arange(len(x), dtype=np.int64), probs=probs, embedding=x)
    labeled = PoolStats(ids=np.arange(k, dtype=np.int64), embedding=x[rng.choice(len(x), k, replace=False)])
    print(f"\ndiversity kernels, N={len(x):,} x D={x.shape[1]} ({x.dtype}, {x.nbytes / 2**20:.0f} MiB), "
          f"probs {CLASSES} classes, k={k}")
    print(f"  {'':22} {'seconds':>9} {'peak MiB':>9} {'peak / embedding':>17}")
    for label, fn in (("coreset", lambda: get("coreset").select(stats, k, seed=seed)),
                      (f"coreset, {k} labeled", lambda: get("coreset").select(stats, k, labeled=labeled, seed=seed)),
                      ("badge", lambda: get("badge").select(stats, k, seed=seed))):
        seconds, peak = traced(fn)
        print(f"  {label:22} {seconds:9.2f} {peak / 2**20:9.1f} {peak / x.nbytes:16.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="rows for the k-means comparison")
    parser.add_argument("--big", type=int, default=1_000_000, help="rows for coreset and badge")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--blobs", type=int, default=2000, help="Gaussian clusters in the embeddings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="k-means timings: best of this many runs")
    args = parser.parse_args()
    big = clustered_gaussian(max(args.n, args.big), args.dim, args.blobs, args.seed)
    if args.n:
        compare_kmeans(big[:args.n], args.k, args.seed, args.repeats)
    if args.big:
        diversity_at_scale(big[:args.big], args.k, args.seed)


if __name__ == "__main__":
    main()
