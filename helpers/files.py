"""Writing so that an interrupted run never leaves a half-written file or folder: everything is built
under a temporary name beside its target and renamed into place (os.replace is atomic within one
filesystem), and a failure removes the temporary copy. Every module writes through these.

A temporary name carries the writing process's id, so that the temporaries of a killed process (a
checkpoint of 36 MB, say) are recognised and removed by the next write to the same target, or by
`remove_abandoned_temporaries` for a whole folder."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent


def suite_file(name: str) -> Path:
    """A file or folder of the suite that is not code (`configs`, `requirements.txt`): the copy inside
    the package where the helpers wheel installed it, else the repository's, beside `helpers/`."""
    packaged = PACKAGE_DIR / name
    return packaged if packaged.exists() else PACKAGE_DIR.parent / name


_TEMPORARY_SUFFIX = ".tmp"
# Temporaries written before they carried a process id are removed once they are this old.
_LEGACY_TEMPORARY_AGE_S = 3600
_TEMPORARY_NAME = re.compile(r"^\.(?P<target>.+?)\.(?:(?P<pid>\d+)-)?[A-Za-z0-9_]+\.tmp$")


# What an OSError while writing says about the disk rather than about the program.
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EISDIR)


class WriteError(OSError):
    """A file could not be written (disk full, read-only folder...); the message names it and the fix.

    An OSError, so that code which falls back to another folder on OSError keeps doing so."""

    def __str__(self) -> str:
        return str(self.args[0])  # the message, not OSError's "[Errno n] strerror: filename"


def describe_write_error(path: str | os.PathLike, error: OSError) -> str:
    """What an OSError met while writing `path` means and how to get on, in a sentence or two."""
    path = Path(path)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        existing = next(folder for folder in (path.parent, *path.parents) if folder.exists())
        free = shutil.disk_usage(existing).free
        return (
            f"no space left on the disk while writing {path} ({free / 2**20:,.0f} MiB free there now). "
            "Free some space (old runs, feature stores of backbones no longer used) or set "
            "training.run_dir / data.work_dir to a larger disk, then run the same command again: it "
            "continues from the last complete checkpoint."
        )
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        reason = "is on a read-only file system" if error.errno == errno.EROFS else "is not writable"
        return (
            f"cannot write {path}: {path.parent} {reason}. Set training.run_dir "
            "(and data.work_dir) to a writable folder; on Kaggle that is under /kaggle/working, since "
            "/kaggle/input is read-only (the notebooks copy an attached run folder there themselves)."
        )
    if error.errno == errno.EISDIR:
        return (
            f"cannot write {path}: it is a folder, where a file belongs. Remove or rename the folder "
            f"(rm -r '{path}'), then run the command again."
        )
    return f"could not write {path}: {error.strerror or error}. Check the disk, then run the command again."


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (our own process counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists but belongs to another user
        return True
    return True


def remove_abandoned_temporaries(folder: str | os.PathLike, target: str | None = None) -> list[Path]:
    """Delete the temporaries that killed writes left in `folder` (of `target` only, when given).

    A temporary is abandoned when the process that named it is gone; one without a process id
    (written by an older version) when it is more than an hour old. Returns what was removed.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY_NAME.match(entry.name)
        if not match or (target is not None and match["target"] != target) or not entry.is_file():
            continue
        pid = match["pid"]
        try:
            abandoned = (
                not process_alive(int(pid))
                if pid
                else time.time() - entry.stat().st_mtime > _LEGACY_TEMPORARY_AGE_S
            )
            if abandoned:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:  # removed meanwhile, or a read-only folder: nothing to clean there
            continue
    return removed


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file path beside `path` to write to; on success it is synced to disk and replaces
    `path`, on failure it is removed and `path` is left as it was."""
    path = Path(path)
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned_temporaries(path.parent, path.name)
        descriptor, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.{os.getpid()}-", suffix=_TEMPORARY_SUFFIX
        )
        os.close(descriptor)
        yield Path(temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, WriteError) and error.errno in _DISK_ERRNOS:
            raise write_error(path, error) from error
        raise


def write_error(path: str | os.PathLike, error: OSError) -> WriteError:
    """A WriteError for `error` met while writing `path`, with the errno kept."""
    wrapped = WriteError(describe_write_error(path, error))
    wrapped.errno, wrapped.filename = error.errno, str(path)
    return wrapped


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int | None = 2) -> Path:
    """json.dump to `path` atomically (values json cannot encode are written with str())."""
    text = json.dumps(data, indent=indent, ensure_ascii=False, default=str)
    return write_bytes_atomic(path, (text + "\n").encode("utf-8"))


@contextmanager
def atomic_directory(
    target: str | os.PathLike, keep_target: Callable[[Path], bool] | None = None
) -> Iterator[Path]:
    """An empty temporary folder beside `target` to fill; on success it replaces `target` (whose old
    content is removed), on failure it is deleted. Folders that killed builds of `target` left are
    removed first. `keep_target(target)`, asked once the folder is filled, may keep a `target` that
    another process completed meanwhile: the new folder is then discarded."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_builds(target)
    building = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.building-{os.getpid()}-"))
    try:
        yield building
        if keep_target is not None and keep_target(target):
            shutil.rmtree(building)
            return
        if target.exists():
            shutil.rmtree(target)
        os.replace(building, target)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise


def _remove_abandoned_builds(target: Path) -> None:
    """Delete the folders that builds of `target` by processes now gone (killed runs) left beside it."""
    for folder in target.parent.glob(f".{target.name}.building-*"):
        pid = folder.name.rsplit(".building-", 1)[1].split("-")[0]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
