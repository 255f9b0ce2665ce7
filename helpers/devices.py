"""Which device runs the work. 'auto' picks CUDA, then Apple's `mps` where the chosen decoder runs on
it (else the CPU, saying why), then the CPU. A GPU the installed torch cannot run (compute capability
below 7.0, e.g. Kaggle's P100) is refused with advice. Half precision stays CUDA's alone
(`training.amp`: fp16 autocast with a gradient scaler); mps trains in float32: torch's own MPS tests
skip the fp16 gradients of topk (flaky) and of convolutions ("destination datatype must be fp32") there
(torch/testing/_internal/common_mps.py, SKIPLIST_GRAD), and no fp16 run was measured on a Mac."""

from __future__ import annotations

import torch

MIN_COMPUTE_CAPABILITY = (7, 0)  # current torch wheels have no kernels below sm_70 (Kaggle's P100 is 6.0)
DECODERS = ("rnn", "lstm", "attn", "transformer")  # the model.decoder values, each tried on mps
_mps_problems: dict[str, str | None] = {}  # decoder -> why it cannot run on mps (None: it can), found once


class UnsupportedDeviceError(RuntimeError):
    """A device the installed torch cannot run: a GPU below compute capability 7.0 (e.g. Kaggle's P100),
    or one that is not there."""


def capability_supported(capability: tuple[int, int]) -> bool:
    """Whether the installed torch has kernels for a GPU of this (major, minor) compute capability."""
    return tuple(capability) >= MIN_COMPUTE_CAPABILITY


def check_cuda_device(device: torch.device) -> None:
    """Refuse GPUs below compute capability 7.0 with advice instead of a cryptic kernel error later."""
    major, minor = torch.cuda.get_device_capability(device)
    if not capability_supported((major, minor)):
        name = torch.cuda.get_device_name(device)
        raise UnsupportedDeviceError(
            f"{name} has compute capability {major}.{minor}; this torch ({torch.__version__}) needs at "
            f"least {MIN_COMPUTE_CAPABILITY[0]}.{MIN_COMPUTE_CAPABILITY[1]}. Kaggle's P100 no longer runs "
            "current torch (no sm_60 kernels: the first CUDA operation fails). In the notebook sidebar "
            'choose Session options -> Accelerator -> "GPU T4 x2", or train on the CPU with '
            "training.device=cpu."
        )


def resolve_device(name: str | torch.device = "auto", decoder: str | None = None) -> torch.device:
    """The device `name` (auto | cpu | cuda[:N] | mps) means here, for `decoder` (a model.decoder; None:
    every decoder). 'auto': cuda when available, else mps when `decoder` runs on it, else cpu. A named
    device that is absent or cannot run, or mps where the decoder does not run, is refused with advice."""
    if str(name) == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif torch.backends.mps.is_available():
            problem = mps_problem(decoder)
            name = "cpu" if problem else "mps"
        else:
            name = "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UnsupportedDeviceError("training.device asks for CUDA but no GPU is available here.")
        check_cuda_device(device)
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            built = "needs macOS 12.3 or newer on Apple silicon" if torch.backends.mps.is_built() else (
                "this torch is built without it")
            raise UnsupportedDeviceError(
                f"training.device asks for mps (Apple's GPU), but torch cannot use it here ({built}). "
                "Train on the CPU: training.device=cpu."
            )
        problem = mps_problem(decoder)
        if problem:
            raise UnsupportedDeviceError(f"{problem} Train on the CPU: training.device=cpu.")
    return device


def mps_problem(decoder: str | None = None) -> str | None:
    """Why `decoder` (None: any of DECODERS) cannot train on mps here, or None when it can: found by
    running decoder_problem on the mps device once per process, and said once (auto then uses the CPU)."""
    for name in DECODERS if decoder is None else (str(decoder),):
        if name not in _mps_problems:
            _mps_problems[name] = decoder_problem(name, torch.device("mps"))
            if _mps_problems[name]:
                print(f"{_mps_problems[name]} Training on the CPU instead.")
        if _mps_problems[name]:
            return _mps_problems[name]
    return None


