"""What each notebook stage does, so the notebooks stay a few lines per cell: the config a stage runs
with (from its parameters cell and widgets), reuse of earlier stages' outputs in a fresh session, and
the samples the notebooks show (captions under images, attention per word, your own image).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from helpers.anatomy import per_word
from helpers.backbones import BACKBONES, image_transform, measure_backbone
from helpers.checkpoints import load_run
from helpers.comparisons import Comparison, ShortRun, duration_text, timing_text
from helpers.config import (
    Config,
    ConfigError,
    config_from_dict,
    config_layers,
    find_config,
    load_config,
    parse_overrides,
)
from helpers.embeddings import glove_coverage, load_glove_embeddings, nearest_neighbours
from helpers.evaluate import METRIC_LABELS, decode_split, per_image_cider
from helpers.features import ATTACHED_RECORD, FLOAT16_MAX, FeatureStore, record_attached_store
from helpers.figures import show_captions
from helpers.glove import resolve_glove_path
from helpers.images import load_image
from helpers.notebook import find_earlier_outputs
from helpers.progress import ProgressLine
from helpers.tables import COMPARISONS_DIR, FULL
from helpers.text import Vocabulary
from helpers.train import train as train_loop
from helpers.widgets import RunChoice, feature_map
from helpers.workdir import features_for, prepare_for, prepared_and_features

# Notebook parameter -> config key. A parameter set to None keeps the config's value.
PARAMETER_KEYS = {
    "DATASET": "data.dataset",
    "DATA_DIR": "data.data_dir",
    "IMAGE_SIZE": "data.image_size",
    "BACKBONE": "model.backbone",
    "PRETRAINED": "model.pretrained_backbone",
    "USE_GLOVE": "embeddings.use_glove",
    "GLOVE_PATH": "embeddings.glove_path",
    "FREEZE_EMBEDDINGS": "embeddings.freeze",
    "EPOCHS": "training.epochs",
    "BATCH_SIZE": "batch_size",
    "BEAM_SIZES": "training.eval_beam_sizes",
    "SCST": "training.scst.enabled",
    "DEVICES": "training.devices",
}
# Widget choice -> config key (the widgets of widgets.py: backbone dropdown, option checkboxes).
CHOICE_KEYS = {
    "dataset": "data.dataset",
    "backbone": "model.backbone",
    "pretrained": "model.pretrained_backbone",
    "use_glove": "embeddings.use_glove",
    "freeze": "embeddings.freeze",
}


def parameters(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters cell's knobs out of a notebook's globals()."""
    known = {*PARAMETER_KEYS, "DEMO", "PRESET", "WORK_DIR", "OVERRIDES"}
    return {name: value for name, value in namespace.items() if name in known}


def stage_config(decoder: str, params: Mapping[str, Any], env, **choices: Any) -> Config:
    """The config a notebook stage runs with, layered as on the command line (helpers.train), later
    layers winning:

    1. configs/<decoder>.yaml, then configs/demo.yaml when DEMO is true (generated data and GloVe
       file, random CNN weights, CPU-sized), then the preset PRESET (backbone and sizes): the files
       of helpers.config.config_layers, as `--config <decoder> --demo --preset PRESET`;
    2. every parameter that is not None (BACKBONE, EPOCHS, BATCH_SIZE, ...: a value you set is used,
       also in DEMO mode and over a preset);
    3. the session: data and runs under the work dir, training on `env.device`;
    4. the widget choices (`choices`: backbone=..., use_glove=...);
    5. OVERRIDES (`key=value` strings, e.g. "training.lr=5e-4", for anything the other knobs miss).

    DEMO generates its own data, so a DATA_DIR with DEMO is refused.
    """
    if params.get("DEMO") and params.get("DATA_DIR") is not None:
        raise ConfigError(
            f"DEMO = True generates its own data but DATA_DIR = {params['DATA_DIR']!r} is set too: "
            "set DATA_DIR = None for the demo, or DEMO = False to train on that folder."
        )
    files = config_layers(find_config(decoder), [params["PRESET"]] if params.get("PRESET") else [],
                          demo=bool(params.get("DEMO")))
    overrides: dict[str, Any] = {
        key: params[name] for name, key in PARAMETER_KEYS.items() if params.get(name) is not None
    }
    work_dir = Path(env.work_dir)
    overrides["data.work_dir"] = str(work_dir)
    overrides["training.run_dir"] = str(work_dir / "runs")
    overrides["training.device"] = env.device
    for name, value in choices.items():
        if name not in CHOICE_KEYS:
            raise ValueError(f"Unknown choice {name!r}; the widgets set {', '.join(CHOICE_KEYS)}.")
        overrides[CHOICE_KEYS[name]] = value
    overrides.update({key: value for key, value, _ in parse_overrides(params.get("OVERRIDES") or [])})
    return load_config(files, overrides)


