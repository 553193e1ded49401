"""Fused pool scoring: one pass computes every statistic the active strategies need.

The backbone runs once per sample; MC dropout re-runs only the dropout head T
times, so all candidates together cost about one inference. On Ray Data the
pool streams through an actor pool whose actors load the model once. Scoring
always runs the model in eval mode, on un-augmented inputs.
"""
from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pyarrow as pa
import ray
import torch
from ray.data.extensions import ArrowTensorArray

from autoal.config import AUTO
from autoal.strategies import PoolStats
from autoal.strategies.base import SCORER, positions, provided_by
from autoal.training import ModelSpec

POOL_FIELDS = provided_by(SCORER)   # what the task model's pass computes; a hook's extra model adds one more
# `actors: auto` scores pools smaller than this in the driver: a Ray Data actor pool's start-up
# (5-10 s on 2 cores) costs more than scoring them (benchmarks/fused_scoring.py --actors 1).
AUTO_ACTORS_FROM = 20_000


def actors_for(actors: int | str, n: int) -> int:
    """The scoring actors for a pass over `n` samples: `actors`, or for `auto` none below
    AUTO_ACTORS_FROM samples and one from there."""
    if actors == AUTO:
        return 0 if n < AUTO_ACTORS_FROM else 1
    return int(actors)


def device_for(gpus: float) -> torch.device:
    return torch.device("cuda" if gpus > 0 and torch.cuda.is_available() else "cpu")


@torch.no_grad()
def fused_stats(net, x: torch.Tensor, needs: frozenset[str], mc_samples: int) -> dict[str, torch.Tensor]:
    """The statistics in `needs` for one batch, from a single backbone pass."""
    net.eval()
    embedding, taps = net.features(x)
    out = {}
    if "probs" in needs:
        out["probs"] = net.head(embedding).softmax(1)
    if "mc_probs" in needs:
        out["mc_probs"] = net.head.sample(embedding, mc_samples).softmax(2)
    if "embedding" in needs:
        out["embedding"] = embedding
    if "pred_loss" in needs:
        out["pred_loss"] = net.predict_loss(taps)
    return out


def _resolve(value):
    """Ray Data passes ObjectRefs in constructor kwargs through unresolved."""
    return ray.get(value) if isinstance(value, ray.ObjectRef) else value


class PoolScorer:
    """Ray Data actor: loads the task model (and any extra model, e.g. AutoAL's
    SearchNet) once, then scores batches of {id, x}."""

    def __init__(self, spec: dict, state, needs: frozenset[str], mc_samples: int, gpus: float, extra=None):
        self.device = device_for(gpus)
        self.net = ModelSpec(**spec).build()
        self.net.load_state_dict(_resolve(state))
        self.net.to(self.device).eval()
        self.extra = _resolve(extra)
        self.extra_field = self.extra.field if self.extra is not None else None
        if self.extra is not None:
            self.extra_net = self.extra.build()
            self.extra_net.load_state_dict(self.extra.state)
            self.extra_net.to(self.device).eval()
        self.needs, self.mc_samples = needs, mc_samples

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = torch.tensor(batch["x"], device=self.device)
        out = fused_stats(self.net, x, self.needs | ({"embedding"} if self.extra else set()), self.mc_samples)
        if self.extra is not None:
            out[self.extra.field] = self.extra_net(x, out["embedding"])
        arrays = {k: v.float().cpu().numpy() for k, v in out.items() if k in self.needs or k == self.extra_field}
        return {"id": batch["id"], **arrays}


def pool_dataset(ids: np.ndarray, x: np.ndarray, blocks: int) -> "ray.data.Dataset":
    """A Ray dataset of {id, x} rows with x as a tensor column, in `blocks` blocks."""
    table = pa.table({"id": pa.array(ids, pa.int64()), "x": ArrowTensorArray.from_numpy(x)})
    return ray.data.from_arrow(table).repartition(blocks)


def score(spec: ModelSpec, state: dict, ids: np.ndarray, x: np.ndarray, needs: frozenset[str], *,
          mc_samples: int, actors: int = 1, gpus: float = 0.0, batch_size: int = 256, extra=None) -> PoolStats:
    """PoolStats for the samples (ids, x), index-aligned with `ids`.

    actors >= 1 streams the pool through that many Ray Data actors (each with
    `gpus` GPUs); actors == 0 scores in this process (small pools, tests).
    `extra` (hooks.ScorerExtra) adds one more model's output as a field.
    """
    served = POOL_FIELDS | ({extra.field} if extra is not None else set())
    if not set(needs) <= served:
        raise ValueError(f"the scoring pass cannot compute {', '.join(sorted(set(needs) - served))}")
    needs = frozenset(needs) & POOL_FIELDS
    if actors == 0:
        scorer = PoolScorer(asdict(spec), state, needs, mc_samples, gpus, extra)
        parts = [scorer({"id": ids[s:s + batch_size], "x": x[s:s + batch_size]})
                 for s in range(0, len(ids), batch_size)]
    else:
        state_ref, extra_ref = ray.put(state), ray.put(extra)  # referenced here until the pass ends
        scored = pool_dataset(ids, x, blocks=max(actors, min(len(ids) // batch_size, 4 * actors), 1)).map_batches(
            PoolScorer, compute=ray.data.ActorPoolStrategy(size=actors), batch_size=batch_size,
            batch_format="numpy", num_cpus=1, num_gpus=gpus,
            fn_constructor_kwargs=dict(spec=asdict(spec), state=state_ref, needs=needs,
                                       mc_samples=mc_samples, gpus=gpus, extra=extra_ref))
        parts = list(scored.iter_batches(batch_format="numpy", batch_size=None))
    return _stats_in_order(parts, ids)


def _stats_in_order(parts: list[dict[str, np.ndarray]], ids: np.ndarray) -> PoolStats:
    """Join the actors' out-of-order outputs back onto `ids`."""
    got = np.concatenate([p["id"] for p in parts])
    try:
        pos = positions(got, ids)
    except KeyError:
        pos = None
    if pos is None or len(got) != len(ids):
        raise RuntimeError("scoring lost or duplicated pool rows")
    fields = {k: np.concatenate([p[k] for p in parts])[pos] for k in parts[0] if k != "id"}
    return PoolStats(ids=np.asarray(ids, dtype=np.int64), **fields)
