"""Config files, presets, overrides, every error case, the GloVe a config names, and build_model."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from helpers.config import (
    CONFIG_DIR,
    VOCAB_SOURCES,
    Config,
    ConfigError,
    config_from_dict,
    load_config,
)
from helpers.glove import demo_glove_path, load_word_vectors
from helpers.models import build_model
from helpers.text import SPECIAL_TOKENS, Vocabulary

DECODERS = {"Vanilla_RNN": "rnn", "LSTM": "lstm", "Attention_LSTM": "attn", "Transformer": "transformer"}


@pytest.mark.parametrize("name, cell", DECODERS.items())
def test_decoder_configs_load_in_the_original_layout(name, cell):
    raw = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
    assert set(raw["model"]) == {"decoder", "wordvec_dim", "hidden_dim", "backbone"}
    assert set(raw["embeddings"]) == {"use_glove", "glove_path"}
    assert "batch_size" in raw
    config = load_config(CONFIG_DIR / f"{name}.yaml")
    assert config.name == name
    assert config.model.decoder == cell
    assert (config.model.backbone, config.model.feature_channels) == ("resnet50", 2048)  # inferred from null
    assert (config.model.wordvec_dim, config.model.hidden_dim) == (300, 512)
    assert config.embeddings.use_glove and config.embeddings.glove_path == "glove.6B.300d.txt"
    assert config.training.mode == "features"
    assert config.run_name.startswith(f"{name}-resnet50-glove-224-")  # then a 6-digit hash of the rest
    assert len(config.run_name) == len(f"{name}-resnet50-glove-224-") + 6


@pytest.mark.parametrize(
    "preset, backbone, hidden, attn_dim, batch",
    [
        ("beginner", "resnet50", 512, 2048, 128),
        ("kaggle_small_gpu", "regnet_x_400mf", 256, 400, 256),
        ("research", "resnet101", 1024, 2048, 64),
    ],
)
def test_presets_merge_over_a_decoder_config(preset, backbone, hidden, attn_dim, batch):
    config = load_config(["Attention_LSTM", preset])
    assert config.model.decoder == "attn"  # from the decoder config, untouched by the preset
    assert (config.model.backbone, config.model.hidden_dim, config.model.feature_channels) == (
        backbone,
        hidden,
        attn_dim,
    )
    assert config.model.wordvec_dim == 300 and config.embeddings.use_glove
    assert config.batch_size == batch
    assert config.training.lr == 1e-3  # decoder config value kept
    assert config.sources[-1].endswith(f"presets/{preset}.yaml")


@pytest.mark.parametrize(
    "backbone, channels", [("resnet50", 2048), ("resnet101", 2048), ("regnet_x_400mf", 400)]
)
def test_feature_channels_are_inferred_from_the_backbone(backbone, channels):
    assert load_config("LSTM", [f"model.backbone={backbone}"]).model.feature_channels == channels


def test_overrides_are_parsed_as_yaml_scalars_with_dotted_keys():
    config = load_config(
        "LSTM",
        [
            "model.hidden_dim=256",
            "training.lr=1e-3",  # YAML 1.1 reads this as a string; the float field accepts it
            "training.epochs=3",
            "training.grad_clip=null",
            "training.eval_beam_sizes=[1, 5]",
            "embeddings.use_glove=false",
            "data.data_dir=/some/where",
            "batch_size=32",
        ],
    )
    assert config.model.hidden_dim == 256
    assert config.training.lr == pytest.approx(1e-3) and isinstance(config.training.lr, float)
    assert config.training.epochs == 3
    assert config.training.grad_clip is None
    assert config.training.eval_beam_sizes == [1, 5]
    assert config.embeddings.use_glove is False
    assert config.data.data_dir == "/some/where"
    assert config.batch_size == 32
    assert config.sources[-1] == "batch_size=32"


def test_dict_overrides_nested_or_dotted_and_later_files_win(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("model:\n  hidden_dim: 64\ntraining:\n  epochs: 2\n")
    config = load_config(["LSTM", extra], {"training": {"epochs": 7}, "model.wordvec_dim": 50})
    assert (config.model.hidden_dim, config.training.epochs, config.model.wordvec_dim) == (64, 7, 50)


def test_config_serialises_and_round_trips():
    config = load_config(["Transformer", "kaggle_small_gpu"], ["training.epochs=2"])
    data = json.loads(json.dumps(config.to_dict()))
    assert data["model"]["decoder"] == "transformer" and data["model"]["feature_channels"] == 400
    assert config_from_dict(data) == config
    assert yaml.safe_load(str(config)) == data  # printable as YAML


def test_demo_overlay_switches_to_a_small_cpu_setup():
    config = load_config(["Attention_LSTM", "research", "demo"], {"data.work_dir": "/w"})
    assert config.model.backbone == "regnet_x_400mf" and config.model.feature_channels == 400
    assert config.model.pretrained_backbone is False
    assert config.embeddings.glove_path == "demo" and config.model.wordvec_dim == 50
    assert config.data.dataset == "demo" and config.data.image_size == 96
    assert str(demo_glove_path(config)) == "/w/glove/glove.demo.50d.txt"


# ------------------------------------------------------------------------------------------ errors


def _error(*args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kwargs)
    return str(info.value)


def test_unknown_key_suggests_the_closest_and_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  hiden_dim: 256\n")
    message = _error(["LSTM", bad])
    assert str(bad) in message
    assert "unknown key 'model.hiden_dim'" in message
    assert "Did you mean 'model.hidden_dim'?" in message
    assert "feature_channels" in message  # the valid keys are listed


def test_unknown_top_level_key_from_an_override():
    message = _error("LSTM", ["trainig.epochs=3"])
    assert "override 'trainig.epochs=3'" in message and "Did you mean 'training'?" in message


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.hidden_dim=abc", "model.hidden_dim='abc' is not valid: expected an integer"),
        ("model.hidden_dim=2.5", "expected an integer"),
        ("training.amp=maybe", "training.amp='maybe' is not valid: expected true or false"),
        ("embeddings.use_glove=1", "expected true or false"),
        ("training.lr=fast", "training.lr='fast' is not valid: expected a number"),
        ("training.eval_beam_sizes=three", "expected a list of integers: write it in brackets, "
         "training.eval_beam_sizes=[1, 3]"),
        ("training.eval_splits=val", "a list of strings: write it in brackets, training.eval_splits=[val]"),
        ("training.eval_splits=val,test", "training.eval_splits=[val, test]"),
        ("model=lstm", "'model' is a section"),
        ("model.hidden_dim.x=1", "'model.hidden_dim' is a value, not a section"),
    ],
)
def test_wrong_types_name_key_value_and_expected_type(override, expected):
    message = _error("LSTM", [override])
    assert expected in message
    assert f"override {override!r}" in message


def test_unknown_backbone_lists_the_choices():
    message = _error("LSTM", ["model.backbone=resnet51"])
    assert "model.backbone='resnet51' is not valid" in message
    assert "Did you mean 'resnet50'?" in message
    assert "'resnet50', 'resnet101', 'regnet_x_400mf'" in message


def test_unknown_metric_tokenizer_lists_the_choices():
    message = _error("LSTM", ["training.metric_tokenizer=ptb3"])
    assert "training.metric_tokenizer='ptb3' is not valid" in message and "Did you mean 'ptb'?" in message
    assert "'auto', 'ptb', 'project'" in message


def test_unknown_decoder_lists_the_choices_and_aliases_work():
    message = _error("LSTM", ["model.decoder=gru"])
    assert "model.decoder='gru' is not valid" in message and "'rnn', 'lstm', 'attn', 'transformer'" in message
    assert load_config("LSTM", ["model.decoder=attention"]).model.decoder == "attn"


def test_renamed_keys_still_read_their_old_names_and_keep_run_folder_names(tmp_path):
    """model.cell_type (which named the Transformer too) is model.decoder, model.attn_dim (the CNN's
    channels) model.feature_channels and training.finetune_stages (stages are the notebooks')
    training.finetune_layers; configs, overrides and stored configs with the old names load, and run
    names, hashed over the old names, stay those of the folders users already have."""
    old = tmp_path / "old.yaml"
    old.write_text("model:\n  cell_type: transformer\n  attn_dim: 2048\n")
    config = load_config(old)
    assert (config.model.decoder, config.model.feature_channels) == ("transformer", 2048)
    assert load_config("LSTM", ["model.cell_type=rnn"]).model.decoder == "rnn"
    assert load_config("LSTM", ["training.finetune_stages=2"]).training.finetune_layers == 2
    stored = load_config("LSTM").to_dict()
    stored["model"]["cell_type"] = stored["model"].pop("decoder")
    stored["model"]["attn_dim"] = stored["model"].pop("feature_channels")
    assert config_from_dict(stored).run_name == load_config("LSTM").run_name
    assert load_config(["LSTM", "demo"]).run_name == "LSTM-regnet_x_400mf_untrained-glove-96-c37f0f"
    assert load_config("Transformer").run_name == "Transformer-resnet50-glove-224-c088cd"


def test_feature_channels_contradicting_the_backbone_state_the_right_value():
    message = _error(["LSTM", "kaggle_small_gpu"], ["model.attn_dim=1280"])
    assert (
        "model.feature_channels=1280 but regnet_x_400mf outputs 400 channels; remove feature_channels (or "
        "the original notes' attn_dim) or set it to 400"
        in message
    )
    message = _error("LSTM", ["model.attn_dim=400"])
    assert "resnet50 outputs 2048 channels; remove feature_channels" in message


@pytest.mark.parametrize(
    "override, expected",
    [
        ("training.mode=frozen", "training.mode='frozen' is not valid"),
        ("training.schedule=step", "'cosine', 'linear', 'constant'"),
        ("training.device=tpu", "training.device='tpu' is not valid"),
        ("model.hidden_dim=0", "model.hidden_dim=0 must be positive"),
        ("training.lr=-1", "training.lr=-1.0 must be positive"),
        ("training.max_hours=0", "training.max_hours=0.0 must be positive"),
        ("training.weight_decay=-0.1", "must not be negative"),
        ("training.warmup_fraction=1.5", "training.warmup_fraction=1.5 must be in [0, 1)"),
        ("data.image_size=16", "too small"),
        ("training.eval_beam_sizes=[0]", "beam sizes must be >= 1"),
        ("embeddings.glove_path=null", "glove_path is empty"),
    ],
)
def test_values_out_of_range_are_refused(override, expected):
    assert expected in _error("LSTM", [override])


def test_transformer_heads_must_divide_its_width():
    message = _error("Transformer", ["model.hidden_dim=510", "model.num_heads=4"])
    assert "model.hidden_dim=510 is not divisible by model.num_heads=4" in message


def test_malformed_files_and_overrides(tmp_path):
    assert "is not of the form key=value" in _error("LSTM", ["training.epochs"])
    assert "Config file not found: nope.yaml" in _error("nope.yaml")
    assert "LSTM, Transformer" in _error("Nope")  # known names are listed
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    assert f"{listing}: the top level must be a mapping" in _error(listing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [\n")
    assert f"{broken}: not valid YAML" in _error(broken)
    assert "cannot be set" in _error("LSTM", ["sources=[]"])


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# -------------------------------------------------------------------------------------- build_model


@pytest.fixture
def vocab():
    return Vocabulary(SPECIAL_TOKENS + ["a", "red", "circle", "square"])


def _small(name: str, *extra: str) -> Config:
    return load_config(
        name,
        [
            "model.backbone=regnet_x_400mf",
            "model.pretrained_backbone=false",
            "embeddings.use_glove=false",
            "model.wordvec_dim=16",
            "model.hidden_dim=32",
            *extra,
        ],
    )


@pytest.mark.parametrize(
    "name, cls, cell",
    [
        ("Vanilla_RNN", "CaptioningRNN", "rnn"),
        ("LSTM", "CaptioningRNN", "lstm"),
        ("Attention_LSTM", "CaptioningRNN", "attn"),
        ("Transformer", "CaptioningTransformer", "transformer"),
    ],
)
def test_build_model_returns_the_model_for_each_cell_type(name, cls, cell, vocab):
    torch.manual_seed(0)
    model = build_model(_small(name), vocab, word_vectors=None)
    assert type(model).__name__ == cls and model.cell_type == cell
    assert model.input_dim == 400 and model.hidden_dim == 32
    features = torch.randn(2, 400, 3, 3)
    captions = torch.tensor([[1, 4, 5, 2, 0], [1, 6, 7, 5, 2]])
    loss = model(features, captions)
    assert loss.ndim == 0 and torch.isfinite(loss)


def _built(config: Config, vocab) -> torch.nn.Module:
    """The model as training builds it: the GloVe step, then the builder."""
    return build_model(config, vocab, word_vectors=load_word_vectors(config, vocab))


def test_build_model_needs_the_word_vectors_and_reads_no_file(tmp_path, vocab):
    config = _small("LSTM", "embeddings.use_glove=true", f"embeddings.glove_path={tmp_path / 'none.txt'}")
    with pytest.raises(TypeError, match="word_vectors"):  # an old call cannot silently skip GloVe
        build_model(config, vocab)
    with pytest.raises(TypeError, match="load_glove"):
        build_model(config, vocab, load_glove=False)
    assert build_model(config, vocab, word_vectors=None).word_embed.W_embed.shape == (len(vocab), 16)
    vectors = torch.full((len(vocab), 16), 0.25)
    assert torch.equal(build_model(config, vocab, word_vectors=vectors).word_embed.W_embed, vectors)
    assert load_word_vectors(_small("LSTM"), vocab) is None  # use_glove false: random vectors


def test_glove_dimension_mismatch_is_caught_before_building(tmp_path, vocab):
    glove = tmp_path / "glove.6B.50d.txt"
    glove.write_text("red " + " ".join(["0.1"] * 50) + "\ncircle " + " ".join(["0.2"] * 50) + "\n")
    config = _small("LSTM", "embeddings.use_glove=true", f"embeddings.glove_path={glove}")
    with pytest.raises(ConfigError) as info:
        load_word_vectors(config, vocab)
    assert f"{str(glove)!r} holds 50-dimensional vectors but model.wordvec_dim=16" in str(info.value)
    assert "set model.wordvec_dim=50" in str(info.value)
    config = _small(
        "LSTM", "embeddings.use_glove=true", f"embeddings.glove_path={glove}", "model.wordvec_dim=50"
    )
    model = _built(config, vocab)
    assert torch.allclose(model.word_embed.W_embed[vocab.word_to_idx["red"]], torch.full((50,), 0.1))


def test_missing_glove_file_says_how_to_get_it(tmp_path, vocab):
    config = _small("LSTM", "embeddings.use_glove=true", f"embeddings.glove_path={tmp_path / 'none.txt'}")
    with pytest.raises(ConfigError, match="not found.*thanakomsn/glove6b300dtxt"):
        load_word_vectors(config, vocab)


def test_demo_glove_is_generated_for_the_vocabulary(tmp_path, vocab):
    config = _small(
        "LSTM", "embeddings.use_glove=true", "embeddings.glove_path=demo", f"data.work_dir={tmp_path}"
    )
    model = _built(config, vocab)
    path = tmp_path / "glove" / "glove.demo.16d.txt"
    words = [line.split(" ")[0] for line in path.read_text().splitlines()]
    assert {"red", "circle", "square", "a"} <= set(words) and not any(w.startswith("<") for w in words)
    red = torch.tensor([float(x) for x in path.read_text().splitlines()[words.index("red")].split(" ")[1:]])
    assert torch.allclose(model.word_embed.W_embed[vocab.word_to_idx["red"]], red)


def test_bare_glove_6b_name_is_fetched_from_kaggle(tmp_path, vocab, monkeypatch):
    import kagglehub

    mounted = tmp_path / "attached"
    mounted.mkdir()
    (mounted / "glove.6B.50d.txt").write_text("red " + " ".join(["0.5"] * 50) + "\n")
    monkeypatch.chdir(tmp_path)  # no glove.6B.50d.txt in the working directory
    monkeypatch.setattr(kagglehub, "dataset_download", lambda handle, **kwargs: str(mounted))
    config = _small(
        "LSTM", "embeddings.use_glove=true", "embeddings.glove_path=glove.6B.50d.txt", "model.wordvec_dim=50"
    )
    model = _built(config, vocab)
    assert torch.allclose(model.word_embed.W_embed[vocab.word_to_idx["red"]], torch.full((50,), 0.5))


def test_bare_glove_6b_name_offline_names_the_dataset(tmp_path, vocab, monkeypatch):
    import kagglehub

    def offline(handle, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    config = _small("LSTM", "embeddings.use_glove=true", "embeddings.glove_path=glove.6B.300d.txt",
                    "model.wordvec_dim=300")
    with pytest.raises(ConfigError, match="glove.6B.300d.txt.*thanakomsn/glove6b300dtxt"):
        load_word_vectors(config, vocab)


def test_a_backbone_can_be_switched_on_top_of_a_preset():
    config = load_config(["LSTM", "kaggle_small_gpu"], ["model.backbone=resnet50"])
    model = config.model
    assert (model.backbone, model.feature_channels, model.hidden_dim) == ("resnet50", 2048, 256)


def test_split_is_explicit_and_checked():
    assert load_config("LSTM").data.split == "karpathy"  # comparable runs: the papers' split or an error
    assert load_config(["LSTM", "demo"]).data.split == "seeded"
    assert load_config("LSTM", ["data.split=null"]).data.split is None
    with pytest.raises(ConfigError, match="data.split.*'random'.*karpathy.*seeded"):
        load_config("LSTM", ["data.split=random"])


def test_vocab_from_is_checked_and_reaches_prepare_dataset(monkeypatch):
    import helpers.prepare
    import helpers.workdir


    assert load_config("LSTM").data.vocab_from == "train"
    with pytest.raises(ConfigError, match=r"data.vocab_from='val' is not valid.*'train', 'all'"):
        load_config("LSTM", ["data.vocab_from=val"])
    assert VOCAB_SOURCES == helpers.prepare.VOCAB_SOURCES
    seen = {}
    monkeypatch.setattr(helpers.workdir, "prepare_dataset", lambda **kwargs: seen.update(kwargs))
    config = load_config("LSTM", ["data.vocab_from=all", "data.min_word_count=6"])
    helpers.workdir.prepare_for(config, progress=False)
    assert (seen["vocab_from"], seen["min_word_count"]) == ("all", 6)
