"""Inputs attached to a Kaggle notebook (datasets, the Karpathy json, GloVe, backbone weights) found in
place in both mount layouts under a temporary $KAGGLE_INPUT_DIR with kagglehub failing, and downloads
with a bounded wait against local servers (the network is blocked in tests)."""

import hashlib
import http.server
import json
import socket
import threading
import time
from pathlib import Path

import kagglehub
import pytest
import torch
import torchvision
from PIL import Image

import helpers.backbones as backbones_module
from helpers.backbones import BACKBONES, ImageEncoder, PretrainedWeightsUnavailable
from helpers.embeddings import download_glove, write_glove_file
from helpers.inputs import SEARCH_DEPTH, find_attached_file, run_with_progress_timeout
from helpers.prepare import prepare_dataset
from helpers.sources import download_dataset


@pytest.fixture
def kaggle_input(tmp_path, monkeypatch):
    """An empty /kaggle/input stand-in; kagglehub must not be asked for anything attached there."""
    root = tmp_path / "input"
    root.mkdir()
    monkeypatch.setenv("KAGGLE_INPUT_DIR", str(root))
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub_cache"))

    def no_kagglehub(handle, *args, **kwargs):
        raise AssertionError(f"kagglehub called for {handle}: an attached input needs no call")

    monkeypatch.setattr(kagglehub, "dataset_download", no_kagglehub)
    return root


def write_image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 10, 200)).save(path)


def flickr_csv(folder, images):
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["image,caption"] + [f"{name},a dog number {i} runs" for i, name in enumerate(images)]
    (folder / "captions.txt").write_text("\n".join(lines) + "\n")
    for name in images:
        write_image(folder / "Images" / name)
    return folder


FLICKR_NAMES = [f"{1000268201 + i}_693b08cb0e.jpg" for i in range(6)]


@pytest.mark.parametrize("mount", ["datasets/adityajn105/flickr8k", "flickr8k"])
def test_attached_flickr8k_is_read_in_place_in_either_mount_layout(kaggle_input, mount, capsys):
    attached = flickr_csv(kaggle_input / mount, FLICKR_NAMES)
    layout = download_dataset("flickr8k")
    assert layout.caption_files == (attached / "captions.txt",)
    assert layout.image_dir == attached / "Images"
    assert f"flickr8k: using the attached dataset {attached}" in capsys.readouterr().out


def test_attached_older_flickr30k_and_coco_layouts(kaggle_input):
    older = kaggle_input / "flickr-image-dataset" / "flickr30k_images"
    older.mkdir(parents=True)
    (older / "results.csv").write_text(
        "image_name| comment_number| comment\n1000092795.jpg| 0| Two young guys .\n"
    )
    write_image(older / "flickr30k_images" / "1000092795.jpg")
    layout = download_dataset("flickr30k", verbose=False)
    assert (layout.kind, layout.image_dir) == ("flickr30k_results", older / "flickr30k_images")

    coco = kaggle_input / "datasets" / "awsaf49" / "coco-2017-dataset" / "coco2017"
    (coco / "annotations").mkdir(parents=True)
    (coco / "annotations" / "captions_val2017.json").write_text(json.dumps({
        "images": [{"id": 139, "file_name": "000000000139.jpg"}],
        "annotations": [{"image_id": 139, "caption": "A room with chairs."}],
    }))
    write_image(coco / "val2017" / "000000000139.jpg")
    layout = download_dataset("coco", verbose=False)
    assert (layout.kind, layout.image_dir, layout.image_subdirs) == ("coco", coco, ("val2017",))
    assert [row.image for row in layout.read().rows] == ["val2017/000000000139.jpg"]


def test_attached_karpathy_json_gives_the_standard_split(kaggle_input, tmp_path, capsys):
    images = [f"{1000092795 + i}.jpg" for i in range(10)]
    flickr_csv(kaggle_input / "datasets" / "adityajn105" / "flickr30k", images)
    split_of = {name: "train" for name in images[:6]} | {images[6]: "restval", images[7]: "val",
                                                          images[8]: "test", images[9]: "test"}
    karpathy = kaggle_input / "datasets" / "shtvkumar" / "karpathy-splits" / "dataset_flickr30k.json"
    karpathy.parent.mkdir(parents=True)
    karpathy.write_text(json.dumps({"dataset": "flickr30k", "images": [
        {"filename": name, "split": split, "sentences": []} for name, split in split_of.items()
    ]}))
    prepared = prepare_dataset("flickr30k", work_dir=tmp_path / "work", split="karpathy", min_word_count=1)
    assert prepared.splits == {"train": images[:7], "val": [images[7]], "test": images[8:]}
    assert prepared.manifest["source"]["karpathy_json"]["name"] == "dataset_flickr30k.json"
    assert "seeded" not in capsys.readouterr().out


def test_glove_found_through_the_input_root(kaggle_input):
    attached = kaggle_input / "glove6b100dtxt" / "glove.6B.100d.txt"
    write_glove_file(attached, {"dog": torch.ones(100).numpy()})
    assert download_glove(100, verbose=False) == attached


