"""The one training loop, used by the notebooks and by `python -m helpers.train --config configs/LSTM.yaml`.

`train(config)` prepares the data (cached), extracts the backbone features (cached), builds the model
from the config and runs `fit`: AdamW, linear warmup then cosine (or linear) decay, gradient clipping,
fp16 autocast with a gradient scaler on CUDA (helpers.optimization). Two modes:

* ``features`` (default): the CNN is frozen and never runs; batches come from the feature store.
* ``finetune``: images pass through the CNN, whose last `training.finetune_layers` layers train
  (with `encoder_lr_scale` times the learning rate) while the rest stay frozen; BatchNorm layers
  keep their ImageNet statistics.

`fit` is the loop, read top to bottom: each step takes a batch, the loss of the phase's objective
(helpers.objectives: cross-entropy, then self-critical training on CIDEr-D with `training.scst.enabled`
/ `--scst`), backward, clip, step; each epoch ends with last.pt, validation (loss, greedy-decoded BLEU-4
and CIDEr), best.pt when the val CIDEr improved and history.json; training stops early when it has not
improved for `patience` epochs. The run folder, its checkpoints, resume checks and the time budget are
helpers.runs: `train` resumes from `last.pt` by default and, for a seeded run on the CPU, ends with
exactly the weights of an uninterrupted run; `training.max_hours` pauses a run cleanly before a
session's time runs out (`last.pt` saved, mid-epoch if need be, the best weights so far scored into
`results.json` with status "paused"); the next call continues. At the end best.pt is scored on
`training.eval_splits` into `results.json`.

An SCST run has its own run folder (`...-scst-<hash>`, or `<training.run_name>-scst`); it starts from
the finished cross-entropy run of the same settings when that folder is there (copying its checkpoints,
`scst_from` names it), finishes that run first when it has epochs left, and else trains those
cross-entropy epochs itself first. On several devices (helpers.distributed) the ranks
share each batch; SCST's cross-entropy epochs train on all of them and its phase on one. On a GPU a
preflight (helpers.preflight) first runs the run's GPU paths on a tiny batch.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import random
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.multiprocessing import ProcessExitedException
from torch.utils.data import DataLoader, Dataset

from helpers import distributed
from helpers.backbones import image_transform
from helpers.checkpoints import (
    load_checkpoint,
    load_model_state,
    load_run,
    rebuild_frozen_encoder,
    save_atomic,
)
from helpers.config import Config, ConfigError, config_layers, config_with, load_config
from helpers.devices import DeviceOutOfMemoryError, out_of_memory_error, resolve_device
from helpers.errors import INPUT_ERRORS
from helpers.evaluate import (
    METRIC_LABELS,
    JavaUnavailableError,
    as_printed,
    compute_metrics,
    decode_split,
    format_metrics_table,
    resolve_tokenizer,
    score_model,
    write_results,
)
from helpers.features import CaptionFeatureDataset, ImageFeatureDataset
from helpers.files import write_bytes_atomic, write_json_atomic
from helpers.glove import load_word_vectors
from helpers.images import BadImage, ImageDataset, collate_skip_bad, default_num_workers
from helpers.models import build_model
from helpers.objectives import CrossEntropy, SelfCritical
from helpers.optimization import (
    amp_enabled,
    apply_gradients,
    configure_trainable,
    make_optimizer,
    make_scheduler,
    step_schedule,
    warn_if_schedule_changed,
)
from helpers.preflight import PreflightError, preflight
from helpers.progress import ProgressLine
from helpers.runlock import RunLock
from helpers.runs import (
    NonFiniteLossError,
    TrainState,
    check_finite_loss,
    check_resume_compatible,
    check_run_space,
    cross_entropy_config,
    cross_entropy_start,
    finished_training,
    out_of_time,
    rng_state,
    seed_everything,
    seed_rank,
    take_run_folder,
    unfinished_cross_entropy,
)
from helpers.text import NULL, SPECIAL_TOKENS
from helpers.workdir import prepare_for, prepared_and_features

Callback = Callable[[str, TrainState], None]


# ------------------------------------------------------------------------------------------- data


def _seed_worker(worker_id: int) -> None:
    """DataLoader workers: numpy and random seeded from the worker's torch seed (set by the loader)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)

