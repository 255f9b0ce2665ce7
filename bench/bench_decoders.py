"""Teacher-forced forward+backward: fused RNN/LSTM kernels against a per-time-step Python loop.

Both sides compute the same equations with the same course parameters: the loop calls the cells'
``step_forward`` once per time step (what the course module does), the fused side is the cells'
``forward`` (torch's fused RNN/LSTM kernel). The attention LSTM has no fused kernel; its row compares
our ``forward`` (input projection hoisted out of the loop, one product per step) with the course loop.

    python bench/bench_decoders.py [--device cuda] [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import pick_device

from helpers.decoders import LSTM, RNN, AttentionLSTM, dot_product_attention  # noqa: E402

SIZES = {"small": (32, 16, 64, 128), "kaggle": (128, 16, 300, 512)}  # batch, T, D, H


def step_loop(cell, x, h0, A=None):
    """The course's per-time-step loop over ``step_forward``."""
    h, states = h0, []
    c = h0 if A is not None else torch.zeros_like(h0)
    for t in range(x.shape[1]):
        if isinstance(cell, RNN):
            h = cell.step_forward(x[:, t], h)
        elif A is None:
            h, c = cell.step_forward(x[:, t], h, c)
        else:
            attn, _ = dot_product_attention(h, A)
            h, c = cell.step_forward(x[:, t], h, c, attn)
        states.append(h)
    return torch.stack(states, dim=1)


def time_pair(first, second, device, repeats):
    """Median wall times in milliseconds of two functions, run alternately so load changes hit both."""
    times = ([], [])
    for repeat in range(repeats + 2):  # the first two rounds warm up
        for run, store in zip((first, second), times):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            run()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if repeat >= 2:
                store.append((time.perf_counter() - start) * 1000)
    return statistics.median(times[0]), statistics.median(times[1])


def bench(cell_name, size, device, repeats):
    N, T, D, H = SIZES[size]
    torch.manual_seed(0)
    cell = {"rnn": RNN, "lstm": LSTM, "attn": AttentionLSTM}[cell_name](D, H).to(device)
    x = torch.randn(N, T, D, device=device, requires_grad=True)
    h0 = torch.randn(N, H, device=device, requires_grad=True)
    A = torch.randn(N, H, 7, 7, device=device, requires_grad=True) if cell_name == "attn" else None

    def ours():
        out = cell(x, A) if A is not None else cell(x, h0)
        out.sum().backward()

    def loop():
        step_loop(cell, x, h0 if A is None else A.mean(dim=(2, 3)), A).sum().backward()

    with torch.no_grad():
        reference = step_loop(cell, x, h0 if A is None else A.mean(dim=(2, 3)), A)
        fused = cell(x, A) if A is not None else cell(x, h0)
        error = (fused - reference).abs().max().item()
    return (*time_pair(loop, ours, device, repeats), error)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    device, name = pick_device(args.device, args.threads)
    print(f"Teacher-forced forward+backward, median of {args.repeats} ({name}, torch {torch.__version__})\n")
    print("| decoder | size (N, T, D, H) | per-step loop ms | ours ms | speed-up | max abs diff |")
    print("|---|---|---:|---:|---:|---:|")
    for size in SIZES:
        for cell_name in ("rnn", "lstm", "attn"):
            loop_ms, ours_ms, error = bench(cell_name, size, device, args.repeats)
            label = {"rnn": "RNN (fused)", "lstm": "LSTM (fused)", "attn": "AttentionLSTM (no fused kernel)"}
            print(
                f"| {label[cell_name]} | {size} {SIZES[size]} | {loop_ms:.2f} | {ours_ms:.2f} | "
                f"{loop_ms / ours_ms:.2f}x | {error:.1e} |"
            )


if __name__ == "__main__":
    main()
