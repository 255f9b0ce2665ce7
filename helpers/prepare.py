"""Vocabulary, encoded captions, splits and a manifest, prepared once in a work dir.

``prepare_dataset`` writes ``work_dir/data/<key>/``, ``key`` being the dataset name and a hash of
every setting and of the caption files' contents, so different settings never share artifacts:

* ``vocab.json``: the vocabulary: the words of the training captions (``vocab_from='train'``) or
  of every split's captions (``'all'``, as neuraltalk2 and sgrvinod's tutorial do) seen at least
  ``min_word_count`` times (``>=``; their "more than 5" is ``min_word_count=6``);
* ``captions.npy`` (M, max_caption_length + 2) int32 and ``caption_image.npy`` (M,) int32: the
  encoded captions, grouped by split (train, val, test; ranges in the manifest), each with the
  index of its image in that split's list;
* ``splits.json``: split -> sorted image file names (relative to the image folder);
* ``references.json``: split -> {image: [every caption, tokenized and space-joined]} for metrics:
  every caption of the image, repeated ones included, as papers score against all of them;
* ``manifest.json``: source, counts, hashes, settings, truncated captions and dropped rows.

A second call with the same settings reuses the folder (it is trusted when its manifest says
complete and every file it lists has the recorded size). The folder is built aside and renamed into
place, so an interrupted call leaves nothing that a later call would trust.

Bad rows (empty captions, images missing or empty on disk, images outside the standard split) are
dropped and reported by file and row, and counted as caption rows; a caption repeating another of
the same image (up to case and punctuation) is left out of the training captions only. Images on
disk without captions are reported (as images) and left out. Broken files (missing,
wrong header, invalid json, a Karpathy split that does not fit the images) are errors.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from helpers.files import atomic_directory, write_json_atomic
from helpers.space import check_space

from .demo import make_demo_dataset
from .inputs import DOWNLOAD_TIMEOUT, input_root
from .sources import (
    IMAGE_EXTENSIONS,
    KARPATHY_FILES,
    KARPATHY_HANDLE,
    SHIPPED_FLICKR8K_SPLIT,
    DatasetFormatError,
    DatasetLayout,
    DatasetUnavailableError,
    KarpathySplit,
    download_dataset,
    download_karpathy_split,
    find_attached_karpathy_json,
    image_key,
    read_split,
)
from .text import SPECIAL_TOKENS, Vocabulary, tokenize

# 2: PTB clitics ("do n't"), repeated captions kept as references, vocab_from. A new version makes
# a new key, so data prepared under other rules is rebuilt rather than reused.
FORMAT_VERSION = 2
SPLITS = ("train", "val", "test")
VOCAB_SOURCES = ("train", "all")  # the captions the vocabulary counts: the training split's, or every split's
# Reported in ``manifest['dropped']`` but counted in images, not caption rows.
IMAGES_WITHOUT_CAPTIONS = "image without captions"
REPEATED_TRAINING_CAPTION = "repeats a training caption of the same image (kept as a reference)"
DEMO_IMAGES = 300
_EXAMPLES_PER_REASON = 20
_FILES = ("vocab.json", "captions.npy", "caption_image.npy", "splits.json", "references.json")


_VOCAB_RULE = {"train": "training captions", "all": "captions of every split"}


class PreparedDataset:
    """Access to the artifacts of one ``prepare_dataset`` call (see the module docstring)."""

    def __init__(self, root: Path, manifest: dict, vocab: Vocabulary, splits: dict[str, list[str]]):
        self.root = Path(root)
        self.manifest = manifest
        self.dataset: str = manifest["dataset"]
        self.key: str = manifest["key"]
        self.image_dir = Path(manifest["source"]["image_dir"])
        self.max_caption_length: int = manifest["settings"]["max_caption_length"]
        self.vocab = vocab
        self.splits = splits
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None
        self._references: dict | None = None

    @classmethod
    def load(cls, root: str | os.PathLike) -> PreparedDataset:
        """Open a prepared folder; refuses one that is incomplete (an interrupted build)."""
        root = Path(root)
        manifest = _trusted_manifest(root)
        if manifest is None:
            raise FileNotFoundError(
                f"{root} is not a complete prepared dataset (no complete manifest.json); run prepare_dataset"
            )
        splits = json.loads((root / "splits.json").read_text(encoding="utf-8"))
        return cls(root, manifest, Vocabulary.load(root / "vocab.json"), splits)

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise KeyError(f"unknown split {split!r}; {self.key} has {sorted(self.splits)}")

    def captions(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(encoded captions (M, T+2) int32, index of each caption's image in ``splits[split]`` (M,))."""
        self._check_split(split)
        if self._arrays is None:
            self._arrays = (np.load(self.root / "captions.npy"), np.load(self.root / "caption_image.npy"))
        start, end = self.manifest["caption_ranges"][split]
        encoded, image_index = self._arrays
        return encoded[start:end], image_index[start:end]

    def references(self, split: str) -> dict[str, list[str]]:
        """image file name -> its reference captions (tokenized, space-joined, not truncated)."""
        self._check_split(split)
        if self._references is None:
            self._references = json.loads((self.root / "references.json").read_text(encoding="utf-8"))
        return self._references[split]

    def image_path(self, filename: str) -> Path:
        return self.image_dir / filename

    def summary(self) -> str:
        """One line with the sizes, as printed by ``prepare_dataset``."""
        counts = self.manifest["counts"]
        images = " / ".join(f"{s} {counts['images'][s]:,}" for s in SPLITS)
        captions = " / ".join(f"{counts['captions'][s]:,}" for s in SPLITS)
        dropped = self.manifest["dropped"]
        rows = sum(entry["count"] for reason, entry in dropped.items() if reason != IMAGES_WITHOUT_CAPTIONS)
        without = dropped.get(IMAGES_WITHOUT_CAPTIONS, {}).get("count", 0)
        settings = self.manifest["settings"]
        words = len(self.vocab) - len(SPECIAL_TOKENS)
        return (
            f"{self.dataset} ({self.manifest['split_method']} split): images {images}; captions {captions}; "
            f"vocabulary {words:,} words + {len(SPECIAL_TOKENS)} special tokens (words seen >= "
            f"{settings['min_word_count']} times in the {_VOCAB_RULE[settings['vocab_from']]}); "
            f"{counts['truncated_captions']:,} captions cut to {self.max_caption_length} words; "
            f"{rows:,} caption rows left out"
            + (f", {without:,} images without captions" if without else "")
            + f" -> {self.root}"
        )

    def __repr__(self) -> str:
        return f"PreparedDataset({self.summary()})"


