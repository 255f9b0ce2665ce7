"""A trained run as a Kaggle Model: the exported model folder and the `kagglehub.model_upload` call.

`python -m helpers.kaggle --model RUN_DIR --owner NAME` (and notebook 07's cell) export the run into
`<out>/models/<model-slug>/` and name the upload: the handle `owner/model-slug/pyTorch/default`, the
license, and version notes taken from the model card's summary line. `--upload` (`upload_model`)
then calls kagglehub, which creates the model at its first version and adds a version after that
(Internet and Kaggle credentials needed). A notebook that attaches the model (Add Input -> Models,
or `model_sources` in kernel metadata) reads it in place: `Captioner.load(handle)` finds it under
`/kaggle/input/<model-slug>/pytorch/default/<version>/` (helpers.captioner.find_attached_model).
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from helpers.captioner import CARD_FILE, KAGGLE_FRAMEWORK
from helpers.errors import INPUT_ERRORS
from helpers.export import export_model

DEFAULT_LICENSE = "Apache 2.0"
DEFAULT_VARIATION = "default"
SLUG_LENGTH = (5, 50)  # Kaggle's model slugs: 5 to 50 characters


@dataclass(frozen=True)
class ModelUpload:
    """What `kagglehub.model_upload` is called with."""

    handle: str  # owner/model-slug/framework/variation
    local_model_dir: Path
    license_name: str
    version_notes: str

    def call_text(self) -> str:
        """The Python call, for a user to read or run by hand."""
        return (f"kagglehub.model_upload({self.handle!r}, {str(self.local_model_dir)!r}, "
                f"license_name={self.license_name!r}, version_notes={self.version_notes!r})")

    def model_source(self, version: int = 1) -> str:
        """The kernel metadata's `model_sources` entry of an uploaded version."""
        return f"{self.handle}/{version}"

    def attached_path(self, version: int = 1) -> str:
        """Where a notebook that attaches this version finds it (Kaggle's model layout)."""
        _, slug, framework, variation = self.handle.split("/")
        return f"/kaggle/input/{slug}/{framework.lower()}/{variation}/{version}"


def model_slug(name: str) -> str:
    """A Kaggle model slug from a run name: lower case, dashes, 5 to 50 characters."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[: SLUG_LENGTH[1]].strip("-")
    return slug if len(slug) >= SLUG_LENGTH[0] else f"{slug}-captioner".strip("-")


def card_summary(model_dir: str | os.PathLike) -> str:
    """The model card's summary line (its first line of text after the title): the version notes."""
    for line in (Path(model_dir) / CARD_FILE).read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            return line.strip()
    return ""


def prepare_model_upload(run_dir: str | os.PathLike, owner: str, out_dir: str | os.PathLike = "kaggle_build",
                         slug: str | None = None, variation: str = DEFAULT_VARIATION,
                         license_name: str = DEFAULT_LICENSE) -> ModelUpload:
    """Export `run_dir` into `<out_dir>/models/<slug>/` with the Kaggle handle in its card, and return
    the upload it is ready for (nothing is sent)."""
    if not owner or "/" in owner:
        raise ValueError(f"owner must be your Kaggle user name, got {owner!r}.")
    slug = slug or model_slug(Path(run_dir).name)
    if model_slug(slug) != slug:
        raise ValueError(f"model slug {slug!r}: use lower-case letters, digits and dashes, "
                         f"e.g. {model_slug(slug)!r}.")
    handle = f"{owner}/{slug}/{KAGGLE_FRAMEWORK}/{variation}"
    folder = export_model(run_dir, Path(out_dir) / "models" / slug, handle=handle)
    return ModelUpload(handle, folder, license_name, card_summary(folder))


def upload_model(upload: ModelUpload) -> None:
    """Send the model folder to Kaggle as a new version of the model (Internet and credentials needed)."""
    import kagglehub

    kagglehub.model_upload(upload.handle, str(upload.local_model_dir), license_name=upload.license_name,
                           version_notes=upload.version_notes)


def describe(upload: ModelUpload) -> str:
    """What was prepared and what comes next, as the command line and notebook 07 print it."""
    return "\n".join([
        f"model folder: {upload.local_model_dir}",
        f"Kaggle Model handle: {upload.handle} (license {upload.license_name})",
        f"version notes: {upload.version_notes}",
        f"upload: {upload.call_text()}",
        f"then attach it to a notebook (Add Input -> Models, or model_sources: [{upload.model_source()!r}]);"
        f" it appears at {upload.attached_path()}/ and loads with Captioner.load({upload.handle!r}).",
    ])


def main_model(run_dir: str, owner: str, out_dir: str = "kaggle_build", upload: bool = False) -> int:
    """`python -m helpers.kaggle --model RUN_DIR --owner NAME [--upload]`."""
    try:
        prepared = prepare_model_upload(run_dir, owner, out_dir)
        print(describe(prepared))
        if upload:
            upload_model(prepared)
            print(f"uploaded: https://www.kaggle.com/models/{'/'.join(prepared.handle.split('/')[:2])}")
    except (*INPUT_ERRORS, ValueError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
