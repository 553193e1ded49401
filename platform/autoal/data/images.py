"""A folder of image files as a pool: `images:<dir>[@<size>]`.

Layouts: image files directly in <dir> are unlabeled; files under
`<dir>/<class>/` carry that class as a known (seed) label. Each image's path
relative to <dir> is its name, and its id is a hash of that path, so ids stay
stable when files are added or removed. Hidden files and folders are left out; a
symbolic link is read only when it points to a file inside <dir> (safe_io.folder_files),
any other link is refused, so a pool never reads a file outside its folder. Images are decoded with PIL (which
torchvision brings), centre-cropped to a square and resized to <size> pixels
(default 32); the pool is grayscale when every image is, else RGB.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from autoal.data.sources import parse_file
from autoal.errors import AutoALError
from autoal.safe_io import folder_files, shown
from autoal.data.pool import UNLABELED, Pool

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
DEFAULT_SIZE = 32


def stable_id(relative: str) -> int:
    """A non-negative int64 from a relative path: the same file always gets the same id."""
    return int.from_bytes(hashlib.blake2b(relative.encode(), digest_size=8).digest(), "big") >> 1


def parse_folder(arg: str | None) -> tuple[Path, int]:
    """(folder, size) from `<dir>[@<size>]`."""
    if not arg:
        raise AutoALError("images needs a folder: images:<dir> or images:<dir>@<size>")
    folder, at, size = arg.rpartition("@")
    if not at or not size.isdigit():
        folder, size = arg, str(DEFAULT_SIZE)
    if int(size) < 8:
        raise AutoALError(f"images:{arg}: the image size must be at least 8 pixels")
    return Path(folder).expanduser(), int(size)


def image_files(root: Path, classes: tuple[str, ...] | None) -> list[tuple[str, str | None]]:
    """(path relative to root, class name or None) of every image, sorted by path."""
    if not root.is_dir():
        raise AutoALError(f"image folder {root} does not exist or is not a folder")
    found = []
    for path in folder_files(root, f"images:{root}"):
        relative = path.relative_to(root.resolve())
        if path.suffix.lower() not in EXTENSIONS:
            continue
        label = relative.parts[0] if len(relative.parts) > 1 else None
        if label is not None and classes is not None and label not in classes:
            raise AutoALError(f"{root / label} is a class folder, but {shown(label)} is not one of the classes "
                              f"{', '.join(classes)}; rename or move it")
        found.append((relative.as_posix(), label))
    if not found:
        raise AutoALError(f"image folder {root} holds no image files ({', '.join(sorted(EXTENSIONS))})")
    return found


def _mode(path: Path) -> str:
    from PIL import Image

    with Image.open(path) as image:  # reads the header only
        return image.mode


def _decoder(mode: str, size: int):
    def decode(path: Path) -> np.ndarray:
        from PIL import Image, ImageOps

        with Image.open(path) as image:
            image = ImageOps.fit(image.convert(mode), (size, size), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.float32) / 255
        return pixels[None] if mode == "L" else pixels.transpose(2, 0, 1)
    return decode


def read_folder(arg: str | None, classes: tuple[str, ...] | None = None) -> tuple[Pool, np.ndarray]:
    """The pool of `images:<arg>` and each sample's file path.

    `classes` names the classes (a class folder outside them is an error);
    without it the class folders, sorted, are the classes. Every sample is in
    the train split; an undecodable file is an error naming it."""
    root, size = parse_folder(arg)
    names, paths, ids, y = index_folder(root, classes)
    gray = all(parse_file(p, "image", _mode) in GRAY_MODES for p in paths)
    decode = _decoder("L" if gray else "RGB", size)
    x = np.stack([parse_file(p, "image", decode) for p in paths])
    pool = Pool(f"images:{root.name}", ids, x, y, np.full(len(paths), "train"), len(names))
    return pool, np.array([str(p) for p in paths])


def index_folder(root: Path, classes: tuple[str, ...] | None) -> tuple[tuple[str, ...], list[Path], np.ndarray,
                                                                       np.ndarray]:
    """(class names, file paths, ids, labels) of the image files under root, sorted by path, nothing
    decoded: a loose file's label is UNLABELED."""
    files = image_files(root, classes)
    names = classes if classes is not None else tuple(sorted({c for _, c in files if c is not None}))
    index = {name: i for i, name in enumerate(names)}
    y = np.array([UNLABELED if c is None else index[c] for _, c in files], dtype=np.int64)
    ids = np.array([stable_id(relative) for relative, _ in files], dtype=np.int64)
    return names, [root / relative for relative, _ in files], ids, y
