"""The SCST reward: CIDEr-D on token ids (helpers.rewards.CiderD) for one training step's samples.

A Flickr8k-sized corpus of synthetic captions (6,000 images x 5 references, 2,533 words drawn with
Zipf-like frequencies, 8 to 16 words each) gives the document frequencies once; then batches of
`--images` images x `--samples` sampled captions are scored against their images' references, first
with the references' vectors still to compute (cold) and then cached (warm, every later epoch).
pycocoevalcap's Cider on the same captions (strings, its own document frequencies from the batch)
is timed beside it for scale.

    python bench/bench_reward.py [--images 50] [--samples 5] [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.rewards import CiderD  # noqa: E402

WORDS, IMAGES, REFERENCES = 2533, 6000, 5


def corpus(rng: np.random.Generator, count: int) -> list[tuple[int, ...]]:
    ranks = np.arange(1, WORDS + 1)
    weights = 1.0 / ranks
    weights /= weights.sum()
    lengths = rng.integers(8, 17, size=count)
    return [tuple((rng.choice(WORDS, size=n, p=weights) + 4).tolist()) for n in lengths]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    flat = corpus(rng, IMAGES * REFERENCES)
    references = [flat[i * REFERENCES : (i + 1) * REFERENCES] for i in range(IMAGES)]
    start = time.perf_counter()
    reward = CiderD(references)
    build = time.perf_counter() - start
    cold, warm, coco = [], [], []
    for _ in range(args.repeats):
        images = rng.choice(IMAGES, size=args.images, replace=False)
        candidates = corpus(rng, args.images * args.samples)
        owners = np.repeat(images, args.samples)
        start = time.perf_counter()
        reward.score_images(candidates, owners)
        cold.append(time.perf_counter() - start)
        start = time.perf_counter()
        reward.score_images(candidates, owners)
        warm.append(time.perf_counter() - start)
        coco.append(_pycocoevalcap_seconds(candidates, [references[i] for i in owners]))
    rows = args.images * args.samples
    print(f"document frequencies of {IMAGES:,} images x {REFERENCES} references: {build:.2f} s")
    header = f"scoring {args.images} images x {args.samples} samples ({rows} captions)"
    print(f"| {header} | median ms | captions/s | vs pycocoevalcap |")
    print("|---|---|---|---|")
    peer = statistics.median(coco)
    for name, times in (("CiderD, references not cached yet", cold), ("CiderD, references cached", warm),
                        ("pycocoevalcap Cider (strings, batch statistics)", coco)):
        median = statistics.median(times)
        print(f"| {name} | {median * 1000:.1f} | {rows / median:,.0f} | {peer / median:.1f}x |")


def _pycocoevalcap_seconds(candidates, references) -> float:
    from pycocoevalcap.cider.cider import Cider

    gts = {i: [" ".join(map(str, ref)) for ref in refs] for i, refs in enumerate(references)}
    res = {i: [" ".join(map(str, candidate))] for i, candidate in enumerate(candidates)}
    start = time.perf_counter()
    Cider().compute_score(gts, res)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
