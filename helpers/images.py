"""Robust image decoding and the image DataLoader that skips (and lists) bad files.

Real photo collections contain grayscale, palette, RGBA, CMYK and 16-bit files, rotated phone
pictures and the odd empty or truncated download. `load_image` turns every decodable file into an
RGB image the way a viewer would show it, and raises `BadImageError` (with the path and the reason)
for the rest. `ImageDataset` never raises on a bad file: it returns a `BadImage` marker that the
loader's collate function drops and records in a `BadImageReport`, so one broken JPEG cannot crash a
long run; the run fails only when the bad files exceed a configurable threshold.

Three decoders (`helpers.choices.JPEG_DECODERS`): "pil" (Pillow, every format), "torchvision"
(`torchvision.io.decode_jpeg`, libjpeg-turbo: byte-identical to Pillow on JPEGs and faster, with Pillow
as the fallback for everything else) and "nvjpeg" (the loader workers only read the JPEG bytes; the
main process decodes each batch on the GPU with nvJPEG and resizes and crops it there). nvJPEG's IDCT
and chroma upsampling differ from libjpeg-turbo's, so its pixels differ from the other two by a few
grey levels.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torchvision
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset, Subset, default_collate
from torchvision.transforms import v2 as transforms
from torchvision.transforms.v2.functional import pil_to_tensor

from helpers import distributed
from helpers.choices import JPEG_DECODERS

try:  # deprecated since torchvision 0.29 (TorchCodec takes over); without it Pillow decodes, same pixels
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:
    ImageReadMode = decode_jpeg = None

__all__ = [
    "BadImage",
    "BadImageError",
    "BadImageReport",
    "EncodedJpeg",
    "ImageBatch",
    "ImageDataset",
    "ImageLoader",
    "JpegBatch",
    "TooManyBadImagesError",
    "check_nvjpeg",
    "collate_jpegs",
    "collate_skip_bad",
    "crop_images",
    "decode_on_device",
    "default_decoder",
    "default_num_workers",
    "image_loader",
    "load_image",
    "load_image_tensor",
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


def _check_file(path: str | os.PathLike) -> Path:
    """The path, or `BadImageError` when it is missing, not a file or empty."""
    path = Path(path)
    if not path.exists():
        raise BadImageError(path, "missing file (no such file on disk)")
    if not path.is_file():
        raise BadImageError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise BadImageError(path, "empty file (0 bytes)")
    return path


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode an image file into an upright 8-bit RGB PIL image.

    Handles JPEG and PNG (and whatever else Pillow reads), grayscale, palette (with transparency),
    RGBA/LA (composited on white), CMYK and 16-bit images; applies the EXIF orientation so phone
    photos are upright. Raises `BadImageError` naming the file and saying whether it is missing,
    empty, not an image, or truncated/corrupt.
    """
    path = _check_file(path)
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


# JPEG colour modes that libjpeg-turbo (and nvJPEG) turn into the RGB that Pillow gives; CMYK and
# YCCK JPEGs go through Pillow, whose CMYK conversion is the reference.
_EXACT_JPEG_MODES = {"RGB", "L"}
_EXIF_ORIENTATION = 0x0112
_JPEG_END = b"\xff\xd9"
# What goes to nvJPEG: colour JPEGs only; grayscale ones (rare in photo sets) are decoded on the CPU.
_GPU_JPEG_MODES = {"RGB"}


def _exact_jpeg(path: str | os.PathLike,
                modes: set[str] = _EXACT_JPEG_MODES) -> tuple[torch.Tensor, int] | None:
    """(file bytes as a uint8 tensor, EXIF orientation) of a complete JPEG in one of `modes`, else None.

    Pillow reads only the header here, so the checks Pillow makes on opening (format, decompression
    bomb size) stay the same on every path. A file that does not end with the JPEG end marker (a
    truncated download, or trailing bytes after the image) is left to Pillow, which decodes it or
    names the problem. Never raises: `load_image` handles every file this does not accept.
    """
    try:
        data = Path(path).read_bytes()
        if not data.endswith(_JPEG_END):
            return None
        with _bomb_warning_naming(Path(path)), Image.open(io.BytesIO(data)) as opened:
            if opened.format != "JPEG" or opened.mode not in modes:
                return None
            orientation = opened.getexif().get(_EXIF_ORIENTATION, 1)  # as exif_transpose reads it
    except Exception:  # anything Pillow or the file system raises: load_image reports it precisely
        return None
    return torch.frombuffer(bytearray(data), dtype=torch.uint8), orientation


