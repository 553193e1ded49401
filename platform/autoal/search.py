"""AutoAL's differentiable strategy search (DESIGN.md section 3) and its round hook.

Each round, on labeled data only and for C cycles: split L into halves L_tr
and L_val, fit FitNet on L_tr, mark every candidate's picks on L_val once
(FitNet has not seen L_val, so it plays the unlabeled pool), then alternate
first-order updates of FitNet and SearchNet over mini-batches of L_val in
which every tensor row belongs to the same sample. SearchNet then weights the
candidates' picks on the real pool (strategies/autoal.py).

Optimisers: Adam for both nets. The paper trains FitNet with SGD (momentum
0.9), but at lr 1e-3 and the few dozen steps a round affords on a labeled set
of tens to hundreds of samples, SGD leaves FitNet close to its init, so its
losses say little about which samples are hard.
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
import torch.nn.functional as F
from sklearn.mixture import GaussianMixture
from torch import nn

from autoal import hooks, models, scoring, training
from autoal.config import ExperimentConfig, SearchConfig
from autoal.errors import AutoALError
from autoal.strategies import PoolStats, get
from autoal.strategies.autoal import AutoAL

HIDDEN = 64            # SearchNet head width
GMM_SAMPLES = 4096     # draws from the fitted mixture to read the threshold quantile off
# per-step search telemetry; `selected` is the mean soft selection s over L_val
TELEMETRY = ("fitnet_loss", "searchnet_loss", "count_reg", "rank_loss", "selected", "grad_norm")
MIN_PER_WORKER = 4     # labeled samples per worker: halves of L give every rank batches of >= 2 (BatchNorm)


class SearchNet(nn.Module):
    """w [B, K] = sigmoid(alpha * o), per-sample trust in each of K candidates,
    and l_hat [B], a predicted loss on SearchNet's own intermediate features.

    `backbone`: its own backbone of the task model's family reads x;
    otherwise the head reads the task model's frozen embedding (the paper's
    cheaper ablation). alpha_j (init 1) is candidate j's learnable scale.
    The logits start at zero, so no candidate or sample is preferred before the search.
    """

    def __init__(self, spec: training.ModelSpec, candidates: int, backbone: bool = True,
                 loss_module: bool = True, embed_dim: int = 0):
        super().__init__()
        self.backbone = models.BACKBONES[spec.name](tuple(spec.shape)) if backbone else None
        dim = self.backbone.embed_dim if backbone else embed_dim
        self.hidden = nn.Sequential(nn.Linear(dim, HIDDEN), nn.ReLU())
        self.logits = nn.Linear(HIDDEN, candidates)
        nn.init.zeros_(self.logits.weight)   # w = 0.5 everywhere at first: any preference is learned
        nn.init.zeros_(self.logits.bias)
        self.alpha = nn.Parameter(torch.ones(candidates))
        taps = self.backbone.tap_channels if backbone else (HIDDEN,)
        self.loss_head = models.LossPredictor(taps) if loss_module else None

    def forward(self, x, embedding):
        """(w, l_hat or None) in one call, so that DDP syncs every parameter."""
        e, taps = self.backbone(x) if self.backbone is not None else (embedding, None)
        h = self.hidden(e)
        w = torch.sigmoid(self.alpha * self.logits(h))
        l_hat = None if self.loss_head is None else self.loss_head(taps if taps is not None else [h])
        return w, l_hat


class SearchScorer(SearchNet):
    """SearchNet as the fused pass's extra model: (x, task embedding) -> w."""

    def forward(self, x, embedding):
        return super().forward(x, embedding)[0]


# --- one search step --------------------------------------------------------

def per_sample(fit_model, search_model, x, y, e, a):
    """(CE_F, FitNet's predicted loss, r, l_hat), row i of each belonging to sample i."""
    logits, fit_pred = fit_model(x)
    ce = F.cross_entropy(logits, y, reduction="none")
    w, l_hat = search_model(x, e)
    return ce, fit_pred, (a * w).sum(1), l_hat


