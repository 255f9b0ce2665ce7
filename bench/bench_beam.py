"""Beam search over a whole batch at once against decoding one image at a time.

Both sides run the same ``helpers.models.beam_search`` (beam 5, length normalisation) on the same
random-weight models and precomputed ResNet-50-sized features (2048 x 7 x 7); the batched side does
one call for the batch (batch * beam rows per step), the baseline calls it once per image, as a
per-image decoding loop would. The table also says how many captions the two sides agree on.

    python bench/bench_beam.py [--device cuda] [--batch 64] [--beam 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import pick_device

from helpers.models import CaptioningRNN, CaptioningTransformer, beam_search  # noqa: E402

VOCAB_SIZE = 3000  # about Flickr8k's vocabulary at min_count=5


def build(kind, device):
    word_to_idx = {word: i for i, word in enumerate(["<NULL>", "<START>", "<END>", "<UNK>"])}
    word_to_idx.update({f"word{i}": i for i in range(4, VOCAB_SIZE)})
    torch.manual_seed(0)
    common = dict(wordvec_dim=300, hidden_dim=512, image_encoder_pretrained=False, backbone="resnet50")
    if kind == "transformer":
        model = CaptioningTransformer(word_to_idx, num_heads=8, num_layers=2, **common)
    else:
        model = CaptioningRNN(word_to_idx, cell_type=kind, **common)
    return model.to(device).eval()


def timed(run, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


@torch.no_grad()
def bench(kind, args, device):
    model = build(kind, device)
    features = torch.randn(args.batch, 2048, 7, 7, generator=torch.Generator().manual_seed(1)).to(device)
    beam_search(model, features[:2], args.max_length, args.beam)  # warm-up

    def batched():
        return beam_search(model, features, args.max_length, args.beam)[0]

    def one_at_a_time():
        return torch.cat([beam_search(model, features[i : i + 1], args.max_length, args.beam)[0]
                          for i in range(args.batch)])

    batched_s, batched_tokens = timed(batched, device)
    single_s, single_tokens = timed(one_at_a_time, device)
    agree = int((batched_tokens == single_tokens).all(dim=1).sum())
    return single_s, batched_s, agree


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--max-length", type=int, default=15)
    parser.add_argument("--models", default="lstm,attn,transformer")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    device, name = pick_device(args.device, args.threads)
    print(
        f"Beam search, beam {args.beam}, batch {args.batch}, max_length {args.max_length}, "
        f"vocab {VOCAB_SIZE}, hidden 512, features 2048x7x7 ({name}, torch {torch.__version__})\n"
    )
    print("| decoder | one image at a time s | batched s | speed-up | same captions |")
    print("|---|---:|---:|---:|---:|")
    for kind in args.models.split(","):
        single_s, batched_s, agree = bench(kind, args, device)
        print(
            f"| {kind} | {single_s:.2f} | {batched_s:.2f} | {single_s / batched_s:.1f}x | "
            f"{agree}/{args.batch} |"
        )


if __name__ == "__main__":
    main()
