"""Pool sources: a registry from a dataset reference `name[:arg]` to a loader returning a Pool.

References: `digits`, `cifar10`, `cifar100`, `svhn`, `medmnist:<flag>[@<size>]`,
`parquet:<dir>`, `images:<dir>[@<size>]`, `synthetic[:<n>]`. Every problem with the user's data (missing
or damaged files, bad references) becomes an AutoALError naming the file or the
valid options. Heavy libraries (torchvision, medmnist, scipy) are imported
inside the loaders that need them, so listing sources stays instant.

Image pools keep row order as ids: training rows first (MedMNIST: train then
val), then test; pixels are float32 in [0, 1], channels first.
"""
from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from autoal.data.sources import parse_file, split_ref
from autoal.errors import AutoALError
from autoal.safe_io import shown
from autoal.data.pool import Pool, from_arrays
from autoal.data.parquet import read_parquet, write_parquet

Loader = Callable[[str | None, Path, bool], Pool]


@dataclass(frozen=True)
class _Source:
    summary: str
    load: Loader


_SOURCES: dict[str, _Source] = {}


def _source(name: str, summary: str) -> Callable[[Loader], Loader]:
    def register(fn: Loader) -> Loader:
        _SOURCES[name] = _Source(summary, fn)
        return fn
    return register


def sources() -> list[tuple[str, str]]:
    """(name, one-line description) of every source, for `autoal datasets`."""
    return [(name, src.summary) for name, src in _SOURCES.items()]


def load(ref: str, data_root: str | Path, download: bool = False) -> Pool:
    """The pool named by `ref`; files live under `data_root`, fetched there only if `download`."""
    name, arg = split_ref(ref)
    src = _SOURCES.get(name.lower())
    if src is None:
        raise AutoALError(f"unknown data source {shown(name)} in {shown(ref)}; known sources: {', '.join(_SOURCES)}")
    root = Path(data_root).expanduser()
    if root.exists() and not root.is_dir():
        raise AutoALError(f"data root {root} is a file; --data-root names the directory dataset files live in")
    return src.load(arg, root, download)


def prepare(ref: str, data_root: str | Path, out_dir: str | Path, download: bool = False, log=None) -> Path:
    """Convert a source once to Parquet shards (`autoal prepare`) sized for streaming, so cluster
    workers read it in parallel; `log` gets a progress line per shard."""
    return write_parquet(load(ref, data_root, download), out_dir, log=log)


# --- helpers -----------------------------------------------------------------

def _no_arg(name: str, arg: str | None) -> None:
    if arg is not None:
        raise AutoALError(f"data source {shown(name)} takes no argument; use '{name}', not '{name}:{arg}'")


