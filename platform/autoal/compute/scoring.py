"""Fused pool scoring: one pass computes every statistic the active strategies need.

The backbone runs once per sample; MC dropout re-runs only the dropout head T
times, so all candidates together cost about one inference. On Ray Data the
pool streams through tasks whose worker processes keep the model for the whole
pass (and Ray keeps the processes across rounds). Scoring always runs the model
in eval mode, on un-augmented inputs.
"""
from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray
import torch
from ray.data.extensions import ArrowTensorArray

from autoal.compute import distributed
from autoal.config import AUTO
from autoal.data.ids import is_lazy, positions
from autoal.data.lazy import IdSet, LazyFeatures, filesystem
from autoal.nets.models import ModelRecipe
from autoal.strategies import PoolStats
from autoal.strategies.base import SCORER, Strategy, provided_by, top_k

POOL_FIELDS = provided_by(SCORER)   # what the task model's pass computes; a hook's extra model adds one more
# `scoring_tasks: auto` scores pools smaller than this in the driver: a Ray Data pass's start-up on new
# workers (5-10 s on 2 cores) costs more than scoring them (benchmarks/fused_scoring.py --actors 1).
AUTO_TASKS_FROM = 20_000
BLOCK_ROWS = 65_536   # rows a ranked pass reduces to their top k at once


def tasks_for(tasks: int | str, n: int) -> int:
    """The scoring tasks for a pass over `n` samples: `tasks`, or for `auto` none below
    AUTO_TASKS_FROM samples and one from there."""
    if tasks == AUTO:
        return 0 if n < AUTO_TASKS_FROM else 1
    return int(tasks)


def device_for(gpus: float) -> torch.device:
    return torch.device("cuda" if gpus > 0 and torch.cuda.is_available() else "cpu")


