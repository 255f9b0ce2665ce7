"""The notebooks' figures: caption grids, attention maps, training curves, the results chart and
caption lengths, each drawn with matplotlib and returned.

Figures are returned (and shown at once inside a notebook: assign the result or end the line with `;`
so Jupyter does not draw it a second time).
"""

from __future__ import annotations

import math
import os
import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from helpers.progress import in_notebook
from helpers.tables import METRIC_COLUMNS, is_number, read_json
from helpers.text import NULL


def _finish(fig):
    """Show the figure at once inside a notebook (inline backend), and hand it back."""
    if in_notebook():
        import matplotlib.pyplot as plt

        plt.show()
    return fig


def as_image_array(image) -> np.ndarray:
    """An (H, W, 3) array from a PIL image, a path, or a (3, H, W) / (H, W, 3) tensor or array in [0, 1]."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as opened:
            return np.asarray(opened.convert("RGB"))
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if hasattr(image, "detach"):
        image = image.detach().float().cpu().numpy()
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3):
        raise ValueError(f"Expected an image (H, W, 3) or (3, H, W), got shape {array.shape}.")
    return np.clip(array, 0.0, 1.0) if array.dtype.kind == "f" else array


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width=width)) or text


_CELL_WIDTH, _IMAGE_HEIGHT = 4.0, 3.0  # inches per caption-grid cell
_FONT_POINTS, _LINE_POINTS, _GAP_POINTS = 8.5, 11.5, 3.0


def show_captions(
    images: Sequence[Any],
    references: Sequence[Sequence[str]] | None = None,
    generated: Mapping[str, Sequence[str]] | None = None,
    ncols: int = 3,
    max_references: int = 2,
    titles: Sequence[str] | None = None,
):
    """A grid of images, each with its reference captions (grey) and each decoder's caption underneath.

    `generated` maps a label to one caption per image, e.g. {'greedy': [...], 'beam 3': [...]}. Every
    cell has the same size whatever the images' aspect ratios (an image is fitted into its box), and
    its captions are wrapped to the cell's width in a text box of their own, so no text runs into the
    next column or row. Returns the figure: one image axes per image, then one text axes per image.
    """
    import matplotlib.pyplot as plt

    count = len(images)
    if count == 0:
        raise ValueError("show_captions needs at least one image.")
    generated = dict(generated or {})
    for label, captions in [("references", references), *generated.items()]:
        if captions is not None and len(captions) != count:
            raise ValueError(
                f"{len(captions)} {label} captions for {count} images; give one entry per image."
            )
    blocks = _caption_blocks(count, references, generated, max_references)
    text_lines = max(sum(text.count("\n") + 1 for text, _ in block) for block in blocks)
    entries = max(len(block) for block in blocks)
    ncols = max(1, min(ncols, count))
    nrows = math.ceil(count / ncols)
    title_height = 0.25 if titles is not None else 0.0
    text_height = (_LINE_POINTS * text_lines + _GAP_POINTS * (entries + 1)) / 72 + 0.15
    fig = plt.figure(figsize=(_CELL_WIDTH * ncols, nrows * (_IMAGE_HEIGHT + title_height + text_height)))
    grid = fig.add_gridspec(
        2 * nrows, ncols, height_ratios=[_IMAGE_HEIGHT + title_height, text_height] * nrows,
        hspace=0.0, wspace=0.06, left=0.01, right=0.99, top=1.0, bottom=0.0,
    )  # fmt: skip
    for index in range(count):
        ax = fig.add_subplot(grid[2 * (index // ncols), index % ncols])
        ax.imshow(as_image_array(images[index]))  # aspect 'equal': the image fits its fixed box
        ax.set_axis_off()
        if titles is not None:
            ax.set_title(str(titles[index]), fontsize=9)
    for index, block in enumerate(blocks):
        _draw_caption_block(fig.add_subplot(grid[2 * (index // ncols) + 1, index % ncols]), block)
    return _finish(fig)


def _caption_blocks(count, references, generated, max_references) -> list[list[tuple[str, str]]]:
    """Per image: (wrapped text, colour) for its references (grey) and each decoder's caption."""
    wrap = int(_CELL_WIDTH * 72 * 0.92 / (_FONT_POINTS * 0.6))  # characters per line in a cell
    blocks = []
    for index in range(count):
        lines = [
            (_wrap(f"ref: {ref}", wrap), "0.35")
            for ref in (references[index] if references else [])[:max_references]
        ]
        lines += [
            (_wrap(f"{label}: {captions[index]}", wrap), f"C{k}")
            for k, (label, captions) in enumerate(generated.items())
        ]
        blocks.append(lines)
    return blocks


