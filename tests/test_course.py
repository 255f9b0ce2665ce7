"""The classic course module's notebook cells, run against `helpers` as the course wrote them.

Each test is one sanity-check cell of the course notebook (rnn_lstm_captioning.ipynb): the same fixed
inputs (``torch.linspace`` ramps, seeded random tensors), the same calls and the expected values the
course prints next to them. Only the import changes (``from helpers import *`` instead of
``from rnn_lstm_captioning import *``) and the CNN starts from random weights
(``image_encoder_pretrained=False``), which the cells overwrite anyway.
"""

from __future__ import annotations

import pytest
import torch

from helpers import *  # noqa: F403 - the course notebook star-imports its module the same way
from helpers import (
    LSTM,
    RNN,
    AttentionLSTM,
    CaptioningRNN,
    WordEmbedding,
    dot_product_attention,
    hello_rnn_lstm_captioning,
    rnn_backward,
    rnn_forward,
    rnn_step_forward,
    temporal_softmax_loss,
)

to_double = {"dtype": torch.float64, "device": "cpu"}
to_float = {"dtype": torch.float32, "device": "cpu"}
NULL_index = 0
IMAGE_SHAPE = (112, 112)
COURSE_VOCAB = {"<NULL>": 0, "cat": 2, "dog": 3}  # the course's sanity-check vocabulary, as it is
# measured with torchvision (FACTS.md; tests/test_backbones.py)
BACKBONE_CHANNELS = {"regnet_x_400mf": 400, "resnet50": 2048, "convnext_tiny": 768, "swin_t": 768}


def rel_error(x, y, eps=1e-10):
    """The course's relative error: largest absolute difference over the largest magnitude sum."""
    return ((x - y).abs().max() / (x.abs() + y.abs()).clamp(min=eps).max()).item()


def test_the_course_names_come_with_a_star_import_and_the_greeting(capsys):
    course_names = [
        "hello_rnn_lstm_captioning", "ImageEncoder", "rnn_step_forward", "rnn_step_backward",
        "rnn_forward", "rnn_backward", "RNN", "WordEmbedding", "temporal_softmax_loss", "CaptioningRNN",
        "LSTM", "dot_product_attention", "AttentionLSTM",
    ]
    assert [name for name in course_names if name not in globals()] == []
    hello_rnn_lstm_captioning()
    assert capsys.readouterr().out == "Hello from rnn_lstm_captioning.py!\n"


def test_rnn_step_forward():
    N, D, H = 3, 10, 4
    x = torch.linspace(-0.4, 0.7, steps=N * D, **to_double).view(N, D)
    prev_h = torch.linspace(-0.2, 0.5, steps=N * H, **to_double).view(N, H)
    Wx = torch.linspace(-0.1, 0.9, steps=D * H, **to_double).view(D, H)
    Wh = torch.linspace(-0.3, 0.7, steps=H * H, **to_double).view(H, H)
    b = torch.linspace(-0.2, 0.4, steps=H, **to_double)

    next_h, _ = rnn_step_forward(x, prev_h, Wx, Wh, b)
    expected_next_h = torch.tensor(
        [
            [-0.58172089, -0.50182032, -0.41232771, -0.31410098],
            [0.66854692, 0.79562378, 0.87755553, 0.92795967],
            [0.97934501, 0.99144213, 0.99646691, 0.99854353],
        ],
        **to_double,
    )
    assert rel_error(expected_next_h, next_h) < 1e-8


def test_rnn_forward():
    N, T, D, H = 2, 3, 4, 5
    x = torch.linspace(-0.1, 0.3, steps=N * T * D, **to_double).view(N, T, D)
    h0 = torch.linspace(-0.3, 0.1, steps=N * H, **to_double).view(N, H)
    Wx = torch.linspace(-0.2, 0.4, steps=D * H, **to_double).view(D, H)
    Wh = torch.linspace(-0.4, 0.1, steps=H * H, **to_double).view(H, H)
    b = torch.linspace(-0.7, 0.1, steps=H, **to_double)

    h, _ = rnn_forward(x, h0, Wx, Wh, b)
    expected_h = torch.tensor(
        [
            [
                [-0.42070749, -0.27279261, -0.11074945, 0.05740409, 0.22236251],
                [-0.39525808, -0.22554661, -0.0409454, 0.14649412, 0.32397316],
                [-0.42305111, -0.24223728, -0.04287027, 0.15997045, 0.35014525],
            ],
            [
                [-0.55857474, -0.39065825, -0.19198182, 0.02378408, 0.23735671],
                [-0.27150199, -0.07088804, 0.13562939, 0.33099728, 0.50158768],
                [-0.51014825, -0.30524429, -0.06755202, 0.17806392, 0.40333043],
            ],
        ],
        **to_double,
    )
    assert rel_error(expected_h, h) < 1e-8


