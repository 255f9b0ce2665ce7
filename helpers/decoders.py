"""Caption decoders: the classic course module's recurrent API plus a Transformer decoder.

The names, parameter shapes and return values follow the course module ``rnn_lstm_captioning.py``
(see ``docs/ARCHITECTURE.md``), so old code and its sanity checks keep working. Teacher-forced
``forward`` of :class:`RNN` and :class:`LSTM` runs torch's fused RNN/LSTM kernels on the course
parameters (gate blocks reordered for the LSTM) instead of a Python loop over time steps; the
per-step ``step_forward`` path stays for sampling and gives the same numbers.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import _VF, Tensor, nn

__all__ = [
    "hello_rnn_lstm_captioning",
    "rnn_step_forward",
    "rnn_step_backward",
    "rnn_forward",
    "rnn_backward",
    "RNN",
    "LSTM",
    "dot_product_attention",
    "AttentionLSTM",
    "temporal_softmax_loss",
    "doubly_stochastic_penalty",
    "MultiHeadAttention",
    "TransformerDecoderLayer",
    "TransformerDecoder",
    "sinusoidal_encoding",
    "spatial_encoding",
]


def hello_rnn_lstm_captioning() -> None:
    """The course module's greeting, which its notebooks call first to check the import worked."""
    print("Hello from rnn_lstm_captioning.py!")


def _fused_kernel(kernel, x: Tensor, hx, weights: list[Tensor]):
    """Run torch's fused single-layer RNN kernel (``_VF.rnn_tanh`` or ``_VF.lstm``), batch first.

    The weights are recomputed from the course parameters at every call, so cuDNN copies them into
    its flat buffer each time (a small copy next to the activations) and warns that they are not
    one contiguous chunk; that copy is intended, so the warning is silenced. cuDNN only keeps what
    its backward needs in "train" mode, so that follows autograd rather than ``module.training``.
    """
    arguments = (x, hx, weights, True, 1, 0.0, torch.is_grad_enabled(), False, True)
    if not x.is_cuda:
        return kernel(*arguments)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="RNN module weights are not part of single contiguous")
        return kernel(*arguments)


def rnn_step_forward(x: Tensor, prev_h: Tensor, Wx: Tensor, Wh: Tensor, b: Tensor):
    """One vanilla RNN step: ``next_h = tanh(x Wx + prev_h Wh + b)``.

    x (N, D), prev_h (N, H), Wx (D, H), Wh (H, H), b (H,). Returns ``(next_h, cache)``; the cache
    ``(x, prev_h, Wx, Wh, b, next_h)`` is kept for course compatibility (autograd does the backward).
    """
    next_h = torch.tanh(torch.addmm(b, x, Wx) + prev_h.mm(Wh))
    return next_h, (x, prev_h, Wx, Wh, b, next_h)


def rnn_step_backward(dnext_h: Tensor, cache):
    """Hand-written backward of :func:`rnn_step_forward` (the course's sanity checks call it).

    Returns ``(dx, dprev_h, dWx, dWh, db)``.
    """
    x, prev_h, Wx, Wh, _, next_h = cache
    dpreactivation = dnext_h * (1 - next_h * next_h)
    dx = dpreactivation.mm(Wx.t())
    dprev_h = dpreactivation.mm(Wh.t())
    return dx, dprev_h, x.t().mm(dpreactivation), prev_h.t().mm(dpreactivation), dpreactivation.sum(dim=0)


def rnn_forward(x: Tensor, h0: Tensor, Wx: Tensor, Wh: Tensor, b: Tensor):
    """A vanilla RNN over a whole sequence with torch's fused kernel.

    x (N, T, D), h0 (N, H). Returns ``(h, cache)`` with the hidden states h (N, T, H) and the cache
    ``(x, h0, Wx, Wh, b, h)`` (course compatibility).
    """
    weights = [Wx.t().contiguous(), Wh.t().contiguous(), b, torch.zeros_like(b)]
    h, _ = _fused_kernel(_VF.rnn_tanh, x, h0.unsqueeze(0), weights)
    return h, (x, h0, Wx, Wh, b, h)