class ImageCaptionDataset(Dataset):
    """(image float (3, S, S) in [0, 1], caption (T+2,)) pairs of one split, for fine-tuning.

    A file that cannot be decoded gives a `helpers.images.BadImage` marker; the collate function
    drops it.
    """

    def __init__(self, prepared, split: str, transform):
        captions, self.image_idx = prepared.captions(split)
        self.captions = np.asarray(captions)
        paths = [str(prepared.image_path(name)) for name in prepared.splits[split]]
        self.images = ImageDataset(paths, transform)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int):
        sample = self.images[int(self.image_idx[index])]
        if isinstance(sample, BadImage):
            return sample
        return sample[0], torch.from_numpy(self.captions[index].astype(np.int64))

def _datasets(config: Config, prepared, store) -> tuple[Dataset, Dataset]:
    """Train and val datasets of (features or image, caption) pairs."""
    if store is not None:
        return CaptionFeatureDataset(store, prepared, "train"), CaptionFeatureDataset(store, prepared, "val")
    transform = image_transform(config.model.backbone, config.image_size, torch.uint8)
    return ImageCaptionDataset(prepared, "train", transform), ImageCaptionDataset(prepared, "val", transform)

def _val_subset(dataset: Dataset, prepared, store, max_images: int | None) -> Dataset:
    """Captions of the first `max_images` val images only (all when None), as `decode_split` picks them."""
    if max_images is None:
        return dataset
    if store is not None:  # CaptionFeatureDataset: rows of the store's val split, bad images left out
        wanted = set(ImageFeatureDataset(store, "val").rows[:max_images].tolist())
        keep = [i for i, row in enumerate(dataset.rows.tolist()) if row in wanted]
    else:
        keep = [i for i, image in enumerate(dataset.image_idx.tolist()) if image < max_images]
    return torch.utils.data.Subset(dataset, keep)

def _loader(dataset: Dataset, batches: list[list[int]], config: Config, device: torch.device, seed: int):
    """A DataLoader over fixed index batches, with seeded workers and its own generator."""
    workers = config.training.num_workers
    if workers is None:
        workers = default_num_workers()
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=collate_skip_bad,  # (inputs, captions, bad images)
        worker_init_fn=_seed_worker,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=device.type == "cuda",
    )

def epoch_batches(num_items: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The shuffled index batches of one epoch: a pure function of (seed, epoch), so resuming repeats them."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_items, generator=generator).tolist()
    return [order[i : i + batch_size] for i in range(0, num_items, batch_size)]


def check_vocabulary(prepared, config: Config) -> None:
    """Before any training: the vocabulary holds words, not only the special tokens (every caption
    would train to <UNK> and score 0)."""
    if len(prepared.vocab.idx_to_word) > len(SPECIAL_TOKENS):
        return
    raise ConfigError(
        f"{prepared.root}: the vocabulary holds only the special tokens {SPECIAL_TOKENS}: no word of the "
        f"training captions is seen data.min_word_count={config.data.min_word_count} times. Lower "
        "data.min_word_count (default 5; command line: data.min_word_count=5; notebooks: OVERRIDES = "
        '["data.min_word_count=5"]).'
    )


def check_splits(prepared, config: Config) -> None:
    """Before any training: the splits that training and scoring will read exist and have images."""
    needed = {"train": "training", "val": "validation after each epoch"}
    for split in config.training.eval_splits:
        needed.setdefault(split, "training.eval_splits")
    empty = [f"{split!r} ({why})" for split, why in needed.items() if not prepared.splits.get(split)]
    if not empty:
        return
    counts = ", ".join(f"{split} {len(images):,}" for split, images in prepared.splits.items())
    source = prepared.manifest["source"]
    karpathy = source.get("karpathy_json")
    if karpathy:
        fix = (
            f"The Karpathy split file {karpathy['name']} leaves them empty for these images: use the "
            f"split file of this dataset (dataset_{prepared.dataset}.json), or data.split=seeded"
        )
    else:
        fix = "The dataset has too few images for the seeded split: add images, or use data.split=karpathy"
    unscored = [split for split in config.training.eval_splits if not prepared.splits.get(split)]
    if unscored and all(prepared.splits.get(split) for split in ("train", "val")):
        fix += f", or leave {unscored} out of training.eval_splits"
    raise ConfigError(
        f"{prepared.root}: the prepared split has no images in {', '.join(empty)} (images: {counts}). "
        f"{fix}."
    )


# ------------------------------------------------------------------------------------------ the loop


@dataclass
class Run:
    """One call of `train`: its live state, its data and objectives, and what the loop's steps share."""

    state: TrainState
    prepared: Any
    store: Any
    train_data: Dataset
    val_data: Dataset
    callbacks: list[Callback]
    progress: bool
    deadline: float | None  # time.perf_counter() at which training.max_hours runs out
    replica: nn.Module | None = None  # the model that trains: `state.model`, or DDP around it
    started: float = field(default_factory=time.perf_counter)  # this call's clock starts
    wall_before: float = 0.0  # training time of earlier calls (resumed runs)
    _self_critical: SelfCritical | None = None

    @property
    def config(self) -> Config:
        return self.state.config

    @property
    def cross_entropy(self) -> CrossEntropy:
        return CrossEntropy(self.config, self.train_data)

    @property
    def self_critical(self) -> SelfCritical:
        """The SCST objective, built when the phase first runs in this call (its reward's document
        frequencies take a few seconds on Flickr8k)."""
        if self._self_critical is None:
            self._self_critical = SelfCritical.for_run(self.config, self.prepared, self.store)
        return self._self_critical

    @property
    def objective(self) -> CrossEntropy | SelfCritical:
        return self.self_critical if self.state.phase == "scst" else self.cross_entropy

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.objective.data) / self.objective.batch_size)

    @property
    def last_path(self) -> Path:
        return self.state.run_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.state.run_dir / "best.pt"

    def save(self, path: Path, resumable: bool = True) -> None:
        """Write a checkpoint (rank 0 alone, with every rank's generator states when `resumable`), its
        training time counted up to now."""
        self.state.wall_time_s = self.wall_before + time.perf_counter() - self.started
        rng = distributed.gather_on_main([rng_state(self.state.device)]) if resumable else None
        if distributed.is_main():  # one writer however many devices train
            save_atomic(self.state.checkpoint(self.prepared.vocab, resumable, rng), path)


