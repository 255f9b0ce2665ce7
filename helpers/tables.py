"""The results table: every run's results.json (in the work dir and attached outputs) as one pandas
DataFrame, a row per run, split and beam size, scores x 100 as papers print them, and runs that differ
in one choice only side by side.

It also owns reading a results or history file (`read_json`) and the metric column names
(`METRIC_COLUMNS`), which helpers.figures plots the curves with.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from helpers.evaluate import METRIC_LABELS
from helpers.progress import in_notebook
from helpers.widgets import display_in_notebook

DECODER_NAMES = {"rnn": "Vanilla RNN", "lstm": "LSTM", "attn": "Attention LSTM", "transformer": "Transformer"}
# normalised pycocoevalcap name (bleu4) -> column (BLEU-4): the papers' names, as every log shows them
METRIC_COLUMNS = {re.sub(r"[^a-z0-9]", "", name.lower()): label for name, label in METRIC_LABELS.items()}
RESULT_COLUMNS = [
    "run",
    "kind",
    "decoder",
    "backbone",
    "weights",
    "embeddings",
    "image_size",
    "hidden",
    "dataset",
    "mode",
    "split",
    "beam",
    "tokenizer",
    *METRIC_COLUMNS.values(),
    "epochs",
    "best_epoch",
    "status",
    "train_time_min",
    "device",
    "path",
]
COMPARISONS_DIR = "comparisons"  # below the work dir: the short comparison runs of notebooks 01 and 02
FULL, COMPARISON = "full", "comparison"  # the `kind` of a run: its notebook's own, or a short comparison
# The choices a run is compared on (helpers.config.run_identity words them): side_by_side puts runs that
# differ in one of them, and agree on the rest, next to each other.
COMPARED_CHOICES = (
    "decoder",
    "backbone",
    "weights",
    "embeddings",
    "image_size",
    "hidden",
    "dataset",
    "mode",
    "epochs",
    "beam",
)


def read_json(path: Path) -> Any:
    """A results or history file's content; broken JSON is a ValueError naming the file and line."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: line {error.lineno}: broken JSON ({error.msg}).") from None


def is_number(value: Any) -> bool:
    """An int or float, not a bool (a figure to tabulate or plot)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _get(mapping: Any, *keys: str, default: Any = np.nan) -> Any:
    for key in keys:
        if not isinstance(mapping, Mapping) or key not in mapping:
            return default
        mapping = mapping[key]
    return default if mapping is None else mapping


def _embeddings(config: Mapping[str, Any]) -> Any:
    embeddings = _get(config, "embeddings", default={})
    use_glove = _get(embeddings, "use_glove")
    if not isinstance(use_glove, bool):
        return np.nan
    if not use_glove:
        return "random"
    return "GloVe (frozen)" if _get(embeddings, "freeze", default=False) else "GloVe"


def _weights(config: Mapping[str, Any]) -> Any:
    pretrained = _get(config, "model", "pretrained_backbone")
    return ("ImageNet" if pretrained else "random") if isinstance(pretrained, bool) else np.nan


def _result_rows(path: Path) -> list[dict[str, Any]]:
    results = read_json(path)
    if not isinstance(results, Mapping):
        raise ValueError(f"{path}: expected a JSON object with 'config' and 'metrics'.")
    config = _get(results, "config", default={})
    cell_type = _get(config, "model", "decoder", default=_get(config, "model", "cell_type"))  # or old name
    wall_time = _get(results, "train_wall_time_s", default=_get(results, "wall_time_s"))
    base = {
        "run": _get(results, "run_name", default=path.parent.name),
        "kind": COMPARISON if path.parent.parent.name == COMPARISONS_DIR else FULL,
        "decoder": DECODER_NAMES.get(cell_type, cell_type) if isinstance(cell_type, str) else np.nan,
        "backbone": _get(config, "model", "backbone"),
        "weights": _weights(config),
        "embeddings": _embeddings(config),
        "image_size": _get(config, "data", "image_size"),
        "hidden": _get(config, "model", "hidden_dim"),
        "dataset": _get(config, "data", "dataset"),
        "mode": _get(config, "training", "mode"),
        "epochs": _get(results, "epochs"),
        "best_epoch": _get(results, "best_epoch"),
        "status": _get(results, "status"),
        "train_time_min": wall_time / 60 if is_number(wall_time) else np.nan,
        "device": _get(results, "device"),
        "path": str(path),
    }
    rows = []
    for split, by_beam in _get(results, "metrics", default={}).items():
        for beam_key, scores in (by_beam or {}).items():
            match = re.fullmatch(r"beam_?(\d+)|(greedy)", str(beam_key))
            beam = (int(match.group(1)) if match.group(1) else 1) if match else np.nan
            tokenizer = _get(results, "scoring", split, str(beam_key), "tokenizer")
            row = {**base, "split": split, "beam": beam, "tokenizer": tokenizer}
            for name, value in (scores or {}).items():
                column = METRIC_COLUMNS.get(re.sub(r"[^a-z0-9]", "", name.lower()))
                if column and is_number(value):
                    row[column] = 100 * value  # as papers print them, like the training notebooks
            rows.append(row)
    return rows or [{**base, "split": np.nan, "beam": np.nan}]


def results_table(roots: str | Path | Iterable[str | Path], split: str | None = None):
    """Every results.json below `roots` (the work dir, and on Kaggle /kaggle/input) as one DataFrame:
    a row per run, split and beam size, best CIDEr first within each split; metrics x 100 (BLEU-4
    25.0), as papers print them. Missing figures are NaN; a run found twice (the same runs folder and
    run name: a copy brought into the work dir) keeps its first root's copy."""
    import pandas as pd

    roots = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
    rows, seen_runs = [], set()
    for root in map(Path, roots):
        if not root.is_dir():
            continue
        runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for path in sorted(root.glob("**/results.json")):
            result_rows = _result_rows(path)  # keyed by the runs folder too: runs/ and comparisons/
            runs.setdefault((path.parent.parent.name, result_rows[0]["run"]), result_rows)
        for run, result_rows in runs.items():
            if run not in seen_runs:
                seen_runs.add(run)
                rows.extend(result_rows)
    table = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    if split is not None:
        table = table[table["split"] == split]
    table = table.sort_values(
        ["split", "CIDEr", "run", "beam"], ascending=[True, False, True, True], na_position="last"
    )
    rounded = {column: 2 for column in [*METRIC_COLUMNS.values(), "train_time_min"]}
    return table.round(rounded).dropna(axis=1, how="all").reset_index(drop=True)


