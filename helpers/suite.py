"""Run the numbered notebooks in order with papermill: the README's main job and the notebook tests.

`python -m helpers.suite --demo` executes 00 to 07 in DEMO mode (generated data, no downloads) and
leaves the executed notebooks in runs/demo/notebooks/ and their artifacts in runs/demo/work/ (below
the repository). The executed notebooks are signed, so JupyterLab trusts them and draws their saved
widgets at once; the clean notebooks in notebooks/ use runs/demo/work/ as their default work dir
when it exists, so they reuse the main job's data, features and runs.

It runs the repository's notebooks with papermill, nbformat and a Jupyter kernel (ipykernel): tools
that only running the suite from a checkout needs, so they are not runtime requirements of helpers
(`requirements.txt`, which every notebook checks on Kaggle and Colab) but of the tests
(`requirements-test.txt`). `main` checks them, and that the notebooks are there, before running
anything, and names the fix.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from packaging.requirements import Requirement

from helpers.deps import unmet

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
MAIN_JOB_OUT = REPO_ROOT / "runs" / "demo"  # the main job's folder (scripts/run_demo.sh)
MAIN_JOB_WORK_DIR = MAIN_JOB_OUT / "work"  # the clean notebooks' default work dir when it exists
SUITE = (
    "00_data_prep",
    "01_glove",
    "02_backbones",
    "03_train_vanilla_rnn",
    "04_train_lstm",
    "05_train_attention_lstm",
    "06_train_transformer",
    "07_results",
)


# What running notebooks headless needs beyond requirements.txt (requirements-test.txt names them too).
RUNNER_REQUIREMENTS = ("papermill>=2.6", "nbformat>=5.10", "ipykernel>=6.29")


class SuiteUnavailableError(RuntimeError):
    """The suite cannot run here: its notebooks or the tools that run them are missing."""


def check_runnable() -> None:
    """Raise SuiteUnavailableError, naming the fix, unless the notebooks and their runners are here."""
    if not any(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb")):
        raise SuiteUnavailableError(
            f"no notebooks in {NOTEBOOKS_DIR}: helpers was installed from its wheel, which ships no "
            "notebooks. Run the suite in a checkout of the repository (pip install -e . there)."
        )
    requirements = [Requirement(line) for line in RUNNER_REQUIREMENTS]
    missing = [f"{requirement} ({why})" for requirement in requirements if (why := unmet(requirement))]
    if missing:
        wanted = " ".join(f"'{requirement}'" for requirement in requirements)
        raise SuiteUnavailableError(
            f"python -m helpers.suite runs the notebooks with tools this Python lacks: {', '.join(missing)}. "
            f"Fix: pip install {wanted} (in the repository: pip install -r requirements-test.txt)."
        )


# What the main job adds in DEMO mode so the executed notebooks also show the optional comparisons
# (embeddings in 01, caption quality per backbone in 02): cheap on the demo data.
DEMO_SHOWCASE = {"COMPARE_EPOCHS": 2}


def run_notebook(
    name: str, out_dir: Path, parameters: dict, kernel: str = "python3", timeout: int = 1800
) -> Path:
    """Execute one notebook in a fresh kernel; returns the executed copy's path (written even on failure).

    Only the `parameters` that the notebook's parameters cell declares are passed to it.
    """
    import papermill

    source = NOTEBOOKS_DIR / f"{name}.ipynb"
    if not source.exists():
        raise FileNotFoundError(f"No notebook {source}; the suite is {', '.join(SUITE)}.")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}.ipynb"
    declared = papermill.inspect_notebook(str(source))
    papermill.execute_notebook(
        str(source),
        str(target),
        parameters={key: value for key, value in parameters.items() if key in declared},
        kernel_name=kernel,
        cwd=str(NOTEBOOKS_DIR),
        progress_bar=False,
        execution_timeout=timeout,
    )
    sign(target)
    return target


def sign(path: Path) -> None:
    """Sign an executed notebook for this user (Jupyter's notary), so JupyterLab trusts its outputs
    and renders its saved widgets instead of their text (`VBox(children=...`) until 'Trust'."""
    import nbformat
    from nbformat.sign import NotebookNotary

    notebook = nbformat.read(path, as_version=4)
    NotebookNotary().sign(notebook)


def run_suite(
    out: Path, demo: bool = True, names: tuple[str, ...] = SUITE, extra: dict | None = None
) -> list[Path]:
    """Run `names` in order, sharing one WORK_DIR, so each stage reuses the artifacts of the last.

    DEMO mode also turns on the optional comparisons (DEMO_SHOWCASE); `extra` parameters win.
    """
    out = Path(out).resolve()
    showcase = DEMO_SHOWCASE if demo else {}
    parameters = {"DEMO": demo, "WORK_DIR": str(out / "work"), **showcase, **(extra or {})}
    executed = []
    for name in names:
        started = time.perf_counter()
        print(f"[suite] {name} ...", flush=True)
        executed.append(run_notebook(name, out / "notebooks", parameters))
        print(f"[suite] {name} done in {time.perf_counter() - started:.0f} s -> {executed[-1]}", flush=True)
    return executed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, default=MAIN_JOB_OUT, help="folder for notebooks and work dir (%(default)s)"
    )
    parser.add_argument(
        "--demo", action=argparse.BooleanOptionalAction, default=True, help="DEMO mode (default)"
    )
    parser.add_argument("--only", nargs="*", choices=SUITE, help="run only these notebooks, in suite order")
    args = parser.parse_args(argv)
    names = tuple(n for n in SUITE if not args.only or n in args.only)
    try:
        check_runnable()
    except SuiteUnavailableError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        executed = run_suite(args.out, demo=args.demo, names=names)
    except Exception as error:  # papermill raises PapermillExecutionError naming the failing cell
        print(f"[suite] failed: {error}", file=sys.stderr)
        return 1
    print("[suite] executed notebooks:")
    for path in executed:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
