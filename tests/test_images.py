"""Image decoding of awkward real-world files, and the loader that skips and lists bad ones."""

from __future__ import annotations

import json
import pickle
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms.v2.functional import pil_to_tensor

import helpers.images as images_module
from helpers.backbones import image_transform
from helpers.images import (
    BadImage,
    BadImageError,
    BadImageReport,
    EncodedJpeg,
    ImageDataset,
    JpegBatch,
    TooManyBadImagesError,
    collate_jpegs,
    collate_skip_bad,
    crop_images,
    decode_on_device,
    image_loader,
    load_image,
    load_image_tensor,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def small_tensor(image: Image.Image) -> torch.Tensor:
    """Test transform: 8x8 float tensor in [0, 1]."""
    array = np.asarray(image.resize((8, 8)), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)


def write_png_rgb16(path, pixels: np.ndarray) -> None:
    """Write a 48-bit (16 bits per channel) RGB PNG by hand: Pillow cannot write this format."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width, _ = pixels.shape
    rows = b"".join(b"\x00" + pixels[row].astype(">u2").tobytes() for row in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def test_rgb_jpeg_is_returned_unchanged_in_size(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (50, 30), (10, 200, 30)).save(path, quality=95)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (50, 30)
    assert np.abs(np.asarray(image).astype(int) - [10, 200, 30]).max() <= 3


def test_grayscale_png_becomes_three_equal_channels(tmp_path):
    path = tmp_path / "gray.png"
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, mode="L").save(path)
    pixels = np.asarray(load_image(path))
    assert pixels.shape == (8, 8, 3)
    expected = np.arange(64).reshape(8, 8) * 4
    for channel in range(3):
        np.testing.assert_array_equal(pixels[..., channel], expected)


def test_palette_png_with_transparency_shows_white_where_transparent(tmp_path):
    path = tmp_path / "palette.png"
    image = Image.new("P", (4, 2), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # index 0 black (transparent), 1 red
    image.paste(1, (2, 0, 4, 2))
    image.save(path, transparency=0)
    pixels = np.asarray(load_image(path))
    np.testing.assert_array_equal(pixels[:, :2], np.full((2, 2, 3), 255))  # transparent -> white, not black
    np.testing.assert_array_equal(pixels[:, 2:], np.broadcast_to([255, 0, 0], (2, 2, 3)))


def test_rgba_is_composited_on_white(tmp_path):
    path = tmp_path / "rgba.png"
    Image.new("RGBA", (3, 3), (255, 0, 0, 128)).save(path)
    pixel = np.asarray(load_image(path))[1, 1].astype(int)
    # alpha 128/255 of red over white: (255, 127, 127) up to rounding
    assert pixel[0] == 255 and abs(pixel[1] - 127) <= 1 and abs(pixel[2] - 127) <= 1


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)  # pure red in CMYK
    pixel = np.asarray(load_image(path))[8, 8].astype(int)
    assert np.abs(pixel - [255, 0, 0]).max() <= 10


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "gray16.png"
    samples = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(samples).save(path)
    assert Image.open(path).mode.startswith("I")  # really a 16-bit file
    pixels = np.asarray(load_image(path))
    np.testing.assert_array_equal(pixels[0, :, 0], [0, 1, 128, 255])  # clipping would give 0, 255, 255, 255


def test_sixteen_bit_rgb_png_keeps_the_high_bytes(tmp_path):
    path = tmp_path / "rgb16.png"
    samples = np.array([[[65535, 0, 32768], [4096, 65535, 0]]], dtype=np.uint16)
    write_png_rgb16(path, samples)
    np.testing.assert_array_equal(np.asarray(load_image(path)), (samples >> 8).astype(np.uint8))


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "phone.jpg"
    stored = Image.new("RGB", (40, 20), (255, 0, 0))
    stored.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    stored.save(path, exif=exif, quality=95)
    image = load_image(path)
    assert image.size == (20, 40)  # displayed upright: portrait
    pixels = np.asarray(image).astype(int)
    assert np.abs(pixels[5, 10] - [255, 0, 0]).max() < 40  # stored left (red) is displayed on top
    assert np.abs(pixels[35, 10] - [0, 0, 255]).max() < 40


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("missing.jpg", None, "missing file"),
        ("empty.jpg", b"", "empty file (0 bytes)"),
        ("notes.jpg", b"this is a text file, not a picture\n" * 20, "not an image"),
    ],
)
def test_bad_files_raise_bad_image_error_naming_file_and_reason(tmp_path, name, content, reason):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(BadImageError, match=re.escape(reason)) as caught:
        load_image(path)
    assert caught.value.path == str(path) and name in str(caught.value)


def test_truncated_jpeg_raises_bad_image_error(tmp_path):
    whole = tmp_path / "whole.jpg"
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(whole, quality=90)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(BadImageError, match="truncated or corrupt") as caught:
        load_image(truncated)
    assert caught.value.path == str(truncated)


def test_bad_image_error_survives_pickling_between_worker_processes():
    error = pickle.loads(pickle.dumps(BadImageError("a/b.jpg", "empty file (0 bytes)")))
    assert (error.path, error.reason) == ("a/b.jpg", "empty file (0 bytes)")


@pytest.fixture
def mixed_folder(tmp_path):
    """Ten good JPEGs plus an empty, a text and a missing file at known positions."""
    names = []
    for number in range(10):
        name = f"good_{number}.jpg"
        Image.new("RGB", (12, 10), (number * 20, 0, 0)).save(tmp_path / name)
        names.append(name)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    names[3:3] = ["empty.jpg"]
    names[7:7] = ["text.jpg"]
    names.append("missing.jpg")
    return tmp_path, names


def test_image_dataset_returns_marker_for_bad_files(mixed_folder):
    folder, names = mixed_folder
    dataset = ImageDataset(names, small_tensor, image_dir=folder)
    image, index = dataset[0]
    assert image.shape == (3, 8, 8) and index == 0
    marker = dataset[names.index("empty.jpg")]
    assert isinstance(marker, BadImage)
    assert marker.name == "empty.jpg" and marker.index == 3 and "empty" in marker.reason


def test_collate_drops_bad_samples_and_handles_an_all_bad_batch():
    good = (torch.ones(3, 2, 2), 5)
    bad = BadImage(6, "x.jpg", "empty file (0 bytes)")
    batch = collate_skip_bad([good, bad])
    assert batch.images.shape == (1, 3, 2, 2) and batch.indices.tolist() == [5] and batch.bad == [bad]
    only_bad = collate_skip_bad([bad])
    assert only_bad.images is None and only_bad.indices.tolist() == [] and only_bad.bad == [bad]


def test_a_loader_left_early_stops_its_workers_at_once(mixed_folder):
    """Workers must not outlive a loop that stops early (a break, the bad-image threshold): a loader
    left to the garbage collector can be copied into the next loader's forked workers, whose own
    collector then fails on processes that are not its children ('can only test a child process')."""
    import multiprocessing

    folder, names = mixed_folder
    loader = image_loader(ImageDataset(names, small_tensor, folder), batch_size=2, num_workers=2, max_bad=99)
    batches = iter(loader)
    next(batches)
    assert len(multiprocessing.active_children()) == 2
    batches.close()  # what a `break` out of a for loop does
    assert multiprocessing.active_children() == []
    with pytest.warns(UserWarning, match="skipped 3 of 13 images"):
        for _ in loader:  # a complete pass ends its workers too (and lists the bad files)
            pass
    assert multiprocessing.active_children() == []


def test_multi_worker_loader_skips_and_lists_bad_files_then_warns(mixed_folder):
    folder, names = mixed_folder
    loader = image_loader(ImageDataset(names, small_tensor, folder), batch_size=4, num_workers=2, max_bad=3)
    seen = []
    with pytest.warns(UserWarning, match="skipped 3 of 13 images"):
        for batch in loader:
            if batch.images is not None:
                assert batch.images.shape[0] == len(batch.indices)
                # each image is the one its index names: red channel encodes the file number
                for image, index in zip(batch.images, batch.indices.tolist()):
                    number = int(names[index].split("_")[1].split(".")[0])
                    assert abs(image[0].mean().item() - number * 20 / 255) < 0.02
            seen.extend(batch.indices.tolist())
    assert sorted(seen) == [i for i, name in enumerate(names) if name.startswith("good")]
    assert {(item.name, item.index) for item in loader.report.bad} == {
        ("empty.jpg", 3),
        ("text.jpg", 7),
        ("missing.jpg", 12),
    }
    assert "missing file" in loader.report.listing()


def test_loader_fails_with_the_list_when_bad_files_exceed_the_threshold(mixed_folder):
    folder, names = mixed_folder
    loader = image_loader(ImageDataset(names, small_tensor, folder), batch_size=4, num_workers=0, max_bad=1)
    with pytest.raises(TooManyBadImagesError, match="2 of 13 images") as caught:
        list(loader)
    assert "empty.jpg: empty file" in str(caught.value) and "text.jpg: not an image" in str(caught.value)


def test_fraction_threshold_is_relative_to_the_total():
    report = BadImageReport(total=100, max_bad=0.05)
    assert report.limit == 5
    report.add([BadImage(i, f"{i}.jpg", "empty file (0 bytes)") for i in range(5)])
    report.check()  # 5 of 100 is allowed
    report.add([BadImage(5, "5.jpg", "empty file (0 bytes)")])
    with pytest.raises(TooManyBadImagesError, match="6 of 100"):
        report.check()
    unlimited = BadImageReport(total=1, max_bad=None)
    unlimited.add([BadImage(0, "a.jpg", "missing file")] * 3)
    unlimited.check()


@pytest.mark.parametrize("max_bad", [-1, 1.5])
def test_invalid_threshold_is_rejected(max_bad):
    with pytest.raises(ValueError, match="max_bad"):
        BadImageReport(total=10, max_bad=max_bad)


# --- torchvision decoding: the same pixels as Pillow, faster -----------------------------------------


def photo_pixels(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Photo-like content: smooth colour fields plus sensor-like noise (JPEG sizes like real photos)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
    return np.clip(field + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)


PHOTO_CASES = [  # Flickr (500 wide) and COCO (640 wide) sizes, landscape and portrait, several encoders
    ((500, 375), {"quality": 90}),
    ((375, 500), {"quality": 90}),
    ((640, 480), {"quality": 95, "subsampling": 0}),
    ((480, 640), {"quality": 75, "subsampling": 1}),
    ((500, 333), {"quality": 85, "progressive": True}),
    ((427, 640), {"quality": 90, "optimize": True}),
]


@pytest.mark.parametrize("size, options", PHOTO_CASES)
def test_torchvision_decoding_gives_byte_identical_crops(tmp_path, size, options):
    path = tmp_path / "photo.jpg"
    Image.fromarray(photo_pixels(*size)).save(path, **options)
    assert images_module._exact_jpeg(path) is not None  # really the torchvision path, not the fallback
    pixels = load_image_tensor(path)
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, size[1], size[0])
    assert torch.equal(pixels, pil_to_tensor(load_image(path)))
    crop = image_transform("resnet50", dtype=torch.uint8)
    assert torch.equal(crop(pixels), crop(load_image(path)))


def test_grayscale_jpeg_decodes_to_the_same_three_channels(tmp_path):
    path = tmp_path / "gray.jpg"
    Image.fromarray(photo_pixels(120, 90)).convert("L").save(path, quality=90)
    assert images_module._exact_jpeg(path) is not None
    pixels = load_image_tensor(path)
    assert torch.equal(pixels, pil_to_tensor(load_image(path)))
    assert torch.equal(pixels[0], pixels[2])


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillow(tmp_path, orientation):
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(photo_pixels(40, 24)).save(path, exif=exif, quality=95)
    assert images_module._exact_jpeg(path)[1] == orientation
    expected = pil_to_tensor(load_image(path))  # Pillow's exif_transpose
    assert expected.shape[1:] == ((40, 24) if orientation >= 5 else (24, 40))
    assert torch.equal(load_image_tensor(path), expected)


def write_fallback_file(path, kind: str) -> None:
    """Files torchvision's JPEG decoder must leave to Pillow."""
    if kind == "cmyk.jpg":
        Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)
    elif kind == "rgb.png":
        Image.fromarray(photo_pixels(30, 20)).save(path)
    elif kind == "rgba.png":
        Image.new("RGBA", (3, 3), (255, 0, 0, 128)).save(path)
    elif kind == "gray16.png":
        Image.fromarray(np.array([[0, 256, 32768, 65535]], dtype=np.uint16)).save(path)
    elif kind == "rgb16.png":
        write_png_rgb16(path, np.array([[[65535, 0, 32768], [4096, 65535, 0]]], dtype=np.uint16))
    elif kind == "jpeg-named.png":  # a JPEG under a misleading name is still a JPEG
        Image.fromarray(photo_pixels(30, 20)).save(path, format="JPEG")


