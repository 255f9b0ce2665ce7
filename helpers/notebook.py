"""What the notebooks show: the session setup, choice widgets, caption grids, attention maps, curves
and the results table. Notebooks stay a few lines per cell; the logic and its tests live here.

Widgets take their defaults from the notebook's parameters cell, so Run All (and papermill) needs no
clicks; each prints the choice at creation and echoes every change next to the widget. Later cells
read `.value`. Figures are returned (and shown at once inside a notebook: assign the result or end
the line with `;` so Jupyter does not draw it a second time).
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import re
import sys
import textwrap
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from helpers.backbones import BACKBONES
from helpers.deps import check_requirements
from helpers.devices import MIN_COMPUTE_CAPABILITY, capability_supported
from helpers.embeddings import GLOVE_CACHE_ENV
from helpers.evaluate import METRIC_LABELS
from helpers.inputs import input_root
from helpers.progress import in_notebook
from helpers.sources import KAGGLE_HANDLES
from helpers.space import KAGGLE_WORKING
from helpers.suite import MAIN_JOB_WORK_DIR
from helpers.text import NULL

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
OPTION_LABELS = {
    "use_glove": "GloVe word vectors",
    "freeze": "freeze the word vectors",
    "pretrained": "ImageNet weights for the backbone",
    "demo": "demo mode (generated data, CPU-sized)",
    "resume": "resume from the last checkpoint",
}


# ----------------------------------------------------------------------------------------- session


@dataclass(frozen=True)
class Env:
    """Where this session runs and where its files live."""

    on_kaggle: bool
    # training.device: "cuda", "cpu" (also when the GPU is too old for this torch), or "auto" with Apple's
    # GPU, which then trains each decoder on mps where it runs there, else on the CPU (helpers.devices)
    device: str
    gpu_name: str | None
    compute_capability: tuple[int, int] | None
    work_dir: Path  # this stage's outputs (Kaggle keeps /kaggle/working after the session)
    input_dirs: tuple[Path, ...]  # read-only places holding earlier stages' outputs (/kaggle/input)
    started: float = field(default_factory=time.time, compare=False)  # when setup() ran
    place: str = "local"  # "Kaggle", "Colab" or "local": where the notebook runs

    def hours_left(self, session_hours: float | None) -> float | None:
        """What remains of a `session_hours` budget counted from setup() (None: no budget).

        Training gets at least one minute, so a late start still saves a checkpoint and pauses.
        """
        if session_hours is None:
            return None
        left = session_hours - (time.time() - self.started) / 3600
        if left < 1 / 60:
            print(f"The session has used its SESSION_HOURS={session_hours:g}; training gets one minute.")
        return max(left, 1 / 60)

    def summary(self) -> str:
        gpu = (
            f"{self.gpu_name} (sm_{self.compute_capability[0]}{self.compute_capability[1]})"
            if self.compute_capability
            else self.gpu_name or "none"
        )
        inputs = ", ".join(str(p) for p in self.input_dirs) or "none"
        device = "mps where the decoder runs on it, else cpu" if self.device == "auto" else self.device
        return f"{self.place} | device {device} | GPU {gpu} | work dir {self.work_dir} | inputs {inputs}"

    def outputs_note(self) -> str:
        """Where this notebook's outputs go, and what keeps them."""
        if self.on_kaggle:
            return (f"Outputs go to {self.work_dir}: Kaggle keeps them as this notebook's output when the "
                    "session is saved (Save Version).")
        if self.place == "Colab":
            return (f"Outputs go to {self.work_dir}. Colab deletes /content when the runtime ends: to keep "
                    "them, mount Google Drive (from google.colab import drive; "
                    "drive.mount('/content/drive')) and set WORK_DIR = '/content/drive/MyDrive/captioning'.")
        return f"Outputs go to {self.work_dir} (WORK_DIR sets another folder)."


def _gpu() -> tuple[str, str | None, tuple[int, int] | None]:
    """The training.device for this machine, the GPU's name and its compute capability (CUDA's). On
    Apple's GPU "auto": whether mps can train depends on the decoder, which a later cell chooses."""
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.cuda.get_device_name(0), tuple(torch.cuda.get_device_capability(0))
    if torch.backends.mps.is_available():
        return "auto", "Apple GPU (mps)", None
    return "cpu", None, None


def on_colab() -> bool:
    """Whether this kernel runs on Google Colab (its kernel loads google.colab; its runtimes set
    COLAB_RELEASE_TAG, which kagglehub reads too)."""
    return "google.colab" in sys.modules or bool(os.environ.get("COLAB_RELEASE_TAG"))


