"""Push-ready Kaggle folders for the notebook suite: `python -m helpers.kaggle --owner NAME`.

Kaggle runs one notebook per kernel and uploads only its `code_file`, so the suite is published as
one folder per notebook (the notebook plus its own `kernel-metadata.json`) and one dataset folder that
ships the helpers wheel (with `configs/` inside) that every notebook installs. Every folder's metadata is
derived from the suite template `kaggle_kernel_metadata.json` at the repository top, whose owner is a
placeholder replaced by `--owner`.

Stages are chained with `kernel_sources`: Kaggle mounts the last committed output (`/kaggle/working`)
of each listed notebook under `/kaggle/input` (`/kaggle/input/notebooks/<owner>/<slug>` since 2025,
`/kaggle/input/<slug>` before), where `helpers.stages.reuse_earlier_outputs` finds it. Each stage lists
every stage whose files it reads directly (see STAGE_INPUTS) rather than relying on an intermediate
stage to copy them forward.
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from helpers.deps import KAGGLE_LACKS, read_requirements
from helpers.files import atomic_directory

REPO_ROOT = Path(__file__).resolve().parent.parent
SUITE_METADATA = REPO_ROOT / "kaggle_kernel_metadata.json"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"

PLACEHOLDER_OWNER = "your-kaggle-username"
HELPERS_DATASET_SLUG = "captioning-helpers"
HELPERS_DATASET_TITLE = "Captioning Helpers"
# The helpers dataset holds files only (no folders, so nothing depends on how Kaggle unpacks them): the
# helpers wheel (with configs/ and requirements.txt inside) and the wheels of what Kaggle's image lacks.
# Every notebook's setup cell installs the newest helpers wheel it finds, attached (either mount layout)
# or in the working folder (Colab: uploaded there), in one pip call that resolves what the wheel requires
# from the wheels beside it (Internet off) or the registry (Internet on); in the repository
# `pip install -e .` has installed `helpers` already and the cell finds no wheel.
HELPERS_BOOTSTRAP = """\
import glob, os, subprocess, sys, zipfile  # `helpers`: from the attached helpers dataset, or a wheel here
from importlib.metadata import distributions
from packaging.version import Version
wheels = [os.path.abspath(path) for pattern in ("/kaggle/input/*/", "/kaggle/input/datasets/*/*/", "")
          for path in glob.glob(pattern + "captioning_helpers-*.whl")]
if wheels:  # the newest (1.10.0 over 1.9.0), with what it needs from the wheels beside it or the registry
    wheel = max(wheels, key=lambda path: Version(os.path.basename(path).split("-")[1]))
    try:  # a wheel cut short on upload: pip would only say it is invalid
        with zipfile.ZipFile(wheel) as archive:
            bad = archive.testzip()
        damaged = bad and f"{bad} fails its checksum"
    except zipfile.BadZipFile as error:
        damaged = str(error)
    if damaged:
        raise RuntimeError(f"{wheel} is damaged ({damaged}; {os.path.getsize(wheel):,} bytes): an upload cut "
                           "short? Rebuild the helpers dataset with `python -m helpers.kaggle --owner NAME`, "
                           "upload it again and attach the new version (Add Input), then rerun this cell.")
    keep = [f"{d.name}=={d.version}" for d in distributions() if d.name in ("torch", "torchvision")]
    print("Installing", wheel)  # keeping the installed torch: Kaggle's build matches its CUDA
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                          "--root-user-action=ignore", "--timeout", "15", "--retries", "1", "--find-links",
                          os.path.dirname(wheel), wheel, *keep], capture_output=True, text=True)
    if pip.returncode:
        said = [line for line in pip.stderr.splitlines() if line.startswith("ERROR")] or [pip.stderr[-300:]]
        raise RuntimeError(f"pip could not install {wheel} and what it requires ({said[0].strip()}). "
                           "Turn Internet on (Kaggle: Settings > Internet) and rerun this cell, or "
                           "rebuild the helpers dataset with `python -m helpers.kaggle --owner NAME` (it "
                           "bundles the wheels Kaggle lacks) and attach it.")
