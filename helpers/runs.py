"""A run and its folder: the counters and live objects of a training (`TrainState`), what its
checkpoints hold and how a resume restores them, the checks that a folder may be resumed by a config
and vocabulary, taking the folder (its lock, leftovers of killed writes), room for its checkpoints,
every rank's random generators, the time budget that pauses a run, and where an SCST run starts from.

The run folder `<run_dir>/<run_name>/` gets `last.pt` (everything needed to resume: model, optimizer,
scheduler, scaler, every rank's RNG states, history; also every `checkpoint_every_steps` steps),
`best.pt` (the best weights by val CIDEr), `history.json` after each epoch and, at the end,
`results.json`. Checkpoints are written to a temporary file and renamed (helpers.checkpoints), so a
killed session never leaves a broken one, and hold the CNN only when it trains.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from helpers import distributed
from helpers.checkpoints import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    load_checkpoint,
    load_model_state,
    model_state,
)
from helpers.config import (
    KEYS_ADDED_LATER,
    Config,
    ConfigError,
    config_from_dict,
    config_with,
    older_run_values,
    run_identity,
)
from helpers.files import remove_abandoned_temporaries, write_bytes_atomic
from helpers.runlock import RunLock
from helpers.space import check_space, folder_bytes

# --------------------------------------------------------------------------------------------- RNG


RANK_SEED_STRIDE = 1_000_003  # rank r > 0 draws from seed + r * this: other dropout masks than rank 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_rank(seed: int) -> None:
    """After the model is built from `seed` (alike on every rank): give each rank its own random
    stream, so the devices draw different dropout masks, as one device does over the global batch.
    Rank 0 keeps the stream of a run on one device."""
    if distributed.rank():
        seed_everything(seed + RANK_SEED_STRIDE * distributed.rank())


def rng_state(device: torch.device) -> dict[str, Any]:
    """Python, numpy, torch and (training on a GPU) that GPU's generator states, in types
    torch.load(weights_only=True) accepts. One GPU's only: a resume may see fewer GPUs."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore `rng_state`'s generators; the GPU's onto `device` when it trains on one. Checkpoints of
    earlier versions hold a list of every visible GPU's state: this device's entry is taken if any."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if isinstance(cuda, (list, tuple)):
        index = device.index or 0
        cuda = cuda[index] if index < len(cuda) else None
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)


def check_run_space(run_dir: Path, model: nn.Module, config: Config) -> None:
    """Refuse to start when the run folder's checkpoints would not fit (helpers.space): best.pt holds
    the model's saved state, last.pt that plus AdamW's two moments per trainable parameter, and a
    new last.pt is written beside the old one before it replaces it."""
    state = sum(t.numel() * t.element_size() for t in model_state(model, config).values())
    moments = sum(2 * p.numel() * 4 for p in model.parameters() if p.requires_grad)
    needed = state + 2 * (state + moments) + 10**6 - folder_bytes(run_dir)  # + history and results
    check_space(run_dir, needed, f"The run folder {run_dir}", [
        "free space: delete run folders you no longer need from the runs folder",
        'a smaller model: e.g. OVERRIDES = ["model.hidden_dim=256"]',
    ])


@dataclass(kw_only=True)
class Progress:
    """Where a run stands: the counters that best.pt and last.pt save and a resume restores."""

    epoch: int = 0  # index of the epoch in progress (== epochs done at an epoch end)
    step_in_epoch: int = 0  # batches done in the epoch in progress
    global_step: int = 0
    epoch_loss_sum: float = 0.0  # sum of caption losses so far in the epoch in progress
    epoch_captions: int = 0  # captions trained on so far in the epoch in progress
    history: list[dict[str, float]] = field(default_factory=list)
    best_metrics: dict[str, float] | None = None
    best_epoch: int | None = None
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    wall_time_s: float = 0.0
    phase: str = "xe"  # xe: cross-entropy epochs; scst: the self-critical phase after them
    scst_epoch: int = 0  # SCST epochs done (the epoch in progress within the phase)
    epoch_reward_sum: float = 0.0  # SCST: sum of sampled captions' CIDEr-D so far in the epoch in progress
    scst_from: str | None = None  # the cross-entropy run folder an SCST run started from, if not its own

    def counters(self) -> dict[str, Any]:
        return {item.name: getattr(self, item.name) for item in fields(Progress)}


