"""Every CUDA path of the product, end to end, on generated data: one command for a GPU machine.

    python scripts/gpu_check.py                    # a GPU machine (sized for ~6 minutes on one T4 or H100)
    python scripts/gpu_check.py --out gpu.json     # also the results as JSON (figures for BENCHMARKS.md)
    python scripts/gpu_check.py --dry-run          # the same paths on the CPU, smallest sizes (CI)

It writes a demo dataset (helpers.demo, its scenes grained to photo-like JPEG sizes) into a temporary
folder (`--work DIR` keeps it, with the runs and each path's output in logs/) and runs each path on its
own, so that one failure hides no other: the four decoders trained one epoch in fp16 autocast with the
gradient scaler (their feature store decoded by nvJPEG, which each run's preflight checks), then
resumed from last.pt for a second; an SCST epoch; fine-tuning the CNN; feature extraction with the
nvJPEG decoder and with the CPU decoders (images/s end to end, and the CNN alone on decoded crops, to
show whether decoding or the CNN limits it), notebook 02's per-batch backbone measurement, and how
far nvJPEG's pixels and features are from the CPU decoders'; with two or more GPUs an NCCL
all-reduce, DDP training, SCST after DDP training and extraction sharded over 2 devices. Nothing is
downloaded: the CNN keeps random weights (model.pretrained_backbone=false, as the demo config) and the
GloVe file is the demo's.

Each path prints one line, PASS / FAIL / SKIP, its name, its time and what it found (a FAIL the first
line of its exception, a SKIP why), then a table of the timings; a FAIL's traceback and last output
follow the table, and the exit status is then 1. Without CUDA (or with --dry-run) the paths run on the
CPU at the smallest sizes, the 2-device ones as 2 gloo processes, and those that need a GPU (nvJPEG,
NCCL) say SKIP, so that a CI machine proves the script itself works.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
import torchvision
from PIL import Image
from torch.utils.data import Subset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from helpers import distributed  # noqa: E402
from helpers.backbones import get_backbone, image_transform, measure_backbone  # noqa: E402
from helpers.checkpoints import load_checkpoint  # noqa: E402
from helpers.config import load_config  # noqa: E402
from helpers.demo import make_demo_dataset  # noqa: E402
from helpers.features import extract_features, store_encoder  # noqa: E402
from helpers.images import ImageDataset, default_decoder, default_num_workers, image_loader  # noqa: E402
from helpers.train import train  # noqa: E402
from helpers.workdir import prepared_and_features, prepare_for  # noqa: E402

DECODERS = ("Vanilla_RNN", "LSTM", "Attention_LSTM", "Transformer")
IMAGE_DECODERS = ("nvjpeg", "torchvision", "pil")  # helpers.choices.JPEG_DECODERS
OUTPUT_LINES_SHOWN = 20  # of a failed path's output, printed after the table with its traceback
MAX_MEAN_PIXEL_DIFFERENCE = 2.0  # nvJPEG against libjpeg-turbo: torchvision's own test allows a mean below 2


@dataclass(frozen=True)
class Sizes:
    """How much data and how large the models are: realistic on a GPU, the least that runs in a dry run."""

    images: int  # demo scenes (5 captions each), split 80/10/10
    sides: tuple[int, int]  # their width and height in pixels are drawn from this range (GPU: four
    # sizes, as photo sets have a handful; nvJPEG's path resizes the images of one size together)
    grain: float  # noise added to the scenes (standard deviation in grey levels, see add_grain)
    hidden_dim: int  # the decoders' width; their CNN stays the demo config's (regnet_x_400mf)
    train_image_size: int  # the training paths' CNN input side (their feature store, fine-tuning)
    batch_size: int
    val_max_images: int
    eval_splits: list[str]  # scored into results.json at the end of training (decoding on the device)
    eval_beam_sizes: list[int]
    backbone: str  # the feature extraction paths' CNN, at extract_size
    extract_size: int
    compared_images: int  # decoded and compared between the decoders
    workers: int | None  # DataLoader workers (None: the product's, helpers.images.default_num_workers)


GPU_SIZES = Sizes(images=2000, sides=(499, 500), grain=16, hidden_dim=64, train_image_size=96, batch_size=50,
                  val_max_images=50, eval_splits=["test"], eval_beam_sizes=[1, 3], backbone="resnet50",
                  extract_size=224, compared_images=256, workers=None)
DRY_SIZES = Sizes(images=30, sides=(64, 96), grain=16, hidden_dim=16, train_image_size=32, batch_size=40,
                  val_max_images=3, eval_splits=[], eval_beam_sizes=[1], backbone="regnet_x_400mf",
                  extract_size=32, compared_images=8, workers=0)


class Skip(Exception):
    """A path this machine cannot run; the message says why."""


class Done(NamedTuple):
    """What a path found: one line of detail, and its throughput when it handles images."""

    detail: str
    images_per_s: float | None = None


@dataclass
class Bench:
    """What the paths share: the device, the sizes, the generated data and the stores extracted so far."""

    device: torch.device
    gpus: int
    sizes: Sizes
    root: Path
    demo: Path
    stores: dict = field(default_factory=dict)  # image decoder -> its one-device feature store

    def config(self, decoder: str = "LSTM", runs: str = "runs", **overrides):
        """configs/<decoder>.yaml + configs/demo.yaml at this bench's sizes, on one device, runs in `runs`."""
        sizes = self.sizes
        values = {
            "data.dataset": "flickr8k",
            "data.data_dir": str(self.demo),
            "data.work_dir": str(self.root / "work"),
            "data.image_size": sizes.train_image_size,
            # on a GPU the training store is decoded by nvJPEG (a run's preflight checks it first)
            "data.jpeg_decoder": "nvjpeg" if self.device.type == "cuda" else "auto",
            "model.hidden_dim": sizes.hidden_dim,
            "batch_size": sizes.batch_size,
            "training.device": self.device.type,
            "training.devices": "1",
            "training.epochs": 1,
            "training.num_workers": sizes.workers,
            "training.val_max_images": sizes.val_max_images,
            "training.eval_splits": sizes.eval_splits,
            "training.eval_beam_sizes": sizes.eval_beam_sizes,
            "training.meteor": False,
            "training.run_dir": str(self.root / runs),
            **overrides,
        }
        return load_config([decoder, "demo"], values)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def needs_two_devices(self, what: str) -> None:
        if self.device.type == "cuda" and self.gpus < 2:
            raise Skip(f"{self.gpus} GPU: {what} needs 2 (on Kaggle: GPU T4 x2)")


