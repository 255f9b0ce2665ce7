"""A trained captioner as a model folder: export (helpers.export), load and caption (helpers.captioner,
helpers.caption), the Kaggle Model upload (helpers.kaggle_models), old and foreign files refused or read."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from PIL import Image

from helpers import caption as caption_cli
from helpers import kaggle_models
from helpers.captioner import (
    MANIFEST,
    MODEL_FORMAT_VERSION,
    Caption,
    Captioner,
    NotACaptionerError,
    find_attached_model,
    resolve_model,
)
from helpers.checkpoints import load_run
from helpers.config import KEYS_ADDED_LATER, load_config
from helpers.evaluate import decode_split
from helpers.export import export_model
from helpers.images import load_image_tensor
from helpers.train import train
from helpers.workdir import prepare_for

REPO = Path(__file__).resolve().parents[1]
HANDLE = "jane/shapes-captioner/pyTorch/default"


def tiny_config(work, demo_dir, *overrides, name: str = "LSTM"):
    """A demo decoder small enough that a run takes seconds (as tests/test_gpu_paths.py's)."""
    return load_config([name, "demo"], [
        f"data.work_dir={work / 'work'}", f"training.run_dir={work / 'runs'}", "training.meteor=false",
        "data.dataset=flickr8k", f"data.data_dir={demo_dir}", "model.hidden_dim=32", "model.dropout=0.0",
        "training.epochs=1", "training.val_max_images=8", "training.eval_splits=[]", "batch_size=45",
        *overrides,
    ])


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def trained(demo_dir, tmp_path_factory):
    """A tiny attention-LSTM run scored on test, exported; the expected test captions decoded from its
    best.pt by evaluate.decode_split; then the work dir (prepared data, feature store, GloVe) deleted."""
    work = tmp_path_factory.mktemp("captioner")
    config = tiny_config(work, demo_dir, "training.epochs=4", "model.hidden_dim=128",
                         "training.eval_splits=[test]", name="Attention_LSTM")
    run_dir = train(config, progress=False).run_dir
    prepared = prepare_for(config, progress=False)
    model, _, config = load_run(run_dir)
    expected = decode_split(model, prepared, "test", beam_size=3, max_length=config.data.max_caption_length,
                            image_size=config.image_size, decoding=config.decoding, num_workers=0)
    paths = {name: prepared.image_path(name) for name in expected}
    model_dir = export_model(run_dir, work / "model")
    shutil.rmtree(work / "work")
    return types.SimpleNamespace(run_dir=run_dir, model_dir=model_dir, expected=expected, paths=paths,
                                 work=work)


def test_export_twice_gives_identical_bytes_and_a_complete_folder(trained, tmp_path):
    again = export_model(trained.run_dir, tmp_path / "again")
    assert digests(again) == digests(trained.model_dir)
    assert set(digests(again)) == {"README.md", MANIFEST, "config.json", "decoder.safetensors",
                                   "decoding.json", "vocab.json"}
    manifest = json.loads((again / MANIFEST).read_text())
    assert manifest["format_version"] == MODEL_FORMAT_VERSION and manifest["decoder"] == "attn"
    cnn = {"backbone": "regnet_x_400mf", "in_folder": False, "weights": "random", "seed": 0}
    assert manifest["cnn"] == cnn
    from safetensors.torch import load_file

    assert not [key for key in load_file(again / "decoder.safetensors") if key.startswith("image_encoder.")]


def test_model_card_states_data_scores_tokenizer_time_and_the_load_lines(trained):
    card = (trained.model_dir / "README.md").read_text()
    results = json.loads((trained.run_dir / "results.json").read_text())
    bleu4 = f"{100 * results['metrics']['test']['beam3']['Bleu_4']:.2f}"
    row = next(line for line in card.splitlines() if line.startswith("| test | 3 |"))
    assert f"| test | 3 | {results['scoring']['test']['beam3']['tokenizer']} | " in row and bleu4 in row
    assert "trained on flickr8k" in card and "Training time:" in card and "cpu (" in card
    loads = 'from helpers.captioner import Captioner\ncaptioner = Captioner.load("path/to/this/folder")'
    assert loads in card


def test_captions_equal_best_pt_with_no_prepared_data_store_or_glove(trained):
    assert not (trained.work / "work").exists()
    captioner = Captioner.load(trained.model_dir, device="cpu")
    names = list(trained.expected)
    got = captioner.caption([trained.paths[name] for name in names], beam_size=3, batch_size=5)
    assert got == [trained.expected[name] for name in names]
    assert any(got), "the tiny model should say something"


def test_paths_pil_images_tensors_and_batches_caption_alike(trained):
    captioner = Captioner.load(str(trained.model_dir), device="cpu")
    paths = [trained.paths[name] for name in list(trained.expected)[:3]]
    by_path = captioner.caption(paths)
    pixels = [load_image_tensor(path) for path in paths]
    assert captioner.caption([Image.open(path) for path in paths]) == by_path
    assert captioner.caption(pixels) == by_path
    assert captioner.caption([p.float() / 255 for p in pixels]) == by_path
    corners = [p[:, :150, :150] for p in pixels]  # a batch tensor (N, 3, H, W): images of one size
    assert captioner.caption(torch.stack(corners)) == captioner.caption(corners)
    assert captioner.caption(paths[0]) == by_path[0]


def test_attention_maps_on_request(trained):
    captioner = Captioner.load(trained.model_dir, device="cpu")
    result = captioner.caption(trained.paths[next(iter(trained.expected))], attention=True)
    assert isinstance(result, Caption) and result.text == " ".join(result.words)
    assert result.attention.shape == (len(result.words), 3, 3)  # 96 px / 32
    assert torch.allclose(result.attention.sum(dim=(1, 2)), torch.ones(len(result.words)))


def test_command_lines_export_and_caption_skipping_a_bad_file(trained, tmp_path):
    out = tmp_path / "cli-model"
    exported = subprocess.run([sys.executable, "-m", "helpers.export", str(trained.run_dir), str(out)],
                              cwd=REPO, capture_output=True, text=True)
    assert exported.returncode == 0, exported.stderr
    assert digests(out) == digests(trained.model_dir)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    names = list(trained.expected)[:2]
    files = [str(trained.paths[names[0]]), str(bad), str(trained.paths[names[1]])]
    done = subprocess.run([sys.executable, "-m", "helpers.caption", str(out), *files], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"{files[0]}: {trained.expected[names[0]]}",
                                        f"{files[2]}: {trained.expected[names[1]]}"]
    assert f"skipped {bad}:" in done.stderr and "1 of 3 files skipped" in done.stderr


def test_caption_command_exits_2_when_nothing_can_be_captioned(trained, tmp_path, capsys):
    missing = tmp_path / "nothing.jpg"
    assert caption_cli.main([str(trained.model_dir), str(missing)]) == 2
    assert f"skipped {missing}: missing file" in capsys.readouterr().err
    assert caption_cli.main([str(trained.run_dir), str(missing)]) == 2
    assert "is a training run folder" in capsys.readouterr().err


def test_a_fine_tuned_cnn_travels_in_the_folder(demo_dir, tmp_path):
    config = tiny_config(tmp_path, demo_dir, "training.mode=finetune")
    run_dir = train(config, progress=False).run_dir
    folder = export_model(run_dir, tmp_path / "model")
    assert (folder / "cnn.safetensors").is_file()
    assert json.loads((folder / MANIFEST).read_text())["cnn"]["in_folder"] is True
    images = sorted((Path(demo_dir) / "Images").glob("*.jpg"))[:4]
    from_run = Captioner.from_run(run_dir, "cpu").caption(images)
    assert Captioner.load(folder, device="cpu").caption(images) == from_run


# ------------------------------------------------------------------------------- old and foreign files


def test_a_folder_from_an_older_package_loads(trained, tmp_path):
    """An older package wrote fewer config keys (KEYS_ADDED_LATER) and said less in captioner.json."""
    old = shutil.copytree(trained.model_dir, tmp_path / "old")
    config = json.loads((old / "config.json").read_text())
    for dotted in KEYS_ADDED_LATER:
        section, key = dotted.split(".")
        config[section].pop(key)
    (old / "config.json").write_text(json.dumps(config))
    manifest = json.loads((old / MANIFEST).read_text())
    manifest = {key: manifest[key] for key in ("format", "format_version")}
    manifest["written_by"] = "captioning-helpers 0.9"
    (old / MANIFEST).write_text(json.dumps(manifest))
    paths = [trained.paths[name] for name in list(trained.expected)[:3]]
    expected = [trained.expected[n] for n in list(trained.expected)[:3]]
    assert Captioner.load(old, "cpu").caption(paths) == expected


def test_a_newer_format_is_refused_with_the_upgrade(trained, tmp_path):
    new = shutil.copytree(trained.model_dir, tmp_path / "new")
    manifest = json.loads((new / MANIFEST).read_text()) | {"format_version": MODEL_FORMAT_VERSION + 1}
    (new / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(NotACaptionerError, match="pip install -U captioning-helpers"):
        Captioner.load(new)


@pytest.mark.parametrize("what", ["run folder", "checkpoint", "hugging face", "empty", "other json"])
def test_what_is_not_a_model_folder_is_refused_saying_what_to_pass(trained, tmp_path, what):
    if what == "run folder":
        source, says = trained.run_dir, "is a training run folder"
    elif what == "checkpoint":
        source = shutil.copy(trained.run_dir / "best.pt", tmp_path / "stray.pt")
        says = "is a training checkpoint"
    elif what == "hugging face":
        source = tmp_path / "blip"
        source.mkdir()
        (source / "config.json").write_text('{"model_type": "blip"}')
        (source / "model.safetensors").write_bytes(b"")
        says = "a Hugging Face model"
    elif what == "empty":
        source, says = tmp_path, "not a model folder"
    else:
        source = tmp_path / "other"
        source.mkdir()
        (source / MANIFEST).write_text('{"format": "someone-else/detector", "format_version": 1}')
        says = "'someone-else/detector' model"
    with pytest.raises(NotACaptionerError, match=says) as raised:
        Captioner.load(source)
    assert "helpers.export" in str(raised.value) or "pip install" in str(raised.value) or what == "other json"


def test_export_refuses_a_model_folder_and_a_foreign_target(trained, tmp_path):
    with pytest.raises(NotACaptionerError, match="already a model folder"):
        export_model(trained.model_dir, tmp_path / "x")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a model folder"):
        export_model(trained.run_dir, tmp_path / "taken")
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"


# ----------------------------------------------------------------------------------------- Kaggle Models


@pytest.mark.parametrize("layout", ["classic", "models/owner"])
def test_an_attached_kaggle_model_is_found_in_place(trained, tmp_path, monkeypatch, layout):
    root = tmp_path / "kaggle_input"
    base = root / "shapes-captioner" if layout == "classic" else root / "models" / "jane" / "shapes-captioner"
    for version in ("1", "2"):
        shutil.copytree(trained.model_dir, base / "pytorch" / "default" / version)
    monkeypatch.setenv("KAGGLE_INPUT_DIR", str(root))
    assert find_attached_model(HANDLE) == base / "pytorch" / "default" / "2"
    assert find_attached_model(HANDLE + "/1") == base / "pytorch" / "default" / "1"
    assert resolve_model(HANDLE) == base / "pytorch" / "default" / "2"
    assert resolve_model(base) == base / "pytorch" / "default" / "2"  # the model's folder: newest version
    name = next(iter(trained.expected))
    assert Captioner.load(HANDLE, "cpu").caption(trained.paths[name]) == trained.expected[name]


def test_a_handle_not_attached_is_downloaded_with_kagglehub_or_explained(trained, monkeypatch):
    asked = []
    hub = types.SimpleNamespace(model_download=lambda handle: asked.append(handle) or str(trained.model_dir))
    monkeypatch.setitem(sys.modules, "kagglehub", hub)
    assert resolve_model(HANDLE + "/3") == trained.model_dir and asked == [HANDLE + "/3"]

    def offline(handle):
        raise ConnectionError("no network")

    monkeypatch.setitem(sys.modules, "kagglehub", types.SimpleNamespace(model_download=offline))
    with pytest.raises(NotACaptionerError, match="Add Input -> Models -> shapes-captioner"):
        Captioner.load(HANDLE)


def test_kaggle_model_upload_is_prepared_with_handle_license_and_notes(trained, tmp_path, monkeypatch):
    upload = kaggle_models.prepare_model_upload(trained.run_dir, "jane", tmp_path, slug="shapes-captioner")
    assert upload.handle == HANDLE and upload.license_name == "Apache 2.0"
    assert upload.local_model_dir == tmp_path / "models" / "shapes-captioner"
    notes = "attn decoder on regnet_x_400mf features, trained on flickr8k: test"
    assert upload.version_notes.startswith(notes)
    card = (upload.local_model_dir / "README.md").read_text()
    assert f'Captioner.load("{HANDLE}")' in card and upload.version_notes in card
    assert upload.attached_path(2) == "/kaggle/input/shapes-captioner/pytorch/default/2"
    calls = []
    monkeypatch.setitem(sys.modules, "kagglehub", types.SimpleNamespace(
        model_upload=lambda *args, **kwargs: calls.append((args, kwargs))))
    kaggle_models.upload_model(upload)
    assert calls == [((HANDLE, str(upload.local_model_dir)),
                      {"license_name": "Apache 2.0", "version_notes": upload.version_notes})]


def test_kaggle_command_line_prepares_the_model_upload(trained, tmp_path, monkeypatch, capsys):
    from helpers import kaggle as kg

    calls = []
    monkeypatch.setitem(sys.modules, "kagglehub", types.SimpleNamespace(
        model_upload=lambda *args, **kwargs: calls.append(args)))
    assert kg.main(["--model", str(trained.run_dir), "--owner", "jane", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    slug = kaggle_models.model_slug(trained.run_dir.name)
    assert f"jane/{slug}/pyTorch/default" in printed and "kagglehub.model_upload(" in printed
    assert (tmp_path / "models" / slug / MANIFEST).is_file() and not calls  # prepared, not sent
    args = ["--model", str(trained.run_dir), "--owner", "jane", "--out", str(tmp_path)]
    assert kg.main([*args, "--upload"]) == 0
    assert calls == [(f"jane/{slug}/pyTorch/default", str(tmp_path / "models" / slug))]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_captions_on_the_gpu_equal_the_cpu(trained):
    paths = [trained.paths[name] for name in trained.expected]
    on_gpu = Captioner.load(trained.model_dir, device="cuda")
    assert on_gpu.caption(paths) == Captioner.load(trained.model_dir, device="cpu").caption(paths)
