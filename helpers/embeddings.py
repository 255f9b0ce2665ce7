"""Word embeddings and GloVe vectors restricted to a vocabulary, with a disk cache.

`WordEmbedding` is the course module's layer (parameter `W_embed`, forward = `W_embed[x]`) plus
pretrained weights and a switchable freeze. `load_glove_embeddings` reads a GloVe text file once,
converting floats only for the vocabulary's words, and caches the (V, D) matrix so that later loads
of the same file, vocabulary and dimension take milliseconds.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from helpers.files import atomic_path, write_bytes_atomic
from helpers.inputs import DOWNLOAD_TIMEOUT, find_attached_file
from helpers.sources import DatasetUnavailableError, kaggle_path
from helpers.text import NULL, word_index

GLOVE_KAGGLE_HINT = (
    "On Kaggle, attach the dataset thanakomsn/glove6b300dtxt (Add Input -> Datasets) and pass the "
    "path of glove.6B.300d.txt under /kaggle/input, or run the 01_glove notebook, which downloads it "
    "with kagglehub (Internet on)."
)
# A folder for the cache that outlives the session (on Kaggle: under /kaggle/working, saved with the output).
GLOVE_CACHE_ENV = "CAPTIONING_GLOVE_CACHE"
# Bump when the parser or the initialisation changes, so that old cache files are never reused.
_CACHE_FORMAT = 2  # 2: non-finite numbers are refused, so a format-1 cache may hold them
_READ_BUFFER_BYTES = 1 << 24
_DIMENSION_PROBE_LINES = 5


class GloveFormatError(ValueError):
    """A GloVe file that cannot be read as one; the message names the file (and line) and the fix."""


# First bytes of compressed archives that people pass instead of the text file inside.
_ARCHIVE_SIGNATURES = {b"\x1f\x8b": ("gzip", "gunzip -k"), b"PK\x03\x04": ("zip", "unzip")}


def check_glove_text(path: str | os.PathLike) -> None:
    """Refuse a gzip or zip archive (glove.6B.zip, *.txt.gz) with the command that unpacks it."""
    with open(path, "rb") as handle:
        start = handle.read(4)
    for signature, (kind, command) in _ARCHIVE_SIGNATURES.items():
        if start.startswith(signature):
            raise GloveFormatError(
                f"{path} is a {kind} archive, not a GloVe text file: unpack it first "
                f"({command} {Path(path).name}) and pass the .txt file inside (e.g. glove.6B.300d.txt)."
            )


class WordEmbedding(nn.Module):
    """Look-up table from word ids (N, T) to vectors (N, T, D), API-compatible with the course module.

    `freeze` can be switched at any time (``layer.freeze = False`` after a few epochs): a frozen
    table has ``requires_grad=False``, so it gets no gradient and optimizers skip it. Build the
    optimizer over all parameters so that the table trains once it is unfrozen.
    """

    def __init__(self, vocab_size: int, embed_size: int, pretrained_embeddings=None, freeze: bool = False):
        super().__init__()
        if pretrained_embeddings is None:
            weights = torch.randn(vocab_size, embed_size) / vocab_size**0.5
        else:
            weights = torch.as_tensor(pretrained_embeddings).detach().to(torch.float32).clone()
            if tuple(weights.shape) != (vocab_size, embed_size):
                raise ValueError(
                    f"pretrained_embeddings has shape {tuple(weights.shape)} but the layer needs "
                    f"(vocab_size, embed_size) = {(vocab_size, embed_size)}"
                )
        self.W_embed = nn.Parameter(weights)
        self._frozen = False
        self.freeze = freeze

    @property
    def freeze(self) -> bool:
        """Whether `W_embed` is excluded from training."""
        return self._frozen

    @freeze.setter
    def freeze(self, frozen: bool) -> None:
        self._frozen = bool(frozen)
        self.W_embed.requires_grad_(not self._frozen)
        if self._frozen:
            # A gradient left over from before freezing would still be applied by the optimizer.
            self.W_embed.grad = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.embedding(x, self.W_embed)

    def extra_repr(self) -> str:
        vocab_size, embed_size = self.W_embed.shape
        return f"{vocab_size}, {embed_size}, freeze={self._frozen}"


@dataclass
class GloveCoverage:
    """How much of a vocabulary a GloVe file covers; special tokens (<...>) are not counted."""

    found: int
    total: int
    missing: list[str] = field(default_factory=list)
    glove_file: str = ""
    embed_dim: int = 0

    @property
    def ratio(self) -> float:
        return self.found / self.total if self.total else 0.0

    def summary(self, max_examples: int = 8) -> str:
        """One line: found/total, the ratio and the first missing words (vocab order)."""
        text = (
            f"GloVe {Path(self.glove_file).name} ({self.embed_dim}d): {self.found:,}/{self.total:,} "
            f"vocabulary words found ({self.ratio:.1%})"
        )
        if self.missing:
            examples = ", ".join(self.missing[:max_examples])
            more = ", ..." if len(self.missing) > max_examples else ""
            text += f"; {len(self.missing):,} missing, e.g. {examples}{more}"
        return text


def load_glove_embeddings(
    glove_path: str | os.PathLike,
    word_to_idx: Mapping[str, int],
    embed_dim: int = 300,
    cache_dir: str | os.PathLike | None = None,
    verbose: bool = True,
    seed: int = 0,
) -> torch.Tensor:
    """(V, embed_dim) float32 matrix: row `word_to_idx[w]` holds w's GloVe vector (case-insensitive).

    Words the file lacks and special tokens get normal noise with the standard deviation of the
    found vectors (seeded by `seed`); the `<NULL>` padding row is zero. The matrix is cached in
    `cache_dir` (default: `glove_cache/` next to the file, or ~/.cache/captioning/glove when that
    folder is read-only, as on /kaggle/input). Use `glove_coverage` for the coverage figures.
    """
    matrix, _ = _load_glove(glove_path, word_to_idx, embed_dim, cache_dir, verbose, seed)
    return matrix


def glove_coverage(
    glove_path: str | os.PathLike,
    word_to_idx: Mapping[str, int],
    embed_dim: int = 300,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
) -> GloveCoverage:
    """Coverage of `word_to_idx` by the GloVe file; shares the cache with `load_glove_embeddings`."""
    _, coverage = _load_glove(glove_path, word_to_idx, embed_dim, cache_dir, False, seed)
    return coverage


def nearest_neighbours(
    matrix, word_to_idx: Mapping[str, int], word: str, k: int = 5
) -> list[tuple[str, float]]:
    """The k vocabulary words whose rows have the highest cosine similarity to `word`'s row.

    The word itself and special tokens (<...>) are never returned.
    """
    word_to_idx = word_index(word_to_idx)
    vectors = torch.as_tensor(matrix).detach().to(device="cpu", dtype=torch.float32)
    if word not in word_to_idx:
        if word.lower() not in word_to_idx:
            raise KeyError(f"{word!r} is not in the vocabulary ({len(word_to_idx):,} words)")
        word = word.lower()
    index = word_to_idx[word]
    norms = vectors.norm(dim=1)
    if norms[index] == 0:
        raise ValueError(f"{word!r} has an all-zero vector, so no cosine similarity is defined")
    cosine = vectors @ vectors[index] / (norms.clamp_min(1e-12) * norms[index])
    excluded = [i for w, i in word_to_idx.items() if _is_special(w)] + [index]
    cosine[excluded] = float("-inf")
    k = min(k, len(word_to_idx) - len(set(excluded)))
    idx_to_word = {i: w for w, i in word_to_idx.items()}
    values, indices = cosine.topk(k)
    return [(idx_to_word[int(i)], float(v)) for v, i in zip(values, indices)]


def write_glove_file(
    path: str | os.PathLike,
    vectors: Mapping[str, Iterable[float]],
    header: bool = False,
    decimals: int | None = None,
) -> Path:
    """Write `vectors` in GloVe text format ("token v1 ... vD" per line), atomically.

    `header=True` adds the word2vec "count dim" first line. `decimals=None` writes each float32
    in its shortest exact form (the loader gets back the same numbers); an int writes that many
    decimals, like the real files.
    """
    path = Path(path)
    rows = []
    dim = None
    for token, values in vectors.items():
        array = np.asarray(values, dtype=np.float32)
        if array.ndim != 1 or (dim is not None and array.size != dim):
            expected = f"({dim},)" if dim is not None else "one-dimensional"
            raise ValueError(f"vector for {token!r} has shape {array.shape}; all vectors must be {expected}")
        if not token or "\n" in token:
            raise ValueError(f"token {token!r} cannot be written on one GloVe line")
        dim = array.size
        numbers = array.astype(str) if decimals is None else [f"{x:.{decimals}f}" for x in array]
        rows.append(token + " " + " ".join(numbers))
    lines = ([f"{len(rows)} {dim or 0}"] if header else []) + rows
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, ("\n".join(lines) + "\n").encode("utf-8"))
    return path


def _load_glove(glove_path, word_to_idx, embed_dim, cache_dir, verbose, seed):
    """The matrix and its coverage, from the cache when it matches, else parsed and cached."""
    path = Path(glove_path)
    if not path.is_file():
        raise FileNotFoundError(f"GloVe file not found: {path}. {GLOVE_KAGGLE_HINT}")
    check_glove_text(path)
    words = _ordered_words(word_index(word_to_idx))
    key = _cache_key(path, words, embed_dim, seed)
    started = time.perf_counter()
    cached = _read_cache(cache_dir, path, embed_dim, key, len(words))
    if cached is not None:
        matrix, coverage = cached
        source = "from cache"
    else:
        matrix, coverage = _build_matrix(path, words, embed_dim, seed)
        _write_cache(cache_dir, path, embed_dim, key, matrix, coverage)
        source = "parsed"
    if verbose:
        print(f"{coverage.summary()} [{source} in {time.perf_counter() - started:.2f} s]")
    return torch.from_numpy(matrix), coverage


def _ordered_words(word_to_idx: Mapping[str, int]) -> list[str]:
    """Vocabulary words by id; ids must be exactly 0..V-1."""
    words: list[str | None] = [None] * len(word_to_idx)
    for word, index in word_to_idx.items():
        if not 0 <= index < len(words) or words[index] is not None:
            raise ValueError(
                f"word_to_idx must map its {len(words):,} words onto the ids 0..{len(words) - 1}; "
                f"{word!r} has id {index}, which is out of range or already taken"
            )
        words[index] = word
    return words


def _is_special(word: str) -> bool:
    """<NULL>, <START>, <END>, <UNK> or any other <...> token: never looked up, never counted."""
    return len(word) > 2 and word.startswith("<") and word.endswith(">")


def _build_matrix(path: Path, words: list[str], embed_dim: int, seed: int):
    """Parse the file for `words` and fill the misses with noise at the found vectors' scale."""
    wanted = {word.lower() for word in words if not _is_special(word)}
    vectors = _read_glove_vectors(path, wanted, embed_dim)
    found_rows = [i for i, word in enumerate(words) if word.lower() in vectors and not _is_special(word)]
    found_std = float(np.std([vectors[words[i].lower()] for i in found_rows])) if found_rows else 0.0
    scale = found_std if found_std > 0 else embed_dim**-0.5
    matrix = np.random.default_rng(seed).normal(0.0, scale, size=(len(words), embed_dim)).astype(np.float32)
    for i in found_rows:
        matrix[i] = vectors[words[i].lower()]
    if NULL in words:
        matrix[words.index(NULL)] = 0.0
    ordinary = [word for word in words if not _is_special(word)]
    coverage = GloveCoverage(
        found=len(found_rows),
        total=len(ordinary),
        missing=[word for word in ordinary if word.lower() not in vectors],
        glove_file=str(path),
        embed_dim=embed_dim,
    )
    return matrix, coverage


