"""The one config schema: YAML files (decoder configs, presets, overlays) plus `key=value` overrides.

A config is built from one or more YAML files merged in order, then command-line style overrides:

    load_config("configs/LSTM.yaml")
    load_config(["LSTM", "kaggle_small_gpu"], ["training.epochs=3", "model.hidden_dim=256"])

Names without a path resolve to `configs/<name>.yaml`, then `configs/presets/<name>.yaml`. Presets and
`configs/demo.yaml` are partial: they only set the keys they name, merged over a decoder config. The
result is a validated `Config` (dataclasses), printable, and serialisable with `config.to_dict()`.
Every problem raises `ConfigError` naming the file (or override), the dotted key, the bad value and
the valid choices. The module reads only YAML: no torch, no other helpers module but the plain facts
of helpers.choices and the suite's file locations. `helpers.glove.load_word_vectors(config, vocab)` then
reads the GloVe file a config names and `helpers.models.build_model` builds the model it describes.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from helpers.choices import (
    BACKBONE_SPECS,
    BACKBONE_STRIDE,
    CELL_TYPE_ALIASES,
    CELL_TYPES,
    DEFAULT_BACKBONE,
    DEFAULT_FEATURE_LAYOUT,
    FEATURE_LAYOUTS,
    JPEG_DECODERS,
    canonical_cell_type,
)
from helpers.files import suite_file

CONFIG_DIR = suite_file("configs")
PRESET_DIR = CONFIG_DIR / "presets"

TRAINING_MODES = ("features", "finetune")
SCHEDULES = ("cosine", "linear", "constant")
SPLITS = ("karpathy", "seeded")
METRIC_TOKENIZERS = ("auto", "ptb", "project")  # helpers.evaluate.resolve_tokenizer
DEVICES = ("auto", "cpu", "cuda", "mps")
DATA_SPLITS = ("train", "val", "test")  # helpers.prepare.SPLITS
VOCAB_SOURCES = ("train", "all")  # helpers.prepare.VOCAB_SOURCES
SCST_BASELINES = ("greedy", "mean")  # helpers.train's SCST phase
DEFAULT_DROPOUT = {"recurrent": 0.5, "transformer": 0.1}  # model.dropout when null


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says where and how to fix it."""


@dataclass
class ModelConfig:
    """The decoder and the CNN whose features it reads (the original project's `model:` section)."""

    # The decoder: rnn | lstm | attn | transformer (aliases: vanilla_rnn, attention). Was model.cell_type,
    # which is still read (RENAMED_KEYS)
    decoder: str = "lstm"
    wordvec_dim: int = 300  # word vector size; must equal the GloVe file's dimension when use_glove
    hidden_dim: int = 512  # the decoder's hidden state size (the transformer's d_model)
    backbone: str = DEFAULT_BACKBONE  # the CNN: resnet50|resnet101|regnet_x_400mf|convnext_tiny|swin_t
    # Channels of the CNN's feature map; inferred from the backbone when omitted. Was model.attn_dim, which
    # is still read (RENAMED_KEYS)
    feature_channels: int | None = None
    pretrained_backbone: bool = True  # ImageNet weights for the CNN (False: random, for tests and demos)
    num_heads: int = 4  # transformer only; must divide hidden_dim (the transformer's d_model)
    num_layers: int = 2  # transformer only
    # Dropout; null: the decoder's own default, 0.5 for rnn/lstm/attn (on the hidden states before the
    # output layer, as Show, Attend and Tell) and 0.1 inside the transformer's layers.
    dropout: float | None = None


@dataclass
class EmbeddingsConfig:
    """Word embeddings (the original project's `embeddings:` section)."""

    use_glove: bool = False  # start the word vectors from GloVe (False: random)
    glove_path: str | None = "glove.6B.300d.txt"  # a GloVe text file, a bare glove.6B name, or "demo"
    freeze: bool = False  # keep the word vectors fixed while training


