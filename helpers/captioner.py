"""A trained captioner as one self-contained model folder, and captioning with it.

`python -m helpers.export RUN_DIR OUT_DIR` (helpers.export) writes the folder; this module reads it:

    from helpers.captioner import Captioner
    captioner = Captioner.load("my-model")          # a folder, or a Kaggle Model handle
    captioner.caption(["a.jpg", "b.jpg"], beam_size=3)

The folder (format `MODEL_FORMAT`, stated in `captioner.json`) holds the decoder's weights as
safetensors (`decoder.safetensors`; a fine-tuned CNN's in `cnn.safetensors`; a frozen torchvision CNN
is named with its weights and rebuilt), the config (`config.json`, `Config.to_dict()`), the vocabulary
(`vocab.json`), the decoding options (`decoding.json`) and a model card (`README.md`). Nothing else is
read: no prepared data, feature store or GloVe file. A Kaggle Model attached to a notebook is read in
place from `/kaggle/input` (both mount layouts, see helpers.inputs); elsewhere a handle is downloaded
with kagglehub.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2.functional import pil_to_tensor

from helpers.backbones import image_transform
from helpers.checkpoints import CheckpointError, load_model_state, rebuild_frozen_encoder
from helpers.config import Config, config_from_dict
from helpers.images import BadImage, BadImageError, load_image_tensor
from helpers.inputs import input_root
from helpers.models import build_model
from helpers.text import END, NULL, START, Vocabulary, caption_ids

MODEL_FORMAT = "captioning-helpers/captioner"
MODEL_FORMAT_VERSION = 1  # raise when the folder's layout changes; add the reader of the older one
MANIFEST = "captioner.json"
DECODER_WEIGHTS = "decoder.safetensors"
CNN_WEIGHTS = "cnn.safetensors"
CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"
DECODING_FILE = "decoding.json"
CARD_FILE = "README.md"
DEFAULT_BEAM_SIZE = 3
KAGGLE_FRAMEWORK = "pyTorch"  # the framework of the Kaggle Models this suite uploads
# owner/model-slug/framework/variation[/version]: a Kaggle Model handle
HANDLE_PATTERN = re.compile(r"^[\w.-]+/[\w.-]+/[\w.-]+/[\w.-]+(/\d+)?$")
# What other folders and files hold, to say what was passed instead of a model folder.
RUN_FOLDER_FILES = ("best.pt", "last.pt", "history.json", "results.json")
FOREIGN_MARKERS = {
    "pytorch_model.bin": "a Hugging Face transformers model",
    "model.safetensors": "a Hugging Face model (model.safetensors)",
    "tokenizer.json": "a Hugging Face tokenizer",
    "saved_model.pb": "a TensorFlow SavedModel",
    "model.onnx": "an ONNX model",
    "kernel-metadata.json": "a Kaggle notebook folder",
    "dataset-metadata.json": "a Kaggle dataset folder",
}

__all__ = ["MODEL_FORMAT", "Caption", "Captioner", "NotACaptionerError", "find_attached_model",
           "resolve_model"]


class NotACaptionerError(CheckpointError):
    """What was passed as a model is something else (a run folder, a checkpoint, another model type),
    or a model folder this package cannot read; the message says what it is and what to pass."""


@dataclass(frozen=True)
class Caption:
    """One image's caption with its words and, for attention decoders, the attention map of each word
    (len(words), h, w) on the CPU (None for decoders without attention)."""

    text: str
    words: list[str]
    attention: Tensor | None


# ------------------------------------------------------------------------------------ finding the folder


def find_attached_model(handle: str, root: str | os.PathLike | None = None) -> Path | None:
    """The folder of a Kaggle Model attached to this notebook, read in place: `handle` is
    `owner/model-slug/framework/variation[/version]`; Kaggle mounts it at `<model-slug>/<framework>/
    <variation>/<version>/` below the input root, or `models/<owner>/<model-slug>/...` (the framework
    lower-cased). Without a version the highest one attached. None when not attached."""
    owner, slug, framework, variation, *version = handle.strip("/").split("/")
    root = Path(root or input_root())
    for base in (root / slug, root / "models" / owner / slug):
        for framework_dir in dict.fromkeys((framework.lower(), framework)):
            folder = base / framework_dir / variation
            if version:
                candidates = [folder / version[0]]
            else:
                found = folder.iterdir() if folder.is_dir() else ()
                candidates = sorted((p for p in found if p.name.isdigit()), key=lambda p: -int(p.name))
            for candidate in candidates:
                if (candidate / MANIFEST).is_file():
                    return candidate
    return None


def _download(handle: str) -> Path:
    """A Kaggle Model fetched with kagglehub (Internet needed); errors say how to attach it instead."""
    try:
        import kagglehub

        return Path(kagglehub.model_download(handle))
    except Exception as error:  # no network, no such model, no credentials: one message
        raise NotACaptionerError(
            f"Kaggle Model {handle} is not attached here ({input_root()}) and could not be downloaded "
            f"({type(error).__name__}: {error}). On Kaggle: Add Input -> Models -> {handle.split('/')[1]}, "
            "or turn Internet on; elsewhere: check the network and your Kaggle credentials, or pass the "
            "model folder (python -m helpers.export RUN_DIR OUT_DIR writes one)."
        ) from None


def resolve_model(source: str | os.PathLike) -> Path:
    """The model folder `source` names: a folder holding captioner.json (or a Kaggle model tree above
    exactly one), a Kaggle Model handle (attached, else downloaded); anything else is refused with
    what it is and what to pass instead."""
    path = Path(source)
    if path.exists():
        return _model_folder(path)
    if isinstance(source, str) and HANDLE_PATTERN.match(source):
        attached = find_attached_model(source)
        return _model_folder(attached if attached is not None else _download(source))
    raise FileNotFoundError(
        f"No model folder {source}: pass the folder `python -m helpers.export RUN_DIR OUT_DIR` wrote, or "
        f"a Kaggle Model handle owner/model-slug/{KAGGLE_FRAMEWORK}/variation[/version]."
    )


def _model_folder(path: Path) -> Path:
    if path.is_file():
        raise NotACaptionerError(_what_file(path))
    if (path / MANIFEST).is_file():
        return path
    below = []
    for pattern in ("*/*/*/", "*/*/", "*/"):  # framework/variation/version, variation/version, version
        below = below or sorted(p.parent for p in path.glob(pattern + MANIFEST))
    if below:  # a Kaggle model's slug, framework or variation folder: its newest version
        return max(below, key=lambda p: (int(p.name) if p.name.isdigit() else -1, str(p)))
    raise NotACaptionerError(_what_folder(path))


def _what_file(path: Path) -> str:
    export = "python -m helpers.export RUN_DIR OUT_DIR"
    if path.suffix == ".pt":
        return (f"{path} is a training checkpoint, not a model folder. Pass its run folder to `{export}` "
                f"and load OUT_DIR, or load the run folder with Captioner.from_run('{path.parent}').")
    if path.suffix == ".safetensors":
        return f"{path} is a weights file alone; pass the folder that holds it and {MANIFEST}."
    if path.suffix == ".pth":
        return f"{path} looks like a torchvision weights file (a CNN, not a captioner); pass a model folder."
    return f"{path} is a file, not a model folder; pass the folder that `{export}` wrote."


def _what_folder(path: Path) -> str:
    names = {p.name for p in path.iterdir()}
    if names & set(RUN_FOLDER_FILES):
        return (f"{path} is a training run folder ({', '.join(sorted(names & set(RUN_FOLDER_FILES)))}), "
                f"not a model folder. Export it first: python -m helpers.export {path} OUT_DIR, then "
                f"load OUT_DIR; or use Captioner.from_run('{path}').")
    kinds = [kind for marker, kind in FOREIGN_MARKERS.items() if marker in names]
    if not kinds and CONFIG_FILE in names:
        kinds = ["a model folder of another kind (config.json without captioner.json)"]
    what = f"{kinds[0]}, not a captioning-helpers model" if kinds else f"not a model folder (no {MANIFEST})"
    return (f"{path} is {what}. Pass a folder that `python -m helpers.export RUN_DIR OUT_DIR` wrote "
            f"(it holds {MANIFEST}), or a Kaggle Model handle of one.")


def read_manifest(folder: Path) -> dict[str, Any]:
    """captioner.json, checked: this format, a version this package reads."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise NotACaptionerError(f"{path} is damaged ({error}); export the model again.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MODEL_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise NotACaptionerError(f"{path} describes a {found!r} model, not a {MODEL_FORMAT!r} one.")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > MODEL_FORMAT_VERSION:
        raise NotACaptionerError(
            f"{folder} is a model folder of format version {version}, written by "
            f"{manifest.get('written_by', 'a newer package')}; this package reads versions up to "
            f"{MODEL_FORMAT_VERSION}. Install the newer helpers: pip install -U captioning-helpers "
            "(on Kaggle: attach the newest helpers dataset)."
        )
    return manifest


