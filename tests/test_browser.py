"""The notebooks as a person uses them: JupyterLab on 127.0.0.1 driven in headless Chromium.

Notebooks 02, 05 and 07 run one after the other in DEMO mode (small: one epoch, one backbone) through
the UI: Run All, then in 05 a widget is changed and the config it shows must name another run
folder, and in 07 the results table must fit a 1280 px screen unwrapped and a JPEG is uploaded and
its caption must appear under its file name. Every notebook
must end with no error output, no stray stderr output, and widgets drawn as widgets (never as their
`VBox(children=...` text). Screenshots of each stage are saved in the test's temporary folder (and
in $BROWSER_SCREENSHOTS when set).

Needs Debian's `chromium` and the `jupyterlab` and `playwright` packages (scripts/run_tests.sh
installs them); playwright drives the system browser, it downloads none.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SMALL = {  # the demo at its smallest: what is checked here is the UI, not the learning
    "DEMO": True,
    "EPOCHS": 1,
    "COMPARE": ["regnet_x_400mf"],
    "MEASURE_BATCHES": 1,
    "BEAM_SIZES": [1],
    "SAMPLES": 2,
    "BEAM_SIZE": 1,
    "OVERRIDES": ["training.meteor=false"],
}
CELL_TIMEOUT_MS = 120_000
KERNEL_IDLE = ".jp-Notebook-ExecutionIndicator[data-status='idle']"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on 127.0.0.1 serving prepared copies of the notebooks (papermill's
    parameter injection without running them), with a shared work dir; yields (url, folder, work)."""
    pytest.importorskip("playwright.sync_api", reason="pip install -r requirements-test.txt")
    pytest.importorskip("jupyterlab", reason="pip install -r requirements-test.txt")
    if not Path(CHROMIUM).is_file():
        pytest.skip("no Chromium: apt-get install -y chromium (scripts/run_tests.sh does)")
    import papermill

    folder = tmp_path_factory.mktemp("lab")
    work = folder / "work"
    (folder / "helpers").symlink_to(ROOT / "helpers")  # what the notebooks' setup cell looks for
    for name in ("02_backbones", "05_train_attention_lstm", "07_results"):
        source = ROOT / "notebooks" / f"{name}.ipynb"
        declared = papermill.inspect_notebook(str(source))
        wanted = {**SMALL, "WORK_DIR": str(work)}
        parameters = {key: value for key, value in wanted.items() if key in declared}
        papermill.execute_notebook(str(source), str(folder / source.name), parameters=parameters,
                                   prepare_only=True, kernel_name="python3", progress_bar=False)
    settings = folder / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTERLAB_SETTINGS_DIR": str(folder / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(folder / "workspaces"),
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder}",
         "--LabApp.news_url=None", "--allow-root",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(folder / "server.log", "w"),
    )
    deadline = time.time() + 60
    while time.time() < deadline and server.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.3)
    else:
        server.kill()
        pytest.fail(f"JupyterLab did not start: {(folder / 'server.log').read_text()[-2000:]}")
    try:
        yield f"http://127.0.0.1:{port}", token, folder, work
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--no-sandbox", "--disable-gpu"])
        try:
            yield chromium
        finally:
            chromium.close()


def _screenshot(page, folder: Path, name: str) -> Path:
    path = folder / "screenshots" / f"{name}.png"
    path.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("BROWSER_SCREENSHOTS"):
        shutil.copy(path, Path(os.environ["BROWSER_SCREENSHOTS"]) / path.name)
    return path


def _open(browser, lab, name: str):
    url, token, _, _ = lab
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    # A workspace of its own, reset: only this notebook open (JupyterLab would reopen the others).
    page.goto(f"{url}/lab/workspaces/{name[:2]}/tree/{name}.ipynb?token={token}&reset")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    try:  # a fresh workspace may ask which kernel to start: the notebook's own (the default answer)
        page.wait_for_selector(".jp-Dialog .jp-mod-accept", timeout=5_000)
        page.click(".jp-Dialog .jp-mod-accept")
    except Exception:  # playwright's TimeoutError: no dialog
        pass
    page.wait_for_selector(KERNEL_IDLE, state="attached", timeout=60_000)
    return page


