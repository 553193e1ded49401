"""AutoAL: the differentiable strategy search, its round hook and the `autoal` strategy.

Each test pins down a property the authors' released code lacks (DESIGN.md
section 3): SearchNet gets a real gradient, every per-sample tensor stays
aligned with its sample, candidates are evaluated once per cycle, and the
search learns to trust the candidate whose picks are informative.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from autoal import config, hooks, pool, scoring, search, training
from autoal.errors import AutoALError
from autoal.experiment import Experiment
from autoal.store import ExperimentDir
from autoal.strategies import PoolStats, get
from autoal.strategies.autoal import AutoAL

SPEC = training.ModelSpec("mlp", (8,), 2, 0.3)
FAST = {"search.cycles_first": 1, "search.cycles": 1, "search.fit_epochs": 2, "search.search_epochs": 2,
        "search.batch_size": 16}


def toy(n_easy: int, n_hard: int, seed: int, d: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Two tight, far-apart clusters (easy, redundant) and a band between them whose
    labels are coin flips (hard: no model is confident there, so their loss stays high).
    Rows [0, n_easy) are easy, the rest hard."""
    rng = np.random.default_rng(seed)
    y_easy = rng.integers(0, 2, n_easy)
    x_easy = rng.normal(0, 0.3, (n_easy, d))
    x_easy[:, 0] += np.where(y_easy == 1, 3.0, -3.0)
    x_hard = rng.normal(0, 0.3, (n_hard, d))
    x_hard[:, 0] = rng.uniform(-0.5, 0.5, n_hard)
    return np.concatenate([x_easy, x_hard]).astype(np.float32), np.concatenate([y_easy, rng.integers(0, 2, n_hard)])


def toy_cfg(**overrides) -> config.ExperimentConfig:
    return config.load(None, {"dataset": "toy", "strategies": ["autoal"], "actors": 0, "mc_samples": 4,
                              "search.candidates": ["margin", "kmeans", "bald"], **FAST, **overrides})


def context(cfg, x, y, labeled, round_=0, k=20) -> hooks.RoundContext:
    unlabeled = np.setdiff1d(np.arange(len(x)), labeled)
    torch.manual_seed(0)
    return hooks.RoundContext(cfg, 0, round_, SPEC, SPEC.build().state_dict(), x[labeled], y[labeled],
                              unlabeled, k, rng_seed=11 + round_)


def score_pool(hook, ctx, extra, x) -> PoolStats:
    ids = ctx.unlabeled_ids
    return scoring.score(SPEC, ctx.task_state, ids, x[ids], hook.strategy.needs, mc_samples=4, actors=0, extra=extra)


def nets(candidates: int = 3, **kw):
    torch.manual_seed(0)
    return SPEC.build(), search.SearchNet(SPEC, candidates, **kw)


def batch(n: int = 32, candidates: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 8, generator=g), torch.randint(0, 2, (n,), generator=g)
    return x, y, torch.zeros(n, 0), (torch.rand(n, candidates, generator=g) < 0.3).float()


def search_grads(search_net, fit_net, sc, rho=0.2, term="searchnet_loss") -> dict[str, torch.Tensor]:
    """SearchNet's gradients of its loss (or of one named term) on one mini-batch."""
    ce, fit_pred, r, l_hat = search.per_sample(fit_net, search_net, *batch())
    parts = search.losses(ce, fit_pred, search.soft_selection(r, rho, sc.threshold, seed=0), l_hat, rho, sc)
    search_net.zero_grad()
    parts[term].backward()
    return {k: p.grad.clone() for k, p in search_net.named_parameters() if p.grad is not None}


# --- the search step, without Ray ---------------------------------------------------

def test_searchnet_starts_without_preference():
    _, search_net = nets()
    w, _ = search_net(batch()[0], None)
    assert torch.equal(w, torch.full_like(w, 0.5))


def test_searchnet_gradient_is_nonzero_and_finite():
    fit_net, search_net = nets()
    sc = config.SearchConfig()
    optimizer = torch.optim.Adam(search_net.parameters(), lr=1e-2)
    grads = search_grads(search_net, fit_net, sc)
    assert grads["logits.weight"].abs().sum() > 0
    optimizer.step()  # off the zero init, the gradient reaches alpha and the backbone too
    grads = search_grads(search_net, fit_net, sc)
    for name in ("alpha", "logits.weight", "hidden.0.weight", "backbone.layers.0.0.weight", "loss_head.out.weight"):
        assert torch.isfinite(grads[name]).all(), name
        assert grads[name].abs().sum() > 0, name


