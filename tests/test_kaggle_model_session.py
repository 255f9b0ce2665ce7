"""An exported captioner attached as a Kaggle Model to a fresh, imitated Kaggle session (Internet off,
tests/kaggle_sessions.py): the notebook installs helpers from the attached helpers dataset, finds the
model in Kaggle's model layout under /kaggle/input and captions an image."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pytest
from kaggle_sessions import KaggleSessions, ensure_mount_point, namespaces_available, repack_wheel
from nbformat.v4 import new_code_cell, new_notebook
from test_captioner import tiny_config

from helpers import kaggle as kg
from helpers import kaggle_models
from helpers.captioner import Captioner
from helpers.train import train

pytestmark = pytest.mark.slow
OWNER = "jane"
HANDLE = f"{OWNER}/shapes-captioner/pyTorch/default"

why_not = namespaces_available()
if why_not:
    pytest.skip(f"Kaggle sessions cannot be imitated here: {why_not}", allow_module_level=True)


def use_model_notebook(folder: Path, image: str) -> None:
    """A notebook as a user writes one: the helpers setup cell, then the two lines and a caption."""
    folder.mkdir(parents=True)
    cells = [
        new_code_cell(kg.HELPERS_BOOTSTRAP),
        new_code_cell("from helpers.captioner import Captioner\n"
                      f"captioner = Captioner.load({HANDLE!r})\n"
                      "print('FOLDER', captioner.folder)\n"
                      f"print('CAPTION', repr(captioner.caption({image!r})))"),
    ]
    notebook = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "language": "python",
                                                                  "display_name": "Python 3"}})
    nbformat.write(notebook, folder / "use_model.ipynb")


def test_an_attached_kaggle_model_captions_an_image_with_internet_off(demo_dir, tmp_path):
    created = ensure_mount_point()
    try:
        run_dir = train(tiny_config(tmp_path, demo_dir, "training.epochs=4", "model.hidden_dim=128"),
                        progress=False).run_dir
        upload = kaggle_models.prepare_model_upload(run_dir, OWNER, tmp_path / "out", slug="shapes-captioner")
        image = sorted((Path(demo_dir) / "Images").glob("*.jpg"))[0]
        expected = Captioner.load(upload.local_model_dir, "cpu").caption(image)
        wheels = tmp_path / "wheels"
        repack_wheel("pycocoevalcap", wheels)
        build = tmp_path / "build"
        kg.build_kaggle_folders(OWNER, build, wheels_from=wheels)
        attached_image = f"/kaggle/input/datasets/{OWNER}/images/x.jpg"
        use_model_notebook(build / "image-captioning-use-model", attached_image)
        images = tmp_path / "images"
        images.mkdir()
        shutil.copy(image, images / "x.jpg")
        sessions = KaggleSessions(tmp_path / "sessions", build, OWNER)
        datasets = {f"{OWNER}/captioning-helpers": build / "captioning-helpers", f"{OWNER}/images": images}
        session = sessions.run("use_model", datasets, models={f"{HANDLE}/1": upload.local_model_dir})
    finally:
        if created:
            shutil.rmtree("/kaggle", ignore_errors=True)
    assert session.returncode == 0, session.log[-4000:]
    text = session.cells_text()
    assert "FOLDER /kaggle/input/shapes-captioner/pytorch/default/1" in text
    assert f"CAPTION {expected!r}" in text, text[-2000:]
    assert json.loads((upload.local_model_dir / "captioner.json").read_text())["format_version"] == 1
