"""The package's public surface: every re-exported name exists, and the course module's names are there."""

import helpers

COURSE_NAMES = [
    "rnn_step_forward",
    "rnn_forward",
    "RNN",
    "LSTM",
    "WordEmbedding",
    "dot_product_attention",
    "AttentionLSTM",
    "temporal_softmax_loss",
    "CaptioningRNN",
    "ImageEncoder",
    "load_glove_embeddings",
]


def test_every_exported_name_resolves():
    missing = [name for name in helpers.__all__ if not hasattr(helpers, name)]
    assert not missing


def test_course_module_names_are_exported():
    assert set(COURSE_NAMES) <= set(helpers.__all__)
    assert (helpers.NULL, helpers.START, helpers.END, helpers.UNK) == ("<NULL>", "<START>", "<END>", "<UNK>")
