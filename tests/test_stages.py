"""What the notebook stages do: the config layering, reuse of earlier outputs, and the samples shown."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from helpers.anatomy import words_per_caption
from helpers.checkpoints import load_checkpoint, load_run
from helpers.config import ConfigError
from helpers.glove import load_word_vectors
from helpers.models import CaptioningRNN, build_model
from helpers.notebook import Env
from helpers.runs import seed_everything
from helpers.stages import (
    TrainingPaused,
    compare_decoding,
    compare_embeddings,
    data_for,
    prepare,
    reuse_earlier_outputs,
    stage_config,
)
from helpers.stages import train as stages_train

NOTEBOOK_DEFAULTS = {  # the parameters cell as generated: None keeps the config's value
    "DEMO": False,
    "DATA_DIR": None,
    "DATASET": None,
    "PRESET": None,
    "BACKBONE": None,
    "PRETRAINED": None,
    "USE_GLOVE": None,
    "GLOVE_PATH": None,
    "FREEZE_EMBEDDINGS": None,
    "EPOCHS": None,
    "BATCH_SIZE": None,
    "OVERRIDES": [],
}


def env_for(work_dir: Path, inputs=()) -> Env:
    return Env(False, "cpu", None, None, Path(work_dir), tuple(Path(p) for p in inputs))


def test_config_then_demo_then_preset_then_parameters_then_widgets_then_overrides(tmp_path):
    env = env_for(tmp_path)
    plain = stage_config("LSTM", NOTEBOOK_DEFAULTS, env)
    assert (plain.model.backbone, plain.training.epochs, plain.batch_size) == ("resnet50", 10, 128)
    assert plain.data.work_dir == str(tmp_path) and plain.training.run_dir == str(tmp_path / "runs")
    assert plain.training.device == "cpu"
    scored = stage_config("LSTM", {**NOTEBOOK_DEFAULTS, "BEAM_SIZES": [1, 5]}, env)
    assert scored.training.eval_beam_sizes == [1, 5]  # what the training loop scores its best model with

    preset = stage_config("LSTM", {**NOTEBOOK_DEFAULTS, "PRESET": "kaggle_small_gpu"}, env)
    assert (preset.model.backbone, preset.model.hidden_dim, preset.batch_size) == ("regnet_x_400mf", 256, 256)

    demo = stage_config("Transformer", {**NOTEBOOK_DEFAULTS, "DEMO": True}, env)
    assert (demo.data.dataset, demo.data.data_dir, demo.model.pretrained_backbone) == ("demo", None, False)
    assert demo.embeddings.glove_path == "demo" and demo.model.decoder == "transformer"
    assert (demo.training.epochs, demo.batch_size) == (8, 50)

    # A preset applies in DEMO mode too (over the demo's sizes, keeping its generated data and GloVe).
    both = stage_config("LSTM", {**NOTEBOOK_DEFAULTS, "DEMO": True, "PRESET": "research"}, env)
    assert (both.model.backbone, both.model.hidden_dim, both.model.wordvec_dim) == ("resnet101", 1024, 300)
    assert (both.data.dataset, both.embeddings.glove_path) == ("demo", "demo")
    assert not both.model.pretrained_backbone

    # Parameters that are set win over DEMO and the preset.
    explicit = {"EPOCHS": 3, "BATCH_SIZE": 16, "BACKBONE": "resnet50", "USE_GLOVE": False,
                "PRESET": "research"}
    set_ = stage_config("LSTM", {**NOTEBOOK_DEFAULTS, "DEMO": True, **explicit}, env)
    assert (set_.training.epochs, set_.batch_size, set_.model.backbone) == (3, 16, "resnet50")
    assert not set_.embeddings.use_glove and set_.model.hidden_dim == 1024

    chosen = stage_config(
        "LSTM",
        {**NOTEBOOK_DEFAULTS, "DEMO": True, "OVERRIDES": ["training.epochs=2"]},
        env,
        backbone="resnet101",
        use_glove=False,
        freeze=True,
    )
    assert (chosen.model.backbone, chosen.embeddings.use_glove, chosen.embeddings.freeze) == (
        "resnet101",
        False,
        True,
    )
    assert chosen.training.epochs == 2 and chosen.run_path.parent == tmp_path / "runs"
    assert chosen.run_name.startswith("LSTM-resnet101_untrained-random-frozen-96-")


def test_the_batch_size_follows_the_backbone_unless_set(tmp_path):
    from helpers.backbones import BACKBONES

    env = env_for(tmp_path)
    for name, info in BACKBONES.items():
        assert stage_config("LSTM", NOTEBOOK_DEFAULTS, env, backbone=name).batch_size == info.batch_size
    explicit = stage_config("LSTM", {**NOTEBOOK_DEFAULTS, "BATCH_SIZE": 32}, env, backbone="resnet101")
    assert explicit.batch_size == 32


def test_demo_with_a_data_dir_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="DEMO = True generates its own data but DATA_DIR = '/nowhere'"):
        stage_config("LSTM", {**NOTEBOOK_DEFAULTS, "DEMO": True, "DATA_DIR": "/nowhere"}, env_for(tmp_path))


def test_every_widget_choice_names_its_own_run_folder(tmp_path):
    """Changing any choice that changes what is trained gives another run folder; the same choices
    (also with another work dir, device or epoch count: a session resuming) give the same one."""
    env = env_for(tmp_path)
    demo = {**NOTEBOOK_DEFAULTS, "DEMO": True}
    base = stage_config("LSTM", demo, env)
    variants = {
        "decoder": stage_config("Attention_LSTM", demo, env),
        "backbone": stage_config("LSTM", demo, env, backbone="resnet50"),
        "weights": stage_config("LSTM", demo, env, pretrained=True),
        "glove": stage_config("LSTM", demo, env, use_glove=False),
        "frozen": stage_config("LSTM", demo, env, freeze=True),
        "preset": stage_config("LSTM", {**demo, "PRESET": "kaggle_small_gpu"}, env),
        "image size": stage_config("LSTM", {**demo, "OVERRIDES": ["data.image_size=128"]}, env),
        "split": stage_config("LSTM", {**demo, "OVERRIDES": ["data.split_seed=1"]}, env),
        "mode": stage_config("LSTM", {**demo, "OVERRIDES": ["training.mode=finetune"]}, env),
        "layout": stage_config("LSTM", {**demo, "OVERRIDES": ["data.feature_layout=float16"]}, env),
        "batch": stage_config("LSTM", {**demo, "BATCH_SIZE": 10}, env),
    }
    names = {label: config.run_name for label, config in variants.items()}
    assert len(set(names.values()) | {base.run_name}) == len(variants) + 1, names
    assert base.run_name.startswith("LSTM-regnet_x_400mf_untrained-glove-96-")
    assert names["frozen"].startswith("LSTM-regnet_x_400mf_untrained-glove-frozen-96-")
    assert names["mode"].startswith("LSTM-regnet_x_400mf_untrained-glove-96-finetune-")
    assert all(name.startswith(("LSTM-", "Attention_LSTM-")) for name in names.values())  # runs="LSTM-*"
    elsewhere = Env(True, "cuda", None, None, tmp_path / "other", ())
    resumed = stage_config("LSTM", {**demo, "EPOCHS": 20}, elsewhere)
    assert resumed.run_name == base.run_name


def test_bad_choices_and_overrides_are_named(tmp_path):
    env = env_for(tmp_path)
    with pytest.raises(ValueError, match="Unknown choice 'colour'"):
        stage_config("LSTM", NOTEBOOK_DEFAULTS, env, colour="red")
    with pytest.raises(ConfigError, match="hiden_dim"):
        stage_config("LSTM", {**NOTEBOOK_DEFAULTS, "OVERRIDES": ["model.hiden_dim=3"]}, env)
    with pytest.raises(ConfigError, match="vgg"):
        stage_config("LSTM", {**NOTEBOOK_DEFAULTS, "BACKBONE": "vgg"}, env)


@pytest.fixture(scope="module")
def earlier_session(tmp_path_factory):
    """A finished stage 00 + 02 in one work dir, standing in for an attached notebook's output."""
    work = tmp_path_factory.mktemp("earlier") / "work"
    config = stage_config("LSTM", {**NOTEBOOK_DEFAULTS, "DEMO": True}, env_for(work))
    prepared, store = data_for(config)
    return work, prepared, store


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _read_only(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)