def test_the_search_is_bounded_and_skips_image_folders(kaggle_input):
    deep = kaggle_input.joinpath(*[f"level{i}" for i in range(SEARCH_DEPTH)], "dataset_coco.json")
    deep.parent.mkdir(parents=True)
    deep.write_text("{}")
    assert find_attached_file("dataset_coco.json") == deep
    too_deep = deep.parent / "one-more" / "dataset_coco.json"
    too_deep.parent.mkdir()
    deep.rename(too_deep)
    assert find_attached_file("dataset_coco.json") is None
    in_images = kaggle_input / "flickr8k" / "Images" / "dataset_coco.json"
    in_images.parent.mkdir(parents=True)
    in_images.write_text("{}")
    assert find_attached_file("dataset_coco.json") is None


# ------------------------------------------------------------------------------------ backbone weights


def planted_weights(path: Path) -> tuple[dict, str]:
    """A regnet_x_400mf state dict saved at `path`, and its sha256."""
    state = torchvision.models.regnet_x_400mf(weights=None).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state, hashlib.sha256(path.read_bytes()).hexdigest()


def point_weights_at(monkeypatch, url: str) -> None:
    """Make regnet_x_400mf's torchvision weights enum name `url` (file name and download address)."""
    monkeypatch.setattr(torchvision.models.RegNet_X_400MF_Weights.IMAGENET1K_V2.value, "url", url)


def assert_same_weights(encoder: ImageEncoder, state: dict) -> None:
    network = torchvision.models.regnet_x_400mf(weights=None)
    network.load_state_dict(state)
    loaded = encoder.cnn.state_dict()
    expected = backbones_module._trunk("regnet_x_400mf", network).state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in expected.items())


def test_attached_weights_in_a_kaggle_model_load_in_place(kaggle_input, torch_home, monkeypatch, capsys):
    staged, digest = planted_weights(kaggle_input / "staging.pth")
    name = f"regnet_x_400mf-{digest[:8]}.pth"
    model = kaggle_input / "models" / "jane" / "regnet" / "pytorch" / "default" / "1" / name
    model.parent.mkdir(parents=True)
    (kaggle_input / "staging.pth").rename(model)
    point_weights_at(monkeypatch, f"https://download.pytorch.org/models/{name}")
    encoder = ImageEncoder(pretrained=True, backbone="regnet_x_400mf", verbose=False)
    assert_same_weights(encoder, staged)
    assert f"regnet_x_400mf weights: {model} (attached)" in capsys.readouterr().out
    assert list((torch_home / "hub" / "checkpoints").iterdir()) == []  # read in place, not copied


def test_renamed_weights_are_recognised_by_their_hash(kaggle_input, torch_home, monkeypatch):
    renamed = kaggle_input / "datasets" / "jane" / "backbone-weights" / "regnet.pth"
    staged, digest = planted_weights(renamed)
    point_weights_at(monkeypatch, f"https://download.pytorch.org/models/regnet_x_400mf-{digest[:8]}.pth")
    assert_same_weights(ImageEncoder(pretrained=True, backbone="regnet_x_400mf", verbose=False), staged)


def test_a_damaged_or_foreign_file_under_the_weights_name_is_not_used(kaggle_input, torch_home, capsys):
    name = BACKBONES["regnet_x_400mf"].weights_file
    damaged = kaggle_input / "backbone-weights" / name
    planted_weights(damaged)
    damaged.write_bytes(damaged.read_bytes()[:1000])  # truncated
    foreign = kaggle_input / "other-weights" / name
    foreign.parent.mkdir(parents=True)
    torch.save({"fc.weight": torch.zeros(2, 2)}, foreign)  # loads, but is another network's
    with pytest.raises(PretrainedWeightsUnavailable, match=name):
        ImageEncoder(pretrained=True, backbone="regnet_x_400mf", verbose=False)
    out = capsys.readouterr().out
    assert f"{damaged}: not readable as regnet_x_400mf weights" in out
    assert f"{foreign}: not a state dict of regnet_x_400mf; ignored" in out


def test_weights_under_torchvision_name_are_used_as_torchvision_uses_its_cache(kaggle_input, torch_home):
    """The name is the match (like a file in $TORCH_HOME/hub/checkpoints): no hash to compute."""
    attached = kaggle_input / "datasets" / "jane" / "weights" / BACKBONES["regnet_x_400mf"].weights_file
    staged, _ = planted_weights(attached)
    assert_same_weights(ImageEncoder(pretrained=True, backbone="regnet_x_400mf", verbose=False), staged)


# ------------------------------------------------------------------------------------ bounded downloads


