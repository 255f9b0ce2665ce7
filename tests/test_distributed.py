"""Training on N devices (DistributedDataParallel, gloo on the CPU): shares, the devices key, and
2-process runs against one process (same losses, weights, files; resume across device counts)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.multiprocessing.spawn import ProcessExitedException

from helpers import distributed
from helpers.checkpoints import load_checkpoint
from helpers.config import ConfigError, load_config
from helpers.distributed import DevicesUnavailableError, device_count
from helpers.train import epoch_batches, train
from helpers.workdir import prepare_for, prepared_and_features


def tiny_config(work, demo_dir, name: str, **overrides):
    """The demo LSTM, small enough that a 2-process run takes seconds; no dropout (ranks would draw
    other masks than one process does)."""
    return load_config(["LSTM", "demo"], tiny_values(work, demo_dir, name, **overrides))


def tiny_values(work, demo_dir, name: str, **overrides) -> dict:
    """tiny_config's settings over the LSTM config and the demo overlay."""
    return {
        "data.work_dir": str(work / "work"),
        "data.dataset": "flickr8k",
        "data.data_dir": str(demo_dir),
        "training.run_dir": str(work / "runs"),
        "training.run_name": name,
        "training.meteor": False,
        "training.epochs": 2,
        "training.val_max_images": 8,
        "training.eval_splits": ["test"],
        "training.eval_beam_sizes": [1],
        "model.hidden_dim": 32,
        "model.dropout": 0.0,
        "batch_size": 45,  # uneven shares on 2 devices (23 + 22), and a shorter last batch
        **overrides,
    }


@pytest.fixture(scope="module")
def demo_work(demo_dir, tmp_path_factory):
    """Prepared data and feature store of the 120-image demo, made once for this module's runs."""
    work = tmp_path_factory.mktemp("distributed")
    prepared_and_features(tiny_config(work, demo_dir, "prepare"), progress=False)
    return work, demo_dir


# ------------------------------------------------------------------------------------------- units


@pytest.mark.parametrize("ranks", [2, 3])
def test_the_ranks_shares_make_up_each_global_batch_exactly(monkeypatch, ranks):
    monkeypatch.setattr(distributed, "world_size", lambda: ranks)
    for size in range(1, 12):
        batch = list(range(100, 100 + size))
        shares = []
        for rank in range(ranks):
            monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
            shares.append(distributed.share(batch))
        counted = [share.indices for share in shares if share.counted]
        assert [i for part in counted for i in part] == batch  # in order, each item once
        assert max(map(len, counted)) - min(map(len, counted)) <= 1
        # a rank left without items still runs the step, on an item it weighs zero
        assert all(share.indices == batch[:1] for share in shares if not share.counted)
        assert len(counted) == min(size, ranks)


def test_the_devices_key_takes_auto_or_a_count():
    assert load_config("LSTM").training.devices == "auto"
    assert load_config("LSTM", ["training.devices=2"]).training.devices == "2"
    for bad in ("0", "two", "-1"):
        with pytest.raises(ConfigError, match=rf"training.devices='{bad}' is not valid: 'auto'"):
            load_config("LSTM", [f"training.devices={bad}"])


def test_more_gpus_than_visible_are_refused_naming_the_key_and_the_fix(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DevicesUnavailableError) as info:
        device_count("2", torch.device("cuda"))
    message = str(info.value)
    assert "training.devices=2 but this machine shows 1 GPU(s)" in message
    assert "--devices 1" in message and "DEVICES = 1" in message and "GPU T4 x2" in message
    assert device_count("auto", torch.device("cuda")) == 1
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert device_count("auto", torch.device("cpu")) == 1 and device_count("3", torch.device("cpu")) == 3


def test_the_printed_batch_states_global_and_per_device_sizes():
    assert distributed.batch_split(128, 2) == (
        "batch 128 captions per step (global) = 2 devices x 64 per device"
    )
    assert distributed.batch_split(45, 2).endswith("2 devices x 22-23 per device")
    assert distributed.batch_split(64, 1) == "batch 64 captions per step on 1 device"


