"""What the benchmark scripts share: the device they run on and a line that names it."""

import torch


def pick_device(name: str, threads: int | None = None) -> tuple[torch.device, str]:
    """(device, description for the table header); `threads` sets torch's CPU threads first."""
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(name)
    if device.type == "cuda":
        return device, torch.cuda.get_device_name(device)
    return device, f"CPU, {torch.get_num_threads()} threads"
