"""Image captioning helpers shared by the notebooks, the command line and the tests.

The names below keep the classic course module's API (`rnn_step_forward`, `LSTM`, `AttentionLSTM`,
`CaptioningRNN`, ...) and add what real training needs; docs/ARCHITECTURE.md maps the modules.
The training loop and the metrics live in `helpers.train` and `helpers.evaluate`, which are also
command lines (`python -m helpers.train`), so they are imported from there and not re-exported here.
"""

from helpers.backbones import (
    BACKBONES,
    BackboneInfo,
    ImageEncoder,
    get_backbone,
    image_transform,
    measure_backbone,
)
from helpers.config import ConfigError, load_config
from helpers.decoders import (
    LSTM,
    RNN,
    AttentionLSTM,
    TransformerDecoder,
    dot_product_attention,
    hello_rnn_lstm_captioning,
    rnn_backward,
    rnn_forward,
    rnn_step_backward,
    rnn_step_forward,
    temporal_softmax_loss,
)
from helpers.demo import make_demo_dataset, make_demo_glove
from helpers.embeddings import (
    GloveCoverage,
    WordEmbedding,
    download_glove,
    glove_coverage,
    load_glove_embeddings,
    nearest_neighbours,
    write_glove_file,
)
from helpers.features import CaptionFeatureDataset, FeatureStore, ImageFeatureDataset, extract_features
from helpers.glove import load_word_vectors
from helpers.images import BadImageError, load_image
from helpers.models import CaptioningRNN, CaptioningTransformer, beam_search, build_model
from helpers.prepare import PreparedDataset, prepare_dataset
from helpers.sources import download_dataset
from helpers.text import END, NULL, START, UNK, Vocabulary, tokenize

__all__ = [
    "BACKBONES",
    "END",
    "LSTM",
    "NULL",
    "RNN",
    "START",
    "UNK",
    "AttentionLSTM",
    "BackboneInfo",
    "BadImageError",
    "CaptionFeatureDataset",
    "CaptioningRNN",
    "CaptioningTransformer",
    "ConfigError",
    "FeatureStore",
    "GloveCoverage",
    "ImageEncoder",
    "ImageFeatureDataset",
    "PreparedDataset",
    "TransformerDecoder",
    "Vocabulary",
    "WordEmbedding",
    "beam_search",
    "build_model",
    "dot_product_attention",
    "download_dataset",
    "download_glove",
    "extract_features",
    "get_backbone",
    "glove_coverage",
    "hello_rnn_lstm_captioning",
    "image_transform",
    "load_config",
    "load_glove_embeddings",
    "load_image",
    "load_word_vectors",
    "make_demo_dataset",
    "make_demo_glove",
    "measure_backbone",
    "nearest_neighbours",
    "prepare_dataset",
    "rnn_backward",
    "rnn_forward",
    "rnn_step_backward",
    "rnn_step_forward",
    "temporal_softmax_loss",
    "tokenize",
    "write_glove_file",
]
