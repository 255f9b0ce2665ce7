"""The fault catalogue (docs/FAULTS.md): every failure a user can cause or meet ends in one message that
names the file, line or key and the fix, and nothing finished is lost. Kills are real SIGKILLs."""

from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import hold_run_lock as hold_lock
from PIL import Image

from helpers.checkpoints import CheckpointError, load_checkpoint
from helpers.config import ConfigError, bad_image_limit, config_layers, load_config
from helpers.embeddings import GloveFormatError, load_glove_embeddings, write_glove_file
from helpers.evaluate import evaluate_run
from helpers.files import WriteError, atomic_path, remove_abandoned_temporaries, write_json_atomic
from helpers.glove import glove_file_dim
from helpers.images import TooManyBadImagesError, load_image
from helpers.runlock import OWNER_NAME, RunFolderBusyError, RunLock
from helpers.runs import NonFiniteLossError, check_resume_compatible
from helpers.sources import DatasetFormatError, read_flickr_csv
from helpers.text import Vocabulary
from helpers.train import train
from helpers.workdir import prepared_and_features

ROOT = Path(__file__).resolve().parent.parent


def demo_config(work: Path, demo_dir: Path | None, name: str = "LSTM", **overrides):
    """configs/<name>.yaml + demo.yaml on the 120-image conftest demo: one short epoch, no scoring."""
    values = {
        "data.work_dir": str(work / "work"),
        "training.run_dir": str(work / "runs"),
        "training.meteor": False,
        "training.epochs": 1,
        "training.eval_splits": [],
        "batch_size": 40,
        **({"data.dataset": "flickr8k", "data.data_dir": str(demo_dir)} if demo_dir else {}),
        **overrides,
    }
    return load_config([name, "demo"], values)


@pytest.fixture(scope="module")
def source(demo_dir, tmp_path_factory):
    """Prepared data and feature store of the conftest demo, shared by this module's runs."""
    work = tmp_path_factory.mktemp("faults")
    return prepared_and_features(demo_config(work, demo_dir), progress=False)


def train_quietly(config, source, **kwargs):
    prepared, store = source
    return train(config, prepared=prepared, store=store, progress=False, **kwargs)


def spawn(code: str) -> subprocess.Popen:
    """A Python child running `code` that prints 'ready' once it holds what the test waits for."""
    child = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    line = child.stdout.readline()
    assert line.strip() == "ready", line + child.stderr.read()
    return child


def sigkill(child: subprocess.Popen) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL


def files_in(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ---------------------------------------------------------------------------------------- the run lock


def test_a_second_training_into_a_run_folder_refuses_at_once_naming_the_owner(tmp_path, source, demo_dir):
    config = demo_config(tmp_path, demo_dir, **{"training.run_name": "shared"})
    train_quietly(config, source)  # a finished run whose files must survive
    before = files_in(config.run_path)
    owner = hold_lock(config.run_path)
    try:
        with pytest.raises(RunFolderBusyError) as refused:
            train(config, progress=False, resume=False)
        assert not (tmp_path / "work" / "data").exists()  # refused before preparing anything
        message = str(refused.value)
        assert f"in use by process {owner.pid}" in message and "from helpers.runlock import" in message
        assert "running since 20" in message and "training.run_name=" in message
        held = files_in(config.run_path)
        assert held == {**before, "run.lock": held["run.lock"], "run.owner.json": held["run.owner.json"]}
    finally:
        sigkill(owner)


def test_a_killed_owner_never_leaves_the_run_folder_locked(tmp_path):
    owner = hold_lock(tmp_path / "run")
    with pytest.raises(RunFolderBusyError):
        RunLock(tmp_path / "run").acquire()
    sigkill(owner)
    with RunLock(tmp_path / "run") as lock:  # the kernel dropped the dead owner's lock
        assert lock.taken_over_from["pid"] == owner.pid
        assert lock.owner()["pid"] == os.getpid()
    assert not list((tmp_path / "run").iterdir())  # a clean release leaves nothing behind


def test_a_read_only_run_folder_is_named_before_anything_is_prepared(tmp_path, monkeypatch, demo_dir):
    """Tests run as root, whom chmod does not stop: the file system's answer is simulated instead."""
    runs = tmp_path / "input" / "runs"
    real_open = os.open

    def read_only(path, *args, **kwargs):
        if str(path).startswith(str(runs)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    config = demo_config(tmp_path, demo_dir, **{"training.run_dir": str(runs)})
    with pytest.raises(WriteError) as refused:
        train(config, progress=False)
    message = str(refused.value)
    assert f"{runs / config.run_name} is on a read-only file system" in message
    assert "Set training.run_dir" in message and "/kaggle/working" in message
    assert not (tmp_path / "work").exists()


# ------------------------------------------------------------------------------------------- resuming


def test_resume_refuses_a_vocabulary_whose_ids_moved(tmp_path, source, demo_dir):
    """Same captions count, same size, other ids: the data changed under a run folder."""
    config = demo_config(tmp_path, demo_dir, **{"training.run_name": "vocab"})
    train_quietly(config, source)
    last = config.run_path / "last.pt"
    saved = last.read_bytes()

    changed_dir = tmp_path / "changed"
    shutil.copytree(demo_dir, changed_dir)
    captions = changed_dir / "captions.txt"
    captions.write_text(captions.read_text().replace(" red ", " crimson "))
    changed = demo_config(tmp_path, changed_dir, **{"training.run_name": "vocab"})
    with pytest.raises(CheckpointError) as refused:
        train(changed, progress=False)
    message = str(refused.value)
    assert f"{last} was trained on another vocabulary" in message
    assert "1 added (e.g. 'crimson')" in message and "1 gone (e.g. 'red')" in message, message
    assert "training.run_name" in message and "--no-resume" in message and "RESUME = False" in message
    assert last.read_bytes() == saved


def test_resume_names_every_kind_of_vocabulary_change():
    config = load_config("LSTM")
    words = ["<NULL>", "<START>", "<END>", "<UNK>", "a", "dog", "runs"]
    checkpoint = {"config": config.to_dict(), "vocab": words}
    check_resume_compatible(checkpoint, Vocabulary(words), config, Path("last.pt"))  # same: accepted
    swapped = Vocabulary(["<NULL>", "<START>", "<END>", "<UNK>", "dog", "a", "runs"])
    with pytest.raises(CheckpointError, match=r"7 -> 7 words: 2 with another id \(e\.g\. 'dog' 5 -> 4"):
        check_resume_compatible(checkpoint, swapped, config, Path("last.pt"))
    grown = Vocabulary([*words, "cat"])
    with pytest.raises(CheckpointError, match=r"7 -> 8 words: 1 added \(e\.g\. 'cat'\)"):
        check_resume_compatible(checkpoint, grown, config, Path("last.pt"))


def test_a_truncated_last_checkpoint_is_named_with_the_way_to_start_over(tmp_path, source, demo_dir):
    config = demo_config(tmp_path, demo_dir, **{"training.run_name": "truncated"})
    train_quietly(config, source)
    last = config.run_path / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    best = (config.run_path / "best.pt").read_bytes()
    with pytest.raises(CheckpointError) as refused:
        train_quietly(config, source)
    message = str(refused.value)
    assert f"{last} is truncated or damaged" in message and "--no-resume" in message
    assert (config.run_path / "best.pt").read_bytes() == best


def test_an_empty_best_checkpoint_is_named_and_last_pt_can_still_be_scored(tmp_path, source, demo_dir):
    config = demo_config(tmp_path, demo_dir, **{"training.run_name": "empty_best"})
    train_quietly(config, source)
    best = config.run_path / "best.pt"
    best.write_bytes(b"")
    prepared, store = source
    with pytest.raises(CheckpointError, match=r"best\.pt is empty \(0 bytes\).*--checkpoint last"):
        evaluate_run(config.run_path, prepared=prepared, store=store, meteor=False, progress=False)
    results = evaluate_run(
        config.run_path, beam_sizes=(1,), prepared=prepared, store=store, meteor=False, progress=False,
        checkpoint_name="last",
    )
    assert "beam1" in results["metrics"]["test"]


# ------------------------------------------------------------------------------------- writing fails


@pytest.mark.parametrize(
    "error, expected",
    [
        (OSError(errno.ENOSPC, "No space left on device"), "no space left on the disk while writing"),
        (OSError(errno.EROFS, "Read-only file system"), "is on a read-only file system"),
        (RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"), "probably full"),
    ],
    ids=["disk-full", "read-only", "torch-writer"],
)
def test_a_failed_checkpoint_write_keeps_the_last_good_one(
    tmp_path, source, monkeypatch, demo_dir, error, expected
):
    config = demo_config(
        tmp_path, demo_dir, **{"training.run_name": "disk", "training.checkpoint_every_steps": 2}
    )
    real_save = torch.save
    calls = []

    def failing_save(payload, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # the first checkpoint (step 2) is written; the second (step 4) fails
            Path(path).write_bytes(b"half a checkpoint")
            raise error
        return real_save(payload, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(WriteError) as failed:
        train_quietly(config, source)
    message = str(failed.value)
    assert str(config.run_path / "last.pt") in message and expected in message
    assert "run the same command again" in message or "Set training.run_dir" in message
    assert load_checkpoint(config.run_path / "last.pt")["global_step"] == 2
    assert sorted(p.name for p in config.run_path.iterdir()) == ["config.yaml", "last.pt"]


# ------------------------------------------------------------------------------------ non-finite values


def test_a_nan_loss_stops_at_its_step_keeping_the_last_good_checkpoint(
    tmp_path, source, monkeypatch, demo_dir
):
    from helpers.objectives import CrossEntropy

    settings = {"training.run_name": "nan", "training.checkpoint_every_steps": 2}
    config = demo_config(tmp_path, demo_dir, **settings)
    real_loss = CrossEntropy.loss
    steps = []

    def diverging_loss(*args, **kwargs):
        steps.append(1)
        step = real_loss(*args, **kwargs)
        if len(steps) == 3:
            step.mean = torch.tensor(float("nan"))
        return step

    monkeypatch.setattr(CrossEntropy, "loss", diverging_loss)
    with pytest.raises(NonFiniteLossError) as stopped:
        train_quietly(config, source)
    message = str(stopped.value)
    last = config.run_path / "last.pt"
    assert "the training loss is nan at epoch 1, step 3 (global step 3)" in message
    assert f"{last} (global step 2, 0 epochs done)" in message and "training.lr=0.003" in message
    assert load_checkpoint(last)["global_step"] == 2
    assert not (config.run_path / "best.pt").exists() and not (config.run_path / "history.json").exists()


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_nan_or_inf_in_a_glove_file_is_refused_with_its_line(tmp_path, bad):
    path = write_glove_file(tmp_path / "glove.txt", {"a": [0.1, 0.2], "dog": [0.3, 0.4], "runs": [0.5, 0.6]})
    lines = path.read_text().splitlines()
    lines[1] = f"dog 0.3 {bad}"
    path.write_text("\n".join(lines) + "\n")
    vocab = {"<NULL>": 0, "<START>": 1, "<END>": 2, "<UNK>": 3, "a": 4, "dog": 5, "runs": 6}
    with pytest.raises(GloveFormatError, match=rf"glove\.txt:2: the vector of 'dog' holds {bad}"):
        load_glove_embeddings(path, vocab, embed_dim=2, cache_dir=tmp_path / "cache", verbose=False)


@pytest.mark.parametrize("kind", ["gzip", "zip"])
def test_a_compressed_glove_file_is_told_to_unpack(tmp_path, kind):
    text = write_glove_file(tmp_path / "glove.6B.50d.txt", {"dog": [0.1] * 50}).read_bytes()
    if kind == "gzip":
        archive = tmp_path / "glove.6B.50d.txt.gz"
        archive.write_bytes(gzip.compress(text))
        command = "gunzip -k glove.6B.50d.txt.gz"
    else:
        archive = tmp_path / "glove.6B.zip"
        with zipfile.ZipFile(archive, "w") as bundle:
            bundle.writestr("glove.6B.50d.txt", text)
        command = "unzip glove.6B.zip"
    for read in (lambda: glove_file_dim(archive), lambda: load_glove_embeddings(archive, {"dog": 0}, 50)):
        with pytest.raises(GloveFormatError) as refused:
            read()
        assert f"{archive} is a {kind} archive" in str(refused.value) and command in str(refused.value)
        assert "embed_dim" not in str(refused.value)


def test_non_finite_config_numbers_are_refused_when_the_config_loads():
    with pytest.raises(ConfigError, match=r"training\.lr=nan is not a finite number"):
        load_config("LSTM", ["training.lr=nan"])
    with pytest.raises(ConfigError, match=r"training\.max_hours=inf is not a finite number"):
        load_config("LSTM", ["training.max_hours=.inf"])


# ------------------------------------------------------------------------------- splits and config


def test_eval_split_typos_are_refused_when_the_config_loads():
    typo = r"training\.eval_splits='tset' is not valid\. Did you mean 'test'\?"
    with pytest.raises(ConfigError, match=typo):
        load_config("LSTM", ["training.eval_splits=[val, tset]"])


def test_a_karpathy_split_without_val_images_is_refused_before_training(tmp_path, demo_dir):
    data = tmp_path / "flickr"
    shutil.copytree(demo_dir, data)
    names = sorted(p.name for p in (data / "Images").iterdir())
    split = {"images": [{"filename": n, "split": "train" if i % 5 else "test"} for i, n in enumerate(names)]}
    (data / "dataset_flickr8k.json").write_text(json.dumps(split))
    config = demo_config(tmp_path, data, **{"data.split": "karpathy", "training.eval_splits": ["test"]})
    with pytest.raises(ConfigError) as refused:
        train(config, progress=False)
    message = str(refused.value)
    assert "has no images in 'val' (validation after each epoch)" in message
    assert "dataset_flickr8k.json leaves them empty" in message and "data.split=seeded" in message
    assert not (config.run_path / "last.pt").exists()
    assert not (tmp_path / "work" / "features").exists()  # refused before any feature was extracted


def test_the_bad_image_threshold_is_a_config_key(tmp_path, demo_dir):
    assert bad_image_limit(load_config("LSTM", ["data.max_bad_images=5"])) == 5
    assert bad_image_limit(load_config("LSTM", ["data.max_bad_images=0.05"])) == 0.05
    assert bad_image_limit(load_config("LSTM", ["data.max_bad_images=null"])) is None
    with pytest.raises(ConfigError, match="data.max_bad_images=-1.0 must be a fraction"):
        load_config("LSTM", ["data.max_bad_images=-1"])

    data = tmp_path / "broken"
    shutil.copytree(demo_dir, data)
    for image in sorted((data / "Images").iterdir())[:3]:
        image.write_bytes(b"not a jpeg at all")
    strict = demo_config(tmp_path, data, **{"training.num_workers": 0})
    with pytest.raises(TooManyBadImagesError) as stopped:
        prepared_and_features(strict, progress=False)
    assert "3 of 120 images could not be decoded" in str(stopped.value)
    assert "raise data.max_bad_images (now 0.01" in str(stopped.value)
    tolerant = demo_config(tmp_path, data, **{"training.num_workers": 0, "data.max_bad_images": 3})
    with pytest.warns(UserWarning, match=r"skipped 3 of 120 images that could not be decoded:\n.*00000"):
        _, store = prepared_and_features(tolerant, progress=False)
    assert store.is_complete()


def test_the_bad_image_threshold_also_governs_missing_images_when_preparing(tmp_path, demo_dir):
    data = tmp_path / "incomplete"
    shutil.copytree(demo_dir, data)
    for image in sorted((data / "Images").iterdir())[:3]:
        image.unlink()
    with pytest.raises(DatasetFormatError) as stopped:
        strict = demo_config(tmp_path / "strict", data, **{"training.num_workers": 0})
        prepared_and_features(strict, progress=False)
    assert "3 of the 120 images" in str(stopped.value) and "data.max_bad_images=0.05" in str(stopped.value)
    assert not list((tmp_path / "strict").glob("**/captions.npy"))  # nothing prepared
    tolerant = demo_config(tmp_path / "ok", data, **{"training.num_workers": 0, "data.max_bad_images": 3})
    prepared, store = prepared_and_features(tolerant, progress=False)
    assert sum(len(names) for names in prepared.splits.values()) == 117 and store.is_complete()


def test_a_utf16_captions_file_gets_an_encoding_hint(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_text("image,caption\na.jpg,A dog runs .\n", encoding="utf-16")
    with pytest.raises(DatasetFormatError, match=r"captions\.txt is UTF-16 text.*iconv -f utf-16 -t utf-8"):
        read_flickr_csv(path)


def test_a_huge_image_warning_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    Image.new("RGB", (40, 40)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1,600 pixels: over the limit, under twice it
    with pytest.warns(Image.DecompressionBombWarning, match=rf"{path}: Image size \(1600 pixels\)"):
        assert load_image(path).size == (40, 40)


def test_demo_mode_honours_an_explicit_epochs(tmp_path):
    from helpers.notebook import Env
    from helpers.stages import stage_config

    env = Env(False, "cpu", None, None, tmp_path, ())
    assert stage_config("LSTM", {"DEMO": True, "EPOCHS": 3}, env).training.epochs == 3
    assert stage_config("LSTM", {"DEMO": True, "EPOCHS": None}, env).training.epochs == 8  # demo.yaml's
    assert stage_config("LSTM", {"DEMO": False, "EPOCHS": None}, env).training.epochs == 10  # LSTM.yaml's


# ------------------------------------------------------------------------------- killed writes


def test_the_temporary_of_a_killed_write_is_removed_by_the_next_one(tmp_path):
    target = write_json_atomic(tmp_path / "history.json", {"epoch": 1})
    writer = spawn(
        "import time; from helpers.files import atomic_path\n"
        f"with atomic_path({str(target)!r}) as temporary:\n"
        "    temporary.write_bytes(b'x' * 1_000_000); print('ready', flush=True); time.sleep(600)"
    )
    sigkill(writer)
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].stat().st_size == 1_000_000
    write_json_atomic(target, {"epoch": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["history.json"]
    assert json.loads(target.read_text()) == {"epoch": 2}


def test_a_run_folder_sheds_leftovers_of_killed_writes_but_not_live_ones(tmp_path):
    code = "import os; print(os.getpid())"
    dead = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    (tmp_path / f".best.pt.{dead_pid}-abc123.tmp").write_bytes(b"x")  # its writer is gone
    (tmp_path / f".last.pt.{os.getpid()}-def456.tmp").write_bytes(b"x")  # a live writer's
    legacy_old, legacy_new = tmp_path / ".last.pt.old12345.tmp", tmp_path / ".last.pt.new12345.tmp"
    legacy_old.write_bytes(b"x")
    legacy_new.write_bytes(b"x")
    os.utime(legacy_old, (time.time() - 7200, time.time() - 7200))
    removed = remove_abandoned_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == [f".best.pt.{dead_pid}-abc123.tmp", ".last.pt.old12345.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f".last.pt.{os.getpid()}-def456.tmp", ".last.pt.new12345.tmp"]
    )
    with atomic_path(tmp_path / "last.pt") as temporary:  # a live writer's temporary is never touched
        temporary.write_bytes(b"new")
    assert (tmp_path / f".last.pt.{os.getpid()}-def456.tmp").exists()


# -------------------------------------------------------------------------------- the command line


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def assert_clean_failure(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_command_line_typos_end_in_one_message(tmp_path):
    split = run_cli("helpers.evaluate", str(tmp_path), "--split", "tset")
    assert_clean_failure(split, "unknown split 'tset'. Did you mean 'test'?")
    late_override = run_cli(
        "helpers.train", "--config", "LSTM", "training.epochs=1", "--quiet", "model.hiden_dim=3"
    )
    assert_clean_failure(late_override, "unknown key 'model.hiden_dim'")  # parsed although after --quiet


@pytest.mark.slow
def test_kill_9_mid_training_then_a_second_run_refuses_and_a_third_resumes(tmp_path, demo_dir):
    """The real thing: command-line trainings, a SIGKILL, the run folder's lock and the resume. The
    first run is planned far longer than the test waits, so it is surely still running when the
    second one tries the folder, whatever the machine's speed; the third resumes it and stops one
    epoch after the kill (a changed epochs count keeps the run)."""
    args = [
        "helpers.train", "--config", "LSTM", "--demo",
        f"data.work_dir={tmp_path / 'work'}", "data.dataset=flickr8k", f"data.data_dir={demo_dir}",
        f"training.run_dir={tmp_path / 'runs'}", "training.meteor=false",
        "training.eval_splits=[test]", "training.eval_beam_sizes=[1]", "training.checkpoint_every_steps=1",
        "batch_size=20", "training.run_name=LSTM-regnet_x_400mf",
    ]
    run_dir = tmp_path / "runs" / "LSTM-regnet_x_400mf"
    first = subprocess.Popen([sys.executable, "-m", *args, "training.epochs=1000"], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (run_dir / "last.pt").exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.2)
    assert (run_dir / "last.pt").exists() and first.poll() is None

    second = run_cli(*args, "training.epochs=1000", "--quiet")
    assert_clean_failure(second, f"is in use by process {first.pid}", "-m helpers.train --config LSTM")

    sigkill(first)
    killed = load_checkpoint(run_dir / "last.pt")
    assert killed["global_step"] >= 1
    epochs = killed["epoch"] + 1
    third = run_cli(*args, f"training.epochs={epochs}")
    assert third.returncode == 0, third.stdout + third.stderr
    assert "ended without releasing it (killed?)" in third.stdout
    assert f"Resuming {run_dir}" in third.stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert results["epochs"] == epochs and results["status"] == "finished"
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp") or p.name in ("run.lock", OWNER_NAME)]


# ------------------------------------------------------------------------------------ config mix-ups


def test_a_key_given_twice_in_a_config_file_is_refused_with_both_lines(tmp_path):
    """PyYAML keeps the last of two equal keys: a second `training:` section would drop the first one's
    lr and epochs without a word."""
    config = tmp_path / "mine.yaml"
    config.write_text("training:\n  lr: 0.01\n  epochs: 3\nmodel:\n  hidden_dim: 64\n"
                      "training:\n  epochs: 5\n")
    with pytest.raises(ConfigError) as refused:
        load_config(["LSTM", str(config)])
    message = str(refused.value)
    assert f"{config}:6: 'training' is given twice in the same section (first at line 1)" in message
    config.write_text("model:\n  hidden_dim: 64\n  hidden_dim: 128\n")
    with pytest.raises(ConfigError, match=r"mine.yaml:3: 'hidden_dim' is given twice .* \(first at line 2\)"):
        load_config(["LSTM", str(config)])


def test_a_decoder_config_given_as_a_preset_is_refused_naming_where_it_belongs(tmp_path):
    """--config Transformer --preset Vanilla_RNN trained an RNN in a folder named Transformer-...; with
    --demo it failed with an unrelated Karpathy-split error."""
    from helpers.train import main

    with pytest.raises(ConfigError, match=r"Vanilla_RNN.yaml sets the decoder .* --config Vanilla_RNN"):
        load_config(config_layers("Transformer", ["Vanilla_RNN"]))
    assert main(["--config", "Transformer", "--preset", "Vanilla_RNN", "--demo", "--quiet",
                 f"data.work_dir={tmp_path}"]) == 2
    assert load_config(config_layers("Transformer", ["kaggle_small_gpu"])).model.decoder == "transformer"


def test_a_section_key_given_at_the_top_level_is_pointed_to_its_section():
    with pytest.raises(ConfigError, match=r"unknown key 'epochs'\. Did you mean 'training\.epochs'\?"):
        load_config("LSTM", ["epochs=3"])


def test_a_vocabulary_of_special_tokens_only_is_refused_before_training(tmp_path, demo_dir):
    """data.min_word_count above every word's count left <NULL> <START> <END> <UNK>: the run trained
    every caption to <UNK>, scored 0 and exited 0."""
    config = demo_config(tmp_path, demo_dir, **{"data.min_word_count": 100_000, "training.run_name": "none"})
    with pytest.raises(ConfigError, match=r"vocabulary holds only the special tokens .* "
                                          r"data\.min_word_count=100000 times\. Lower data\.min_word_count"):
        train(config, progress=False)
    assert not (config.run_path / "last.pt").exists()


def test_captions_cut_to_one_word_are_refused_in_the_config():
    with pytest.raises(ConfigError, match=r"data\.max_caption_length=1 cuts every caption to one word"):
        load_config("LSTM", ["data.max_caption_length=1"])