def describe(config: Config) -> str:
    """One line per choice that later cells use."""
    m, e, d, t = config.model, config.embeddings, config.data, config.training
    weights = "ImageNet weights" if m.pretrained_backbone else "random weights"
    glove = f"GloVe {e.glove_path} ({'frozen' if e.freeze else 'trainable'})" if e.use_glove else "random"
    return "\n".join(
        [
            f"decoder     {m.decoder} (wordvec {m.wordvec_dim}, hidden {m.hidden_dim})",
            f"backbone    {m.backbone} ({weights}), {config.image_size} px -> "
            f"{feature_map(BACKBONES[m.backbone], config.image_size)} features",
            f"embeddings  {glove}",
            f"data        {d.dataset} (data_dir {d.data_dir}, split {d.split or 'auto'}), "
            f"work dir {d.work_dir}",
            f"training    {t.epochs} epochs, batch {config.batch_size}, lr {t.lr}, mode {t.mode}, "
            f"device {t.device}",
            *([f"SCST        {t.scst.epochs} epochs after them, lr {t.scst.lr}, {t.scst.samples_per_image} "
               f"samples per image, {t.scst.baseline} baseline"] if t.scst.enabled else []),
            f"run folder  {config.run_path}",
        ]
    )


def saturation_note(store) -> str | None:
    """Why a feature store's features may carry little a decoder can use, measured: their values
    reached the float16 limit and were cut there (random-weight deep ResNets grow that large), or
    None. Read from a uint8 store's per-channel ranges (small files); a float16 store is not read."""
    if store is None or store.layout != "uint8":
        return None
    peak = 0.0
    for split in store.splits:
        ranges = np.load(store.ranges_path(split), mmap_mode="r").astype(np.float32)  # (N, 2, C)
        low, high = ranges[:, 0], ranges[:, 0] + 255 * ranges[:, 1]  # a code's 0 and its 255
        peak = max(peak, float(np.abs(low).max()), float(np.abs(high).max()))
    if peak < FLOAT16_MAX:
        return None
    return (f"its {store.backbone} features reached the float16 limit ({FLOAT16_MAX:.0f}) and were cut "
            "there (random weights let deep ResNets grow that large): the saturated values carry less "
            "of the image")


def choose_run(decoder: str, params: Mapping[str, Any], env):
    """The training notebooks' choices (preset, backbone, word vectors, backbone weights) as widgets
    that follow each other and show the config they make; `.config` is that config."""
    def make_config(preset, backbone, options):
        choices = {**({"backbone": backbone} if backbone else {}), **options}
        return stage_config(decoder, {**params, "PRESET": preset}, env, **choices)

    return RunChoice(make_config, describe, params.get("PRESET"))


