"""One device against N (DistributedDataParallel): training steps/s and feature extraction images/s.

Both go through the suite's own entry points with `training.devices` / `devices=`: `train` for one
epoch of the demo LSTM on the feature store (no scoring; the rate is captions/s over the epoch's
steps, as history.json records it, and steps/s of the global batch), and `extract_features` of the
demo images into a fresh store (wall time of the whole call, process start-up included).

    python bench/bench_distributed.py [--images 400] [--device cpu|cuda] [--devices 2] [--backbone resnet50]

On a 2-GPU machine (Kaggle's "GPU T4 x2"): python bench/bench_distributed.py --device cuda --devices 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.config import load_config  # noqa: E402
from helpers.demo import make_demo_dataset  # noqa: E402
from helpers.features import extract_features  # noqa: E402
from helpers.train import train  # noqa: E402
from helpers.workdir import prepare_for, prepared_and_features  # noqa: E402


def demo_config(root: Path, demo: Path, devices: int, args) -> object:
    return load_config(["LSTM", "demo"], {
        "data.work_dir": str(root / "work"), "data.dataset": "flickr8k", "data.data_dir": str(demo),
        "training.run_dir": str(root / "runs"), "training.run_name": f"devices-{devices}",
        "training.epochs": 1, "training.eval_splits": [], "training.val_max_images": 10,
        "training.device": args.device, "training.devices": devices, "model.backbone": args.backbone,
        "data.image_size": args.image_size, "batch_size": args.batch_size, "training.num_workers": 0,
    })


def training_rate(root: Path, demo: Path, devices: int, args) -> tuple[float, float]:
    """(captions/s, steps/s) of one epoch on `devices` devices."""
    result = train(demo_config(root, demo, devices, args), progress=False, resume=False)
    captions_per_s = result.history[0]["captions_per_s"]
    return captions_per_s, captions_per_s / args.batch_size


def extraction_rate(root: Path, demo: Path, devices: int, args) -> float:
    """Images/s of extracting the whole store (all splits) into a fresh work dir."""
    config = demo_config(root / f"extract-{devices}", demo, devices, args)
    prepared = prepare_for(config, progress=False)
    images = sum(len(names) for names in prepared.splits.values())
    started = time.perf_counter()
    extract_features(prepared, backbone=args.backbone, image_size=args.image_size, pretrained=False,
                     num_workers=0, device=args.device, progress=False, devices=devices)
    return images / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--backbone", default="regnet_x_400mf")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        demo = root / "demo"
        make_demo_dataset(demo, num_images=args.images, seed=0)
        prepared_and_features(demo_config(root, demo, 1, args), progress=False)  # the store training reads
        rows = {}
        for devices in (1, args.devices):
            captions, steps = training_rate(root, demo, devices, args)
            rows[devices] = (captions, steps, extraction_rate(root, demo, devices, args))
    cpu = f"CPU ({torch.get_num_threads()} threads)"
    where = torch.cuda.get_device_name(0) if args.device == "cuda" else cpu
    print(f"\n{where}, {args.backbone} at {args.image_size} px, {args.images} images, "
          f"batch {args.batch_size}")
    print("| devices | training captions/s | steps/s | extraction images/s |")
    print("|---|---|---|---|")
    for devices, (captions, steps, images) in rows.items():
        print(f"| {devices} | {captions:.0f} | {steps:.2f} | {images:.0f} |")
    one, many = rows[1], rows[args.devices]
    print(f"speed-up on {args.devices} devices: training x{many[0] / one[0]:.2f}, "
          f"extraction x{many[2] / one[2]:.2f}")


if __name__ == "__main__":
    main()
