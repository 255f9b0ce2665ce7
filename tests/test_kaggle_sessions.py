"""The README's Kaggle path, walked in imitated Kaggle sessions (tests/kaggle_sessions.py).

Inputs are what README "On Kaggle, step by step" tells a user to attach, in Kaggle's real layouts:
Flickr8k (`adityajn105/flickr8k`: `Images/` + `captions.txt`, here a generated dataset whose images
carry real Flickr8k file names, so the shipped official split applies), GloVe 6B 300d
(`thanakomsn/glove6b300dtxt`), the helpers dataset as `python -m helpers.kaggle` builds it (with
the wheels of what Kaggle lacks), and the backbone weights file for Internet-off sessions. Each
notebook runs with its own defaults, with two parameters to keep it CPU-sized (EPOCHS, BATCH_SIZE).
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import torchvision
from kaggle_sessions import (
    COLAB_CONTENT,
    KaggleSessions,
    ensure_mount_point,
    namespaces_available,
    repack_wheel,
    run_colab,
    writes_outside_working,
)

from helpers import kaggle as kg
from helpers.demo import make_demo_dataset, make_demo_glove

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parents[1]
SPLIT_LISTS = REPO_ROOT.parent / "shared" / "realdata" / "flickr8k_original"
OWNER = "jane"
CPU_SIZED = {"EPOCHS": 2, "BATCH_SIZE": 32}

why_not = namespaces_available()
if why_not:
    pytest.skip(f"Kaggle sessions cannot be imitated here: {why_not}", allow_module_level=True)


def flickr8k_names(count_train: int, count_dev: int, count_test: int) -> list[str]:
    """Real Flickr8k image names from the official split lists, train first."""
    names = []
    for split, count in (("train", count_train), ("dev", count_dev), ("test", count_test)):
        listed = (SPLIT_LISTS / f"Flickr_8k.{split}Images.txt").read_text().split()
        names += sorted(listed)[:count]
    return names


def kaggle_flickr8k(out: Path) -> Path:
    """A generated dataset in the layout of `adityajn105/flickr8k`, its images named as real ones."""
    make_demo_dataset(out, num_images=60, seed=3)
    rows = list(csv.reader(io.StringIO((out / "captions.txt").read_text(encoding="utf-8"))))
    demo_names = list(dict.fromkeys(row[0] for row in rows[1:]))
    renamed = dict(zip(demo_names, flickr8k_names(40, 10, 10)))
    for old, new in renamed.items():
        (out / "Images" / old).rename(out / "Images" / new)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(rows[0])
    writer.writerows([renamed[image], caption] for image, caption in rows[1:])
    (out / "captions.txt").write_text(text.getvalue(), encoding="utf-8")
    (out / ".demo.json").unlink(missing_ok=True)
    return out


def weights_file(out: Path, builder, weights) -> Path:
    """A weights file as torchvision names it (random values: the test checks where it is found)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / weights.url.rsplit("/", 1)[1]
    torch.save(builder(weights=None).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory):
    if not SPLIT_LISTS.is_dir():
        pytest.skip("../shared/realdata is absent: no real Flickr8k file names")
    root = tmp_path_factory.mktemp("kaggle")
    created = ensure_mount_point()
    wheels = root / "wheels"
    repack_wheel("pycocoevalcap", wheels)
    build = root / "build"
    kg.build_kaggle_folders(OWNER, build, wheels_from=wheels)
    datasets = {
        "adityajn105/flickr8k": kaggle_flickr8k(root / "data" / "flickr8k"),
        f"{OWNER}/captioning-helpers": build / "captioning-helpers",
        "thanakomsn/glove6b300dtxt": make_demo_glove(
            root / "data" / "glove" / "glove.6B.300d.txt", root / "data" / "flickr8k", dim=300
        ).parent,
    }
    weights = root / "data" / "weights"
    weights_file(weights, torchvision.models.resnet50, torchvision.models.ResNet50_Weights.DEFAULT)
    datasets[f"{OWNER}/resnet50-weights"] = weights
    sessions = KaggleSessions(root / "sessions", build, OWNER)
    sessions.datasets = datasets
    yield sessions
    if created:
        shutil.rmtree("/kaggle", ignore_errors=True)