def add_grain(demo: Path, grain: float) -> float:
    """Add Gaussian noise of `grain` grey levels to every demo scene, saved again as JPEG (quality 90),
    once; returns their mean size in kB. The flat scenes compress to ~8 kB and decode faster than
    photos; grained at 16, a 500 x 500 scene takes ~90 kB and libjpeg-turbo's images/s fall by ~1.6x,
    so decoding is not timed as nearly free. The shapes, and so the captions, stay. Each scene takes a
    window of one noise field at a random place (drawing noise per scene took most of the time)."""
    files = sorted((demo / "Images").glob("*.jpg"))
    marker = demo / ".grain"
    if not marker.is_file():
        random = np.random.default_rng(0)
        noise = random.normal(0, grain, (1024, 1024, 3)).astype(np.float32)  # the scenes are smaller
        for path in files:
            with Image.open(path) as image:
                pixels = np.asarray(image, dtype=np.float32)
            top, left = random.integers(0, 1025 - np.array(pixels.shape[:2]))
            window = noise[top : top + pixels.shape[0], left : left + pixels.shape[1]]
            Image.fromarray(np.clip(pixels + window, 0, 255).astype(np.uint8)).save(path, quality=90)
        marker.write_text(f"{grain}\n")
    return sum(path.stat().st_size for path in files) / len(files) / 1e3


def prepare_data(bench: Bench) -> Done:
    """The prepared captions and the training configs' feature store (decoded as data.jpeg_decoder says)."""
    config = bench.config()
    prepared, store = prepared_and_features(config, device=bench.device, progress=False)
    counts = "/".join(str(len(names)) for names in prepared.splits.values())
    decoder = default_decoder() if config.data.jpeg_decoder == "auto" else config.data.jpeg_decoder
    return Done(f"{counts} images ({'/'.join(prepared.splits)}), {store.backbone} {store.image_size} px "
                f"{store.layout} store, decoder {decoder}")


