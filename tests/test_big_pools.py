"""Big pools: a Parquet pool's features stay in its files, the scoring pass streams them and
reduces per-sample strategies to each block's top k, and the picks are those of the in-memory path."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from autoal import config
from autoal.compute import scoring
from autoal.data import datasets, lazy, parquet as parquet_pool
from autoal.errors import AutoALError
from autoal.engine.experiment import Experiment
from autoal.nets.models import keyed_uniform
from autoal.data.parquet import read_parquet, write_parquet, write_shards
from autoal.strategies import get, names
from autoal.nets.models import ModelRecipe

RECIPE = ModelRecipe("mlp", (6,), 3, 0.3)
PER_SAMPLE = [n for n in names() if get(n).per_sample and get(n).needs <= scoring.POOL_FIELDS]


@pytest.fixture(scope="module")
def tied_pool(tmp_path_factory):
    """300 train samples, 100 distinct vectors three times each (tied scores), in 8 files of 40 rows,
    so the copies of a vector lie in different blocks; 20 test samples."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(100, 6)).astype(np.float32)
    x = np.concatenate([base, base, base, rng.normal(size=(20, 6)).astype(np.float32)])
    ids = rng.permutation(5000)[:320].astype(np.int64)
    y, split = rng.integers(0, 3, 320), np.array(["train"] * 300 + ["test"] * 20)
    chunks = ((ids[s:s + 40], x[s:s + 40], y[s:s + 40], split[s:s + 40]) for s in range(0, 320, 40))
    return write_shards(chunks, tmp_path_factory.mktemp("tied") / "pool", "tied", (6,), 3)


def test_streamed_top_k_picks_what_the_in_memory_selection_picks(ray_local, tied_pool):
    train = read_parquet(tied_pool, lazy=True).subset("train")
    assert isinstance(train.x, parquet_pool.LazyFeatures)
    x = np.asarray(train.x)
    torch.manual_seed(0)
    state = RECIPE.build().state_dict()
    assert {"entropy", "margin", "bald", "var_ratio", "mean_std", "least_confidence"} <= set(PER_SAMPLE)
    for name in [*PER_SAMPLE, "lpl"]:
        options = {"subset_factor": 0} if name == "lpl" else {}
        strategy = get(name, **options)
        full = scoring.score(RECIPE, state, train.ids, x, strategy.needs, mc_samples=4, tasks=0)
        expected = strategy.select(full, 25)
        scores = strategy.score(full)
        if "mc_probs" not in strategy.needs:   # an MC statistic also depends on the sample's id
            assert len(np.unique(scores)) <= 100, "copies of a vector tie"
        rank = scoring.Rank(strategy, 25, strategy.needs)
        paths = [(0, x), (0, train.x)] + ([(2, train.x)] if name in ("margin", "bald") else [])   # actors: slow
        for actors, source in paths:
            top = scoring.score(RECIPE, state, train.ids, source, strategy.needs, mc_samples=4, tasks=actors,
                                rank=rank, block_rows=40)   # blocks of 40: copies of a vector in different blocks
            assert len(top) == 25
            np.testing.assert_array_equal(strategy.select(top, 25), expected, err_msg=f"{name}, actors {actors}")


def test_mc_dropout_statistics_do_not_depend_on_the_batch(tied_pool):
    """Each sample's dropout masks follow from its id: scored alone or among others, the same MC probabilities."""
    pool = read_parquet(tied_pool)
    torch.manual_seed(0)
    state = RECIPE.build().state_dict()
    together = scoring.score(RECIPE, state, pool.ids, pool.x, {"mc_probs"}, mc_samples=5, tasks=0, chunk=64)
    apart = scoring.score(RECIPE, state, pool.ids[::-1], pool.x[::-1], {"mc_probs"}, mc_samples=5, tasks=0,
                          chunk=7)
    np.testing.assert_allclose(together.mc_probs[::-1], apart.mc_probs, rtol=1e-6)   # float rounding of the batch
    assert np.abs(np.diff(together.mc_probs, axis=1)).max() > 1e-3, "the T samples differ: dropout is on"
    masks = keyed_uniform(torch.tensor([3, 11, 42]), 5, 8)
    torch.testing.assert_close(keyed_uniform(torch.tensor([42, 3]), 5, 8), masks[[2, 0]], rtol=0, atol=0)


