"""Progress lines: in a notebook one output updated in place, whose saved form is a one-line summary
(no stale `0%` frames); in a terminal tqdm's bar. Widgets keep a readable plain-text form."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbconvert import HTMLExporter

from helpers.progress import ProgressLine

REPO = Path(__file__).resolve().parents[1]


def _execute(*sources: str):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(textwrap.dedent(source)) for source in sources]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    NotebookClient(notebook, timeout=120, kernel_name="python3", store_widget_state=True,
                   resources={"metadata": {"path": str(REPO)}}).execute()
    return notebook


def _texts(cell) -> list[str]:
    return [output.get("text") or output.get("data", {}).get("text/plain", "") for output in cell.outputs]


@pytest.mark.slow
def test_a_saved_notebook_keeps_one_summary_line_per_loop_and_readable_widgets():
    notebook = _execute(
        """
        from helpers import progress
        progress.REFRESH_S = 0.0  # every update reaches the output
        with progress.ProgressLine(6, "features", unit="img") as bar:
            for _ in range(3):
                bar.update(2, loss="1.5")
        """,
        """
        line = progress.ProgressLine(4, "epoch 1/2", unit="batch")
        for _ in range(4):
            line.update(1)
        line.close("")
        print("epoch 1: train loss 2.0")
        """,
        """
        line = progress.ProgressLine(4, "decoding", initial=1)
        line.update(3)
        line.close("decoded 4 images")
        """,
        """
        import ipywidgets
        from helpers import widgets
        backbone = ipywidgets.Dropdown(options=["resnet50", "regnet_x_400mf"], description="Backbone")
        glove = ipywidgets.Checkbox(value=True, description="GloVe")
        widgets.display_in_notebook(ipywidgets.VBox([ipywidgets.HTML("<table></table>"), backbone, glove]))
        """,
    )
    features, epoch, decoding, widgets = notebook.cells
    (summary,) = _texts(features)
    assert re.match(r"features: 100%\|\S+\| 6/6 \[", summary) and "loss=1.5" in summary and "img/s" in summary
    assert [text for text in _texts(epoch) if text.strip()] == ["epoch 1: train loss 2.0\n"]
    assert _texts(decoding) == ["decoded 4 images"]
    (shown,) = widgets.outputs
    assert shown["data"]["text/plain"] == "Backbone: resnet50\nGloVe: True"
    assert "application/vnd.jupyter.widget-view+json" in shown["data"]
    page, _ = HTMLExporter().from_notebook_node(notebook)
    assert " 0%|" not in page and "VBox(children" not in page
    assert "application/vnd.jupyter.widget-state+json" in page  # widgets render from the saved state


def test_in_a_terminal_the_bar_goes_to_stderr_and_leaves_its_last_frame(capsys):
    with ProgressLine(5, "features", unit="img") as bar:
        for _ in range(5):
            bar.update(1)
    err = capsys.readouterr().err
    assert "features: 100%" in err and "5/5" in err
    quiet = ProgressLine(5, "epoch 1/1", enabled=False)
    quiet.update(5)
    quiet.close()
    cleared = ProgressLine(2, "epoch 1/1")
    cleared.update(2)
    cleared.close("epoch 1 done")
    err = capsys.readouterr().err
    assert err.rstrip().endswith("epoch 1 done") and "epoch 1/1: 100%" not in err.split("\r")[-1]
