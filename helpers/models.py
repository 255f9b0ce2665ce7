"""Captioning models: the course's CaptioningRNN (rnn / lstm / attn) and a CaptioningTransformer.

Both take images (N, 3, H, W) -- the CNN then runs -- or precomputed backbone features
(N, input_dim, H', W') from the feature store, and give the same loss for the same inputs. Decoding
(greedy and beam search) is written once, in :func:`beam_search`, over a two-method step interface
that every model implements:

* ``init_state(features) -> state``: a tuple of tensors whose first dimension is the batch;
* ``step(state, words) -> (log_probs (B, V), state, attention (B, H'*W') or None)``: feed one word per
  row and get the distribution of the next one.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from helpers.backbones import BACKBONES, ImageEncoder
from helpers.choices import CELL_TYPE_ALIASES, CELL_TYPES, DEFAULT_BACKBONE, canonical_cell_type
from helpers.config import Config, TrainingConfig
from helpers.decoders import (
    LSTM,
    RNN,
    AttentionLSTM,
    TransformerDecoder,
    dot_product_attention,
    doubly_stochastic_penalty,
    temporal_softmax_loss,
)
from helpers.embeddings import WordEmbedding, load_glove_embeddings
from helpers.text import END, NULL, START, UNK, check_word_to_idx, require_tokens, word_index

__all__ = [
    "CELL_TYPES",
    "CaptioningModel",
    "CaptioningRNN",
    "CaptioningTransformer",
    "beam_search",
    "build_model",
    "multinomial_sample",
]

RNN_CELL_TYPES = ("rnn", "lstm", "attn")  # the CELL_TYPES that CaptioningRNN builds


def backbone_for(input_dim: int | None, backbone: str | None) -> str:
    """The backbone a model uses: the one named, else the first in the registry's order whose channels
    equal ``input_dim`` (the course's ``input_dim=400`` is regnet_x_400mf, 2048 is resnet50, 768 is
    convnext_tiny: name ``backbone='swin_t'`` for Swin-T, which has 768 channels too), else resnet50."""
    if backbone is not None:
        return backbone
    if input_dim is None or BACKBONES[DEFAULT_BACKBONE].out_channels == input_dim:
        return DEFAULT_BACKBONE
    matching = [name for name, info in BACKBONES.items() if info.out_channels == input_dim]
    if not matching:
        channels = ", ".join(f"{name}: {info.out_channels}" for name, info in BACKBONES.items())
        raise ValueError(
            f"no backbone outputs input_dim={input_dim} channels ({channels}); "
            "pass one of these input_dims or name the backbone"
        )
    return matching[0]


# Beam search's length penalty unless given: the config's (training.eval_length_penalty), one default.
DEFAULT_LENGTH_PENALTY = TrainingConfig.eval_length_penalty


def _repeated_ngram_ban(tokens: Tensor, t: int, n: int, vocab_size: int) -> Tensor:
    """(N, k, V) True for each word that would repeat an n-gram already in the hypothesis tokens[:, :, :t]."""
    N, k, _ = tokens.shape
    grams = tokens[:, :, :t].unfold(2, n, 1)  # (N, k, t - n + 1, n)
    prefix = tokens[:, :, t - n + 1 : t].unsqueeze(2)  # the last n - 1 words
    match = (grams[..., :-1] == prefix).all(dim=3).float()
    hits = torch.zeros(N, k, vocab_size, device=tokens.device).scatter_add_(2, grams[..., -1], match)
    return hits > 0


def _check_beam_arguments(beam_size: int, no_repeat_ngram_size: int, n_best: int | None, min_length: int,
                          max_length: int) -> None:
    if beam_size < 1:
        raise ValueError(f"beam_size must be at least 1, got {beam_size}")
    if n_best is not None and not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best must be between 1 and beam_size={beam_size}, got {n_best}")
    if no_repeat_ngram_size < 0:
        raise ValueError(f"no_repeat_ngram_size must be 0 (off) or positive, got {no_repeat_ngram_size}")
    if not 0 <= min_length <= max_length:
        raise ValueError(f"min_length must be between 0 (off) and max_length={max_length}, got {min_length}")


def _extend_attention(history, attention: Tensor, parent: Tensor, parent_finished: Tensor, t: int, length):
    """The attention maps (N, k, length, S) of the kept hypotheses, step t's (B, S) added (zeros once
    a hypothesis has finished)."""
    N, k = parent.shape
    positions = attention.shape[1]
    if history is None:
        history = attention.new_zeros(N, k, length, positions)
    history = history.gather(1, parent.view(N, k, 1, 1).expand(N, k, length, positions))
    step = attention.view(N, k, positions).gather(1, parent.unsqueeze(2).expand(N, k, positions))
    history[:, :, t] = step * (~parent_finished).unsqueeze(2)
    return history


def _best_extensions(candidates: Tensor) -> tuple[Tensor, Tensor]:
    """The k extensions (scores (N, k), flat indices into k * V) kept from candidates (N, k, V).

    Slot 0 follows the greedy path (the best word after slot 0, which began as greedy's), so the
    search never ends worse than greedy decoding; the other slots take the best of the rest.
    """
    N, k, vocab_size = candidates.shape
    candidates = candidates.clone()
    greedy_word = candidates[:, 0].argmax(dim=1, keepdim=True)
    greedy_score = candidates[:, 0].gather(1, greedy_word)
    candidates[:, 0].scatter_(1, greedy_word, -math.inf)
    rest_scores, rest_choice = candidates.view(N, k * vocab_size).topk(k - 1, dim=1)
    return torch.cat([greedy_score, rest_scores], dim=1), torch.cat([greedy_word, rest_choice], dim=1)


def beam_search(
    model,
    features: Tensor,
    max_length: int,
    beam_size: int = 1,
    alpha: float = DEFAULT_LENGTH_PENALTY,
    no_repeat_ngram_size: int = 0,
    mask_unk: bool = False,
    n_best: int | None = None,
    min_length: int = 0,
):
    """Decode a batch with beam search, all images and beams at once (batch * beam_size rows).

    Hypotheses rank by summed log-probability while searching, but the first beam always extends
    greedily, so greedy's caption stays a finalist (else prefixes that put off their uncertain words
    crowd it out and the search ends below greedy). A hypothesis that emits ``<END>`` is finished and
    keeps its place, extended only by ``<NULL>`` at no cost. At the end each image keeps the best
    ``score / length ** alpha`` (length: words up to and including ``<END>``; alpha, the length
    penalty: 0 ranks by summed log-probability, 1 by the mean per word).
    ``beam_size=1`` is greedy. ``no_repeat_ngram_size=n`` (0: off) forbids any n-gram twice in a
    caption; ``mask_unk`` never emits ``<UNK>``; ``min_length=m`` (0: off) allows ``<END>`` only after m
    words (a wide beam otherwise ends on an empty caption: one ``<END>`` costs less than many words).
    Returns ``(tokens (N, max_length), attention (N, max_length, H'*W') or None)``, ``<NULL>`` after
    ``<END>``; with ``n_best``, each image's n best: ``(tokens (N, n, L), scores (N, n), attention)``.
    """
    _check_beam_arguments(beam_size, no_repeat_ngram_size, n_best, min_length, max_length)
    N, k, device = features.shape[0], beam_size, features.device
    state = tuple(s.repeat_interleave(k, dim=0) for s in model.init_state(features))
    words = torch.full((N * k,), model._start, dtype=torch.long, device=device)
    scores = torch.zeros(N, k, device=device)
    scores[:, 1:] = -math.inf  # all beams start identical: expand only the first one
    finished = torch.zeros(N, k, dtype=torch.bool, device=device)
    lengths = torch.zeros(N, k, dtype=torch.long, device=device)
    tokens = torch.full((N, k, max_length), model._null, dtype=torch.long, device=device)
    attention_history = None
    row_offsets = torch.arange(N, device=device).unsqueeze(1) * k
    unk = model.word_to_idx.get(UNK) if mask_unk else None
    for t in range(max_length):
        log_probs, state, attention = model.step(state, words)
        vocab_size = log_probs.shape[1]
        banned = [unk] * (unk is not None) + [model._end] * (t < min_length)
        log_probs = _allowed(log_probs.float().view(N, k, vocab_size), model, tokens, finished, t, banned,
                             no_repeat_ngram_size)
        scores, flat_choice = _best_extensions(scores.unsqueeze(2) + log_probs)
        parent = flat_choice // vocab_size
        word = flat_choice % vocab_size
        tokens = tokens.gather(1, parent.unsqueeze(2).expand(N, k, max_length))
        tokens[:, :, t] = word
        parent_finished = finished.gather(1, parent)
        lengths = lengths.gather(1, parent) + (~parent_finished).long()
        finished = parent_finished | (word == model._end)
        if attention is not None:
            attention_history = _extend_attention(attention_history, attention, parent, parent_finished, t,
                                                  max_length)
        rows = (row_offsets + parent).view(-1)
        state = tuple(s.index_select(0, rows) for s in state)
        words = word.view(-1)
        if bool(finished.all()):
            break
    return _finalists(tokens, scores / lengths.clamp(min=1).float() ** alpha, attention_history, n_best)


def _finalists(tokens: Tensor, normalised: Tensor, attention_history, n_best: int | None):
    """beam_search's return value: the best hypothesis of each image, or its n best with scores."""
    rows = torch.arange(tokens.shape[0], device=tokens.device).unsqueeze(1)
    top_scores, top = normalised.topk(n_best or 1, dim=1)
    top_attention = None if attention_history is None else attention_history[rows, top]
    if n_best is None:
        return tokens[rows, top][:, 0], None if top_attention is None else top_attention[:, 0]
    return tokens[rows, top], top_scores, top_attention


