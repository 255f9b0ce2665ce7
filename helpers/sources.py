"""Dataset layouts on disk and kagglehub downloads.

Every supported layout is read into the same table of ``(image, caption)`` rows, ``image`` being
a path relative to the layout's image folder:

* Flickr8k / Flickr30k as published by ``adityajn105``: ``Images/`` and ``captions.txt`` (CSV with
  the header ``image,caption``; captions holding commas are double-quoted).
* The original Flickr8k release: ``Flickr8k.token.txt`` (``<image>#<n><TAB><caption>`` lines) with
  the split lists beside it, and the images in ``Flicker8k_Dataset/`` next to it or one level up.
* The older Flickr30k (``hsankesara/flickr-image-dataset``): ``flickr30k_images/results.csv``,
  ``|``-separated with padded spaces (``image_name| comment_number| comment``).
* MS-COCO 2017: ``coco2017/{train2017,val2017}/`` and ``coco2017/annotations/captions_*.json``.
* Karpathy split files (``dataset_flickr8k.json`` ...) give the standard train/val/test split. For
  Flickr8k it is exactly the official release's ``Flickr_8k.{train,dev,test}Images.txt`` lists,
  which ship unedited with this package (``helpers/data/flickr8k/``), so Flickr8k needs no split file.

Without ``data_dir`` a dataset attached to the Kaggle notebook is used in place (see
``helpers.inputs``); kagglehub downloads it only when none is attached.

Non-UTF-8 text: a row whose bytes are not valid UTF-8 is dropped and reported (file and line);
a file where more than a tenth of the lines are not UTF-8 is rejected as a whole with a hint to
convert it, since then it is a file in another encoding rather than a few damaged rows.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from helpers.inputs import (
    DOWNLOAD_TIMEOUT,
    attached_dataset,
    find_attached_file,
    input_root,
    run_with_progress_timeout,
    walk,
)

KAGGLE_HANDLES = {
    "flickr8k": "adityajn105/flickr8k",
    "flickr30k": "adityajn105/flickr30k",
    "coco": "awsaf49/coco-2017-dataset",
}
# Every Kaggle copy found attached in place; the KAGGLE_HANDLES one is downloaded when none is.
ATTACHED_HANDLES = {
    "flickr8k": ("adityajn105/flickr8k",),
    "flickr30k": ("adityajn105/flickr30k", "hsankesara/flickr-image-dataset"),
    "coco": ("awsaf49/coco-2017-dataset",),
}
KARPATHY_HANDLE = "shtvkumar/karpathy-splits"
KARPATHY_FILES = {"flickr8k": "dataset_flickr8k.json", "flickr30k": "dataset_flickr30k.json",
                  "coco": "dataset_coco.json"}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# The official Flickr8k release's split lists (one image file name a line), split -> file name.
FLICKR8K_SPLIT_FILES = {"train": "Flickr_8k.trainImages.txt", "val": "Flickr_8k.devImages.txt",
                        "test": "Flickr_8k.testImages.txt"}
SHIPPED_FLICKR8K_SPLIT = Path(__file__).resolve().parent / "data" / "flickr8k"

LAYOUT_HELP = {
    "flickr_csv": "captions.txt (CSV, header 'image,caption') next to an Images/ folder",
    "flickr8k_token": "Flickr8k.token.txt ('<image>#<n><TAB><caption>') near a Flicker8k_Dataset/ folder",
    "flickr30k_results": "results.csv ('image_name| comment_number| comment') next to a folder of images",
    "coco": "annotations/captions_train2017.json (and/or captions_val2017.json) next to train2017/, val2017/",
}
DATASET_LAYOUTS = {
    "flickr8k": ("flickr_csv", "flickr8k_token"),
    "flickr30k": ("flickr_csv", "flickr30k_results"),
    "coco": ("coco",),
}
ALL_LAYOUTS = ("flickr_csv", "flickr8k_token", "flickr30k_results", "coco")
# Caption file (lower case) -> layout kind, for the Flickr layouts.
_FLICKR_CAPTION_FILES = {"captions.txt": "flickr_csv", "flickr8k.token.txt": "flickr8k_token",
                         "results.csv": "flickr30k_results"}
# Image folder names looked for first beside a Flickr caption file (lower case).
_IMAGE_FOLDER_NAMES = ("images", "flicker8k_dataset", "flickr8k_dataset")

_SEARCH_DEPTH = 3
_MAX_UNDECODABLE_FRACTION = 0.1
_COCO_ID = re.compile(r"(?:^|_)(\d{12})\.jpg$", re.IGNORECASE)


class DatasetFormatError(ValueError):
    """A dataset file or folder that cannot be used as it is; the message names the file and row."""


class DatasetUnavailableError(RuntimeError):
    """The dataset could not be downloaded or attached; the message says how to provide it."""


@dataclass(frozen=True)
class CaptionRow:
    """One caption of one image; ``where`` names its file and row for reports."""

    image: str
    caption: str
    where: str


@dataclass(frozen=True)
class DroppedRow:
    """A row a parser could not use: where it is, why (a short reason shared by similar rows), and
    what it held."""

    where: str
    reason: str
    detail: str = ""


@dataclass
class CaptionTable:
    """The rows a parser read, and the rows it had to drop (with the reason)."""

    rows: list[CaptionRow] = field(default_factory=list)
    dropped: list[DroppedRow] = field(default_factory=list)


@dataclass(frozen=True)
class DatasetLayout:
    """Where a dataset's captions and images are, as found on disk.

    ``image_subdirs`` are the folders (relative to ``image_dir``) that hold the images: ``("",)``
    for Flickr, ``("train2017", "val2017")`` for COCO, whose rows name ``train2017/<file>``.
    """

    kind: str
    root: Path
    image_dir: Path
    caption_files: tuple[Path, ...]
    image_subdirs: tuple[str, ...] = ("",)
    karpathy_json: Path | None = None
    split_lists: Path | None = None  # a folder with the official Flickr8k split lists, beside the data

    def read(self) -> CaptionTable:
        """Parse the caption files into rows."""
        if self.kind == "flickr_csv":
            return read_flickr_csv(self.caption_files[0])
        if self.kind == "flickr8k_token":
            return read_flickr8k_token(self.caption_files[0])
        if self.kind == "flickr30k_results":
            return read_flickr30k_results(self.caption_files[0])
        return read_coco_captions(self.caption_files)


# ----------------------------------------------------------------------------------------------
# Parsers


def _decode_lines(path: Path) -> tuple[list[str], dict[int, str]]:
    """The file's lines (1-based line i is ``lines[i - 1]``) and the non-UTF-8 ones (line -> bytes)."""
    if not path.is_file():
        raise DatasetFormatError(f"captions file not found: {path}")
    data = path.read_bytes()
    _refuse_utf16(path, data)
    raw_lines = data.splitlines(keepends=True)
    lines, undecodable = [], {}
    for number, raw in enumerate(raw_lines, start=1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            undecodable[number] = raw[:60].decode("utf-8", errors="replace")
            lines.append(raw.decode("utf-8", errors="replace"))
    if lines and lines[0].startswith("\ufeff"):
        lines[0] = lines[0][1:]
    if len(undecodable) > _MAX_UNDECODABLE_FRACTION * max(len(lines), 1):
        first = min(undecodable)
        raise DatasetFormatError(
            f"{path} is not UTF-8 text: {len(undecodable)} of {len(lines)} lines are not valid UTF-8 "
            f"(first at line {first}: {undecodable[first]!r}). Convert it to UTF-8, e.g. "
            f"`iconv -f latin1 -t utf-8 {path.name} > fixed.txt`."
        )
    return lines, undecodable


def _refuse_utf16(path: Path, data: bytes) -> None:
    """UTF-16 text (Windows editors' "Unicode") has a byte-order mark or a NUL byte beside every letter."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in data[:4096]:
        raise DatasetFormatError(
            f"{path} is UTF-16 text (a byte-order mark or NUL bytes between the letters), not UTF-8. "
            f"Save it as UTF-8 (an editor's \"Save as... UTF-8\", or `iconv -f utf-16 -t utf-8 {path.name} "
            f"> {path.stem}.utf8{path.suffix}`) and use that file."
        )


def _check_header(path: Path, found: list[str], expected: list[str], separator: str) -> None:
    if [cell.strip().lower() for cell in found] != expected:
        raise DatasetFormatError(
            f"{path} line 1: expected the header {separator.join(expected)!r}, found "
            f"{separator.join(found)!r}. Add that header as the first line (or fix the column names)."
        )


def read_flickr_csv(path: str | os.PathLike) -> CaptionTable:
    """Read a Flickr8k/Flickr30k ``captions.txt``: CSV, header ``image,caption``, quoted commas.

    A row with an unquoted comma in its caption is kept (the extra fields belong to the caption).
    """
    path = Path(path)
    lines, undecodable = _decode_lines(path)
    reader = csv.reader(lines)
    table = CaptionTable()
    header_seen = False
    last_line = 0
    for fields in reader:
        first_line, last_line = last_line + 1, reader.line_num
        if not fields or not any(cell.strip() for cell in fields):
            continue
        if not header_seen:
            _check_header(path, fields, ["image", "caption"], ",")
            header_seen = True
            continue
        where = f"{path.name} line {first_line}"
        bad_lines = [n for n in range(first_line, last_line + 1) if n in undecodable]
        if bad_lines:
            table.dropped.append(DroppedRow(where, "not valid UTF-8", repr(undecodable[bad_lines[0]])))
        elif len(fields) < 2:
            table.dropped.append(DroppedRow(where, "expected 2 fields 'image,caption'", repr(fields)[:100]))
        elif not fields[0].strip():
            table.dropped.append(DroppedRow(where, "empty image name"))
        else:
            table.rows.append(CaptionRow(fields[0].strip(), ",".join(fields[1:]).strip(), where))
    if not header_seen:
        raise DatasetFormatError(f"{path} is empty: expected the header 'image,caption' and caption rows")
    return table


def read_flickr8k_token(path: str | os.PathLike) -> CaptionTable:
    """Read the original release's ``Flickr8k.token.txt``: ``<image>#<n><TAB><caption>`` a line."""
    path = Path(path)
    lines, undecodable = _decode_lines(path)
    table = CaptionTable()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path.name} line {number}"
        name, tab, caption = line.rstrip("\r\n").partition("\t")
        image, hash_sign, index = name.strip().rpartition("#")
        if number in undecodable:
            table.dropped.append(DroppedRow(where, "not valid UTF-8", repr(undecodable[number])))
        elif not tab or not hash_sign or not index.isdigit():
            reason = "expected '<image>#<n><TAB><caption>'"
            table.dropped.append(DroppedRow(where, reason, repr(line.strip()[:80])))
        elif not image:
            table.dropped.append(DroppedRow(where, "empty image name"))
        else:
            table.rows.append(CaptionRow(image, caption.strip(), where))
    if not table.rows and not table.dropped:
        raise DatasetFormatError(f"{path} is empty: expected '<image>#<n><TAB><caption>' lines")
    return table