@dataclass
class TrainState(Progress):
    """What callbacks see: the live objects and the counters (`event` is step_end or epoch_end)."""

    config: Config
    run_dir: Path
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    device: torch.device
    loss: float = float("nan")  # last batch's loss

    def checkpoint(self, vocab, resumable: bool = True, rng: list[dict] | None = None) -> dict[str, Any]:
        """The contents of a checkpoint: the weights, the config and vocabulary they belong to and the
        counters (best.pt, `resumable=False`), plus what an exact resume needs (last.pt): the
        optimizer, scheduler, gradient scaler and random generator states: `rng`, every rank's
        (rank 0 first, the others as `rank_rng`), by default this process's."""
        saved = {
            "format": CHECKPOINT_FORMAT,
            "model": model_state(self.model, self.config),
            "config": self.config.to_dict(),
            "vocab": list(vocab.idx_to_word),
            **self.counters(),
        }
        if resumable:
            rng = rng or [rng_state(self.device)]
            saved.update(
                optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict(),
                scaler=self.scaler.state_dict(),
                rng=rng[0],
                **({"rank_rng": rng[1:]} if len(rng) > 1 else {}),
            )
        return saved

    def restore(self, checkpoint: dict[str, Any], path: Path) -> None:
        """Continue from a last.pt that `checkpoint` wrote."""
        load_model_state(self.model, checkpoint["model"], path)
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        # A run started on the CPU (scaler disabled, empty state) may resume on a GPU, and the other way
        # round: keep the fresh scaler then; its scale re-calibrates within a few steps.
        if checkpoint["scaler"] and self.scaler.is_enabled():
            self.scaler.load_state_dict(checkpoint["scaler"])
        for name in self.counters():
            if name in checkpoint:  # counters added later keep their defaults for older checkpoints
                setattr(self, name, checkpoint[name])
        states = [checkpoint["rng"], *checkpoint.get("rank_rng", [])]
        if distributed.rank() < len(states):
            set_rng_state(states[distributed.rank()], self.device)
        else:  # saved with fewer ranks: a stream of its own, from rank 0's
            set_rng_state(states[0], self.device)
            seed_rank(self.config.training.seed + self.global_step)

    @property
    def cross_entropy_done(self) -> bool:
        return self.phase == "scst" or self.stopped_early or self.epoch >= self.config.training.epochs

    @property
    def finished(self) -> bool:
        scst = self.config.training.scst
        if not scst.enabled:
            return self.cross_entropy_done
        return self.phase == "scst" and (self.stopped_early or self.scst_epoch >= scst.epochs)


NEW_RUN_HINT = (
    "start a new run: another training.run_name (command line: training.run_name=NEW; notebooks: "
    'OVERRIDES = ["training.run_name=NEW"]), or start over in this folder, replacing its checkpoints '
    "(command line: --no-resume; notebooks: RESUME = False; Python: train(config, resume=False))."
)


def _check_resumable(checkpoint: dict, config: Config, path: Path) -> None:
    """A run folder may only be resumed with the config (and data) it was started with."""
    saved = run_identity(config_from_dict(checkpoint["config"], origin=str(path)))
    differences = [
        f"{key}: {saved.get(key)!r} -> {value!r}"
        for key, value in run_identity(config).items()
        if saved.get(key) != value
    ]
    if differences:
        raise ConfigError(
            f"{path} was written with a different config ({'; '.join(differences)}). Resume with the "
            f"original config{_older_run_hint(checkpoint['config'])}, or {NEW_RUN_HINT}"
        )


def _older_run_hint(stored: dict) -> str:
    """How to resume a run saved before some of the keys that change training existed."""
    values = older_run_values(stored)
    if not values:
        return ""
    missing = [key for key in KEYS_ADDED_LATER if key in values]
    overrides = " ".join(f"{key}={value}" for key, value in values.items())
    return (
        f" (it was saved before {', '.join(missing)} existed and trained as with {overrides}: "
        f"add these overrides to resume it)"
    )


def check_resume_compatible(checkpoint: dict, vocab, config: Config, path: Path) -> None:
    """Refuse to resume `checkpoint` unless it was made by this config on this vocabulary.

    The word ids must be the same, not only their number: a model whose embedding rows and output
    units belong to other words would go on training without an error and produce nonsense.
    """
    _check_resumable(checkpoint, config, path)
    saved, current = list(checkpoint["vocab"]), list(vocab.idx_to_word)
    if saved == current:
        return
    saved_ids = {word: index for index, word in enumerate(saved)}
    current_ids = {word: index for index, word in enumerate(current)}
    added = [repr(word) for word in current if word not in saved_ids]
    removed = [repr(word) for word in saved if word not in current_ids]
    moved = [
        f"{word!r} {saved_ids[word]} -> {index}"
        for word, index in current_ids.items()
        if word in saved_ids and saved_ids[word] != index
    ]
    changes = [
        f"{len(words):,} {what} (e.g. {', '.join(words[:3])})"
        for words, what in ((added, "added"), (removed, "gone"), (moved, "with another id"))
        if words
    ]
    raise CheckpointError(
        f"{path} was trained on another vocabulary than the prepared data gives now ({len(saved):,} -> "
        f"{len(current):,} words: {'; '.join(changes)}). The captions, the split or "
        "data.min_word_count changed since this run started, so its word vectors would be read as "
        f"other words. Go back to the data it was trained on, or {NEW_RUN_HINT}"
    )


