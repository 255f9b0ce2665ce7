"""What a stage may write before it writes it: Kaggle keeps at most 20 GB of `/kaggle/working` (the
notebook's output), and no disk holds more than is free on it. Each stage (prepare, feature
extraction, training) adds up what it will write and calls `check_space` first, so a stage that
cannot fit refuses at once with its options instead of failing hours later on a full disk or losing
its output when Kaggle saves the session.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

KAGGLE_WORKING = Path("/kaggle/working")
KAGGLE_OUTPUT_LIMIT_BYTES = 20 * 10**9  # /kaggle/working keeps at most 20 GB

__all__ = ["KAGGLE_OUTPUT_LIMIT_BYTES", "OutputSpaceError", "check_space", "folder_bytes", "format_bytes",
           "space_left"]


class OutputSpaceError(RuntimeError):
    """A stage would write more than the space it has (Kaggle's output limit or the free disk)."""


def format_bytes(size: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{size} B"


def folder_bytes(path: str | os.PathLike) -> int:
    """Apparent size of the files below `path` (a file: its size; links are not followed)."""
    path = Path(path)
    if path.is_symlink() or not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            file = Path(folder) / name
            if not file.is_symlink():
                total += file.stat().st_size
    return total


def _kept_output_root(path: Path) -> Path | None:
    """/kaggle/working when this is a Kaggle session and `path` lies inside it, else None."""
    if not os.environ.get("KAGGLE_KERNEL_RUN_TYPE"):
        return None
    root = KAGGLE_WORKING.resolve()
    return root if path.resolve().is_relative_to(root) else None


def space_left(path: str | os.PathLike) -> tuple[int, str]:
    """(bytes that may still be written at `path`, what limits them): the free space of its disk and,
    on Kaggle inside /kaggle/working, the 20 GB output limit less what the folder already holds."""
    path = Path(path).absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    left, reason = free, f"free on the disk holding {existing}"
    root = _kept_output_root(existing)
    if root is not None:
        used = folder_bytes(root)
        kept = KAGGLE_OUTPUT_LIMIT_BYTES - used
        if kept < left:
            left = max(kept, 0)
            reason = (f"of Kaggle's {format_bytes(KAGGLE_OUTPUT_LIMIT_BYTES)} output limit on {root}, which "
                      f"already holds {format_bytes(used)}")
    return left, reason


def check_space(path: str | os.PathLike, needed: int, what: str, options: Sequence[str]) -> None:
    """Refuse (OutputSpaceError naming `options`) when `needed` more bytes do not fit at `path`."""
    left, reason = space_left(path)
    if needed <= left:
        return
    listed = "".join(f"\n  - {option}" for option in options)
    raise OutputSpaceError(
        f"{what} needs {format_bytes(needed)} more but only {format_bytes(left)} is left ({reason}). "
        f"Nothing was written. Options:{listed}"
    )