_RESULTS_HEADER = ["image_name", "comment_number", "comment"]
_NUMBER_THEN_CAPTION = re.compile(r"^(\d+)\s+(\S.*)$")


def read_flickr30k_results(path: str | os.PathLike) -> CaptionTable:
    """Read the older Flickr30k ``results.csv``: ``image_name| comment_number| comment``.

    Not parsed as CSV: captions hold unbalanced double quotes. The published file has a row whose
    second ``|`` is missing (``name.jpg| 4 A dog ...``); such rows are repaired, not dropped.
    """
    path = Path(path)
    lines, undecodable = _decode_lines(path)
    table = CaptionTable()
    header_seen = False
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = [part.strip() for part in line.rstrip("\r\n").split("|", 2)]
        if not header_seen:
            _check_header(path, parts, _RESULTS_HEADER, "| ")
            header_seen = True
            continue
        where = f"{path.name} line {number}"
        if number in undecodable:
            table.dropped.append(DroppedRow(where, "not valid UTF-8", repr(undecodable[number])))
            continue
        if len(parts) == 2 and (repaired := _NUMBER_THEN_CAPTION.match(parts[1])):
            parts = [parts[0], repaired.group(1), repaired.group(2)]
        if len(parts) != 3:
            reason = "expected 3 '|'-separated fields 'image_name| comment_number| comment'"
            table.dropped.append(DroppedRow(where, reason, repr(line.strip()[:80])))
        elif not parts[0]:
            table.dropped.append(DroppedRow(where, "empty image name"))
        else:
            table.rows.append(CaptionRow(parts[0], parts[2], where))
    if not header_seen:
        raise DatasetFormatError(f"{path} is empty: expected the header {'| '.join(_RESULTS_HEADER)!r}")
    return table


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise DatasetFormatError(f"file not found: {path}")
    try:
        with path.open(encoding="utf-8") as f:
            data = json.load(f)
    except UnicodeDecodeError as err:
        raise DatasetFormatError(f"{path} is not UTF-8 text (byte {err.start}): {err.reason}") from err
    except json.JSONDecodeError as err:
        raise DatasetFormatError(
            f"{path} line {err.lineno} column {err.colno}: invalid json: {err.msg}"
        ) from err
    if not isinstance(data, dict):
        raise DatasetFormatError(f"{path}: expected a json object at the top, found {type(data).__name__}")
    return data


