"""The GloVe file a config names, and the word vectors it gives a vocabulary.

`load_word_vectors(config, vocab)` is the one step that finds, downloads or writes a file before a
model is built: `helpers.models.build_model(config, vocab, word_vectors=...)` only builds from the
matrix it is given. `embeddings.glove_path` is a GloVe text file, a bare glove.6B name (found attached
to the Kaggle notebook, else downloaded with `helpers.embeddings.download_glove`) or "demo" (a small
file generated for the vocabulary, so the GloVe code path runs without a download).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from helpers.config import Config, ConfigError
from helpers.demo import make_demo_glove
from helpers.embeddings import check_glove_text, download_glove, load_glove_embeddings
from helpers.text import Vocabulary, word_index

DEMO_GLOVE = "demo"


def load_word_vectors(config: Config, vocab: Vocabulary | dict[str, int]) -> torch.Tensor | None:
    """The (V, model.wordvec_dim) GloVe matrix `config` starts its word embedding from, or None when
    embeddings.use_glove is false (random vectors)."""
    if not config.embeddings.use_glove:
        return None
    word_to_idx = word_index(vocab)
    path = resolve_glove_path(config, word_to_idx)
    return load_glove_embeddings(path, word_to_idx, embed_dim=config.model.wordvec_dim)


def glove_file_dim(path: str | Path) -> int:
    """Vector size of a GloVe text file from its first line (a word2vec 'count dim' header also works)."""
    check_glove_text(path)
    with open(path, encoding="utf-8", errors="replace") as handle:
        first = handle.readline().rstrip("\n").split(" ")
    if len(first) == 2 and all(part.isdigit() for part in first):
        return int(first[1])
    if len(first) < 2:
        raise ConfigError(f"{path}: not a GloVe text file (expected 'word v1 v2 ...' on each line).")
    return len(first) - 1


def demo_glove_path(config: Config) -> Path:
    """Where the generated demo GloVe file for `config` lives: <work_dir>/glove/glove.demo.<dim>d.txt."""
    return Path(config.data.work_dir) / "glove" / f"glove.demo.{config.model.wordvec_dim}d.txt"


def resolve_glove_path(config: Config, vocab: Vocabulary | dict[str, int] | None = None) -> Path:
    """The GloVe file for `config`, checked to exist and to match model.wordvec_dim.

    `embeddings.glove_path: demo` (DEMO mode) writes a small GloVe-format file for the words of
    `vocab` with helpers.demo.make_demo_glove, so the GloVe code path runs without any download.
    """
    if config.embeddings.glove_path == DEMO_GLOVE:
        if vocab is None:
            raise ConfigError("embeddings.glove_path=demo needs the vocabulary to write the demo GloVe file.")
        words = [word for word in word_index(vocab) if not word.startswith("<")]
        return make_demo_glove(demo_glove_path(config), words, dim=config.model.wordvec_dim)
    path = Path(config.embeddings.glove_path)
    standard = re.fullmatch(r"glove\.6B\.(\d+)d\.txt", path.name)
    if not path.is_file() and standard and path.parent == Path("."):
        try:  # a bare glove.6B file name (the original configs'): the attached dataset, else kagglehub
            path = download_glove(int(standard.group(1)))
        except (FileNotFoundError, ValueError) as error:
            raise ConfigError(f"embeddings.glove_path {path.name!r}: {error}") from error
    if not path.is_file():
        raise ConfigError(
            f"embeddings.glove_path: GloVe file {str(path)!r} not found "
            f"(config {', '.join(config.sources)}). "
            "Download it first (notebook 01_glove, or attach the Kaggle dataset thanakomsn/glove6b300dtxt), "
            "set embeddings.glove_path to the file, or set embeddings.use_glove=false."
        )
    dim = glove_file_dim(path)
    if dim != config.model.wordvec_dim:
        raise ConfigError(
            f"embeddings.glove_path {str(path)!r} holds {dim}-dimensional vectors but model.wordvec_dim="
            f"{config.model.wordvec_dim}; set model.wordvec_dim={dim} or use a {config.model.wordvec_dim}d "
            "GloVe file."
        )
    return path