def assert_ran(session):
    assert session.returncode == 0, f"{session.notebook} failed:\n{session.log[-4000:]}"
    text = session.cells_text()
    assert "Traceback" not in text and "Error" not in text.replace("BadImageError", ""), text[-3000:]
    site = "python/lib/python*/site-packages"
    # the setup cell's pip call installed `helpers` from the attached dataset's wheel, and with it
    # pycocoevalcap, which Kaggle lacks, from the wheel beside it (Internet off)
    assert f"Installing /kaggle/input/datasets/{OWNER}/captioning-helpers/captioning_helpers-" in text
    (record,) = session.output.parent.glob(f"{site}/captioning_helpers-*/direct_url.json")
    assert f"/kaggle/input/datasets/{OWNER}/captioning-helpers/captioning_helpers-" in record.read_text()
    assert list(session.output.parent.glob(f"{site}/pycocoevalcap-*.dist-info/INSTALLER"))


def assert_clean_output(session):
    files = session.output_files()
    links = [path for path, size in files.items() if size < 0]
    assert not links, f"{session.notebook} left links in its output (dangling next session): {links}"
    assert not writes_outside_working(session), writes_outside_working(session)


def sizes(session) -> dict[str, int]:
    """Bytes per top-level folder of a session's output."""
    totals: dict[str, int] = {}
    for path, size in session.output_files().items():
        top = path.split("/", 1)[0]
        totals[top] = totals.get(top, 0) + max(size, 0)
    return totals


@pytest.fixture(scope="module")
def readme_chain(kaggle):
    """README's path: 00, then 02 with 00's output attached, then 04 and 05 with 02's attached, then
    07 with 00, 04 and 05 attached; each in a fresh session."""
    data = kaggle.datasets
    kaggle.run("00_data_prep", data, parameters=CPU_SIZED)
    kaggle.run("02_backbones", data, attach=("00_data_prep",), parameters=CPU_SIZED)
    for stem in ("04_train_lstm", "05_train_attention_lstm"):
        kaggle.run(stem, data, attach=("02_backbones",), parameters=CPU_SIZED)
    kaggle.run("07_results", data, attach=("00_data_prep", "04_train_lstm", "05_train_attention_lstm"))
    for label, session in kaggle.sessions.items():
        print(f"{label}: {session.seconds:.0f} s, output {sizes(session)}")
    return kaggle.sessions


@pytest.mark.parametrize(
    "stem", ["00_data_prep", "02_backbones", "04_train_lstm", "05_train_attention_lstm", "07_results"]
)
def test_readme_chain_runs_every_notebook_offline(readme_chain, stem):
    session = readme_chain[stem]
    assert_ran(session)
    assert_clean_output(session)


def test_data_prep_uses_the_attached_dataset_and_the_official_split(readme_chain):
    text = readme_chain["00_data_prep"].cells_text()
    assert "/kaggle/input/datasets/adityajn105/flickr8k" in text
    manifest = json.loads(next(readme_chain["00_data_prep"].output.glob("data/*/splits.json")).read_text())
    assert {split: len(images) for split, images in manifest.items()} == {"train": 40, "val": 10, "test": 10}


def test_training_reads_the_attached_store_in_place_and_keeps_small_checkpoints(readme_chain):
    assert list(readme_chain["02_backbones"].output.glob("features/*/*/*.npy"))
    for stem, run in (("04_train_lstm", "LSTM"), ("05_train_attention_lstm", "Attention_LSTM")):
        session = readme_chain[stem]
        stores = [path for path in session.output_files() if path.startswith("features/")]
        assert stores and all(path.endswith("/attached.json") for path in stores), stores
        assert "image-captioning-02-backbones" in session.cells_text() or stores
        best = next(session.output.glob(f"runs/{run}*/best.pt"))
        state = torch.load(best, map_location="cpu", weights_only=False)
        cnn = [key for key in state["model"] if key.startswith(("encoder.", "image_encoder."))]
        assert not cnn, f"{best} carries the frozen CNN: {cnn[:3]}"
        assert best.stat().st_size < 40e6


def test_each_output_holds_only_what_its_stage_made(readme_chain):
    """Sizes follow README's table: data alone for 00; the store in 02's; a run folder and a store
    record in the training outputs; no runs and no store in 07's."""
    data_bytes = sizes(readme_chain["00_data_prep"])["data"]
    assert set(sizes(readme_chain["00_data_prep"])) == {"data"} and data_bytes < 1e6
    store = sizes(readme_chain["02_backbones"])["features"]
    assert 60 * 2048 * 49 * 0.9 < store < 60 * 2048 * 49 * 1.2  # 60 images x 2048 x 7 x 7 uint8 + ranges
    for stem in ("04_train_lstm", "05_train_attention_lstm"):
        held = sizes(readme_chain[stem])
        assert held["features"] < 10_000 and held["data"] == data_bytes, held  # a record, 00's data
        assert held["runs"] < 2 * 40e6, held  # best.pt + last.pt, no CNN
    assert "runs" not in sizes(readme_chain["07_results"])