@dataclass
class DataConfig:
    """Which dataset, where, and how its captions are prepared (see helpers.prepare)."""

    dataset: str = "flickr8k"  # flickr8k | flickr30k | coco | demo (see helpers.prepare)
    data_dir: str | None = None  # the dataset folder; None: the attached Kaggle dataset, else kagglehub
    work_dir: str = "work"  # prepared data and feature stores live here
    # Words seen at least (>=) this many times in the vocab_from captions are the vocabulary; the rest
    # become <UNK>. sgrvinod's tutorial keeps words seen more than (>) 5 times: min_word_count: 6.
    min_word_count: int = 5
    # Whose captions the vocabulary counts: train (the training split's) | all (every split's, as
    # neuraltalk2 and sgrvinod's tutorial do; the references are never changed by it).
    vocab_from: str = "train"
    max_caption_length: int = 20  # words kept per caption (longer ones are cut)
    image_size: int | None = None  # CNN input side in pixels; None: the backbone's own size (224)
    feature_layout: str = DEFAULT_FEATURE_LAYOUT  # feature store: uint8 (8-bit, COCO fits 20 GB) | float16
    # How feature extraction decodes the images: auto (torchvision's libjpeg-turbo in the loader workers
    # on every device) | torchvision | pil | nvjpeg (on the GPU; pixels differ by a few grey levels)
    jpeg_decoder: str = "auto"
    split: str | None = None  # karpathy (required) | seeded | None: Karpathy when it can be had, else seeded
    split_seed: int = 0  # seeded train/val/test split when no Karpathy split exists (not training.seed)
    # Images that may fail to decode (feature extraction, fine-tuning) before the run stops with their
    # list: a fraction of all images (below 1) or a count (1 or more); null: no limit.
    max_bad_images: float | None = 0.01


@dataclass
class ScstConfig:
    """Self-critical sequence training after the cross-entropy epochs: CIDEr-D rewards (see helpers.train)."""

    # Run an SCST phase after the cross-entropy epochs (its run folder is then another, named '-scst-')
    enabled: bool = False
    epochs: int = 5  # SCST epochs (passes over the training images) after the cross-entropy ones
    lr: float = 5e-5  # the SCST phase's learning rate (constant; AdamW restarted from the best XE weights)
    samples_per_image: int = 5  # captions sampled per image and step; images per step: batch_size / this
    # What a sample's reward is compared with: greedy (the model's greedy caption, Rennie et al.) | mean
    # (the mean reward of the image's other samples; needs samples_per_image >= 2)
    baseline: str = "greedy"


@dataclass
class TrainingConfig:
    """The training loop's settings (see helpers.train)."""

    epochs: int = 10  # passes over the training captions
    lr: float = 1e-3  # peak learning rate (AdamW), reached after the warmup
    weight_decay: float = 1e-4  # AdamW weight decay (on matrices only)
    warmup_steps: int | None = None  # linear warmup steps; None: warmup_fraction of all steps
    warmup_fraction: float = 0.05  # linear warmup over this fraction of all steps
    schedule: str = "cosine"  # decay after warmup: cosine | linear | constant
    min_lr_ratio: float = 0.01  # final learning rate as a fraction of lr
    grad_clip: float | None = 5.0  # max gradient norm; None: no clipping
    # Cross-entropy target: this much of the mass spread over all words (0.1 as the original project).
    label_smoothing: float = 0.1
    alpha_c: float = 1.0  # attn only: weight of Show-Attend-Tell's doubly-stochastic attention penalty
    patience: int | None = 3  # epochs without a better val CIDEr before stopping; None: never stop early
    mode: str = "features"  # features: frozen CNN on the feature store; finetune: images end to end
    # finetune mode: how many of the CNN's last layers train (ImageEncoder.trainable_layers: a ResNet's
    # layer1..layer4, RegNet's blocks, ConvNeXt's and Swin's stages). Was finetune_stages, still read
    finetune_layers: int = 1
    encoder_lr_scale: float = 0.1  # finetune mode: the CNN's learning rate as a fraction of lr
    seed: int = 0  # seeds weights, shuffling and dropout (a CPU run repeats exactly)
    num_workers: int | None = None  # DataLoader workers; None: helpers.images.default_num_workers()
    amp: bool = True  # fp16 autocast + gradient scaler on CUDA (ignored on the CPU)
    # Where training runs: auto (cuda, else mps where the decoder runs on it, else cpu) | cpu | cuda | mps
    device: str = "auto"
    # How many devices train (DistributedDataParallel, one process each; batch_size stays the global
    # batch, shared between them): auto = every visible GPU (1 on the CPU), or a number (on the CPU:
    # that many gloo processes)
    devices: str = "auto"
    checkpoint_every_steps: int = 0  # also save last.pt every N steps (0: only at epoch ends)
    max_hours: float | None = None  # stop cleanly after this long (last.pt saved; run again to go on)
    val_max_images: int | None = None  # validate on the first N val images (None: all)
    eval_splits: list[str] = field(default_factory=lambda: ["val", "test"])  # splits scored into results.json
    eval_beam_sizes: list[int] = field(default_factory=lambda: [1, 3])  # decodings scored (1: greedy)
    # Beam length penalty: finalists rank by log-probability / length ** this (ruotianluo's avg form; 0:
    # the summed log-probability, as sgrvinod's and ruotianluo's default beam searches; 1: the mean per
    # word). Above 0 favours longer captions; on 600 fresh demo scenes (training seeds 0-2) 0.5 lowered
    # the beam-3 CIDEr-D of the four decoders in 10 of 12 cells (by up to 0.12; one tie, one +0.02); no
    # real-data run has measured it yet.
    eval_length_penalty: float = 0.0
    eval_no_repeat_ngram_size: int = 3  # decoding never repeats an n-gram of this size (0: off)
    eval_mask_unk: bool = True  # decoding never emits <UNK>
    # Decoding ends a caption (<END>) only after this many words (0: any time, as the course module's
    # greedy). Under summed log-probabilities a wide beam otherwise ends on an empty caption: a 3-epoch
    # demo LSTM at beam 30 left 16 of 30 val captions empty (CIDEr-D 91.4; 0 empty and 173.5 with 3).
    # 0.5% of Flickr8k's 40,455 reference captions have 3 words or fewer.
    eval_min_length: int = 3
    meteor: bool = True  # also METEOR in results.json when Java is available (its JVM takes ~10 s to start)
    metric_tokenizer: str = "auto"  # results.json scores: ptb (Java, as papers) | project | auto: ptb if Java
    run_dir: str = "runs"  # runs are written to <run_dir>/<run_name>/
    # None: readable choices plus a hash of the run's identity (see run_name); a name of your own gets
    # "-scst" added with training.scst.enabled, so the cross-entropy run it continues keeps the plain name
    run_name: str | None = None
    scst: ScstConfig = field(default_factory=ScstConfig)  # the self-critical phase (training.scst.*)