def _check_labels(path: Path, key: str, labels: np.ndarray, n: int, classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise AutoALError(f"{path}: {key} has shape {labels.shape} and dtype {labels.dtype}; "
                          f"expected {n} integer labels (one per image)")
    bad = (labels < 0) | (labels >= classes)
    if bad.any():
        raise AutoALError(f"{path}: {key} has {int(bad.sum())} labels outside 0..{classes - 1} "
                          f"(e.g. {int(labels[bad][0])})")
    return labels.astype(np.int64)


def _image_pool(name: str, parts: list[tuple[str, np.ndarray, np.ndarray]], classes: int) -> Pool:
    """A pool from (split, uint8 NCHW images, labels) parts.

    Writes float32 straight into one preallocated array: no float64 temporaries
    and no concatenated copy, since a 224px MedMNIST pool is tens of GB as float32.
    """
    n = sum(len(images) for _, images, _ in parts)
    x = np.empty((n, *parts[0][1].shape[1:]), np.float32)
    start = 0
    for _, images, _ in parts:
        np.divide(images, np.float32(255), out=x[start:start + len(images)])
        start += len(images)
    y = np.concatenate([labels for _, _, labels in parts]).astype(np.int64)
    split = np.concatenate([np.full(len(images), s) for s, images, _ in parts])
    return Pool(name, np.arange(n, dtype=np.int64), x, y, split, classes)


def _download(name: str, root: Path, make: Callable[[], object]) -> None:
    """Run the library's own md5-verified download (torchvision / medmnist skip files already intact)."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        make()
    except (RuntimeError, OSError) as exc:  # URLError is an OSError; a bad md5 after download a RuntimeError
        raise AutoALError(f"downloading {name} into {root} failed: {exc}") from None


def _missing(name: str, paths: list[Path], hint: str) -> None:
    absent = [str(p) for p in paths if not p.is_file()]
    if absent:
        raise AutoALError(f"{name} not found: expected {', '.join(absent)}; "
                          f"pass --download to fetch it, or {hint}")


# --- sources -----------------------------------------------------------------

@_source("digits", "scikit-learn's bundled 8x8 digits: 1797 grayscale images, 10 classes, no download (default)")
def _digits(arg: str | None, root: Path, download: bool) -> Pool:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    _no_arg("digits", arg)
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).reshape(-1, 1, 8, 8)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return from_arrays("digits", x_train, y_train, x_test, y_test, classes=10)


class _BatchUnpickler(pickle.Unpickler):
    """Builds only what a CIFAR python batch holds: a dict of strings, lists and numpy arrays.
    A plain unpickler would call any function a planted file names (os.system, ...)."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
               *((f"numpy.{core}.multiarray", "_reconstruct") for core in ("core", "_core")),
               *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core"))}  # pickle protocol 5

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: a CIFAR batch holds only "
                                         "strings, lists and numpy arrays")
        return super().find_class(module, name)


def _read_pickle(path: Path) -> object:
    with open(path, "rb") as f:
        return _BatchUnpickler(f, encoding="latin1").load()  # batches pickled by Python 2, as torchvision reads


