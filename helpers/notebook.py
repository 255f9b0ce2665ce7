"""The notebooks' session setup: the requirements checked, Kaggle, Colab and the GPU detected, the
work dir made, and where earlier stages' outputs are found (the work dir, attached notebook outputs).

Every notebook's setup cell calls `nb.setup(WORK_DIR)` first; what the notebooks show after it lives in
helpers.widgets (choices), helpers.figures (caption grids, attention maps, curves) and helpers.tables
(the results table), so this module stays the one place that knows where a session runs.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from helpers.deps import check_requirements
from helpers.devices import MIN_COMPUTE_CAPABILITY, capability_supported
from helpers.embeddings import GLOVE_CACHE_ENV
from helpers.inputs import input_root
from helpers.space import KAGGLE_WORKING
from helpers.suite import MAIN_JOB_WORK_DIR


@dataclass(frozen=True)
class Env:
    """Where this session runs and where its files live."""

    on_kaggle: bool
    # training.device: "cuda", "cpu" (also when the GPU is too old for this torch), or "auto" with Apple's
    # GPU, which then trains each decoder on mps where it runs there, else on the CPU (helpers.devices)
    device: str
    gpu_name: str | None
    compute_capability: tuple[int, int] | None
    work_dir: Path  # this stage's outputs (Kaggle keeps /kaggle/working after the session)
    input_dirs: tuple[Path, ...]  # read-only places holding earlier stages' outputs (/kaggle/input)
    started: float = field(default_factory=time.time, compare=False)  # when setup() ran
    place: str = "local"  # "Kaggle", "Colab" or "local": where the notebook runs

    def hours_left(self, session_hours: float | None) -> float | None:
        """What remains of a `session_hours` budget counted from setup() (None: no budget).

        Training gets at least one minute, so a late start still saves a checkpoint and pauses.
        """
        if session_hours is None:
            return None
        left = session_hours - (time.time() - self.started) / 3600
        if left < 1 / 60:
            print(f"The session has used its SESSION_HOURS={session_hours:g}; training gets one minute.")
        return max(left, 1 / 60)

    def summary(self) -> str:
        gpu = (
            f"{self.gpu_name} (sm_{self.compute_capability[0]}{self.compute_capability[1]})"
            if self.compute_capability
            else self.gpu_name or "none"
        )
        inputs = ", ".join(str(p) for p in self.input_dirs) or "none"
        device = "mps where the decoder runs on it, else cpu" if self.device == "auto" else self.device
        return f"{self.place} | device {device} | GPU {gpu} | work dir {self.work_dir} | inputs {inputs}"

    def outputs_note(self) -> str:
        """Where this notebook's outputs go, and what keeps them."""
        if self.on_kaggle:
            return (f"Outputs go to {self.work_dir}: Kaggle keeps them as this notebook's output when the "
                    "session is saved (Save Version).")
        if self.place == "Colab":
            return (f"Outputs go to {self.work_dir}. Colab deletes /content when the runtime ends: to keep "
                    "them, mount Google Drive (from google.colab import drive; "
                    "drive.mount('/content/drive')) and set WORK_DIR = '/content/drive/MyDrive/captioning'.")
        return f"Outputs go to {self.work_dir} (WORK_DIR sets another folder)."


def _gpu() -> tuple[str, str | None, tuple[int, int] | None]:
    """The training.device for this machine, the GPU's name and its compute capability (CUDA's). On
    Apple's GPU "auto": whether mps can train depends on the decoder, which a later cell chooses."""
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.cuda.get_device_name(0), tuple(torch.cuda.get_device_capability(0))
    if torch.backends.mps.is_available():
        return "auto", "Apple GPU (mps)", None
    return "cpu", None, None


def on_colab() -> bool:
    """Whether this kernel runs on Google Colab (its kernel loads google.colab; its runtimes set
    COLAB_RELEASE_TAG, which kagglehub reads too)."""
    return "google.colab" in sys.modules or bool(os.environ.get("COLAB_RELEASE_TAG"))


