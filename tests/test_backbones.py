"""Backbone registry, the image transform and ImageEncoder (weights planted, never downloaded)."""

import math

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
    [("resnet50", 2048, 25.56), ("resnet101", 2048, 44.55), ("regnet_x_400mf", 400, 5.50),
     ("convnext_tiny", 768, 28.59), ("swin_t", 768, 28.29)],
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


@pytest.mark.parametrize(
    "name, resize, interpolation",
    [("resnet50", 232, "bilinear"), ("resnet101", 232, "bilinear"), ("regnet_x_400mf", 232, "bilinear"),
     ("convnext_tiny", 236, "bilinear"), ("swin_t", 232, "bicubic")],
)
def test_registry_sizes_are_the_weights_own_transform(name, resize, interpolation):
    """Crop, resize and interpolation are torchvision's weights' own (their documented recipes); the
    crop, which configs need without torch, is registered in helpers.choices and checked here."""
    info = BACKBONES[name]
    assert (info.image_size, info.resize_size, info.interpolation.value) == (224, resize, interpolation)
    assert info.feature_size == feature_side(224, name) == 7
    preset = info.weights_enum.transforms()
    assert info.image_size == preset.crop_size[0]
    # ImageEncoder applies the ImageNet statistics itself: every preset must use those
    assert (list(preset.mean), list(preset.std)) == (list(IMAGENET_MEAN), list(IMAGENET_STD))
    resize_step = next(step for step in image_transform(name).transforms if hasattr(step, "interpolation"))
    assert (resize_step.size, resize_step.interpolation) == ([resize], preset.interpolation)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_feature_side_matches_a_real_forward_at_sizes_that_round(name):
    """ResNet/RegNet round up at each halving, ConvNeXt rounds down, Swin does one then the other."""
    encoder = ImageEncoder(pretrained=False, backbone=name, verbose=False).eval()
    for size in (200, 225):
        with torch.no_grad():
            side = encoder(torch.rand(1, 3, size, size)).shape[-1]
        assert side == feature_side(size, name) == BACKBONES[name].feature_side(size)
    expected = {"resnet50": (7, 8), "resnet101": (7, 8), "regnet_x_400mf": (7, 8),
                "convnext_tiny": (6, 7), "swin_t": (7, 7)}[name]
    assert (feature_side(200, name), feature_side(225, name)) == expected


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


def test_trainable_layers_cover_the_whole_trunk():
    for name in ("regnet_x_400mf", "resnet50"):
        encoder = ImageEncoder(pretrained=False, backbone=name, verbose=False)
        staged = sum(p.numel() for stage in encoder.trainable_layers() for p in stage.parameters())
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


# ------------------------------------------------------------------- the modern backbones: ConvNeXt, Swin
MODERN = ("convnext_tiny", "swin_t")


def photo_like_image() -> Image.Image:
    """Gradients, noise and a flat block: resampling differences show, as on photos."""
    rows, columns = np.mgrid[0:300, 0:400]
    pixels = np.stack([(columns * 0.6) % 256, (rows * 0.8) % 256, ((rows + columns) * 0.3) % 256], -1)
    pixels = pixels + np.random.default_rng(0).normal(0, 8, pixels.shape)
    pixels[100:180, 150:260] = (200, 30, 40)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


@pytest.mark.parametrize("name, stand_in", [("convnext_tiny", "resnet50"), ("swin_t", "resnet50")])
def test_image_transform_matches_the_weights_own_transform(name, stand_in):
    """Our crop, normalised as ImageEncoder does, is torchvision's preset within one grey level; the
    ResNet recipe (another resize side for ConvNeXt, bilinear for Swin) is visibly not."""
    image = photo_like_image()
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    reference = BACKBONES[name].weights_enum.transforms()(image) * std + mean
    ours = image_transform(name)(image)
    assert ours.shape == reference.shape == (3, 224, 224)
    assert (ours - reference).abs().max() * 255 <= 1.001
    assert (ours - reference).abs().mean() * 255 < 0.01
    assert (image_transform(stand_in)(image) - reference).abs().mean() * 255 > 0.5


