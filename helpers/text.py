"""The one tokenizer and the vocabulary, shared by data preparation, training and evaluation.

Captions are encoded as ``<START> w1 .. wn <END> <NULL> ...`` with a fixed length ``max_length + 2``;
the special tokens have the ids of the classic course module (``<NULL>``=0, ``<START>``=1,
``<END>``=2, ``<UNK>``=3).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from helpers.files import write_json_atomic

NULL, START, END, UNK = "<NULL>", "<START>", "<END>", "<UNK>"
SPECIAL_TOKENS = [NULL, START, END, UNK]

# Clitics are split off the way the Penn Treebank tokenizer (and so pycocoevalcap's PTBTokenizer and
# Karpathy's split files) does: "don't" -> "do n't", "dog's" -> "dog 's", "they're" -> "they 're";
# GloVe has the tokens "n't" and "'s". Any other apostrophe, hyphens, commas, full stops, quotes...
# separate words and are not tokens themselves.
_APOSTROPHES = re.compile(r"[\u2019\u2018`]")
_CLITIC = re.compile(r"(?<=[^\W_])(n't|'(?:s|m|d|ll|re|ve))(?![^\W_])")
_TOKEN = re.compile(r"n't|'(?:s|m|d|ll|re|ve)(?![^\W_])|[^\W_]+")


def tokenize(text: str) -> list[str]:
    """Lowercase, split off PTB clitics, drop punctuation: the one tokenizer of the project."""
    text = _CLITIC.sub(r" \1", _APOSTROPHES.sub("'", text.lower()))
    return _TOKEN.findall(text)


def require_tokens(word_to_idx: Mapping[str, int], tokens: Sequence[str], purpose: str) -> None:
    """Raise a ValueError naming the special tokens that ``word_to_idx`` lacks and ``purpose`` needs."""
    missing = [token for token in tokens if token not in word_to_idx]
    if missing:
        raise ValueError(
            f"word_to_idx lacks {missing}, which {purpose} needs; build it with helpers.text.Vocabulary"
        )


def check_word_to_idx(word_to_idx: Mapping[str, int]) -> None:
    """Accept any mapping with ``<NULL>`` and distinct non-negative integer ids.

    The course's sanity-check vocabulary ``{'<NULL>': 0, 'cat': 2, 'dog': 3}`` passes: computing the
    loss of given captions needs only ``<NULL>`` (the padding), while sampling also needs ``<START>``
    and ``<END>`` and checks for them itself (:func:`require_tokens`).
    """
    require_tokens(word_to_idx, [NULL], "a captioning model")
    ids = list(word_to_idx.values())
    if not all(isinstance(i, int) and i >= 0 for i in ids):
        raise ValueError(f"word_to_idx ids must be non-negative integers, got {sorted(map(repr, ids))[:10]}")
    if len(set(ids)) != len(ids):
        repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
        raise ValueError(f"word_to_idx gives each id to one word only; repeated ids: {repeated[:10]}")


def word_index(vocab: Vocabulary | Mapping[str, int]) -> dict[str, int]:
    """word_to_idx of a Vocabulary, or a copy of the mapping itself: what models and GloVe take."""
    return dict(vocab.word_to_idx) if hasattr(vocab, "word_to_idx") else dict(vocab)


def _as_tokens(caption: str | Sequence[str]) -> list[str]:
    """A caption given as raw text or as tokens, as tokens."""
    return tokenize(caption) if isinstance(caption, str) else list(caption)


def caption_ids(ids: Iterable[int], end: int, skipped: Iterable[int] = ()) -> tuple[int, ...]:
    """The word ids of one decoded or encoded caption: cut at the first ``end``, the ``skipped`` ids
    (``<NULL>``, ``<START>``) left out."""
    skipped = set(skipped)
    words = []
    for idx in ids:
        idx = int(idx)
        if idx == end:
            break
        if idx not in skipped:
            words.append(idx)
    return tuple(words)

class Vocabulary:
    """Words <-> ids with the four special tokens first; helpers.prepare builds it from the training
    captions (or every split's, ``data.vocab_from: all``)."""

    def __init__(self, idx_to_word: Sequence[str]):
        if list(idx_to_word[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(
                f"a vocabulary must start with {SPECIAL_TOKENS}, got {list(idx_to_word[:4])}"
            )
        self.idx_to_word: list[str] = list(idx_to_word)
        self.word_to_idx: dict[str, int] = {word: i for i, word in enumerate(self.idx_to_word)}
        if len(self.word_to_idx) != len(self.idx_to_word):
            duplicates = sorted(w for w, n in Counter(self.idx_to_word).items() if n > 1)
            raise ValueError(f"a vocabulary lists each word once; repeated: {duplicates[:10]}")

    @classmethod
    def build(cls, captions: Iterable[str | Sequence[str]], min_count: int = 5) -> Vocabulary:
        """Keep the words seen at least ``min_count`` times, most frequent first, ties alphabetical.

        ``captions`` holds token lists (or raw strings, which are tokenized).
        """
        counts = Counter(word for caption in captions for word in _as_tokens(caption))
        kept = [(word, n) for word, n in counts.items() if n >= min_count and word not in SPECIAL_TOKENS]
        kept.sort(key=lambda item: (-item[1], item[0]))
        return cls(SPECIAL_TOKENS + [word for word, _ in kept])

    def __len__(self) -> int:
        return len(self.idx_to_word)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.idx_to_word == other.idx_to_word

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} words)"

    def encode(self, caption: str | Sequence[str], max_length: int) -> list[int]:
        """``<START> w1 .. wn <END>`` padded with ``<NULL>`` to ``max_length + 2`` ids.

        Captions longer than ``max_length`` words keep their first ``max_length`` words and the
        ``<END>``; unknown words become ``<UNK>``.
        """
        unk = self.word_to_idx[UNK]
        words = _as_tokens(caption)[:max_length]
        ids = [self.word_to_idx[START]] + [self.word_to_idx.get(w, unk) for w in words]
        ids.append(self.word_to_idx[END])
        return ids + [self.word_to_idx[NULL]] * (max_length + 2 - len(ids))

    def decode(self, ids) -> str:
        """Words of one encoded caption (list, numpy row or tensor row); stops at ``<END>``."""
        values = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        skipped = (self.word_to_idx[NULL], self.word_to_idx[START])
        return " ".join(self.idx_to_word[idx] for idx in caption_ids(values, self.word_to_idx[END], skipped))

    def decode_batch(self, rows) -> list[str]:
        """``decode`` for each row of a 2-D list, array or tensor."""
        return [self.decode(row) for row in rows]

    def save(self, path: str | os.PathLike) -> None:
        """Write the word list as json (atomically: a temp file renamed into place)."""
        write_json_atomic(path, {"idx_to_word": self.idx_to_word}, indent=0)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        """Read a vocabulary written by ``save``."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            words = data["idx_to_word"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path} is not a vocabulary file written by Vocabulary.save: {err}") from err
        return cls(words)
