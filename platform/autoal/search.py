"""AutoAL's strategy search on Ray Train, and its round hook (DESIGN section 3).

Each round, on labeled data only, for C cycles:
1. FitNet is fitted from a fresh init on part of L and scores the part it has
   never seen, L_val, in one fused pass. `fitnet: fresh` (the default) fits one
   FitNet on a random half; `crossfit` fits one on each half and lets it score
   the other, so every labeled sample carries signal, at twice the fitting
   cost. Measured on digits (benchmarks/autoal_digits.py, 5 seeds), fresh
   gained more over `vote` (+0.0008 AUBC against -0.0006) at a search cost
   below the task model's training, where crossfit's exceeds it: the two
   half-size FitNets are each as weak as one, so crossfit buys twice the rows
   of the same noisy signal. A FitNet warm-started across rounds (the first
   version) has trained on earlier labels and mostly scores the previous batch.
2. On L_val, once per cycle: each candidate's top-q picks (q = ceil(rho |L_val|),
   rho the simulated query ratio: the real b/|U| gives q = 1 on small L),
   FitNet's loss, and the factors of its last-layer gradients, aligned with the
   mean gradient of the other half of L_val (`objective.Rows`).
3. SearchNet trains on those rows for `search_epochs` (objective.py); FitNet
   stays fixed, because the lookahead reward already is the inner step.
SearchNet stays warm across rounds and weights the candidates' picks on the
real pool (strategies/autoal.py).
"""
from __future__ import annotations

import functools
import math
import time

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from autoal import hooks, objective, scoring, training
from autoal.config import ExperimentConfig, SearchConfig
from autoal.errors import AutoALError
from autoal.searchnet import SearchNet, SearchScorer
from autoal.strategies import PoolStats, get
from autoal.strategies.autoal import AutoAL

MIN_PER_WORKER = 4     # labeled samples per worker: halves of L give every rank batches of >= 2 (BatchNorm)
FITNETS = ("fresh", "crossfit")