def fit(run: Run) -> bool:
    """The training loop: epochs of steps until the run is finished (its epochs done, or stopped
    early) or the time budget runs out; True when it paused. A step is a batch, the loss of the
    phase's objective, backward, clip and step; an epoch ends with last.pt, validation, best.pt when
    the val CIDEr improved, and history.json."""
    state, config, device = run.state, run.config, run.state.device
    amp, every = amp_enabled(config, device), config.training.checkpoint_every_steps
    while not state.finished:
        if state.phase == "xe" and state.cross_entropy_done:  # SCST follows the cross-entropy epochs
            run.self_critical.begin(state, run.best_path, run.progress)
        objective = run.objective
        batches = epoch_batches(len(objective.data), objective.batch_size, config.training.seed,
                                state.epoch)
        shares = [distributed.share(batch) for batch in batches[state.step_in_epoch :]]  # all: one device
        loader = _loader(objective.data, [share.indices for share in shares], config, device,
                         seed=config.training.seed + state.epoch)
        state.model.train()
        state.model.image_encoder.eval()  # BatchNorm keeps its ImageNet statistics, also when fine-tuning
        objective.set_modes(state.model)
        bar = ProgressLine(len(batches), _epoch_label(state), unit="batch", initial=state.step_in_epoch,
                           enabled=run.progress)
        started, seen, bad_images = time.perf_counter(), 0, 0
        for (inputs, targets, bad), share in zip(loader, shares):
            bad_images, counted = bad_images + len(bad), share.counted
            if inputs is None and distributed.world_size() > 1:  # DDP waits for every rank's backward
                inputs, targets, counted = _filler(config, run.prepared.vocab.word_to_idx[NULL])
            if inputs is not None:
                inputs = inputs.to(device, non_blocking=True)
                step = objective.loss(run.replica, inputs, targets, counted, amp)
                apply_gradients(step.backward, state.optimizer, state.scaler, config.training.grad_clip)
                state.loss = distributed.global_mean(step.mean.item(), step.captions, step.total)
                check_finite_loss(state, run.last_path, run.best_path)
                state.epoch_loss_sum += state.loss * step.total
                state.epoch_captions += step.total
                state.epoch_reward_sum += step.reward_sum
                seen += step.total
            step_schedule(state.scheduler, first=state.global_step == 0)
            state.step_in_epoch += 1
            state.global_step += 1
            speed = seen / max(time.perf_counter() - started, 1e-9)
            bar.update(loss=f"{state.loss:.3f}", captions_s=f"{speed:.0f}")
            if every and state.global_step % every == 0 and state.step_in_epoch < len(batches):
                run.save(run.last_path)
            _call(run.callbacks, "step_end", state)
            if out_of_time(run.deadline) and state.step_in_epoch < len(batches):
                bar.close("")
                run.save(run.last_path)
                return True
        bar.close("")  # the epoch's line (_print_epoch) is its summary
        # Saved before any scoring: a failure while validating (a missing metrics package, say)
        # never loses the epoch's training; a rerun validates it from here.
        run.save(run.last_path)
        train_time = time.perf_counter() - started
        if bad_images:
            warnings.warn(f"epoch {state.epoch + 1}: skipped {bad_images} captions whose image could not "
                          "be decoded", stacklevel=3)
        metrics = _validate(run)
        _end_epoch(run, metrics, seen, train_time, started)
        if out_of_time(run.deadline) and not state.finished:
            return True
    return False


