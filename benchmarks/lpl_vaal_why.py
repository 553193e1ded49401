"""Why lpl and vaal lose to random on digits: what their scores rank, measured against the hidden labels.

    .venv/bin/python benchmarks/lpl_vaal_why.py [--seeds 0 1 2] [--labels 40 120 200] [--fractions 0 0.6]
        [--adversarial-epochs 10 100] [--config jobs/main.yaml]

For each seed and labeled-set size, the labeled set is the seed's initial pool plus a uniform
sample of the rest (random's trajectory, the same for every method measured), and the rest is
the unlabeled pool. With the hidden labels, each pool sample's true loss is the cross-entropy of
the task model trained on the labeled set. Printed, mean (min .. max) over seeds:
- lpl, per joint fraction (0: the loss module reads detached taps; 0.6: Yoo & Kweon's joint
  training): test accuracy; the last epoch's training loss (how memorised the labeled set is); how
  far two dropout draws of its ranking target (the labeled set's training losses, the head's
  dropout on) agree (Spearman); the Spearman correlation of the predicted loss with the true loss
  over the pool and with the loss over the labeled set; the true loss of the predicted-loss
  deciles 1, 2, 5 and 10 over the pool's mean;
- vaal, per VAE + discriminator epochs: how well the discriminator tells labeled from unlabeled
  (AUC), the Spearman correlation of its "unlabeled" score with the true loss, with the distance
  to the nearest labeled sample and with the sparsity (mean distance to the 10 nearest pool samples);
- for lpl's batch (top-b of a random 10 x b subset), vaal's (top-b) and coreset's: its worth (the
  test accuracy of the model trained on the labeled set plus the batch, minus the mean over three
  uniform batches), its true loss, distance to the labeled set and sparsity over the uniform
  batches', and its largest class's share.
"""
from __future__ import annotations

import argparse
import functools

import numpy as np
import ray
import torch
import torch.nn.functional as F
from scipy.spatial.distance import cdist
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from autoal import config
from autoal.compute import distributed, runtime, scoring, training
from autoal.engine.experiment import derive_seed, initial_pool, load_data
from autoal.hooks import state_adversary
from autoal.strategies import PoolStats, get


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--labels", type=int, nargs="+", default=[40, 120, 200], help="labeled-set sizes")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.6], help="lpl's joint fractions")
    ap.add_argument("--adversarial-epochs", type=int, nargs="*", default=[10], help="vaal's epochs to compare")
    ap.add_argument("--config", default="jobs/main.yaml")
    args = ap.parse_args()
    cfg = config.load(args.config, {"seeds": args.seeds})
    train, test, recipe = load_data(cfg)
    runtime.init_ray()
    test_ref = ray.put((test.x, test.y))
    flat = train.x.reshape(len(train), -1)
    for size in args.labels:
        rows = []
        for seed in cfg.seeds:
            first = initial_pool(train, cfg, seed)
            rest = np.setdiff1d(train.ids, first)
            more = np.random.default_rng(derive_seed(seed, size)).choice(rest, size - len(first), replace=False)
            labeled = np.sort(np.concatenate([first, more]))
            unlabeled = np.setdiff1d(train.ids, labeled)
            lab, unl = train.rows(labeled), train.rows(unlabeled)
            ctx = Context(train, flat, lab, unl, cfg.batch, derive_seed(seed, size, 2))
            ctx.refit = functools.partial(refit, recipe, cfg, train, lab, test_ref, derive_seed(seed, 1, 1))
            ctx.uniform_accuracy = np.mean([ctx.refit(train.ids[unl][u]) for u in ctx.uniform.reshape(3, -1)])
            row, task_state, lpl = {}, None, get("lpl", **cfg.strategy_options("lpl"))
            for fraction in args.fractions:
                fit = training.fit(recipe, (train.x[lab], train.y[lab]), test_ref, seed=derive_seed(seed, 0, 1),
                                   epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                   batch_size=cfg.task_minibatch, min_steps=cfg.min_steps,
                                   loss_weight=lpl.weight, joint_fraction=fraction)
                task_state = task_state or fit.state
                row.update(lpl_row(recipe, fit, ctx, cfg, f"lpl f{fraction}"))
            stats = scoring.score(recipe, task_state, unlabeled, train.x[unl], {"probs"}, mc_samples=2, tasks=0)
            true_loss = ctx.true_loss(stats.probs)
            for epochs in args.adversarial_epochs:
                row.update(vaal_row(recipe, ctx, cfg, epochs, true_loss, f"vaal e{epochs}"))
            coreset = get("coreset").select(PoolStats(ids=unlabeled, embedding=flat[unl]), cfg.batch,
                                            labeled=PoolStats(ids=labeled, embedding=flat[lab]))
            row.update(ctx.batch_row(coreset, true_loss, "coreset"))
            rows.append(row)
        print(f"\n{cfg.dataset}, {size} labels, batch {cfg.batch}, seeds {list(cfg.seeds)}: mean (min .. max)")
        for key in rows[0]:
            values = np.array([r[key] for r in rows])
            print(f"  {key:<52} {values.mean():8.4f}  ({values.min():.4f} .. {values.max():.4f})")


