"""Image preprocessing: the multi-worker `image_loader` against a single-process PIL loop.

Both decode the same JPEGs (about 500x375, like Flickr photos, generated in a temporary folder),
resize and centre-crop them with the backbone's transform and stack batches of tensors. The loader
runs twice per worker count: handing over float32 crops, and uint8 crops (what extraction and
fine-tuning use; the encoder scales them on the device), a quarter of the bytes. The loader decodes
with torchvision (its default for these transforms); `bench_decode.py` compares the decoders.

    python bench/bench_images.py                 # 300 images, workers 0, 2 and 4
    python bench/bench_images.py --images 1000 --workers 0 4 8 --device cuda
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helpers.backbones import image_transform  # noqa: E402
from helpers.images import ImageDataset, default_num_workers, image_loader  # noqa: E402


def make_photos(folder: Path, count: int, seed: int = 0,
                sizes: tuple[tuple[int, int], ...] = ((500, 375),)) -> list[Path]:
    """JPEGs with photo-like content and file sizes: smooth colour fields plus sensor-like noise.

    The sizes (width, height) take turns; every fourth photo is portrait (the size turned)."""
    rng = np.random.default_rng(seed)
    paths = []
    for number in range(count):
        width, height = sizes[number % len(sizes)]
        if number % 4 == 0:  # some portrait photos too
            width, height = height, width
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
        noise = rng.normal(0, 12, (height, width, 3))
        pixels = np.clip(field + noise, 0, 255).astype(np.uint8)
        path = folder / f"photo_{number:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def single_process_loop(paths: list[Path], transform, batch_size: int) -> int:
    """The naive way: open, convert and transform each file in turn in this process."""
    done = 0
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        batch = torch.stack([transform(Image.open(path).convert("RGB")) for path in chunk])
        done += batch.shape[0]
    return done


def loader_pass(paths: list[Path], transform, batch_size: int, workers: int, device: str) -> int:
    dataset = ImageDataset(paths, transform)
    loader = image_loader(dataset, batch_size=batch_size, num_workers=workers, device=device)
    done = 0
    for batch in loader:
        images = batch.images.to(device, non_blocking=True)
        done += images.shape[0]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    if done != len(paths):
        raise RuntimeError(f"the loader delivered {done} of {len(paths)} images")
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs per pipeline")
    parser.add_argument("--device", default="cpu",
                        help="cpu or cuda (pins memory and copies batches to the GPU)")
    args = parser.parse_args()

    warnings.filterwarnings("ignore", message="This DataLoader will create")  # more workers than cores
    transform = image_transform(args.backbone)
    with tempfile.TemporaryDirectory() as folder:
        paths = make_photos(Path(folder), args.images)
        megabytes = sum(path.stat().st_size for path in paths) / 1e6
        print(f"{args.images} JPEGs, {megabytes:.1f} MB, {os.cpu_count()} CPU cores "
              f"(default_num_workers() = {default_num_workers()}), device {args.device}\n")
        single_process_loop(paths[:16], transform, args.batch_size)  # warm the file cache and imports

        def best_time(run) -> float:
            timings = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                run()
                timings.append(time.perf_counter() - start)
            return min(timings)

        threads = torch.get_num_threads()
        baseline = best_time(partial(single_process_loop, paths, transform, args.batch_size))
        rows = [(f"single-process PIL loop, {threads} torch threads (baseline)", baseline)]
        torch.set_num_threads(1)
        rows.append(("single-process PIL loop, 1 torch thread",
                     best_time(partial(single_process_loop, paths, transform, args.batch_size))))
        torch.set_num_threads(threads)
        as_bytes = image_transform(args.backbone, dtype=torch.uint8)  # what the loaders use
        for workers in args.workers:
            for label, crops in (("float32", transform), ("uint8 (ours)", as_bytes)):
                seconds = best_time(partial(loader_pass, paths, crops, args.batch_size, workers, args.device))
                rows.append((f"image_loader, num_workers={workers}, {label} crops", seconds))

    print("| pipeline | seconds | images/s | speed-up vs baseline |")
    print("|---|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} | {args.images / seconds:.0f} | {baseline / seconds:.2f}x |")


if __name__ == "__main__":
    main()
