"""What the notebooks use: session setup and earlier-output discovery (helpers.notebook), widgets,
figures and the results table (helpers.widgets, helpers.figures, helpers.tables)."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from PIL import Image  # noqa: E402

from helpers import comparisons, figures, tables, widgets  # noqa: E402
from helpers import notebook as nb  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _fake_gpu(monkeypatch, name, capability):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: capability)


def _text_of(fig) -> str:
    """All text artists of a figure, whitespace collapsed (wrapping inserts newlines)."""
    texts = [text.get_text() for ax in fig.axes for text in [*ax.texts, ax.title]]
    return " ".join(" ".join(texts).split())


# ----------------------------------------------------------------------------------------- session


def test_setup_local(tmp_path, monkeypatch, no_gpu, capsys):
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    env = nb.setup(tmp_path / "w")
    assert env == nb.Env(False, "cpu", None, None, tmp_path / "w", ())
    assert (tmp_path / "w").is_dir()
    assert capsys.readouterr().out.strip().splitlines() == [
        f"local | device cpu | GPU none | work dir {tmp_path / 'w'} | inputs none",
        f"Outputs go to {tmp_path / 'w'} (WORK_DIR sets another folder).",
    ]


def test_setup_on_colab_works_in_content_and_says_how_to_keep_the_outputs(tmp_path, monkeypatch, no_gpu,
                                                                          capsys):
    """Colab imitated: no /kaggle, no KAGGLE_* session variables, the notebook's folder /content (here a
    temporary one), and the variable Colab runtimes set."""
    content = tmp_path / "content"
    content.mkdir()
    monkeypatch.chdir(content)
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab-imitated")
    monkeypatch.setattr(nb, "MAIN_JOB_WORK_DIR", tmp_path / "no-main-job")
    env = nb.setup()
    assert (env.on_kaggle, env.place, env.work_dir, env.input_dirs) == (False, "Colab", content / "work", ())
    said = capsys.readouterr().out
    assert said.startswith(f"Colab | device cpu | GPU none | work dir {content / 'work'}")
    assert "Colab deletes /content when the runtime ends" in said and "drive.mount(" in said


def test_setup_leaves_apples_gpu_to_each_decoder(tmp_path, monkeypatch, no_gpu, capsys):
    """With mps the notebooks train on device auto: mps for a decoder that runs there, else the CPU
    (helpers.devices.resolve_device, given the decoder a later cell chooses)."""
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    env = nb.setup(tmp_path / "w")
    assert (env.device, env.gpu_name) == ("auto", "Apple GPU (mps)")
    said = capsys.readouterr().out
    assert "device mps where the decoder runs on it, else cpu | GPU Apple GPU (mps) |" in said


def test_setup_on_kaggle_uses_working_and_input(tmp_path, monkeypatch, capsys):
    from helpers.embeddings import GLOVE_CACHE_ENV

    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    monkeypatch.delenv(GLOVE_CACHE_ENV, raising=False)
    _fake_gpu(monkeypatch, "Tesla T4", (7, 5))
    roots = {"kaggle_input": tmp_path / "input", "kaggle_working": tmp_path / "working"}
    env = nb.setup(**roots)
    assert (env.on_kaggle, env.device, env.gpu_name, env.compute_capability) == (
        True,
        "cuda",
        "Tesla T4",
        (7, 5),
    )
    assert env.work_dir == tmp_path / "working" and env.input_dirs == (tmp_path / "input",)
    assert os.environ[GLOVE_CACHE_ENV] == str(tmp_path / "working" / "glove_cache")  # saved with the output
    assert "GPU Tesla T4 (sm_75)" in capsys.readouterr().out
    assert nb.setup("work", **roots).work_dir == tmp_path / "working" / "work"
    assert (tmp_path / "working" / "work").is_dir()


def test_setup_refuses_p100_and_hints_without_gpu(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    roots = {"kaggle_input": tmp_path / "input", "kaggle_working": tmp_path / "working"}
    _fake_gpu(monkeypatch, "Tesla P100-PCIE-16GB", (6, 0))
    with pytest.warns(UserWarning, match=r"capability 6\.0.*P100.*GPU T4 x2"):
        env = nb.setup(**roots)
    assert env.device == "cpu" and env.gpu_name == "Tesla P100-PCIE-16GB"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    capsys.readouterr()
    nb.setup(**roots)
    assert "pick 'GPU T4 x2'" in capsys.readouterr().out


def test_find_earlier_output_in_both_kaggle_layouts(tmp_path, monkeypatch, no_gpu):
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    inputs, working = tmp_path / "input", tmp_path / "working"
    new_layout = inputs / "notebooks" / "jane" / "image-captioning-00-data-prep" / "data" / "flickr8k"
    old_layout = inputs / "image-captioning-02-backbones" / "features" / "resnet50-224-x"
    for folder, name in ((new_layout, "manifest.json"), (old_layout, "index.json")):
        folder.mkdir(parents=True)
        (folder / name).write_text("{}")
    (inputs / "datasets" / "adityajn105" / "flickr8k" / "Images").mkdir(parents=True)
    env = nb.setup(kaggle_input=inputs, kaggle_working=working)

    assert nb.find_earlier_outputs("data/*/manifest.json", env) == [new_layout / "manifest.json"]
    assert nb.find_earlier_outputs("features/resnet50-*/index.json", env) == [old_layout / "index.json"]
    assert nb.find_earlier_outputs("features/resnet101-*", env) == []

    own = working / "data" / "flickr8k"
    own.mkdir(parents=True)
    (own / "manifest.json").write_text("{}")
    assert nb.find_earlier_outputs("data/*/manifest.json", env) == [
        own / "manifest.json",
        new_layout / "manifest.json",
    ]

    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE")
    local = nb.setup(tmp_path / "local")
    assert local.input_dirs == () and nb.find_earlier_outputs("data/*/manifest.json", local) == []


def test_the_clean_notebooks_default_to_the_main_jobs_work_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.chdir(tmp_path)
    main_job = tmp_path / "runs" / "demo" / "work"
    monkeypatch.setattr(nb, "MAIN_JOB_WORK_DIR", main_job)
    assert nb.setup().work_dir == tmp_path / "work"  # no main job yet: ./work
    main_job.mkdir(parents=True)
    assert nb.setup().work_dir == main_job
    assert f"Using the main job's work dir {main_job}" in capsys.readouterr().out
    assert nb.setup(tmp_path / "mine").work_dir == tmp_path / "mine"  # WORK_DIR set: that one


def test_executed_notebooks_are_signed_for_jupyterlab(tmp_path, monkeypatch):
    import nbformat
    from nbformat.sign import NotebookNotary
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    (tmp_path / "jupyter").mkdir()
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter"))  # this test's own notary secret
    from helpers.suite import sign

    output = new_output("execute_result", {"text/html": "<b>1</b>"}, execution_count=1)
    notebook = new_notebook(cells=[new_code_cell("1", outputs=[output])])
    path = tmp_path / "executed.ipynb"
    nbformat.write(notebook, path)
    notary = NotebookNotary(data_dir=str(tmp_path / "jupyter"))
    assert not notary.check_signature(nbformat.read(path, as_version=4))
    sign(path)
    assert notary.check_signature(nbformat.read(path, as_version=4))


# ----------------------------------------------------------------------------------------- widgets

FAKE_REGISTRY = {
    name: SimpleNamespace(
        name=name,
        parameters=params,
        out_channels=channels,
        feature_size=7,
        feature_side=lambda image_size=None: -(-(image_size or 224) // 32),
        store_bytes=lambda image_size=None, layout="uint8", channels=channels: channels * (49 + 4),
        gflops=4.09,
        imagenet_top1=80.858,
        image_size=224,
        resize_size=232,
        batch_size=batch,
        weights=f"{name}.W",
        description=f"{name} notes",
    )
    for name, params, channels, batch in (("big", 25_557_032, 2048, 128), ("small", 5_495_976, 400, 256))
}


def test_choose_backbone_defaults_labels_and_echo(capsys):
    dropdown = widgets.choose_backbone("small", registry=FAKE_REGISTRY)
    assert dropdown.value == "small"
    assert capsys.readouterr().out == "BACKBONE = 'small'\n"
    assert dict(dropdown.options) == {
        "big: 25.6 M params, 2048 x 7 x 7 features at 224 px, recommended batch 128": "big",
        "small: 5.5 M params, 400 x 7 x 7 features at 224 px, recommended batch 256": "small",
    }
    at_96 = widgets.choose_backbone("small", registry=FAKE_REGISTRY, image_size=96)
    assert at_96.options[1][0] == "small: 5.5 M params, 400 x 3 x 3 features at 96 px, recommended batch 256"
    dropdown.value = "big"
    assert dropdown.echo.value == "<code>BACKBONE = &#x27;big&#x27;</code>"
    table = widgets.backbone_table(FAKE_REGISTRY)
    assert table.loc["small", "channels"] == 400 and table.loc["big", "parameters (M)"] == 25.56
    assert table.loc["big", "store per image (uint8, bytes)"] == 2048 * 53
    with pytest.raises(ValueError, match="Unknown backbone 'vit'; choose from big, small"):
        widgets.choose_backbone("vit", registry=FAKE_REGISTRY)


def test_choose_backbone_with_the_real_registry():
    from helpers.backbones import BACKBONES

    dropdown = widgets.choose_backbone("regnet_x_400mf")
    assert dropdown.value == "regnet_x_400mf"
    assert [value for _, value in dropdown.options] == list(BACKBONES)
    label = dict((value, label) for label, value in dropdown.options)["regnet_x_400mf"]
    assert "400 x 7 x 7 features" in label and f"batch {BACKBONES['regnet_x_400mf'].batch_size}" in label
    table = widgets.backbone_table()
    convnext = torchvision.models.ConvNeXt_Tiny_Weights.IMAGENET1K_V1.meta
    assert table.loc["convnext_tiny", "GFLOPs"] == convnext["_ops"]
    assert table.loc["convnext_tiny", "ImageNet top-1 (%)"] == convnext["_metrics"]["ImageNet-1K"]["acc@1"]
    assert table.loc["swin_t", "feature map"] == "768 x 7 x 7"
    assert table.loc["swin_t", "store per image (uint8, bytes)"] == 768 * 7 * 7 + 768 * 4  # codes, ranges


def test_choose_backbones_and_options(capsys):
    select = widgets.choose_backbones(["big", "small"], registry=FAKE_REGISTRY)
    assert select.value == ("big", "small")
    assert widgets.choose_backbones("big", registry=FAKE_REGISTRY).value == ("big",)
    options = widgets.choose_options(use_glove=True, freeze=False, pretrained=False)
    assert options.value == {"use_glove": True, "freeze": False, "pretrained": False}
    assert options["use_glove"] is True
    out = capsys.readouterr().out
    assert (
        "BACKBONES = ['big', 'small']" in out
        and "USE_GLOVE = True, FREEZE = False, PRETRAINED = False" in out
    )
    options.boxes["freeze"].value = True
    assert options.value["freeze"] is True and "FREEZE = True" in options.echo.value
    assert options.boxes["use_glove"].description == "GloVe word vectors"


def test_choose_preset_reads_the_presets():
    presets = widgets.preset_choices()
    assert {"beginner", "kaggle_small_gpu", "research"} <= set(presets)
    assert presets["kaggle_small_gpu"].startswith("kaggle_small_gpu: regnet_x_400mf, hidden 256")
    dropdown = widgets.choose_preset("research")
    assert dropdown.value == "research"
    none = widgets.choose_preset(None, ["a", "b"])
    assert none.value == widgets.NO_PRESET and none.label == "(none)"  # shown, not a blank dropdown
    with pytest.raises(ValueError, match="Unknown preset 'expert'"):
        widgets.choose_preset("expert")


def test_run_choice_widgets_follow_each_other_and_show_the_config(tmp_path, capsys):
    """A preset moves the backbone and word-vector boxes; every change shows the new config (batch,
    feature map, run folder) at once, as helpers.stages.choose_run wires it."""
    from helpers.notebook import Env
    from helpers.stages import choose_run

    env = Env(False, "cpu", None, None, tmp_path, ())
    choice = choose_run("LSTM", {"DEMO": True, "PRESET": None, "OVERRIDES": []}, env)
    printed = capsys.readouterr().out
    assert choice.preset.label == "(none)" and choice.backbone.value == "regnet_x_400mf"
    assert choice.config.run_path.name in printed and "batch 50" in printed and "400 x 3 x 3" in printed
    assert choice.options.value == {"use_glove": True, "freeze": False, "pretrained": False}

    choice.preset.value = "research"
    assert choice.backbone.value == "resnet101" and choice.config.model.hidden_dim == 1024
    assert "resnet101" in choice.summary.value and str(choice.config.run_path) in choice.summary.value
    before = choice.config.run_path
    choice.options.boxes["freeze"].value = True
    assert choice.config.run_path != before and "glove-frozen" in choice.config.run_name
    assert str(choice.config.run_path) in choice.summary.value
    choice.preset.value = widgets.NO_PRESET
    assert choice.backbone.value == "regnet_x_400mf" and choice.options["freeze"] is False


def test_choose_dataset_offers_the_kaggle_datasets_and_the_demo(capsys):
    dropdown = widgets.choose_dataset("flickr8k")
    assert dropdown.value == "flickr8k" and "DATASET = 'flickr8k'" in capsys.readouterr().out
    names = [value for _, value in dropdown.options]
    assert names == ["flickr8k", "flickr30k", "coco", "demo"]
    assert "adityajn105/flickr8k" in dropdown.options[0][0]
    with pytest.raises(ValueError, match="Unknown dataset 'mnist'"):
        widgets.choose_dataset("mnist")


def _png_bytes(color, size=(20, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_uploaded_images_from_ipywidgets8_value():
    from ipywidgets.widgets.widget_upload import _deserialize_value

    upload = widgets.upload_widget()
    files = [("red.png", (255, 0, 0)), ("blue.png", (0, 0, 255))]
    upload.value = _deserialize_value(
        [
            {
                "name": n,
                "type": "image/png",
                "size": 1,
                "content": memoryview(_png_bytes(c)),
                "last_modified": 0,
            }
            for n, c in files
        ],
        None,
    )
    images = widgets.uploaded_images(upload)
    assert [name for name, _ in images] == ["red.png", "blue.png"]
    assert images[0][1].size == (20, 10) and images[0][1].getpixel((3, 3)) == (255, 0, 0)
    assert images[1][1].getpixel((0, 0)) == (0, 0, 255)
    old_style = {"g.png": {"metadata": {"name": "g.png"}, "content": _png_bytes((0, 255, 0))}}
    assert widgets.uploaded_images(old_style)[0][1].getpixel((1, 1)) == (0, 255, 0)
    with pytest.raises(ValueError, match="'notes.txt' is not a readable image"):
        widgets.uploaded_images([{"name": "notes.txt", "content": b"hello"}])


# ----------------------------------------------------------------------------------------- figures


def test_show_captions_grid_and_texts(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (40, 30), (10, 20, 30)).save(path)
    images = [path, Image.new("RGB", (30, 30)), torch.rand(3, 16, 24), np.random.rand(24, 16, 3)]
    references = [[f"reference {i} one", f"reference {i} two", f"reference {i} three"] for i in range(4)]
    long = "a dog runs through the tall green grass next to a small wooden fence on a sunny afternoon"
    generated = {"greedy": [long, "g1", "g2", "g3"], "beam 3": ["b0", "b1", "b2", "b3"]}
    fig = figures.show_captions(images, references, generated, ncols=3)
    assert len(fig.axes) == 8  # an image and a text box per image
    text = _text_of(fig)
    for i in range(4):
        assert f"ref: reference {i} one" in text and f"ref: reference {i} two" in text
        assert f"reference {i} three" not in text  # max_references=2
        assert f"beam 3: b{i}" in text
    assert f"greedy: {long}" in text
    wrapped = [t.get_text() for t in fig.axes[4].texts if t.get_text().startswith("greedy")]
    assert len(wrapped) == 1 and "\n" in wrapped[0]
    shapes = [ax.images[0].get_array().shape for ax in fig.axes[:4]]
    assert shapes == [(30, 40, 3), (30, 30, 3), (16, 24, 3), (24, 16, 3)]
    with pytest.raises(ValueError, match="3 greedy captions for 4 images"):
        figures.show_captions(images, references, {"greedy": ["x"] * 3})


@pytest.mark.parametrize("size", [(20, 200), (200, 20), (60, 60)])  # portrait, landscape, square
def test_show_captions_text_stays_in_its_cell_for_any_aspect_ratio(size):
    long = "a man in a red jacket and a blue hat climbs a very steep snowy mountain ridge above the clouds"
    images = [Image.new("RGB", size, (200, 10, 10)) for _ in range(5)]
    references = [[long, "a climber on a mountain"] for _ in images]
    fig = figures.show_captions(images, references, {"greedy": [long] * 5, "beam 3": ["a man"] * 5}, ncols=3,
                           titles=[f"image_{i}.jpg" for i in range(5)])
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    image_axes, text_axes = fig.axes[:5], fig.axes[5:]
    figure_box = fig.bbox
    for index, ax in enumerate(text_axes):
        cell = ax.get_window_extent(renderer)
        boxes = [text.get_window_extent(renderer) for text in ax.texts]
        assert len(boxes) == 4
        for box in boxes:  # inside its column, below its image, above the next row, inside the figure
            assert cell.x0 - 1 <= box.x0 and box.x1 <= cell.x1 + 1, (index, box, cell)
            assert box.y1 <= image_axes[index].get_window_extent(renderer).y0 + 1
            assert box.y0 >= figure_box.y0 - 1
            below = index + 3
            if below < len(image_axes):
                title = image_axes[below].title.get_window_extent(renderer)
                assert box.y0 >= title.y1 + 5, (index, box, title)  # a clear gap, not touching
        for first, second in zip(boxes, boxes[1:]):
            assert second.y1 <= first.y0 + 1  # caption lines of one image do not overlap either


def test_attention_overlay_is_smooth_image_sized_and_keeps_the_weights():
    assert np.allclose(figures.attention_overlay(np.full((7, 7), 0.02), (224, 160)), 0.02)  # the colour bar's
    corner = np.zeros((7, 7), dtype=np.float32)
    corner[0, 0] = 1.0
    overlay = figures.attention_overlay(corner, (224, 224))
    assert overlay.shape == (224, 224) and overlay.min() >= 0
    assert math.isclose(overlay.max(), 1.0)  # no overshoot past the largest weight
    row, col = np.unravel_index(overlay.argmax(), overlay.shape)
    assert row < 32 and col < 32
    assert overlay[:32, :32].mean() > 5 * overlay[64:, 64:].mean()
    assert len(np.unique(np.round(overlay[:48, 0], 4))) > 10  # interpolated, not 32-pixel blocks
    with pytest.raises(ValueError, match="must be 2-D"):
        figures.attention_overlay(np.zeros((2, 7, 7)), (10, 10))


def test_show_attention_panels_with_sentence_reference_grid_and_colour_bar():
    image = torch.rand(3, 64, 96)
    words = ["a", "dog", "runs"]
    attention = torch.softmax(torch.randn(5, 49), dim=1)  # more steps than words: the rest is ignored
    fig = figures.show_attention(image, words, attention, caption="a dog runs", reference="a brown dog runs",
                                 title="Best of 2 test images", note="the last layer, 4 heads", ncols=2)
    *panels, bar = fig.axes
    assert [ax.get_title() for ax in panels] == ["image", *words]
    heading = fig._suptitle.get_text()
    for part in ("Best of 2 test images", "generated: a dog runs", "reference: a brown dog runs",
                 "the last layer, 4 heads"):
        assert part in heading
    assert "7 x 7 grid" in bar.get_ylabel()  # the colour bar names the grid the weights spread over
    weights = attention[:3].numpy()
    assert bar.get_ylim() == pytest.approx((0.0, weights.max()))  # true weights, one scale for all words
    for ax, grid in zip(panels[1:], weights.reshape(3, 7, 7)):
        grey, overlay = ax.images
        assert grey.get_cmap().name == "gray" and overlay.get_cmap().name != "jet"
        assert overlay.get_array().shape == (64, 96)
        assert np.allclose(overlay.get_array(), figures.attention_overlay(grid, (64, 96)))
        assert len(ax.lines) == 12  # the 7 x 7 grid's inner borders: 6 across, 6 down
    with pytest.raises(ValueError, match="3 words but only 2 attention maps"):
        figures.show_attention(image, words, attention[:2])
    with pytest.raises(ValueError, match="not a square grid"):
        figures.show_attention(image, words, torch.rand(3, 50))


HISTORY = [
    {"epoch": 1, "train_loss": 4.0, "val_loss": 3.5, "val_Bleu_4": 0.05, "val_CIDEr": 0.10, "lr": 1e-3},
    {"epoch": 2, "train_loss": 3.0, "val_loss": 3.1, "val_Bleu_4": 0.08, "val_CIDEr": 0.25, "lr": 5e-4},
]


def test_plot_history_from_list_and_files(tmp_path):
    fig = figures.plot_history(HISTORY)
    assert len(fig.axes) == 2
    curves = {line.get_label(): list(line.get_ydata()) for ax in fig.axes for line in ax.get_lines()}
    assert curves == {  # the papers' names and scale, as in the results table
        "train loss": [4.0, 3.0],
        "val loss": [3.5, 3.1],
        "val BLEU-4": pytest.approx([5.0, 8.0]),
        "val CIDEr": pytest.approx([10.0, 25.0]),
    }
    assert [line.get_label() for line in fig.axes[1].get_lines()] == ["val BLEU-4", "val CIDEr"]
    assert list(fig.axes[0].get_lines()[0].get_xdata()) == [1, 2]

    per_word = figures.plot_history(HISTORY, per_word={"train": 10.0, "val": 5.0})
    losses = {line.get_label(): list(line.get_ydata()) for line in per_word.axes[0].get_lines()}
    assert losses == {"train loss": pytest.approx([0.4, 0.3]), "val loss": pytest.approx([0.7, 0.62])}
    assert per_word.axes[0].get_title() == "loss per word (cross-entropy, nats)"
    assert fig.axes[0].get_title() == "loss per caption (its words summed)"

    results = tmp_path / "results.json"
    results.write_text(json.dumps({"history": HISTORY}))
    assert len(figures.plot_history(results).axes[0].get_lines()) == 2
    broken = tmp_path / "history.json"
    broken.write_text('[{"epoch": 1,\n "train_loss": }]')
    with pytest.raises(ValueError, match=r"history\.json: line 2: broken JSON"):
        figures.plot_history(broken)


# ------------------------------------------------------------------------------------- comparisons


def _short_run(name, scores, captions=None, note=None, cider_curve=(0.5, 1.0)):
    """A hand-made comparison run: per-image val CIDEr-D `scores`, its curve over epochs."""
    history = [{"epoch": epoch, "val_loss": 20.0 - 5 * epoch, "val_Bleu_4": 0.2, "val_CIDEr": cider,
                "captions_per_s": 100.0 + epoch} for epoch, cider in enumerate(cider_curve, start=1)]
    names = [f"{i}.jpg" for i in range(len(scores))]
    return comparisons.ShortRun(name, history, dict(zip(names, scores)),
                                dict(zip(names, captions or [f"{name} {i}" for i in range(len(scores))])),
                                best_epoch=len(cider_curve), run=f"LSTM-{name}", note=note)


def test_paired_difference_is_the_mean_and_standard_error_of_per_image_differences():
    a = _short_run("a", [1.0, 2.0, 3.0, 6.0])
    b = _short_run("b", [1.0, 1.0, 1.0, 1.0], captions=["a 0", "x", "y", "z"])
    diff = comparisons.paired_difference(a, b)
    differences = np.array([0.0, 1.0, 2.0, 5.0])
    assert diff.mean == pytest.approx(2.0) and diff.images == 4 and diff.same_captions == 1
    assert diff.standard_error == pytest.approx(differences.std(ddof=1) / 2)
    assert diff.noise == pytest.approx(2 * diff.standard_error)
    assert diff.within_noise  # 2.0 is less than two standard errors (2.16): four images tell nothing


def test_verdict_says_when_a_difference_is_below_the_noise_of_the_data():
    base = np.linspace(0.5, 1.5, 30)
    swings = np.where(np.arange(30) % 2 == 0, 0.6, -0.5)  # +0.05 on average, swinging 0.55 each way
    lucky = _short_run("lucky", base + swings, cider_curve=(0.9, 1.05))  # ahead by less than its noise
    steady = _short_run("steady", base, cider_curve=(0.7, 1.0))
    line = comparisons.verdict([steady, lucky])
    assert line.startswith("Verdict on 30 val images") and "lucky scores" in line
    assert "vs steady +" in line and "below the noise" in line
    assert "No variant beats another beyond the noise of this data" in line

    better = _short_run("better", base + 0.5 + swings / 10)  # ahead by far more than its noise
    line = comparisons.verdict([steady, better])
    assert "vs steady +50.5 ± 2.0 (above the noise)" in line and "better is best on this data" in line


def test_verdict_names_exact_ties_and_each_note():
    frozen = _short_run("GloVe, frozen", [1.0, 2.0, 1.5], captions=["x", "y", "z"])
    trainable = _short_run("GloVe, trainable", [1.0, 2.0, 1.5], captions=["x", "y", "z"])
    random = _short_run("random", [0.1, 0.2, 0.15])
    line = comparisons.verdict([random, frozen, trainable])
    assert "GloVe, frozen scores 150.0" in line
    assert "vs GloVe, trainable +0.0 ± 0.0: the same caption for all 3 images, an exact tie" in line
    assert "GloVe, frozen and GloVe, trainable lead together; random falls behind" in line
    saturated = _short_run("resnet101", [0.1, 0.1, 0.1], note="its features were cut at the float16 limit")
    alone = comparisons.verdict([saturated])
    assert alone.endswith("resnet101 scores 10.0; nothing else to rank it against. "
                          "Note on resnet101: its features were cut at the float16 limit.")


def test_comparison_table_curves_and_timings_as_a_reader_reads_them():
    runs = [_short_run("random", [0.5, 0.7], captions=["same", "same"]),
            _short_run("resnet101", [0.9, 0.9], note="saturated features")]
    runs[1].history[1].pop("val_Bleu_4")
    table = comparisons.comparison_table(runs, "backbone", per_word={"val": 10.0})
    assert list(table.index) == ["random", "resnet101"]
    assert table.loc["random", "val loss per word"] == "1.000"  # (20 - 10) / 10 words per caption
    assert table.loc["random", "distinct captions"] == "1 of 2"
    assert table.loc["random", "val CIDEr"] == "100.00"
    assert table.loc["resnet101", "val BLEU-4"] == "-"  # a missing value
    assert table.loc["resnet101", "note"] == "see the verdict" and table.loc["random", "note"] == "-"
    assert table.loc["random", "best epoch"] == "2 of 2" and table.loc["random", "captions/s"] == "102"
    fig = figures.plot_comparison(runs, per_word={"val": 10.0})
    cider, loss = fig.axes
    assert [line.get_label() for line in cider.get_lines()] == ["random", "resnet101 (see its note)"]
    assert list(cider.get_lines()[0].get_ydata()) == pytest.approx([50.0, 100.0])
    assert list(loss.get_lines()[0].get_ydata()) == pytest.approx([1.5, 1.0])
    assert cider.get_lines()[1].get_linestyle() == "--" and loss.get_title() == "val loss per word (nats)"

    assert comparisons.timing_text([2.0, 2.1, 1.9]) == "2.0"
    assert comparisons.timing_text([1.0, 3.0, 2.0]) == "2.0 (noisy ±50%)"  # a busy machine: no fact
    assert comparisons.timing_text([4.2]) == "4.2 (measured once)"
    assert comparisons.timing_text([]) == "-" and comparisons.timing_text([float("nan")]) == "-"
    assert [comparisons.duration_text(s) for s in (4.4, 210, 7560)] == ["4 s", "3.5 min", "2.1 h"]


# ----------------------------------------------------------------------------------------- results


def _results(cell_type, backbone, use_glove, freeze, metrics, **extra):
    return {
        "run_name": f"{cell_type}-{backbone}",
        "config": {
            "model": {"cell_type": cell_type, "backbone": backbone, "hidden_dim": 512},
            "embeddings": {"use_glove": use_glove, "glove_path": "g.txt", "freeze": freeze},
        },
        "vocab_size": 100,
        "metrics": metrics,
        **extra,
    }


def _scores(b1, b4, rouge, cider, **more):
    return {
        "Bleu_1": b1,
        "Bleu_2": 0.4,
        "Bleu_3": 0.3,
        "Bleu_4": b4,
        "ROUGE_L": rouge,
        "CIDEr": cider,
        **more,
    }


def _write(path, data):
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))


def test_results_table_two_runs(tmp_path):
    work, inputs = tmp_path / "work", tmp_path / "input"
    lstm_metrics = {
        "beam1": _scores(0.60, 0.15, 0.45, 0.40),
        "beam3": _scores(0.62, 0.18, 0.46, 0.52, METEOR=0.2),
    }
    lstm = _results(
        "lstm",
        "resnet50",
        True,
        True,
        {"test": lstm_metrics},
        epochs=10,
        best_epoch=7,
        train_wall_time_s=1200.0,
        device="cuda (Tesla T4)",
        scoring={"test": {"beam1": {"tokenizer": "project"}, "beam3": {"tokenizer": "ptb"}}},
    )
    attn = _results("attn", "resnet101", False, False, {"test": {"beam_1": _scores(0.65, 0.21, 0.48, 0.61)}})
    _write(work / "runs" / "lstm-resnet50" / "results.json", lstm)
    _write(inputs / "notebooks" / "jane" / "x" / "runs" / "attn-resnet101" / "results.json", attn)
    table = tables.results_table([work, inputs])
    assert list(table["run"]) == ["attn-resnet101", "lstm-resnet50", "lstm-resnet50"]  # best CIDEr first
    assert list(table["decoder"]) == ["Attention LSTM", "LSTM", "LSTM"]
    assert list(table["embeddings"]) == ["random", "GloVe (frozen)", "GloVe (frozen)"]
    assert list(table["beam"]) == [1, 3, 1]
    assert list(table["CIDEr"]) == pytest.approx([61.0, 52.0, 40.0])  # x 100, as papers print them
    assert list(table["BLEU-4"]) == pytest.approx([21.0, 18.0, 15.0])
    assert list(table["ROUGE-L"]) == pytest.approx([48.0, 46.0, 45.0])
    assert table["METEOR"].isna().tolist() == [True, False, True] and table.loc[1, "METEOR"] == 20.0
    assert table.loc[1, "train_time_min"] == 20.0 and table.loc[1, "epochs"] == 10
    assert table["tokenizer"].tolist()[1:] == ["ptb", "project"] and table.loc[0, "tokenizer"] is np.nan
    assert math.isnan(table.loc[0, "epochs"]) and math.isnan(table.loc[0, "train_time_min"])
    for column in ["BLEU-1", "BLEU-2", "BLEU-3", "split", "backbone", "device"]:
        assert column in table.columns

    fig = figures.plot_results(table)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 2 and titles == ["BLEU-4 (test, x 100)", "CIDEr (test, x 100)"]
    assert [bar.get_width() for bar in fig.axes[1].patches] == pytest.approx([61.0, 52.0, 40.0])
    labels = [label.get_text() for label in fig.axes[0].get_yticklabels()]
    assert labels == ["Attention LSTM · resnet101 · random · ? ep · beam 1",
                      "LSTM · resnet50 · GloVe (frozen) · 10 ep · beam 3",
                      "LSTM · resnet50 · GloVe (frozen) · 10 ep · beam 1"]


def test_results_table_tolerates_gaps_and_names_broken_files(tmp_path):
    _write(tmp_path / "runs" / "bare" / "results.json", {"config": {}})
    table = tables.results_table(tmp_path)
    assert list(table["run"]) == ["bare"] and "CIDEr" not in table.columns
    assert tables.results_table(tmp_path / "missing").empty
    broken = tmp_path / "runs" / "bad" / "results.json"
    _write(broken, {})
    broken.write_text('{"metrics": {')
    with pytest.raises(ValueError, match=f"{broken}: line 1: broken JSON"):
        tables.results_table(tmp_path)


def test_results_table_prints_scores_as_papers_do(tmp_path):
    """x 100 and two decimals: BLEU-4 0.2345678 reads 23.46, as in the papers' tables."""
    scores = _scores(0.7123456, 0.2345678, 0.5, 1.0987654)
    _write(
        tmp_path / "runs" / "x" / "results.json",
        _results("lstm", "resnet50", True, False, {"test": {"beam1": scores}}, train_wall_time_s=100.0),
    )
    row = tables.results_table(tmp_path).iloc[0]
    assert (row["BLEU-1"], row["BLEU-4"], row["CIDEr"], row["train_time_min"]) == (71.23, 23.46, 109.88, 1.67)