def _finite_losses(history: list[dict]) -> list[float]:
    losses = [record["train_loss"] for record in history]
    if not all(np.isfinite(losses)):
        raise RuntimeError(f"non-finite training loss: {losses}")
    return losses


def train_and_resume(decoder: str, bench: Bench) -> Done:
    """One epoch (fp16 autocast and the gradient scaler on CUDA, the training.amp default), then the
    same run resumed from last.pt for a second epoch: its history must hold both."""
    seen = {}

    def note(event: str, state) -> None:
        if event == "epoch_end":  # not at every step: reading the loss scale waits for the GPU
            seen.update(device=state.device, amp=state.scaler.is_enabled(), scale=state.scaler.get_scale())

    runs = f"runs/{decoder}"
    first = train(bench.config(decoder, runs), progress=False, callbacks=[note])
    if seen["device"].type != bench.device.type:
        raise RuntimeError(f"trained on {seen['device']}, not on {bench.device}")
    if bench.device.type == "cuda" and not seen["amp"]:
        raise RuntimeError("the gradient scaler is off on CUDA: training.amp did not take effect")
    with warnings.catch_warnings():  # more epochs on resume re-plan the LR schedule, as expected here
        warnings.filterwarnings("ignore", message="training.epochs 1 -> 2 on resume")
        second = train(bench.config(decoder, runs, **{"training.epochs": 2}), progress=False)
    if second.epochs != 2 or second.history[0] != first.history[0]:
        raise RuntimeError(f"the resumed run's history has {second.epochs} epochs, not the first one and "
                           "a second")
    losses = _finite_losses(second.history)
    precision = f"fp16 autocast, loss scale {seen['scale']:g}" if seen["amp"] else "fp32 (fp16 needs CUDA)"
    epochs = ", ".join(f"{record['time_s']:.1f} s" for record in second.history)
    return Done(f"epochs {epochs} (2nd resumed), loss {losses[0]:.2f} -> {losses[1]:.2f}, {precision}")


def scst(bench: Bench) -> Done:
    """A cross-entropy epoch, then one SCST epoch (sampled captions, CIDEr-D rewards) on one device."""
    overrides = {"training.scst.enabled": True, "training.scst.epochs": 1}
    result = train(bench.config("LSTM", "runs/scst", **overrides), progress=False)
    phases = [record.get("phase", "xe") for record in result.history]
    if phases != ["xe", "scst"]:
        raise RuntimeError(f"epochs of phases {phases}, expected ['xe', 'scst']")
    reward = result.history[1]["train_reward"]
    if not np.isfinite(reward):
        raise RuntimeError(f"SCST reward {reward}")
    return Done(f"SCST epoch {result.history[1]['time_s']:.1f} s, train CIDEr-D reward {reward:.3f}")


def finetune(bench: Bench) -> Done:
    """One epoch with images through the CNN, whose last stage trains (autocast on CUDA)."""
    config = bench.config("LSTM", "runs/finetune", **{"training.mode": "finetune"})
    result = train(config, progress=False)
    _finite_losses(result.history)
    saved = load_checkpoint(result.run_dir / "best.pt")["model"]
    if not any(key.startswith("image_encoder.") for key in saved):
        raise RuntimeError("best.pt lacks the fine-tuned CNN")
    record = result.history[0]
    return Done(f"epoch {record['time_s']:.1f} s, {record['captions_per_s']:.0f} captions/s, "
                f"{config.model.backbone} {config.image_size} px, its last stage saved in best.pt")


def _crops(bench: Bench, decoder: str = "torchvision") -> ImageDataset:
    """Every demo image as extraction's loader reads it: decoded by `decoder`, resized and cropped."""
    prepared = prepare_for(bench.config(), progress=False)
    paths = [prepared.image_path(name) for names in prepared.splits.values() for name in names]
    transform = image_transform(bench.sizes.backbone, bench.sizes.extract_size, torch.uint8)
    return ImageDataset(paths, transform, decoder=decoder)


def _needs_cuda(decoder: str, bench: Bench) -> None:
    if decoder == "nvjpeg" and bench.device.type != "cuda":
        raise Skip("dry run on the CPU: nvJPEG decodes on the GPU")


