"""VAAL (Sinha et al. 2019) and SRAAL (Zhang et al., CVPR 2020): each round a
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
Both networks start afresh each round from the round's seed, as in VAAL's code.
"""
from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.nn.functional as F
from torch import nn

from autoal import hooks, models, training
from autoal.config import ExperimentConfig
from autoal.strategies import get
from autoal.strategies.adversarial import online_uncertainty

HIDDEN = 256          # width of the decoder and discriminator layers
SCORE_BATCH = 512     # batch of the task model's inference for SRAAL's indicator


class VAE(nn.Module):
    """Encoder: a backbone of the task model's family and the latent mean and
    log-variance; decoder: an MLP back to the flattened input. For SRAAL
    (`classes`), a second latent variable from the same backbone, read by a
    classifier (its supervised target learner); the unified representation the
    discriminator sees is both latent codes, concatenated."""

    def __init__(self, spec: training.ModelSpec, latent: int, classes: int = 0):
        super().__init__()
        self.latent = latent
        self.backbone = models.BACKBONES[spec.name](tuple(spec.shape))
        self.mu = nn.Linear(self.backbone.embed_dim, latent)
        self.logvar = nn.Linear(self.backbone.embed_dim, latent)
        self.decoder = nn.Sequential(nn.Linear(latent, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, math.prod(spec.shape)))
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

    def __init__(self, spec: training.ModelSpec, latent: int, classes: int = 0):
        super().__init__()
        self.vae = VAE(spec, latent, classes)
        self.discriminator = nn.Sequential(nn.Linear(latent * (2 if classes else 1), HIDDEN), nn.ReLU(),
                                           nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                                           nn.Linear(HIDDEN, 1))

    def forward(self, x, embedding):
        return torch.sigmoid(self.discriminator(self.vae.encode(x)[0])).squeeze(1)


def unlabeled_targets(spec: training.ModelSpec, task_state: dict | None, x: torch.Tensor, device) -> torch.Tensor:
    """The discriminator's target state of each unlabeled sample: 1 (VAAL) or
    SRAAL's online uncertainty indicator of the task model's prediction."""
    if task_state is None:
        return torch.ones(len(x))
    net = spec.build()
    net.load_state_dict(task_state)
    net.to(device).eval()
    with torch.no_grad():
        probs = torch.cat([net(x[s:s + SCORE_BATCH].to(device))[0].softmax(1).cpu()
                           for s in range(0, len(x), SCORE_BATCH)])
    return torch.from_numpy(online_uncertainty(probs.numpy())).float()


def adversarial_loop(config: dict) -> dict | None:
    """Ray Train loop: train VAE + discriminator; rank 0 returns their state."""
    spec, seed = config["spec"], config["seed"]
    x_l, y_l, x_u = (torch.from_numpy(a) for a in ray.get(config["data"]))
    device = ray.train.torch.get_device()
    targets = unlabeled_targets(spec, config["task_state"], x_u, device)
    torch.manual_seed(seed)
    nets = AdversarialNets(spec, config["latent"], spec.classes if config["task_state"] is not None else 0)
    vae, disc = ray.train.torch.prepare_model(nets.vae), ray.train.torch.prepare_model(nets.discriminator)
    opt_vae = torch.optim.Adam(vae.parameters(), lr=config["lr"])
    opt_disc = torch.optim.Adam(disc.parameters(), lr=config["lr"])
    for epoch in range(config["epochs"]):
        vae.train()
        disc.train()
        labeled_batches = itertools.cycle(training.shard_batches(len(x_l), config["batch_size"], seed + 1, epoch))
        for index_u in training.shard_batches(len(x_u), config["batch_size"], seed, epoch):
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
    if ray.train.get_context().get_world_rank() != 0:
        return None
    return training.portable_state(nets)


class AdversarialHook(hooks.RoundHook):
    """Trains VAE + discriminator before each query; their rating reaches the scorer."""

    def __init__(self, cfg: ExperimentConfig, name: str):
        super().__init__(cfg, get(name))
        self.relabel = name == "sraal"

    def before_query(self, ctx: hooks.RoundContext) -> hooks.ScorerExtra:
        b = self.cfg.baselines
        x_u = ctx.pool.x[ctx.pool.rows(ctx.unlabeled_ids)]
        config = dict(spec=ctx.spec, seed=ctx.rng_seed, latent=b.adversarial_latent, epochs=b.adversarial_epochs,
                      lr=b.adversarial_lr, batch_size=b.adversarial_batch_size,
                      task_state=ctx.task_state if self.relabel else None,
                      data=ray.put((np.asarray(ctx.labeled_x, np.float32), np.asarray(ctx.labeled_y, np.int64),
                                    np.asarray(x_u, np.float32))))
        name = f"{self.strategy.name}-s{ctx.seed}-r{ctx.round}"
        state = training.torch_state(training.run_on_ray_train(adversarial_loop, config, self.cfg.workers,
                                                               self.cfg.gpus, name=name))
        build = functools.partial(AdversarialNets, ctx.spec, b.adversarial_latent,
                                  ctx.spec.classes if self.relabel else 0)
        return hooks.ScorerExtra(build=build, state=state, field="unlabeled_score")


hooks.register("vaal")(functools.partial(AdversarialHook, name="vaal"))
hooks.register("sraal")(functools.partial(AdversarialHook, name="sraal"))