@dataclass
class Config:
    """A whole, validated experiment configuration."""

    name: str = "experiment"  # set by load_config to the first file's stem (LSTM, Transformer...)
    batch_size: int | None = None  # captions per training step; None: the backbone's recommended batch
    model: ModelConfig = field(default_factory=ModelConfig)
    embeddings: EmbeddingsConfig = field(default_factory=EmbeddingsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    sources: list[str] = field(default_factory=list)  # the files and overrides it was built from (read-only)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (json/yaml serialisable)."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def __str__(self) -> str:
        return self.to_yaml()

    @property
    def run_name(self) -> str:
        """training.run_name (plus "-scst" for an SCST run: the cross-entropy run it starts from keeps
        the plain name), else the choices a reader compares plus a hash of everything else that
        changes what is trained, e.g. `LSTM-resnet50-glove-frozen-224-3f9a2c`: two configs share a
        run folder exactly when one may resume the other's checkpoint."""
        if self.training.run_name:
            return self.training.run_name + ("-scst" if self.training.scst.enabled else "")
        model, embeddings = self.model, self.embeddings
        parts = [self.name, model.backbone if model.pretrained_backbone else f"{model.backbone}_untrained"]
        parts += ["glove" if embeddings.use_glove else "random"] + (["frozen"] if embeddings.freeze else [])
        parts += [str(self.image_size)] + (["finetune"] if self.training.mode == "finetune" else [])
        parts += ["scst"] if self.training.scst.enabled else []
        hashed = {HASHED_AS.get(key, key): value for key, value in run_identity(self).items()}
        digest = hashlib.sha256(json.dumps(hashed, sort_keys=True, default=str).encode())
        return "-".join([*parts, digest.hexdigest()[:6]])

    @property
    def run_path(self) -> Path:
        return Path(self.training.run_dir) / self.run_name

    @property
    def decoding(self) -> dict[str, Any]:
        """The decoding options (training.eval_*) as keyword arguments of a model's sample()."""
        return {
            "alpha": self.training.eval_length_penalty,
            "no_repeat_ngram_size": self.training.eval_no_repeat_ngram_size,
            "mask_unk": self.training.eval_mask_unk,
            "min_length": self.training.eval_min_length,
        }

    @property
    def image_size(self) -> int:
        return self.data.image_size or BACKBONE_SPECS[self.model.backbone].image_size


# Settings that may change between sessions without changing what a run trains: where things live (a
# run folder brought in from an attached Kaggle output), how long it trains and how it is scored, the
# device. Every other setting is part of the run's identity: it names the run folder (Config.run_name)
# and must match for a run to be resumed (helpers.train). The SCST settings belong to it only when SCST
# is on, so a cross-entropy run keeps its folder whatever they say.
RUN_FREE_KEYS = frozenset(
    {
        "name",
        "sources",
        "data.work_dir",
        "data.data_dir",
        "data.jpeg_decoder",
        *(
            f"training.{key}"
            for key in (
                "epochs",
                "patience",
                "num_workers",
                "eval_splits",
                "eval_beam_sizes",
                "eval_length_penalty",
                "eval_no_repeat_ngram_size",
                "eval_mask_unk",
                "eval_min_length",
                "device",
                "devices",
                "checkpoint_every_steps",
                "max_hours",
                "meteor",
                "metric_tokenizer",
                "val_max_images",
                "run_dir",
                "run_name",
                "scst.epochs",
            )
        ),
    }
)


def run_identity(config: Config) -> dict[str, Any]:
    """Dotted key -> value of every setting that changes what a run trains (all but RUN_FREE_KEYS),
    with inferred values filled in (the image size a backbone uses when data.image_size is null)."""
    identity = {key: value for key, value in _flatten(config.to_dict()) if key not in RUN_FREE_KEYS}
    if not config.training.scst.enabled:
        identity = {key: value for key, value in identity.items() if not key.startswith("training.scst.")}
    identity["data.image_size"] = config.image_size
    return identity


def config_layers(config: str | Path, presets: Sequence[str | Path] = (), demo: bool = False) -> list:
    """The YAML files of a run in the one order notebooks and the command line merge them: the decoder
    config, then configs/demo.yaml in DEMO mode (generated data and GloVe file, random CNN weights, a
    small CPU-sized model), then the presets (backbone and sizes), so a preset also applies in DEMO
    mode. Explicit parameters and `key=value` overrides come after all files."""
    for preset in presets:
        model = read_yaml(find_config(preset)).get("model") or {}
        if "decoder" in model or "cell_type" in model:
            raise ConfigError(
                f"{find_config(preset)} sets the decoder (model.decoder), so it is a decoder config, not a "
                f"preset: pass it as the config (command line: --config {Path(str(preset)).stem}; notebooks: "
                "the training notebook of that decoder), with presets from configs/presets/ over it."
            )
    return [config, *(["demo"] if demo else []), *presets]


# ---------------------------------------------------------------------------------------------- loading


def find_config(name_or_path: str | Path) -> Path:
    """A config file from a path, or a bare name looked up in configs/ and configs/presets/."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.suffix == "" and path.parent == Path("."):
        for folder in (CONFIG_DIR, PRESET_DIR):
            candidate = folder / f"{path.name}.yaml"
            if candidate.is_file():
                return candidate
    known = sorted(p.stem for folder in (CONFIG_DIR, PRESET_DIR) for p in folder.glob("*.yaml"))
    raise ConfigError(
        f"Config file not found: {name_or_path}. Give a path to a YAML file or one of the names "
        f"{', '.join(known)} (from {CONFIG_DIR} and {PRESET_DIR})."
    )


class _DuplicateKey(Exception):
    """A key given twice in one YAML mapping: (key, its line, the first one's line)."""


class _StrictLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, refusing a key given twice in one mapping: PyYAML keeps the last one
    and drops the first silently (a second `training:` section loses the first one's settings)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKey(key, line, seen[key])
            seen[key] = line
        return super().construct_mapping(node, deep)


def read_yaml(path: Path) -> dict[str, Any]:
    """One YAML file as a mapping (an empty file is an empty mapping); a key given twice is refused."""
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)  # a SafeLoader
    except _DuplicateKey as duplicate:
        key, line, first = duplicate.args
        raise ConfigError(
            f"{path}:{line}: '{key}' is given twice in the same section (first at line {first}); YAML "
            "would keep only the second and silently drop the first one's settings. Merge them into one."
        ) from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, not {type(data).__name__}.")
    return data


def parse_overrides(overrides: Sequence[str] | Mapping[str, Any]) -> list[tuple[str, Any, str]]:
    """`key=value` strings (values parsed as YAML scalars) or a mapping -> (dotted key, value, text)."""
    if isinstance(overrides, Mapping):
        return [(str(key), value, f"{key}={value!r}") for key, value in _flatten(overrides)]
    parsed = []
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(
                f"Override {item!r} is not of the form key=value (for example model.hidden_dim=256)."
            )
        key, _, text = item.partition("=")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        parsed.append((key.strip(), value, item))
    return parsed


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, dotted + ".")
        else:
            yield dotted, value


def load_config(
    path_or_paths: str | Path | Sequence[str | Path], overrides: Sequence[str] | Mapping[str, Any] = ()
) -> Config:
    """Merge YAML files in order, apply overrides, validate; the first file's stem names the config."""
    paths = [path_or_paths] if isinstance(path_or_paths, (str, Path)) else list(path_or_paths)
    if not paths:
        raise ConfigError("load_config needs at least one config file.")
    config = Config()
    files = [find_config(p) for p in paths]
    config.name = files[0].stem
    for path in files:
        for key, value in _flatten(read_yaml(path)):
            _assign(config, key, value, origin=str(path))
        config.sources.append(str(path))
    for key, value, text in parse_overrides(overrides):
        _assign(config, key, value, origin=f"override {text!r}")
        config.sources.append(text)
    validate(config, origin=", ".join(config.sources))
    return config


# Keys that change what is trained, added after runs had been saved without them, with the values that
# reproduce how those runs trained (no label smoothing, no attention penalty; and no dropout in the
# recurrent decoders, which ignored model.dropout then). A stored config that lacks them is read with
# these values, not today's defaults, so resuming such a run compares like with like (helpers.train
# names these keys when the current config differs).
# Keys renamed so that each says one thing: old name -> new name. Configs, overrides and stored configs
# (checkpoints, results.json) that use the old name still load; run folders keep their names, as the
# run name's hash is taken over the old names (HASHED_AS).
RENAMED_KEYS = {
    "model.cell_type": "model.decoder",  # it named the Transformer too
    "model.attn_dim": "model.feature_channels",  # the CNN's channels, not an attention size
    "training.finetune_stages": "training.finetune_layers",  # "stages" are the notebooks'
}
HASHED_AS = {new: old for old, new in RENAMED_KEYS.items()}

KEYS_ADDED_LATER = {"training.label_smoothing": 0.0, "training.alpha_c": 0.0}


def older_run_values(data: Mapping[str, Any]) -> dict[str, Any]:
    """{dotted key: value} a stored config (`Config.to_dict()`) trained with but does not say: empty for
    a config saved with KEYS_ADDED_LATER."""
    present = {key for key, _ in _flatten(data)}
    values = {key: value for key, value in KEYS_ADDED_LATER.items() if key not in present}
    model = data.get("model", {})
    cell_type = canonical_cell_type(str(model.get("decoder", model.get("cell_type", ModelConfig.decoder))))
    if values and cell_type != "transformer":
        values["model.dropout"] = 0.0
    return values


def config_from_dict(data: Mapping[str, Any], origin: str = "checkpoint") -> Config:
    """Rebuild a Config from `Config.to_dict()` output (as stored in checkpoints and results.json);
    without KEYS_ADDED_LATER it gets the values its run was trained with (older_run_values)."""
    data = dict(data)
    sources = list(data.pop("sources", []))
    config = Config()
    for key, value in _flatten(data):
        _assign(config, key, value, origin=origin)
    for key, value in older_run_values(data).items():
        _assign(config, key, value, origin=origin)
    config.sources = sources
    validate(config, origin=origin)
    return config


def config_with(config: Config, changes: Mapping[str, Any]) -> Config:
    """A validated copy of `config` with dotted keys changed, e.g. {"training.devices": "1"}."""
    copy = config_from_dict(config.to_dict(), origin=config.name)
    copy.name, copy.sources = config.name, list(config.sources)
    for key, value in changes.items():
        _assign(copy, key, value, origin=f"{config.name} ({key})")
    return validate(copy, origin=config.name)


# ------------------------------------------------------------------------------------------ assignment


def _assign(config: Config, dotted: str, value: Any, origin: str) -> None:
    """Set one dotted key (a renamed key's old name sets its new one), checking the key exists and the
    value has the field's type."""
    dotted = RENAMED_KEYS.get(dotted, dotted)
    parts = dotted.split(".")
    if parts[0] == "sources":
        raise ConfigError(f"{origin}: 'sources' is filled in by load_config and cannot be set.")
    target: Any = config
    for depth, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(target)}
        where = ".".join(parts[: depth + 1])
        if part not in fields:
            prefix = ".".join(parts[:depth])
            choices = sorted(fields)
            close = difflib.get_close_matches(part, choices, n=1, cutoff=0.6)
            hint = f" Did you mean '{prefix + '.' if prefix else ''}{close[0]}'?" if close else ""
            if not close and depth == 0:  # a section's key at the top level, e.g. epochs
                sections = {name: getattr(target, name) for name in fields}
                homes = [f"{name}.{part}" for name, section in sections.items()
                         if dataclasses.is_dataclass(section) and part in _keys_of(section)]
                hint = f" Did you mean '{homes[0]}'?" if homes else ""
            raise ConfigError(
                f"{origin}: unknown key '{where}'.{hint} Valid keys"
                f"{' in ' + repr(prefix) if prefix else ''}: {', '.join(choices)}."
            )
        hint_type = typing.get_type_hints(type(target))[part]
        is_section = dataclasses.is_dataclass(hint_type)
        last = depth == len(parts) - 1
        if is_section and last:
            if value is None or value == {}:
                return
            raise ConfigError(
                f"{origin}: '{where}' is a section; set its keys instead (for example {where}.<key>=...), "
                f"not the value {value!r}."
            )
        if not is_section:
            if not last:
                raise ConfigError(f"{origin}: '{where}' is a value, not a section; cannot set '{dotted}'.")
            setattr(target, part, _coerce(hint_type, value, where, origin))
            return
        target = getattr(target, part)