"""
KERNEL_METADATA_FILE = "kernel-metadata.json"
DATASET_METADATA_FILE = "dataset-metadata.json"

# Stage number -> the earlier stages whose outputs it reads: 01 needs the vocabulary, 02 the prepared
# images, the training stages the vocabulary (00), the GloVe matrix (01) and the feature store (02),
# and 07 the runs of 03..06 plus the vocabulary for captioning uploaded images.
STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "00": (),
    "01": ("00",),
    "02": ("00",),
    "03": ("00", "01", "02"),
    "04": ("00", "01", "02"),
    "05": ("00", "01", "02"),
    "06": ("00", "01", "02"),
    "07": ("00", "03", "04", "05", "06"),
}

# The kaggle CLI's accepted values (kaggle 2.x, api/kaggle_api_extended.py).
LANGUAGES = ("python", "r", "rmarkdown")
KERNEL_TYPES = ("script", "notebook")
PINNING_TYPES = ("original", "latest")
RETIRED_MACHINE_SHAPES = {"nvidiateslap100": "the P100 has no kernels in current torch; use NvidiaTeslaT4"}
BOOLEAN_KEYS = ("is_private", "enable_gpu", "enable_tpu", "enable_internet")
SOURCE_LIST_KEYS = ("dataset_sources", "kernel_sources", "competition_sources", "model_sources", "keywords")
TITLE_WORDS = {"rnn": "RNN", "lstm": "LSTM", "glove": "GloVe"}
OWNER_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class KaggleMetadataError(ValueError):
    """Metadata the kaggle CLI or Kaggle would refuse; the message names the file and the key."""


def slugify(title: str) -> str:
    """Kaggle's slug of a title: lower case, runs of anything but letters and digits become one dash."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _split_ref(ref: Any, key: str, where: str, allow_version: bool) -> list[str]:
    """'owner/slug' (or 'owner/slug/version' where allowed) split into parts, or a clear error."""
    parts = ref.split("/") if isinstance(ref, str) else []
    max_parts = 3 if allow_version else 2
    if not 2 <= len(parts) <= max_parts or not all(parts):
        form = "'owner/slug' or 'owner/slug/version'" if allow_version else "'owner/slug'"
        raise KaggleMetadataError(f"{where}: {key} entry {ref!r} must have the form {form}.")
    if allow_version and len(parts) == 3 and not parts[2].isdigit():
        raise KaggleMetadataError(f"{where}: {key} entry {ref!r}: the version must be a number.")
    return parts


def validate_kernel_metadata(
    meta: dict[str, Any], folder: Path, where: str | None = None, require_code_file: bool = True
) -> None:
    """Check kernel metadata the way the kaggle CLI does, plus the title/slug match it only warns about.

    `folder` is where `code_file` is resolved (the folder that would be pushed); the suite template is
    checked with `require_code_file=False`, since each generated folder gets its own notebook.
    """
    where = where or str(Path(folder) / KERNEL_METADATA_FILE)
    if not isinstance(meta, dict):
        raise KaggleMetadataError(f"{where}: the metadata must be a JSON object.")
    for key in ("id", "title", "code_file", "language", "kernel_type"):
        if key not in meta:
            raise KaggleMetadataError(f"{where}: missing required key {key!r}.")
    owner, slug = _split_ref(meta["id"], "id", where, allow_version=False)
    if len(slug) < 5:
        raise KaggleMetadataError(
            f"{where}: id {meta['id']!r}: the kernel slug must be at least 5 characters."
        )
    title = meta["title"]
    if not isinstance(title, str) or len(title) < 5:
        raise KaggleMetadataError(f"{where}: title {title!r} must be a string of at least 5 characters.")
    if slugify(title) != slug:
        raise KaggleMetadataError(
            f"{where}: title {title!r} slugifies to {slugify(title)!r}, not to the id's slug {slug!r}; "
            "make them match or Kaggle creates the kernel under another URL."
        )
    code_file = meta["code_file"]
    if not isinstance(code_file, str) or not code_file:
        raise KaggleMetadataError(f"{where}: code_file must name the notebook file.")
    if require_code_file and not (Path(folder) / code_file).is_file():
        raise KaggleMetadataError(f"{where}: code_file {code_file!r} not found in {folder}.")
    if meta["language"] not in LANGUAGES:
        raise KaggleMetadataError(f"{where}: language {meta['language']!r} must be one of {LANGUAGES}.")
    if meta["kernel_type"] not in KERNEL_TYPES:
        raise KaggleMetadataError(
            f"{where}: kernel_type {meta['kernel_type']!r} must be one of {KERNEL_TYPES}."
        )
    _check_options(meta, where)
    if not OWNER_PATTERN.fullmatch(owner):
        raise KaggleMetadataError(f"{where}: id {meta['id']!r}: {owner!r} is not a Kaggle user name.")


