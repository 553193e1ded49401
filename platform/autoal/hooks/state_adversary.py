"""VAAL's and SRAAL's round hook (Sinha et al. 2019; Zhang et al., CVPR 2020): each round a
VAE and a labeled/unlabeled state discriminator are trained on Ray Train,
like the task model, then the fused scoring pass rates every unlabeled sample
with the discriminator (strategies/adversarial.py ranks by that rating).

Losses per step, on a labeled and an unlabeled mini-batch together:
- VAE: reconstruction (squared error) + KL, both summed per sample as in the
  ELBO (a per-pixel mean would let the KL term collapse the latent codes),
  + the adversarial term, which pushes the discriminator to rate every latent
  code "labeled" (state 0); SRAAL adds the cross-entropy of a classifier on a
  second latent code of labeled samples (its supervised target learner), and
  the discriminator reads both codes (the paper's unified representation, which
  puts the annotation into what the discriminator sees).
- discriminator: binary cross-entropy on the state: 0 for labeled samples,
  1 for unlabeled ones (VAAL) or, SRAAL's relabeling, the online uncertainty
  indicator of the round's task model on them.
Both networks start afresh each round from the round's seed, as in VAAL's code. The
strategy's options set the epochs, the latent size, the learning rate and the batch size.
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from autoal.compute import distributed, training
from autoal.nets import models
from autoal.config import ExperimentConfig
from autoal.compute.distributed import World, portable_state, tensors
from autoal.hooks.round import RoundContext, RoundHook, ScorerExtra, serves
from autoal.strategies import Strategy
from autoal.strategies.adversarial import online_uncertainty

HIDDEN = 256          # width of the decoder and discriminator layers
SCORE_BATCH = 512     # batch of the task model's inference for SRAAL's indicator


class VAE(nn.Module):
    """Encoder: a backbone of the task model's family and the latent mean and
    log-variance; decoder: an MLP back to the flattened input. For SRAAL
    (`classes`), a second latent variable from the same backbone, read by a
    classifier (its supervised target learner); the unified representation the
    discriminator sees is both latent codes, concatenated."""

    def __init__(self, recipe: training.ModelRecipe, latent: int, classes: int = 0):
        super().__init__()
        self.latent = latent
        self.backbone = models.BACKBONES[recipe.name](tuple(recipe.shape))
        self.mu = nn.Linear(self.backbone.embed_dim, latent)
        self.logvar = nn.Linear(self.backbone.embed_dim, latent)
        self.decoder = nn.Sequential(nn.Linear(latent, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, math.prod(recipe.shape)))
        self.target_learner = nn.Linear(self.backbone.embed_dim, 2 * latent) if classes else None
        self.classifier = nn.Linear(latent, classes) if classes else None

    def encode(self, x):
        """(mu, logvar) of the representation: the reconstructor's code, then SRAAL's target learner's."""
        h, _ = self.backbone(x)
        mu, logvar = self.mu(h), self.logvar(h)
        if self.target_learner is None:
            return mu, logvar
        target_mu, target_logvar = self.target_learner(h).chunk(2, dim=1)
        return torch.cat([mu, target_mu], 1), torch.cat([logvar, target_logvar], 1)

    def forward(self, x):
        """(reconstruction [B, prod(shape)], mu, logvar, class logits or None), one call DDP can sync."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        logits = self.classifier(z[:, self.latent:]) if self.classifier is not None else None
        return self.decoder(z[:, :self.latent]), mu, logvar, logits


class AdversarialNets(nn.Module):
    """The VAE and the state discriminator; as a scorer, (x, task embedding) ->
    the discriminator's probability that x is unlabeled."""

    def __init__(self, recipe: training.ModelRecipe, latent: int, classes: int = 0):
        super().__init__()
        self.vae = VAE(recipe, latent, classes)
        self.discriminator = nn.Sequential(nn.Linear(latent * (2 if classes else 1), HIDDEN), nn.ReLU(),
                                           nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                                           nn.Linear(HIDDEN, 1))

    def forward(self, x, embedding):
        return torch.sigmoid(self.discriminator(self.vae.encode(x)[0])).squeeze(1)