def folds(n: int, seed: int, fitnet: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(rows FitNet trains on, rows it scores) per FitNet: a seeded halving of L."""
    perm = np.random.default_rng(seed).permutation(n)
    first, second = perm[: n // 2], perm[n // 2:]
    return [(first, second)] if fitnet == "fresh" else [(first, second), (second, first)]


def fit_fitnet(spec: training.ModelSpec, x: torch.Tensor, y: torch.Tensor, sc: SearchConfig, seed: int, device):
    """A fresh FitNet trained on (x, y) like the task model (cross-entropy + its loss
    module's ranking loss, which the `lpl` candidate reads); returns the plain module."""
    torch.manual_seed(seed)
    net = spec.build()
    model = ray.train.torch.prepare_model(net)
    epochs = training.epochs_for(len(x), dict(batch_size=sc.batch_size, seed=seed, epochs=sc.fit_epochs,
                                              min_steps=sc.fit_steps))
    training.train_epochs(model, torch.optim.Adam(model.parameters(), lr=sc.lr), x, y, device, epochs=epochs,
                          batch_size=sc.batch_size, seed=seed)
    return net


def gradient_rows(probs: np.ndarray, embedding: np.ndarray, y: np.ndarray, seed: int):
    """(align [n], residual [n, C]) of FitNet's last-layer gradients g_i = (p_i - onehot(y_i)) (x) h_i,
    in units of the held-out gradient's norm. L_val is halved at random; each half's
    rows are aligned with the mean gradient of the other half, which they are not in."""
    residual = probs.astype(np.float64) - np.eye(probs.shape[1])[y]
    h = embedding.astype(np.float64)
    halves = np.array_split(np.random.default_rng(seed).permutation(len(y)), 2)
    means = [residual[half].T @ h[half] / len(half) for half in halves]          # [C, D] each
    scale2 = np.mean([(m ** 2).sum() for m in means]) + 1e-12
    align = np.empty(len(y))
    for half, other in zip(halves, means[::-1]):
        align[half] = np.einsum("ic,cd,id->i", residual[half], other, h[half]) / scale2
    return align, residual / math.sqrt(scale2)


def cycle_rows(strategy: AutoAL, spec, sc: SearchConfig, x: torch.Tensor, y: torch.Tensor, e: torch.Tensor,
               seed: int, mc_samples: int, gpus: float, device) -> tuple[objective.Rows, float]:
    """One cycle's search rows (every FitNet's L_val) and FitNets' mean accuracy on them."""
    parts, correct = [], 0
    needs = strategy.needs - {"search_weights"} | {"probs", "embedding"}
    for space, (tr, val) in enumerate(folds(len(x), seed, sc.fitnet)):
        net = fit_fitnet(spec, x[tr], y[tr], sc, seed + space, device)
        rows = np.concatenate([val, tr]) if strategy.needs_labeled else val
        torch.manual_seed(seed)  # MC dropout: every rank draws the same masks
        stats = scoring.score(spec, net.state_dict(), np.arange(len(rows)), x[rows].numpy(), needs,
                              mc_samples=mc_samples, actors=0, gpus=gpus)
        val_stats = stats.take(np.arange(len(val)))
        labeled = stats.take(np.arange(len(val), len(rows))) if strategy.needs_labeled else None
        q = min(max(math.ceil(sc.rho * len(val)), 1), len(val))
        y_val = y[val].numpy()
        align, residual = gradient_rows(val_stats.probs, val_stats.embedding, y_val, seed + space)
        ce = -np.log(np.clip(val_stats.probs[np.arange(len(val)), y_val], 1e-12, None))
        correct += int((val_stats.probs.argmax(1) == y_val).sum())
        parts.append(objective.Rows(
            x=x[val], e=e[val], a=torch.from_numpy(strategy.candidate_matrix(val_stats, q, labeled, seed)),
            ce=torch.tensor(ce, dtype=torch.float32), align=torch.tensor(align, dtype=torch.float32),
            residual=torch.tensor(residual, dtype=torch.float32), h=torch.from_numpy(val_stats.embedding).float(),
            space=torch.full((len(val),), space)))
    rows = objective.Rows.cat(parts)
    return rows, correct / len(rows)


def broadcast(rows: objective.Rows, device) -> objective.Rows:
    """Rank 0's rows on every rank (on `device`: NCCL broadcasts only GPU tensors)."""
    rows = rows.to(device)
    if dist.is_available() and dist.is_initialized():
        for tensor in (rows.a, rows.ce, rows.align, rows.residual, rows.h):
            dist.broadcast(tensor, 0)
    return rows


def gather(t: torch.Tensor) -> torch.Tensor:
    """t over every rank's equal-sized batch, this rank's part keeping its gradient."""
    if not (dist.is_available() and dist.is_initialized()):
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.detach().contiguous())
    parts[dist.get_rank()] = t
    return torch.cat(parts)


def search_terms(model, alpha, rows: objective.Rows, sc: SearchConfig, seed: int, gather_fn=gather):
    logits, l_hat = model(rows.x, rows.e)
    return objective.terms(logits, alpha, l_hat, rows, rho=sc.rho, kind=sc.reward, eta=sc.eta, lam=sc.lam,
                           gamma=sc.gamma, prior=sc.prior, method=sc.threshold, seed=seed, gather=gather_fn)


def search_loop(config: dict) -> dict | None:
    """Ray Train loop of one round's search; rank 0 returns SearchNet's state and telemetry:
    the mean of each term over the last epoch's steps, and the selection and rank
    gradient norms on the whole of the last cycle's rows."""
    sc, spec, seed = config["search"], config["spec"], config["seed"]
    x, y, e = (torch.tensor(a) for a in ray.get(config["data"]))   # copies: object-store arrays are read-only
    device = ray.train.torch.get_device()
    torch.manual_seed(seed)
    net = SearchNet(spec, len(sc.candidates), sc.backbone, sc.loss_module, e.shape[1])
    if config["search_state"] is not None:
        net.load_state_dict(config["search_state"])
    model = ray.train.torch.prepare_model(net)
    strategy, steps = AutoAL(sc.candidates), []
    for cycle_seed in np.random.default_rng(seed).integers(2**31, size=config["cycles"]).tolist():
        rows, accuracy = cycle_rows(strategy, spec, sc, x, y, e, cycle_seed, config["mc_samples"],
                                    config["gpus"], device)
        rows = broadcast(rows, device)
        optimizer = torch.optim.Adam(model.parameters(), lr=sc.lr)
        for epoch in range(sc.search_epochs):
            model.train()
            steps = []
            for i, index in enumerate(training.shard_batches(len(rows), sc.batch_size, cycle_seed, epoch)):
                parts = search_terms(model, net.alpha, rows.take(index.to(device)), sc, cycle_seed + 1000 * epoch + i)
                optimizer.zero_grad()
                (parts["selection"] + parts["rank"]).backward()
                optimizer.step()
                steps.append({k: float(parts[k].detach()) for k in objective.TELEMETRY})
    if ray.train.get_context().get_world_rank() != 0:
        return None
    net.eval()
    norms = objective.gradient_norms(net, search_terms(net, net.alpha, rows, sc, seed, gather_fn=lambda t: t))
    telemetry = {k: float(np.mean([s[k] for s in steps])) if steps else float("nan") for k in objective.TELEMETRY}
    return dict(search_state=training.portable_state(net),
                telemetry=dict(telemetry, **norms, fitnet_accuracy=accuracy, val_rows=len(rows)))


# --- the round hooks -------------------------------------------------------------

@hooks.register("autoal")
class AutoALHook(hooks.RoundHook):
    """Runs the search before each query; keeps SearchNet warm across rounds."""

    def __init__(self, cfg: ExperimentConfig):
        sc = cfg.search
        super().__init__(cfg, scored_candidates(get("autoal", candidates=sc.candidates, hard=sc.hard)))
        need = MIN_PER_WORKER * max(cfg.workers, 1)
        if cfg.initial < need:
            raise AutoALError(f"bad config: autoal splits the labeled set in halves over {max(cfg.workers, 1)} "
                              f"worker(s); initial must be >= {need}")
        self.search_state: dict | None = None
        self.rounds = 0                       # rounds searched so far: the first gets cycles_first
        self.telemetry: dict[str, float] = {}

    def before_query(self, ctx: hooks.RoundContext) -> hooks.ScorerExtra:
        sc, t0 = self.cfg.search, time.perf_counter()
        embedding = task_embedding(ctx) if not sc.backbone else np.zeros((len(ctx.labeled_x), 0), np.float32)
        cycles = sc.cycles_first if self.rounds == 0 else sc.cycles
        config = dict(spec=ctx.spec, search=sc, seed=ctx.rng_seed, cycles=cycles, mc_samples=self.cfg.mc_samples,
                      gpus=self.cfg.gpus, search_state=self.search_state,
                      data=ray.put((np.asarray(ctx.labeled_x, np.float32), np.asarray(ctx.labeled_y, np.int64),
                                    embedding)))
        out = training.run_on_ray_train(search_loop, config, self.cfg.workers, self.cfg.gpus,
                                        name=f"autoal-search-s{ctx.seed}-r{ctx.round}")
        self.search_state = training.torch_state(out["search_state"])
        self.rounds += 1
        self.telemetry = dict(out["telemetry"], cycles=cycles, search_s=time.perf_counter() - t0)
        build = functools.partial(SearchScorer, ctx.spec, len(sc.candidates), sc.backbone, sc.loss_module,
                                  embedding.shape[1])
        return hooks.ScorerExtra(build=build, state=self.search_state, field="search_weights")

    def after_select(self, ctx: hooks.RoundContext, stats: PoolStats, picks: np.ndarray,
                     labels: np.ndarray) -> dict[str, list[dict]]:
        """Each candidate's mean mixture weight over the pool and over the batch (the paper's
        Fig. 5), and how much of the batch the unweighted vote count would have picked too."""
        pi = stats.search_weights
        batch = pi[np.isin(stats.ids, picks)]
        weights = [dict(candidate=name, weight_pool=float(pi[:, j].mean()), weight_batch=float(batch[:, j].mean()))
                   for j, name in enumerate(self.strategy.candidate_names)]
        overlap = len(np.intersect1d(picks, self.strategy.last["vote"])) / len(picks)
        return {"strategy_weights": weights, "search": [dict(self.telemetry, vote_overlap=overlap)]}

    def state_dict(self) -> dict:
        return {"search": self.search_state, "rounds": self.rounds}

    def load_state_dict(self, state: dict) -> None:
        self.search_state, self.rounds = state["search"], state["rounds"]


@hooks.register("vote")
def vote_hook(cfg: ExperimentConfig) -> hooks.RoundHook:
    """`vote` counts the votes of AutoAL's configured candidates."""
    return hooks.RoundHook(cfg, scored_candidates(get("vote", candidates=cfg.search.candidates)))


def scored_candidates(strategy: AutoAL) -> AutoAL:
    """`strategy`, if the fused pass alone serves every candidate (no hook runs for a candidate)."""
    hooked = [c.name for c in strategy.candidates if not c.needs <= set(scoring.POOL_FIELDS)]
    if hooked:
        raise AutoALError(f"bad config: search.candidates {', '.join(hooked)} need statistics that only their "
                          f"own round hooks provide; candidates use {', '.join(scoring.POOL_FIELDS)}")
    return strategy


def task_embedding(ctx: hooks.RoundContext) -> np.ndarray:
    """The round's task model's embeddings of L: the frozen input of a SearchNet without backbone."""
    stats = scoring.score(ctx.spec, ctx.task_state, np.arange(len(ctx.labeled_x)), ctx.labeled_x,
                          frozenset({"embedding"}), mc_samples=ctx.cfg.mc_samples, actors=0, gpus=ctx.cfg.gpus)
    return stats.embedding.astype(np.float32)
