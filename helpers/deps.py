"""The suite's runtime dependencies, checked (and installed where missing) before a notebook runs.

Kaggle's image has torch, torchvision, numpy, pandas, matplotlib, ipywidgets, tqdm, kagglehub and
pyyaml, but not pycocoevalcap, which scores every run. A missing package must be reported in the
first seconds of a notebook, not after an epoch of training, so `notebook.setup()` calls
`ensure_requirements()`: every distribution named in `requirements.txt` (shipped beside `helpers/`
in the repository and in the helpers dataset) is checked; a missing one is installed from the wheels
that `python -m helpers.kaggle` bundles into the helpers dataset (works with Internet off), else from
the package registry, into a folder put on `sys.path`, with a bounded wait. torch and torchvision are
never installed here: Kaggle's own build matches its CUDA.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from helpers.files import PACKAGE_DIR, suite_file

DISTRIBUTION = "captioning-helpers"  # the helpers package as pip knows it (pyproject.toml)
REQUIREMENTS_FILE = suite_file("requirements.txt")


def installed_from() -> Path | None:
    """The folder of the wheel pip installed the helpers from (pip records it, PEP 610): on Kaggle the
    attached helpers dataset. None for an editable install or a checkout on sys.path."""
    try:
        record = importlib.metadata.distribution(DISTRIBUTION).read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        return None
    url = json.loads(record or "{}").get("url", "")
    path = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)) if url.startswith("file:") else None
    return path.parent if path is not None and path.suffix == ".whl" else None


# The wheels of what Kaggle's image lacks: beside the helpers wheel in the helpers dataset
# (`python -m helpers.kaggle` puts them there), else a `wheels/` folder in the repository.
WHEELS_DIR = installed_from() or PACKAGE_DIR.parent / "wheels"
# Installed packages go to a temporary folder (a session's, not its saved output).
INSTALL_DIR = Path(os.environ.get("CAPTIONING_DEPS_DIR") or Path(tempfile.gettempdir()) / "captioning-deps")
# What Kaggle's image lacks, bundled as wheels into the helpers dataset (its dependency pycocotools
# is in the image; were it not, ensure_requirements names it and tries the registry).
KAGGLE_LACKS = ("pycocoevalcap",)
NEVER_INSTALL = ("torch", "torchvision")  # Kaggle's build matches its CUDA; a registry build would not
INSTALL_TIMEOUT_S = 180  # a registry that accepts and never answers must not hang the notebook


class MissingDependencyError(RuntimeError):
    """A package the suite needs is absent and could not be installed; the message says how to fix it."""


@dataclass(frozen=True)
class Requirement:
    name: str  # distribution name as pip knows it
    minimum: str | None = None  # from a `>=` bound, the only kind requirements.txt uses

    def __str__(self) -> str:
        return self.name + (f">={self.minimum}" if self.minimum else "")


_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(?:>=\s*([0-9][0-9A-Za-z.]*))?")


def read_requirements(path: Path | None = None) -> list[Requirement]:
    """The distributions a requirements file names (default: the suite's; comments and `-r` lines
    skipped)."""
    path = REQUIREMENTS_FILE if path is None else path
    requirements = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        match = _LINE.match(line)
        if not match:
            raise ValueError(f"{path}: line {number}: cannot read requirement {line!r}.")
        requirements.append(Requirement(match.group(1), match.group(2)))
    return requirements


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])


def is_satisfied(requirement: Requirement) -> bool:
    """Installed (on sys.path) at or above its minimum version."""
    try:
        version = importlib.metadata.version(requirement.name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return requirement.minimum is None or _version_tuple(version) >= _version_tuple(requirement.minimum)


def _dependencies_of(name: str) -> list[Requirement]:
    """The unconditional Requires-Dist entries of an installed distribution."""
    found = []
    for entry in importlib.metadata.requires(name) or []:
        if ";" in entry:  # extras and environment markers: not needed at run time here
            continue
        match = _LINE.match(entry.replace("(", "").replace(")", ""))
        if match:
            found.append(Requirement(match.group(1), match.group(2)))
    return found


def _use_install_dir(install_dir: Path) -> None:
    """Make packages installed into `install_dir` importable here and in subprocesses."""
    path = str(install_dir)
    if path not in sys.path:
        sys.path.insert(0, path)
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if path not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([path, *parts])
    importlib.invalidate_caches()


def _pip_install(
    requirement: Requirement, wheels_dir: Path | None, install_dir: Path, use_index: bool
) -> str:
    """Install one distribution (no dependencies: the caller checks those); returns pip's complaint or ''."""
    source = ["--no-index", "--find-links", str(wheels_dir)] if wheels_dir else []
    if not wheels_dir and not use_index:
        return "no wheels folder and the package registry is not to be used"
    if not wheels_dir:
        source = ["--timeout", "15", "--retries", "1"]
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
        "--target", str(install_dir), *source, str(requirement),
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"pip gave no answer within {INSTALL_TIMEOUT_S} s"
    return "" if done.returncode == 0 else (done.stderr.strip().splitlines() or ["pip failed"])[-1]


