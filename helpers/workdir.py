"""The prepared dataset and the feature store a config describes, from the caches in its work dir:
built once, resumed when interrupted, then reused (training, scoring and the notebook stages read
them through here)."""

from __future__ import annotations

import torch

from helpers import distributed
from helpers.config import Config, ConfigError, bad_image_limit
from helpers.features import extract_features
from helpers.images import TooManyBadImagesError
from helpers.prepare import prepare_dataset


def prepare_for(config: Config, progress: bool = True):
    """The prepared dataset `config` describes (built once, then reused from its work dir)."""
    return prepare_dataset(
        dataset=config.data.dataset,
        data_dir=config.data.data_dir,
        work_dir=config.data.work_dir,
        min_word_count=config.data.min_word_count,
        vocab_from=config.data.vocab_from,
        max_caption_length=config.data.max_caption_length,
        split=config.data.split,
        seed=config.data.split_seed,
        max_bad_images=config.data.max_bad_images,
        verbose=progress,
    )


def features_for(config: Config, prepared, device=None, progress: bool = True, allow_reextract: bool = False):
    """The feature store of `config`'s backbone, image size, weights and layout (extracted once,
    resumed when interrupted, then reused; read in place from an attached output when recorded so,
    see helpers.features.extract_features for `allow_reextract`)."""
    try:
        return extract_features(
            prepared,
            backbone=config.model.backbone,
            image_size=config.image_size,
            pretrained=config.model.pretrained_backbone,
            num_workers=config.training.num_workers,
            device=device,
            max_bad_images=bad_image_limit(config),
            progress=progress,
            layout=config.data.feature_layout,
            allow_reextract=allow_reextract,
            devices=distributed.device_count(config.training.devices, _device_or_default(device)),
            decoder=None if config.data.jpeg_decoder == "auto" else config.data.jpeg_decoder,
        )
    except TooManyBadImagesError as error:
        raise TooManyBadImagesError(
            f"{error}\nThe features extracted so far are kept. To go on without these images, raise "
            f"data.max_bad_images (now {config.data.max_bad_images}; a fraction below 1 or a count) in "
            "the config, on the command line (data.max_bad_images=0.05) or in a notebook's OVERRIDES."
        ) from None


def _device_or_default(device) -> torch.device:
    """The device extraction runs on: the one given, else the GPU when there is one."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def prepared_and_features(config: Config, prepared=None, store=None, device=None, progress: bool = True):
    """(prepared dataset, feature store or None) for `config`, from the caches in its work dir.

    The store is made only in features mode; a given store must match the config's backbone.
    """
    if prepared is None:
        prepared = prepare_for(config, progress)
    if config.training.mode != "features":
        return prepared, None
    if store is None:
        store = features_for(config, prepared, device, progress)
    mismatch = [
        f"{key} {have!r} (config wants {want!r})"
        for key, have, want in (
            ("backbone", store.backbone, config.model.backbone),
            ("image size", store.image_size, config.image_size),
            ("channels", store.channels, config.model.feature_channels),
            ("layout", store.layout, config.data.feature_layout),
        )
        if have != want
    ]
    if mismatch:
        raise ConfigError(f"The feature store {store.path} does not match the config: {'; '.join(mismatch)}.")
    return prepared, store

