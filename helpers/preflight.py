"""The preflight of a GPU run: before any long work (extraction, training, SCST), the exact GPU paths
the run is about to take, on a tiny batch, in seconds. A failure stops the run there with its cause and
the setting that avoids it, before anything is written; where a fallback gives the reference results
(nvJPEG failing: the CPU decoders), it is taken and said in one line.
"""

from __future__ import annotations

import contextlib
import time

import torch

from helpers import distributed
from helpers.backbones import feature_side
from helpers.config import Config, config_with
from helpers.devices import first_line, out_of_memory_error
from helpers.images import check_nvjpeg
from helpers.models import build_model
from helpers.objectives import CrossEntropy, SelfCritical
from helpers.optimization import amp_enabled, apply_gradients, configure_trainable, make_optimizer
from helpers.rewards import CiderD
from helpers.text import END, NULL, START


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
            print(f"nvJPEG failed on {device} ({first_line(error)}): images are decoded on the CPU instead "
                  "(data.jpeg_decoder=torchvision, libjpeg-turbo in the loader workers).")
    if processes > 1:
        distributed.launch(_preflight_steps, (config, vocab, device), processes, device, backend)
    else:
        _preflight_steps(config, vocab, device)
    amp = "fp16 " if amp_enabled(config, device) else ""
    checked += [f"{amp}training step", *(["SCST step"] if config.training.scst.enabled else []),
                *([f"collectives and DDP on {processes} ranks"] if processes > 1 else []), "beam search"]
    if progress:
        print(f"Preflight on {device} passed in {time.perf_counter() - started:.1f} s: {', '.join(checked)}.")
    return config


def _preflight_steps(config: Config, vocab, device: torch.device) -> None:
    """`preflight`'s checks in one process (one rank of several: DDP and every collective of the loop)."""
    device = distributed.rank_device(device)
    amp, ranks = amp_enabled(config, device), distributed.world_size()
    model = build_model(config_with(config, {"model.pretrained_backbone": False}), vocab, word_vectors=None)
    model = model.to(device)
    configure_trainable(model, config)
    inputs, captions = _tiny_batch(config, vocab, device)
    optimizer, scaler = make_optimizer(model, config), torch.amp.GradScaler(device.type, enabled=amp)
    with _checking(f"the collectives and DDP of {ranks} ranks", config,
                   "Train on one GPU: training.devices=1 (notebooks: DEVICES = 1)."):
        distributed.any_rank(False), distributed.sum_over_ranks(1.0, 2.0), distributed.barrier()
        distributed.from_main(_rank_name), distributed.gather([1]), distributed.gather_on_main([1])
        replica = distributed.replicate(model, device)
    with _checking(f"the {'fp16 ' if amp else ''}training step", config,
                   "Train in float32 with training.amp=false (slower), or on the CPU: training.device=cpu."):
        step = CrossEntropy(config, data=None).loss(replica, inputs, captions, True, amp)
        apply_gradients(step.backward, optimizer, scaler, config.training.grad_clip)
        distributed.global_mean(step.mean.item(), step.captions, step.total)
    if config.training.scst.enabled and ranks == 1:
        with _checking("the SCST step", config, "Turn SCST off, or train in float32 (training.amp=false)."):
            reward = CiderD([[tuple(row)] for row in captions[:, 1:4].tolist()])
            images = torch.arange(len(captions))
            step = SelfCritical(config, None, reward).loss(model, inputs, images, True, amp)
            apply_gradients(step.backward, optimizer, scaler, config.training.grad_clip)
    beam = max(config.training.eval_beam_sizes or [1])
    with _checking(f"beam search (beam {beam})", config, "Score with greedy decoding: "
                   "training.eval_beam_sizes=[1]."), torch.no_grad():
        model.eval()
        model.sample(inputs, max_length=config.data.max_caption_length, beam_size=beam, **config.decoding)
    del model, replica, optimizer
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
        inputs = torch.randn(2, config.model.feature_channels, side, side)
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
            f"written ({type(error).__name__}: {first_line(error)}). {fix}"
        ) from error