def test_results_reads_the_runs_where_they_are(readme_chain):
    session = readme_chain["07_results"]
    assert "runs" not in sizes(session)
    table = session.cells_text()
    assert "LSTM" in table and "Attention LSTM" in table


def test_a_training_notebook_runs_alone_with_only_data_prep_attached(kaggle, readme_chain):
    session = kaggle.run(
        "05_train_attention_lstm", kaggle.datasets, attach=("00_data_prep",), parameters=CPU_SIZED,
        label="05_alone",
    )  # fmt: skip
    assert_ran(session)
    assert_clean_output(session)
    assert list(session.output.glob("features/*/*/*.npy"))  # nothing to reuse: it extracts its own store
    assert list(session.output.glob("runs/Attention_LSTM*/best.pt"))


def test_missing_scoring_dependency_stops_the_setup_cell_at_once(kaggle, readme_chain, tmp_path):
    no_wheels = tmp_path / "build"
    kg.build_kaggle_folders(OWNER, no_wheels, wheels=False)
    data = dict(kaggle.datasets)
    data[f"{OWNER}/captioning-helpers"] = no_wheels / "captioning-helpers"
    session = kaggle.run(
        "04_train_lstm", data, attach=("02_backbones",), parameters=CPU_SIZED, label="04_without_wheels",
    )  # fmt: skip
    assert session.returncode != 0
    text = re.sub(r"\x1b\[[0-9;]*m", "", session.cells_text())  # the traceback's colours
    assert "RuntimeError: pip could not install" in text
    assert "Could not find a version that satisfies the requirement pycocoevalcap>=1.2" in text
    assert "Turn Internet on" in text and "python -m helpers.kaggle" in text
    assert not (session.output / "runs").exists()  # failed before any training
    print(f"missing pycocoevalcap reported after {session.seconds:.1f} s (kernel start included)")
    assert session.seconds < 60


# ------------------------------------------------------------------------------------------------ Colab


@pytest.fixture(scope="module")
def colab_mount_point():
    created = ensure_mount_point(COLAB_CONTENT)
    yield
    if created:
        COLAB_CONTENT.rmdir()


@pytest.mark.parametrize("data", ["folder", "kagglehub"])
def test_on_colab_data_prep_runs_from_content_and_says_where_outputs_go(kaggle, colab_mount_point,
                                                                         tmp_path, data):
    """Colab imitated: no /kaggle, the notebook in /content with the helpers wheel (and pycocoevalcap's,
    as Internet would give it) uploaded beside it; the data given as a folder (DATA_DIR), or fetched by
    kagglehub (a stand-in: no network here) with the user's Kaggle credentials."""
    helpers_dataset = kaggle.build / "captioning-helpers"
    uploads = {wheel.name: wheel for wheel in helpers_dataset.glob("*.whl")}
    flickr8k = kaggle.datasets["adityajn105/flickr8k"]
    if data == "folder":
        uploads["flickr8k"] = flickr8k
        parameters, env, downloads = {"DATA_DIR": "/content/flickr8k"}, {}, {}
    else:
        parameters, downloads = {}, {"adityajn105/flickr8k": flickr8k}
        env = {"KAGGLE_USERNAME": OWNER, "KAGGLE_KEY": "0" * 32}
    session = run_colab(tmp_path, REPO_ROOT / "notebooks" / "00_data_prep.ipynb", uploads, parameters,
                        downloads, env)  # fmt: skip
    assert session.returncode == 0, session.log[-4000:]
    text = session.cells_text()
    assert "Installing /content/captioning_helpers-" in text
    assert "Colab | device cpu | GPU none | work dir /content/work" in text
    assert "Outputs go to /content/work. Colab deletes /content when the runtime ends" in text
    fetched = f"kagglehub (stand-in): adityajn105/flickr8k with {OWNER}'s credentials"
    assert ("/content/flickr8k" if data == "folder" else fetched) in text
    assert list(session.output.glob("data/*/splits.json"))
    print(f"Colab session ({data}): {session.seconds:.0f} s")