def setup(
    work_dir: str | Path | None = None,
    *,
    kaggle_input: str | Path | None = None,
    kaggle_working: str | Path = KAGGLE_WORKING,
) -> Env:
    """Check the requirements, detect Kaggle, Colab and the GPU, create the work dir, print a summary
    and where the outputs go.

    A package the suite needs that is missing or too old stops the notebook here, before any work,
    with the fix (helpers.deps; the setup cell's pip call installs them with the helpers wheel).

    On Kaggle (KAGGLE_KERNEL_RUN_TYPE is set) the work dir is /kaggle/working, or a relative
    `work_dir` below it, and the inputs are read from `kaggle_input` (default $KAGGLE_INPUT_DIR, else
    /kaggle/input); elsewhere (a laptop, Colab) `work_dir`, by default the main job's runs/demo/work
    when it exists (helpers.suite.MAIN_JOB_WORK_DIR: its artifacts are reused), else ./work (on
    Colab /content/work). A GPU below compute capability 7.0 (Kaggle's P100) is reported and not used:
    torch's first CUDA operation would fail on it. Apple's GPU (mps) trains each decoder that runs on it.
    """
    check_requirements()  # a missing package is reported now, never after an epoch of training
    on_kaggle = bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE"))
    if on_kaggle:
        base = Path(kaggle_working)
        work = (
            base
            if work_dir is None
            else (Path(work_dir) if Path(work_dir).is_absolute() else base / work_dir)
        )
        inputs = (Path(kaggle_input) if kaggle_input is not None else input_root(),)
    else:
        main_job = work_dir is None and MAIN_JOB_WORK_DIR.is_dir()
        work = MAIN_JOB_WORK_DIR if main_job else Path(work_dir if work_dir is not None else "work").resolve()
        if main_job:
            print(f"Using the main job's work dir {work} (its data, features, runs); WORK_DIR sets another.")
        inputs = ()
    work.mkdir(parents=True, exist_ok=True)
    if on_kaggle:  # ~/.cache is lost with the session; the work dir is saved with the notebook's output
        os.environ.setdefault(GLOVE_CACHE_ENV, str(work / "glove_cache"))

    device, gpu_name, capability = _gpu()
    if capability is not None and not capability_supported(capability):
        device = "cpu"
        message = (
            f"GPU {gpu_name} has compute capability {capability[0]}.{capability[1]}; this torch needs "
            f"{MIN_COMPUTE_CAPABILITY[0]}.{MIN_COMPUTE_CAPABILITY[1]} or newer (Kaggle's P100 no longer "
            "works). Running on the CPU: in Settings > Accelerator pick 'GPU T4 x2' and restart."
        )
        warnings.warn(message, stacklevel=2)
        print(f"WARNING: {message}")
    elif on_kaggle and gpu_name is None:
        print("No GPU in this session: in Settings > Accelerator pick 'GPU T4 x2' (and turn Internet on).")
    place = "Kaggle" if on_kaggle else "Colab" if on_colab() else "local"
    env = Env(on_kaggle, device, gpu_name, capability, work, inputs, place=place)
    print(env.summary())
    print(env.outputs_note())
    return env


# Where a stage's outputs sit below a root: the work dir itself, /kaggle/input/<slug> (before 2025),
# /kaggle/input/notebooks/<owner>/<slug> (since 2025). Bounded, so attached image folders are never walked.
OUTPUT_DEPTHS = ("", "*/", "*/*/", "*/*/*/")


def find_earlier_outputs(name_glob: str, env: Env, include_work_dir: bool = True) -> list[Path]:
    """Every file or folder matching `name_glob` (e.g. 'data/*/manifest.json') in the work dir first,
    then in the input dirs (attached notebook outputs in either Kaggle layout), shallowest first."""
    found: list[Path] = []
    roots = [env.work_dir] if include_work_dir else []
    for root in (*roots, *env.input_dirs):
        if root.is_dir():
            for prefix in OUTPUT_DEPTHS:
                found.extend(match for match in sorted(root.glob(prefix + name_glob)) if match not in found)
    return found


def _show(*things) -> None:
    """Display widgets (with `widget_text` as their plain-text form) or anything else, in a notebook."""
    if in_notebook():
        import ipywidgets
        from IPython.display import display

        for thing in things:
            bundle = thing._repr_mimebundle_() if isinstance(thing, ipywidgets.Widget) else None
            if bundle:
                display({**bundle, "text/plain": widget_text(thing)}, raw=True)
            else:
                display(thing)