def decode(decoder: str, bench: Bench) -> Done:
    """Decoding alone, as extraction's loader does it with `decoder` (batches of the backbone's size,
    the crops moved to the device), no CNN: the images/s that decoding can feed the CNN."""
    _needs_cuda(decoder, bench)
    sizes, device = bench.sizes, bench.device
    start, count = time.perf_counter(), 0
    for batch in image_loader(_crops(bench, decoder), get_backbone(sizes.backbone).batch_size, sizes.workers,
                              device):
        count += len(batch.images.to(device, non_blocking=True))
    bench.synchronize()
    workers = default_num_workers() if sizes.workers is None else sizes.workers
    where = f"in {workers} loader workers" if workers else "in the main process"
    where = "on the GPU" if decoder == "nvjpeg" else where
    return Done(f"{count} images to {sizes.extract_size} px crops, decoded {where}",
                count / (time.perf_counter() - start))


def extract(decoder: str, bench: Bench) -> Done:
    """The feature store of every image with `decoder`, timed end to end (building the CNN and starting
    the loader included)."""
    _needs_cuda(decoder, bench)
    sizes = bench.sizes
    prepared = prepare_for(bench.config(), progress=False)
    start = time.perf_counter()
    store = extract_features(prepared, sizes.backbone, sizes.extract_size, pretrained=False,
                             num_workers=sizes.workers, device=bench.device, progress=False,
                             work_dir=bench.root / f"features-{decoder}", decoder=decoder)
    bench.synchronize()
    seconds = time.perf_counter() - start
    bench.stores[decoder] = store
    images = sum(store.shape(split)[0] for split in store.splits)
    return Done(f"{images} images, {sizes.backbone} {sizes.extract_size} px on {bench.device.type}, "
                f"{store.layout} store", images / seconds)


def measure_backbones(bench: Bench) -> Done:
    """Notebook 02's measured table (helpers.backbones.measure_backbone): fp16 channels_last batches
    timed one by one (each synchronised), their median, and the peak memory on a GPU."""
    batch = 64 if bench.device.type == "cuda" else 4
    row = measure_backbone(bench.sizes.backbone, bench.sizes.extract_size, batch_size=batch, batches=3,
                           device=bench.device)
    times = row["batch times (s)"]
    if len(times) != 3 or min(times) <= 0:
        raise RuntimeError(f"batch times {times}: expected 3 positive times")
    if bench.device.type == "cuda" and not row["peak GPU memory (MB)"]:
        raise RuntimeError("no peak GPU memory measured on CUDA")
    median = sorted(times)[1]
    memory = row["peak GPU memory (MB)"] or "-"
    return Done(f"{bench.sizes.backbone} at {bench.sizes.extract_size} px, batch {batch}, batches "
                f"{', '.join(f'{t:.3f}' for t in times)} s, peak memory {memory} MB", batch / median)


def cnn_alone(bench: Bench) -> Done:
    """The CNN on crops already decoded and on the device, as extraction runs it (fp16 autocast and
    channels_last on CUDA): the images/s that decoding would have to keep up with."""
    sizes, device = bench.sizes, bench.device
    batch = get_backbone(sizes.backbone).batch_size
    crops = torch.cat([loaded.images for loaded in image_loader(_crops(bench), batch, sizes.workers)])
    crops = crops.to(device)
    encoder = store_encoder(sizes.backbone, pretrained=False).eval().to(device)
    if device.type == "cuda":
        encoder = encoder.to(memory_format=torch.channels_last)
        crops = crops.contiguous(memory_format=torch.channels_last)
    finite = True
    with torch.inference_mode(), torch.autocast(device.type, torch.float16, enabled=device.type == "cuda"):
        encoder(crops[:batch])  # warm-up: kernels chosen, memory allocated
        bench.synchronize()
        start = time.perf_counter()
        for first in range(0, len(crops), batch):
            finite &= bool(torch.isfinite(encoder(crops[first : first + batch])).all())
        bench.synchronize()
    seconds = time.perf_counter() - start
    precision = "fp16" if device.type == "cuda" else "fp32"
    overflow = "" if finite else "; fp16 overflowed (extraction redoes such batches in fp32)"
    return Done(f"{len(crops)} crops, batch {batch}, {precision}{overflow}", len(crops) / seconds)


