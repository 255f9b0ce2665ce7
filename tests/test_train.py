"""The training loop: schedule, devices, checkpoints, exact resume, fine-tuning, and learning on the demo."""

from __future__ import annotations

import collections
import importlib.util
import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.backbones import image_transform
from helpers.checkpoints import load_checkpoint, load_model_state, model_state, save_atomic
from helpers.config import load_config
from helpers.devices import UnsupportedDeviceError, check_cuda_device
from helpers.evaluate import compute_metrics, decode_split, evaluate_run, per_image_cider
from helpers.features import FeatureStore
from helpers.glove import load_word_vectors
from helpers.models import build_model
from helpers.optimization import lr_factor
from helpers.runs import TrainState
from helpers.train import epoch_batches, train
from helpers.workdir import prepared_and_features


def demo_config(name: str, work, demo_dir=None, **overrides):
    """configs/<name>.yaml + configs/demo.yaml, on the conftest demo folder when given (120 images)."""
    values = {
        "data.work_dir": str(work / "work"),
        "training.run_dir": str(work / "runs"),
        "training.meteor": False,
        **({"data.dataset": "flickr8k", "data.data_dir": str(demo_dir)} if demo_dir else {}),
        **overrides,
    }
    return load_config([name, "demo"], values)


@pytest.fixture(scope="module")
def small_demo(demo_dir, tmp_path_factory):
    """Prepared data and a feature store of the 120-image demo, shared by this module's runs."""
    work = tmp_path_factory.mktemp("train")
    config = demo_config("LSTM", work, demo_dir)
    prepared, store = prepared_and_features(config, progress=False)
    return work, prepared, store


# ------------------------------------------------------------------------------------------- units