def _keys_of(section: Any) -> set[str]:
    """The key names of a config section (a dataclass)."""
    return {item.name for item in dataclasses.fields(section)}


def _type_name(hint: Any) -> str:
    if _optional_inner(hint) is not None:
        return f"{_type_name(_optional_inner(hint))} or null"
    if typing.get_origin(hint) is list:
        plurals = {int: "integers", float: "numbers", bool: "true/false values", str: "strings"}
        item = typing.get_args(hint)[0]
        return "a list of " + plurals.get(item, str(item))
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))


def _optional_inner(hint: Any) -> Any:
    """T for `T | None`, else None."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0]
    return None


def _coerce(hint: Any, value: Any, key: str, origin: str) -> Any:
    """`value` as the field's type, or ConfigError. Accepts '1e-3' (YAML 1.1 reads it as a string)."""
    inner = _optional_inner(hint)
    if inner is not None:
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            return None
        return _coerce(inner, value, key, origin)
    problem = f"{origin}: {key}={value!r} is not valid: expected {_type_name(hint)}"
    if typing.get_origin(hint) is list:
        items = value if isinstance(value, list) else [value] if not isinstance(value, (dict, str)) else None
        if items is None:
            words = isinstance(value, str) and typing.get_args(hint)[0] is str
            example = f"[{', '.join(part.strip() for part in value.split(','))}]" if words else "[1, 3]"
            raise ConfigError(problem + f": write it in brackets, {key}={example}.")
        return [_coerce(typing.get_args(hint)[0], item, key, origin) for item in items]
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(problem + ".")


