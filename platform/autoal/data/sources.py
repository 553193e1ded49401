"""Reading what a user names as a pool source: the dataset reference `name[:arg]`, and a file
parser whose failure on damaged bytes is one user error naming the file."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, TypeVar

from autoal.errors import AutoALError

T = TypeVar("T")


def split_ref(ref: str) -> tuple[str, str | None]:
    """(source name, its argument or None) of a dataset reference `name[:arg]`."""
    name, sep, arg = ref.strip().partition(":")
    return name, arg if sep else None


def parse_file(path: Path, what: str, parse: Callable[[Path], T]) -> T:
    """Run a file parser, reporting a damaged file by name.

    Unpickling, .mat and .npz readers raise many unrelated types on bad bytes
    (UnpicklingError, EOFError, BadZipFile, MatReadError, ValueError, ...), so
    this one boundary catches Exception; MemoryError is a real limit, not damage.
    """
    try:
        return parse(path)
    except MemoryError:
        raise
    except Exception as exc:
        raise AutoALError(f"{path} is not a readable {what} ({type(exc).__name__}: {exc}); "
                          "re-download it or replace the file") from None