SMALL = {"dataset": "digits", "strategies": ["entropy", "coreset"], "initial": 20, "batch": 10, "rounds": 2,
         "epochs": 2, "min_steps": 0, "mc_samples": 3, "model": "mlp"}


@pytest.fixture(scope="module")
def digits_parquet(tmp_path_factory):
    return write_parquet(datasets.load("digits", "data"), tmp_path_factory.mktemp("digits") / "pool")


def ledger(exp: Experiment) -> pd.DataFrame:
    return exp.store.ledger[["strategy", "round", "id"]].sort_values(["strategy", "round", "id"]).reset_index(drop=True)


def test_a_file_uri_pool_runs_the_same_experiment_as_the_pool_in_memory(ray_local, tmp_path, digits_parquet):
    """The same seed on digits held in memory and on digits left in Parquet (read by a file:// URI,
    streamed through one scoring actor): the same queries, round by round."""
    memory = Experiment.prepare(config.load(None, {**SMALL, "scoring_tasks": 0}), tmp_path / "memory", log=lambda m: None)
    memory.run()
    lazy = Experiment.prepare(config.load(None, {**SMALL, "scoring_tasks": 1, "dataset": f"parquet:file://{digits_parquet}"}),
                              tmp_path / "lazy", log=lambda m: None)
    assert isinstance(lazy.train.x, parquet_pool.LazyFeatures)
    lazy.run()
    pd.testing.assert_frame_equal(ledger(memory), ledger(lazy))


def test_a_run_on_a_parquet_pool_never_reads_the_whole_pools_features(ray_local, tmp_path, digits_parquet,
                                                                      monkeypatch):
    """Structural: the only reads of features are views smaller than the pool (labeled set, test
    split, picks); no whole-table read, no in-memory dataset built from the pool's array."""
    read = []
    real = parquet_pool.LazyFeatures.__array__
    monkeypatch.setattr(parquet_pool.LazyFeatures, "__array__",
                        lambda self, *a, **kw: read.append(len(self)) or real(self, *a, **kw))
    monkeypatch.setattr(pq, "read_table", lambda *a, **kw: pytest.fail("a whole Parquet table was read"))
    monkeypatch.setattr(scoring, "pool_dataset", lambda *a, **kw: pytest.fail("the pool was put in memory"))
    cfg = config.load(None, {**SMALL, "scoring_tasks": 1, "prefilter": 3, "dataset": f"parquet:{digits_parquet}"})
    exp = Experiment.prepare(cfg, tmp_path / "run", log=lambda m: None)
    exp.run()
    assert read and max(read) <= len(exp.test) + cfg.budget < len(exp.train) / 2
    assert len(exp.store.ledger) == 2 * cfg.budget


