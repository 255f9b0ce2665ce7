"""JPEG decoding for feature extraction: Pillow, torchvision on the CPU and nvJPEG on CUDA, in one run.

First, decoding alone in this process (one thread, the two CPU decoders alternating file by file,
so a change in machine load hits both alike): JPEG file to the uint8 224 px crop, per photo size,
on the first `--decode-photos` photos.

Then, for each backbone (random weights, 224 px), loader worker count and decoder, from JPEG files
(half 500x375 like Flickr, half 640x480 like COCO, one in four portrait) to the feature store on disk:

- loader alone: decode, resize and crop every photo to uint8 crops on the device, no network;
- network alone: the encoder as `extract_features` runs it, on crops already on the device;
- end to end: `extract_features` itself, and how its store compares with the Pillow store.

The shares are each stage's time alone over the end-to-end time; the loader workers decode while
the network runs, so they overlap and need not add up to 100%. Every timing is the best of
`--repeats` runs.

    python bench/bench_decode.py                  # CPU: pil and torchvision, 200 photos
    python bench/bench_decode.py --device cuda --images 8091 --batch-size 128 --repeats 1
                                                  # GPU: also nvjpeg, a Flickr8k-sized set
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_features import BACKBONES, photo_dataset  # noqa: E402
from bench_images import make_photos  # noqa: E402
from common import pick_device  # noqa: E402

from helpers.backbones import ImageEncoder, image_transform  # noqa: E402
from helpers.features import _encode, extract_features  # noqa: E402
from helpers.images import ImageDataset, image_loader, load_image, load_image_tensor  # noqa: E402

PHOTO_SIZES = ((500, 375), (640, 480))  # Flickr and COCO
COMPARED_ROWS = 256  # store rows compared with the Pillow store


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_table(paths: list[Path], repeats: int) -> list[str]:
    """Crops/s of Pillow and torchvision decoding per photo size, in this process on one thread."""
    crop = image_transform("resnet50", 224, torch.uint8)
    readers = {"pil": load_image, "torchvision": load_image_tensor}
    sizes = {}
    for path in paths:
        with Image.open(path) as opened:
            sizes[path] = "x".join(str(side) for side in sorted(opened.size, reverse=True))
    seconds = {(size, name): 0.0 for size in sizes.values() for name in readers}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(repeats):
            for number, path in enumerate(paths):
                for name in (list(readers) if number % 2 else list(reversed(readers))):
                    start = time.perf_counter()
                    crop(readers[name](path))
                    seconds[(sizes[path], name)] += time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    lines = ["| photo size (landscape and portrait) | photos | pil crops/s | torchvision crops/s | ratio |",
             "|---|---|---|---|---|"]
    for size in dict.fromkeys(sizes.values()):
        count = list(sizes.values()).count(size)
        pil, fast = (count * repeats / seconds[(size, name)] for name in readers)
        lines.append(f"| {size} | {count} | {pil:.0f} | {fast:.0f} | {fast / pil:.2f}x |")
    return lines


def loader_seconds(paths: list[Path], decoder: str, workers: int, device: torch.device,
                   batch_size: int) -> float:
    """Seconds to decode, resize and crop every photo into uint8 crops on `device`."""
    dataset = ImageDataset(paths, image_transform("resnet50", 224, torch.uint8), decoder=decoder)
    start = time.perf_counter()
    done = 0
    for batch in image_loader(dataset, batch_size, workers, device):
        done += len(batch.images.to(device, non_blocking=True))
    _synchronize(device)
    if done != len(paths):
        raise RuntimeError(f"the {decoder} loader delivered {done} of {len(paths)} photos")
    return time.perf_counter() - start


def network_seconds(backbone: str, count: int, batch_size: int, device: torch.device) -> float:
    """Seconds of the encoder alone (as `extract_features` runs it) on `count` crops on the device."""
    torch.manual_seed(0)
    encoder = ImageEncoder(pretrained=False, backbone=backbone, verbose=False).eval().to(device)
    if device.type == "cuda":
        encoder = encoder.to(memory_format=torch.channels_last)
    crops = torch.randint(0, 256, (batch_size, 3, 224, 224), dtype=torch.uint8, device=device)
    with torch.inference_mode():
        _encode(encoder, crops, device)  # warm-up: cuDNN autotuning, lazy allocations
        _synchronize(device)
        start = time.perf_counter()
        for first in range(0, count, batch_size):
            _encode(encoder, crops[: min(batch_size, count - first)], device)
        _synchronize(device)
    return time.perf_counter() - start


def end_to_end(backbone: str, paths: list[Path], decoder: str, workers: int, device: torch.device,
               batch_size: int) -> tuple[float, np.ndarray]:
    """Seconds of `extract_features` from the JPEG files to the store, and the store's first rows."""
    with tempfile.TemporaryDirectory() as work:
        prepared = photo_dataset(paths, f"bench-{backbone}-{decoder}", Path(work))
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # its line about the store's size
            store = extract_features(prepared, backbone=backbone, pretrained=False, batch_size=batch_size,
                                     num_workers=workers, device=device, progress=False, decoder=decoder)
        seconds = time.perf_counter() - start
        rows = np.array(store.features("train")[:COMPARED_ROWS], dtype=np.float32)
    return seconds, rows