# -------------------------------------------------------------------------------------- 2 processes


def gradients_of_one_global_batch(inputs: str, out) -> None:
    """The gradients of one global batch of 7 captions (uneven shares) under this process group: the
    feature-store path, or images through a CNN whose last stage trains (fine-tuning)."""
    from helpers.models import CaptioningRNN

    torch.manual_seed(0)
    words = {"<NULL>": 0, "<START>": 1, "<END>": 2, "<UNK>": 3, "red": 4, "square": 5, "circle": 6}
    model = CaptioningRNN(words, wordvec_dim=8, hidden_dim=16, cell_type="lstm", backbone="regnet_x_400mf",
                          image_encoder_pretrained=False, normalize_features=True)
    model.image_encoder.requires_grad_(inputs == "images")
    model.image_encoder.eval()  # as training keeps it: ImageNet statistics
    batch = torch.rand(7, 3, 64, 64) if inputs == "images" else torch.randn(7, 400, 2, 2) * 3 + 1
    captions = torch.randint(1, 7, (7, 6))
    captions[:, 0], captions[3:, 4:] = 1, 0
    part = distributed.share(list(range(7)))
    count, weight = distributed.batch_weight(len(part.indices) if part.counted else 0)
    replica = distributed.replicate(model, torch.device("cpu"))
    (replica(batch[part.indices], captions[part.indices]) * weight).backward()
    if distributed.is_main():
        torch.save({name: p.grad for name, p in model.named_parameters() if p.grad is not None}, out)


@pytest.mark.parametrize("inputs", ["features", "images"])
def test_two_ranks_compute_the_gradient_of_the_global_batch(tmp_path, inputs):
    gradients_of_one_global_batch(inputs, tmp_path / "one.pt")
    distributed.launch(gradients_of_one_global_batch, (inputs, tmp_path / "two.pt"), 2, torch.device("cpu"))
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert one.keys() == two.keys() and any(name.startswith("image_encoder.") for name in one) == (
        inputs == "images"
    )
    for name, gradient in one.items():
        assert torch.allclose(two[name], gradient, rtol=1e-4, atol=1e-6), name


def _losses(history):
    return [record[key] for record in history for key in ("train_loss", "val_loss")]


def _assert_same_run(a, b):
    """Same loss history within float tolerance and the same weights within a tenth of one step of
    the learning rate (3e-3): only the order of float sums differs, which AdamW's first steps
    (update ~ lr * sign of the gradient) turn into differences of that size where a gradient is ~0."""
    assert [r["epoch"] for r in a.history] == [r["epoch"] for r in b.history]
    assert _losses(a.history) == pytest.approx(_losses(b.history), rel=1e-4)
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.allclose(x.float(), y.float(), atol=3e-4), (name, (x.float() - y.float()).abs().max())


@pytest.fixture(scope="module")
def one_device(demo_work):
    work, demo_dir = demo_work
    return train(tiny_config(work, demo_dir, "one-device", **{"training.devices": 1}), progress=False)


def test_two_processes_train_as_one_and_rank_0_alone_writes(demo_work, one_device):
    work, demo_dir = demo_work
    config = tiny_config(work, demo_dir, "two-devices", **{"training.devices": 2})
    result = train(config, progress=False)
    _assert_same_run(result, one_device)
    assert json.loads((config.run_path / "history.json").read_text()) == result.history
    results = json.loads((config.run_path / "results.json").read_text())
    for beam, metrics in one_device.results["metrics"]["test"].items():
        assert results["metrics"]["test"][beam] == pytest.approx(metrics, abs=1e-6)
    assert sorted(p.name for p in config.run_path.iterdir()) == [
        "best.pt", "config.yaml", "history.json", "last.pt", "results.json"
    ]  # no lock left, no temporary of a second writer
    assert load_checkpoint(config.run_path / "last.pt")["global_step"] == one_device_steps(one_device)