def _allowed(log_probs: Tensor, model, tokens: Tensor, finished: Tensor, t: int, banned: list[int],
             ngram: int) -> Tensor:
    """Step t's log-probabilities (N, k, V) with the banned words at -inf: the ids in ``banned`` (<UNK>,
    <END> before the minimum length), words repeating an n-gram, and all but <NULL> (at no cost) after
    <END>."""
    if banned:
        log_probs[:, :, banned] = -math.inf
    if ngram and t >= ngram:
        repeats = _repeated_ngram_ban(tokens, t, ngram, log_probs.shape[2])
        log_probs = log_probs.masked_fill(repeats, -math.inf)
    null_only = torch.full((log_probs.shape[2],), -math.inf, device=log_probs.device)
    null_only[model._null] = 0.0
    return torch.where(finished.unsqueeze(2), null_only, log_probs)


def multinomial_sample(model, features: Tensor, max_length: int, samples_per_image: int):
    """Draw `samples_per_image` captions per image from the model's distribution, all at once
    (batch * samples_per_image rows), for self-critical training (helpers.train's SCST phase).

    Each word is drawn from the softmax of the step's scores; after ``<END>`` a row emits ``<NULL>``
    and adds nothing to its log-probability. Gradients flow through the log-probabilities.

    Returns ``(tokens (N, K, max_length), log_probs (N, K))``: the ids after ``<START>`` and the sum of
    each caption's log-probabilities, ``<END>`` included.
    """
    if samples_per_image < 1:
        raise ValueError(f"samples_per_image must be at least 1, got {samples_per_image}")
    N, k = features.shape[0], samples_per_image
    device = features.device
    state = tuple(s.repeat_interleave(k, dim=0) for s in model.init_state(features))
    words = torch.full((N * k,), model._start, dtype=torch.long, device=device)
    tokens = torch.full((N * k, max_length), model._null, dtype=torch.long, device=device)
    finished = torch.zeros(N * k, dtype=torch.bool, device=device)
    total = torch.zeros(N * k, device=device)
    for t in range(max_length):
        log_probs, state, _ = model.step(state, words)
        words = torch.multinomial(log_probs.detach().exp(), 1).squeeze(1).masked_fill(finished, model._null)
        chosen = log_probs.gather(1, words.unsqueeze(1)).squeeze(1)
        total = total + chosen.masked_fill(finished, 0.0)
        tokens[:, t] = words
        finished = finished | (words == model._end)
        if bool(finished.all()):
            break
    return tokens.view(N, k, max_length), total.view(N, k)