def test_side_by_side_pairs_runs_that_differ_in_one_choice(tmp_path):
    """Backbone vs backbone and random vs GloVe vs frozen GloVe, from runs in different roots; a run
    that differs in two choices pairs with nothing."""
    runs = {
        "a": ("lstm", "resnet50", True, False, 0.50),
        "b": ("lstm", "resnet101", True, False, 0.60),
        "c": ("lstm", "resnet50", False, False, 0.40),
        "d": ("lstm", "resnet50", True, True, 0.45),
        "e": ("attn", "resnet101", False, True, 0.90),
    }
    for index, (name, (cell, backbone, glove, freeze, cider)) in enumerate(runs.items()):
        results = _results(cell, backbone, glove, freeze, {"test": {"beam1": _scores(0.6, 0.2, 0.4, cider)}})
        results["run_name"] = name
        _write(tmp_path / f"root{index % 2}" / "runs" / name / "results.json", results)
    table = tables.results_table([tmp_path / "root0", tmp_path / "root1"], split="test")

    backbones = tables.side_by_side(table, "backbone")
    assert backbones.shape == (1, 2) and backbones.columns.name == "CIDEr by backbone"
    assert backbones.iloc[0].to_dict() == {"resnet101": 60.0, "resnet50": 50.0}
    embeddings = tables.side_by_side(table, "embeddings", metric="BLEU-4")
    assert embeddings.shape == (1, 3) and set(embeddings.columns) == {"random", "GloVe", "GloVe (frozen)"}
    assert tables.side_by_side(table, "decoder").empty  # e differs from every other run in more than one way
    with pytest.raises(ValueError, match="Unknown choice 'colour'"):
        tables.side_by_side(table, "colour")


