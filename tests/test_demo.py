"""The synthetic demo dataset: layout, determinism, captions that truly describe the pixels, and its
GloVe-format file."""

import csv
import re

import numpy as np
import pytest
from PIL import Image

from helpers.demo import COLOURS, DISTRACTOR_WORDS, make_demo_dataset, make_demo_glove
from helpers.embeddings import glove_coverage
from helpers.prepare import prepare_dataset
from helpers.text import tokenize


def read_rows(folder):
    with open(folder / "captions.txt", encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


def test_flickr8k_layout_with_five_different_captions_per_image(demo_dir):
    rows = read_rows(demo_dir)
    assert rows[0] == ["image", "caption"]
    images = sorted({image for image, _ in rows[1:]})
    assert len(images) == 120 and len(rows) == 1 + 5 * 120
    assert sorted(p.name for p in (demo_dir / "Images").iterdir()) == images
    for image in images:
        captions = [caption for name, caption in rows[1:] if name == image]
        assert len(set(captions)) == 5
    raw = (demo_dir / "captions.txt").read_text()
    quoted = re.findall(r'^[^,\n]+,"[^"\n]*,[^"\n]*"$', raw, flags=re.MULTILINE)
    assert len(quoted) >= 120  # commas inside captions, so the CSV quoting matters
    sizes = {Image.open(demo_dir / "Images" / image).size for image in images}
    assert all(160 <= side <= 224 for size in sizes for side in size) and len(sizes) > 10


def test_same_seed_same_bytes_and_pixels(tmp_path):
    first = make_demo_dataset(tmp_path / "a", num_images=12, seed=3)
    second = make_demo_dataset(tmp_path / "b", num_images=12, seed=3)
    other = make_demo_dataset(tmp_path / "c", num_images=12, seed=4)
    assert (first / "captions.txt").read_bytes() == (second / "captions.txt").read_bytes()
    assert (first / "captions.txt").read_bytes() != (other / "captions.txt").read_bytes()
    for path in (first / "Images").iterdir():
        assert np.array_equal(
            np.asarray(Image.open(path)), np.asarray(Image.open(second / "Images" / path.name))
        )


def test_existing_demo_is_reused_and_other_folders_are_refused(tmp_path):
    folder = make_demo_dataset(tmp_path / "demo", num_images=5)
    stamp = (folder / "captions.txt").stat().st_mtime_ns
    assert make_demo_dataset(folder, num_images=5) == folder
    assert (folder / "captions.txt").stat().st_mtime_ns == stamp
    make_demo_dataset(folder, num_images=7)  # other settings: rebuilt in place
    assert len(list((folder / "Images").iterdir())) == 7
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # no temp folder left

    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="photos exists and is not a demo dataset"):
        make_demo_dataset(tmp_path / "photos", num_images=5)
    assert (tmp_path / "photos" / "holiday.jpg").read_bytes() == b"mine"


def colour_mask(pixels, colour):
    distance = np.abs(pixels.astype(int) - np.array(COLOURS[colour])).sum(axis=2)
    return distance < 90


def measured(mask, short_side):
    """Centre (x, y), whether it is large, and its shape judged from how much of its box it fills."""
    ys, xs = np.nonzero(mask)
    width, height = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    fill = mask.sum() / (width * height)
    shape = "square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"
    return (xs.mean(), ys.mean()), max(width, height) > 0.31 * short_side, shape


SINGLE = re.compile(r"A (small|large) (\w+) (\w+) (on the left|in the middle|on the right) \.")
PAIR = re.compile(
    r"two shapes: a (small|large) (\w+) (\w+) (to the left of|above) a (small|large) (\w+) (\w+)"
)


def test_captions_describe_what_is_drawn(demo_dir):
    rows = read_rows(demo_dir)[1:]
    captions = {}
    for image, caption in rows:
        captions.setdefault(image, []).append(caption)
    kinds = set()
    for image, texts in captions.items():
        pixels = np.asarray(Image.open(demo_dir / "Images" / image).convert("RGB"))
        height, width = pixels.shape[:2]
        short = min(width, height)
        single = next(filter(None, map(SINGLE.fullmatch, texts)), None)
        pair = next(filter(None, map(PAIR.fullmatch, texts)), None)
        assert (single is None) != (pair is None), texts
        if single:
            size, colour, shape, where = single.groups()
            shapes = [(colour, size, shape)]
            kinds.add(where)
        else:
            size_a, colour_a, shape_a, relation, size_b, colour_b, shape_b = pair.groups()
            shapes = [(colour_a, size_a, shape_a), (colour_b, size_b, shape_b)]
            kinds.add(relation)
        for text in texts:  # every template names every attribute of every shape
            assert {word for attributes in shapes for word in attributes} <= set(tokenize(text)), text
        for colour in COLOURS:
            if colour not in {c for c, _, _ in shapes}:
                assert colour_mask(pixels, colour).sum() < 30, (image, colour)
        centres = []
        for colour, size, shape in shapes:
            centre, large, drawn_shape = measured(colour_mask(pixels, colour), short)
            assert (large, drawn_shape) == (size == "large", shape), (image, texts[0])
            centres.append(centre)
        if single:
            fraction = centres[0][0] / width
            expected = {
                "on the left": fraction < 0.4,
                "in the middle": 0.4 < fraction < 0.6,
                "on the right": fraction > 0.6,
            }
            assert expected[where], (image, fraction)
        elif relation == "above":
            assert centres[0][1] < centres[1][1] - 0.3 * height
        else:
            assert centres[0][0] < centres[1][0] - 0.3 * width
    assert kinds == {"on the left", "in the middle", "on the right", "above", "to the left of"}


def test_vocabulary_is_small_and_kept_whole_at_120_images(demo_dir, tmp_path):
    prepared = prepare_dataset("demo", data_dir=demo_dir, work_dir=tmp_path, min_word_count=5, verbose=False)
    words = {word for _, caption in read_rows(demo_dir)[1:] for word in tokenize(caption)}
    assert set(prepared.vocab.idx_to_word[4:]) == words
    assert len(words) < 50


def test_glove_file_covers_the_demo_words_with_structure(demo_dir, tmp_path):
    path = make_demo_glove(tmp_path / "glove.demo.50d.txt", demo_dir, dim=50)
    vectors = {}
    for line in path.read_text().splitlines():
        token, *numbers = line.split(" ")
        assert len(numbers) == 50
        vectors[token] = np.array(numbers, dtype=np.float64)
    words = {word for _, caption in read_rows(demo_dir)[1:] for word in tokenize(caption)}
    assert words <= set(vectors) and set(DISTRACTOR_WORDS) <= set(vectors)
    assert any(token != token.lower() for token in vectors)

    def cosine(a, b):
        return vectors[a] @ vectors[b] / np.linalg.norm(vectors[a]) / np.linalg.norm(vectors[b])

    colours = list(COLOURS)
    same = np.mean([cosine(a, b) for a in colours for b in colours if a != b])
    across = np.mean([cosine(a, b) for a in colours for b in ("circle", "square", "triangle", "dog")])
    assert same > 0.7 and across < 0.4

    prepared = prepare_dataset("demo", data_dir=demo_dir, work_dir=tmp_path, verbose=False)
    coverage = glove_coverage(path, prepared.vocab.word_to_idx, embed_dim=50, cache_dir=tmp_path / "cache")
    assert coverage.missing == []

    again = make_demo_glove(tmp_path / "again.txt", sorted(words), dim=50)
    assert {line.split(" ")[0] for line in again.read_text().splitlines()} == words | set(DISTRACTOR_WORDS)