def ensure_requirements(
    requirements: list[Requirement] | None = None,
    *,
    wheels_dir: Path | None = None,
    install_dir: Path | None = None,
    use_index: bool = True,
) -> list[str]:
    """Install every missing requirement (and what it needs) before any work starts.

    Wheels in `wheels_dir` (default WHEELS_DIR) are tried first (no network), then the registry when
    `use_index`, into `install_dir` (default INSTALL_DIR). Returns the distributions installed; raises
    MissingDependencyError, naming the package and the fix, when one cannot be had.
    """
    install_dir = Path(INSTALL_DIR if install_dir is None else install_dir)
    wheels_dir = Path(WHEELS_DIR if wheels_dir is None else wheels_dir)
    if install_dir.is_dir():
        _use_install_dir(install_dir)  # installed earlier in this session
    if requirements is None:
        requirements = (
            read_requirements()
            if REQUIREMENTS_FILE.is_file()
            else [Requirement(name) for name in KAGGLE_LACKS]  # helpers/ uploaded without the file
        )
    pending = list(requirements)
    installed: list[str] = []
    seen: set[str] = set()
    while pending:
        requirement = pending.pop(0)
        if requirement.name.lower() in seen:
            continue
        seen.add(requirement.name.lower())
        if is_satisfied(requirement):
            continue
        if requirement.name.lower() in NEVER_INSTALL:
            raise MissingDependencyError(
                f"{requirement} is not installed. Install the build that matches your CUDA "
                "(https://pytorch.org/get-started/locally/); on Kaggle it comes with the image."
            )
        install_dir.mkdir(parents=True, exist_ok=True)
        wheels = wheels_dir if any(wheels_dir.glob("*.whl")) else None
        problems = []
        for source in (wheels, None) if wheels else (None,):
            problem = _pip_install(requirement, source, install_dir, use_index)
            _use_install_dir(install_dir)
            if not problem and is_satisfied(requirement):
                break
            problems.append(problem or f"{requirement} still not importable after installing")
        else:
            raise MissingDependencyError(_missing_message(requirement, wheels_dir, problems))
        installed.append(requirement.name)
        pending.extend(_dependencies_of(requirement.name))
    if installed:
        print(f"Installed {', '.join(installed)} into {install_dir}.")
    return installed


def _missing_message(requirement: Requirement, wheels_dir: Path, problems: list[str]) -> str:
    tried = "; ".join(problem for problem in problems if problem)
    return (
        f"{requirement} is needed by the suite but is not installed, and installing it failed "
        f"({tried}). Fix, either: turn Internet on (Kaggle: Settings > Internet) and rerun this cell; or "
        f"rebuild the helpers dataset with `python -m helpers.kaggle --owner NAME`, which bundles its wheel "
        f"beside the helpers wheel, upload it and attach it; or `pip install "
        f"'{requirement}'` yourself."
    )