def _filler(config: Config, null: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """What a rank trains on when every image of its share of a batch failed to decode (fine-tuning on
    several devices): one black crop with an all-<NULL> caption, weighed zero, so the rank still joins
    the step the others wait for."""
    size = config.image_size
    image = torch.zeros(1, 3, size, size, dtype=torch.uint8)
    caption = torch.full((1, config.data.max_caption_length + 2), null, dtype=torch.long)
    return image, caption, False


def _validate(run: Run) -> dict[str, float]:
    """Val loss (teacher forced) and greedy-decoded BLEU/CIDEr on the val split (each device takes
    its share of the batches and images)."""
    state, config, prepared = run.state, run.config, run.prepared
    model, device, val_data = state.model, state.device, run.val_data
    split_inputs = run.store if run.store is not None else prepared  # stored features, or images
    model.eval()
    total, count = 0.0, 0
    batches = [
        list(range(i, min(i + config.batch_size, len(val_data))))
        for i in range(0, len(val_data), config.batch_size)
    ][distributed.rank() :: distributed.world_size()]
    with torch.no_grad():
        for inputs, captions, _ in _loader(val_data, batches, config, device, seed=0):
            if inputs is None:
                continue
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp_enabled(config, device)):
                loss = model(inputs.to(device, non_blocking=True), captions.to(device, non_blocking=True))
            total += float(loss) * len(captions)
            count += len(captions)
    total, count = distributed.sum_over_ranks(total, count)
    hypotheses = decode_split(
        model,
        split_inputs,
        "val",
        beam_size=1,
        decoding=config.decoding,
        max_length=config.data.max_caption_length,
        batch_size=config.batch_size,
        max_images=config.training.val_max_images,
        image_size=config.image_size,
        num_workers=config.training.num_workers,
    )
    references = prepared.references("val")
    scores = distributed.from_main(
        compute_metrics, {name: references[name] for name in hypotheses}, hypotheses, meteor=False
    )
    return {"val_loss": total / max(count, 1), **{f"val_{k}": v for k, v in scores.items()}}


def _end_epoch(run: Run, metrics: dict[str, float], seen: int, train_time: float, started: float) -> None:
    """Record the epoch just trained and validated, keep best.pt when it improved, save last.pt and
    history.json, and stop early when val CIDEr stopped improving for `patience` epochs."""
    state, config = run.state, run.config
    record = {
        "epoch": state.epoch + 1,
        "train_loss": state.epoch_loss_sum / state.epoch_captions if state.epoch_captions else float("nan"),
        **metrics,
        "lr": state.scheduler.get_last_lr()[0],  # the decoder's (groups are sorted: decoder first)
        "time_s": time.perf_counter() - started,
        # nan: the epoch's steps were all trained by an earlier call
        "captions_per_s": seen / max(train_time, 1e-9) if seen else float("nan"),
    }
    if state.phase == "scst":
        record.update(phase="scst", scst_epoch=state.scst_epoch + 1,
                      train_reward=state.epoch_reward_sum / max(state.epoch_captions, 1))
        state.scst_epoch += 1
    state.history.append(record)
    state.epoch, state.step_in_epoch = state.epoch + 1, 0
    state.epoch_loss_sum, state.epoch_captions, state.epoch_reward_sum = 0.0, 0, 0.0
    improved = state.best_metrics is None or record["val_CIDEr"] > state.best_metrics["val_CIDEr"]
    if improved:
        state.best_metrics = {k: v for k, v in record.items() if k.startswith("val_")}
        state.best_epoch = state.epoch
        state.epochs_without_improvement = 0
        run.save(run.best_path, resumable=False)
    else:
        state.epochs_without_improvement += 1
        patience = config.training.patience
        state.stopped_early = patience is not None and state.epochs_without_improvement >= patience
    run.save(run.last_path)
    if distributed.is_main():
        write_json_atomic(state.run_dir / "history.json", state.history)
    if run.progress:
        _print_epoch(record, improved, state)
    _call(run.callbacks, "epoch_end", state)


