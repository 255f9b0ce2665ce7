"""scripts/gpu_check.py: its dry run on the CPU runs every path (the GPU-only ones skipped, saying why),
reports each once, alike in the printed lines and the JSON; a failing path is reported, not hidden."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.py"
GPU_ONLY = {"decode/nvjpeg", "extract/nvjpeg", "nccl-all-reduce"}  # skipped in a dry run; the rest run
RESULT_LINE = re.compile(r"(PASS|FAIL|SKIP)  (\S+) +(?:(\d+\.\d) s)?  (.*)")


def _load_script():
    """scripts/gpu_check.py as a module (scripts are run as files, not imported as a package); registered
    in sys.modules, where its dataclasses look their module up."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = sys.modules["gpu_check"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check = _load_script()


def _reported(stdout: str) -> list[tuple[str, str, str | None, str]]:
    """(status, path, seconds as printed or None, detail) of each path's line."""
    return [match.groups() for match in map(RESULT_LINE.fullmatch, stdout.splitlines()) if match]


def _check_json_matches(results: dict, lines: list) -> None:
    assert list(results["paths"]) == [path for _, path, _, _ in lines]
    for status, path, seconds, detail in lines:
        result = results["paths"][path]
        assert (result["status"], result["detail"]) == (status, detail)
        assert seconds == (None if result["seconds"] is None else f"{result['seconds']:.1f}")


def test_the_dry_run_runs_every_path_on_the_cpu(tmp_path):
    out = tmp_path / "results.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)], capture_output=True,
                          text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = _reported(done.stdout)
    assert [path for _, path, _, _ in lines] == [name for name, _ in gpu_check.CHECKS]
    for status, path, seconds, detail in lines:
        assert status == ("SKIP" if path in GPU_ONLY else "PASS"), (path, detail)
        assert detail and (seconds is None) == (status == "SKIP")
    results = json.loads(out.read_text())
    _check_json_matches(results, lines)
    assert results["dry_run"] and results["torch"] and results["torchvision"]
    timed = ["decode/torchvision", "decode/pil", "extract/torchvision", "extract/pil", "cnn-alone",
             "measure-backbone", "ddp-extract"]
    assert all(results["paths"][path]["images_per_s"] > 0 for path in timed)
    assert "pil: pixels max 0" in results["paths"]["compare-decoders"]["detail"]


def test_a_failing_path_says_fail_with_its_message_and_the_run_exits_1(tmp_path, capsys):
    """The SCST path replaced by one that raises: FAIL with the first line of the exception, the paths
    after it still run, the traceback follows the table, and the exit status is 1."""

    def broken(bench):
        print("what the path printed before it failed")
        raise ValueError("the reward went wrong\nits second line")

    kept = ("prepare", "scst", "extract/nvjpeg")
    checks = [(name, broken if name == "scst" else check) for name, check in gpu_check.CHECKS if name in kept]
    out = tmp_path / "results.json"
    status = gpu_check.main(["--dry-run", "--out", str(out), "--work", str(tmp_path / "work")], checks=checks)
    captured = capsys.readouterr()
    assert status == 1
    lines = _reported(captured.out)
    assert [(state, path) for state, path, _, _ in lines] == [("PASS", "prepare"), ("FAIL", "scst"),
                                                              ("SKIP", "extract/nvjpeg")]
    assert lines[1][3] == "ValueError: the reward went wrong"
    assert "1 PASS, 1 FAIL, 1 SKIP" in captured.out
    assert "Traceback" in captured.err and "its second line" in captured.err
    assert "what the path printed before it failed" in captured.err
    _check_json_matches(json.loads(out.read_text()), lines)