def one_device_steps(result) -> int:
    return load_checkpoint(result.run_dir / "last.pt")["global_step"]


class Killed(Exception):
    """What `kill_after_first_epoch` raises (module level: spawned ranks unpickle the callback)."""


def kill_after_first_epoch(event: str, state) -> None:
    if event == "epoch_end" and state.epoch == 1:
        raise Killed(f"rank {distributed.rank()} killed after epoch 1")


@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)])
def test_a_run_resumes_on_another_number_of_devices(demo_work, one_device, first, then):
    work, demo_dir = demo_work
    name = f"{first}-then-{then}"
    with pytest.raises(Killed, match="killed after epoch 1"):  # raised by a rank, raised again here
        train(tiny_config(work, demo_dir, name, **{"training.devices": first}), progress=False,
              callbacks=[kill_after_first_epoch])
    result = train(tiny_config(work, demo_dir, name, **{"training.devices": then}), progress=False)
    _assert_same_run(result, one_device)


def scores_of_a_run(run_dir, out) -> None:
    """Greedy and beam-3 captions and scores of val and test for a run's best.pt, under this group:
    each rank writes what it got (out, then out-rank1.json...) and a mark per metrics computation."""
    from helpers import evaluate
    from helpers.checkpoints import load_run

    model, _, config = load_run(run_dir)
    prepared, store = prepared_and_features(config, progress=False)
    suffix = f"-rank{distributed.rank()}" if distributed.rank() else ""
    marks = out.with_name(f"{out.stem}{suffix}.metrics")
    compute_metrics = evaluate.compute_metrics

    def marked(*args, **kwargs):
        with marks.open("a") as file:
            file.write("x")
        return compute_metrics(*args, **kwargs)

    evaluate.compute_metrics = marked
    try:
        scored = evaluate.score_model(model, prepared, store, ["val", "test"], [1, 3], meteor=False,
                                      progress=False, tokenizer="project")
    finally:
        evaluate.compute_metrics = compute_metrics
    out.with_name(f"{out.stem}{suffix}.json").write_text(json.dumps(scored[:2]))


def test_two_ranks_decode_and_score_val_and_test_as_one(one_device, tmp_path):
    scores_of_a_run(one_device.run_dir, tmp_path / "one.json")
    distributed.launch(scores_of_a_run, (one_device.run_dir, tmp_path / "two.json"), 2, torch.device("cpu"))
    one, two, two_rank1 = (json.loads((tmp_path / f"{name}.json").read_text())
                           for name in ("one", "two", "two-rank1"))
    assert two == one and two_rank1 == one  # the same captions, in the same order, and the same scores
    assert len(one[1]["val"]["beam3"]) == 12 and len(one[1]["test"]["beam1"]) == 12
    # 2 splits x 2 beam sizes scored once each, by rank 0 alone (one METEOR JVM, not one per device)
    assert (tmp_path / "two.metrics").read_text() == "xxxx" and not (tmp_path / "two-rank1.metrics").exists()


def kill_rank_1_in_epoch_2(event: str, state) -> None:
    """SIGKILL on rank 1 three steps into the second epoch (after epoch 1's checkpoints)."""
    if event == "step_end" and distributed.rank() == 1 and state.global_step == 13:
        os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_rank_ends_the_group_and_the_run_resumes_from_the_last_checkpoint(demo_work, one_device):
    work, demo_dir = demo_work
    config = tiny_config(work, demo_dir, "killed-rank", **{"training.devices": 2})
    with pytest.raises(ProcessExitedException, match="process 1 terminated with signal SIGKILL"):
        train(config, progress=False, callbacks=[kill_rank_1_in_epoch_2])
    last = load_checkpoint(config.run_path / "last.pt")  # whole, as written at the end of epoch 1
    assert (last["epoch"], last["step_in_epoch"]) == (1, 0)
    assert len(json.loads((config.run_path / "history.json").read_text())) == 1
    result = train(tiny_config(work, demo_dir, "killed-rank", **{"training.devices": 1}), progress=False)
    _assert_same_run(result, one_device)
    assert not [p.name for p in config.run_path.iterdir() if p.name.endswith(".tmp")]


