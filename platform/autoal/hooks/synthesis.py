"""BGADL's round hook (Tran et al., ICML 2019): a VAE-ACGAN, trained each round
on Ray Train like the task model, turns each queried and labeled sample into
synthetic labeled samples for the task model's training set.

Networks, all MLPs on the flattened input (the paper's are conv nets; on 8x8
digits a conv encoder and discriminator cost ~13x more per step on a CPU): the
VAE's encoder e (then the latent mean and log-variance); the generator g(z, y),
from the latent code and the one-hot label to the input; the ACGAN
discriminator d with two outputs: real/fake and the class (the auxiliary
classifier).
Losses per step on a labeled mini-batch (x, y), L = L_VAE + L_ACGAN:
- e and g: L_VAE = the squared error of x' = g(z, y), z ~ e(x), summed per
  sample, + KL(e(x) || N(0, I)); the generator's ACGAN terms: d must rate x'
  real and classify it as y.
- d: real x against generated x' (binary cross-entropy) + its class
  cross-entropy on both (ACGAN).
One departure from the paper: the auxiliary classifier is d's second head, not
the task model, so the task model trains as every other strategy's does, only
on more samples.

Once the oracle has labeled a batch, every queried in-distribution sample x*
with label y* gives the strategy's `samples` samples x' = g(z, y*), z ~ e(x*) (seeded).
They accumulate over rounds in the hook's checkpointed state and join the
task model's training set from the next round on, with label y*; the ledger
keeps the oracle's labels only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from autoal.compute import distributed, training
from autoal.nets import models
from autoal.config import ExperimentConfig
from autoal.compute.distributed import World, portable_state, tensors
from autoal.hooks.round import RoundContext, RoundHook, serves
from autoal.hooks.state_adversary import HIDDEN, VAE
from autoal.data.pool import OOD
from autoal.strategies import PoolStats, Strategy

LATENT = 32
LR = 5e-4


class ConditionalVAE(VAE):
    """The VAE's encoder with a decoder conditioned on the label: the generator g(z, y)."""

    def __init__(self, recipe: training.ModelRecipe, latent: int):
        super().__init__(replace(recipe, name="mlp"), latent)
        self.classes, self.shape = recipe.classes, tuple(recipe.shape)
        self.decoder = nn.Sequential(nn.Linear(latent + recipe.classes, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN),
                                     nn.ReLU(), nn.Linear(HIDDEN, math.prod(recipe.shape)))

    def forward(self, x, y, noise):
        """(x' = g(mu + noise * sigma, y) shaped like x, mu, logvar), one call DDP can sync."""
        mu, logvar = self.encode(x)
        z = mu + noise * (0.5 * logvar).exp()
        generated = self.decoder(torch.cat([z, F.one_hot(y, self.classes).to(z.dtype)], 1))
        return generated.view(-1, *self.shape), mu, logvar


class ACDiscriminator(nn.Module):
    """ACGAN's discriminator: (real/fake logit [B], class logits [B, C])."""

    def __init__(self, recipe: training.ModelRecipe):
        super().__init__()
        self.backbone = models.MLPBackbone(tuple(recipe.shape))
        self.out = nn.Linear(self.backbone.embed_dim, 1 + recipe.classes)

    def forward(self, x):
        out = self.out(self.backbone(x)[0])
        return out[:, 0], out[:, 1:]


@dataclass(frozen=True)
class GANPayload:
    """One round's VAE-ACGAN training on the labeled set (x, y)."""

    recipe: training.ModelRecipe
    seed: int
    epochs: int
    min_steps: int
    batch_size: int
    data: tuple[np.ndarray, np.ndarray]