def test_lr_schedule_warms_up_linearly_then_decays():
    factors = [lr_factor(step, 100, 10, "cosine", 0.0) for step in range(100)]
    assert factors[:3] == pytest.approx([0.1, 0.2, 0.3]) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0)
    assert factors[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert lr_factor(100, 100, 10, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(55, 100, 10, "linear", 0.0) == pytest.approx(0.5)
    assert lr_factor(80, 100, 10, "constant", 0.0) == 1.0


def test_epoch_batches_are_a_seeded_permutation():
    batches = epoch_batches(103, 10, seed=0, epoch=2)
    assert [len(b) for b in batches] == [10] * 10 + [3]
    assert sorted(i for b in batches for i in b) == list(range(103))
    assert batches == epoch_batches(103, 10, seed=0, epoch=2)
    assert batches != epoch_batches(103, 10, seed=0, epoch=3)


def test_gpus_below_compute_capability_7_are_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (6, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla P100-PCIE-16GB")
    with pytest.raises(UnsupportedDeviceError) as info:
        check_cuda_device(torch.device("cuda"))
    message = str(info.value)
    assert "Tesla P100-PCIE-16GB has compute capability 6.0" in message
    assert "Kaggle's P100 no longer runs current torch" in message and '"GPU T4 x2"' in message
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    check_cuda_device(torch.device("cuda"))  # a T4 passes


def test_a_run_that_asks_for_ptb_scores_without_java_fails_before_training(tmp_path, monkeypatch):
    import helpers.evaluate
    from helpers.evaluate import JavaUnavailableError

    monkeypatch.setattr(helpers.evaluate.shutil, "which", lambda name: None)
    config = demo_config("LSTM", tmp_path, **{"training.metric_tokenizer": "ptb"})
    with pytest.raises(JavaUnavailableError, match="`java` is not on PATH"):
        train(config, progress=False)
    assert not config.run_path.exists() and not (tmp_path / "work").exists()  # nothing was prepared


def test_checkpoints_are_written_atomically(tmp_path):
    path = tmp_path / "last.pt"
    save_atomic({"format": 1, "value": torch.tensor([1.0])}, path)
    with pytest.raises(Exception):  # noqa: B017 - whatever torch.save raises for an unpicklable object
        save_atomic({"format": 1, "value": lambda: None}, path)
    assert torch.load(path, weights_only=True)["value"].item() == 1.0  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_frozen_pretrained_cnn_is_left_out_of_checkpoints(tmp_path):
    vocab = {"<NULL>": 0, "<START>": 1, "<END>": 2, "<UNK>": 3, "dog": 4}
    config = load_config(
        "LSTM",
        [
            "model.backbone=regnet_x_400mf",
            "model.pretrained_backbone=false",
            "embeddings.use_glove=false",
            "model.hidden_dim=8",
            "model.wordvec_dim=8",
        ],
    )
    model = build_model(config, vocab, word_vectors=None)
    for pretrained in (False, True):  # frozen: rebuilt from its seed or torchvision's weights
        config.model.pretrained_backbone = pretrained
        kept = model_state(model, config)
        assert kept and not any(k.startswith("image_encoder.") for k in kept)
        assert sum(v.numel() for v in kept.values()) == sum(
            p.numel() for n, p in model.named_parameters() if not n.startswith("image_encoder.")
        ) + sum(b.numel() for n, b in model.named_buffers() if not n.startswith("image_encoder."))
    config.training.mode = "finetune"  # trained CNN layers: kept
    assert any(k.startswith("image_encoder.") for k in model_state(model, config))


# ----------------------------------------------------------------------------------------- runs


def test_a_features_run_captions_images_through_the_cnn_its_store_came_from(small_demo):
    """best.pt holds no CNN; the loaded model rebuilds the store's (seeded random) CNN, so images and
    their stored features give the same captions. An older checkpoint with its CNN keeps that CNN."""
    from helpers.checkpoints import load_run
    from helpers.images import load_image

    work, prepared, store = small_demo
    config = demo_config("LSTM", work, **{"training.epochs": 1, "training.eval_splits": [],
                                          "training.run_name": "slim"})
    torch.manual_seed(123)  # the run's own CNN init must not matter
    result = train_on(small_demo, config)
    best = load_checkpoint(result.run_dir / "best.pt")
    assert not any(key.startswith("image_encoder.") for key in best["model"])
    model, _, loaded_config = load_run(result.run_dir)
    names = store.filenames("test")[:4]
    transform = image_transform(loaded_config.model.backbone, loaded_config.image_size, torch.uint8)
    images = torch.stack([transform(load_image(prepared.image_path(name))) for name in names])
    with torch.no_grad():
        encoded = model.encode(images)
    stored = torch.from_numpy(store.features("test")[:4].astype(np.float32))
    torch.testing.assert_close(encoded, stored, rtol=2e-3, atol=2e-3)
    assert torch.equal(model.sample(images, max_length=16), model.sample(stored, max_length=16))

    other_cnn = build_model(loaded_config, prepared.vocab, word_vectors=None).image_encoder.state_dict()
    with_cnn = {**best["model"], **{f"image_encoder.{k}": v for k, v in other_cnn.items()}}
    old_style = {**best, "model": with_cnn}
    save_atomic(old_style, result.run_dir / "best.pt")
    old_model, _, _ = load_run(result.run_dir)
    for key, value in other_cnn.items():
        assert torch.equal(old_model.image_encoder.state_dict()[key], value), key


@pytest.mark.slow
def test_a_failure_in_scoring_never_loses_the_epoch(small_demo, monkeypatch):
    """pycocoevalcap missing: the first validation fails, but last.pt holds the trained epoch; the
    rerun validates it without training it again and ends like an uninterrupted run, and
    helpers.evaluate can score last.pt before any best.pt exists."""
    import helpers.train as train_module

    work, prepared, store = small_demo
    settings = {"training.epochs": 2, "training.eval_splits": [], "training.checkpoint_every_steps": 0}
    whole = demo_config("LSTM", work, **settings, **{"training.run_name": "whole2"})
    uninterrupted = train_on(small_demo, whole)
    config = demo_config("LSTM", work, **settings, **{"training.run_name": "noscore"})

    def missing_package(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'pycocoevalcap'")

    with monkeypatch.context() as patched:
        patched.setattr(train_module, "compute_metrics", missing_package)
        with pytest.raises(ModuleNotFoundError):
            train_on(small_demo, config)
    steps = math.ceil(len(prepared.captions("train")[0]) / config.batch_size)
    saved = load_checkpoint(config.run_path / "last.pt")
    assert (saved["epoch"], saved["step_in_epoch"], saved["global_step"]) == (0, steps, steps)
    assert not (config.run_path / "best.pt").exists()
    scored = evaluate_run(config.run_path, split="val", beam_sizes=(1,), prepared=prepared, store=store,
                          meteor=False, progress=False)
    assert scored["metrics"]["val"]["beam1"]["CIDEr"] >= 0

    trained_steps = []
    resumed = train_on(small_demo, config, callbacks=[lambda event, state: trained_steps.append(event)])
    assert trained_steps.count("step_end") == steps  # only the second epoch trains
    _assert_same_weights(resumed.model, uninterrupted.model)
    assert _without_times(resumed.history) == _without_times(uninterrupted.history)


class Killed(RuntimeError):
    """Stands for a session that dies mid-run."""


def kill_at(event_name: str, when):
    def callback(event: str, state: TrainState) -> None:
        if event == event_name and when(state):
            raise Killed(f"killed at epoch {state.epoch}, step {state.global_step}")

    return callback


def train_on(small_demo, config, **kwargs):
    """`train` on this module's shared demo data and feature store, without progress output."""
    _, prepared, store = small_demo
    return train(config, prepared=prepared, store=store, progress=False, **kwargs)


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    different = [k for k in state_a if not torch.equal(state_a[k], state_b[k])]
    assert not different, different


def _without_times(history):
    return [{k: v for k, v in row.items() if k not in ("time_s", "captions_per_s")} for row in history]


@pytest.mark.slow
def test_resume_after_a_kill_ends_with_the_weights_of_an_uninterrupted_run(small_demo):
    """Transformer (dropout draws random numbers): killed mid-epoch, then after an epoch, resumed twice."""
    work, prepared, store = small_demo
    settings = dict(
        batch_size=40,
        **{"training.epochs": 2, "training.checkpoint_every_steps": 4, "training.eval_splits": []},
    )
    steps_per_epoch = math.ceil(len(prepared.captions("train")[0]) / 40)
    uninterrupted = train_on(
        small_demo, demo_config("Transformer", work, **settings, **{"training.run_name": "whole"})
    )

    config = demo_config("Transformer", work, **settings, **{"training.run_name": "killed"})
    with pytest.raises(Killed):  # mid-epoch: the last checkpoint was written at step 4
        train_on(small_demo, config, callbacks=[kill_at("step_end", lambda s: s.global_step == 6)])
    checkpoint = load_checkpoint(config.run_path / "last.pt")
    assert (checkpoint["epoch"], checkpoint["step_in_epoch"], checkpoint["global_step"]) == (0, 4, 4)
    with pytest.raises(Killed):  # right after the first epoch's checkpoint
        train_on(small_demo, config, callbacks=[kill_at("epoch_end", lambda s: s.epoch == 1)])
    assert load_checkpoint(config.run_path / "last.pt")["global_step"] == steps_per_epoch
    assert len(json.loads((config.run_path / "history.json").read_text())) == 1
    resumed = train_on(small_demo, config)

    _assert_same_weights(resumed.model, uninterrupted.model)
    last_a = load_checkpoint(uninterrupted.run_dir / "last.pt")
    last_b = load_checkpoint(resumed.run_dir / "last.pt")
    for key in last_a["model"]:
        assert torch.equal(last_a["model"][key], last_b["model"][key]), key
    assert last_a["global_step"] == last_b["global_step"] == 2 * steps_per_epoch
    assert _without_times(resumed.history) == _without_times(uninterrupted.history)


@pytest.mark.slow
def test_a_time_budget_pauses_cleanly_and_reruns_end_like_an_uninterrupted_run(small_demo, monkeypatch):
    """training.max_hours: a Kaggle session that would end mid-run instead stops with last.pt saved,
    mid-epoch or at an epoch's end; each rerun continues, and the last ends with the weights of a run
    that was never paused. The clock is replaced by a step counter so the test does not race time."""
    work, prepared, store = small_demo
    settings = dict(
        batch_size=40,
        **{"training.epochs": 2, "training.eval_splits": ["val"], "training.eval_beam_sizes": [1]},
    )
    steps_per_epoch = math.ceil(len(prepared.captions("train")[0]) / 40)
    uninterrupted = train_on(
        small_demo, demo_config("Transformer", work, **settings, **{"training.run_name": "unlimited"})
    )
    assert uninterrupted.results["status"] == "finished" and not uninterrupted.paused

    clock = {"step": 0, "limit": 3}

    def out_of_time(deadline):
        return deadline is not None and clock["step"] >= clock["limit"]

    def watch(event, state):
        clock["step"] = state.global_step

    monkeypatch.setattr("helpers.train.out_of_time", out_of_time)
    budget = demo_config(
        "Transformer", work, **settings, **{"training.run_name": "budget", "training.max_hours": 1}
    )
    first = train_on(small_demo, budget, callbacks=[watch])
    assert first.paused and first.results is None and first.best_epoch is None  # mid-epoch: nothing to score
    assert load_checkpoint(budget.run_path / "last.pt")["global_step"] == 3
    assert not (budget.run_path / "best.pt").exists()

    clock["limit"] = steps_per_epoch  # the last step of epoch 1: the pause waits for the epoch's end
    second = train_on(small_demo, budget, callbacks=[watch])
    assert second.paused and second.epochs == 1 and second.results["status"] == "paused"
    assert load_checkpoint(budget.run_path / "last.pt")["global_step"] == steps_per_epoch
    assert "beam1" in second.results["metrics"]["val"]  # the best weights so far were scored

    unlimited = demo_config(
        "Transformer", work, **settings, **{"training.run_name": "budget", "training.max_hours": None}
    )
    last = train_on(small_demo, unlimited, callbacks=[watch])
    assert not last.paused and last.results["status"] == "finished"
    _assert_same_weights(last.model, uninterrupted.model)
    assert _without_times(last.history) == _without_times(uninterrupted.history)


def test_more_epochs_on_resume_warn_of_the_learning_rate_jump(small_demo):
    work, prepared, store = small_demo
    settings = dict(batch_size=40, **{"training.eval_splits": [], "training.run_name": "extended"})
    one = demo_config("LSTM", work, **settings, **{"training.epochs": 1, "training.warmup_steps": 0})
    train_on(small_demo, one)
    steps = math.ceil(len(prepared.captions("train")[0]) / 40)
    ended = load_checkpoint(one.run_path / "last.pt")["optimizer"]["param_groups"][0]["lr"]
    lr = one.training.lr
    assert ended == pytest.approx(lr * one.training.min_lr_ratio)  # the cosine decay ran to its end
    two = demo_config("LSTM", work, **settings, **{"training.epochs": 2, "training.warmup_steps": 0})
    expected = lr * lr_factor(steps, 2 * steps, 0, "cosine", one.training.min_lr_ratio)
    jump = rf"training.epochs 1 -> 2 on resume.*from {ended:.2e} to {expected:.2e}"
    with pytest.warns(UserWarning, match=jump):
        result = train_on(small_demo, two)
    assert result.epochs == 2


@pytest.mark.slow
def test_fp16_loss_scaling_resumes_exactly(small_demo, monkeypatch):
    """The CUDA path's mechanics (fp16 autocast, GradScaler with unscale + clip, scaler state in the
    checkpoint) run on the CPU: CPU fp16 autocast stands in for CUDA's. The scaler must really act
    (the Transformer's first steps overflow in fp16 and halve the scale) and a killed run must resume
    to the weights and scaler state of an uninterrupted one."""
    monkeypatch.setattr("helpers.train.amp_enabled", lambda config, device: config.training.amp)
    work, prepared, store = small_demo
    settings = dict(
        batch_size=40,
        **{"training.epochs": 1, "training.checkpoint_every_steps": 3, "training.eval_splits": []},
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        uninterrupted = train_on(
            small_demo, demo_config("Transformer", work, **settings, **{"training.run_name": "fp16_whole"})
        )
    # a skipped overflow step is expected with fp16; users must not see torch's scheduler warning
    assert not [w for w in caught if "lr_scheduler" in str(w.message)]
    scaler_state = load_checkpoint(uninterrupted.run_dir / "last.pt")["scaler"]
    assert scaler_state["scale"] < 2.0**16, "no step overflowed: the scaler never acted"

    config = demo_config("Transformer", work, **settings, **{"training.run_name": "fp16_killed"})
    with pytest.raises(Killed):
        train_on(small_demo, config, callbacks=[kill_at("step_end", lambda s: s.global_step == 5)])
    assert load_checkpoint(config.run_path / "last.pt")["scaler"]["scale"] > 0
    resumed = train_on(small_demo, config)
    _assert_same_weights(resumed.model, uninterrupted.model)
    assert load_checkpoint(resumed.run_dir / "last.pt")["scaler"] == scaler_state

    full_precision = train_on(
        small_demo,
        demo_config("Transformer", work, **settings, **{"training.run_name": "fp32", "training.amp": False}),
    )
    assert load_checkpoint(full_precision.run_dir / "last.pt")["scaler"] == {}
    weights = uninterrupted.model.state_dict()
    assert any(not torch.equal(weights[k], v) for k, v in full_precision.model.state_dict().items()), (
        "fp16 autocast changed nothing: it did not run"
    )


@pytest.mark.slow
def test_a_run_writes_its_files_and_evaluate_run_scores_it(small_demo):
    work, prepared, store = small_demo
    config = demo_config(
        "Vanilla_RNN",
        work,
        **{
            "training.epochs": 2,
            "training.eval_splits": ["test"],
            "training.eval_beam_sizes": [1, 2],
            "training.run_name": "files",
        },
    )
    result = train_on(small_demo, config)
    run = result.run_dir
    assert {p.name for p in run.iterdir()} >= {
        "last.pt",
        "best.pt",
        "history.json",
        "results.json",
        "config.yaml",
    }
    history = json.loads((run / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    assert set(history[0]) >= {
        "train_loss",
        "val_loss",
        "val_Bleu_4",
        "val_CIDEr",
        "lr",
        "time_s",
        "captions_per_s",
    }
    assert history[1]["train_loss"] < history[0]["train_loss"]
    best = load_checkpoint(run / "best.pt")
    assert "optimizer" not in best and best["best_epoch"] == result.best_epoch
    results = json.loads((run / "results.json").read_text())
    assert results["vocab_size"] == len(prepared.vocab) and results["epochs"] == 2
    assert results["config"]["model"]["decoder"] == "rnn"
    assert set(results["metrics"]["test"]) == {"beam1", "beam2"}
    assert (
        results["parameters"]["decoder"] + results["parameters"]["encoder"] == results["parameters"]["total"]
    )

    # The test metrics equal decoding the split with the best model and scoring it directly.
    hypotheses = decode_split(result.model, store, "test", max_length=16, decoding=config.decoding)
    direct = compute_metrics(prepared.references("test"), hypotheses, meteor=False)
    assert results["metrics"]["test"]["beam1"] == direct
    assert results["captions"]["test"]["beam1"] == hypotheses

    rescored = evaluate_run(
        run, split="val", beam_sizes=(1,), prepared=prepared, store=store, meteor=False, progress=False
    )
    assert set(rescored["metrics"]) == {"test", "val"}  # the earlier test scores are kept
    assert rescored["metrics"]["val"]["beam1"]["CIDEr"] == pytest.approx(result.best_metrics["val_CIDEr"])


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["regnet_x_400mf", "swin_t"])
def test_finetune_trains_only_the_last_backbone_layers(small_demo, backbone):
    work, prepared, _ = small_demo
    config = demo_config(
        "LSTM",
        work,
        batch_size=60,
        **{
            "model.backbone": backbone,
            "training.mode": "finetune",
            "training.finetune_layers": 1,
            "training.epochs": 1,
            "data.image_size": 64,
            "training.eval_splits": [],
            "training.run_name": f"finetune-{backbone}",
        },
    )
    torch.manual_seed(config.training.seed)
    vectors = load_word_vectors(config, prepared.vocab)
    initial = build_model(config, prepared.vocab, word_vectors=vectors).image_encoder.trainable_layers()
    initial = [{k: v.clone() for k, v in stage.state_dict().items()} for stage in initial]
    result = train(config, prepared=prepared, progress=False)
    stages = result.model.image_encoder.trainable_layers()
    changed = [
        any(not torch.equal(v, initial[i][k]) for k, v in s.state_dict().items())
        for i, s in enumerate(stages)
    ]
    assert changed == [False] * (len(stages) - 1) + [True]
    saved = load_checkpoint(result.run_dir / "best.pt")["model"]
    assert any(k.startswith("image_encoder.") for k in saved)  # the tuned CNN is in the checkpoint


# -------------------------------------------------------------------------------------- learning


@pytest.fixture(scope="module")
def learning_demo(tmp_path_factory):
    """The 300-image demo (30 test images) with regnet_x_400mf random features at 96 px."""
    work = tmp_path_factory.mktemp("learning")
    prepared, store = prepared_and_features(demo_config("LSTM", work), progress=False)
    blind_path = store.path.parent / f"{store.path.name}-zeros"
    shutil.copytree(store.path, blind_path)
    blind = FeatureStore.open(blind_path)
    for split in blind.splits:
        files = [blind.array_path(split)] + ([blind.ranges_path(split)] if blind.layout == "uint8" else [])
        for array_file in files:  # the uint8 codes and their per-channel offsets and steps
            features = np.load(array_file, mmap_mode="r+")
            features[:] = 0
            features.flush()
    assert not np.asarray(blind.features(blind.splits[0])[:4]).any()
    return work, prepared, store, blind


LEARNING_DECODERS = ("Vanilla_RNN", "LSTM", "Attention_LSTM", "Transformer")


def _train_demo(name: str, work, prepared, store, run_name: str):
    """(config, model) of `name` trained with configs/demo.yaml on the learning demo."""
    config = demo_config(name, work, **{"training.eval_splits": [], "training.run_name": run_name})
    return config, train(config, prepared=prepared, store=store, progress=False).model


def _score(model, store, prepared, split: str, metric: str, beam_size: int = 1, decoding=None) -> float:
    """`metric` of the model's captions of `split` against all their references."""
    hypotheses = decode_split(
        model, store, split, beam_size=beam_size, max_length=16, decoding=decoding
    )
    references = prepared.references(split)
    return compute_metrics({key: references[key] for key in hypotheses}, hypotheses, meteor=False)[metric]


def _test_bleu4(name: str, work, prepared, store, run_name: str) -> float:
    _, model = _train_demo(name, work, prepared, store, run_name)
    return _score(model, store, prepared, "test", "Bleu_4")


@pytest.fixture(scope="module")
def trained_decoders(learning_demo):
    """{decoder: (config, model)}: each decoder trained once on the learning demo, for the tests below."""
    work, prepared, store, _ = learning_demo
    return {name: _train_demo(name, work, prepared, store, name) for name in LEARNING_DECODERS}


@pytest.fixture(scope="module")
def image_blind_bleu4(learning_demo):
    """The better of two image-blind baselines on the same 30 test images.

    Measured with configs/demo.yaml: the most common training caption for every image 0.110 (every
    template starts with the shapes, so one caption matches few of another image's n-grams); the LSTM
    trained on all-zero features 0.259. With the earlier templates, which opened with fixed phrases:
    0.274 and 0.243.
    """
    work, prepared, _, blind_store = learning_demo
    encoded, _ = prepared.captions("train")
    most_common = collections.Counter(prepared.vocab.decode(row) for row in encoded).most_common(1)[0][0]
    references = prepared.references("test")
    constant = compute_metrics(references, {name: most_common for name in references}, meteor=False)["Bleu_4"]
    zero_features = _test_bleu4("LSTM", work, prepared, blind_store, "LSTM-blind")
    assert 0.05 < constant < 0.4 and 0.05 < zero_features < 0.4
    return max(constant, zero_features)


@pytest.mark.slow
@pytest.mark.parametrize("name", LEARNING_DECODERS)
def test_each_decoder_learns_from_the_image(name, learning_demo, trained_decoders, image_blind_bleu4):
    """Held-out BLEU-4 far above an image-blind model: at least blind + 0.15.

    Measured (2-core CPU, 8 epochs, 2-12 s per decoder) with configs/demo.yaml: Vanilla_RNN 0.499, LSTM
    0.527, Attention_LSTM 0.685, Transformer 0.758, against 0.259 image-blind (with the earlier
    templates, which opened with fixed phrases: 0.588, 0.563, 0.664, 0.733 against 0.274). The models'
    BatchNorm over the feature channels (CaptioningModel.feature_norm) is what makes this possible.
    Without that normalisation every decoder emitted about one caption for all images (0.259-0.288):
    the random CNN's features differ between images by only ~7% of their mean (cosine 0.998 between
    images).
    """
    _, prepared, store, _ = learning_demo
    bleu4 = _score(trained_decoders[name][1], store, prepared, "test", "Bleu_4")
    print(f"{name}: held-out BLEU-4 {bleu4:.3f}, image-blind {image_blind_bleu4:.3f}")
    assert bleu4 > image_blind_bleu4 + 0.15, (name, bleu4, image_blind_bleu4)


def test_a_cpu_checkpoint_resumes_with_a_gpu_scaler_and_back():
    """A run started without a GPU (scaler disabled, empty state) must resume where fp16 is on."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    disabled = torch.amp.GradScaler("cpu", enabled=False)
    enabled = torch.amp.GradScaler("cpu", enabled=True, init_scale=1024.0)
    config = load_config("LSTM")
    cpu_run = TrainState(config, Path("."), model, optimizer, scheduler, disabled, torch.device("cpu"))
    checkpoint = cpu_run.checkpoint(vocab=type("V", (), {"idx_to_word": ["<NULL>"]})())
    assert checkpoint["scaler"] == {}
    gpu_run = TrainState(config, Path("."), model, optimizer, scheduler, enabled, torch.device("cpu"))
    gpu_run.restore(checkpoint, Path("last.pt"))
    assert enabled.get_scale() == 1024.0  # fresh scaler kept
    enabled_checkpoint = gpu_run.checkpoint(vocab=type("V", (), {"idx_to_word": ["<NULL>"]})())
    assert enabled_checkpoint["scaler"]["scale"] == 1024.0
    cpu_run.restore(enabled_checkpoint, Path("last.pt"))  # and back to a CPU session
    assert not disabled.is_enabled()


def test_best_and_last_checkpoints_hold_the_counters_and_last_also_the_resume_state():
    """best.pt and last.pt come from one definition: the counters (Progress) are in both and a
    restore brings every one of them back; last.pt adds only what an exact resume needs."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    config, vocab = load_config("LSTM"), type("V", (), {"idx_to_word": ["<NULL>", "dog"]})()
    run = TrainState(config, Path("."), model, optimizer, scheduler, scaler, torch.device("cpu"))
    counters = dict(
        epoch=3, step_in_epoch=5, global_step=35, epoch_loss_sum=12.5, epoch_captions=40,
        history=[{"epoch": 1, "val_CIDEr": 0.5}], best_metrics={"val_CIDEr": 0.5}, best_epoch=1,
        epochs_without_improvement=2, stopped_early=True, wall_time_s=7.5,
    )
    for name, value in counters.items():
        setattr(run, name, value)
    best, last = run.checkpoint(vocab, resumable=False), run.checkpoint(vocab)
    assert set(last) - set(best) == {"optimizer", "scheduler", "scaler", "rng"}
    assert {k: best[k] for k in counters} == counters and best["vocab"] == ["<NULL>", "dog"]
    assert best["format"] == last["format"] and best["config"] == config.to_dict()

    fresh = TrainState(config, Path("."), model, optimizer, scheduler, scaler, torch.device("cpu"))
    fresh.restore(last, Path("last.pt"))
    assert {name: getattr(fresh, name) for name in counters} == counters


def test_resume_accepts_moved_folders_but_not_another_model():
    from helpers.config import ConfigError
    from helpers.runs import _check_resumable

    started = load_config("LSTM", ["data.work_dir=/old/work", "training.run_dir=/old/work/runs"])
    checkpoint = {"config": started.to_dict()}
    moved = load_config(
        "LSTM",
        [
            "data.work_dir=/kaggle/working",
            "training.run_dir=/kaggle/working/runs",
            "training.checkpoint_every_steps=100",
            "training.epochs=20",
        ],
    )
    _check_resumable(checkpoint, moved, Path("last.pt"))  # accepted
    with pytest.raises(ConfigError, match=r"model.hidden_dim: 512 -> 256.*--no-resume"):
        _check_resumable(checkpoint, load_config("LSTM", ["model.hidden_dim=256"]), Path("last.pt"))
    for changed, message in (
        ("training.label_smoothing=0.2", r"training.label_smoothing: 0.1 -> 0.2"),
        ("model.dropout=0.3", r"model.dropout: 0.5 -> 0.3"),
        ("training.alpha_c=0.5", r"training.alpha_c: 1.0 -> 0.5"),
    ):
        with pytest.raises(ConfigError, match=message):
            _check_resumable(checkpoint, load_config("LSTM", [changed]), Path("last.pt"))
    decoding = ["training.eval_length_penalty=0.7", "training.eval_no_repeat_ngram_size=0"]
    _check_resumable(checkpoint, load_config("LSTM", decoding), Path("last.pt"))  # evaluation only


def test_a_run_saved_before_the_recipe_keys_resumes_as_it_trained(small_demo):
    """A last.pt whose stored config lacks label_smoothing and alpha_c (saved before they existed, when
    only the transformer read model.dropout) is read as trained without them and without dropout:
    today's defaults are refused naming the keys and the overrides that resume it; with those it resumes."""
    from helpers.config import ConfigError

    work = small_demo[0]
    legacy = {"training.label_smoothing": 0.0, "model.dropout": 0.0, "training.alpha_c": 0.0}
    settings = {"training.eval_splits": [], "training.run_name": "older", "training.epochs": 1}
    train_on(small_demo, demo_config("LSTM", work, **settings, **legacy))
    last_path = demo_config("LSTM", work, **settings).run_path / "last.pt"
    checkpoint = load_checkpoint(last_path)
    for key in ("label_smoothing", "alpha_c"):
        del checkpoint["config"]["training"][key]
    checkpoint["config"]["model"]["dropout"] = 0.1  # the transformer's, which the LSTM ignored then
    save_atomic(checkpoint, last_path)
    recipe = {"training.label_smoothing": 0.1, "model.dropout": 0.5, "training.alpha_c": 1.0}
    with pytest.raises(ConfigError) as refused:
        train_on(small_demo, demo_config("LSTM", work, **{**settings, "training.epochs": 2}, **recipe))
    for key, value in recipe.items():
        assert f"{key}: 0.0 -> {value}" in str(refused.value)
    assert (
        "saved before training.label_smoothing, training.alpha_c existed and trained as with "
        "training.label_smoothing=0.0 training.alpha_c=0.0 model.dropout=0.0: add these overrides"
    ) in str(refused.value)
    longer = demo_config("LSTM", work, **{**settings, "training.epochs": 2}, **legacy)
    with pytest.warns(UserWarning, match="training.epochs 1 -> 2 on resume"):
        resumed = train_on(small_demo, longer)
    assert resumed.epochs == 2 and resumed.history[0] == checkpoint["history"][0]


FRESH_SCENES = 600


def _load_script(name: str):
    """A module of scripts/ (they are run as files, not imported as a package)."""
    path = Path(__file__).resolve().parent.parent / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


beam_vs_greedy = _load_script("beam_vs_greedy")


@pytest.fixture(scope="module")
def fresh_scenes(learning_demo):
    """(prepared, store): FRESH_SCENES new demo scenes (another generator seed, the same backbone, size
    and random weights) as a test split, made as scripts/beam_vs_greedy.py (README's figures) makes
    them, for comparisons too fine for the demo's 30 test images."""
    return beam_vs_greedy.fresh_scenes(demo_config("LSTM", learning_demo[0]), FRESH_SCENES)


def _fresh_scenes_cider(model, fresh_scenes, config, beam_size: int = 1) -> float:
    """Mean per-image CIDEr-D of the model's captions of the fresh scenes, decoded at config's options."""
    prepared, store = fresh_scenes
    captions = decode_split(model, store, "test", beam_size=beam_size,
                            max_length=config.data.max_caption_length, decoding=config.decoding)
    return np.mean(list(per_image_cider(prepared.references("test"), captions).values()))


@pytest.mark.slow
def test_the_beam_vs_greedy_script_measures_what_compute_metrics_does_and_reuses_its_runs(tmp_path):
    """scripts/beam_vs_greedy.py: its greedy and beam figures are compute_metrics' CIDEr of the trained
    run's captions of the fresh scenes, and a second call reuses the run instead of training again."""
    argv = ["--decoders", "LSTM", "--seeds", "3", "--scenes", "40", "--work-dir", str(tmp_path),
            "training.epochs=2"]
    (row,) = beam_vs_greedy.main(argv)
    config = beam_vs_greedy.demo_config("LSTM", 3, tmp_path, ["training.epochs=2"])
    assert config.training.seed == 3 and config.training.epochs == 2
    prepared, store = prepared_and_features(config, progress=False)
    fresh, fresh_store = beam_vs_greedy.fresh_scenes(config, 40)
    assert len(fresh.splits["test"]) == 40
    checkpoint = config.run_path / "last.pt"
    trained_at = checkpoint.stat().st_mtime_ns
    model = train(config, prepared=prepared, store=store, progress=False).model
    references = fresh.references("test")
    for size, key in ((1, "greedy"), (3, "searched")):
        captions = decode_split(model, fresh_store, "test", beam_size=size, max_length=16,
                                decoding=config.decoding)
        cider = compute_metrics(references, captions, meteor=False)["CIDEr"]
        assert row[key] == pytest.approx(cider, abs=1e-9)
    assert row["beam"] == 3 and 0.3 < row["greedy"] < 10  # two epochs already name colours and shapes
    assert row["difference"] == pytest.approx(row["searched"] - row["greedy"]) and row["se"] > 0
    assert beam_vs_greedy.main(argv) == [row]
    assert checkpoint.stat().st_mtime_ns == trained_at
    with pytest.raises(SystemExit, match=r"no beam size above 1 .* training.eval_beam_sizes=\[1,3\]"):
        beam_vs_greedy.main(["--work-dir", str(tmp_path / "greedy-only"), "training.eval_beam_sizes=[1]"])
    assert not (tmp_path / "greedy-only").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", LEARNING_DECODERS)
def test_beam_search_at_its_defaults_against_greedy(name, fresh_scenes, trained_decoders):
    """Beam search at the config's defaults (the smallest of training.eval_beam_sizes above 1, and
    training.eval_*: length penalty 0, trigram blocking, <UNK> masked) scores at least greedy's CIDEr-D
    at the same options on 600 fresh scenes, for every decoder.

    Measured here with training seeds 0-4, beam 3 minus greedy (the paired standard error is
    0.033-0.055, greedy 2.58-4.81): Vanilla_RNN +0.029/-0.011/+0.166/+0.168/+0.052, LSTM
    +0.037/+0.181/+0.122/+0.078/+0.137, Attention_LSTM +0.014/+0.028/+0.105/-0.019/+0.066, Transformer
    +0.104/+0.100/+0.103/+0.082/-0.046 (this test trains seed 0); each loss is within one standard
    error. While some of the demo's templates opened with a fixed phrase ("a picture of a single",
    "there is one"), beam 3 lost up to 0.10 for the recurrent decoders: it traded greedy's caption for
    that likelier opening and then got the colour or shape wrong. On the 30 val images the differences
    are noise. A beam search returning its worst finalist fails here for every decoder (-1.8%, -2.9%,
    -5.2% and -1.4% of greedy at seed 0).
    """
    config, model = trained_decoders[name]
    beam = beam_vs_greedy.beam_size(config)
    greedy = _fresh_scenes_cider(model, fresh_scenes, config)
    searched = _fresh_scenes_cider(model, fresh_scenes, config, beam_size=beam)
    print(f"{name}: CIDEr-D greedy {greedy:.3f}, beam {beam} {searched:.3f} ({searched - greedy:+.3f})")
    assert searched >= greedy, (name, greedy, searched)


@pytest.mark.slow
def test_scst_starts_from_the_finished_cross_entropy_run_and_raises_cider_on_fresh_scenes(
    learning_demo, fresh_scenes
):
    """The SCST learning test: the demo's cross-entropy LSTM (8 epochs), then the demo's SCST phase
    (configs/demo.yaml: 10 epochs, greedy baseline). The SCST run finds the cross-entropy run's folder
    and starts from it (no cross-entropy epoch again); the model it trained (last.pt) captions the 600
    fresh scenes with a higher CIDEr-D than the model it started from.

    Measured on 600 fresh scenes, training seeds 0-4 (this test trains seed 0), from cross-entropy
    greedy CIDEr-D 2.58-3.32: last.pt +0.58, +0.29, +0.16, +0.22, +0.73; best.pt +0.61, +0.42, +0.34,
    +0.22, +0.50. Sampling makes the phase chaotic: seed 0 run by scripts/beam_vs_greedy.py's config
    with two threads and by this test with one parted after the first SCST epoch. So this test scores
    last.pt (here +0.60), not best.pt: the 30 val images that pick best.pt are noise at this scale (in
    this test every SCST epoch scores below cross-entropy on them).
    """
    work, prepared, store, _ = learning_demo
    settings = {"training.eval_splits": [], "training.run_dir": str(work / "scst-runs")}
    xe_config = demo_config("LSTM", work, **settings)
    cross_entropy = train(xe_config, prepared=prepared, store=store, progress=False)
    scst_config = demo_config("LSTM", work, **settings, **{"training.scst.enabled": True})
    scst = train(scst_config, prepared=prepared, store=store, progress=False)
    assert scst.history[:8] == cross_entropy.history  # taken over, not trained again
    assert [row.get("phase", "xe") for row in scst.history[8:]] == ["scst"] * 10
    last = load_checkpoint(scst_config.run_path / "last.pt")
    assert last["scst_from"] == str(cross_entropy.run_dir)
    trained = build_model(scst_config, prepared.vocab, word_vectors=None)  # weights: last.pt's
    load_model_state(trained, last["model"], scst_config.run_path / "last.pt")

    before = _fresh_scenes_cider(cross_entropy.model, fresh_scenes, scst_config)
    after = _fresh_scenes_cider(trained, fresh_scenes, scst_config)
    print(f"fresh scenes CIDEr-D: cross-entropy {before:.3f}, after SCST {after:.3f}")
    assert after > before + 0.1