@torch.no_grad()
def fused_stats(net, x: torch.Tensor, needs: frozenset[str], mc_samples: int,
                keys: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The statistics in `needs` for one batch, from a single backbone pass; `keys` (the samples'
    ids) fix each sample's MC-dropout masks."""
    net.eval()
    embedding, taps = net.features(x)
    out = {}
    if "probs" in needs:
        out["probs"] = net.head(embedding).softmax(1)
    if "mc_probs" in needs:
        out["mc_probs"] = net.head.sample(embedding, mc_samples, keys).softmax(2)
    if "embedding" in needs:
        out["embedding"] = embedding
    if "pred_loss" in needs:
        out["pred_loss"] = net.predict_loss(taps)
    return out


def _resolve(value):
    """Ray Data passes ObjectRefs in constructor kwargs through unresolved."""
    return ray.get(value) if isinstance(value, ray.ObjectRef) else value


@dataclass(frozen=True)
class Rank:
    """Keep only the top `k` rows of each block by `strategy`'s per-sample score (ties to the
    smaller id): merged, they hold the pool's exact top k. `fields` are kept with them. The
    strategy is the round's own object, built once with its options (Ray pickles it to the tasks)."""

    strategy: Strategy
    k: int
    fields: frozenset[str] = frozenset()


class PoolScorer:
    """Loads the task model (and any extra model, e.g. AutoAL's SearchNet) once, then scores
    blocks of {id, x}, `chunk` rows at a time; with a `Rank`, returns only the block's top
    rows and their scores."""

    def __init__(self, recipe: dict, state, needs: frozenset[str], mc_samples: int, gpus: float, extra=None,
                 rank: Rank | None = None, chunk: int = 256):
        distributed.deterministic()   # the same picks from the same model, on any device
        self.device = device_for(gpus)
        self.net = ModelRecipe(**recipe).build()
        self.net.load_state_dict(_resolve(state))
        self.net.to(self.device).eval()
        self.extra = _resolve(extra)
        if self.extra is not None:
            self.extra_net = self.extra.build()
            self.extra_net.load_state_dict(self.extra.state)
            self.extra_net.to(self.device).eval()
        self.needs, self.mc_samples, self.rank, self.chunk = needs, mc_samples, rank, chunk

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = np.asarray(batch["id"], dtype=np.int64)
        parts = [self.stats(batch["x"][s:s + self.chunk], ids[s:s + self.chunk])
                 for s in range(0, len(ids), self.chunk)]
        arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
        if self.rank is None:
            return {"id": ids, **arrays}
        scores = np.asarray(self.rank.strategy.score(PoolStats(ids=ids, **arrays)), dtype=np.float64)
        top = top_k(ids, self.rank.k, scores)
        return {"id": ids[top], "score": scores[top], **{k: v[top] for k, v in arrays.items() if k in self.rank.fields}}

    def stats(self, x: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
        """The statistics of one chunk of inputs, as float32 arrays."""
        x = torch.tensor(np.ascontiguousarray(x, dtype=np.float32), device=self.device)   # Ray: read-only arrays
        extra = {self.extra.field} if self.extra is not None else set()
        out = fused_stats(self.net, x, self.needs | ({"embedding"} if extra else set()), self.mc_samples,
                          keys=torch.tensor(np.ascontiguousarray(ids), device=self.device))
        if self.extra is not None:
            out[self.extra.field] = self.extra_net(x, out["embedding"])
        return {k: v.float().cpu().numpy() for k, v in out.items() if k in self.needs | extra}


_SCORERS: dict[str, PoolScorer] = {}   # per worker process: the scorer of the pass in progress


def _score_batch(batch: dict[str, np.ndarray], key: str, **scorer) -> dict[str, np.ndarray]:
    """A Ray Data task: score one batch with this process's scorer for pass `key`, built on the
    pass's first batch here. Ray keeps its worker processes across passes, so a round pays no
    actor start-up (an actor pool cost 5-10 s per pass on 2 cores), only a model load per worker."""
    if key not in _SCORERS:
        _SCORERS.clear()
        _SCORERS[key] = PoolScorer(**scorer)
    return _SCORERS[key](batch)


def pool_dataset(ids: np.ndarray, x: np.ndarray, blocks: int) -> "ray.data.Dataset":
    """A Ray dataset of {id, x} rows with x as a tensor column, in `blocks` blocks."""
    table = pa.table({"id": pa.array(ids, pa.int64()), "x": ArrowTensorArray.from_numpy(x)})
    return ray.data.from_arrow(table).repartition(blocks)


def parquet_dataset(view: LazyFeatures) -> "ray.data.Dataset":
    """A lazy view's rows as a Ray dataset of {id, x} (x float32 [n, *shape]), read lazily, one
    task per row group (a pool in one file still streams through many workers); the tasks
    learn which rows are the view's from an IdSet, not a list of its ids."""
    fs, path = filesystem(view.location)
    pieces = [{"file": fragment.path, "row_group": group}
              for fragment in pads.dataset(path, filesystem=fs, format="parquet").get_fragments()
              for group in range(fragment.metadata.num_row_groups)]
    members, location, shape = ray.put(IdSet.of(view.ids)), view.location, view.sample_shape

    def read(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        fs, _ = filesystem(location)
        ids, xs = [], []
        for file, group in zip(batch["file"], batch["row_group"]):
            with fs.open_input_file(str(file)) as f:
                table = pq.ParquetFile(f).read_row_group(int(group), columns=["id", "x"])
            group_ids, group_xs = ray.get(members).rows_of(table, shape)
            ids.append(group_ids)
            xs.append(group_xs)
        return {"id": np.concatenate(ids), "x": np.concatenate(xs)}

    return ray.data.from_items(pieces, override_num_blocks=len(pieces)).map_batches(
        read, batch_size=1, batch_format="numpy")


def score(recipe: ModelRecipe, state: dict, ids: np.ndarray, x, needs: frozenset[str], *, mc_samples: int,
          tasks: int = 1, gpus: float = 0.0, chunk: int = 256, extra=None, rank: Rank | None = None,
          block_rows: int = BLOCK_ROWS) -> PoolStats:
    """PoolStats for the samples (ids, x), index-aligned with `ids`; with `rank`, only the pool's
    top `rank.k` rows (with `rank.fields`), in rank order: each block of `block_rows` rows keeps
    its top k, and the driver merges them.

    `x` is an array or a lazy Parquet view (autoal.data.lazy.LazyFeatures), whose rows stream
    from the files. tasks >= 1 streams the pool through that many Ray Data tasks at a time (each
    with `gpus` GPUs); tasks == 0 scores in this process (small pools, tests). `extra`
    (hooks.ScorerExtra) adds one more model's output as a field.
    """
    served = POOL_FIELDS | ({extra.field} if extra is not None else set())
    if not set(needs) <= served:
        raise ValueError(f"the scoring pass cannot compute {', '.join(sorted(set(needs) - served))}")
    needs = (frozenset(needs) | (rank.strategy.needs if rank is not None else frozenset())) & POOL_FIELDS
    lazy = is_lazy(x)
    if tasks == 0:
        scorer = PoolScorer(asdict(recipe), state, needs, mc_samples, gpus, extra, rank, chunk)
        block = block_rows if rank is not None else chunk
        batches = (parquet_dataset(x).iter_batches(batch_format="numpy", batch_size=block) if lazy else
                   ({"id": ids[s:s + block], "x": x[s:s + block]} for s in range(0, len(ids), block)))
        parts = (scorer(batch) for batch in batches)
    else:
        state_ref, extra_ref = ray.put(state), ray.put(extra)  # referenced here until the pass ends
        data = parquet_dataset(x) if lazy else pool_dataset(
            ids, x, blocks=max(tasks, min(len(ids) // chunk, 4 * tasks), 1))
        scored = data.map_batches(
            _score_batch, compute=ray.data.TaskPoolStrategy(size=tasks),
            batch_size=block_rows if rank is not None else chunk,   # ranked: top k of each block
            batch_format="numpy", num_cpus=1, num_gpus=gpus,
            max_calls=0,   # a GPU task's process otherwise exits after one block (Ray's default for GPU tasks),
                           # paying a CUDA context and a model load per block
            fn_kwargs=dict(key=state_ref.hex(), recipe=asdict(recipe), state=state_ref, needs=needs,
                           mc_samples=mc_samples, gpus=gpus, extra=extra_ref, rank=rank, chunk=chunk))
        parts = scored.iter_batches(batch_format="numpy", batch_size=None)
    return _merged_top(parts, rank.k) if rank is not None else _stats_in_order(parts, ids)


def _merged_top(parts, k: int) -> PoolStats:
    """The top k of the blocks' top-k rows, by score then smaller id: the pool's exact top k.
    Merged as the blocks arrive, so the driver holds at most 2k rows, not k per block."""
    top = None
    for part in parts:
        if not len(part["id"]):
            continue
        rows = part if top is None else {key: np.concatenate([top[key], part[key]]) for key in top}
        keep = top_k(rows["id"], k, rows["score"])
        top = {key: value[keep] for key, value in rows.items()}
    return PoolStats(ids=top["id"], **{key: v for key, v in top.items() if key not in ("id", "score")})


def _stats_in_order(parts, ids: np.ndarray) -> PoolStats:
    """Place the tasks' out-of-order outputs onto `ids`, batch by batch, into arrays allocated
    once (no list of the parts is kept: the pass's result is the only copy)."""
    order = np.argsort(ids)
    fields, seen = {}, np.zeros(len(ids), dtype=bool)
    for part in parts:
        try:
            rows = positions(ids, np.asarray(part["id"], dtype=np.int64), order)
        except KeyError:
            rows = None
        if rows is None or seen[rows].any():
            raise RuntimeError("scoring lost or duplicated pool rows")
        seen[rows] = True
        for key, value in part.items():
            if key != "id":
                if key not in fields:
                    fields[key] = _allocate((len(ids), *value.shape[1:]), value.dtype)
                fields[key][rows] = value
    if not seen.all():
        raise RuntimeError("scoring lost or duplicated pool rows")
    return PoolStats(ids=np.asarray(ids, dtype=np.int64), **fields)


MEMMAP_BYTES = 256 * 2**20   # a whole-pool statistic larger than this lives in a memory-mapped file


def _allocate(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An array for one statistic of the whole pool: in memory, or past MEMMAP_BYTES in a
    memory-mapped temporary file, so the page cache holds it and not the driver's heap (the
    file is unlinked at once; the mapping keeps it until the array goes)."""
    if int(np.prod(shape)) * np.dtype(dtype).itemsize < MEMMAP_BYTES:
        return np.empty(shape, dtype=dtype)
    with tempfile.NamedTemporaryFile(prefix="autoal-stats-", suffix=".npy") as f:
        return np.lib.format.open_memmap(f.name, mode="w+", dtype=dtype, shape=shape)
