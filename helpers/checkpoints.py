"""Checkpoints of a run folder: written atomically, read with errors that say what to do, and turned
back into a model (`load_run`).

A checkpoint is a dict that torch.load(weights_only=True) reads: the model's weights (without a frozen
CNN, which is rebuilt from its name and weights), the config and vocabulary it was trained with, the
training counters and, in last.pt, what resuming needs (see `helpers.train.TrainState.checkpoint`).
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from helpers.config import Config, config_from_dict
from helpers.features import store_encoder
from helpers.files import WriteError, atomic_path
from helpers.models import build_model
from helpers.text import Vocabulary

CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: empty, truncated, or not made for this run's model and data."""


def save_atomic(payload: dict, path: Path) -> None:
    """torch.save to a temp file in the same folder, then os.replace: a kill never leaves half a file.

    A failed write (full disk, read-only folder) raises WriteError naming the file; the previous
    checkpoint stays as it was."""
    try:
        with atomic_path(path) as temporary:
            torch.save(payload, temporary)
    except RuntimeError as error:  # torch's own writer reports a failed write without an errno
        free = shutil.disk_usage(Path(path).parent).free
        raise WriteError(
            f"could not write {path} ({error}); {free / 2**20:,.0f} MiB are free there, so the disk is "
            "probably full. Free some space or set training.run_dir to a larger disk, then run the same "
            "command again: it continues from the last complete checkpoint."
        ) from error


def encoder_in_checkpoint(config: Config) -> bool:
    """The CNN's weights are saved only when they train (finetune mode). A frozen CNN is rebuilt from
    its name and weights when a checkpoint is loaded (`load_run`): torchvision's pretrained weights,
    or the seeded random ones the feature store was extracted with."""
    return config.training.mode == "finetune"


def model_state(model: nn.Module, config: Config) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    if encoder_in_checkpoint(config):
        return state
    return {key: value for key, value in state.items() if not key.startswith("image_encoder.")}


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # "size mismatch for ...": the config builds other shapes
        raise CheckpointError(
            f"{path} does not fit the model its config builds: {str(error).strip().splitlines()[-1]}"
        ) from None
    missing = [key for key in missing if not key.startswith("image_encoder.")]
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit the model its config builds: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}."
        )


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint {path}; train first (python -m helpers.train --config ...).")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except (EOFError, RuntimeError, pickle.UnpicklingError, OSError, ValueError) as error:
        raise CheckpointError(_unreadable_checkpoint(path, error)) from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        checkpoint = checkpoint if isinstance(checkpoint, dict) else {}
        raise CheckpointError(
            f"{path}: checkpoint format {checkpoint.get('format')!r}, expected {CHECKPOINT_FORMAT}."
        )
    return checkpoint


def _unreadable_checkpoint(path: Path, error: BaseException) -> str:
    """Why torch could not read `path` and what to do, for a file that was not written completely."""
    size = path.stat().st_size
    what = "is empty (0 bytes)" if size == 0 else f"is truncated or damaged ({size:,} bytes; torch: {error})"
    if path.name == "best.pt":
        fix = (
            "If the run folder was copied, copy this file again. Otherwise delete it: training rewrites "
            "best.pt at the next epoch with a better val CIDEr, and `python -m helpers.evaluate RUN "
            "--checkpoint last` scores the last weights."
        )
    else:
        fix = (
            "If the run folder was copied, copy this file again. Otherwise delete it and start the run "
            "over (--no-resume on the command line, RESUME = False in a notebook, train(resume=False))."
        )
    return f"{path} {what}: it was not written completely (a full disk, or an interrupted copy). {fix}"


def rebuild_frozen_encoder(model: nn.Module, state: dict[str, torch.Tensor], config: Config) -> None:
    """Give a model loaded from a checkpoint without CNN weights the CNN its features came from: the
    one `extract_features` runs (pretrained weights, loaded when images first pass, or the seeded
    random ones), so that captioning images agrees with the feature store. Older checkpoints that
    carry the CNN keep theirs."""
    if any(key.startswith("image_encoder.") for key in state):
        return
    model.image_encoder = store_encoder(config.model.backbone, config.model.pretrained_backbone,
                                        defer_weights=True)


def load_run(run_dir: str | os.PathLike, device: str | torch.device = "cpu", which: str = "best"):
    """(model in eval mode, checkpoint dict, Config) from `<run_dir>/<which>.pt`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"No run folder {run_dir}.")
    path = run_dir / f"{which}.pt"
    checkpoint = load_checkpoint(path, device)
    config = config_from_dict(checkpoint["config"], origin=str(path))
    # No GloVe to read: the checkpoint holds the trained word vectors.
    model = build_model(config, Vocabulary(checkpoint["vocab"]), word_vectors=None)
    load_model_state(model, checkpoint["model"], path)
    rebuild_frozen_encoder(model, checkpoint["model"], config)
    return model.to(device).eval(), checkpoint, config

