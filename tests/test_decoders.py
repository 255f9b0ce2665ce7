"""Decoders: hand-computed numpy references, fused-vs-step agreement (values and gradients), Transformer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers.decoders import (
    LSTM,
    RNN,
    AttentionLSTM,
    MultiHeadAttention,
    TransformerDecoder,
    dot_product_attention,
    rnn_backward,
    rnn_forward,
    rnn_step_backward,
    rnn_step_forward,
    sinusoidal_encoding,
    spatial_encoding,
    temporal_softmax_loss,
)


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def _grid(shape, low, high):
    """Deterministic, non-symmetric test values (the course's linspace style)."""
    return np.linspace(low, high, num=int(np.prod(shape))).reshape(shape)


def _t(array):
    return torch.tensor(array, dtype=torch.float64)


# ---------------------------------------------------------------- hand-computed single steps


def test_rnn_step_matches_numpy_formula():
    N, D, H = 3, 10, 4
    x, h = _grid((N, D), -0.4, 0.7), _grid((N, H), -0.2, 0.5)
    Wx, Wh, b = _grid((D, H), -0.1, 0.9), _grid((H, H), -0.3, 0.7), _grid((H,), -0.2, 0.4)
    expected = np.tanh(x @ Wx + h @ Wh + b)

    next_h, _ = rnn_step_forward(_t(x), _t(h), _t(Wx), _t(Wh), _t(b))
    np.testing.assert_allclose(next_h.numpy(), expected, rtol=1e-12)

    rnn = RNN(D, H).double()
    with torch.no_grad():
        rnn.Wx.copy_(_t(Wx)), rnn.Wh.copy_(_t(Wh)), rnn.b.copy_(_t(b))
    np.testing.assert_allclose(rnn.step_forward(_t(x), _t(h)).detach().numpy(), expected, rtol=1e-12)


def _numpy_lstm_step(x, h, c, Wx, Wh, b, extra=0.0):
    """The course's LSTM update, gates sliced in the order i, f, o, g."""
    a = x @ Wx + h @ Wh + b + extra
    H = h.shape[1]
    i, f, o = _sigmoid(a[:, :H]), _sigmoid(a[:, H : 2 * H]), _sigmoid(a[:, 2 * H : 3 * H])
    g = np.tanh(a[:, 3 * H :])
    next_c = f * c + i * g
    return o * np.tanh(next_c), next_c


def test_lstm_step_matches_numpy_formula():
    N, D, H = 3, 4, 5
    x, h, c = _grid((N, D), -0.4, 1.2), _grid((N, H), -0.3, 0.7), _grid((N, H), -0.4, 0.9)
    Wx, Wh, b = _grid((D, 4 * H), -2.1, 1.3), _grid((H, 4 * H), -0.7, 2.2), _grid((4 * H,), 0.3, 0.7)
    expected_h, expected_c = _numpy_lstm_step(x, h, c, Wx, Wh, b)

    lstm = LSTM(D, H).double()
    with torch.no_grad():
        lstm.Wx.copy_(_t(Wx)), lstm.Wh.copy_(_t(Wh)), lstm.b.copy_(_t(b))
    next_h, next_c = lstm.step_forward(_t(x), _t(h), _t(c))
    np.testing.assert_allclose(next_h.detach().numpy(), expected_h, rtol=1e-12)
    np.testing.assert_allclose(next_c.detach().numpy(), expected_c, rtol=1e-12)


def _numpy_attention(h, A):
    N, H = h.shape
    flat = A.reshape(N, H, -1)
    scores = np.einsum("nh,nhs->ns", h, flat) / math.sqrt(H)
    weights = np.exp(scores - scores.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    return np.einsum("nhs,ns->nh", flat, weights), weights.reshape(N, *A.shape[2:])


@pytest.mark.parametrize("spatial", [(4, 4), (2, 3)])
def test_dot_product_attention_matches_numpy(spatial):
    N, H = 2, 5
    h, A = _grid((N, H), -0.3, 0.7), _grid((N, H, *spatial), -0.4, 1.3)
    expected_attn, expected_weights = _numpy_attention(h, A)
    attn, weights = dot_product_attention(_t(h), _t(A))
    assert weights.shape == (N, *spatial)
    np.testing.assert_allclose(attn.numpy(), expected_attn, rtol=1e-12)
    np.testing.assert_allclose(weights.numpy(), expected_weights, rtol=1e-12)
    np.testing.assert_allclose(weights.sum(dim=(1, 2)).numpy(), 1.0)


def test_attention_lstm_step_matches_numpy():
    N, D, H = 2, 3, 4
    x, h, c = _grid((N, D), -0.4, 1.2), _grid((N, H), -0.3, 0.7), _grid((N, H), -0.4, 0.9)
    A = _grid((N, H, 2, 2), -0.5, 0.8)
    Wx, Wh, b = _grid((D, 4 * H), -2.1, 1.3), _grid((H, 4 * H), -0.7, 2.2), _grid((4 * H,), 0.3, 0.7)
    Wattn = _grid((H, 4 * H), 1.3, -1.2)
    attn_np, _ = _numpy_attention(h, A)
    expected_h, expected_c = _numpy_lstm_step(x, h, c, Wx, Wh, b, extra=attn_np @ Wattn)

    cell = AttentionLSTM(D, H).double()
    with torch.no_grad():
        cell.Wx.copy_(_t(Wx)), cell.Wh.copy_(_t(Wh)), cell.b.copy_(_t(b)), cell.Wattn.copy_(_t(Wattn))
    attn, _ = dot_product_attention(_t(h), _t(A))
    next_h, next_c = cell.step_forward(_t(x), _t(h), _t(c), attn)
    np.testing.assert_allclose(next_h.detach().numpy(), expected_h, rtol=1e-12)
    np.testing.assert_allclose(next_c.detach().numpy(), expected_c, rtol=1e-12)


def test_course_parameter_shapes():
    D, H = 6, 5
    assert [p.shape for p in RNN(D, H).parameters()] == [(D, H), (H, H), (H,)]
    lstm = LSTM(D, H)
    assert (lstm.Wx.shape, lstm.Wh.shape, lstm.b.shape) == ((D, 4 * H), (H, 4 * H), (4 * H,))
    attention = AttentionLSTM(D, H)
    assert attention.Wattn.shape == (H, 4 * H) and attention.Wx.shape == (D, 4 * H)


# ---------------------------------------------------------------- fused forward vs the step path


def _step_loop(cell, x, h0):
    """The course's per-time-step loop, written against step_forward."""
    h, c, states = h0, torch.zeros_like(h0), []
    for t in range(x.shape[1]):
        if isinstance(cell, RNN):
            h = cell.step_forward(x[:, t], h)
        else:
            h, c = cell.step_forward(x[:, t], h, c)
        states.append(h)
    return torch.stack(states, dim=1)


@pytest.mark.parametrize("cell_class", [RNN, LSTM])
def test_fused_forward_matches_step_loop_values_and_gradients(cell_class):
    torch.manual_seed(0)
    N, T, D, H = 3, 6, 5, 7
    cell = cell_class(D, H).double()
    with torch.no_grad():
        cell.b.normal_()  # a zero bias would hide a wrongly reordered gate block
    x = torch.randn(N, T, D, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(N, H, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(N, T, H, dtype=torch.float64)
    inputs = [x, h0, *cell.parameters()]

    fused = cell(x, h0)
    fused_grads = torch.autograd.grad((fused * upstream).sum(), inputs)
    looped = _step_loop(cell, x, h0)
    looped_grads = torch.autograd.grad((looped * upstream).sum(), inputs)

    torch.testing.assert_close(fused, looped, rtol=1e-10, atol=1e-12)
    for name, a, b in zip(["x", "h0", "Wx", "Wh", "b"], fused_grads, looped_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"gradient of {name} differs")
        assert a.abs().sum() > 0, name


def test_fused_lstm_float32_agrees_to_float_tolerance():
    torch.manual_seed(1)
    lstm = LSTM(8, 16)
    x, h0 = torch.randn(4, 10, 8), torch.randn(4, 16)
    torch.testing.assert_close(lstm(x, h0), _step_loop(lstm, x, h0), rtol=1e-5, atol=1e-5)


def test_rnn_forward_returns_course_tuple_and_uses_no_python_step():
    torch.manual_seed(2)
    x, h0 = torch.randn(2, 4, 3, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    Wx, Wh, b = (torch.randn(3, 5, dtype=torch.float64), torch.randn(5, 5, dtype=torch.float64),
                 torch.randn(5, dtype=torch.float64))
    h, cache = rnn_forward(x, h0, Wx, Wh, b)
    assert h.shape == (2, 4, 5) and len(cache) == 6
    expected, prev = [], h0
    for t in range(4):
        prev, _ = rnn_step_forward(x[:, t], prev, Wx, Wh, b)
        expected.append(prev)
    torch.testing.assert_close(h, torch.stack(expected, dim=1))


def test_rnn_backward_functions_match_autograd():
    torch.manual_seed(3)
    N, T, D, H = 2, 5, 3, 4
    tensors = [torch.randn(*shape, dtype=torch.float64, requires_grad=True)
               for shape in [(N, T, D), (N, H), (D, H), (H, H), (H,)]]
    x, h0, Wx, Wh, b = tensors
    h, cache = rnn_forward(x, h0, Wx, Wh, b)
    dh = torch.randn_like(h)
    expected = torch.autograd.grad((h * dh).sum(), tensors)
    for got, want in zip(rnn_backward(dh, cache), expected):
        torch.testing.assert_close(got, want)

    next_h, step_cache = rnn_step_forward(x[:, 0], h0, Wx, Wh, b)
    dnext = torch.randn_like(next_h)
    expected = torch.autograd.grad((next_h * dnext).sum(), [x, h0, Wx, Wh, b])
    expected = [expected[0][:, 0], *expected[1:]]
    for got, want in zip(rnn_step_backward(dnext, step_cache), expected):
        torch.testing.assert_close(got, want)


def test_attention_lstm_forward_matches_course_loop_values_and_gradients():
    torch.manual_seed(4)
    N, T, D, H = 2, 4, 3, 6
    cell = AttentionLSTM(D, H).double()
    with torch.no_grad():
        cell.b.normal_()
    x = torch.randn(N, T, D, dtype=torch.float64)
    A = torch.randn(N, H, 3, 2, dtype=torch.float64, requires_grad=True)
    params = [A, *cell.parameters()]

    out = cell(x, A)
    grads = torch.autograd.grad(out.pow(2).sum(), params)
    h = c = A.mean(dim=(2, 3))
    states = []
    for t in range(T):
        attn, _ = dot_product_attention(h, A)
        h, c = cell.step_forward(x[:, t], h, c, attn)
        states.append(h)
    reference = torch.stack(states, dim=1)
    reference_grads = torch.autograd.grad(reference.pow(2).sum(), params)
    torch.testing.assert_close(out, reference)
    for a, b in zip(grads, reference_grads):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------- loss


def test_temporal_softmax_loss_sums_time_averages_batch_and_ignores():
    torch.manual_seed(5)
    N, T, V = 3, 4, 6
    scores = torch.randn(N, T, V, dtype=torch.float64)
    targets = torch.randint(1, V, (N, T))
    targets[0, 2:] = 0
    targets[2, 3] = 0
    s = scores.numpy()
    log_probs = s - np.log(np.exp(s).sum(axis=2, keepdims=True))
    picked = np.take_along_axis(log_probs, targets.numpy()[..., None], axis=2)[..., 0]
    keep = targets.numpy() != 0
    assert temporal_softmax_loss(scores, targets, ignore_index=0).item() == pytest.approx(
        -(picked * keep).sum() / N, rel=1e-12
    )
    assert temporal_softmax_loss(scores, targets).item() == pytest.approx(-picked.sum() / N, rel=1e-12)


# ---------------------------------------------------------------- Transformer decoder


def test_sinusoidal_encodings_follow_the_formula():
    enc = sinusoidal_encoding(torch.arange(5), 8).numpy()
    pos, i = 3, 2  # channel pair 2 -> channels 4 (sin) and 5 (cos)
    angle = pos / 10000 ** (2 * i / 8)
    assert enc[pos, 4] == pytest.approx(math.sin(angle), abs=1e-6)
    assert enc[pos, 5] == pytest.approx(math.cos(angle), abs=1e-6)
    grid = spatial_encoding(2, 3, 8).numpy()
    rows = sinusoidal_encoding(torch.arange(2), 4).numpy()
    cols = sinusoidal_encoding(torch.arange(3), 4).numpy()
    np.testing.assert_allclose(grid[1 * 3 + 2], np.concatenate([rows[1], cols[2]]))


def _decoder(**overrides):
    torch.manual_seed(6)
    settings = dict(input_dim=12, wordvec_dim=10, d_model=16, num_heads=4, num_layers=2, dropout=0.0,
                    max_length=20)
    settings.update(overrides)
    return TransformerDecoder(**settings).eval()


def test_transformer_decoder_shapes_and_attention_maps():
    decoder = _decoder()
    words, features = torch.randn(3, 5, 10), torch.randn(3, 12, 2, 3)
    hidden, attention = decoder(words, features, return_attention=True)
    assert hidden.shape == (3, 5, 16) and attention.shape == (3, 5, 2, 3)
    torch.testing.assert_close(attention.sum(dim=(2, 3)), torch.ones(3, 5))
    torch.testing.assert_close(decoder(words, features), hidden)


def test_transformer_decoder_is_causal_and_sees_the_image():
    decoder = _decoder(num_layers=3, num_heads=2)
    words, features = torch.randn(2, 6, 10), torch.randn(2, 12, 3, 3)
    hidden = decoder(words, features)
    changed = words.clone()
    changed[:, 4] += 1.0
    hidden_changed = decoder(changed, features)
    torch.testing.assert_close(hidden_changed[:, :4], hidden[:, :4])
    assert not torch.allclose(hidden_changed[:, 4:], hidden[:, 4:])
    assert not torch.allclose(decoder(words, features.flip(2)), hidden)


def test_transformer_decoder_gradients_reach_every_parameter():
    decoder = _decoder().train()
    decoder(torch.randn(2, 4, 10), torch.randn(2, 12, 2, 2)).pow(2).sum().backward()
    silent = [name for name, p in decoder.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert silent == []


def test_transformer_decoder_rejects_bad_configuration():
    with pytest.raises(ValueError, match="d_model=10 must be divisible by num_heads=4"):
        _decoder(d_model=10)
    decoder = _decoder(max_length=4)
    with pytest.raises(ValueError, match="5 word positions exceed max_length=4"):
        decoder(torch.randn(1, 5, 10), torch.randn(1, 12, 2, 2))


def test_incremental_step_with_cache_matches_full_decode():
    decoder = _decoder(num_layers=3)
    words, features = torch.randn(2, 5, 10), torch.randn(2, 12, 2, 3)
    memory = decoder.encode_memory(features)
    hidden, weights = decoder.decode(words, memory, return_attention=True)
    memory_kv, past_kv = decoder.memory_keys_values(memory), decoder.empty_cache(2)
    for t in range(5):
        step_hidden, past_kv, step_weights = decoder.step(words[:, t], memory_kv, past_kv)
        torch.testing.assert_close(step_hidden, hidden[:, t], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(step_weights, weights[:, t], rtol=1e-5, atol=1e-6)
    assert past_kv[0][0].shape == (2, 4, 5, 4)
    with pytest.raises(ValueError, match="21 word positions exceed max_length=20"):
        full_cache = [(torch.zeros(2, 4, 20, 4),) * 2 for _ in past_kv]
        decoder.step(words[:, 0], memory_kv, full_cache)


def test_attention_weights_path_matches_the_fused_kernel_and_a_manual_softmax():
    torch.manual_seed(7)
    attention = MultiHeadAttention(8, 2, dropout=0.0)
    query, source = torch.randn(3, 4, 8), torch.randn(3, 6, 8)
    keys, values = attention.keys_values(source)
    with_weights, weights = attention.attend(query, keys, values, need_weights=True)
    fused, no_weights = attention.attend(query, keys, values)
    assert no_weights is None
    torch.testing.assert_close(with_weights, fused, rtol=1e-5, atol=1e-6)
    q = attention.query(query).view(3, 4, 2, 4).transpose(1, 2)
    manual = torch.softmax(q @ keys.transpose(-2, -1) / 2.0, dim=-1).mean(dim=1)
    torch.testing.assert_close(weights, manual)
    with pytest.raises(ValueError, match="only returned for non-causal"):
        attention.attend(query, keys, values, causal=True, need_weights=True)


def test_label_smoothing_spreads_that_mass_uniformly_over_the_vocabulary():
    torch.manual_seed(0)
    N, T, V, smoothing = 3, 4, 6, 0.2
    scores = torch.randn(N, T, V, dtype=torch.float64)
    targets = torch.randint(1, V, (N, T))
    targets[0, 2:] = 0
    log_probs = scores.log_softmax(dim=2)
    per_step = -(1 - smoothing) * log_probs.gather(2, targets.unsqueeze(2)).squeeze(2)
    per_step = per_step - smoothing / V * log_probs.sum(dim=2)
    expected = (per_step * (targets != 0)).sum() / N
    loss = temporal_softmax_loss(scores, targets, ignore_index=0, label_smoothing=smoothing)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
