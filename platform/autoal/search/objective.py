"""AutoAL's search objective: pure torch, no Ray (../shared/DESIGN.md, section 3 "AutoAL, as
this project implements it", steps 3-4).

SearchNet's logits o [B, K] give each sample a mixture over the K candidates,
pi = softmax_j(alpha_j * o_ij): raising one candidate lowers the others. A
sample's score is the mixture mass of the candidates that pick it,
r_i = sum_j A_ij pi_ij, and the soft selection is s_i = sigmoid((z_i - tau) / T)
on the standardised scores z = (r - mean r) / std r, tau their (1 - rho)
quantile. Standardising inside the graph makes the objective invariant to
rescaling r, and its gradient orthogonal to that rescaling: the first
objective spent most of its gradient inflating every weight at once.

The reward is relative: with q_i = s_i / sum s, only picks better than the
selected average gain mass. `lookahead` is one unrolled, first-order step of
the bilevel problem on FitNet's last layer, with g_i = (p_i - onehot(y_i)) (x) h_i
in units of the held-out gradient's norm (see `Rows`):
    L = -sum_i q_i <g_i, g_eval> + eta / 2 * sum_spaces ||sum_i q_i g_i||^2,
the predicted change of held-out loss after a step of size eta on the weighted
picks, divided by eta: picks aligned
with the held-out gradient lower it, redundant picks (a large mean gradient)
overshoot. `loss` is -sum_i q_i CE_F(x_i): prefer hard samples.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

import numpy as np
import torch
from sklearn.mixture import GaussianMixture

from autoal.nets.models import loss_ranking

GMM_SAMPLES = 4096     # draws from the fitted mixture to read the threshold quantile off
TEMPERATURE = 0.1      # of the sigmoid, in standard deviations of r: neither a step nor flat
REWARDS = ("lookahead", "loss")
# one row per search step; `selected` is the mean soft selection s
TELEMETRY = ("reward", "count_reg", "mixture_kl", "rank_loss", "selected")


@dataclass(frozen=True)
class Rows:
    """The search's per-sample tensors on L_val, row i of each belonging to sample i.

    x: input; e: the task model's embedding (SearchNet without backbone reads it);
    a [n, K]: A_ij = 1 iff candidate j picks sample i; ce [n]: FitNet's loss;
    align [n]: <g_i, g_eval> with g_eval the mean gradient of the other half of
    L_val; residual [n, C], h [n, D]: the two factors of g_i (never materialised
    as C x D per sample); space [n]: which FitNet scored the row (gradients of two
    FitNets live in different spaces). g is divided by the held-out gradient's
    norm, so eta is dimensionless: the same on every dataset and round.
    """

    x: torch.Tensor
    e: torch.Tensor
    a: torch.Tensor
    ce: torch.Tensor
    align: torch.Tensor
    residual: torch.Tensor
    h: torch.Tensor
    space: torch.Tensor

    def __len__(self) -> int:
        return len(self.x)

    def take(self, index) -> "Rows":
        return Rows(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def to(self, device) -> "Rows":
        return Rows(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    @staticmethod
    def cat(parts: list["Rows"]) -> "Rows":
        return Rows(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Rows)})

    def arrays(self) -> dict[str, np.ndarray]:
        """The rows as numpy arrays by field: a hook's checkpointable state."""
        return {f.name: getattr(self, f.name).detach().cpu().numpy() for f in fields(self)}

    @staticmethod
    def from_arrays(arrays: dict[str, np.ndarray]) -> "Rows":
        return Rows(**{f.name: torch.from_numpy(np.array(arrays[f.name])) for f in fields(Rows)})


def prior_weight(prior: float, prior_rows: int, rows: int) -> float:
    """The weight of KL(pi || flat) once `rows` search rows back the mixture: prior n0 / (n0 + rows).

    The prior is worth n0 rows of evidence, as a symmetric Dirichlet prior of
    strength n0 is worth n0 counts: the posterior mean of a candidate's share,
    (count_j + n0/K) / (rows + n0), trusts the data with weight rows / (rows + n0)
    and the flat mixture with n0 / (rows + n0). With no rows it weighs `prior`;
    as evidence accumulates the pull toward `vote` fades."""
    return prior * prior_rows / (prior_rows + rows) if prior_rows + rows > 0 else prior


