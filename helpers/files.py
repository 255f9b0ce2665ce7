"""Writing so that an interrupted run never leaves a half-written file or folder: everything is built
under a temporary name beside its target and renamed into place (os.replace is atomic within one
filesystem), and a failure removes the temporary copy. Every module writes through these."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file path beside `path` to write to; on success it is synced to disk and replaces
    `path`, on failure it is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(descriptor)
    try:
        yield Path(temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int | None = 2) -> Path:
    """json.dump to `path` atomically (values json cannot encode are written with str())."""
    text = json.dumps(data, indent=indent, ensure_ascii=False, default=str)
    return write_bytes_atomic(path, (text + "\n").encode("utf-8"))


@contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """An empty temporary folder beside `target` to fill; on success it replaces `target` (whose old
    content is removed), on failure it is deleted."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.building-"))
    try:
        yield building
        if target.exists():
            shutil.rmtree(target)
        os.replace(building, target)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