class CaptioningModel(nn.Module):
    """What every captioning model shares: vocabulary, image encoder, word embedding, loss, decoding.

    Subclasses build their decoder and implement ``scores(features, captions_in) -> (N, T, V)``,
    ``init_state`` and ``step`` (see the module docstring). The word vectors start from
    ``pretrained_embeddings`` (a (V, wordvec_dim) matrix, what build_model passes), from the GloVe file
    ``glove_path`` (read here: the course module's API), or at random.
    """

    returns_attention = False

    def __init__(
        self,
        word_to_idx: dict[str, int],
        input_dim: int | None,
        wordvec_dim: int,
        image_encoder_pretrained: bool,
        ignore_index: int | None,
        backbone: str | None,
        glove_path: str | None,
        freeze_embeddings: bool,
        normalize_features: bool,
        pretrained_embeddings: Tensor | None,
    ):
        super().__init__()
        check_word_to_idx(word_to_idx)
        self.word_to_idx = dict(word_to_idx)
        self.idx_to_word = {index: word for word, index in word_to_idx.items()}
        self._null = word_to_idx[NULL]
        self._start = word_to_idx.get(START)  # None in the course's sanity-check vocabulary:
        self._end = word_to_idx.get(END)  # sample() then explains what is missing
        self.ignore_index = self._null if ignore_index is None else ignore_index

        # Pretrained weights load when images first pass through the CNN: training and decoding from
        # the feature store never need them (nor Internet on Kaggle).
        backbone = backbone_for(input_dim, backbone)
        self.image_encoder = ImageEncoder(
            pretrained=image_encoder_pretrained, backbone=backbone, verbose=False, defer_weights=True
        )
        channels = self.image_encoder.out_channels
        if input_dim is not None and input_dim != channels:
            raise ValueError(
                f"input_dim={input_dim} does not match {backbone}, which outputs {channels} channels; "
                f"pass input_dim={channels} or leave it None"
            )
        self.input_dim = channels
        self.backbone = backbone
        # Standardise each feature channel over the batch (running statistics when sampling). Backbone
        # features share a large common component (random-weight features of different images have
        # cosine ~0.998); without this the decoders learn one caption for every image. build_model
        # always asks for it; the course's CaptioningRNN had none, so its sanity checks need it off.
        self.feature_norm = nn.BatchNorm2d(channels) if normalize_features else nn.Identity()
        self.wordvec_dim = wordvec_dim

        vectors = pretrained_embeddings
        if glove_path is not None:
            if vectors is not None:
                raise ValueError("pass glove_path or pretrained_embeddings, not both")
            try:
                vectors = load_glove_embeddings(glove_path, self.word_to_idx, embed_dim=wordvec_dim)
            except ValueError as err:
                raise ValueError(
                    f"cannot use the GloVe file {glove_path} with wordvec_dim={wordvec_dim}: {err} "
                    "(wordvec_dim must equal the GloVe dimension)"
                ) from err
        self.word_embed = WordEmbedding(len(word_to_idx), wordvec_dim, vectors, freeze=freeze_embeddings)

    def encode(self, images: Tensor) -> Tensor:
        """Run the CNN: images (N, 3, H, W), uint8 or float in [0, 1] -> features (N, input_dim, H', W')."""
        return self.image_encoder(images)

    def features_from(self, images_or_features: Tensor) -> Tensor:
        """Backbone features (normalised if asked) for a batch of images (the CNN runs) or precomputed ones.

        The two are told apart by the channel count: 3 for images, ``input_dim`` for features.
        """
        x = images_or_features
        if x.dim() == 4 and x.shape[1] == 3:
            return self.feature_norm(self.encode(x))
        if x.dim() == 4 and x.shape[1] == self.input_dim:
            return self.feature_norm(x.to(self.output_proj.weight.dtype))
        raise ValueError(
            f"expected images (N, 3, H, W) or {self.backbone} features (N, {self.input_dim}, H', W'); "
            f"got shape {tuple(x.shape)}"
        )

    def forward(
        self, images: Tensor, captions: Tensor, label_smoothing: float = 0.0, alpha_c: float = 0.0
    ) -> Tensor:
        """Teacher-forced loss: summed over time, averaged over the batch, ``<NULL>`` targets ignored.

        captions (N, T + 1) start with ``<START>``; the model reads ``captions[:, :-1]`` and predicts
        ``captions[:, 1:]``. Training passes ``label_smoothing`` (see :func:`temporal_softmax_loss`)
        and, for the attention LSTM, ``alpha_c`` times the doubly-stochastic attention penalty; with
        both 0 (the default, and what validation uses) the loss is the course's cross-entropy.
        """
        captions_in, captions_out = captions[:, :-1], captions[:, 1:]
        features = self.features_from(images)
        if alpha_c and self.cell_type == "attn":
            scores, attention = self.scores(features, captions_in, return_attention=True)
            penalty = doubly_stochastic_penalty(attention, captions_out != self.ignore_index)
        else:
            scores, penalty = self.scores(features, captions_in), 0.0
        loss = temporal_softmax_loss(
            scores, captions_out, ignore_index=self.ignore_index, label_smoothing=label_smoothing
        )
        return loss + alpha_c * penalty

    @torch.no_grad()
    def sample(
        self,
        images: Tensor,
        max_length: int = 15,
        beam_size: int = 1,
        alpha: float = DEFAULT_LENGTH_PENALTY,
        no_repeat_ngram_size: int = 0,
        mask_unk: bool = False,
        min_length: int = 0,
    ):
        """Caption a batch: token ids (N, max_length), starting with the first word after ``<START>``.

        ``beam_size=1`` is greedy decoding; larger values run :func:`beam_search` over the whole batch
        with length normalisation ``score / length ** alpha``; ``no_repeat_ngram_size``, ``mask_unk``
        and ``min_length`` are as there (their defaults decode as the course module did). Positions
        after ``<END>`` hold ``<NULL>``. Models with attention also return the attention maps
        (N, max_length, H', W'), on the CPU like the course module.
        """
        features, (captions, attention) = self._decode(
            images, max_length, beam_size, alpha=alpha, no_repeat_ngram_size=no_repeat_ngram_size,
            mask_unk=mask_unk, min_length=min_length,
        )
        if not self.returns_attention:
            return captions
        return captions, attention.reshape(*captions.shape, *features.shape[2:]).cpu()

    @torch.no_grad()
    def sample_n_best(
        self, images: Tensor, n: int, max_length: int = 15, beam_size: int | None = None, **options
    ):
        """The n best captions of each image and their scores: (tokens (N, n, max_length), scores (N, n)).

        Best first; scores are the length-normalised log-probabilities beam search ranks by.
        ``beam_size`` defaults to n; ``options`` (alpha, no_repeat_ngram_size, mask_unk, min_length) as
        :meth:`sample`.
        """
        _, (tokens, scores, _) = self._decode(images, max_length, beam_size or n, n_best=n, **options)
        return tokens, scores

    def _decode(self, images: Tensor, max_length: int, beam_size: int, **options):
        """(features, beam_search's output) in eval mode (no dropout); then every submodule gets its
        own mode back (a frozen encoder kept in eval stays in eval)."""
        require_tokens(self.word_to_idx, [START, END], "sampling")
        modes = [(module, module.training) for module in self.modules()]
        self.eval()
        try:
            features = self.features_from(images)
            return features, beam_search(self, features, max_length, beam_size, **options)
        finally:
            for module, training in modes:
                module.training = training

    def sample_multinomial(self, images: Tensor, samples_per_image: int, max_length: int = 15):
        """Sampled captions with their summed log-probabilities, differentiable: see
        :func:`multinomial_sample`. Runs in the model's current mode (training keeps dropout on)."""
        require_tokens(self.word_to_idx, [START, END], "sampling")
        return multinomial_sample(self, self.features_from(images), max_length, samples_per_image)

    def log_probs(self, hidden: Tensor) -> Tensor:
        """Hidden states (..., H) -> log-probabilities (..., V) in float32."""
        return self.output_proj(hidden).float().log_softmax(dim=-1)


