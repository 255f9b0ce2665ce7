"""Training on the feature store against recomputing the CNN per batch; decoder throughput.

1. One training epoch of the LSTM decoder (300/512, the configs' sizes) on the cached ResNet50
   features, against the same epoch where every batch runs ResNet50 (224 px, weights=None) on the
   images again, as a loop without a feature store does. Both take the training loop's step (forward
   under autocast, then helpers.optimization.apply_gradients) and the
   same batches; the one-off extraction that fills the store is timed separately.
2. Training throughput (captions/s, forward + backward + AdamW step) of each decoder on the store.

    python bench/bench_train.py [--images 64] [--device cuda] [--steps 10]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.backbones import image_transform  # noqa: E402
from helpers.config import load_config  # noqa: E402
from helpers.demo import make_demo_dataset  # noqa: E402
from helpers.features import CaptionFeatureDataset, extract_features  # noqa: E402
from helpers.models import build_model  # noqa: E402
from helpers.optimization import apply_gradients, configure_trainable, make_optimizer  # noqa: E402
from helpers.prepare import prepare_dataset  # noqa: E402
from helpers.train import ImageCaptionDataset, epoch_batches  # noqa: E402

DECODERS = ("Vanilla_RNN", "LSTM", "Attention_LSTM", "Transformer")


def _config(name: str, device: torch.device, backbone: str = "resnet50"):
    return load_config(
        name,
        {
            "embeddings.use_glove": False,
            "model.pretrained_backbone": False,
            "model.backbone": backbone,
            "training.device": device.type,
        },
    )


def _model(name: str, vocab, device: torch.device):
    config = _config(name, device)
    torch.manual_seed(0)
    model = build_model(config, vocab, word_vectors=None).to(device)
    configure_trainable(model, config)
    model.train()
    model.image_encoder.eval()
    return model, make_optimizer(model, config), config


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_epoch(
    model, optimizer, dataset, batch_size: int, device: torch.device, max_steps: int | None = None
):
    """Seconds and captions of one epoch (or its first `max_steps` batches) of training steps."""
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    batches = epoch_batches(len(dataset), batch_size, seed=0, epoch=0)[:max_steps]
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=0)
    captions_done = 0
    _sync(device)
    started = time.perf_counter()
    for sample in loader:
        inputs, captions = sample[0].to(device), sample[1].to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            loss = model(inputs, captions)
        apply_gradients(loss, optimizer, scaler, 5.0)
        captions_done += len(captions)
    _sync(device)
    return time.perf_counter() - started, captions_done


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=64, help="demo images (80%% are the training split)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="batches per decoder in the throughput table")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = make_demo_dataset(Path(tmp) / "demo", num_images=args.images, seed=0)
        prepared = prepare_dataset(
            "bench",
            data_dir=data_dir,
            work_dir=Path(tmp) / "work",
            min_word_count=1,
            val_size=0.1,
            test_size=0.1,
            verbose=False,
        )
        torch.manual_seed(0)
        started = time.perf_counter()
        store = extract_features(
            prepared,
            backbone="resnet50",
            image_size=224,
            pretrained=False,
            num_workers=0,
            device=device,
            progress=False,
        )
        extraction_s = time.perf_counter() - started
        train_images = len(prepared.splits["train"])

        features = CaptionFeatureDataset(store, prepared, "train")
        images = ImageCaptionDataset(prepared, "train", image_transform("resnet50", 224))
        model, optimizer, _ = _model("LSTM", prepared.vocab, device)
        store_s, captions = time_epoch(model, optimizer, features, args.batch_size, device)
        model, optimizer, _ = _model("LSTM", prepared.vocab, device)
        naive_s, _ = time_epoch(model, optimizer, images, args.batch_size, device)

        name = (
            torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else f"CPU ({torch.get_num_threads()} threads)"
        )
        print(
            f"## One LSTM training epoch, {captions} captions of {train_images} images, "
            f"batch {args.batch_size}, {name}\n"
        )
        print("| way | epoch (s) | captions/s | ratio |")
        print("|---|---|---|---|")
        print(
            f"| feature store (ours) | {store_s:.2f} | {captions / store_s:,.0f} | {naive_s / store_s:.0f}x |"
        )
        print(f"| ResNet50 recomputed per batch | {naive_s:.2f} | {captions / naive_s:,.0f} | 1x |")
        print(
            f"\nOne-off extraction of all {args.images} images into the store: {extraction_s:.2f} s "
            f"(extraction + one epoch on the store: {store_s + extraction_s:.2f} s, against "
            f"{naive_s:.2f} s for one epoch recomputing the CNN).\n"
        )

        print(
            f"## Decoder training throughput on the ResNet50 store (2048 x 7 x 7), batch {args.batch_size}, "
            f"{args.steps} steps, {name}\n"
        )
        print("| decoder | wordvec/hidden | trainable parameters | captions/s |")
        print("|---|---|---|---|")
        for decoder in DECODERS:
            model, optimizer, config = _model(decoder, prepared.vocab, device)
            time_epoch(model, optimizer, features, args.batch_size, device, max_steps=2)  # warm-up
            seconds, done = time_epoch(
                model, optimizer, features, args.batch_size, device, max_steps=args.steps
            )
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            print(
                f"| {decoder} | {config.model.wordvec_dim}/{config.model.hidden_dim} "
                f"| {trainable / 1e6:.2f} M | {done / seconds:,.0f} |"
            )


if __name__ == "__main__":
    main()