def prepare_dataset(
    dataset: str = "flickr8k",
    data_dir: str | os.PathLike | None = None,
    work_dir: str | os.PathLike = "work",
    min_word_count: int = 5,
    max_caption_length: int = 20,
    vocab_from: str = "train",
    split: str | None = None,
    val_size: int | float = 0.1,
    test_size: int | float = 0.1,
    seed: int = 0,
    karpathy_json: str | os.PathLike | None = None,
    max_bad_images: int | float | None = None,
    download_timeout: float = DOWNLOAD_TIMEOUT,
    verbose: bool = True,
) -> PreparedDataset:
    """Prepare ``dataset`` ('flickr8k', 'flickr30k', 'coco', 'demo', or any name with ``data_dir``).

    ``data_dir`` skips downloading (the layout is looked for there); 'demo' without it generates
    the synthetic demo under ``work_dir/sources/demo``. ``split``: 'karpathy' (required), 'seeded'
    (a split by image from ``seed``, ``val_size``/``test_size`` as fractions or image counts), or
    None: Karpathy when a split file is given (``karpathy_json``: a Karpathy json, or a folder of
    the Flickr8k split lists), found next to the data or attached, or (when downloading) shipped
    or on Kaggle, else seeded. ``max_bad_images`` (a fraction below 1 or a count; default 1% of the
    images, at least 10) is how many images may be missing or empty on disk before this fails instead
    of dropping them. The vocabulary holds the words seen at least ``min_word_count`` times in the
    training captions (``vocab_from='train'``) or in every split's (``'all'``).
    """
    _check_arguments(dataset, split, vocab_from)
    work_dir = Path(work_dir)
    if dataset == "demo" and data_dir is None:
        data_dir = make_demo_dataset(work_dir / "sources" / "demo", num_images=DEMO_IMAGES)
    layout = download_dataset(dataset, data_dir, timeout=download_timeout, verbose=verbose)
    split_path = _split_source(dataset, layout, split, karpathy_json, downloaded=data_dir is None,
                               verbose=verbose)
    karpathy = read_split(split_path) if split_path else None
    settings = {
        "dataset": dataset, "min_word_count": min_word_count, "vocab_from": vocab_from,
        "max_caption_length": max_caption_length,
        "split": "karpathy" if karpathy else "seeded", "val_size": None if karpathy else val_size,
        "test_size": None if karpathy else test_size, "seed": None if karpathy else seed,
        "max_bad_images": max_bad_images,
    }
    source = _source_record(layout, karpathy)
    key = _artifact_key(dataset, settings, source)
    root = work_dir / "data" / key
    manifest = _trusted_manifest(root)
    if manifest is None:
        _build(root, layout, karpathy, settings, source, key)
    elif manifest["source"]["image_dir"] != source["image_dir"]:
        # Same captions, same settings, but the images now live elsewhere (a new Kaggle mount path).
        manifest["source"].update(root=source["root"], image_dir=source["image_dir"])
        _write_json(root / "manifest.json", manifest)
    prepared = PreparedDataset.load(root)
    if verbose:
        _print_report(prepared, reused=manifest is not None)
    return prepared