@pytest.fixture
def silent_server():
    """A TCP server on 127.0.0.1 that accepts connections and never answers; yields its port."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted = []

    def accept():
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    server.close()
    for connection in accepted:  # the abandoned download thread then sees the connection close
        connection.close()


def test_weights_download_from_a_silent_server_fails_in_bounded_time(
    silent_server, torch_home, monkeypatch
):
    name = BACKBONES["regnet_x_400mf"].weights_file
    point_weights_at(monkeypatch, f"http://127.0.0.1:{silent_server}/models/{name}")
    monkeypatch.setattr(backbones_module, "DOWNLOAD_TIMEOUT", 1.0)
    started = time.monotonic()
    with pytest.raises(PretrainedWeightsUnavailable) as caught:
        ImageEncoder(pretrained=True, backbone="regnet_x_400mf", verbose=False)
    assert time.monotonic() - started < 20  # one second without progress, polled; never a hang
    message = str(caught.value)
    assert f"no answer from 127.0.0.1:{silent_server} and no download progress for 1 s" in message
    assert "turn Internet on (notebook sidebar -> Session options -> Internet)" in message
    assert f"attach the file {name} as a dataset or Kaggle Model (Add Input)" in message
    assert f"put {name} into {torch_home / 'hub' / 'checkpoints'}/" in message


class _OneFileHandler(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def test_weights_download_that_answers_is_hash_checked_and_cached(tmp_path, torch_home, monkeypatch):
    staged, digest = planted_weights(tmp_path / "served.pth")
    handler = type("Handler", (_OneFileHandler,), {"body": (tmp_path / "served.pth").read_bytes()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        name = f"regnet_x_400mf-{digest[:8]}.pth"
        point_weights_at(monkeypatch, f"http://127.0.0.1:{server.server_address[1]}/models/{name}")
        assert_same_weights(ImageEncoder(pretrained=True, backbone="regnet_x_400mf", verbose=False), staged)
        cached = torch_home / "hub" / "checkpoints" / name
        assert cached.read_bytes() == (tmp_path / "served.pth").read_bytes()

        wrong = f"regnet_x_400mf-{'0' * 8}.pth"  # a file whose content does not match its name
        point_weights_at(monkeypatch, f"http://127.0.0.1:{server.server_address[1]}/models/{wrong}")
        with pytest.raises(PretrainedWeightsUnavailable, match="invalid hash value"):
            ImageEncoder(pretrained=True, backbone="regnet_x_400mf", verbose=False)
    finally:
        server.shutdown()
        server.server_close()


def test_the_wait_restarts_while_the_download_folder_grows(tmp_path, monkeypatch):
    folder = tmp_path / "downloading"
    folder.mkdir()

    def slow_but_steady():
        for _ in range(6):  # 1.2 s in all, four times the limit, never 0.3 s without progress
            with (folder / "part").open("ab") as handle:
                handle.write(b"x" * 100)
            time.sleep(0.2)
        return "done"

    monkeypatch.setattr("helpers.inputs._POLL_SECONDS", 0.05)
    assert run_with_progress_timeout(slow_but_steady, folder, 0.3, "a test server") == "done"
    release = threading.Event()
    try:
        expected = "no answer from a test server and no download progress for 0.3 s"
        with pytest.raises(TimeoutError, match=expected):
            run_with_progress_timeout(lambda: release.wait(10), folder, 0.3, "a test server")
    finally:
        release.set()


def test_the_readme_names_every_backbone_weights_file():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    step_by_step = readme.split("## On Kaggle, step by step")[1].split("\n## ")[0]
    for info in BACKBONES.values():
        assert f"`{info.weights_file}`" in step_by_step, info.name
    for handle in ("adityajn105/flickr8k", "thanakomsn/glove6b300dtxt", "shtvkumar/karpathy-splits",
                   "captioning-helpers"):
        assert handle in step_by_step


@pytest.mark.parametrize("name", ["convnext_tiny", "swin_t"])
def test_modern_backbone_weights_attached_by_name_or_renamed_load_in_place(name, kaggle_input, torch_home,
                                                                           monkeypatch, capsys):
    """ConvNeXt-Tiny and Swin-T weights are found like the others: under torchvision's file name, or
    renamed and matched by the sha256 prefix of that name; read in place, TORCH_HOME left empty."""
    info = BACKBONES[name]
    state = getattr(torchvision.models, name)(weights=None).state_dict()
    first_key = next(iter(state))
    state[first_key] = torch.full_like(state[first_key], 0.25)
    by_name = kaggle_input / "datasets" / "jane" / "weights" / info.weights_file
    by_name.parent.mkdir(parents=True)
    torch.save(state, by_name)
    encoder = ImageEncoder(pretrained=True, backbone=name, verbose=False)
    assert torch.equal(encoder.cnn.state_dict()[f"0.{first_key.removeprefix('features.')}"], state[first_key])
    assert f"{name} weights: {by_name} (attached)" in capsys.readouterr().out

    renamed = kaggle_input / "datasets" / "jane" / "backbone-weights" / f"my-{name}.pth"
    renamed.parent.mkdir(parents=True)
    by_name.rename(renamed)
    digest = hashlib.sha256(renamed.read_bytes()).hexdigest()
    monkeypatch.setattr(info.weights_enum.value, "url", f"https://download.pytorch.org/models/{name}-{digest[:8]}.pth")
    encoder = ImageEncoder(pretrained=True, backbone=name, verbose=False)
    assert torch.equal(encoder.cnn.state_dict()[f"0.{first_key.removeprefix('features.')}"], state[first_key])
    assert f"{name} weights: {renamed} (attached)" in capsys.readouterr().out
    assert list((torch_home / "hub" / "checkpoints").iterdir()) == []
