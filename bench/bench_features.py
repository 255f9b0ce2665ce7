"""Feature extraction speed per backbone, and memory while iterating the whole feature store.

1. Throughput (random weights, 224 px): the naive way (one image at a time, float32) against the
   way `extract_features` runs the encoder (batched under inference_mode; on CUDA also fp16
   autocast and channels_last). On CUDA a batched float32 row isolates what fp16 adds. An
   end-to-end `extract_features` row (JPEG decoding, loader workers and disk writes included)
   follows for each backbone.
   Then, per backbone, what fine-tuning keeps for the backward pass: bytes per image of the tensors
   autograd saves at 224 px in float32, with only the last stage training (`training.mode: finetune`,
   `finetune_layers: 1`) and with the whole trunk training; it scales the memory a training batch needs.
2. Memory: peak RSS of a fresh process that reads every row of a fake ResNet50 store of 500 and
   of 2000 images, with `CaptionFeatureDataset` (row reads) against indexing `np.load(mmap_mode="r")`
   and against `np.load` of the whole array.

    python bench/bench_features.py                       # CPU
    python bench/bench_features.py --device cuda --images 512 --batch-size 128
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_images import make_photos  # noqa: E402

from helpers.backbones import BACKBONES as REGISTRY  # noqa: E402
from helpers.backbones import ImageEncoder  # noqa: E402
from helpers.features import (  # noqa: E402
    CaptionFeatureDataset,
    FeatureStore,
    _open_or_create_store,
    _SplitWriter,
    _store_index,
    extract_features,
)

BACKBONES = tuple(REGISTRY)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def encoder_images_per_second(encoder: ImageEncoder, images: torch.Tensor, batch_size: int,
                              device: torch.device, fp16: bool, channels_last: bool) -> float:
    """Images per second of the encoder alone, inputs already on the device, after one warm-up batch."""
    model = encoder.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    def run(batch: torch.Tensor) -> None:
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.float16, enabled=fp16):
            model(batch)

    with torch.inference_mode():
        run(images[:batch_size])
        _synchronize(device)
        start = time.perf_counter()
        for first in range(0, len(images), batch_size):
            run(images[first:first + batch_size])
        _synchronize(device)
    return len(images) / (time.perf_counter() - start)


def throughput_table(device: torch.device, count: int, batch_size: int, naive_count: int,
                     photos: list[Path], workers: int | None, backbones: list[str]) -> list[str]:
    lines = ["| backbone | way | batch | images/s | vs naive |", "|---|---|---|---|---|"]
    images = torch.rand(count, 3, 224, 224, device=device)
    for name in backbones:
        torch.manual_seed(0)
        encoder = ImageEncoder(pretrained=False, backbone=name, verbose=False).eval().to(device)
        naive = encoder_images_per_second(encoder, images[:naive_count], 1, device, False, False)
        rows = [("naive: one image at a time, fp32", 1, naive)]
        if device.type == "cuda":
            rows.append(("batched fp32", batch_size,
                         encoder_images_per_second(encoder, images, batch_size, device, False, False)))
            rows.append(("ours: batched, fp16 autocast, channels_last", batch_size,
                         encoder_images_per_second(encoder, images, batch_size, device, True, True)))
        else:
            rows.append(("ours: batched, inference_mode", batch_size,
                         encoder_images_per_second(encoder, images, batch_size, device, False, False)))
        rows.append(end_to_end(name, photos, batch_size, device, workers))
        for way, batch, speed in rows:
            lines.append(f"| {name} | {way} | {batch} | {speed:.1f} | {speed / naive:.1f}x |")
    return lines


def saved_for_backward_megabytes(name: str, trainable_layers: int | None, images: int = 2) -> float:
    """MB per image of the tensors autograd keeps for the backward pass (224 px, float32, CPU) when the
    last `trainable_layers` layers train (None: all), the encoder in eval mode as training keeps it."""
    torch.manual_seed(0)
    encoder = ImageEncoder(pretrained=False, backbone=name, verbose=False).eval()
    stages = encoder.trainable_layers()
    encoder.requires_grad_(False)
    for stage in stages[-(trainable_layers or len(stages)):]:
        stage.requires_grad_(True)
    saved = 0

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        encoder(torch.rand(images, 3, 224, 224))
    return saved / images / 1e6


def finetune_memory_table(backbones: list[str]) -> list[str]:
    lines = ["| backbone | last stage training, MB/image | whole trunk training, MB/image "
             "| recommended batch |", "|---|---|---|---|"]
    for name in backbones:
        last, whole = (saved_for_backward_megabytes(name, stages) for stages in (1, None))
        lines.append(f"| {name} | {last:.1f} | {whole:.1f} | {REGISTRY[name].batch_size} |")
    return lines


def photo_dataset(photos: list[Path], key: str, work: Path) -> SimpleNamespace:
    """The part of a PreparedDataset that extract_features reads: one 'train' split of the photos."""
    return SimpleNamespace(dataset="bench", key=key, root=work / "data" / key,
                           splits={"train": [path.name for path in photos]},
                           image_path=lambda name: photos[0].parent / name)


def end_to_end(backbone: str, photos: list[Path], batch_size: int, device: torch.device,
               workers: int | None) -> tuple[str, int, float]:
    """extract_features over the photos (one 'train' split), from JPEG files to the store on disk."""
    with tempfile.TemporaryDirectory() as work:
        prepared = photo_dataset(photos, f"bench-{backbone}", Path(work))
        start = time.perf_counter()
        extract_features(prepared, backbone=backbone, pretrained=False, batch_size=batch_size,
                         num_workers=workers, device=device, progress=False)
        seconds = time.perf_counter() - start
    return f"extract_features end to end ({len(photos)} JPEGs)", batch_size, len(photos) / seconds


def cuda_agrees_with_cpu(photos: list[Path], backbone: str = "regnet_x_400mf") -> str:
    """The same JPEGs extracted on CUDA (fp16 autocast, channels_last) and on the CPU (float32)."""
    stores = {}
    with tempfile.TemporaryDirectory() as work:
        for device in ("cpu", "cuda"):
            torch.manual_seed(0)  # the same random weights on both
            store = extract_features(photo_dataset(photos, f"check-{device}", Path(work)), backbone=backbone,
                                     pretrained=False, device=device, progress=False)
            stores[device] = np.array(store.features("train"), dtype=np.float32)
    difference = np.abs(stores["cuda"] - stores["cpu"]).max()
    scale = np.abs(stores["cpu"]).max()
    return (f"{backbone}, {len(photos)} JPEGs: max |cuda - cpu| = {difference:.4f} "
            f"({difference / scale:.2%} of the largest feature, {scale:.2f})")


def make_fake_store(folder: Path, count: int) -> tuple[FeatureStore, SimpleNamespace]:
    """A complete ResNet50 (2048 x 7 x 7) store of `count` images with one caption each."""
    names = [f"image_{number:06d}.jpg" for number in range(count)]
    captions = np.random.default_rng(0).integers(4, 1000, (count, 22)).astype(np.int32)
    prepared = SimpleNamespace(
        dataset="bench", key=f"bench-{count}", root=folder / "data" / f"bench-{count}",
        splits={"train": names}, captions=lambda split: (captions, np.arange(count)),
    )
    index = _store_index(prepared, "resnet50", 224, False, 2048, 7)
    store = _open_or_create_store(folder / "features" / f"bench-{count}", index)
    writer = _SplitWriter(store, "train")
    rng = np.random.default_rng(1)
    for first in range(0, count, 250):
        block = rng.standard_normal((min(250, count - first), 2048, 7, 7), dtype=np.float32)
        writer.write(first, block.astype(np.float16), [])
    writer.close()
    return store, prepared


def _status_megabytes(field: str) -> float:
    """A memory figure of this process from /proc/self/status (Linux), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def iterate_store(store_dir: str, way: str) -> dict:
    """Read every row once (run in a fresh process); returns RSS before and at the peak, in MB.

    The peak (VmHWM) is reset just before reading, so import-time peaks do not hide the reading.
    """
    store = FeatureStore.open(store_dir)
    count = store.shape("train")[0]
    total = 0.0
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
    before = _status_megabytes("VmRSS")
    if way == "CaptionFeatureDataset (row reads)":
        prepared = SimpleNamespace(key=store.dataset_key, splits={"train": store.filenames("train")},
                                   captions=lambda split: (np.zeros((count, 22), np.int32), np.arange(count)))
        loader = torch.utils.data.DataLoader(CaptionFeatureDataset(store, prepared, "train"), batch_size=32)
        for features, _ in loader:
            total += float(features[:, 0, 0, 0].sum())
    elif way == "np.load(mmap_mode='r') rows":
        mapped = store.features("train")
        for row in range(count):
            total += float(np.asarray(mapped[row], dtype=np.float32)[0, 0, 0])
    else:
        whole = np.load(store.array_path("train"))
        total += float(whole[:, 0, 0, 0].astype(np.float32).sum())
    peak = _status_megabytes("VmHWM")
    return {"before": before, "peak": peak, "checksum": total}