def _check_arguments(dataset: str, split: str | None, vocab_from: str) -> None:
    if vocab_from not in VOCAB_SOURCES:
        raise ValueError(f"vocab_from must be one of {', '.join(VOCAB_SOURCES)}, got {vocab_from!r}")
    if split not in (None, "karpathy", "seeded"):
        raise ValueError(f"split must be None, 'karpathy' or 'seeded', got {split!r}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", dataset):
        raise ValueError(f"dataset name {dataset!r} may only use letters, digits, '_', '.', '-'")


def _print_report(prepared: PreparedDataset, reused: bool) -> None:
    """The summary line, then what was left out and why, with examples."""
    print(("reusing " if reused else "prepared ") + prepared.summary())
    for reason, entry in prepared.manifest["dropped"].items():
        unit = "images" if reason == IMAGES_WITHOUT_CAPTIONS else "caption rows"
        print(f"  left out {entry['count']:,} {unit}: {reason}, e.g. {'; '.join(entry['examples'][:3])}")


def _source_record(layout: DatasetLayout, karpathy: KarpathySplit | None) -> dict:
    """Where the data came from, recorded in the manifest: the caption files and split file by
    identity (a change makes a new prepared folder), the folders by path."""
    return {
        "kind": layout.kind,
        "root": str(layout.root),
        "image_dir": str(layout.image_dir),
        "caption_files": [_file_identity(path) for path in layout.caption_files],
        "karpathy_json": _split_identity(karpathy) if karpathy else None,
    }


# ----------------------------------------------------------------------------------------------
# Identity and trust


