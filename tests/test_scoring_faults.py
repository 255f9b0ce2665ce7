"""Fault catalogue (docs/FAULTS.md), scoring: what evaluate decodes with, wide beams, what each
results.json row records, and read-only run folders. Nothing is scored silently wrong."""

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest
import torch

from helpers import evaluate
from helpers.checkpoints import load_run
from helpers.config import ConfigError, load_config
from helpers.evaluate import evaluate_run, score_model, vocabulary_record
from helpers.files import WriteError
from helpers.models import CaptioningRNN, build_model
from helpers.text import END, NULL, START
from helpers.train import train
from helpers.workdir import prepared_and_features


def demo_config(tmp_path, data_dir, **overrides):
    values = {
        "data.work_dir": str(tmp_path / "work"),
        "training.run_dir": str(tmp_path / "runs"),
        "training.meteor": False,
        "training.epochs": 2,
        "training.eval_splits": [],
        "training.metric_tokenizer": "project",
        "batch_size": 40,
        "data.dataset": "flickr8k",
        "data.data_dir": str(data_dir),
        **overrides,
    }
    return load_config(["LSTM", "demo"], values)


def score_quietly(run_dir, **kwargs):
    return evaluate_run(run_dir, split="val", beam_sizes=(1, 3), device="cpu", meteor=False,
                        progress=False, **kwargs)


@pytest.fixture(scope="module")
def trained(demo_dir, tmp_path_factory):
    """A 2-epoch demo LSTM trained on its own copy of the demo data (tests change its captions)."""
    tmp_path = tmp_path_factory.mktemp("scoring")
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    config = demo_config(tmp_path, data)
    train(config, progress=False)
    return config, data


def test_evaluate_decodes_with_the_checkpoints_vocabulary_after_the_captions_changed(trained, capsys):
    """Issue 28, case 1: today's vocabulary read the model's word ids as other words ("a the red large
    picture circle ..."), scored 0 and exit 0."""
    config, data = trained
    before = score_quietly(config.run_path)
    captions = data / "captions.txt"
    original = captions.read_text()
    try:
        # A new word in every caption, twice: the most frequent word, so every other word's id moves.
        lines = original.splitlines()
        captions.write_text("\n".join([lines[0], *(line + " indeed indeed" for line in lines[1:])]) + "\n")
        capsys.readouterr()
        after = score_quietly(config.run_path)
    finally:
        captions.write_text(original)
    assert "note: the captions changed since" in capsys.readouterr().out
    assert after["captions"]["val"]["beam1"] == before["captions"]["val"]["beam1"]
    assert after["captions"]["val"]["beam3"] == before["captions"]["val"]["beam3"]
    model, checkpoint, _ = load_run(config.run_path)
    recorded = after["scoring"]["val"]["beam3"]["vocabulary"]
    assert recorded == vocabulary_record(checkpoint["vocab"]) == vocabulary_record(model.idx_to_word)
    assert recorded["words"] == len(checkpoint["vocab"])


def test_every_results_row_records_its_decoding_options_and_vocabulary(trained, tmp_path):
    """Issue 28, case 3: a row decoded with other options sat beside a config that said otherwise."""
    config, _ = trained
    results = score_quietly(config.run_path)
    for beam in (1, 3):
        row = results["scoring"]["val"][f"beam{beam}"]
        assert row["decoding"] == {"beam_size": beam, "max_length": config.data.max_caption_length,
                                   **config.decoding}
        assert row["decoding"]["min_length"] == 3 and row["empty_captions"] == 0
        assert row["vocabulary"]["words"] == results["vocab_size"]
    on_disk = json.loads((config.run_path / "results.json").read_text())
    assert on_disk["scoring"]["val"]["beam3"] == results["scoring"]["val"]["beam3"]


def random_lstm(words: int = 12, seed: int = 0):
    torch.manual_seed(seed)
    vocab = {w: i for i, w in enumerate([NULL, START, END, "<UNK>", *(f"w{i}" for i in range(words))])}
    return CaptioningRNN(vocab, wordvec_dim=8, hidden_dim=16, cell_type="lstm", backbone="regnet_x_400mf",
                         image_encoder_pretrained=False)


def caption_lengths(model, tokens: torch.Tensor) -> list[int]:
    """Words before <END> in each row."""
    end = model.word_to_idx[END]
    return [row.index(end) if end in row else len(row) for row in tokens.tolist()]


