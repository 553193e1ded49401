"""`autoal embed` and labeling on embeddings: real torchvision backbones (resnet18 at random init,
saved in torchvision's format: nothing is downloaded) on a few tens of real PNG files."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torchvision
from PIL import Image
from sklearn.datasets import load_digits

import test_cli
from test_faults import our_worker_pids
from autoal import cli
from autoal.compute import training
from autoal.data import images
from autoal.nets import backbones
from autoal.compute.embed import embed
from autoal.labeling.project import LabelProject
from autoal.data.pool import UNLABELED
from autoal.data.parquet import read_parquet

pytestmark = pytest.mark.slow(seconds=130)   # started first, the longest first (tests/conftest.py)

ENV = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_DATA_DISABLE_PROGRESS_BARS="1", RAY_USAGE_STATS_ENABLED="0")


def digit_folder(root: Path, n: int, seeds: int = 2) -> Path:
    """n PNG digits of classes 0 and 1: `seeds` of each in class folders, the rest loose."""
    x, y = load_digits(return_X_y=True)
    kept = np.flatnonzero(y < 2)[:n]
    for k, i in enumerate(kept):
        folder = root / f"c{y[i]}" if (y[kept[:k + 1]] == y[i]).sum() <= seeds else root
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((x[i].reshape(8, 8) * 16).clip(0, 255).astype(np.uint8)).resize((24, 24)).save(
            folder / f"d{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """resnet18 at a fixed random init, saved as torchvision saves state dicts."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return digit_folder(tmp_path_factory.mktemp("digits") / "digits", 12)


def test_local_state_dict_loads_into_torchvision_and_embeds_its_penultimate_features(weights, folder):
    reference = torchvision.models.resnet18()
    reference.load_state_dict(torch.load(weights))
    reference.eval()
    embedder = backbones.Embedder("resnet18", backbones.state_dict("resnet18", str(weights)))
    files = sorted(folder.rglob("*.png"))[:3]
    pictures = [Image.open(f).convert("RGB") for f in files]
    got = embedder.images(pictures)
    batch = torch.stack([torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()(p) for p in pictures])
    with torch.no_grad():
        body = torch.nn.Sequential(*list(reference.children())[:-1])   # everything before fc
        expected = body(batch).flatten(1).numpy()
    assert got.shape == (3, 512)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(got[0], got[1])   # different images, different embeddings


