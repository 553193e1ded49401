"""What lpl's and poal's first batch is worth on digits, against the hidden labels.

    .venv/bin/python benchmarks/round0_picks.py [--seeds 0 1 2 3 4] [--config jobs/main.yaml]

Per seed, the round-0 task model (the seed's initial pool, as in the benchmark) scores the
unlabeled pool; with the hidden labels we know each sample's true loss. Printed, mean over seeds:
- lpl, for the loss module trained on detached taps (joint fraction 0, the old training) and
  jointly for the paper's first 60% of the fit: the Spearman correlation of the predicted loss
  with the true loss over the pool; how much of the predicted loss is the class (std of the
  class means over the mean within-class std); the true loss of the top-b by predicted loss, of
  the top-b of a random subset (the paper's selection), and of the bottom-b (with entropy's
  top-b and a uniform sample for scale); the largest class's share of lpl's and entropy's top-b;
- poal on this clean pool: the Spearman correlation of entropy (its informativeness) with the
  Mahalanobis in-distribution confidence (negative: the objectives conflict even without OOD
  samples), and the true loss and entropy of poal's batch next to entropy's top-b.
"""
from __future__ import annotations

import argparse

import numpy as np
import ray
from scipy.stats import spearmanr

from autoal import config
from autoal.compute import runtime, scoring, training
from autoal.engine.experiment import derive_seed, initial_pool, load_data
from autoal.strategies import PoolStats, get


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--config", default="jobs/main.yaml")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.6], help="lpl's joint fractions to compare")
    ap.add_argument("--weight", type=float, default=1.0, help="lpl's ranking-loss weight")
    args = ap.parse_args()
    cfg = config.load(args.config, {"seeds": args.seeds})
    train, test, recipe = load_data(cfg)
    runtime.init_ray()
    test_ref = ray.put((test.x, test.y))
    rows = []
    for seed in cfg.seeds:
        labeled = initial_pool(train, cfg, seed)
        unlabeled = np.setdiff1d(train.ids, labeled)
        lab, unl = train.rows(labeled), train.rows(unlabeled)
        row = {}
        for fraction in args.fractions:
            fit = training.fit(recipe, (train.x[lab], train.y[lab]), test_ref, seed=derive_seed(seed, 0, 1),
                               epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay,
                               batch_size=cfg.task_minibatch, min_steps=cfg.min_steps, loss_weight=args.weight,
                               joint_fraction=fraction)
            stats = scoring.score(recipe, fit.state, np.concatenate([unlabeled, labeled]),
                                  train.x[np.concatenate([unl, lab])], {"probs", "pred_loss", "embedding"},
                                  mc_samples=cfg.mc_samples, tasks=0)
            pool_stats = stats.take(np.arange(len(unlabeled)))
            true_loss = -np.log(np.clip(pool_stats.probs[np.arange(len(unl)), train.y[unl]], 1e-12, None))
            order = {v: i for i, v in enumerate(pool_stats.ids)}

            def loss_of(ids):
                return float(true_loss[[order[i] for i in ids]].mean())

            def top_class_share(ids):
                return np.bincount(train.y[train.rows(np.asarray(ids))]).max() / len(ids)

            tag = f"f{fraction}"
            row[f"{tag} accuracy"] = fit.accuracy
            row[f"{tag} rho(pred, true loss)"] = spearmanr(pool_stats.pred_loss, true_loss)[0]
            lpl = get("lpl", subset_factor=0).select(pool_stats, cfg.batch)
            entropy = get("entropy").select(pool_stats, cfg.batch)
            subset = get("lpl", **cfg.strategy_options("lpl")).select(pool_stats, cfg.batch,
                                                                       seed=derive_seed(seed, 0, 2))
            between = np.std([pool_stats.pred_loss[train.y[unl] == c].mean() for c in range(recipe.classes)])
            within = np.mean([pool_stats.pred_loss[train.y[unl] == c].std() for c in range(recipe.classes)])
            row[f"{tag} pred loss: class means' std / within-class std"] = between / within
            row[f"{tag} loss lpl top-b"] = loss_of(lpl)
            row[f"{tag} loss lpl top-b of a random subset"] = loss_of(subset)
            row[f"{tag} loss entropy top-b"] = loss_of(entropy)
            row[f"{tag} largest class's share: lpl top-b"] = top_class_share(lpl)
            row[f"{tag} largest class's share: entropy top-b"] = top_class_share(entropy)
            row[f"{tag} loss lpl bottom-b"] = loss_of(get("lpl", subset_factor=0).select(
                PoolStats(ids=pool_stats.ids, pred_loss=-pool_stats.pred_loss), cfg.batch))
            row[f"{tag} loss uniform"] = float(true_loss.mean())
            if fraction == args.fractions[0]:
                labeled_stats = stats.take(np.arange(len(unlabeled), len(stats)))
                labeled_stats = PoolStats(ids=labeled_stats.ids, embedding=labeled_stats.embedding,
                                          labels=train.y[lab])
                poal = get("poal", **cfg.strategy_options("poal"))
                informativeness, confidence = poal.objectives(pool_stats, labeled_stats)
                picks = poal.select(pool_stats, cfg.batch, labeled=labeled_stats, seed=derive_seed(seed, 0, 2))
                top = get("entropy").select(pool_stats, cfg.batch)
                entropy_of = dict(zip(pool_stats.ids, informativeness))
                row["poal rho(entropy, ID confidence)"] = spearmanr(informativeness, confidence)[0]
                row["poal entropy of batch / entropy top-b"] = (np.mean([entropy_of[i] for i in picks])
                                                              / np.mean([entropy_of[i] for i in top]))
                row["poal loss of batch"] = loss_of(picks)
                row["poal picks in entropy top-b"] = len(np.intersect1d(picks, top))
        rows.append(row)
    print(f"{cfg.dataset}, round 0 ({cfg.initial} labels), batch {cfg.batch}, seeds {list(cfg.seeds)}: "
          "mean (min .. max) over seeds")
    for key in rows[0]:
        values = np.array([r[key] for r in rows])
        print(f"  {key:<40} {values.mean():8.4f}  ({values.min():.4f} .. {values.max():.4f})")


if __name__ == "__main__":
    main()