def _run_all(page) -> None:
    for _ in range(3):  # a click that lands while the page is still settling opens no menu: again
        page.click(".lm-MenuBar-itemLabel:text-is('Run')")
        page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
        try:
            page.wait_for_selector(".jp-InputArea-prompt:text-matches('[*0-9]')", timeout=15_000)
            break
        except Exception:  # playwright's TimeoutError: nothing started
            page.keyboard.press("Escape")
    # Done when every code cell shows its execution count (none has one before: a fresh kernel), or
    # when one failed (the rest never run).
    page.wait_for_function(
        """() => {
            const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')];
            const done = prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
            const error = '[data-mime-type="application/vnd.jupyter.error"]';
            return done || document.querySelector(error) !== null;
        }""",
        timeout=CELL_TIMEOUT_MS * 3,
        polling=500,
    )
    assert page.locator(".jp-NotebookPanel").count() == 1, "other notebooks were opened too"
    page.wait_for_selector(KERNEL_IDLE, state="attached", timeout=60_000)


def _assert_clean(page, name: str) -> None:
    errors = page.locator("[data-mime-type='application/vnd.jupyter.error']")
    assert errors.count() == 0, f"{name}: error output: {errors.first.inner_text()[:2000]}"
    stderr = page.locator("[data-mime-type='application/vnd.jupyter.stderr']")
    assert stderr.count() == 0, f"{name}: stray stderr output: {stderr.first.inner_text()[:1000]}"
    outputs = page.locator(".jp-OutputArea-output").all_inner_texts()
    as_text = [text for text in outputs if re.search(r"\b(VBox|Dropdown|Checkbox|FileUpload)\(", text)]
    assert not as_text, f"{name}: widgets rendered as text: {as_text[0][:300]}"
    assert page.locator(".jp-OutputArea-output .widget-dropdown, .jp-OutputArea-output .widget-upload, "
                        ".jp-OutputArea-output .widget-checkbox").count() > 0, f"{name}: no widget drawn"


def _summary(page) -> str:
    """The run choice's live config text (helpers.widgets.RunChoice.summary)."""
    return page.locator(".widget-html pre").filter(has_text="run folder").first.inner_text()


def _assert_summary_fits(page) -> None:
    """07's results table as a reader sees it on a 1280 px screen beside the file browser: every
    column drawn inside the output area, none scrolled out of sight, and no cell wrapped onto a
    second line."""
    page.set_viewport_size({"width": 1280, "height": 1000})
    page.wait_for_timeout(500)  # JupyterLab lays the notebook out again
    table = page.locator(".jp-OutputArea-output table.results-summary")
    assert table.count() == 1, "07 shows no summary table"
    table.scroll_into_view_if_needed()
    seen = table.evaluate(
        """table => {
            const area = table.closest('.jp-OutputArea-output');
            const right = Math.min(area.getBoundingClientRect().right, window.innerWidth);
            const cells = [...table.querySelectorAll('th, td')];
            const header = [...table.querySelectorAll('thead th')].map(th => th.textContent.trim());
            const lines = cell => {  // the text lines a cell is drawn on
                const range = document.createRange();
                range.selectNodeContents(cell);
                return new Set([...range.getClientRects()].map(box => Math.round(box.top))).size;
            };
            const wrapped = cells.filter(c => lines(c) > 1).map(c => c.textContent.trim());
            const beyond = cells.filter(c => c.getBoundingClientRect().right > right + 1)
                .map(c => c.textContent);
            return {header, right, overflow: area.scrollWidth - area.clientWidth, wrapped, beyond};
        }"""
    )
    for column in ("decoder", "backbone", "embeddings", "epochs", "beam", "BLEU-4", "METEOR", "CIDEr"):
        assert column in seen["header"], f"07's summary lacks {column}: {seen['header']}"
    assert "minutes" in seen["header"], seen["header"]
    assert not seen["beyond"] and seen["overflow"] <= 0, f"07's summary is wider than 1280 px: {seen}"
    assert not seen["wrapped"], f"07's summary wraps cells onto two lines: {seen['wrapped']}"