def reuse_earlier_outputs(env, runs: str | None = None) -> list[str]:
    """Bring earlier stages' outputs from the input dirs (attached Kaggle notebook outputs) into the
    work dir, so this stage reuses them instead of recomputing: prepared data, the run folders whose
    names match the glob `runs` (a training notebook's own, to resume; None: none), the demo GloVe
    file and stage 01's GloVe matrix cache are copied (small, must stay writable).

    Complete feature stores (large, only read) are never copied or linked: a small record
    (features.record_attached_store) makes the stage read them in place, read-only, and stays in
    this notebook's output. A record that came with an attached output whose store is not attached
    now is kept too, so that a training stage says which output to attach instead of running the CNN
    over the whole dataset again. Returns what was brought in; what the work dir already has is left
    alone."""
    work = Path(env.work_dir)
    brought = []
    for manifest in find_earlier_outputs("data/*/manifest.json", env, include_work_dir=False):
        brought += _copy_once(manifest.parent, work / "data" / manifest.parent.name)
    stores = set()
    for index in find_earlier_outputs("features/*/*/index.json", env, include_work_dir=False):
        target = work / "features" / index.parent.parent.name / index.parent.name
        if (target / "index.json").exists() or target in stores or not index.is_file():
            continue  # extracted here, found already, or a dangling link left by an older version
        if FeatureStore.open(index.parent).is_complete():
            stores.add(target)
            if record_attached_store(target, index.parent):
                brought.append(f"{index.parent} (read in place)")
    for record in find_earlier_outputs(f"features/*/*/{ATTACHED_RECORD}", env, include_work_dir=False):
        target = work / "features" / record.parent.parent.name / record.parent.name
        if target not in stores and not target.exists():
            brought += _copy_once(record, target / ATTACHED_RECORD)  # its store is not attached
    checkpoints = find_earlier_outputs(f"runs/{runs}/last.pt", env, include_work_dir=False) if runs else []
    for checkpoint in checkpoints:
        brought += _copy_once(checkpoint.parent, work / "runs" / checkpoint.parent.name)
    for glove in find_earlier_outputs("glove/glove.demo.*.txt", env, include_work_dir=False):
        brought += _copy_once(glove, work / "glove" / glove.name)
    for cached in find_earlier_outputs("glove_cache/*", env, include_work_dir=False):
        brought += _copy_once(cached, work / "glove_cache" / cached.name)
    for item in brought:
        print(f"reusing earlier output: {item}")
    return brought


def _copy_once(source: Path, target: Path) -> list[str]:
    if target.exists():
        return []
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    if source.is_dir():
        shutil.copytree(source, partial)
    else:
        shutil.copy2(source, partial)
    partial.rename(target)
    return [str(target)]


def sample_captions(run_dir: str | Path, prepared, split: str = "test", count: int = 6) -> dict[str, Any]:
    """Images, references and generated captions (every beam size scored) of `count` images of a split,
    read from the run's results.json, ready for `figures.show_captions(**samples)`."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"No {path}: evaluate the run first (helpers.evaluate.evaluate_run).")
    results = json.loads(path.read_text(encoding="utf-8"))
    by_beam = results.get("captions", {}).get(split)
    if not by_beam:
        raise KeyError(f"{path} holds no captions for split {split!r}; evaluate that split first.")
    names = sorted(next(iter(by_beam.values())))[:count]
    references = prepared.references(split)
    return {
        "images": [prepared.image_path(name) for name in names],
        "references": [references[name] for name in names],
        "generated": {
            beam.replace("beam", "beam "): [captions[name] for name in names]
            for beam, captions in sorted(by_beam.items())
        },
        "titles": names,
    }


def caption_images(model, images, vocab, image_size: int, beam_size: int = 1, max_length: int = 20,
                   decoding: Mapping[str, Any] | None = None):
    """Caption PIL images with a trained model: the CNN runs on them, resized and cropped to the
    `image_size` the model was trained at, as the backbone expects. `decoding`: the run config's
    decoding options (`config.decoding`), so captions shown read as the scored ones were decoded.

    Returns a list of (caption, words, attention (len(words), h, w) or None), one per image.
    """
    device = next(model.parameters()).device
    transform = image_transform(model.image_encoder.backbone, image_size)
    batch = torch.stack([transform(image.convert("RGB")) for image in images]).to(device)
    return _decode(model, batch, vocab, beam_size, max_length, decoding)


def caption_features(model, features: torch.Tensor, vocab, beam_size: int = 1, max_length: int = 20,
                     decoding: Mapping[str, Any] | None = None):
    """Like `caption_images`, from precomputed backbone features (N, C, h, w)."""
    device = next(model.parameters()).device
    return _decode(model, features.to(device), vocab, beam_size, max_length, decoding)


def _decode(model, batch: torch.Tensor, vocab, beam_size: int, max_length: int, decoding):
    output = model.sample(batch, max_length=max_length, beam_size=beam_size, **(decoding or {}))
    ids, attention = output if isinstance(output, tuple) else (output, None)
    captioned = []
    for row, ids_row in enumerate(ids.tolist()):
        caption = vocab.decode(ids_row)
        words = caption.split()
        maps = attention[row, : len(words)].float().numpy() if attention is not None else None
        captioned.append((caption, words, maps))
    return captioned


# ------------------------------------------------------------------------------ data, GloVe, backbones


def prepare(config: Config):
    """The prepared dataset for `config` (stage 00; reused when already in the work dir)."""
    return prepare_for(config)


def features(config: Config, prepared):
    """The feature store for `config`'s backbone (stage 02; resumed or reused when present, and
    extracted again when it was read from an attached output that is gone: extracting is this
    stage's job)."""
    return features_for(config, prepared, allow_reextract=True)


