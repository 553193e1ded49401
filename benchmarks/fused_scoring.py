"""Fused scoring vs plain inference vs one pass per strategy, side by side on one pool and model.

The fused pass computes every statistic the seven AutoAL candidates need (entropy, margin,
least_confidence, kmeans, bald, var_ratio, mean_std): probabilities, T MC-dropout samples of
the head, embeddings. Without fusion each strategy runs its own pass, and the MC strategies
run the whole network T times with dropout on.

    .venv/bin/python benchmarks/fused_scoring.py [--n 4000] [--model cnn] [--mc 10] [--actors 1]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from autoal.compute import runtime, scoring
from autoal.nets import models
from autoal.strategies import get
from autoal.nets.models import ModelRecipe

CANDIDATES = ("entropy", "margin", "least_confidence", "kmeans", "bald", "var_ratio", "mean_std")


def batches(x: torch.Tensor, size: int):
    return (x[s:s + size] for s in range(0, len(x), size))


@torch.no_grad()
def plain_inference(net, x, size):
    return torch.cat([net(b)[0].softmax(1) for b in batches(x, size)])


@torch.no_grad()
def fused(net, x, size, needs, t):
    return [scoring.fused_stats(net, b, needs, t) for b in batches(x, size)]


@torch.no_grad()
def separate_passes(net, x, size, t):
    """What scoring costs without fusion: a pass per strategy, T full passes per MC strategy."""
    for name in CANDIDATES:
        needs = get(name).needs
        for b in batches(x, size):
            if "mc_probs" in needs:
                net.head.train()  # dropout on in the head only; BatchNorm stays in eval mode
                torch.stack([net(b)[0].softmax(1) for _ in range(t)], 1)
                net.head.eval()
            elif "embedding" in needs:
                net.features(b)
            else:
                net(b)[0].softmax(1)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000, help="pool size")
    ap.add_argument("--shape", type=int, nargs="+", default=[3, 32, 32])
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--mc", type=int, default=10, help="T, MC-dropout samples")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--actors", type=int, default=0,
                    help="also time three fused passes (rounds) on Ray Data with this many scoring workers")
    ap.add_argument("--skip-separate", action="store_true", help="skip the one-pass-per-strategy timing (slow)")
    args = ap.parse_args()

    torch.manual_seed(0)
    shape = tuple(args.shape)
    recipe = ModelRecipe(models.resolve(args.model, shape), shape, 10, 0.3)
    net = recipe.build().eval()
    x_np = np.random.default_rng(0).random((args.n, *shape), dtype=np.float32)
    x = torch.from_numpy(x_np)
    needs = frozenset().union(*(get(name).needs for name in CANDIDATES))

    plain = timed(lambda: plain_inference(net, x, args.batch_size), args.repeats)
    fused_s = timed(lambda: fused(net, x, args.batch_size, needs, args.mc), args.repeats)
    separate = timed(lambda: separate_passes(net, x, args.batch_size, args.mc), max(1, args.repeats // 3)) \
        if not args.skip_separate else float("nan")
    print(f"pool {args.n} x {list(shape)}, model {recipe.name}, T={args.mc}, torch threads {torch.get_num_threads()}")
    print(f"statistics for {', '.join(CANDIDATES)}: {', '.join(sorted(needs))}")
    print(f"{'plain inference pass':<38} {plain:8.3f} s   1.00x")
    print(f"{'fused pass, all statistics':<38} {fused_s:8.3f} s   {fused_s / plain:.2f}x plain")
    print(f"{'one pass per strategy (T full for MC)':<38} {separate:8.3f} s   {separate / plain:.2f}x plain, "
          f"{separate / fused_s:.1f}x fused")
    if args.actors:
        runtime.init_ray()
        state = net.state_dict()
        ids = np.arange(args.n, dtype=np.int64)
        passes = []
        for _ in range(3):   # a new model state each pass, as each round brings
            state = {k: v + 0.0 for k, v in state.items()}
            t0 = time.perf_counter()
            scoring.score(recipe, state, ids, x_np, needs, mc_samples=args.mc, tasks=args.actors,
                          chunk=args.batch_size)
            passes.append(time.perf_counter() - t0)
        label = f"fused pass on Ray Data, {args.actors} worker(s)"
        for i, seconds in enumerate(passes):
            print(f"{label + (', first' if i == 0 else f', pass {i + 1}'):<38} {seconds:8.3f} s   "
                  f"{seconds / plain:.2f}x plain" + (" (includes start-up)" if i == 0 else ""))


if __name__ == "__main__":
    main()
