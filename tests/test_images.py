"""Image decoding of awkward real-world files, and the loader that skips and lists bad ones."""

from __future__ import annotations

import pickle
import re
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.images import (
    BadImage,
    BadImageError,
    BadImageReport,
    ImageDataset,
    TooManyBadImagesError,
    collate_skip_bad,
    image_loader,
    load_image,
)


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
