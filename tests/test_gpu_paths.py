"""The GPU paths, as far as a CPU can imitate their rules: the loop's collectives under the device map
that GPU ranks use (NCCL reduces CUDA tensors only), each rank's random stream and one GPU's generator
state in checkpoints, the preflight that runs a GPU run's paths on a tiny batch before any long work,
out-of-memory messages, and SCST with several devices."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch.distributed.distributed_c10d import BackendConfig

from helpers import distributed
from helpers.checkpoints import load_checkpoint
from helpers.config import load_config
from helpers.devices import DeviceOutOfMemoryError, out_of_memory_error
from helpers.images import default_num_workers
from helpers.preflight import PreflightError, preflight
from helpers.runlock import RunLock
from helpers.runs import cross_entropy_config, rng_state, seed_everything, seed_rank, set_rng_state
from helpers.train import train
from helpers.workdir import prepared_and_features


def nccl_stand_in(backend: str) -> str:
    """`backend`'s device-to-backend map with gloo standing in for NCCL: a CPU-only machine then
    refuses what the GPU ranks' group refuses, a collective on a device type the map has no backend
    for ("nccl" maps only cuda)."""
    mapping = BackendConfig(backend).get_device_backend_map()
    return ",".join(f"{device}:gloo" for device in mapping)


GPU_RANKS = nccl_stand_in(distributed.backend_for(torch.device("cuda")))


def tiny_config(work, demo_dir, *overrides, name: str = "LSTM"):
    """A demo decoder small enough that a run takes seconds."""
    return load_config([name, "demo"], [
        f"data.work_dir={work / 'work'}", f"training.run_dir={work / 'runs'}", "training.meteor=false",
        "data.dataset=flickr8k", f"data.data_dir={demo_dir}", "model.hidden_dim=32", "model.dropout=0.0",
        "training.epochs=1", "training.val_max_images=8", "training.eval_splits=[]", "batch_size=45",
        *overrides,
    ])


@pytest.fixture(scope="module")
def demo_work(demo_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("gpu-paths")
    prepared, _ = prepared_and_features(tiny_config(work, demo_dir), progress=False)
    return work, prepared


# ----------------------------------------------------------------------------------------- collectives


def the_loops_collectives(out) -> None:
    """Every collective of the training loop, run by one rank; what it got goes to `out`-rank<r>.json."""
    rank = distributed.rank()
    count, weight = distributed.batch_weight(3 + rank)
    seed_everything(0)
    seed_rank(0)
    got = {
        "any": distributed.any_rank(rank == 1),
        "sums": distributed.sum_over_ranks(1.0, float(rank)),
        "weight": [count, weight],
        "mean": distributed.global_mean(2.0 * (rank + 1), 3 + rank, count),
        "from_main": distributed.from_main(lambda: f"made by rank {distributed.rank()}"),
        "gather": distributed.gather([rank]),
        "gather_on_main": distributed.gather_on_main([rank]),
        "workers": default_num_workers(),
        "threads": torch.get_num_threads(),
        "random": torch.rand(4).tolist(),
    }
    distributed.barrier()
    out.with_name(f"{out.stem}-rank{rank}.json").write_text(json.dumps(got))


def test_every_collective_of_the_loop_runs_under_the_device_map_of_gpu_ranks(tmp_path):
    """GPU ranks join a group whose map sends CPU tensors to gloo and CUDA tensors to NCCL, so the
    loop's CPU scalars (stop flags, loss sums, batch weights) reduce there; each rank shares the CPU
    cores with the other (its loader workers and threads) and draws its own random numbers."""
    assert BackendConfig(distributed.backend_for(torch.device("cuda"))).get_device_backend_map() == {
        "cpu": "gloo", "cuda": "nccl"}
    distributed.launch(the_loops_collectives, (tmp_path / "got.json",), 2, torch.device("cpu"), GPU_RANKS)
    ranks = [json.loads((tmp_path / f"got-rank{r}.json").read_text()) for r in range(2)]
    cores = len(os.sched_getaffinity(0))
    for rank, got in enumerate(ranks):
        assert got["any"] is True and got["sums"] == [2.0, 1.0]
        assert got["weight"] == [7, pytest.approx(2 * (3 + rank) / 7)]
        assert got["mean"] == pytest.approx((2.0 * 3 + 4.0 * 4) / 7)
        assert got["from_main"] == "made by rank 0" and got["gather"] == [0, 1]
        assert got["workers"] == min(4, max(1, cores // 2))
        assert got["threads"] == max(1, torch.get_num_threads() // 2)
    assert ranks[0]["gather_on_main"] == [0, 1] and ranks[1]["gather_on_main"] == []
    seed_everything(0)
    assert ranks[0]["random"] == torch.rand(4).tolist()  # rank 0: the stream of one device
    assert ranks[1]["random"] != ranks[0]["random"]  # rank 1: other dropout masks


def test_a_group_made_with_plain_nccl_refuses_the_loops_cpu_collectives(tmp_path):
    """What the stand-in imitates, shown: under "nccl"'s map (cuda only) the loop's first collective
    on a CPU tensor fails, as it would on Kaggle's T4 x2 with a group made with plain "nccl"."""
    with pytest.raises(RuntimeError, match="No backend type associated with device type cpu"):
        distributed.launch(the_loops_collectives, (tmp_path / "got.json",), 2, torch.device("cpu"),
                           nccl_stand_in("nccl"))


