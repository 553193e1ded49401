"""Dataset loaders on small files in the real on-disk formats; no network."""
from __future__ import annotations

import json
import pickle
import urllib.error

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from autoal.data import datasets
from autoal.errors import AutoALError

RNG = np.random.default_rng(0)


# --- writers for the real formats ---------------------------------------------

def write_cifar(root, folder, files, label_key, classes, bytes_keys=False, n=4):
    """Python batches as torchvision expects: pickled dicts with uint8 'data' (N, 3072) and a label list."""
    d = root / folder
    d.mkdir(parents=True)
    written = {}
    for name in files:
        data = RNG.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = RNG.integers(0, classes, size=n).tolist()
        entry = {"batch_label": name, "data": data, label_key: labels, "filenames": [f"{i}.png" for i in range(n)]}
        if bytes_keys:
            entry = {k.encode(): v for k, v in entry.items()}
        (d / name).write_bytes(pickle.dumps(entry, protocol=2))
        written[name] = (data, labels)
    return written


CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


@pytest.fixture
def cifar10_root(tmp_path):
    written = write_cifar(tmp_path, "cifar-10-batches-py", CIFAR10_TRAIN + ["test_batch"], "labels", 10)
    meta = {"label_names": [f"c{i}" for i in range(10)], "num_cases_per_batch": 4, "num_vis": 3072}
    (tmp_path / "cifar-10-batches-py" / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return tmp_path, written


def write_medmnist(path, size=28, channels=1, classes=2, n=(6, 3, 4), drop=(), labels_hi=None):
    """A MedMNIST npz: uint8 images (N,H,W) or (N,H,W,3), labels (N,1)."""
    shape = (size, size) if channels == 1 else (size, size, channels)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        arrays[f"{split}_images"] = RNG.integers(0, 256, size=(count, *shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = RNG.integers(0, classes, size=(count, 1), dtype=np.uint8)
    if labels_hi is not None:
        arrays["val_labels"][1, 0] = labels_hi
    for key in drop:
        del arrays[key]
    np.savez_compressed(path, **arrays)
    return arrays


# --- registry and references ---------------------------------------------------

def test_sources_lists_every_loader_with_one_line():
    listed = dict(datasets.sources())
    assert set(listed) == {"digits", "cifar10", "cifar100", "svhn", "medmnist", "parquet", "images", "synthetic"}
    assert all(desc and "\n" not in desc for desc in listed.values())


@pytest.mark.parametrize("ref, needle", [
    ("imagenet", "known sources: digits, cifar10"),
    ("digits:extra", "takes no argument"),
    ("medmnist", "Supported: pathmnist, dermamnist"),
    ("medmnist:", "Supported: pathmnist"),
    ("medmnist:nosuchmnist", "Supported: pathmnist"),
    ("medmnist:organmnist3d", "3D volume"),
    ("medmnist:chestmnist", "multi-label"),
    ("medmnist:pathmnist@32", "[28, 64, 128, 224]"),
    ("medmnist:pathmnist@big", "[28, 64, 128, 224]"),
    ("parquet:", "needs a directory"),
    ("synthetic:abc", "at least 20"),
    ("synthetic:5", "at least 20"),
])
def test_bad_references_say_what_is_valid(tmp_path, ref, needle):
    with pytest.raises(AutoALError) as err:
        datasets.load(ref, tmp_path)
    assert needle in str(err.value)


# --- digits and synthetic --------------------------------------------------------

def test_digits_is_a_deterministic_stratified_image_pool(tmp_path):
    from sklearn.datasets import load_digits

    pool = datasets.load("digits", tmp_path)
    assert len(pool) == 1797 and pool.shape == (1, 8, 8) and pool.classes == 10
    assert pool.x.dtype == np.float32 and pool.x.min() == 0.0 and pool.x.max() == 1.0
    assert (pool.split == "train").sum() == 1437 and (pool.split == "test").sum() == 360
    np.testing.assert_array_equal(pool.ids, np.arange(1797))
    raw = load_digits()
    assert np.isclose(pool.x.sum() * 16, raw.data.sum())
    test_counts = np.bincount(pool.y[pool.split == "test"], minlength=10)
    assert test_counts.min() >= 35 and test_counts.max() <= 37  # ~20% of each ~180-sample class
    again = datasets.load("digits", tmp_path)
    np.testing.assert_array_equal(again.x, pool.x)
    np.testing.assert_array_equal(again.split, pool.split)


def test_synthetic_vectors_default_and_sized(tmp_path):
    pool = datasets.load("synthetic", tmp_path)
    assert len(pool) == 2000 and pool.shape == (16,) and pool.classes == 4 and not pool.is_image
    assert (pool.split == "test").sum() == 400
    assert np.bincount(pool.y).min() > 450
    np.testing.assert_array_equal(datasets.load("synthetic", tmp_path).x, pool.x)
    small = datasets.load("synthetic:100", tmp_path)
    assert len(small) == 100 and small.name == "synthetic:100"


# --- CIFAR / SVHN ------------------------------------------------------------------

def test_cifar10_python_batches(cifar10_root):
    root, written = cifar10_root
    pool = datasets.load("cifar10", root)
    assert len(pool) == 24 and pool.shape == (3, 32, 32) and pool.classes == 10
    assert (pool.split == "train").sum() == 20 and list(pool.split[20:]) == ["test"] * 4
    data, labels = written["data_batch_2"]
    row = 4 + 1  # second row of the second batch
    c, h, w = 2, 5, 7
    assert pool.x[row, c, h, w] == np.float32(data[1, c * 1024 + h * 32 + w]) / np.float32(255)
    assert pool.y[row] == labels[1]
    np.testing.assert_array_equal(pool.y[20:], written["test_batch"][1])


def test_cifar10_reader_agrees_with_torchvision(cifar10_root, monkeypatch):
    """torchvision reads our files once its md5 check is bypassed: same pixels, same labels."""
    import torchvision.datasets as tvd
    import torchvision.datasets.cifar as tv_cifar

    root, _ = cifar10_root
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    pool = datasets.load("cifar10", root)
    for split, train in (("train", True), ("test", False)):
        ref = tvd.CIFAR10(str(root), train=train)
        ours = pool.subset(split)
        np.testing.assert_array_equal(np.round(ours.x * 255).astype(np.uint8), ref.data.transpose(0, 3, 1, 2))
        np.testing.assert_array_equal(ours.y, ref.targets)


def test_cifar100_bytes_keys_and_fine_labels(tmp_path):
    written = write_cifar(tmp_path, "cifar-100-python", ["train", "test"], "fine_labels", 100, bytes_keys=True)
    pool = datasets.load("cifar100", tmp_path)
    assert pool.classes == 100 and len(pool) == 8
    np.testing.assert_array_equal(pool.y, written["train"][1] + written["test"][1])


def test_cifar_missing_file_names_path_and_download(cifar10_root):
    root, _ = cifar10_root
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(AutoALError) as err:
        datasets.load("cifar10", root)
    msg = str(err.value)
    assert str(root / "cifar-10-batches-py" / "data_batch_3") in msg and "--download" in msg
    assert "data_batch_1" not in msg


def test_cifar_corrupt_batch_is_named(cifar10_root):
    root, _ = cifar10_root
    bad = root / "cifar-10-batches-py" / "test_batch"
    bad.write_bytes(b"\x00garbage, not a pickle" * 10)
    with pytest.raises(AutoALError, match="test_batch is not a readable CIFAR python batch"):
        datasets.load("cifar10", root)


def test_cifar_labels_out_of_range_are_named(tmp_path):
    write_cifar(tmp_path, "cifar-10-batches-py", CIFAR10_TRAIN + ["test_batch"], "labels", 10)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_4"
    entry = pickle.loads(path.read_bytes())
    entry["labels"][0] = 10
    path.write_bytes(pickle.dumps(entry, protocol=2))
    with pytest.raises(AutoALError, match=r"data_batch_4: labels has 1 labels outside 0\.\.9"):
        datasets.load("cifar10", tmp_path)


def test_cifar_download_failure_is_a_user_error(tmp_path, monkeypatch):
    """download=True goes through torchvision's real download code; here the network is down."""
    import torchvision.datasets.cifar as tv_cifar

    def offline(url, *a, **k):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    with pytest.raises(AutoALError, match="downloading cifar10 into .* failed.*network unreachable"):
        datasets.load("cifar10", tmp_path, download=True)


def test_svhn_mat_files_agree_with_torchvision(tmp_path, monkeypatch):
    import scipy.io
    import torchvision.datasets as tvd
    import torchvision.datasets.svhn as tv_svhn

    for split, n in (("train", 5), ("test", 3)):
        y = np.array([[10], [1], [2], [9], [10]][:n], dtype=np.uint8)
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat",
                         {"X": RNG.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8), "y": y})
    pool = datasets.load("svhn", tmp_path)
    assert len(pool) == 8 and pool.shape == (3, 32, 32) and pool.classes == 10
    np.testing.assert_array_equal(pool.y, [0, 1, 2, 9, 0, 0, 1, 2])
    monkeypatch.setattr(tv_svhn, "check_integrity", lambda *a, **k: True)
    ref = tvd.SVHN(str(tmp_path), split="train")
    np.testing.assert_array_equal(np.round(pool.subset("train").x * 255).astype(np.uint8), ref.data)


def test_svhn_missing_and_corrupt(tmp_path):
    with pytest.raises(AutoALError, match="train_32x32.mat.*--download"):
        datasets.load("svhn", tmp_path)
    for split in ("train", "test"):
        (tmp_path / f"{split}_32x32.mat").write_bytes(b"not a matlab file at all" * 20)
    with pytest.raises(AutoALError, match="train_32x32.mat is not a readable SVHN .mat file"):
        datasets.load("svhn", tmp_path)


# --- MedMNIST --------------------------------------------------------------------------

@pytest.mark.parametrize("flag, size, channels, classes", [
    ("pneumoniamnist", 28, 1, 2),
    ("pathmnist", 28, 3, 9),
    ("pathmnist", 64, 3, 9),
])
def test_medmnist_npz(tmp_path, flag, size, channels, classes):
    filename = f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"
    arrays = write_medmnist(tmp_path / filename, size=size, channels=channels, classes=classes)
    ref = f"medmnist:{flag}" if size == 28 else f"medmnist:{flag}@{size}"
    pool = datasets.load(ref, tmp_path)
    assert pool.name == ref and pool.classes == classes and pool.shape == (channels, size, size)
    assert list(pool.split) == ["train"] * 9 + ["test"] * 4  # train + val form the pool's training rows
    np.testing.assert_array_equal(pool.y, np.concatenate(
        [arrays[f"{s}_labels"][:, 0] for s in ("train", "val", "test")]))
    val0 = arrays["val_images"][0]
    hwc = val0[..., None] if channels == 1 else val0
    np.testing.assert_array_equal(pool.x[6], hwc.transpose(2, 0, 1).astype(np.float32) / np.float32(255))


def test_medmnist_missing_file_names_expected_path(tmp_path):
    write_medmnist(tmp_path / "pathmnist.npz", channels=3, classes=9)  # size 28 present, 64 asked
    with pytest.raises(AutoALError) as err:
        datasets.load("medmnist:pathmnist@64", tmp_path)
    assert str(tmp_path / "pathmnist_64.npz") in str(err.value) and "--download" in str(err.value)


def test_medmnist_download_uses_medmnist_class(tmp_path, monkeypatch):
    """download=True runs medmnist's own download (URL, md5, file name); the transfer itself is faked."""
    import medmnist
    import torchvision.datasets.utils as tv_utils

    calls = []

    def fake_download_url(url, root, filename, md5):
        calls.append((url, filename, md5))
        write_medmnist(f"{root}/{filename}", size=64)

    monkeypatch.setattr(tv_utils, "download_url", fake_download_url)
    root = tmp_path / "fresh"
    pool = datasets.load("medmnist:pneumoniamnist@64", root, download=True)
    info = medmnist.INFO["pneumoniamnist"]
    assert calls == [(info["url_64"], "pneumoniamnist_64.npz", info["MD5_64"])]
    assert pool.shape == (1, 64, 64) and len(pool) == 13


def test_medmnist_download_failure_is_a_user_error(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    def offline(*a, **k):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(tv_utils, "download_url", offline)
    with pytest.raises(AutoALError, match="downloading medmnist:pneumoniamnist .* failed"):
        datasets.load("medmnist:pneumoniamnist", tmp_path, download=True)


def test_medmnist_garbage_npz_is_named(tmp_path):
    (tmp_path / "pneumoniamnist.npz").write_bytes(b"garbage bytes, no zip here" * 50)
    with pytest.raises(AutoALError, match="pneumoniamnist.npz is not a readable MedMNIST .npz archive"):
        datasets.load("medmnist:pneumoniamnist", tmp_path)


def test_medmnist_damaged_member_is_named(tmp_path):
    """A valid zip directory with zeroed member bytes fails inside np.load, not at the zip check."""
    path = tmp_path / "pneumoniamnist.npz"
    write_medmnist(path)
    data = bytearray(path.read_bytes())
    data[500:900] = bytes(400)
    path.write_bytes(bytes(data))
    with pytest.raises(AutoALError, match=r"pneumoniamnist.npz is not a readable MedMNIST .npz archive \(BadZipFile"):
        datasets.load("medmnist:pneumoniamnist", tmp_path)


def test_medmnist_missing_key_is_named(tmp_path):
    write_medmnist(tmp_path / "pneumoniamnist.npz", drop=("val_labels",))
    with pytest.raises(AutoALError, match=r"pneumoniamnist.npz: MedMNIST archive lacks \['val_labels'\]"):
        datasets.load("medmnist:pneumoniamnist", tmp_path)


def test_medmnist_labels_out_of_range(tmp_path):
    write_medmnist(tmp_path / "pneumoniamnist.npz", labels_hi=2)
    with pytest.raises(AutoALError, match=r"pneumoniamnist.npz: val_labels has 1 labels outside 0\.\.1 \(e\.g\. 2\)"):
        datasets.load("medmnist:pneumoniamnist", tmp_path)


def test_medmnist_wrong_image_shape(tmp_path):
    write_medmnist(tmp_path / "pathmnist_64.npz", size=28, channels=3, classes=9)  # 28px data under the 64 name
    with pytest.raises(AutoALError, match=r"train_images is uint8 \(6, 28, 28, 3\); expected uint8 \(N, 64, 64, 3\)"):
        datasets.load("medmnist:pathmnist@64", tmp_path)


# --- Parquet ------------------------------------------------------------------------------

def test_prepare_then_parquet_round_trip(tmp_path):
    write_medmnist(tmp_path / "pneumoniamnist.npz")
    original = datasets.load("medmnist:pneumoniamnist", tmp_path)
    out = datasets.prepare("medmnist:pneumoniamnist", tmp_path, tmp_path / "pool")
    assert sorted(p.name for p in out.iterdir()) == ["part-00000.parquet"]
    pool = datasets.load(f"parquet:{out}", tmp_path)
    assert (pool.name, pool.classes, pool.shape) == ("medmnist:pneumoniamnist", 2, (1, 28, 28))
    for field in ("ids", "x", "y", "split"):
        np.testing.assert_array_equal(getattr(pool, field), getattr(original, field))


def test_prepare_reshards_a_parquet_pool_streaming_it(tmp_path, monkeypatch):
    """Parquet to Parquet (re-sharding a pool written with other shard sizes) never reads the
    source's features whole; unknown labels stay null, and every row comes across."""
    from autoal.data import lazy, parquet

    n, x = 3000, RNG.random((3000, 5)).astype(np.float32)
    split = np.where(np.arange(n) < 2500, "train", "test")
    y = np.where((np.arange(n) % 10 == 0) & (split == "train"), -2, np.arange(n) % 3)
    ids = RNG.permutation(10**6)[:n].astype(np.int64)
    src = parquet.write_shards(((ids[s:s + 700], x[s:s + 700], y[s:s + 700], split[s:s + 700])
                                for s in range(0, n, 700)), tmp_path / "src", "src", (5,), 3)
    monkeypatch.setattr(parquet, "shard_rows", lambda width: 1000)
    monkeypatch.setattr(lazy.LazyFeatures, "__array__", lambda *a, **k: pytest.fail("read whole"))
    out = datasets.prepare(f"parquet:{src}", tmp_path, tmp_path / "dst")
    assert sorted(p.name for p in out.iterdir()) == [f"part-0000{i}.parquet" for i in range(3)]
    monkeypatch.undo()
    before, after = datasets.load(f"parquet:{src}", tmp_path), datasets.load(f"parquet:{out}", tmp_path)
    for field in ("ids", "y", "split"):
        np.testing.assert_array_equal(getattr(after, field), getattr(before, field))
    np.testing.assert_array_equal(np.asarray(after.x), np.asarray(before.x))
    assert (after.y == -2).sum() == 250


def test_parquet_pool_with_nan_features_is_rejected(tmp_path):
    d = tmp_path / "nanpool"
    d.mkdir()
    x = RNG.random((4, 3)).astype(np.float32)
    x[2, 1] = np.nan
    schema = pa.schema([("id", pa.int64()), ("x", pa.list_(pa.float32())), ("y", pa.int64()), ("split", pa.string())],
                       metadata={b"shape": json.dumps([3]).encode(), b"classes": b"2", b"name": b"nanpool"})
    table = pa.table([pa.array(np.arange(4)), pa.array(list(x), type=pa.list_(pa.float32())),
                      pa.array([0, 1, 0, 1]), pa.array(["train", "train", "test", "test"])], schema=schema)
    pq.write_table(table, d / "part-00000.parquet")
    with pytest.raises(AutoALError, match="1 samples have NaN or infinite features"):
        datasets.load(f"parquet:{d}", tmp_path)


def test_parquet_missing_directory(tmp_path):
    with pytest.raises(AutoALError, match="does not exist"):
        datasets.load(f"parquet:{tmp_path / 'nowhere'}", tmp_path)