def best_end_to_end(backbone: str, paths: list[Path], decoder: str, workers: int, device: torch.device,
                    batch_size: int, repeats: int) -> tuple[float, np.ndarray]:
    """The fastest of `repeats` end-to-end runs (they write the same store)."""
    runs = [end_to_end(backbone, paths, decoder, workers, device, batch_size) for _ in range(repeats)]
    return min(runs, key=lambda run: run[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=200, help="synthetic photos")
    parser.add_argument("--decode-photos", type=int, default=300, help="photos in the decoding-alone table")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads of the main process")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs of each timing")
    args = parser.parse_args()

    warnings.filterwarnings("ignore", message="This DataLoader will create")  # more workers than cores
    warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision")
    device, label = pick_device(args.device, args.threads)
    decoders = ["pil", "torchvision"] + (["nvjpeg"] if device.type == "cuda" else [])
    with tempfile.TemporaryDirectory() as folder:
        paths = make_photos(Path(folder), args.images, sizes=PHOTO_SIZES)
        megabytes = sum(path.stat().st_size for path in paths) / 1e6
        print(f"## JPEG decoding: {args.images} photos ({megabytes:.1f} MB), {os.cpu_count()} CPU cores\n")
        print("\n".join(decode_table(paths[: args.decode_photos], args.repeats)))
        print(f"\n## End to end, batch {args.batch_size}, {label}\n")
        loading = {(workers, decoder): min(loader_seconds(paths, decoder, workers, device, args.batch_size)
                                           for _ in range(args.repeats))
                   for workers in args.workers for decoder in decoders}
        print("| backbone | workers | decoder | loader alone img/s | network alone img/s | end to end img/s "
              "| decode share | network share | end to end vs pil | max abs(store - pil store) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for backbone in args.backbones:
            network = min(network_seconds(backbone, args.images, args.batch_size, device)
                          for _ in range(args.repeats))
            for workers in args.workers:
                results = {
                    decoder: best_end_to_end(backbone, paths, decoder, workers, device, args.batch_size,
                                             args.repeats)
                    for decoder in decoders
                }
                pil_seconds, pil_rows = results["pil"]
                for decoder, (seconds, rows) in results.items():
                    decode = loading[(workers, decoder)]
                    difference = np.abs(rows - pil_rows).max()
                    print(f"| {backbone} | {workers} | {decoder} | {args.images / decode:.0f} "
                          f"| {args.images / network:.0f} | {args.images / seconds:.1f} "
                          f"| {decode / seconds:.0%} | {network / seconds:.0%} "
                          f"| {pil_seconds / seconds:.2f}x | {difference:.4f} |")


if __name__ == "__main__":
    main()