class NonFiniteLossError(RuntimeError):
    """The training loss became nan or inf; the message names the step and the last good checkpoint."""


def check_finite_loss(state: TrainState, last_path: Path, best_path: Path) -> None:
    """Stop at the first nan/inf training loss, before a checkpoint of the diverged weights is written."""
    if math.isfinite(state.loss):
        return
    kept = [
        f"{path} (global step {checkpoint['global_step']}, {checkpoint['epoch']} epochs done)"
        if path == last_path
        else f"{path} (best epoch {checkpoint['best_epoch']})"
        for path in (last_path, best_path)
        if path.is_file() and (checkpoint := _checkpoint_position(path))
    ]
    config = state.config
    raise NonFiniteLossError(
        f"the training loss is {state.loss} at epoch {state.epoch + 1}, step {state.step_in_epoch + 1} "
        f"(global step {state.global_step + 1}) of {config.run_path}: training stopped there and wrote "
        "nothing more. The last good checkpoints are kept: "
        f"{', '.join(kept) if kept else 'none yet (it diverged before the first checkpoint)'}. "
        "Causes: a learning rate too high for this model (training.lr="
        f"{config.training.lr:g}; keep training.grad_clip on), or non-finite numbers in the input "
        f"(GloVe file {config.embeddings.glove_path if config.embeddings.use_glove else '-'}, features). "
        f"With a lower training.lr, {NEW_RUN_HINT}"
    )


def _checkpoint_position(path: Path) -> dict | None:
    """epoch, global_step and best_epoch of a checkpoint, or None when it cannot be read."""
    try:
        return load_checkpoint(path, "cpu")
    except (CheckpointError, FileNotFoundError):
        return None


def take_run_folder(run_dir: Path, lock: RunLock | None, resume: bool | None, progress: bool) -> bool:
    """Lock the run folder (unless `lock` is None: a device process, whose launcher holds it), clear what
    killed writes left, and say whether to resume from last.pt."""
    if lock is not None:
        lock.acquire()
    if lock is not None and lock.taken_over_from and progress:
        owner = lock.taken_over_from
        print(
            f"{run_dir}: the training that held it (process {owner.get('pid')} since {owner.get('since')}) "
            "ended without releasing it (killed?); taking it over"
        )
    remove_abandoned_temporaries(run_dir)
    last_path = run_dir / "last.pt"
    resume = last_path.is_file() if resume is None else resume
    if resume and not last_path.is_file():
        raise FileNotFoundError(f"Cannot resume: {last_path} does not exist (start without --resume).")
    return resume


def cross_entropy_config(config: Config) -> Config:
    """The config of the cross-entropy run an SCST run continues: the same settings, SCST off."""
    return config_with(config, {"training.scst.enabled": False})


def cross_entropy_start(config: Config, vocab) -> dict | None:
    """For a fresh SCST run: the last.pt of the finished cross-entropy run of the same settings, its
    best.pt copied into the SCST run folder (the phase starts from it); None when there is none."""
    if not config.training.scst.enabled:
        return None
    cross_entropy = cross_entropy_config(config).run_path
    try:
        checkpoint = load_checkpoint(cross_entropy / "last.pt", "cpu")
        best = (cross_entropy / "best.pt").read_bytes()
    except (CheckpointError, FileNotFoundError):
        return None
    if not finished_training(checkpoint, config):
        return None  # unfinished: train() finishes it first (unfinished_cross_entropy)
    check_resume_compatible(checkpoint, vocab, cross_entropy_config(config), cross_entropy / "last.pt")
    config.run_path.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(config.run_path / "best.pt", best)
    return checkpoint | {"scst_from": str(cross_entropy)}


def unfinished_cross_entropy(config: Config) -> dict | None:
    """For an SCST run not started yet: the last.pt of its cross-entropy run (same settings, SCST off)
    when that run is there with epochs left, which train() then finishes first, in its own folder,
    instead of training every cross-entropy epoch again; else None."""
    if not config.training.scst.enabled or (config.run_path / "last.pt").is_file():
        return None
    try:
        checkpoint = load_checkpoint(cross_entropy_config(config).run_path / "last.pt", "cpu")
    except (CheckpointError, FileNotFoundError):
        return None
    return None if finished_training(checkpoint, config) else checkpoint


def finished_training(checkpoint: dict, config: Config) -> bool:
    """Whether a cross-entropy run's checkpoint has all its epochs (or stopped early)."""
    return checkpoint["stopped_early"] or checkpoint["epoch"] >= config.training.epochs


def out_of_time(deadline: float | None) -> bool:
    """Whether training.max_hours ran out (on any rank: all ranks pause at the same step)."""
    return deadline is not None and distributed.any_rank(time.perf_counter() >= deadline)


