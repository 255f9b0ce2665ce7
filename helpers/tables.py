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
from helpers.widgets import display_in_notebook

DECODER_NAMES = {"rnn": "Vanilla RNN", "lstm": "LSTM", "attn": "Attention LSTM", "transformer": "Transformer"}
# normalised pycocoevalcap name (bleu4) -> column (BLEU-4): the papers' names, as every log shows them
METRIC_COLUMNS = {re.sub(r"[^a-z0-9]", "", name.lower()): label for name, label in METRIC_LABELS.items()}
RESULT_COLUMNS = [
    "run",
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