def test_caption_lengths_are_whole_words_per_split_side_by_side():
    """Shares of each split's captions (so the small val and test splits show beside train), a bar per
    split at each whole length, integer ticks only."""
    from helpers.text import SPECIAL_TOKENS

    vocab = SimpleNamespace(word_to_idx={token: index for index, token in enumerate(SPECIAL_TOKENS)})
    null, start, end = 0, 1, 2  # <NULL>, <START>, <END>

    def encoded(lengths):
        rows = np.full((len(lengths), 8), null)
        for row, length in enumerate(lengths):
            rows[row, : length + 2] = [start, *[4] * length, end]
        return rows, None

    lengths = {"train": [3] * 90 + [5] * 10, "val": [3, 5], "test": [5, 5]}
    prepared = SimpleNamespace(vocab=vocab, max_caption_length=6, splits=lengths,
                               captions=lambda split: encoded(lengths[split]))
    fig = figures.plot_caption_lengths(prepared)
    ax = fig.axes[0]
    bars = {(round(bar.get_x() + bar.get_width() / 2, 3), round(bar.get_height(), 3)) for bar in ax.patches}
    width = 0.8 / 3  # train left of each whole length, val on it, test right of it
    expected = {(3 - width, 90.0), (5 - width, 10.0), (3.0, 50.0), (5 + width, 100.0)}
    assert {(round(x, 3), share) for x, share in expected} <= bars
    fig.canvas.draw()
    ticks = [tick for tick in ax.get_xticks() if ax.get_xlim()[0] <= tick <= ax.get_xlim()[1]]
    assert ticks and all(float(tick).is_integer() for tick in ticks)
    assert [text.get_text() for text in ax.get_legend().get_texts()][1:] == [
        "train (100 captions)", "val (2 captions)", "test (2 captions)"]


