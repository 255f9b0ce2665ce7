"""The one training loop, used by the notebooks and by `python -m helpers.train --config configs/LSTM.yaml`.

`train(config)` prepares the data (cached), extracts the backbone features (cached), builds the model
from the config and trains it with teacher forcing: AdamW, linear warmup then cosine (or linear)
decay, gradient clipping, fp16 autocast with a gradient scaler on CUDA. Two modes:

* ``features`` (default): the CNN is frozen and never runs; batches come from the feature store.
* ``finetune``: images pass through the CNN, whose last `training.finetune_stages` stages train
  (with `encoder_lr_scale` times the learning rate) while the rest stay frozen; BatchNorm layers
  keep their ImageNet statistics.

Each epoch ends with validation (loss, greedy-decoded BLEU-4 and CIDEr); training stops early when
the val CIDEr has not improved for `patience` epochs. The run folder `<run_dir>/<run_name>/` gets
`last.pt` (everything needed to resume: model, optimizer, scheduler, scaler, RNG states, history;
also every `checkpoint_every_steps` steps), `best.pt` (the best weights by val CIDEr), `history.json`
after each epoch and, at the end, `results.json` with test metrics. Checkpoints are written to a
temp file and renamed, so a killed session never leaves a broken one; `train` resumes from
`last.pt` by default and, for a seeded run on the CPU, ends with exactly the weights of an
uninterrupted run. `training.max_hours` makes a run stop cleanly before a session's time runs out:
`last.pt` is saved (mid-epoch if need be), the best weights so far are scored into `results.json`
(status "paused"), and the next call continues. `last.pt` is also written when an epoch's steps end,
before validation scores it, so a failure in scoring never loses the epoch. Checkpoints hold the CNN
only when it trains (finetune mode): a frozen one is rebuilt from its name and weights on loading.

With `training.scst.enabled` (command line `--scst`) a self-critical phase follows the cross-entropy
epochs in the same loop and run folder (Rennie et al. 2017): it starts from the best cross-entropy
weights (best.pt) with a fresh AdamW at `training.scst.lr`, samples `samples_per_image` captions per
training image, rewards each by its CIDEr-D against the image's training references (helpers.rewards,
document frequencies from the training references) minus a baseline (the greedy caption's reward, or
the mean of the image's other samples), and follows the policy gradient. The feature normalisation
keeps its cross-entropy statistics (eval mode): a step's few images would normalise the sampled
captions' features differently from the greedy baseline's and from decoding's. best.pt stays the best
weights by val CIDEr, so the phase replaces it only by a better model. The phase and its epoch are
counters of last.pt (`phase`, `scst_epoch`), so a killed SCST run resumes inside its phase. An SCST
run has its own run folder (`...-scst-<hash>`); it starts from the finished cross-entropy run of the
same settings when that folder is there (copying its checkpoints, `scst_from` names it), else it
trains those cross-entropy epochs itself first.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import pickle
import random
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from helpers import distributed
from helpers.backbones import feature_side, image_transform
from helpers.checkpoints import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    load_checkpoint,
    load_model_state,
    load_run,
    model_state,
    rebuild_frozen_encoder,
    save_atomic,
)
from helpers.config import (
    KEYS_ADDED_LATER,
    Config,
    ConfigError,
    config_from_dict,
    config_layers,
    config_with,
    load_config,
    older_run_values,
    run_identity,
)
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
from helpers.files import remove_abandoned_temporaries, write_bytes_atomic, write_json_atomic
from helpers.images import BadImage, ImageDataset, check_nvjpeg, collate_skip_bad, default_num_workers
from helpers.models import build_model
from helpers.progress import ProgressLine
from helpers.rewards import CiderD, token_sequences
from helpers.runlock import RunLock
from helpers.space import check_space, folder_bytes
from helpers.text import END, NULL, START
from helpers.workdir import make_source, prepare_for

Callback = Callable[[str, "TrainState"], None]


class NonFiniteLossError(RuntimeError):
    """The training loss became nan or inf; the message names the step and the last good checkpoint."""


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


def _seed_worker(worker_id: int) -> None:
    """DataLoader workers: numpy and random seeded from the worker's torch seed (set by the loader)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


# ------------------------------------------------------------------------------------------- data


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


# ------------------------------------------------------------------------------------ optimisation


def configure_trainable(model: nn.Module, config: Config) -> None:
    """Freeze the CNN (features mode) or all but its last `finetune_stages` stages (finetune mode)."""
    encoder = model.image_encoder
    encoder.requires_grad_(False)
    if config.training.mode == "finetune":
        stages = encoder.trainable_stages()
        if config.training.finetune_stages > len(stages):
            raise ConfigError(
                f"training.finetune_stages={config.training.finetune_stages} but {config.model.backbone} has "
                f"only {len(stages)} stages; choose 1..{len(stages)}."
            )
        for stage in stages[-config.training.finetune_stages :]:
            stage.requires_grad_(True)


