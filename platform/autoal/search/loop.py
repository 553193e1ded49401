"""AutoAL's strategy search: one round's loop on Ray Train (../shared/DESIGN.md, section 3
"AutoAL, as this project implements it"); the round hook that runs it is
autoal.hooks.strategy_search.

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
3. SearchNet trains for `search_epochs` on those rows and on every earlier
   cycle's (`replay`): round r sees all the evidence so far, not one halving of
   a few dozen labels. Each FitNet's rows keep their own gradient space
   (`Rows.space`), since gradients of two FitNets cannot be summed. The pull
   toward the flat mixture weighs prior n0 / (n0 + rows) (objective.prior_weight):
   a prior worth n0 rows, which fades as rows accumulate. FitNet stays fixed,
   because the lookahead reward already is the inner step.
4. Each candidate's own picks are scored by the reward in every FitNet space of the rows
   (`evidence`): the probability that it is the best candidate becomes its global weight.
SearchNet stays warm across rounds and, times those weights, weights the candidates' picks
on the real pool (strategies/autoal.py); the hook keeps the replayed rows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.distributed as dist

from autoal.compute import scoring, training
from autoal.search import evidence, objective
from autoal.config import SearchConfig
from autoal.compute.distributed import World, portable_state, tensors
from autoal.search.searchnet import SearchNet
from autoal.strategies.autoal import AutoAL

MIN_PER_WORKER = 4     # labeled samples per worker: halves of L give every rank batches of >= 2 (BatchNorm)


def folds(n: int, seed: int, fitnet: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(rows FitNet trains on, rows it scores) per FitNet: a seeded halving of L."""
    perm = np.random.default_rng(seed).permutation(n)
    first, second = perm[: n // 2], perm[n // 2:]
    return [(first, second)] if fitnet == "fresh" else [(first, second), (second, first)]


def fit_fitnet(recipe: training.ModelRecipe, x: torch.Tensor, y: torch.Tensor, sc: SearchConfig, seed: int,
               world: World, loss_weight: float = 1.0):
    """A fresh FitNet trained on (x, y) like the task model (cross-entropy + its loss
    module's ranking loss, which the `lpl` candidate reads; weight 0: none reads it); returns
    the plain module."""
    torch.manual_seed(seed)
    net = training.task_net(recipe, loss_weight)
    model = world.prepare(net)
    epochs = training.epochs_for(len(x), sc.search_minibatch, sc.fit_epochs, sc.fit_steps, world)
    training.train_epochs(model, torch.optim.Adam(model.parameters(), lr=sc.lr), x, y, world, epochs=epochs,
                          batch_size=sc.search_minibatch, seed=seed, loss_weight=loss_weight)
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


def cycle_rows(strategy: AutoAL, recipe, sc: SearchConfig, x: torch.Tensor, y: torch.Tensor, e: torch.Tensor,
               seed: int, mc_samples: int, gpus: float, world: World) -> tuple[objective.Rows, float]:
    """One cycle's search rows (every FitNet's L_val) and FitNets' mean accuracy on them."""
    parts, correct = [], 0
    needs = strategy.needs & scoring.POOL_FIELDS | {"probs", "embedding"}
    for space, (tr, val) in enumerate(folds(len(x), seed, sc.fitnet)):
        net = fit_fitnet(recipe, x[tr], y[tr], sc, seed + space, world, float("pred_loss" in needs))
        rows = np.concatenate([val, tr]) if strategy.needs_labeled else val
        torch.manual_seed(seed)  # MC dropout: every rank draws the same masks
        stats = scoring.score(recipe, net.state_dict(), np.arange(len(rows)), x[rows].numpy(), needs,
                              mc_samples=mc_samples, tasks=0, gpus=gpus)
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


def search_terms(model, alpha, rows: objective.Rows, sc: SearchConfig, prior: float, seed: int, gather_fn=gather):
    logits, l_hat = model(rows.x, rows.e)
    return objective.terms(logits, alpha, l_hat, rows, rho=sc.rho, kind=sc.reward, eta=sc.eta, lam=sc.lam,
                           gamma=sc.gamma, prior=prior, method=sc.threshold, seed=seed, gather=gather_fn)


def replay_epochs(epochs: int, new: int, rows: int) -> int:
    """Passes over all `rows` worth `epochs` passes over the `new` ones: the search's steps per
    cycle stay the same however many rows accumulate, so its time does not grow with the rounds."""
    return max(1, round(epochs * new / rows))


def with_replay(replay: objective.Rows | None, rows: objective.Rows) -> objective.Rows:
    """`rows` after the replayed ones, in gradient spaces numbered after theirs."""
    if replay is None or not len(replay):
        return rows
    rows = replace(rows, space=rows.space + int(replay.space.max()) + 1)
    return objective.Rows.cat([replay, rows])


@dataclass(frozen=True)
class SearchPayload:
    """One round's search: the labeled set, and SearchNet's state so far (None: fresh)."""

    recipe: training.ModelRecipe
    search: SearchConfig
    candidates: tuple[str, ...]
    seed: int
    cycles: int
    mc_samples: int
    gpus: float
    search_state: dict | None
    replay: dict[str, np.ndarray] | None    # earlier cycles' rows (objective.Rows.arrays), or None
    data: tuple[np.ndarray, np.ndarray, np.ndarray]   # (x, y, the task model's embeddings or [n, 0])


def search_loop(p: SearchPayload, world: World) -> dict:
    """One round's search; returns SearchNet's state, the rows to replay next round, and telemetry:
    the mean of each term over the last epoch's steps, and the selection and rank gradient norms on
    the whole of the rows trained on (computed on rank 0, the one whose value `distributed.run` returns)."""
    sc, seed = p.search, p.seed
    x, y, e = tensors(p.data, labels=1)
    net = SearchNet(p.recipe, len(p.candidates), sc.backbone, sc.loss_module, e.shape[1])
    if p.search_state is not None:
        net.load_state_dict(p.search_state)
    model = world.prepare(net)
    strategy, steps = AutoAL(p.candidates), []
    replay = objective.Rows.from_arrays(p.replay).to(world.device) if p.replay is not None else None
    for cycle_seed in np.random.default_rng(seed).integers(2**31, size=p.cycles).tolist():
        new, accuracy = cycle_rows(strategy, p.recipe, sc, x, y, e, cycle_seed, p.mc_samples, p.gpus, world)
        rows = with_replay(replay if sc.replay else None, broadcast(new, world.device))
        replay, prior = rows, objective.prior_weight(sc.prior, sc.prior_rows, len(rows))
        optimizer = torch.optim.Adam(model.parameters(), lr=sc.lr)
        for epoch in range(replay_epochs(sc.search_epochs, len(new), len(rows))):
            model.train()
            steps = []
            for i, index in enumerate(training.shard_batches(len(rows), sc.search_minibatch, cycle_seed, epoch, world)):
                parts = search_terms(model, net.alpha, rows.take(index.to(world.device)), sc, prior,
                                     cycle_seed + 1000 * epoch + i)
                optimizer.zero_grad()
                (parts["selection"] + parts["rank"]).backward()
                optimizer.step()
                steps.append({k: float(parts[k].detach()) for k in objective.TELEMETRY})
    if world.rank != 0:
        return {}
    net.eval()
    norms = objective.gradient_norms(net, search_terms(net, net.alpha, rows, sc, prior, seed, gather_fn=lambda t: t))
    telemetry = {k: float(np.mean([s[k] for s in steps])) if steps else float("nan") for k in objective.TELEMETRY}
    weights = evidence.best_probabilities(evidence.candidate_gains(rows, sc.reward, sc.eta), seed,
                                          decay=sc.evidence_decay) if sc.evidence \
        else np.full(len(p.candidates), 1.0 / len(p.candidates))
    return dict(search_state=portable_state(net), replay=rows.arrays() if sc.replay else None, weights=weights,
                telemetry=dict(telemetry, **norms, fitnet_accuracy=accuracy, val_rows=len(new),
                               replay_rows=len(rows), prior_weight=prior))