def _full_and_comparison_runs(root):
    """Two full LSTM runs of 8 epochs (beam 1 and 3) and two comparison LSTM runs of 2 epochs, the
    same choices as the first full run: in the bar chart of old they read as the same model twice."""
    runs = {
        ("runs", "lstm-a"): ("lstm", {"beam1": _scores(0.7, 0.534, 0.5, 1.20),
                                      "beam3": _scores(0.7, 0.55, 0.5, 1.25)}),
        ("runs", "attn-a"): ("attn", {"beam1": _scores(0.7, 0.60, 0.5, 1.40, METEOR=0.3)}),
        ("comparisons", "lstm-a-short"): ("lstm", {"beam1": _scores(0.6, 0.278, 0.4, 0.80)}),
        ("comparisons", "lstm-b-short"): ("lstm", {"beam1": _scores(0.6, 0.30, 0.4, 0.90)}),
    }
    for (folder, name), (cell, metrics) in runs.items():
        epochs = 2 if folder == "comparisons" else 8
        results = _results(cell, "regnet_x_400mf", True, False, {"test": metrics}, epochs=epochs,
                           train_wall_time_s=60.0 * epochs)
        results["run_name"] = name
        _write(root / folder / name / "results.json", results)
    return tables.results_table(root, split="test")


