"""Which device runs the work: 'auto' picks the GPU when there is one, and a GPU the installed torch
cannot run (compute capability below 7.0, e.g. Kaggle's P100) is refused with advice."""

from __future__ import annotations

import torch

MIN_COMPUTE_CAPABILITY = (7, 0)  # current torch wheels have no kernels below sm_70 (Kaggle's P100 is 6.0)


class UnsupportedDeviceError(RuntimeError):
    """A GPU the installed torch cannot run (compute capability below 7.0, e.g. Kaggle's P100)."""


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


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; CUDA devices are checked for a supported capability."""
    if str(name) == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UnsupportedDeviceError("training.device asks for CUDA but no GPU is available here.")
        check_cuda_device(device)
    return device


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
            f"training.finetune_stages (now {training.finetune_stages}: each stage keeps its activations "
            "for the backward pass)",
            f"data.image_size (now {config.image_size})",
        ]
    layers = f", model.num_layers (now {model.num_layers})" if model.cell_type == "transformer" else ""
    lower.append(f"the decoder's size: model.hidden_dim (now {model.hidden_dim}){layers}")
    torch_says = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return DeviceOutOfMemoryError(
        f"The GPU ran out of memory while {what} ({torch_says}). Nothing of the step that failed was "
        "saved; the run folder's last.pt and best.pt are as the last completed save left them. Lower, in "
        f"this order: {'; '.join(lower)}. Notebooks: OVERRIDES = [\"batch_size=...\"]; command line: "
        "key=value. A changed setting trains in a new run folder (the settings name it, unless "
        "training.run_name fixes it), so this one stays as it is."
    )