def threshold(r: np.ndarray, rho: float, method: str, seed: int) -> float:
    """tau, the (1 - rho) quantile of the scores r. "gmm" (the paper) fits a
    two-component Gaussian mixture to the standardised scores and reads the
    quantile off samples of it; standardising first keeps sklearn's covariance
    floor (1e-6) from swamping scores whose spread is tiny. "quantile" is exact."""
    r = np.asarray(r, dtype=np.float64)
    mean, std = r.mean(), r.std()
    if method == "quantile" or len(r) < 4 or std < 1e-9 * max(1.0, abs(mean)):
        return float(np.quantile(r, 1 - rho))
    gmm = GaussianMixture(n_components=2, random_state=seed).fit(((r - mean) / std)[:, None])
    return float(mean + std * np.quantile(gmm.sample(GMM_SAMPLES)[0][:, 0], 1 - rho))


def gather(t: torch.Tensor) -> torch.Tensor:
    """t concatenated over ranks: the global mini-batch (ranks take equal-sized batches)."""
    if not (dist.is_available() and dist.is_initialized()):
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def soft_selection(r: torch.Tensor, rho: float, method: str, seed: int) -> torch.Tensor:
    """s = sigmoid((r - tau) / T). tau and T are constants of the global
    mini-batch; T follows the spread of r, so the sigmoid neither saturates
    (the authors' 1e11 scale, which zeroes SearchNet's gradient) nor flattens."""
    r_all = gather(r.detach())
    tau = threshold(r_all.cpu().numpy(), rho, method, seed)
    temperature = float(r_all.std(correction=0)) * 0.1 + 1e-6
    return torch.sigmoid((r - tau) / temperature)


def losses(ce, fit_pred, s, l_hat, rho: float, sc: SearchConfig) -> dict[str, torch.Tensor]:
    """FitNet's and SearchNet's losses of one step, each seeing the other's output as a constant.

    FitNet also trains its loss module (it reads detached features, so this
    does not change the classifier's update): the `lpl` candidate needs it.
    """
    count = (s.mean() - rho) ** 2
    rank = models.loss_ranking(l_hat, ce) if l_hat is not None else ce.new_zeros(())
    fit_ce = (ce * s.detach()).mean()
    return dict(fit=fit_ce + models.loss_ranking(fit_pred, ce), fitnet_loss=fit_ce,
                searchnet_loss=-(ce.detach() * s).mean() + sc.lam * count + sc.gamma * rank,
                count_reg=count, rank_loss=rank, selected=s.mean())