def _coco_subdir(caption_file: Path) -> str:
    """``captions_train2017.json`` -> ``train2017``: the image folder next to ``annotations/``."""
    return caption_file.stem.removeprefix("captions_")


def read_coco_captions(caption_files: tuple[Path, ...] | list[Path]) -> CaptionTable:
    """Read COCO caption jsons (``images[]`` with id/file_name, ``annotations[]`` with image_id/caption).

    Rows name ``<subdir>/<file_name>``, the subdir coming from the json's name (``train2017``).
    """
    table = CaptionTable()
    for path in map(Path, caption_files):
        data = _load_json(path)
        for key in ("images", "annotations"):
            if not isinstance(data.get(key), list):
                raise DatasetFormatError(
                    f"{path}: expected a list under {key!r} (a COCO captions file has 'images' and "
                    f"'annotations'); found keys {sorted(data)[:10]}"
                )
        subdir = _coco_subdir(path)
        file_names = {}
        for i, image in enumerate(data["images"]):
            try:
                file_names[image["id"]] = image["file_name"]
            except (KeyError, TypeError) as err:
                raise DatasetFormatError(
                    f"{path} images[{i}]: expected 'id' and 'file_name', got {image!r}"[:300]
                ) from err
        for i, annotation in enumerate(data["annotations"]):
            where = f"{path.name} annotations[{i}]"
            if not isinstance(annotation, dict) or not {"image_id", "caption"} <= annotation.keys():
                detail = repr(annotation)[:100]
                table.dropped.append(DroppedRow(where, "expected 'image_id' and 'caption'", detail))
            elif annotation["image_id"] not in file_names:
                detail = f"image_id {annotation['image_id']}"
                table.dropped.append(DroppedRow(where, "image_id not in images[]", detail))
            else:
                image = f"{subdir}/{file_names[annotation['image_id']]}"
                table.rows.append(CaptionRow(image, str(annotation["caption"]).strip(), where))
    return table