class Context:
    """One labeled/unlabeled split with the hidden labels, and the batch measures against it."""

    def __init__(self, train, flat, lab, unl, batch, seed):
        self.train, self.lab, self.unl, self.batch, self.seed = train, lab, unl, batch, seed
        self.ids = train.ids[unl]
        self.to_labeled = cdist(flat[unl], flat[lab]).min(1)
        within = cdist(flat[unl], flat[unl])
        self.sparsity = np.sort(within, 1)[:, 1:11].mean(1)
        self.uniform = np.random.default_rng(seed).choice(len(unl), 3 * batch, replace=False)  # 3 uniform batches

    def true_loss(self, probs):
        return -np.log(np.clip(probs[np.arange(len(self.unl)), self.train.y[self.unl]], 1e-12, None))

    def batch_row(self, picks, true_loss, tag):
        at = np.searchsorted(self.ids, picks)
        u = self.uniform
        return {f"{tag} batch's worth: accuracy - uniform batch's": self.refit(picks) - self.uniform_accuracy,
                f"{tag} batch loss / uniform's": true_loss[at].mean() / true_loss[u].mean(),
                f"{tag} batch distance to labeled / uniform's": self.to_labeled[at].mean() / self.to_labeled[u].mean(),
                f"{tag} batch sparsity (10-NN distance) / uniform's":
                    self.sparsity[at].mean() / self.sparsity[u].mean(),
                f"{tag} batch largest class's share": np.bincount(self.train.y[self.unl][at]).max() / len(at)}


def refit(recipe, cfg, train, lab, test_ref, seed, picks) -> float:
    """Test accuracy of the task model trained on the labeled set plus `picks` (the same init for every batch)."""
    rows = np.concatenate([lab, train.rows(picks)])
    return training.fit(recipe, (train.x[rows], train.y[rows]), test_ref, seed=seed, epochs=cfg.epochs, lr=cfg.lr,
                        weight_decay=cfg.weight_decay, batch_size=cfg.task_minibatch, min_steps=cfg.min_steps).accuracy


def lpl_row(recipe, fit, ctx: Context, cfg, tag) -> dict:
    train = ctx.train
    ids = np.concatenate([train.ids[ctx.unl], train.ids[ctx.lab]])
    stats = scoring.score(recipe, fit.state, ids, train.x[np.concatenate([ctx.unl, ctx.lab])],
                          {"probs", "pred_loss"}, mc_samples=2, tasks=0)
    pool, labeled = stats.take(np.arange(len(ctx.unl))), stats.take(np.arange(len(ctx.unl), len(stats)))
    true_loss = ctx.true_loss(pool.probs)
    # the labeled set's losses under the trained model, in eval mode: what the loss module last saw
    train_loss = -np.log(np.clip(labeled.probs[np.arange(len(ctx.lab)), train.y[ctx.lab]], 1e-12, None))
    picks = get("lpl", **cfg.strategy_options("lpl")).select(pool, cfg.batch, seed=ctx.seed)
    row = {f"{tag} test accuracy": fit.accuracy,
           f"{tag} last epoch's training loss": fit.train_loss,
           f"{tag} rho(pred, true loss) on the pool": spearmanr(pool.pred_loss, true_loss)[0],
           f"{tag} rho(pred, loss) on the labeled set": spearmanr(labeled.pred_loss, train_loss)[0],
           f"{tag} rho(ranking target, its next dropout draw)": dropout_agreement(recipe, fit.state, train, ctx.lab)}
    deciles = np.array_split(np.argsort(-pool.pred_loss, kind="stable"), 10)
    row |= {f"{tag} true loss / pool's, predicted-loss decile {d + 1}": true_loss[part].mean() / true_loss.mean()
            for d, part in enumerate(deciles) if d in (0, 1, 4, 9)}
    return row | ctx.batch_row(picks, true_loss, tag)


def dropout_agreement(recipe, state, train, lab, draws: int = 5) -> float:
    """The Spearman correlation between two draws of the ranking loss's target, the labeled set's training
    losses (train mode: the head's dropout on), mean over successive pairs of `draws`: 1 if dropout leaves
    their order alone, 0 if the order is the dropout mask's."""
    net = recipe.build()
    net.load_state_dict(state)
    net.train()
    x, y = torch.from_numpy(train.x[lab]), torch.from_numpy(train.y[lab])
    torch.manual_seed(0)
    with torch.no_grad():
        losses = [F.cross_entropy(net(x)[0], y, reduction="none").numpy() for _ in range(draws)]
    return float(np.mean([spearmanr(a, b)[0] for a, b in zip(losses, losses[1:])]))


def vaal_row(recipe, ctx: Context, cfg, epochs, true_loss, tag) -> dict:
    train, b = ctx.train, get("vaal", **cfg.strategy_options("vaal"))
    data = (train.x[ctx.lab].astype(np.float32), train.y[ctx.lab], train.x[ctx.unl].astype(np.float32))
    payload = state_adversary.AdversarialPayload(recipe, ctx.seed, b.latent, epochs, b.lr, b.batch_size, None,
                                                 ray.put(data))
    state = distributed.run(state_adversary.adversarial_loop, payload, workers=0, gpus=0.0,
                            name=f"why-vaal-{ctx.seed}")
    nets = state_adversary.AdversarialNets(recipe, b.latent)
    nets.load_state_dict(distributed.torch_state(state))
    nets.eval()
    with torch.no_grad():
        score_u = nets(torch.from_numpy(data[2]), None).numpy()
        score_l = nets(torch.from_numpy(data[0]), None).numpy()
    picks = ctx.ids[np.argsort(-score_u, kind="stable")[:cfg.batch]]
    row = {f"{tag} discriminator AUC, unlabeled vs labeled": roc_auc_score(
               np.r_[np.ones(len(score_u)), np.zeros(len(score_l))], np.r_[score_u, score_l]),
           f"{tag} rho(score, true loss)": spearmanr(score_u, true_loss)[0],
           f"{tag} rho(score, distance to labeled)": spearmanr(score_u, ctx.to_labeled)[0],
           f"{tag} rho(score, sparsity)": spearmanr(score_u, ctx.sparsity)[0]}
    return row | ctx.batch_row(picks, true_loss, tag)


if __name__ == "__main__":
    main()
