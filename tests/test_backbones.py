"""Backbone registry, the image transform and ImageEncoder (weights planted, never downloaded)."""

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from helpers.backbones import (
    BACKBONES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageEncoder,
    PretrainedWeightsUnavailable,
    feature_side,
    get_backbone,
    image_transform,
    measure_backbone,
)


@pytest.mark.parametrize(
    "name, channels, millions",
    [("resnet50", 2048, 25.56), ("resnet101", 2048, 44.55), ("regnet_x_400mf", 400, 5.50)],
)
def test_encoder_measures_channels_and_parameters(name, channels, millions):
    encoder = ImageEncoder(pretrained=False, backbone=name, verbose=False)
    assert encoder.out_channels == channels == BACKBONES[name].out_channels
    assert encoder.num_parameters == BACKBONES[name].parameters
    assert round(encoder.num_parameters / 1e6, 2) == millions
    with torch.no_grad():
        features = encoder.eval()(torch.rand(2, 3, 96, 128))
    assert features.shape == (2, channels, 3, 4)


def test_registry_feature_size_matches_a_real_forward():
    encoder = ImageEncoder(pretrained=False, backbone="regnet_x_400mf", verbose=False).eval()
    info = BACKBONES["regnet_x_400mf"]
    with torch.no_grad():
        out = encoder(torch.rand(1, 3, info.image_size, info.image_size))
    assert out.shape[-2:] == (info.feature_size, info.feature_size)
    assert info.feature_bytes() == 400 * 7 * 7 * 2
    assert BACKBONES["resnet50"].feature_bytes() * 8091 == pytest.approx(1.62e9, rel=0.01)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_registry_sizes_are_the_weights_own_transform(name):
    """Crop and resize sides come from torchvision's weights (224 and 232 for all three today)."""
    info = BACKBONES[name]
    preset = info.weights_enum.transforms()
    assert (info.image_size, info.resize_size) == (preset.crop_size[0], preset.resize_size[0]) == (224, 232)
    assert feature_side(info.image_size) == info.feature_size == 7 and feature_side(225) == 8


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ValueError, match="resnet50.*resnet101.*regnet_x_400mf"):
        ImageEncoder(pretrained=False, backbone="mobilenet_v2")
    with pytest.raises(ValueError, match="Unknown backbone 'vgg'"):
        get_backbone("vgg")