def test_the_summary_table_is_compact_and_keeps_comparison_runs_apart(tmp_path):
    table = _full_and_comparison_runs(tmp_path)
    assert list(table["kind"]) == ["full", "full", "full", "comparison", "comparison"]
    summary = tables.summary_table(table)
    assert list(summary.columns) == ["backbone", "embeddings", "epochs", "beam", "BLEU-4", "METEOR", "CIDEr",
                                     "minutes"]
    assert summary.index.names == ["runs", "decoder"]
    groups = list(summary.index.get_level_values("runs"))
    assert groups == ["full runs"] * 3 + ["comparisons"] * 2  # full runs first
    assert list(summary["CIDEr"]) == [140.0, 125.0, 120.0, 90.0, 80.0]  # best first in each group
    assert list(summary["epochs"]) == [8, 8, 8, 2, 2]
    assert list(summary["minutes"]) == ["8.0", "8.0", "8.0", "2.0", "2.0"]
    assert [tables._minutes(m) for m in (0.04, 0.05, 61.25, float("nan"))] == ["<0.1", "0.1", "61.2", "-"]
    assert summary.loc[("full runs", "LSTM"), "BLEU-4"].tolist() == [55.0, 53.4]


def test_the_results_chart_colours_by_decoder_and_sets_comparison_runs_apart(tmp_path):
    table = _full_and_comparison_runs(tmp_path)
    fig = figures.plot_results(table)
    labels = [label.get_text() for label in fig.axes[0].get_yticklabels()]
    assert labels[0].startswith("Attention LSTM") and "8 ep" in labels[1] and "2 ep" in labels[-1]
    bars = fig.axes[1].patches
    colours = [bar.get_facecolor()[:3] for bar in bars]
    assert colours[1] == colours[2] == colours[3] != colours[0]  # one colour per decoder, not per bar
    assert [bool(bar.get_hatch()) for bar in bars] == [False, False, False, True, True]
    legend = [text.get_text() for text in fig.legends[0].get_texts()]
    assert legend[:2] == ["LSTM", "Attention LSTM"] and "short comparison run" in legend[2]


