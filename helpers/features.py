"""The backbone feature store: the CNN runs once per image, its feature maps live on disk.

Layout (one store per dataset, backbone, image size, weights and dtype, so none of them ever mix):

    <work_dir>/features/<dataset key>/<backbone>-<image size>-<weights>[-uint8]/
        index.json              what the store holds: key, shapes, dtype, filenames of each split
        <split>.npy             (N, C, h, w) float16 or uint8 codes, for np.load(..., mmap_mode="r")
        <split>.ranges.npy      uint8 stores: (N, 2, C) float16 offset and step of each image's channels
        <split>.progress.json   rows done so far and the bad images among them

Two layouts (`data.feature_layout`): "float16" keeps the CNN's output as is; "uint8" stores each
channel of each image as 8-bit codes over that channel's own range (value = offset + step * code,
step = (max - min) / 255), half the bytes, so that COCO fits Kaggle's 20 GB output with any backbone
(BENCHMARKS.md measures both). The datasets of a float16 store hand out float32 features; those of a
uint8 store hand out the codes and ranges (`FeatureCodes`), which `.to(device)` dequantizes on the
device: the DataLoader workers, pinning and the host-to-device copy then move about a quarter of the
float32 bytes (ResNet50: 109 kB per caption instead of 401 kB).

Extraction is resumable: after each batch the features are written and flushed to disk, then the
progress file is replaced atomically, so a progress file never claims rows that are not on disk and
an interrupted run continues where it stopped. Rows of images that cannot be decoded are zeros,
flagged in the progress file, and left out by the datasets.

The datasets read one row at a time with ordinary file reads through a handle opened lazily in each
DataLoader worker: iterating the whole store keeps the process memory flat, whatever its size.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, default_collate
from torch.utils.data._utils.collate import default_collate_fn_map

from helpers import distributed
from helpers.backbones import ImageEncoder, feature_side, get_backbone, image_transform
from helpers.choices import BACKBONE_STRIDE, DEFAULT_FEATURE_LAYOUT, FEATURE_LAYOUTS
from helpers.files import write_json_atomic
from helpers.images import BadImage, BadImageReport, ImageDataset, default_decoder, image_loader
from helpers.progress import ProgressLine
from helpers.space import KAGGLE_OUTPUT_LIMIT_BYTES, check_space, folder_bytes, format_bytes

__all__ = [
    "ATTACHED_RECORD",
    "KAGGLE_OUTPUT_LIMIT_BYTES",
    "CaptionFeatureDataset",
    "FeatureCodes",
    "FeatureStore",
    "FeatureStoreNotAttached",
    "ImageFeatureDataset",
    "extract_features",
    "feature_store_bytes",
    "record_attached_store",
    "store_directory",
    "store_encoder",
]

FORMAT_VERSION = 1
FEATURE_DTYPE = np.float16
CODE_LEVELS = 255  # uint8 codes 0..255
RANDOM_WEIGHTS_SEED = 0  # initialisation of an unpretrained backbone, fixed so stores are reproducible
FLOAT16_MAX = float(np.finfo(np.float16).max)


def _npy_data_offset(path: Path) -> tuple[int, tuple[int, ...], np.dtype]:
    """Byte offset of the array data in a .npy file, with its shape and dtype, from the header."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(handle)
        if fortran_order:
            raise ValueError(f"{path}: feature arrays must be C-ordered")
        return handle.tell(), tuple(shape), dtype


def _weights_tag(backbone: str, pretrained: bool) -> str:
    """The torchvision weights enum name (e.g. 'ResNet50_Weights.IMAGENET1K_V2') or 'random'."""
    return get_backbone(backbone).weights if pretrained else "random"


def _check_layout(layout: str) -> None:
    if layout not in FEATURE_LAYOUTS:
        raise ValueError(f"Unknown feature layout {layout!r}; choose one of {', '.join(FEATURE_LAYOUTS)}.")


def store_directory(work_dir: str | os.PathLike, dataset_key: str, backbone: str, image_size: int,
                    pretrained: bool, layout: str = "float16") -> Path:
    """Where the store for this dataset, backbone, image size, weights and layout lives."""
    _check_layout(layout)
    weights = _weights_tag(backbone, pretrained).rsplit(".", 1)[-1]
    suffix = "" if layout == "float16" else f"-{layout}"
    return Path(work_dir) / dataset_key / f"{backbone}-{image_size}-{weights}{suffix}"


def feature_store_bytes(num_images: int, backbone: str = "resnet50", image_size: int = 224,
                        layout: str = "float16") -> int:
    """Disk size of the features of `num_images` images (Flickr8k, ResNet50, 224: ~1.6 GB in float16,
    0.88 GB in uint8)."""
    _check_layout(layout)
    return num_images * get_backbone(backbone).store_bytes(image_size, layout)