def test_rnn_backward_agrees_with_autograd():
    torch.manual_seed(0)
    N, D, T, H = 2, 3, 10, 5
    x = torch.randn(N, T, D, **to_double, requires_grad=True)
    h0 = torch.randn(N, H, **to_double, requires_grad=True)
    Wx = torch.randn(D, H, **to_double, requires_grad=True)
    Wh = torch.randn(H, H, **to_double, requires_grad=True)
    b = torch.randn(H, **to_double, requires_grad=True)

    out, cache = rnn_forward(x, h0, Wx, Wh, b)
    dout = torch.randn(*out.shape, **to_double)
    with torch.no_grad():
        manual = rnn_backward(dout, cache)
    out.backward(dout)
    for automatic, by_hand in zip((x.grad, h0.grad, Wx.grad, Wh.grad, b.grad), manual, strict=True):
        assert rel_error(automatic, by_hand) < 1e-8


def test_rnn_module_equals_rnn_forward():
    N, D, T, H = 2, 3, 10, 5
    x = torch.randn(N, T, D, **to_double)
    h0 = torch.randn(N, H, **to_double)
    rnn_module = RNN(D, H).to(**to_double)
    hn1 = rnn_module(x, h0)
    hn2, _ = rnn_forward(x, h0, rnn_module.Wx, rnn_module.Wh, rnn_module.b)
    assert rel_error(hn1, hn2) < 1e-8


def test_word_embedding():
    V, D = 5, 3
    x = torch.tensor([[0, 3, 1, 2], [2, 1, 0, 3]]).long()
    W = torch.linspace(0, 1, steps=V * D, **to_double).view(V, D)
    model_emb = WordEmbedding(V, D).to(**to_double)
    model_emb.W_embed.data.copy_(W)
    out = model_emb(x)
    expected_out = torch.tensor(
        [
            [
                [0.0, 0.07142857, 0.14285714],
                [0.64285714, 0.71428571, 0.78571429],
                [0.21428571, 0.28571429, 0.35714286],
                [0.42857143, 0.5, 0.57142857],
            ],
            [
                [0.42857143, 0.5, 0.57142857],
                [0.21428571, 0.28571429, 0.35714286],
                [0.0, 0.07142857, 0.14285714],
                [0.64285714, 0.71428571, 0.78571429],
            ],
        ],
        **to_double,
    )
    assert rel_error(expected_out, out) < 1e-8


@pytest.mark.parametrize("N, T, V, p", [(1000, 1, 10, 1.0), (1000, 10, 10, 1.0), (5000, 10, 10, 0.1)])
def test_temporal_softmax_loss_of_near_uniform_scores(N, T, V, p):
    """The course's check_loss: scores near 0 cost log(V) per counted target (the course prints
    "about 2.00-2.11", "20.6-21.0", "2.00-2.11"); targets equal to NULL_index cost nothing."""
    torch.manual_seed(0)
    x = 0.001 * torch.randn(N, T, V)
    y = torch.randint(V, size=(N, T))
    mask = torch.rand(N, T)
    y[mask > p] = 0
    counted_per_caption = (y != NULL_index).sum().item() / N
    expected = counted_per_caption * torch.log(torch.tensor(float(V))).item()
    assert temporal_softmax_loss(x, y, NULL_index).item() == pytest.approx(expected, rel=1e-3)