FALLBACK_KINDS = ["cmyk.jpg", "rgb.png", "rgba.png", "gray16.png", "rgb16.png", "jpeg-named.png"]


@pytest.mark.parametrize("kind", FALLBACK_KINDS)
def test_files_torchvision_cannot_read_exactly_fall_back_to_pillow(tmp_path, kind):
    path = tmp_path / kind
    write_fallback_file(path, kind)
    assert (images_module._exact_jpeg(path) is not None) == (kind == "jpeg-named.png")
    assert torch.equal(load_image_tensor(path), pil_to_tensor(load_image(path)))


def truncated_jpeg(path, keep_end_marker: bool) -> None:
    """Half of a JPEG; with the end marker put back, the header checks pass but the data is cut."""
    whole = path.with_name("whole.jpg")
    Image.fromarray(photo_pixels(64, 64)).save(whole, quality=90)
    data = whole.read_bytes()[: whole.stat().st_size // 2]
    path.write_bytes(data + (b"\xff\xd9" if keep_end_marker else b""))


def corrupt_huffman_jpeg(path) -> None:
    """A JPEG with a valid header and end marker whose Huffman table is impossible: no decoder reads it."""
    Image.fromarray(photo_pixels(64, 64)).save(path, quality=90)
    data = bytearray(path.read_bytes())
    table = data.index(b"\xff\xc4")  # DHT marker, then length (2 bytes), class/id, 16 code counts
    data[table + 5:table + 21] = b"\xff" * 16
    path.write_bytes(bytes(data))


def test_a_cut_jpeg_that_still_ends_with_the_end_marker_decodes_as_pillow_decodes_it(tmp_path):
    path = tmp_path / "cut.jpg"
    truncated_jpeg(path, keep_end_marker=True)
    assert images_module._exact_jpeg(path) is not None
    pixels = load_image_tensor(path)  # libjpeg-turbo fills the missing rows, in both decoders
    assert torch.equal(pixels, pil_to_tensor(load_image(path)))


@pytest.mark.parametrize(
    "name, reason",
    [
        ("missing.jpg", "missing file"),
        ("empty.jpg", "empty file (0 bytes)"),
        ("notes.jpg", "not an image"),
        ("cut.jpg", "truncated or corrupt"),
        ("huffman.jpg", "truncated or corrupt"),
    ],
)
def test_bad_files_give_the_same_errors_on_the_torchvision_path(tmp_path, name, reason):
    path = tmp_path / name
    if name == "empty.jpg":
        path.write_bytes(b"")
    elif name == "notes.jpg":
        path.write_text("not a picture\n" * 20)
    elif name == "cut.jpg":
        truncated_jpeg(path, keep_end_marker=False)
    elif name == "huffman.jpg":
        corrupt_huffman_jpeg(path)
    with pytest.raises(BadImageError, match=re.escape(reason)) as caught:
        load_image_tensor(path)
    assert caught.value.path == str(path)


def test_dataset_picks_the_decoder_the_transform_can_take(tmp_path):
    crop = image_transform("regnet_x_400mf", 64, torch.uint8)
    assert ImageDataset([], crop).decoder == "torchvision"
    assert ImageDataset([], small_tensor).decoder == "pil"
    assert ImageDataset([], crop, decoder="pil").decoder == "pil"
    with pytest.raises(ValueError, match="decoder='pil' for a transform that takes PIL images"):
        ImageDataset([], small_tensor, decoder="torchvision")
    with pytest.raises(ValueError, match="decoder must be one of"):
        ImageDataset([], crop, decoder="turbo")


def test_pil_and_torchvision_datasets_give_identical_samples(mixed_folder):
    folder, names = mixed_folder
    crop = image_transform("regnet_x_400mf", 64, torch.uint8)
    by_pil = ImageDataset(names, crop, folder, decoder="pil")
    by_torchvision = ImageDataset(names, crop, folder)
    for index in range(len(names)):
        pil_sample, torchvision_sample = by_pil[index], by_torchvision[index]
        if isinstance(pil_sample, BadImage):
            assert torchvision_sample == pil_sample
        else:
            assert torch.equal(torchvision_sample[0], pil_sample[0]) and torchvision_sample[1] == index


WITHOUT_TORCHVISION_DECODERS = """
import json, sys
import torch, torchvision.io, torchvision.transforms.v2  # (its JPEG augmentation binds decode_jpeg itself)
del torchvision.io.decode_jpeg  # as a torchvision whose deprecated image decoders are gone
from helpers.backbones import image_transform
from helpers.images import BadImage, ImageDataset, default_decoder
folder, names = sys.argv[1], sys.argv[2:]
crop = image_transform("regnet_x_400mf", 64, torch.uint8)
default, by_pil = ImageDataset(names, crop, folder), ImageDataset(names, crop, folder, decoder="pil")
same = all(
    a == b if isinstance(a, BadImage) else torch.equal(a[0], b[0])
    for a, b in zip((default[i] for i in range(len(names))), (by_pil[i] for i in range(len(names))))
)
try:
    ImageDataset(names, crop, folder, decoder="nvjpeg")
    refused = ""
except ValueError as error:
    refused = str(error)
report = {"decoder": default.decoder, "same": same, "default": default_decoder(), "refused": refused}
print(json.dumps(report))
"""


def test_images_still_load_where_torchvision_no_longer_decodes_them(mixed_folder):
    """torchvision deprecated its image decoders in 0.29 for TorchCodec: without decode_jpeg helpers
    still imports, the default decoder gives Pillow's (identical) pixels, and nvJPEG is refused."""
    folder, names = mixed_folder
    result = subprocess.run([sys.executable, "-c", WITHOUT_TORCHVISION_DECODERS, str(folder), *names],
                            capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["decoder"] == "torchvision" and report["same"] and report["default"] == "torchvision"
    assert "no longer has; use decoder='torchvision'" in report["refused"]


# --- the nvJPEG path, run here on the CPU (the same code with device="cpu") ----------------------------


def test_crop_images_batches_by_size_and_equals_the_per_image_transform():
    rng = np.random.default_rng(1)
    sizes = [(375, 500), (500, 375), (375, 500), (480, 640), (375, 500)]
    pictures = [torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8)) for h, w in sizes]
    crop = image_transform("resnet50", dtype=torch.uint8)
    crops = crop_images(pictures, crop)
    assert type(crops) is torch.Tensor and crops.shape == (5, 3, 224, 224) and crops.dtype == torch.uint8
    assert torch.equal(crops, torch.stack([crop(picture) for picture in pictures]))
    # On a GPU torchvision resizes uint8 pixels in float32 and rounds: within 1 of the CPU's crops.
    as_on_gpu = crop_images([picture.float() for picture in pictures], crop).round()
    assert (as_on_gpu - crops.float()).abs().max() <= 1


