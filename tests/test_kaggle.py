"""Kaggle publishing: the generated folders pass the real `kaggle` CLI's checks (run against a refused
loopback address), and our own validator rejects what the CLI rejects, naming the key."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from helpers import kaggle as kg
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
        helpers_dir=repo / "helpers",
        configs_dir=repo / "configs",
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


def _run_setup_cell(kaggle_input: Path, site: Path) -> subprocess.CompletedProcess:
    """The notebooks' setup cell as written, with Kaggle's input root and the install target (a folder,
    not this environment) replaced; then what it installed, imported from another folder."""
    cell = kg.HELPERS_BOOTSTRAP.replace("/kaggle/input", str(kaggle_input))
    cell = cell.replace('"install", "-q"', f'"install", "--target", {str(site)!r}, "-q"')
    assert cell.count(str(kaggle_input)) == 2 and str(site) in cell
    check = "import helpers.text, helpers.files as f; print(helpers.text.__file__, f.suite_file('configs'))"
    site.mkdir(parents=True, exist_ok=True)  # like site-packages, it exists before the cell runs
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-c", cell + check], capture_output=True, text=True,
                          cwd=site.parent, env=env)


@pytest.mark.parametrize("layout", ["captioning-helpers", "datasets/jane/captioning-helpers"])
def test_setup_cell_installs_the_helpers_wheel_from_either_mount_layout(fake_repo, tmp_path, layout):
    """Kaggle mounts a dataset at /kaggle/input/<slug> (before 2025) or /kaggle/input/datasets/<owner>/<slug>;
    the cell installs the wheel from either, and `helpers` then reads its configs inside the package."""
    dataset = _build(fake_repo, tmp_path / "build")[0]
    shutil.copytree(dataset, tmp_path / "input" / layout)
    done = _run_setup_cell(tmp_path / "input", tmp_path / "site")
    assert done.returncode == 0, done.stderr
    text_file, config_dir = done.stdout.split()
    assert Path(text_file) == tmp_path / "site" / "helpers" / "text.py"
    assert sorted(p.name for p in Path(config_dir).rglob("*.yaml")) == ["LSTM.yaml", "beginner.yaml"]


def test_setup_cell_installs_nothing_where_helpers_is_installed(tmp_path):
    """In the repository (no /kaggle/input) the cell finds no wheel and `helpers` is this checkout's."""
    done = _run_setup_cell(tmp_path / "no-input", tmp_path / "site")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(REPO_ROOT / "helpers" / "text.py"), str(REPO_ROOT / "configs")]
    assert not any((tmp_path / "site").iterdir())


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
        "print(helpers.__file__, c.load_config('Attention_LSTM').model.cell_type, d.REQUIREMENTS_FILE,\n"
        "      d.WHEELS_DIR, sorted(p.name for p in s.SHIPPED_FLICKR8K_SPLIT.iterdir()))\n"
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

    wheel = kg.build_helpers_wheel(tmp_path, REPO_ROOT / "helpers", fake_repo / "configs")
    archive = zipfile.ZipFile(wheel)
    for name in FLICKR8K_SPLIT_FILES.values():
        shipped = archive.read(f"helpers/data/flickr8k/{name}")
        assert shipped == (SHIPPED_FLICKR8K_SPLIT / name).read_bytes()
    again = kg.build_helpers_wheel(tmp_path / "again", REPO_ROOT / "helpers", fake_repo / "configs")
    assert again.read_bytes() == wheel.read_bytes()  # equal sources, identical wheel
