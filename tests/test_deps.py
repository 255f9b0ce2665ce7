"""helpers.deps: what the suite needs is checked before any work, with versions compared as pip compares
them (packaging); installing is left to the setup cell's one pip call (tests/test_kaggle.py)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from helpers import deps

REPO_ROOT = Path(__file__).resolve().parents[1]


def plant_distribution(site: Path, name: str, version: str) -> None:
    """An installed distribution as importlib.metadata finds it: a dist-info folder on sys.path."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path (restored after the test) to plant installed distributions in."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.setattr(sys, "path", [str(folder), *sys.path])
    return folder


def test_project_requirements_are_read():
    requirements = {requirement.name: requirement for requirement in deps.read_requirements()}
    assert {"pycocoevalcap", "torch", "kagglehub", "packaging", "filelock"} <= set(requirements)
    assert str(requirements["torch"]) == "torch>=2.3"
    assert str(requirements["tomli"].marker) == 'python_version < "3.11"'  # pyproject.toml on Python 3.10
    testing = deps.read_requirements(REPO_ROOT / "requirements-test.txt")
    assert testing and all(requirement.name for requirement in testing)


def test_unreadable_requirement_names_file_and_line(tmp_path):
    bad = tmp_path / "requirements.txt"
    bad.write_text("numpy>=1  # a comment\n==2\n")
    with pytest.raises(ValueError, match=r"requirements.txt: line 2: cannot read requirement '==2'"):
        deps.read_requirements(bad)


@pytest.mark.parametrize(
    ("version", "requirement", "met"),
    [
        ("2.0.0rc1", "x>=2.0.0", False),  # a release candidate comes before its release
        ("2.0.0rc1", "x>=1.0", True),  # an installed pre-release meets a bound below it, as pip judges
        ("2.0.0", "x>=2.0.0rc1", True),
        ("2.14.1+cu130", "torch>=2.3", True),  # a local build counts as its release
        ("2.14.1+cu130", "torch==2.14.1", True),
        ("1.10.0", "x>=1.9.0", True),  # numbers, not strings: 10 > 9
        ("1.9.0", "x>=1.10", False),
        ("2.2", "torch>=2.3", False),
        ("not-a-version", "x>=1", False),
        ("not-a-version", "x", True),
    ],
)
def test_versions_compare_as_pip_does(version, requirement, met):
    assert deps.version_satisfies(version, Requirement(requirement)) is met


def test_installed_pre_release_and_local_versions_are_judged_by_packaging(site):
    plant_distribution(site, "captioning-fake-pre", "2.0.0rc1")
    plant_distribution(site, "captioning-fake-local", "2.14.1+cu130")
    local = Requirement("captioning-fake-local>=2.3")
    assert deps.unmet(local) is None
    assert deps.unmet(Requirement("captioning-fake-pre>=2.0.0")) == "2.0.0rc1 installed"
    assert deps.unmet(Requirement("captioning-fake-pre>=1.0")) is None


def test_a_marker_that_leaves_this_python_out_is_not_required():
    assert deps.unmet(Requirement('captioning-fake-absent>=1; python_version < "3.0"')) is None
    assert deps.unmet(Requirement("captioning-fake-absent>=1")) == "not installed"


def test_everything_installed_means_nothing_to_say():
    deps.check_requirements()  # this environment has every requirement


def test_every_missing_package_is_named_with_one_fix(site, monkeypatch):
    plant_distribution(site, "captioning-fake-old", "1.0")
    plant_distribution(site, "captioning-fake-new", "1.0")
    wanted = [Requirement("captioning-fake-absent>=1.0"), Requirement("captioning-fake-old>=3.0"),
              Requirement("captioning-fake-new>=1.0")]  # fmt: skip
    monkeypatch.setattr(deps, "installed_from", lambda: None)  # a checkout
    started = time.monotonic()
    with pytest.raises(deps.MissingDependencyError) as caught:
        deps.check_requirements(wanted)
    assert time.monotonic() - started < 1  # a check, not an install
    message = str(caught.value)
    assert "captioning-fake-absent>=1.0 (not installed), captioning-fake-old>=3.0 (1.0 installed)." in message
    assert "captioning-fake-new" not in message
    assert "pip install 'captioning-fake-absent>=1.0' 'captioning-fake-old>=3.0'" in message


def test_helpers_from_a_dataset_is_told_to_use_its_wheels_or_the_registry(tmp_path, monkeypatch):
    monkeypatch.setattr(deps, "installed_from", lambda: tmp_path / "captioning-helpers")
    with pytest.raises(deps.MissingDependencyError) as caught:
        deps.check_requirements([Requirement("captioning-fake-absent>=1.2")])
    message = str(caught.value)
    assert "captioning-fake-absent>=1.2 (not installed)" in message
    assert "turn Internet on" in message and "python -m helpers.kaggle" in message
    assert f"--find-links {tmp_path / 'captioning-helpers'} 'captioning-fake-absent>=1.2'" in message


def test_notebook_setup_reports_a_missing_package_before_anything_else(tmp_path, monkeypatch):
    from helpers import notebook

    requirements = tmp_path / "requirements.txt"
    requirements.write_text("numpy>=1.0\ncaptioning-fake-metric>=1.2\n")
    monkeypatch.setattr(deps, "REQUIREMENTS_FILE", requirements)
    with pytest.raises(deps.MissingDependencyError, match=r"captioning-fake-metric>=1.2 \(not installed\)"):
        notebook.setup(tmp_path / "work")
    assert not (tmp_path / "work").exists()  # nothing started
