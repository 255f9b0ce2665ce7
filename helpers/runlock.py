"""One training process per run folder at a time.

`RunLock(run_dir)` holds an exclusive `flock` on `<run_dir>/run.lock` for as long as a training runs.
The kernel drops such a lock when its process dies, however it dies (kill -9, a session that ends),
so a lock can never be left stuck: the next run takes it over. The file also records who holds it
(process id, host, command, start time) so that a second run into the same folder can refuse at once
and name the owner instead of silently mixing two runs' checkpoints and config.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from helpers.files import write_error

LOCK_NAME = "run.lock"


class RunFolderBusyError(RuntimeError):
    """Another live process trains into this run folder."""


class RunLock:
    """Exclusive ownership of a run folder; use as a context manager or with acquire()/release()."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._handle: int | None = None
        self.taken_over_from: dict = {}  # the owner a killed run left in the lock file, if any

    def acquire(self) -> RunLock:
        """Take the folder, or raise RunFolderBusyError naming the live owner (never waits)."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            while True:
                handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(handle)
                    raise RunFolderBusyError(self._busy_message()) from None
                # The owner we waited on may have removed the file on release; then lock the new one.
                if _same_file(handle, self.path):
                    break
                os.close(handle)
            self.taken_over_from = self.owner()  # a clean release removes the file: a killed run's
            self._record_owner(handle)
        except OSError as error:
            raise write_error(self.path, error) from None
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass  # the lock file stays; the next run takes it over all the same
        os.close(self._handle)  # closing drops the flock
        self._handle = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()

    def owner(self) -> dict:
        """What the lock file says about its holder ({} when unreadable)."""
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def _record_owner(self, handle: int) -> None:
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": _command_line(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        }
        data = (json.dumps(owner) + "\n").encode("utf-8")
        os.ftruncate(handle, 0)
        os.pwrite(handle, data, 0)
        os.fsync(handle)

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


def _command_line() -> str:
    """This process's command line as typed (`python -m helpers.train ...`), where /proc shows it."""
    try:
        words = Path("/proc/self/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        return " ".join(word.decode("utf-8", "replace") for word in words)
    except OSError:
        return " ".join([sys.executable, *sys.argv])


def _same_file(handle: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(handle)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)