def _outputs_of(page, snippet: str):
    """The drawn outputs of the code cell whose source holds `snippet`."""
    cell = page.locator(".jp-CodeCell").filter(has_text=snippet)
    assert cell.count() == 1, f"no single cell with {snippet!r}"
    return cell.locator(".jp-OutputArea-output")


def _assert_training_notebook_teaches(page) -> None:
    """05 as a reader sees it: the model and one batch before training, the loss per word, the two
    attention figures, and the closing summary naming the next notebook."""
    model = " ".join(_outputs_of(page, "describe_model").all_inner_texts())
    assert "(decoder): AttentionLSTM(" in model and "class AttentionLSTM" in model and "trained." in model
    batch = " ".join(_outputs_of(page, "one_batch").all_inner_texts())
    assert "captions_out" in batch and "per word" in batch and "ln(" in batch
    assert "Losses are per word" in " ".join(_outputs_of(page, "plot_history").all_inner_texts())
    assert _outputs_of(page, "attention_samples").locator("img").count() == 2  # the best and the worst image
    summary = " ".join(_outputs_of(page, "run_summary").all_inner_texts())
    assert summary.startswith("Summary: best epoch 1 of 1") and "Next: 06_train_transformer" in summary


def test_02_05_07_run_all_change_a_widget_and_upload_an_image(lab, browser, tmp_path):
    _, _, folder, work = lab
    shots = []

    page = _open(browser, lab, "02_backbones")
    _run_all(page)
    shots.append(_screenshot(page, folder, "02_backbones"))
    _assert_clean(page, "02_backbones")
    assert list(work.glob("features/*/*/index.json")), "02 extracted no feature store"
    measured = " ".join(_outputs_of(page, "compare_backbones").all_inner_texts())
    assert "(measured once)" in measured and "None" not in measured  # MEASURE_BATCHES = 1: no fact
    page.close()

    page = _open(browser, lab, "05_train_attention_lstm")
    _run_all(page)
    shots.append(_screenshot(page, folder, "05_train_attention_lstm"))
    _assert_clean(page, "05_train_attention_lstm")
    _assert_training_notebook_teaches(page)
    before = _summary(page)
    trained = re.search(r"run folder\s+(\S+)", before).group(1)
    assert Path(trained, "best.pt").is_file() and Path(trained).name.startswith("Attention_LSTM-")
    page.get_by_text("freeze the word vectors").first.click()  # a choice that changes what is trained
    page.wait_for_function(
        "(old) => [...document.querySelectorAll('.widget-html pre')].some("
        "p => p.textContent.includes('run folder') && !p.textContent.includes(old))",
        arg=trained,
        timeout=30_000,
    )
    after = _summary(page)
    changed = re.search(r"run folder\s+(\S+)", after).group(1)
    assert changed != trained and "glove-frozen" in Path(changed).name and "(frozen)" in after
    assert Path(changed).parent == Path(trained).parent  # beside it: both runs kept for 07
    shots.append(_screenshot(page, folder, "05_after_freezing"))
    page.close()

    page = _open(browser, lab, "07_results")
    _run_all(page)
    _assert_clean(page, "07_results")
    _assert_summary_fits(page)
    from PIL import Image

    photo = tmp_path / "my_holiday_photo.jpg"
    Image.new("RGB", (120, 200), (30, 120, 200)).save(photo, "JPEG")  # portrait, like a phone photo
    with page.expect_file_chooser() as chooser:
        page.locator(".widget-upload").first.click()
    chooser.value.set_files(str(photo))
    page.wait_for_selector(f"text=/{photo.name}: \\w+/", timeout=120_000)
    assert page.locator(".widget-upload").first.inner_text().strip().endswith("(1)")  # shows its count
    shots.append(_screenshot(page, folder, "07_results_uploaded"))
    _assert_clean(page, "07_results after the upload")
    page.close()
    assert all(shot.stat().st_size > 10_000 for shot in shots)
