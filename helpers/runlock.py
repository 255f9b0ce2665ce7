"""One training process per run folder at a time, on Linux, macOS and Windows.

`RunLock(run_dir)` holds `<run_dir>/run.lock` with filelock's operating-system lock (flock on Linux
and macOS, LockFileEx on Windows) for as long as a training runs. The system drops such a lock when
its process dies, however it dies (kill -9, a session that ends), so a lock can never be left stuck:
the next run takes it over. (Where the system has neither, filelock's soft lock stands in: a marker
file that the next run takes over once the process it names is gone from this host.) Beside it,
`run.owner.json` records who holds the folder (process id, host, command, start time), so that a
second run into the same folder refuses at once and names the owner instead of silently mixing two
runs' checkpoints and config. The record is a file of its own because a Windows lock keeps other
processes from reading the locked file, and the soft lock writes its marker into it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import filelock

from helpers.files import write_error, write_json_atomic

LOCK_NAME = "run.lock"
OWNER_NAME = "run.owner.json"


class RunFolderBusyError(RuntimeError):
    """Another live process trains into this run folder."""


class RunLock:
    """Exclusive ownership of a run folder; use as a context manager or with acquire()/release()."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.owner_path = self.run_dir / OWNER_NAME
        self._lock: filelock.BaseFileLock | None = None
        self.taken_over_from: dict = {}  # the owner a killed run left recorded, if any

    def acquire(self) -> RunLock:
        """Take the folder, or raise RunFolderBusyError naming the live owner (never waits). A failure
        after the lock was taken (say the owner record cannot be written) gives the lock back."""
        lock = filelock.FileLock(self.path, timeout=0)
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            try:
                lock.acquire()
            except filelock.Timeout:
                raise RunFolderBusyError(self._busy_message()) from None
            try:
                self.taken_over_from = self.owner()  # a clean release removes the record: a killed run's
                write_json_atomic(self.owner_path, _owner_record(), indent=None)
            except BaseException:
                lock.release()
                raise
        except OSError as error:
            raise write_error(self.path, error) from None
        self._lock = lock
        return self

    def release(self) -> None:
        if self._lock is None:
            return
        lock, self._lock = self._lock, None
        # Removed while still held, so no other run can lock a file that is then removed under it. The
        # Unix lock keeps its file on release; the soft and Windows locks remove theirs themselves.
        unix = isinstance(lock, filelock.UnixFileLock)
        for path in [self.owner_path, self.path] if unix else [self.owner_path]:
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass  # left behind, the next run takes it over all the same
        lock.release()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()

    def owner(self) -> dict:
        """What the owner record says about the folder's holder ({} when there is none or unreadable)."""
        try:
            return json.loads(self.owner_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def _busy_message(self) -> str:
        owner = self.owner()
        who = (
            f"process {owner.get('pid', '?')} on {owner.get('host', '?')} (command: "
            f"{owner.get('command', '?')}), running since {owner.get('since', '?')}"
            if owner
            else "another process"
        )
        return (
            f"{self.run_dir} is in use by {who}. Two trainings into one run folder would overwrite "
            "each other's checkpoints. Wait for it to finish or stop it "
            f"(kill {owner.get('pid', '<pid>')}), or train into another folder with "
            "training.run_name=<new name>."
        )


def _owner_record() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": _command_line(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def _command_line() -> str:
    """This process's command line as typed (`python -m helpers.train ...`), where /proc shows it."""
    try:
        words = Path("/proc/self/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        return " ".join(word.decode("utf-8", "replace") for word in words)
    except OSError:
        return " ".join([sys.executable, *sys.argv])