def _epoch_label(state: TrainState) -> str:
    if state.phase == "scst":
        return f"SCST epoch {state.scst_epoch + 1}/{state.config.training.scst.epochs}"
    return f"epoch {state.epoch + 1}/{state.config.training.epochs}"


def _call(callbacks: Sequence[Callback], event: str, state: TrainState) -> None:
    for callback in callbacks:
        callback(event, state)


# ------------------------------------------------------------------------------------------ a run


@dataclass
class TrainResult:
    """What `train` returns; `model` holds the best weights (by val CIDEr)."""

    run_dir: Path
    model: nn.Module
    history: list[dict[str, float]]
    best_epoch: int | None
    best_metrics: dict[str, float] | None
    stopped_early: bool
    wall_time_s: float
    results: dict[str, Any] | None = None  # results.json content when eval_splits were scored
    paused: bool = False  # training.max_hours ran out: last.pt is saved, run again to continue

    @property
    def epochs(self) -> int:
        return len(self.history)


def train(
    config: Config,
    prepared=None,
    store=None,
    progress: bool = True,
    callbacks: Sequence[Callback] | None = None,
    resume: bool | None = None,
) -> TrainResult:
    """Train the model `config` describes; see the module docstring for what is written where.

    `prepared` / `store` reuse an already prepared dataset and feature store (the notebooks pass
    them). `callbacks` are called as `callback(event, state)` with event "step_end" or "epoch_end"
    and the live `TrainState`. `resume` (default: when last.pt exists) continues a killed run;
    `resume=False` starts over in the same folder. The run folder is locked while training: a second
    training into it raises RunFolderBusyError naming the first.

    With `training.devices` above 1 it launches one process per device (helpers.distributed), which
    read the data and feature store from the config's caches (`prepared` and `store` are prepared
    here first) and call `callbacks` on every rank, so callbacks must then be functions the processes
    can import (a ValueError says so before anything starts).
    """
    device = resolve_device(config.training.device, config.model.decoder)
    processes = distributed.device_count(config.training.devices, device)
    unfinished = unfinished_cross_entropy(config) if distributed.world_size() == 1 else None
    if config.training.scst.enabled and distributed.world_size() == 1 and (processes > 1 or unfinished):
        config = _cross_entropy_first(config, processes, progress, callbacks, unfinished)
        if isinstance(config, TrainResult):  # its time budget ran out: the SCST phase waits for a rerun
            return config
        processes = 1
    try:
        if processes > 1 and distributed.world_size() == 1:
            return _train_on_devices(config, processes, progress, callbacks, resume)
        # one of several device processes: the process that launched them holds the run folder's lock
        lock = RunLock(config.run_path) if distributed.world_size() == 1 else None
        try:
            run = _start_run(config, lock, prepared, store, progress, callbacks, resume)
            paused = fit(run)
            if paused and run.progress:
                _print_pause(run)
            return _score_best(run, paused)
        finally:
            if lock is not None:
                lock.release()
    except torch.OutOfMemoryError as error:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the notebook's kernel goes on with the memory given back
        raise out_of_memory_error(error, config, f"training {config.run_name}") from error


def _cross_entropy_first(config: Config, processes: int, progress: bool, callbacks, unfinished: dict | None):
    """The cross-entropy run an SCST run starts from (same settings, its own folder), trained or
    finished first: on several devices, because the self-critical phase samples and scores captions on
    one device; on one, when that run is there with epochs left (`unfinished`, its last.pt: they are not
    trained again in the SCST folder). Returns the SCST run's config (one device, the time budget that
    is left), or the cross-entropy run's TrainResult when its budget ran out first."""
    started = time.perf_counter()
    # a busy or read-only SCST run folder is said now, not after the cross-entropy epochs
    RunLock(config.run_path).acquire().release()
    cross_entropy = cross_entropy_config(config)
    if progress and unfinished is not None:
        print(f"{cross_entropy.run_path}: {unfinished['epoch']} of {config.training.epochs} cross-entropy "
              "epochs done; finishing them there first, then the SCST phase starts from it.")
    elif progress:
        print(f"SCST with {processes} devices: the cross-entropy epochs train on all of them "
              f"({cross_entropy.run_path}), then the self-critical phase on one device.")
    result = train(cross_entropy, progress=progress, callbacks=callbacks)  # resumed when it is there
    max_hours = config.training.max_hours
    left = max_hours - (time.perf_counter() - started) / 3600 if max_hours else None
    if result.paused or (left is not None and left <= 0):
        return result
    return config_with(config, {"training.devices": "1", "training.max_hours": left})


