"""The bad-input battery's harness: a case, its outcome, and the check that runs it.

A case builds its files in an empty directory and gives autoal's command line an argv; the
check runs it in this process through `autoal.cli.main` (no interpreter start per case), with
that directory as the working directory, and records: the exit code; stderr, which must be
exactly one `autoal: error:` line of at most 300 characters and no traceback; a byte-for-byte
fingerprint of every file under the directory (nothing given changed, nothing added); the
names beside the directory (nothing written outside it); child processes still running 10 s
after the command (none); and the time it took (under 60 s).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

SMALL = ["--dataset", "digits", "--initial", "10", "--batch", "5", "--rounds", "1", "--epochs", "1",
         "--min-steps", "0", "--actors", "0", "--seeds", "0", "--strategy", "entropy"]


@dataclass(frozen=True)
class Case:
    """`make(dir)` builds the case's files under `dir` and returns the argv; `message` is part of the error."""

    name: str
    make: Callable[[Path], list[str]]
    message: str
    exit: int = 2
    needs_template: bool = False   # make() copies a finished run (made once, by `template`)
    needs_label: bool = False      # make() copies a labeling project (made once, by `label_template`)
    gpu_free: bool = False         # only meaningful where torch sees no CUDA GPU


@dataclass(frozen=True)
class Outcome:
    case: Case
    exit: int | str     # "raised": an exception escaped the CLI
    stderr: str
    stdout: str
    intact: bool        # every file the case was given is unchanged, nothing was added, nothing outside touched
    seconds: float = 0.0
    leftovers: tuple = ()   # processes the command left running 10 s after it returned

    @property
    def traceback(self) -> bool:
        return "Traceback" in self.stderr or self.exit == "raised"

    @property
    def clean(self) -> bool:
        """The expected exit; for errors exactly one `autoal: error:` line naming the problem; no traceback."""
        lines = self.stderr.strip().splitlines()
        one_line = (len(lines) == 1 and lines[0].startswith("autoal: error:") and len(lines[0]) <= 300
                    if self.case.exit == 2 else not lines)
        return (self.exit == self.case.exit and not self.traceback and self.intact and one_line
                and self.case.message in self.stderr + self.stdout and self.seconds < 60 and not self.leftovers)


# --- building blocks ---------------------------------------------------------


TEMPLATE: dict[str, Path] = {}


def template(base: Path) -> Path:
    """A finished tiny run, made once and copied by the cases that damage or reuse one."""
    if "run" not in TEMPLATE:
        from autoal import cli

        out = base / "template-run"
        with contextlib.redirect_stdout(io.StringIO()):
            assert cli.main(["run", *SMALL, "--out", str(out)]) == 0, "the template run failed"
        TEMPLATE["run"] = out
    return TEMPLATE["run"]


def label_template(base: Path) -> Path:
    """A labeling project on 12 tiny unlabeled images whose first queries (4) are out, made once."""
    if "label" not in TEMPLATE:
        from PIL import Image

        from autoal import cli

        photos = base / "label-template" / "photos"
        photos.mkdir(parents=True)
        for i in range(12):
            Image.new("L", (8, 8), color=20 * i).save(photos / f"img{i:02d}.png")
        project = base / "label-template" / "lab"
        with contextlib.redirect_stdout(io.StringIO()):
            assert cli.main(["label", "init", str(project), "--pool", f"images:{photos}", "--classes", "cat,dog"]) == 0
            assert cli.main(["label", "next", str(project), "--batch", "4"]) == 0
        TEMPLATE["label"] = project
    return TEMPLATE["label"]


def copy_label(d: Path) -> Path:
    """A copy of the label template (its pool stays where it is: the project names it by absolute path)."""
    shutil.copytree(TEMPLATE["label"], d / "lab", symlinks=True)
    return d / "lab"


def copy_run(d: Path) -> Path:
    out = d / "run"
    shutil.copytree(TEMPLATE["run"], out)
    return out




class Planted:
    """A pickle that runs a shell command when a plain unpickler loads it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def planted_pickle(d: Path) -> bytes:
    return pickle.dumps({"data": Planted(d / "PWNED"), "labels": [0]})


def read_only(path: Path) -> Path:
    """Make `path` read-only for this process: a read-only bind mount as root, else no write permission."""
    if os.geteuid() == 0:
        subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)
        MOUNTS.append(path)
    else:
        for p in [path, *path.rglob("*")]:
            p.chmod(p.stat().st_mode & ~0o222)
    return path


MOUNTS: list[Path] = []
HELD: list = []   # locks a case holds in this process while its command runs


def release_mounts() -> None:
    while MOUNTS:
        subprocess.run(["umount", str(MOUNTS.pop())], check=False)


def fingerprint(root: Path) -> dict:
    """Every entry under `root`: content hashes of files, link targets of symlinks, and the set of names."""
    def mark(p: Path) -> str:
        if p.is_symlink():
            return "-> " + os.readlink(p)
        if p.is_fifo():
            return "fifo"
        return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return {str(p.relative_to(root)): mark(p) for p in sorted(root.rglob("*"))}


def _children() -> set[int]:
    """Pids of this process's live descendants that are not Ray's (the test session's Ray, or one a
    case started in this process, is not a process the command left behind)."""
    parents, cmdlines = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdlines[int(entry)] = f.read()
            except OSError:
                continue
            if state != "Z":
                parents[int(entry)] = int(ppid)
    found, todo = set(), [os.getpid()]
    while todo:
        parent = todo.pop()
        kids = [pid for pid, ppid in parents.items() if ppid == parent]
        found.update(kids)
        todo += kids
    return {pid for pid in found if b"ray" not in cmdlines.get(pid, b"ray")}


def _leftovers(before: set[int]) -> tuple:
    deadline = time.monotonic() + 10
    while (left := _children() - before) and time.monotonic() < deadline:
        time.sleep(0.2)
    return tuple(sorted(left))


def check(case: Case, d: Path) -> Outcome:
    """Run one case in the empty directory `d` (its working directory while it runs)."""
    from autoal import cli

    argv = case.make(d)
    before, beside, children = fingerprint(d), sorted(os.listdir(d.parent)), _children()
    err, out = io.StringIO(), io.StringIO()
    t0 = time.monotonic()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), contextlib.chdir(d):
            code = cli.main(argv)
    except BaseException as exc:  # a case that escapes the CLI boundary is a failure, shown as such
        import traceback

        err.write("".join(traceback.format_exception(exc)))
        code = "raised"
    seconds = time.monotonic() - t0
    intact = (fingerprint(d) == before and not (d / "PWNED").exists() and sorted(os.listdir(d.parent)) == beside)
    for lock in HELD:
        lock.release()
    HELD.clear()
    release_mounts()
    return Outcome(case, code, err.getvalue(), out.getvalue(), intact, seconds, _leftovers(children))