# ------------------------------------------------------------------------------------------ validation


def _choice_error(origin: str, key: str, value: Any, choices: Iterable[str]) -> ConfigError:
    choices = list(choices)
    close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigError(
        f"{origin}: {key}={value!r} is not valid.{hint} Valid choices: {', '.join(map(repr, choices))}."
    )


def validate(config: Config, origin: str = "config") -> Config:
    """Check choices, ranges and cross-field consistency; fills in inferred values (feature_channels)."""
    _check_choices(config, origin)
    _check_ranges(config, origin)
    _check_consistency(config, origin)
    return config


def _check_choices(config: Config, origin: str) -> None:
    """Names from a fixed list (decoder, backbone, modes...), canonicalised; feature_channels from the
    backbone."""
    model, training, data = config.model, config.training, config.data
    if model.backbone in BACKBONE_SPECS and config.batch_size is None:
        config.batch_size = BACKBONE_SPECS[model.backbone].batch_size
    cell = canonical_cell_type(model.decoder)
    if cell not in CELL_TYPES:
        raise _choice_error(origin, "model.decoder", model.decoder, CELL_TYPES + tuple(CELL_TYPE_ALIASES))
    model.decoder = cell
    if model.dropout is None:
        model.dropout = DEFAULT_DROPOUT["transformer" if cell == "transformer" else "recurrent"]
    if model.backbone not in BACKBONE_SPECS:
        raise _choice_error(origin, "model.backbone", model.backbone, BACKBONE_SPECS)
    channels = BACKBONE_SPECS[model.backbone].out_channels
    if model.feature_channels is None:
        model.feature_channels = channels
    elif model.feature_channels != channels:
        raise ConfigError(
            f"{origin}: model.feature_channels={model.feature_channels} but {model.backbone} outputs "
            f"{channels} channels; remove feature_channels (or the original notes' attn_dim) or set it to "
            f"{channels}."
        )
    if training.mode not in TRAINING_MODES:
        raise _choice_error(origin, "training.mode", training.mode, TRAINING_MODES)
    if training.schedule not in SCHEDULES:
        raise _choice_error(origin, "training.schedule", training.schedule, SCHEDULES)
    if training.metric_tokenizer not in METRIC_TOKENIZERS:
        raise _choice_error(origin, "training.metric_tokenizer", training.metric_tokenizer, METRIC_TOKENIZERS)
    if data.split is not None and data.split not in SPLITS:
        raise _choice_error(origin, "data.split", data.split, SPLITS)
    if data.vocab_from not in VOCAB_SOURCES:
        raise _choice_error(origin, "data.vocab_from", data.vocab_from, VOCAB_SOURCES)
    if data.feature_layout not in FEATURE_LAYOUTS:
        raise _choice_error(origin, "data.feature_layout", data.feature_layout, FEATURE_LAYOUTS)
    if data.jpeg_decoder not in ("auto", *JPEG_DECODERS):
        raise _choice_error(origin, "data.jpeg_decoder", data.jpeg_decoder, ("auto", *JPEG_DECODERS))
    if training.device not in DEVICES and not str(training.device).startswith("cuda:"):
        raise _choice_error(origin, "training.device", training.device, DEVICES)
    if training.scst.baseline not in SCST_BASELINES:
        raise _choice_error(origin, "training.scst.baseline", training.scst.baseline, SCST_BASELINES)
    if training.devices != "auto" and not (training.devices.isdigit() and int(training.devices) >= 1):
        raise ConfigError(
            f"{origin}: training.devices={training.devices!r} is not valid: 'auto' (every visible GPU, "
            "one process on the CPU) or a number of devices >= 1, e.g. training.devices=2."
        )


