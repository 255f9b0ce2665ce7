"""helpers.deps: what the suite needs is checked and installed before any work, never after training."""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import make_wheel

from helpers import deps

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def isolated_path(monkeypatch):
    """sys.path and PYTHONPATH restored after the test: ensure_requirements extends both."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", "")


def test_project_requirements_are_read():
    names = [requirement.name for requirement in deps.read_requirements()]
    assert "pycocoevalcap" in names and "torch" in names and "kagglehub" in names
    assert deps.Requirement("torch", "2.2") in deps.read_requirements()
    assert all(requirement.name and not requirement.name.startswith("-") for requirement in
               deps.read_requirements(REPO_ROOT / "requirements-test.txt"))  # fmt: skip


def test_unreadable_requirement_names_file_and_line(tmp_path):
    bad = tmp_path / "requirements.txt"
    bad.write_text("numpy>=1\n==2\n")
    with pytest.raises(ValueError, match=r"requirements.txt: line 2: cannot read requirement '==2'"):
        deps.read_requirements(bad)


def test_everything_installed_means_nothing_to_do(tmp_path, isolated_path):
    assert (
        deps.ensure_requirements(
            wheels_dir=tmp_path / "no-wheels", install_dir=tmp_path / "deps", use_index=False
        )
        == []
    )
    assert not (tmp_path / "deps").exists()


def test_missing_package_and_its_dependency_come_from_the_wheels(tmp_path, isolated_path, capsys):
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "captioning-fake-scorer", "1.2", requires=["captioning-fake-base>=2.0"],
               code="from captioning_fake_base import VALUE\n")  # fmt: skip
    make_wheel(wheels, "captioning-fake-base", "2.0", code="VALUE = 42\n")
    wanted = [deps.Requirement("captioning-fake-scorer", "1.0")]
    assert not deps.is_satisfied(wanted[0])

    installed = deps.ensure_requirements(
        wanted, wheels_dir=wheels, install_dir=tmp_path / "deps", use_index=False
    )
    assert installed == ["captioning-fake-scorer", "captioning-fake-base"]
    import captioning_fake_scorer

    assert captioning_fake_scorer.VALUE == 42
    assert str(tmp_path / "deps") in sys.path and str(tmp_path / "deps") in deps.os.environ["PYTHONPATH"]
    assert "Installed captioning-fake-scorer, captioning-fake-base" in capsys.readouterr().out
    # the next call in the same session finds them installed
    assert deps.ensure_requirements(wanted, wheels_dir=wheels, install_dir=tmp_path / "deps") == []


def test_too_old_version_counts_as_missing(tmp_path, isolated_path):
    make_wheel(tmp_path / "wheels", "captioning-fake-old", "1.0")
    with pytest.raises(deps.MissingDependencyError, match="captioning-fake-old>=3.0"):
        deps.ensure_requirements(
            [deps.Requirement("captioning-fake-old", "3.0")],
            wheels_dir=tmp_path / "wheels",
            install_dir=tmp_path / "deps",
            use_index=False,
        )


def test_missing_package_without_wheels_or_registry_fails_at_once_with_the_fix(tmp_path, isolated_path):
    started = time.monotonic()
    with pytest.raises(deps.MissingDependencyError) as caught:
        deps.ensure_requirements(
            [deps.Requirement("captioning-fake-absent", "1.0")],
            wheels_dir=tmp_path / "no-wheels",
            install_dir=tmp_path / "deps",
            use_index=False,
        )
    message = str(caught.value)
    assert time.monotonic() - started < 5
    assert "captioning-fake-absent>=1.0 is needed" in message
    assert "turn Internet on" in message and "python -m helpers.kaggle" in message
    assert "beside the helpers wheel" in message


def test_torch_is_never_installed(tmp_path, isolated_path):
    make_wheel(tmp_path / "wheels", "torch", "999.0")
    with pytest.raises(deps.MissingDependencyError, match="build that matches your CUDA"):
        deps.ensure_requirements(
            [deps.Requirement("torch", "999.0")],
            wheels_dir=tmp_path / "wheels",
            install_dir=tmp_path / "deps",
        )
    assert not (tmp_path / "deps").exists()


def test_a_registry_that_never_answers_is_given_up_in_bounded_time(tmp_path, isolated_path, monkeypatch):
    """Internet 'on' but silent: pip's own timeout and ours bound the wait, and the fix is named."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted = []
    stop = threading.Event()

    def accept_and_stay_silent():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept_and_stay_silent, daemon=True)
    thread.start()
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.getsockname()[1]}/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setattr(deps, "INSTALL_TIMEOUT_S", 6)
    started = time.monotonic()
    try:
        with pytest.raises(deps.MissingDependencyError, match="turn Internet on"):
            deps.ensure_requirements(
                [deps.Requirement("captioning-fake-remote")],
                wheels_dir=tmp_path / "no-wheels",
                install_dir=tmp_path / "deps",
            )
    finally:
        stop.set()
        thread.join()
        for connection in accepted:
            connection.close()
        server.close()
    assert time.monotonic() - started < 15
    assert accepted, "pip never tried the registry"


def test_notebook_setup_reports_a_missing_package_before_anything_else(tmp_path, isolated_path, monkeypatch):
    from helpers import notebook

    requirements = tmp_path / "requirements.txt"
    requirements.write_text("numpy>=1.0\ncaptioning-fake-metric>=1.2  # scores the runs\n")
    monkeypatch.setattr(deps, "REQUIREMENTS_FILE", requirements)
    monkeypatch.setattr(deps, "INSTALL_DIR", tmp_path / "deps")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # refused at once
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    started = time.monotonic()
    with pytest.raises(deps.MissingDependencyError, match="captioning-fake-metric>=1.2 is needed"):
        notebook.setup(tmp_path / "work")
    assert time.monotonic() - started < 60
    assert not (tmp_path / "work").exists()  # nothing started

    make_wheel(tmp_path / "wheels", "captioning-fake-metric", "1.2")
    monkeypatch.setattr(deps, "WHEELS_DIR", tmp_path / "wheels")
    env = notebook.setup(tmp_path / "work")
    assert env.work_dir == tmp_path / "work"
    assert deps.is_satisfied(deps.Requirement("captioning-fake-metric", "1.2"))
