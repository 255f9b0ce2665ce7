"""CNN backbones: a registry of the choices with their facts, the one image transform per backbone,
and `ImageEncoder`, the course module's encoder extended to ResNet50/101, RegNet-X-400MF, ConvNeXt-Tiny
and Swin-T (all give a spatial feature map (N, C, h, w) that the attention decoders attend over).

Weights come from torchvision's `weights=` enums: a file in `$TORCH_HOME/hub/checkpoints` or attached
to the Kaggle notebook (under torchvision's file name, or renamed and matched by the sha256 prefix in
that name) loads without network access; otherwise torchvision downloads it, with a bounded wait.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.transforms import v2 as transforms

from helpers.choices import BACKBONE_SPECS, DEFAULT_BACKBONE, BackboneSpec
from helpers.inputs import DOWNLOAD_TIMEOUT, find_attached, input_root, run_with_progress_timeout

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneInfo(BackboneSpec):
    """A backbone's plain facts (helpers.choices.BackboneSpec) plus what torchvision's weights enum
    records: parameter count, GFLOPs, ImageNet accuracy and the weights' own transform (see
    BACKBONE_GUIDE.md)."""

    @property
    def weights_enum(self) -> torchvision.models.WeightsEnum:
        enum_name, member = self.weights.split(".")
        return getattr(getattr(torchvision.models, enum_name), member)

    @property
    def parameters(self) -> int:
        """Parameters of the whole classification network, as torchvision's weights record them."""
        return self.weights_enum.meta["num_params"]

    @property
    def gflops(self) -> float:
        """Multiply-adds of one image at `image_size`, in billions, as torchvision's weights record them."""
        return self.weights_enum.meta["_ops"]

    @property
    def imagenet_top1(self) -> float:
        """ImageNet-1K top-1 accuracy (%) of the pretrained weights, as torchvision records it."""
        return self.weights_enum.meta["_metrics"]["ImageNet-1K"]["acc@1"]

    @property
    def preset(self):
        """The weights' own evaluation transform (torchvision's ImageClassification preset)."""
        return self.weights_enum.transforms()

    @property
    def resize_size(self) -> int:
        """Short side before the crop (the weights' own transform's resize_size)."""
        return self.preset.resize_size[0]

    @property
    def interpolation(self) -> transforms.InterpolationMode:
        """Resize interpolation of the weights' own transform (bilinear; bicubic for Swin)."""
        return self.preset.interpolation

    @property
    def weights_file(self) -> str:
        """File name under $TORCH_HOME/hub/checkpoints where the pretrained weights are cached."""
        return self.weights_enum.url.rsplit("/", 1)[-1]


BACKBONES: dict[str, BackboneInfo] = {
    name: BackboneInfo(**vars(spec)) for name, spec in BACKBONE_SPECS.items()
}


def feature_side(image_size: int, backbone: str = DEFAULT_BACKBONE) -> int:
    """Spatial side of `backbone`'s last feature map for a square `image_size` input (7 at 224)."""
    return get_backbone(backbone).feature_side(image_size)


def get_backbone(name: str) -> BackboneInfo:
    """Registry lookup with an error that lists the valid names."""
    try:
        return BACKBONES[name]
    except (KeyError, TypeError):
        valid = ", ".join(repr(n) for n in BACKBONES)
        raise ValueError(f"Unknown backbone {name!r}; choose one of {valid}.") from None


def image_transform(
    backbone: str = DEFAULT_BACKBONE, image_size: int | None = None, dtype: torch.dtype = torch.float32
):
    """PIL RGB image -> tensor (3, S, S): resize the short side, centre crop.

    float32 (default): values in [0, 1]. `dtype=torch.uint8` keeps the pixels as bytes, the same
    values times 255 (the resize works on bytes either way): a quarter of the data to pass from
    loader workers and to the GPU, which the loaders use. Not normalised: `ImageEncoder` scales
    bytes and applies the ImageNet normalisation, as the course module does. The resize/crop ratio
    and the interpolation are the backbone's weights' own (232/224 bilinear for the ResNets and
    RegNet, 236/224 bilinear for ConvNeXt, 232/224 bicubic for Swin).
    """
    if dtype not in (torch.float32, torch.uint8):
        raise ValueError(f"image_transform: dtype must be torch.float32 or torch.uint8, got {dtype}.")
    info = get_backbone(backbone)
    size = image_size or info.image_size
    resize = round(size * info.resize_size / info.image_size)
    steps = [
        transforms.ToImage(),
        transforms.Resize(resize, interpolation=info.interpolation, antialias=True),
        transforms.CenterCrop(size),
    ]
    if dtype == torch.float32:
        steps.append(transforms.ToDtype(torch.float32, scale=True))
    return transforms.Compose(steps)


class PretrainedWeightsUnavailable(RuntimeError):
    """The pretrained weights are neither cached, attached nor downloadable."""


