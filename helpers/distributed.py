"""Work on N devices with PyTorch DistributedDataParallel: how many processes `training.devices`
asks for, their launch, which rank writes, each rank's share of a batch and the gathering of results.

One process runs per device (GPU i for rank i; on the CPU each process is one gloo rank). They are
joined in one group that maps each device type to a backend (`backend_for`): on GPUs the CUDA tensors
(DDP's gradients, SyncBatchNorm's statistics) go through NCCL and the loop's CPU scalars (stop flags,
loss sums, object collectives, barriers) through gloo, as NCCL reduces CUDA tensors only. They are
started with `torch.multiprocessing`'s *spawn* method, from the command line as from a notebook:
spawned processes start fresh, so a notebook that already touched CUDA (its setup cell names the GPU)
launches them all the same, unlike a fork. Rank 0 alone writes the run folder; every rank takes an
exact, deterministic share of each global batch, and DDP averages the gradients.

Outside a launched process group every function here answers as the only process would (rank 0 of
1), so the one training loop reads the same with one device or many.
"""

from __future__ import annotations

import logging
import pickle
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.multiprocessing.spawn import ProcessException, ProcessExitedException


class DevicesUnavailableError(RuntimeError):
    """training.devices asks for more GPUs than this machine shows."""


def device_count(devices: str | int, device: torch.device) -> int:
    """The number of processes `training.devices` asks for on `device` (cpu or cuda): `auto` is every
    visible GPU (one process on the CPU); a number of GPUs beyond those visible is refused."""
    visible = torch.cuda.device_count() if device.type == "cuda" else 0
    if str(devices) == "auto":
        return max(visible, 1)
    count = int(devices)
    if device.type == "cuda" and count > visible:
        raise DevicesUnavailableError(
            f"training.devices={count} but this machine shows {visible} GPU(s). Set training.devices="
            f"{visible} or auto (command line: --devices {visible}; notebooks: DEVICES = {visible}), or on "
            'Kaggle choose Session options -> Accelerator -> "GPU T4 x2" for two.'
        )
    return count


def batch_split(batch_size: int, processes: int) -> str:
    """How a global batch is shared, for the printed config: 'batch 128 = 2 devices x 64'."""
    if processes == 1:
        return f"batch {batch_size} captions per step on 1 device"
    low, extra = divmod(batch_size, processes)
    per_device = f"{low}" if not extra else f"{low}-{low + 1}"
    return f"batch {batch_size} captions per step (global) = {processes} devices x {per_device} per device"


# ------------------------------------------------------------------------------------------ ranks


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process writes files and prints: rank 0, or the only process."""
    return rank() == 0


def rank_device(device: torch.device) -> torch.device:
    """This rank's device: GPU `rank` when training on CUDA, the CPU otherwise."""
    if device.type == "cuda" and world_size() > 1:
        return torch.device("cuda", rank())
    return device


def from_main(compute: Callable[..., Any], *args, **kwargs) -> Any:
    """`compute(*args, **kwargs)` run on rank 0 alone and its (picklable) result handed to every rank."""
    if world_size() == 1:
        return compute(*args, **kwargs)
    result = [compute(*args, **kwargs) if is_main() else None]
    dist.broadcast_object_list(result, src=0)
    return result[0]