def _callbacks_for_ranks(callbacks: Sequence[Callback] | None, processes: int) -> list[Callback]:
    """The callbacks, once checked that the device processes can load them: each one unpickles them,
    which takes a function importable by name, not a lambda, a nested function or a notebook cell's."""
    checked = list(callbacks or [])
    interactive = not getattr(sys.modules.get("__main__"), "__file__", None)
    for callback in checked:
        try:
            pickle.dumps(callback)
            problem = None
        except (pickle.PicklingError, TypeError, AttributeError) as error:
            problem = str(error)
        if problem is None and interactive and getattr(callback, "__module__", None) == "__main__":
            problem = "it is defined in a notebook cell or interactive session, which they do not run"
        if problem is not None:
            name = getattr(callback, "__qualname__", repr(callback))
            raise ValueError(
                f"training.devices={processes}: callback {name} cannot be sent to the device processes "
                f"({problem}). Define it as a top-level function in a .py file and import it from there, "
                "or train on one device (training.devices=1; notebooks: DEVICES = 1)."
            )
    return checked


def _train_on_devices(config: Config, processes: int, progress: bool, callbacks, resume) -> TrainResult:
    """`train` on `processes` devices: the run folder locked by this process (its owner, whom a busy
    message names) before anything is prepared, the data and feature store made once here, then one
    training process per device; what rank 0 wrote is read back into the TrainResult."""
    callbacks = _callbacks_for_ranks(callbacks, processes)
    device = resolve_device(config.training.device, config.model.decoder)
    if config.training.eval_splits and config.training.eval_beam_sizes:
        resolve_tokenizer(config.training.metric_tokenizer)
    lock = RunLock(config.run_path)
    try:
        resume = take_run_folder(config.run_path, lock, resume, progress)
        if device.type == "cuda":
            config = preflight(config, prepare_for(config, progress).vocab, device, processes, progress)
        prepared_and_features(config, device=device, progress=progress)
        if progress:  # the ranks print to the process's output, which a notebook cell does not show
            print(f"{config.run_name}: training on {processes} {device.type} devices, "
                  f"{distributed.batch_split(config.batch_size, processes)}")
        distributed.launch(train, (config, None, None, progress, callbacks, resume), processes, device)
    finally:
        lock.release()
    run_dir = config.run_path
    last = load_checkpoint(run_dir / "last.pt", "cpu")
    if progress:
        for record in last["history"]:
            _print_epoch(record, record["epoch"] == last["best_epoch"], None)
    model, _, _ = load_run(run_dir, device, "best" if (run_dir / "best.pt").is_file() else "last")
    results_path = run_dir / "results.json"
    scored = config.training.eval_splits and config.training.eval_beam_sizes and results_path.is_file()
    return TrainResult(
        run_dir, model, last["history"], last["best_epoch"], last["best_metrics"], last["stopped_early"],
        last["wall_time_s"], json.loads(results_path.read_text()) if scored else None,
        paused=not finished_training(last, config),
    )


def _start_run(config: Config, lock: RunLock | None, prepared, store, progress: bool, callbacks,
               resume: bool | None) -> Run:
    """Take the run folder (its lock, once the config is known to be usable) and start its run: the
    data, the model and its optimiser, fresh or restored from last.pt; config.yaml written."""
    max_hours = config.training.max_hours  # the budget counts preparing data and extracting features too
    deadline = time.perf_counter() + max_hours * 3600 if max_hours else None
    device = distributed.rank_device(resolve_device(config.training.device, config.model.decoder))
    progress = progress and distributed.is_main()
    if config.training.eval_splits and config.training.eval_beam_sizes:
        resolve_tokenizer(config.training.metric_tokenizer)  # "ptb" without Java fails now, not at the end
    resume = distributed.from_main(lambda: take_run_folder(config.run_path, lock, resume, progress))
    if prepared is None:
        prepared = prepare_for(config, progress)
    check_splits(prepared, config)
    check_vocabulary(prepared, config)
    last_path = config.run_path / "last.pt"
    checkpoint = load_checkpoint(last_path, "cpu") if resume else None  # RNG states must stay CPU tensors
    if checkpoint is not None:
        check_resume_compatible(checkpoint, prepared.vocab, config, last_path)
    else:  # an SCST run starts from its finished cross-entropy run when there is one
        checkpoint, last_path = cross_entropy_start(config, prepared.vocab), None
    if device.type == "cuda" and distributed.world_size() == 1:  # on several, the launcher checked
        config = preflight(config, prepared.vocab, device, progress=progress)
    prepared, store = prepared_and_features(config, prepared, store, device=device, progress=progress)
    train_data, val_data = _datasets(config, prepared, store)
    val_data = _val_subset(val_data, prepared, store, config.training.val_max_images)
    phase = checkpoint.get("phase", "xe") if checkpoint is not None else "xe"
    state = _new_state(config, prepared, device, math.ceil(len(train_data) / config.batch_size), phase)
    if checkpoint is not None:
        state.restore(checkpoint, last_path or config.run_path / "last.pt")
        if phase == "xe" and last_path is not None:  # resuming this run's own cross-entropy epochs
            warn_if_schedule_changed(checkpoint, config, state.scheduler, state.global_step)
    run = Run(state, prepared, store, train_data, val_data, list(callbacks or []), progress, deadline,
              replica=distributed.replicate(state.model, device), wall_before=state.wall_time_s)
    if distributed.is_main():
        config.run_path.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(config.run_path / "config.yaml", config.to_yaml().encode("utf-8"))
    if progress:
        _print_start(run, resumed=checkpoint is not None)
    return run


