"""SearchNet: per-sample logits over AutoAL's candidate strategies (../shared/DESIGN.md,
section 3 "AutoAL, as this project implements it").

`backbone`: its own backbone of the task model's family reads x; otherwise a
head reads the task model's frozen embedding (the paper's cheaper ablation).
alpha_j (init 1) is candidate j's learnable scale of the mixture softmax. The
logits start at zero, so the first mixture is flat (AutoAL starts as `vote`)
and any preference is learned.
"""
from __future__ import annotations

import torch
from torch import nn

from autoal.nets import models
from autoal.search.objective import mixture

HIDDEN = 64            # width of the head


class SearchNet(nn.Module):
    """(logits o [B, K], predicted loss l_hat [B] or None) from (x, task embedding)."""

    def __init__(self, recipe, candidates: int, backbone: bool = True, loss_module: bool = True, embed_dim: int = 0):
        super().__init__()
        self.backbone = models.BACKBONES[recipe.name](tuple(recipe.shape)) if backbone else None
        dim = self.backbone.embed_dim if backbone else embed_dim
        self.hidden = nn.Sequential(nn.Linear(dim, HIDDEN), nn.ReLU())
        self.logits = nn.Linear(HIDDEN, candidates)
        nn.init.zeros_(self.logits.weight)
        nn.init.zeros_(self.logits.bias)
        self.alpha = nn.Parameter(torch.ones(candidates))
        taps = self.backbone.tap_channels if backbone else (HIDDEN,)
        self.loss_head = models.LossPredictor(taps) if loss_module else None

    def forward(self, x, embedding):
        """In one call, so that DDP syncs every parameter."""
        e, taps = self.backbone(x) if self.backbone is not None else (embedding, None)
        h = self.hidden(e)
        l_hat = None if self.loss_head is None else self.loss_head(taps if taps is not None else [h])
        return self.logits(h), l_hat


class SearchScorer(SearchNet):
    """SearchNet as the fused pass's extra model: (x, task embedding) -> mixture pi [B, K], times
    each candidate's global weight from its accumulated evidence (autoal.search.evidence), renormalised."""

    def __init__(self, recipe, candidates: int, backbone: bool = True, loss_module: bool = True, embed_dim: int = 0,
                 weights=None):
        super().__init__(recipe, candidates, backbone, loss_module, embed_dim)
        flat = torch.ones(candidates) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
        self.register_buffer("weights", flat, persistent=False)   # not SearchNet's state: recomputed each round

    def forward(self, x, embedding):
        pi = mixture(super().forward(x, embedding)[0], self.alpha) * self.weights
        return pi / pi.sum(1, keepdim=True).clamp_min(1e-12)