def _read_glove_vectors(path: Path, wanted: set[str], embed_dim: int) -> dict[str, np.ndarray]:
    """Vectors of the `wanted` lowercase words; floats are converted only for their lines."""
    lines_by_word = _find_vector_lines(path, wanted, embed_dim)
    rows = _parse_number_rows(path, list(lines_by_word.values()), embed_dim)
    return dict(zip(lines_by_word, rows))


def _find_vector_lines(path: Path, wanted: set[str], embed_dim: int) -> dict[str, tuple[int, str, bytes]]:
    """Map each wanted word found in the file to (line number, token, its numbers as raw text).

    A line is "token v1 .. vD"; the token is everything before the last D fields (840B files have
    tokens with spaces). Of several casings of a word, the lowercase entry wins, else the first.
    """
    # Vocabulary words never contain spaces in practice, so the token is the text before the first
    # space unless the line has too many fields; that is checked only for lines that are candidates.
    check_every_line = any(" " in word for word in wanted)
    found: dict[str, tuple[int, str, bytes]] = {}
    exact: set[str] = set()
    with open(path, "rb", buffering=_READ_BUFFER_BYTES) as handle:
        first_line_no, lines = _skip_header_and_check_dimension(path, handle, embed_dim)
        for line_no, line in enumerate(lines, start=first_line_no):
            cut = line.find(b" ")
            if cut < 0:
                if line.strip():
                    raise GloveFormatError(
                        f"{path}:{line_no}: expected 'token v1 .. v{embed_dim}', got {line[:60]!r}"
                    )
                continue
            token = line[:cut].decode("utf-8", "replace")
            if token.lower() not in wanted and not check_every_line:
                continue
            numbers = line[cut + 1 :].rstrip()
            extra_fields = numbers.count(b" ") + 1 - embed_dim
            if extra_fields < 0:
                count = embed_dim + extra_fields
                raise GloveFormatError(f"{path}:{line_no}: {count} numbers where {embed_dim} were expected")
            if extra_fields > 0:
                token_bytes = line.rstrip().rsplit(b" ", embed_dim)[0]
                token = token_bytes.decode("utf-8", "replace")
                numbers = line.rstrip()[len(token_bytes) + 1 :]
            key = token.lower()
            if key not in wanted or key in exact or (key in found and token != key):
                continue
            found[key] = (line_no, token, numbers)
            if token == key:
                exact.add(key)
                if len(exact) == len(wanted):
                    break
    return found


