"""File modes as `open()` and `mkdir()` give them: 0o666 / 0o777 less the umask.

Atomic writes go through `tempfile.mkstemp` / `mkdtemp`, which create 0600 /
0700 for safety; renamed into place as they are, results would be unreadable
by the other users and cluster nodes that a plain `open()` would let read them.
"""
from __future__ import annotations

import os


def umask() -> int:
    """The process umask, read without changing it (Linux), else by setting it back at once."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def as_created(path: str | os.PathLike, directory: bool = False) -> None:
    """Give `path` the mode a plain `open()` (or `mkdir()`) would have given it."""
    os.chmod(path, (0o777 if directory else 0o666) & ~umask())