def _check_options(meta: dict[str, Any], where: str) -> None:
    """The optional keys of kernel metadata: flags, source lists, machine shape, image pinning."""
    for key in BOOLEAN_KEYS:
        value = meta.get(key, False)
        if not isinstance(value, bool) and str(value).lower() not in ("true", "false"):
            raise KaggleMetadataError(f"{where}: {key} {value!r} must be true or false.")
    for key in SOURCE_LIST_KEYS:
        value = meta.get(key, [])
        if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
            raise KaggleMetadataError(f"{where}: {key} must be a list of non-empty strings.")
    for key in ("dataset_sources", "kernel_sources"):
        for ref in meta.get(key, []):
            _split_ref(ref, key, where, allow_version=True)
    shape = meta.get("machine_shape")
    if shape is not None:
        if not isinstance(shape, str) or not shape:
            raise KaggleMetadataError(f"{where}: machine_shape must be a name such as 'NvidiaTeslaT4'.")
        if shape.lower() in RETIRED_MACHINE_SHAPES:
            raise KaggleMetadataError(
                f"{where}: machine_shape {shape!r}: {RETIRED_MACHINE_SHAPES[shape.lower()]}."
            )
    pinning = meta.get("docker_image_pinning_type")
    if pinning is not None and pinning not in PINNING_TYPES:
        raise KaggleMetadataError(
            f"{where}: docker_image_pinning_type {pinning!r} must be one of {PINNING_TYPES}."
        )


def validate_dataset_metadata(meta: dict[str, Any], where: str) -> None:
    """Check dataset metadata the way `kaggle datasets create` does (slug and title 6..50, one license)."""
    for key in ("id", "title", "licenses"):
        if key not in meta:
            raise KaggleMetadataError(f"{where}: missing required key {key!r}.")
    _, slug = _split_ref(meta["id"], "id", where, allow_version=False)
    if not 6 <= len(slug) <= 50:
        raise KaggleMetadataError(f"{where}: id {meta['id']!r}: the dataset slug must be 6 to 50 characters.")
    if not isinstance(meta["title"], str) or not 6 <= len(meta["title"]) <= 50:
        raise KaggleMetadataError(f"{where}: title {meta['title']!r} must be 6 to 50 characters.")
    licenses = meta["licenses"]
    if not (
        isinstance(licenses, list)
        and len(licenses) == 1
        and isinstance(licenses[0], dict)
        and licenses[0].get("name")
    ):
        raise KaggleMetadataError(f"{where}: licenses must hold exactly one {{'name': ...}}, e.g. CC0-1.0.")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file, with the file and line named when it does not parse."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KaggleMetadataError(f"{path}: file not found.") from None
    except json.JSONDecodeError as error:
        raise KaggleMetadataError(f"{path}: line {error.lineno}: invalid JSON ({error.msg}).") from None


def notebook_title(suite_title: str, stem: str) -> str:
    """'Image Captioning' + '05_train_attention_lstm' -> 'Image Captioning 05 Train Attention LSTM'."""
    words = [TITLE_WORDS.get(word, word.capitalize()) for word in stem.split("_") if word]
    return " ".join([suite_title, *words])


def _with_owner(ref: str, owner: str) -> str:
    parts = ref.split("/")
    return "/".join([owner, *parts[1:]]) if parts[0] == PLACEHOLDER_OWNER else ref