def make_optimizer(model: nn.Module, config: Config, lr: float | None = None) -> torch.optim.AdamW:
    """AdamW at `lr` (default training.lr); weight decay on matrices only (not biases, norms or the
    embedding table); the CNN's trainable stages learn at `encoder_lr_scale` times the rate."""
    training = config.training
    lr = training.lr if lr is None else lr
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad and not name.startswith("word_embed."):
            continue  # the frozen CNN; the embedding table can be unfrozen later, so it stays in
        is_encoder = name.startswith("image_encoder.")
        decays = parameter.ndim >= 2 and not name.startswith("word_embed.")
        groups.setdefault((is_encoder, decays), []).append(parameter)
    return torch.optim.AdamW(
        [
            {
                "params": params,
                "lr": lr * (training.encoder_lr_scale if is_encoder else 1.0),
                "weight_decay": training.weight_decay if decays else 0.0,
            }
            for (is_encoder, decays), params in sorted(groups.items())
        ],
        lr=lr,
    )


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, min_ratio: float) -> float:
    """Learning-rate multiplier: linear warmup from 0 to 1, then cosine / linear decay to `min_ratio`."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
    return min_ratio + (1 - min_ratio) * decay


def make_scheduler(optimizer, config: Config, total_steps: int, phase: str = "xe"):
    """The LR schedule of a phase: warmup and decay over the cross-entropy steps; constant for SCST."""
    if phase == "scst":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    training = config.training
    warmup = training.warmup_steps
    if warmup is None:
        warmup = round(training.warmup_fraction * total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, total_steps, warmup, training.schedule, training.min_lr_ratio),
    )


# ------------------------------------------------------------------------------------- checkpoints


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


# ------------------------------------------------------------------------------------------- state


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


def _check_resumable(checkpoint: dict, config: Config, path: Path) -> None:
    """A run folder may only be resumed with the config (and data) it was started with."""
    saved = run_identity(config_from_dict(checkpoint["config"], source=str(path)))
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


NEW_RUN_HINT = (
    "start a new run: another training.run_name (command line: training.run_name=NEW; notebooks: "
    'OVERRIDES = ["training.run_name=NEW"]), or start over in this folder, replacing its checkpoints '
    "(command line: --no-resume; notebooks: RESUME = False; Python: train(config, resume=False))."
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


# ------------------------------------------------------------------------------------------- SCST


class ScstImages(Dataset):
    """(features (C, h, w), index of the image in the prepared train split) for every training image
    with features and at least one reference: what the SCST phase samples captions for. Features are
    as `ImageFeatureDataset` hands them out (float32, or a uint8 store's `FeatureCodes`)."""

    def __init__(self, store, prepared, references: list[list[tuple[int, ...]]]):
        self.features = ImageFeatureDataset(store, "train")
        position = {name: i for i, name in enumerate(prepared.splits["train"])}
        indices = [position[name] for name in self.features.filenames]
        self.items = [(row, image) for row, image in enumerate(indices) if references[image]]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        row, image = self.items[index]
        return self.features[row][0], image


def training_references(prepared) -> list[list[tuple[int, ...]]]:
    """The word ids of every training image's captions, as training encodes them (``<UNK>`` for rare
    words, cut at data.max_caption_length): the references and document frequencies of the reward."""
    captions, image_index = prepared.captions("train")
    vocab = prepared.vocab.word_to_idx
    sequences = token_sequences(np.asarray(captions), vocab[END], (vocab[NULL], vocab[START]))
    references: list[list[tuple[int, ...]]] = [[] for _ in prepared.splits["train"]]
    for sequence, image in zip(sequences, np.asarray(image_index).tolist()):
        references[image].append(sequence)
    return references


@dataclass
class _ScstData:
    images: ScstImages
    reward: CiderD


def _scst_data(run: _Run) -> _ScstData:
    """The SCST phase's images and CIDEr-D reward, built once per call of `train` (a few seconds on
    Flickr8k: the document frequencies of the training references)."""
    if run.scst is None:
        references = training_references(run.prepared)
        run.scst = _ScstData(ScstImages(run.store, run.prepared, references), CiderD(references))
    return run.scst


def _begin_scst(run: _Run) -> None:
    """Switch to the SCST phase: the best cross-entropy weights, a fresh AdamW at training.scst.lr with
    a constant rate, the phase's counters; best.pt and its metrics stay (SCST must beat them)."""
    state, config = run.state, run.config
    best = load_checkpoint(run.best_path, state.device)
    load_model_state(state.model, best["model"], run.best_path)
    state.optimizer = make_optimizer(state.model, config, config.training.scst.lr)
    state.scheduler = make_scheduler(state.optimizer, config, 0, phase="scst")
    state.phase, state.scst_epoch, state.step_in_epoch = "scst", 0, 0
    state.stopped_early, state.epochs_without_improvement = False, 0
    state.epoch_loss_sum, state.epoch_captions, state.epoch_reward_sum = 0.0, 0, 0.0
    if run.progress:
        cider = (state.best_metrics or {}).get("val_CIDEr", float("nan"))
        print(
            f"SCST phase: {config.training.scst.epochs} epochs from the best cross-entropy epoch "
            f"{state.best_epoch} (val CIDEr {as_printed(cider)})"
            + (f" of {state.scst_from}" if state.scst_from else "")
        )


def self_critical_advantage(rewards: torch.Tensor, greedy_rewards: torch.Tensor | None) -> torch.Tensor:
    """How much better each sample (rewards (N, K)) did than its baseline: the reward of the image's
    greedy caption (greedy_rewards (N,)), or, when None, the mean reward of the image's other samples."""
    if greedy_rewards is not None:
        return rewards - greedy_rewards.unsqueeze(1)
    k = rewards.shape[1]
    return rewards - (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)


def scst_step(state: TrainState, reward: CiderD, inputs: torch.Tensor, images: list[int], amp: bool):
    """One self-critical step: sample captions, reward them by CIDEr-D against their images' training
    references minus the baseline, and ascend the policy gradient. Returns (loss, rewards (N, K))."""
    model, scst = state.model, state.config.training.scst
    max_length, k = state.config.data.max_caption_length, scst.samples_per_image
    end, skipped = model.word_to_idx[END], (model.word_to_idx[NULL], model.word_to_idx[START])
    with torch.autocast(inputs.device.type, dtype=torch.float16, enabled=amp):
        tokens, log_probs = model.sample_multinomial(inputs, k, max_length)
    sampled = token_sequences(tokens.flatten(0, 1), end, skipped)
    rewards = torch.from_numpy(reward.score_images(sampled, np.repeat(images, k))).float().view(-1, k)
    greedy_rewards = None
    if scst.baseline == "greedy":
        output = model.sample(inputs, max_length=max_length)
        greedy = token_sequences(output[0] if isinstance(output, tuple) else output, end, skipped)
        greedy_rewards = torch.from_numpy(reward.score_images(greedy, images)).float()
    advantage = self_critical_advantage(rewards, greedy_rewards).to(log_probs.device)
    loss = -(advantage * log_probs).mean()
    apply_gradients(loss, state.optimizer, state.scaler, state.config.training.grad_clip)
    return loss.item(), rewards


# ----------------------------------------------------------------------------------- GPU preflight


class PreflightError(RuntimeError):
    """A GPU path this run is about to take failed on a tiny batch; the message names the setting that
    avoids it."""


def preflight(config: Config, vocab, device: torch.device, processes: int = 1, progress: bool = True,
              backend: str | None = None) -> Config:
    """Before any long work on a GPU, run on a tiny batch exactly the paths this run takes there: one
    nvJPEG batch (when data.jpeg_decoder=nvjpeg), the training step with backward and the gradient
    scaler's step (fp16 with training.amp), the SCST step when it is on, every collective the loop uses
    across the real ranks (`processes` > 1, under DDP and `backend`) and a beam-search decode. A failure
    raises PreflightError with its cause and the setting that avoids it, before anything is written.
    nvJPEG failing is not one: extraction then decodes on the CPU (the reference pixels), said in one
    line. Returns the config to run with."""
    started, checked = time.perf_counter(), []
    if config.data.jpeg_decoder == "nvjpeg":
        try:
            checked.append(f"nvJPEG batch (within {check_nvjpeg(device)} grey levels of the CPU's)")
        except Exception as error:  # noqa: BLE001 - any failure: the CPU decoders give the reference pixels
            config = config_with(config, {"data.jpeg_decoder": "torchvision"})
            print(f"nvJPEG failed on {device} ({_first_line(error)}): images are decoded on the CPU instead "
                  "(data.jpeg_decoder=torchvision, libjpeg-turbo in the loader workers).")
    if processes > 1:
        distributed.launch(_preflight_steps, (config, vocab, device), processes, device, backend)
    else:
        _preflight_steps(config, vocab, device)
    amp = "fp16 " if _amp(config, device) else ""
    checked += [f"{amp}training step", *(["SCST step"] if config.training.scst.enabled else []),
                *([f"collectives and DDP on {processes} ranks"] if processes > 1 else []), "beam search"]
    if progress:
        print(f"Preflight on {device} passed in {time.perf_counter() - started:.1f} s: {', '.join(checked)}.")
    return config


def _preflight_steps(config: Config, vocab, device: torch.device) -> None:
    """`preflight`'s checks in one process (one rank of several: DDP and every collective of the loop)."""
    device = distributed.rank_device(device)
    amp, ranks = _amp(config, device), distributed.world_size()
    model = build_model(config_with(config, {"model.pretrained_backbone": False}), vocab, load_glove=False)
    model = model.to(device)
    configure_trainable(model, config)
    inputs, captions = _tiny_batch(config, vocab, device)
    state = TrainState(config, config.run_path, model, make_optimizer(model, config), None,
                       torch.amp.GradScaler(device.type, enabled=amp), device)
    with _checking(f"the collectives and DDP of {ranks} ranks", config,
                   "Train on one GPU: training.devices=1 (notebooks: DEVICES = 1)."):
        distributed.any_rank(False), distributed.sum_over_ranks(1.0, 2.0), distributed.barrier()
        distributed.from_main(_rank_name), distributed.gather([1]), distributed.gather_on_main([1])
        replica = distributed.replicate(model, device)
    with _checking(f"the {'fp16 ' if amp else ''}training step", config,
                   "Train in float32 with training.amp=false (slower), or on the CPU: training.device=cpu."):
        count, weight = distributed.batch_weight(len(captions))
        loss = train_step(replica, inputs, captions, state.optimizer, state.scaler, config.training.grad_clip,
                          amp, config.training.label_smoothing, config.training.alpha_c, weight)
        distributed.global_mean(loss, len(captions), count)
    if config.training.scst.enabled and ranks == 1:
        with _checking("the SCST step", config, "Turn SCST off, or train in float32 (training.amp=false)."):
            reward = CiderD([[tuple(row)] for row in captions[:, 1:4].tolist()])
            scst_step(state, reward, inputs, list(range(len(captions))), amp)
    beam = max(config.training.eval_beam_sizes or [1])
    with _checking(f"beam search (beam {beam})", config, "Score with greedy decoding: "
                   "training.eval_beam_sizes=[1]."), torch.no_grad():
        model.eval()
        model.sample(inputs, max_length=config.data.max_caption_length, beam_size=beam, **config.decoding)
    del model, replica, state
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _rank_name() -> str:
    return f"rank {distributed.rank()}"


def _tiny_batch(config: Config, vocab, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Two random inputs as the run feeds them (features, or uint8 crops when fine-tuning) and two
    captions of random words: <START> w w w <END> <NULL>..."""
    if config.training.mode == "finetune":
        inputs = torch.randint(0, 256, (2, 3, config.image_size, config.image_size), dtype=torch.uint8)
    else:
        side = feature_side(config.image_size, config.model.backbone)
        inputs = torch.randn(2, config.model.attn_dim, side, side)
    words = vocab.word_to_idx
    captions = torch.full((2, config.data.max_caption_length + 2), words[NULL], dtype=torch.long)
    captions[:, 0], captions[:, 4] = words[START], words[END]
    captions[:, 1:4] = torch.randint(4, len(vocab.idx_to_word), (2, 3))
    return inputs.to(device), captions.to(device)


@contextlib.contextmanager
def _checking(what: str, config: Config, fix: str):
    """Turn a failure of `what` into a PreflightError naming `fix` (or what to lower when out of memory)."""
    try:
        yield
    except torch.OutOfMemoryError as error:
        raise out_of_memory_error(error, config, f"checking {what} on a tiny batch") from error
    except Exception as error:
        raise PreflightError(
            f"Preflight: {what} failed on a tiny batch, before any long work started and with nothing "
            f"written ({type(error).__name__}: {_first_line(error)}). {fix}"
        ) from error


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# ------------------------------------------------------------------------------------------ the loop


def _validate(state: TrainState, val_data: Dataset, prepared, source, config: Config) -> dict[str, float]:
    """Val loss (teacher forced) and greedy-decoded BLEU/CIDEr on the val split (each device takes
    its share of the batches and images)."""
    model, device = state.model, state.device
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
            with torch.autocast(device.type, dtype=torch.float16, enabled=_amp(config, device)):
                loss = model(inputs.to(device, non_blocking=True), captions.to(device, non_blocking=True))
            total += float(loss) * len(captions)
            count += len(captions)
    total, count = distributed.sum_over_ranks(total, count)
    hypotheses = decode_split(
        model,
        source,
        "val",
        beam_size=1,
        decoding=config.decoding,
        max_length=config.data.max_caption_length,
        batch_size=config.batch_size,
        vocab=prepared.vocab,
        max_images=config.training.val_max_images,
        image_size=config.image_size,
        num_workers=config.training.num_workers,
    )
    references = prepared.references("val")
    scores = distributed.from_main(
        compute_metrics, {name: references[name] for name in hypotheses}, hypotheses, meteor=False
    )
    return {"val_loss": total / max(count, 1), **{f"val_{k}": v for k, v in scores.items()}}


def train_step(
    model, inputs, captions, optimizer, scaler, grad_clip: float | None, amp: bool,
    label_smoothing: float = 0.0, alpha_c: float = 0.0, weight: float = 1.0,
) -> float:
    """One teacher-forced step (fp16 autocast and loss scaling when `amp`); returns the batch loss.

    `label_smoothing` and `alpha_c` shape the training loss (see CaptioningModel.forward); `weight`
    scales it before backward (a rank's share of a global batch, helpers.distributed).
    """
    with torch.autocast(inputs.device.type, dtype=torch.float16, enabled=amp):
        loss = model(inputs, captions, label_smoothing=label_smoothing, alpha_c=alpha_c)
    apply_gradients(loss * weight if weight != 1.0 else loss, optimizer, scaler, grad_clip)
    return loss.item()


def apply_gradients(loss: torch.Tensor, optimizer, scaler, grad_clip: float | None) -> None:
    """Backward through the scaled loss, clip the gradient norm (when `grad_clip`), step and update
    the scaler: what a cross-entropy step and a self-critical step share."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(optimizer)
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    scaler.step(optimizer)
    scaler.update()


def _step_schedule(scheduler, first: bool) -> None:
    """Advance the LR schedule once per batch, also when the optimizer step was skipped.

    The schedule follows the global step, so it advances when the gradient scaler skips an
    overflowing fp16 step (the first steps usually do) or a batch had only undecodable images.
    torch checks the order only at a run's first scheduler step, and its warning about a scheduler
    step before an optimizer step is expected then, not a bug; later steps run unfiltered, so the
    warning filters are not touched on every batch.
    """
    if not first:
        scheduler.step()
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
        scheduler.step()


def _warn_if_schedule_changed(checkpoint: dict, config: Config, scheduler, step: int) -> None:
    """A resume with other training.epochs re-plans the LR schedule over the new length: say so,
    with the jump it causes (more epochs after a finished cosine decay raise the LR again)."""
    saved = checkpoint["config"]["training"]["epochs"]
    if saved == config.training.epochs:
        return
    before = scheduler.optimizer.param_groups[0]["lr"]
    now = scheduler.base_lrs[0] * scheduler.lr_lambdas[0](step)
    warnings.warn(
        f"training.epochs {saved} -> {config.training.epochs} on resume: the learning-rate schedule "
        f"now spans {config.training.epochs} epochs, so the learning rate goes from {before:.2e} to "
        f"{now:.2e} at step {step}. To continue at the low rate instead, also lower training.lr.",
        stacklevel=4,
    )


def _out_of_time(deadline: float | None) -> bool:
    """Whether training.max_hours ran out (on any rank: all ranks pause at the same step)."""
    return deadline is not None and distributed.any_rank(time.perf_counter() >= deadline)


def _amp(config: Config, device: torch.device) -> bool:
    return config.training.amp and device.type == "cuda"


def _call(callbacks: Sequence[Callback], event: str, state: TrainState) -> None:
    for callback in callbacks:
        callback(event, state)


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
    processes = distributed.device_count(config.training.devices, resolve_device(config.training.device))
    if processes > 1 and config.training.scst.enabled and distributed.world_size() == 1:
        config = _cross_entropy_on_devices(config, processes, progress, callbacks, resume)
        if isinstance(config, TrainResult):  # its time budget ran out: the SCST phase waits for a rerun
            return config
        processes = 1
    try:
        if processes > 1 and distributed.world_size() == 1:
            return _train_on_devices(config, processes, progress, callbacks, resume)
        lock = RunLock(config.run_path)
        try:
            return _train(config, lock, prepared, store, progress, callbacks, resume)
        finally:
            lock.release()
    except torch.OutOfMemoryError as error:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the notebook's kernel goes on with the memory given back
        raise out_of_memory_error(error, config, f"training {config.run_name}") from error


def _train(config: Config, lock: RunLock, prepared, store, progress, callbacks, resume) -> TrainResult:
    """`train` with the run folder's lock, which it takes once the config is known to be usable."""
    max_hours = config.training.max_hours  # the budget counts preparing data and extracting features too
    deadline = time.perf_counter() + max_hours * 3600 if max_hours else None
    device = distributed.rank_device(resolve_device(config.training.device))
    progress = progress and distributed.is_main()
    if config.training.eval_splits and config.training.eval_beam_sizes:
        resolve_tokenizer(config.training.metric_tokenizer)  # "ptb" without Java fails now, not at the end
    resume = distributed.from_main(lambda: _take_run_folder(config.run_path, lock, resume, progress))
    run = _start_run(config, device, prepared, store, resume, progress, callbacks, deadline)
    run.replica = distributed.replicate(run.state.model, device)
    paused = False
    while not run.state.finished and not paused:
        if run.state.phase == "xe" and run.state.cross_entropy_done:
            _begin_scst(run)
        paused = _train_epoch(run)
        if not paused:
            _end_epoch(run)
            paused = _out_of_time(run.deadline) and not run.state.finished
    if paused and progress:
        _print_pause(run)
    return _score_best(run, paused)


def _cross_entropy_on_devices(config: Config, processes: int, progress: bool, callbacks, resume):
    """SCST on several devices: the cross-entropy epochs train on all of them, as the cross-entropy
    run of the same settings (its own folder), and the self-critical phase, which samples and scores
    captions on one device, starts from that run. Returns the SCST run's config (one device, the time
    budget that is left), or the cross-entropy run's TrainResult when its budget ran out first."""
    if config.training.run_name:
        raise ConfigError(
            f"training.scst.enabled with training.devices={config.training.devices!r} ({processes} devices) "
            f"and training.run_name={config.training.run_name!r}: the cross-entropy epochs train on every "
            "device in a run folder of their own, which a fixed run name does not leave room for. Remove "
            "training.run_name, or train on one device (training.devices=1; notebooks: DEVICES = 1)."
        )
    started = time.perf_counter()
    cross_entropy = cross_entropy_config(config)
    if progress:
        print(f"SCST with {processes} devices: the cross-entropy epochs train on all of them "
              f"({cross_entropy.run_path}), then the self-critical phase on one device.")
    result = train(cross_entropy, progress=progress, callbacks=callbacks, resume=resume)
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
    """`train` on `processes` devices: the data and feature store made once here, then one training
    process per device; what rank 0 wrote is read back into the TrainResult."""
    callbacks = _callbacks_for_ranks(callbacks, processes)
    device = resolve_device(config.training.device)
    if config.training.eval_splits and config.training.eval_beam_sizes:
        resolve_tokenizer(config.training.metric_tokenizer)
    if device.type == "cuda":
        config = preflight(config, prepare_for(config, progress).vocab, device, processes, progress)
    make_source(config, device=device, progress=progress)
    if progress:  # the ranks print to the process's output, which a notebook cell does not show
        print(f"{config.run_name}: training on {processes} {device.type} devices, "
              f"{distributed.batch_split(config.batch_size, processes)}")
    args = (config, None, None, progress, callbacks, resume)
    distributed.launch(train, args, processes, device)
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
        paused=not _finished_training(last, config),
    )


def _finished_training(checkpoint: dict, config: Config) -> bool:
    """Whether a cross-entropy run's checkpoint has all its epochs (or stopped early)."""
    return checkpoint["stopped_early"] or checkpoint["epoch"] >= config.training.epochs


@dataclass
class _Run:
    """One call of `train`: its live state and what the steps of the loop share."""

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
    scst: _ScstData | None = None  # the SCST phase's images and reward, built when the phase runs
    epoch_started: float = 0.0  # the epoch in progress: when its steps began,
    epoch_seen: int = 0  # how many captions this call trained on in it,
    epoch_train_time: float = 0.0  # and how long its steps took

    @property
    def config(self) -> Config:
        return self.state.config

    @property
    def epoch_data(self) -> Dataset:
        """What an epoch of the phase in progress passes over: captions (XE) or images (SCST)."""
        return _scst_data(self).images if self.state.phase == "scst" else self.train_data

    @property
    def batch_size(self) -> int:
        """Captions per step (XE), or images per step (SCST: each gives samples_per_image captions)."""
        if self.state.phase == "scst":
            return max(1, self.config.batch_size // self.config.training.scst.samples_per_image)
        return self.config.batch_size

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.epoch_data) / self.batch_size)

    @property
    def last_path(self) -> Path:
        return self.state.run_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.state.run_dir / "best.pt"

    def save(self, path: Path, resumable: bool = True) -> None:
        """Write a checkpoint (rank 0 alone, with every rank's generator states when `resumable`)."""
        rng = distributed.gather_on_main([rng_state(self.state.device)]) if resumable else None
        if distributed.is_main():  # one writer however many devices train
            save_atomic(self.state.checkpoint(self.prepared.vocab, resumable, rng), path)

    def update_wall_time(self) -> None:
        self.state.wall_time_s = self.wall_before + time.perf_counter() - self.started


def _take_run_folder(run_dir: Path, lock: RunLock, resume: bool | None, progress: bool) -> bool:
    """Lock the run folder, clear what killed writes left, and say whether to resume from last.pt."""
    lock.acquire()
    if lock.taken_over_from and progress:
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


def _start_run(config: Config, device, prepared, store, resume: bool, progress: bool, callbacks,
               deadline: float | None) -> _Run:
    """The data, the model and its optimiser, fresh or restored from last.pt; config.yaml written."""
    if prepared is None:
        prepared = prepare_for(config, progress)
    check_splits(prepared, config)
    last_path = config.run_path / "last.pt"
    checkpoint = load_checkpoint(last_path, "cpu") if resume else None  # RNG states must stay CPU tensors
    if checkpoint is not None:
        check_resume_compatible(checkpoint, prepared.vocab, config, last_path)
    else:  # an SCST run starts from its finished cross-entropy run when there is one
        checkpoint, last_path = _cross_entropy_start(config, prepared.vocab), None
    if device.type == "cuda" and distributed.world_size() == 1:  # on several, the launcher checked
        config = preflight(config, prepared.vocab, device, progress=progress)
    prepared, store = make_source(config, prepared, store, device=device, progress=progress)
    train_data, val_data = _datasets(config, prepared, store)
    val_data = _val_subset(val_data, prepared, store, config.training.val_max_images)
    phase = checkpoint.get("phase", "xe") if checkpoint is not None else "xe"
    state = _new_state(config, prepared, device, math.ceil(len(train_data) / config.batch_size), phase)
    if checkpoint is not None:
        state.restore(checkpoint, last_path or config.run_path / "last.pt")
        if phase == "xe" and last_path is not None:  # resuming this run's own cross-entropy epochs
            _warn_if_schedule_changed(checkpoint, config, state.scheduler, state.global_step)
    run = _Run(state, prepared, store, train_data, val_data, list(callbacks or []), progress, deadline,
               wall_before=state.wall_time_s)
    if distributed.is_main():
        config.run_path.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(config.run_path / "config.yaml", config.to_yaml().encode("utf-8"))
    if progress:
        _print_start(run, resumed=checkpoint is not None)
    return run


def _new_state(config: Config, prepared, device, steps_per_epoch: int, phase: str) -> TrainState:
    """The seeded model, the optimizer and LR schedule of `phase` and the gradient scaler, once the run
    folder has room."""
    seed_everything(config.training.seed)
    model = build_model(config, prepared.vocab).to(device)
    seed_rank(config.training.seed)
    configure_trainable(model, config)
    lr = config.training.scst.lr if phase == "scst" else None
    optimizer = make_optimizer(model, config, lr)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch * config.training.epochs, phase)
    scaler = torch.amp.GradScaler(device.type, enabled=_amp(config, device))
    check_run_space(config.run_path, model, config)
    return TrainState(config, config.run_path, model, optimizer, scheduler, scaler, device)