def test_count_regulariser_and_rank_loss_carry_gradient():
    fit_net, search_net = nets()
    sc = config.SearchConfig()
    count = search_grads(search_net, fit_net, sc, rho=0.9, term="count_reg")
    assert count["logits.weight"].abs().sum() > 0
    rank = search_grads(search_net, fit_net, sc, term="rank_loss")
    assert rank["loss_head.out.weight"].abs().sum() > 0


def test_per_sample_outputs_follow_their_samples():
    """Permuting a mini-batch permutes every per-sample output the same way."""
    fit_net, search_net = nets()
    fit_net.eval(), search_net.eval()
    x, y, e, a = batch()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = search.per_sample(fit_net, search_net, x, y, e, a)
        permuted = search.per_sample(fit_net, search_net, x[perm], y[perm], e[perm], a[perm])
        s = search.soft_selection(plain[2], 0.2, "quantile", seed=0)
        s_permuted = search.soft_selection(permuted[2], 0.2, "quantile", seed=0)
    for out, out_permuted in zip(plain, permuted):
        torch.testing.assert_close(out[perm], out_permuted)
    torch.testing.assert_close(s[perm], s_permuted)


def test_gmm_threshold_tracks_the_quantile_of_tiny_scores():
    """Standardising first: scores spread over 1e-4 still get a threshold inside their range."""
    rng = np.random.default_rng(0)
    r = np.concatenate([rng.normal(0, 1e-4, 180), rng.normal(6e-4, 1e-4, 20)])
    for rho in (0.05, 0.2):  # unstandardised, the 1e-6 covariance floor puts tau ~5 std too high
        exact = np.quantile(r, 1 - rho)
        assert search.threshold(r, rho, "quantile", seed=0) == exact
        assert abs(search.threshold(r, rho, "gmm", seed=0) - exact) < 0.25 * r.std()


def test_autoal_strategy_scores_agreement_weighted_by_searchnet():
    """r = sum over the candidates picking a sample of its weight; top-k by r, ties to the smaller id."""
    probs = np.array([[0.5, 0.5], [0.9, 0.1], [0.6, 0.4], [0.99, 0.01], [0.55, 0.45]])
    strategy = get("autoal", candidates=("margin", "least_confidence"))
    stats = PoolStats(ids=np.arange(10, 15), probs=probs, search_weights=np.full((5, 2), 0.5))
    np.testing.assert_array_equal(strategy.candidate_matrix(stats, 2), [[1, 1], [0, 0], [0, 0], [0, 0], [1, 1]])
    np.testing.assert_array_equal(strategy.select(stats, 2), [10, 14])
    trust_none = PoolStats(ids=stats.ids, probs=probs, search_weights=np.array([[0, 0]] * 4 + [[0.1, 0.2]]))
    np.testing.assert_array_equal(strategy.select(trust_none, 3), [14, 10, 11])  # r = 0 except 14; fill by id


def test_autoal_strategy_needs_and_bad_candidates():
    strategy = get("autoal", candidates=("entropy", "coreset", "lpl"))
    assert strategy.needs == {"probs", "embedding", "pred_loss", "search_weights"}
    assert strategy.needs_labeled
    with pytest.raises(KeyError):
        get("autoal", candidates=("entropy", "nope"))
    with pytest.raises(KeyError):
        get("autoal", candidates=("autoal",))
    with pytest.raises(KeyError, match="albl"):  # its bandit would never see a reward
        get("autoal", candidates=("entropy", "albl"))
    with pytest.raises(AutoALError):
        hooks.create("autoal", toy_cfg(initial=2))
    with pytest.raises(AutoALError):
        hooks.create("autoal", toy_cfg(initial=6, workers=2))
    with pytest.raises(AutoALError, match="vaal"):
        hooks.create("autoal", toy_cfg(**{"search.candidates": ["entropy", "vaal"]}))
    assert hooks.create("autoal", toy_cfg(**{"search.candidates": ["entropy", "dpp"]})).strategy.candidate_names


# --- the search on Ray Train ----------------------------------------------------------

def _aligned_epoch(config: dict) -> int:
    """A search epoch over rows whose x, y, e and A all encode the row number."""
    n, sc = 40, config["search"]
    x = torch.zeros(n, 8)
    x[:, 0] = torch.arange(n)
    e = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 3)
    a = torch.stack([torch.arange(n) % 2, torch.arange(n) / n, torch.ones(n)], 1).float()
    fit_net, search_net = nets(backbone=False, embed_dim=3)
    optimizers = (torch.optim.Adam(fit_net.parameters()), torch.optim.Adam(search_net.parameters()))
    return len(search.search_epoch((fit_net, search_net), optimizers, (x, torch.arange(n) % 2, e, a), 0.2, sc,
                                   seed=3, epoch=0, device=torch.device("cpu")))