def test_encoder_normalises_like_imagenet_and_accepts_uint8():
    encoder = ImageEncoder(pretrained=False, backbone="regnet_x_400mf", verbose=False).eval()
    pixels = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    as_float = pixels.float() / 255
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        reference = encoder.cnn((as_float - mean) / std)
        assert torch.allclose(encoder(pixels), reference, atol=1e-5)
        assert torch.allclose(encoder(as_float), reference, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        encoder(torch.rand(2, 400, 7, 7))


def test_pretrained_weights_come_from_torch_home(torch_home):
    info = BACKBONES["regnet_x_400mf"]
    planted = torchvision.models.regnet_x_400mf(weights=None).state_dict()
    planted["stem.0.weight"] = torch.full_like(planted["stem.0.weight"], 0.125)
    torch.save(planted, torch_home / "hub" / "checkpoints" / info.weights_file)
    encoder = ImageEncoder(pretrained=True, backbone="regnet_x_400mf", verbose=False)
    assert torch.equal(encoder.cnn[0][0].weight, planted["stem.0.weight"])
    assert encoder.weights_name == "RegNet_X_400MF_Weights.IMAGENET1K_V2"


def test_missing_weights_offline_explain_the_kaggle_fix(torch_home):
    with pytest.raises(PretrainedWeightsUnavailable) as caught:
        ImageEncoder(pretrained=True, backbone="regnet_x_400mf", verbose=False)
    message = str(caught.value)
    assert "regnet_x_400mf-62229a5f.pth" in message
    assert "turn Internet on" in message and "pretrained=False" in message
    assert str(torch_home) in message


def test_image_transform_resizes_crops_and_scales_to_unit_range():
    image = Image.fromarray(np.full((300, 400, 3), 255, dtype=np.uint8))
    tensor = image_transform("resnet50")(image)
    assert tensor.shape == (3, 224, 224) and tensor.dtype == torch.float32
    assert torch.allclose(tensor, torch.ones_like(tensor))
    assert image_transform("regnet_x_400mf", image_size=64)(image).shape == (3, 64, 64)


def test_byte_images_give_the_same_features_as_float_images():
    """The loaders pass uint8 crops (a quarter of the bytes); the encoder must see the same image."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (150, 200, 3), dtype=np.uint8))
    as_float = image_transform("regnet_x_400mf", image_size=64)(image)
    as_bytes = image_transform("regnet_x_400mf", image_size=64, dtype=torch.uint8)(image)
    assert as_bytes.dtype == torch.uint8 and as_bytes.shape == as_float.shape == (3, 64, 64)
    assert torch.allclose(as_bytes.float() / 255, as_float, atol=1e-7)
    assert len(as_bytes.unique()) > 100  # a real image, not a flat one
    encoder = ImageEncoder(pretrained=False, backbone="regnet_x_400mf", verbose=False).eval()
    with torch.no_grad():
        features = encoder(as_float[None]), encoder(as_bytes[None])
    assert torch.allclose(*features, atol=1e-5)
    with pytest.raises(ValueError, match="dtype must be torch.float32 or torch.uint8"):
        image_transform("resnet50", dtype=torch.float16)


def test_trainable_stages_cover_the_whole_trunk():
    for name in ("regnet_x_400mf", "resnet50"):
        encoder = ImageEncoder(pretrained=False, backbone=name, verbose=False)
        staged = sum(p.numel() for stage in encoder.trainable_stages() for p in stage.parameters())
        assert staged == sum(p.numel() for p in encoder.cnn.parameters())


def test_measure_backbone_reports_measured_facts():
    row = measure_backbone("regnet_x_400mf", image_size=64, batch_size=2, batches=1, num_images=1000)
    assert row["channels"] == 400 and row["feature map"] == "400x2x2"
    assert row["parameters (M)"] == 5.5
    assert row["images/s"] > 0 and row["peak GPU memory (MB)"] is None
    assert row["feature store (GB)"] == round(1000 * 400 * 2 * 2 * 2 / 1e9, 3)


def test_deferred_weights_load_only_when_images_pass(torch_home):
    encoder = ImageEncoder(pretrained=True, backbone="regnet_x_400mf", verbose=False, defer_weights=True)
    assert encoder.weights_pending  # built offline with an empty TORCH_HOME: nothing loaded yet
    with pytest.raises(PretrainedWeightsUnavailable, match="regnet_x_400mf-62229a5f.pth"):
        encoder(torch.rand(1, 3, 64, 64))
    planted = torchvision.models.regnet_x_400mf(weights=None).state_dict()
    planted["stem.0.weight"] = torch.full_like(planted["stem.0.weight"], -0.5)
    torch.save(planted, torch_home / "hub" / "checkpoints" / BACKBONES["regnet_x_400mf"].weights_file)
    weight = encoder.cnn[0][0].weight
    with torch.inference_mode():
        encoder.eval()(torch.rand(1, 3, 64, 64))
    assert not encoder.weights_pending
    assert encoder.cnn[0][0].weight is weight and torch.equal(weight, planted["stem.0.weight"])


def test_a_checkpoint_with_cnn_weights_cancels_the_deferred_load(torch_home):
    trained = ImageEncoder(pretrained=False, backbone="regnet_x_400mf", verbose=False)
    encoder = ImageEncoder(pretrained=True, backbone="regnet_x_400mf", verbose=False, defer_weights=True)
    encoder.load_state_dict(trained.state_dict())
    assert not encoder.weights_pending
    with torch.no_grad():
        encoder.eval()(torch.rand(1, 3, 64, 64))  # no download attempted: TORCH_HOME is empty
    assert torch.equal(encoder.cnn[0][0].weight, trained.cnn[0][0].weight)