def _largest_difference(store, other) -> tuple[float, float]:
    """(largest |difference| between the features of two stores of the same images, largest |feature|
    of `other`), read in blocks of rows: a GPU-sized store does not fit in memory as float32."""
    difference = magnitude = 0.0
    for split in store.splits:
        ours, theirs = store.features(split), other.features(split)
        for first in range(0, len(ours), 256):
            block = np.asarray(theirs[first : first + 256], dtype=np.float32)
            difference = max(difference, float(np.abs(ours[first : first + 256] - block).max()))
            magnitude = max(magnitude, float(np.abs(block).max()))
    return difference, magnitude


def compare_decoders(bench: Bench) -> Done:
    """Each extracted decoder's crops and features against torchvision's (libjpeg-turbo): Pillow's must
    be the same pixels; nvJPEG's may differ by a few grey levels (mean below 2, as torchvision's test)."""
    if "torchvision" not in bench.stores:
        raise RuntimeError("extract/torchvision did not finish: nothing to compare with")
    reference, compared = bench.stores["torchvision"], range(bench.sizes.compared_images)

    def crops(decoder: str) -> torch.Tensor:
        device = bench.device if decoder == "nvjpeg" else None
        loader = image_loader(Subset(_crops(bench, decoder), compared), 64, 0, device)
        return torch.cat([batch.images.cpu() for batch in loader]).int()

    pixels = crops("torchvision")
    found, problems = [], []
    for decoder in [name for name in ("nvjpeg", "pil") if name in bench.stores]:
        difference = (crops(decoder) - pixels).abs().float()
        features, magnitude = _largest_difference(bench.stores[decoder], reference)
        found.append(f"{decoder}: pixels max {difference.max():.0f} mean {difference.mean():.2f}, features "
                     f"max {features:.3g} (largest feature {magnitude:.3g})")
        if decoder == "pil" and difference.max() > 0:
            problems.append("Pillow's crops differ from torchvision's, which should be byte-identical")
        if difference.mean() >= MAX_MEAN_PIXEL_DIFFERENCE:
            problems.append(f"{decoder}'s crops differ by {difference.mean():.2f} grey levels on average")
    if problems:
        raise RuntimeError("; ".join(problems) + f" ({'; '.join(found)})")
    unmatched = "" if "nvjpeg" in bench.stores else " (nvjpeg not extracted)"
    return Done(f"{len(compared)} images vs torchvision: " + "; ".join(found) + unmatched)


def _all_reduce(size: int, report: str) -> None:
    """One rank of `nccl_all_reduce`: a CUDA tensor summed over the ranks, checked, timed on rank 0."""
    device = torch.device("cuda", dist.get_rank())
    ranks = dist.get_world_size()
    tensor = torch.full((size,), float(dist.get_rank() + 1), device=device)
    dist.all_reduce(tensor)  # the first call sets NCCL's communicator up
    expected = ranks * (ranks + 1) / 2
    if not torch.all(tensor == expected):
        raise RuntimeError(f"all-reduce gave {tensor.unique().tolist()}, expected {expected}")
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(5):
        dist.all_reduce(tensor)
    torch.cuda.synchronize(device)
    if distributed.is_main():
        Path(report).write_text(json.dumps({"seconds": (time.perf_counter() - start) / 5}))


def nccl_all_reduce(bench: Bench) -> Done:
    """A CUDA tensor all-reduced through NCCL by 2 processes, joined as the product joins its ranks."""
    if bench.device.type != "cuda":
        raise Skip("dry run on the CPU: NCCL reduces CUDA tensors only")
    bench.needs_two_devices("an NCCL all-reduce")
    size, report = 16 * 2**20, bench.root / "all_reduce.json"  # 64 MiB of float32
    distributed.launch(_all_reduce, (size, str(report)), 2, bench.device)
    seconds = json.loads(report.read_text())["seconds"]
    return Done(f"64 MiB float32 over 2 GPUs: {seconds * 1e3:.1f} ms, {size * 4 / seconds / 1e9:.1f} GB/s")


def ddp_train(bench: Bench) -> Done:
    """One epoch of DistributedDataParallel training on 2 devices (gloo processes in a dry run)."""
    bench.needs_two_devices("DDP training")
    result = train(bench.config("LSTM", "runs/ddp", **{"training.devices": "2"}), progress=False)
    losses = _finite_losses(result.history)
    return Done(f"2 x {bench.device.type}, epoch {result.history[0]['time_s']:.1f} s, loss {losses[0]:.2f}")