def _check_ranges(config: Config, origin: str) -> None:
    """Numbers within their ranges: positive sizes and counts, fractions in [0, 1], finite values."""
    model, training, data = config.model, config.training, config.data
    positive = {
        "batch_size": config.batch_size,
        "model.wordvec_dim": model.wordvec_dim,
        "model.hidden_dim": model.hidden_dim,
        "model.num_heads": model.num_heads,
        "model.num_layers": model.num_layers,
        "data.max_caption_length": data.max_caption_length,
        "data.min_word_count": data.min_word_count,
        "training.epochs": training.epochs,
        "training.lr": training.lr,
        "training.finetune_layers": training.finetune_layers,
        "training.scst.epochs": training.scst.epochs,
        "training.scst.lr": training.scst.lr,
        "training.scst.samples_per_image": training.scst.samples_per_image,
    }
    optional_positive = {
        "data.image_size": data.image_size,
        "training.grad_clip": training.grad_clip,
        "training.val_max_images": training.val_max_images,
        "training.warmup_steps": None if training.warmup_steps == 0 else training.warmup_steps,
        "training.patience": training.patience,
        "training.max_hours": training.max_hours,
    }
    for key, value in {**positive, **optional_positive}.items():
        if (key in positive or value is not None) and value <= 0:
            raise ConfigError(f"{origin}: {key}={value} must be positive.")
    if data.max_caption_length < 2:
        raise ConfigError(
            f"{origin}: data.max_caption_length={data.max_caption_length} cuts every caption to one word, "
            "which no caption metric scores above 0; keep at least 2 words (captions run to 10-15 words: "
            "the default 20 keeps them whole)."
        )
    if data.image_size is not None and data.image_size < BACKBONE_STRIDE:
        raise ConfigError(
            f"{origin}: data.image_size={data.image_size} is too small; the CNN needs >= "
            f"{BACKBONE_STRIDE} px."
        )
    for key, value in {
        "training.weight_decay": training.weight_decay,
        "training.checkpoint_every_steps": training.checkpoint_every_steps,
        "training.encoder_lr_scale": training.encoder_lr_scale,
        "training.alpha_c": training.alpha_c,
        "training.eval_length_penalty": training.eval_length_penalty,
        "training.eval_no_repeat_ngram_size": training.eval_no_repeat_ngram_size,
        "training.eval_min_length": training.eval_min_length,
    }.items():
        if value < 0:
            raise ConfigError(f"{origin}: {key}={value} must not be negative.")
    for key, value, upper in (
        ("training.warmup_fraction", training.warmup_fraction, "1)"),
        ("training.min_lr_ratio", training.min_lr_ratio, "1]"),
        ("model.dropout", model.dropout, "1)"),
        ("training.label_smoothing", training.label_smoothing, "1)"),
    ):
        if value < 0 or value > 1 or (value == 1 and upper == "1)"):
            raise ConfigError(f"{origin}: {key}={value} must be in [0, {upper}.")


