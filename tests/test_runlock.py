"""helpers.runlock on filelock: the same lock semantics where `fcntl` does not exist (Windows), and a
lock that a failed acquire gives back. The kernel-lock cases (a busy folder names its owner, a killed
owner leaves nothing stuck) are in tests/test_faults.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import runlock
from helpers.files import WriteError
from helpers.runlock import OWNER_NAME, RunLock

ROOT = Path(__file__).resolve().parent.parent
NO_FCNTL = 'import sys\nsys.modules["fcntl"] = None  # `import fcntl` raises ImportError, as on Windows\n'


def python(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", NO_FCNTL + code], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def test_without_fcntl_helpers_imports_and_a_locked_demo_training_runs(tmp_path, demo_dir):
    """Where `fcntl` is missing, `helpers` and the modules notebooks use import; a folder another process
    holds is refused naming it; once that owner is killed its lock is taken over and a DEMO training
    runs into the folder, leaving no lock behind."""
    run_dir = tmp_path / "runs" / "shared"
    owner = python(f"from helpers.runlock import RunLock\nlock = RunLock({str(run_dir)!r}).acquire()\n"
                   "print('ready', flush=True)\nimport time; time.sleep(600)")  # fmt: skip
    assert owner.stdout.readline().strip() == "ready", owner.stderr.read()
    trainer = python(f"""
import json
import helpers, helpers.evaluate, helpers.figures, helpers.notebook, helpers.tables, helpers.train
import helpers.widgets
from helpers.config import load_config
from helpers.runlock import RunFolderBusyError, RunLock
assert "fcntl" not in {{name for name, module in sys.modules.items() if module is not None}}
config = load_config(["LSTM", "demo"], {{
    "data.work_dir": {str(tmp_path / "work")!r}, "training.run_dir": {str(tmp_path / "runs")!r},
    "training.run_name": "shared", "training.meteor": False, "training.epochs": 1,
    "training.eval_splits": [], "batch_size": 40, "data.dataset": "flickr8k",
    "data.data_dir": {str(demo_dir)!r},
}})
try:
    helpers.train.train(config, progress=False)
except RunFolderBusyError as error:
    print("busy:", error, flush=True)
sys.stdin.readline()  # the test kills the owner
with RunLock(config.run_path) as lock:
    print("taken over from:", lock.taken_over_from["pid"], flush=True)
helpers.train.train(config, progress=False)
print("trained:", json.dumps(sorted(path.name for path in config.run_path.iterdir())))
""")
    try:
        busy = trainer.stdout.readline()
        expected = f"busy: {run_dir} is in use by process {owner.pid}"
        assert busy.startswith(expected), busy + trainer.stderr.read()
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=30)
    out, err = trainer.communicate("go\n", timeout=120)
    assert trainer.returncode == 0, err
    said = dict(line.split(": ", 1) for line in out.splitlines() if line.startswith(("taken", "trained")))
    assert said["taken over from"] == str(owner.pid)
    files = json.loads(said["trained"])
    assert "best.pt" in files and "run.lock" not in files and OWNER_NAME not in files


def test_a_failed_owner_record_gives_the_lock_back(tmp_path, monkeypatch):
    """Issue 28, case 8: writing the owner record fails (disk full); the same process (a notebook kernel)
    can take the folder once the disk has room, instead of finding it 'in use by another process'."""
    def disk_full(path, *args, **kwargs):
        raise WriteError(f"{path}: no space left on device")

    monkeypatch.setattr(runlock, "write_json_atomic", disk_full)
    with pytest.raises(WriteError, match="no space left"):
        RunLock(tmp_path / "run").acquire()
    monkeypatch.undo()
    with RunLock(tmp_path / "run") as lock:
        assert lock.owner()["pid"] == os.getpid()
    assert not list((tmp_path / "run").iterdir())