def rnn_backward(dh: Tensor, cache):
    """Hand-written backward of :func:`rnn_forward` for upstream gradients dh (N, T, H).

    Returns ``(dx, dh0, dWx, dWh, db)``; training itself relies on autograd through the fused kernel.
    """
    x, h0, Wx, Wh, b, h = cache
    dx = torch.empty_like(x)
    dWx, dWh, db = torch.zeros_like(Wx), torch.zeros_like(Wh), torch.zeros_like(b)
    dprev_h = torch.zeros_like(h0)
    for t in reversed(range(x.shape[1])):
        prev_h = h[:, t - 1] if t > 0 else h0
        step_cache = (x[:, t], prev_h, Wx, Wh, b, h[:, t])
        dx[:, t], dprev_h, dWx_t, dWh_t, db_t = rnn_step_backward(dh[:, t] + dprev_h, step_cache)
        dWx += dWx_t
        dWh += dWh_t
        db += db_t
    return dx, dprev_h, dWx, dWh, db


class RNN(nn.Module):
    """Vanilla RNN with the course's parameters ``Wx`` (D, H), ``Wh`` (H, H), ``b`` (H,)."""

    def __init__(self, input_dim: int, hidden_dim: int):
        super().__init__()
        self.Wx = nn.Parameter(torch.randn(input_dim, hidden_dim) / math.sqrt(input_dim))
        self.Wh = nn.Parameter(torch.randn(hidden_dim, hidden_dim) / math.sqrt(hidden_dim))
        self.b = nn.Parameter(torch.zeros(hidden_dim))

    def forward(self, x: Tensor, h0: Tensor) -> Tensor:
        """Hidden states (N, T, H) for inputs x (N, T, D) from h0 (N, H) (fused kernel)."""
        h, _ = rnn_forward(x, h0, self.Wx, self.Wh, self.b)
        return h

    def step_forward(self, x: Tensor, prev_h: Tensor) -> Tensor:
        """One step: x (N, D), prev_h (N, H) -> next_h (N, H)."""
        next_h, _ = rnn_step_forward(x, prev_h, self.Wx, self.Wh, self.b)
        return next_h


def _course_gates_to_torch(weight: Tensor, dim: int) -> Tensor:
    """Reorder the four gate blocks along ``dim`` from the course's (i, f, o, g) to torch's (i, f, g, o)."""
    i, f, o, g = weight.chunk(4, dim=dim)
    return torch.cat([i, f, g, o], dim=dim)


def _lstm_update(preactivation: Tensor, prev_c: Tensor) -> tuple[Tensor, Tensor]:
    """The LSTM cell update from the (N, 4H) pre-activation in the course's gate order (i, f, o, g)."""
    i, f, o, g = preactivation.chunk(4, dim=1)
    next_c = torch.sigmoid(f) * prev_c + torch.sigmoid(i) * torch.tanh(g)
    next_h = torch.sigmoid(o) * torch.tanh(next_c)
    return next_h, next_c