def _file_identity(path: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def _split_identity(split: KarpathySplit) -> dict:
    """Where a standard split came from, and a hash of the split itself: a Karpathy json and the
    Flickr8k lists that hold the same split give the same key, so prepared data and feature stores
    are reused whichever of them a session has."""
    canonical = json.dumps(sorted(split.split_of.items())).encode()
    return {"name": split.path.name, "images": len(split.split_of),
            "sha256": hashlib.sha256(canonical).hexdigest()}


def _artifact_key(dataset: str, settings: dict, source: dict) -> str:
    """Dataset name and a hash of the format, the settings and the caption files' contents."""
    identity = {
        "format": FORMAT_VERSION,
        "settings": settings,
        "caption_files": [(f["name"], f["sha256"]) for f in source["caption_files"]],
        "karpathy": source["karpathy_json"] and source["karpathy_json"]["sha256"],
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return f"{dataset}-{digest[:12]}"


def _trusted_manifest(root: Path) -> dict | None:
    """The manifest of a completely built folder, else None."""
    try:
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not manifest.get("complete") or manifest.get("format_version") != FORMAT_VERSION:
        return None
    for name, size in manifest.get("files", {}).items():
        path = root / name
        if not path.is_file() or path.stat().st_size != size:
            return None
    return manifest


def _write_json(path: Path, data) -> None:
    write_json_atomic(path, data, indent=1)


# ----------------------------------------------------------------------------------------------
# Splits


def _split_source(dataset: str, layout: DatasetLayout, split: str | None,
                  karpathy_json: str | os.PathLike | None, downloaded: bool, verbose: bool) -> Path | None:
    """The standard split to use (a Karpathy json, or a folder of Flickr8k split lists), or None
    for a seeded split.

    Looked for in order: ``karpathy_json``; a split file beside the data; a Karpathy json attached
    to the Kaggle notebook; for Flickr8k the official split lists shipped with this package (the
    same split; used with ``split='karpathy'`` or a Kaggle copy, while ``split=None`` on a
    ``data_dir`` of one's own stays seeded); when downloading, the Karpathy splits through
    kagglehub. When none is found, ``split='karpathy'`` fails with the fixes and ``split=None``
    says once that the split is seeded.
    """
    if split == "seeded":
        return None
    if karpathy_json is not None:
        path = Path(karpathy_json)
        if not path.exists():
            raise FileNotFoundError(f"karpathy_json {path} does not exist")
        return path
    shipped = SHIPPED_FLICKR8K_SPLIT if dataset == "flickr8k" and (split or downloaded) else None
    found = layout.karpathy_json or layout.split_lists or find_attached_karpathy_json(dataset) or shipped
    if found is not None:
        return found
    if dataset not in KARPATHY_FILES:
        if split == "karpathy":
            raise DatasetFormatError(
                f"split='karpathy' but {dataset!r} has no Karpathy split ({', '.join(KARPATHY_FILES)} do): "
                f"pass karpathy_json=... or use split='seeded' (notebook parameters cell: "
                f'OVERRIDES = ["data.split=seeded"]; command line: data.split=seeded)'
            )
        return None
    reason = f"it is not beside the data in {layout.root} nor attached under {input_root()}"
    if downloaded:
        try:
            return download_karpathy_split(dataset)
        except DatasetUnavailableError as err:
            reason += f", and kagglehub could not get it ({err})"
    if split == "karpathy":
        raise DatasetFormatError(
            f"split='karpathy' needs the Karpathy split file {KARPATHY_FILES[dataset]}, but {reason}.\n"
            f"To fix it, either:\n"
            f"  - attach the Kaggle dataset {KARPATHY_HANDLE!r} (Add Input -> Datasets) and rerun, or\n"
            f"  - use a seeded split by image: in the notebook's parameters cell set "
            f'OVERRIDES = ["data.split=seeded"]; on the command line add data.split=seeded; in Python '
            f"prepare_dataset(..., split='seeded')."
        )
    if verbose:
        print(f"No Karpathy split for {dataset} ({reason}): using a seeded split by image. For the split "
              f"papers report on, attach the Kaggle dataset {KARPATHY_HANDLE!r}.")
    return None


def _split_count(size: int | float, total: int, name: str) -> int:
    if isinstance(size, float) and 0 <= size < 1:
        return round(size * total)
    if isinstance(size, int) and size >= 0:
        return size
    raise ValueError(f"{name} must be a fraction in [0, 1) or an image count, got {size!r}")


def _seeded_split(images: list[str], val_size, test_size, seed: int) -> dict[str, list[str]]:
    """A reproducible split by image: shuffle the sorted names with ``seed``, cut test, val, train."""
    order = sorted(images)
    random.Random(seed).shuffle(order)
    n_val = _split_count(val_size, len(order), "val_size")
    n_test = _split_count(test_size, len(order), "test_size")
    if n_val + n_test >= len(order):
        raise ValueError(
            f"val_size={val_size!r} and test_size={test_size!r} leave no training images out of {len(order)}"
        )
    return {
        "train": sorted(order[n_val + n_test:]),
        "val": sorted(order[n_test:n_test + n_val]),
        "test": sorted(order[:n_test]),
    }


def _karpathy_splits(karpathy: KarpathySplit, rows_per_image: Counter, caption_file: Path,
                     dropped: dict) -> dict[str, list[str]]:
    """Our images in the Karpathy split; fails when the split file does not fit the images. The
    caption rows of images outside the split are counted as dropped."""
    images = sorted(rows_per_image)
    splits: dict[str, list[str]] = {name: [] for name in SPLITS}
    outside = []
    for image in sorted(images):
        split = karpathy.split_of.get(image_key(image))
        if split is None:
            outside.append(image)
        else:
            splits[split].append(image)
    matched = len(images) - len(outside)
    if matched < 0.5 * len(images) or not splits["train"]:
        json_examples = sorted(karpathy.split_of)[:3]
        raise DatasetFormatError(
            f"Karpathy split {karpathy.path} (dataset {karpathy.dataset!r}, "
            f"{len(karpathy.split_of):,} images) does not fit {caption_file}: only {matched:,} of its "
            f"{len(images):,} images are in the split "
            f"({len(splits['train']):,} in train). Examples from the json: {json_examples}; examples "
            f"from the captions: {sorted(images)[:3]}. Use the split file of this dataset, or split='seeded'."
        )
    for image in outside:
        _drop(dropped, "image not in the Karpathy split", image, rows_per_image[image])
    return splits


# ----------------------------------------------------------------------------------------------
# Building


def _drop(dropped: dict, reason: str, where: str, count: int = 1) -> None:
    """Count ``count`` caption rows (images, for ``IMAGES_WITHOUT_CAPTIONS``) dropped for ``reason``."""
    entry = dropped.setdefault(reason, {"count": 0, "examples": []})
    entry["count"] += count
    if len(entry["examples"]) < _EXAMPLES_PER_REASON:
        entry["examples"].append(where)


def _images_on_disk(layout: DatasetLayout) -> dict[str, int]:
    """Image path (relative to the image folder) -> size in bytes, for every image file there."""
    sizes = {}
    for subdir in layout.image_subdirs:
        folder = layout.image_dir / subdir
        prefix = f"{subdir}/" if subdir else ""
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.lower().endswith(IMAGE_EXTENSIONS) and entry.is_file():
                    sizes[prefix + entry.name] = entry.stat().st_size
    return sizes


def _bad_image_count(max_bad_images: int | float | None, images: int) -> int:
    """How many missing or empty images may be dropped: a fraction below 1 of `images`, a count, or
    (None) 1% of them but at least 10."""
    if max_bad_images is None:
        return max(10, images // 100)
    return int(max_bad_images * images) if max_bad_images < 1 else int(max_bad_images)


def _clean_rows(layout: DatasetLayout, max_bad_images: int | float | None, dropped: dict):
    """Rows worth keeping as (image, tokens, where, repeats), ``repeats`` naming the earlier row of
    the same image with the same tokens (else None); reports the rest into ``dropped``."""
    table = layout.read()
    for row in table.dropped:
        _drop(dropped, row.reason, f"{row.where}: {row.detail}" if row.detail else row.where)
    on_disk = _images_on_disk(layout)
    kept, first_seen, bad_images = [], {}, {}
    for row in table.rows:
        tokens = tokenize(row.caption)
        tokens_key = (row.image, " ".join(tokens))
        size = on_disk.get(row.image)
        if not row.caption.strip():
            _drop(dropped, "empty or whitespace-only caption", row.where)
        elif not tokens:
            _drop(dropped, "caption has no words", f"{row.where}: {row.caption!r}")
        elif size is None or size == 0:
            reason = "image file not found" if size is None else "image file is empty (0 bytes)"
            bad_images.setdefault(row.image, f"{row.image} ({row.where}: {reason})")
            _drop(dropped, reason, f"{row.where}: {row.image}")
        else:
            kept.append((row.image, tokens, row.where, first_seen.get(tokens_key)))
            first_seen.setdefault(tokens_key, row.where)
    named = {row.image for row in table.rows}
    limit = _bad_image_count(max_bad_images, len(named))
    if len(bad_images) > limit:
        examples = "; ".join(list(bad_images.values())[:5])
        raise DatasetFormatError(
            f"{len(bad_images):,} of the {len(named):,} images named in {layout.caption_files[0]} are "
            f"missing or empty in {layout.image_dir} (more than the {limit:,} that data.max_bad_images="
            f"{max_bad_images} allows), e.g. {examples}. Check that the image folder is complete, or raise "
            "data.max_bad_images (a fraction below 1 or a count) to drop them: in the config, on the command "
            "line (data.max_bad_images=0.05) or in a notebook's OVERRIDES."
        )
    if not kept:
        raise DatasetFormatError(f"no usable caption rows in {', '.join(map(str, layout.caption_files))}")
    for image in sorted(set(on_disk) - named):
        _drop(dropped, IMAGES_WITHOUT_CAPTIONS, image)
    return kept


def _build(root: Path, layout: DatasetLayout, karpathy: KarpathySplit | None, settings: dict, source: dict,
           key: str) -> None:
    """Build the artifacts in a temporary folder beside ``root``, then rename it into place (unless
    another process finished the same build first)."""
    with atomic_directory(root, keep_target=lambda target: _trusted_manifest(target) is not None) as building:
        _write_artifacts(building, layout, karpathy, settings, source, key)


def _check_space(folder: Path, encoded: list, references: dict, splits: dict) -> None:
    """Refuse before writing when the prepared files would not fit (helpers.space): the encoded
    captions and their image index (int32), and the references and splits as JSON text."""
    text = sum(len(caption) + 4 for by_image in references.values() for captions in by_image.values()
               for caption in captions)
    names = sum(len(name) + 4 for images in splits.values() for name in images)
    needed = 4 * (sum(len(row) for row in encoded) + len(encoded)) + text + 2 * names + 10**5
    check_space(folder, needed, f"The prepared data {folder.parent}", [
        "free space: delete older prepared data, feature stores or runs from the work dir",
        "attach the notebook output that holds this prepared data (notebook 00's) instead",
    ])


def _captions_and_references(rows: list, splits: dict[str, list[str]], dropped: dict) -> tuple[dict, dict]:
    """image -> the token lists it is trained on, and image -> its references (every caption).

    A caption repeating another of the same image is left out of the training captions only: papers
    score against every reference, repeats included."""
    split_of = {image: split for split in SPLITS for image in splits[split]}
    captions_by_image, references_by_image = defaultdict(list), defaultdict(list)
    for image, tokens, where, repeats in rows:
        references_by_image[image].append(tokens)
        if repeats is not None and split_of.get(image) == "train":
            _drop(dropped, REPEATED_TRAINING_CAPTION, f"{where} repeats {repeats}")
        else:
            captions_by_image[image].append(tokens)
    return captions_by_image, references_by_image


def _write_artifacts(folder: Path, layout: DatasetLayout, karpathy: KarpathySplit | None, settings: dict,
                     source: dict, key: str) -> None:
    dropped: dict = {}
    rows = _clean_rows(layout, settings["max_bad_images"], dropped)
    rows_per_image = Counter(image for image, *_ in rows)
    if karpathy is not None:
        splits = _karpathy_splits(karpathy, rows_per_image, layout.caption_files[0], dropped)
    else:
        splits = _seeded_split(list(rows_per_image), settings["val_size"], settings["test_size"],
                               settings["seed"])

    captions_by_image, references_by_image = _captions_and_references(rows, splits, dropped)
    counted = (
        (tokens for image in splits["train"] for tokens in captions_by_image[image])
        if settings["vocab_from"] == "train"
        else (tokens for split in SPLITS for image in splits[split] for tokens in references_by_image[image])
    )
    vocab = Vocabulary.build(counted, settings["min_word_count"])
    max_length = settings["max_caption_length"]
    encoded, caption_image, ranges, references = [], [], {}, {}
    truncated: Counter = Counter()
    for split in SPLITS:
        start = len(encoded)
        references[split] = {}
        for index, image in enumerate(splits[split]):
            references[split][image] = [" ".join(tokens) for tokens in references_by_image[image]]
            for tokens in captions_by_image[image]:
                encoded.append(vocab.encode(tokens, max_length))
                caption_image.append(index)
                truncated[split] += len(tokens) > max_length
        ranges[split] = [start, len(encoded)]

    _check_space(folder, encoded, references, splits)
    vocab.save(folder / "vocab.json")
    np.save(folder / "captions.npy", np.asarray(encoded, dtype=np.int32).reshape(-1, max_length + 2))
    np.save(folder / "caption_image.npy", np.asarray(caption_image, dtype=np.int32))
    _write_json(folder / "splits.json", splits)
    _write_json(folder / "references.json", references)
    counts = {
        "images": {split: len(splits[split]) for split in SPLITS},
        "captions": {split: ranges[split][1] - ranges[split][0] for split in SPLITS},
        "vocabulary": len(vocab),  # ids, the special tokens included
        "vocabulary_words": len(vocab) - len(SPECIAL_TOKENS),
        "truncated_captions": sum(truncated.values()),
        "truncated_by_split": {split: truncated[split] for split in SPLITS},
    }
    manifest = {
        "format_version": FORMAT_VERSION,
        "dataset": settings["dataset"],
        "key": key,
        "split_method": settings["split"],
        "settings": settings,
        "source": source,
        "counts": counts,
        "caption_ranges": ranges,
        "dropped": dropped,
        "files": {name: (folder / name).stat().st_size for name in _FILES},
        "complete": True,
    }
    _write_json(folder / "manifest.json", manifest)