def test_a_session_reads_an_attached_store_in_place_and_links_nothing(earlier_session, tmp_path, capsys):
    """Session 2 (a training notebook) is given session 1's output read-only: the store is read where
    it is, nothing is linked or written there. Session 3 is given only session 2's output (which has
    no store): it is told which output to attach instead of extracting again, and given both it reads
    the store in place again."""
    import shutil

    from helpers.features import FeatureStoreNotAttached

    earlier, prepared, store = earlier_session
    attached = tmp_path / "input" / "notebooks" / "me" / "backbones"  # Kaggle's 2025 mount layout
    shutil.copytree(earlier, attached)
    _read_only(attached)
    before = _snapshot(attached)
    second = env_for(tmp_path / "second", inputs=[tmp_path / "input"])
    brought = reuse_earlier_outputs(second)
    assert any("data" in item for item in brought) and any("(read in place)" in item for item in brought)
    capsys.readouterr()
    config = stage_config("LSTM", {**NOTEBOOK_DEFAULTS, "DEMO": True}, second)
    reprepared = prepare(config)
    assert reprepared.key == prepared.key and reprepared.root == tmp_path / "second" / "data" / prepared.key
    _, in_place = data_for(config)
    assert in_place.path == attached / "features" / store.path.parent.name / store.path.name
    assert "reusing" in capsys.readouterr().out and "Feature store" not in capsys.readouterr().out
    short = ["training.epochs=1", "training.eval_splits=[]"]
    short_config = stage_config("LSTM", {**NOTEBOOK_DEFAULTS, "DEMO": True, "OVERRIDES": short}, second)
    result = stages_train(short_config,
                          reprepared, in_place)
    assert result.best_epoch == 1
    assert _snapshot(attached) == before  # nothing written into the input
    output = [p for p in (tmp_path / "second").rglob("*")]
    assert not any(p.is_symlink() for p in output) and not list((tmp_path / "second").rglob("*.npy.*"))
    assert not any(p.name.endswith(".npy") and "features" in p.parts for p in output)  # no store copied
    assert reuse_earlier_outputs(second) == []  # nothing twice

    (tmp_path / "input").rename(tmp_path / "mounted")  # a new session: mounted elsewhere, or not at all
    attached = tmp_path / "mounted" / "notebooks" / "me" / "backbones"
    third = env_for(tmp_path / "third", inputs=[tmp_path / "second"])  # only the previous output
    reuse_earlier_outputs(third)
    with pytest.raises(FeatureStoreNotAttached, match=r"read from an attached notebook output, .*backbones"):
        data_for(stage_config("Attention_LSTM", {**NOTEBOOK_DEFAULTS, "DEMO": True}, third))
    assert not list((tmp_path / "third" / "features").rglob("*.npy"))  # refused before extracting

    fourth = env_for(tmp_path / "fourth", inputs=[tmp_path / "second", tmp_path / "mounted"])  # both
    reuse_earlier_outputs(fourth)
    _, again = data_for(stage_config("Attention_LSTM", {**NOTEBOOK_DEFAULTS, "DEMO": True}, fourth))
    assert again.path == attached / "features" / store.path.parent.name / store.path.name
    assert not (tmp_path / "fourth" / "runs").exists()  # other notebooks' runs are not copied