def _parse_number_rows(path: Path, entries: list[tuple[int, str, bytes]], embed_dim: int) -> np.ndarray:
    """(len(entries), embed_dim) float32 from the lines' number text, in one C-level parse.

    pandas' parser converts the few thousand vocabulary lines about 3x faster than numpy line by
    line; numpy is used only to name the offending line when a number is malformed.
    """
    if not entries:
        return np.zeros((0, embed_dim), dtype=np.float32)
    import pandas as pd

    text = b"\n".join(numbers for _, _, numbers in entries)
    try:
        table = pd.read_csv(
            io.BytesIO(text), sep=" ", header=None, dtype=np.float32, na_filter=False, quoting=csv.QUOTE_NONE
        ).to_numpy()
        if table.shape == (len(entries), embed_dim):
            return _finite(path, entries, table)
    except (ValueError, pd.errors.ParserError):
        pass
    rows = []
    for line_no, token, numbers in entries:
        try:
            rows.append(np.array(numbers.split(b" "), dtype=np.float32))
        except ValueError as error:
            message = f"{path}:{line_no}: the vector of {token!r} is not numeric ({error})"
            raise GloveFormatError(message) from None
    return _finite(path, entries, np.stack(rows))


def _finite(path: Path, entries: list[tuple[int, str, bytes]], rows: np.ndarray) -> np.ndarray:
    """`rows`, unless a vector holds nan or inf (every loss would be nan): then name the first such line."""
    finite = np.isfinite(rows).all(axis=1)
    if finite.all():
        return rows
    first = int(np.argmin(finite))
    line_no, token, _ = entries[first]
    value = rows[first][~np.isfinite(rows[first])][0]
    raise GloveFormatError(
        f"{path}:{line_no}: the vector of {token!r} holds {value} ({int((~finite).sum())} vectors of the "
        "vocabulary's words do). GloVe vectors are finite numbers, so the file is damaged: download it "
        "again, or fix or delete those lines."
    )