def data_for(config: Config, progress: bool = True):
    """(prepared dataset, feature store or None in finetune mode), reusing both when present;
    `progress=False` says nothing of either."""
    return prepared_and_features(config, progress=progress)


def describe_store(store) -> str:
    shapes = ", ".join(f"{split} {store.shape(split)[0]:,}" for split in store.splits)
    return (
        f"feature store {store.path}\n  {store.backbone} ({store.weights}) at {store.image_size} px: "
        f"{store.channels} x {store.feature_size} x {store.feature_size} {store.layout} per image;\n"
        f"  images: {shapes}; {store.size_bytes / 1e6:,.1f} MB on disk"
    )


def glove_file(config: Config, vocab) -> Path:
    """The GloVe file `config` names (found, downloaded, or generated in DEMO mode)."""
    return resolve_glove_path(config, vocab)


def glove_matrix(glove_path, vocab, dim: int):
    """(matrix (V, dim), coverage) for the vocabulary: parsed once, then read from the cache."""
    matrix = load_glove_embeddings(glove_path, vocab.word_to_idx, dim, verbose=False)
    return matrix, glove_coverage(glove_path, vocab.word_to_idx, dim)


STOPWORDS = frozenset("a an the of in on at to and with is are is his her its their for by from".split())


def neighbour_table(matrix, vocab, count: int = 6, k: int = 5):
    """The `k` nearest words (cosine) of the `count` most frequent non-stopword vocabulary words."""
    import pandas as pd

    words = [w for w in vocab.idx_to_word if not w.startswith("<") and w not in STOPWORDS][:count]
    index = vocab.word_to_idx
    rows = {
        word: [f"{other} ({cos:.2f})" for other, cos in nearest_neighbours(matrix, index, word, k)]
        for word in words
    }
    return pd.DataFrame.from_dict(rows, orient="index", columns=[f"#{i + 1}" for i in range(k)])


def compare_backbones(names, config: Config, prepared, batches: int = 3):
    """Measured table of `names` at the config's image size on its device (helpers.backbones.
    measure_backbone): images/s of the median timed batch, marked where the batches' times spread
    too far to be a fact (comparisons.timing_text), peak GPU memory ("-" on the CPU) and the size
    of the feature store for this dataset in the config's layout, in a unit that fits it."""
    import pandas as pd

    num_images = sum(len(files) for files in prepared.splits.values())
    device = "cuda" if config.training.device == "cuda" and torch.cuda.is_available() else "cpu"
    batch = 32 if device == "cuda" else 4
    rows = []
    for name in names:
        row = measure_backbone(name, config.image_size, batch_size=batch, batches=batches, device=device)
        memory = row.pop("peak GPU memory (MB)")
        row["images/s"] = timing_text([batch / seconds for seconds in row.pop("batch times (s)")])
        row["peak GPU memory (MB)"] = "-" if memory is None else f"{memory:,}"
        layout = config.data.feature_layout
        per_image = BACKBONES[name].store_bytes(row["image size"], layout)
        row[f"feature store ({layout})"] = size_text(num_images * per_image)
        rows.append(row)
    return pd.DataFrame(rows).set_index("backbone")