def test_a_training_notebook_brings_in_its_own_runs_only_and_02_extracts_again(earlier_session, tmp_path):
    from helpers.features import FeatureStoreNotAttached
    from helpers.stages import features

    earlier, prepared, store = earlier_session
    runs = tmp_path / "input" / "runs"
    for name in ("LSTM-regnet_x_400mf", "Transformer-regnet_x_400mf"):
        (runs / name).mkdir(parents=True)
        (runs / name / "last.pt").write_bytes(b"checkpoint")
    record = tmp_path / "input" / "features" / store.path.parent.name / store.path.name / "attached.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"path": "/kaggle/input/gone/features/x/y", "output": "/kaggle/input/gone"}')
    env = env_for(tmp_path / "work", inputs=[tmp_path / "input", earlier.parent])
    brought = reuse_earlier_outputs(env, runs="LSTM-*")
    assert any(item.endswith("LSTM-regnet_x_400mf") for item in brought)
    assert sorted(p.name for p in (tmp_path / "work" / "runs").iterdir()) == ["LSTM-regnet_x_400mf"]
    # The store is attached as well (earlier.parent): the stale record is not brought in.
    config = stage_config("LSTM", {**NOTEBOOK_DEFAULTS, "DEMO": True}, env)
    assert data_for(config)[1].path == store.path

    alone = env_for(tmp_path / "alone", inputs=[tmp_path / "input"])
    reuse_earlier_outputs(alone)
    config = stage_config("LSTM", {**NOTEBOOK_DEFAULTS, "DEMO": True}, alone)
    with pytest.raises(FeatureStoreNotAttached, match="/kaggle/input/gone"):
        data_for(config)
    extracted = features(config, prepare(config))  # notebook 02: extracting is its job
    assert extracted.path == tmp_path / "alone" / "features" / store.path.parent.name / store.path.name
    assert extracted.is_complete() and not (extracted.path / "attached.json").exists()