def _check_consistency(config: Config, origin: str) -> None:
    """Values that must agree with each other, and the lists of splits and beam sizes to score."""
    model, training, data = config.model, config.training, config.data
    if training.eval_min_length > data.max_caption_length:
        raise ConfigError(
            f"{origin}: training.eval_min_length={training.eval_min_length} is above "
            f"data.max_caption_length={data.max_caption_length}: no caption could end. Lower it (default 3)."
        )
    if model.decoder == "transformer" and model.hidden_dim % model.num_heads:
        raise ConfigError(
            f"{origin}: model.hidden_dim={model.hidden_dim} is not divisible by model.num_heads="
            f"{model.num_heads}; the transformer's width (hidden_dim) is split across its heads."
        )
    for key, value in _numbers(config):
        if not math.isfinite(value):
            raise ConfigError(f"{origin}: {key}={value} is not a finite number.")
    if data.max_bad_images is not None and data.max_bad_images < 0:
        raise ConfigError(
            f"{origin}: data.max_bad_images={data.max_bad_images} must be a fraction (0 to 1) or a count "
            ">= 1 of images allowed to fail, or null for no limit."
        )
    for split in training.eval_splits:
        if split not in DATA_SPLITS:
            raise _choice_error(origin, "training.eval_splits", split, DATA_SPLITS)
    bad_beams = [b for b in training.eval_beam_sizes if b < 1]
    if bad_beams:
        raise ConfigError(
            f"{origin}: training.eval_beam_sizes={training.eval_beam_sizes}: beam sizes must be >= 1."
        )
    _check_scst(config, origin)
    if config.embeddings.use_glove and not config.embeddings.glove_path:
        raise ConfigError(f"{origin}: embeddings.use_glove is true but embeddings.glove_path is empty.")