def side_by_side(table, by: str, metric: str = "CIDEr"):
    """Runs that differ only in `by` (e.g. 'backbone', 'embeddings', 'decoder') next to each other: a
    row per combination of the other COMPARED_CHOICES (and split) that was run with two or more values
    of `by`, a column per value, `metric` in the cells. Empty when no such pair of runs exists."""
    if by not in COMPARED_CHOICES:
        raise ValueError(f"Unknown choice {by!r}; compare by one of {', '.join(COMPARED_CHOICES)}.")
    if table.empty or metric not in table.columns or by not in table.columns:
        import pandas as pd

        return pd.DataFrame()
    others = [name for name in ("split", *COMPARED_CHOICES) if name in table.columns and name != by]
    rows = table.dropna(subset=[by, metric]).astype({name: str for name in others})
    pivot = rows.pivot_table(index=others, columns=by, values=metric, aggfunc="max")
    pivot = pivot[pivot.notna().sum(axis=1) >= 2]
    pivot.columns.name = f"{metric} by {by}"
    return pivot.reset_index(level=[n for n in others if rows[n].nunique() == 1], drop=True)


def show_side_by_side(table, by: str, metric: str = "CIDEr") -> None:
    """Display `side_by_side(table, by, metric)` under a heading, or say that no two runs differ only
    in `by` (and so what to train for it)."""
    pairs = side_by_side(table, by, metric)
    if pairs.empty:
        print(f"{by}: no two runs differ in the {by} only; train one more with another {by} to compare.")
        return
    print(f"{by}: {metric} of runs that differ only in the {by}")
    display_in_notebook(pairs)


# ------------------------------------------------------------------------------ the results at a glance

SUMMARY_COLUMNS = [
    "decoder", "backbone", "embeddings", "epochs", "beam", "BLEU-4", "METEOR", "CIDEr", "minutes",
]  # fmt: skip
GROUP_LABELS = {FULL: "full runs", COMPARISON: "comparisons"}  # 03-06; the short runs of 01, 02
# A difference under this share of the larger score is called noise: the demo's val CIDEr moved by
# about +-5 % around its mean with the training seed alone (seeds 0-4: 381.5 to 421.4, BENCHMARKS.md §9),
# and one run per setting cannot measure that spread itself.
NOISE_SHARE = 0.05