@pytest.fixture
def jpeg_folder(tmp_path):
    """Photo JPEGs of two sizes (one rotated by EXIF), a grayscale JPEG, a PNG, a CMYK JPEG, a corrupt
    JPEG with a valid header and end marker, an empty file and a missing one."""
    names = []
    for number in range(4):
        name = f"photo_{number}.jpg"
        exif = Image.Exif()
        exif[0x0112] = 6 if number == 2 else 1
        size = (50, 40) if number % 2 else (40, 50)
        Image.fromarray(photo_pixels(*size, seed=number)).save(tmp_path / name, exif=exif, quality=90)
        names.append(name)
    Image.fromarray(photo_pixels(30, 20)).convert("L").save(tmp_path / "gray.jpg")
    write_fallback_file(tmp_path / "rgb.png", "rgb.png")
    write_fallback_file(tmp_path / "cmyk.jpg", "cmyk.jpg")
    corrupt_huffman_jpeg(tmp_path / "huffman.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    return tmp_path, ["gray.jpg", *names[:2], "huffman.jpg", "rgb.png", *names[2:], "cmyk.jpg", "empty.jpg",
                      "missing.jpg"]


def test_nvjpeg_dataset_leaves_colour_jpegs_encoded_and_decodes_the_rest(jpeg_folder):
    folder, names = jpeg_folder
    crop = image_transform("regnet_x_400mf", 32, torch.uint8)
    dataset = ImageDataset(names, crop, folder, decoder="nvjpeg")
    samples = [dataset[index] for index in range(len(names))]
    kinds = {name: type(sample).__name__ for name, sample in zip(names, samples)}
    assert kinds == {
        "gray.jpg": "tuple", "photo_0.jpg": "EncodedJpeg", "photo_1.jpg": "EncodedJpeg",
        "huffman.jpg": "EncodedJpeg", "rgb.png": "tuple", "photo_2.jpg": "EncodedJpeg",
        "photo_3.jpg": "EncodedJpeg", "cmyk.jpg": "tuple", "empty.jpg": "BadImage", "missing.jpg": "BadImage",
    }
    encoded = samples[names.index("photo_2.jpg")]
    assert encoded.orientation == 6 and encoded.index == names.index("photo_2.jpg")
    assert bytes(encoded.data.numpy()) == (folder / "photo_2.jpg").read_bytes()
    batch = collate_jpegs(samples)
    assert isinstance(batch, JpegBatch) and len(batch.jpegs) == 5
    assert batch.decoded.indices.tolist() == [0, 4, 7] and len(batch.decoded.bad) == 2


