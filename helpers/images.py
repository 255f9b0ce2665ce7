"""Robust image decoding and the image DataLoader that skips (and lists) bad files.

Real photo collections contain grayscale, palette, RGBA, CMYK and 16-bit files, rotated phone
pictures and the odd empty or truncated download. `load_image` turns every decodable file into an
RGB image the way a viewer would show it, and raises `BadImageError` (with the path and the reason)
for the rest. `ImageDataset` never raises on a bad file: it returns a `BadImage` marker that the
loader's collate function drops and records in a `BadImageReport`, so one broken JPEG cannot crash a
long run; the run fails only when the bad files exceed a configurable threshold.
"""

from __future__ import annotations

import contextlib
import os
import struct
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset, default_collate

__all__ = [
    "BadImage",
    "BadImageError",
    "BadImageReport",
    "ImageBatch",
    "ImageDataset",
    "ImageLoader",
    "TooManyBadImagesError",
    "collate_skip_bad",
    "default_num_workers",
    "image_loader",
    "load_image",
]

# Modes that carry an alpha channel: composited on white, as a viewer shows them on a page.
_ALPHA_MODES = {"RGBA", "LA", "PA", "La", "RGBa"}
# Integer modes whose samples use 16 bits: scaled to 8 bits instead of clipped at 255.
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
# What Pillow raises on files it cannot decode (UnidentifiedImageError is an OSError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)


class BadImageError(Exception):
    """An image file that cannot be decoded: missing, empty, truncated or not an image."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):
        # Default exception pickling would call __init__ with one argument; DataLoader workers pickle.
        return (type(self), (self.path, self.reason))


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB without clipping 16-bit data or blackening transparency."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in _SIXTEEN_BIT_MODES:
        samples = np.asarray(image).astype(np.int64)
        eight_bit = (np.clip(samples, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(eight_bit, mode="L").convert("RGB")
    return image.convert("RGB")


@contextlib.contextmanager
def _bomb_warning_naming(path: Path):
    """Re-issue Pillow's DecompressionBombWarning (a huge image: slow, memory-hungry) with the file's
    name, which Pillow's own message lacks; other warnings pass through unchanged."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", Image.DecompressionBombWarning)
        yield
    for warning in caught:
        if issubclass(warning.category, Image.DecompressionBombWarning):
            warnings.warn(
                f"{path}: {warning.message} Check or shrink this image; decoding it takes much memory.",
                Image.DecompressionBombWarning,
                stacklevel=3,
            )
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode an image file into an upright 8-bit RGB PIL image.

    Handles JPEG and PNG (and whatever else Pillow reads), grayscale, palette (with transparency),
    RGBA/LA (composited on white), CMYK and 16-bit images; applies the EXIF orientation so phone
    photos are upright. Raises `BadImageError` naming the file and saying whether it is missing,
    empty, not an image, or truncated/corrupt.
    """
    path = Path(path)
    if not path.exists():
        raise BadImageError(path, "missing file (no such file on disk)")
    if not path.is_file():
        raise BadImageError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise BadImageError(path, "empty file (0 bytes)")
    try:
        with _bomb_warning_naming(path), Image.open(path) as opened:
            opened.load()
            upright = ImageOps.exif_transpose(opened)
            return _to_rgb(upright)  # a new image: independent of the closed file
    except Image.UnidentifiedImageError:
        raise BadImageError(path, "not an image (Pillow cannot identify the file format)") from None
    except Image.DecompressionBombError as error:
        raise BadImageError(path, f"too large to decode safely ({error})") from None
    except _DECODE_ERRORS as error:
        raise BadImageError(path, f"truncated or corrupt image data ({error})") from None


@dataclass(frozen=True)
class BadImage:
    """Marker returned by `ImageDataset` in place of a sample whose file could not be decoded."""

    index: int
    path: str
    reason: str

    @property
    def name(self) -> str:
        return Path(self.path).name


class ImageDataset(Dataset):
    """Images as `(tensor, index)` pairs; a bad file gives a `BadImage` marker instead of raising.

    `files` are paths, or names relative to `image_dir` when it is given. `transform` maps an RGB
    PIL image to a tensor (for example `helpers.backbones.image_transform(backbone)`).
    """

    def __init__(
        self,
        files: Sequence[str | os.PathLike],
        transform: Callable[[Image.Image], torch.Tensor],
        image_dir: str | os.PathLike | None = None,
    ):
        root = Path(image_dir) if image_dir is not None else None
        self.paths = [str(root / name) if root is not None else str(name) for name in files]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | BadImage:
        path = self.paths[index]
        try:
            image = load_image(path)
        except BadImageError as error:
            return BadImage(index, path, error.reason)
        return self.transform(image), index


class ImageBatch(NamedTuple):
    """A collated batch: the good images, their dataset indices (or captions, for a dataset of
    (image, caption) pairs), and the bad samples dropped."""

    images: torch.Tensor | None  # (n, 3, H, W), or None when every sample of the batch was bad
    indices: torch.Tensor  # (n,) int64, or (n, T) captions
    bad: list[BadImage]


def collate_skip_bad(samples: list[tuple[torch.Tensor, int | torch.Tensor] | BadImage]) -> ImageBatch:
    """Stack the good (image, index or caption) samples of a batch and set the `BadImage` markers aside."""
    good = [sample for sample in samples if not isinstance(sample, BadImage)]
    bad = [sample for sample in samples if isinstance(sample, BadImage)]
    if not good:
        return ImageBatch(None, torch.zeros(0, dtype=torch.int64), bad)
    images, indices = default_collate(good)
    return ImageBatch(images, indices, bad)


class TooManyBadImagesError(RuntimeError):
    """More image files failed to decode than the configured threshold allows."""


class BadImageReport:
    """The bad image files met so far, and the threshold above which the run must stop.

    `max_bad` is a count (int), a fraction of `total` (float below 1), or None for no limit.
    """

    def __init__(self, total: int, max_bad: int | float | None = 0.01):
        if max_bad is not None and (max_bad < 0 or (isinstance(max_bad, float) and max_bad >= 1)):
            raise ValueError(f"max_bad must be a count >= 0, a fraction in [0, 1) or None, got {max_bad!r}")
        self.total = total
        self.max_bad = max_bad
        self.bad: list[BadImage] = []

    @property
    def limit(self) -> int | None:
        """The largest number of bad files tolerated, or None when unlimited."""
        if self.max_bad is None:
            return None
        if isinstance(self.max_bad, float):
            return int(self.max_bad * self.total)
        return self.max_bad

    def add(self, items: Sequence[BadImage]) -> None:
        self.bad.extend(items)

    def exceeded(self) -> bool:
        return self.limit is not None and len(self.bad) > self.limit

    def listing(self, max_lines: int = 50) -> str:
        lines = [f"  {item.path}: {item.reason}" for item in self.bad[:max_lines]]
        if len(self.bad) > max_lines:
            lines.append(f"  ... and {len(self.bad) - max_lines} more")
        return "\n".join(lines)

    def check(self) -> None:
        """Raise `TooManyBadImagesError` listing the bad files once they exceed the threshold."""
        if self.exceeded():
            raise TooManyBadImagesError(
                f"{len(self.bad)} of {self.total} images could not be decoded, more than the allowed "
                f"{self.limit} (max_bad={self.max_bad!r}). Fix or remove these files, or raise the "
                f"threshold:\n{self.listing()}"
            )

    def warn(self) -> None:
        """Warn (without stopping) when some files were bad but within the threshold."""
        if self.bad:
            warnings.warn(
                f"skipped {len(self.bad)} of {self.total} images that could not be decoded:\n"
                f"{self.listing()}",
                stacklevel=3,
            )

    def __len__(self) -> int:
        return len(self.bad)


def default_num_workers() -> int:
    """min(4, CPU cores available to this process): Kaggle GPU sessions have 4 cores."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no sched_getaffinity
        cores = os.cpu_count() or 1
    return min(4, cores)