def cross_entropy_config(config: Config) -> Config:
    """The config of the cross-entropy run an SCST run continues: the same settings, SCST off."""
    return config_with(config, {"training.scst.enabled": False})


def _cross_entropy_start(config: Config, vocab) -> dict | None:
    """For a fresh SCST run: the last.pt of the finished cross-entropy run of the same settings, its
    best.pt copied into the SCST run folder (the phase starts from it); None when there is none."""
    if not config.training.scst.enabled or config.training.run_name:
        return None
    source = cross_entropy_config(config).run_path
    try:
        checkpoint = load_checkpoint(source / "last.pt", "cpu")
        best = (source / "best.pt").read_bytes()
    except (CheckpointError, FileNotFoundError):
        return None
    if not _finished_training(checkpoint, config):
        return None  # unfinished: this run trains its cross-entropy epochs itself
    check_resume_compatible(checkpoint, vocab, cross_entropy_config(config), source / "last.pt")
    config.run_path.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(config.run_path / "best.pt", best)
    return checkpoint | {"scst_from": str(source)}


def _print_start(run: _Run, resumed: bool) -> None:
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
        f"{config.run_name}: {config.model.cell_type} decoder, "
        f"{config.model.backbone} ({config.training.mode}), "
        f"{len(run.train_data):,} training captions, {run.steps_per_epoch} steps/epoch, device "
        f"{state.device}, {trainable:,} trainable parameters"
    )
    print(distributed.batch_split(config.batch_size, distributed.world_size()))


