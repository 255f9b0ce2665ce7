"""Short runs compared the way a reader can trust (notebooks 01 and 02): each variant's val curve per
epoch, its best model's val CIDEr-D per image, and a verdict that says when a difference between two
variants is below the noise of the data.

The noise is that of the image sample: two models scored on the same val images differ per image,
and the standard error of the mean of those paired differences says how far the mean difference
would move on another sample of images of the same size. A difference within two standard errors is
reported as no difference. (Training seeds add noise of their own, which one run per variant cannot
measure; the verdict says so.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

NOISE_STANDARD_ERRORS = 2.0  # a difference counts when it exceeds this many standard errors
# Repeated timings of the same work (batches, epochs) that spread by more than this fraction of their
# median were moved by other work on the machine (a busy CPU): the figure is marked, not trusted.
NOISY_SPREAD = 0.25


@dataclass
class ShortRun:
    """One variant of a comparison: its epochs, its best model's val captions and their CIDEr-D."""

    name: str
    history: list[dict[str, Any]]
    per_image: dict[str, float]  # val CIDEr-D of each image (pycocoevalcap's scale: x 100 to print)
    captions: dict[str, str] = field(default_factory=dict)  # the best model's greedy val captions
    best_epoch: int | None = None
    wall_time_s: float = 0.0
    run: str = ""
    note: str | None = None  # what was measured against it (e.g. saturated features), or None

    @property
    def mean_cider(self) -> float:
        return sum(self.per_image.values()) / len(self.per_image) if self.per_image else math.nan

    def curve(self, key: str = "val_CIDEr") -> tuple[list[int], list[float]]:
        """(epochs, values) of one history key, e.g. the val CIDEr after each epoch."""
        points = [(record.get("epoch", index + 1), record[key])
                  for index, record in enumerate(self.history) if key in record]
        return [epoch for epoch, _ in points], [float(value) for _, value in points]


@dataclass
class PairedDifference:
    """Mean per-image difference a - b over the images both scored, with its standard error."""

    mean: float
    standard_error: float
    images: int
    same_captions: int  # images on which both wrote the very same caption

    @property
    def noise(self) -> float:
        return NOISE_STANDARD_ERRORS * self.standard_error

    @property
    def within_noise(self) -> bool:
        return abs(self.mean) <= self.noise


def paired_difference(a: ShortRun, b: ShortRun) -> PairedDifference:
    """How much `a` beats `b` per image on the val images both were scored on."""
    images = sorted(set(a.per_image) & set(b.per_image))
    if not images:
        raise ValueError(f"{a.name} and {b.name} share no scored images to compare.")
    differences = [a.per_image[name] - b.per_image[name] for name in images]
    mean = sum(differences) / len(differences)
    count = len(differences)
    variance = sum((d - mean) ** 2 for d in differences) / (count - 1) if count > 1 else 0.0
    same = sum(name in a.captions and a.captions[name] == b.captions.get(name) for name in images)
    return PairedDifference(mean, math.sqrt(variance / count), count, same)


def _versus(leader: ShortRun, other: ShortRun) -> str:
    """One clause: the leader against another variant, in CIDEr x 100, with the noise."""
    diff = paired_difference(leader, other)
    amount = f"{100 * diff.mean:+.1f} ± {100 * diff.noise:.1f}"
    if diff.same_captions == diff.images:
        return f"vs {other.name} {amount}: the same caption for all {diff.images} images, an exact tie"
    judged = "below the noise, no difference on this data" if diff.within_noise else "above the noise"
    same = f"; the same caption for {diff.same_captions} of {diff.images} images" * bool(diff.same_captions)
    return f"vs {other.name} {amount} ({judged}{same})"


