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
    # Each row: a band for the titles (a title sits above its image, so it gets room of its own and
    # never reaches the captions of the row above), the images, then the captions and a margin.
    title_height = 0.32 if titles is not None else 0.12
    text_height = (_LINE_POINTS * text_lines + _GAP_POINTS * (entries + 1)) / 72 + 0.15
    fig = plt.figure(figsize=(_CELL_WIDTH * ncols, nrows * (_IMAGE_HEIGHT + title_height + text_height)))
    grid = fig.add_gridspec(
        3 * nrows, ncols, height_ratios=[title_height, _IMAGE_HEIGHT, text_height] * nrows,
        hspace=0.0, wspace=0.06, left=0.01, right=0.99, top=1.0, bottom=0.0,
    )  # fmt: skip
    for index in range(count):
        ax = fig.add_subplot(grid[3 * (index // ncols) + 1, index % ncols])
        ax.imshow(as_image_array(images[index]))  # aspect 'equal': the image fits its fixed box
        ax.set_axis_off()
        if titles is not None:
            ax.set_title(str(titles[index]), fontsize=9)
    for index, block in enumerate(blocks):
        _draw_caption_block(fig.add_subplot(grid[3 * (index // ncols) + 2, index % ncols]), block)
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
    """One attention map (h, w) upsampled smoothly (bilinear) to `size` = (height, width), on the
    scale of its weights: bilinear never overshoots, so the colour bar reads true weights."""
    from PIL import Image

    grid = np.asarray(attention_map, dtype=np.float32)
    if grid.ndim != 2:
        raise ValueError(f"An attention map must be 2-D (h, w), got shape {grid.shape}.")
    height, width = size
    return np.asarray(Image.fromarray(grid).resize((width, height), Image.Resampling.BILINEAR))


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


def _grey(picture: np.ndarray) -> np.ndarray:
    """The image in grey, lightened, so the colours drawn over it are the attention's alone."""
    grey = picture.astype(np.float32).mean(axis=2) if picture.ndim == 3 else picture.astype(np.float32)
    grey = grey / 255.0 if picture.dtype.kind in "ui" else grey
    return 0.35 + 0.65 * grey


def _attention_panel(ax, picture, grid, word: str, vmax: float, cmap) -> None:
    """One word's panel: the grey image, the weights over it (transparent where the model did not
    look, so the image shows through) and the feature grid's cell borders."""
    height, width = picture.shape[:2]
    overlay = attention_overlay(grid, (height, width))
    ax.imshow(_grey(picture), cmap="gray", vmin=0.0, vmax=1.0)
    ax.imshow(overlay, cmap=cmap, vmin=0.0, vmax=vmax, alpha=np.clip(overlay / vmax, 0.0, 1.0) * 0.85)
    rows, cols = grid.shape
    for row in range(1, rows):
        ax.axhline(row * height / rows - 0.5, color="0.2", linewidth=0.6, alpha=0.5, linestyle=":")
    for col in range(1, cols):
        ax.axvline(col * width / cols - 0.5, color="0.2", linewidth=0.6, alpha=0.5, linestyle=":")
    ax.set_title(word, fontsize=10)
    ax.set_axis_off()


def show_attention(
    image, words: Sequence[str], attention, caption: str | None = None, reference: str | None = None,
    title: str | None = None, note: str | None = None, ncols: int = 5, cmap: str = "magma",
):
    """The image, then one panel per generated word with its attention weights over the feature grid
    drawn over a grey copy of the image (clear where the model did not look), the grid's cells marked,
    and one colour bar for all panels (the weights; each map sums to 1 over the grid). Above them:
    `title` (which example), the generated `caption` (default: the words), a `reference` caption and
    `note` (which grid, which attention). Returns the figure (image, words, colour bar axes)."""
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    picture = as_image_array(image)
    maps = _attention_grids(attention, len(words))
    vmax = float(maps.max()) if maps.size and maps.max() > 0 else 1.0
    panels = len(words) + 1
    ncols = max(1, min(ncols, panels))
    nrows = math.ceil(panels / ncols)
    fig = plt.figure(figsize=(2.6 * ncols + 0.8, 2.7 * nrows + 0.9), layout="constrained")
    axes = [fig.add_subplot(nrows, ncols, index) for index in range(1, panels + 1)]
    axes[0].imshow(picture)
    axes[0].set_title("image", fontsize=10)
    axes[0].set_axis_off()
    for ax, word, grid in zip(axes[1:], words, maps):
        _attention_panel(ax, picture, grid, word, vmax, cmap)
    bar = fig.colorbar(ScalarMappable(Normalize(0.0, vmax), cmap), ax=axes, fraction=0.025, pad=0.01)
    bar.set_label(f"attention weight (sums to 1 over the {maps.shape[1]} x {maps.shape[2]} grid)", fontsize=8)
    width = int(24 * ncols)
    heading = [title, f"generated: {caption if caption is not None else ' '.join(words)}",
               f"reference: {reference}" if reference else None, note]
    fig.suptitle("\n".join(_wrap(line, width) for line in heading if line), fontsize=9, x=0.01, ha="left")
    return _finish(fig)


def _flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in record.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}_"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def plot_history(
    history: Sequence[Mapping[str, Any]] | str | Path, per_word: Mapping[str, float] | None = None
):
    """Loss curves (left) and validation BLEU-4 / CIDEr / METEOR / ROUGE-L x 100 (right, as papers and
    the results table print them) per epoch, from a history list, a history.json, or a results.json
    holding 'history'. The logged losses are per caption (summed over its words); `per_word` ({split:
    words per caption}, helpers.anatomy.per_word) divides each split's loss into a loss per word."""
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

    def scale(key: str) -> float:
        if key in metric_keys:
            return 100.0
        split = key.partition("_")[0]
        return 1.0 / per_word[split] if per_word and split in per_word else 1.0

    loss_title = "loss per word (cross-entropy, nats)" if per_word else "loss per caption (its words summed)"
    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(11, 3.8))
    for axis, chosen, title in (
        (loss_ax, loss_keys, loss_title),
        (metric_ax, metric_keys, "validation metrics (x 100)"),
    ):
        for key in chosen:
            values = [scale(key) * record.get(key, np.nan) for record in records]
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


def plot_comparison(runs, per_word: Mapping[str, float] | None = None):
    """The short runs of a comparison (helpers.comparisons.ShortRun) as curves per epoch: val CIDEr x 100
    (left) and val loss (right; per word with `per_word`, helpers.anatomy.per_word), one line per
    variant; a variant with a note (e.g. saturated features) is dashed. Returns the figure."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    words = (per_word or {}).get("val")
    fig, (cider_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 3.6))
    for index, run in enumerate(runs):
        style = {"marker": "o", "color": f"C{index % 10}", "linestyle": "--" if run.note else "-",
                 "label": f"{run.name} (see its note)" if run.note else run.name}
        epochs, cider = run.curve("val_CIDEr")
        cider_ax.plot(epochs, [100 * value for value in cider], **style)
        epochs, loss = run.curve("val_loss")
        loss_ax.plot(epochs, [value / words if words else value for value in loss], **style)
    loss_title = "val loss per word (nats)" if words else "val loss per caption (summed over its words)"
    for axis, title in ((cider_ax, "val CIDEr (x 100, greedy) after each epoch"), (loss_ax, loss_title)):
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    cider_ax.legend(fontsize=8)
    fig.tight_layout()
    return _finish(fig)


DECODER_COLOURS = {"Vanilla RNN": "C0", "LSTM": "C1", "Attention LSTM": "C2", "Transformer": "C3"}


def _result_label(row) -> str:
    """'LSTM · regnet_x_400mf · GloVe · 8 ep · beam 3': what tells one bar from another."""
    parts = [getattr(row, name, None) for name in ("decoder", "backbone", "embeddings")]
    if any(part is None or part != part for part in parts):  # a missing choice (NaN): the run's name
        return str(row.run)
    epochs, beam = getattr(row, "epochs", np.nan), getattr(row, "beam", np.nan)
    epochs = f"{epochs:g} ep" if is_number(epochs) and epochs == epochs else "? ep"
    beam = f"beam {beam:g}" if is_number(beam) and beam == beam else "beam ?"
    return " · ".join([*map(str, parts), epochs, beam])


def plot_results(table, split: str | None = None, metrics: Sequence[str] = ("BLEU-4", "CIDEr")):
    """One horizontal bar chart per metric, a bar per run and beam size (the test split by default,
    else the first split present): coloured by decoder, labelled with the choices and epochs; the
    full runs first, then the short comparison runs of notebooks 01 and 02, hatched and set apart
    (fewer epochs: they rank among themselves only). Returns the figure."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from helpers.tables import COMPARISON

    if table.empty:
        raise ValueError("No results to plot: train a model first (no results.json found).")
    splits = list(dict.fromkeys(table["split"].dropna()))
    split = split or ("test" if "test" in splits else (splits[0] if splits else None))
    rows = table[table["split"] == split] if split is not None else table
    metrics = [metric for metric in metrics if metric in rows.columns]
    if rows.empty or not metrics:
        raise ValueError(f"No {', '.join(metrics) or 'metric'} figures for split {split!r} in the table.")
    short = rows["kind"].eq(COMPARISON) if "kind" in rows.columns else rows["run"].map(lambda _: False)
    rows = rows.assign(_short=short).sort_values("_short", kind="stable")  # full runs first
    colours = [DECODER_COLOURS.get(getattr(row, "decoder", None), "0.5") for row in rows.itertuples()]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics) + 2.8, 0.32 * len(rows) + 1.9),
                             squeeze=False, sharey=True)
    for ax, metric in zip(axes[0], metrics):
        values = rows[metric].to_numpy(dtype=float)
        bars = ax.barh(range(len(values)), values, color=colours, edgecolor="white")
        for bar, is_short in zip(bars, rows["_short"]):
            if is_short:
                bar.set(hatch="///", alpha=0.55)
        ax.set_yticks(range(len(values)), [_result_label(row) for row in rows.itertuples()], fontsize=8)
        ax.set_title(f"{metric} ({split}, x 100)", fontsize=10)
        for position, value in enumerate(values):
            if np.isfinite(value):
                ax.text(value, position, f" {value:.1f}", va="center", fontsize=8)
        if np.isfinite(values).any():
            ax.set_xlim(0, np.nanmax(values) * 1.2)  # room for the value labels
        if rows["_short"].any() and not rows["_short"].all():
            ax.axhline(int((~rows["_short"]).sum()) - 0.5, color="0.3", linestyle="--", linewidth=0.8)
    axes[0][0].invert_yaxis()  # shared: best first, for every panel
    shown = set(rows["decoder"]) if "decoder" in rows.columns else set()
    handles = [Patch(color=colour, label=name) for name, colour in DECODER_COLOURS.items() if name in shown]
    if rows["_short"].any():
        label = "short comparison run, fewer epochs (below the line)"
        handles.append(Patch(facecolor="0.85", hatch="///", label=label))
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 if handles else 0, 1, 1))
    return _finish(fig)


def plot_caption_lengths(prepared):
    """Caption lengths in words per split, as a share of the split's captions: a bar per split side by
    side at each whole length (so val and test show next to the larger train split), the truncation
    length marked."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    null = prepared.vocab.word_to_idx[NULL]
    limit = prepared.max_caption_length
    lengths = {  # words: minus <START> and <END>
        split: (np.asarray(prepared.captions(split)[0]) != null).sum(axis=1) - 2 for split in prepared.splits
    }
    width = 0.8 / max(1, len(lengths))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for index, (split, words) in enumerate(lengths.items()):
        share = 100 * np.bincount(words, minlength=limit + 1) / max(1, len(words))
        offset = (index - (len(lengths) - 1) / 2) * width
        ax.bar(np.arange(len(share)) + offset, share, width=width, color=f"C{index}",
               label=f"{split} ({len(words):,} captions)")
    shortest = min((int(words.min()) for words in lengths.values() if len(words)), default=0)
    ax.axvline(limit + 0.5, color="k", linestyle="--", linewidth=1, label=f"max_caption_length {limit}")
    ax.set_xlim(max(0, shortest - 1) - 0.5, limit + 1.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("words per caption")
    ax.set_ylabel("% of the split's captions")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return _finish(fig)