@pytest.mark.parametrize("name", MODERN)
def test_modern_backbones_give_spatial_nchw_maps(name):
    """768 channels first (Swin's channels-last stages are normed and permuted), at 224 and 160 px."""
    encoder = ImageEncoder(pretrained=False, backbone=name, verbose=False).eval()
    with torch.no_grad():
        at_224 = encoder(torch.rand(2, 3, 224, 224))
        at_160 = encoder(torch.randint(0, 256, (1, 3, 160, 160), dtype=torch.uint8))
    assert at_224.shape == (2, 768, 7, 7) and at_160.shape == (1, 768, 5, 5)
    if name == "swin_t":  # the final LayerNorm (freshly initialised: scale 1, shift 0) normalises channels
        with torch.no_grad():
            located = encoder(torch.rand(1, 3, 224, 224))
        assert torch.allclose(located.mean(dim=1), torch.zeros(1, 7, 7), atol=1e-4)
        assert torch.allclose(located.var(dim=1, unbiased=False), torch.ones(1, 7, 7), atol=1e-3)


@pytest.mark.parametrize("name", MODERN)
def test_modern_backbones_have_five_stages_covering_the_trunk(name):
    """Stem, then four stages each with the downsampling before it (like RegNet): the last one is the
    7x7 stage (Swin's final norm included), which finetune mode trains alone by default."""
    encoder = ImageEncoder(pretrained=False, backbone=name, verbose=False)
    stages = encoder.trainable_layers()
    assert len(stages) == 5
    staged = [p for stage in stages for p in stage.parameters()]
    assert len(staged) == len({id(p) for p in staged}) == len(list(encoder.cnn.parameters()))
    encoder.requires_grad_(False)
    stages[-1].requires_grad_(True)
    encoder.eval()(torch.rand(2, 3, 64, 64)).square().mean().backward()
    trained = {id(p) for p in stages[-1].parameters()}
    for parameter in encoder.cnn.parameters():
        assert (parameter.grad is not None) == (id(parameter) in trained)
    last_norm = encoder.cnn[1] if name == "swin_t" else encoder.cnn[0][-1][-1].block[2]
    assert last_norm.weight.grad is not None


def test_input_dim_768_selects_convnext_and_swin_must_be_named():
    from helpers.models import backbone_for

    assert backbone_for(768, None) == "convnext_tiny"
    assert backbone_for(768, "swin_t") == "swin_t"
    assert [name for name, info in BACKBONES.items() if info.out_channels == 768] == list(MODERN)


@pytest.mark.parametrize("name", MODERN)
def test_attention_lstm_learns_to_caption_from_their_features(name):
    """Features mode end to end at small scale: the backbone's map (random weights) goes into the
    attention LSTM, which trains on it and learns which colour each image shows."""
    from helpers.models import CaptioningRNN

    words = ["<NULL>", "<START>", "<END>", "<UNK>", "a", "red", "green", "blue", "white", "square"]
    word_to_idx = {word: index for index, word in enumerate(words)}
    colours = {"red": (220, 20, 20), "green": (20, 200, 40), "blue": (30, 40, 210), "white": (250, 250, 250)}
    images = torch.stack([torch.tensor(rgb, dtype=torch.uint8).view(3, 1, 1).expand(3, 96, 96)
                          for rgb in colours.values()])
    encoder = ImageEncoder(pretrained=False, backbone=name, verbose=False).eval()
    with torch.no_grad():
        features = encoder(images)
    assert features.shape == (4, 768, 3, 3)
    captions = torch.tensor([[1, 4, word_to_idx[colour], 9, 2] for colour in colours])
    torch.manual_seed(0)
    model = CaptioningRNN(word_to_idx, wordvec_dim=16, hidden_dim=32, cell_type="attn", backbone=name,
                          image_encoder_pretrained=False, ignore_index=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(200):
        optimizer.zero_grad()
        loss = model(features, captions)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # below ln 4, the loss left when the words are right but the colour is a guess among the four
    assert losses[1] < losses[0] and losses[-1] < 0.5 * math.log(4)
    assert not any(p.grad is not None for p in model.image_encoder.parameters())  # features skip the CNN
    model.eval()
    sampled, attention = model.sample(features, max_length=4)
    assert sampled[:, :3].tolist() == captions[:, 1:4].tolist()
    assert attention.shape == (4, 4, 3, 3)
