"""The suite's runtime requirements, checked before a notebook does any work; installing is pip's.

The notebooks' setup cell (`helpers.kaggle.HELPERS_BOOTSTRAP`) makes one pip call, `pip install
--find-links <helpers dataset> <helpers wheel>`: pip resolves what the wheel requires from the wheels
beside it (Internet off) or the registry (Internet on), and leaves alone what is installed already
(Kaggle's own torch). What is left here is the early check: `check_requirements()`, the first thing
`notebook.setup()` does, compares every requirement of `requirements.txt` (shipped inside the helpers
wheel and beside `helpers/` in the repository) with what is installed, the way pip compares versions
(`packaging`), and raises one MissingDependencyError naming everything missing and the command that
fixes it, before any data is read or any epoch trained.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import urllib.parse
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

from helpers.files import suite_file

DISTRIBUTION = "captioning-helpers"  # the helpers package as pip knows it (pyproject.toml)
REQUIREMENTS_FILE = suite_file("requirements.txt")
# What Kaggle's image lacks, bundled as wheels into the helpers dataset (its dependency pycocotools
# is in the image; were it not, the setup cell's pip call gets it from the registry).
KAGGLE_LACKS = ("pycocoevalcap",)
_COMMENT = re.compile(r"(^|\s)#.*$")  # pip's comment rule: '#' at the start or after whitespace


class MissingDependencyError(RuntimeError):
    """A package the suite needs is absent or too old; the message names each one and the fix."""


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


def read_requirements(path: str | Path | None = None) -> list[Requirement]:
    """The requirements a requirements file names (default: the suite's), parsed as pip parses them;
    comments and option lines (`-r`, `--find-links`) are skipped."""
    path = REQUIREMENTS_FILE if path is None else Path(path)
    requirements = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = _COMMENT.sub("", line).strip()
        if not line or line.startswith("-"):
            continue
        try:
            requirements.append(Requirement(line))
        except InvalidRequirement as error:
            raise ValueError(f"{path}: line {number}: cannot read requirement {line!r} ({error}).") from None
    return requirements


def version_satisfies(version: str, requirement: Requirement) -> bool:
    """Whether an installed `version` meets `requirement`'s bounds, as pip judges an installed package:
    local versions count as their release (2.14.1+cu130 >= 2.3), an installed pre-release is accepted
    where its version fits (2.0.0rc1 meets >=1.0, not >=2.0.0)."""
    try:
        return requirement.specifier.contains(Version(version), prereleases=True)
    except InvalidVersion:
        return not requirement.specifier  # a version pip cannot compare meets no bound


def unmet(requirement: Requirement) -> str | None:
    """Why `requirement` is not met in this Python ('not installed', '1.0 installed'), or None when it
    is (or its environment marker leaves it out here, e.g. python_version < "3.11")."""
    if requirement.marker is not None and not requirement.marker.evaluate():
        return None
    try:
        version = importlib.metadata.version(requirement.name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
    return None if version_satisfies(version, requirement) else f"{version} installed"


def check_requirements(requirements: list[Requirement] | None = None) -> None:
    """Raise MissingDependencyError naming every requirement this Python does not meet, and the fix.

    `requirements` default to the suite's (`requirements.txt`; were helpers copied without it, what
    Kaggle's image lacks)."""
    if requirements is None:
        requirements = (
            read_requirements()
            if REQUIREMENTS_FILE.is_file()
            else [Requirement(name) for name in KAGGLE_LACKS]
        )
    problems = [(requirement, why) for requirement in requirements if (why := unmet(requirement))]
    if problems:
        raise MissingDependencyError(missing_message(problems, installed_from()))


def missing_message(problems: list[tuple[Requirement, str]], wheels_dir: Path | None) -> str:
    """What is missing, and the one pip call that installs it: from the wheels of the helpers dataset
    (`wheels_dir`, where the helpers wheel came from) or the registry."""
    listed = ", ".join(f"{requirement} ({why})" for requirement, why in problems)
    wanted = " ".join(f"'{requirement}'" for requirement, _ in problems)
    if wheels_dir is None:
        return (
            f"The suite needs {listed}. Fix: pip install {wanted} (in a notebook: %pip install {wanted}; "
            "in the repository `pip install -e .` installs every requirement), then restart the kernel."
        )
    return (
        f"The suite needs {listed}. Fix, either: turn Internet on (Kaggle: Settings > Internet) and "
        f"rerun the setup cell; or rebuild the helpers dataset with `python -m helpers.kaggle --owner "
        f"NAME`, which bundles the wheels of what Kaggle lacks beside the helpers wheel, upload it and "
        f"attach it; or run %pip install --find-links {wheels_dir} {wanted} and restart the kernel."
    )