def any_rank(flag: bool) -> bool:
    """True on every rank when it is True on any (so all ranks stop at the same step)."""
    if world_size() == 1:
        return flag
    value = torch.tensor([int(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier() -> None:
    """Wait until every rank gets here (e.g. before reading a file rank 0 has just written)."""
    if world_size() > 1:
        dist.barrier()


def sum_over_ranks(*values: float) -> tuple[float, ...]:
    """Each value summed over all ranks (float64), on every rank."""
    if world_size() == 1:
        return values
    total = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(total)
    return tuple(total.tolist())


def gather(items: list) -> list:
    """Every rank's `items`, concatenated in rank order, on every rank."""
    if world_size() == 1:
        return items
    gathered: list[list | None] = [None] * world_size()
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


def gather_on_main(items: list) -> list:
    """Every rank's `items`, concatenated in rank order, on rank 0 alone (the others get []): for
    what only the writer needs, without sending it to every rank."""
    if world_size() == 1:
        return items
    gathered: list[list | None] | None = [None] * world_size() if is_main() else None
    dist.gather_object(items, gathered, dst=0)
    return [item for part in gathered for item in part] if is_main() else []


def shard_range(count: int) -> range:
    """This rank's contiguous share of `count` items (sizes differ by at most one, rank 0 first)."""
    size, extra = divmod(count, world_size())
    start = rank() * size + min(rank(), extra)
    return range(start, start + size + (rank() < extra))


# --------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class Share:
    """This rank's part of one global batch: the indices it loads and whether its captions count.

    A rank whose part is empty (a last batch smaller than the device count) loads the batch's first
    item anyway and weighs it zero: every rank must run each step's backward pass for DDP to average.
    """

    indices: list[int]
    counted: bool = True


def share(batch: list[int]) -> Share:
    """This rank's deterministic share of a global batch: a contiguous slice (all of it on one device)."""
    part = shard_range(len(batch))
    if len(part) == 0:
        return Share(batch[:1], counted=False)
    return Share(batch[part.start : part.stop])


def replicate(model: nn.Module, device: torch.device) -> nn.Module:
    """The model that trains: DDP around `model` on several devices (gradients averaged), else itself.
    Its BatchNorm layers normalise with the statistics of the global batch, as on one device (torch's
    SyncBatchNorm on GPUs, `GlobalBatchNorm2d` on the CPU). Checkpoints, validation and decoding keep
    using `model`, whose weights DDP updates in place (its state_dict keys are unchanged)."""
    if world_size() == 1:
        return model
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = GlobalBatchNorm2d  # same parameters and buffers, other forward
    return nn.parallel.DistributedDataParallel(model)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that trains on the statistics of the global batch across gloo (CPU) ranks, which
    torch's SyncBatchNorm refuses. Its sums are all-reduced forward and backward (`_SumOverRanks`), so
    layers beneath it (a fine-tuned CNN) get the gradients of one device's global batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        count = torch.tensor([x.numel() // x.shape[1]], dtype=torch.float64)
        dist.all_reduce(count)
        n = float(count.item())
        mean = _SumOverRanks.apply(x.sum((0, 2, 3))) / n
        centred = x - mean[None, :, None, None]
        var = _SumOverRanks.apply((centred * centred).sum((0, 2, 3))) / n
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach() * n / max(n - 1, 1))
        scale = torch.rsqrt(var + self.eps)
        out = centred * scale[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        self.num_batches_tracked += 1
        momentum = self.momentum if self.momentum is not None else 1 / float(self.num_batches_tracked)
        self.running_mean.lerp_(mean, momentum)
        self.running_var.lerp_(unbiased_var, momentum)


def batch_weight(local_count: int) -> tuple[int, float]:
    """(captions in the global batch, this rank's loss weight). The loss is a mean per caption and DDP
    averages gradients over ranks, so weighting a rank's mean by `ranks x its captions / all captions`
    makes the averaged gradient exactly that of the global batch's mean on one device."""
    if world_size() == 1:
        return local_count, 1.0
    total = torch.tensor([local_count], dtype=torch.float64)
    dist.all_reduce(total)
    count = int(total.item())
    return count, world_size() * local_count / max(count, 1)


def global_mean(local_mean: float, local_count: int, total: int) -> float:
    """The global batch's mean loss per caption from each rank's mean over its own captions."""
    if world_size() == 1:
        return local_mean
    value = torch.tensor([local_mean * local_count if local_count else 0.0], dtype=torch.float64)
    dist.all_reduce(value)
    return float(value.item()) / max(total, 1)


class _SumOverRanks(torch.autograd.Function):
    """The sum of a tensor over all ranks (dist.all_reduce); its gradient is summed over ranks too,
    as every rank's loss depends on every rank's input (what torch's SyncBatchNorm does on GPUs)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


# ----------------------------------------------------------------------------------------- launch


def backend_for(device: torch.device) -> str:
    """The group's device-to-backend map for ranks on `device`: CUDA tensors through NCCL and CPU
    tensors through gloo on GPUs (a group made with plain "nccl" has no backend for the CPU, and every
    collective on a CPU tensor raises "No backend type associated with device type cpu"); gloo for
    both on the CPU."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def launch(target: Callable[..., Any], args: tuple, processes: int, device: torch.device,
           backend: str | None = None) -> None:
    """Run `target(*args)` in `processes` spawned processes joined in one group (`backend`, by default
    `backend_for(device)`). An error in any process ends them all and is raised here as that process
    raised it; a process a signal ended is reported as such (the others' errors follow from it); an
    interrupt here stops them all."""
    backend = backend or backend_for(device)
    with tempfile.TemporaryDirectory(prefix="captioning-ddp-") as folder:
        address = f"tcp://127.0.0.1:{_free_port()}"
        context = mp.start_processes(
            _process, args=(target, args, processes, address, backend, folder), nprocs=processes,
            start_method="spawn", join=False,
        )
        spawn_log = logging.getLogger("torch.multiprocessing.spawn")
        level = spawn_log.level
        # after a failure torch logs each rank it ends ("Terminating process N via signal SIGTERM"):
        # the error raised here says what ended them
        spawn_log.setLevel(logging.ERROR)
        try:
            while not context.join():
                pass
        except KeyboardInterrupt:  # a notebook's Interrupt (or Ctrl-C) stops the ranks too
            _stop(context.processes)
            raise
        except ProcessException as failure:
            killed = _killed_rank(context.processes)
            if killed is not None:  # the root cause: the other ranks then fail with a peer gone
                raise killed from failure
            raised = _first_error(Path(folder))
            if raised is None:
                raise
            raise raised from failure
        finally:
            spawn_log.setLevel(level)


def _stop(processes: list, grace_s: float = 10.0) -> None:
    """End the ranks: SIGTERM, then SIGKILL whatever still runs after `grace_s`. Checkpoints are
    written atomically, so a rank stopped mid-write leaves the previous file whole."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + grace_s
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


def _process(index: int, target, args: tuple, processes: int, address: str, backend: str, folder: str):
    """One rank: join the group, run the target, leave; an exception is saved for `launch` to raise."""
    # torch ends a rank whose launching process dies by sending it SIGINT; a launcher started with
    # SIGINT ignored (a shell's background job, `cmd &`) passes that on, and its ranks would outlive it
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if "nccl" in backend:
        torch.cuda.set_device(index)
    # the CPU's cores shared between the ranks (and their loader workers, images.default_num_workers),
    # not each rank using them all
    torch.set_num_threads(max(1, torch.get_num_threads() // processes))
    dist.init_process_group(backend, init_method=address, rank=index, world_size=processes)
    try:
        target(*args)
    except Exception as error:
        path = Path(folder) / f"rank{index}.pickle"
        try:
            path.write_bytes(pickle.dumps(error))
        except (pickle.PicklingError, TypeError, AttributeError):
            path.write_bytes(pickle.dumps(RuntimeError(f"rank {index}: {error!r}")))
        raise
    finally:
        dist.destroy_process_group()


def _killed_rank(processes: list) -> ProcessExitedException | None:
    """A rank that a signal ended (kill -9, the out-of-memory killer), not the SIGTERM with which torch
    ends the others after a failure; None when every rank exited by itself or was ended that way."""
    for index, process in enumerate(processes):
        code = process.exitcode
        if code is not None and code < 0 and -code != signal.SIGTERM:
            name = signal.Signals(-code).name
            return ProcessExitedException(f"process {index:d} terminated with signal {name}",
                                          error_index=index, error_pid=process.pid, exit_code=code,
                                          signal_name=name)
    return None


def _first_error(folder: Path) -> BaseException | None:
    """The exception raised first (the others usually follow from it: a peer gone)."""
    files = sorted(folder.glob("rank*.pickle"), key=lambda path: path.stat().st_mtime_ns)
    try:
        return pickle.loads(files[0].read_bytes()) if files else None
    except Exception:  # noqa: BLE001 - an exception class that cannot be rebuilt: torch's own report stands
        return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]