def test_lstm_step_forward():
    N, D, H = 3, 4, 5
    x = torch.linspace(-0.4, 1.2, steps=N * D, **to_double).view(N, D)
    prev_h = torch.linspace(-0.3, 0.7, steps=N * H, **to_double).view(N, H)
    prev_c = torch.linspace(-0.4, 0.9, steps=N * H, **to_double).view(N, H)
    Wx = torch.linspace(-2.1, 1.3, steps=4 * D * H, **to_double).view(D, 4 * H)
    Wh = torch.linspace(-0.7, 2.2, steps=4 * H * H, **to_double).view(H, 4 * H)
    b = torch.linspace(0.3, 0.7, steps=4 * H, **to_double)
    model = LSTM(D, H).to(**to_double)
    model.Wx.data.copy_(Wx)
    model.Wh.data.copy_(Wh)
    model.b.data.copy_(b)

    next_h, next_c = model.step_forward(x, prev_h, prev_c)
    expected_next_h = torch.tensor(
        [
            [0.24635157, 0.28610883, 0.32240467, 0.35525807, 0.38474904],
            [0.49223563, 0.55611431, 0.61507696, 0.66844003, 0.7159181],
            [0.56735664, 0.66310127, 0.74419266, 0.80889665, 0.858299],
        ],
        **to_double,
    )
    expected_next_c = torch.tensor(
        [
            [0.32986176, 0.39145139, 0.451556, 0.51014116, 0.56717407],
            [0.66382255, 0.76674007, 0.87195994, 0.97902709, 1.08751345],
            [0.74192008, 0.90592151, 1.07717006, 1.25120233, 1.42395676],
        ],
        **to_double,
    )
    assert rel_error(expected_next_h, next_h) < 1e-8
    assert rel_error(expected_next_c, next_c) < 1e-8


def test_lstm_forward():
    N, D, H, T = 2, 5, 4, 3
    x = torch.linspace(-0.4, 0.6, steps=N * T * D, **to_double).view(N, T, D)
    h0 = torch.linspace(-0.4, 0.8, steps=N * H, **to_double).view(N, H)
    Wx = torch.linspace(-0.2, 0.9, steps=4 * D * H, **to_double).view(D, 4 * H)
    Wh = torch.linspace(-0.3, 0.6, steps=4 * H * H, **to_double).view(H, 4 * H)
    b = torch.linspace(0.2, 0.7, steps=4 * H, **to_double)
    model = LSTM(D, H).to(**to_double)
    model.Wx.data.copy_(Wx)
    model.Wh.data.copy_(Wh)
    model.b.data.copy_(b)

    hn = model(x, h0)
    expected_hn = torch.tensor(
        [
            [
                [0.01764008, 0.01823233, 0.01882671, 0.0194232],
                [0.11287491, 0.12146228, 0.13018446, 0.13902939],
                [0.31358768, 0.33338627, 0.35304453, 0.37250975],
            ],
            [
                [0.45767879, 0.4761092, 0.4936887, 0.51041945],
                [0.6704845, 0.69350089, 0.71486014, 0.7346449],
                [0.81733511, 0.83677871, 0.85403753, 0.86935314],
            ],
        ],
        **to_double,
    )
    assert rel_error(expected_hn, hn) < 1e-8


def test_dot_product_attention():
    N, H = 2, 5
    D_a = 4
    prev_h = torch.linspace(-0.4, 0.6, steps=N * H, **to_double).view(N, H)
    A = torch.linspace(-0.4, 1.8, steps=N * H * D_a * D_a, **to_double).view(N, H, D_a, D_a)

    attn, attn_weights = dot_product_attention(prev_h, A)
    expected_attn = torch.tensor(
        [
            [-0.29784344, -0.07645979, 0.14492386, 0.36630751, 0.58769115],
            [0.81412643, 1.03551008, 1.25689373, 1.47827738, 1.69966103],
        ],
        **to_double,
    )
    expected_attn_weights = torch.tensor(
        [
            [
                [0.06511126, 0.06475411, 0.06439892, 0.06404568],
                [0.06369438, 0.06334500, 0.06299754, 0.06265198],
                [0.06230832, 0.06196655, 0.06162665, 0.06128861],
                [0.06095243, 0.06061809, 0.06028559, 0.05995491],
            ],
            [
                [0.05717142, 0.05784357, 0.05852362, 0.05921167],
                [0.05990781, 0.06061213, 0.06132473, 0.06204571],
                [0.06277517, 0.06351320, 0.06425991, 0.06501540],
                [0.06577977, 0.06655312, 0.06733557, 0.06812722],
            ],
        ],
        **to_double,
    )
    assert rel_error(expected_attn, attn) < 1e-8
    assert rel_error(expected_attn_weights, attn_weights) < 1e-7  # the course prints 8 decimals of ~0.06