def step(optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def grad_norm(module: nn.Module) -> float:
    grads = [p.grad.detach().flatten() for p in module.parameters() if p.grad is not None]
    return float(torch.cat(grads).norm()) if grads else 0.0


# --- one cycle ----------------------------------------------------------------

def split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """L_tr, L_val: a seeded random halving of the labeled rows."""
    perm = np.random.default_rng(seed).permutation(n)
    return perm[: n // 2], perm[n // 2:]


def fit(model, optimizer, x, y, epochs: int, batch_size: int, seed: int, device) -> None:
    """FitNet on L_tr, trained like the task model (cross-entropy + its loss module's ranking loss)."""
    model.train()
    for epoch in range(epochs):
        for index in training.shard_batches(len(x), batch_size, seed, epoch):
            logits, pred = model(x[index].to(device))
            ce = F.cross_entropy(logits, y[index].to(device), reduction="none")
            step(optimizer, ce.mean() + models.loss_ranking(pred, ce))


def candidate_matrix(strategy: AutoAL, spec: training.ModelSpec, fit_net, x: np.ndarray, val: np.ndarray,
                     tr: np.ndarray, q: int, seed: int, mc_samples: int, gpus: float, device) -> torch.Tensor:
    """A on L_val [n_val, K], once per cycle: FitNet scores L_val (plus L_tr when a
    candidate wants the labeled set) in one fused pass; each candidate picks q.
    On `device`, because NCCL broadcasts only GPU tensors."""
    rows = np.concatenate([val, tr]) if strategy.needs_labeled else val
    stats = scoring.score(spec, fit_net.state_dict(), np.arange(len(rows)), x[rows], strategy.needs,
                          mc_samples=mc_samples, actors=0, gpus=gpus)
    labeled = stats.take(np.arange(len(val), len(rows))) if strategy.needs_labeled else None
    a = torch.from_numpy(strategy.candidate_matrix(stats.take(np.arange(len(val))), q, labeled, seed)).to(device)
    if dist.is_available() and dist.is_initialized():
        dist.broadcast(a, 0)  # MC dropout draws differ per rank: every rank uses rank 0's matrix
    return a


def search_epoch(nets, optimizers, tensors, rho: float, sc: SearchConfig, seed: int, epoch: int,
                 device) -> list[dict[str, float]]:
    """One pass of alternating updates over L_val; every tensor is indexed by the same rows."""
    fit_model, search_model = nets
    rows = []
    for i, index in enumerate(training.shard_batches(len(tensors[0]), sc.batch_size, seed, epoch)):
        xb, yb, eb, ab = (t[index].to(device) for t in tensors)
        ce, fit_pred, r, l_hat = per_sample(fit_model, search_model, xb, yb, eb, ab)
        s = soft_selection(r, rho, sc.threshold, seed=seed + 1000 * epoch + i)
        parts = losses(ce, fit_pred, s, l_hat, rho, sc)
        step(optimizers[0], parts["fit"])
        optimizers[1].zero_grad()
        parts["searchnet_loss"].backward()
        norm = grad_norm(search_model)
        optimizers[1].step()
        rows.append(dict({k: float(parts[k].detach()) for k in TELEMETRY if k != "grad_norm"}, grad_norm=norm))
    return rows


def search_loop(config: dict) -> dict | None:
    """Ray Train loop of one round's search; rank 0 returns both nets' states and telemetry.

    Telemetry is the mean over the steps of the last search epoch of the last cycle.
    """
    sc, spec, seed = config["search"], config["spec"], config["seed"]
    x_np, y_np, e_np = ray.get(config["data"])
    x, y, e = torch.tensor(x_np), torch.tensor(y_np), torch.tensor(e_np)  # copies: object-store arrays are read-only
    torch.manual_seed(seed)
    device = ray.train.torch.get_device()
    fit_net, search_net = spec.build(), SearchNet(spec, len(sc.candidates), sc.backbone, sc.loss_module,
                                                  e.shape[1])
    for net, state in ((fit_net, config["fit_state"]), (search_net, config["search_state"])):
        if state is not None:
            net.load_state_dict(state)
    nets = (ray.train.torch.prepare_model(fit_net), ray.train.torch.prepare_model(search_net))
    strategy, rho = AutoAL(sc.candidates), config["rho"]
    rows = []
    for cycle_seed in np.random.default_rng(seed).integers(2**31, size=config["cycles"]).tolist():
        optimizers = (torch.optim.Adam(nets[0].parameters(), lr=sc.lr),
                      torch.optim.Adam(nets[1].parameters(), lr=sc.lr))
        tr, val = split(len(x), cycle_seed)
        fit(nets[0], optimizers[0], x[tr], y[tr], sc.fit_epochs, sc.batch_size, cycle_seed, device)
        q = min(max(math.ceil(rho * len(val)), 1), len(val))
        a = candidate_matrix(strategy, spec, fit_net, x_np, val, tr, q, cycle_seed, config["mc_samples"],
                             config["gpus"], device)
        for epoch in range(sc.search_epochs):
            rows = search_epoch(nets, optimizers, (x[val], y[val], e[val], a), rho, sc, cycle_seed, epoch, device)
    if ray.train.get_context().get_world_rank() != 0:
        return None
    telemetry = {k: float(np.mean([r[k] for r in rows])) if rows else float("nan") for k in TELEMETRY}
    return dict(fit_state=training.portable_state(fit_net), search_state=training.portable_state(search_net),
                telemetry=telemetry)


# --- the round hook -----------------------------------------------------------

@hooks.register("autoal")
class AutoALHook(hooks.RoundHook):
    """Runs the search before each query and keeps FitNet and SearchNet warm across rounds."""

    def __init__(self, cfg: ExperimentConfig):
        super().__init__(cfg, get("autoal", candidates=cfg.search.candidates))
        hooked = [c.name for c in self.strategy.candidates if not c.needs <= set(scoring.POOL_FIELDS)]
        if hooked:
            raise AutoALError(f"bad config: search.candidates {', '.join(hooked)} need statistics that only their "
                              f"own round hooks provide; candidates use {', '.join(scoring.POOL_FIELDS)}")
        need = MIN_PER_WORKER * max(cfg.workers, 1)
        if cfg.initial < need:
            raise AutoALError(f"bad config: autoal splits the labeled set in halves over {max(cfg.workers, 1)} "
                              f"worker(s); initial must be >= {need}")
        self.fit_state: dict | None = None
        self.search_state: dict | None = None
        self.rounds = 0                       # rounds searched so far: the first gets cycles_first
        self.telemetry: dict[str, float] = {}

    def before_query(self, ctx: hooks.RoundContext) -> hooks.ScorerExtra:
        sc, t0 = self.cfg.search, time.perf_counter()
        embedding = task_embedding(ctx) if not sc.backbone else np.zeros((len(ctx.labeled_x), 0), np.float32)
        cycles = sc.cycles_first if self.rounds == 0 else sc.cycles
        config = dict(spec=ctx.spec, search=sc, seed=ctx.rng_seed, rho=ctx.k / len(ctx.unlabeled_ids),
                      cycles=cycles, mc_samples=self.cfg.mc_samples, gpus=self.cfg.gpus,
                      fit_state=self.fit_state, search_state=self.search_state,
                      data=ray.put((np.asarray(ctx.labeled_x, np.float32), np.asarray(ctx.labeled_y, np.int64),
                                    embedding)))
        out = training.run_on_ray_train(search_loop, config, self.cfg.workers, self.cfg.gpus,
                                        name=f"autoal-search-s{ctx.seed}-r{ctx.round}")
        self.fit_state, self.search_state = (training.torch_state(out[k]) for k in ("fit_state", "search_state"))
        self.rounds += 1
        self.telemetry = dict(out["telemetry"], cycles=cycles, search_s=time.perf_counter() - t0)
        build = functools.partial(SearchScorer, ctx.spec, len(sc.candidates), sc.backbone, sc.loss_module,
                                  embedding.shape[1])
        return hooks.ScorerExtra(build=build, state=self.search_state, field="search_weights")

    def after_select(self, ctx: hooks.RoundContext, stats: PoolStats, picks: np.ndarray,
                     labels: np.ndarray) -> dict[str, list[dict]]:
        """Each candidate's mean weight over the pool and over the picked batch (the paper's Fig. 5)."""
        w = stats.search_weights
        batch = w[np.isin(stats.ids, picks)]
        weights = [dict(candidate=name, weight_pool=float(w[:, j].mean()), weight_batch=float(batch[:, j].mean()))
                   for j, name in enumerate(self.strategy.candidate_names)]
        return {"strategy_weights": weights, "search": [dict(self.telemetry)]}

    def state_dict(self) -> dict:
        return {"fit": self.fit_state, "search": self.search_state, "rounds": self.rounds}

    def load_state_dict(self, state: dict) -> None:
        self.fit_state, self.search_state, self.rounds = state["fit"], state["search"], state["rounds"]


def task_embedding(ctx: hooks.RoundContext) -> np.ndarray:
    """The round's task model's embeddings of L: the frozen input of a SearchNet without backbone."""
    stats = scoring.score(ctx.spec, ctx.task_state, np.arange(len(ctx.labeled_x)), ctx.labeled_x,
                          frozenset({"embedding"}), mc_samples=ctx.cfg.mc_samples, actors=0, gpus=ctx.cfg.gpus)
    return stats.embedding.astype(np.float32)
