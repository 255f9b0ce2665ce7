"""Kaggle publishing: the generated folders pass the real `kaggle` CLI's checks (run against a refused
loopback address), and our own validator rejects what the CLI rejects, naming the key."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from helpers import kaggle as kg
from helpers.deps import read_requirements
from helpers.suite import SUITE

REPO_ROOT = Path(__file__).resolve().parent.parent
SUITE_STEMS = SUITE
KAGGLE_CLI = Path(sys.executable).parent / "kaggle"
KERNEL_ENDPOINT = "kernels.KernelsApiService/SaveKernel"
DATASET_ENDPOINT = "datasets.DatasetApiService/GetDatasetStatus"

# Loaded into the CLI's own Python via PYTHONPATH: any connection to a non-loopback address fails
# loudly, so the CLI provably talks to nothing but the refusing localhost.
LOOPBACK_GUARD = """
import socket
_real_connect = socket.socket.connect
def _loopback_only(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if self.family != socket.AF_UNIX and not (host in ("localhost", "::1") or str(host).startswith("127.")):
        raise OSError("blocked non-loopback connection to %r" % (address,))
    return _real_connect(self, address)
socket.socket.connect = _loopback_only
"""


def _notebook(text: str) -> dict:
    """A small executed-looking notebook: one code cell with an output and widget state."""
    return {
        "cells": [
            {"cell_type": "markdown", "metadata": {}, "source": ["# stage"]},
            {
                "cell_type": "code",
                "metadata": {"tags": ["parameters"], "execution": {"x": 1}},
                "execution_count": 4,
                "source": [f"print({text!r})"],
                "outputs": [{"output_type": "stream", "name": "stdout", "text": [text]}],
            },
        ],
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "widgets": {"application/vnd.jupyter.widget-state+json": {"state": {}}},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


@pytest.fixture
def fake_repo(tmp_path):
    """A copy of the repository layout: the real metadata template, notebooks for every stage,
    a helpers package and configs."""
    repo = tmp_path / "repo"
    (repo / "notebooks").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "kaggle_kernel_metadata.json", repo / "kaggle_kernel_metadata.json")
    for name in ("pyproject.toml", "requirements.txt"):  # the wheel's metadata and file list come from them
        shutil.copy(REPO_ROOT / name, repo / name)
    for stem in SUITE_STEMS:
        (repo / "notebooks" / f"{stem}.ipynb").write_text(json.dumps(_notebook(stem)))
    (repo / "helpers" / "__pycache__").mkdir(parents=True)
    (repo / "helpers" / "__init__.py").write_text('"""helpers"""\n')
    (repo / "helpers" / "text.py").write_text("WORD = 1\n")
    shutil.copy(REPO_ROOT / "helpers" / "files.py", repo / "helpers" / "files.py")  # where configs are found
    (repo / "helpers" / "__pycache__" / "text.cpython-311.pyc").write_bytes(b"\0")
    (repo / "configs" / "presets").mkdir(parents=True)
    (repo / "configs" / "LSTM.yaml").write_text("model: {cell_type: lstm}\n")
    (repo / "configs" / "presets" / "beginner.yaml").write_text("batch_size: 128\n")
    return repo


def _build(repo: Path, out: Path, owner: str = "jane") -> list[Path]:
    return kg.build_kaggle_folders(
        owner,
        out,
        repo / "notebooks",
        repo / "kaggle_kernel_metadata.json",
        project_dir=repo,
        wheels=False,
    )


@pytest.fixture
def cli_env(tmp_path):
    """Environment for the CLI: a temporary HOME with dummy credentials, the LOCALHOST API endpoint,
    no proxies, no inherited Kaggle variables, and the loopback guard."""
    assert KAGGLE_CLI.is_file(), f"kaggle CLI missing at {KAGGLE_CLI}: pip install -r requirements-test.txt"
    home = tmp_path / "home"
    (home / ".kaggle").mkdir(parents=True)
    credentials = home / ".kaggle" / "kaggle.json"
    credentials.write_text(json.dumps({"username": "jane", "key": "0" * 32}))
    credentials.chmod(0o600)
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(LOOPBACK_GUARD)
    return {
        "PATH": f"{KAGGLE_CLI.parent}{os.pathsep}{os.defpath}",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "KAGGLE_API_ENVIRONMENT": "LOCALHOST",
        "NO_PROXY": "*",
        "no_proxy": "*",
        "PYTHONPATH": str(guard),
    }


def run_cli(env: dict, commands: list[list[str]]) -> list[str]:
    """Run the CLI commands concurrently; returns each one's stdout and stderr together."""
    processes = [
        subprocess.Popen(
            [str(KAGGLE_CLI), *command], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for command in commands
    ]
    return [process.communicate(timeout=60)[0] for process in processes]


def cli_accepted(output: str, endpoint: str) -> bool:
    """True when the CLI printed nothing but the refused connection to `endpoint`: it validated the
    metadata and went on to call the API. The CLI's exit status says nothing (1 both ways with 2.2.5)."""
    lines = [line for line in output.splitlines() if line.strip()]
    return bool(lines) and all(endpoint in line and "Connection refused" in line for line in lines)


def test_loopback_guard_blocks_other_addresses(cli_env):
    probe = "import socket; socket.create_connection(('192.0.2.1', 80), timeout=1)"
    result = subprocess.run(
        [sys.executable, "-c", probe], env=cli_env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0
    assert "blocked non-loopback connection to ('192.0.2.1', 80)" in result.stderr


def test_build_writes_one_folder_per_notebook(fake_repo, tmp_path):
    out = tmp_path / "build"
    folders = _build(fake_repo, out)
    assert [folder.name for folder in folders] == [
        "captioning-helpers",
        *(f"image-captioning-{stem.replace('_', '-')}" for stem in SUITE_STEMS),
    ]
    ids = {}
    for folder, stem in zip(folders[1:], SUITE_STEMS):
        meta = json.loads((folder / "kernel-metadata.json").read_text())
        ids[stem[:2]] = meta["id"]
        assert meta["id"] == f"jane/{folder.name}"
        assert kg.slugify(meta["title"]) == folder.name
        assert meta["code_file"] == f"{stem}.ipynb"
        assert (meta["language"], meta["kernel_type"], meta["machine_shape"]) == (
            "python",
            "notebook",
            "NvidiaTeslaT4",
        )
        assert meta["enable_gpu"] is True and meta["enable_internet"] is True and meta["is_private"] is True
        assert meta["dataset_sources"] == [
            "adityajn105/flickr8k",
            "thanakomsn/glove6b300dtxt",
            "shtvkumar/karpathy-splits",
            "jane/captioning-helpers",
        ]
        notebook = json.loads((folder / meta["code_file"]).read_text())
        code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
        assert code[0]["outputs"] == [] and code[0]["execution_count"] is None
        assert code[0]["metadata"] == {"tags": ["parameters"]}
        assert code[0]["source"] == [f"print({stem!r})"]
        assert "widgets" not in notebook["metadata"] and "kernelspec" in notebook["metadata"]

    def sources(stage):
        return json.loads((out / ids[stage].split("/")[1] / "kernel-metadata.json").read_text())[
            "kernel_sources"
        ]

    assert sources("00") == []
    assert sources("01") == sources("02") == [ids["00"]]
    for stage in ("03", "04", "05", "06"):
        assert sources(stage) == [ids["00"], ids["01"], ids["02"]]
    assert sources("07") == [ids["00"], ids["03"], ids["04"], ids["05"], ids["06"]]

    dataset = out / "captioning-helpers"
    assert json.loads((dataset / "dataset-metadata.json").read_text()) | {"description": ""} == {
        "title": "Captioning Helpers",
        "id": "jane/captioning-helpers",
        "licenses": [{"name": "CC0-1.0"}],
        "description": "",
    }
    wheel_name = f"captioning_helpers-{kg.project_version()}-py3-none-any.whl"
    assert sorted(path.name for path in dataset.iterdir()) == [wheel_name, "dataset-metadata.json"]
    members = zipfile.ZipFile(dataset / wheel_name).namelist()
    assert [name for name in members if not name.startswith("captioning_helpers-")] == [
        "helpers/__init__.py",
        "helpers/files.py",
        "helpers/text.py",
        "helpers/configs/LSTM.yaml",
        "helpers/configs/presets/beginner.yaml",
        "helpers/requirements.txt",
    ]

    push = (out / "PUSH.md").read_text()
    order = [push.index("kaggle datasets create -p captioning-helpers\n")]
    order += [push.index(f"kaggle kernels push -p {folder.name}\n") for folder in folders[1:]]
    assert order == sorted(order)


def test_build_replaces_previous_build_and_refuses_foreign_folder(fake_repo, tmp_path):
    out = tmp_path / "build"
    _build(fake_repo, out)
    (fake_repo / "notebooks" / "07_results.ipynb").unlink()
    folders = _build(fake_repo, out, owner="bob")
    assert not (out / "image-captioning-07-results").exists()
    assert sorted(path.name for path in out.iterdir()) == sorted(["PUSH.md", *(f.name for f in folders)])
    assert "bob/captioning-helpers" in (out / "PUSH.md").read_text()

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(kg.KaggleMetadataError, match="not a previous build"):
        _build(fake_repo, foreign)
    assert (foreign / "keep.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mine-")], "staging folder left behind"


@pytest.mark.parametrize(
    ("stems", "message"),
    [
        ((), "no numbered notebooks"),
        (tuple(stem for stem in SUITE_STEMS if stem != "01_glove"), "reads the outputs of stage\\(s\\) 01"),
        ((*SUITE_STEMS, "09_extra"), "stage 09 has no entry"),
    ],
)
def test_build_rejects_incomplete_suites(fake_repo, tmp_path, stems, message):
    for path in (fake_repo / "notebooks").glob("*.ipynb"):
        path.unlink()
    for stem in stems:
        (fake_repo / "notebooks" / f"{stem}.ipynb").write_text(json.dumps(_notebook(stem)))
    with pytest.raises(kg.KaggleMetadataError, match=message):
        _build(fake_repo, tmp_path / "build")


def test_owner_is_required_and_checked(fake_repo, tmp_path, monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-config"))
    with pytest.raises(kg.KaggleMetadataError, match="pass --owner"):
        _build(fake_repo, tmp_path / "build", owner=None)
    with pytest.raises(kg.KaggleMetadataError, match="not a Kaggle user name"):
        _build(fake_repo, tmp_path / "build", owner="jane doe")
    monkeypatch.setenv("KAGGLE_USERNAME", "carol")
    assert (
        _build(fake_repo, tmp_path / "build", owner=None)[0]
        .parent.joinpath("PUSH.md")
        .read_text()
        .count("carol/")
        > 1
    )


def test_command_line(fake_repo, tmp_path, capsys):
    out = tmp_path / "cli-build"
    args = [
        "--owner",
        "jane",
        "--out",
        str(out),
        "--notebooks-dir",
        str(fake_repo / "notebooks"),
        "--metadata",
        str(fake_repo / "kaggle_kernel_metadata.json"),
        "--no-wheels",
    ]
    assert kg.main(args) == 0
    assert (out / "image-captioning-04-train-lstm" / "kernel-metadata.json").is_file()
    (fake_repo / "kaggle_kernel_metadata.json").write_text('{"id": "x",\n "title": }')
    assert kg.main(args) == 2
    assert "kaggle_kernel_metadata.json: line 2: invalid JSON" in capsys.readouterr().err


def test_suite_template_is_the_requested_metadata():
    meta = json.loads((REPO_ROOT / "kaggle_kernel_metadata.json").read_text())
    assert meta["id"] == f"{kg.PLACEHOLDER_OWNER}/image-captioning"
    assert (meta["language"], meta["kernel_type"], meta["machine_shape"]) == (
        "python",
        "notebook",
        "NvidiaTeslaT4",
    )
    assert meta["enable_gpu"] is True and meta["enable_internet"] is True and meta["is_private"] is True
    assert {"adityajn105/flickr8k", "thanakomsn/glove6b300dtxt", "shtvkumar/karpathy-splits"} <= set(
        meta["dataset_sources"]
    )
    assert meta["code_file"] == "notebooks/00_data_prep.ipynb"


def test_real_cli_accepts_every_generated_folder_and_the_template(fake_repo, tmp_path, cli_env):
    folders = _build(fake_repo, tmp_path / "build")
    commands = [["datasets", "create", "-p", str(folders[0]), "--dir-mode", "zip"]]
    commands += [["kernels", "push", "-p", str(folder)] for folder in folders[1:]]
    # The template as it stands, pushed from the repository root (code_file is relative to it).
    template_dir = tmp_path / "template"
    (template_dir / "notebooks").mkdir(parents=True)
    shutil.copy(fake_repo / "notebooks" / "00_data_prep.ipynb", template_dir / "notebooks")
    shutil.copy(fake_repo / "kaggle_kernel_metadata.json", template_dir / "kernel-metadata.json")
    commands.append(["kernels", "push", "-p", str(template_dir)])

    outputs = run_cli(cli_env, commands)
    assert cli_accepted(outputs[0], DATASET_ENDPOINT), outputs[0]
    for folder, output in zip([*folders[1:], template_dir], outputs[1:]):
        assert cli_accepted(output, KERNEL_ENDPOINT), f"{folder.name}: {output}"


# Each broken metadata: how to break it, the key our validator must name, what the CLI prints.
BROKEN_KERNELS = [
    (lambda m: m.pop("language"), "'language'", "A valid language must be specified"),
    (lambda m: m.update(kernel_type="notebookx"), "kernel_type", "A valid kernel type must be specified"),
    (lambda m: m.update(code_file="missing.ipynb"), "code_file", "Source file not found"),
    (
        lambda m: m.update(id="jane/abc", title="Abc Notebook"),
        "at least 5 characters",
        "at least five characters",
    ),
    (lambda m: m.update(title="Another Title"), "slugifies", "does not resolve to the specified id"),
    (
        lambda m: m.update(dataset_sources=["flickr8k"]),
        "dataset_sources",
        "Dataset must be specified in the form",
    ),
    (lambda m: m.update(enable_gpu="yes"), "enable_gpu", "Invalid boolean value: yes"),
]


def test_real_cli_and_our_validator_reject_broken_metadata(fake_repo, tmp_path, cli_env):
    folders = _build(fake_repo, tmp_path / "build")
    good = folders[1]
    broken_dirs = []
    for index, (breakage, key_message, _) in enumerate(BROKEN_KERNELS):
        folder = tmp_path / f"broken{index}"
        shutil.copytree(good, folder)
        meta = json.loads((folder / "kernel-metadata.json").read_text())
        breakage(meta)
        (folder / "kernel-metadata.json").write_text(json.dumps(meta))
        with pytest.raises(kg.KaggleMetadataError, match=key_message):
            kg.validate_kernel_metadata(meta, folder)
        broken_dirs.append(folder)

    dataset = tmp_path / "broken-dataset"
    shutil.copytree(folders[0], dataset)
    dataset_meta = json.loads((dataset / "dataset-metadata.json").read_text())
    dataset_meta["title"] = "Caps"
    (dataset / "dataset-metadata.json").write_text(json.dumps(dataset_meta))
    with pytest.raises(kg.KaggleMetadataError, match="title 'Caps' must be 6 to 50"):
        kg.validate_dataset_metadata(dataset_meta, "dataset-metadata.json")

    commands = [["kernels", "push", "-p", str(folder)] for folder in broken_dirs]
    commands.append(["datasets", "create", "-p", str(dataset), "--dir-mode", "zip"])
    outputs = run_cli(cli_env, commands)
    for (_, _, cli_message), output in zip(BROKEN_KERNELS, outputs):
        assert cli_message in output
        assert not cli_accepted(output, KERNEL_ENDPOINT), output
    assert "The dataset title must be between 6 and 50 characters" in outputs[-1]
    assert not cli_accepted(outputs[-1], DATASET_ENDPOINT)


def test_validator_rejects_retired_p100_and_slug_versions(fake_repo, tmp_path):
    folder = _build(fake_repo, tmp_path / "build")[1]
    meta = json.loads((folder / "kernel-metadata.json").read_text())
    with pytest.raises(kg.KaggleMetadataError, match="P100 has no kernels"):
        kg.validate_kernel_metadata({**meta, "machine_shape": "NvidiaTeslaP100"}, folder)
    with pytest.raises(kg.KaggleMetadataError, match="kernel_sources entry 'jane/x/latest'"):
        kg.validate_kernel_metadata({**meta, "kernel_sources": ["jane/x/latest"]}, folder)
    with pytest.raises(kg.KaggleMetadataError, match="missing required key 'title'"):
        kg.validate_kernel_metadata({k: v for k, v in meta.items() if k != "title"}, folder)


def test_slugify_matches_the_cli():
    from slugify import slugify as cli_slugify  # the function the kaggle CLI compares titles with

    for stem in SUITE_STEMS:
        title = kg.notebook_title("Image Captioning", stem)
        assert kg.slugify(title) == cli_slugify(title)
    assert (
        kg.notebook_title("Image Captioning", "05_train_attention_lstm")
        == "Image Captioning 05 Train Attention LSTM"
    )


OFFLINE = {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": "http://127.0.0.1:9/simple"}  # Internet off


def _run_setup_cell(kaggle_input: Path, python: Path, cwd: Path, pip_env: dict | None = None):
    """The notebooks' setup cell as written, with Kaggle's input root replaced, run by `python` (a Python
    like Kaggle's image: no helpers, no pycocoevalcap) in `cwd`; then where `helpers` and the scorer
    were imported from. `pip_env`: where pip looks (default: Internet off)."""
    cell = kg.HELPERS_BOOTSTRAP.replace("/kaggle/input", str(kaggle_input))
    assert cell.count(str(kaggle_input)) == 2
    check = ("import helpers.text, helpers.files as f, importlib.metadata as m\n"
             "print(helpers.text.__file__, f.suite_file('configs'), m.version('captioning-helpers'),\n"
             "      m.version('pycocoevalcap'))")  # fmt: skip
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([str(python), "-c", cell + check], capture_output=True, text=True, cwd=cwd,
                          env={**env, **(pip_env or OFFLINE)}, timeout=300)  # fmt: skip


@pytest.fixture
def kaggle_image(tmp_path):
    """A Python like Kaggle's image (tests/kaggle_sessions.py): this venv's packages but for helpers and
    pycocoevalcap. Returns its python."""
    from kaggle_sessions import kaggle_python

    return kaggle_python(tmp_path / "image")


def _site(python: Path) -> Path:
    return next(python.parent.parent.glob("lib/python*/site-packages"))


@pytest.mark.parametrize("layout", ["captioning-helpers", "datasets/jane/captioning-helpers"])
def test_setup_cell_installs_the_helpers_wheel_from_either_mount_layout(
    fake_repo, tmp_path, layout, kaggle_image, fake_kaggle_wheels
):
    """Kaggle mounts a dataset at /kaggle/input/<slug> (before 2025) or /kaggle/input/datasets/<owner>/<slug>;
    the cell installs the wheel from either with one pip call, which takes what the wheel requires and
    the image lacks (pycocoevalcap) from the wheels beside it, Internet off; `helpers` then reads its
    configs inside the package."""
    dataset = kg.build_kaggle_folders("jane", tmp_path / "build", fake_repo / "notebooks",
                                      fake_repo / "kaggle_kernel_metadata.json", project_dir=fake_repo,
                                      wheels_from=fake_kaggle_wheels)[0]  # fmt: skip
    shutil.copytree(dataset, tmp_path / "input" / layout)
    done = _run_setup_cell(tmp_path / "input", kaggle_image, tmp_path / "working")
    assert done.returncode == 0, done.stderr
    text_file, config_dir, version, scorer = done.stdout.split()[-4:]
    assert Path(text_file) == _site(kaggle_image) / "helpers" / "text.py"
    assert sorted(p.name for p in Path(config_dir).rglob("*.yaml")) == ["LSTM.yaml", "beginner.yaml"]
    assert (version, scorer) == (kg.project_version(fake_repo), "1.2")


def test_setup_cell_picks_the_newest_helpers_by_version_not_by_name(fake_repo, tmp_path, kaggle_image,
                                                                    fake_kaggle_wheels):
    """Issue 28, case 6: 1.10.0 attached beside 1.9.0 is installed (sorted as strings, 1.9.0 won)."""
    folder = tmp_path / "input" / "datasets" / "jane" / "captioning-helpers"
    pyproject = fake_repo / "pyproject.toml"
    for version in ("1.9.0", "1.10.0"):
        pyproject.write_text(re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', pyproject.read_text()))
        kg.build_helpers_wheel(folder, fake_repo)
    for wheel in fake_kaggle_wheels.glob("*.whl"):
        shutil.copy(wheel, folder)
    done = _run_setup_cell(tmp_path / "input", kaggle_image, tmp_path / "working")
    assert done.returncode == 0, done.stderr
    assert f"Installing {folder / 'captioning_helpers-1.10.0-py3-none-any.whl'}" in done.stdout
    assert done.stdout.split()[-2] == "1.10.0"


def test_setup_cell_takes_what_the_dataset_lacks_from_the_registry(fake_repo, tmp_path, kaggle_image,
                                                                   fake_kaggle_wheels):
    """Internet on: the same pip call finds pycocoevalcap in the registry (here a local simple index)."""
    dataset = _build(fake_repo, tmp_path / "build")[0]  # no wheels of what Kaggle lacks
    shutil.copytree(dataset, tmp_path / "input" / "captioning-helpers")
    index = tmp_path / "registry" / "simple"
    for wheel in fake_kaggle_wheels.glob("*.whl"):
        project = index / wheel.name.split("-")[0]
        project.mkdir(parents=True)
        shutil.copy(wheel, project)
        (project / "index.html").write_text(f'<a href="{wheel.name}">{wheel.name}</a>\n')
    online = {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": index.as_uri()}
    done = _run_setup_cell(tmp_path / "input", kaggle_image, tmp_path / "working", online)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "1.2"


def test_setup_cell_names_what_pip_could_not_install_and_the_fix(fake_repo, tmp_path, kaggle_image):
    """Internet off and no pycocoevalcap wheel in the dataset: the cell stops at once with pip's reason
    and the fix (Internet on, or a rebuilt helpers dataset), before the notebook imports anything."""
    dataset = _build(fake_repo, tmp_path / "build")[0]
    shutil.copytree(dataset, tmp_path / "input" / "captioning-helpers")
    started = time.monotonic()
    done = _run_setup_cell(tmp_path / "input", kaggle_image, tmp_path / "working")
    assert done.returncode != 0 and time.monotonic() - started < 60
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("RuntimeError: pip could not install"), done.stderr
    assert "Could not find a version that satisfies the requirement pycocoevalcap>=1.2" in error
    assert "Turn Internet on" in error and "python -m helpers.kaggle --owner NAME" in error
    assert not (_site(kaggle_image) / "helpers").exists()


def test_setup_cell_never_replaces_the_installed_torch(tmp_path):
    """Kaggle's torch is built for its CUDA: a helpers wheel wanting another torch (offered beside it) stops
    the cell with pip's reason instead of replacing it. The image's torch here is a stand-in dist-info,
    so nothing real is at stake."""
    from conftest import make_wheel
    from kaggle_sessions import kaggle_python

    python = kaggle_python(tmp_path / "image", hide=("torch",))
    plant = _site(python) / "torch-2.3.0.dist-info"
    plant.mkdir()
    (plant / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.3.0\n")
    (plant / "RECORD").write_text("torch-2.3.0.dist-info/METADATA,,\ntorch-2.3.0.dist-info/RECORD,,\n")
    dataset = tmp_path / "input" / "captioning-helpers"
    make_wheel(dataset, "captioning-helpers", "1.0.0", requires=["torch>=2.4"])
    make_wheel(dataset, "torch", "2.5.0")
    cell = kg.HELPERS_BOOTSTRAP.replace("/kaggle/input", str(tmp_path / "input"))
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    done = subprocess.run([str(python), "-c", cell], capture_output=True, text=True, cwd=tmp_path,
                          env={**env, **OFFLINE}, timeout=300)  # fmt: skip
    assert done.returncode != 0
    error = done.stderr.strip().splitlines()[-1]
    assert "RuntimeError: pip could not install" in error and "torch==2.3.0" in error, done.stderr
    assert [path.name for path in _site(python).glob("torch-*.dist-info")] == ["torch-2.3.0.dist-info"]


def test_setup_cell_installs_a_wheel_uploaded_next_to_the_notebook(fake_repo, tmp_path, kaggle_image,
                                                                   fake_kaggle_wheels):
    """Colab: no /kaggle/input; the helpers wheel (and here the scorer's, Internet off) uploaded to the
    notebook's folder, /content."""
    content = tmp_path / "content"
    dataset = _build(fake_repo, tmp_path / "build")[0]
    shutil.copytree(dataset, content)
    for wheel in fake_kaggle_wheels.glob("*.whl"):
        shutil.copy(wheel, content)
    done = _run_setup_cell(tmp_path / "no-input", kaggle_image, content)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-4] == str(_site(kaggle_image) / "helpers" / "text.py")


def test_setup_cell_installs_nothing_where_helpers_is_installed(tmp_path):
    """In the repository (no /kaggle/input, no wheel beside the notebook) the cell finds no wheel and
    `helpers` is this checkout's."""
    done = _run_setup_cell(tmp_path / "no-input", Path(sys.executable), REPO_ROOT / "notebooks")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[:2] == [str(REPO_ROOT / "helpers" / "text.py"), str(REPO_ROOT / "configs")]
    assert "Installing" not in done.stdout


def test_the_real_helpers_wheel_works_installed_alone(tmp_path, fake_kaggle_wheels):
    """The real wheel, pip-installed into an empty folder and imported from elsewhere: configs, split lists
    and requirements come from inside it, and the wheels of what Kaggle lacks from beside it."""
    dataset = kg.build_kaggle_folders("jane", tmp_path / "build", wheels_from=fake_kaggle_wheels)[0]
    (wheel,) = dataset.glob("captioning_helpers-*.whl")
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check",
                    "--target", str(site), str(wheel)], check=True)
    check = (
        "import helpers, helpers.config as c, helpers.deps as d, helpers.sources as s\n"
        "print(helpers.__file__, c.load_config('Attention_LSTM').model.decoder, d.REQUIREMENTS_FILE,\n"
        "      d.installed_from(), sorted(p.name for p in s.SHIPPED_FLICKR8K_SPLIT.iterdir()))\n"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(site)})
    assert done.returncode == 0, done.stderr
    package, cell_type, requirements, wheels, *split_lists = done.stdout.split()
    assert package == str(site / "helpers" / "__init__.py") and cell_type == "attn"
    assert Path(requirements).read_text() == (REPO_ROOT / "requirements.txt").read_text()
    assert Path(wheels) == dataset and len(split_lists) == 3


@pytest.mark.skipif(
    not all((REPO_ROOT / "notebooks" / f"{stem}.ipynb").is_file() for stem in SUITE_STEMS),
    reason="the suite's notebooks are not all in notebooks/ yet",
)
def test_real_suite_builds_and_passes_the_cli(tmp_path, cli_env, fake_kaggle_wheels):
    folders = kg.build_kaggle_folders("jane", tmp_path / "build", wheels_from=fake_kaggle_wheels)
    assert [folder.name for folder in folders[1:]] == [
        f"image-captioning-{stem.replace('_', '-')}" for stem in SUITE_STEMS
    ]
    (wheel,) = folders[0].glob("captioning_helpers-*.whl")
    shipped = {name for name in zipfile.ZipFile(wheel).namelist() if re.fullmatch(r"helpers/\w+\.py", name)}
    assert shipped == {f"helpers/{path.name}" for path in (REPO_ROOT / "helpers").glob("*.py")}
    assert (folders[0] / "pycocoevalcap-1.2-py3-none-any.whl").is_file()
    outputs = run_cli(cli_env, [["kernels", "push", "-p", str(folder)] for folder in folders[1:]])
    for folder, output in zip(folders[1:], outputs):
        assert cli_accepted(output, KERNEL_ENDPOINT), f"{folder.name}: {output}"


def test_the_helpers_wheel_ships_the_flickr8k_split_lists(fake_repo, tmp_path):
    from helpers.sources import FLICKR8K_SPLIT_FILES, SHIPPED_FLICKR8K_SPLIT

    wheel = kg.build_helpers_wheel(tmp_path, REPO_ROOT, fake_repo / "configs")
    archive = zipfile.ZipFile(wheel)
    for name in FLICKR8K_SPLIT_FILES.values():
        shipped = archive.read(f"helpers/data/flickr8k/{name}")
        assert shipped == (SHIPPED_FLICKR8K_SPLIT / name).read_bytes()
    again = kg.build_helpers_wheel(tmp_path / "again", REPO_ROOT, fake_repo / "configs")
    assert again.read_bytes() == wheel.read_bytes()  # equal sources, identical wheel


def test_the_helpers_wheel_is_pyprojects_metadata_and_files_compressed(tmp_path):
    """Name, version, summary, Requires-Python and Requires-Dist are pyproject.toml's (its dependencies
    come from requirements.txt); every member is deflated; the package's files are what pyproject's
    packages.find and package-data name."""
    project = kg.read_pyproject()["project"]
    wheel = kg.build_helpers_wheel(tmp_path, REPO_ROOT)
    archive = zipfile.ZipFile(wheel)
    metadata = archive.read(f"captioning_helpers-{project['version']}.dist-info/METADATA").decode()
    fields = [line.split(": ", 1) for line in metadata.splitlines()]
    assert fields[:5] == [["Metadata-Version", "2.1"], ["Name", "captioning-helpers"],
                          ["Version", project["version"]], ["Summary", project["description"]],
                          ["Requires-Python", project["requires-python"]]]  # fmt: skip
    assert [value for key, value in fields if key == "Requires-Dist"] == [
        str(requirement) for requirement in read_requirements(REPO_ROOT / "requirements.txt")
    ]
    assert {entry.compress_type for entry in archive.infolist()} == {zipfile.ZIP_DEFLATED}
    assert wheel.stat().st_size < 0.6 * sum(entry.file_size for entry in archive.infolist())
    suite_files = ("helpers/configs/", "helpers/requirements.txt")
    package = {name for name in archive.namelist() if name.startswith("helpers/")
               and not name.startswith(suite_files)}  # fmt: skip
    helpers = REPO_ROOT / "helpers"
    listed = [*helpers.glob("*.py"), *(helpers / "data" / "flickr8k").glob("*.txt")]
    assert package == {path.relative_to(REPO_ROOT).as_posix() for path in listed}


def test_the_wheels_file_list_follows_pyproject(fake_repo, tmp_path):
    """A file pyproject.toml's package-data names is shipped, a package its find.include names is, and
    what neither names (notes, caches) is not: the list has no copy kept by hand."""
    (fake_repo / "helpers" / "tables").mkdir()
    (fake_repo / "helpers" / "tables" / "__init__.py").write_text("")
    (fake_repo / "helpers" / "tables" / "words.json").write_text("[]")
    (fake_repo / "helpers" / "NOTES.md").write_text("not shipped")
    pyproject = fake_repo / "pyproject.toml"
    text = pyproject.read_text().replace('include = ["helpers", "helpers.data*"]',
                                         'include = ["helpers", "helpers.data*", "helpers.tables"]')
    pyproject.write_text(text.replace("[tool.setuptools.package-data]\n",
                                      '[tool.setuptools.package-data]\n"helpers.tables" = ["*.json"]\n'))
    members = zipfile.ZipFile(kg.build_helpers_wheel(tmp_path, fake_repo)).namelist()
    assert {"helpers/tables/__init__.py", "helpers/tables/words.json", "helpers/text.py"} <= set(members)
    assert not [name for name in members if "NOTES" in name or "__pycache__" in name]


@pytest.mark.parametrize("damage", ["truncated", "corrupted"])
def test_setup_cell_names_a_damaged_helpers_wheel_and_the_rebuild(tmp_path, damage):
    """Issue 28, case 15: a wheel cut short on upload ended in pip's 'invalid wheel' and a traceback, with
    no word of rebuilding and uploading the helpers dataset again."""
    from conftest import make_wheel

    dataset = tmp_path / "input" / "captioning-helpers"
    wheel = make_wheel(dataset, "captioning-helpers", "1.0.0", code="VALUE = 1\n" * 2000)
    data = bytearray(wheel.read_bytes())
    if damage == "truncated":
        del data[len(data) // 2 :]
    else:  # same size, one byte of the compressed module flipped: the CRC check catches it
        data[len(data) // 4] ^= 0xFF
    wheel.write_bytes(bytes(data))
    cell = kg.HELPERS_BOOTSTRAP.replace("/kaggle/input", str(tmp_path / "input"))
    done = subprocess.run([sys.executable, "-c", cell], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, **OFFLINE}, timeout=120)
    assert done.returncode != 0
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith(f"RuntimeError: {wheel} is damaged"), done.stderr
    assert "python -m helpers.kaggle --owner NAME" in error and "upload it again" in error
