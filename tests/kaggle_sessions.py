"""Kaggle notebook sessions, imitated on this machine for tests/test_kaggle_sessions.py.

Each session runs one notebook exactly as Kaggle would run the folder `python -m helpers.kaggle`
builds: in its own mount and network namespace (`unshare -mn`, root or user namespaces), with
- `/kaggle/input` a read-only mount holding the attached datasets in Kaggle's 2025 layout
  (`datasets/<owner>/<slug>`, notebook outputs under `notebooks/<owner>/<slug>`), the helpers dataset
  among them as Kaggle unpacks it;
- `/kaggle/working` empty at the start (the session's output, kept after it);
- no network but loopback (the kernel talks to papermill over it);
- a Python that is "Kaggle's image": the project's packages without what Kaggle lacks
  (pycocoevalcap), so the notebook's setup must install it from the helpers dataset's wheels;
- HOME and TMPDIR of its own, so what the session writes outside /kaggle/working can be listed.
The real `/kaggle` never exists outside the namespace: a tmpfs is mounted on an empty mount point.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from helpers.deps import KAGGLE_LACKS  # what Kaggle's image has not: hidden from the session's Python

MOUNT_POINT = Path("/kaggle")


def namespaces_available() -> str | None:
    """None when sessions can run here, else why not (the tests skip with it)."""
    if not shutil.which("unshare") or not shutil.which("ip"):
        return "needs unshare and ip (util-linux, iproute2)"
    probe = subprocess.run(
        ["unshare", "-rmn", "sh", "-c", "ip link set lo up && mount -t tmpfs tmpfs /mnt"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return f"mount/network namespaces not allowed here: {probe.stderr.strip()}"
    return None


def repack_wheel(distribution: str, out_dir: Path) -> Path:
    """A wheel of an installed pure-Python distribution, rebuilt from its installed files."""
    dist = metadata.distribution(distribution)
    name = dist.metadata["Name"].replace("-", "_")
    path = out_dir / f"{name}-{dist.version}-py3-none-any.whl"
    out_dir.mkdir(parents=True, exist_ok=True)
    info = f"{name}-{dist.version}.dist-info"
    members = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for file in dist.files:
            if file.suffix == ".pyc" or str(file).startswith("..") or file.name in ("RECORD", "INSTALLER"):
                continue
            source = file.locate()
            if source.is_file():
                archive.write(source, str(file))
                members.append(str(file))
        if f"{info}/WHEEL" not in members:
            archive.writestr(
                f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
            )
            members.append(f"{info}/WHEEL")
        archive.writestr(f"{info}/RECORD", "".join(f"{m},,\n" for m in members) + f"{info}/RECORD,,\n")
    return path


def kaggle_python(root: Path) -> Path:
    """A Python environment like Kaggle's image: the project venv's packages but KAGGLE_LACKS, each
    entry a link into the project venv (seconds to make). Returns its python."""
    import site

    source = Path(site.getsitepackages()[0])
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    target = Path(next(root.glob("lib/python*/site-packages")))
    hidden = tuple(name.lower() for name in KAGGLE_LACKS)
    for entry in source.iterdir():
        if not entry.name.lower().startswith(hidden):
            (target / entry.name).symlink_to(entry)
    python = root / "bin" / "python"
    kernel = root / "share" / "jupyter" / "kernels" / "python3"
    kernel.mkdir(parents=True)
    argv = [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (kernel / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "Kaggle", "language": "python"})
    )
    return python


@dataclass
class Session:
    """What one notebook session left: its output (/kaggle/working), the executed notebook, and more."""

    notebook: str
    output: Path
    executed: Path
    home: Path
    tmp: Path
    returncode: int
    log: str
    seconds: float
    inputs: dict[str, Path] = field(default_factory=dict)

    def cells_text(self) -> str:
        """Every output of every cell, as text (stream text, plain-text results, error tracebacks)."""
        notebook = json.loads(self.executed.read_text())
        parts = []
        for cell in notebook["cells"]:
            for output in cell.get("outputs", []):
                parts.append("".join(output.get("text", "")))
                parts.append("".join(output.get("data", {}).get("text/plain", "")))
                parts.append("\n".join(output.get("traceback", [])))
        return "\n".join(parts)

    def output_files(self) -> dict[str, int]:
        """Relative path -> size of every file in the output; links are reported as -1."""
        found = {}
        for path in sorted(self.output.rglob("*")):
            if path.is_symlink():
                found[str(path.relative_to(self.output))] = -1
            elif path.is_file():
                found[str(path.relative_to(self.output))] = path.stat().st_size
        return found

    def output_bytes(self) -> int:
        return sum(size for size in self.output_files().values() if size > 0)


class KaggleSessions:
    """Runs notebooks from a built Kaggle folder (`helpers.kaggle.build_kaggle_folders`) as sessions."""

    def __init__(self, root: Path, build: Path, owner: str, python: Path):
        self.root, self.build, self.owner, self.python = root, build, owner, python
        self.sessions: dict[str, Session] = {}

    def notebook_folder(self, stem: str) -> Path:
        return next(self.build.glob(f"*-{stem.replace('_', '-')}"))

    def run(
        self,
        stem: str,
        datasets: dict[str, Path],
        attach: tuple[str, ...] = (),
        parameters: dict | None = None,
        label: str | None = None,
        timeout: int = 900,
    ) -> Session:
        """Run notebook `stem` in a fresh session with `datasets` ('owner/slug' -> folder) and the outputs
        of earlier sessions `attach` (labels) mounted read-only under /kaggle/input."""
        label = label or stem
        base = self.root / label
        if base.exists():
            raise ValueError(f"session {label!r} already ran")
        output, home, tmp, src = (base / name for name in ("working", "home", "tmp", "src"))
        for folder in (output, home, tmp, src):
            folder.mkdir(parents=True)
        source = next(self.notebook_folder(stem).glob("*.ipynb"))
        shutil.copy(source, src / source.name)
        mounts = {f"datasets/{handle}": Path(path) for handle, path in datasets.items()}
        for earlier in attach:
            slug = self.notebook_folder(self.sessions[earlier].notebook).name
            mounts[f"notebooks/{self.owner}/{slug}"] = self.sessions[earlier].output
        lines = [
            "set -e",
            "ip link set lo up",
            f"mount -t tmpfs tmpfs {MOUNT_POINT}",
            f"mkdir -p {MOUNT_POINT}/input {MOUNT_POINT}/working {MOUNT_POINT}/src",
            f"mount -t tmpfs tmpfs {MOUNT_POINT}/input",
        ]
        for where, path in mounts.items():
            target = shlex.quote(f"{MOUNT_POINT}/input/{where}")
            lines += [
                f"mkdir -p {target}",
                f"mount --bind {shlex.quote(str(path))} {target}",
                f"mount -o remount,bind,ro {target}",
            ]
        lines += [
            f"mount -o remount,ro {MOUNT_POINT}/input",
            f"mount --bind {shlex.quote(str(output))} {MOUNT_POINT}/working",
            f"mount --bind {shlex.quote(str(src))} {MOUNT_POINT}/src",
            f"cd {MOUNT_POINT}/working",
            "exec " + shlex.join(self._papermill(source.name, parameters or {})),
        ]
        env = {
            "PATH": f"{self.python.parent}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": str(home),
            "TMPDIR": str(tmp),
            "JUPYTER_PATH": str(self.python.parent.parent / "share" / "jupyter"),
            "KAGGLE_KERNEL_RUN_TYPE": "Batch",
            "KAGGLE_DATA_PROXY_URL": "http://127.0.0.1:9",  # Kaggle's data proxy: refused, as offline
            "KAGGLE_USER_SECRETS_TOKEN": "session-token",
            "PYTHONHASHSEED": "0",
            "LANG": "C.UTF-8",
        }
        started = time.monotonic()
        done = subprocess.run(
            ["unshare", "-mn", "bash", "-c", "\n".join(lines)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        session = Session(
            stem, output, src / f"executed-{source.name}", home, tmp, done.returncode,
            done.stdout + done.stderr, time.monotonic() - started, mounts,
        )  # fmt: skip
        self.sessions[label] = session
        return session

    def _papermill(self, notebook: str, parameters: dict) -> list[str]:
        command = [
            str(Path(sys.executable)), "-m", "papermill", f"{MOUNT_POINT}/src/{notebook}",
            f"{MOUNT_POINT}/src/executed-{notebook}", "-k", "python3", "--cwd", f"{MOUNT_POINT}/working",
            "--no-progress-bar",
        ]  # fmt: skip
        return command + (["-y", json.dumps(parameters)] if parameters else [])


def writes_outside_working(session: Session) -> list[str]:
    """Files the session wrote in its HOME and TMPDIR that are not caches (kernel runtime files,
    matplotlib/torch/kagglehub caches and the dependency install folder are)."""
    cache_markers = (".cache/", ".local/share/jupyter/runtime/", ".ipython/", ".config/matplotlib/",
                     "captioning-deps/", ".jupyter/", "torchinductor_")  # fmt: skip
    found = []
    for root in (session.home, session.tmp):
        for path in root.rglob("*"):
            relative = str(path.relative_to(root)) + ("/" if path.is_dir() else "")
            if path.is_file() and not any(marker in relative for marker in cache_markers):
                found.append(f"{root.name}/{relative}")
    return found


def ensure_mount_point() -> bool:
    """Create the empty mount point /kaggle if needed; True when this call created it."""
    if MOUNT_POINT.exists():
        return False
    os.mkdir(MOUNT_POINT)
    return True