def record_step_loss(event: str, state) -> None:
    """Rank 0 appends each step's (global batch) loss to <run folder>.losses beside the run folder."""
    if event == "step_end" and distributed.is_main():
        with open(state.run_dir.parent / f"{state.run_dir.name}.losses", "a") as losses:
            losses.write(f"{state.loss!r}\n")


def test_fine_tuning_the_cnn_on_two_processes_trains_as_one(demo_work):
    """Finetune mode: images through the CNN, whose last stage trains under DDP. The first steps'
    losses agree to float precision; later the CNN's near-zero gradients let AdamW's sign-like
    updates grow the float noise of the summation order (about 3x a step), so the epoch's losses are
    compared to 1e-4 and the weights are not compared (the gradients are, in
    test_two_ranks_compute_the_gradient_of_the_global_batch[images])."""
    work, demo_dir = demo_work
    runs = {}
    for devices in (1, 2):
        settings = {"training.mode": "finetune", "training.epochs": 1, "training.devices": devices}
        config = tiny_config(work, demo_dir, f"finetune-{devices}", **settings)
        runs[devices] = train(config, progress=False, callbacks=[record_step_loss])
    one, two = ([float(line) for line in (work / "runs" / f"finetune-{d}.losses").read_text().split()]
                for d in (1, 2))
    assert len(one) == len(two) == 11
    assert two[:3] == pytest.approx(one[:3], rel=1e-6)
    assert two == pytest.approx(one, rel=1e-4)
    assert _losses(runs[2].history) == pytest.approx(_losses(runs[1].history), rel=1e-4)
    saved = load_checkpoint(runs[2].run_dir / "best.pt")["model"]
    assert any(name.startswith("image_encoder.") for name in saved)  # the trained stage is in it


def test_callbacks_the_device_processes_cannot_load_are_refused_before_anything_starts(
    tmp_path, demo_dir, monkeypatch
):
    """Each rank unpickles the callbacks: a lambda or a notebook cell's function would fail there, in
    another process, with pickle's words; train says which callback and what to do, and starts nothing."""
    config = tiny_config(tmp_path, demo_dir, "refused", **{"training.devices": 2})
    with pytest.raises(ValueError, match=r"training.devices=2: callback .*<lambda> cannot be sent .*"
                                         r"top-level function in a .py file .*training.devices=1"):
        train(config, progress=False, callbacks=[lambda event, state: None])

    def plotted(event, state):  # as if typed in a notebook cell: __main__ with no file behind it
        pass

    plotted.__module__, plotted.__qualname__ = "__main__", "plotted"
    notebook = type(sys)("__main__")
    notebook.plotted = plotted
    monkeypatch.setitem(sys.modules, "__main__", notebook)
    with pytest.raises(ValueError, match="callback plotted cannot be sent .*defined in a notebook cell"):
        train(config, progress=False, callbacks=[plotted])
    assert not (tmp_path / "work").exists() and not (tmp_path / "runs").exists()  # nothing prepared or run


def test_the_command_line_takes_devices(capsys):
    from helpers.train import main

    assert main(["--config", "LSTM", "--devices", "none", "--quiet"]) == 2
    assert "training.devices='none' is not valid: 'auto'" in capsys.readouterr().err