def mixture(logits: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """pi [B, K] = softmax_j(alpha_j * o_ij)."""
    return torch.softmax(alpha * logits, dim=1)


def threshold(z: np.ndarray, rho: float, method: str, seed: int) -> float:
    """tau, the (1 - rho) quantile of standardised scores z: exact ("quantile"), or
    read off samples of a two-component Gaussian mixture fitted to z ("gmm", the paper)."""
    z = np.asarray(z, dtype=np.float64)
    if method == "quantile" or len(z) < 4 or z.std() < 1e-9:
        return float(np.quantile(z, 1 - rho))
    gmm = GaussianMixture(n_components=2, random_state=seed).fit(z[:, None])
    return float(np.quantile(gmm.sample(GMM_SAMPLES)[0][:, 0], 1 - rho))


def soft_selection(r: torch.Tensor, rho: float, method: str, seed: int,
                   gather: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> torch.Tensor:
    """s = sigmoid((z - tau) / T) with z = r standardised over the global mini-batch
    (`gather` concatenates the ranks' rows, this rank's keeping their gradient)."""
    r_all = gather(r)
    mean, std = r_all.mean(), r_all.std(correction=0)
    if float(std.detach()) < 1e-12:       # every sample scores the same: nothing to prefer
        return torch.full_like(r, rho) + 0.0 * r
    z = (r - mean) / std
    tau = threshold(((r_all - mean) / std).detach().cpu().numpy(), rho, method, seed)
    return torch.sigmoid((z - tau) / TEMPERATURE)


def lookahead(q: torch.Tensor, rows: Rows, eta: float) -> torch.Tensor:
    """Predicted change of FitNet's held-out loss after one step of size eta on the
    q-weighted picks: -eta <sum q g, g_eval> + eta^2/2 ||sum q g||^2 per FitNet.

    eta is fixed, in units of the held-out gradient's norm. Near 1 the quadratic
    term dominates (the picks' mean gradient is several times longer than the
    held-out mean, in which many gradients cancel), and the reward prefers the
    smallest gradients: confident, uninformative picks. The best step per batch
    (eta* = linear / quadratic) is no cure: it makes the reward blind to diluting
    the picks with zero-gradient samples. A small eta keeps the first-order gain
    in charge and the quadratic term as a redundancy penalty. The change is
    returned divided by eta, so that the reward's scale does not depend on it.
    """
    linear = (q * rows.align).sum()
    quadratic = q.new_zeros(())
    for space in rows.space.unique():
        at = rows.space == space
        step = (q[at, None] * rows.residual[at]).T @ rows.h[at]          # sum_i q_i g_i as [C, D]
        quadratic = quadratic + (step ** 2).sum()
    return -linear + eta / 2 * quadratic


def reward(s: torch.Tensor, rows: Rows, kind: str, eta: float) -> torch.Tensor:
    """The selection's loss (lower = better picks), relative: q = s / sum s."""
    q = s / s.sum().clamp_min(1e-12)
    if kind == "lookahead":
        return lookahead(q, rows, eta)
    if kind == "loss":
        return -(q * rows.ce).sum()
    raise ValueError(f"unknown reward {kind!r}; known: {', '.join(REWARDS)}")


def terms(logits: torch.Tensor, alpha: torch.Tensor, l_hat: torch.Tensor | None, rows: Rows, *, rho: float,
          kind: str, eta: float, lam: float, gamma: float, prior: float = 0.0, method: str = "quantile",
          seed: int = 0, gather=lambda t: t) -> dict[str, torch.Tensor]:
    """Every term of SearchNet's loss on one mini-batch; `selection` and `rank`
    are kept apart so that their gradients can be told apart.

    `prior` weighs KL(pi || flat), the mixture's distance from `vote`'s: a few
    dozen labeled rows are thin evidence, and without it one candidate can take
    all the weight on one round's noise."""
    pi = mixture(logits, alpha)
    s = soft_selection((rows.a * pi).sum(1), rho, method, seed, gather)
    count = (s.mean() - rho) ** 2
    kl = (pi * torch.log(pi.clamp_min(1e-12) * pi.shape[1])).sum(1).mean()
    r = reward(s, rows, kind, eta)
    rank = loss_ranking(l_hat, rows.ce) if l_hat is not None else logits.new_zeros(())
    return dict(selection=r + lam * count + prior * kl, rank=gamma * rank, reward=r, count_reg=count,
                mixture_kl=kl, rank_loss=rank, selected=s.mean())


def gradient_norms(module: torch.nn.Module, parts: dict[str, torch.Tensor]) -> dict[str, float]:
    """||d selection / d theta|| and ||d rank / d theta|| over SearchNet's parameters,
    separately: a non-zero total says nothing about selection when the rank loss dominates."""
    params = [p for p in module.parameters() if p.requires_grad]
    norms = {}
    for name in ("selection", "rank"):
        loss = parts[name]
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True) if loss.requires_grad \
            else []
        norms[f"{name}_grad_norm"] = float(torch.sqrt(sum((g ** 2).sum() for g in grads if g is not None)
                                                      + torch.zeros(())))
    return norms
