"""CIDEr-D on token ids: the reward of self-critical sequence training (helpers.train's SCST phase).

The same arithmetic as pycocoevalcap's ``Cider`` (which is CIDEr-D): n-grams of 1..4 words, tf-idf
vectors whose document frequencies come from a reference corpus (one document per image: the union of
its references' n-grams), per-n cosine similarity with the candidate's weights clipped at the
reference's, a Gaussian length penalty with sigma 6, the mean over n and over the references, times 10.
It works on tuples of word ids instead of strings, and the document frequencies are computed once from
the *training* references, so a batch of sampled captions is scored against fixed statistics (as
ruotianluo/self-critical.pytorch does) instead of against itself.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from helpers.text import caption_ids

__all__ = ["CiderD", "token_sequences"]

Caption = tuple[int, ...]


def token_sequences(tokens: torch.Tensor, end: int, skipped: Iterable[int] = ()) -> list[Caption]:
    """Rows of decoded token ids (B, T) as tuples of word ids: cut at the first ``end``, ``skipped``
    ids (``<NULL>``, ``<START>``) left out (helpers.text.caption_ids per row)."""
    return [caption_ids(row, end, skipped) for row in tokens.tolist()]


def ngram_counts(caption: Sequence, n: int = 4) -> Counter:
    """How often each 1..n-gram of `caption` occurs."""
    counts: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(caption) - k + 1):
            counts[tuple(caption[i : i + k])] += 1
    return counts


class _Vector:
    """A caption's tf-idf weights (one dict over all n-gram orders), their per-order norms and the
    length the penalty compares."""

    __slots__ = ("weights", "norms", "length")

    def __init__(self, counts: Counter, idf: dict, default_idf: float, n: int):
        self.weights = {gram: count * idf.get(gram, default_idf) for gram, count in counts.items()}
        squares = [0.0] * n
        for gram, weight in self.weights.items():
            squares[len(gram) - 1] += weight * weight
        self.norms = [math.sqrt(s) for s in squares]
        # pycocoevalcap counts the *bigrams* as the length (its `if n == 1`, n being the order - 1):
        # kept, so that rewards equal the reported metric.
        self.length = sum(count for gram, count in counts.items() if len(gram) == 2)


class CiderD:
    """CIDEr-D with document frequencies from a fixed reference corpus.

    ``references[i]`` are the reference captions of image i (sequences of word ids, or of words).
    ``score(candidates, references)`` scores any captions against any references with the corpus's
    statistics; ``score_images(candidates, images)`` scores against the corpus's own references of
    those images, whose vectors are computed once and cached.
    """

    def __init__(self, references: Sequence[Sequence[Sequence]], n: int = 4, sigma: float = 6.0):
        if not references:
            raise ValueError("CiderD needs a reference corpus of at least one image")
        self.n, self.sigma = n, sigma
        self.references = references
        document_frequency: Counter = Counter()
        for refs in references:
            document_frequency.update({gram for ref in refs for gram in ngram_counts(ref, n)})
        self.log_documents = math.log(float(len(references)))
        # idf = log(documents) - log(max(1, df)): an n-gram the corpus never saw weighs log(documents)
        self.idf = {gram: self.log_documents - math.log(df) for gram, df in document_frequency.items()}
        self._cache: dict[int, list[_Vector]] = {}

    def _vector(self, caption: Sequence) -> _Vector:
        return _Vector(ngram_counts(caption, self.n), self.idf, self.log_documents, self.n)

    def _similarity(self, candidate: _Vector, reference: _Vector) -> float:
        """Sum over n-gram orders of the clipped cosine similarity, times the length penalty."""
        overlap = [0.0] * self.n
        ref_weights = reference.weights
        for gram, weight in candidate.weights.items():
            ref_weight = ref_weights.get(gram)
            if ref_weight is not None:
                overlap[len(gram) - 1] += min(weight, ref_weight) * ref_weight
        total = 0.0
        for order in range(self.n):
            norm = candidate.norms[order] * reference.norms[order]
            total += overlap[order] / norm if norm != 0 else overlap[order]
        delta = float(candidate.length - reference.length)
        return total * math.exp(-(delta * delta) / (2 * self.sigma**2))

    def _score_one(self, candidate: Sequence, references: list[_Vector]) -> float:
        vector = self._vector(candidate)
        total = sum(self._similarity(vector, reference) for reference in references)
        return total / self.n / len(references) * 10.0

    def score(self, candidates: Sequence[Sequence], references: Sequence[Sequence[Sequence]]) -> np.ndarray:
        """CIDEr-D of each candidate against its own references (float64, one per candidate)."""
        if len(candidates) != len(references):
            raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists")
        return np.array(
            [self._score_one(c, [self._vector(r) for r in refs]) for c, refs in zip(candidates, references)],
            dtype=np.float64,
        )

    def score_images(self, candidates: Sequence[Sequence], images: Sequence[int]) -> np.ndarray:
        """CIDEr-D of each candidate against the corpus references of image ``images[i]``."""
        scores = np.empty(len(candidates), dtype=np.float64)
        for i, (candidate, image) in enumerate(zip(candidates, images)):
            image = int(image)
            if image not in self._cache:
                self._cache[image] = [self._vector(ref) for ref in self.references[image]]
            scores[i] = self._score_one(candidate, self._cache[image])
        return scores