class CaptioningRNN(CaptioningModel):
    """The course's captioning model with a vanilla RNN, an LSTM or an attention LSTM decoder.

    rnn / lstm: the spatially averaged features pass a Linear(input_dim, hidden_dim) to give h0.
    attn: a 1x1 convolution projects the features to A (N, hidden_dim, H', W') to attend over.
    With no ``backbone`` named, the course's ``input_dim`` picks it (400: regnet_x_400mf); the
    course's sanity-check vocabulary without ``<START>``/``<END>`` serves for the loss. Defaults are
    the course's, so its sanity checks give its expected losses; ``normalize_features=True`` (what
    :func:`helpers.models.build_model` passes) adds the per-channel feature normalisation.
    """

    def __init__(
        self,
        word_to_idx: dict[str, int],
        input_dim: int | None = None,
        wordvec_dim: int = 128,
        hidden_dim: int = 128,
        cell_type: str = "rnn",
        image_encoder_pretrained: bool = True,
        ignore_index: int | None = None,
        backbone: str | None = None,
        glove_path: str | None = None,
        freeze_embeddings: bool = False,
        normalize_features: bool = False,
        dropout: float = 0.0,
        pretrained_embeddings: Tensor | None = None,
    ):
        if canonical_cell_type(cell_type) not in RNN_CELL_TYPES:
            aliases = [alias for alias, cell in CELL_TYPE_ALIASES.items() if cell in RNN_CELL_TYPES]
            choices = sorted([*RNN_CELL_TYPES, *aliases])
            raise ValueError(f"unknown cell_type {cell_type!r}; choose one of {choices}")
        super().__init__(
            word_to_idx, input_dim, wordvec_dim, image_encoder_pretrained, ignore_index, backbone,
            glove_path, freeze_embeddings, normalize_features, pretrained_embeddings,
        )
        self.cell_type = canonical_cell_type(cell_type)
        self.hidden_dim = hidden_dim
        self.returns_attention = self.cell_type == "attn"
        if self.cell_type == "attn":
            self.feat_proj = nn.Conv2d(self.input_dim, hidden_dim, kernel_size=1)
            self.decoder = AttentionLSTM(wordvec_dim, hidden_dim)
        else:
            self.feat_proj = nn.Linear(self.input_dim, hidden_dim)
            self.decoder = (RNN if self.cell_type == "rnn" else LSTM)(wordvec_dim, hidden_dim)
        # On the hidden states before the output layer, as Show, Attend and Tell (the course had none).
        self.dropout = nn.Dropout(dropout)
        self.output_proj = nn.Linear(hidden_dim, len(word_to_idx))

    def scores(self, features: Tensor, captions_in: Tensor, return_attention: bool = False):
        """Teacher-forced vocabulary scores (N, T, V); RNN and LSTM run torch's fused kernels.

        ``return_attention`` (attn only) also gives the attention weights (N, T, H', W').
        """
        word_embeds = self.word_embed(captions_in)
        attention = None
        if self.cell_type == "attn":
            hidden, attention = self.decoder(word_embeds, self.feat_proj(features), return_attention=True)
        else:
            hidden = self.decoder(word_embeds, self.feat_proj(features.mean(dim=(2, 3))))
        scores = self.output_proj(self.dropout(hidden))
        return (scores, attention) if return_attention else scores

    def init_state(self, features: Tensor) -> tuple[Tensor, ...]:
        """(h,) for rnn, (h, c) for lstm with c = 0, (h, c, A) for attn with h = c = mean of A."""
        if self.cell_type == "attn":
            A = self.feat_proj(features)
            h = A.mean(dim=(2, 3))
            return h, h, A
        h = self.feat_proj(features.mean(dim=(2, 3)))
        return (h,) if self.cell_type == "rnn" else (h, torch.zeros_like(h))

    def step(self, state: tuple[Tensor, ...], words: Tensor):
        """One decoding step with the per-step path of the course's cells."""
        x = self.word_embed(words)
        attention = None
        if self.cell_type == "rnn":
            h = self.decoder.step_forward(x, state[0])
            state = (h,)
        elif self.cell_type == "lstm":
            h, c = self.decoder.step_forward(x, *state)
            state = (h, c)
        else:
            h, c, A = state
            attn, weights = dot_product_attention(h, A)
            h, c = self.decoder.step_forward(x, h, c, attn)
            state = (h, c, A)
            attention = weights.flatten(1)
        return self.log_probs(h), state, attention