@pytest.mark.parametrize("case", ["nan", "ragged", "null_id", "no_y", "shape"])
def test_bad_parquet_gets_the_same_message_streamed(tmp_path, case):
    """Every check of the format runs on the streamed pool: a path and a file:// URI fail alike."""
    import pyarrow as pa

    x = [[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [0.2, 0.1]]
    columns = {"id": pa.array([0, 1, 2, 3]), "x": pa.array(x, pa.list_(pa.float32())), "y": pa.array([0, 1, 0, 1]),
               "split": pa.array(["train", "train", "test", "test"])}
    metadata = {}
    if case == "nan":
        columns["x"] = pa.array([[0.0, float("nan")], *x[1:]], pa.list_(pa.float32()))
    elif case == "ragged":
        columns["x"] = pa.array([[0.0], *x[1:]], pa.list_(pa.float32()))
    elif case == "null_id":
        columns["id"] = pa.array([0, None, 2, 3])
    elif case == "no_y":
        del columns["y"]
    else:
        metadata = {b"shape": b"[3]"}
    path = tmp_path / "bad"
    path.mkdir()
    pq.write_table(pa.table(columns).replace_schema_metadata(metadata), path / "part-0.parquet")
    messages = []
    for location in (str(path), f"file://{path}"):
        with pytest.raises(AutoALError) as err:
            datasets.load(f"parquet:{location}", "data")
        messages.append(str(err.value).replace(location, "POOL"))
    assert messages[0] == messages[1]
    assert {"nan": "NaN or infinite", "ragged": "different lengths", "null_id": "null id",
            "no_y": "lacks columns ['y']", "shape": "does not match 2 features"}[case] in messages[0]


def test_the_driver_keeps_a_compact_index_and_one_copy_of_the_ids(tmp_path):
    """What the driver holds per sample of a 10M-row pool: an id, a 1-byte label and a 1-byte split;
    a lazy x shares the ids; a split stored in one piece is a view of the pool, not a copy."""
    n = 5000
    ids, y = np.arange(n, dtype=np.int64) * 3, np.arange(n) % 7
    split = np.where(np.arange(n) < n - 500, "train", "test")
    chunks = ((ids[s:s + 1000], np.ones((1000, 4)), y[s:s + 1000], split[s:s + 1000]) for s in range(0, n, 1000))
    pool = read_parquet(write_shards(chunks, tmp_path / "pool", "compact", (4,), 7), lazy=True)
    train = pool.subset("train")
    assert pool.y.dtype == train.y.dtype == np.int8 and pool.split.codes.dtype == np.int8
    assert train.x.ids is train.ids, "one array of ids, not one per view"
    assert np.shares_memory(train.ids, pool.ids) and np.shares_memory(train.y, pool.y)
    np.testing.assert_array_equal(train.labels(np.arange(3)), [0, 1, 2])
    assert train.labels(np.arange(3)).dtype == np.int64
    scattered = pool.take(np.arange(n) % 2 == 0)   # not one run: a copy
    assert not np.shares_memory(scattered.ids, pool.ids) and scattered.x.ids is scattered.ids
    np.testing.assert_array_equal(scattered.rows(ids[[10, 2]]), [5, 1])


@pytest.mark.parametrize("ids", [np.arange(10_000, 30_000, dtype=np.int64),          # dense: a bitmap
                                 np.arange(0, 10**12, 10**8, dtype=np.int64),        # sparse: sorted ids
                                 np.array([-5, 3, 7], dtype=np.int64)])
def test_id_sets_ship_dense_ids_as_a_bitmap_and_answer_membership_exactly(ids):
    members = lazy.IdSet.of(np.random.default_rng(0).permutation(ids))
    assert (members.bits is not None) == (ids[-1] - ids[0] < 64 * len(ids))
    if members.bits is not None:
        assert members.bits.nbytes <= len(ids) // 8 + 1 or len(ids) < 64
    rng = np.random.default_rng(1)
    queries = np.concatenate([ids[::3], rng.integers(ids.min() - 100, ids.max() + 100, 5000), [-(2**62), 2**62]])
    np.testing.assert_array_equal(members.contains(queries), np.isin(queries, ids))


def test_a_pool_in_one_file_streams_as_one_block_per_row_group(ray_local, tmp_path):
    """A user's pool may be one big file: the scoring pass still reads it with one task per row
    group, and each returns only the view's rows."""
    n, rng = 4000, np.random.default_rng(0)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    ids = np.arange(n, dtype=np.int64) + 10**9
    location = write_shards([(ids, x, np.arange(n) % 2, np.full(n, "train"))], tmp_path / "pool", "one", (3,), 2)
    files = list(location.glob("*.parquet"))
    assert len(files) == 1 and pq.ParquetFile(files[0]).num_row_groups == 4
    view = read_parquet(location, lazy=True).x[rng.permutation(n)[:1500]]
    data = scoring.parquet_dataset(view).materialize()
    assert data.num_blocks() >= 4
    rows = data.to_pandas()
    order = np.argsort(view.ids)
    np.testing.assert_array_equal(np.sort(rows["id"].to_numpy()), view.ids[order])
    got = np.stack(rows.sort_values("id")["x"].to_numpy())
    np.testing.assert_array_equal(got, x[view.ids[order] - 10**9])