def _read_cifar_batch(path: Path, label_key: str, classes: int) -> tuple[np.ndarray, np.ndarray]:
    entry = parse_file(path, "CIFAR python batch", _read_pickle)
    if not isinstance(entry, dict):
        raise AutoALError(f"{path}: expected a pickled dict, found {type(entry).__name__}")
    # Python 2 str keys load as str; batches written by Python 3 code have bytes keys (b'data').
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    absent = [k for k in ("data", label_key) if k not in entry]
    if absent:
        raise AutoALError(f"{path}: CIFAR batch lacks {absent}; has {sorted(map(str, entry))}")
    data = np.asarray(entry["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise AutoALError(f"{path}: 'data' is {data.dtype} {data.shape}; expected uint8 (N, 3072)")
    return data.reshape(-1, 3, 32, 32), _check_labels(path, label_key, entry[label_key], len(data), classes)


def _cifar(name: str, tv_class: str, label_key: str, classes: int) -> Loader:
    """CIFAR from torchvision's python-batch layout.

    download=True runs torchvision's real, md5-checked download. Reading is our
    own mirror of torchvision's reader (same file names, taken from its class
    attributes), because torchvision's constructor md5-checks every file and so
    refuses anything but the official bytes: a subset, a re-export or a test
    fixture. Damaged files still fail here, by name.
    """
    def load_cifar(arg: str | None, root: Path, download: bool) -> Pool:
        import torchvision.datasets as tvd

        _no_arg(name, arg)
        cls = getattr(tvd, tv_class)
        if download:
            _download(name, root, lambda: cls(root=str(root), train=False, download=True))
        folder = root / cls.base_folder
        files = {"train": [folder / f for f, _ in cls.train_list], "test": [folder / f for f, _ in cls.test_list]}
        _missing(name, files["train"] + files["test"], f"extract {cls.filename} ({cls.url}) into {root}")
        parts = [(split, *_read_cifar_batch(p, label_key, classes)) for split, paths in files.items() for p in paths]
        return _image_pool(name, parts, classes)
    return load_cifar


_source("cifar10", "CIFAR-10 via torchvision: 60000 32x32 RGB images, 10 classes; <root>/cifar-10-batches-py")(
    _cifar("cifar10", "CIFAR10", "labels", 10))
_source("cifar100", "CIFAR-100 via torchvision: 60000 32x32 RGB images, 100 fine classes; <root>/cifar-100-python")(
    _cifar("cifar100", "CIFAR100", "fine_labels", 100))


def _read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import scipy.io

    mat = parse_file(path, "SVHN .mat file", scipy.io.loadmat)
    absent = [k for k in ("X", "y") if k not in mat]
    if absent:
        raise AutoALError(f"{path}: SVHN .mat file lacks {absent}")
    images = mat["X"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[:3] != (32, 32, 3):
        raise AutoALError(f"{path}: 'X' is {images.dtype} {images.shape}; expected uint8 (32, 32, 3, N)")
    labels = np.asarray(mat["y"]).astype(np.int64)
    labels[labels == 10] = 0  # SVHN labels digit 0 as 10, as torchvision remaps
    return images.transpose(3, 2, 0, 1), _check_labels(path, "y", labels, images.shape[3], 10)


@_source("svhn", "SVHN via torchvision: train + test 32x32 RGB digits, 10 classes; <root>/{train,test}_32x32.mat")
def _svhn(arg: str | None, root: Path, download: bool) -> Pool:
    """SVHN .mat files; torchvision downloads them, we read them (see `_cifar` for why)."""
    import torchvision.datasets as tvd

    _no_arg("svhn", arg)
    files = {split: root / tvd.SVHN.split_list[split][1] for split in ("train", "test")}
    if download:
        for split in files:
            _download("svhn", root, lambda: tvd.SVHN(root=str(root), split=split, download=True))
    _missing("svhn", list(files.values()), f"place train_32x32.mat and test_32x32.mat in {root}")
    return _image_pool("svhn", [(split, *_read_svhn(p)) for split, p in files.items()], 10)


_NPZ_KEYS = ("train_images", "train_labels", "val_images", "val_labels", "test_images", "test_labels")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not zipfile.is_zipfile(path):  # else np.load guesses "pickled data" and suggests allow_pickle
        raise ValueError("not a zip archive, which every .npz is")
    with np.load(path) as archive:
        return {k: archive[k] for k in archive.files if k in _NPZ_KEYS}


def _medmnist_flag(arg: str | None) -> tuple[str, int, type]:
    """(flag, size, medmnist class) for `<flag>[@<size>]`; only 2D single-label flags qualify."""
    import medmnist
    from medmnist.dataset import MedMNIST2D

    def is_2d(flag: str) -> bool:
        return issubclass(getattr(medmnist, medmnist.INFO[flag]["python_class"]), MedMNIST2D)

    supported = [f for f, info in medmnist.INFO.items() if is_2d(f) and "multi-label" not in info["task"]]
    flag, _, size_text = (arg or "").strip().lower().partition("@")
    if flag not in medmnist.INFO:
        raise AutoALError(f"medmnist needs a 2D flag, e.g. medmnist:pathmnist; got {shown(arg)}. "
                          f"Supported: {', '.join(supported)}")
    if not is_2d(flag):
        raise AutoALError(f"medmnist:{flag} is a 3D volume dataset; only 2D images are supported: "
                          f"{', '.join(supported)}")
    task = medmnist.INFO[flag]["task"]
    if "multi-label" in task:
        raise AutoALError(f"medmnist:{flag} is a {task} task; autoal needs one label per image. "
                          f"Supported: {', '.join(supported)}")
    cls = getattr(medmnist, medmnist.INFO[flag]["python_class"])
    if not size_text:
        return flag, 28, cls
    if not size_text.isdigit() or int(size_text) not in cls.available_sizes:
        raise AutoALError(f"medmnist:{flag}@{size_text}: size must be one of {cls.available_sizes}")
    return flag, int(size_text), cls


@_source("medmnist", "medmnist:<flag>[@28|64|128|224]: a 2D MedMNIST set, pool = train + val; "
                     "<root>/<flag>[_<size>].npz")
def _medmnist(arg: str | None, root: Path, download: bool) -> Pool:
    """MedMNIST npz read directly with numpy; the medmnist package only downloads.

    medmnist's dataset class would load the same arrays, but one split per
    instance and without checking shapes; reading the npz ourselves gives one
    pass and errors that name the file.
    """
    import medmnist

    flag, size, cls = _medmnist_flag(arg)
    info = medmnist.INFO[flag]
    path = root / (f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz")
    if not path.is_file() and download:
        _download(f"medmnist:{flag}", root,
                              lambda: cls(split="test", root=str(root), size=size, download=True))
    _missing(f"medmnist:{flag}", [path], f"place {path.name} from {info['url' if size == 28 else f'url_{size}']} "
                                         f"in {root}")
    arrays = parse_file(path, "MedMNIST .npz archive", _read_npz)
    absent = [k for k in _NPZ_KEYS if k not in arrays]
    if absent:
        raise AutoALError(f"{path}: MedMNIST archive lacks {absent}; expected keys {list(_NPZ_KEYS)}")
    channels, classes = info["n_channels"], len(info["label"])
    want = (size, size) if channels == 1 else (size, size, channels)
    parts = []
    for split, key in (("train", "train"), ("train", "val"), ("test", "test")):
        images = arrays[f"{key}_images"]
        if images.dtype != np.uint8 or images.shape[1:] != want:
            raise AutoALError(f"{path}: {key}_images is {images.dtype} {images.shape}; "
                              f"expected uint8 (N, {', '.join(map(str, want))}) for {flag} at size {size}")
        labels = _check_labels(path, f"{key}_labels", arrays[f"{key}_labels"], len(images), classes)
        nchw = images[:, None] if channels == 1 else images.transpose(0, 3, 1, 2)
        parts.append((split, nchw, labels))
    name = f"medmnist:{flag}" if size == 28 else f"medmnist:{flag}@{size}"
    return _image_pool(name, parts, classes)


@_source("parquet", "parquet:<dir or URI>: a pool in autoal's Parquet format (as `autoal prepare` writes it), "
                    "local, file://, s3://, gs://; its features stay in the files and stream")
def _parquet(arg: str | None, root: Path, download: bool) -> Pool:
    if not arg:
        raise AutoALError("parquet needs a directory or URI: parquet:<dir or URI>")
    return read_parquet(arg, lazy=True)


@_source("images", "images:<dir>[@<size>]: image files, in <dir>/<class>/ subfolders (labels) or loose "
                   "(unlabeled, for `autoal label`)")
def _images(arg: str | None, root: Path, download: bool) -> Pool:
    from autoal.data.images import read_folder

    return read_folder(arg)[0]


@_source("synthetic", "synthetic[:<n>]: n (default 2000) generated 16-d Gaussian-cluster vectors, 4 classes")
def _synthetic(arg: str | None, root: Path, download: bool) -> Pool:
    """Fixed-seed vectors for scale tests and vector models; overlapping clusters keep it learnable, not trivial."""
    from sklearn.datasets import make_classification
    from sklearn.model_selection import train_test_split

    n = 2000 if arg is None else (int(arg) if arg.strip().isdigit() else -1)
    if n < 20:
        raise AutoALError(f"synthetic:{arg}: n must be an integer of at least 20 (4 classes, 20% test)")
    x, y = make_classification(n_samples=n, n_features=16, n_informative=8, n_redundant=4, n_classes=4,
                               n_clusters_per_class=2, random_state=0)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return from_arrays("synthetic" if arg is None else f"synthetic:{n}", x_train, y_train, x_test, y_test, classes=4)