def ddp_scst(bench: Bench) -> Done:
    """SCST asked of 2 devices: the cross-entropy epoch trains on both (a run folder of its own), then
    the self-critical epoch on one device starts from it."""
    bench.needs_two_devices("SCST after DDP")
    overrides = {"training.devices": "2", "training.scst.enabled": True, "training.scst.epochs": 1}
    result = train(bench.config("LSTM", "runs/ddp-scst", **overrides), progress=False)
    phases = [record.get("phase", "xe") for record in result.history]
    if phases != ["xe", "scst"]:
        raise RuntimeError(f"epochs of phases {phases}, expected ['xe', 'scst']")
    return Done(f"cross-entropy on 2 x {bench.device.type}, then SCST on 1: reward "
                f"{result.history[1]['train_reward']:.3f}")


def sharded_extract(bench: Bench) -> Done:
    """Extraction sharded over 2 devices (nvJPEG on each GPU, libjpeg-turbo in a dry run), against the
    one-device store of the same decoder: the same rows (on the CPU exactly the same values)."""
    bench.needs_two_devices("sharded extraction")
    sizes = bench.sizes
    decoder = "nvjpeg" if bench.device.type == "cuda" else "torchvision"
    prepared = prepare_for(bench.config(), progress=False)
    start = time.perf_counter()
    store = extract_features(prepared, sizes.backbone, sizes.extract_size, pretrained=False,
                             num_workers=sizes.workers, device=bench.device, progress=False,
                             work_dir=bench.root / "features-2-devices", decoder=decoder, devices=2)
    seconds = time.perf_counter() - start
    images = sum(store.shape(split)[0] for split in store.splits)
    single = bench.stores.get(decoder)
    if single is None:
        return Done(f"{images} images on 2 x {bench.device.type} (extract/{decoder} did not finish: "
                    "not compared)", images / seconds)
    difference, _ = _largest_difference(store, single)
    if bench.device.type == "cpu" and difference > 0:
        raise RuntimeError(f"the 2-device store differs from the one-device store by up to {difference:.3g}")
    return Done(f"{images} images on 2 x {bench.device.type} ({decoder}), max difference from 1 device "
                f"{difference:.3g}", images / seconds)


CHECKS: list[tuple[str, Callable[[Bench], Done]]] = [
    ("prepare", prepare_data),
    *[(f"train/{decoder}", partial(train_and_resume, decoder)) for decoder in DECODERS],
    ("scst", scst),
    ("finetune", finetune),
    *[(f"decode/{decoder}", partial(decode, decoder)) for decoder in IMAGE_DECODERS],
    *[(f"extract/{decoder}", partial(extract, decoder)) for decoder in IMAGE_DECODERS],
    ("cnn-alone", cnn_alone),
    ("measure-backbone", measure_backbones),
    ("compare-decoders", compare_decoders),
    ("nccl-all-reduce", nccl_all_reduce),
    ("ddp-train", ddp_train),
    ("ddp-scst", ddp_scst),
    ("ddp-extract", sharded_extract),
]


