"""The backbone feature store: the CNN runs once per image, its float16 feature maps live on disk.

Layout (one store per dataset, backbone, image size and weights, so none of them ever mix):

    <work_dir>/features/<dataset key>/<backbone>-<image size>-<weights>/
        index.json              what the store holds: key, shapes, dtype, filenames of each split
        <split>.npy             (N, C, h, w) float16, readable with np.load(..., mmap_mode="r")
        <split>.progress.json   rows done so far and the bad images among them

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
from torch.utils.data import Dataset, Subset
from tqdm.auto import tqdm

from helpers.backbones import ImageEncoder, get_backbone, image_transform
from helpers.files import write_json_atomic
from helpers.images import BadImage, BadImageReport, ImageDataset, default_decoder, image_loader

__all__ = [
    "KAGGLE_OUTPUT_LIMIT_BYTES",
    "CaptionFeatureDataset",
    "FeatureStore",
    "ImageFeatureDataset",
    "extract_features",
    "feature_store_bytes",
    "store_directory",
]

FORMAT_VERSION = 1
KAGGLE_OUTPUT_LIMIT_BYTES = 20 * 10**9  # /kaggle/working keeps at most 20 GB
FEATURE_DTYPE = np.float16
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


def store_directory(work_dir: str | os.PathLike, dataset_key: str, backbone: str, image_size: int,
                    pretrained: bool) -> Path:
    """Where the store for this dataset, backbone, image size and weights lives."""
    weights = _weights_tag(backbone, pretrained).rsplit(".", 1)[-1]
    return Path(work_dir) / dataset_key / f"{backbone}-{image_size}-{weights}"


def feature_store_bytes(num_images: int, backbone: str = "resnet50", image_size: int = 224) -> int:
    """Disk size of the float16 features of `num_images` images (Flickr8k, ResNet50, 224: ~1.6 GB)."""
    return num_images * get_backbone(backbone).feature_bytes(image_size)


def _format_bytes(size: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{size} B"


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

    def features(self, split: str) -> np.memmap:
        """The (N, C, h, w) float16 features of `split`, memory-mapped read-only."""
        return np.load(self.array_path(split), mmap_mode="r")

    @property
    def size_bytes(self) -> int:
        return sum(self.array_path(split).stat().st_size for split in self.splits)

    def row_reader(self, split: str) -> FeatureRowReader:
        return FeatureRowReader(self.array_path(split))

    def __repr__(self) -> str:
        sizes = ", ".join(f"{split}={self.shape(split)[0]}" for split in self.splits)
        return (
            f"FeatureStore({self.path}, {self.backbone}, {self.image_size}px, {self.weights}, "
            f"{self.channels}x{self.feature_size}x{self.feature_size}, {sizes})"
        )


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
        if self._handle is None or self._pid != os.getpid():
            self._handle = open(self.path, "rb")
            self._pid = os.getpid()
        self._handle.seek(self.offset + row * self.row_bytes)
        data = self._handle.read(self.row_bytes)
        if len(data) != self.row_bytes:
            raise OSError(f"{self.path}: row {row} is beyond the end of the file (truncated store?)")
        return np.frombuffer(data, dtype=self.dtype).reshape(self.row_shape)

    def __del__(self):
        handle = getattr(self, "_handle", None)
        if handle is not None:
            handle.close()


def _store_index(prepared, backbone: str, image_size: int, pretrained: bool, channels: int,
                 side: int) -> dict:
    splits = {
        split: {"file": f"{split}.npy", "filenames": list(names), "shape": [len(names), channels, side, side]}
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
        "dtype": "float16",
        "splits": splits,
    }


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
        array_path = directory / info["file"]
        progress_path = directory / f"{split}.progress.json"
        usable = False
        if array_path.exists() and progress_path.exists():
            _, shape, dtype = _npy_data_offset(array_path)
            usable = list(shape) == info["shape"] and dtype == FEATURE_DTYPE
        if not usable:
            progress_path.unlink(missing_ok=True)
            np.lib.format.open_memmap(array_path, mode="w+", dtype=FEATURE_DTYPE, shape=tuple(info["shape"]))
            write_json_atomic(progress_path, {"rows_done": 0, "bad": {}})
    if existing is None:
        write_json_atomic(index_path, index)
    return FeatureStore(directory, index)


def _warn_about_disk(directory: Path, needed: int) -> None:
    existing = directory
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if needed > free:
        warnings.warn(
            f"The feature store needs {_format_bytes(needed)} but only {_format_bytes(free)} is free on the "
            f"disk holding {existing}; choose another work_dir, a smaller backbone or a smaller image_size.",
            stacklevel=3,
        )
    if needed > KAGGLE_OUTPUT_LIMIT_BYTES:
        warnings.warn(
            f"The feature store needs {_format_bytes(needed)}, more than Kaggle's 20 GB limit on "
            "/kaggle/working: on Kaggle, write it under /kaggle/temp or use a smaller backbone/image size.",
            stacklevel=3,
        )


class _SplitWriter:
    """Writes rows of one split's array in place and records progress after each batch."""

    def __init__(self, store: FeatureStore, split: str):
        self.store = store
        self.split = split
        self.offset, _, _ = _npy_data_offset(store.array_path(split))
        self.row_shape = store.shape(split)[1:]
        self.row_bytes = int(np.prod(self.row_shape)) * np.dtype(FEATURE_DTYPE).itemsize
        progress = store._progress(split)
        self.rows_done: int = progress["rows_done"]
        self.bad: dict[str, dict] = progress["bad"]
        self.handle = open(store.array_path(split), "r+b")

    def write(self, first_row: int, block: np.ndarray, bad: Sequence[tuple[int, BadImage]]) -> None:
        """Write rows first_row.. (features, then flush and fsync), then the progress file."""
        if first_row != self.rows_done:
            raise RuntimeError(
                f"feature rows must be written in order: expected row {self.rows_done}, got {first_row}"
            )
        self.handle.seek(self.offset + first_row * self.row_bytes)
        self.handle.write(np.ascontiguousarray(block, dtype=FEATURE_DTYPE).tobytes())
        self.handle.flush()
        os.fsync(self.handle.fileno())
        for row, item in bad:
            self.bad[str(row)] = {"filename": self.store.filenames(self.split)[row], "reason": item.reason}
        self.rows_done = first_row + len(block)
        progress = {"rows_done": self.rows_done, "bad": self.bad}
        write_json_atomic(self.store.progress_path(self.split), progress)

    def close(self) -> None:
        self.handle.close()


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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
    decoder: str | None = None,
) -> FeatureStore:
    """Run the backbone once over every image of every split and store float16 features on disk.

    `prepared` is a `helpers.prepare.PreparedDataset`. The store goes to
    `work_dir/<prepared.key>/<backbone>-<image_size>-<weights>/` (work_dir defaults to the
    `features` folder beside the prepared `data` folder). A complete store is returned at once; a
    partial one is resumed. Images that cannot be decoded get zero rows and are listed; more than
    `max_bad_images` of them (a count, or a fraction of all images) stops the run with the list,
    keeping the rows already written. `batch_size` defaults to the backbone's recommendation.
    `decoder` (see `helpers.images.DECODERS`) defaults to the fastest exact one for the device:
    nvJPEG on the GPU with resize and crop there, torchvision's libjpeg-turbo decoder on the CPU.
    """
    info = get_backbone(backbone)
    if image_size < 32:
        raise ValueError(f"image_size={image_size} is too small: the backbones downsample by 32; use >= 32.")
    if work_dir is None:
        work_dir = Path(prepared.root).parent.parent / "features"
    directory = store_directory(work_dir, prepared.key, backbone, image_size, pretrained)
    side = -(-image_size // 32)
    index = _store_index(prepared, backbone, image_size, pretrained, info.out_channels, side)
    store = _open_or_create_store(directory, index)
    if store.is_complete():
        return store

    splits = store.splits
    total_images = sum(store.shape(split)[0] for split in splits)
    already_done = sum(store.rows_done(split) for split in splits)
    print(
        f"Feature store {directory}: {total_images:,} images x {info.out_channels} x {side} x {side} float16 "
        f"= {_format_bytes(feature_store_bytes(total_images, backbone, image_size))}"
        + (f" (resuming: {already_done:,} images already done)" if already_done else "")
    )
    _warn_about_disk(directory, feature_store_bytes(total_images, backbone, image_size))

    writers = {split: _SplitWriter(store, split) for split in splits}
    report = BadImageReport(total_images, max_bad_images)
    # Global row numbering across splits; rows already done (and their bad images) are kept.
    starts = [int(start) for start in np.cumsum([0] + [store.shape(split)[0] for split in splits])]
    paths, remaining = [], []
    for split, start in zip(splits, starts):
        writer = writers[split]
        paths.extend(str(prepared.image_path(name)) for name in store.filenames(split))
        remaining.extend(range(start + writer.rows_done, start + store.shape(split)[0]))
        report.add([BadImage(start + int(row), entry["filename"], entry["reason"])
                    for row, entry in writer.bad.items()])

    run_device = _resolve_device(device)
    # The key says "random" for unpretrained weights, so they must be the same weights every time
    # (a resumed store would otherwise mix two CNNs): seed their initialisation.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        encoder = ImageEncoder(pretrained=pretrained, backbone=backbone, verbose=progress)
    encoder = encoder.eval().to(run_device)
    on_cuda = run_device.type == "cuda"
    if on_cuda:
        encoder = encoder.to(memory_format=torch.channels_last)
    loader = _image_batches(paths, remaining, backbone, image_size, batch_size or info.batch_size,
                            num_workers, run_device, report, decoder or default_decoder(run_device))
    row_shape = (info.out_channels, side, side)
    peak = 0.0  # largest feature magnitude met in float32, to warn about float16 saturation
    try:
        with torch.inference_mode(), tqdm(total=len(remaining), unit="img", disable=not progress,
                                          desc=f"{backbone} features") as bar:
            for batch in loader:
                rows = sorted([*batch.indices.tolist(), *(item.index for item in batch.bad)])
                features = None
                if batch.images is not None:
                    features, batch_peak = _encode(encoder, batch.images, run_device)
                    if features.shape[1:] != row_shape:
                        raise RuntimeError(
                            f"{backbone} at {image_size}px gave features {features.shape[1:]}, "
                            f"the store expects {row_shape}"
                        )
                    peak = max(peak, batch_peak)
                if features is not None and not batch.bad:
                    block = features
                else:  # bad images keep zero rows
                    block = np.zeros((len(rows), *row_shape), dtype=FEATURE_DTYPE)
                    if features is not None:
                        block[np.searchsorted(rows, batch.indices.numpy())] = features
                _write_block(writers, splits, starts, rows, block, batch.bad)
                bar.update(len(rows))
    finally:
        for writer in writers.values():
            writer.close()
    if peak > FLOAT16_MAX:
        warnings.warn(
            f"Feature values reached {peak:.3g}, beyond the float16 range (+-{FLOAT16_MAX:.0f}), and were "
            "saturated. Random weights let the activations of deep ResNets grow that large; "
            "pretrained weights stay far inside the range.",
            stacklevel=2,
        )
    return store


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
    """(features float32 (C, h, w), caption int64 (T+2,)) pairs of one split, read from the store.

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

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.from_numpy(self.reader.read(int(self.rows[index])).astype(np.float32))
        caption = torch.from_numpy(self.captions[index].astype(np.int64))
        return features, caption


class ImageFeatureDataset(Dataset):
    """(features float32 (C, h, w), filename) per image of a split, bad images left out: for evaluation."""

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

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        features = torch.from_numpy(self.reader.read(int(self.rows[index])).astype(np.float32))
        return features, self.filenames[index]