def _new_state(config: Config, prepared, device, steps_per_epoch: int, phase: str) -> TrainState:
    """The seeded model, the optimizer and LR schedule of `phase` and the gradient scaler, once the run
    folder has room."""
    word_vectors = load_word_vectors(config, prepared.vocab)  # GloVe read (or downloaded) here
    seed_everything(config.training.seed)
    model = build_model(config, prepared.vocab, word_vectors=word_vectors).to(device)
    seed_rank(config.training.seed)
    configure_trainable(model, config)
    lr = config.training.scst.lr if phase == "scst" else None
    optimizer = make_optimizer(model, config, lr)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch * config.training.epochs, phase)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_enabled(config, device))
    check_run_space(config.run_path, model, config)
    return TrainState(config, config.run_path, model, optimizer, scheduler, scaler, device)


def _print_start(run: Run, resumed: bool) -> None:
    state, config = run.state, run.config
    if resumed and not state.finished:
        print(
            f"Resuming {state.run_dir} at epoch {state.epoch + 1}, "
            f"step {state.step_in_epoch} of {run.steps_per_epoch}"
        )
    elif resumed:
        print(f"{state.run_dir} already finished its {state.epoch} epochs: nothing to train")
    trainable = sum(p.numel() for p in state.model.parameters() if p.requires_grad)
    print(
        f"{config.run_name}: {config.model.decoder} decoder, "
        f"{config.model.backbone} ({config.training.mode}), "
        f"{len(run.train_data):,} training captions, {run.steps_per_epoch} steps/epoch, device "
        f"{state.device}, {trainable:,} trainable parameters"
    )
    print(distributed.batch_split(config.batch_size, distributed.world_size()))


def _print_pause(run: Run) -> None:
    state = run.state
    print(
        f"Time budget reached (training.max_hours={run.config.training.max_hours:g}) at epoch "
        f"{state.epoch + 1}, step {state.step_in_epoch} of {run.steps_per_epoch}: {run.last_path} is "
        "saved. Run the same command or notebook again (with this run folder) to continue from there."
    )


def _print_epoch(record: dict[str, float], improved: bool, state: TrainState | None) -> None:
    reward = f", train CIDEr-D {record['train_reward']:.3f}" if "train_reward" in record else ""
    print(
        f"{'SCST ' if 'scst_epoch' in record else ''}epoch {record['epoch']}: "
        f"train loss {record['train_loss']:.3f}{reward}, "
        f"val loss {record['val_loss']:.3f} (per caption), "
        f"BLEU-4 {as_printed(record['val_Bleu_4'])}, CIDEr {as_printed(record['val_CIDEr'])}"
        f"{' (best)' if improved else ''}, {record['captions_per_s']:.0f} captions/s, "
        f"{record['time_s']:.0f} s"
    )
    if state is not None and state.stopped_early:
        print(f"Stopping early: no better val CIDEr for {state.epochs_without_improvement} epochs.")


