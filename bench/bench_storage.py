"""What the suite writes, measured: checkpoint sizes per decoder, feature store sizes per dataset,
backbone and layout, what a training batch of each layout carries to the device, and how close the
uint8 store is to the float16 one.

    python bench/bench_storage.py                 # all four tables (the fidelity part trains the demo)
    python bench/bench_storage.py --skip-training # sizes and feature error only

Checkpoints: the default decoder configs on ResNet50 features, with the vocabulary that the real
Flickr8k captions give (../shared/realdata when present, else 2,500 words); "before" is the old rule
(a frozen random-weight CNN was saved in every checkpoint), "after" the features-mode rule (never).
Fidelity: the demo dataset's features in both layouts (relative error ||x8 - x16|| / ||x16||), then
the demo attention LSTM trained with each (configs/Attention_LSTM.yaml + configs/demo.yaml).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from helpers.backbones import BACKBONES as REGISTRY  # noqa: E402
from helpers.checkpoints import model_state  # noqa: E402
from helpers.config import load_config  # noqa: E402
from helpers.features import FEATURE_LAYOUTS, feature_store_bytes  # noqa: E402
from helpers.models import build_model  # noqa: E402
from helpers.optimization import make_optimizer  # noqa: E402
from helpers.runs import TrainState  # noqa: E402
from helpers.text import Vocabulary  # noqa: E402

DECODERS = ("Vanilla_RNN", "LSTM", "Attention_LSTM", "Transformer")
DATASETS = {"Flickr8k": 8091, "Flickr30k": 31783, "COCO": 123287}
BACKBONES = tuple(REGISTRY)
REALDATA = ROOT.parent.parent / "shared" / "realdata" / "flickr8k_kaggle" / "captions.txt"


def saved_bytes(payload) -> int:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.tell()


def flickr8k_vocabulary() -> Vocabulary:
    if REALDATA.is_file():
        import csv

        from helpers.text import tokenize

        with open(REALDATA, encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
        return Vocabulary.build((tokenize(row["caption"]) for row in rows), min_count=5)
    return Vocabulary.build([[f"w{i}"] * 5 for i in range(2500)], min_count=5)


def checkpoint_table() -> str:
    vocab = flickr8k_vocabulary()
    lines = [
        f"Vocabulary: {len(vocab):,} words (Flickr8k captions, min count 5); ResNet50 features; "
        "default decoder configs.",
        "",
        "| decoder | best.pt before (MB) | best.pt after (MB) | last.pt after (MB) | run folder after (MB) |",
        "|---|---|---|---|---|",
    ]
    for name in DECODERS:
        config = load_config(name, ["embeddings.use_glove=false", "model.pretrained_backbone=false"])
        model = build_model(config, vocab, word_vectors=None)
        model.image_encoder.requires_grad_(False)
        before = saved_bytes({"model": model.state_dict()})
        after = saved_bytes({"model": model_state(model, config)})
        optimizer = make_optimizer(model, config)
        for parameter in model.parameters():  # AdamW's moments exist after the first step
            if parameter.requires_grad:
                parameter.grad = torch.zeros_like(parameter)
        optimizer.step()
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        state = TrainState(config, Path("."), model, optimizer, scheduler, scaler, torch.device("cpu"))
        last = saved_bytes(state.checkpoint(vocab))
        sizes = " | ".join(f"{size / 1e6:.1f}" for size in (before, after, last, after + last))
        lines.append(f"| {name} | {sizes} |")
    return "\n".join(lines)


def store_size_table() -> str:
    lines = [
        "| dataset | images | backbone | float16 (GB) | uint8 (GB) |",
        "|---|---|---|---|---|",
    ]
    for dataset, images in DATASETS.items():
        for backbone in BACKBONES:
            sizes = [
                feature_store_bytes(images, backbone, 224, layout) / 1e9
                for layout in ("float16", "uint8")
            ]
            lines.append(f"| {dataset} | {images:,} | {backbone} | {sizes[0]:.2f} | {sizes[1]:.2f} |")
    return "\n".join(lines)


def batch_bytes_table(batch_size: int = 128) -> str:
    """Bytes of stored features one batch moves through the workers, pinning and the host-to-device
    copy: float32 (float16 stores), uint8 codes and float16 ranges (uint8 stores, dequantized on the
    device)."""
    lines = [
        f"| backbone | float32 features (MB per batch of {batch_size}) | uint8 codes + ranges (MB) | ratio |",
        "|---|---|---|---|",
    ]
    for backbone in BACKBONES:
        info = REGISTRY[backbone]
        float32 = batch_size * 2 * info.store_bytes(224, "float16")
        codes = batch_size * info.store_bytes(224, "uint8")
        lines.append(f"| {backbone} | {float32 / 1e6:.1f} | {codes / 1e6:.1f} | {float32 / codes:.2f}x |")
    return "\n".join(lines)


def fidelity_table(train: bool, epochs: int) -> str:
    from helpers.train import train as train_loop
    from helpers.workdir import prepared_and_features

    work = Path(tempfile.mkdtemp(prefix="bench_storage-"))
    rows, stores = [], {}
    for layout in FEATURE_LAYOUTS:
        overrides = {
            "data.work_dir": str(work / "work"),
            "training.run_dir": str(work / "runs"),
            "data.feature_layout": layout,
            "training.epochs": epochs,
            "training.eval_splits": [],
            "training.run_name": f"attn-{layout}",
        }
        config = load_config(["Attention_LSTM", "demo"], overrides)
        prepared, store = prepared_and_features(config, progress=False)
        stores[layout] = store
        result = train_loop(config, prepared=prepared, store=store, progress=False) if train else None
        rows.append((layout, store, result))
    full = stores["float16"]
    reference = {split: full.features(split).astype(np.float32) for split in full.splits}
    lines = [
        f"Demo data: {sum(len(v) for v in reference.values())} images, {full.backbone} (random weights) "
        f"at {full.image_size} px, {full.channels} x {full.feature_size} x {full.feature_size}; "
        f"attention LSTM, {epochs} epochs.",
        "",
        "| layout | store (MB) | relative error vs float16 | max abs error | best val CIDEr | "
        "best val BLEU-4 |",
        "|---|---|---|---|---|---|",
    ]
    for layout, store, result in rows:
        errors = [np.asarray(store.features(split)) - reference[split] for split in store.splits]
        norm = np.sqrt(sum(float((r**2).sum()) for r in reference.values()))
        relative = np.sqrt(sum(float((e**2).sum()) for e in errors)) / norm
        peak = max(float(np.abs(e).max()) for e in errors)
        cider = f"{100 * result.best_metrics['val_CIDEr']:.2f}" if result else "-"
        bleu = f"{100 * result.best_metrics['val_Bleu_4']:.2f}" if result else "-"
        lines.append(
            f"| {layout} | {store.size_bytes / 1e6:.2f} | {relative:.2e} | {peak:.3g} | {cider} | {bleu} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-training", action="store_true", help="no demo training runs")
    parser.add_argument("--epochs", type=int, default=8, help="demo training epochs per layout")
    args = parser.parse_args()
    torch.manual_seed(0)
    print("## Checkpoint sizes\n")
    print(checkpoint_table())
    print("\n## Feature store sizes (224 px)\n")
    print(store_size_table())
    print("\n## Stored features per training batch, loader to device (224 px)\n")
    print(batch_bytes_table())
    print("\n## uint8 vs float16 features\n")
    print(fidelity_table(not args.skip_training, args.epochs))


if __name__ == "__main__":
    main()
