"""What a training notebook shows before the training loop takes over, as fastbook's chapters show the
mechanism first: the model it trains (its layers, its parameter counts, where its code is), one
training batch with the shape of every tensor on the way to its loss, and the loss in a unit a reader
can judge.

The loss of every decoder (helpers.decoders.temporal_softmax_loss) is summed over the words of a
caption and averaged over the captions, so its size grows with caption length; divided by the mean
number of predicted tokens per caption (the words and `<END>`) it is the cross-entropy per word, in
nats, which an untrained model starts near ln(vocabulary size).
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from helpers import decoders
from helpers.backbones import image_transform
from helpers.config import Config
from helpers.features import CaptionFeatureDataset
from helpers.glove import load_word_vectors
from helpers.images import collate_skip_bad
from helpers.models import build_model
from helpers.optimization import configure_trainable
from helpers.runs import seed_everything
from helpers.text import NULL
from helpers.train import ImageCaptionDataset


def words_per_caption(prepared, split: str) -> float:
    """Mean number of tokens the loss sums over per caption of `split`: its words and `<END>`."""
    encoded, _ = prepared.captions(split)
    targets = np.asarray(encoded)[:, 1:]  # what the model predicts: everything after <START>
    return float((targets != prepared.vocab.word_to_idx[NULL]).sum(axis=1).mean())


def per_word(prepared) -> dict[str, float]:
    """{split: words per caption} for the train and val splits, to turn their losses into per word."""
    return {split: words_per_caption(prepared, split) for split in ("train", "val")}


def untrained_model(config: Config, prepared) -> nn.Module:
    """The model `config` trains, built as the training loop builds it (same seed, word vectors and
    frozen CNN), before its first step."""
    word_vectors = load_word_vectors(config, prepared.vocab)
    seed_everything(config.training.seed)
    model = build_model(config, prepared.vocab, word_vectors=word_vectors)
    configure_trainable(model, config)
    return model


def _structure(module: nn.Module, mode: str) -> list[str]:
    """The module as torch prints it (identical numbered layers once, "(0-1): 2 x"), plus the shapes of
    parameters that torch leaves out, the CNN folded into one line."""
    name = type(module).__name__
    if name == "ImageEncoder":
        role = ("frozen, never run: training reads its stored features" if mode == "features"
                else "its last layers fine-tuned on the images")
        return [f"ImageEncoder({module.backbone}, {module.num_parameters:,} parameters; {role})"]
    own = module.extra_repr() or ", ".join(
        f"{key} {tuple(value.shape)}" for key, value in module.named_parameters(recurse=False)
    )
    children = list(module.named_children())
    if not children:
        return [f"{name}({own})"]
    groups: list[tuple[list[str], list[str]]] = []  # (keys, the child's lines)
    for key, child in children:
        shown = _structure(child, mode)
        if groups and key.isdigit() and groups[-1][1] == shown:
            groups[-1][0].append(key)
        else:
            groups.append(([key], shown))
    lines = [f"{name}("] + ([f"  {own}"] if own else [])
    for keys, (first, *rest) in groups:
        label = f"({keys[0]}):" if len(keys) == 1 else f"({keys[0]}-{keys[-1]}): {len(keys)} x"
        lines += [f"  {label} {first}", *(f"  {line}" for line in rest)]
    return lines + [")"]


def describe_model(model: nn.Module, mode: str = "features") -> str:
    """The model's layers (torch's printout, the CNN on one line) and its parameter counts."""
    def count(in_cnn: bool, trained_only: bool) -> int:
        return sum(p.numel() for key, p in model.named_parameters()
                   if key.startswith("image_encoder.") == in_cnn and (p.requires_grad or not trained_only))

    decoder, decoder_trained, cnn_trained = count(False, False), count(False, True), count(True, True)
    cnn = model.image_encoder.num_parameters
    frozen = f" ({decoder - decoder_trained:,} frozen: the word vectors)" if decoder_trained < decoder else ""
    tuned = f"{cnn_trained:,} of them fine-tuned" if cnn_trained else "frozen"
    counts = (f"parameters: {decoder_trained + cnn_trained:,} trained. The captioner around the CNN has "
              f"{decoder:,}{frozen}; the {model.image_encoder.backbone} CNN has {cnn:,}, {tuned}.")
    return "\n".join([*_structure(model, mode), counts])


def _where(code) -> str:
    """'helpers/<file>.py line N, class or function NAME' for a class or function of helpers."""
    file = Path(inspect.getsourcefile(code))
    kind = "class" if inspect.isclass(code) else "function"
    return f"{file.parent.name}/{file.name} line {inspect.getsourcelines(code)[1]}, {kind} {code.__name__}"


def code_location(model: nn.Module) -> str:
    """Where to read the code of this model: its decoder's classes, the captioning model around
    them (word embedding, features, output layer, decoding) and the loss."""
    parts = list(dict.fromkeys(
        type(module) for module in model.decoder.modules() if type(module).__module__ == decoders.__name__
    ))
    if getattr(model, "cell_type", "") == "attn":
        parts.append(decoders.dot_product_attention)
    lines = [f"decoder    {_where(part)}" for part in parts]
    lines.append(f"model      {_where(type(model))} (word embedding, features, output layer, decoding)")
    lines.append(f"loss       {_where(decoders.temporal_softmax_loss)}")
    return "\n".join(lines)


def _first_batch(config: Config, prepared, store, size: int):
    """(inputs, captions) of the first `size` training captions, as the training loop reads them."""
    if store is not None:
        data = CaptionFeatureDataset(store, prepared, "train")
    else:
        data = ImageCaptionDataset(prepared, "train",
                                   image_transform(config.model.backbone, config.image_size, torch.uint8))
    inputs, captions, _ = collate_skip_bad([data[index] for index in range(size)])
    return inputs.to("cpu"), captions


def one_batch(model: nn.Module, config: Config, prepared, store, size: int = 4) -> str:
    """The first `size` training captions through the model, teacher forced: each tensor's shape
    on the way to the loss, then the loss per caption and per word next to chance, ln(V)."""
    inputs, captions = _first_batch(config, prepared, store, size)
    captions_in, captions_out = captions[:, :-1], captions[:, 1:]
    model.eval()  # no dropout: the loss of these weights, as validation measures it
    with torch.no_grad():
        features = model.features_from(inputs)
        scores = model.scores(features, captions_in)
        loss = float(model(inputs, captions))
    predicted = int((captions_out != model.ignore_index).sum())
    vocab = len(model.word_to_idx)
    ids = captions[0].tolist()
    first = f"{ids[:6]}... = '{prepared.vocab.decode(ids)}'"
    what = "stored features" if store is not None else "images"
    rows = [
        ("inputs", inputs, f"{what} of {size} training captions' images"),
        ("captions", captions, f"word ids <START> w1 .. wn <END> <NULL>..., e.g. {first}"),
        ("captions_in", captions_in, "what the decoder reads: captions[:, :-1]"),
        ("captions_out", captions_out, f"what it must predict, one step later: {predicted} words and <END>, "
                                       "the <NULL> padding ignored"),
        ("scores", scores, f"a score for each of the {vocab} vocabulary words at every position"),
    ]
    lines = [f"{key:<13} {str(tuple(value.shape)):<18} {note}" for key, value, note in rows]
    lines.append(
        f"{'loss':<13} {'()':<18} {loss:.2f} per caption (summed over its words) = "
        f"{loss * size / predicted:.3f} per word; a model that knows nothing scores ln({vocab}) = "
        f"{math.log(vocab):.3f} per word"
    )
    return "\n".join(lines)


def loss_terms(config: Config) -> str:
    """Why the train loss sits above the val loss: what the train figure adds and averages that the
    val figure does not."""
    training, model = config.training, config.model
    added = [f"label smoothing {training.label_smoothing:g}"] if training.label_smoothing else []
    if model.decoder == "attn" and training.alpha_c:
        added.append(f"the attention penalty (alpha_c {training.alpha_c:g})")
    extra = f" {' and '.join(added)} {'are' if len(added) > 1 else 'is'} added to it;" if added else ""
    return (
        "Losses are per word (cross-entropy in nats: each caption's sum over its words and <END>, divided "
        "by the mean count per caption). The train loss sits above the val loss by design: dropout "
        f"({model.dropout:g}) is on while training;{extra} and it is the mean over an epoch of a model "
        "that kept changing, while the val loss is the plain cross-entropy of the epoch's final weights."
    )