@pytest.mark.parametrize("batch_decode_fails", [False, True])
def test_decode_on_device_gives_the_torchvision_crops_in_index_order(jpeg_folder, monkeypatch,
                                                                     batch_decode_fails):
    folder, names = jpeg_folder
    crop = image_transform("regnet_x_400mf", 32, torch.uint8)
    reference = ImageDataset(names, crop, folder)  # torchvision on the CPU
    loader = DataLoader(ImageDataset(names, crop, folder, decoder="nvjpeg"), batch_size=4,
                        num_workers=0, collate_fn=collate_jpegs)
    if batch_decode_fails:  # as nvJPEG does on a batch holding a corrupt file: one by one instead
        decode_jpeg = images_module.decode_jpeg

        def no_batches(data, **options):
            if isinstance(data, list):
                raise RuntimeError("simulated batch failure")
            return decode_jpeg(data, **options)

        monkeypatch.setattr(images_module, "decode_jpeg", no_batches)
    seen, bad = [], []
    for batch in loader:
        finished = decode_on_device(batch, crop, "cpu")
        assert finished.indices.tolist() == sorted(finished.indices.tolist())
        if finished.images is not None:  # None for the last batch: empty.jpg and missing.jpg
            assert len(finished.images) == len(finished.indices)
            for image, index in zip(finished.images, finished.indices.tolist()):
                assert torch.equal(image, reference[index][0])
        seen.extend(finished.indices.tolist())
        bad.extend(item.name for item in finished.bad)
    assert sorted(bad) == ["empty.jpg", "huffman.jpg", "missing.jpg"]
    assert seen == [index for index, name in enumerate(names) if name not in bad]


def test_decode_on_device_handles_a_batch_of_only_bad_files():
    bad = BadImage(3, "x.jpg", "empty file (0 bytes)")
    finished = decode_on_device(JpegBatch(collate_skip_bad([bad]), []), small_tensor, "cpu")
    assert finished.images is None and finished.indices.tolist() == [] and finished.bad == [bad]


def test_nvjpeg_loader_refuses_a_cpu_device(jpeg_folder):
    folder, names = jpeg_folder
    crop = image_transform("regnet_x_400mf", 32, torch.uint8)
    dataset = ImageDataset(names, crop, folder, decoder="nvjpeg")
    with pytest.raises(ValueError, match="'nvjpeg' decoder runs on a CUDA device"):
        image_loader(dataset, device="cpu")
    assert isinstance(dataset[1], EncodedJpeg)