def resolve_owner(owner: str | None) -> str:
    """The Kaggle user name: given, else $KAGGLE_USERNAME, else ~/.kaggle/kaggle.json's username."""
    if not owner:
        owner = os.environ.get("KAGGLE_USERNAME")
    if not owner:
        config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
        credentials = config_dir / "kaggle.json"
        if credentials.is_file():
            owner = read_json(credentials).get("username")
    if not owner:
        raise KaggleMetadataError("No Kaggle user name: pass --owner NAME (your kaggle.com user name).")
    if not OWNER_PATTERN.fullmatch(owner) or owner == PLACEHOLDER_OWNER:
        raise KaggleMetadataError(
            f"--owner {owner!r} is not a Kaggle user name; give yours, e.g. --owner jane."
        )
    return owner


def _suite_notebooks(notebooks_dir: Path) -> dict[str, Path]:
    """Stage number -> notebook file, for every NN_name.ipynb in the folder; unknown stages are errors."""
    notebooks = sorted(Path(notebooks_dir).glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise KaggleMetadataError(f"{notebooks_dir}: no numbered notebooks (NN_name.ipynb) to publish.")
    stages: dict[str, Path] = {}
    for notebook in notebooks:
        stage = notebook.name[:2]
        if stage not in STAGE_INPUTS:
            raise KaggleMetadataError(
                f"{notebook}: stage {stage} has no entry in helpers.kaggle.STAGE_INPUTS; add which earlier "
                "stages it reads."
            )
        if stage in stages:
            raise KaggleMetadataError(
                f"{notebooks_dir}: two notebooks for stage {stage}: {stages[stage].name}, {notebook.name}."
            )
        stages[stage] = notebook
    for stage, notebook in stages.items():
        missing = [needed for needed in STAGE_INPUTS[stage] if needed not in stages]
        if missing:
            raise KaggleMetadataError(
                f"{notebook}: reads the outputs of stage(s) {', '.join(missing)}, which have no notebook in "
                f"{notebooks_dir}."
            )
    return stages


def cleared_notebook(path: Path) -> dict[str, Any]:
    """The notebook without outputs, execution counts or saved widget state (Kaggle reruns it)."""
    notebook = read_json(path)
    if "cells" not in notebook:
        raise KaggleMetadataError(f"{path}: not a Jupyter notebook (no 'cells').")
    for cell in notebook["cells"]:
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        for key in ("execution", "papermill"):
            cell.get("metadata", {}).pop(key, None)
    for key in ("widgets", "papermill"):
        notebook.get("metadata", {}).pop(key, None)
    return notebook


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _push_instructions(
    out_dir: Path, owner: str, dataset_dir: Path, kernel_dirs: list[Path], kernel_ids: list[str]
) -> str:
    helpers_ref = f"{owner}/{HELPERS_DATASET_SLUG}"
    lines = [
        f"# Publishing the captioning suite to Kaggle as {owner}",
        "",
        "Needs the kaggle CLI (`pip install kaggle`) and your API token in ~/.kaggle/kaggle.json (mode 600).",
        "Run the commands in this order; each stage reads the committed output of the stages before it.",
        "",
        "```bash",
        f"cd {out_dir.resolve()}",
        "# 1. the helpers dataset (files only: the helpers wheel and the wheels Kaggle lacks)",
        f"kaggle datasets create -p {dataset_dir.name}",
        f"# later updates: kaggle datasets version -p {dataset_dir.name} -m 'new helpers'",
        f"kaggle datasets status {helpers_ref}   # wait until it says ready",
        "# 2. the notebooks, in stage order; pushing runs the notebook on Kaggle",
    ]
    for folder, kernel_id in zip(kernel_dirs, kernel_ids):
        lines.append(f"kaggle kernels push -p {folder.name}")
        lines.append(f"kaggle kernels status {kernel_id}   # wait until it says complete")
    lines += [
        "```",
        "",
        "To rerun one stage alone, push only its folder: it mounts the last committed outputs of the",
        "stages listed in its kernel_sources.",
        "",
    ]
    return "\n".join(lines)


def bundle_wheels(dest: Path, find_links: str | Path | None = None) -> list[Path]:
    """Download the wheels of what Kaggle's image lacks (helpers.deps.KAGGLE_LACKS, pure Python) into
    `dest`, so a notebook installs them with Internet off. `find_links`: a local folder instead of
    the registry."""
    dest.mkdir(parents=True, exist_ok=True)
    source = ["--no-index", "--find-links", str(find_links)] if find_links else []
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
        "--only-binary=:all:", "--dest", str(dest), *source, *KAGGLE_LACKS,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise KaggleMetadataError(
            f"could not download the wheels of {', '.join(KAGGLE_LACKS)} "
            f"({(done.stderr.strip().splitlines() or ['pip failed'])[-1]}). Check the connection, or "
            "pass --no-wheels (the notebooks then need Internet on to install them)."
        )
    return sorted(dest.glob("*.whl"))


def read_pyproject(project_dir: Path = REPO_ROOT) -> dict[str, Any]:
    """`project_dir`'s pyproject.toml, parsed (tomllib; on Python 3.10 tomli, which requirements.txt
    names there)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    path = Path(project_dir) / "pyproject.toml"
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KaggleMetadataError(f"{path}: file not found; the helpers wheel is built from it.") from None
    except tomllib.TOMLDecodeError as error:
        raise KaggleMetadataError(f"{path}: invalid TOML ({error}).") from None


def project_version(project_dir: Path = REPO_ROOT) -> str:
    """The helpers' version, from pyproject.toml's [project] (its one home)."""
    version = read_pyproject(project_dir).get("project", {}).get("version")
    if not version:
        raise KaggleMetadataError(f"{Path(project_dir) / 'pyproject.toml'}: no version under [project].")
    return version


def package_files(project_dir: Path, setuptools: dict[str, Any]) -> dict[str, Path]:
    """Wheel member -> file, for what pyproject.toml's [tool.setuptools] ships, as setuptools reads it:
    the packages `packages.find` includes (namespace packages too, pyproject's default) with their
    modules, and the files their `package-data` globs name."""
    find = setuptools.get("packages", {}).get("find", {})
    include, exclude = find.get("include", ["*"]), find.get("exclude", [])
    package_data = setuptools.get("package-data", {})
    members: dict[str, Path] = {}
    for where in find.get("where", ["."]):
        root = Path(project_dir) / where
        for folder, subfolders, _ in os.walk(root):
            parts = Path(folder).relative_to(root).parts
            name = ".".join(parts)
            subfolders[:] = sorted(sub for sub in subfolders if _may_hold(".".join([*parts, sub]), include))
            chosen = any(fnmatch.fnmatchcase(name, pattern) for pattern in include)
            if not parts or not chosen or any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude):
                continue
            globs = ["*.py", *package_data.get(name, []), *package_data.get("*", [])]
            for pattern in globs:
                for path in sorted(Path(folder).glob(pattern)):
                    if path.is_file():
                        members["/".join([*parts, *path.relative_to(folder).parts])] = path
    return dict(sorted(members.items()))


def _may_hold(name: str, include: list[str]) -> bool:
    """Whether package `name`, or one below it, can match an include pattern (so the walk descends)."""
    for pattern in include:
        literal = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
        if literal.startswith(name + ".") or literal == name or name.startswith(literal):
            return True
    return False


def _requires_dist(project_dir: Path, project: dict[str, Any], setuptools: dict[str, Any]) -> list[str]:
    """[project] dependencies, or the files [tool.setuptools.dynamic] reads them from."""
    if "dependencies" in project:
        return list(project["dependencies"])
    files = setuptools.get("dynamic", {}).get("dependencies", {}).get("file", [])
    return [str(requirement) for name in ([files] if isinstance(files, str) else files)
            for requirement in read_requirements(Path(project_dir) / name)]


def build_helpers_wheel(dest: Path, project_dir: Path = REPO_ROOT, configs_dir: Path | None = None) -> Path:
    """The helpers as a pure-Python wheel (PEP 427) in `dest`, from `project_dir`'s pyproject.toml: its
    name, version, summary, Requires-Python and requirements (Requires-Dist), and its file list; with
    the suite's configs/ and requirements.txt inside the package (helpers.files.suite_file finds them).

    A wheel is a zip plus three metadata files, so it is written here directly: no build backend and no
    network are needed; members are deflated and dated 1980, so equal sources give an identical file."""
    project_dir = Path(project_dir)
    configs_dir = project_dir / "configs" if configs_dir is None else Path(configs_dir)
    pyproject = read_pyproject(project_dir)
    project, setuptools = pyproject.get("project", {}), pyproject.get("tool", {}).get("setuptools", {})
    members = {member: path.read_bytes() for member, path in package_files(project_dir, setuptools).items()}
    if "helpers/__init__.py" not in members:
        raise KaggleMetadataError(f"{project_dir}: pyproject.toml's packages hold no helpers/__init__.py.")
    members.update({f"helpers/configs/{path.relative_to(configs_dir).as_posix()}": path.read_bytes()
                    for path in sorted(configs_dir.rglob("*.yaml"))})
    members["helpers/requirements.txt"] = (project_dir / "requirements.txt").read_bytes()
    name, version = project["name"].replace("-", "_"), project_version(project_dir)
    info = f"{name}-{version}.dist-info"
    fields = [("Metadata-Version", "2.1"), ("Name", project["name"]), ("Version", version),
              ("Summary", project.get("description")), ("Requires-Python", project.get("requires-python")),
              *(("Requires-Dist", requirement) for requirement in _requires_dist(project_dir, project,
                                                                                 setuptools))]
    members[f"{info}/METADATA"] = "".join(f"{key}: {value}\n" for key, value in fields if value).encode()
    members[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: helpers.kaggle\nRoot-Is-Purelib: true\n" \
        b"Tag: py3-none-any\n"
    record = [f"{member},sha256={_record_digest(data)},{len(data)}" for member, data in members.items()]
    members[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,", ""]).encode()
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in members.items():
            entry = zipfile.ZipInfo(member, date_time=(1980, 1, 1, 0, 0, 0))
            entry.compress_type, entry.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
            archive.writestr(entry, data)
    return path


def _record_digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_kaggle_folders(
    owner: str,
    out_dir: str | Path = "kaggle_build",
    notebooks_dir: str | Path = NOTEBOOKS_DIR,
    metadata_path: str | Path = SUITE_METADATA,
    project_dir: str | Path = REPO_ROOT,
    configs_dir: str | Path | None = None,
    wheels: bool = True,
    wheels_from: str | Path | None = None,
) -> list[Path]:
    """Write the helpers dataset folder and one kernel folder per notebook into `out_dir`, plus PUSH.md.

    The dataset holds the helpers wheel and (unless `wheels` is false) the wheels of what Kaggle's image
    lacks, from the registry or the local folder `wheels_from`. Returns the folders in push order (the
    dataset first). `out_dir` is replaced as a whole, so a notebook removed from the suite leaves no
    stale folder; a non-empty `out_dir` without PUSH.md is refused rather than deleted.
    """
    owner, out_dir = resolve_owner(owner), Path(out_dir)
    suite = _suite_template(Path(metadata_path))
    stages = _suite_notebooks(Path(notebooks_dir))
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "PUSH.md").is_file():
        raise KaggleMetadataError(
            f"{out_dir} exists and is not a previous build (no PUSH.md); choose another --out."
        )
    kernel_ids = {stage: f"{owner}/{suite['id'].split('/')[1]}-{slugify(path.stem)}"
                  for stage, path in stages.items()}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(out_dir) as staging:
        dataset_dir = staging / HELPERS_DATASET_SLUG
        build_helpers_wheel(dataset_dir, Path(project_dir), configs_dir)
        if wheels:
            bundle_wheels(dataset_dir, wheels_from)
        _write_dataset_metadata(dataset_dir, f"{owner}/{HELPERS_DATASET_SLUG}")
        kernel_dirs = [_write_kernel_folder(staging, notebook, stage, suite, owner, kernel_ids)
                       for stage, notebook in stages.items()]
        (staging / "PUSH.md").write_text(
            _push_instructions(out_dir, owner, dataset_dir, kernel_dirs, list(kernel_ids.values())),
            encoding="utf-8",
        )
    return [out_dir / HELPERS_DATASET_SLUG, *(out_dir / folder.name for folder in kernel_dirs)]


def _suite_template(metadata_path: Path) -> dict[str, Any]:
    """The suite's kernel metadata template, checked, with its placeholder owner."""
    suite = read_json(metadata_path)
    validate_kernel_metadata(suite, metadata_path.parent, where=str(metadata_path), require_code_file=False)
    if suite["id"].split("/")[0] != PLACEHOLDER_OWNER:
        raise KaggleMetadataError(
            f"{metadata_path}: id {suite['id']!r} must use the placeholder owner {PLACEHOLDER_OWNER!r}, "
            "which --owner replaces."
        )
    return suite


def _write_dataset_metadata(dataset_dir: Path, helpers_ref: str) -> None:
    dataset_meta = {
        "title": HELPERS_DATASET_TITLE,
        "id": helpers_ref,
        "licenses": [{"name": "CC0-1.0"}],
        "description": "The `helpers` package of the image-captioning notebook suite as a wheel (with its "
        "configs and requirements), and the wheels of what Kaggle's image lacks. Each notebook's setup "
        "cell installs the helpers wheel from here, and what Kaggle lacks with Internet off.",
    }
    validate_dataset_metadata(dataset_meta, str(dataset_dir / DATASET_METADATA_FILE))
    _write_json(dataset_dir / DATASET_METADATA_FILE, dataset_meta)


def _write_kernel_folder(staging: Path, notebook: Path, stage: str, suite: dict[str, Any], owner: str,
                         kernel_ids: dict[str, str]) -> Path:
    """One notebook's folder: the notebook without outputs and its kernel-metadata.json, which attaches
    the helpers dataset, the suite's datasets and the outputs of the stages it reads (STAGE_INPUTS)."""
    helpers_ref = f"{owner}/{HELPERS_DATASET_SLUG}"
    dataset_sources = [_with_owner(ref, owner) for ref in suite.get("dataset_sources", [])]
    dataset_sources += [helpers_ref] if helpers_ref not in dataset_sources else []
    kernel_id = kernel_ids[stage]
    folder = staging / kernel_id.split("/")[1]
    folder.mkdir()
    _write_json(folder / notebook.name, cleared_notebook(notebook))
    meta = {
        "id": kernel_id,
        "title": notebook_title(suite["title"], notebook.stem),
        "code_file": notebook.name,
        **{key: value for key, value in suite.items() if key not in ("id", "title", "code_file")},
        "dataset_sources": dataset_sources,
        "kernel_sources": [kernel_ids[needed] for needed in STAGE_INPUTS[stage]],
    }
    validate_kernel_metadata(meta, folder)
    _write_json(folder / KERNEL_METADATA_FILE, meta)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.kaggle", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--owner", help="your Kaggle user name (default: $KAGGLE_USERNAME or ~/.kaggle/kaggle.json)"
    )
    parser.add_argument("--out", default="kaggle_build", help="output folder (default: kaggle_build)")
    parser.add_argument("--notebooks-dir", default=str(NOTEBOOKS_DIR), help="the numbered notebooks")
    parser.add_argument(
        "--metadata", default=str(SUITE_METADATA), help="the suite's kernel metadata template"
    )
    parser.add_argument(
        "--no-wheels",
        action="store_true",
        help="do not bundle the wheels of what Kaggle lacks (pycocoevalcap); notebooks then need Internet",
    )
    parser.add_argument("--wheels-from", help="a local folder of wheels instead of the package registry")
    parser.add_argument("--model", metavar="RUN_DIR", help="instead: export this run as a Kaggle Model into "
                        "<out>/models/ and print its kagglehub.model_upload call (helpers.kaggle_models)")
    parser.add_argument("--upload", action="store_true",
                        help="with --model: upload it (Internet and Kaggle credentials needed)")
    args = parser.parse_args(argv)
    try:
        if args.model:
            from helpers.kaggle_models import main_model

            return main_model(args.model, resolve_owner(args.owner), args.out, upload=args.upload)
        folders = build_kaggle_folders(
            args.owner,
            args.out,
            args.notebooks_dir,
            args.metadata,
            wheels=not args.no_wheels,
            wheels_from=args.wheels_from,
        )
    except KaggleMetadataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for folder in folders:
        print(folder)
    print(f"Next: follow {Path(args.out) / 'PUSH.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
