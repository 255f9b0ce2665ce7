"""Shared test fixtures. Every test runs with the network blocked: nothing here may download."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # tiny models: extra threads cost more than they give


class NetworkBlocked(RuntimeError):
    """Raised when a test tries to reach a non-loopback address."""


_real_connect = socket.socket.connect


def _guarded_connect(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and (host in ("localhost", "::1") or host.startswith("127.")):
        return _real_connect(self, address)
    if self.family == socket.AF_UNIX:
        return _real_connect(self, address)
    raise NetworkBlocked(f"test tried to reach the network: {address!r}")


_real_getaddrinfo = socket.getaddrinfo


def _guarded_getaddrinfo(host, *args, **kwargs):
    if host in (None, "localhost", "::1") or (isinstance(host, str) and host.startswith("127.")):
        return _real_getaddrinfo(host, *args, **kwargs)
    raise NetworkBlocked(f"test tried to resolve a network host: {host!r}")


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path):
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", _guarded_getaddrinfo)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # notebook.setup() sets this on Kaggle; whatever a test sets must not leak into the next one.
    monkeypatch.delenv("CAPTIONING_GLOVE_CACHE", raising=False)
    # Nothing attached unless a test attaches it: a /kaggle/input of the machine must not leak in.
    monkeypatch.setenv("KAGGLE_INPUT_DIR", str(tmp_path / "kaggle_input"))


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME: weights must be planted there, never downloaded."""
    home = tmp_path / "torch_home"
    (home / "hub" / "checkpoints").mkdir(parents=True)
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """A small synthetic dataset in the Flickr8k layout, shared by the whole session (read-only)."""
    from helpers.demo import make_demo_dataset

    out = tmp_path_factory.mktemp("demo") / "flickr_demo"
    make_demo_dataset(out, num_images=120, seed=0)
    return out


def make_wheel(folder, name: str, version: str = "1.0", requires=(), code: str = "") -> Path:
    """A minimal pure-Python wheel `name-version-py3-none-any.whl` whose module `name` runs `code`."""
    import zipfile

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    module = name.replace("-", "_")
    info = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": code or f"VERSION = {version!r}\n",
        f"{info}/METADATA": "Metadata-Version: 2.1\n"
        f"Name: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in files) + f"{info}/RECORD,,\n"
    path = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
    return path


@pytest.fixture(scope="session")
def fake_kaggle_wheels(tmp_path_factory):
    """Wheels standing in for what Kaggle's image lacks (pycocoevalcap needing pycocotools), so the
    helpers dataset can be built with no network."""
    folder = tmp_path_factory.mktemp("wheels")
    make_wheel(folder, "pycocoevalcap", "1.2", requires=["pycocotools>=2.0.2"])
    make_wheel(folder, "pycocotools", "2.0.11")
    return folder


def hold_run_lock(run_dir) -> subprocess.Popen:
    """A Python child holding `run_dir`'s run lock (another process, as a second training would be) until
    it is killed; returned once it holds it."""
    code = ("import time; from helpers.runlock import RunLock\n"
            f"lock = RunLock({str(run_dir)!r}).acquire(); print('ready', flush=True); time.sleep(600)")
    child = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = child.stdout.readline()
    assert line.strip() == "ready", line + child.stderr.read()
    return child
