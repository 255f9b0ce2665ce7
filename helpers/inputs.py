"""Inputs attached to a Kaggle notebook, used in place, and downloads with a bounded wait.

Kaggle mounts what a notebook attaches read-only below ``/kaggle/input``: a dataset at
``<slug>/`` (sessions before 2025) or ``datasets/<owner>/<slug>/`` (since), a Kaggle Model at
``<model>/<framework>/<variation>/<version>/`` or ``models/<owner>/<model>/<framework>/<variation>/
<version>/``. Datasets, GloVe files, Karpathy split files and backbone weights are looked for there
first and read where they are, without network or kagglehub. ``$KAGGLE_INPUT_DIR`` replaces
``/kaggle/input`` (tests, other hosts).

Searches are bounded: a fixed depth, and the big image folders of the caption datasets are never
listed. Downloads (kagglehub, torchvision's weights) run in a worker thread that is given up after
``DOWNLOAD_TIMEOUT`` seconds without progress, so a network that accepts a connection and never
answers fails with a fix instead of hanging.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

INPUT_DIR_ENV = "KAGGLE_INPUT_DIR"
DEFAULT_INPUT_DIR = Path("/kaggle/input")
DOWNLOAD_TIMEOUT = 60.0  # seconds without progress before a download is given up
# Deep enough for models/<owner>/<model>/<framework>/<variation>/<version>/<file> and a dataset's
# own sub-folders below datasets/<owner>/<slug>/.
SEARCH_DEPTH = 7
# Image folders of the caption datasets: thousands of files each, never holding anything searched for.
SKIPPED_FOLDERS = {"images", "train2014", "val2014", "test2014", "train2017", "val2017", "test2017"}
_POLL_SECONDS = 5.0

T = TypeVar("T")


def input_root() -> Path:
    """Where attached inputs are mounted: ``$KAGGLE_INPUT_DIR``, else ``/kaggle/input``."""
    return Path(os.environ.get(INPUT_DIR_ENV) or DEFAULT_INPUT_DIR)


def walk(root: str | os.PathLike, depth: int) -> Iterator[tuple[Path, int, list[str]]]:
    """(folder, depth, names of its files) for ``root`` and the folders below it up to ``depth``,
    shallowest first, in name order; hidden folders and the datasets' image folders are skipped.
    File names are plain strings: a folder of 30,000 images costs no Path objects."""
    level = [Path(root)]
    for current_depth in range(depth + 1):
        next_level = []
        for folder in level:
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                continue
            yield folder, current_depth, [e.name for e in entries if e.is_file()]
            next_level += [
                folder / e.name for e in entries
                if e.is_dir() and not e.name.startswith(".") and e.name.lower() not in SKIPPED_FOLDERS
            ]
        level = next_level


def find_attached(accept: Callable[[str], bool], root: str | os.PathLike | None = None,
                  depth: int = SEARCH_DEPTH) -> list[Path]:
    """Every file below the input root (``root``, default ``input_root()``) whose name ``accept``
    takes, shallowest first."""
    return [folder / name for folder, _, names in walk(root or input_root(), depth)
            for name in names if accept(name)]


def find_attached_file(name: str, root: str | os.PathLike | None = None) -> Path | None:
    """The shallowest attached file called ``name``, if any."""
    found = find_attached(lambda candidate: candidate == name, root)
    return found[0] if found else None


def attached_dataset(handles: tuple[str, ...] | list[str],
                     root: str | os.PathLike | None = None) -> Path | None:
    """The mount folder of the first of ``handles`` ('owner/slug') attached, in either layout."""
    root = Path(root or input_root())
    for handle in handles:
        owner, slug = handle.split("/")[:2]
        for folder in (root / "datasets" / owner / slug, root / slug):
            if folder.is_dir():
                return folder
    return None


def folder_footprint(folder: str | os.PathLike) -> tuple[int, int]:
    """(files, bytes) below ``folder``: it changes while a download writes into it."""
    files = size = 0
    for parent, _, names in os.walk(folder):
        for name in names:
            try:
                size += os.stat(os.path.join(parent, name)).st_size
            except OSError:  # a file removed while we looked
                continue
            files += 1
    return files, size


def run_with_progress_timeout(work: Callable[[], T], progress_folder: str | os.PathLike, timeout: float,
                              source: str) -> T:
    """``work()`` (a download from ``source``) in a daemon worker thread, given up with
    ``TimeoutError`` after ``timeout`` seconds in which ``progress_folder`` did not change: a real
    download of gigabytes takes longer than any fixed limit, so the clock restarts whenever the
    folder grows. A worker given up on is left behind."""
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = work()
        except BaseException as err:  # handed to the caller below
            outcome["error"] = err

    worker = threading.Thread(target=run, name=f"download from {source}", daemon=True)
    worker.start()
    footprint, last_progress = folder_footprint(progress_folder), time.monotonic()
    while True:
        worker.join(min(timeout, _POLL_SECONDS))
        if not worker.is_alive():
            break
        now = folder_footprint(progress_folder)
        if now != footprint:
            footprint, last_progress = now, time.monotonic()
        elif time.monotonic() - last_progress >= timeout:
            raise TimeoutError(f"no answer from {source} and no download progress for {timeout:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
