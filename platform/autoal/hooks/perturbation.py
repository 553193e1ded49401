"""Noise stability's round hook (Li et al., AAAI 2024): the fused scoring pass runs
`PerturbedModels`, K copies of the task model's head (or of the whole model) under seeded
Gaussian weight noise; the strategy's `samples`, `eps` and `scope` set them."""
from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from autoal.hooks.round import RoundContext, RoundHook, ScorerExtra, serves
from autoal.nets.models import ModelRecipe


class PerturbedModels(nn.Module):
    """Class probabilities [B, K, C] of K copies of the task model's head (or of
    the whole model) whose weight tensors W get Gaussian noise of norm eps * ||W||
    (Li et al.'s relative scale; biases stay). Copy k's noise comes from seed
    (seed, k), so every scoring worker and every batch sees the same K models; it
    is drawn again per batch rather than holding K copies of a large model."""

    def __init__(self, recipe: ModelRecipe, whole_model: bool, samples: int, eps: float, seed: int):
        super().__init__()
        net = recipe.build()
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


@serves("noise_stability")
class NoiseStabilityHook(RoundHook):
    """Hands the fused scoring pass the K perturbed copies of this round's model."""

    provides = "perturbation"

    def before_query(self, ctx: RoundContext) -> ScorerExtra:
        s, whole = self.strategy, self.strategy.scope == "model"
        state = {f"net.{k}": v for k, v in ctx.task_state.items()} if whole else \
            {f"net.{k[len('head.'):]}": v for k, v in ctx.task_state.items() if k.startswith("head.")}
        build = functools.partial(PerturbedModels, ctx.recipe, whole, s.samples, s.eps, ctx.rng_seed)
        return ScorerExtra(build=build, state=state, field=self.provides)