def _attention_lstm(D, H, Wx, Wh, b, Wattn):
    model = AttentionLSTM(D, H).to(**to_double)
    model.Wx.data.copy_(Wx)
    model.Wh.data.copy_(Wh)
    model.b.data.copy_(b)
    model.Wattn.data.copy_(Wattn)
    return model


def test_attention_lstm_step_forward():
    N, D, H = 3, 4, 5
    x = torch.linspace(-0.4, 1.2, steps=N * D, **to_double).view(N, D)
    prev_h = torch.linspace(-0.3, 0.7, steps=N * H, **to_double).view(N, H)
    prev_c = torch.linspace(-0.4, 0.9, steps=N * H, **to_double).view(N, H)
    attn = torch.linspace(0.6, 1.8, steps=N * H, **to_double).view(N, H)
    Wx = torch.linspace(-2.1, 1.3, steps=4 * D * H, **to_double).view(D, 4 * H)
    Wh = torch.linspace(-0.7, 2.2, steps=4 * H * H, **to_double).view(H, 4 * H)
    b = torch.linspace(0.3, 0.7, steps=4 * H, **to_double)
    Wattn = torch.linspace(1.3, 4.2, steps=4 * H * H, **to_double).view(H, 4 * H)
    model = _attention_lstm(D, H, Wx, Wh, b, Wattn)

    next_h, next_c = model.step_forward(x, prev_h, prev_c, attn)
    expected_next_h = torch.tensor(
        [
            [0.53704256, 0.59980774, 0.65596820, 0.70569729, 0.74932626],
            [0.78729857, 0.82010653, 0.84828362, 0.87235677, 0.89283167],
            [0.91017981, 0.92483119, 0.93717126, 0.94754073, 0.95623746],
        ],
        **to_double,
    )
    expected_next_c = torch.tensor(
        [
            [0.59999328, 0.69285041, 0.78570758, 0.87856479, 0.97142202],
            [1.06428558, 1.15714276, 1.24999992, 1.34285708, 1.43571424],
            [1.52857143, 1.62142857, 1.71428571, 1.80714286, 1.90000000],
        ],
        **to_double,
    )
    assert rel_error(expected_next_h, next_h) < 1e-8
    assert rel_error(expected_next_c, next_c) < 1e-8


def test_attention_lstm_forward():
    N, D, H, T = 2, 5, 4, 3
    D_a = 4
    x = torch.linspace(-0.4, 0.6, steps=N * T * D, **to_double).view(N, T, D)
    A = torch.linspace(-0.4, 1.8, steps=N * H * D_a * D_a, **to_double).view(N, H, D_a, D_a)
    Wx = torch.linspace(-0.2, 0.9, steps=4 * D * H, **to_double).view(D, 4 * H)
    Wh = torch.linspace(-0.3, 0.6, steps=4 * H * H, **to_double).view(H, 4 * H)
    Wattn = torch.linspace(1.3, 4.2, steps=4 * H * H, **to_double).view(H, 4 * H)
    b = torch.linspace(0.2, 0.7, steps=4 * H, **to_double)
    model = _attention_lstm(D, H, Wx, Wh, b, Wattn)

    hn = model(x, A)
    expected_hn = torch.tensor(
        [
            [
                [0.56141729, 0.70274849, 0.80000386, 0.86349400],
                [0.89556391, 0.92856726, 0.94950579, 0.96281018],
                [0.96792077, 0.97535465, 0.98039623, 0.98392994],
            ],
            [
                [0.95065880, 0.97135490, 0.98344373, 0.99045552],
                [0.99317679, 0.99607466, 0.99774317, 0.99870293],
                [0.99907382, 0.99946784, 0.99969426, 0.99982435],
            ],
        ],
        **to_double,
    )
    assert rel_error(expected_hn, hn) < 1e-8