def test_a_rank_whose_images_all_fail_to_decode_still_joins_the_step(demo_dir, tmp_path):
    """Fine-tuning on 2 devices with every image of rank 1's share of a batch unreadable: rank 1 steps
    on a zero-weight stand-in instead of leaving rank 0 waiting in DDP's all-reduce for ever, and the
    run ends with those captions skipped. Run as the command line, with a timeout, so a hang fails."""
    data = tmp_path / "demo"
    shutil.copytree(demo_dir, data)
    settings = {"training.mode": "finetune", "training.epochs": 1, "training.devices": 2,
                "batch_size": 4, "data.max_bad_images": 0.5, "training.eval_splits": []}
    values = tiny_values(tmp_path, data, "stand-in", **settings)
    config = load_config(["LSTM", "demo"], values)
    prepared = prepare_for(config)
    _, image_of = prepared.captions("train")
    for batch in epoch_batches(len(image_of), 4, config.training.seed, 0):
        halves = [{int(image_of[i]) for i in batch[:2]}, {int(image_of[i]) for i in batch[2:]}]
        if not halves[0] & halves[1]:
            break
    for image in halves[1]:  # rank 1's share: 2 of the 4 captions, their images all unreadable
        prepared.image_path(prepared.splits["train"][image]).write_bytes(b"not a jpeg")
    overrides = [f"{key}={json.dumps(value)}" for key, value in values.items()]
    done = subprocess.run([sys.executable, "-m", "helpers.train", "--config", "LSTM", "--demo", "--quiet",
                           *overrides], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    history = json.loads((tmp_path / "runs" / "stand-in" / "history.json").read_text())
    assert len(history) == 1 and history[0]["train_loss"] > 0


def _children(pid: int) -> list[int]:
    found = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(line) for line in found.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"  # a zombie has ended


def _listen_to_interrupts() -> None:
    """In a child before it starts: SIGINT back to its default, which Python turns into
    KeyboardInterrupt. A shell starts background jobs with SIGINT ignored and children inherit that,
    so without this the test would depend on how the test run itself was started."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _ignore_interrupts() -> None:
    """In a child before it starts: SIGINT ignored, as a shell starts its background jobs (`cmd &`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _training_on_two_ranks(demo_dir, tmp_path, name: str, preexec_fn):
    """(launching process, its stderr file, its two ranks' pids) of `python -m helpers.train` on two CPU
    processes for 500 epochs, once the ranks are training (have written last.pt)."""
    values = tiny_values(tmp_path, demo_dir, name, **{"training.devices": 2, "training.epochs": 500})
    overrides = [f"{key}={json.dumps(value)}" for key, value in values.items()]
    stderr_path = tmp_path / "stderr.txt"
    with open(stderr_path, "w") as stderr:  # a file, not a pipe nobody reads while waiting
        parent = subprocess.Popen(
            [sys.executable, "-m", "helpers.train", "--config", "LSTM", "--demo", "--quiet", *overrides],
            stdout=subprocess.DEVNULL, stderr=stderr, preexec_fn=preexec_fn,
        )
    deadline = time.monotonic() + 300
    while not (tmp_path / "runs" / name / "last.pt").exists():
        if parent.poll() is not None or time.monotonic() > deadline:
            parent.kill()
            pytest.fail("training on two ranks did not start; its stderr:\n"
                        + stderr_path.read_text()[-2000:])
        time.sleep(0.5)
    ranks = [pid for pid in _children(parent.pid)  # not the resource tracker, the other child
             if _alive(pid) and b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    return parent, stderr_path, ranks


def _kill(parent, ranks: list[int]) -> None:
    """Whatever a test left running: the launching process, its ranks and its other children."""
    for pid in ranks + _children(parent.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    parent.kill()


def test_interrupting_the_launching_process_stops_every_rank(demo_dir, tmp_path):
    """A notebook's Interrupt reaches the kernel only: the ranks it launched must stop with it, not
    keep training (and holding the run folder's lock) in the background. The command line ends in
    one `error:` line (issue 28, case 11: a raw KeyboardInterrupt and a leaked-semaphore warning)."""
    parent, stderr, ranks = _training_on_two_ranks(demo_dir, tmp_path, "interrupted", _listen_to_interrupts)
    try:
        assert len(ranks) == 2
        parent.send_signal(signal.SIGINT)
        try:
            parent.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("the interrupted process did not exit in 60 s; its stderr:\n"
                        + stderr.read_text()[-3000:])
        said = stderr.read_text()
        assert parent.returncode == 130 and said.startswith("error: interrupted. Every checkpoint"), said
        assert "Traceback" not in said and "leaked" not in said, said
        time.sleep(1)
        assert not [pid for pid in ranks if _alive(pid)], "ranks still running after the interrupt"
    finally:
        _kill(parent, ranks)


def test_a_rank_killed_under_the_command_line_ends_in_one_error_line(demo_dir, tmp_path):
    """Issue 28, case 11: two chained raw tracebacks (the kill, then gloo's peer gone)."""
    parent, stderr, ranks = _training_on_two_ranks(demo_dir, tmp_path, "rank-killed", _listen_to_interrupts)
    try:
        os.kill(ranks[1], signal.SIGKILL)
        parent.wait(timeout=60)
        said = stderr.read_text()
        assert parent.returncode == 2 and said.startswith("error: training process "), said
        assert "was ended by SIGKILL" in said and "run the same command again" in said
        assert "Traceback" not in said and len(said.strip().splitlines()) == 1, said
    finally:
        _kill(parent, ranks)


def test_the_ranks_end_with_a_killed_launching_process_started_as_a_background_job(demo_dir, tmp_path):
    """kill -9 of the launching process (or a session's end) ends its ranks too, also when it was
    started with SIGINT ignored: torch ends orphaned ranks with SIGINT, which they would inherit
    ignored and go on training, holding the run folder's lock."""
    parent, _, ranks = _training_on_two_ranks(demo_dir, tmp_path, "orphaned", _ignore_interrupts)
    try:
        assert len(ranks) == 2
        # the launching process owns the run folder, so `kill PID` from a busy message ends the whole
        # training (issue 28, case 9: rank 0 was named, and killing it left gloo's raw error)
        owner = json.loads((tmp_path / "runs" / "orphaned" / "run.owner.json").read_text())
        assert owner["pid"] == parent.pid
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 30
        while [pid for pid in ranks if _alive(pid)] and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not [pid for pid in ranks if _alive(pid)], "ranks still running 30 s after their launcher died"
    finally:
        _kill(parent, ranks)


def test_a_rank_ended_by_a_signal_is_reported_before_the_errors_it_caused():
    """When rank 1 is killed, rank 0 may fail first with gloo's 'Connection reset by peer'; the kill is
    the cause to report. A rank ended by torch's own SIGTERM (after another's failure) is not."""
    class Ended:
        def __init__(self, exitcode: int):
            self.exitcode, self.pid = exitcode, 4242

    killed = distributed._killed_rank([Ended(1), Ended(-signal.SIGKILL)])
    assert isinstance(killed, ProcessExitedException)
    assert str(killed) == "process 1 terminated with signal SIGKILL"
    assert distributed._killed_rank([Ended(1), Ended(-signal.SIGTERM)]) is None
    assert distributed._killed_rank([Ended(0), Ended(0)]) is None


def test_on_several_devices_a_busy_or_read_only_run_folder_is_refused_before_anything_is_prepared(
    demo_dir, tmp_path, monkeypatch
):
    """Issue 28, case 12: both checks came after preparing, extracting and spawning (an hour on COCO)."""
    from conftest import hold_run_lock

    from helpers.files import WriteError
    from helpers.runlock import RunFolderBusyError

    config = tiny_config(tmp_path, demo_dir, "busy", **{"training.devices": 2})
    holder = hold_run_lock(config.run_path)
    try:
        with pytest.raises(RunFolderBusyError, match=f"in use by process {holder.pid}"):
            train(config, progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "work").exists()

    real_open = os.open

    def read_only(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path / "runs")):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(WriteError, match="is on a read-only file system"):
        train(tiny_config(tmp_path, demo_dir, "read-only", **{"training.devices": 2}), progress=False)
    assert not (tmp_path / "work").exists()
