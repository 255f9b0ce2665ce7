"""The config reference (docs/CONFIG.md) and the short decoder configs it lets us keep."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers.config import CONFIG_DIR, Config, _flatten, load_config

ROOT = Path(__file__).resolve().parents[1]

# What each decoder config trained with before the files were trimmed to the keys they set: the
# defaults of helpers/config.py plus these values (the dumps were compared when trimming).
EVERY_DECODER = {
    "model.wordvec_dim": 300,
    "model.hidden_dim": 512,
    "model.backbone": "resnet50",
    "model.feature_channels": 2048,  # inferred from the backbone
    "embeddings.use_glove": True,
    "embeddings.glove_path": "glove.6B.300d.txt",
    "batch_size": 128,
    "data.split": "karpathy",
    "data.image_size": 224,
    "training.checkpoint_every_steps": 500,
}
# model.dropout is inferred from the decoder (null: 0.5 recurrent, 0.1 transformer).
DECODERS = {
    "Vanilla_RNN": {"model.decoder": "rnn", "model.dropout": 0.5},
    "LSTM": {"model.decoder": "lstm", "model.dropout": 0.5},
    "Attention_LSTM": {"model.decoder": "attn", "model.dropout": 0.5},
    "Transformer": {"model.decoder": "transformer", "training.lr": 5e-4, "model.dropout": 0.1},
}


def flat(config: Config) -> dict:
    data = config.to_dict()
    data.pop("sources")
    data.pop("name")
    return dict(_flatten(data))


@pytest.mark.parametrize("name", DECODERS)
def test_each_decoder_config_gives_the_config_it_gave_before_trimming(name):
    expected = flat(Config()) | EVERY_DECODER | DECODERS[name]
    assert flat(load_config(name)) == expected


@pytest.mark.parametrize("name", DECODERS)
def test_decoder_configs_hold_the_original_layout_and_otherwise_only_what_differs(name):
    """model: and embeddings: with the original project's few keys, batch_size, then the changes."""
    raw = dict(_flatten(yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text(encoding="utf-8"))))
    original_layout = {
        "model.decoder", "model.wordvec_dim", "model.hidden_dim", "model.backbone",
        "embeddings.use_glove", "embeddings.glove_path", "batch_size",
    }
    defaults = flat(Config())
    repeated = [key for key, value in raw.items() if key not in original_layout and defaults[key] == value]
    assert repeated == []
    assert original_layout <= set(raw)


def test_the_committed_config_reference_is_the_scripts_output(tmp_path):
    out = tmp_path / "CONFIG.md"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_config_doc.py"), str(out)], check=True,
                   capture_output=True)
    committed = (ROOT / "docs" / "CONFIG.md").read_text(encoding="utf-8")
    assert committed == out.read_text(encoding="utf-8"), (
        "docs/CONFIG.md differs from scripts/make_config_doc.py's output: rerun the script"
    )


def test_the_reference_lists_every_key_with_its_default():
    text = (ROOT / "docs" / "CONFIG.md").read_text(encoding="utf-8")
    table_rows = [line for line in text.splitlines() if line.startswith("| `")]
    rows = {line.split("|")[1].strip().strip("`"): line for line in table_rows}
    keys = set(flat(Config())) | {"name", "sources"}
    assert set(rows) == keys
    assert "| `training.lr` | `float` | `0.001` |" in rows["training.lr"]
    assert "| `model.feature_channels` | `int \\| None` | `null` |" in rows["model.feature_channels"]


def test_a_key_without_a_comment_stops_the_script_with_its_name(tmp_path):
    source = (ROOT / "helpers" / "config.py").read_text(encoding="utf-8")
    documented = "    epochs: int = 10  # passes over the training captions\n"
    bare = source.replace(documented, "    epochs: int = 10\n")
    assert bare != source
    package = tmp_path / "helpers"
    package.mkdir()
    for module in (ROOT / "helpers").glob("*.py"):
        (package / module.name).write_text(module.read_text(encoding="utf-8"), encoding="utf-8")
    (package / "config.py").write_text(bare, encoding="utf-8")
    (tmp_path / "configs").mkdir()
    script = tmp_path / "scripts" / "make_config_doc.py"
    script.parent.mkdir()
    script.write_text((ROOT / "scripts" / "make_config_doc.py").read_text(encoding="utf-8"), encoding="utf-8")
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "out.md")], capture_output=True,
                            text=True)
    assert result.returncode != 0
    assert "TrainingConfig.epochs has no comment saying what it does" in result.stderr