class ImageLoader:
    """A DataLoader over an `ImageDataset` that yields `ImageBatch`es and records the bad files.

    Iterating records each batch's bad files in `report`, raises `TooManyBadImagesError` as soon as
    they exceed the threshold (no need to wait for the end of a long run), and warns at the end when
    some were skipped. Batches whose samples were all bad are still yielded (with `images=None`) so
    a consumer that tracks progress sees every index.
    """

    def __init__(self, loader: DataLoader, report: BadImageReport):
        self.loader = loader
        self.report = report

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[ImageBatch]:
        for batch in self.loader:
            self.report.add(batch.bad)
            self.report.check()
            yield batch
        self.report.warn()


def image_loader(
    dataset: Dataset,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str | torch.device | None = None,
    max_bad: int | float | None = 0.01,
    report: BadImageReport | None = None,
    shuffle: bool = False,
) -> ImageLoader:
    """Multi-worker loading of an `ImageDataset` (or a Subset of one), skipping bad files.

    `num_workers` defaults to `default_num_workers()`; memory is pinned when `device` is CUDA so
    host-to-device copies can be non-blocking. Pass `report` to keep counting into an existing
    report (for example one that already holds the bad files of an interrupted earlier run).
    """
    workers = default_num_workers() if num_workers is None else num_workers
    device = torch.device(device) if device is not None else None
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        collate_fn=collate_skip_bad,
        pin_memory=device is not None and device.type == "cuda",
        persistent_workers=workers > 0,
    )
    return ImageLoader(loader, report if report is not None else BadImageReport(len(dataset), max_bad))