class CaptioningTransformer(CaptioningModel):
    """A Transformer decoder over the spatial image features; ``hidden_dim`` is d_model.

    Same forward/sample contract as :class:`CaptioningRNN`; ``sample`` also returns the last layer's
    cross-attention maps averaged over heads.
    """

    cell_type = "transformer"
    returns_attention = True

    def __init__(
        self,
        word_to_idx: dict[str, int],
        input_dim: int | None = None,
        wordvec_dim: int = 128,
        hidden_dim: int = 128,
        num_heads: int = 4,
        num_layers: int = 2,
        dropout: float = 0.1,
        max_length: int = 50,
        image_encoder_pretrained: bool = True,
        ignore_index: int | None = None,
        backbone: str | None = None,
        glove_path: str | None = None,
        freeze_embeddings: bool = False,
        normalize_features: bool = True,
        pretrained_embeddings: Tensor | None = None,
    ):
        super().__init__(
            word_to_idx, input_dim, wordvec_dim, image_encoder_pretrained, ignore_index, backbone,
            glove_path, freeze_embeddings, normalize_features, pretrained_embeddings,
        )
        self.hidden_dim = hidden_dim
        self.max_length = max_length
        self.decoder = TransformerDecoder(
            self.input_dim, wordvec_dim, d_model=hidden_dim, num_heads=num_heads, num_layers=num_layers,
            dropout=dropout, max_length=max_length,
        )
        self.output_proj = nn.Linear(hidden_dim, len(word_to_idx))

    def scores(self, features: Tensor, captions_in: Tensor) -> Tensor:
        """Teacher-forced vocabulary scores (N, T, V), all positions at once under a causal mask."""
        return self.output_proj(self.decoder(self.word_embed(captions_in), features))

    def init_state(self, features: Tensor) -> tuple[Tensor, ...]:
        """Each layer's image keys and values, then each layer's (still empty) word keys and values."""
        memory_kv = self.decoder.memory_keys_values(self.decoder.encode_memory(features))
        past_kv = self.decoder.empty_cache(features.shape[0], features.device)
        return tuple(t for pair in memory_kv + past_kv for t in pair)

    def step(self, state: tuple[Tensor, ...], words: Tensor):
        """Decode one position from the cached keys and values (no recomputation of the prefix)."""
        pairs = [state[i : i + 2] for i in range(0, len(state), 2)]
        layers = len(self.decoder.layers)
        hidden, past_kv, weights = self.decoder.step(self.word_embed(words), pairs[:layers], pairs[layers:])
        state = tuple(t for pair in pairs[:layers] + past_kv for t in pair)
        return self.log_probs(hidden), state, weights

    def _decode(self, images: Tensor, max_length: int, beam_size: int, **options):
        """As :meth:`CaptioningModel._decode`; max_length may not exceed the model's ``max_length``."""
        if max_length > self.max_length:
            raise ValueError(
                f"max_length={max_length} exceeds the model's max_length={self.max_length}; "
                f"build CaptioningTransformer with max_length >= {max_length}"
            )
        return super()._decode(images, max_length, beam_size, **options)