def _hand_made(rows, dataset="flickr8k"):
    import pandas as pd

    columns = ["kind", "decoder", "backbone", "embeddings", "epochs", "beam", "CIDEr"]
    table = pd.DataFrame([dict(zip(columns, row)) for row in rows])
    return table.assign(split="test", dataset=dataset)


def test_findings_are_written_from_the_tables_numbers():
    table = _hand_made([
        ("full", "Attention LSTM", "resnet50", "GloVe", 10, 3, 60.0),
        ("full", "LSTM", "resnet50", "GloVe", 10, 3, 50.0),
        ("full", "LSTM", "resnet50", "random", 10, 3, 49.5),  # GloVe's twin: 0.5 points apart
        ("full", "LSTM", "resnet101", "GloVe", 10, 3, 40.0),
        ("full", "LSTM", "resnet50", "GloVe", 10, 1, 99.0),  # another beam: ranked apart, not mixed in
        ("comparison", "Transformer", "resnet50", "GloVe", 2, 3, 70.0),  # short: no decoder ranking
    ])
    decoders, glove, backbones = tables.findings(table)
    assert decoders.startswith("Best decoder: Attention LSTM, CIDEr 60.0 (test split, beam 3")
    assert "then LSTM 50.0" in decoders and "Transformer" not in decoders
    assert "Against LSTM: +10.0 CIDEr points (+17%), more than noise." in decoders
    assert "GloVe +0.5 CIDEr points (+1%), within noise (under 5% of the score) (1 pair)" in glove
    assert "runs of 10 epochs" in glove
    assert backbones.startswith("Best backbone: resnet50, CIDEr 50.0, then resnet101 40.0")
    assert "+10.0 CIDEr points (+20%), more than noise" in backbones

    close = _hand_made([("full", "Transformer", "swin_t", "GloVe", 10, 3, 50.2),
                        ("full", "LSTM", "swin_t", "GloVe", 10, 3, 50.0)], dataset="demo")
    decoders, glove, backbones, demo = tables.findings(close)
    assert "Best decoder: Transformer" in decoders and "within noise" in decoders
    assert glove.startswith("No GloVe run has a twin with random word vectors")
    assert backbones.startswith("No two runs differ in the backbone only")
    assert "says nothing about photos" in demo
    only = tables.findings(close.iloc[1:])[0]
    assert only.startswith("Only LSTM is among the full runs (CIDEr 50.0, test split, beam 3, its best full")
    assert tables.findings(close.iloc[0:0]) == [
        "No scored run yet: train a model (notebooks 03-06), then run this notebook again."
    ]