def decoder_problem(decoder: str, device: torch.device) -> str | None:
    """Why `decoder` cannot train on `device` (None: it can): a tiny one runs a training step there (its
    forward pass, the caption loss, the backward pass) and a decoding step's ops (log-softmax, top-k,
    sampling). A missing kernel raises NotImplementedError (RuntimeError on older torch), named here.
    The global random generators are left as they were."""
    try:
        with torch.random.fork_rng(devices=[]):
            _training_step(decoder, device)
    except (NotImplementedError, RuntimeError) as error:
        said = (str(error).strip().splitlines() or [type(error).__name__])[0].rstrip(".")
        return f"The {decoder} decoder does not run on {device.type} with torch {torch.__version__}: {said}."
    return None


def _training_step(decoder: str, device: torch.device) -> None:
    """One step of a tiny `decoder` captioner on `device` (sizes: 2 images, 3 words, 8 channels)."""
    from helpers import decoders

    images, words, channels, vocab = 2, 3, 8, 5
    features = torch.randn(images, channels, 2, 2).to(device)
    embedded = torch.randn(images, words, channels).to(device)
    if decoder == "transformer":
        model = decoders.TransformerDecoder(channels, channels, d_model=channels, num_heads=2, num_layers=1)
        hidden = model.to(device)(embedded, features)
    elif decoder == "attn":
        hidden = decoders.AttentionLSTM(channels, channels).to(device)(embedded, features)
    else:
        cell = decoders.LSTM if decoder == "lstm" else decoders.RNN
        hidden = cell(channels, channels).to(device)(embedded, features.mean(dim=(2, 3)))
    scores = torch.nn.Linear(channels, vocab).to(device)(hidden)
    targets = torch.tensor([[1, 2, 0], [3, 4, 2]]).to(device)
    decoders.temporal_softmax_loss(scores, targets, ignore_index=0).backward()
    log_probs = scores[:, -1].detach().log_softmax(dim=-1)
    log_probs.topk(2, dim=-1)
    generator = torch.Generator(device=device).manual_seed(0)
    torch.multinomial(log_probs.exp(), 1, generator=generator)


def first_line(error: BaseException) -> str:
    """An error's first line (torch's CUDA errors run to many), or its type when it says nothing."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class DeviceOutOfMemoryError(RuntimeError):
    """The GPU ran out of memory; the message names the settings to lower, largest effect first."""


def out_of_memory_error(error: BaseException, config, what: str) -> DeviceOutOfMemoryError:
    """torch's out-of-memory `error` while `what` (e.g. "training run X") as one message: torch's own
    first line (how much it tried to allocate and what the GPU had), what is kept, and what to lower in
    `config` (a helpers.config.Config), in the order that frees the most."""
    training, model = config.training, config.model
    lower = [f"batch_size (now {config.batch_size}; e.g. batch_size={max(1, config.batch_size // 2)})"]
    if training.mode == "finetune":
        lower += [
            f"training.finetune_layers (now {training.finetune_layers}: each layer keeps its activations "
            "for the backward pass)",
            f"data.image_size (now {config.image_size})",
        ]
    layers = f", model.num_layers (now {model.num_layers})" if model.decoder == "transformer" else ""
    lower.append(f"the decoder's size: model.hidden_dim (now {model.hidden_dim}){layers}")
    return DeviceOutOfMemoryError(
        f"The GPU ran out of memory while {what} ({first_line(error)}). Nothing of the step that failed was "
        "saved; the run folder's last.pt and best.pt are as the last completed save left them. Lower, in "
        f"this order: {'; '.join(lower)}. Notebooks: OVERRIDES = [\"batch_size=...\"]; command line: "
        "key=value. A changed setting trains in a new run folder (the settings name it, unless "
        "training.run_name fixes it), so this one stays as it is."
    )
