"""The roll-back journal of a command that writes several files of a directory (`label next`).

Before autoal creates or replaces a file it appends the file's name to `.autoal-journal`
(fsynced), and before it creates a temporary file, that name too. A command that ends well
deletes the journal; one that was killed leaves it, and the next opening of the directory
undoes exactly what the journal names: its temporary files always, and when the command had
not committed, the files it created. Nothing is ever deleted by a name pattern, so a user's
`.gitignore`, `notes/round-2.csv` or an editor's lock file are never touched.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from autoal.errors import AutoALError
from autoal.safe_io import read_bytes

JOURNAL = ".autoal-journal"
JOURNAL_BYTES = 16 << 20


class Journal:
    """The journal of one command in directory `root`; `commit_round` is the round whose
    commit ends the command (a directory that reached it needs only its temporary files removed)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.path = self.root / JOURNAL

    def begin(self, commit_round: int) -> "Journal":
        self._append({"commit_round": commit_round}, os.O_TRUNC)
        return self

    def record(self, path: Path, kind: str) -> None:
        """Note `path` (inside root): "tmp" (a temporary file), "new" (created) or "replaced"."""
        self._append({"path": Path(path).relative_to(self.root).as_posix(), "kind": kind})

    def end(self) -> None:
        """The command ended well: nothing to roll back."""
        if os.path.lexists(self.path):
            os.unlink(self.path)

    def _append(self, entry: dict, extra: int = 0) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC | extra, 0o600)
        try:
            os.write(fd, (json.dumps(entry) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def left(self) -> tuple[int, list[tuple[str, str]]] | None:
        """(commit round, [(relative path, kind)]) of a journal a killed command left, or None."""
        if not os.path.lexists(self.path):
            return None
        lines = read_bytes(self.path, JOURNAL_BYTES, "journal", follow=False).decode(errors="replace").splitlines()
        try:
            entries = [json.loads(line) for line in lines if line.strip()]
            commit = int(entries[0]["commit_round"])
            return commit, [(str(e["path"]), str(e["kind"])) for e in entries[1:] if "path" in e]
        except (ValueError, KeyError, IndexError, TypeError):   # killed while writing its first line
            return None

    def roll_back(self, committed_round: int) -> list[Path]:
        """Undo a killed command: delete the temporary files the journal names, and, if the
        directory has not reached the command's commit round, the files it created; return the
        files it replaced (the caller drops their uncommitted rows). Then delete the journal.
        Nothing outside root is touched, nor any directory."""
        left = self.left()
        if left is None:
            self.end()
            return []
        commit_round, entries = left
        committed, replaced = committed_round >= commit_round, []
        for relative, kind in entries:
            if ".." in Path(relative).parts or Path(relative).is_absolute():
                raise AutoALError(f"{self.path} names {relative!r}, outside {self.root}; remove the journal")
            path = self.root / relative
            if kind == "replaced":
                replaced += [] if committed else [path]
            elif (kind == "tmp" or not committed) and os.path.lexists(path) and (path.is_symlink()
                                                                                 or not path.is_dir()):
                os.unlink(path)
        self.end()
        return list(dict.fromkeys(replaced))


@contextlib.contextmanager
def journaled(store, commit_round: int):
    """Record every write of `store` (an ExperimentDir) in a journal of its directory; delete the
    journal once the block ends well (after a failure it stays: the next opening rolls back)."""
    store.journal = Journal(store.root).begin(commit_round)
    try:
        yield
        store.journal.end()
    finally:
        store.journal = None