def build_model(config: Config, vocab: Any, *, word_vectors: Tensor | None):
    """The captioning model `config` describes: CaptioningRNN (rnn/lstm/attn) or CaptioningTransformer.

    `vocab` is a Vocabulary or a word_to_idx dict. `word_vectors` is the matrix the word embedding
    starts from, `helpers.glove.load_word_vectors(config, vocab)` (the step that reads or downloads
    GloVe), or None for random vectors (use_glove false, or weights a checkpoint then replaces). It is
    required so that no caller forgets the GloVe the config asks for; nothing here reads a file.
    """
    word_to_idx = word_index(vocab)
    common = dict(
        input_dim=config.model.feature_channels,
        wordvec_dim=config.model.wordvec_dim,
        hidden_dim=config.model.hidden_dim,
        image_encoder_pretrained=config.model.pretrained_backbone,
        backbone=config.model.backbone,
        pretrained_embeddings=word_vectors,
        freeze_embeddings=config.embeddings.freeze,
        normalize_features=True,
    )
    if config.model.decoder == "transformer":
        return CaptioningTransformer(
            word_to_idx,
            num_heads=config.model.num_heads,
            num_layers=config.model.num_layers,
            dropout=config.model.dropout,
            max_length=max(50, config.data.max_caption_length + 2),
            **common,
        )
    return CaptioningRNN(
        word_to_idx, cell_type=config.model.decoder, dropout=config.model.dropout, **common
    )