@pytest.mark.parametrize(
    "cell_type, images_from, expected_loss",
    [
        ("rnn", "randn", 150.6090393066),
        ("lstm", "linspace", 146.3161468505),
        ("attn", "linspace", 8.0156393051),
    ],
)
def test_captioning_rnn_loss_with_the_course_vocabulary(cell_type, images_from, expected_loss):
    """The course never names a backbone: input_dim=400 selects its RegNet-X-400MF."""
    torch.manual_seed(0)
    N, D, W, H = 10, 400, 30, 40
    word_to_idx = dict(COURSE_VOCAB)
    V = len(word_to_idx)
    T = 13
    model = CaptioningRNN(
        word_to_idx,
        input_dim=D,
        wordvec_dim=W,
        hidden_dim=H,
        cell_type=cell_type,
        ignore_index=NULL_index,
        image_encoder_pretrained=False,
    )
    for _name, v in model.named_parameters():
        v.data.copy_(torch.linspace(-1.4, 1.3, steps=v.numel()).view(*v.shape))
    if images_from == "randn":
        images = torch.randn(N, 3, *IMAGE_SHAPE)
    else:
        images = torch.linspace(-3.0, 3.0, steps=(N * 3 * IMAGE_SHAPE[0] * IMAGE_SHAPE[1]), **to_float)
        images = images.view(N, 3, *IMAGE_SHAPE)
    captions = (torch.arange(N * T) % V).view(N, T)

    loss = model(images, captions)
    assert model.backbone == "regnet_x_400mf"
    assert rel_error(loss, torch.tensor(expected_loss)) < 1e-6  # float32, as the course runs it


def test_sampling_with_the_course_vocabulary_says_what_is_missing():
    model = CaptioningRNN(dict(COURSE_VOCAB), input_dim=400, wordvec_dim=8, hidden_dim=8,
                          image_encoder_pretrained=False)
    with pytest.raises(ValueError, match=r"lacks \['<START>', '<END>'\], which sampling needs"):
        model.sample(torch.randn(2, 400, 2, 2))


@pytest.mark.parametrize(
    "input_dim, backbone",
    [(400, "regnet_x_400mf"), (2048, "resnet50"), (None, "resnet50"), (768, "convnext_tiny")],
)
def test_the_backbone_is_inferred_from_input_dim(input_dim, backbone):
    """768 channels are ConvNeXt-Tiny's and Swin-T's: the first registered, convnext_tiny, is chosen."""
    model = CaptioningRNN(dict(COURSE_VOCAB), input_dim=input_dim, wordvec_dim=8, hidden_dim=8,
                          image_encoder_pretrained=False)
    assert model.backbone == backbone and model.input_dim == BACKBONE_CHANNELS[backbone]


def test_input_dim_768_with_swin_named_builds_swin():
    model = CaptioningRNN(dict(COURSE_VOCAB), input_dim=768, wordvec_dim=8, hidden_dim=8, backbone="swin_t",
                          image_encoder_pretrained=False)
    assert model.backbone == "swin_t" and model.input_dim == BACKBONE_CHANNELS["swin_t"]
    with torch.no_grad():
        assert model.image_encoder.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 768, 2, 2)


def test_an_input_dim_no_backbone_gives_is_explained():
    with pytest.raises(ValueError, match=r"no backbone outputs input_dim=512 channels \(resnet50: 2048"):
        CaptioningRNN(dict(COURSE_VOCAB), input_dim=512, image_encoder_pretrained=False)


@pytest.mark.parametrize(
    "word_to_idx, message",
    [
        ({"cat": 0, "dog": 1}, r"lacks \['<NULL>'\], which a captioning model needs"),
        ({"<NULL>": 0, "cat": 1, "dog": 1}, r"repeated ids: \[1\]"),
        ({"<NULL>": 0, "cat": -1}, "non-negative integers"),
    ],
)
def test_unusable_vocabularies_are_refused_with_the_reason(word_to_idx, message):
    with pytest.raises(ValueError, match=message):
        CaptioningRNN(word_to_idx, input_dim=400, image_encoder_pretrained=False)