def _train_epoch(run: _Run) -> bool:
    """The remaining steps of the epoch in progress, then last.pt; True when the time budget paused it."""
    state, config = run.state, run.config
    run.epoch_started = time.perf_counter()
    state.model.train()
    state.model.image_encoder.eval()  # BatchNorm keeps its ImageNet statistics, also when fine-tuning
    if state.phase == "scst":  # see the module docstring: the cross-entropy statistics, not a step's
        state.model.feature_norm.eval()
    batches = epoch_batches(len(run.epoch_data), run.batch_size, config.training.seed, state.epoch)
    shares = [distributed.share(batch) for batch in batches[state.step_in_epoch :]]  # all: one device
    loader = _loader(run.epoch_data, [share.indices for share in shares], config, state.device,
                     seed=config.training.seed + state.epoch)
    bar = ProgressLine(len(batches), _epoch_label(state), unit="batch", initial=state.step_in_epoch,
                       enabled=run.progress)
    seen, bad_images, paused = 0, 0, False
    for (inputs, targets, bad), share in zip(loader, shares):
        bad_images += len(bad)
        seen += _train_batch(run, inputs, targets, share.counted)
        speed = seen / max(time.perf_counter() - run.epoch_started, 1e-9)
        bar.update(loss=f"{state.loss:.3f}", captions_s=f"{speed:.0f}")
        every = config.training.checkpoint_every_steps
        if every and state.global_step % every == 0 and state.step_in_epoch < len(batches):
            run.update_wall_time()
            run.save(run.last_path)
        _call(run.callbacks, "step_end", state)
        if _out_of_time(run.deadline) and state.step_in_epoch < len(batches):
            paused = True
            break
    bar.close("")  # the epoch's line (_print_epoch) is its summary
    run.update_wall_time()
    # Saved before any scoring: a failure while validating (a missing metrics package, say)
    # never loses the epoch's training; a rerun validates it from here.
    run.save(run.last_path)
    if bad_images and not paused:
        warnings.warn(
            f"epoch {state.epoch + 1}: skipped {bad_images} captions whose image could not be decoded",
            stacklevel=3,
        )
    run.epoch_seen, run.epoch_train_time = seen, time.perf_counter() - run.epoch_started
    return paused


