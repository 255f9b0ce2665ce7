"""The feature store: equal to the encoder's own output, keyed, resumable, robust to bad images."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.pin_memory import pin_memory

import helpers.features as features_module
import helpers.space as space
from helpers.backbones import ImageEncoder, image_transform
from helpers.features import (
    CaptionFeatureDataset,
    FeatureCodes,
    FeatureStore,
    ImageFeatureDataset,
    dequantize,
    extract_features,
    feature_store_bytes,
    quantize,
    store_directory,
)
from helpers.images import BadImage, ImageBatch, TooManyBadImagesError, collate_skip_bad, load_image

BACKBONE = "regnet_x_400mf"  # smallest registered backbone: 400 channels
SIZE = 64  # -> 2 x 2 feature maps


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tiny convolutions run several times faster on one thread than on two busy cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@dataclass
class FakePrepared:
    """Stand-in for helpers.prepare.PreparedDataset with just what the feature store uses."""

    root: Path
    image_dir: Path
    splits: dict[str, list[str]]
    encoded: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    dataset: str = "fake"
    key: str = "fake-0001"

    def captions(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        return self.encoded[split]

    def image_path(self, filename: str) -> Path:
        return self.image_dir / filename


def make_prepared(tmp_path: Path, bad: dict[str, bytes] | None = None, key: str = "fake-0001"):
    """Ten noise JPEGs (plus optional bad files replacing some) split 6/2/2, two captions per image."""
    image_dir = tmp_path / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"img_{number:02d}.jpg" for number in range(10)]
    for number, name in enumerate(names):
        size = (80 + 4 * number, 60)  # varied shapes, like real photos
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(image_dir / name)
    for name, content in (bad or {}).items():
        (image_dir / name).write_bytes(content)
    splits = {"train": names[:6], "val": names[6:8], "test": names[8:]}
    encoded = {}
    for split, files in splits.items():
        image_idx = np.repeat(np.arange(len(files)), 2)
        encoded[split] = (rng.integers(0, 50, (len(image_idx), 7)).astype(np.int32), image_idx)
    return FakePrepared(tmp_path / "work" / "data" / key, image_dir, splits, encoded, key=key)


def extract(prepared, **overrides):
    """The float16 store unless `layout` says otherwise (the uint8 tests below compare against it)."""
    settings = dict(backbone=BACKBONE, image_size=SIZE, pretrained=False, batch_size=4, num_workers=0,
                    device="cpu", progress=False, layout="float16")
    settings.update(overrides)
    return extract_features(prepared, **settings)


def reference_features(prepared, names, backbone=BACKBONE, size=SIZE):
    """Direct ImageEncoder output (same random weights as `extract`) for the named images, in float32."""
    torch.manual_seed(features_module.RANDOM_WEIGHTS_SEED)
    encoder = ImageEncoder(pretrained=False, backbone=backbone, verbose=False).eval()
    transform = image_transform(backbone, size)
    images = torch.stack([transform(load_image(prepared.image_path(name))) for name in names])
    with torch.no_grad():
        return encoder(images).numpy()


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """One store extracted with two loader workers, shared (read-only) by the tests below."""
    prepared = make_prepared(tmp_path_factory.mktemp("clean"))
    store = extract(prepared, num_workers=2)
    return prepared, store


@pytest.fixture(scope="module")
def quantized(clean):
    """The uint8 store of the same images at 96 px (3 x 3: at 2 x 2 the ranges cost what 8 bits save)."""
    prepared, _ = clean
    return prepared, extract(prepared, image_size=96, layout="uint8", num_workers=2)


@pytest.mark.parametrize("backbone, side", [("convnext_tiny", 2), ("swin_t", 3)])
def test_modern_backbone_stores_hold_their_spatial_maps(tmp_path, backbone, side):
    """At 72 px ConvNeXt rounds its map down (2 x 2) and Swin up (3 x 3): the store takes each one's
    shape and holds what the encoder gives, in the default uint8 layout, at the computed size."""
    prepared = make_prepared(tmp_path)
    store = extract(prepared, backbone=backbone, image_size=72, layout="uint8")
    assert (store.channels, store.feature_size) == (768, side)
    for split, names in prepared.splits.items():
        stored = store.features(split)
        assert stored.shape == (len(names), 768, side, side)
        wanted = reference_features(prepared, names, backbone, 72)
        scale = np.abs(wanted).max()
        np.testing.assert_allclose(stored[:], wanted, atol=0.01 * scale)
    headers = 6 * 128  # one .npy header per split for the codes and for the ranges
    assert store.size_bytes == feature_store_bytes(10, backbone, 72, "uint8") + headers


def test_store_equals_direct_encoder_output_within_fp16(clean):
    prepared, store = clean
    assert store.path == prepared.root.parent.parent / "features" / "fake-0001" / f"{BACKBONE}-{SIZE}-random"
    assert (store.backbone, store.image_size, store.weights) == (BACKBONE, SIZE, "random")
    assert (store.channels, store.feature_size, store.dataset_key) == (400, 2, "fake-0001")
    all_names = [name for names in prepared.splits.values() for name in names]
    expected = dict(zip(all_names, reference_features(prepared, all_names)))
    assert np.abs(np.stack(list(expected.values()))).max() > 0.1  # not a trivially zero comparison
    for split, names in prepared.splits.items():
        stored = store.features(split)
        assert isinstance(stored, np.memmap) and stored.dtype == np.float16
        assert stored.shape == (len(names), 400, 2, 2)
        assert store.filenames(split) == names and store.is_complete(split)
        wanted = np.stack([expected[name] for name in names])
        np.testing.assert_allclose(stored.astype(np.float32), wanted, rtol=2e-3, atol=2e-3)
    assert store.index_of("val", "img_07.jpg") == 1
    assert store.size_bytes == sum((store.path / f"{split}.npy").stat().st_size for split in prepared.splits)
    assert store.size_bytes >= 10 * 400 * 4 * 2
    reopened = FeatureStore.open(store.path / "index.json")
    np.testing.assert_array_equal(reopened.features("test"), store.features("test"))


def test_pillow_decoding_gives_the_same_store_as_the_default_decoder(clean, tmp_path, monkeypatch):
    prepared, store = clean
    decoders = []
    original = features_module.ImageDataset

    def recording_dataset(*args, **kwargs):
        dataset = original(*args, **kwargs)
        decoders.append(dataset.decoder)
        return dataset

    monkeypatch.setattr(features_module, "ImageDataset", recording_dataset)
    by_pil = extract(prepared, work_dir=tmp_path / "features", decoder="pil")
    assert decoders == ["pil"]
    for split in prepared.splits:  # byte-identical crops, so the very same float16 features
        np.testing.assert_array_equal(by_pil.features(split), store.features(split))
    extract(prepared, work_dir=tmp_path / "default")
    assert decoders == ["pil", "torchvision"]  # the default on the CPU


def test_random_weights_are_the_same_whatever_the_global_seed(clean, tmp_path):
    prepared, store = clean
    torch.manual_seed(1234)
    again = extract(prepared, work_dir=tmp_path / "features")
    for split in prepared.splits:
        np.testing.assert_array_equal(again.features(split), store.features(split))


def test_size_estimate_matches_the_flickr8k_figure():
    assert feature_store_bytes(8091, "resnet50", 224) == 8091 * 2048 * 7 * 7 * 2  # about 1.6 GB
    assert feature_store_bytes(10, BACKBONE, SIZE) == 10 * 400 * 2 * 2 * 2
    # uint8: one byte per value plus a float16 offset and step per channel
    assert feature_store_bytes(8091, "resnet50", 224, "uint8") == 8091 * 2048 * (7 * 7 + 4)
    assert feature_store_bytes(123_287, "resnet101", 224, "uint8") < 14e9  # COCO fits Kaggle's 20 GB
    with pytest.raises(ValueError, match="Unknown feature layout 'int4'"):
        feature_store_bytes(1, layout="int4")


def test_prints_the_size_and_refuses_before_writing_when_it_would_not_fit(tmp_path, monkeypatch, capsys):
    prepared = make_prepared(tmp_path)
    monkeypatch.setattr(space.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 60_000})())
    with pytest.raises(space.OutputSpaceError) as refused:
        extract(prepared, image_size=96)  # 3 x 3 grid: 72 kB in float16, 52 kB in uint8
    message = str(refused.value)
    assert "The float16 feature store" in message and "needs 72.00 kB more but only 60.00 kB" in message
    assert 'OVERRIDES = ["data.feature_layout=uint8"] (52.00 kB)' in message
    assert "BACKBONE" not in message and "Nothing was written" in message  # regnet is the smallest
    assert not (tmp_path / "work" / "features").exists()
    store = extract(prepared, image_size=96, layout="uint8", progress=True)
    assert feature_store_bytes(10, BACKBONE, 96, "uint8") == 52_000
    assert store.size_bytes == 52_000 + 6 * 128  # and a 128-byte .npy header per file
    assert "10 images x 400 x 3 x 3 uint8 = 52.00 kB" in capsys.readouterr().out


def test_on_kaggle_the_output_limit_counts_what_the_working_dir_already_holds(tmp_path, monkeypatch):
    prepared = make_prepared(tmp_path)  # images outside, prepared data and stores in tmp_path/work
    working = tmp_path / "work"
    working.mkdir()
    (working / "older_run.bin").write_bytes(b"x" * 90_000)
    monkeypatch.setattr(space, "KAGGLE_WORKING", working)
    monkeypatch.setattr(space, "KAGGLE_OUTPUT_LIMIT_BYTES", 100_000)
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    assert space.space_left(working)[0] > 100_000  # not a Kaggle session: only the disk counts
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    left, reason = space.space_left(working / "features")
    assert left == 10_000 and "already holds 90.00 kB" in reason
    with pytest.raises(space.OutputSpaceError, match=r"only 10.00 kB is left \(of Kaggle's 100.00 kB"):
        extract(prepared, layout="uint8")
    (working / "older_run.bin").unlink()
    assert extract(prepared, layout="uint8").is_complete()


def test_quantized_features_are_within_half_a_step_of_their_values():
    rng = np.random.default_rng(0)
    block = np.maximum(rng.normal(0, 2, (3, 5, 4, 4)), 0).astype(np.float16)  # ReLU-like, with zeros
    block[0, 1] = 0  # a dead channel: exact
    block[1, 2] = 7.5  # a constant channel: exact
    block[2, 3] = rng.normal(-3, 1, (4, 4))  # negative values
    codes, ranges = quantize(block)
    assert codes.dtype == np.uint8 and codes.shape == block.shape
    assert ranges.dtype == np.float16 and ranges.shape == (3, 2, 5)
    restored = dequantize(codes, ranges)
    assert restored.dtype == np.float32
    assert np.all(restored[0, 1] == 0) and np.all(restored[1, 2] == 7.5)
    step = ranges[:, 1].astype(np.float32)[..., None, None]
    slack = 2e-3 * np.abs(block.astype(np.float32)).max(axis=(2, 3), keepdims=True)  # float16 offset/step
    assert np.all(np.abs(restored - block.astype(np.float32)) <= step / 2 + slack)
    assert np.abs(restored - block).max() > 0  # really quantized


def interrupt_after_one_batch(monkeypatch) -> list[int]:
    """Make the CNN raise KeyboardInterrupt on its second batch (as a user stopping the cell); returns
    the list of batch sizes it encoded before."""
    original_forward = ImageEncoder.forward
    images_seen: list[int] = []

    def interrupted_forward(self, images):
        if images_seen:
            raise KeyboardInterrupt("simulated interruption")
        images_seen.append(len(images))
        return original_forward(self, images)

    monkeypatch.setattr(ImageEncoder, "forward", interrupted_forward)
    return images_seen


def test_a_uint8_store_holds_the_float16_features_to_8_bits(quantized, tmp_path, monkeypatch):
    prepared, store = quantized
    full = extract(prepared, image_size=96)
    assert store.path == full.path.with_name(full.path.name + "-uint8") and store.layout == "uint8"
    assert store.size_bytes == feature_store_bytes(10, BACKBONE, 96, "uint8") + 6 * 128 < full.size_bytes
    for split in prepared.splits:
        stored = store.features(split)
        assert stored.shape == full.features(split).shape and len(stored) == len(prepared.splits[split])
        reference = full.features(split).astype(np.float32)
        error = np.linalg.norm(np.asarray(stored) - reference) / np.linalg.norm(reference)
        assert 0 < error < 0.01, error
        np.testing.assert_array_equal(stored[1:2], np.asarray(stored)[1:2])
    copy = make_prepared(tmp_path)  # interrupted after one batch, then resumed: the same store
    interrupt_after_one_batch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        extract(copy, image_size=96, layout="uint8")
    monkeypatch.undo()
    resumed = extract(copy, image_size=96, layout="uint8")
    for split in prepared.splits:
        np.testing.assert_array_equal(np.asarray(resumed.features(split)), np.asarray(store.features(split)))


def old_float32_features(codes: FeatureCodes) -> torch.Tensor:
    """What the datasets of a uint8 store handed out before FeatureCodes: dequantized in the worker."""
    return torch.from_numpy(dequantize(codes.codes.numpy(), codes.ranges.numpy()))


def test_uint8_datasets_hand_out_codes_that_dequantize_to_the_float32_features_exactly(quantized):
    prepared, store = quantized
    pairs = CaptionFeatureDataset(store, prepared, "train")
    _, image_idx = prepared.captions("train")
    samples = [pairs[i][0] for i in range(len(pairs))]
    assert all(isinstance(sample, FeatureCodes) for sample in samples)
    assert samples[0].codes.dtype == torch.uint8 and samples[0].codes.shape == (400, 3, 3) == samples[0].shape
    assert samples[0].ranges.dtype == torch.float16 and samples[0].ranges.shape == (2, 400)
    features = torch.stack([sample.to("cpu") for sample in samples])
    assert features.dtype == torch.float32
    np.testing.assert_array_equal(features.numpy(), store.features("train")[image_idx])  # bit for bit
    np.testing.assert_array_equal(samples[3][1].numpy(), features[3, 1].numpy())  # indexing reads float32
    per_image = ImageFeatureDataset(store, "test")
    np.testing.assert_array_equal(per_image[1][0].float().numpy(), store.features("test")[1])
    batch = collate_skip_bad([(samples[0], 0), BadImage(1, "bad.jpg", "empty file"), (samples[2], 2)])
    assert isinstance(batch.images, FeatureCodes) and len(batch.images) == 2
    assert batch.indices.tolist() == [0, 2]
    assert [bad.path for bad in batch.bad] == ["bad.jpg"]
    np.testing.assert_array_equal(batch.images.to("cpu").numpy(), features[[0, 2]].numpy())


class OldWay(Dataset):
    """CaptionFeatureDataset as it was: float32 features dequantized in the worker."""

    def __init__(self, pairs: CaptionFeatureDataset):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        codes, caption = self.pairs[index]
        return old_float32_features(codes), caption


def sent_bytes(batches: list[ImageBatch]) -> int:
    """Bytes of the tensors that the workers sent (the shared-memory storages of each batch)."""
    total = 0
    for batch in batches:
        features = batch.images
        tensors = [features.codes, features.ranges] if isinstance(features, FeatureCodes) else [features]
        total += sum(tensor.untyped_storage().nbytes() for tensor in [*tensors, batch.indices])
    return total


def test_uint8_batches_cross_the_workers_as_codes_and_ranges(quantized):
    """Workers send a quarter of the float32 bytes (plus the ranges), and `.to` gives the same numbers."""
    prepared, store = quantized
    pairs = CaptionFeatureDataset(store, prepared, "train")
    settings = dict(batch_size=4, num_workers=2, pin_memory=False)
    new = list(DataLoader(pairs, collate_fn=collate_skip_bad, **settings))
    old = list(DataLoader(OldWay(pairs), collate_fn=collate_skip_bad, **settings))
    assert all(isinstance(batch, ImageBatch) and isinstance(batch.images, FeatureCodes) for batch in new)
    for quantized_batch, float_batch in zip(new, old, strict=True):
        np.testing.assert_array_equal(quantized_batch.images.to("cpu").numpy(), float_batch.images.numpy())
        assert torch.equal(quantized_batch.indices, float_batch.indices)
    caption_bytes = 7 * 8
    assert sent_bytes(new) == len(pairs) * (400 * 3 * 3 + 2 * 400 * 2 + caption_bytes)  # 5256 per caption
    assert sent_bytes(old) == len(pairs) * (400 * 3 * 3 * 4 + caption_bytes)  # 14456 per caption
    (features, names), = DataLoader(ImageFeatureDataset(store, "test"), batch_size=2, num_workers=2)
    assert list(names) == ["img_08.jpg", "img_09.jpg"]  # decode_split's loader: torch's default_collate
    np.testing.assert_array_equal(features.to("cpu").numpy(), store.features("test")[:2])


def test_the_pinning_thread_pins_the_codes_and_ranges(quantized, monkeypatch):
    """torch's pinning calls the batch's FeatureCodes.pin_memory (faked here: pinning needs a GPU)."""
    prepared, store = quantized
    batch = collate_skip_bad([CaptionFeatureDataset(store, prepared, "train")[i] for i in range(3)])
    pinned = []

    def fake_pin(tensor, *args):
        pinned.append(tensor.dtype)
        return tensor.clone()

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    moved = pin_memory(batch)
    assert isinstance(moved, ImageBatch) and isinstance(moved.images, FeatureCodes)
    assert pinned == [torch.uint8, torch.float16, torch.int64]
    assert torch.equal(moved.images.to("cpu"), batch.images.to("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinning and dequantizing on the device need a GPU")
def test_pinned_uint8_batches_dequantize_on_the_gpu_to_the_cpu_values(quantized):
    prepared, store = quantized
    pairs = CaptionFeatureDataset(store, prepared, "train")
    loader = DataLoader(pairs, batch_size=4, num_workers=2, pin_memory=True, collate_fn=collate_skip_bad)
    for batch in loader:
        assert batch.images.codes.is_pinned() and batch.images.ranges.is_pinned()
        on_gpu = batch.images.to("cuda", non_blocking=True)
        assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.float32
        np.testing.assert_array_equal(on_gpu.cpu().numpy(), old_float32_features(batch.images).numpy())


def test_stores_are_keyed_by_dataset_backbone_size_and_weights(clean, monkeypatch):
    prepared, first = clean
    other_size = extract(prepared, image_size=96)
    assert other_size.path != first.path and other_size.feature_size == 3
    assert first.features("train").shape[2:] == (2, 2)  # the 64 px store is untouched
    pretrained_dir = store_directory("w", "k", "resnet50", 224, pretrained=True)
    assert pretrained_dir == Path("w/k/resnet50-224-IMAGENET1K_V2")
    assert store_directory("w", "k", "resnet50", 224, pretrained=False) == Path("w/k/resnet50-224-random")
    assert store_directory("w", "k2", "resnet101", 224, pretrained=False) == Path("w/k2/resnet101-224-random")

    def no_encoder(*args, **kwargs):
        raise AssertionError("a complete store must be reused without building the encoder")

    monkeypatch.setattr(features_module, "ImageEncoder", no_encoder)
    reused = extract(prepared)
    assert reused.path == first.path and reused.is_complete()
    with pytest.raises(ValueError, match="image_size=16 is too small"):
        extract(prepared, image_size=16)


def test_interrupted_extraction_resumes_to_the_same_store(clean, tmp_path, monkeypatch):
    _, uninterrupted = clean
    prepared = make_prepared(tmp_path)  # the same images as `clean`, in another work dir
    original_forward = ImageEncoder.forward
    images_seen = interrupt_after_one_batch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        extract(prepared)
    partial = FeatureStore.open(store_directory(tmp_path / "work" / "features", "fake-0001", BACKBONE, SIZE,
                                                pretrained=False))
    assert partial.rows_done("train") == 4 and not partial.is_complete()
    with pytest.raises(RuntimeError, match="incomplete for split 'train'"):
        CaptionFeatureDataset(partial, prepared, "train")

    def counting_forward(self, images):
        images_seen.append(len(images))
        return original_forward(self, images)

    monkeypatch.setattr(ImageEncoder, "forward", counting_forward)
    images_seen.clear()
    resumed = extract(prepared)
    assert sum(images_seen) == 6  # only the rows not done before
    for split in prepared.splits:
        np.testing.assert_array_equal(resumed.features(split), uninterrupted.features(split))
        assert resumed.rows_done(split) == len(prepared.splits[split])


def test_bad_images_stop_the_run_over_threshold_else_get_zero_rows_and_no_captions(tmp_path):
    prepared = make_prepared(tmp_path, bad={"img_03.jpg": b"", "img_07.jpg": b"plain text, not a JPEG"})
    with pytest.raises(TooManyBadImagesError, match="2 of 10 images") as caught:
        extract(prepared, max_bad_images=1)
    assert "img_03.jpg: empty file" in str(caught.value) and "img_07.jpg: not an image" in str(caught.value)
    partial = FeatureStore.open(store_directory(tmp_path / "work" / "features", "fake-0001", BACKBONE, SIZE,
                                                pretrained=False))
    assert partial.rows_done("train") == 4  # the first batch (with one bad image) is kept
    assert partial.bad_images("train") == {"img_03.jpg": "empty file (0 bytes)"}

    with pytest.warns(UserWarning, match="skipped 2 of 10 images"):  # a higher threshold finishes it
        store = extract(prepared, max_bad_images=0.5)
    assert store.is_complete()
    assert "not an image" in store.bad_images("val")["img_07.jpg"]
    assert store.bad_rows("train").tolist() == [False, False, False, True, False, False]
    assert not store.features("train")[3].any() and store.features("train")[2].any()
    progress = json.loads((store.path / "val.progress.json").read_text())
    assert progress["bad"]["1"]["filename"] == "img_07.jpg"

    pairs = CaptionFeatureDataset(store, prepared, "train")
    assert len(pairs) == 10 and pairs.skipped_captions == 2  # 6 images x 2 captions, minus img_03's
    captions, image_idx = prepared.captions("train")
    kept = np.flatnonzero(image_idx != 3)
    for position in (0, 5, 9):
        features, caption = pairs[position]
        assert features.dtype == torch.float32 and features.shape == (400, 2, 2)
        assert caption.dtype == torch.int64
        np.testing.assert_array_equal(caption.numpy(), captions[kept[position]])
        row = image_idx[kept[position]]
        np.testing.assert_array_equal(features.numpy(), store.features("train")[row].astype(np.float32))

    per_image = ImageFeatureDataset(store, "val")
    assert len(per_image) == 1 and per_image[0][1] == "img_06.jpg"


def test_caption_pairs_load_in_worker_processes(clean):
    prepared, store = clean
    loader = DataLoader(CaptionFeatureDataset(store, prepared, "train"), batch_size=4, num_workers=2)
    batches = list(loader)
    features = torch.cat([features for features, _ in batches])
    captions = torch.cat([captions for _, captions in batches])
    encoded, image_idx = prepared.captions("train")
    np.testing.assert_array_equal(features.numpy(), store.features("train")[image_idx].astype(np.float32))
    np.testing.assert_array_equal(captions.numpy(), encoded)


def test_image_features_serve_every_good_image_with_its_name(clean):
    _, store = clean
    per_image = ImageFeatureDataset(store, "test")
    assert [per_image[i][1] for i in range(len(per_image))] == ["img_08.jpg", "img_09.jpg"]
    np.testing.assert_array_equal(per_image[1][0].numpy(), store.features("test")[1].astype(np.float32))


def test_caption_dataset_refuses_a_store_of_another_dataset(clean, tmp_path):
    _, store = clean
    with pytest.raises(ValueError, match="made for dataset 'fake-0001', not 'other-0002'"):
        CaptionFeatureDataset(store, make_prepared(tmp_path, key="other-0002"), "train")


def test_a_store_for_different_images_under_the_same_key_is_rebuilt(clean, tmp_path):
    prepared, store = clean
    copy = make_prepared(tmp_path)
    shutil.copytree(store.path, copy.root.parent.parent / "features" / "fake-0001" / store.path.name)
    copy.splits = {"train": copy.splits["train"][:4], "test": copy.splits["test"]}
    with pytest.warns(UserWarning, match="different settings or images; rebuilding"):
        rebuilt = extract(copy)
    assert rebuilt.splits == ["train", "test"] and rebuilt.features("train").shape[0] == 4
    assert not (rebuilt.path / "val.npy").exists()
    np.testing.assert_array_equal(rebuilt.features("train"), store.features("train")[:4])


def test_extracts_a_real_prepared_demo_dataset(demo_dir, tmp_path):
    from helpers.prepare import prepare_dataset

    prepared = prepare_dataset("flickr8k", data_dir=demo_dir, work_dir=tmp_path / "work", verbose=False)
    store = extract(prepared, batch_size=64)
    assert store.path.parent == tmp_path / "work" / "features" / prepared.key
    for split, names in prepared.splits.items():
        assert store.filenames(split) == names and store.is_complete(split)
        pairs = CaptionFeatureDataset(store, prepared, split)
        encoded, image_idx = prepared.captions(split)
        assert len(pairs) == len(encoded) and pairs.skipped_captions == 0
        features, caption = pairs[len(pairs) - 1]
        np.testing.assert_array_equal(caption.numpy(), encoded[-1])
        expected = store.features(split)[image_idx[-1]].astype(np.float32)
        np.testing.assert_array_equal(features.numpy(), expected)
    test_names = prepared.splits["test"][:3]
    np.testing.assert_allclose(store.features("test")[:3].astype(np.float32),
                               reference_features(prepared, test_names), rtol=2e-3, atol=2e-3)


def test_values_beyond_the_float16_range_are_saturated_with_a_warning(tmp_path, monkeypatch):
    original_forward = ImageEncoder.forward

    def huge_forward(self, images):  # like a random-weight ResNet101, whose features reach ~3e5
        return original_forward(self, images) * 1e6

    monkeypatch.setattr(ImageEncoder, "forward", huge_forward)
    with pytest.warns(UserWarning, match=r"reached .*e\+0\d, beyond the float16 range"):
        store = extract(make_prepared(tmp_path))
    stored = store.features("train").astype(np.float32)
    assert np.isfinite(stored).all() and np.abs(stored).max() == 65504


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the nvJPEG path needs a CUDA GPU")
def test_nvjpeg_extraction_on_the_gpu_stays_close_to_the_cpu_store(clean, tmp_path):
    """nvJPEG's IDCT and chroma upsampling differ from libjpeg-turbo's by a few grey levels, and the
    GPU runs the encoder in fp16 autocast: the store differs from the CPU store by a little, not more."""
    prepared, store = clean
    on_gpu = extract(prepared, work_dir=tmp_path / "features", device="cuda", decoder="nvjpeg")
    for split in prepared.splits:
        cpu = store.features(split).astype(np.float32)
        gpu = on_gpu.features(split).astype(np.float32)
        assert np.linalg.norm(gpu - cpu) <= 0.05 * np.linalg.norm(cpu)


def test_two_devices_extract_the_store_of_one_device_and_resume_one_devices_partial_store(
    clean, tmp_path, monkeypatch
):
    """Two gloo processes encode alternate batches and rank 0 writes them in row order: the same rows,
    progress files and bad-image lists as one device, also when resuming what one device began."""
    _, one_device = clean
    prepared = make_prepared(tmp_path / "two")
    two_devices = extract(prepared, devices=2)  # 3 batches of 4: rank 0 takes two, rank 1 one
    partial = make_prepared(tmp_path / "resumed")
    interrupt_after_one_batch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        extract(partial)  # one device, one batch written
    monkeypatch.undo()
    resumed = extract(partial, devices=2)
    for store in (two_devices, resumed):
        assert store.is_complete()
        for split in prepared.splits:
            np.testing.assert_array_equal(store.features(split), one_device.features(split))
            assert store.progress_path(split).read_text() == one_device.progress_path(split).read_text()
