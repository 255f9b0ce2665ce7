"""`python -m helpers.train` and `python -m helpers.evaluate` end to end on the demo data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(module: str, *args: str, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _assert_clean_failure(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


@pytest.mark.slow
def test_train_then_evaluate_from_the_command_line(demo_dir, tmp_path):
    overrides = [
        f"data.work_dir={tmp_path / 'work'}",
        "data.dataset=flickr8k",
        f"data.data_dir={demo_dir}",
        f"training.run_dir={tmp_path / 'runs'}",
        "training.epochs=1",
        "training.meteor=false",
        "training.eval_splits=[test]",
        "training.eval_beam_sizes=[1]",
    ]
    trained = run("helpers.train", "--config", "configs/LSTM.yaml", "--demo", "--quiet", *overrides)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("LSTM-regnet_x_400mf_untrained-glove-96-")  # the demo's choices
    assert f"Run folder: {run_dir}" in trained.stdout
    assert "| test | 1 |" in trained.stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert results["epochs"] == 1 and "beam1" in results["metrics"]["test"]

    assert results["scoring"]["test"]["beam1"]["tokenizer"] == "project"  # configs/demo.yaml's

    evaluated = run(
        "helpers.evaluate", str(run_dir), "--split", "val", "--beam-size", "2", "--no-meteor",
        *(["--tokenizer", "ptb"] if shutil.which("java") else []),
    )
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    assert "| val | 2 |" in evaluated.stdout and "| test | 1 |" in evaluated.stdout  # earlier scores kept
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["metrics"]) == {"test", "val"}
    row = results["scoring"]["val"]["beam2"]
    assert row["tokenizer"] == ("ptb" if shutil.which("java") else "project")
    assert row["images"] == len(results["captions"]["val"]["beam2"]) and row["decoding"]["beam_size"] == 2

    again = run("helpers.train", "--config", "configs/LSTM.yaml", "--demo", "--quiet", *overrides)
    assert again.returncode == 0 and "Epochs: 1" in again.stdout  # resumed a finished run: nothing to do

    without_java = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    ptb = run("helpers.evaluate", str(run_dir), "--tokenizer", "ptb", env=without_java)
    _assert_clean_failure(ptb, "`java` is not on PATH", "apt-get install -y default-jre-headless")


@pytest.mark.slow
def test_train_rejects_bad_input_with_a_clear_message(tmp_path):
    unknown = run("helpers.train", "--config", "configs/LSTM.yaml", "model.hiden_dim=3")
    _assert_clean_failure(
        unknown, "error:", "unknown key 'model.hiden_dim'", "Did you mean 'model.hidden_dim'?"
    )
    missing = run("helpers.train", "--config", str(tmp_path / "none.yaml"))
    _assert_clean_failure(missing, "Config file not found")
    preset = run("helpers.train", "--config", "LSTM", "--preset", "kaggle_small_gpu", "model.attn_dim=1280")
    _assert_clean_failure(
        preset, "regnet_x_400mf outputs 400 channels; remove feature_channels (or the original notes'"
    )
    no_data = run("helpers.train", "--config", "LSTM", "data.dataset=flickr8k", f"data.data_dir={tmp_path}")
    _assert_clean_failure(no_data, "captions.txt")


def test_evaluate_rejects_a_missing_run_folder(tmp_path):
    result = run("helpers.evaluate", str(tmp_path / "nothing"))
    _assert_clean_failure(result, "No run folder")
    result = run("helpers.evaluate", str(tmp_path), "--beam-size", "0")
    _assert_clean_failure(result, "--beam-size must be at least 1")


def test_suite_names_its_missing_runners_and_notebooks_before_running_anything(tmp_path, monkeypatch,
                                                                               capsys):
    """`python -m helpers.suite` where helpers came from its wheel: papermill and nbformat (test-only
    requirements, not runtime ones) or the notebooks themselves (the wheel ships none) are missing."""
    from helpers import deps, suite

    real_unmet = deps.unmet
    monkeypatch.setattr(suite, "unmet", lambda requirement: (
        "not installed" if requirement.name in ("papermill", "nbformat") else real_unmet(requirement)))
    monkeypatch.setattr(suite, "run_suite", lambda *args, **kwargs: pytest.fail("ran without its tools"))
    assert suite.main(["--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "papermill>=2.6 (not installed), nbformat>=5.10 (not installed)." in error
    assert "pip install 'papermill>=2.6' 'nbformat>=5.10' 'ipykernel>=6.29'" in error
    assert "requirements-test.txt" in error

    monkeypatch.setattr(suite, "NOTEBOOKS_DIR", tmp_path / "site-packages" / "notebooks")
    assert suite.main(["--out", str(tmp_path)]) == 2
    assert "ships no notebooks" in capsys.readouterr().err


def test_suite_runners_are_the_test_requirements():
    from helpers.deps import read_requirements
    from helpers.suite import RUNNER_REQUIREMENTS

    testing = {str(requirement) for requirement in read_requirements(ROOT / "requirements-test.txt")}
    assert set(RUNNER_REQUIREMENTS) <= testing