def test_compare_decoding_scores_each_backbone_quietly_per_image(earlier_session, capsys):
    from helpers.evaluate import compute_metrics, decode_split

    work, prepared, store = earlier_session
    demo = {**NOTEBOOK_DEFAULTS, "DEMO": True}
    comparison = compare_decoding(["regnet_x_400mf"], demo, env_for(work), epochs=1)
    table, (run,) = comparison.table(), comparison.runs
    assert list(table.index) == ["regnet_x_400mf"] and table.loc["regnet_x_400mf", "best epoch"] == "1 of 1"
    # The table's score is the run's best model decoded on val and scored independently here.
    assert run.run.startswith("LSTM-regnet_x_400mf_untrained-glove-96-")
    model, _, config = load_run(work / "comparisons" / run.run)
    hypotheses = decode_split(  # greedy at the run's decoding options (trigram blocking, <UNK> masked)
        model, store, "val", max_length=config.data.max_caption_length,
        decoding=config.decoding,
    )
    scores = compute_metrics(prepared.references("val"), hypotheses, meteor=False)
    assert table.loc["regnet_x_400mf", "val BLEU-4"] == f"{100 * scores['Bleu_4']:.2f}"
    assert run.captions == hypotheses and set(run.per_image) == set(hypotheses)
    assert run.mean_cider == pytest.approx(scores["CIDEr"])  # the verdict's per-image scores average to it
    said = capsys.readouterr().out
    assert "reusing" not in said and "test beam" not in said and "epoch 1:" not in said  # one progress line
    assert comparison.per_word["val"] == pytest.approx(words_per_caption(prepared, "val"))