def _epoch_label(state: TrainState) -> str:
    if state.phase == "scst":
        return f"SCST epoch {state.scst_epoch + 1}/{state.config.training.scst.epochs}"
    return f"epoch {state.epoch + 1}/{state.config.training.epochs}"


def _train_batch(run: _Run, inputs, targets, counted: bool = True) -> int:
    """One optimizer step on a batch (none when all its images were bad) and one schedule step;
    returns the number of captions trained on (of the global batch, on several devices). `targets`
    are captions (XE) or image indices (SCST); `counted` is false for a rank's zero-weight filler."""
    state, config = run.state, run.config
    count = 0
    if inputs is None and distributed.world_size() > 1:  # DDP waits for every rank's backward pass
        inputs, targets, counted = _stand_in(config, run.prepared.vocab.word_to_idx[NULL])
    if inputs is not None:
        inputs = inputs.to(state.device, non_blocking=True)
        clip, amp = config.training.grad_clip, _amp(config, state.device)
        if state.phase == "scst":
            state.loss, rewards = scst_step(state, _scst_data(run).reward, inputs, targets.tolist(), amp)
            state.epoch_reward_sum += float(rewards.sum())
            count = rewards.numel()
        else:
            captions = targets.to(state.device, non_blocking=True)
            local = len(captions) if counted else 0
            count, weight = distributed.batch_weight(local)
            recipe = {"label_smoothing": config.training.label_smoothing, "alpha_c": config.training.alpha_c}
            loss = train_step(run.replica, inputs, captions, state.optimizer, state.scaler, clip, amp,
                              **recipe, weight=weight)
            state.loss = distributed.global_mean(loss, local, count)
        check_finite_loss(state, run.last_path, run.best_path)
        state.epoch_loss_sum += state.loss * count
        state.epoch_captions += count
    _step_schedule(state.scheduler, first=state.global_step == 0)
    state.step_in_epoch += 1
    state.global_step += 1
    return count