# ------------------------------------------------------------------------------------------ generators


def test_a_checkpoint_of_more_gpus_than_this_machine_has_resumes_on_its_one(monkeypatch):
    """Checkpoints keep the training GPU's generator state only; older ones keep every visible GPU's,
    and torch's set_rng_state_all then indexes GPUs this machine lacks (IndexError). Imitated here:
    one GPU, whose state is recorded where torch would set it."""
    states = [torch.full((8,), 1, dtype=torch.uint8), torch.full((8,), 2, dtype=torch.uint8)]
    set_on = []

    def set_all(new_states):  # torch.cuda.set_rng_state_all on a machine with one GPU
        for index, state in enumerate(new_states):
            if index >= 1:
                raise IndexError("list index out of range")
            set_on.append((index, state))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_all)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: set_on.append((device, state)))
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: states[torch.device(device).index])
    saved_on_two = rng_state(torch.device("cpu")) | {"cuda": states}  # an older checkpoint of 2 GPUs
    set_rng_state(saved_on_two, torch.device("cuda", 0))
    assert len(set_on) == 1 and set_on[0][0] == torch.device("cuda", 0)
    assert torch.equal(set_on[0][1], states[0])
    assert torch.equal(rng_state(torch.device("cuda", 1))["cuda"], states[1])  # one GPU's, not a list
    set_on.clear()
    set_rng_state(rng_state(torch.device("cpu")), torch.device("cuda", 0))  # saved on the CPU
    assert set_on == []


# ------------------------------------------------------------------------------------------- preflight


@pytest.mark.parametrize("name", ["Vanilla_RNN", "LSTM", "Attention_LSTM", "Transformer"])
def test_the_preflight_runs_a_runs_paths_on_a_tiny_batch(name, demo_work, demo_dir, capsys):
    """The training step, SCST's step and a beam decode of each decoder, as the run will take them;
    nothing is written to the run folder."""
    work, prepared = demo_work
    config = tiny_config(work, demo_dir, "training.scst.enabled=true", "training.eval_beam_sizes=[1,3]",
                         name=name)
    assert preflight(config, prepared.vocab, torch.device("cpu")) is config
    said = capsys.readouterr().out
    assert "Preflight on cpu passed" in said and "training step, SCST step, beam search" in said
    assert not config.run_path.exists()


def test_the_preflight_of_a_fine_tuning_run_steps_through_the_cnn(demo_work, demo_dir):
    work, prepared = demo_work
    config = tiny_config(work, demo_dir, "training.mode=finetune", "model.backbone=regnet_x_400mf",
                         "data.image_size=64", "batch_size=4")
    preflight(config, prepared.vocab, torch.device("cpu"), progress=False)


def test_the_preflight_on_two_ranks_stops_a_group_that_refuses_cpu_collectives(demo_work, demo_dir):
    """With plain "nccl" (imitated) the preflight stops with the setting that avoids it, before any
    extraction or training; with the GPU ranks' map it passes, DDP step included."""
    work, prepared = demo_work
    config = tiny_config(work, demo_dir)
    with pytest.raises(PreflightError, match=r"collectives and DDP of 2 ranks failed.*DEVICES = 1"):
        preflight(config, prepared.vocab, torch.device("cpu"), 2, progress=False,
                  backend=nccl_stand_in("nccl"))
    preflight(config, prepared.vocab, torch.device("cpu"), 2, progress=False, backend=GPU_RANKS)
    assert not config.run_path.exists()


def test_a_failing_training_step_stops_the_preflight_naming_the_setting_that_avoids_it(
    demo_work, demo_dir, monkeypatch
):
    work, prepared = demo_work
    config = tiny_config(work, demo_dir)

    def broken(*args, **kwargs):
        raise RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling cublasGemmEx\nmore lines")

    monkeypatch.setattr("helpers.objectives.CrossEntropy.loss", broken)
    with pytest.raises(PreflightError) as raised:
        preflight(config, prepared.vocab, torch.device("cpu"), progress=False)
    message = str(raised.value)
    assert "the training step failed on a tiny batch" in message
    assert "CUBLAS_STATUS_EXECUTION_FAILED" in message
    assert "training.amp=false" in message and "more lines" not in message