def image_key(filename: str) -> str:
    """The name that identifies an image across layouts: COCO's 12-digit id (2014 and 2017 file
    names differ), otherwise the file's base name."""
    base = filename.rsplit("/", 1)[-1]
    coco = _COCO_ID.search(base)
    return f"{coco.group(1)}.jpg" if coco else base


@dataclass(frozen=True)
class KarpathySplit:
    """The Karpathy split: ``image_key(filename)`` -> 'train' / 'val' / 'test' ('restval' is train)."""

    path: Path
    dataset: str
    split_of: dict[str, str]


def read_karpathy_split(path: str | os.PathLike) -> KarpathySplit:
    """Read ``dataset_<name>.json`` (``images[]`` with filename, split and sentences)."""
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data.get("images"), list):
        raise DatasetFormatError(f"{path}: not a Karpathy split file (expected a list under 'images')")
    split_of = {}
    for i, image in enumerate(data["images"]):
        try:
            filename, split = image["filename"], image["split"]
        except (KeyError, TypeError) as err:
            raise DatasetFormatError(
                f"{path} images[{i}]: expected 'filename' and 'split', got {image!r}"[:300]
            ) from err
        if split not in ("train", "restval", "val", "test"):
            raise DatasetFormatError(f"{path} images[{i}] ({filename}): unknown split {split!r}")
        name = f"{int(image['cocoid']):012d}.jpg" if "cocoid" in image else image_key(filename)
        split_of[name] = "train" if split == "restval" else split
    return KarpathySplit(path, str(data.get("dataset", "")), split_of)