class LSTM(nn.Module):
    """LSTM with the course's parameters ``Wx`` (D, 4H), ``Wh`` (H, 4H), ``b`` (4H,), gates (i, f, o, g)."""

    def __init__(self, input_dim: int, hidden_dim: int):
        super().__init__()
        self.Wx = nn.Parameter(torch.randn(input_dim, 4 * hidden_dim) / math.sqrt(input_dim))
        self.Wh = nn.Parameter(torch.randn(hidden_dim, 4 * hidden_dim) / math.sqrt(hidden_dim))
        self.b = nn.Parameter(torch.zeros(4 * hidden_dim))

    def step_forward(self, x: Tensor, prev_h: Tensor, prev_c: Tensor) -> tuple[Tensor, Tensor]:
        """One step: x (N, D), prev_h and prev_c (N, H) -> (next_h, next_c)."""
        return _lstm_update(torch.addmm(self.b, x, self.Wx) + prev_h.mm(self.Wh), prev_c)

    def forward(self, x: Tensor, h0: Tensor) -> Tensor:
        """Hidden states (N, T, H) for x (N, T, D) from h0 (N, H) and c0 = 0, with torch's fused LSTM.

        torch orders the gates (i, f, g, o); the blocks are reordered with differentiable views, so
        gradients reach ``Wx``, ``Wh`` and ``b`` exactly as in the step path.
        """
        weights = [
            _course_gates_to_torch(self.Wx.t(), dim=0),
            _course_gates_to_torch(self.Wh.t(), dim=0),
            _course_gates_to_torch(self.b, dim=0),
            torch.zeros_like(self.b),
        ]
        state = (h0.unsqueeze(0), torch.zeros_like(h0).unsqueeze(0))
        h, _, _ = _fused_kernel(_VF.lstm, x, state, weights)
        return h


def dot_product_attention(prev_h: Tensor, A: Tensor) -> tuple[Tensor, Tensor]:
    """Scaled dot-product attention of a hidden state over spatial features.

    prev_h (N, H), A (N, H, H', W'). Scores are ``prev_h . A`` at each of the H'*W' locations divided
    by sqrt(H), softmaxed over the locations. Returns ``(attn (N, H), attn_weights (N, H', W'))``.
    """
    N, H, height, width = A.shape
    A_flat = A.reshape(N, H, height * width)
    scores = torch.bmm(prev_h.unsqueeze(1), A_flat).squeeze(1) / math.sqrt(H)
    weights = scores.softmax(dim=1)
    attn = torch.bmm(A_flat, weights.unsqueeze(2)).squeeze(2)
    return attn, weights.reshape(N, height, width)


class AttentionLSTM(nn.Module):
    """The course's attention LSTM: an LSTM whose pre-activation adds ``attn Wattn`` (Wattn (H, 4H)).

    Attention depends on the previous hidden state, so no fused kernel applies: ``forward`` loops
    over time, but the input projection of all steps is one matrix product and each step does a
    single product for the hidden state and the attended features together.
    """

    def __init__(self, input_dim: int, hidden_dim: int):
        super().__init__()
        self.Wx = nn.Parameter(torch.randn(input_dim, 4 * hidden_dim) / math.sqrt(input_dim))
        self.Wh = nn.Parameter(torch.randn(hidden_dim, 4 * hidden_dim) / math.sqrt(hidden_dim))
        self.Wattn = nn.Parameter(torch.randn(hidden_dim, 4 * hidden_dim) / math.sqrt(hidden_dim))
        self.b = nn.Parameter(torch.zeros(4 * hidden_dim))

    def step_forward(
        self, x: Tensor, prev_h: Tensor, prev_c: Tensor, attn: Tensor
    ) -> tuple[Tensor, Tensor]:
        """One step: x (N, D), prev_h, prev_c and attn (N, H) -> (next_h, next_c)."""
        preactivation = torch.addmm(self.b, x, self.Wx) + prev_h.mm(self.Wh) + attn.mm(self.Wattn)
        return _lstm_update(preactivation, prev_c)

    def forward(self, x: Tensor, A: Tensor, return_attention: bool = False):
        """Hidden states (N, T, H) for x (N, T, D) attending over A (N, H, H', W'); h0 = c0 = mean of A.

        With ``return_attention`` also the attention weights of every step (N, T, H', W'), which the
        doubly-stochastic regularisation of the loss needs.
        """
        h = c = A.mean(dim=(2, 3))
        input_part = torch.matmul(x, self.Wx) + self.b
        recurrent_weights = torch.cat([self.Wh, self.Wattn], dim=0)
        hidden_states, attention = [], []
        for t in range(x.shape[1]):
            attn, weights = dot_product_attention(h, A)
            h, c = _lstm_update(input_part[:, t] + torch.cat([h, attn], dim=1).mm(recurrent_weights), c)
            hidden_states.append(h)
            attention.append(weights)
        hidden = torch.stack(hidden_states, dim=1)
        return (hidden, torch.stack(attention, dim=1)) if return_attention else hidden