def unlabeled_targets(recipe: training.ModelRecipe, task_state: dict | None, x: torch.Tensor, device) -> torch.Tensor:
    """The discriminator's target state of each unlabeled sample: 1 (VAAL) or
    SRAAL's online uncertainty indicator of the task model's prediction."""
    if task_state is None:
        return torch.ones(len(x))
    net = recipe.build()
    net.load_state_dict(task_state)
    net.to(device).eval()
    with torch.no_grad():
        probs = torch.cat([net(x[s:s + SCORE_BATCH].to(device))[0].softmax(1).cpu()
                           for s in range(0, len(x), SCORE_BATCH)])
    return torch.from_numpy(online_uncertainty(probs.numpy())).float()


@dataclass(frozen=True)
class AdversarialPayload:
    """One round's VAE + discriminator training; `task_state` (SRAAL) relabels the unlabeled state."""

    recipe: training.ModelRecipe
    seed: int
    latent: int
    epochs: int
    lr: float
    batch_size: int
    task_state: dict | None
    data: tuple[np.ndarray, np.ndarray, np.ndarray]   # (labeled x, labeled y, unlabeled x)


def adversarial_loop(p: AdversarialPayload, world: World) -> dict:
    """Train VAE + discriminator; returns their state."""
    x_l, y_l, x_u = tensors(p.data, labels=1)
    device = world.device
    targets = unlabeled_targets(p.recipe, p.task_state, x_u, device)
    torch.manual_seed(p.seed)
    nets = AdversarialNets(p.recipe, p.latent, p.recipe.classes if p.task_state is not None else 0)
    vae, disc = world.prepare(nets.vae), world.prepare(nets.discriminator)
    opt_vae = torch.optim.Adam(vae.parameters(), lr=p.lr)
    opt_disc = torch.optim.Adam(disc.parameters(), lr=p.lr)
    for epoch in range(p.epochs):
        vae.train()
        disc.train()
        labeled_batches = itertools.cycle(training.shard_batches(len(x_l), p.batch_size, p.seed + 1, epoch, world))
        for index_u in training.shard_batches(len(x_u), p.batch_size, p.seed, epoch, world):
            index_l = next(labeled_batches)
            x = torch.cat([x_l[index_l], x_u[index_u]]).to(device)
            recon, mu, logvar, logits = vae(x)
            kl = (-0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum(1)).mean()
            fooled = F.binary_cross_entropy_with_logits(disc(mu).squeeze(1), torch.zeros(len(x), device=device))
            loss = ((recon - x.flatten(1)) ** 2).sum(1).mean() + kl + fooled   # the ELBO: both terms per sample
            if logits is not None:
                y = y_l[index_l].to(device)
                loss = loss + F.cross_entropy(logits[:len(index_l)], y)
            opt_vae.zero_grad()
            loss.backward()
            opt_vae.step()

            with torch.no_grad():
                _, mu, _, _ = vae(x)
            state = torch.cat([torch.zeros(len(index_l)), targets[index_u]]).to(device)
            disc_loss = F.binary_cross_entropy_with_logits(disc(mu).squeeze(1), state)
            opt_disc.zero_grad()
            disc_loss.backward()
            opt_disc.step()
    return portable_state(nets)


@serves("vaal", "sraal")
class AdversarialHook(RoundHook):
    """Trains VAE + discriminator before each query; their rating reaches the scorer."""

    provides = "unlabeled_score"

    def __init__(self, cfg: ExperimentConfig, strategy: Strategy):
        super().__init__(cfg, strategy)
        self.relabel = strategy.name == "sraal"

    def before_query(self, ctx: RoundContext) -> ScorerExtra:
        s = self.strategy
        trained_on = ctx.unlabeled_ids
        if s.sample is not None and len(trained_on) > s.sample:
            trained_on = np.sort(np.random.default_rng(ctx.rng_seed).choice(trained_on, s.sample, replace=False))
        x_u = ctx.pool.features(ctx.pool.rows(trained_on))
        payload = AdversarialPayload(ctx.recipe, ctx.rng_seed, s.latent, s.epochs, s.lr, s.batch_size,
                                     ctx.task_state if self.relabel else None,
                                     (np.asarray(ctx.labeled_x, np.float32), np.asarray(ctx.labeled_y, np.int64),
                                      np.asarray(x_u, np.float32)))
        state = distributed.torch_state(distributed.run(adversarial_loop, payload, workers=self.cfg.workers,
                                                        gpus=self.cfg.gpus, name=f"{s.name}-s{ctx.seed}-r{ctx.round}"))
        build = functools.partial(AdversarialNets, ctx.recipe, s.latent, ctx.recipe.classes if self.relabel else 0)
        return ScorerExtra(build=build, state=state, field=self.provides)