def _hash_prefix(file_name: str) -> str | None:
    """The sha256 prefix torchvision puts in its weights file names (``resnet50-11ad3fa6.pth``)."""
    found = torch.hub.HASH_REGEX.search(file_name)
    return found.group(1) if found else None


def _sha256_starts_with(path: Path, prefix: str) -> bool:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest().startswith(prefix)


def find_attached_weights(info: BackboneInfo) -> list[Path]:
    """Candidate files for the pretrained weights of ``info`` in the datasets or Kaggle Models attached
    to the notebook (see helpers.inputs), best first: files under torchvision's own name (trusted like
    torchvision trusts its cache; a damaged one fails to load and is skipped), then renamed ``.pth``
    copies of about the weights' size whose sha256 starts with the prefix in torchvision's name."""
    prefix = _hash_prefix(info.weights_file)
    expected_bytes = 4 * info.parameters
    candidates = find_attached(lambda name: name.endswith(".pth"))
    by_name = [file for file in candidates if file.name == info.weights_file]
    renamed = [file for file in candidates if file.name != info.weights_file
               and 0.9 * expected_bytes < file.stat().st_size < 1.2 * expected_bytes]
    return by_name + [file for file in renamed if prefix is not None and _sha256_starts_with(file, prefix)]


def _load_attached(info: BackboneInfo) -> dict[str, torch.Tensor] | None:
    """The first attached weights file that loads as a state dict of this backbone, or None."""
    expected = set(getattr(torchvision.models, info.name)(weights=None).state_dict())
    for file in find_attached_weights(info):
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as error:  # truncated or not a torch file: say so, try the next source
            print(f"{file}: not readable as {info.name} weights ({type(error).__name__}); ignored")
            continue
        if not isinstance(state, dict) or set(state) != expected:
            print(f"{file}: not a state dict of {info.name}; ignored")
            continue
        print(f"{info.name} weights: {file} (attached)")
        return state
    return None


def _load_weights(info: BackboneInfo) -> dict[str, torch.Tensor]:
    """The pretrained state dict: cached in $TORCH_HOME/hub/checkpoints, else attached (read in place),
    else downloaded by torchvision, given up after DOWNLOAD_TIMEOUT seconds without progress."""
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    if not (checkpoints / info.weights_file).is_file():
        attached = _load_attached(info)
        if attached is not None:
            return attached
    checkpoints.mkdir(parents=True, exist_ok=True)
    try:
        return run_with_progress_timeout(
            lambda: info.weights_enum.get_state_dict(progress=True, check_hash=True), checkpoints,
            DOWNLOAD_TIMEOUT, urlparse(info.weights_enum.url).netloc,
        )
    except Exception as error:  # urllib, socket, SSL and timeout errors all mean the same to the user
        raise PretrainedWeightsUnavailable(
            f"Could not load the pretrained {info.name} weights ({info.weights}): {error}.\n"
            f"They are read from {checkpoints}/{info.weights_file}, else from any dataset or Kaggle Model "
            f"attached under {input_root()}, else downloaded from {info.weights_enum.url}.\n"
            "Fix, on Kaggle: turn Internet on (notebook sidebar -> Session options -> Internet), or attach "
            f"the file {info.weights_file} as a dataset or Kaggle Model (Add Input); elsewhere: check the "
            f"network, or put {info.weights_file} into {checkpoints}/. "
            "Or pass pretrained=False to train from random weights."
        ) from error


def _trunk(name: str, network: nn.Module) -> nn.Sequential:
    """The network without its pooling and classifier: images -> last spatial feature map (N, C, h, w).
    Swin's stages work channels-last: its trunk ends with the final norm and the permute to NCHW."""
    if name.startswith("resnet"):
        return nn.Sequential(*list(network.children())[:-2])
    if name.startswith("convnext"):
        return nn.Sequential(network.features)
    if name.startswith("swin"):
        return nn.Sequential(network.features, network.norm, network.permute)
    return nn.Sequential(network.stem, network.trunk_output)


