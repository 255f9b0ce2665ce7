"""What the training loop optimises with: which weights train, AdamW, the learning-rate schedule and
the one gradient step (backward through the scaled loss, clipping, the optimizer and scaler steps)."""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from helpers.config import Config, ConfigError


def amp_enabled(config: Config, device: torch.device) -> bool:
    """fp16 autocast with a gradient scaler: on CUDA when training.amp (the CPU trains in float32)."""
    return config.training.amp and device.type == "cuda"


def configure_trainable(model: nn.Module, config: Config) -> None:
    """Freeze the CNN (features mode) or all but its last `finetune_layers` layers (finetune mode)."""
    encoder = model.image_encoder
    encoder.requires_grad_(False)
    if config.training.mode == "finetune":
        layers = encoder.trainable_layers()
        if config.training.finetune_layers > len(layers):
            raise ConfigError(
                f"training.finetune_layers={config.training.finetune_layers} but {config.model.backbone} has "
                f"only {len(layers)} layers; choose 1..{len(layers)}."
            )
        for layer in layers[-config.training.finetune_layers :]:
            layer.requires_grad_(True)


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


def apply_gradients(loss: torch.Tensor, optimizer, scaler, grad_clip: float | None) -> None:
    """Backward through the scaled loss, clip the gradient norm (when `grad_clip`), step and update
    the scaler (which skips a step whose fp16 gradients overflowed)."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(optimizer)
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    scaler.step(optimizer)
    scaler.update()


def step_schedule(scheduler, first: bool) -> None:
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


def warn_if_schedule_changed(checkpoint: dict, config: Config, scheduler, step: int) -> None:
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
        stacklevel=5,
    )