def _skip_header_and_check_dimension(path: Path, handle, embed_dim: int) -> tuple[int, Iterator[bytes]]:
    """Skip a word2vec "count dim" header and check the vector size against `embed_dim`.

    Returns the line number of the first vector line and an iterator over all vector lines. Without
    a header the size is the smallest field count of the first lines, less one (a token with spaces
    only adds fields).
    """
    probe: list[bytes] = []
    for line in handle:
        probe.append(line)
        if sum(1 for seen in probe if seen.strip()) > _DIMENSION_PROBE_LINES:
            break
    header = probe[0].split() if probe else []
    has_header = len(header) == 2 and header[0].isdigit() and header[1].isdigit()
    if has_header:
        probe = probe[1:]
    field_counts = [len(line.split()) for line in probe if line.strip()]
    if not field_counts:
        raise GloveFormatError(f"{path} contains no vectors")
    file_dim = int(header[1]) if has_header else min(field_counts) - 1
    if file_dim != embed_dim:
        raise GloveFormatError(
            f"{path.name} has {file_dim}-dimensional vectors but embed_dim={embed_dim}; pass "
            f"embed_dim={file_dim} or use a {embed_dim}d file ({path})"
        )
    return (2 if has_header else 1), chain(probe, handle)


def _cache_key(path: Path, words: list[str], embed_dim: int, seed: int) -> str:
    """Hash of the file's identity (absolute path, size, mtime), the ordered vocabulary, dim and seed."""
    stat = path.stat()
    vocab_hash = hashlib.sha256("\n".join(words).encode("utf-8")).hexdigest()
    identity = {
        "format": _CACHE_FORMAT,
        "file": str(path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "vocab": vocab_hash,
        "embed_dim": embed_dim,
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()


def _cache_dirs(cache_dir, path: Path) -> list[Path]:
    """Where to look for and write the cache: the given folder, else $CAPTIONING_GLOVE_CACHE (set by
    `notebook.setup` on Kaggle to a folder of the saved output), else next to the file, else ~/.cache."""
    if cache_dir is not None:
        return [Path(cache_dir)]
    session = [Path(os.environ[GLOVE_CACHE_ENV])] if os.environ.get(GLOVE_CACHE_ENV) else []
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "captioning" / "glove"
    beside_file = path.resolve().parent
    if os.access(beside_file, os.W_OK):
        return [*session, beside_file / "glove_cache", user_cache]
    return [*session, user_cache]


def _cache_paths(folder: Path, path: Path, embed_dim: int, key: str) -> tuple[Path, Path]:
    stem = f"{path.stem}.{embed_dim}d.{key[:20]}"
    return folder / f"{stem}.npy", folder / f"{stem}.json"


def _read_cache(cache_dir, path: Path, embed_dim: int, key: str, vocab_size: int):
    for folder in _cache_dirs(cache_dir, path):
        matrix_file, info_file = _cache_paths(folder, path, embed_dim, key)
        if not (matrix_file.is_file() and info_file.is_file()):
            continue
        try:
            info = json.loads(info_file.read_text(encoding="utf-8"))
            matrix = np.load(matrix_file)
        except (OSError, ValueError) as error:
            warnings.warn(f"ignoring unreadable GloVe cache {matrix_file}: {error}", stacklevel=3)
            continue
        if info.get("key") == key and matrix.shape == (vocab_size, embed_dim) and matrix.dtype == np.float32:
            return matrix, GloveCoverage(**info["coverage"])
    return None


def _write_cache(cache_dir, path: Path, embed_dim: int, key: str, matrix: np.ndarray, coverage) -> None:
    """Store the matrix and its coverage in the first writable cache folder; warn if none is."""
    errors = []
    for folder in _cache_dirs(cache_dir, path):
        matrix_file, info_file = _cache_paths(folder, path, embed_dim, key)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(matrix_file) as temporary, open(temporary, "wb") as handle:
                np.save(handle, matrix)
            info = {"key": key, "coverage": asdict(coverage)}
            write_bytes_atomic(info_file, json.dumps(info, indent=1).encode("utf-8"))
            return
        except OSError as error:
            errors.append(f"{folder}: {error}")
    warnings.warn("could not cache the GloVe matrix (" + "; ".join(errors) + ")", stacklevel=3)


# Kaggle datasets holding glove.6B files, by dimension (see FACTS.md); the first is the smallest download.
GLOVE_KAGGLE_HANDLES: dict[int, tuple[str, ...]] = {
    50: ("anindya2906/glove6b",),
    100: ("danielwillgeorge/glove6b100dtxt", "anindya2906/glove6b"),
    200: ("anindya2906/glove6b",),
    300: ("thanakomsn/glove6b300dtxt", "anindya2906/glove6b"),
}


def download_glove(
    dim: int = 300,
    timeout: float = DOWNLOAD_TIMEOUT,
    verbose: bool = True,
    kaggle_input: str | os.PathLike | None = None,
) -> Path:
    """Path of glove.6B.<dim>d.txt: a copy in any dataset attached to the Kaggle notebook (either mount
    layout, below `kaggle_input`, default helpers.inputs.input_root()), read in place, else the known
    datasets through kagglehub (downloaded once and cached). Fails after `timeout` seconds without
    download progress with the ways to fix it."""
    if dim not in GLOVE_KAGGLE_HANDLES:
        raise ValueError(f"glove.6B comes in {sorted(GLOVE_KAGGLE_HANDLES)} dimensions, not {dim}.")
    name = f"glove.6B.{dim}d.txt"
    attached = find_attached_file(name, kaggle_input)
    if attached is not None:
        if verbose:
            print(f"GloVe: {attached} (attached)")
        return attached
    failures = []
    for handle in GLOVE_KAGGLE_HANDLES[dim]:
        try:
            root = kaggle_path(handle, timeout, verbose)
        except DatasetUnavailableError as error:
            failures.append(str(error))
            continue
        found = sorted(root.rglob(name))
        if found:
            if verbose:
                print(f"GloVe: {found[0]}")
            return found[0]
        failures.append(f"{handle} holds no {name}")
    raise FileNotFoundError(
        f"Could not get {name}: " + "; ".join(failures) + ".\n"
        f"Fix: in a Kaggle notebook add the dataset {GLOVE_KAGGLE_HANDLES[dim][0]} (Add Input -> Datasets) "
        "and turn Internet on; elsewhere download it (nlp.stanford.edu/projects/glove) and pass its path "
        "as GLOVE_PATH / embeddings.glove_path, or set USE_GLOVE=False."
    )
