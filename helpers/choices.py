"""The named choices a config picks from, and the plain facts about them: backbones, caption decoders
(`model.decoder`), feature-store layouts and JPEG decoders.

Plain data without torch, so that `helpers.config` checks a config without importing torch or any
other helpers module; the modules that build these things (backbones, decoders, models, features,
images) take the names and facts from here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

BACKBONE_STRIDE = 32  # every backbone here shrinks the image side 32 times


def padded_side(image_size: int) -> int:
    """ResNet, RegNet: padded strided convolutions round up at each halving (224 -> 7, 225 -> 8)."""
    return math.ceil(image_size / BACKBONE_STRIDE)


def unpadded_side(image_size: int) -> int:
    """ConvNeXt: a 4x4 patch stem and 2x2 downsampling, no padding, round down (200 -> 6)."""
    return image_size // BACKBONE_STRIDE


def patch_then_padded_side(image_size: int) -> int:
    """Swin: a 4x4 patch stem rounds down, then patch merging pads odd sides and rounds up (200 -> 7)."""
    return math.ceil(image_size // 4 / 8)


@dataclass(frozen=True)
class BackboneSpec:
    """What is known of a backbone without torchvision (`helpers.backbones.BackboneInfo` adds what its
    weights enum records). Channels, crop sizes and feature-map sides are checked against torchvision's
    networks and weights by the tests. Batch sizes are the original project's recommendations for
    ResNet50/101 and RegNet; ConvNeXt and Swin take ResNet50's, since fine-tuning keeps about as much
    per image for backward (bench/bench_features.py). None was measured on a T4."""

    name: str
    out_channels: int  # channels of the last feature map
    batch_size: int  # recommended training batch on a 16 GB T4 when fine-tuning
    weights: str  # torchvision enum member used for pretrained=True
    description: str
    image_size: int = 224  # centre-crop side the weights were trained with (their transform's crop_size)
    side_rule: Callable[[int], int] = padded_side  # image side -> feature-map side

    def feature_side(self, image_size: int | None = None) -> int:
        """Spatial side of the feature map for a square input (default: the weights' own crop)."""
        return self.side_rule(image_size or self.image_size)

    @property
    def feature_size(self) -> int:
        """Spatial side of the feature map at `image_size`."""
        return self.feature_side()

    def feature_bytes(self, image_size: int | None = None, dtype_bytes: int = 2) -> int:
        """Bytes of one image's feature values (float16 by default), without the ranges the uint8 store
        adds (`store_bytes` counts those)."""
        side = self.feature_side(image_size)
        return self.out_channels * side * side * dtype_bytes

    def store_bytes(self, image_size: int | None = None, layout: str = "uint8") -> int:
        """Bytes of one image in the feature store (helpers.features): float16 values, or uint8 codes
        plus a float16 offset and step per channel."""
        side = self.feature_side(image_size)
        if layout == "float16":
            return self.out_channels * side * side * 2
        return self.out_channels * (side * side + 2 * 2)


BACKBONE_SPECS: dict[str, BackboneSpec] = {
    "resnet50": BackboneSpec(
        name="resnet50", out_channels=2048, batch_size=128, weights="ResNet50_Weights.IMAGENET1K_V2",
        description="Default: strong features at moderate cost.",
    ),
    "resnet101": BackboneSpec(
        name="resnet101", out_channels=2048, batch_size=64, weights="ResNet101_Weights.IMAGENET1K_V2",
        description="Deeper ResNet: slightly better features, about twice the compute of ResNet50.",
    ),
    "regnet_x_400mf": BackboneSpec(
        name="regnet_x_400mf", out_channels=400, batch_size=256,
        weights="RegNet_X_400MF_Weights.IMAGENET1K_V2",
        description="The course module's backbone: small and fast; 400 channels (not 1280).",
    ),
    # Registered before swin_t: the course's input_dim=768 selects the first backbone with 768 channels.
    "convnext_tiny": BackboneSpec(
        name="convnext_tiny", out_channels=768, batch_size=128, weights="ConvNeXt_Tiny_Weights.IMAGENET1K_V1",
        description="Modern CNN: ResNet50's cost, higher ImageNet accuracy; 768 channels.",
        side_rule=unpadded_side,
    ),
    "swin_t": BackboneSpec(
        name="swin_t", out_channels=768, batch_size=128, weights="Swin_T_Weights.IMAGENET1K_V1",
        description="Vision transformer with shifted windows; 768 channels, bicubic resize.",
        side_rule=patch_then_padded_side,
    ),
}
DEFAULT_BACKBONE = "resnet50"

# Caption decoders (`model.cell_type`, `CaptioningRNN(cell_type=...)`) and the aliases accepted for them.
CELL_TYPES = ("rnn", "lstm", "attn", "transformer")
CELL_TYPE_ALIASES = {"attention": "attn", "vanilla_rnn": "rnn", "attention_lstm": "attn"}


def canonical_cell_type(name: str) -> str:
    """The decoder name that `name` (a name or an alias, any case) stands for; unknown names unchanged."""
    name = str(name).lower()
    return CELL_TYPE_ALIASES.get(name, name)


# How the feature store keeps features (`data.feature_layout`, see helpers.features).
FEATURE_LAYOUTS = ("uint8", "float16")
DEFAULT_FEATURE_LAYOUT = "uint8"

# How images are decoded (`data.jpeg_decoder`, see helpers.images): Pillow, torchvision's libjpeg-turbo,
# or nvJPEG on the GPU.
JPEG_DECODERS = ("pil", "torchvision", "nvjpeg")
