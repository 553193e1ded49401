"""An exclusive lock on a directory autoal writes: an experiment, a sweep trial, a sweep.

Like git's index.lock or PostgreSQL's postmaster.pid, it refuses a second
writer: two runs on one `--out` would each rewrite the ledger from their own
copy, and the last writer would erase the other's rounds. The lock is `flock`
on `<dir>/.autoal.runs.lock`, so the kernel drops it when its holder exits in any
way, kill -9 included: a killed run never blocks the next one. While held, the
file names the holder (host, pid, start time) for the refusal message; a clean
release empties it, so a non-empty file found unlocked is the trace of a run
that died, which the next holder reports as it takes over. flock works on
local filesystems and on NFSv4, where Linux maps it to byte-range locks.
The lock file is opened with O_NOFOLLOW and must be a regular file: a symlink
planted in its place is refused, so taking the lock never truncates the file a
link points to.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import stat
import time
from pathlib import Path

from autoal.errors import AutoALError
from autoal.safe_io import read_bytes

LOCK_FILE = ".autoal.runs.lock"


class DirLock:
    """The lock of one directory; `acquire` or refuse, `release` when done (also a context manager)."""

    def __init__(self, root: str | os.PathLike):
        self.path = Path(root) / LOCK_FILE
        self.fd: int | None = None
        self.stale: dict | None = None   # the holder of a lock that was found abandoned and taken over

    def acquire(self) -> "DirLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            if exc.errno != 40:   # ELOOP: a symlink in the lock file's place
                raise
            raise AutoALError(f"{self.path} is a symbolic link; autoal never writes through one. Remove "
                              "the link (someone else may have planted it)") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise AutoALError(f"{self.path} is not a regular file; remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AutoALError(f"{self.path.parent} is in use by another autoal process ({describe(self.holder())}); "
                              "wait for it to end, or give each process its own --out") from None
        self.stale = _parse(os.pread(fd, 4096, 0))
        me = {"host": socket.gethostname(), "pid": os.getpid(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self.fd = fd
        return self

    def holder(self) -> dict | None:
        try:
            return _parse(read_bytes(self.path, 4096, "lock file", follow=False))
        except AutoALError:
            return None

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            os.ftruncate(fd, 0)
        except OSError:  # a full or read-only disk must not keep the lock: closing releases it
            pass
        os.close(fd)

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def _parse(data: bytes) -> dict | None:
    try:
        holder = json.loads(data.decode())
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def describe(holder: dict | None) -> str:
    """`pid 123 on host since 2026-01-01 10:00:00 +0000`, or a note that the holder has not written itself yet."""
    if not holder:
        return "holder still starting"
    return f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}"