def _draw_caption_block(ax, block: list[tuple[str, str]]) -> None:
    """The captions of one image, top down, in their own axes below it."""
    ax.set_axis_off()
    offset = _GAP_POINTS
    for text, colour in block:
        ax.annotate(
            text, xy=(0, 1), xycoords="axes fraction", xytext=(0, -offset), textcoords="offset points",
            va="top", ha="left", fontsize=_FONT_POINTS, color=colour, annotation_clip=False,
        )  # fmt: skip
        offset += (text.count("\n") + 1) * _LINE_POINTS + _GAP_POINTS


def attention_overlay(attention_map, size: tuple[int, int]) -> np.ndarray:
    """One attention map (h, w) upsampled smoothly (bicubic) to `size` = (height, width), scaled to
    [0, 1] by its maximum."""
    from PIL import Image

    grid = np.asarray(attention_map, dtype=np.float32)
    if grid.ndim != 2:
        raise ValueError(f"An attention map must be 2-D (h, w), got shape {grid.shape}.")
    height, width = size
    upsampled = np.asarray(Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC))
    upsampled = np.clip(upsampled, 0.0, None)
    peak = upsampled.max()
    return upsampled / peak if peak > 0 else upsampled


def _attention_grids(attention, steps: int) -> np.ndarray:
    """(T, h, w) from (T, h, w) or (T, h*w), keeping the first `steps` maps."""
    if hasattr(attention, "detach"):
        attention = attention.detach().float().cpu().numpy()
    maps = np.asarray(attention, dtype=np.float32)
    if maps.ndim == 2:
        side = math.isqrt(maps.shape[1])
        if side * side != maps.shape[1]:
            raise ValueError(
                f"Flat attention of {maps.shape[1]} positions is not a square grid; pass (T, h, w)."
            )
        maps = maps.reshape(maps.shape[0], side, side)
    if maps.ndim != 3:
        raise ValueError(f"Attention must be (T, h, w) or (T, h*w), got shape {maps.shape}.")
    if maps.shape[0] < steps:
        raise ValueError(f"{steps} words but only {maps.shape[0]} attention maps; give one map per word.")
    return maps[:steps]


def show_attention(
    image, words: Sequence[str], attention, ncols: int = 5, alpha: float = 0.6, cmap: str = "jet"
):
    """The image, then one panel per generated word with its attention upsampled to the image and
    overlaid; the word is the panel's title. Returns the figure (len(words) + 1 axes)."""
    import matplotlib.pyplot as plt

    picture = as_image_array(image)
    maps = _attention_grids(attention, len(words))
    panels = len(words) + 1
    ncols = max(1, min(ncols, panels))
    nrows = math.ceil(panels / ncols)
    fig = plt.figure(figsize=(2.6 * ncols, 2.7 * nrows))
    ax = fig.add_subplot(nrows, ncols, 1)
    ax.imshow(picture)
    ax.set_title("image", fontsize=10)
    ax.set_axis_off()
    for index, (word, grid) in enumerate(zip(words, maps), start=2):
        ax = fig.add_subplot(nrows, ncols, index)
        ax.imshow(picture)
        ax.imshow(attention_overlay(grid, picture.shape[:2]), cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0)
        ax.set_title(word, fontsize=10)
        ax.set_axis_off()
    fig.tight_layout()
    return _finish(fig)