def test_the_best_run_is_a_full_run_when_there_is_one(tmp_path):
    from helpers.stages import best_run

    table = _full_and_comparison_runs(tmp_path)
    assert best_run(table).name == "attn-a"
    assert best_run(table[table["kind"] == "comparison"]).name == "lstm-b-short"


@pytest.mark.skipif(shutil.which("java") is None, reason="the PTB tokenizer needs Java")
def test_the_java_tokenizer_prints_nothing(capfd):
    """pycocoevalcap's JVM writes 'PTBTokenizer tokenized N tokens...' to stderr: none of it shows."""
    from helpers.evaluate import compute_metrics

    references = {"a": ["a dog runs", "the dog is running"], "b": ["a cat sits", "a cat is sitting"]}
    scores = compute_metrics(references, {"a": ["a dog runs"], "b": ["a cat sits"]}, meteor=False,
                             tokenizer="ptb")
    assert scores["Bleu_1"] == pytest.approx(1.0)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_metrics_frame_uses_the_papers_names_and_scale():
    from helpers.stages import metrics_frame

    scores = {"Bleu_4": 0.2345, "CIDEr": 1.6546, "ROUGE_L": 0.5}
    frame = metrics_frame({"metrics": {"test": {"beam1": scores}}})
    assert frame.loc["test beam 1"].to_dict() == {"BLEU-4": 23.45, "CIDEr": 165.46, "ROUGE-L": 50.0}