def test_wide_beams_end_on_empty_captions_unless_a_minimum_length_holds():
    """Issue 28, case 2: summed log-probabilities let one <END> beat whole captions at wide beams."""
    model = random_lstm()
    features = torch.randn(6, 400, 2, 2)
    wide = model.sample(features, max_length=8, beam_size=30)
    assert 0 in caption_lengths(model, wide)  # the fault, as the course's scoring has it
    held = model.sample(features, max_length=8, beam_size=30, min_length=3)
    assert min(caption_lengths(model, held)) >= 3
    greedy = model.sample(features, max_length=8, beam_size=1)
    assert torch.equal(model.sample(features, max_length=8, beam_size=1, min_length=0), greedy)
    with pytest.raises(ValueError, match="min_length must be between 0 .off. and max_length=8, got 9"):
        model.sample(features, max_length=8, beam_size=3, min_length=9)


def test_the_config_decodes_with_a_minimum_length_and_refuses_one_above_the_caption_length():
    config = load_config("LSTM")
    assert config.decoding["min_length"] == config.training.eval_min_length == 3
    with pytest.raises(ConfigError, match="training.eval_min_length=30 is above data.max_caption_length=20"):
        load_config("LSTM", {"training.eval_min_length": 30})
    assert load_config("LSTM", {"training.eval_min_length": 0}).run_name == config.run_name  # not identity


def test_empty_captions_are_counted_and_warned_about_never_scored_silently(trained, capsys):
    """Decoding without a minimum length at a beam wider than the vocabulary: the row says how many
    captions are empty, and a warning names the settings that avoid them."""
    config, _ = trained
    prepared, store = prepared_and_features(config, progress=False)
    torch.manual_seed(0)
    model = build_model(config, prepared.vocab, word_vectors=None).eval()  # untrained: near uniform
    beam = len(prepared.vocab) + 1
    decoding = {**config.decoding, "min_length": 0}
    _, captions, scoring = score_model(model, prepared, store, ["val"], [beam], meteor=False,
                                       progress=False, tokenizer="project", decoding=decoding)
    empty = sum(not caption for caption in captions["val"][f"beam{beam}"].values())
    assert empty > 0 and scoring["val"][f"beam{beam}"]["empty_captions"] == empty
    warning = capsys.readouterr().err
    images = len(captions["val"][f"beam{beam}"])
    assert f"warning: val beam {beam}: {empty} of {images} captions are empty" in warning
    assert "training.eval_min_length" in warning


def test_evaluate_on_a_read_only_run_folder_refuses_before_decoding_and_writes_elsewhere(
    trained, tmp_path, monkeypatch
):
    """Issue 28, case 14: it decoded and scored everything, then lost the scores writing results.json.
    Tests run as root, whom chmod does not stop: the file system's answer is simulated instead."""
    config, _ = trained
    score_quietly(config.run_path)  # the run's own results.json, whose rows are carried over
    run = config.run_path
    real_open = os.open

    def read_only(path, *args, **kwargs):
        if str(path).startswith(str(run)) and args and args[0] & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded before the results file was known to be writable")

    monkeypatch.setattr(os, "open", read_only)
    with monkeypatch.context() as patched:
        patched.setattr(evaluate, "decode_split", no_decoding)
        with pytest.raises(WriteError) as refused:
            evaluate_run(run, split="test", beam_sizes=(1,), device="cpu", meteor=False, progress=False)
    message = str(refused.value)
    assert f"{run} is on a read-only file system" in message and "nothing was decoded" in message
    assert f"--results /kaggle/working/{run.name}/results.json" in message

    elsewhere = tmp_path / "out" / "results.json"
    results = evaluate_run(run, split="test", beam_sizes=(1,), device="cpu", meteor=False, progress=False,
                           results_path=elsewhere)
    written = json.loads(elsewhere.read_text())
    assert set(written["metrics"]) == {"val", "test"}  # the run folder's val rows, and the new test row
    assert written["metrics"]["test"] == results["metrics"]["test"]


def test_evaluate_command_writes_where_results_says(trained, tmp_path, capsys):
    config, _ = trained
    out = tmp_path / "scores.json"
    code = evaluate.main([str(config.run_path), "--split", "val,test", "--beam-size", "1", "--no-meteor",
                          "--device", "cpu", "--results", str(out)])  # val,test: issue 28, case 16
    assert code == 0 and f"results: {out}" in capsys.readouterr().out
    metrics = json.loads(out.read_text())["metrics"]
    assert "beam1" in metrics["val"] and "beam1" in metrics["test"]


def test_a_folder_where_the_run_lock_belongs_is_named_with_the_fix(tmp_path, demo_dir):
    """Issue 28, case 16: run.lock as a folder said 'check the disk, then run again'."""
    config = demo_config(tmp_path, demo_dir)
    (config.run_path / "run.lock").mkdir(parents=True)
    with pytest.raises(WriteError) as refused:
        train(config, progress=False)
    assert f"cannot write {config.run_path / 'run.lock'}: it is a folder, where a file belongs" in str(
        refused.value)
    assert "rm -r" in str(refused.value) and not (tmp_path / "work").exists()