def quantize(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, h, w) floats -> uint8 codes (N, C, h, w) and ranges (N, 2, C) float16: the offset (the
    channel's minimum) and step of each image's channels, so that offset + step * code is within
    step / 2 of the value (plus float16 rounding of offset and step)."""
    flat = np.asarray(block, dtype=np.float32).reshape(block.shape[0], block.shape[1], -1)
    low = flat.min(axis=2).astype(np.float16)
    step = ((flat.max(axis=2) - low.astype(np.float32)) / CODE_LEVELS).astype(np.float16)
    step32 = step.astype(np.float32)[..., None]
    scaled = np.divide(flat - low.astype(np.float32)[..., None], step32, out=np.zeros_like(flat),
                       where=step32 > 0)
    codes = np.clip(np.rint(scaled), 0, CODE_LEVELS).astype(np.uint8).reshape(block.shape)
    return codes, np.stack([low, step], axis=1)


def dequantize(codes: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """uint8 codes (..., C, h, w) and their ranges (..., 2, C) -> float32 features (..., C, h, w)."""
    low = ranges[..., 0, :].astype(np.float32)[..., None, None]
    step = ranges[..., 1, :].astype(np.float32)[..., None, None]
    return low + step * codes.astype(np.float32)


class FeatureCodes:
    """Features of a uint8 store not yet dequantized: codes (..., C, h, w) uint8 and ranges (..., 2, C)
    float16 of one image, or of a batch (both with a leading batch dimension).

    The datasets of a uint8 store hand these out and DataLoaders collate them into one, so the
    workers, the pinning and the host-to-device copy move the codes, not float32. `.to(device)`
    copies them and dequantizes there, with exactly `dequantize`'s float32 arithmetic; otherwise it
    reads as the float32 tensor it stands for (`shape`, `len`, indexing, `float()`).
    """

    def __init__(self, codes: torch.Tensor, ranges: torch.Tensor):
        self.codes, self.ranges = codes, ranges

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, index) -> torch.Tensor:
        return self.float()[index]

    def to(self, device: str | torch.device, non_blocking: bool = False) -> torch.Tensor:
        """The float32 features (..., C, h, w) on `device`, dequantized there."""
        codes = self.codes.to(device, non_blocking=non_blocking)
        ranges = self.ranges.to(device, non_blocking=non_blocking)
        low = ranges[..., 0, :].float()[..., None, None]
        step = ranges[..., 1, :].float()[..., None, None]
        return codes.float().mul_(step).add_(low)  # low + step * code, in place: one float32 tensor there

    def float(self) -> torch.Tensor:
        """The float32 features where the codes are (the CPU, out of a DataLoader)."""
        return self.to(self.codes.device)

    def pin_memory(self) -> FeatureCodes:
        """Called by the DataLoader's pinning thread (pin_memory=True), as for a tensor."""
        return FeatureCodes(self.codes.pin_memory(), self.ranges.pin_memory())

    def __repr__(self) -> str:
        return f"FeatureCodes(shape={tuple(self.shape)}, uint8 codes with float16 ranges)"


def _collate_codes(batch: list[FeatureCodes], *, collate_fn_map=None) -> FeatureCodes:
    """`default_collate` of FeatureCodes: codes and ranges stacked (in shared memory, in a worker)."""
    return FeatureCodes(default_collate([item.codes for item in batch]),
                        default_collate([item.ranges for item in batch]))


# default_collate's documented extension point: every DataLoader (and helpers.images.collate_skip_bad)
# then batches FeatureCodes samples, with no collate function of their own.
default_collate_fn_map[FeatureCodes] = _collate_codes


class FeatureStore:
    """Read access to a feature store written by `extract_features`.

    Attributes: `path`, `dataset_key`, `backbone`, `image_size`, `weights`, `channels`,
    `feature_size` (spatial side h = w), `splits`.
    """

    def __init__(self, path: Path, index: dict):
        self.path = path
        self._index = index
        self.dataset_key: str = index["dataset_key"]
        self.backbone: str = index["backbone"]
        self.image_size: int = index["image_size"]
        self.weights: str = index["weights"]
        self.channels: int = index["channels"]
        self.feature_size: int = index["feature_size"]
        self.layout: str = index["dtype"]
        self.splits: list[str] = list(index["splits"])
        self._positions = {split: None for split in self.splits}

    @classmethod
    def open(cls, path: str | os.PathLike) -> FeatureStore:
        """Open the store in folder `path` (or its index.json)."""
        path = Path(path)
        if path.name == "index.json":
            path = path.parent
        index_path = path / "index.json"
        if not index_path.exists():
            raise FileNotFoundError(
                f"No feature store at {path} (missing index.json); create one with extract_features()."
            )
        index = json.loads(index_path.read_text(encoding="utf-8"))
        if index.get("format") != FORMAT_VERSION:
            raise ValueError(
                f"{index_path}: feature store format {index.get('format')!r}, expected {FORMAT_VERSION}; "
                "delete the folder and extract again."
            )
        return cls(path, index)

    def _split_info(self, split: str) -> dict:
        try:
            return self._index["splits"][split]
        except KeyError:
            raise KeyError(f"Feature store {self.path} has no split {split!r}; it has {self.splits}.") \
                from None

    def array_path(self, split: str) -> Path:
        return self.path / self._split_info(split)["file"]

    def ranges_path(self, split: str) -> Path:
        """uint8 stores: the (N, 2, C) float16 offsets and steps of `split`."""
        return self.path / self._split_info(split)["ranges"]

    def _files(self, split: str) -> list[Path]:
        return [self.array_path(split)] + ([self.ranges_path(split)] if self.layout == "uint8" else [])

    def progress_path(self, split: str) -> Path:
        return self.path / f"{split}.progress.json"

    def shape(self, split: str) -> tuple[int, int, int, int]:
        return tuple(self._split_info(split)["shape"])

    def filenames(self, split: str) -> list[str]:
        """Image filenames in row order."""
        return list(self._split_info(split)["filenames"])

    def index_of(self, split: str, filename: str) -> int:
        """Row of `filename` in `split`."""
        names = self.filenames(split)
        if self._positions[split] is None:
            self._positions[split] = {name: row for row, name in enumerate(names)}
        try:
            return self._positions[split][filename]
        except KeyError:
            raise KeyError(
                f"Image {filename!r} is not in split {split!r} of the feature store {self.path}."
            ) from None

    def _progress(self, split: str) -> dict:
        path = self.progress_path(split)
        if not path.exists():
            return {"rows_done": 0, "bad": {}}
        return json.loads(path.read_text(encoding="utf-8"))

    def rows_done(self, split: str) -> int:
        return self._progress(split)["rows_done"]

    def bad_images(self, split: str) -> dict[str, str]:
        """Filename -> reason for the images of `split` that could not be decoded (their rows are zeros)."""
        return {entry["filename"]: entry["reason"] for entry in self._progress(split)["bad"].values()}

    def bad_rows(self, split: str) -> np.ndarray:
        """Boolean mask over the rows of `split`: True where the image could not be decoded."""
        mask = np.zeros(self.shape(split)[0], dtype=bool)
        mask[[int(row) for row in self._progress(split)["bad"]]] = True
        return mask

    def is_complete(self, split: str | None = None) -> bool:
        splits = self.splits if split is None else [split]
        return all(self.rows_done(name) == self.shape(name)[0] for name in splits)

    def features(self, split: str) -> np.memmap | QuantizedFeatures:
        """The (N, C, h, w) features of `split`, memory-mapped read-only: the float16 array, or for a
        uint8 store a view whose rows (`[i]`, `[a:b]`) come out dequantized to float32."""
        codes = np.load(self.array_path(split), mmap_mode="r")
        if self.layout == "float16":
            return codes
        return QuantizedFeatures(codes, np.load(self.ranges_path(split), mmap_mode="r"))

    @property
    def size_bytes(self) -> int:
        return sum(path.stat().st_size for split in self.splits for path in self._files(split))

    def row_reader(self, split: str) -> FeatureRowReader | QuantizedRowReader:
        if self.layout == "float16":
            return FeatureRowReader(self.array_path(split))
        return QuantizedRowReader(FeatureRowReader(self.array_path(split)),
                                  FeatureRowReader(self.ranges_path(split)))

    def __repr__(self) -> str:
        sizes = ", ".join(f"{split}={self.shape(split)[0]}" for split in self.splits)
        return (
            f"FeatureStore({self.path}, {self.backbone}, {self.image_size}px, {self.weights}, "
            f"{self.channels}x{self.feature_size}x{self.feature_size} {self.layout}, {sizes})"
        )


class QuantizedFeatures:
    """The features of a uint8 split, dequantized to float32 as rows are taken."""

    def __init__(self, codes: np.ndarray, ranges: np.ndarray):
        self.codes, self.ranges = codes, ranges
        self.shape = codes.shape

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        return dequantize(self.codes[rows], self.ranges[rows])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        features = self[:]
        return features if dtype is None else features.astype(dtype)


class FeatureRowReader:
    """Reads single rows of a .npy file with plain file reads (no mapping, so memory stays flat).

    The file handle is opened lazily and reopened in each process: a handle inherited through fork
    shares its file offset with the parent and the other workers.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.offset, shape, dtype = _npy_data_offset(self.path)
        self.dtype = dtype
        self.row_shape = shape[1:]
        self.row_bytes = int(np.prod(self.row_shape)) * dtype.itemsize
        self._handle = None
        self._pid = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_pid"] = None
        return state

    def read(self, row: int) -> np.ndarray:
        """Row `row`, in a fresh writable buffer (torch.from_numpy takes it without a copy)."""
        if self._handle is None or self._pid != os.getpid():
            self._handle = open(self.path, "rb")
            self._pid = os.getpid()
        self._handle.seek(self.offset + row * self.row_bytes)
        data = bytearray(self.row_bytes)
        if self._handle.readinto(data) != self.row_bytes:
            raise OSError(f"{self.path}: row {row} is beyond the end of the file (truncated store?)")
        return np.frombuffer(data, dtype=self.dtype).reshape(self.row_shape)

    def __del__(self):
        handle = getattr(self, "_handle", None)
        if handle is not None:
            handle.close()


class QuantizedRowReader:
    """Single rows of a uint8 split: its codes and ranges, read row by row, to dequantize on the device."""

    def __init__(self, codes: FeatureRowReader, ranges: FeatureRowReader):
        self.codes, self.ranges = codes, ranges

    def read(self, row: int) -> FeatureCodes:
        return FeatureCodes(torch.from_numpy(self.codes.read(row)), torch.from_numpy(self.ranges.read(row)))


def _row_features(reader: FeatureRowReader | QuantizedRowReader, row: int) -> torch.Tensor | FeatureCodes:
    """One row as the datasets hand it out: float32 from a float16 store, FeatureCodes from a uint8 one."""
    features = reader.read(row)
    if isinstance(features, FeatureCodes):
        return features
    return torch.from_numpy(features.astype(np.float32))


def _store_index(prepared, backbone: str, image_size: int, pretrained: bool, channels: int,
                 side: int, layout: str) -> dict:
    splits = {
        split: {"file": f"{split}.npy", "filenames": list(names), "shape": [len(names), channels, side, side]}
        | ({"ranges": f"{split}.ranges.npy"} if layout == "uint8" else {})
        for split, names in prepared.splits.items()
    }
    return {
        "format": FORMAT_VERSION,
        "dataset": prepared.dataset,
        "dataset_key": prepared.key,
        "backbone": backbone,
        "image_size": image_size,
        "weights": _weights_tag(backbone, pretrained),
        "channels": channels,
        "feature_size": side,
        "dtype": layout,
        "splits": splits,
    }


def _same_index(directory: Path, index: dict) -> bool:
    path = directory / "index.json"
    return path.is_file() and json.loads(path.read_text(encoding="utf-8")) == index


def _is_complete_store(directory: Path, index: dict) -> bool:
    return _same_index(directory, index) and FeatureStore(directory, index).is_complete()


def _store_bytes_on_disk(directory: Path, index: dict) -> int:
    """What a resumed store already takes (its arrays keep their full size); 0 for one to rebuild."""
    return folder_bytes(directory) if _same_index(directory, index) else 0


def _open_or_create_store(directory: Path, index: dict) -> FeatureStore:
    """Reuse the store in `directory` when it was made for the same request, else start it afresh.

    A split whose array is missing or has the wrong shape restarts at row 0, so a store interrupted
    while it was being created is never trusted.
    """
    index_path = directory / "index.json"
    existing = json.loads(index_path.read_text(encoding="utf-8")) if index_path.exists() else None
    if existing is not None and existing != index:
        warnings.warn(
            f"The feature store {directory} was made for different settings or images; rebuilding it.",
            stacklevel=3,
        )
        shutil.rmtree(directory)
        existing = None
    directory.mkdir(parents=True, exist_ok=True)
    for split, info in index["splits"].items():
        arrays = {directory / info["file"]: (np.dtype(index["dtype"]), info["shape"])}
        if "ranges" in info:
            rows, channels = info["shape"][:2]
            arrays[directory / info["ranges"]] = (np.dtype(np.float16), [rows, 2, channels])
        progress_path = directory / f"{split}.progress.json"
        usable = progress_path.exists() and all(
            path.exists() and _npy_data_offset(path)[1:] == (tuple(shape), dtype)
            for path, (dtype, shape) in arrays.items()
        )
        if not usable:
            progress_path.unlink(missing_ok=True)
            for path, (dtype, shape) in arrays.items():
                np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=tuple(shape))
            write_json_atomic(progress_path, {"rows_done": 0, "bad": {}})
    if existing is None:
        write_json_atomic(index_path, index)
    return FeatureStore(directory, index)


class _SplitWriter:
    """Writes rows of one split's array in place and records progress after each batch."""

    def __init__(self, store: FeatureStore, split: str):
        self.store = store
        self.split = split
        self.files = []  # (handle, data offset, bytes per row) of the codes, then of the ranges
        for path in store._files(split):
            offset, shape, dtype = _npy_data_offset(path)
            self.files.append((open(path, "r+b"), offset, int(np.prod(shape[1:])) * dtype.itemsize))
        progress = store._progress(split)
        self.rows_done: int = progress["rows_done"]
        self.bad: dict[str, dict] = progress["bad"]

    def write(self, first_row: int, block: np.ndarray, bad: Sequence[tuple[int, BadImage]]) -> None:
        """Write rows first_row.. (features, then flush and fsync), then the progress file."""
        if first_row != self.rows_done:
            raise RuntimeError(
                f"feature rows must be written in order: expected row {self.rows_done}, got {first_row}"
            )
        if self.store.layout == "float16":
            arrays = [np.ascontiguousarray(block, dtype=FEATURE_DTYPE)]
        else:
            arrays = list(quantize(block))
        for (handle, offset, row_bytes), array in zip(self.files, arrays):
            handle.seek(offset + first_row * row_bytes)
            handle.write(np.ascontiguousarray(array).tobytes())
            handle.flush()
            os.fsync(handle.fileno())
        for row, item in bad:
            self.bad[str(row)] = {"filename": self.store.filenames(self.split)[row], "reason": item.reason}
        self.rows_done = first_row + len(block)
        progress = {"rows_done": self.rows_done, "bad": self.bad}
        write_json_atomic(self.store.progress_path(self.split), progress)

    def close(self) -> None:
        for handle, _, _ in self.files:
            handle.close()


def store_encoder(backbone: str, pretrained: bool, verbose: bool = False,
                  defer_weights: bool = False) -> ImageEncoder:
    """The CNN a store of `backbone` is extracted with: torchvision's pretrained weights, or random
    ones from a fixed seed. The store key says "random" for the latter, so they must be the same
    weights every time (a resumed store would otherwise mix two CNNs, and a model trained on the
    store would caption images through another CNN than the one its features came from)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        return ImageEncoder(pretrained=pretrained, backbone=backbone, verbose=verbose,
                            defer_weights=defer_weights)


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class FeatureStoreNotAttached(RuntimeError):
    """This work dir read its feature store from an attached notebook output that is gone now."""


ATTACHED_RECORD = "attached.json"


def record_attached_store(target: str | os.PathLike, source: str | os.PathLike) -> bool:
    """Note in `target` (the store's folder in the work dir) that the complete store at `source` (an
    attached, read-only notebook output) is read in place: `extract_features` then opens it there,
    and the next session, given this output, learns which output to attach. Nothing is copied or
    linked. Returns whether the record changed."""
    target, source = Path(target), Path(source)
    record = {"path": str(source), "output": str(source.parents[2])}
    path = target / ATTACHED_RECORD
    if path.is_file() and json.loads(path.read_text(encoding="utf-8")) == record:
        return False
    write_json_atomic(path, record)
    return True


def _attached_store(directory: Path, index: dict, allow_reextract: bool) -> FeatureStore | None:
    """The attached store recorded in `directory` when it is there and is the one asked for; refuses
    (FeatureStoreNotAttached) when the recorded output is not attached now, unless `allow_reextract`."""
    record_path = directory / ATTACHED_RECORD
    if (directory / "index.json").exists() or not record_path.is_file():
        return None
    record = json.loads(record_path.read_text(encoding="utf-8"))
    source = Path(record["path"])
    if (source / "index.json").is_file():
        store = FeatureStore.open(source)
        if store._index == index and store.is_complete():
            return store
        return None
    if allow_reextract:
        return None
    images = sum(len(info["filenames"]) for info in index["splits"].values())
    raise FeatureStoreNotAttached(
        f"The feature store {directory.name} of this dataset was read from an attached notebook output, "
        f"{record['output']}, which is not attached to this session. Attach that output again (Add Input -> "
        "Your Work -> the notebook that extracted it, usually 02_backbones) and rerun: extracting the "
        f"store again here would run the CNN over all {images:,} images. To extract it anyway, run "
        f"notebook 02 (or delete {record_path})."
    )


def _store_options(images: int, backbone: str, image_size: int, layout: str) -> list[str]:
    """What makes a store that does not fit smaller, with each option's size (notebook terms)."""
    def size(**change) -> str:
        settings = {"backbone": backbone, "image_size": image_size, "layout": layout, **change}
        return format_bytes(feature_store_bytes(images, **settings))

    options = []
    if layout != "uint8":
        options.append(f'8-bit features: OVERRIDES = ["data.feature_layout=uint8"] ({size(layout="uint8")})')
    if image_size > 160:
        options.append(f"a smaller image size: IMAGE_SIZE = 160, a 5 x 5 grid ({size(image_size=160)})")
    if get_backbone(backbone).out_channels > get_backbone("regnet_x_400mf").out_channels:
        options.append(f'a smaller backbone: BACKBONE = "regnet_x_400mf", 400 channels '
                       f'({size(backbone="regnet_x_400mf")})')
    options.append("free space: delete older feature stores or runs from the work dir, or attach the "
                   "notebook output that holds this store instead of extracting it here")
    return options


def extract_features(
    prepared,
    backbone: str = "resnet50",
    image_size: int = 224,
    pretrained: bool = True,
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: str | torch.device | None = None,
    work_dir: str | os.PathLike | None = None,
    max_bad_images: int | float | None = 0.01,
    progress: bool = True,
    layout: str = DEFAULT_FEATURE_LAYOUT,
    allow_reextract: bool = False,
    decoder: str | None = None,
    devices: int = 1,
) -> FeatureStore:
    """Run the backbone once over every image of every split and store its features on disk.

    `prepared` is a `helpers.prepare.PreparedDataset`. The store goes to
    `work_dir/<prepared.key>/<backbone>-<image_size>-<weights>[-uint8]/` (work_dir defaults to the
    `features` folder beside the prepared `data` folder); `layout` is "uint8" (8-bit codes with
    per-image, per-channel ranges) or "float16". A complete store is returned at once, also one
    recorded there as read in place from an attached notebook output (`record_attached_store`); a
    recorded one that is no longer attached is refused (FeatureStoreNotAttached) unless
    `allow_reextract`. A partial store is resumed. Before anything is written the store's size is
    checked against the space left (Kaggle's output limit, the free disk): OutputSpaceError names
    the smaller choices. Images that cannot be decoded get zero rows and are listed; more than
    `max_bad_images` of them (a count, or a fraction of all images) stops the run with the list,
    keeping the rows already written. `batch_size` defaults to the backbone's recommendation.
    `decoder` (see `helpers.choices.JPEG_DECODERS`) defaults to `helpers.images.default_decoder()`:
    torchvision's libjpeg-turbo decoder in the loader workers; "nvjpeg" decodes on the GPU.
    `devices` above 1 runs one process per device (helpers.distributed): each encodes every
    `devices`-th batch and rank 0 writes them all in row order, so the store, its progress files and
    a resume (on any number of devices) are exactly those of one device.
    """
    announce = progress and distributed.world_size() == 1  # the launcher, not each device's process
    store = _store_to_fill(prepared, backbone, image_size, pretrained, work_dir, layout, allow_reextract,
                           announce)
    if store.is_complete():
        return store
    if devices > 1 and distributed.world_size() == 1:
        arguments = (prepared, backbone, image_size, pretrained, batch_size, num_workers, device, work_dir,
                     max_bad_images, progress, layout, allow_reextract, decoder, devices)
        distributed.launch(extract_features, arguments, devices, _resolve_device(device))
        return _store_to_fill(prepared, backbone, image_size, pretrained, work_dir, layout, allow_reextract,
                              announce=False)
    return _extract_rows(store, prepared, backbone, image_size, pretrained, batch_size, num_workers, device,
                         max_bad_images, progress, decoder)


def _extract_rows(store: FeatureStore, prepared, backbone: str, image_size: int, pretrained: bool,
                  batch_size: int | None, num_workers: int | None, device, max_bad_images, progress: bool,
                  decoder: str | None) -> FeatureStore:
    """Encode the rows `store` still lacks (this rank's batches of them) and write them (rank 0)."""
    info = get_backbone(backbone)
    total_images = sum(len(names) for names in prepared.splits.values())
    side = feature_side(image_size, backbone)
    report = BadImageReport(total_images, max_bad_images)
    writers, starts, paths, remaining = _pending_rows(store, prepared, report)
    run_device = distributed.rank_device(_resolve_device(device))
    encoder = store_encoder(backbone, pretrained, verbose=progress).eval().to(run_device)
    if run_device.type == "cuda":
        encoder = encoder.to(memory_format=torch.channels_last)
    batch_size = batch_size or info.batch_size
    rows, steps = _rows_of_this_rank(remaining, batch_size)
    loader = _image_batches(paths, rows, backbone, image_size, batch_size, num_workers, run_device, report,
                            decoder or default_decoder())
    bar = ProgressLine(len(remaining), f"{backbone} features", unit="img",
                       enabled=progress and distributed.is_main())
    try:
        with torch.inference_mode(), bar:
            peak = _encode_into(writers, starts, (loader, steps), encoder, run_device,
                                (info.out_channels, side, side), bar, f"{backbone} at {image_size}px")
    finally:
        for writer in writers.values():
            writer.close()
    _warn_if_saturated(peak)
    return store


def _warn_if_saturated(peak: float) -> None:
    if peak > FLOAT16_MAX:
        warnings.warn(
            f"Feature values reached {peak:.3g}, beyond the float16 range (+-{FLOAT16_MAX:.0f}), and were "
            "saturated. Random weights let the activations of deep ResNets grow that large; "
            "pretrained weights stay far inside the range.",
            stacklevel=3,
        )


def _store_to_fill(prepared, backbone: str, image_size: int, pretrained: bool,
                   work_dir: str | os.PathLike | None, layout: str, allow_reextract: bool,
                   announce: bool) -> FeatureStore:
    """The store `extract_features` returns: an attached complete one (read in place), or the one in
    the work dir, created after the space check or reopened to resume (its size printed if `announce`)."""
    info = get_backbone(backbone)
    if image_size < BACKBONE_STRIDE:
        raise ValueError(
            f"image_size={image_size} is too small: the backbones downsample by {BACKBONE_STRIDE}; "
            f"use >= {BACKBONE_STRIDE}."
        )
    if work_dir is None:
        work_dir = Path(prepared.root).parent.parent / "features"
    directory = store_directory(work_dir, prepared.key, backbone, image_size, pretrained, layout)
    side = feature_side(image_size, backbone)
    index = _store_index(prepared, backbone, image_size, pretrained, info.out_channels, side, layout)
    attached = _attached_store(directory, index, allow_reextract)
    if attached is not None:
        return attached
    total_images = sum(len(names) for names in prepared.splits.values())
    size = feature_store_bytes(total_images, backbone, image_size, layout)
    if not _is_complete_store(directory, index):
        check_space(directory, size - _store_bytes_on_disk(directory, index),
                    f"The {layout} feature store {directory} ({total_images:,} images)",
                    _store_options(total_images, backbone, image_size, layout))
    store = _open_or_create_store(directory, index)
    (directory / ATTACHED_RECORD).unlink(missing_ok=True)  # extracted here now
    if announce and not store.is_complete():
        already_done = sum(store.rows_done(split) for split in store.splits)
        print(
            f"Feature store {directory}: {total_images:,} images x {info.out_channels} x {side} x {side} "
            f"{layout} = {format_bytes(size)}"
            + (f" (resuming: {already_done:,} images already done)" if already_done else "")
        )
    return store


def _pending_rows(store: FeatureStore, prepared, report: BadImageReport):
    """(writers per split, each split's first global row, every image path, the global rows still to
    extract). Rows are numbered across splits; rows already done (and their bad images) are kept."""
    splits = store.splits
    writers = {split: _SplitWriter(store, split) for split in splits}
    starts = [int(start) for start in np.cumsum([0] + [store.shape(split)[0] for split in splits])]
    paths, remaining = [], []
    for split, start in zip(splits, starts):
        writer = writers[split]
        paths.extend(str(prepared.image_path(name)) for name in store.filenames(split))
        remaining.extend(range(start + writer.rows_done, start + store.shape(split)[0]))
        report.add([BadImage(start + int(row), entry["filename"], entry["reason"])
                    for row, entry in writer.bad.items()])
    return writers, starts, paths, remaining


def _rows_of_this_rank(rows: list[int], batch_size: int) -> tuple[list[int], int]:
    """This rank's rows (the batches rank, rank + ranks, ...: all of them on one device) and how many
    batches each rank takes in turn (every rank joins each turn's gather)."""
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    ranks = distributed.world_size()
    mine = batches[distributed.rank() :: ranks]
    return [row for batch in mine for row in batch], -(-len(batches) // ranks)


def _encode_into(writers: dict, starts: list[int], batches, encoder: torch.nn.Module,
                 device: torch.device, row_shape: tuple[int, int, int], bar, what: str) -> float:
    """Encode every batch of the loader and write its rows (zero rows for bad images); returns the
    largest feature magnitude met in float32, to warn about float16 saturation. `batches` is (loader,
    turns): on several devices each turn gathers one batch of every rank, which rank 0 writes in order."""
    loader, turns = batches
    peak = 0.0
    for batch in loader:
        encoded = _encoded_rows(batch, encoder, device, row_shape, what)
        peak = max(peak, _write_turn(writers, starts, [encoded], bar))
        turns -= 1
    for _ in range(turns):  # this rank's batches ran out a turn before the others'
        peak = max(peak, _write_turn(writers, starts, [], bar))
    return peak


def _write_turn(writers: dict, starts: list[int], encoded: list, bar) -> float:
    """Write every rank's batch of this turn, on rank 0 (the only one that receives them); returns
    their largest magnitude there (0 on the other ranks, which neither write nor warn)."""
    peak = 0.0
    for rows, block, bad, batch_peak in distributed.gather_on_main(encoded):
        _write_block(writers, list(writers), starts, rows, block, bad)
        bar.update(len(rows))
        peak = max(peak, batch_peak)
    return peak


def _encoded_rows(batch, encoder, device, row_shape: tuple[int, int, int], what: str):
    """(global rows, their features with zero rows for bad images, the bad images, largest magnitude)."""
    rows = sorted([*batch.indices.tolist(), *(item.index for item in batch.bad)])
    features, peak = None, 0.0
    if batch.images is not None:
        features, peak = _encode(encoder, batch.images, device)
        if features.shape[1:] != row_shape:
            raise RuntimeError(f"{what} gave features {features.shape[1:]}, the store wants {row_shape}")
    if features is not None and not batch.bad:
        block = features
    else:  # bad images keep zero rows
        block = np.zeros((len(rows), *row_shape), dtype=FEATURE_DTYPE)
        if features is not None:
            block[np.searchsorted(rows, batch.indices.numpy())] = features
    return rows, block, list(batch.bad), peak


def _image_batches(paths: list[str], rows: list[int], backbone: str, image_size: int, batch_size: int,
                   num_workers: int | None, device: torch.device, report: BadImageReport, decoder: str):
    """The loader over the images of `rows`: uint8 crops, decoded by `decoder` (on the device for nvJPEG)."""
    images = ImageDataset(paths, image_transform(backbone, image_size, torch.uint8), decoder=decoder)
    return image_loader(Subset(images, rows), batch_size, num_workers, device, report=report)


def _encode(encoder: ImageEncoder, images: torch.Tensor, device: torch.device) -> tuple[np.ndarray, float]:
    """Float16 features of one batch on the host, and the largest magnitude before conversion.

    On CUDA the encoder runs in fp16 autocast with channels_last; if fp16 activations overflow
    (possible only with random weights) the batch is redone in float32. The conversion to float16
    happens on the device, so the host only copies half the bytes and does no arithmetic.
    """
    images = images.to(device, non_blocking=True)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.float16):
            output = encoder(images)
        if not torch.isfinite(output).all():
            output = encoder(images)
    else:
        output = encoder(images)
    peak = 0.0
    if output.dtype != torch.float16:
        peak = float(output.abs().amax()) if output.numel() else 0.0
        output = output.clamp(-FLOAT16_MAX, FLOAT16_MAX).to(torch.float16)
    return output.contiguous().cpu().numpy(), peak


def _write_block(writers: dict, splits: list[str], starts: list[int], rows: list[int], block: np.ndarray,
                 bad: list[BadImage]) -> None:
    """Hand the rows of one batch (global numbering, consecutive) to the writer of each split they cover."""
    bad_by_row = {item.index: item for item in bad}
    rows = np.asarray(rows)
    for number, split in enumerate(splits):
        selected = (rows >= starts[number]) & (rows < starts[number + 1])
        if selected.any():
            local = rows[selected] - starts[number]
            split_bad = [
                (int(row - starts[number]), bad_by_row[row]) for row in rows[selected] if row in bad_by_row
            ]
            writers[split].write(int(local[0]), block[selected], split_bad)


class CaptionFeatureDataset(Dataset):
    """(features (C, h, w), caption int64 (T+2,)) pairs of one split, read from the store: features
    float32 from a float16 store, `FeatureCodes` from a uint8 one (float32 once `.to(device)`).

    Captions of images that could not be decoded are left out (`skipped_captions` counts them).
    Features are read row by row, never the whole store at once.
    """

    def __init__(self, store: FeatureStore, prepared, split: str):
        if store.dataset_key != prepared.key:
            raise ValueError(
                f"The feature store {store.path} was made for dataset {store.dataset_key!r}, "
                f"not {prepared.key!r}; run extract_features(prepared) for this dataset."
            )
        if not store.is_complete(split):
            raise RuntimeError(
                f"The feature store {store.path} is incomplete for split {split!r} "
                f"({store.rows_done(split)} of {store.shape(split)[0]} rows); "
                "run extract_features again to finish it."
            )
        captions, image_idx = prepared.captions(split)
        names = prepared.splits[split]
        if list(names) == store.filenames(split):
            rows = np.asarray(image_idx, dtype=np.int64)
        else:
            rows = np.array([store.index_of(split, names[i]) for i in image_idx], dtype=np.int64)
        keep = ~store.bad_rows(split)[rows]
        self.captions = np.asarray(captions)[keep]
        self.rows = rows[keep]
        self.skipped_captions = int((~keep).sum())
        self.reader = store.row_reader(split)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | FeatureCodes, torch.Tensor]:
        caption = torch.from_numpy(self.captions[index].astype(np.int64))
        return _row_features(self.reader, int(self.rows[index])), caption


class ImageFeatureDataset(Dataset):
    """(features (C, h, w), filename) per image of a split, bad images left out: for evaluation. As in
    `CaptionFeatureDataset`, features are float32 or (uint8 stores) `FeatureCodes`."""

    def __init__(self, store: FeatureStore, split: str):
        if not store.is_complete(split):
            raise RuntimeError(
                f"The feature store {store.path} is incomplete for split {split!r}; "
                "run extract_features again."
            )
        names = store.filenames(split)
        self.rows = np.flatnonzero(~store.bad_rows(split))
        self.filenames = [names[row] for row in self.rows]
        self.reader = store.row_reader(split)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | FeatureCodes, str]:
        return _row_features(self.reader, int(self.rows[index])), self.filenames[index]