def test_compare_embeddings_trains_each_word_vector_choice(earlier_session):

    work, prepared, store = earlier_session
    comparison = compare_embeddings({**NOTEBOOK_DEFAULTS, "DEMO": True}, env_for(work), epochs=1)
    table = comparison.table()
    assert list(table.index) == ["random", "GloVe, frozen", "GloVe, trainable"]
    assert table["best epoch"].tolist() == ["1 of 1"] * 3
    assert all(run.wall_time_s > 0 for run in comparison.runs)
    assert comparison.verdict().startswith(f"Verdict on {len(prepared.splits['val'])} val images")
    folders = dict(zip(("random", "glove-frozen", "glove-trainable"), table["run"]))
    assert len(set(folders.values())) == 3
    runs = {name: load_run(work / "comparisons" / folder) for name, folder in folders.items()}
    embeddings = {name: config.embeddings for name, (_, _, config) in runs.items()}
    assert not embeddings["random"].use_glove
    assert embeddings["glove-frozen"].use_glove and embeddings["glove-frozen"].freeze
    assert embeddings["glove-trainable"].use_glove and not embeddings["glove-trainable"].freeze
    # Both GloVe runs start from the same table (train() seeds, then builds the model); only the
    # trainable one may move it.
    config = runs["glove-frozen"][2]
    seed_everything(config.training.seed)
    vectors = load_word_vectors(config, prepared.vocab)
    start = build_model(config, prepared.vocab, word_vectors=vectors).word_embed.W_embed
    frozen, trainable = (runs[name][0].word_embed.W_embed for name in ("glove-frozen", "glove-trainable"))
    assert not frozen.requires_grad and trainable.requires_grad
    assert torch.equal(frozen, start) and not torch.equal(trainable, start)


def test_session_hours_left_count_from_setup(capsys):
    env = Env(False, "cpu", None, None, Path("work"), (), started=time.time() - 2 * 3600)
    assert env.hours_left(None) is None
    assert env.hours_left(11.0) == pytest.approx(9.0, abs=1e-3)
    assert env.hours_left(1.5) == pytest.approx(1 / 60)  # used up: one minute, to save and pause
    assert "used its SESSION_HOURS=1.5; training gets one minute" in capsys.readouterr().out


def test_a_notebook_run_gets_the_session_budget_and_stops_if_nothing_can_be_shown(
    earlier_session, tmp_path, monkeypatch
):
    """hours_left caps training.max_hours; a pause before any epoch ended stops the notebook with advice."""
    work, prepared, store = earlier_session
    params = {**NOTEBOOK_DEFAULTS, "DEMO": True, "OVERRIDES": ["training.max_hours=0.5"]}
    config = stage_config("LSTM", params, env_for(tmp_path / "work"))
    monkeypatch.setattr("helpers.train.out_of_time", lambda deadline: deadline is not None)
    with pytest.raises(TrainingPaused, match=r"before the first epoch ended; .*last\.pt is saved\. Run this"):
        stages_train(config, prepared, store, hours_left=0.25)
    saved = yaml.safe_load((config.run_path / "config.yaml").read_text())
    assert saved["training"]["max_hours"] == 0.25 and config.training.max_hours == 0.5  # caller's untouched
    assert load_checkpoint(config.run_path / "last.pt")["global_step"] == 1
    with pytest.raises(TrainingPaused):
        stages_train(config, prepared, store, hours_left=2.0)
    assert yaml.safe_load((config.run_path / "config.yaml").read_text())["training"]["max_hours"] == 0.5
    assert load_checkpoint(config.run_path / "last.pt")["global_step"] == 2  # resumed, one more step