def read_split_lists(folder: str | os.PathLike) -> KarpathySplit:
    """The split of the official Flickr8k lists in ``folder`` (``FLICKR8K_SPLIT_FILES``, one image
    file name a line): the same split as Karpathy's ``dataset_flickr8k.json``."""
    folder = Path(folder)
    split_of: dict[str, str] = {}
    for split, name in FLICKR8K_SPLIT_FILES.items():
        path = folder / name
        if not path.is_file():
            expected = ", ".join(FLICKR8K_SPLIT_FILES.values())
            raise DatasetFormatError(f"{path} not found: a folder of Flickr8k split lists holds {expected}")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            image = line.strip()
            if not image:
                continue
            if split_of.get(image_key(image), split) != split:
                raise DatasetFormatError(
                    f"{path.name} line {number}: {image} is also in the {split_of[image_key(image)]} list"
                )
            split_of[image_key(image)] = split
    return KarpathySplit(folder, "flickr8k", split_of)


def read_split(path: str | os.PathLike) -> KarpathySplit:
    """A standard split from a Karpathy json file or from a folder of Flickr8k split lists."""
    path = Path(path)
    return read_split_lists(path) if path.is_dir() else read_karpathy_split(path)


# ----------------------------------------------------------------------------------------------
# Finding a layout in a folder


def _count_images(folder: Path) -> int:
    try:
        return sum(1 for e in os.scandir(folder) if e.name.lower().endswith(IMAGE_EXTENSIONS))
    except OSError:
        return 0


def _image_folder_in(parent: Path) -> Path | None:
    """The ``Images`` (or ``Flicker8k_Dataset``) folder in ``parent``, else the folder there (itself
    included) with the most images."""
    folders = sorted((p for p in parent.iterdir() if p.is_dir()), key=lambda p: p.name)
    for name in _IMAGE_FOLDER_NAMES:
        for folder in folders:
            if folder.name.lower() == name:
                return folder
    counts = [(_count_images(folder), folder) for folder in [*folders, parent]]
    best_count, best = max(counts, key=lambda item: item[0], default=(0, None))
    return best if best_count else None


def _image_folder_next_to(caption_file: Path, kind: str) -> Path | None:
    """The image folder beside a Flickr captions file; for the original Flickr8k release, whose
    text files and images come as two folders, also one level up."""
    found = _image_folder_in(caption_file.parent)
    if found is None and kind == "flickr8k_token":
        found = _image_folder_in(caption_file.parent.parent)
    return found


def _layout_candidates(root: Path):
    """(depth, layout) for every dataset layout under ``root``."""
    for folder, depth, files in walk(root, _SEARCH_DEPTH):
        names = {name.lower(): folder / name for name in files}
        for file_name, kind in _FLICKR_CAPTION_FILES.items():
            if file_name in names:
                image_dir = _image_folder_next_to(names[file_name], kind)
                if image_dir is None:
                    raise DatasetFormatError(
                        f"{names[file_name]} has no image folder next to it: expected "
                        f"{LAYOUT_HELP[kind]}"
                    )
                yield depth, DatasetLayout(kind, root, image_dir, (names[file_name],))
        if folder.name.lower() == "annotations":
            jsons = [folder / name for name in files if re.fullmatch(r"captions_\w+\.json", name)]
            present = [f for f in jsons if (folder.parent / _coco_subdir(f)).is_dir()]
            if jsons and not present:
                raise DatasetFormatError(
                    f"{folder} holds {', '.join(f.name for f in jsons)} but none of the image folders "
                    f"{', '.join(_coco_subdir(f) + '/' for f in jsons)} exists in {folder.parent}"
                )
            if present:
                yield depth, DatasetLayout("coco", root, folder.parent, tuple(present),
                                           tuple(_coco_subdir(f) for f in present))