class ImageEncoder(nn.Module):
    """CNN trunk that maps images to spatial features (N, C, H/32, W/32).

    Accepts uint8 images in [0, 255] or float images in [0, 1] and normalises them with the ImageNet
    statistics itself, like the course module's encoder.
    """

    def __init__(
        self,
        pretrained: bool = True,
        backbone: str = DEFAULT_BACKBONE,
        verbose: bool = True,
        defer_weights: bool = False,
    ):
        """`defer_weights=True` loads the pretrained weights when the CNN first runs (or never, when
        only precomputed features pass through the model), so that training from the feature store
        needs neither Internet nor the weights file; a state dict holding the CNN's weights (a
        fine-tuned checkpoint) cancels the pending load."""
        super().__init__()
        info = get_backbone(backbone)
        self.backbone = info.name
        self.info = info
        network = getattr(torchvision.models, info.name)(weights=None)
        if pretrained and not defer_weights:
            network.load_state_dict(_load_weights(info))
        self.weights_pending = pretrained and defer_weights
        self.weights_name = info.weights if pretrained else "random"
        self.num_parameters = sum(p.numel() for p in network.parameters())
        self.cnn = _trunk(info.name, network)
        self.mean = IMAGENET_MEAN
        self.std = IMAGENET_STD
        self.register_buffer("_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        was_training = self.cnn.training
        self.cnn.eval()
        with torch.no_grad():
            self._out_channels = self.cnn(torch.zeros(1, 3, 64, 64)).shape[1]
        self.cnn.train(was_training)
        if verbose:
            print(
                f"ImageEncoder: {info.name} ({self.weights_name}), "
                f"{self.num_parameters / 1e6:.2f} M parameters, {self._out_channels} output channels"
            )

    def load_pretrained_weights(self) -> None:
        """Copy the pretrained weights into the trunk in place (parameters keep their identity, so an
        optimizer built over them stays valid)."""
        network = getattr(torchvision.models, self.backbone)(weights=None)
        network.load_state_dict(_load_weights(self.info))
        with torch.inference_mode(False), torch.no_grad():
            self.cnn.load_state_dict(_trunk(self.backbone, network).state_dict())
        self.weights_pending = False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if any(key.startswith(f"{prefix}cnn.") for key in state_dict):
            self.weights_pending = False  # the checkpoint's CNN weights win over the pretrained ones
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def out_channels(self) -> int:
        """Channels of the feature map, measured from the network at construction."""
        return self._out_channels

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [0, 255] or float [0, 1] images -> ImageNet-normalised floats."""
        if not images.is_floating_point():
            images = images.float() / 255.0
        return (images - self._mean.to(images.dtype)) / self._std.to(images.dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"ImageEncoder expects images of shape (N, 3, H, W); got {tuple(images.shape)}."
            )
        if self.weights_pending:
            self.load_pretrained_weights()
        return self.cnn(self.normalize(images))

    def trainable_layers(self) -> list[nn.Module]:
        """The trunk's layers from input to output, for fine-tuning the last few (what torchvision's
        `trainable_backbone_layers` counts): a ResNet's stem pieces then layer1..layer4; ConvNeXt and
        Swin give five like RegNet: the patch stem, then their four stages, each with the downsampling
        (patch merging) before it; Swin's final norm goes with its last stage."""
        if self.backbone.startswith("resnet"):
            return list(self.cnn.children())
        if self.backbone.startswith(("convnext", "swin")):
            features, *after = self.cnn.children()
            stem, first, *rest = features.children()
            pairs = [nn.ModuleList(rest[i : i + 2]) for i in range(0, len(rest), 2)]
            pairs[-1].extend(after)
            return [stem, first, *pairs]
        stem, trunk = self.cnn
        return [stem, *trunk.children()]


def measure_backbone(
    backbone: str,
    image_size: int | None = None,
    batch_size: int = 32,
    batches: int = 3,
    device: str | torch.device = "cpu",
    pretrained: bool = False,
    num_images: int | None = None,
) -> dict:
    """Measured facts for the comparison table: parameters, channels, feature-map shape, images/s
    (after one warm-up batch; fp16 autocast and channels_last on CUDA, as extraction runs) with the
    time of each timed batch (their spread shows how far a busy machine moved the figure), peak GPU
    memory, and the feature store size for `num_images` images."""
    import time

    info = get_backbone(backbone)
    size = image_size or info.image_size
    device = torch.device(device)
    encoder = ImageEncoder(pretrained=pretrained, backbone=backbone, verbose=False).eval().to(device)
    on_cuda = device.type == "cuda"
    if on_cuda:
        encoder = encoder.to(memory_format=torch.channels_last)
        torch.cuda.reset_peak_memory_stats(device)
    images = torch.rand(batch_size, 3, size, size, device=device)
    if on_cuda:
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=on_cuda):
        shape = tuple(encoder(images).shape[1:])  # warm-up: cuDNN autotuning, lazy allocations
        if on_cuda:
            torch.cuda.synchronize(device)
        times = []
        for _ in range(batches):
            started = time.perf_counter()
            encoder(images)
            if on_cuda:
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - started)
        elapsed = sum(times)
    row = {
        "backbone": backbone,
        "parameters (M)": round(encoder.num_parameters / 1e6, 2),
        "channels": encoder.out_channels,
        "feature map": "x".join(str(n) for n in shape),
        "image size": size,
        "images/s": round(batches * batch_size / elapsed, 1),
        "batch times (s)": [round(seconds, 4) for seconds in times],
        "peak GPU memory (MB)": round(torch.cuda.max_memory_allocated(device) / 2**20) if on_cuda else None,
        "device": str(device),
    }
    if num_images is not None:
        row["feature store (GB)"] = round(num_images * info.feature_bytes(size) / 1e9, 3)
    return row