def test_committed_notebooks_are_the_generator_output(tmp_path):
    """scripts/make_notebooks.py writes every notebook; an edit made only in a .ipynb would be lost."""
    root = Path(__file__).resolve().parent.parent
    made = subprocess.run(
        [sys.executable, str(root / "scripts" / "make_notebooks.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    generated = sorted(path.name for path in tmp_path.glob("*.ipynb"))
    assert generated == sorted(path.name for path in (root / "notebooks").glob("*.ipynb"))
    for name in generated:
        committed = (root / "notebooks" / name).read_text(encoding="utf-8")
        assert (tmp_path / name).read_text(encoding="utf-8") == committed, (
            f"notebooks/{name} differs from scripts/make_notebooks.py's output: edit the script and rerun it"
        )


def test_the_command_line_layers_files_as_the_notebooks_do(tmp_path):
    """`python -m helpers.train --config LSTM --demo --preset kaggle_small_gpu` and a notebook with
    DEMO = True, PRESET = 'kaggle_small_gpu' train the same run."""
    from helpers.config import config_layers, load_config

    env = env_for(tmp_path)
    notebook = stage_config("LSTM", {**NOTEBOOK_DEFAULTS, "DEMO": True, "PRESET": "kaggle_small_gpu"}, env)
    session = {"data.work_dir": str(tmp_path), "training.run_dir": str(tmp_path / "runs"),
               "training.device": "cpu"}
    command_line = load_config(config_layers("LSTM", ["kaggle_small_gpu"], demo=True), session)
    assert command_line.run_path == notebook.run_path
    assert (notebook.model.hidden_dim, notebook.data.dataset, notebook.batch_size) == (256, "demo", 50)


def test_saturated_features_are_measured_not_predicted(earlier_session, tmp_path):
    """Random-weight resnet50 learns on the demo (val CIDEr above regnet's after 8 epochs): no choice is
    called unlearnable in advance. What is named is measured: a uint8 store whose ranges reached the
    float16 limit, as random-weight resnet101's do at 96 px."""
    import shutil

    import numpy as np

    from helpers.features import FeatureStore
    from helpers.stages import describe, saturation_note

    _, _, store = earlier_session
    demo = {**NOTEBOOK_DEFAULTS, "DEMO": True}
    resnet = stage_config("Attention_LSTM", demo, env_for(tmp_path), backbone="resnet50")
    assert "NOTE" not in describe(resnet)
    assert saturation_note(store) is None
    shutil.copytree(store.path, tmp_path / "store")
    saturated = FeatureStore.open(tmp_path / "store")
    ranges = np.load(saturated.ranges_path("val"))
    ranges[0, 0, 0] = np.finfo(np.float16).max  # one channel's low end of one image, at the limit
    with open(saturated.ranges_path("val"), "wb") as file:
        np.save(file, ranges)
    assert "features reached the float16 limit (65504)" in saturation_note(saturated)


def test_sizes_read_in_the_unit_that_fits_them():
    from helpers.stages import size_text

    assert [size_text(n) for n in (12, 812_000, 1_560_000, 21_600_000, 3.4e9, 812e9)] == [
        "12 B", "812 kB", "1.56 MB", "21.6 MB", "3.40 GB", "812 GB"]  # never "0.002 GB"


def test_a_training_notebook_shows_its_model_one_batch_and_the_loss_per_word(earlier_session):
    import torch.nn.functional as F

    from helpers import anatomy
    from helpers.stages import attention_note

    work, prepared, store = earlier_session
    config = stage_config("Transformer", {**NOTEBOOK_DEFAULTS, "DEMO": True}, env_for(work))
    model = anatomy.untrained_model(config, prepared)
    shown = anatomy.describe_model(model, config.training.mode)
    assert shown.startswith("CaptioningTransformer(") and "(0-1): 2 x TransformerDecoderLayer(" in shown
    assert "(image_encoder): ImageEncoder(regnet_x_400mf, 5,495,976 parameters; frozen, never run" in shown
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert f"parameters: {trained:,} trained." in shown
    where = anatomy.code_location(model)
    source = (Path(__file__).resolve().parent.parent / "helpers" / "decoders.py").read_text().splitlines()
    line = int(re.search(r"helpers/decoders\.py line (\d+), class TransformerDecoder\b", where).group(1))
    assert source[line - 1].startswith("class TransformerDecoder(")  # the line a reader opens
    assert "class CaptioningTransformer" in where and "function temporal_softmax_loss" in where
    length, vocab = prepared.max_caption_length + 2, len(prepared.vocab.idx_to_word)
    batch = anatomy.one_batch(model, config, prepared, store)
    assert f"captions      ({4}, {length})" in batch and f"scores        (4, {length - 1}, {vocab})" in batch
    inputs, captions = anatomy._first_batch(config, prepared, store, 4)
    with torch.no_grad():
        scores = model.scores(model.features_from(inputs), captions[:, :-1])
    per_word = F.cross_entropy(scores.flatten(0, 1), captions[:, 1:].flatten(), ignore_index=0)
    assert f"= {float(per_word):.3f} per word" in batch  # the summed loss divided by the words it sums over
    encoded, _ = prepared.captions("val")
    assert anatomy.words_per_caption(prepared, "val") == pytest.approx((encoded[:, 1:] != 0).sum(1).mean())
    note = attention_note(model, store, (3, 3))
    assert "3 x 3 grid" in note and "last layer (2 of 2), averaged over its 4 heads" in note


def test_attention_samples_show_the_best_and_worst_image_and_the_run_ends_with_its_summary(earlier_session):
    import matplotlib

    matplotlib.use("Agg")
    from helpers import figures
    from helpers.evaluate import per_image_cider
    from helpers.stages import attention_samples, run_summary

    work, prepared, store = earlier_session
    short = ["training.epochs=1", "training.eval_beam_sizes=[1]", "training.meteor=false"]
    config = stage_config("Attention_LSTM", {**NOTEBOOK_DEFAULTS, "DEMO": True, "OVERRIDES": short},
                          env_for(work))
    result = stages_train(config, prepared, store, progress=False)
    captions = result.results["captions"]["test"]["beam1"]
    references = prepared.references("test")
    scores = per_image_cider({name: references[name] for name in captions}, captions)
    best, worst = attention_samples(result, prepared, store, config)
    assert best["title"].startswith(f"Best of {len(captions)} test images by CIDEr-D")
    assert worst["title"].startswith(f"Worst of {len(captions)} test images")
    named = [sample["title"].split(": ")[1].split(",")[0] for sample in (best, worst)]
    assert [scores[name] for name in named] == [max(scores.values()), min(scores.values())]
    for sample, name in zip((best, worst), named):
        assert sample["caption"] == captions[name] and sample["words"] == captions[name].split()
        assert sample["reference"] in references[name]
        assert sample["attention"].shape == (len(sample["words"]), 3, 3) and "3 x 3 grid" in sample["note"]
    heading = figures.show_attention(**best)._suptitle.get_text().replace("\n", " ")
    assert f"generated: {best['caption']}" in heading and "reference: " in heading
    summary = run_summary(result, "06_train_transformer")
    val_cider = 100 * result.best_metrics["val_CIDEr"]
    test_cider = 100 * result.results["metrics"]["test"]["beam1"]["CIDEr"]
    assert summary.startswith(f"Summary: best epoch 1 of 1 (val CIDEr {val_cider:.1f}); "
                              f"test CIDEr {test_cider:.1f} greedy; ")
    assert re.search(r"; \d+(\.\d)? (s|min|h) of training\. Next: 06_train_transformer\.$", summary), summary


def test_captions_shown_in_notebooks_are_decoded_with_the_run_configs_options():
    """caption_features / caption_images (notebook samples, uploads, attention maps) take the config's
    decoding options, as the scored captions in results.json were decoded: an untrained model that
    repeats a word greedily repeats none with n-gram blocking of size 1."""
    from helpers.stages import caption_features
    from helpers.text import Vocabulary

    seed_everything(0)
    words = {"<NULL>": 0, "<START>": 1, "<END>": 2, "<UNK>": 3, **{f"w{i}": 4 + i for i in range(12)}}
    model = CaptioningRNN(words, input_dim=400, wordvec_dim=8, hidden_dim=16, cell_type="lstm",
                          backbone="regnet_x_400mf", image_encoder_pretrained=False).eval()
    with torch.no_grad():  # make one word win at every step
        model.output_proj.bias.zero_()
        model.output_proj.bias[words["w5"]] = 10.0
    features, vocab = torch.randn(2, 400, 2, 2), Vocabulary(list(words))
    plain = caption_features(model, features, vocab, max_length=6)
    blocked = caption_features(model, features, vocab, max_length=6, decoding={"no_repeat_ngram_size": 1})
    assert plain[0][1] == ["w5"] * 6
    for caption, words_out, _ in blocked:
        assert words_out[0] == "w5" and len(set(words_out)) == len(words_out) > 1, caption
