"""Export a trained run as a self-contained model folder: `python -m helpers.export RUN_DIR OUT_DIR`.

The folder (read by `helpers.captioner.Captioner.load`) holds the decoder's weights as safetensors
(and a fine-tuned CNN's; a frozen torchvision CNN is named with its weights), the config, the
vocabulary, the decoding options, `captioner.json` (format and version, what each file is) and a model
card `README.md`: what it was trained on, its test scores as results.json has them (tokenizer, beam
size, images), the training time and device, and the two lines that load it. Nothing in it depends on
where or when it was written: exporting the same run twice gives identical bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from helpers.backbones import get_backbone
from helpers.captioner import (
    CARD_FILE,
    CNN_WEIGHTS,
    CONFIG_FILE,
    DECODER_WEIGHTS,
    DECODING_FILE,
    DEFAULT_BEAM_SIZE,
    MANIFEST,
    MODEL_FORMAT,
    MODEL_FORMAT_VERSION,
    VOCAB_FILE,
    NotACaptionerError,
)
from helpers.checkpoints import load_checkpoint, load_model_state
from helpers.config import Config, config_from_dict
from helpers.errors import INPUT_ERRORS
from helpers.evaluate import METRIC_LABELS, as_printed
from helpers.features import RANDOM_WEIGHTS_SEED
from helpers.files import atomic_directory
from helpers.models import build_model
from helpers.text import Vocabulary

PACKAGE = "captioning-helpers"


def package_version() -> str:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "unknown"


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _weights_bytes(state: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({key: value.detach().cpu().contiguous().clone() for key, value in sorted(state.items())},
                metadata={"format": "pt"})


def cnn_facts(config: Config, fine_tuned: bool) -> dict[str, Any]:
    """How the CNN is had: its weights in this folder (fine-tuned), torchvision's named pretrained
    weights (the file torchvision caches, not in the folder), or seeded random ones."""
    info = get_backbone(config.model.backbone)
    facts: dict[str, Any] = {"backbone": info.name, "in_folder": fine_tuned}
    if config.model.pretrained_backbone:
        facts.update(weights=info.weights, weights_file=info.weights_file)
    else:
        facts.update(weights="random", seed=RANDOM_WEIGHTS_SEED)
    return facts


def _read_results(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "results.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def model_files(run_dir: str | os.PathLike, handle: str | None = None,
                which: str = "best") -> dict[str, bytes]:
    """{file name: bytes} of the model folder of `<run_dir>/<which>.pt` (with its results.json)."""
    run_dir = Path(run_dir)
    if (run_dir / MANIFEST).is_file():
        raise NotACaptionerError(f"{run_dir} is already a model folder: load it with Captioner.load.")
    if not run_dir.is_dir():
        raise FileNotFoundError(f"No run folder {run_dir}: pass the run folder that holds best.pt.")
    checkpoint = load_checkpoint(run_dir / f"{which}.pt")
    config = config_from_dict(checkpoint["config"], str(run_dir / f"{which}.pt"))
    vocab = Vocabulary(checkpoint["vocab"])
    model = build_model(config, vocab, word_vectors=None)
    load_model_state(model, checkpoint["model"], run_dir / f"{which}.pt")  # it loads: say so now
    state = checkpoint["model"]
    cnn = {key: value for key, value in state.items() if key.startswith("image_encoder.")}
    decoder = {key: value for key, value in state.items() if key not in cnn}
    decoding = {**config.decoding, "beam_size": DEFAULT_BEAM_SIZE, "image_size": config.image_size,
                "max_length": config.data.max_caption_length}
    manifest = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "written_by": f"{PACKAGE} {package_version()}",
        "decoder": model.cell_type,
        "cnn": cnn_facts(config, fine_tuned=bool(cnn)),
        "run_name": run_dir.name,
        "files": {"decoder": DECODER_WEIGHTS, "cnn": CNN_WEIGHTS if cnn else None, "config": CONFIG_FILE,
                  "vocabulary": VOCAB_FILE, "decoding": DECODING_FILE, "card": CARD_FILE},
    }
    files = {
        MANIFEST: _json_bytes(manifest),
        DECODER_WEIGHTS: _weights_bytes(decoder),
        CONFIG_FILE: _json_bytes(config.to_dict()),
        VOCAB_FILE: _json_bytes({"idx_to_word": vocab.idx_to_word}),
        DECODING_FILE: _json_bytes(decoding),
    }
    if cnn:
        files[CNN_WEIGHTS] = _weights_bytes(cnn)
    card = model_card(manifest, config, model, checkpoint, _read_results(run_dir), handle)
    files[CARD_FILE] = card.encode("utf-8")
    return files


def export_model(run_dir: str | os.PathLike, out_dir: str | os.PathLike, handle: str | None = None,
                 which: str = "best") -> Path:
    """Write the model folder of a run into `out_dir` (replaced as a whole, atomically). `handle`: the
    Kaggle Model handle the card's load lines name (default: the folder). A non-empty `out_dir` that is
    not an earlier export is refused rather than overwritten."""
    out_dir = Path(out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
        raise FileExistsError(
            f"{out_dir} exists and is not a model folder; pass a new or empty OUT_DIR (nothing was written)."
        )
    files = model_files(run_dir, handle, which)
    with atomic_directory(out_dir) as building:
        for name, data in files.items():
            (building / name).write_bytes(data)
        os.chmod(building, 0o755)
    return out_dir


# ------------------------------------------------------------------------------------------ model card


def score_table(results: dict[str, Any], split: str = "test") -> list[str]:
    """Markdown rows of the split's scores per beam size, with the tokenizer and image count each was
    scored with, as results.json records them."""
    by_beam = results.get("metrics", {}).get(split, {})
    if not by_beam:
        return [f"No {split} scores: results.json is missing or holds none. Score the run with "
                "`python -m helpers.evaluate RUN_DIR` and export again."]
    names = [name for name in METRIC_LABELS if any(name in scores for scores in by_beam.values())]
    lines = ["| split | beam | tokenizer | images | " + " | ".join(METRIC_LABELS[n] for n in names) + " |",
             "|---|---|---|---|" + "---|" * len(names)]
    for beam in sorted(by_beam, key=lambda b: int(b.removeprefix("beam"))):
        how = results.get("scoring", {}).get(split, {}).get(beam, {})
        cells = [as_printed(by_beam[beam][n]) if n in by_beam[beam] else "-" for n in names]
        lines.append(f"| {split} | {beam.removeprefix('beam')} | {how.get('tokenizer', '?')} | "
                     f"{how.get('images', '?')} | " + " | ".join(cells) + " |")
    return lines


def _duration(seconds: float | None) -> str:
    if not seconds:
        return "not recorded"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def summary_line(manifest: dict[str, Any], config: Config, results: dict[str, Any]) -> str:
    """One line: decoder, CNN, dataset, and the test score at the default beam (the version notes)."""
    head = (f"{manifest['decoder']} decoder on {manifest['cnn']['backbone']} features, trained on "
            f"{config.data.dataset}")
    beam = f"beam{DEFAULT_BEAM_SIZE}"
    scores = results.get("metrics", {}).get("test", {})
    beam = beam if beam in scores else next(iter(sorted(scores)), None)
    if beam is None:
        return head + " (not scored)"
    how = results.get("scoring", {}).get("test", {}).get(beam, {})
    found = scores[beam]
    return (f"{head}: test BLEU-4 {as_printed(found.get('Bleu_4', 0.0))}, CIDEr "
            f"{as_printed(found.get('CIDEr', 0.0))} (beam {beam.removeprefix('beam')}, "
            f"{how.get('tokenizer', '?')} tokenizer)")


def model_card(manifest: dict[str, Any], config: Config, model, checkpoint: dict, results: dict[str, Any],
               handle: str | None) -> str:
    """README.md of the model folder (Markdown; its first heading and summary line head a Kaggle card)."""
    where = handle or "path/to/this/folder"
    cnn = manifest["cnn"]
    name = f"`{cnn['backbone']}`"
    if cnn["in_folder"]:
        cnn_text = f"{name}, fine-tuned (weights in `{CNN_WEIGHTS}`)"
    elif cnn["weights"] != "random":
        cnn_text = (f"{name} with torchvision's `{cnn['weights']}`, frozen: not in this folder, read from "
                    f"`$TORCH_HOME/hub/checkpoints/{cnn['weights_file']}`, an attached file of that name, "
                    "or downloaded once")
    else:
        cnn_text = f"{name} with seeded random weights (seed {cnn['seed']}), frozen, rebuilt on load"
    glove = config.embeddings.glove_path if config.embeddings.use_glove else "none (random start)"
    lines = [
        f"# {manifest['run_name']}", "", summary_line(manifest, config, results) + ".", "",
        "## Use it", "", "```python", "from helpers.captioner import Captioner",
        f'captioner = Captioner.load("{where}")', "```", "",
        'Then `captioner.caption(["photo.jpg"], beam_size=3)` gives one caption per image; from a shell: '
        f"`python -m helpers.caption {where} photo.jpg`. Install the helpers first "
        f"(`pip install {PACKAGE}`, or the wheel of the helpers dataset on Kaggle).", "",
        "## Test scores", "", *score_table(results), "",
        "Scores are x 100, as papers print them, from the run's results.json.", "",
        "## Training", "",
        f"- Data: `{config.data.dataset}`, captions up to {config.data.max_caption_length} words, "
        f"{len(model.word_to_idx)} words in the vocabulary",
        f"- Decoder: `{manifest['decoder']}`, hidden size {config.model.hidden_dim}, word vectors "
        f"{config.model.wordvec_dim} (GloVe: {glove})",
        f"- CNN: {cnn_text}; images cropped to {config.image_size} px",
        f"- Epochs: {results.get('epochs', '?')} (best {checkpoint.get('best_epoch', '?')}), training "
        f"mode `{config.training.mode}`",
        f"- Training time: {_duration(results.get('train_wall_time_s', checkpoint.get('wall_time_s')))} "
        f"on {results.get('device', 'a device not recorded')}",
        f"- Written by {manifest['written_by']}, model folder format {MODEL_FORMAT_VERSION}", "",
        "## Files", "",
        f"`{MANIFEST}` (format, version, CNN), `{DECODER_WEIGHTS}`"
        + (f", `{CNN_WEIGHTS}`" if cnn["in_folder"] else "")
        + f", `{CONFIG_FILE}` (the training config), `{VOCAB_FILE}`, `{DECODING_FILE}` (beam size, "
        "length penalty, n-gram blocking, image size, caption length).", "",
        "Captions describe images like the training data's; expect errors on other kinds of photos.", "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.export",
        description="Write a trained run (its best.pt) as a self-contained model folder.",
    )
    parser.add_argument("run_dir", help="the run folder written by python -m helpers.train")
    parser.add_argument("out_dir", help="the model folder to write (replaced when it is an earlier export)")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which weights")
    parser.add_argument("--handle", help="the Kaggle Model handle the card's load lines name")
    args = parser.parse_args(argv)
    try:
        out = export_model(args.run_dir, args.out_dir, handle=args.handle, which=args.checkpoint)
    except (*INPUT_ERRORS, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"model folder: {out}")
    print(f"load it: Captioner.load({str(out)!r}); caption: python -m helpers.caption {out} IMAGE...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
