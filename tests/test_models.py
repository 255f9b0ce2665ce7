"""Captioning models: construction errors, images vs features, gradients, GloVe, greedy and beam search."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from helpers.decoders import dot_product_attention
from helpers.models import CaptioningRNN, CaptioningTransformer, beam_search

NULL, START, END = 0, 1, 2
WORDS = ["<NULL>", "<START>", "<END>", "<UNK>"] + "a dog cat runs on grass the red ball".split()
WORD_TO_IDX = {word: index for index, word in enumerate(WORDS)}
KINDS = ["rnn", "lstm", "attn", "transformer"]
CHANNELS = 400  # regnet_x_400mf


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread runs them fastest, and many times faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(kind, word_to_idx=WORD_TO_IDX, seed=0, **overrides):
    """A small model on the small backbone with random weights (nothing to download)."""
    torch.manual_seed(seed)
    settings = dict(wordvec_dim=16, hidden_dim=32, image_encoder_pretrained=False, backbone="regnet_x_400mf")
    settings.update(overrides)
    if kind == "transformer":
        settings.setdefault("dropout", 0.0)
        return CaptioningTransformer(word_to_idx, **settings)
    return CaptioningRNN(word_to_idx, cell_type=kind, **settings)


def random_features(n, seed=1, size=(2, 2)):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, CHANNELS, *size, generator=generator)


def write_glove(path, vectors):
    """A file in GloVe's text format: token, then the floats, separated by single spaces."""
    lines = [word + " " + " ".join(f"{v:.6f}" for v in vector) for word, vector in vectors.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def sequence_log_probs(model, features, tokens):
    """Log-probability of each decoded sequence (words up to and including <END>), by teacher forcing."""
    captions_in = torch.cat([torch.full((len(tokens), 1), START), tokens[:, :-1]], dim=1)
    with torch.no_grad():
        log_probs = model.scores(features, captions_in).log_softmax(dim=-1)
    picked = log_probs.gather(2, tokens.unsqueeze(2)).squeeze(2)
    is_end = tokens == END
    after_end = (is_end.cumsum(dim=1) - is_end.long()) > 0
    return picked.masked_fill(after_end, 0.0).sum(dim=1), (~after_end).sum(dim=1)


# ---------------------------------------------------------------- construction


def test_input_dim_comes_from_the_backbone_and_contradictions_are_explained():
    assert make_model("rnn").input_dim == CHANNELS
    assert make_model("lstm", input_dim=CHANNELS).input_dim == CHANNELS
    message = "input_dim=512 does not match regnet_x_400mf, which outputs 400 channels; pass input_dim=400"
    with pytest.raises(ValueError, match=message):
        make_model("lstm", input_dim=512)
    with pytest.raises(ValueError, match="input_dim=512 does not match"):
        make_model("transformer", input_dim=512)


def test_cell_types_alias_and_unknown_name():
    assert make_model("attention").cell_type == "attn"
    assert make_model("transformer").cell_type == "transformer"
    assert make_model("vanilla_rnn").cell_type == "rnn"
    choices = r"\['attention', 'attention_lstm', 'attn', 'lstm', 'rnn', 'vanilla_rnn'\]"
    with pytest.raises(ValueError, match=rf"unknown cell_type 'gru'; choose one of {choices}"):
        make_model("gru")


def test_sampling_needs_start_and_end_in_the_vocabulary():
    without_end = make_model("rnn", word_to_idx={"<NULL>": 0, "<START>": 1, "dog": 2})
    with pytest.raises(ValueError, match=r"lacks \['<END>'\], which sampling needs"):
        without_end.sample(random_features(1))
    model = make_model("rnn")
    assert model.idx_to_word[5] == "dog" and model.word_to_idx["dog"] == 5
    assert model.ignore_index == NULL


# ---------------------------------------------------------------- forward


CAPTIONS = torch.tensor([[START, 4, 5, 7, END, NULL, NULL], [START, 10, 11, 12, 8, 9, END]])


@pytest.mark.parametrize("kind", ["rnn", "attn", "transformer"])
def test_images_and_their_features_give_the_same_loss(kind):
    model = make_model(kind).eval()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        from_images = model(images, CAPTIONS)
        from_floats = model(images.float() / 255.0, CAPTIONS)
        features = model.encode(images)
        from_features = model(features, CAPTIONS)
        from_half_features = model(features.half(), CAPTIONS)
    assert features.shape == (2, CHANNELS, 2, 2)
    torch.testing.assert_close(from_images, from_features)
    torch.testing.assert_close(from_floats, from_features, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(from_half_features, from_features, rtol=1e-2, atol=1e-2)


def test_inputs_that_are_neither_images_nor_features_are_rejected():
    model = make_model("lstm")
    with pytest.raises(
        ValueError,
        match=r"expected images \(N, 3, H, W\) or regnet_x_400mf features "
        r"\(N, 400, H', W'\); got shape \(2, 512, 2, 2\)",
    ):
        model(torch.randn(2, 512, 2, 2), CAPTIONS)


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_loss_is_cross_entropy_of_the_shifted_captions_ignoring_null(kind):
    model = make_model(kind).eval()
    features = random_features(2)
    with torch.no_grad():
        scores = model.scores(features, CAPTIONS[:, :-1]).double().numpy()
        loss = model(features, CAPTIONS).item()
    targets = CAPTIONS[:, 1:].numpy()
    log_probs = scores - np.log(np.exp(scores).sum(axis=2, keepdims=True))
    picked = np.take_along_axis(log_probs, targets[..., None], axis=2)[..., 0]
    assert loss == pytest.approx(-(picked * (targets != NULL)).sum() / 2, rel=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_step_interface_reproduces_teacher_forcing(kind):
    """Sampling's per-step path and training's fused/parallel path are the same model."""
    model = make_model(kind).eval()
    features = random_features(2)
    captions_in = CAPTIONS[:, :-1]
    with torch.no_grad():
        expected = model.scores(features, captions_in).log_softmax(dim=-1)
        state = model.init_state(features)
        for t in range(captions_in.shape[1]):
            log_probs, state, attention = model.step(state, captions_in[:, t])
            torch.testing.assert_close(log_probs, expected[:, t], rtol=1e-4, atol=1e-5)
            assert (attention is None) == (kind in ("rnn", "lstm"))


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_every_decoder_parameter(kind):
    model = make_model(kind)
    model(random_features(2), CAPTIONS).backward()
    decoder_params = {n: p for n, p in model.named_parameters() if not n.startswith("image_encoder.")}
    assert "word_embed.W_embed" in decoder_params
    silent = [n for n, p in decoder_params.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert silent == []


# ---------------------------------------------------------------- GloVe and the original usage


def test_original_usage_with_glove_runs_unchanged(tmp_path):
    rng = np.random.default_rng(0)
    glove = {word: rng.normal(size=300) for word in ["a", "dog", "runs", "the", "zebra"]}
    glove_path = write_glove(tmp_path / "glove.small.300d.txt", glove)
    word_to_idx = WORD_TO_IDX
    model = CaptioningRNN(
        word_to_idx=word_to_idx,
        wordvec_dim=300,
        hidden_dim=512,
        cell_type="lstm",
        backbone="resnet50",
        glove_path=str(glove_path),
        freeze_embeddings=False,
        image_encoder_pretrained=False,
    )
    assert model.input_dim == 2048 and model.cell_type == "lstm"
    W = model.word_embed.W_embed.detach().numpy()
    assert W.shape == (len(WORDS), 300)
    for word in ["a", "dog", "runs", "the"]:
        np.testing.assert_allclose(W[WORD_TO_IDX[word]], glove[word], atol=1e-6)
    loss = model(torch.randn(2, 2048, 1, 1), CAPTIONS)
    loss.backward()
    assert model.word_embed.W_embed.grad.abs().sum() > 0
    assert model.sample(torch.randn(2, 2048, 1, 1), max_length=4).shape == (2, 4)


def test_glove_dimension_must_match_wordvec_dim(tmp_path):
    glove_path = write_glove(tmp_path / "glove.20d.txt", {"dog": np.ones(20), "cat": np.zeros(20)})
    with pytest.raises(ValueError) as error:
        make_model("lstm", wordvec_dim=16, glove_path=str(glove_path))
    assert "wordvec_dim=16" in str(error.value) and "20" in str(error.value)


def test_a_given_matrix_starts_the_word_vectors_instead_of_a_glove_file(tmp_path):
    vectors = torch.randn(len(WORDS), 16)
    for kind in ("lstm", "transformer"):
        assert torch.equal(make_model(kind, pretrained_embeddings=vectors).word_embed.W_embed, vectors)
    glove_path = write_glove(tmp_path / "glove.16d.txt", {"dog": np.ones(16)})
    with pytest.raises(ValueError, match="glove_path or pretrained_embeddings"):
        make_model("lstm", glove_path=str(glove_path), pretrained_embeddings=vectors)


def test_frozen_embeddings_get_no_gradient_and_do_not_move(tmp_path):
    glove_path = write_glove(tmp_path / "glove.16d.txt", {"dog": np.full(16, 0.5), "cat": np.full(16, -0.5)})
    model = make_model("lstm", glove_path=str(glove_path), freeze_embeddings=True)
    before = model.word_embed.W_embed.detach().clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(random_features(2), CAPTIONS).backward()
    optimizer.step()
    assert model.word_embed.W_embed.grad is None
    torch.testing.assert_close(model.word_embed.W_embed.detach(), before)
    assert model.output_proj.weight.grad.abs().sum() > 0
    np.testing.assert_allclose(before[WORD_TO_IDX["dog"]].numpy(), 0.5)


# ---------------------------------------------------------------- sampling


def course_greedy(model, features, max_length):
    """Greedy decoding written like the course notebook, independently of the models' step()."""
    N = features.shape[0]
    captions = torch.full((N, max_length), NULL)
    done = torch.zeros(N, dtype=torch.bool)
    word = torch.full((N,), START)
    with torch.no_grad():
        if model.cell_type == "transformer":
            prefix = word.unsqueeze(1)
            for t in range(max_length):
                word = model.scores(features, prefix)[:, -1].argmax(dim=1)
                captions[:, t] = word.masked_fill(done, NULL)
                done |= word == END
                prefix = torch.cat([prefix, word.unsqueeze(1)], dim=1)
            return captions
        if model.cell_type == "attn":
            A = model.feat_proj(features)
            h = c = A.mean(dim=(2, 3))
        else:
            h = model.feat_proj(features.mean(dim=(2, 3)))
            c = torch.zeros_like(h)
        for t in range(max_length):
            x = model.word_embed(word)
            if model.cell_type == "rnn":
                h = model.decoder.step_forward(x, h)
            elif model.cell_type == "lstm":
                h, c = model.decoder.step_forward(x, h, c)
            else:
                attn, _ = dot_product_attention(h, A)
                h, c = model.decoder.step_forward(x, h, c, attn)
            word = model.output_proj(h).argmax(dim=1)
            captions[:, t] = word.masked_fill(done, NULL)
            done |= word == END
    return captions


@pytest.mark.parametrize("kind", KINDS)
def test_beam_size_one_is_exactly_greedy(kind):
    model = make_model(kind, seed=3)
    with torch.no_grad():
        model.output_proj.bias[END] += 1.5  # make some captions end early, to exercise the padding
    features = random_features(6, seed=4)
    out = model.sample(features, max_length=7, beam_size=1)
    captions = out[0] if isinstance(out, tuple) else out
    assert captions.dtype == torch.long and captions.shape == (6, 7)
    assert torch.equal(captions, course_greedy(model.eval(), features, 7))
    assert (captions == END).any(), "the test should cover captions that end early"


@pytest.mark.parametrize("kind", ["attn", "transformer"])
def test_attention_models_return_maps_that_stop_after_end(kind):
    model = make_model(kind, seed=5)
    with torch.no_grad():
        model.output_proj.bias[END] += 2.0
    features = random_features(5, seed=6, size=(2, 3))
    for beam_size in (1, 3):
        captions, attention = model.sample(features, max_length=6, beam_size=beam_size)
        assert attention.shape == (5, 6, 2, 3) and attention.device.type == "cpu"
        is_end = captions == END
        live = ~((is_end.cumsum(dim=1) - is_end.long()) > 0)
        assert (captions[~live] == NULL).all() and (~live).any()
        sums = attention.sum(dim=(2, 3))
        torch.testing.assert_close(sums[live], torch.ones(int(live.sum())))
        assert (sums[~live] == 0).all()


def test_sample_restores_training_mode_and_checks_arguments():
    model = make_model("transformer", max_length=8).train()
    model.image_encoder.eval()  # e.g. a frozen backbone whose batch norm must stay in eval
    model.sample(random_features(1), max_length=5)
    assert model.training and model.decoder.training and not model.image_encoder.cnn.training
    with pytest.raises(ValueError, match="max_length=9 exceeds the model's max_length=8"):
        model.sample(random_features(1), max_length=9)
    with pytest.raises(ValueError, match="beam_size must be at least 1, got 0"):
        model.sample(random_features(1), max_length=5, beam_size=0)


TINY_VOCAB = {"<NULL>": 0, "<START>": 1, "<END>": 2, "<UNK>": 3, "yes": 4, "no": 5}


def all_sequences(vocab_size, length):
    """Every token sequence a decoder can return: anything, but only <NULL> after the first <END>."""
    for seq in itertools.product(range(vocab_size), repeat=length):
        if END in seq and any(token != NULL for token in seq[seq.index(END) + 1 :]):
            continue
        yield seq


@pytest.mark.parametrize("kind", ["lstm", "attn", "transformer"])
@pytest.mark.parametrize("alpha", [0.0, 0.7])
def test_full_width_beam_search_finds_the_exhaustive_optimum(kind, alpha):
    """With a beam as wide as the whole search space, beam search must return the true best caption."""
    model = make_model(kind, word_to_idx=TINY_VOCAB, seed=7).eval()
    with torch.no_grad():
        model.output_proj.bias[END] += 1.0
    length, N = 3, 3
    features = random_features(N, seed=8)
    candidates = torch.tensor(list(all_sequences(len(TINY_VOCAB), length)))
    best = []
    for n in range(N):
        log_prob, lengths = sequence_log_probs(
            model, features[n : n + 1].expand(len(candidates), -1, -1, -1), candidates
        )
        best.append(candidates[(log_prob / lengths.double() ** alpha).argmax()])
    tokens, _ = beam_search(model, features, max_length=length, beam_size=len(candidates), alpha=alpha)
    assert torch.equal(tokens, torch.stack(best))


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_beam_search_scores_at_least_as_well_as_greedy(kind):
    model = make_model(kind, seed=9).eval()
    features = random_features(8, seed=10)
    greedy = model.sample(features, max_length=6)
    beam = model.sample(features, max_length=6, beam_size=5, alpha=0.0)
    if kind == "transformer":
        greedy, beam = greedy[0], beam[0]
    greedy_score, _ = sequence_log_probs(model, features, greedy)
    beam_score, _ = sequence_log_probs(model, features, beam)
    assert (beam_score >= greedy_score - 1e-5).all()
    assert (beam_score > greedy_score + 1e-3).any(), "beam search should improve on greedy somewhere"


# ---------------------------------------------------------------- learning


MEMORISE = torch.tensor(
    [
        [START, 4, 5, 7, 8, 9, END],
        [START, 10, 6, 7, END, NULL, NULL],
        [START, 4, 11, 12, END, NULL, NULL],
        [START, 10, 5, 8, 10, 9, END],
    ]
)


@pytest.mark.parametrize("kind", KINDS)
def test_each_model_memorises_four_captions(kind):
    model = make_model(kind, seed=11, hidden_dim=64)
    features = random_features(4, seed=12)
    learning_rate = 3e-3 if kind == "transformer" else 1e-2
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    for _ in range(300):
        optimizer.zero_grad()
        loss = model(features, MEMORISE)
        loss.backward()
        optimizer.step()
        if loss.item() < 0.02:
            break
    out = model.sample(features, max_length=6)
    captions = out[0] if isinstance(out, tuple) else out
    assert torch.equal(captions, MEMORISE[:, 1:]), f"loss {loss.item():.3f}"
    beam = model.sample(features, max_length=6, beam_size=3)
    assert torch.equal(beam[0] if isinstance(beam, tuple) else beam, MEMORISE[:, 1:])


def test_a_pretrained_model_trains_from_features_offline(torch_home):
    """Feature-store training must not need the CNN's weights (Kaggle with Internet off)."""
    from helpers.models import CaptioningRNN

    word_to_idx = {"<NULL>": 0, "<START>": 1, "<END>": 2, "<UNK>": 3, "red": 4}
    model = CaptioningRNN(
        word_to_idx, wordvec_dim=8, hidden_dim=8, cell_type="lstm", backbone="regnet_x_400mf"
    )
    loss = model(torch.randn(2, 400, 2, 2), torch.tensor([[1, 4, 2], [1, 4, 2]]))
    loss.backward()
    assert torch.isfinite(loss) and model.image_encoder.weights_pending


# ---------------------------------------------------------------- decoding options and n-best


def test_n_best_lists_the_beam_finalists_best_first_with_the_best_as_sample():
    model = make_model("lstm", seed=21).eval()
    features = random_features(4, seed=22)
    tokens, scores = model.sample_n_best(features, 3, max_length=6, beam_size=4, alpha=0.7)
    assert tokens.shape == (4, 3, 6) and scores.shape == (4, 3)
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    assert torch.equal(tokens[:, 0], model.sample(features, max_length=6, beam_size=4, alpha=0.7))
    log_prob, lengths = sequence_log_probs(model, features.repeat_interleave(3, 0), tokens.flatten(0, 1))
    expected = (log_prob / lengths.double() ** 0.7).view(4, 3)
    assert torch.allclose(scores.double(), expected, atol=1e-4)
    assert len({tuple(row) for row in tokens[0].tolist()}) == 3, "the n best are distinct captions"
    with pytest.raises(ValueError, match="n_best must be between 1 and beam_size=2"):
        model.sample_n_best(features, 3, beam_size=2)


@pytest.mark.parametrize("kind", ["lstm", "attn", "transformer"])
def test_blocked_ngrams_never_repeat_and_unk_is_never_emitted(kind):
    model = make_model(kind, seed=23).eval()
    with torch.no_grad():  # a decoder that loves <UNK>, "a" and "dog" and never ends
        model.output_proj.bias[WORD_TO_IDX["<UNK>"]] += 8.0
        model.output_proj.bias[WORD_TO_IDX["a"]] += 6.0
        model.output_proj.bias[WORD_TO_IDX["dog"]] += 6.0
        model.output_proj.bias[END] -= 20.0
    features = random_features(3, seed=24)
    for beam in (1, 3):
        plain = model.sample(features, max_length=10, beam_size=beam)
        plain = plain[0] if isinstance(plain, tuple) else plain
        assert (plain == WORD_TO_IDX["<UNK>"]).any()
        out = model.sample(features, max_length=10, beam_size=beam, no_repeat_ngram_size=2, mask_unk=True)
        tokens = out[0] if isinstance(out, tuple) else out
        assert not (tokens == WORD_TO_IDX["<UNK>"]).any()
        for row in tokens.tolist():
            bigrams = list(zip(row, row[1:]))
            assert len(bigrams) == len(set(bigrams)), row


def test_a_blocked_unigram_appears_at_most_once():
    model = make_model("rnn", seed=25).eval()
    with torch.no_grad():
        model.output_proj.bias[END] -= 20.0
    tokens = model.sample(random_features(2, seed=26), max_length=8, beam_size=2, no_repeat_ngram_size=1)
    for row in tokens.tolist():
        assert len(row) == len(set(row)), row


def test_dropout_acts_on_the_decoder_output_in_training_only():
    model = make_model("lstm", seed=27, dropout=0.5)
    features, captions = random_features(2, seed=28), MEMORISE[:2]
    assert model(features, captions).item() != model(features, captions).item()
    model.eval()
    assert model(features, captions).item() == model(features, captions).item()
    assert make_model("lstm").dropout.p == 0.0, "the course's CaptioningRNN has no dropout"


def test_the_attention_penalty_is_added_for_the_attention_lstm():
    from helpers.decoders import doubly_stochastic_penalty, temporal_softmax_loss

    model = make_model("attn", seed=29).eval()
    features, captions = random_features(2, seed=30), MEMORISE[:2]
    scores, attention = model.scores(model.features_from(features), captions[:, :-1], return_attention=True)
    mask = captions[:, 1:] != NULL
    expected_penalty = sum(
        ((1 - attention[n][mask[n]].sum(dim=0)) ** 2).sum() for n in range(2)
    ) / 2
    penalty = doubly_stochastic_penalty(attention, mask)
    assert penalty.item() == pytest.approx(expected_penalty.item(), rel=1e-5)
    loss = temporal_softmax_loss(scores, captions[:, 1:], ignore_index=NULL, label_smoothing=0.1)
    combined = model(features, captions, label_smoothing=0.1, alpha_c=2.0)
    assert combined.item() == pytest.approx((loss + 2.0 * expected_penalty).item(), rel=1e-5)


@pytest.mark.parametrize(("name", "dropout"), [("LSTM", 0.5), ("Attention_LSTM", 0.5), ("Transformer", 0.1)])
def test_build_model_gives_each_decoder_the_configs_dropout(name, dropout):
    from helpers.config import ConfigError, load_config
    from helpers.models import build_model

    default = ["model.dropout=null"]  # configs/demo.yaml sets 0
    assert load_config([name, "demo"], default).model.dropout == dropout, "null: the decoder's own default"
    for chosen, overrides in ((dropout, default), (0.2, ["model.dropout=0.2"])):
        model = build_model(load_config([name, "demo"], overrides), WORD_TO_IDX, word_vectors=None)
        layers = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
        assert layers and set(layers) == {chosen}
    with pytest.raises(ConfigError, match=r"training.label_smoothing=1.0 must be in \[0, 1\)"):
        load_config([name, "demo"], ["training.label_smoothing=1.0"])