@contextlib.contextmanager
def output_to(log: Path):
    """Whatever a path prints goes to `log`, so the report stays one line per path: sys.stdout and
    sys.stderr, and the file descriptors behind them, where its spawned ranks print."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "w", buffering=1) as file, contextlib.redirect_stdout(file), \
            contextlib.redirect_stderr(file):
        os.dup2(file.fileno(), 1)
        os.dup2(file.fileno(), 2)
        try:
            yield
        finally:
            for fd, original in zip((1, 2), saved):
                os.dup2(original, fd)
                os.close(original)


def run_check(name: str, check: Callable[[Bench], Done], bench: Bench) -> dict:
    """Run one path, timed; its result (status, seconds, images_per_s, detail), printed as one line."""
    log = bench.root / "logs" / f"{name.replace('/', '-')}.log"
    log.parent.mkdir(exist_ok=True)
    start = time.perf_counter()
    result = {"status": "PASS", "seconds": None, "images_per_s": None, "detail": ""}
    try:
        with output_to(log):
            done = check(bench)
            bench.synchronize()
        result.update(detail=done.detail, images_per_s=done.images_per_s)
    except Skip as reason:
        result.update(status="SKIP", detail=str(reason))
    except Exception as error:
        message = str(error).strip().splitlines()
        result.update(status="FAIL", detail=": ".join([type(error).__name__, *message[:1]]),
                      traceback=traceback.format_exc(),
                      output=log.read_text(errors="replace").splitlines()[-OUTPUT_LINES_SHOWN:])
    if result["status"] != "SKIP":
        result["seconds"] = round(time.perf_counter() - start, 2)
    timing = "" if result["seconds"] is None else f"{result['seconds']:.1f} s"
    print(f"{result['status']}  {name:<22} {timing:>8}  {result['detail']}", flush=True)
    return result


def describe(device: torch.device, reason: str) -> dict:
    """The machine and the library versions, for the report's first line and the JSON."""
    about = {"torch": torch.__version__, "torchvision": torchvision.__version__,
             "dry_run": device.type == "cpu"}
    if device.type == "cpu":
        return about | {"device": f"CPU (dry run: {reason})"}
    names = [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]
    major, minor = torch.cuda.get_device_capability()
    return about | {"device": f"{len(names)} x {names[0]} (compute capability {major}.{minor})",
                    "gpus": names, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}


def print_table(results: dict[str, dict]) -> None:
    print(f"\n{'path':<22} {'status':<6} {'seconds':>8} {'images/s':>9}")
    for name, result in results.items():
        seconds = "" if result["seconds"] is None else f"{result['seconds']:.1f}"
        rate = "" if result["images_per_s"] is None else f"{result['images_per_s']:.0f}"
        print(f"{name:<22} {result['status']:<6} {seconds:>8} {rate:>9}")
    statuses = [result["status"] for result in results.values()]
    print(", ".join(f"{statuses.count(status)} {status}" for status in ("PASS", "FAIL", "SKIP")))


def main(argv: list[str] | None = None, checks: list[tuple[str, Callable[[Bench], Done]]] = CHECKS) -> int:
    """Run `checks` (every path) and report them; 1 when any failed. Tests pass their own `checks`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="run on the CPU at the smallest sizes "
                        "(automatic without CUDA); GPU-only paths are skipped")
    parser.add_argument("--out", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--work", type=Path, help="keep the data, runs and logs in this folder "
                        "(default: a temporary folder, removed at the end)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.dry_run
    device = torch.device("cuda" if cuda else "cpu")
    about = describe(device, "--dry-run" if args.dry_run else "no CUDA device")
    print(f"gpu_check on {about['device']}: torch {about['torch']}, torchvision {about['torchvision']}"
          + (f", CUDA {about['cuda']}, cuDNN {about['cudnn']}" if cuda else ""), flush=True)
    sizes = GPU_SIZES if cuda else DRY_SIZES
    with contextlib.ExitStack() as stack:
        root = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu-check-")))
        root.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        demo = make_demo_dataset(root / "demo", num_images=sizes.images, image_size=sizes.sides)
        about["data"] = {"scenes": sizes.images, "sides_px": list(sizes.sides),
                         "mean_jpeg_kB": round(add_grain(demo, sizes.grain))}
        print(f"demo data: {sizes.images} scenes of {sizes.sides[0]}-{sizes.sides[1]} px, JPEGs of "
              f"{about['data']['mean_jpeg_kB']} kB on average, made in {time.perf_counter() - start:.1f} s "
              f"in {root}", flush=True)
        bench = Bench(device, torch.cuda.device_count() if cuda else 0, sizes, root, demo)
        results = {name: run_check(name, check, bench) for name, check in checks}
    print_table(results)
    for name, result in results.items():
        if result["status"] == "FAIL":
            output = "".join(f"  {line}\n" for line in result["output"])
            print(f"\n--- {name} failed\n{result['traceback']}", file=sys.stderr)
            print(f"its last output:\n{output}" if output else "no output", file=sys.stderr)
    if args.out:
        paths = {name: {key: result[key] for key in ("status", "seconds", "images_per_s", "detail")}
                 for name, result in results.items()}
        args.out.write_text(json.dumps(about | {"paths": paths}, indent=2) + "\n", encoding="utf-8")
    return 1 if any(result["status"] == "FAIL" for result in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