def size_text(size_bytes: float) -> str:
    """A size in the unit that fits it, to three digits: 812 kB, 21.6 MB, 3.40 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size_bytes >= scale:
            value = size_bytes / scale
            return f"{value:.{2 if value < 10 else 1 if value < 100 else 0}f} {unit}"
    return f"{size_bytes:.0f} B"


def reference_samples(prepared, split: str = "train", count: int = 6) -> dict[str, Any]:
    """Images of a split with their reference captions, for `figures.show_captions(**samples)`."""
    names = prepared.splits[split][:count]
    references = prepared.references(split)
    return {
        "images": [prepared.image_path(name) for name in names],
        "references": [references[name] for name in names],
        "generated": {},
        "titles": names,
    }


# ----------------------------------------------------------------------------- training and results


class TrainingPaused(RuntimeError):
    """Training paused (time budget) before any epoch finished: no weights to show yet."""


def train(config: Config, prepared, store, resume: bool | None = None, hours_left: float | None = None,
          progress: bool = True):
    """The one training loop (helpers.train.train); resumes from last.pt unless resume=False;
    `progress=False` logs nothing.

    `hours_left` (from `env.hours_left(SESSION_HOURS)`) caps training.max_hours so the session ends
    its run cleanly. A pause before the first epoch ended leaves nothing to show: that stops the
    notebook here with how to continue.
    """
    if hours_left is not None:
        config = copy.deepcopy(config)
        limit = config.training.max_hours
        config.training.max_hours = hours_left if limit is None else min(limit, hours_left)
    result = train_loop(config, prepared=prepared, store=store, resume=resume, progress=progress)
    if result.paused and result.best_epoch is None:
        raise TrainingPaused(
            f"The session's time budget ran out before the first epoch ended; {result.run_dir / 'last.pt'} "
            "is saved. Run this notebook again (on Kaggle: attach this notebook's output) to continue."
        )
    return result


def metrics_frame(results: Mapping[str, Any]):
    """results.json metrics as a table: one row per split and beam size, metrics x 100 under the
    papers' names (BLEU-4, CIDEr), as every table and log of the suite shows them."""
    import pandas as pd

    rows = {
        f"{split} {beam.replace('beam', 'beam ')}": {
            METRIC_LABELS.get(name, name): 100 * value for name, value in metrics.items()
        }
        for split, by_beam in results.get("metrics", {}).items()
        for beam, metrics in sorted(by_beam.items())
    }
    return pd.DataFrame.from_dict(rows, orient="index").round(2)


def attention_samples(result, prepared, store, config: Config, split: str = "test", display_size: int = 320):
    """The image of `split` whose greedy caption scored best and the one that scored worst (CIDEr-D of
    each image, helpers.evaluate.per_image_cider, over the captions in results.json), decoded again
    with their attention, for `figures.show_attention(**sample)`: the crop the CNN saw (shown at
    `display_size` px, so the grid lines up with it), the words and their maps, the caption, a
    reference, a title naming the example and a note on what the maps are."""
    captions = ((result.results or {}).get("captions", {}).get(split) or {}).get("beam1")
    if not captions:
        raise KeyError(f"{result.run_dir}: results.json holds no greedy {split} captions; score them first.")
    references = prepared.references(split)
    scores = per_image_cider({name: references[name] for name in captions}, captions)
    ranked = sorted(scores, key=lambda name: (scores[name], name))
    chosen = [("Best", ranked[-1]), ("Worst", ranked[0])]
    model = result.model
    table = store.features(split)
    rows = torch.from_numpy(np.stack([np.asarray(table[store.index_of(split, name)]) for _, name in chosen]))
    vocab = Vocabulary([model.idx_to_word[i] for i in range(len(model.idx_to_word))])  # the checkpoint's
    decoded = caption_features(model, rows.float(), vocab, 1, config.data.max_caption_length, config.decoding)
    crop = image_transform(store.backbone, display_size)
    samples = []
    for (which, name), (caption, words, maps) in zip(chosen, decoded):
        samples.append({
            "image": crop(load_image(prepared.image_path(name))), "words": words, "attention": maps,
            "caption": caption, "reference": references[name][0],
            "title": f"{which} of {len(scores)} {split} images by CIDEr-D (x 100): {name}, "
                     f"{100 * scores[name]:.1f}",
            "note": attention_note(model, store, maps.shape[1:]),
        })
    return samples