def test_nvjpeg_failing_in_the_preflight_falls_back_to_the_cpu_decoder(demo_work, demo_dir, monkeypatch,
                                                                       capsys):
    work, prepared = demo_work
    config = tiny_config(work, demo_dir, "data.jpeg_decoder=nvjpeg")
    checked = preflight(config, prepared.vocab, torch.device("cpu"))  # the same batched call, on the CPU
    assert checked.data.jpeg_decoder == "nvjpeg"
    assert "nvJPEG batch (within 0 grey levels" in capsys.readouterr().out

    def failing(device):
        raise RuntimeError("nvjpegDecodeBatchedInitialize failed: 5")

    monkeypatch.setattr("helpers.preflight.check_nvjpeg", failing)
    checked = preflight(config, prepared.vocab, torch.device("cpu"), progress=False)
    assert checked.data.jpeg_decoder == "torchvision" and checked.run_path == config.run_path
    said = capsys.readouterr().out
    assert "nvJPEG failed on cpu (nvjpegDecodeBatchedInitialize failed: 5)" in said
    assert "data.jpeg_decoder=torchvision" in said


# --------------------------------------------------------------------------------------- out of memory


def test_running_out_of_gpu_memory_names_what_to_lower_and_keeps_the_run(demo_work, demo_dir, monkeypatch):
    work, prepared = demo_work
    config = tiny_config(work, demo_dir, "training.run_name=oom")
    train(config, prepared=prepared, progress=False)
    last = (config.run_path / "last.pt").read_bytes()
    calls = []

    def out_of_memory(*args, **kwargs):
        calls.append(1)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
                                     "capacity of 14.74 GiB of which 1.06 GiB is free.\nOf the allocated...")

    monkeypatch.setattr("helpers.objectives.CrossEntropy.loss", out_of_memory)
    with pytest.raises(DeviceOutOfMemoryError) as raised, pytest.warns(UserWarning, match="epochs 1 -> 2"):
        train(tiny_config(work, demo_dir, "training.run_name=oom", "training.epochs=2"), prepared=prepared,
              progress=False)
    message = str(raised.value)
    assert calls == [1] and "while training oom (CUDA out of memory. Tried to allocate 2.00 GiB" in message
    assert "batch_size (now 45; e.g. batch_size=22)" in message and "model.hidden_dim (now 32)" in message
    assert "Of the allocated" not in message and "finetune_layers" not in message
    assert (config.run_path / "last.pt").read_bytes() == last
    RunLock(config.run_path).acquire()  # released: nothing left locked


def test_out_of_memory_while_fine_tuning_names_the_layers_and_image_size_too(tmp_path, demo_dir):
    config = tiny_config(tmp_path, demo_dir, "training.mode=finetune", "training.finetune_layers=2",
                         name="Transformer")
    message = str(out_of_memory_error(torch.OutOfMemoryError("CUDA out of memory."), config, "training X"))
    order = ["batch_size (now 45", "training.finetune_layers (now 2", "data.image_size (now 96)",
             "model.hidden_dim (now 32), model.num_layers (now"]
    positions = [message.index(part) for part in order]
    assert positions == sorted(positions)


# ------------------------------------------------------------------------------------ SCST on devices


@pytest.mark.slow
def test_scst_with_two_devices_trains_cross_entropy_on_both_then_scst_on_one(demo_work, demo_dir, capsys):
    """devices: auto with two GPUs and SCST on (the notebooks' defaults with SCST = True) trains: the
    cross-entropy epochs on both devices in their own run folder, then the self-critical phase on one
    device from there. Every rank's random stream is in that run's last.pt."""
    work, prepared = demo_work
    config = tiny_config(work, demo_dir, "training.devices=2", "training.scst.enabled=true",
                         "training.scst.epochs=1")
    result = train(config, progress=True)
    said = capsys.readouterr().out
    assert "SCST with 2 devices: the cross-entropy epochs train on all of them" in said
    assert [row.get("phase", "xe") for row in result.history] == ["xe", "scst"]
    assert result.run_dir == config.run_path
    cross_entropy = cross_entropy_config(config).run_path
    last = load_checkpoint(cross_entropy / "last.pt")
    assert last["epoch"] == 1 and len(last["rank_rng"]) == 1
    assert load_checkpoint(config.run_path / "last.pt")["scst_from"] == str(cross_entropy)
    fixed = train(tiny_config(work, demo_dir, "training.devices=2", "training.scst.enabled=true",
                              "training.scst.epochs=1", "training.run_name=fixed"), progress=False)
    assert fixed.run_dir.name == "fixed-scst"  # the cross-entropy run keeps the name given (issue 28, case 7)
    assert load_checkpoint(fixed.run_dir / "last.pt")["scst_from"] == str(fixed.run_dir.with_name("fixed"))