def _read_json(folder: Path, name: str) -> Any:
    try:
        return json.loads((folder / name).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise NotACaptionerError(f"{folder / name} is missing or damaged ({error}); export again.") from None


def _read_weights(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (OSError, SafetensorError) as error:
        raise NotACaptionerError(f"{path} is missing or damaged ({error}); copy or export again.") from None


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ------------------------------------------------------------------------------------------- captioning


class Captioner:
    """A trained captioning model with its vocabulary and decoding options, ready to caption images."""

    def __init__(self, model, config: Config, vocab: Vocabulary, decoding: dict[str, Any],
                 folder: Path | None = None):
        self.model, self.config, self.vocab, self.folder = model.eval(), config, vocab, folder
        self.decoding = dict(decoding)
        self.image_size = int(self.decoding.pop("image_size", config.image_size))
        self.max_length = int(self.decoding.pop("max_length", config.data.max_caption_length))
        self.beam_size = int(self.decoding.pop("beam_size", DEFAULT_BEAM_SIZE))
        self.transform = image_transform(model.backbone, self.image_size, torch.uint8)

    @classmethod
    def load(cls, source: str | os.PathLike, device: str | torch.device | None = None) -> Captioner:
        """The captioner in a model folder or a Kaggle Model handle (`owner/slug/framework/variation
        [/version]`: attached to this notebook, else downloaded). `device`: default CUDA when present."""
        folder = resolve_model(source)
        manifest = read_manifest(folder)
        files = manifest.get("files", {})
        config_file = files.get("config", CONFIG_FILE)
        config = config_from_dict(_read_json(folder, config_file), str(folder / config_file))
        vocab = Vocabulary(_read_json(folder, files.get("vocabulary", VOCAB_FILE))["idx_to_word"])
        state = _read_weights(folder / files.get("decoder", DECODER_WEIGHTS))
        if files.get("cnn"):
            state.update(_read_weights(folder / files["cnn"]))
        model = build_model(config, vocab, word_vectors=None)
        load_model_state(model, state, folder)
        rebuild_frozen_encoder(model, state, config)
        decoding = _read_json(folder, files.get("decoding", DECODING_FILE))
        return cls(model, config, vocab, decoding, folder).to(device or default_device())

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, device: str | torch.device | None = None,
                 which: str = "best") -> Captioner:
        """The captioner of a run folder's best.pt (or last.pt), as `export` would write it."""
        from helpers.checkpoints import load_run

        model, checkpoint, config = load_run(run_dir, which=which)
        decoding = {**config.decoding, "image_size": config.image_size,
                    "max_length": config.data.max_caption_length, "beam_size": DEFAULT_BEAM_SIZE}
        return cls(model, config, Vocabulary(checkpoint["vocab"]), decoding).to(device or default_device())

    def to(self, device: str | torch.device) -> Captioner:
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def crop(self, image: str | os.PathLike | Image.Image | Tensor) -> Tensor:
        """One image as the model's input crop, uint8 (3, S, S): a file (decoded as in training,
        `BadImageError` for a bad one), a PIL image, or a tensor (3, H, W), uint8 or float in [0, 1]."""
        if isinstance(image, (str, os.PathLike)):
            pixels = load_image_tensor(image)
        elif isinstance(image, Image.Image):
            pixels = pil_to_tensor(image.convert("RGB"))
        elif isinstance(image, Tensor) and image.dim() == 3 and image.shape[0] in (1, 3):
            pixels = image if image.dtype == torch.uint8 else (image.float().clamp(0, 1) * 255).round().byte()
            pixels = pixels.expand(3, -1, -1).cpu()
        else:
            shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise TypeError(f"expected an image file path, a PIL image or a tensor (3, H, W); got {shape}")
        return self.transform(pixels).as_subclass(Tensor)

    def caption(self, images, beam_size: int | None = None, attention: bool = False, batch_size: int = 32):
        """Caption one image or a list of them (paths, PIL images, tensors (3, H, W) or a batch
        (N, 3, H, W)), `batch_size` at a time. Returns a caption (str) per image, or `Caption`s (text,
        words, attention maps) with `attention=True`; a single image gives a single result. A bad
        file raises `BadImageError` naming it (`caption_files` skips bad files instead)."""
        batch = isinstance(images, Tensor) and images.dim() == 4
        single = not isinstance(images, (list, tuple)) and not batch
        items = [images] if single else list(images)
        results = self._caption_crops([self.crop(item) for item in items], beam_size, batch_size)
        results = results if attention else [result.text for result in results]
        return results[0] if single else results

    def caption_files(self, paths: Sequence[str | os.PathLike], beam_size: int | None = None,
                      batch_size: int = 32) -> list[tuple[str, str | BadImage]]:
        """(path, caption) for each file; a file that cannot be decoded gets a `BadImage` (its path and
        why) instead and is skipped, as training skips bad images."""
        crops, good, results = [], [], {}
        for index, path in enumerate(paths):
            try:
                crops.append(self.crop(path))
                good.append(index)
            except BadImageError as error:
                results[index] = BadImage(index, error.path, error.reason)
        for index, caption in zip(good, self._caption_crops(crops, beam_size, batch_size)):
            results[index] = caption.text
        return [(str(path), results[index]) for index, path in enumerate(paths)]

    def _caption_crops(self, crops: list[Tensor], beam_size: int | None, batch_size: int) -> list[Caption]:
        captions: list[Caption] = []
        for start in range(0, len(crops), batch_size):
            batch = torch.stack(crops[start : start + batch_size]).to(self.device)
            captions += self._decode(batch, beam_size or self.beam_size)
        return captions

    @torch.no_grad()
    def _decode(self, batch: Tensor, beam_size: int) -> list[Caption]:
        output = self.model.sample(batch, max_length=self.max_length, beam_size=beam_size, **self.decoding)
        ids, maps = output if isinstance(output, tuple) else (output, None)
        word_to_idx = self.vocab.word_to_idx
        skipped = {word_to_idx[NULL], word_to_idx[START]}
        captions = []
        for row, row_ids in enumerate(ids.tolist()):
            words = [self.vocab.idx_to_word[i] for i in caption_ids(row_ids, word_to_idx[END], skipped)]
            attention = None if maps is None else maps[row, : len(words)].float()
            captions.append(Caption(" ".join(words), words, attention))
        return captions

    def __repr__(self) -> str:
        where = self.folder or "a run folder"
        return (f"Captioner({self.model.cell_type} on {self.model.backbone}, {len(self.vocab)} words, "
                f"{self.image_size}px, beam {self.beam_size}, {self.device}; from {where})")