def widget_text(widget) -> str:
    """What widgets read as where they do not run (GitHub, static HTML, a notebook not yet trusted):
    each labelled value on a line, instead of ipywidgets' `VBox(children=(Dropdown(...` repr. HTML
    parts (tables, echoes) are left out: the cell prints what they say."""
    children = getattr(widget, "children", None)
    if children is not None:
        return "\n".join(filter(None, (widget_text(child) for child in children)))
    label, value = getattr(widget, "description", ""), getattr(widget, "value", None)
    if not label or type(widget).__name__ in ("HTML", "Output"):
        return ""
    if type(widget).__name__ == "FileUpload":
        return f"[{label}]"
    if isinstance(value, tuple):
        value = ", ".join(map(str, value))
    return f"{label}: {value}"


def _echoing(widget, name: str, describe=repr):
    """Print the choice now, show it next to the widget, and update that echo on every change."""
    import ipywidgets

    def as_html(value) -> str:
        return f"<code>{html.escape(f'{name} = {describe(value)}')}</code>"

    echo = ipywidgets.HTML(as_html(widget.value))
    widget.observe(lambda change: setattr(echo, "value", as_html(change["new"])), "value")
    print(f"{name} = {describe(widget.value)}")
    widget.echo = echo
    return echo


def _registry(registry: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if registry is not None:
        return registry
    return BACKBONES


def feature_map(info, image_size: int | None = None) -> str:
    """'2048 x 7 x 7': the backbone's feature map at `image_size` (default: its own)."""
    side = info.feature_side(image_size)
    return f"{info.out_channels} x {side} x {side}"


def backbone_label(info, image_size: int | None = None) -> str:
    """'resnet50: 25.6 M params, 2048 x 7 x 7 features at 224 px, recommended batch 128'."""
    size = image_size or info.image_size
    return (
        f"{info.name}: {info.parameters / 1e6:.1f} M params, {feature_map(info, size)} features "
        f"at {size} px, recommended batch {info.batch_size}"
    )


def backbone_table(registry: Mapping[str, Any] | None = None):
    """The registry as a pandas DataFrame, one row per backbone."""
    import pandas as pd

    rows = [
        {
            "backbone": info.name,
            "parameters (M)": round(info.parameters / 1e6, 2),
            "GFLOPs": info.gflops,
            "ImageNet top-1 (%)": info.imagenet_top1,
            "channels": info.out_channels,
            "feature map": feature_map(info),
            "store per image (uint8, bytes)": info.store_bytes(layout="uint8"),
            "image size": info.image_size,
            "batch size": info.batch_size,
            "weights": info.weights,
            "notes": info.description,
        }
        for info in _registry(registry).values()
    ]
    return pd.DataFrame(rows).set_index("backbone")


def _check_choices(given: Iterable[str], valid: Sequence[str], what: str) -> None:
    unknown = [name for name in given if name not in valid]
    if unknown:
        raise ValueError(f"Unknown {what} {', '.join(map(repr, unknown))}; choose from {', '.join(valid)}.")


def choose_backbone(
    default: str, registry: Mapping[str, Any] | None = None, image_size: int | None = None, show: bool = True
):
    """A Dropdown of the backbones (each option shows its parameters, its feature map at `image_size`
    and its recommended batch) under an HTML table of the registry. Returns the Dropdown; `.value` is
    the backbone name. `show=False` leaves displaying (and the echo) to the caller."""
    import ipywidgets

    backbones = _registry(registry)
    _check_choices([default], list(backbones), "backbone")
    dropdown = ipywidgets.Dropdown(
        options=[(backbone_label(info, image_size), name) for name, info in backbones.items()],
        value=default,
        description="Backbone",
        layout=ipywidgets.Layout(width="max-content"),
    )
    dropdown.table = ipywidgets.HTML(backbone_table(backbones).to_html())
    if show:
        _show(ipywidgets.VBox([dropdown.table, dropdown, _echoing(dropdown, "BACKBONE")]))
    return dropdown


def choose_backbones(defaults: Sequence[str], registry: Mapping[str, Any] | None = None):
    """A multi-select of backbones (ctrl/shift-click); `.value` is a tuple of names."""
    import ipywidgets

    backbones = _registry(registry)
    defaults = [defaults] if isinstance(defaults, str) else list(defaults)
    _check_choices(defaults, list(backbones), "backbone")
    select = ipywidgets.SelectMultiple(
        options=[(backbone_label(info), name) for name, info in backbones.items()],
        value=tuple(defaults),
        rows=len(backbones),
        description="Backbones",
        layout=ipywidgets.Layout(width="max-content"),
    )
    _show(ipywidgets.VBox([select, _echoing(select, "BACKBONES", lambda value: repr(list(value)))]))
    return select


class Options:
    """Checkboxes for on/off choices; `.value` is {name: bool}, `options[name]` one of them."""

    def __init__(self, flags: Mapping[str, bool], echo: bool = True):
        import ipywidgets

        self.boxes = {
            name: ipywidgets.Checkbox(
                value=bool(flag), description=OPTION_LABELS.get(name, name.replace("_", " ")), indent=False
            )
            for name, flag in flags.items()
        }
        self.echo = ipywidgets.HTML()
        for box in self.boxes.values():
            box.observe(lambda _: self._update_echo(), "value")
        self._update_echo()
        if echo:
            print(self._describe())
        self.widget = ipywidgets.VBox([*self.boxes.values(), *([self.echo] if echo else [])])

    def _describe(self) -> str:
        return ", ".join(f"{name.upper()} = {value}" for name, value in self.value.items())

    def _update_echo(self) -> None:
        self.echo.value = f"<code>{html.escape(self._describe())}</code>"

    @property
    def value(self) -> dict[str, bool]:
        return {name: box.value for name, box in self.boxes.items()}

    def __getitem__(self, name: str) -> bool:
        return self.boxes[name].value


def choose_options(use_glove: bool, freeze: bool, **more: bool) -> Options:
    """Checkboxes for GloVe, freezing and any further flags (e.g. pretrained=True)."""
    options = Options({"use_glove": use_glove, "freeze": freeze, **more})
    _show(options.widget)
    return options


def preset_choices(configs_dir: str | Path | None = None) -> dict[str, str]:
    """Preset name -> a one-line summary (backbone, hidden size, GloVe) from configs/presets/*.yaml."""
    import yaml

    presets_dir = (
        Path(configs_dir) / "presets"
        if configs_dir
        else Path(__file__).resolve().parent.parent / "configs" / "presets"
    )
    choices = {}
    for path in sorted(presets_dir.glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML ({error}).") from None
        model = data.get("model", {})
        glove = "GloVe" if data.get("embeddings", {}).get("use_glove") else "random embeddings"
        choices[path.stem] = (
            f"{path.stem}: {model.get('backbone', '?')}, hidden {model.get('hidden_dim', '?')}, {glove}"
        )
    return choices


NO_PRESET = ""  # the '(none)' entry's value (a None value would show as a blank dropdown)


def choose_preset(
    default: str | None, options: Mapping[str, str] | Sequence[str] | None = None, show: bool = True
):
    """A Dropdown of presets (default: those in configs/presets) plus '(none)'; `.value` is the preset
    name, or NO_PRESET ('') for the decoder config alone."""
    import ipywidgets

    if options is None:
        options = preset_choices()
    labels = dict(options) if isinstance(options, Mapping) else {name: name for name in options}
    if default:
        _check_choices([default], list(labels), "preset")
    dropdown = ipywidgets.Dropdown(
        options=[("(none)", NO_PRESET), *((label, name) for name, label in labels.items())],
        value=default or NO_PRESET,
        description="Preset",
        layout=ipywidgets.Layout(width="max-content"),
    )
    if show:
        _show(ipywidgets.VBox([dropdown, _echoing(dropdown, "PRESET", lambda value: repr(value or None))]))
    return dropdown


class RunChoice:
    """The choices that make a training run, as widgets that follow each other: picking a preset sets
    the backbone and the word-vector boxes to the preset's; every change shows the resulting config
    (run folder, batch, feature map) at once, without running a cell again.

    `make_config(preset, backbone, options)` builds the config (helpers.stages.stage_config);
    `describe(config)` words it. `.config` is the config of the current choices.
    """

    def __init__(self, make_config, describe, preset: str | None, registry: Mapping[str, Any] | None = None):
        import ipywidgets

        self._make_config, self._describe = make_config, describe
        self.preset = choose_preset(preset, show=False)
        base = make_config(self.preset.value or None, None, {})
        self.backbone = choose_backbone(base.model.backbone, registry, base.image_size, show=False)
        self.options = Options(
            {
                "use_glove": base.embeddings.use_glove,
                "freeze": base.embeddings.freeze,
                "pretrained": base.model.pretrained_backbone,
            },
            echo=False,
        )
        self.summary = ipywidgets.HTML()
        self._following = False
        self.preset.observe(self._follow_preset, "value")
        for widget in (self.backbone, *self.options.boxes.values()):
            widget.observe(lambda _: self._refresh(), "value")
        text = self._refresh()
        print(text)
        widgets = [self.backbone.table, self.preset, self.backbone, self.options.widget, self.summary]
        _show(ipywidgets.VBox(widgets))

    @property
    def config(self):
        return self._make_config(self.preset.value or None, self.backbone.value, self.options.value)

    def _follow_preset(self, change) -> None:
        base = self._make_config(change["new"] or None, None, {})
        self._following = True  # one refresh after all widgets moved, not one per widget
        try:
            self.backbone.value = base.model.backbone
            self.options.boxes["use_glove"].value = base.embeddings.use_glove
            self.options.boxes["freeze"].value = base.embeddings.freeze
            self.options.boxes["pretrained"].value = base.model.pretrained_backbone
        finally:
            self._following = False
        self._refresh()

    def _refresh(self) -> str:
        if self._following:
            return ""
        try:
            text = self._describe(self.config)
        except ValueError as error:  # ConfigError: a combination the config refuses, said where it shows
            text = f"not usable: {error}"
        self.summary.value = f"<pre>{html.escape(text)}</pre>"
        return text


def choose_dataset(default: str):
    """A Dropdown of the datasets prepare_dataset knows (with their Kaggle handles) plus the demo."""
    import ipywidgets

    labels = {name: f"{name} ({handle})" for name, handle in KAGGLE_HANDLES.items()}
    labels["demo"] = "demo (generated shapes, no download)"
    _check_choices([default], list(labels), "dataset")
    dropdown = ipywidgets.Dropdown(
        options=[(label, name) for name, label in labels.items()],
        value=default,
        description="Dataset",
        layout=ipywidgets.Layout(width="max-content"),
    )
    _show(ipywidgets.VBox([dropdown, _echoing(dropdown, "DATASET")]))
    return dropdown


def upload_widget(on_upload=None):
    """A FileUpload for 'caption your own image' (its button shows how many files it holds). Each
    upload calls `on_upload([(file name, RGB PIL image), ...])` at once, its output shown under the
    button (e.g. helpers.stages.caption_uploads); `uploaded_images(widget)` reads it later too."""
    import ipywidgets

    upload = ipywidgets.FileUpload(
        accept="image/*", multiple=True, description="Upload images", layout=ipywidgets.Layout(width="auto")
    )
    upload.output = ipywidgets.Output()

    def handle(change) -> None:
        if not change["new"] or on_upload is None:
            return
        upload.output.clear_output(wait=True)
        with upload.output:
            try:
                on_upload(uploaded_images(change["new"]))
            except Exception as error:  # a widget callback's error is otherwise lost in the server log
                print(f"{type(error).__name__}: {error}")

    upload.observe(handle, "value")
    _show(ipywidgets.VBox([upload, upload.output]))
    return upload


def uploaded_images(upload) -> list[tuple[str, Any]]:
    """(file name, RGB PIL image) for each uploaded file. Accepts the widget or its `.value` in
    ipywidgets 8 form (a tuple of dicts with name and content) or 7 form ({name: {'content': ...}})."""
    from PIL import Image, UnidentifiedImageError

    value = getattr(upload, "value", upload)
    if isinstance(value, Mapping):
        entries = [(name, item["content"]) for name, item in value.items()]
    else:
        entries = [(item["name"], item["content"]) for item in value]
    images = []
    for name, content in entries:
        try:
            image = Image.open(io.BytesIO(bytes(content)))
            image.load()
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"Uploaded file {name!r} is not a readable image ({error}).") from None
        images.append((name, image.convert("RGB")))
    return images


# ----------------------------------------------------------------------------------------- figures


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


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: line {error.lineno}: broken JSON ({error.msg}).") from None


def _flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in record.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}_"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def plot_history(history: Sequence[Mapping[str, Any]] | str | Path):
    """Loss curves (left) and validation BLEU-4 / CIDEr / METEOR / ROUGE-L x 100 (right, as papers and
    the results table print them) per epoch, from a history list, a history.json, or a results.json
    holding 'history'."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if isinstance(history, (str, os.PathLike)):
        source = str(history)
        history = _read_json(Path(history))
        if isinstance(history, Mapping):
            history = history.get("history", [])
    else:
        source = "history"
    records = [_flatten(record) for record in history]
    if not records:
        raise ValueError(f"{source}: no epochs recorded yet.")
    epochs = [record.get("epoch", index + 1) for index, record in enumerate(records)]
    keys = list(
        dict.fromkeys(key for record in records for key, value in record.items() if _is_number(value))
    )
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


# ----------------------------------------------------------------------------------------- results


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
    results = _read_json(path)
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
        "train_time_min": wall_time / 60 if _is_number(wall_time) else np.nan,
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
                if column and _is_number(value):
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
    _show(pairs)


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
