"""A synthetic captioning dataset in the Flickr8k layout, and a small GloVe-format file for its words.

Scenes hold one or two large shapes (circle, square, triangle) in four distinct colours on a white
background; the five captions of a scene are five fixed templates filled with what is drawn
(colour, shape, size, position and the spatial relation between two shapes). Every template names
each shape's size, colour and kind and, like photo captions ("a dog runs through the grass"), starts
with what is drawn: behind a fixed opening ("a picture of a single ..."), beam search preferred that
likely opening, then got the colour or shape wrong and scored below greedy decoding. A small model can
learn them from the pixels in a few CPU minutes, which is what the notebooks' DEMO mode and the
learning tests need. Everything is deterministic for a seed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from helpers.files import atomic_directory

from .embeddings import write_glove_file
from .text import tokenize

COLOURS = {"red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30)}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
POSITIONS = {"left": "on the left", "middle": "in the middle", "right": "on the right"}
RELATIONS = {  # relation: (how A relates to B, how B relates to A, how the pair is arranged)
    "horizontal": ("to the left of", "to the right of", "side by side"),
    "vertical": ("above", "below", "one above the other"),
}
_SINGLE_SHAPE_FRACTION = 0.4
_HALF_SIDE = {"small": 0.11, "large": 0.2}  # half the shape's side, as a fraction of the short image side
_SETTINGS_FILE = ".demo.json"


def _single_captions(s: dict) -> list[str]:
    shape = f"{s['size']} {s['colour']} {s['shape']}"
    where = POSITIONS[s["position"]]
    return [
        f"A {shape} {where} .",
        f"a {shape} {where} on a white background",
        f"one {s['colour']} {s['shape']} {where}, it is {s['size']}.",
        f"one {shape} {where} of the picture",
        f"a single {shape} {where} in the picture",
    ]


def _pair_captions(a: dict, b: dict, relation: str) -> list[str]:
    a_to_b, b_to_a, arrangement = RELATIONS[relation]
    first, second = (f"{s['size']} {s['colour']} {s['shape']}" for s in (a, b))
    return [
        f"A {first} {a_to_b} a {second} .",
        f"two shapes: a {first} {a_to_b} a {second}",
        f"a {second} {b_to_a} a {first}",
        f"A {first} and a {second}, {arrangement}.",
        f"a {first} {a_to_b} a {second} in the picture",
    ]


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: str,
    centre: tuple[float, float],
    half: float,
    colour: tuple[int, int, int],
) -> None:
    x, y = centre
    box = (x - half, y - half, x + half, y + half)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(x, y - half), (x + half, y + half), (x - half, y + half)], fill=colour)


def _random_shape(rng: random.Random, colours: list[str]) -> dict:
    return {"shape": rng.choice(SHAPES), "colour": rng.choice(colours), "size": rng.choice(SIZES)}


def _make_scene(rng: random.Random, image_size: tuple[int, int]) -> tuple[Image.Image, list[str]]:
    """One image and its five captions."""
    width, height = rng.randint(*image_size), rng.randint(*image_size)
    background = tuple(rng.randint(245, 255) for _ in range(3))
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    short_side = min(width, height)

    def jitter(extent: int) -> float:
        return rng.uniform(-0.04, 0.04) * extent

    if rng.random() < _SINGLE_SHAPE_FRACTION:
        scene = {**_random_shape(rng, list(COLOURS)), "position": rng.choice(list(POSITIONS))}
        x = {"left": 0.27, "middle": 0.5, "right": 0.73}[scene["position"]] * width + jitter(width)
        centre = (x, height / 2 + jitter(height))
        half = _HALF_SIDE[scene["size"]] * short_side
        _draw_shape(draw, scene["shape"], centre, half, COLOURS[scene["colour"]])
        return image, _single_captions(scene)

    first = _random_shape(rng, list(COLOURS))
    second = _random_shape(rng, [c for c in COLOURS if c != first["colour"]])
    relation = rng.choice(list(RELATIONS))
    for shape, fraction in ((first, 0.27), (second, 0.73)):
        if relation == "horizontal":
            centre = (fraction * width + jitter(width), height / 2 + jitter(height))
        else:
            centre = (width / 2 + jitter(width), fraction * height + jitter(height))
        half = _HALF_SIDE[shape["size"]] * short_side
        _draw_shape(draw, shape["shape"], centre, half, COLOURS[shape["colour"]])
    return image, _pair_captions(first, second, relation)


def make_demo_dataset(
    out_dir: str | os.PathLike, num_images: int = 300, seed: int = 0, image_size: tuple[int, int] = (160, 224)
) -> Path:
    """Write ``num_images`` scenes as ``out_dir/Images/*.jpg`` and ``out_dir/captions.txt``.

    ``captions.txt`` is the Flickr8k CSV (header ``image,caption``, five rows per image, captions
    with commas double-quoted). Each image's width and height are drawn from ``image_size``
    (min, max), since real photos vary. A folder already holding the same demo is reused; the
    folder is built aside and renamed into place, so an interrupted call leaves nothing half-made.
    """
    out_dir = Path(out_dir)
    settings = {"num_images": num_images, "seed": seed, "image_size": list(image_size), "version": 1}
    marker = out_dir / _SETTINGS_FILE
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()) and not marker.is_file():
        raise FileExistsError(f"{out_dir} exists and is not a demo dataset; choose an empty or new folder")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(out_dir) as building:
        (building / "Images").mkdir()
        rng = random.Random(seed)
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["image", "caption"])
        for i in range(num_images):
            image, captions = _make_scene(rng, image_size)
            name = f"shapes_{i:05d}.jpg"
            image.save(building / "Images" / name, quality=90)
            writer.writerows([name, caption] for caption in captions)
        (building / "captions.txt").write_text(text.getvalue(), encoding="utf-8")
        (building / _SETTINGS_FILE).write_text(json.dumps(settings))
    return out_dir


_WORD_GROUPS = {
    "colour": list(COLOURS) + ["white"],
    "shape": list(SHAPES) + ["shapes"],
    "size": list(SIZES) + ["single", "one", "two"],
    "place": ["left", "right", "middle", "above", "below", "side", "other", "background", "picture"],
}
DISTRACTOR_WORDS = ["dog", "cat", "tree", "house", "river", "Kaggle"]


def make_demo_glove(
    out_path: str | os.PathLike, source: str | os.PathLike | list[str], dim: int = 50, seed: int = 0
) -> Path:
    """A GloVe-format text file covering the demo words, plus a few distractors (one mixed-case).

    ``source`` is a list of words or a demo dataset folder (its ``captions.txt`` is tokenized).
    Words of one kind (colours, shapes, sizes and counts, places) get vectors near a shared centre,
    so nearest neighbours are meaningful; other words are random.
    """
    if isinstance(source, list):
        words = list(dict.fromkeys(source))
    else:
        with open(Path(source) / "captions.txt", encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))[1:]
        words = sorted({word for _, caption in rows for word in tokenize(caption)})
    rng = np.random.default_rng(seed)
    centres = {group: rng.normal(0.0, 1.0, dim) for group in _WORD_GROUPS}
    group_of = {word: group for group, members in _WORD_GROUPS.items() for word in members}
    vectors = {}
    for word in words + [w for w in DISTRACTOR_WORDS if w not in words]:
        noise = rng.normal(0.0, 1.0, dim)
        group = group_of.get(word)
        vectors[word] = (centres[group] + 0.35 * noise if group else noise).astype(np.float32)
    return write_glove_file(out_path, vectors)