def attention_note(model, store, grid: tuple[int, int]) -> str:
    """What an attention map of `model` shows: the grid it spreads over and, for the Transformer,
    which layer and heads."""
    rows, cols = grid
    where = (f"Attention over the {rows} x {cols} grid of {store.backbone} features ({store.image_size} px "
             f"images: one cell per {store.image_size // rows} px)")
    if getattr(model, "cell_type", "") == "transformer":
        layers, heads = len(model.decoder.layers), model.decoder.num_heads
        return (f"{where}: the cross-attention of the last layer ({layers} of {layers}), averaged over "
                f"its {heads} heads.")
    return (f"{where}: the weights at the step that wrote each word (its previous hidden state's scaled dot "
            "product with each cell, softmaxed).")


def run_summary(result, next_notebook: str) -> str:
    """The line a training notebook ends with: best epoch and its val CIDEr, test CIDEr of each beam
    size scored, minutes of training, and what to run next."""
    best = (result.best_metrics or {}).get("val_CIDEr")
    tests = (result.results or {}).get("metrics", {}).get("test", {})
    scored = ", ".join(
        f"{100 * metrics['CIDEr']:.1f} {'greedy' if beam == 'beam1' else beam.replace('beam', 'beam ')}"
        for beam, metrics in sorted(tests.items()) if "CIDEr" in metrics
    ) or "-"
    paused = "; paused: run this notebook again to finish" if result.paused else ""
    return (
        f"Summary: best epoch {result.best_epoch} of {result.epochs} (val CIDEr "
        f"{'-' if best is None else f'{100 * best:.1f}'}); test CIDEr {scored}; "
        f"{duration_text(result.wall_time_s)} of training{paused}. Next: {next_notebook}."
    )


def best_run(table) -> Path:
    """The run folder with the highest CIDEr in a `tables.results_table`: among the full runs of
    notebooks 03-06 when there are any (the short comparison runs train fewer epochs)."""
    if table is None or len(table) == 0:
        raise FileNotFoundError("No results.json found: run a training notebook (03-06) first.")
    full = table[table["kind"] == FULL] if "kind" in table.columns else table
    rows = full if len(full) else table
    return Path(rows.sort_values("CIDEr", ascending=False).iloc[0]["path"]).parent


def scored_samples(run_dir, count: int = 3, split: str = "test", work_dir=None) -> dict[str, Any]:
    """A few images of the run's `split` with their reference captions beside the captions the run
    was scored with (each beam size, from its results.json), for `figures.show_captions(**samples)`:
    what the table's figures measure. The run folder is read where it is (an attached output too);
    its prepared data is looked up in `work_dir` (this session's; default: the run's own)."""
    config = _run_config(run_dir)
    if work_dir is not None:
        config.data.work_dir = str(work_dir)
    return sample_captions(run_dir, prepare_for(config, progress=False), split, count)


def caption_samples(run_dir, named_images, beam_size: int = 3) -> dict[str, Any]:
    """Caption (file name, PIL image) pairs with the run's best model, greedy and with beam search,
    for `figures.show_captions(**samples)`: each image titled with its file name."""
    names, images = [name for name, _ in named_images], [image for _, image in named_images]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, checkpoint, config = load_run(run_dir, device=device)
    vocab = Vocabulary(checkpoint["vocab"])
    size, length = config.image_size, config.data.max_caption_length
    greedy = caption_images(model, images, vocab, size, 1, length, config.decoding)
    beam = caption_images(model, images, vocab, size, beam_size, length, config.decoding)
    return {
        "images": images,
        "references": [[] for _ in images],
        "generated": {"greedy": [c for c, _, _ in greedy], f"beam {beam_size}": [c for c, _, _ in beam]},
        "titles": names,
    }


def caption_uploads(run_dir, beam_size: int = 3):
    """What `widgets.upload_widget` does with uploaded images: caption them with the run's best model,
    print each file name with its beam-search caption, and show them captioned under their names."""
    def caption(named_images) -> None:
        samples = caption_samples(run_dir, named_images, beam_size=beam_size)
        for name, text in zip(samples["titles"], samples["generated"][f"beam {beam_size}"]):
            print(f"{name}: {text}")
        show_captions(**samples)

    return caption


def _run_config(run_dir) -> Config:
    results = Path(run_dir) / "results.json"
    return config_from_dict(json.loads(results.read_text(encoding="utf-8"))["config"], origin=str(results))