def find_karpathy_json(root: str | os.PathLike, dataset: str) -> Path | None:
    """``dataset_<dataset>.json`` in ``root`` or a few levels below it, if there is one."""
    wanted = KARPATHY_FILES.get(dataset)
    if wanted is None:
        return None
    for folder, _, files in walk(root, _SEARCH_DEPTH):
        if wanted in files:
            return folder / wanted
    return None


def find_split_lists(root: str | os.PathLike) -> Path | None:
    """The folder in or a few levels below ``root`` holding the official Flickr8k split lists."""
    wanted = set(FLICKR8K_SPLIT_FILES.values())
    for folder, _, files in walk(root, _SEARCH_DEPTH):
        if wanted <= set(files):
            return folder
    return None


def find_attached_karpathy_json(dataset: str) -> Path | None:
    """``dataset_<dataset>.json`` in any dataset attached to the notebook (see helpers.inputs)."""
    wanted = KARPATHY_FILES.get(dataset)
    return find_attached_file(wanted) if wanted else None


def find_layout(root: str | os.PathLike, dataset: str | None = None) -> DatasetLayout:
    """The dataset layout in ``root`` (searched a few levels down), with its Karpathy json if present.

    ``dataset`` ('flickr8k', 'flickr30k', 'coco') restricts the accepted layouts; any other name
    accepts every layout.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetFormatError(f"data_dir {root} is not a folder")
    kinds = DATASET_LAYOUTS.get(dataset, ALL_LAYOUTS)
    candidates = [(depth, layout) for depth, layout in _layout_candidates(root) if layout.kind in kinds]
    if not candidates:
        present = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())[:15]
        expected = "; or ".join(LAYOUT_HELP[k] for k in kinds)
        raise DatasetFormatError(
            f"no {dataset or 'caption'} dataset found in {root} (searched {_SEARCH_DEPTH} levels down): "
            f"the captions file is missing. Expected {expected}. Found: {present or 'an empty folder'}"
        )
    shallowest = min(depth for depth, _ in candidates)
    best = [layout for depth, layout in candidates if depth == shallowest]
    if len(best) > 1:
        listing = ", ".join(str(layout.caption_files[0]) for layout in best)
        raise DatasetFormatError(
            f"{root} holds several datasets ({listing}); pass data_dir= the folder of the one to use"
        )
    layout = best[0]
    karpathy = find_karpathy_json(root, dataset) if dataset else None
    split_lists = find_split_lists(root) if dataset == "flickr8k" else None
    return DatasetLayout(
        layout.kind, root, layout.image_dir, layout.caption_files, layout.image_subdirs, karpathy, split_lists
    )


# ----------------------------------------------------------------------------------------------
# Downloads


def _kagglehub_cache_folder(handle: str) -> Path:
    """Where kagglehub keeps (and downloads) ``handle``: $KAGGLEHUB_CACHE/datasets/<owner>/<slug>."""
    owner, slug = handle.split("/")[:2]
    cache = Path(os.environ.get("KAGGLEHUB_CACHE") or Path.home() / ".cache" / "kagglehub")
    return cache / "datasets" / owner / slug


def _kagglehub_cache_copy(handle: str) -> Path | None:
    """The newest complete copy of ``handle`` in the kagglehub cache, if any (no network needed)."""
    base = _kagglehub_cache_folder(handle)
    versions = [
        p for p in (base / "versions").glob("*")
        if p.name.isdigit() and (base / f"{p.name}.complete").exists()
    ]
    return max(versions, key=lambda p: int(p.name), default=None)


def _download_with_timeout(handle: str, timeout: float) -> Path:
    """``kagglehub.dataset_download(handle)``, given up after ``timeout`` seconds in which its cache
    folder did not grow (kagglehub can hang on a network that drops packets)."""
    import kagglehub

    folder = _kagglehub_cache_folder(handle)
    return Path(run_with_progress_timeout(lambda: kagglehub.dataset_download(handle), folder, timeout,
                                          "Kaggle"))


def kaggle_path(handle: str, timeout: float = DOWNLOAD_TIMEOUT, verbose: bool = True) -> Path:
    """The local folder of a Kaggle dataset: attached in a Kaggle notebook, downloaded (or cached)
    elsewhere. Any failure, or ``timeout`` seconds without progress, becomes a
    ``DatasetUnavailableError``; a complete copy in the kagglehub cache is used when offline."""
    try:
        return _download_with_timeout(handle, timeout)
    except Exception as err:
        cached = _kagglehub_cache_copy(handle)
        if cached is not None:
            if verbose:
                print(f"kagglehub failed ({type(err).__name__}: {err}); using the cached copy {cached}")
            return cached
        raise DatasetUnavailableError(
            f"could not get the Kaggle dataset {handle!r}: {type(err).__name__}: {err}".rstrip(": ")
        ) from err


def download_dataset(name: str, data_dir: str | os.PathLike | None = None, timeout: float = DOWNLOAD_TIMEOUT,
                     verbose: bool = True) -> DatasetLayout:
    """The layout of dataset ``name`` ('flickr8k', 'flickr30k', 'coco').

    With ``data_dir`` nothing is downloaded: the layout is looked for in that folder. Otherwise a
    copy attached to the Kaggle notebook (``ATTACHED_HANDLES``, either mount layout) is used in
    place, and kagglehub downloads the dataset only when none is attached.
    """
    if data_dir is not None:
        return find_layout(data_dir, name)
    if name not in KAGGLE_HANDLES:
        raise ValueError(
            f"unknown dataset {name!r}: choose one of {sorted(KAGGLE_HANDLES)} or pass data_dir= a folder "
            f"with one of the layouts: {'; '.join(LAYOUT_HELP.values())}"
        )
    attached = attached_dataset(ATTACHED_HANDLES[name])
    if attached is not None:
        if verbose:
            print(f"{name}: using the attached dataset {attached}")
        return find_layout(attached, name)
    handle = KAGGLE_HANDLES[name]
    try:
        root = kaggle_path(handle, timeout, verbose)
    except DatasetUnavailableError as err:
        layouts = "; or ".join(LAYOUT_HELP[k] for k in DATASET_LAYOUTS[name])
        raise DatasetUnavailableError(
            f"{err}.\nTo fix it, either:\n"
            f"  - in a Kaggle notebook: Add Input -> Datasets -> search {handle!r} -> Add (it is then read "
            f"from {input_root()}); or turn Internet on (Settings -> Internet) for kagglehub; outside "
            f"Kaggle, kagglehub needs Internet (and Kaggle credentials for private data), or\n"
            f"  - pass data_dir=... pointing to a folder with {layouts}."
        ) from err
    if verbose:
        print(f"{name}: using {root}")
    return find_layout(root, name)


def download_karpathy_split(dataset: str, timeout: float = 30.0) -> Path:
    """``dataset_<dataset>.json`` from the Karpathy splits on Kaggle (kagglehub); raises
    ``DatasetUnavailableError`` saying why when it cannot be had."""
    if dataset not in KARPATHY_FILES:
        raise DatasetUnavailableError(f"there is no Karpathy split of {dataset!r}")
    found = find_karpathy_json(kaggle_path(KARPATHY_HANDLE, timeout, verbose=False), dataset)
    if found is None:
        raise DatasetUnavailableError(f"{KARPATHY_FILES[dataset]} is not in {KARPATHY_HANDLE!r}")
    return found
