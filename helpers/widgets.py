"""The notebooks' choice widgets: backbone, preset, word-vector options and dataset pickers, the run
choice whose widgets follow each other, and the image upload for "caption your own image".

Widgets take their defaults from the notebook's parameters cell, so Run All (and papermill) needs no
clicks; each prints the choice at creation and echoes every change next to the widget. Later cells
read `.value`. Where widgets do not run (GitHub, static HTML) `widget_text` is their plain-text form.
`display_in_notebook` displays them, or anything else, inside a notebook.
"""

from __future__ import annotations

import html
import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from helpers.backbones import BACKBONES
from helpers.progress import in_notebook
from helpers.sources import KAGGLE_HANDLES

OPTION_LABELS = {
    "use_glove": "GloVe word vectors",
    "freeze": "freeze the word vectors",
    "pretrained": "ImageNet weights for the backbone",
    "demo": "demo mode (generated data, CPU-sized)",
    "resume": "resume from the last checkpoint",
}


def display_in_notebook(*things) -> None:
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
        display_in_notebook(ipywidgets.VBox([dropdown.table, dropdown, _echoing(dropdown, "BACKBONE")]))
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
    echo = _echoing(select, "BACKBONES", lambda value: repr(list(value)))
    display_in_notebook(ipywidgets.VBox([select, echo]))
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
    display_in_notebook(options.widget)
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
        echo = _echoing(dropdown, "PRESET", lambda value: repr(value or None))
        display_in_notebook(ipywidgets.VBox([dropdown, echo]))
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
        display_in_notebook(ipywidgets.VBox(widgets))

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
    display_in_notebook(ipywidgets.VBox([dropdown, _echoing(dropdown, "DATASET")]))
    return dropdown


def upload_widget(on_upload=None):
    """A FileUpload for 'caption your own image' (its button shows how many files it holds), after a
    printed line that says what it does and that it needs a running notebook (where widgets do not
    run, that line is all a reader sees). Each upload calls `on_upload([(file name, RGB PIL image),
    ...])` at once, its output shown under the button (e.g. helpers.stages.caption_uploads);
    `uploaded_images(widget)` reads it later too."""
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
    print(f"[{upload.description}] below: pick image files; each is captioned under the button at once. "
          "The button needs this notebook running: a saved copy (GitHub, HTML) shows no button.")
    display_in_notebook(ipywidgets.VBox([upload, upload.output]))
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