def memory_table(sizes: list[int]) -> list[str]:
    ways = ("CaptionFeatureDataset (row reads)", "np.load(mmap_mode='r') rows", "np.load (whole array)")
    lines = ["| way | " + " | ".join(f"{size} images: store MB, peak RSS growth MB" for size in sizes) + " |",
             "|---|" + "---|" * len(sizes)]
    results = {way: [] for way in ways}
    with tempfile.TemporaryDirectory() as folder:
        for size in sizes:
            store, _ = make_fake_store(Path(folder), size)
            for way in ways:
                output = subprocess.run([sys.executable, __file__, "--iterate", str(store.path), way],
                                        check=True, capture_output=True, text=True).stdout
                measured = json.loads(output.strip().splitlines()[-1])
                results[way].append((store.size_bytes / 1e6, measured["peak"] - measured["before"]))
    for way in ways:
        cells = " | ".join(f"{megabytes:.0f}, {growth:.0f}" for megabytes, growth in results[way])
        lines.append(f"| {way} | {cells} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=32, help="random images for the encoder timing")
    parser.add_argument("--naive-images", type=int, default=8, help="images for the one-at-a-time timing")
    parser.add_argument("--photos", type=int, default=32, help="JPEGs for the end-to-end extraction")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default min(4, cores))")
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    parser.add_argument("--store-sizes", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--iterate", nargs=2, metavar=("STORE", "WAY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.iterate:
        print(json.dumps(iterate_store(*args.iterate)))
        return

    warnings.filterwarnings("ignore", message="The feature store needs")
    device = torch.device(args.device)
    if device.type == "cuda":
        label = torch.cuda.get_device_name(device)
    else:
        label = f"CPU, {torch.get_num_threads()} threads"
    print(f"## Feature extraction, 224 px, random weights ({label})\n")
    with tempfile.TemporaryDirectory() as folder:
        photos = make_photos(Path(folder), args.photos)
        print("\n".join(throughput_table(device, args.images, args.batch_size, args.naive_images, photos,
                                         args.workers, args.backbones)))
        if device.type == "cuda":
            print("\nStore extracted on CUDA against the CPU store: " + cuda_agrees_with_cpu(photos[:32]))
    print("\n## Fine-tuning: tensors saved for the backward pass, 224 px, float32\n")
    print("\n".join(finetune_memory_table(args.backbones)))
    if not args.skip_memory:
        print("\n## Peak RSS while reading every row of a ResNet50 store once (fresh process each)\n")
        print("\n".join(memory_table(args.store_sizes)))


if __name__ == "__main__":
    main()
