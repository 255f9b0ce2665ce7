"""helpers.devices: `auto` picks CUDA, then Apple's mps where the decoder runs on it (else the CPU, saying
why), then the CPU. No mps here: its availability is imitated, and the decoder check runs on the CPU."""

from __future__ import annotations

import pytest
import torch

from helpers import decoders, devices
from helpers.config import load_config
from helpers.optimization import amp_enabled

LSTM_MISSING = "The operator 'aten::_lstm_mps' is not currently implemented for the MPS device."


@pytest.fixture
def machine(monkeypatch):
    """Imitates what torch sees: `machine(cuda=..., mps=..., failing=...)`, `failing` being the decoders
    whose check on mps fails."""
    def imitate(cuda: bool = False, mps: bool = False, failing: tuple[str, ...] = ()):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
        monkeypatch.setattr(devices, "_mps_problems", {})
        monkeypatch.setattr(devices, "decoder_problem", lambda decoder, device: (
            f"The {decoder} decoder does not run on mps: {LSTM_MISSING}" if decoder in failing else None))

    return imitate


def test_auto_prefers_cuda_then_mps_then_the_cpu(machine):
    machine(cuda=True, mps=True)
    assert devices.resolve_device("auto", "lstm") == torch.device("cuda")
    machine(mps=True)
    assert devices.resolve_device("auto", "lstm") == torch.device("mps")
    assert devices.resolve_device("auto") == torch.device("mps")  # every decoder runs there
    machine()
    assert devices.resolve_device("auto", "lstm") == torch.device("cpu")


def test_auto_takes_the_cpu_where_the_decoder_does_not_run_on_mps_and_says_why(machine, capsys):
    machine(mps=True, failing=("lstm",))
    assert devices.resolve_device("auto", "transformer") == torch.device("mps")
    assert devices.resolve_device("auto", "lstm") == torch.device("cpu")
    assert devices.resolve_device("auto") == torch.device("cpu")  # some decoder does not
    assert devices.resolve_device("auto", "lstm") == torch.device("cpu")
    said = capsys.readouterr().out
    assert said.count("aten::_lstm_mps") == 1 and "Training on the CPU instead." in said  # said once


def test_mps_asked_for_by_name_is_refused_with_advice_where_it_cannot_run(machine):
    machine(mps=True, failing=("attn",))
    assert devices.resolve_device("mps", "rnn") == torch.device("mps")
    with pytest.raises(devices.UnsupportedDeviceError, match=r"attn decoder .* training.device=cpu"):
        devices.resolve_device("mps", "attn")
    machine()
    with pytest.raises(devices.UnsupportedDeviceError, match="mps .*torch cannot use it here"):
        devices.resolve_device("mps", "rnn")


@pytest.mark.parametrize("decoder", devices.DECODERS)
def test_the_decoder_check_runs_a_training_step_and_leaves_the_generators_alone(decoder):
    before = torch.get_rng_state()
    assert devices.decoder_problem(decoder, torch.device("cpu")) is None
    assert torch.equal(torch.get_rng_state(), before)


def test_a_missing_kernel_is_named(monkeypatch):
    """What torch raises for an operator a device lacks (NotImplementedError) becomes the reason."""
    def missing(kernel, *args):
        raise NotImplementedError(LSTM_MISSING + "\nIf you want this op to be considered ...")

    monkeypatch.setattr(decoders, "_fused_kernel", missing)
    problem = devices.decoder_problem("lstm", torch.device("cpu"))
    said = LSTM_MISSING.rstrip(".")
    assert problem == f"The lstm decoder does not run on cpu with torch {torch.__version__}: {said}."
    assert devices.decoder_problem("transformer", torch.device("cpu")) is None


def test_fp16_stays_cuda_only():
    """training.amp (fp16 autocast and the gradient scaler) is CUDA's; mps and the CPU train in float32."""
    config = load_config("LSTM")
    assert config.training.amp
    kinds = ("cuda", "mps", "cpu")
    assert [amp_enabled(config, torch.device(kind)) for kind in kinds] == [True, False, False]