def _flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in record.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}_"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def plot_history(history: Sequence[Mapping[str, Any]] | str | Path):
    """Loss curves (left) and validation BLEU-4 / CIDEr / METEOR / ROUGE-L x 100 (right, as papers and
    the results table print them) per epoch, from a history list, a history.json, or a results.json
    holding 'history'."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if isinstance(history, (str, os.PathLike)):
        source = str(history)
        history = read_json(Path(history))
        if isinstance(history, Mapping):
            history = history.get("history", [])
    else:
        source = "history"
    records = [_flatten(record) for record in history]
    if not records:
        raise ValueError(f"{source}: no epochs recorded yet.")
    epochs = [record.get("epoch", index + 1) for index, record in enumerate(records)]
    keys = list(dict.fromkeys(key for record in records for key, value in record.items() if is_number(value)))
    loss_keys = [key for key in keys if "loss" in key.lower()]
    metric_keys = [key for key in keys if re.search(r"bleu_?4|cider|meteor|rouge", key, re.IGNORECASE)]

    def label(key: str) -> str:  # val_Bleu_4 -> val BLEU-4, as papers and the results table name it
        split, _, name = key.partition("_")
        column = METRIC_COLUMNS.get(re.sub(r"[^a-z0-9]", "", name.lower()))
        return f"{split} {column}" if column else key.replace("_", " ")

    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(11, 3.8))
    for axis, chosen, title, scale in (
        (loss_ax, loss_keys, "loss", 1),
        (metric_ax, metric_keys, "validation metrics (x 100)", 100),
    ):
        for key in chosen:
            values = [scale * record.get(key, np.nan) for record in records]
            axis.plot(epochs, values, marker="o", label=label(key))
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        if chosen:
            axis.legend(fontsize=8)
        else:
            axis.text(0.5, 0.5, f"no {title} recorded", ha="center", va="center", transform=axis.transAxes)
    fig.tight_layout()
    return _finish(fig)


def plot_results(table, split: str | None = None, metrics: Sequence[str] = ("BLEU-4", "CIDEr")):
    """One horizontal bar chart per metric, a bar per run and beam size (the test split by default,
    else the first split present). Returns the figure."""
    import matplotlib.pyplot as plt

    if table.empty:
        raise ValueError("No results to plot: train a model first (no results.json found).")
    splits = list(dict.fromkeys(table["split"].dropna()))
    split = split or ("test" if "test" in splits else (splits[0] if splits else None))
    rows = table[table["split"] == split] if split is not None else table
    metrics = [metric for metric in metrics if metric in rows.columns]
    if rows.empty or not metrics:
        raise ValueError(f"No {', '.join(metrics) or 'metric'} figures for split {split!r} in the table.")
    labels = [
        f"{row.decoder} / {row.backbone} / {row.embeddings} / beam {row.beam:g}"
        if all(hasattr(row, name) for name in ("decoder", "backbone", "embeddings", "beam"))
        else str(row.run)
        for row in rows.itertuples()
    ]
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(5.5 * len(metrics), 0.45 * len(rows) + 1.5), squeeze=False
    )
    for ax, metric in zip(axes[0], metrics):
        values = rows[metric].to_numpy(dtype=float)
        ax.barh(range(len(values)), values, color=[f"C{i % 10}" for i in range(len(values))])
        ax.set_yticks(range(len(values)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{metric} ({split})")
        for position, value in enumerate(values):
            if np.isfinite(value):
                ax.text(value, position, f" {value:.1f}", va="center", fontsize=8)
        if np.isfinite(values).any():
            ax.set_xlim(0, np.nanmax(values) * 1.2)  # room for the value labels
    fig.tight_layout()
    return _finish(fig)


def plot_caption_lengths(prepared):
    """Histogram of caption lengths (words) per split, with the truncation length marked."""
    import matplotlib.pyplot as plt

    null = prepared.vocab.word_to_idx[NULL]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    limit = prepared.max_caption_length
    for split in prepared.splits:
        encoded, _ = prepared.captions(split)
        lengths = (np.asarray(encoded) != null).sum(axis=1) - 2  # minus <START> and <END>
        ax.hist(lengths, bins=np.arange(0, limit + 2) - 0.5, alpha=0.55, label=f"{split} ({len(lengths):,})")
    ax.axvline(limit + 0.5, color="k", linestyle="--", linewidth=1, label=f"max_caption_length {limit}")
    ax.set_xlabel("words per caption")
    ax.set_ylabel("captions")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _finish(fig)