def temporal_softmax_loss(
    x: Tensor, y: Tensor, ignore_index: int | None = None, label_smoothing: float = 0.0
) -> Tensor:
    """Cross-entropy of scores x (N, T, V) against targets y (N, T), summed over time, averaged over N.

    Targets equal to ``ignore_index`` contribute nothing (None ignores nothing). ``label_smoothing``
    (the course's loss has none) takes the target distribution as ``1 - label_smoothing`` on the
    target word plus ``label_smoothing / V`` on every word, which keeps the decoder from growing
    over-confident on the few captions of each image.
    """
    N, T, V = x.shape
    loss = F.cross_entropy(
        x.reshape(N * T, V),
        y.reshape(N * T),
        ignore_index=-100 if ignore_index is None else ignore_index,
        reduction="sum",
        label_smoothing=label_smoothing,
    )
    return loss / N


def doubly_stochastic_penalty(attention: Tensor, mask: Tensor) -> Tensor:
    """Show, Attend and Tell's attention regulariser: sum over locations of (1 - sum over time)^2.

    attention (N, T, H', W') or (N, T, S); mask (N, T) is True at the steps that predict a word (not
    padding). Pushes the decoder to look at every location over the caption instead of one spot.
    Summed over the locations and averaged over the batch, like :func:`temporal_softmax_loss`.
    """
    weights = attention.flatten(2) * mask.unsqueeze(2).to(attention.dtype)
    return ((1 - weights.sum(dim=1)) ** 2).sum(dim=1).mean()


