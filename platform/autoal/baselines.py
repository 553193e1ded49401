"""Round hooks of the baselines AutoAL is compared with (strategies/albl.py,
noise.py, poal.py, dpp.py, uncertainty.py's lpl): they build each strategy with its options from
`ExperimentConfig.baselines`, and do the core-side work some of them need.

- albl: the bandit lives in the strategy; the hook turns the oracle's answers
  into the reward, checkpoints the bandit and logs the arm probabilities.
- lpl: the task model trains jointly with its loss-prediction module; a random
  subset of the pool is ranked, as in the paper.
- noise_stability: the fused scoring pass runs `PerturbedModels`, K copies of
  the task model's head (or of the whole model) under seeded Gaussian weight noise.
VAAL / SRAAL's hook, which trains networks, is in autoal.adversarial; BGADL's in autoal.generative.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from autoal import hooks
from autoal.config import ExperimentConfig
from autoal.strategies import PoolStats, get
from autoal.training import ModelSpec


@hooks.register("poal")
def poal_hook(cfg: ExperimentConfig) -> hooks.RoundHook:
    b = cfg.baselines
    return hooks.RoundHook(cfg, get("poal", informativeness=b.poal_informativeness, iterations=b.poal_iterations,
                                    pool_factor=b.poal_pool_factor))


@hooks.register("lpl")
class LPLHook(hooks.RoundHook):
    """Trains the task model and its loss-prediction module jointly (Yoo & Kweon 2019):
    the ranking loss reaches the backbone for the first `lpl_joint_fraction` of the fit;
    the batch is the top of a random subset of `lpl_subset_factor` x batch samples."""

    def __init__(self, cfg: ExperimentConfig):
        super().__init__(cfg, get("lpl", subset_factor=cfg.baselines.lpl_subset_factor))

    def fit_options(self) -> dict:
        b = self.cfg.baselines
        return dict(loss_weight=b.lpl_weight, joint_fraction=b.lpl_joint_fraction)


@hooks.register("dpp")
def dpp_hook(cfg: ExperimentConfig) -> hooks.RoundHook:
    return hooks.RoundHook(cfg, get("dpp", informativeness=cfg.baselines.dpp_informativeness))


@hooks.register("albl")
class ALBLHook(hooks.RoundHook):
    """Rewards the bandit after each batch is labeled; the bandit's state is checkpointed."""

    def __init__(self, cfg: ExperimentConfig):
        super().__init__(cfg, get("albl", arms=cfg.baselines.albl_arms, horizon=cfg.rounds * cfg.batch,
                                  delta=cfg.baselines.albl_delta))

    def after_select(self, ctx: hooks.RoundContext, stats: PoolStats, picks: np.ndarray,
                     labels: np.ndarray) -> dict[str, list[dict]]:
        """Reward: was the round's model, which has not trained on the picks, right about them?
        Telemetry: each arm's probability this round and how many picks it advised
        (uniform: the picks no strategy arm advised)."""
        order = np.argsort(stats.ids)
        predicted = stats.probs[order[np.searchsorted(stats.ids, picks, sorter=order)]].argmax(axis=1)
        last = self.strategy.last
        reward = self.strategy.learn(predicted == labels)
        hits = last["hit"][:, :-1] > 0
        advised = [*hits.sum(axis=0), (~hits.any(axis=1)).sum()]
        return {"albl_arms": [dict(arm=arm, probability=float(p), advised=int(n), reward=reward)
                              for arm, p, n in zip(self.strategy.arm_names, last["probabilities"], advised)]}

    def state_dict(self) -> dict:
        return self.strategy.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.strategy.load_state_dict(state)


class PerturbedModels(nn.Module):
    """Class probabilities [B, K, C] of K copies of the task model's head (or of
    the whole model) whose weight tensors W get Gaussian noise of norm eps * ||W||
    (Li et al.'s relative scale; biases stay). Copy k's noise comes from seed
    (seed, k), so every scoring actor and every batch sees the same K models; it
    is drawn again per batch rather than holding K copies of a large model."""

    def __init__(self, spec: ModelSpec, whole_model: bool, samples: int, eps: float, seed: int):
        super().__init__()
        net = spec.build()
        self.net = net if whole_model else net.head
        self.whole_model, self.samples, self.eps, self.seed = whole_model, samples, eps, seed

    def perturbed(self, k: int) -> dict[str, torch.Tensor]:
        """Copy k's parameters."""
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, k]).generate_state(1)[0]))
        params = {}
        for name, w in self.net.named_parameters():
            if name.endswith("weight"):
                noise = torch.randn(w.shape, generator=gen).to(w.device)
                w = w + noise * (self.eps * w.norm() / noise.norm().clamp_min(1e-12))
            params[name] = w
        return params

    @torch.no_grad()
    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        inputs = (x,) if self.whole_model else (embedding,)
        outs = []
        for k in range(self.samples):
            logits = functional_call(self.net, self.perturbed(k), inputs)
            outs.append((logits[0] if self.whole_model else logits).softmax(1))
        return torch.stack(outs, 1)


@hooks.register("noise_stability")
class NoiseStabilityHook(hooks.RoundHook):
    """Hands the fused scoring pass the K perturbed copies of this round's model."""

    def __init__(self, cfg: ExperimentConfig):
        super().__init__(cfg, get("noise_stability"))

    def before_query(self, ctx: hooks.RoundContext) -> hooks.ScorerExtra:
        b, whole = self.cfg.baselines, self.cfg.baselines.noise_scope == "model"
        state = {f"net.{k}": v for k, v in ctx.task_state.items()} if whole else \
            {f"net.{k[len('head.'):]}": v for k, v in ctx.task_state.items() if k.startswith("head.")}
        build = functools.partial(PerturbedModels, ctx.spec, whole, b.noise_samples, b.noise_eps, ctx.rng_seed)
        return hooks.ScorerExtra(build=build, state=state, field="perturbation")