def _stand_in(config: Config, null: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """What a rank trains on when every image of its share of a batch failed to decode (fine-tuning on
    several devices): one black crop with an all-<NULL> caption, weighed zero, so the rank still joins
    the step the others wait for."""
    size = config.image_size
    image = torch.zeros(1, 3, size, size, dtype=torch.uint8)
    caption = torch.full((1, config.data.max_caption_length + 2), null, dtype=torch.long)
    return image, caption, False


def _end_epoch(run: _Run) -> None:
    """Validate the epoch just trained, record it, keep best.pt when it improved, save last.pt and
    history.json, and stop early when val CIDEr stopped improving for `patience` epochs."""
    state, config = run.state, run.config
    source = run.store if run.store is not None else run.prepared
    metrics = _validate(state, run.val_data, run.prepared, source, config)
    run.update_wall_time()
    seen = run.epoch_seen
    record = {
        "epoch": state.epoch + 1,
        "train_loss": state.epoch_loss_sum / state.epoch_captions if state.epoch_captions else float("nan"),
        **metrics,
        "lr": state.scheduler.get_last_lr()[0],  # the decoder's (groups are sorted: decoder first)
        "time_s": time.perf_counter() - run.epoch_started,
        # nan: the epoch's steps were all trained by an earlier call
        "captions_per_s": seen / max(run.epoch_train_time, 1e-9) if seen else float("nan"),
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


def _print_pause(run: _Run) -> None:
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
        f"val loss {record['val_loss']:.3f}, "
        f"BLEU-4 {as_printed(record['val_Bleu_4'])}, CIDEr {as_printed(record['val_CIDEr'])}"
        f"{' (best)' if improved else ''}, {record['captions_per_s']:.0f} captions/s, "
        f"{record['time_s']:.0f} s"
    )
    if state is not None and state.stopped_early:
        print(f"Stopping early: no better val CIDEr for {state.epochs_without_improvement} epochs.")


def _score_best(run: _Run, paused: bool) -> TrainResult:
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