def _check_scst(config: Config, origin: str) -> None:
    """The SCST phase's settings that depend on others: its baseline and its training mode."""
    scst, training = config.training.scst, config.training
    if scst.baseline == "mean" and scst.samples_per_image < 2:
        raise ConfigError(
            f"{origin}: training.scst.baseline=mean compares each sample with the image's other samples, "
            f"so it needs training.scst.samples_per_image >= 2 (it is {scst.samples_per_image}); "
            "raise it or use training.scst.baseline=greedy."
        )
    if scst.enabled and training.mode != "features":
        raise ConfigError(
            f"{origin}: training.scst.enabled=true runs on the feature store, but training.mode="
            f"{training.mode!r}; use training.mode=features for the SCST run (it can start from the same "
            "prepared data)."
        )


def _numbers(section: Any, prefix: str = "") -> Iterable[tuple[str, float]]:
    """(dotted key, value) of every float value in a config section, nested sections included."""
    for item in dataclasses.fields(section):
        value = getattr(section, item.name)
        if dataclasses.is_dataclass(value):
            yield from _numbers(value, f"{prefix}{item.name}.")
        elif isinstance(value, float):
            yield f"{prefix}{item.name}", value


def bad_image_limit(config: Config) -> int | float | None:
    """data.max_bad_images as helpers.images.BadImageReport takes it: a fraction below 1, else a count."""
    value = config.data.max_bad_images
    return value if value is None or value < 1 else int(value)
