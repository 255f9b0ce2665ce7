"""The two objectives of the one training loop (`helpers.train.fit`): what a batch's loss is.

* `CrossEntropy`: teacher forcing on (features or image, caption) batches, with label smoothing and,
  for the attention LSTM, Show-Attend-Tell's attention penalty; on several devices each rank's mean is
  weighted by its share of the global batch, so DDP's averaged gradient is the global batch's.
* `SelfCritical` (Rennie et al. 2017, as ruotianluo's self-critical.pytorch): on image batches, sample
  `samples_per_image` captions per image, reward each by its CIDEr-D against the image's training
  references (helpers.rewards, document frequencies from those references) minus a baseline (the
  greedy caption's reward, or the mean of the image's other samples) and follow the policy gradient.
  `begin` switches a run to it: the best cross-entropy weights, a fresh AdamW at training.scst.lr.
  The feature normalisation keeps its cross-entropy statistics (eval mode): a step's few images would
  normalise the sampled captions' features differently from the greedy baseline's and decoding's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from helpers import distributed
from helpers.checkpoints import load_checkpoint, load_model_state
from helpers.config import Config
from helpers.evaluate import as_printed
from helpers.features import ImageFeatureDataset
from helpers.optimization import make_optimizer, make_scheduler
from helpers.rewards import CiderD, token_sequences
from helpers.runs import TrainState
from helpers.text import END, NULL, START


@dataclass
class StepLoss:
    """One batch's loss as the loop uses it."""

    backward: torch.Tensor  # what the step backpropagates (on several devices: weighted by the share)
    mean: torch.Tensor  # this rank's mean loss per caption (what is logged)
    captions: int  # captions this rank counts (0 for a filler share, helpers.distributed.Share)
    total: int  # captions of the global batch
    reward_sum: float = 0.0  # SCST: the sampled captions' CIDEr-D, summed


class CrossEntropy:
    """Teacher forcing over the training captions: one step per `batch_size` captions."""

    phase = "xe"

    def __init__(self, config: Config, data: Dataset):
        self.config, self.data = config, data
        self.batch_size = config.batch_size

    def set_modes(self, model: nn.Module) -> None:
        """Train modes beyond model.train(): none (the loop keeps the CNN's BatchNorm in eval)."""

    def loss(self, model: nn.Module, inputs: torch.Tensor, captions: torch.Tensor, counted: bool,
             amp: bool) -> StepLoss:
        captions = captions.to(inputs.device, non_blocking=True)
        local = len(captions) if counted else 0
        total, weight = distributed.batch_weight(local)
        training = self.config.training
        with torch.autocast(inputs.device.type, dtype=torch.float16, enabled=amp):
            loss = model(inputs, captions, label_smoothing=training.label_smoothing, alpha_c=training.alpha_c)
        return StepLoss(loss * weight if weight != 1.0 else loss, loss, local, total)


class SelfCritical:
    """CIDEr-D policy gradient over the training images: one step per `batch_size / samples_per_image`
    images, each giving `samples_per_image` captions. Trains on one device."""

    phase = "scst"

    def __init__(self, config: Config, data: Dataset, reward: CiderD):
        self.config, self.data, self.reward = config, data, reward
        self.batch_size = max(1, config.batch_size // config.training.scst.samples_per_image)

    @classmethod
    def for_run(cls, config: Config, prepared, store) -> SelfCritical:
        """The objective over a prepared dataset's training images and references (the document
        frequencies take a few seconds on Flickr8k: built once per call of `train`)."""
        references = training_references(prepared)
        return cls(config, ScstImages(store, prepared, references), CiderD(references))

    def begin(self, state: TrainState, best_path: Path, progress: bool) -> None:
        """Switch `state` to this phase: the best cross-entropy weights, a fresh AdamW at
        training.scst.lr with a constant rate, the phase's counters; best.pt and its metrics stay
        (SCST must beat them)."""
        best = load_checkpoint(best_path, state.device)
        load_model_state(state.model, best["model"], best_path)
        state.optimizer = make_optimizer(state.model, self.config, self.config.training.scst.lr)
        state.scheduler = make_scheduler(state.optimizer, self.config, 0, phase="scst")
        state.phase, state.scst_epoch, state.step_in_epoch = "scst", 0, 0
        state.stopped_early, state.epochs_without_improvement = False, 0
        state.epoch_loss_sum, state.epoch_captions, state.epoch_reward_sum = 0.0, 0, 0.0
        if progress:
            cider = (state.best_metrics or {}).get("val_CIDEr", float("nan"))
            print(
                f"SCST phase: {self.config.training.scst.epochs} epochs from the best cross-entropy epoch "
                f"{state.best_epoch} (val CIDEr {as_printed(cider)})"
                + (f" of {state.scst_from}" if state.scst_from else "")
            )

    def set_modes(self, model: nn.Module) -> None:
        """The feature normalisation keeps its cross-entropy statistics (see the module docstring)."""
        model.feature_norm.eval()

    def loss(self, model: nn.Module, inputs: torch.Tensor, images: torch.Tensor, counted: bool,
             amp: bool) -> StepLoss:
        """Sample captions, reward them against their images' training references minus the
        baseline: the policy-gradient loss over the batch's N x K samples."""
        scst, max_length = self.config.training.scst, self.config.data.max_caption_length
        k, images = scst.samples_per_image, images.tolist()
        end, skipped = model.word_to_idx[END], (model.word_to_idx[NULL], model.word_to_idx[START])
        with torch.autocast(inputs.device.type, dtype=torch.float16, enabled=amp):
            tokens, log_probs = model.sample_multinomial(inputs, k, max_length)
        sampled = token_sequences(tokens.flatten(0, 1), end, skipped)
        rewards = self.reward.score_images(sampled, np.repeat(images, k))
        rewards = torch.from_numpy(rewards).float().view(-1, k)
        greedy_rewards = None
        if scst.baseline == "greedy":
            output = model.sample(inputs, max_length=max_length)
            greedy = token_sequences(output[0] if isinstance(output, tuple) else output, end, skipped)
            greedy_rewards = torch.from_numpy(self.reward.score_images(greedy, images)).float()
        advantage = self_critical_advantage(rewards, greedy_rewards).to(log_probs.device)
        loss = -(advantage * log_probs).mean()
        return StepLoss(loss, loss, rewards.numel(), rewards.numel(), float(rewards.sum()))


def self_critical_advantage(rewards: torch.Tensor, greedy_rewards: torch.Tensor | None) -> torch.Tensor:
    """How much better each sample (rewards (N, K)) did than its baseline: the reward of the image's
    greedy caption (greedy_rewards (N,)), or, when None, the mean reward of the image's other samples."""
    if greedy_rewards is not None:
        return rewards - greedy_rewards.unsqueeze(1)
    k = rewards.shape[1]
    return rewards - (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)


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