def vae_acgan_loop(p: GANPayload, world: World) -> dict:
    """Train the VAE-ACGAN on the labeled set; returns the generator's state."""
    x, y = tensors(p.data, labels=1)
    device = world.device
    generator_net, discriminator_net = ConditionalVAE(p.recipe, LATENT), ACDiscriminator(p.recipe)
    generator, discriminator = world.prepare(generator_net), world.prepare(discriminator_net)
    opt_g = torch.optim.Adam(generator.parameters(), lr=LR, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=LR, betas=(0.5, 0.999))
    for epoch in range(training.epochs_for(len(x), p.batch_size, p.epochs, p.min_steps, world)):
        generator.train()
        discriminator.train()
        for index in training.shard_batches(len(x), p.batch_size, p.seed, epoch, world):
            xb, yb = x[index].to(device), y[index].to(device)
            fake, mu, logvar = generator(xb, yb, torch.randn(len(index), LATENT, device=device))
            kl = (-0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum(1)).mean()
            real_fake, classes = discriminator(fake)
            loss = (((fake - xb) ** 2).flatten(1).sum(1).mean() + kl                          # L_VAE
                    + F.binary_cross_entropy_with_logits(real_fake, torch.ones_like(real_fake))  # L_ACGAN (g)
                    + F.cross_entropy(classes, yb))
            opt_g.zero_grad()
            loss.backward()
            opt_g.step()

            # one forward over real and generated samples: DDP syncs one backward per forward
            real_fake, classes = discriminator(torch.cat([xb, fake.detach()]))
            is_real = torch.cat([torch.ones(len(index)), torch.zeros(len(index))]).to(device)
            d_loss = F.binary_cross_entropy_with_logits(real_fake, is_real) + F.cross_entropy(classes, yb.repeat(2))
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()
    return portable_state(generator_net)


@torch.no_grad()
def generate(recipe: training.ModelRecipe, state: dict, x: np.ndarray, y: np.ndarray, samples: int,
             seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`samples` synthetic samples per (x*, y*): x' = g(z, y*), z ~ e(x*); labels y*, in order."""
    net = ConditionalVAE(recipe, LATENT)
    net.load_state_dict(state)
    net.eval()
    x_rep = torch.from_numpy(np.repeat(np.asarray(x, np.float32), samples, axis=0))
    y_rep = torch.from_numpy(np.repeat(np.asarray(y, np.int64), samples))
    noise = torch.randn(len(x_rep), LATENT, generator=torch.Generator().manual_seed(seed))
    return net(x_rep, y_rep, noise)[0].numpy(), y_rep.numpy()


@serves("bgadl")
class BGADLHook(RoundHook):
    """Generates synthetic samples from each labeled batch; they join later rounds' training sets."""

    def __init__(self, cfg: ExperimentConfig, strategy: Strategy):
        super().__init__(cfg, strategy)
        self.x: np.ndarray | None = None   # the synthetic samples so far, and their labels
        self.y: np.ndarray | None = None

    def after_select(self, ctx: RoundContext, stats: PoolStats, picks: np.ndarray,
                     labels: np.ndarray, detail: dict) -> dict[str, list[dict]]:
        """Train the VAE-ACGAN on the labeled set with the new batch, then generate from the batch.
        Telemetry: one row per queried sample that seeded synthetic ones."""
        known = labels != OOD                      # an OOD answer has no class to condition on
        if not known.any():
            return {}
        s, sources, source_y = self.strategy, picks[known], labels[known]
        source_x = ctx.pool.features(ctx.pool.rows(sources))
        data = (np.concatenate([ctx.labeled_x, source_x]).astype(np.float32),
                np.concatenate([ctx.labeled_y, source_y]).astype(np.int64))
        payload = GANPayload(ctx.recipe, ctx.rng_seed, s.epochs, self.cfg.min_steps, self.cfg.task_minibatch, data)
        state = distributed.torch_state(distributed.run(vae_acgan_loop, payload, workers=self.cfg.workers,
                                                        gpus=self.cfg.gpus, name=f"bgadl-s{ctx.seed}-r{ctx.round}"))
        x, y = generate(ctx.recipe, state, source_x, source_y, s.samples, ctx.rng_seed)
        self.x = x if self.x is None else np.concatenate([self.x, x])
        self.y = y if self.y is None else np.concatenate([self.y, y])
        return {"synthetic": [dict(source_id=int(i), label=int(c), samples=s.samples)
                              for i, c in zip(sources, source_y)]}

    def train_set(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.x is None:
            return x, y
        return np.concatenate([x, self.x.astype(x.dtype)]), np.concatenate([y, self.y.astype(y.dtype)])

    def state_dict(self) -> dict:
        return {"x": self.x, "y": self.y}

    def load_state_dict(self, state: dict) -> None:
        self.x, self.y = state["x"], state["y"]
