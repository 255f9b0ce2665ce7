"""Kaggle notebook sessions, imitated on this machine for tests/test_kaggle_sessions.py.

Each session runs one notebook exactly as Kaggle would run the folder `python -m helpers.kaggle`
builds: in its own mount and network namespace (`unshare -mn`, root or user namespaces), with
- `/kaggle/input` a read-only mount holding the attached datasets in Kaggle's 2025 layout
  (`datasets/<owner>/<slug>`, notebook outputs under `notebooks/<owner>/<slug>`), the helpers dataset
  among them as Kaggle unpacks it;
- `/kaggle/working` empty at the start (the session's output, kept after it);
- no network but loopback (the kernel talks to papermill over it);
- a Python of its own that is "Kaggle's image": the project's packages without `helpers` and what
  Kaggle lacks (pycocoevalcap), so the notebook's setup cell must install both from the helpers dataset;
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


def kaggle_python(root: Path, hide: tuple[str, ...] = ()) -> Path:
    """A Python environment like Kaggle's image: the project venv's packages but KAGGLE_LACKS (and the
    site-packages entries starting with `hide`), each a link into the project venv (seconds to make).
    Returns its python."""
    import site

    source = Path(site.getsitepackages()[0])
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    target = Path(next(root.glob("lib/python*/site-packages")))
    # Kaggle's image lacks KAGGLE_LACKS, and `helpers` too: the setup cell installs it from the dataset
    hidden = (*(name.lower() for name in KAGGLE_LACKS), "__editable__", "captioning_helpers", *hide)
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

    def __init__(self, root: Path, build: Path, owner: str):
        self.root, self.build, self.owner = root, build, owner
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
        models: dict[str, Path] | None = None,
    ) -> Session:
        """Run notebook `stem` in a fresh session with `datasets` ('owner/slug' -> folder) and the outputs
        of earlier sessions `attach` (labels) mounted read-only under /kaggle/input; `models` (a Kaggle
        Model handle with its version -> folder) in Kaggle's model layout, `<slug>/<framework>/<variation>/
        <version>`."""
        label = label or stem
        base = self.root / label
        if base.exists():
            raise ValueError(f"session {label!r} already ran")
        output, home, tmp, src = (base / name for name in ("working", "home", "tmp", "src"))
        for folder in (output, home, tmp, src):
            folder.mkdir(parents=True)
        python = kaggle_python(base / "python")  # each session starts from Kaggle's image, unchanged
        source = next(self.notebook_folder(stem).glob("*.ipynb"))
        shutil.copy(source, src / source.name)
        mounts = {f"datasets/{handle}": Path(path) for handle, path in datasets.items()}
        for handle, path in (models or {}).items():  # Kaggle Models: owner/slug/framework/variation/version
            _, slug, framework, variation, version = handle.split("/")
            mounts[f"{slug}/{framework.lower()}/{variation}/{version}"] = Path(path)
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
            "PATH": f"{python.parent}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": str(home),
            "TMPDIR": str(tmp),
            "JUPYTER_PATH": str(python.parent.parent / "share" / "jupyter"),
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


COLAB_CONTENT = Path("/content")
# kagglehub on Colab, stood in for (there is no network here): it answers only with the user's Kaggle
# credentials (Colab secrets or KAGGLE_USERNAME/KAGGLE_KEY) and returns the dataset's downloaded folder.
KAGGLEHUB_STAND_IN = """\
import json, os
import kagglehub
def dataset_download(handle, path=None, **kwargs):
    if not (os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY")):
        raise PermissionError(f"kagglehub: no Kaggle credentials for {handle}")
    print(f"kagglehub (stand-in): {handle} with {os.environ['KAGGLE_USERNAME']}'s credentials")
    return json.loads(os.environ["KAGGLEHUB_STAND_IN"])[handle]
kagglehub.dataset_download = dataset_download
"""


def run_colab(root: Path, notebook: Path, uploads: dict[str, Path], parameters: dict,
              downloads: dict[str, Path] | None = None, env: dict | None = None) -> Session:
    """Run `notebook` (a clean one from notebooks/) as Colab would: in its own mount and network
    namespace with no /kaggle, from /content (a folder of its own holding `uploads`, name -> file or
    folder, as a user uploads them), in a Python without helpers and pycocoevalcap, with Colab's
    COLAB_RELEASE_TAG set. `downloads` (handle -> folder) is what kagglehub returns (KAGGLEHUB_STAND_IN).
    The mount point /content must exist (ensure_mount_point)."""
    content, home, tmp, hub = (root / name for name in ("content", "home", "tmp", "kagglehub"))
    for folder in (content, home, tmp, hub):
        folder.mkdir(parents=True)
    for name, path in uploads.items():
        (shutil.copytree if Path(path).is_dir() else shutil.copy)(path, content / name)
    shutil.copy(notebook, content / notebook.name)
    (hub / "sitecustomize.py").write_text(KAGGLEHUB_STAND_IN)
    python = kaggle_python(root / "python")
    lines = ["set -e", "ip link set lo up"]
    if MOUNT_POINT.exists():  # another test's mount point: empty it, Colab has no /kaggle
        lines.append(f"mount -t tmpfs tmpfs {MOUNT_POINT}")
    lines += [f"mount --bind {shlex.quote(str(content))} {COLAB_CONTENT}", f"cd {COLAB_CONTENT}"]
    command = [str(Path(sys.executable)), "-m", "papermill", str(COLAB_CONTENT / notebook.name),
               str(COLAB_CONTENT / f"executed-{notebook.name}"), "-k", "python3", "--cwd", str(COLAB_CONTENT),
               "--no-progress-bar", "-y", json.dumps(parameters)]  # fmt: skip
    lines.append("exec " + shlex.join(command))
    session_env = {
        "PATH": f"{python.parent}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "HOME": str(home), "TMPDIR": str(tmp), "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
        "JUPYTER_PATH": str(python.parent.parent / "share" / "jupyter"),
        "COLAB_RELEASE_TAG": "release-colab-imitated", "PYTHONPATH": str(hub),
        "KAGGLEHUB_STAND_IN": json.dumps({handle: str(path) for handle, path in (downloads or {}).items()}),
        "PIP_CONFIG_FILE": os.devnull, **(env or {}),
    }  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(["unshare", "-mn", "bash", "-c", "\n".join(lines)], env=session_env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    return Session(notebook.stem, content / "work", content / f"executed-{notebook.name}", home, tmp,
                   done.returncode, done.stdout + done.stderr, time.monotonic() - started)


def writes_outside_working(session: Session) -> list[str]:
    """Files the session wrote in its HOME and TMPDIR that are not caches (kernel runtime files and
    pip/matplotlib/torch/kagglehub caches are)."""
    cache_markers = (".cache/", ".local/share/jupyter/runtime/", ".ipython/", ".config/matplotlib/",
                     ".jupyter/", "torchinductor_")  # fmt: skip
    found = []
    for root in (session.home, session.tmp):
        for path in root.rglob("*"):
            relative = str(path.relative_to(root)) + ("/" if path.is_dir() else "")
            if path.is_file() and not any(marker in relative for marker in cache_markers):
                found.append(f"{root.name}/{relative}")
    return found


def ensure_mount_point(path: Path = MOUNT_POINT) -> bool:
    """Create the empty mount point `path` (/kaggle, /content) if needed; True when this call created it."""
    if path.exists():
        return False
    os.mkdir(path)
    return True