def _orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation to (..., H, W) pixels exactly as `PIL.ImageOps.exif_transpose` does."""
    turns = {
        2: lambda x: x.flip(-1),  # mirrored left-right
        3: lambda x: x.flip(-2, -1),  # upside down
        4: lambda x: x.flip(-2),  # mirrored top-bottom
        5: lambda x: x.transpose(-2, -1),  # mirrored along the main diagonal
        6: lambda x: torch.rot90(x, -1, (-2, -1)),  # turn 90 degrees clockwise
        7: lambda x: x.transpose(-2, -1).flip(-2, -1),  # mirrored along the other diagonal
        8: lambda x: torch.rot90(x, 1, (-2, -1)),  # turn 90 degrees counter-clockwise
    }
    turn = turns.get(orientation)
    return image if turn is None else turn(image).contiguous()


def load_image_tensor(path: str | os.PathLike) -> torch.Tensor:
    """Decode an image file into upright 8-bit RGB pixels, a uint8 tensor (3, H, W).

    The same pixels as `load_image` (byte for byte): JPEGs in RGB or grayscale are decoded by
    torchvision's libjpeg-turbo decoder, faster than through Pillow; every other file (CMYK, PNG,
    16-bit, broken), and every file where torchvision no longer decodes images, goes through
    `load_image`, with the same `BadImageError`s.
    """
    jpeg = _exact_jpeg(path) if decode_jpeg is not None else None
    if jpeg is not None:
        data, orientation = jpeg
        try:
            return _orient(decode_jpeg(data, mode=ImageReadMode.RGB), orientation)
        except RuntimeError:  # corrupt data after a valid header: Pillow decodes it or names the problem
            pass
    return pil_to_tensor(load_image(path))


@dataclass(frozen=True)
class BadImage:
    """Marker returned by `ImageDataset` in place of a sample whose file could not be decoded."""

    index: int
    path: str
    reason: str

    @property
    def name(self) -> str:
        return Path(self.path).name


@dataclass(frozen=True)
class EncodedJpeg:
    """A JPEG still encoded, returned by an "nvjpeg" `ImageDataset`: decoded later on the GPU."""

    index: int
    path: str
    data: torch.Tensor  # the file's bytes, uint8 (n,)
    orientation: int  # EXIF orientation, applied after decoding


def _takes_tensors(transform) -> bool:
    """True for a torchvision v2 pipeline that starts with ToImage (as `image_transform`'s do): it
    turns a PIL image into the very uint8 tensor that `load_image_tensor` returns, so both inputs
    give the same output."""
    steps = getattr(transform, "transforms", None)
    return (isinstance(transform, transforms.Compose) and bool(steps)
            and isinstance(steps[0], transforms.ToImage))


def default_decoder() -> str:
    """The decoder used unless one is asked for (`data.jpeg_decoder`): "torchvision" in the loader
    workers on every device (Pillow where the installed torchvision no longer decodes images). nvJPEG
    is not the default on GPUs: Kaggle's T4 has no hardware JPEG engine, so torchvision's nvJPEG runs
    its hybrid path there, Huffman decoding on the CPU in the main process one image at a time, which
    may well be slower than libjpeg-turbo in several workers; scripts/gpu_check.py measures both."""
    return "torchvision"


class ImageDataset(Dataset):
    """Images as `(tensor, index)` pairs; a bad file gives a `BadImage` marker instead of raising.

    `files` are paths, or names relative to `image_dir` when it is given. `transform` maps an RGB
    image to a tensor (for example `helpers.backbones.image_transform(backbone)`). `decoder` is one
    of `JPEG_DECODERS`; by default "torchvision" when the transform takes uint8 tensors (a torchvision
    v2 pipeline starting with ToImage, as `image_transform`'s), else "pil" (the transform then gets a
    PIL image). With "nvjpeg" a JPEG that the GPU can decode comes back as an `EncodedJpeg`; other
    files are decoded here; `image_loader` finishes the JPEGs on the GPU.
    """

    def __init__(
        self,
        files: Sequence[str | os.PathLike],
        transform: Callable[[Image.Image | torch.Tensor], torch.Tensor],
        image_dir: str | os.PathLike | None = None,
        decoder: str | None = None,
    ):
        root = Path(image_dir) if image_dir is not None else None
        self.paths = [str(root / name) if root is not None else str(name) for name in files]
        self.transform = transform
        tensors = _takes_tensors(transform)
        self.decoder = decoder if decoder is not None else ("torchvision" if tensors else "pil")
        if self.decoder not in JPEG_DECODERS:
            raise ValueError(f"ImageDataset: decoder must be one of {JPEG_DECODERS}, got {decoder!r}.")
        if self.decoder == "nvjpeg" and decode_jpeg is None:
            raise ValueError(
                f"ImageDataset: decoder='nvjpeg' needs torchvision.io.decode_jpeg, which torchvision "
                f"{torchvision.__version__} no longer has; use decoder='torchvision' (Pillow then decodes, "
                "the same pixels) or install a torchvision that still decodes images."
            )
        if self.decoder != "pil" and not tensors:
            raise ValueError(
                f"ImageDataset: decoder={self.decoder!r} hands uint8 tensors to the transform, which must "
                "then be a torchvision v2 Compose starting with ToImage (as "
                "helpers.backbones.image_transform returns); use decoder='pil' for a transform that takes "
                "PIL images."
            )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | BadImage | EncodedJpeg:
        path = self.paths[index]
        if self.decoder == "nvjpeg":
            jpeg = _exact_jpeg(path, _GPU_JPEG_MODES)
            if jpeg is not None:
                return EncodedJpeg(index, path, *jpeg)
        try:
            image = load_image(path) if self.decoder == "pil" else load_image_tensor(path)
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


class JpegBatch(NamedTuple):
    """A collated batch of an "nvjpeg" `ImageDataset`: what the workers decoded, and the JPEGs left."""

    decoded: ImageBatch  # files decoded on the CPU (not colour JPEGs) and the bad ones
    jpegs: list[EncodedJpeg]


def collate_jpegs(samples: list[tuple[torch.Tensor, int] | BadImage | EncodedJpeg]) -> JpegBatch:
    """Set the encoded JPEGs of a batch aside and collate the rest with `collate_skip_bad`."""
    jpegs = [sample for sample in samples if isinstance(sample, EncodedJpeg)]
    others = [sample for sample in samples if not isinstance(sample, EncodedJpeg)]
    return JpegBatch(collate_skip_bad(others), jpegs)


def crop_images(images: Sequence[torch.Tensor],
                transform: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply `transform` to (3, H, W) images of any sizes, on whatever device they are, and stack them.

    Images of the same size are transformed together as one (n, 3, H, W) batch (few kernel launches
    on a GPU; photo sets have a handful of sizes). On the CPU the result equals transforming each
    image alone; on a GPU torchvision resizes uint8 images in float32 and rounds, within 1 of that.
    """
    by_size: dict[tuple[int, ...], list[int]] = {}
    for position, image in enumerate(images):
        by_size.setdefault(tuple(image.shape), []).append(position)
    crops: list[torch.Tensor | None] = [None] * len(images)
    for positions in by_size.values():
        for position, crop in zip(positions, transform(torch.stack([images[p] for p in positions]))):
            crops[position] = crop
    return torch.stack(crops).as_subclass(torch.Tensor)


def _decode_jpegs(jpegs: Sequence[EncodedJpeg], device: torch.device) -> list[torch.Tensor | BadImage]:
    """Decode JPEGs on `device` in one batched call; when that fails (a corrupt file, a coding the GPU
    decoder lacks), each JPEG alone, and the ones that still fail on the CPU, where Pillow decodes
    them or names the problem."""
    try:
        images = decode_jpeg([jpeg.data for jpeg in jpegs], mode=ImageReadMode.RGB, device=device)
        return [_orient(image, jpeg.orientation) for image, jpeg in zip(images, jpegs)]
    except RuntimeError:
        pass
    decoded: list[torch.Tensor | BadImage] = []
    for jpeg in jpegs:
        try:
            image = _orient(decode_jpeg(jpeg.data, mode=ImageReadMode.RGB, device=device), jpeg.orientation)
        except RuntimeError:
            try:
                image = load_image_tensor(jpeg.path).to(device)
            except BadImageError as error:
                image = BadImage(jpeg.index, jpeg.path, error.reason)
        decoded.append(image)
    return decoded


def decode_on_device(batch: JpegBatch, transform: Callable[[torch.Tensor], torch.Tensor],
                     device: str | torch.device) -> ImageBatch:
    """Decode a batch's JPEGs on `device` (nvJPEG on CUDA), resize and crop them there with `transform`
    and merge them with the crops the workers made: an `ImageBatch` on `device`, in index order."""
    device = torch.device(device)
    decoded = _decode_jpegs(batch.jpegs, device) if batch.jpegs else []
    good = [(jpeg.index, image) for jpeg, image in zip(batch.jpegs, decoded)
            if not isinstance(image, BadImage)]
    bad = list(batch.decoded.bad) + [image for image in decoded if isinstance(image, BadImage)]
    parts, indices = [], []
    if batch.decoded.images is not None:
        parts.append(batch.decoded.images.to(device, non_blocking=True))
        indices.extend(batch.decoded.indices.tolist())
    if good:
        parts.append(crop_images([image for _, image in good], transform))
        indices.extend(index for index, _ in good)
    if not parts:
        return ImageBatch(None, torch.zeros(0, dtype=torch.int64), bad)
    order = sorted(range(len(indices)), key=indices.__getitem__)
    images = torch.cat(parts)[torch.tensor(order, device=device)]
    return ImageBatch(images, torch.tensor(sorted(indices), dtype=torch.int64), bad)


def check_nvjpeg(device: str | torch.device) -> int:
    """Decode a generated batch of JPEGs on `device` in one call, as extraction's "nvjpeg" decoder does
    (nvJPEG on CUDA), and return the largest difference from libjpeg-turbo's pixels in grey levels;
    raises whatever decoding raises. A GPU run's preflight calls it before extracting."""
    if decode_jpeg is None:
        raise RuntimeError("the installed torchvision has no decode_jpeg (torchvision 0.29 deprecated it)")
    pixels = (np.arange(48 * 64 * 3) % 251).astype(np.uint8).reshape(48, 64, 3)
    encoded = io.BytesIO()
    Image.fromarray(pixels).save(encoded, "JPEG", quality=90)
    data = torch.frombuffer(bytearray(encoded.getvalue()), dtype=torch.uint8)
    decoded = decode_jpeg([data, data.clone()], mode=ImageReadMode.RGB, device=torch.device(device))
    reference = decode_jpeg(data, mode=ImageReadMode.RGB).int()
    return max(int((image.cpu().int() - reference).abs().max()) for image in decoded)


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
    """Loader workers per process: the CPU cores available, shared between the training ranks (two
    GPUs on a 4-core Kaggle session: 2 workers each, not 4), at least 1 and at most 4."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no sched_getaffinity
        cores = os.cpu_count() or 1
    return min(4, max(1, cores // distributed.world_size()))


class ImageLoader:
    """A DataLoader over an `ImageDataset` that yields `ImageBatch`es and records the bad files.

    Iterating records each batch's bad files in `report`, raises `TooManyBadImagesError` as soon as
    they exceed the threshold (no need to wait for the end of a long run), and warns at the end when
    some were skipped. Batches whose samples were all bad are still yielded (with `images=None`) so
    a consumer that tracks progress sees every index.
    """

    def __init__(self, loader: DataLoader, report: BadImageReport,
                 finish: Callable[[JpegBatch], ImageBatch] | None = None):
        """`finish` turns the loader's `JpegBatch`es into `ImageBatch`es (`decode_on_device`), when
        the dataset's decoder is "nvjpeg"."""
        self.loader = loader
        self.report = report
        self.finish = finish

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[ImageBatch]:
        batches = iter(self.loader)
        try:
            for batch in batches:
                if self.finish is not None:
                    batch = self.finish(batch)
                self.report.add(batch.bad)
                self.report.check()
                yield batch
        finally:
            # Stop the workers here, also when the consumer stops early or the threshold is hit: an
            # iterator left for the garbage collector can be copied into the next loader's forked
            # workers, whose collector then tries to stop workers that are not its children.
            del batches
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
    With an "nvjpeg" dataset (`device` must then be CUDA) the batches come out already decoded,
    resized and cropped on `device`.
    """
    workers = default_num_workers() if num_workers is None else num_workers
    device = torch.device(device) if device is not None else None
    images = dataset.dataset if isinstance(dataset, Subset) else dataset
    finish = None
    if getattr(images, "decoder", None) == "nvjpeg":
        if device is None or device.type != "cuda":
            raise ValueError(f"image_loader: the 'nvjpeg' decoder runs on a CUDA device, not on {device}; "
                             "use decoder='torchvision' for CPU runs.")
        finish = partial(decode_on_device, transform=images.transform, device=device)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        collate_fn=collate_skip_bad if finish is None else collate_jpegs,
        pin_memory=device is not None and device.type == "cuda",
    )
    report = report if report is not None else BadImageReport(len(dataset), max_bad)
    return ImageLoader(loader, report, finish)
