"""The errors that bad input causes (a config, data, weights, a device, a run folder), as opposed to
bugs: the command lines print them as one message, with no traceback, and exit with status 2."""

from __future__ import annotations

from helpers.backbones import PretrainedWeightsUnavailable
from helpers.checkpoints import CheckpointError
from helpers.config import ConfigError
from helpers.devices import UnsupportedDeviceError
from helpers.embeddings import GloveFormatError
from helpers.features import FeatureStoreNotAttached
from helpers.files import WriteError
from helpers.images import TooManyBadImagesError
from helpers.runlock import RunFolderBusyError
from helpers.sources import DatasetFormatError, DatasetUnavailableError
from helpers.space import OutputSpaceError

INPUT_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    FileNotFoundError,
    UnsupportedDeviceError,
    CheckpointError,
    RunFolderBusyError,
    WriteError,
    GloveFormatError,
    DatasetFormatError,
    DatasetUnavailableError,
    PretrainedWeightsUnavailable,
    TooManyBadImagesError,
    FeatureStoreNotAttached,
    OutputSpaceError,
)