# The word-vector choices the course compares: label -> widget choices.
EMBEDDING_VARIANTS = {
    "random": {"use_glove": False},
    "GloVe, frozen": {"use_glove": True, "freeze": True},
    "GloVe, trainable": {"use_glove": True, "freeze": False},
}


def compare_decoding(
    names, params: Mapping[str, Any], env, epochs: int = 2, decoder: str = "LSTM"
) -> Comparison:
    """Caption quality per backbone: a short run of the same decoder on each backbone's features
    (extracted first where missing), scored greedily on the val split."""
    variants = {name: {"backbone": name} for name in names}
    return _compare_runs(variants, "backbone", params, env, epochs, decoder)


def compare_embeddings(
    params: Mapping[str, Any], env, epochs: int = 2, decoder: str = "LSTM", **choices: Any
) -> Comparison:
    """Caption quality per word-vector choice (random, GloVe frozen, GloVe trainable): the same short
    run of one decoder on the same features, scored greedily on the val split. `choices` (e.g. the
    dataset widget's) apply to every run."""
    variants = {label: {**choices, **variant} for label, variant in EMBEDDING_VARIANTS.items()}
    return _compare_runs(variants, "embeddings", params, env, epochs, decoder)


def _short_config(choices: Mapping[str, Any], params, env, epochs: int, decoder: str) -> Config:
    """A comparison run's config: run folders named by their choices like any run, kept apart from
    the full runs (below <work dir>/comparisons), scored greedily on test for notebook 07."""
    short = [
        f"training.epochs={epochs}",
        f"training.run_dir={Path(env.work_dir) / COMPARISONS_DIR}",
        "training.eval_splits=[test]",  # greedy test scores: notebook 07 sets them side by side
        "training.eval_beam_sizes=[1]",
        "training.meteor=false",
        "training.patience=null",
    ]
    overrides = [*(params.get("OVERRIDES") or []), *short]
    return stage_config(decoder, {**params, "OVERRIDES": overrides}, env, **choices)


@contextlib.contextmanager
def _told_on_failure():
    """Keep what the code inside prints to itself, and print it only when that code fails."""
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said):
            yield
    except BaseException:
        print(said.getvalue(), end="")
        raise


def _short_run(name: str, config: Config) -> tuple[ShortRun, Any]:
    """Train one variant quietly under one progress line, then decode the val split with its best
    model and score each image: (the ShortRun, the prepared dataset). Features still to extract show
    their own progress line (minutes on a real dataset); saturated ones (measured, `saturation_note`)
    are the run's note, in place of helpers.features' warning."""
    with _told_on_failure(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Feature values reached", category=UserWarning)
        prepared, store = data_for(config)  # its lines kept back; an extraction's progress line shown
        line = ProgressLine(1, f"{name}: training {config.training.epochs} epochs", unit="run")
        result = train(config, prepared, store, progress=False)
        captions = decode_split(
            result.model, store if store is not None else prepared, "val",
            max_length=config.data.max_caption_length, batch_size=config.batch_size,
            max_images=config.training.val_max_images,
            image_size=config.image_size, decoding=config.decoding,
        )  # fmt: skip
    references = prepared.references("val")
    per_image = per_image_cider({image: references[image] for image in captions}, captions)
    note = saturation_note(store)
    run = ShortRun(name, result.history, per_image, captions, result.best_epoch, result.wall_time_s,
                   result.run_dir.name, note)
    distinct = len(set(captions.values()))
    line.close(f"{name}: {result.epochs} epochs in {duration_text(result.wall_time_s)}, best epoch "
               f"{result.best_epoch}, val CIDEr {100 * run.mean_cider:.1f}, {distinct} distinct captions "
               f"for {len(captions)} images" + ("; see its note in the verdict" if note else ""))
    return run, prepared


def _compare_runs(variants, label: str, params, env, epochs: int, decoder: str) -> Comparison:
    """One short run per variant (`{name: widget choices}`), each shown as one progress line, for the
    curves, table and verdict of a Comparison."""
    runs, prepared = [], None
    for name, choices in variants.items():
        config = _short_config(choices, params, env, epochs, decoder)
        run, prepared = _short_run(name, config)
        runs.append(run)
    return Comparison(label, runs, per_word(prepared) if prepared is not None else None)
