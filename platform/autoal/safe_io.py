"""Reading and writing files in directories that others may reach: the one bounded reader, the
one YAML loader, the one writer, the one symlink rule and the one echo of user data.

A config, sweep plan or answers file is the user's, but it may be a FIFO, a device or a YAML alias
bomb: `read_bytes` refuses what is not a regular file (stat after a non-blocking open, so a
FIFO cannot block it) and anything over its size bound; `load_yaml` refuses duplicate keys,
deep nesting and alias expansion beyond a bound before anything walks the value. Files autoal
writes go to a temporary file created with O_EXCL | O_NOFOLLOW and renamed over the target,
so a symlink planted in the target's place is replaced, never written through. Pools read
from a folder follow a link only to a file inside that folder. Messages echo user data through
`shown`, which bounds it however large or deep the value is.
"""
from __future__ import annotations

import os
import reprlib
import secrets
import stat
from pathlib import Path
from typing import Callable

import yaml

from autoal.errors import AutoALError
from autoal.permissions import umask

CONFIG_BYTES = 1 << 20      # configs, sweep plans, project files: far above any real one
MAX_NODES = 100_000         # YAML nodes once aliases are expanded (a billion-laughs value has 10^9)
MAX_DEPTH = 64              # YAML nesting
MESSAGE_CHARS = 300         # the longest error line autoal prints

_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxtuple = 60, 60, 6, 6
_REPR.maxdict, _REPR.maxset, _REPR.maxlevel, _REPR.maxlong = 4, 6, 3, 40


def clip(text: str, limit: int = 80) -> str:
    """`text` in at most `limit` characters: its start and its end, '...' where the middle was cut
    (a message states the problem first and the remedy last; long paths sit in between)."""
    if len(text) <= limit:
        return text
    tail = (limit - 3) // 3
    return text[:limit - 3 - tail] + "..." + text[len(text) - tail:]


def shown(value, limit: int = 80) -> str:
    """`repr(value)` bounded in size and cost (reprlib walks at most a few levels and items)."""
    return clip(_REPR.repr(value), limit)


def one_line(message, limit: int = MESSAGE_CHARS) -> str:
    """A message as one line of at most `limit` characters."""
    text = str(message)
    if len(text) > 100 * limit:
        text = text[:50 * limit] + " " + text[-50 * limit:]
    return clip(" ".join(text.split()), limit)


# --- reading -------------------------------------------------------------------

def read_bytes(path: str | os.PathLike, limit: int, what: str, follow: bool = True) -> bytes:
    """The bytes of the regular file `path`, at most `limit` of them; else one AutoALError. With
    `follow` false a symlink at `path` is refused (files autoal reads back from its own directories)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == 40 and not follow:   # ELOOP: O_NOFOLLOW met a symlink
            raise AutoALError(f"{what} {path} is a symbolic link; autoal reads its own files only "
                              "as regular files (remove the link)") from None
        raise AutoALError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file (a FIFO, socket or device)"
            raise AutoALError(f"cannot read {what} {path}: it is {kind}")
        if info.st_size > limit:
            raise AutoALError(f"{what} {path} is {info.st_size:,} bytes, more than the {limit:,} allowed")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise AutoALError(f"{what} {path} holds more than the {limit:,} bytes allowed")
    return data


def read_text(path: str | os.PathLike, limit: int, what: str, follow: bool = True) -> str:
    try:
        return read_bytes(path, limit, what, follow).decode("utf-8")
    except UnicodeDecodeError:
        raise AutoALError(f"{what} {path} is not a UTF-8 text file") from None


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader that refuses duplicate keys, nesting deeper than MAX_DEPTH and values
    of more than MAX_NODES nodes once aliases are expanded (counted on the node graph, shared
    nodes once per use, without building anything)."""

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _expanded_size(node, {}, 0)
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    if key_node.value in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key {shown(key_node.value, 40)}", key_node.start_mark)
                    seen.add(key_node.value)
        return super().construct_mapping(node, deep)


def _expanded_size(node, sizes: dict, depth: int) -> int:
    if depth > MAX_DEPTH:
        raise yaml.composer.ComposerError(None, None, f"nesting deeper than {MAX_DEPTH} levels", node.start_mark)
    if id(node) in sizes:
        return sizes[id(node)]
    sizes[id(node)] = 1   # a node reached again while it is being counted (a recursive alias) counts once
    children = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                else node.value if isinstance(node, yaml.SequenceNode) else [])
    size = 1 + sum(_expanded_size(child, sizes, depth + 1) for child in children)
    if size > MAX_NODES:
        raise yaml.composer.ComposerError(None, None, f"more than {MAX_NODES:,} values once its aliases are "
                                          "expanded (an alias bomb?)", node.start_mark)
    sizes[id(node)] = size
    return size


def load_yaml(text: str):
    """The value of a YAML document, read by BoundedLoader (raises yaml.YAMLError)."""
    try:
        return yaml.load(text, Loader=BoundedLoader)
    except RecursionError:   # PyYAML composes nested nodes recursively
        raise yaml.YAMLError(f"nesting deeper than {MAX_DEPTH} levels") from None


# --- writing -------------------------------------------------------------------

def atomic_write(path: Path, data: bytes, journal: Callable[[Path], None] | None = None) -> None:
    """Write `data` to `path` as git writes a file: to a new temporary file beside it (O_EXCL,
    O_NOFOLLOW), flushed, then renamed over `path` (which replaces a symlink there, never
    follows it). `journal` is told the temporary file's name before it is created."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    if journal is not None:
        journal(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:  # fsync and write do not say which file
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise


def own_dir(root: Path, *parts: str) -> Path:
    """`root/parts...`, made if absent, refusing a symlink at any part: a link planted there would
    send autoal's writes outside `root`."""
    path = Path(root)
    for part in parts:
        path = path / part
        if path.is_symlink():
            raise AutoALError(f"{path} is a symbolic link; autoal writes only into directories it made "
                              "(remove the link)")
        path.mkdir(exist_ok=True)
    return path


def private_dir(path: Path) -> Path:
    """A directory only this user may enter, in a place others can write (/tmp): made 0700 if
    absent, refused if it is a link, someone else's, or open to others (it could be planted)."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise AutoALError(f"{path} is not a private directory of this user (a link, another user's, or open "
                          "to others); remove it or set TMPDIR elsewhere")
    return path


# --- the symlink rule of pool folders ----------------------------------------------

def folder_files(root: Path, what: str) -> list[Path]:
    """Every file under the folder `root`, sorted, hidden ones (a name starting with '.') left out.
    A symlink is followed only when it points to a file inside `root`; a link to anything outside
    it, to a directory, or that is broken or loops is refused with one error naming it."""
    root = Path(root).resolve()
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in sorted(dirs + [n for n in names if not n.startswith(".")]):
            path = Path(folder) / name
            if path.is_symlink():
                inside = path.relative_to(root)
                try:
                    target = path.resolve(strict=True)
                except (OSError, RuntimeError):
                    raise AutoALError(f"{what}: {inside} is a broken or looping symbolic link; remove it") from None
                if not target.is_relative_to(root) or target.is_dir():
                    raise AutoALError(f"{what}: {inside} is a symbolic link to "
                                      f"{'a directory' if target.is_dir() else 'a file outside the folder'}; "
                                      "autoal follows links only to files inside it (copy the file in instead)")
                files.append(path)
            elif name in names:
                files.append(path)
    return sorted(files)