def test_published_weights_are_never_downloaded_unasked(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(Exception) as caught:
        backbones.state_dict("resnet18")
    assert "--download" in str(caught.value) and str(tmp_path / "hub") in str(caught.value)
    assert not (tmp_path / "hub").exists()


def test_actor_embeddings_equal_the_in_process_ones(ray_local, weights, folder, tmp_path):
    out = tmp_path / "emb"
    result = embed(f"images:{folder}", str(out), "resnet18", weights=str(weights), actors=2, shard_rows=5,
                   batch_size=4, log=lambda line: None)
    assert result.rows == 12 and sorted(p.name for p in out.glob("part-*")) == [
        "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    pool = read_parquet(out)
    source, paths = images.read_folder(str(folder))
    assert pool.shape == (512,) and pool.classes == 2
    np.testing.assert_array_equal(pool.ids, np.sort(source.ids))
    np.testing.assert_array_equal(pool.labels(pool.rows(source.ids)), source.labels(np.arange(len(source))))
    assert (source.y == UNLABELED).sum() == 8   # 2 seeds a class, the rest loose: null y in the pool
    embedder = backbones.Embedder("resnet18", backbones.state_dict("resnet18", str(weights)))
    expected = embedder.images([Image.open(p) for p in paths])
    np.testing.assert_allclose(pool.features(pool.rows(source.ids)), expected, rtol=1e-4, atol=1e-4)

    half = tmp_path / "emb16"
    embed(f"images:{folder}", str(half), "resnet18", weights=str(weights), dtype="float16", shard_rows=6,
          log=lambda line: None)
    assert pq.read_schema(next(half.glob("part-*"))).field("x").type.value_type == pa.float16()
    np.testing.assert_allclose(read_parquet(half).features(np.arange(12)), pool.features(np.arange(12)),
                               rtol=1e-2, atol=1e-2)


def test_a_killed_embed_resumes_to_the_files_of_an_uninterrupted_one(ray_local, weights, tmp_path):
    source = digit_folder(tmp_path / "digits", 20)
    command = [sys.executable, "-m", "autoal.cli", "embed", f"images:{source}", None, "--weights", str(weights),
               "--shard-rows", "2", "--batch-size", "2"]
    killed = tmp_path / "killed"
    env = dict(ENV, RAY_ADDRESS=ray_local.get_runtime_context().gcs_address)   # no Ray start per command
    run = subprocess.Popen([*command[:5], str(killed), *command[6:]], env=env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not list(killed.glob("part-*")) and run.poll() is None:
            time.sleep(0.02)
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    deadline = time.monotonic() + 60   # the killed driver's actors, in the session's Ray, end with it
    while our_worker_pids("ShardEmbedder") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not our_worker_pids("ShardEmbedder"), "the killed embed's actors outlived it"
    written = len(list(killed.glob("part-*")))
    assert 1 <= written < 10, written   # killed mid-embed
    resumed = subprocess.run([*command[:5], str(killed), *command[6:]], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming: {written} of 10 shards" in resumed.stdout
    clean = tmp_path / "clean"
    embed(f"images:{source}", str(clean), "resnet18", weights=str(weights), shard_rows=2, batch_size=2,
          log=lambda line: None)
    names = sorted(p.name for p in clean.glob("part-*"))
    assert sorted(p.name for p in killed.iterdir() if not p.name.startswith("_")) == names and len(names) == 10
    for name in names:
        assert pq.read_table(killed / name).equals(pq.read_table(clean / name)), name


@pytest.mark.parametrize("args, message", [
    (["--backbone", "resnet999"], "unknown backbone 'resnet999'; known: resnet18, resnet50"),
    (["--backbone", "resnet50"], "the weights are not a resnet50 state dict in torchvision's format"),
])
def test_bad_backbones_are_one_error(capsys, weights, folder, tmp_path, args, message):
    test_cli.fails(capsys, ["embed", f"images:{folder}", str(tmp_path / "out"), "--weights", str(weights), *args],
                   message)
    assert not (tmp_path / "out").exists()


def test_an_unreadable_image_is_one_error(ray_local, capsys, weights, tmp_path):
    source = digit_folder(tmp_path / "digits", 6)
    (source / "broken.png").write_bytes(b"not a png")
    err = test_cli.fails(capsys, ["embed", f"images:{source}", str(tmp_path / "out"), "--weights", str(weights)],
                         "broken.png is not a readable image")
    assert len(err.strip().splitlines()) == 1 and err.startswith("autoal: error:")


def test_a_folder_without_class_folders_is_embedded_under_the_classes_named(ray_local, capsys, weights, tmp_path):
    source = digit_folder(tmp_path / "loose", 6, seeds=0)
    test_cli.fails(capsys, ["embed", f"images:{source}", str(tmp_path / "out"), "--weights", str(weights)],
                   "has 0 class folders; a pool needs at least 2 classes")
    assert cli.main(["embed", f"images:{source}", str(tmp_path / "out"), "--weights", str(weights),
                     "--classes", "zero,one"]) == 0
    pool = read_parquet(tmp_path / "out")
    assert pool.classes == 2 and len(pool) == 6 and (pool.y == UNLABELED).all()


def test_cross_validation_learns_in_one_run():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 30)
    x = (rng.normal(size=(60, 16)) + 3 * y[:, None]).astype(np.float32)
    recipe = training.ModelRecipe("mlp", (16,), 2, 0.3)
    folds = [(np.setdiff1d(np.arange(60), held), held) for held in np.array_split(rng.permutation(60), 3)]
    options = dict(seed=0, epochs=5, lr=1e-3, weight_decay=0.0, batch_size=16, min_steps=50)
    learned = training.cross_validate(recipe, (x, y), folds, **options)
    shuffled = training.cross_validate(recipe, (x, rng.permutation(y)), folds, **options)
    assert learned >= 0.9 and shuffled <= 0.75, (learned, shuffled)


def test_label_rounds_train_a_head_on_the_embeddings(ray_local, weights, tmp_path, monkeypatch, capsys):
    """An init killed while it embeds is finished by the same command (not by another one), and
    every `next` then trains a head on the embeddings."""
    source = digit_folder(tmp_path / "digits", 20, seeds=3)
    (tmp_path / "config.yaml").write_text("epochs: 5\nmin_steps: 40\nactors: 0\nmc_samples: 3\n")
    project = tmp_path / "lab"
    init = ["label", "init", str(project), "--pool", f"images:{source}", "--classes", "c0,c1",
            "--config", str(tmp_path / "config.yaml"), "--embed", "resnet18", "--weights", str(weights)]

    def killed(*args):
        raise KeyboardInterrupt
    with monkeypatch.context() as patched:
        patched.setattr("autoal.labeling.project.embed_project", killed)
        with pytest.raises(KeyboardInterrupt):
            LabelProject.create(project, f"images:{source}", "c0,c1", config_path=str(tmp_path / "config.yaml"),
                                embed="resnet18", weights=str(weights))
    assert not (project / "project.yaml").exists() and (project / "init.yaml").exists()
    assert cli.main([*init[:6], "c1,c0", *init[7:]]) == 2
    assert "other arguments that did not finish" in capsys.readouterr().err
    assert cli.main(init) == 0
    assert (project / "project.yaml").exists() and not (project / "init.yaml").exists()
    assert cli.main(init) == 2   # a finished project is not initialised again
    assert cli.main(["label", "next", str(project), "--batch", "4"]) == 0
    with LabelProject.open(project) as opened:
        assert opened.model_recipe.name == "mlp" and opened.pool.shape == (512,)
        results = opened.store.results
    assert len(results) == 1 and results["accuracy_estimated"].all() and results["accuracy"].notna().all()
    assert (project / "queries" / "round-001.html").exists() and (project / "embeddings" / "pool").is_dir()


def test_image_files_added_after_init_are_embedded_once(ray_local, weights, tmp_path, capsys):
    source = digit_folder(tmp_path / "digits", 16, seeds=3)
    project = tmp_path / "lab"
    assert cli.main(["label", "init", str(project), "--pool", f"images:{source}", "--classes", "c0,c1",
                     "--embed", "resnet18", "--weights", str(weights)]) == 0
    new = sorted(digit_folder(tmp_path / "more", 20, seeds=0).glob("*.png"))[16:]
    for path in new:
        path.rename(source / path.name)
    with LabelProject.open(project) as opened:
        assert len(opened.pool) == 20
        rows = opened.pool.rows(np.array([images.stable_id(path.name) for path in new]))
        features = opened.pool.features(rows)
    assert "embedding 4 image files added" in capsys.readouterr().out
    embedder = backbones.Embedder("resnet18", backbones.state_dict("resnet18", str(weights)))
    np.testing.assert_allclose(features, embedder.images([Image.open(path) for path in sorted(
        source / path.name for path in new)]), rtol=1e-4, atol=1e-4)
    with LabelProject.open(project) as opened:   # kept: not embedded again
        np.testing.assert_array_equal(opened.pool.features(rows), features)
    assert "embedding" not in capsys.readouterr().out
    assert len(list((project / "embeddings" / "pool-added").glob("added-*.parquet"))) == 1


def test_a_parquet_pool_of_gray_images_embeds_row_group_by_row_group(ray_local, weights, tmp_path):
    from autoal.data.pool import from_arrays
    from autoal.data.parquet import write_parquet

    rng = np.random.default_rng(0)
    x = rng.random((8, 1, 12, 12), np.float32)
    write_parquet(from_arrays("gray", x[:6], np.arange(6) % 2, x[6:], [0, 1], classes=2), tmp_path / "pool")
    embed(f"parquet:{tmp_path / 'pool'}", str(tmp_path / "emb"), "resnet18", weights=str(weights),
          log=lambda line: None)
    pool = read_parquet(tmp_path / "emb")
    assert list(pool.split) == ["train"] * 6 + ["test"] * 2 and list(pool.labels(np.arange(8))) == [0, 1] * 4
    embedder = backbones.Embedder("resnet18", backbones.state_dict("resnet18", str(weights)))
    np.testing.assert_allclose(pool.features(np.arange(8)), embedder.arrays(np.repeat(x, 3, axis=1)),
                               rtol=1e-4, atol=1e-4)