def sinusoidal_encoding(positions: Tensor, dim: int) -> Tensor:
    """The Transformer's sine/cosine encoding (len(positions), dim) of float positions."""
    frequencies = torch.exp(
        torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) * (-math.log(10000.0) / dim)
    )
    angles = positions.float().unsqueeze(1) * frequencies
    encoding = torch.zeros(len(positions), dim, device=positions.device)
    encoding[:, 0::2] = torch.sin(angles)
    encoding[:, 1::2] = torch.cos(angles[:, : dim // 2])
    return encoding


def spatial_encoding(height: int, width: int, dim: int, device=None) -> Tensor:
    """A 2-D sinusoidal encoding (height*width, dim): half the channels encode the row, half the column.

    Computed for any feature-map size, so a model trained at one image size runs at another.
    """
    row_dim = dim // 2
    rows = sinusoidal_encoding(torch.arange(height, device=device), row_dim)
    cols = sinusoidal_encoding(torch.arange(width, device=device), dim - row_dim)
    grid = torch.cat(
        [
            rows.unsqueeze(1).expand(height, width, row_dim),
            cols.unsqueeze(0).expand(height, width, dim - row_dim),
        ],
        dim=2,
    )
    return grid.reshape(height * width, dim)


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention whose keys and values can be computed once and reused.

    ``keys_values(source)`` projects a source sequence; ``attend(query_input, keys, values)`` attends
    over it. Sampling projects the image memory once and grows a cache of the words' keys and values,
    so each step costs one position instead of the whole prefix.
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.dropout = dropout
        self.query = nn.Linear(d_model, d_model)
        self.key_value = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def _split_heads(self, x: Tensor) -> Tensor:
        """(N, L, d_model) -> (N, heads, L, head_dim)."""
        return x.unflatten(2, (self.num_heads, self.head_dim)).transpose(1, 2)

    def keys_values(self, source: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values (N, heads, S, head_dim) of a source sequence (N, S, d_model)."""
        keys, values = self.key_value(source).chunk(2, dim=2)
        return self._split_heads(keys), self._split_heads(values)

    def attend(
        self,
        query_input: Tensor,
        keys: Tensor,
        values: Tensor,
        causal: bool = False,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from query_input (N, L, d_model) over keys/values; ``causal`` masks later positions.

        Returns the output (N, L, d_model) and, with ``need_weights``, the attention weights averaged
        over heads (N, L, S), taken before dropout (only for non-causal attention, which is where
        attention maps come from: the image positions).
        """
        if causal and need_weights:
            raise ValueError("attention weights are only returned for non-causal attention")
        q = self._split_heads(self.query(query_input))
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            probabilities = (q @ keys.transpose(-2, -1) / math.sqrt(self.head_dim)).softmax(dim=-1)
            weights = probabilities.mean(dim=1)
            attended = F.dropout(probabilities, dropout, self.training) @ values
        else:
            attended = F.scaled_dot_product_attention(q, keys, values, dropout_p=dropout, is_causal=causal)
        return self.out(attended.transpose(1, 2).flatten(2)), weights


class TransformerDecoderLayer(nn.Module):
    """Pre-norm decoder layer: masked self-attention, cross-attention over image positions, feed-forward."""

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, num_heads, dropout)
        self.cross_attn = MultiHeadAttention(d_model, num_heads, dropout)
        self.feed_forward = nn.Sequential(
            nn.Linear(d_model, dim_feedforward),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(dim_feedforward, d_model),
        )
        self.norm_self = nn.LayerNorm(d_model)
        self.norm_cross = nn.LayerNorm(d_model)
        self.norm_feed_forward = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        memory_kv: tuple[Tensor, Tensor],
        past_kv: tuple[Tensor, Tensor] | None = None,
        need_weights: bool = False,
    ):
        """Run the layer on x (N, L, d_model) against the image memory's keys and values.

        Without ``past_kv`` x is a whole caption and self-attention is causal. With ``past_kv`` (the
        keys and values of the earlier positions) x is the next single position. Returns
        ``(x, (keys, values) of all positions so far, cross-attention weights (N, L, S) or None)``.
        """
        q = self.norm_self(x)
        keys, values = self.self_attn.keys_values(q)
        if past_kv is not None:
            keys, values = torch.cat([past_kv[0], keys], dim=2), torch.cat([past_kv[1], values], dim=2)
        attended, _ = self.self_attn.attend(q, keys, values, causal=past_kv is None)
        x = x + self.dropout(attended)
        attended, weights = self.cross_attn.attend(self.norm_cross(x), *memory_kv, need_weights=need_weights)
        x = x + self.dropout(attended)
        x = x + self.dropout(self.feed_forward(self.norm_feed_forward(x)))
        return x, (keys, values), weights


class TransformerDecoder(nn.Module):
    """Transformer caption decoder over word embeddings and spatial image features.

    Words (N, T, wordvec_dim) are projected to d_model (when the sizes differ) and get a sinusoidal
    position encoding; the image features (N, C, H', W') are flattened to H'*W' positions, projected
    to d_model and get a 2-D sinusoidal encoding. Each layer applies causal self-attention over the
    words and cross-attention over the image positions. The output is (N, T, d_model) after a final
    LayerNorm; optionally also the last layer's cross-attention weights averaged over heads
    (N, T, H', W'). ``step`` decodes one position at a time from cached keys and values.
    """

    def __init__(
        self,
        input_dim: int,
        wordvec_dim: int,
        d_model: int = 128,
        num_heads: int = 4,
        num_layers: int = 2,
        dropout: float = 0.1,
        max_length: int = 50,
        dim_feedforward: int | None = None,
    ):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        self.d_model = d_model
        self.num_heads = num_heads
        self.max_length = max_length
        self.feature_proj = nn.Linear(input_dim, d_model)
        self.word_proj = nn.Identity() if wordvec_dim == d_model else nn.Linear(wordvec_dim, d_model)
        self.register_buffer(
            "word_positions", sinusoidal_encoding(torch.arange(max_length), d_model), persistent=False
        )
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            TransformerDecoderLayer(d_model, num_heads, dim_feedforward or 4 * d_model, dropout)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def encode_memory(self, features: Tensor) -> Tensor:
        """Image features (N, C, H', W') -> memory (N, H'*W', d_model) with the 2-D position encoding."""
        N, C, height, width = features.shape
        flat = features.reshape(N, C, height * width).transpose(1, 2)
        memory = self.feature_proj(flat) + spatial_encoding(height, width, self.d_model, flat.device)
        return self.dropout(memory)

    def memory_keys_values(self, memory: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Each layer's cross-attention keys and values of the memory, computed once per image."""
        return [layer.cross_attn.keys_values(memory) for layer in self.layers]

    def _check_length(self, length: int) -> None:
        if length > self.max_length:
            raise ValueError(
                f"{length} word positions exceed max_length={self.max_length} of the position encoding; "
                f"build the model with max_length >= {length}"
            )

    def decode(self, word_embeds: Tensor, memory: Tensor, return_attention: bool = False):
        """Decode word embeddings (N, T, wordvec_dim) against an encoded memory (N, S, d_model).

        Returns the hidden states (N, T, d_model), and with ``return_attention`` also the last layer's
        head-averaged cross-attention weights (N, T, S).
        """
        T = word_embeds.shape[1]
        self._check_length(T)
        x = self.dropout(self.word_proj(word_embeds) + self.word_positions[:T])
        weights = None
        for index, (layer, memory_kv) in enumerate(zip(self.layers, self.memory_keys_values(memory))):
            last = index == len(self.layers) - 1
            x, _, weights = layer(x, memory_kv, need_weights=return_attention and last)
        hidden = self.norm(x)
        return (hidden, weights) if return_attention else hidden

    def step(self, word_embed: Tensor, memory_kv: list, past_kv: list):
        """Decode the next position from the words' cached keys and values.

        word_embed (B, wordvec_dim) is the word at position ``past_kv[0][0].shape[2]``; ``memory_kv`` is
        :meth:`memory_keys_values`; ``past_kv`` holds each layer's (keys, values) of the earlier
        positions, (B, heads, t, head_dim) each. Returns ``(hidden (B, d_model), new past_kv,
        cross-attention weights (B, S))``.
        """
        position = past_kv[0][0].shape[2]
        self._check_length(position + 1)
        x = self.dropout(self.word_proj(word_embed) + self.word_positions[position]).unsqueeze(1)
        new_past = []
        for index, layer in enumerate(self.layers):
            last = index == len(self.layers) - 1
            x, layer_kv, weights = layer(x, memory_kv[index], past_kv[index], need_weights=last)
            new_past.append(layer_kv)
        return self.norm(x[:, 0]), new_past, weights[:, 0]

    def empty_cache(self, batch_size: int, device=None) -> list[tuple[Tensor, Tensor]]:
        """Each layer's (keys, values) before any word: (batch_size, heads, 0, head_dim)."""
        empty = torch.zeros(batch_size, self.num_heads, 0, self.d_model // self.num_heads, device=device)
        return [(empty, empty) for _ in self.layers]

    def forward(self, word_embeds: Tensor, features: Tensor, return_attention: bool = False):
        """Hidden states (N, T, d_model) [and cross-attention (N, T, H', W')] for words and image features."""
        memory = self.encode_memory(features)
        if not return_attention:
            return self.decode(word_embeds, memory)
        hidden, weights = self.decode(word_embeds, memory, return_attention=True)
        return hidden, weights.reshape(*weights.shape[:2], *features.shape[2:])