def _listed(names: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return " and ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else names[0]


def verdict(runs: Sequence[ShortRun]) -> str:
    """One line: the variant with the best mean val CIDEr-D against each other one, each difference
    with its noise (± two standard errors of the paired per-image differences), then each variant's
    note (what was measured against it, e.g. saturated features)."""
    ranked = sorted((run for run in runs if run.per_image), key=lambda r: -r.mean_cider)
    notes = "".join(f" Note on {run.name}: {run.note}." for run in runs if run.note)
    if not ranked:
        return f"Verdict: no variant was scored.{notes}"
    leader = ranked[0]
    images = len(leader.per_image)
    head = (f"Verdict on {images} val images (CIDEr x 100, greedy): {leader.name} scores "
            f"{100 * leader.mean_cider:.1f}")
    if len(ranked) == 1:
        return f"{head}; nothing else to rank it against.{notes}"
    clauses = "; ".join(_versus(leader, other) for other in ranked[1:])
    level = [other.name for other in ranked[1:] if paired_difference(leader, other).within_noise]
    behind = [other.name for other in ranked[1:] if other.name not in level]
    if not behind:
        ending = " No variant beats another beyond the noise of this data: more images or epochs would tell."
    elif level:
        ending = (f" {_listed([leader.name, *level])} lead together; {_listed(behind)} "
                  f"{'falls' if len(behind) == 1 else 'fall'} behind.")
    else:
        ending = f" {leader.name} is best on this data."
    return f"{head}; {clauses}.{ending}{notes} (One training seed each: seeds add noise not counted here.)"


def comparison_table(runs: Sequence[ShortRun], label: str, per_word: Mapping[str, float] | None = None):
    """One row per variant: its best epoch's val loss (per word when `per_word` gives the val split's
    words per caption), BLEU-4 and CIDEr x 100, the distinct captions it wrote for the val images,
    its training speed (median over epochs, marked when noisy), note and run folder; a missing value
    reads "-"."""
    import pandas as pd

    words = (per_word or {}).get("val")
    rows = []
    for run in runs:
        best = next((r for r in run.history if r.get("epoch") == run.best_epoch), {})
        loss = best.get("val_loss")
        loss_column = "val loss per word" if words else "val loss per caption"
        distinct = f"{len(set(run.captions.values()))} of {len(run.captions)}" if run.captions else "-"
        rows.append({
            label: run.name,
            "best epoch": f"{run.best_epoch} of {len(run.history)}" if run.best_epoch else "-",
            loss_column: _shown(loss / words if words and loss else loss, 3),
            "val BLEU-4": _shown(100 * best["val_Bleu_4"] if "val_Bleu_4" in best else None, 2),
            "val CIDEr": _shown(100 * best["val_CIDEr"] if "val_CIDEr" in best else None, 2),
            "distinct captions": distinct,
            "captions/s": timing_text([record.get("captions_per_s", math.nan) for record in run.history], 0),
            "note": "see the verdict" if run.note else "-",
            "run": run.run or "-",
        })
    return pd.DataFrame(rows).set_index(label)


def timing_text(values: Sequence[float], digits: int = 1) -> str:
    """The median of repeated timings of the same work, marked "(noisy ±N%)" when they spread by more
    than NOISY_SPREAD of it and "(measured once)" when there is one; "-" when there is none."""
    finite = sorted(value for value in values if value is not None and math.isfinite(value))
    if not finite:
        return "-"
    middle = len(finite) // 2
    median = finite[middle] if len(finite) % 2 else (finite[middle - 1] + finite[middle]) / 2
    text = f"{median:.{digits}f}"
    if len(finite) == 1:
        return f"{text} (measured once)"
    spread = (finite[-1] - finite[0]) / median if median else math.inf
    return f"{text} (noisy ±{50 * spread:.0f}%)" if spread > NOISY_SPREAD else text


def duration_text(seconds: float) -> str:
    """A duration as a reader takes it in: 42 s, 3.5 min, 2.1 h."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def _shown(value: float | None, digits: int) -> str:
    """A number rounded for a table, or "-" where there is none."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


@dataclass
class Comparison:
    """The short runs of one comparison (by `label`: "embeddings", "backbone"), with the val split's
    words per caption (helpers.anatomy.per_word) that turn its losses into losses per word."""

    label: str
    runs: list[ShortRun]
    per_word: dict[str, float] | None = None

    def table(self):
        return comparison_table(self.runs, self.label, self.per_word)

    def verdict(self) -> str:
        return verdict(self.runs)