def setup(
    work_dir: str | Path | None = None,
    *,
    kaggle_input: str | Path | None = None,
    kaggle_working: str | Path = KAGGLE_WORKING,
) -> Env:
    """Check the requirements, detect Kaggle, Colab and the GPU, create the work dir, print a summary
    and where the outputs go.

    A package the suite needs that is missing or too old stops the notebook here, before any work,
    with the fix (helpers.deps; the setup cell's pip call installs them with the helpers wheel).

    On Kaggle (KAGGLE_KERNEL_RUN_TYPE is set) the work dir is /kaggle/working, or a relative
    `work_dir` below it, and the inputs are read from `kaggle_input` (default $KAGGLE_INPUT_DIR, else
    /kaggle/input); elsewhere (a laptop, Colab) `work_dir`, by default the main job's runs/demo/work
    when it exists (helpers.suite.MAIN_JOB_WORK_DIR: its artifacts are reused), else ./work (on
    Colab /content/work). A GPU below compute capability 7.0 (Kaggle's P100) is reported and not used:
    torch's first CUDA operation would fail on it. Apple's GPU (mps) trains each decoder that runs on it.
    """
    check_requirements()  # a missing package is reported now, never after an epoch of training
    on_kaggle = bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE"))
    if on_kaggle:
        base = Path(kaggle_working)
        work = (
            base
            if work_dir is None
            else (Path(work_dir) if Path(work_dir).is_absolute() else base / work_dir)
        )
        inputs = (Path(kaggle_input) if kaggle_input is not None else input_root(),)
    else:
        main_job = work_dir is None and MAIN_JOB_WORK_DIR.is_dir()
        work = MAIN_JOB_WORK_DIR if main_job else Path(work_dir if work_dir is not None else "work").resolve()
        if main_job:
            print(f"Using the main job's work dir {work} (its data, features, runs); WORK_DIR sets another.")
        inputs = ()
    work.mkdir(parents=True, exist_ok=True)
    if on_kaggle:  # ~/.cache is lost with the session; the work dir is saved with the notebook's output
        os.environ.setdefault(GLOVE_CACHE_ENV, str(work / "glove_cache"))

    device, gpu_name, capability = _gpu()
    if capability is not None and not capability_supported(capability):
        device = "cpu"
        message = (
            f"GPU {gpu_name} has compute capability {capability[0]}.{capability[1]}; this torch needs "
            f"{MIN_COMPUTE_CAPABILITY[0]}.{MIN_COMPUTE_CAPABILITY[1]} or newer (Kaggle's P100 no longer "
            "works). Running on the CPU: in Settings > Accelerator pick 'GPU T4 x2' and restart."
        )
        warnings.warn(message, stacklevel=2)
        print(f"WARNING: {message}")
    elif on_kaggle and gpu_name is None:
        print("No GPU in this session: in Settings > Accelerator pick 'GPU T4 x2' (and turn Internet on).")
    place = "Kaggle" if on_kaggle else "Colab" if on_colab() else "local"
    env = Env(on_kaggle, device, gpu_name, capability, work, inputs, place=place)
    print(env.summary())
    print(env.outputs_note())
    return env


# Where a stage's outputs sit below a root: the work dir itself, /kaggle/input/<slug> (before 2025),
# /kaggle/input/notebooks/<owner>/<slug> (since 2025). Bounded, so attached image folders are never walked.
OUTPUT_DEPTHS = ("", "*/", "*/*/", "*/*/*/")


def find_earlier_outputs(name_glob: str, env: Env, include_work_dir: bool = True) -> list[Path]:
    """Every file or folder matching `name_glob` (e.g. 'data/*/manifest.json') in the work dir first,
    then in the input dirs (attached notebook outputs in either Kaggle layout), shallowest first."""
    found: list[Path] = []
    roots = [env.work_dir] if include_work_dir else []
    for root in (*roots, *env.input_dirs):
        if root.is_dir():
            for prefix in OUTPUT_DEPTHS:
                found.extend(match for match in sorted(root.glob(prefix + name_glob)) if match not in found)
    return found
