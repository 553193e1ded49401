"""The GPU paths, checked and timed on a CUDA machine (the tests cover their CPU twins).

1. MC-dropout masks keyed by sample id are bit-identical on CUDA and on the CPU, so a pool's
   MC statistics do not depend on the device that scored it.
2. The fused pass on CUDA against the CPU pass, same model and inputs: the largest difference
   in each statistic, and how many of each strategy's top-k picks agree.
3. Scoring throughput (rows/s) of the fused pass on CUDA and on the CPU, per model.
4. Reproducibility: the task model fit twice with one seed, on CUDA and on the CPU: are the
   weights bit-identical? (Before training switched on torch's deterministic algorithms,
   distributed.deterministic, they differed by 2.5e-2 on an H200 and on its 16-core CPU.)
5. Experiments on digits end to end with `gpus: 1`: in the driver (workers 0, actors 0) and on
   Ray Train / Ray Data workers (workers 1, actors 1), for entropy and autoal.

    python benchmarks/gpu_check.py [--n 20000] [--parts masks compare repro experiments] [--out runs/gpu_check]
"""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict

import numpy as np
import torch

import ray

from autoal import cli
from autoal.compute import runtime, scoring, training
from autoal.data import datasets
from autoal.nets import models
from autoal.strategies import PoolStats, get
from autoal.nets.models import ModelRecipe

STRATEGIES = ("entropy", "margin", "least_confidence", "bald", "var_ratio", "mean_std")


def stats_on(device: str, recipe: ModelRecipe, state: dict, ids: np.ndarray, x: np.ndarray, needs, mc: int,
             batch_size: int) -> tuple[dict[str, np.ndarray], float]:
    """Every statistic of (ids, x) scored in this process on `device`, and the seconds it took."""
    scorer = scoring.PoolScorer(asdict(recipe), state, needs, mc, gpus=1.0 if device == "cuda" else 0.0,
                                chunk=batch_size)
    scorer({"id": ids[:batch_size], "x": x[:batch_size]})   # warm-up: cuDNN picks its kernels
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = scorer({"id": ids, "x": x})
    return out, time.perf_counter() - t0


def compare(recipe: ModelRecipe, n_gpu: int, n_cpu: int, mc: int, batch_size: int, k: int) -> None:
    torch.manual_seed(0)
    state = recipe.build().state_dict()
    x = np.random.default_rng(0).random((n_gpu, *recipe.shape), dtype=np.float32)
    ids = np.arange(n_gpu, dtype=np.int64) * 7919   # ids that are not row numbers
    needs = frozenset().union(*(get(name).needs for name in STRATEGIES)) | {"embedding"}
    gpu, gpu_s = stats_on("cuda", recipe, state, ids, x, needs, mc, batch_size)
    cpu, cpu_s = stats_on("cpu", recipe, state, ids[:n_cpu], x[:n_cpu], needs, mc, batch_size)
    print(f"\n{recipe.name} {list(recipe.shape)}, T={mc}, batch {batch_size}: fused pass "
          f"CUDA {n_gpu / gpu_s:,.0f} rows/s ({n_gpu} rows), CPU {n_cpu / cpu_s:,.0f} rows/s "
          f"({n_cpu} rows, {torch.get_num_threads()} threads): {cpu_s / n_cpu * n_gpu / gpu_s:.1f}x")
    for key in sorted(set(cpu) - {"id"}):
        diff = np.abs(gpu[key][:n_cpu].astype(np.float64) - cpu[key]).max()
        print(f"  {key:<10} max |CUDA - CPU| {diff:.2e}")
    for name in STRATEGIES:
        strategy = get(name)
        picks = [set(strategy.select(PoolStats(ids=ids[:n_cpu], **{f: s[f][:n_cpu] for f in strategy.needs}), k))
                 for s in (gpu, cpu)]
        print(f"  {name:<17} top-{k} picks shared by CUDA and CPU: {len(picks[0] & picks[1])}/{k}")


def reproducibility() -> None:
    pool = datasets.load("digits", "unused")
    train, test = pool.subset("train"), pool.subset("test")
    recipe, rows = ModelRecipe("cnn", train.shape, 10, 0.3), np.arange(200)
    runtime.init_ray()
    test_ref = ray.put((test.x, test.y))
    for device, gpus in (("CUDA", 1.0), ("CPU", 0.0)):
        fits = [training.fit(recipe, (train.x[rows], train.y[rows]), test_ref, seed=0, epochs=15, lr=1e-3,
                             weight_decay=5e-4, batch_size=64, gpus=gpus) for _ in range(2)]
        diff = max(float((fits[0].state[k].double() - fits[1].state[k].double()).abs().max()) for k in fits[0].state)
        print(f"fit twice, seed 0, {device}: accuracy {fits[0].accuracy:.4f} / {fits[1].accuracy:.4f}, "
              f"largest weight difference {diff:.2e}", flush=True)


def experiments(out: str) -> None:
    base = ["run", "--dataset", "digits", "--strategy", "entropy", "autoal", "--initial", "40", "--batch", "20",
            "--rounds", "2", "--seeds", "0", "--epochs", "10", "--gpus", "1"]
    for label, placement in (("in the driver", ["--workers", "0", "--actors", "0"]),
                             ("on Ray workers", ["--workers", "1", "--actors", "1"])):
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        code = cli.main(base + placement + ["--out", f"{out}/{placement[1]}-{placement[3]}"])
        print(f"digits, gpus 1, {label}: exit {code} in {time.perf_counter() - t0:.1f} s; driver CUDA peak "
              f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="rows scored on CUDA (the CPU scores a tenth)")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--parts", nargs="+", default=["masks", "compare", "repro", "experiments"],
                    choices=["masks", "compare", "repro", "experiments"])
    ap.add_argument("--out", default="runs/gpu_check")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, CUDA {torch.version.cuda}", flush=True)

    if "masks" in args.parts:
        keys = torch.randint(-2**62, 2**62, (512,), dtype=torch.int64)
        same = torch.equal(models.keyed_uniform(keys, 10, 256), models.keyed_uniform(keys.cuda(), 10, 256).cpu())
        print(f"keyed MC-dropout masks, CUDA vs CPU: {'identical' if same else 'DIFFERENT'}", flush=True)
    if "compare" in args.parts:
        for name, shape, batch_size in (("mlp", (64,), 1024), ("cnn", (3, 32, 32), 512),
                                        ("resnet18", (3, 32, 32), 512)):
            recipe = ModelRecipe(name, shape, 10, 0.3)
            compare(recipe, args.n, max(args.n // 10, batch_size), mc=10, batch_size=batch_size, k=args.k)
    if "repro" in args.parts:
        reproducibility()
    if "experiments" in args.parts:
        experiments(args.out)


if __name__ == "__main__":
    main()