def summary_table(table):
    """The results table a person reads at once: the choices that tell runs apart and the scores that
    rank them (BLEU-4, METEOR, CIDEr, one decimal; training minutes), full runs first, then the short
    comparison runs of notebooks 01 and 02 (fewer epochs: rank them among themselves only), each
    group best CIDEr first. Indexed by (runs, decoder); a split column only when there are several."""
    import pandas as pd

    rows = table.rename(columns={"train_time_min": "minutes"})
    if "kind" not in rows.columns:
        rows = rows.assign(kind=FULL)
    rows = rows.reindex(columns=[*rows.columns, *(n for n in SUMMARY_COLUMNS if n not in rows.columns)])
    columns = list(SUMMARY_COLUMNS)  # all of them, a figure no run has as '-'
    if "split" in rows.columns and rows["split"].nunique() > 1:
        columns.insert(0, "split")
    order = {kind: rank for rank, kind in enumerate(GROUP_LABELS)}
    rows = rows.assign(group=rows["kind"].map(GROUP_LABELS), _order=rows["kind"].map(order))
    rows = rows.sort_values(["_order", "CIDEr"], ascending=[True, False], kind="stable")
    summary = rows.set_index(["group", "decoder"])[[name for name in columns if name != "decoder"]]
    for name in ("epochs", "beam"):
        summary[name] = pd.to_numeric(summary[name], errors="coerce").round().astype("Int64")
    summary.index.names = ["runs", "decoder"]
    summary["minutes"] = [_minutes(value) for value in pd.to_numeric(summary["minutes"], errors="coerce")]
    return summary.round(1)


def _minutes(value: float) -> str:
    """Training minutes to one decimal; '<0.1' for a run of seconds (not 0.0, which reads as none)."""
    if value != value:  # nan: no training time recorded
        return "-"
    return "<0.1" if value < 0.05 else f"{value:.1f}"


def _show_frame(frame, css_class: str, **options: Any) -> None:
    """Display a DataFrame whole (no column hidden behind '...'), missing figures as '-', each cell on
    one line and narrowly padded (JupyterLab's table style wraps 'BLEU-4' and run names, and at
    1280 px beside the file browser 850 px are left), with the same text where HTML does not render
    (GitHub's plain view, a terminal)."""
    html = frame.to_html(na_rep="-", classes=css_class, **options)
    html = re.sub(r"<(th|td)([ >])", r'<\1 style="white-space: nowrap; padding: 0.4em 0.35em"\2', html)
    html = html.replace("<table ", '<table style="table-layout: auto" ', 1)
    text = frame.to_string(na_rep="-", **options)
    if in_notebook():
        from IPython.display import display

        display({"text/html": html, "text/plain": text}, raw=True)
    else:
        print(text)


def show_summary(table) -> None:
    """Display `summary_table(table)`: the first thing notebook 07 shows."""
    _show_frame(summary_table(table), "results-summary", float_format="{:.1f}".format)


def show_every_column(table) -> None:
    """Display the whole results table, every column (pandas would hide the middle ones)."""
    _show_frame(table, "results-every-column", index=False)


def _difference(first: float, second: float, noise: float) -> str:
    """`first - second` in CIDEr points (x 100) and as a share of the larger, called noise when that
    share is at most `noise`."""
    difference = first - second
    share = difference / max(abs(first), abs(second), 1e-9)
    verdict = f"within noise (under {noise:.0%} of the score)" if abs(share) <= noise else "more than noise"
    return f"{difference:+.1f} CIDEr points ({share:+.0%}), {verdict}"


def _one_beam(rows):
    """The rows at one beam size: the size most of them were scored with (the larger on a tie, as
    papers report beam search), so that decoders are ranked at the same beam."""
    if rows.empty or "beam" not in rows.columns or rows["beam"].isna().all():
        return rows
    counts = rows["beam"].value_counts()
    return rows[rows["beam"] == max(counts.index, key=lambda size: (counts[size], size))]


def _epochs(pairs, rows) -> str:
    """'of N epochs': the epochs of the runs a side_by_side table paired."""
    if "epochs" in pairs.index.names:
        values = pairs.index.get_level_values("epochs")
    else:  # side_by_side drops a level all rows share
        values = rows["epochs"].dropna().unique() if "epochs" in rows.columns else []
    epochs = sorted({int(float(value)) for value in values if str(value) != "nan"})
    return f" of {' and '.join(map(str, epochs))} epochs" if epochs else ""


