"""GloVe loading: the naive loader against our cold (vocab-restricted) parse and our warm cached load.

Generates a file in the real glove.6B text format (token, then floats with 5 decimals, single
spaces; 400,000 x 300 by default, about 1 GB) in a temporary folder, and a Flickr8k-sized vocabulary
(~8k words, a few of them missing from the file). The naive loader is the usual notebook snippet:
split every line and convert every float into a dict, then pick the vocabulary's rows.

    python bench/bench_glove.py [--rows 400000] [--dim 300] [--vocab 8000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from operator import itemgetter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.embeddings import glove_coverage, load_glove_embeddings  # noqa: E402
from helpers.text import SPECIAL_TOKENS  # noqa: E402


def token_for(rank: int) -> str:
    """A distinct lowercase word-like token for each rank."""
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    text = ""
    rank += 26 * 27  # at least three letters
    while rank:
        rank, digit = divmod(rank, 26)
        text += letters[digit]
    return text


def generate_glove_file(path: Path, rows: int, dim: int, seed: int) -> None:
    """Write `rows` lines "token v1 .. v_dim"; numbers come from a pool of formatted N(0, 0.4) values."""
    rng = np.random.default_rng(seed)
    pool = [f"{x:.5f}".encode() for x in rng.normal(0.0, 0.4, 1 << 16)]
    with open(path, "wb", buffering=1 << 24) as handle:
        for start in range(0, rows, 4096):
            picks = rng.integers(0, len(pool), size=(min(4096, rows - start), dim))
            lines = [
                token_for(start + i).encode() + b" " + b" ".join(itemgetter(*row)(pool)) + b"\n"
                for i, row in enumerate(picks.tolist())
            ]
            handle.write(b"".join(lines))


def naive_load(path: Path, word_to_idx: dict[str, int], dim: int) -> np.ndarray:
    """The common notebook loader: every line split, every float converted, then the vocab's rows."""
    embeddings_index = {}
    with open(path, encoding="utf8") as handle:
        for line in handle:
            values = line.split()
            embeddings_index[values[0]] = np.asarray(values[1:], dtype="float32")
    matrix = np.random.normal(0.0, 0.4, (len(word_to_idx), dim)).astype(np.float32)
    for word, index in word_to_idx.items():
        if word in embeddings_index:
            matrix[index] = embeddings_index[word]
    return matrix


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=400_000, help="lines in the generated GloVe file")
    parser.add_argument("--dim", type=int, default=300, help="vector dimension")
    parser.add_argument("--vocab", type=int, default=8000, help="vocabulary size (Flickr8k: about 8k)")
    parser.add_argument("--missing", type=int, default=150, help="vocabulary words absent from the file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    # Caption words are frequent words: GloVe sorts by frequency, so draw them from the first ranks.
    ranks = rng.choice(min(args.rows, 60_000), size=args.vocab - args.missing, replace=False)
    words = [token_for(int(rank)) for rank in ranks] + [f"zz{i}missing" for i in range(args.missing)]
    word_to_idx = {word: i for i, word in enumerate(SPECIAL_TOKENS + words)}

    with tempfile.TemporaryDirectory(prefix="bench_glove_") as folder:
        glove = Path(folder) / f"glove.bench.{args.dim}d.txt"
        _, generate_s = timed(generate_glove_file, glove, args.rows, args.dim, args.seed)
        size_mb = glove.stat().st_size / 1e6
        print(f"generated {args.rows:,} x {args.dim} ({size_mb:,.0f} MB) in {generate_s:.1f} s")
        cache = Path(folder) / "cache"

        naive, naive_s = timed(naive_load, glove, word_to_idx, args.dim)

        def load():
            return load_glove_embeddings(glove, word_to_idx, args.dim, cache_dir=cache, verbose=False)

        cold, cold_s = timed(load)
        warm_s = statistics.median(timed(load)[1] for _ in range(5))
        coverage = glove_coverage(glove, word_to_idx, args.dim, cache_dir=cache)

    found_rows = [word_to_idx[word] for word in words[: args.vocab - args.missing]]
    if not np.array_equal(cold.numpy()[found_rows], naive[found_rows]):
        raise SystemExit("our loader and the naive loader disagree on the found words")

    print(
        f"GloVe file {args.rows:,} x {args.dim} ({size_mb:,.0f} MB, in the OS page cache), "
        f"vocabulary {len(word_to_idx):,} words, coverage {coverage.found:,}/{coverage.total:,}\n"
    )
    print("| loader | time (s) | speed-up vs naive |")
    print("|---|---:|---:|")
    print(f"| naive: split every line, convert every float | {naive_s:.2f} | 1.0x |")
    print(f"| ours, cold (floats for vocab words only) + cache | {cold_s:.2f} | {naive_s / cold_s:.1f}x |")
    print(f"| ours, warm (cached .npy, median of 5) | {warm_s:.4f} | {naive_s / warm_s:,.0f}x |")
    print(f"\nwarm vs cold: {cold_s / warm_s:,.0f}x")


if __name__ == "__main__":
    main()