def test_search_epoch_keeps_every_tensor_aligned(ray_local, monkeypatch):
    seen = []
    real = search.per_sample

    def checked(fit_model, search_model, x, y, e, a):
        row = x[:, 0].long()
        assert torch.equal(y, row % 2) and torch.equal(e[:, 0].long(), row)
        assert torch.equal(a[:, 0].long(), row % 2) and torch.allclose(a[:, 1] * 40, row.float())
        seen.append(row)
        return real(fit_model, search_model, x, y, e, a)

    monkeypatch.setattr(search, "per_sample", checked)
    steps = training.run_on_ray_train(_aligned_epoch, {"search": config.SearchConfig(batch_size=16)}, 0, 0, "align")
    rows = torch.cat(seen)
    assert steps == len(seen) >= 2
    assert not torch.equal(rows, rows.sort().values)  # batches are shuffled, yet every tensor follows


def test_candidate_matrix_once_per_cycle(ray_local, monkeypatch):
    calls = []
    real = AutoAL.candidate_matrix

    def counted(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(AutoAL, "candidate_matrix", counted)
    x, y = toy(120, 40, seed=0)
    cfg = toy_cfg(**{"search.cycles_first": 2, "search.cycles": 1, "search.search_epochs": 3, "search.batch_size": 8})
    hook = hooks.create("autoal", cfg)
    labeled = np.arange(0, 160, 4)
    hook.before_query(context(cfg, x, y, labeled))   # 2 cycles x 3 epochs x 3 steps on 20 rows of L_val
    assert len(calls) == 2
    hook.before_query(context(cfg, x, y, labeled, round_=1))
    assert len(calls) == 3
    assert hook.rounds == 2 and hook.telemetry["cycles"] == 1


def test_search_learns_per_sample_weights(ray_local):
    x, y = toy(120, 40, seed=0)
    cfg = toy_cfg(**{"search.search_epochs": 6})
    hook = hooks.create("autoal", cfg)
    ctx = context(cfg, x, y, np.arange(0, 160, 4))
    extra = ray_local.get(ray_local.put(hook.before_query(ctx)))  # as scoring actors receive it
    stats = score_pool(hook, ctx, extra, x)
    w = stats.search_weights
    assert w.shape == (len(ctx.unlabeled_ids), 3) and np.isfinite(w).all()
    assert (w.std(axis=0) > 1e-4).all()                      # per sample, not one weight per candidate
    assert not np.allclose(w[:, 0], w[:, 1]) and not np.allclose(w[:, 1], w[:, 2])
    assert hook.telemetry["grad_norm"] > 0 and np.isfinite(list(hook.telemetry.values())).all()


def test_search_on_two_ddp_workers_selects_a_valid_batch(ray_local):
    x, y = toy(120, 40, seed=0)
    cfg = toy_cfg(workers=2)
    hook = hooks.create("autoal", cfg)
    ctx = context(cfg, x, y, np.arange(0, 160, 4))
    stats = score_pool(hook, ctx, hook.before_query(ctx), x)
    picks = hook.strategy.select(stats, ctx.k, seed=ctx.rng_seed)
    assert len(picks) == ctx.k == len(set(picks.tolist()))
    assert set(picks.tolist()) <= set(ctx.unlabeled_ids.tolist())
    assert np.isfinite(hook.telemetry["searchnet_loss"]) and hook.telemetry["grad_norm"] > 0


# --- the whole loop ---------------------------------------------------------------------

def toy_experiment(cfg, out, n_easy=160, n_hard=40) -> Experiment:
    """An Experiment on the toy pool (the datasets registry does not know it)."""
    x_train, y_train = toy(n_easy, n_hard, seed=0)
    x_test, y_test = toy(100, 20, seed=1)
    data = pool.from_arrays("toy", x_train, y_train, x_test, y_test, classes=2)
    train, test = data.subset("train"), data.subset("test")
    spec = training.ModelSpec("mlp", train.shape, 2, cfg.dropout)
    return Experiment(cfg, train, test, spec, ExperimentDir(out).open(cfg), log=lambda message: None)


@pytest.mark.parametrize("option", [
    {"search.backbone": False},
    {"search.loss_module": False},
    {"search.candidates": ["margin"]},
    {"search.candidates": ["entropy", "kmeans", "var_ratio", "mean_std", "least_confidence"]},
    {"search.candidates": ["coreset", "lpl", "random"]},          # wants the labeled set; predicted loss
    {"search.threshold": "quantile", "search.lam": 0.0, "search.gamma": 0.0},
    {"search.cycles_first": 2, "search.fit_epochs": 0, "search.search_epochs": 1},
], ids=lambda option: ",".join(f"{k.split('.')[-1]}={v}" for k, v in option.items()))
def test_every_option_runs_an_experiment(ray_local, tmp_path, option):
    cfg = toy_cfg(initial=20, batch=10, rounds=1, epochs=2, **option)
    exp = toy_experiment(cfg, tmp_path / "out")
    exp.run()
    ledger = exp.store.ledger
    picked, initial = ledger[ledger["round"] == 1]["id"], ledger[ledger["round"] == 0]["id"]
    assert len(picked) == 10 == picked.nunique() and not set(picked) & set(initial)
    weights = pd.read_parquet(tmp_path / "out" / "strategy_weights.parquet")
    assert list(weights["candidate"]) == list(cfg.search.candidates)
    assert weights[["weight_pool", "weight_batch"]].apply(lambda c: c.between(0, 1)).all().all()
    telemetry = pd.read_parquet(tmp_path / "out" / "search.parquet")
    assert len(telemetry) == 1 and telemetry["search_s"].iloc[0] > 0
    assert np.isfinite(telemetry[list(search.TELEMETRY)].to_numpy()).all()


def test_search_trusts_the_candidate_that_picks_informative_samples(ray_local, tmp_path):
    """margin picks the coin-flip band (high loss: informative); kmeans picks the
    centres of the redundant clusters (near-zero loss). The search must learn to
    weight margin above kmeans, and AutoAL's batches then come from the band."""
    cfg = toy_cfg(initial=40, batch=20, rounds=2, epochs=10, **{
        "search.candidates": ["kmeans", "margin"], "search.cycles_first": 2, "search.fit_epochs": 10,
        "search.search_epochs": 10, "search.batch_size": 64})
    exp = toy_experiment(cfg, tmp_path / "out", n_easy=300, n_hard=60)
    exp.run()
    weights = pd.read_parquet(tmp_path / "out" / "strategy_weights.parquet")
    by_round = weights.pivot_table(index="round", columns="candidate", values="weight_pool")
    assert (by_round["margin"] > by_round["kmeans"]).all()
    assert by_round["margin"].iloc[-1] - by_round["kmeans"].iloc[-1] > 0.1
    queried = exp.store.ledger.query("round > 0")["id"]
    assert (queried >= 300).mean() > 0.5          # the band is 17% of the pool


class Killed(Exception):
    pass


def kill_after_round_0(row: dict) -> None:
    if row["round"] == 0:
        raise Killed


@pytest.fixture(scope="module")
def resumed_run(ray_local, tmp_path_factory):
    """An uninterrupted run and one killed after round 0 then re-run, on digits;
    also the hook states that the re-run loaded."""
    cfg = config.load(None, {"dataset": "digits", "strategies": ["autoal"], "initial": 20, "batch": 10, "rounds": 2,
                             "epochs": 2, "actors": 0, "mc_samples": 3, **FAST, "search.cycles_first": 2})
    root = tmp_path_factory.mktemp("resume")
    full = Experiment.prepare(cfg, root / "full", log=lambda m: None)
    full.run()
    with pytest.raises(Killed):
        Experiment.prepare(cfg, root / "cut", log=lambda m: None, on_round=kill_after_round_0).run()
    loaded = []
    real = search.AutoALHook.load_state_dict
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(search.AutoALHook, "load_state_dict",
                      lambda self, state: (loaded.append(state), real(self, state)))
        resumed = Experiment.prepare(cfg, root / "cut", log=lambda m: None)
        resumed.run()
    return root, full, resumed, loaded


def test_resume_restores_searchnet_and_fitnet(resumed_run):
    """The state saved after round 0 is what the re-run loads, and round 1 is not searched as a first round."""
    root, _, _, loaded = resumed_run
    assert len(loaded) == 1 and loaded[0]["rounds"] == 1
    saved = torch.load(root / "full" / "state" / "autoal" / "seed0" / "round1.pt", weights_only=False)
    for net in ("fit", "search"):
        for key, value in saved[net].items():
            torch.testing.assert_close(loaded[0][net][key], value)
    telemetry = pd.read_parquet(root / "cut" / "search.parquet")
    assert telemetry.set_index("round")["cycles"].to_dict() == {0: 2, 1: 1}


def test_resume_ends_with_the_uninterrupted_ledger(resumed_run):
    _, full, resumed, _ = resumed_run
    columns = ["seed", "round", "id", "label"]  # the strategy column's dtype differs once read back from Parquet
    pd.testing.assert_frame_equal(resumed.store.ledger[columns].reset_index(drop=True), full.store.ledger[columns],
                                  check_dtype=False)