def _decoder_finding(rows, noise: float) -> str:
    """The decoders ranked by their best full run's CIDEr at one beam size (short comparison runs
    trained fewer epochs, so they would rank the epochs, not the decoder)."""
    full = _one_beam(rows[rows["kind"] == FULL] if "kind" in rows.columns else rows)
    if full.empty or "decoder" not in full.columns:
        return "No full run is scored yet: train a decoder in notebooks 03-06 to rank the decoders."
    best = full.groupby("decoder")["CIDEr"].max().sort_values(ascending=False)
    where = [f"{full['split'].iloc[0]} split"] if "split" in full.columns else []
    where += [f"beam {full['beam'].iloc[0]:g}"] if "beam" in full.columns else []
    context = ", ".join([*where, "its best full run"])
    if len(best) == 1:
        return (f"Only {best.index[0]} is among the full runs (CIDEr {best.iloc[0]:.1f}, {context}): "
                "train another decoder (notebooks 03-06) to compare.")
    others = ", ".join(f"{name} {score:.1f}" for name, score in best.iloc[1:].items())
    return (f"Best decoder: {best.index[0]}, CIDEr {best.iloc[0]:.1f} ({context}), then {others}. "
            f"Against {best.index[1]}: {_difference(best.iloc[0], best.iloc[1], noise)}.")


def _embedding_finding(rows, noise: float) -> str:
    """GloVe (trainable, frozen) against random word vectors: the mean CIDEr difference over the runs
    that differ in the word vectors only."""
    pairs = side_by_side(rows, "embeddings")
    glove = [name for name in ("GloVe", "GloVe (frozen)") if name in pairs.columns]
    if pairs.empty or "random" not in pairs.columns or not glove:
        return ("No GloVe run has a twin with random word vectors: notebook 01 with COMPARE_EPOCHS > 0 "
                "trains both.")
    parts = []
    for name in glove:
        both = pairs[[name, "random"]].dropna()
        if not both.empty:
            difference = _difference(both[name].mean(), both["random"].mean(), noise)
            parts.append(f"{name} {difference} ({len(both)} pair{'s' * (len(both) > 1)})")
    return (f"Word vectors, against random ones (runs{_epochs(pairs, rows)} that differ in the word vectors "
            f"only): {'; '.join(parts)}.")


def _backbone_finding(rows, noise: float) -> str:
    """The backbones ranked within the largest set of runs that differ in the backbone only."""
    pairs = side_by_side(rows, "backbone")
    if pairs.empty:
        return "No two runs differ in the backbone only: notebook 02 with COMPARE_EPOCHS > 0 trains them."
    ranked = max((row.dropna() for _, row in pairs.iterrows()), key=len).sort_values(ascending=False)
    others = ", ".join(f"{name} {score:.1f}" for name, score in ranked.iloc[1:].items())
    return (f"Best backbone: {ranked.index[0]}, CIDEr {ranked.iloc[0]:.1f}, then {others} (runs"
            f"{_epochs(pairs, rows)} that differ in the backbone only). Against {ranked.index[1]}: "
            f"{_difference(ranked.iloc[0], ranked.iloc[1], noise)}.")


def findings(table, noise: float = NOISE_SHARE) -> list[str]:
    """What the table says, in sentences written from its CIDEr figures: the best decoder (full runs,
    at one beam size), GloVe against random word vectors and the best backbone (runs that differ in
    that choice only, beam size included), a difference of at most `noise` of the score called noise;
    on the demo's generated data, that its ranking says nothing about photos."""
    rows = table.dropna(subset=["CIDEr"]) if "CIDEr" in table.columns else table.iloc[0:0]
    if rows.empty:
        return ["No scored run yet: train a model (notebooks 03-06), then run this notebook again."]
    sentences = [say(rows, noise) for say in (_decoder_finding, _embedding_finding, _backbone_finding)]
    if "dataset" in rows.columns and (rows["dataset"] == "demo").any():
        sentences.append("These runs learned the demo's generated shapes (DEMO = True): how they rank says "
                         "nothing about photos. Train on Flickr8k (next step below) to rank the choices.")
    return sentences


def show_findings(table, noise: float = NOISE_SHARE) -> None:
    """Print `findings(table)`, one paragraph each."""
    print("\n\n".join(findings(table, noise)))