def _score_best(run: Run, paused: bool) -> TrainResult:
    """Load best.pt into the model and score it on training.eval_splits into results.json."""
    state, config = run.state, run.config
    model, device = state.model, state.device
    distributed.barrier()  # best.pt as rank 0 wrote it
    if paused and not run.best_path.is_file():  # paused before the first epoch ended: nothing to score
        return TrainResult(
            state.run_dir, model, state.history, None, None, False, state.wall_time_s, paused=True
        )
    best = load_checkpoint(run.best_path, device)
    load_model_state(model, best["model"], run.best_path)
    rebuild_frozen_encoder(model, best["model"], config)
    model.image_encoder.to(device)
    model.eval()
    results = None
    if config.training.eval_splits and config.training.eval_beam_sizes:
        metrics, captions, scoring = score_model(
            model,
            run.prepared,
            run.store,
            config.training.eval_splits,
            config.training.eval_beam_sizes,
            decoding=config.decoding,
            max_length=config.data.max_caption_length,
            batch_size=config.batch_size,
            meteor="auto" if config.training.meteor else False,
            progress=run.progress,
            image_size=config.image_size,
            tokenizer=config.training.metric_tokenizer,
        )
        checkpoint = best | {"wall_time_s": state.wall_time_s, "history": state.history}
        status = "paused" if paused else "finished"
        if distributed.is_main():
            results = write_results(
                state.run_dir, model, config, checkpoint, metrics, captions, device, scoring, status=status
            )
    return TrainResult(
        state.run_dir, model, state.history, state.best_epoch, state.best_metrics, state.stopped_early,
        state.wall_time_s, results, paused,
    )


# ---------------------------------------------------------------------------------------- command line


RESUME_HINT = ("Every checkpoint finished so far is kept (last.pt at each epoch's end, or every "
               "training.checkpoint_every_steps steps): run the same command again to resume from it.")
USER_ERRORS = (  # one message, no traceback
    *INPUT_ERRORS, NonFiniteLossError, JavaUnavailableError, PreflightError, DeviceOutOfMemoryError,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.train",
        description="Train a captioning decoder from a config file, e.g. "
        "python -m helpers.train --config configs/LSTM.yaml --preset kaggle_small_gpu training.epochs=3",
    )
    parser.add_argument(
        "--config", required=True, help="decoder config: a YAML path or a name (LSTM, Transformer...)"
    )
    parser.add_argument(
        "--preset", action="append", default=[], help="preset merged over the config (repeatable)"
    )
    parser.add_argument(
        "--demo", action="store_true", help="DEMO mode: generated data and GloVe, CPU-sized model"
    )
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume", dest="resume", action="store_true", default=None, help="continue from last.pt"
    )
    resume.add_argument(
        "--no-resume", dest="resume", action="store_false", help="start over even if last.pt exists"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--scst", action="store_true",
        help="a self-critical (CIDEr-D) phase after the cross-entropy epochs (training.scst.enabled=true)",
    )
    parser.add_argument(
        "--devices", help="devices that train: auto (every visible GPU) or a number (training.devices)"
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="e.g. model.hidden_dim=256 training.epochs=3"
    )
    args = parser.parse_intermixed_args(argv)  # key=value overrides may come before or after options
    try:
        files = config_layers(args.config, args.preset, demo=args.demo)
        devices = [f"training.devices={args.devices}"] if args.devices else []
        scst = ["training.scst.enabled=true"] if args.scst else []
        config = load_config(files, [*args.overrides, *devices, *scst])
        print(config.to_yaml())
        result = train(config, progress=not args.quiet, resume=args.resume)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ProcessExitedException as error:  # a device process ended by a signal: the others stopped
        print(f"error: training process {error.error_index} (pid {error.error_pid}) was ended by "
              f"{error.signal_name} (kill -9, or the system's out-of-memory killer: `dmesg | tail` says "
              f"which), so the others stopped too. {RESUME_HINT}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: interrupted. {RESUME_HINT}", file=sys.stderr)
        return 130
    _print_result(result, config)
    return 0


def _print_result(result: TrainResult, config: Config) -> None:
    """The command line's closing summary: run folder, epochs, best val scores, the test table."""
    print(f"\nRun folder: {result.run_dir}")
    ending = " (stopped early)" if result.stopped_early else ""
    if result.paused:
        ending = f" of {config.training.epochs} (paused by training.max_hours: run again to continue)"
    print(
        f"Epochs: {result.epochs}{ending}, "
        f"best epoch {result.best_epoch or '-'}, "
        f"{result.wall_time_s:.0f} s"
    )
    if result.best_metrics:
        print(
            "Best val: "
            + ", ".join(
                f"{METRIC_LABELS.get(k.removeprefix('val_'), k)} {as_printed(v)}"
                for k, v in result.best_metrics.items()
                if k.removeprefix("val_") in METRIC_LABELS
            )
        )
    if result.results:
        print(format_metrics_table(result.results["metrics"]))


if __name__ == "__main__":
    sys.exit(main())
