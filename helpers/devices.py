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
