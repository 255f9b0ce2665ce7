"""Writes notebooks/*.ipynb (no outputs): `python scripts/make_notebooks.py [OUT_DIR]`.

The notebooks share their parameters and set-up cells, so they are written from this one script
(tests/test_notebooks.py checks that the committed notebooks are its output). Edit here, rerun.
"""

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from helpers.kaggle import HELPERS_BOOTSTRAP  # noqa: E402

OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "notebooks"  # another folder: for the test

COMMON_PARAMS = '''\
DEMO = False               # True: generated shapes data and GloVe file, random CNN weights, CPU-sized; no downloads
DATA_DIR = None            # a folder in the Flickr8k layout; None: the attached Kaggle dataset, else kagglehub
WORK_DIR = None            # None: /kaggle/working on Kaggle; else the main job's runs/demo/work if it exists, else ./work
PRESET = None              # None | 'beginner' | 'kaggle_small_gpu' | 'research': backbone and model sizes
# Layers, later ones winning: the decoder config, DEMO's settings, the PRESET, then each setting below
# that is not None (None keeps the value of the layers before), then the widgets, then OVERRIDES.
DATASET = None             # 'flickr8k' (the config's) | 'flickr30k' | 'coco'
BACKBONE = None            # 'resnet50' (the config's) | 'resnet101' | 'regnet_x_400mf' | 'convnext_tiny' | 'swin_t'
PRETRAINED = None          # ImageNet weights for the backbone (True; DEMO: False, no download)
USE_GLOVE = None           # GloVe word vectors instead of random ones (True)
GLOVE_PATH = None          # glove.6B.300d.txt from the attached dataset, else kagglehub (DEMO: a generated file)
FREEZE_EMBEDDINGS = None   # keep the word vectors fixed while training (False)
EPOCHS = None              # the config's 10 (DEMO: 8)
BATCH_SIZE = None          # the backbone's recommended batch (resnet101 64, regnet 256, others 128; DEMO: 50)
# Extra config settings applied last, e.g. ["training.lr=5e-4", "model.hidden_dim=256"]
OVERRIDES = []'''

SETUP_MD = """## Setup
On Kaggle this installs `helpers` from the attached *captioning-helpers* dataset, on Colab from the
helpers wheel uploaded next to the notebook (`/content`), with what it requires: from the wheels beside
it (Internet off) or the registry (in the repository `pip install -e .` has installed it already). Then
it checks the requirements and the GPU, picks the work dir (it prints where the outputs go) and brings in
what earlier stages left there or in attached notebook outputs, so this notebook also runs on its own in a
fresh session. Feature stores in attached outputs are read where they are, never copied."""


def setup_code(runs=None):
    """The setup cell; `runs`: the glob of run folders to bring in from attached outputs (to resume)."""
    reuse = f"stages.reuse_earlier_outputs(env, runs={runs!r});" if runs else "stages.reuse_earlier_outputs(env);"
    return HELPERS_BOOTSTRAP + f'''
from helpers import notebook as nb, figures, tables, widgets, stages

env = nb.setup(WORK_DIR)
params = stages.parameters(globals())
{reuse}'''


SETUP = setup_code()

DEMO_NOTE = ("With `DEMO = True` (what `scripts/run_demo.sh` sets) everything runs on a generated dataset "
             "of coloured shapes in the Flickr8k layout, with no downloads, in minutes on a CPU.")


def notebook(cells, name):
    nb = new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    out = []
    for kind, text, *tags in cells:
        if kind == "md":
            out.append(new_markdown_cell(text))
        else:
            cell = new_code_cell(text)
            if tags:
                cell.metadata["tags"] = list(tags)
            out.append(cell)
    for number, cell in enumerate(out):
        cell.id = f"{name[:2]}-{number:02d}"  # stable ids: regenerating leaves unchanged cells unchanged
    nb.cells = out
    return nb


def params_cell(extra=""):
    return ("code", COMMON_PARAMS + (("\n" + extra) if extra else ""), "parameters")


def write(name, cells):
    path = OUT / f"{name}.ipynb"
    nbformat.write(notebook(cells, name), path)
    print("wrote", path)


write("00_data_prep", [
    ("md", f"""# 00 · Data preparation
From a Kaggle dataset (or a folder) to what every later stage trains on: the captions are parsed,
tokenized with the one tokenizer the suite uses, a vocabulary is built from the training split, and
the images are split into train / val / test: the Karpathy split papers report on (for Flickr8k the
official lists, which ship with the helpers; for Flickr30k and COCO attach `shtvkumar/karpathy-splits`),
or a seeded split by image with `OVERRIDES = ["data.split=seeded"]`. Everything is written once to
`WORK_DIR/data/<key>/` and reused by the next stages.

{DEMO_NOTE}"""),
    ("md", "## Parameters\nThe knobs of this notebook (papermill injects its values after this cell)."),
    params_cell(),
    ("md", SETUP_MD),
    ("code", SETUP),
    ("md", "## Choose the dataset\nThe default comes from the parameters (DEMO picks the generated one); only the "
           "`data` settings matter here, the decoder is picked in notebooks 03-06."),
    ("code", 'dataset = widgets.choose_dataset(stages.stage_config("LSTM", params, env).data.dataset)'),
    ("code", 'config = stages.stage_config("LSTM", params, env, dataset=dataset.value)\nprint(stages.describe(config))'),
    ("md", "## Prepare the dataset\nA second run with the same settings reuses the files at once; other settings "
           "get their own folder. It prints the split: images and captions per split, the vocabulary, and what "
           "was cut or left out."),
    ("code", "prepared = stages.prepare(config)"),
    ("md", "## How long are the captions?\nThe share of each split's captions per length in words, the splits "
           "side by side: similar bars mean val and test read like train. Captions longer than "
           "`max_caption_length` words are cut (the count is in the summary above)."),
    ("code", "figures.plot_caption_lengths(prepared);"),
    ("md", "## A few training images with their reference captions"),
    ("code", 'figures.show_captions(**stages.reference_samples(prepared, "train", count=6));'),
])

write("01_glove", [
    ("md", f"""# 01 · GloVe word vectors
Pretrained GloVe vectors give the decoder a head start on word meaning. This notebook finds
`glove.6B.300d.txt` (the attached Kaggle dataset, or a kagglehub download), builds the matrix for our
vocabulary (only those rows are parsed; the result is cached) and shows how much of the vocabulary
GloVe covers, which words it misses, and what it thinks our words are near.

{DEMO_NOTE} (The demo GloVe file is generated too.)"""),
    ("md", "## Parameters"),
    params_cell("COMPARE_EPOCHS = 0          # > 0: also train a short LSTM with random, frozen-GloVe and "
                "trainable-GloVe word vectors and score each"),
    ("md", SETUP_MD),
    ("code", SETUP),
    ("md", "## The vocabulary (from stage 00, or rebuilt now)\nPick the dataset whose vocabulary GloVe should cover."),
    ("code", 'dataset = widgets.choose_dataset(stages.stage_config("LSTM", params, env).data.dataset)'),
    ("code", 'config = stages.stage_config("LSTM", params, env, dataset=dataset.value, use_glove=True)\n'
             'prepared = stages.prepare(config)\nprint(stages.describe(config))'),
    ("md", "## Find the GloVe file and build the vocabulary's matrix"),
    ("code", "glove_path = stages.glove_file(config, prepared.vocab)\n"
             "matrix, coverage = stages.glove_matrix(glove_path, prepared.vocab, config.model.wordvec_dim)\n"
             "print(coverage.summary())"),
    ("md", "## Words GloVe does not know\nThese start from small random vectors and are learnt in training."),
    ("code", 'print(", ".join(coverage.missing[:60]) or "none")'),
    ("md", "## Nearest neighbours of a few frequent caption words (cosine similarity)"),
    ("code", "stages.neighbour_table(matrix, prepared.vocab, count=6)"),
    ("md", """## Optional: does GloVe help?
With `COMPARE_EPOCHS > 0`, the same LSTM trains for that many epochs with random word vectors, with
GloVe kept frozen and with GloVe fine-tuned, on the same features (extracted first where missing, and
reused by stage 02); each run is one progress line. The original notes claim GloVe trains faster: the
curves show the val CIDEr after every epoch, so a head start shows as a curve that starts higher. The
table gives each run's best epoch; *distinct captions* counts the different captions it wrote for the
val images (a model that writes one caption for every image has learnt the language, not the images).
The verdict compares the best run with each other one on the same val images: a difference smaller
than two standard errors of the per-image differences is below the noise of this data, and is none.
Frozen and trainable GloVe start from the same vectors and seed, and a few epochs move the trainable
vectors little: when both write the very same captions the verdict says so."""),
    ("code", "if COMPARE_EPOCHS:\n"
             "    comparison = stages.compare_embeddings(params, env, epochs=COMPARE_EPOCHS, dataset=dataset.value)\n"
             "    figures.plot_comparison(comparison.runs, comparison.per_word)\n"
             "    display(comparison.table())\n"
             "    print(comparison.verdict())"),
])

write("02_backbones", [
    ("md", f"""# 02 · Backbones: measure, choose, extract features
The CNN backbone turns each image into a grid of feature vectors. Here the candidates are measured on
this machine (no guesses: parameters, channels, feature-map shape, images/s, peak GPU memory, and the
size of the feature store for this dataset), one is chosen, and its features are extracted **once**
into a float16 feature store that the training notebooks read instead of running the CNN again.
Extraction is resumable: if the session ends, rerun and it continues where it stopped.

{DEMO_NOTE}"""),
    ("md", "## Parameters"),
    params_cell('# Backbones to measure\nCOMPARE = ["resnet50", "resnet101", "regnet_x_400mf", "convnext_tiny", "swin_t"]\n'
                "MEASURE_BATCHES = 3         # timed batches per backbone\n"
                "COMPARE_EPOCHS = 0          # > 0: also train a short LSTM on each compared backbone and score it"),
    ("md", SETUP_MD),
    ("code", SETUP),
    ("md", "## The data (from stage 00, or rebuilt now)"),
    ("code", 'config = stages.stage_config("LSTM", params, env)\nprepared = stages.prepare(config)'),
    ("md", "## The registry\nFrom torchvision's weights: parameters, GFLOPs per image and ImageNet top-1 accuracy of the "
           "pretrained weights; the feature map and the bytes one image takes in the default uint8 store "
           "(C x h x w codes plus a float16 offset and step per channel) at the weights' own image size."),
    ("code", "widgets.backbone_table()"),
    ("md", "## Pick the backbones to measure and the one to extract\nThe defaults come from the parameters, so *Run All* needs no clicks."),
    ("code", "compare = widgets.choose_backbones(COMPARE)\n"
             "chosen = widgets.choose_backbone(config.model.backbone, image_size=config.image_size)"),
    ("md", """## Measured on this machine
*images/s* is the median of the `MEASURE_BATCHES` timed batches. Where their times spread by more than
25% it reads *(noisy ±N%)*: something else was using the machine (on a CPU, often), and the figure is
no fact; *(measured once)* marks a single timed batch. *peak GPU memory* reads "-" without a GPU; the
*feature store* column is the store's size for this dataset."""),
    ("code", "stages.compare_backbones(compare.value, config, prepared, batches=MEASURE_BATCHES)"),
    ("md", "## Extract the feature store for the chosen backbone"),
    ("code", 'config = stages.stage_config("LSTM", params, env, backbone=chosen.value)\n'
             "store = stages.features(config, prepared)\nprint(stages.describe_store(store))"),
    ("md", """## Optional: caption quality per backbone
With `COMPARE_EPOCHS > 0`, the same LSTM trains for that many epochs on each compared backbone's
features (extracted first where missing), each run one progress line, and is scored on the val split:
the val CIDEr after every epoch, the table of best epochs, and a verdict that compares the best
backbone with each other one on the same val images, calling a difference below two standard errors
of the per-image differences no difference. A backbone whose features cannot be learnt from (its note
says why) is drawn dashed and left out of the verdict. *captions/s* is the median over epochs, marked
*(noisy ±N%)* where the epochs' speeds spread too far to be a fact."""),
    ("code", "if COMPARE_EPOCHS:\n"
             "    comparison = stages.compare_decoding(compare.value, params, env, epochs=COMPARE_EPOCHS)\n"
             "    figures.plot_comparison(comparison.runs, comparison.per_word)\n"
             "    display(comparison.table())\n"
             "    print(comparison.verdict())"),
])

DECODERS = {
    "03_train_vanilla_rnn": ("Vanilla_RNN", "Vanilla RNN", """The course module's first decoder: a tanh RNN whose
initial hidden state comes from the average-pooled image features. It sees the image only at the
start, and its gradients vanish over long captions: the baseline the others must beat.""", False),
    "04_train_lstm": ("LSTM", "LSTM", """An LSTM decoder (gates i, f, o, g as in the course module), trained with
torch's fused LSTM kernel. Its cell state carries information across the caption far better than the
vanilla RNN.""", False),
    "05_train_attention_lstm": ("Attention_LSTM", "Attention LSTM", """The LSTM looks at the whole feature grid at every
word: scaled dot-product attention of its hidden state over the grid's cells (one cell per 32 pixels
of the image on each side) gives a context vector (Show, Attend and Tell style). The attention maps at
the end show where it looked for each word, over this run's grid.""", True),
    "06_train_transformer": ("Transformer", "Transformer", """A Transformer decoder: masked self-attention over the
words so far, cross-attention over the image's feature grid, sinusoidal positions. The maps at the end
show where each word looked: the last layer's cross-attention, averaged over its heads.""", True),
}
# What each training notebook suggests next.
NEXT = {
    "03_train_vanilla_rnn": "04_train_lstm, the LSTM, whose cell state carries a caption's start to its end",
    "04_train_lstm": "05_train_attention_lstm, the LSTM that looks at the image's grid for every word",
    "05_train_attention_lstm": "06_train_transformer, attention over the words and over the image",
    "06_train_transformer": "07_results, every run in one table and the best model on your own image",
}

for name, (config_name, title, story, attention) in DECODERS.items():
    cells = [
        ("md", f"""# {name[:2]} · Train the {title} captioner
{story}

Training reads the feature store of stage 02 (the CNN stays frozen and never runs), resumes from the
last checkpoint if this run was interrupted, stops early when the validation CIDEr stops improving,
and is then scored on the test split with greedy and beam search (pycocoevalcap BLEU, ROUGE-L,
CIDEr-D, METEOR when Java is present). With `SCST = True` a self-critical phase follows: the best
weights sample captions and learn from their CIDEr-D against the training references (on two GPUs the
cross-entropy epochs train on both, the self-critical phase on one). On a GPU a preflight first runs
this run's GPU paths on a tiny batch, and stops in seconds with the setting to change if one fails.

{DEMO_NOTE}"""),
        ("md", "## Parameters"),
        params_cell("RESUME = True              # continue from the last checkpoint when there is one\n"
                    "# True: after the cross-entropy epochs, self-critical training on CIDEr-D (training.scst.*);\n"
                    "# its run folder is another (-scst-) and starts from this config's finished run when there is one\n"
                    "SCST = False\n"
                    "SESSION_HOURS = 11.0       # training pauses (last.pt saved) after this; Kaggle stops at 12 h\n"
                    "DEVICES = None             # None: every visible GPU (both T4s of \"GPU T4 x2\"); 1: one; "
                    "on the CPU, N processes\n"
                    "# Beam sizes to score the test split with (1 = greedy)\nBEAM_SIZES = [1, 3]\n"
                    "SAMPLES = 6                # test images shown with their captions"),
        ("md", SETUP_MD),
        ("code", setup_code(runs=f"{config_name}-*")),
        ("md", "## Choose\nA preset (the original project's recommended sizes), the backbone (with its "
               "measured facts) and the word-vector options, with their defaults from the parameters. The "
               "widgets follow each other (a preset sets the backbone and options) and show the config and "
               "run folder they make; every choice that changes what is trained has its own run folder, so "
               "runs with other choices are kept for notebook 07 to compare. After a change, run the cells "
               "below again."),
        ("code", f'choice = stages.choose_run("{config_name}", params, env)'),
        ("code", "config = choice.config"),
        ("md", "## Data and features (reused from stages 00 and 02 when present)"),
        ("code", "prepared, store = stages.data_for(config)"),
        ("md", """## The model
What training will update, as torch prints it (the CNN folded into one line: training reads its stored
features and never runs it), with its parameter counts, and where to read its code: the decoder's
class holds the step that turns a word and a state into the next state."""),
        ("code", "from helpers import anatomy\n\n"
                 "model = anatomy.untrained_model(config, prepared)\n"
                 "print(anatomy.describe_model(model, config.training.mode))\n"
                 "print(anatomy.code_location(model))"),
        ("md", """## One batch through it
The first four training captions, teacher forced: the decoder reads each caption up to its last word
(`captions_in`) and is scored on predicting it shifted by one (`captions_out`). The loss sums the
cross-entropy over a caption's words and averages over the captions, so it is also shown per word: an
untrained model knows nothing and scores about ln(vocabulary size) per word."""),
        ("code", "print(anatomy.one_batch(model, config, prepared, store))"),
        ("md", "## Train\nCheckpoints (`last.pt` every epoch and every few hundred steps, `best.pt` by val "
               "CIDEr) are written atomically to the run folder. When the session nears `SESSION_HOURS`, "
               "training pauses with `last.pt` saved and the notebook goes on with the best weights so "
               "far; run it again (attach this notebook's output) to continue where it stopped. The log prints each "
               "epoch's losses per caption (summed over its words); the curves below show them per word."),
        ("code", "result = stages.train(config, prepared, store, resume=None if RESUME else False,\n"
                 "                      hours_left=env.hours_left(SESSION_HOURS))"),
        ("md", "## Learning curves\nLoss per word (left) and the val scores after each epoch (right)."),
        ("code", "figures.plot_history(result.run_dir / \"history.json\", per_word=anatomy.per_word(prepared))\n"
                 "print(anatomy.loss_terms(config))"),
        ("md", "## Scores on val and test (greedy and beam search)\nThe training loop scored its best "
               "checkpoint with each of `BEAM_SIZES` at the end (and wrote them to `results.json`); "
               "`python -m helpers.evaluate RUN_DIR --beam-size N` scores other beam sizes later. In DEMO "
               "mode the 30 test images are too few to rank greedy and beam: on 600 fresh scenes and five "
               "training seeds, beam 3 scores 1% to 4% above greedy's CIDEr-D on average for every decoder "
               "(README, *Putting a score next to a paper's*)."),
        ("code", "stages.metrics_frame(result.results)"),
        ("md", "## Test images with their reference and generated captions"),
        ("code", 'figures.show_captions(**stages.sample_captions(result.run_dir, prepared, "test", count=SAMPLES));'),
    ]
    if attention:
        cells += [
            ("md", """## Where the model looked for each word
The test image whose greedy caption scored best and the one that scored worst (CIDEr-D of each image),
decoded again with their attention. Each panel is one generated word: the attention weights over the
feature grid, drawn over a grey copy of the image (clear where the model did not look; the grid's cells
are marked), with one colour bar for all. Above: the caption, a reference, and which grid and which
attention the maps are."""),
            ("code", "for sample in stages.attention_samples(result, prepared, store, config):\n"
                     "    figures.show_attention(**sample);"),
        ]
    cells += [
        ("md", "## Summary"),
        ("code", f"print(stages.run_summary(result, next_notebook={NEXT[name]!r}))"),
    ]
    write(name, cells)

write("07_results", [
    ("md", f"""# 07 · Results
Every run found in the work dir and in attached outputs of the training notebooks (read where they
are, never copied): first one table to read at a glance, then what its numbers say, the comparison
plotted, the best model's captions beside the references, the next step, and the best model
captioning your own image.

{DEMO_NOTE}"""),
    ("md", "## Parameters"),
    params_cell('SPLIT = "test"\nBEAM_SIZE = 3'),
    ("md", SETUP_MD),
    ("code", SETUP),
    ("md", """## The results at a glance
One row per run and beam size, scores x 100 as papers print them (BLEU-4 25.0), and the minutes each
run trained. **Full runs** are the training notebooks' own (03-06); **comparisons** are the short runs
of notebooks 01 and 02 (`COMPARE_EPOCHS`): fewer epochs, so they rank among themselves only. Each group
lists the best CIDEr first. Every column of every run is in the last section."""),
    ("code", "table = tables.results_table([env.work_dir, *env.input_dirs], split=SPLIT)\n"
             "tables.show_summary(table)"),
    ("md", """## What the numbers say
Written from the table above (`tables.findings`): each choice ranked by CIDEr at one beam size. A
difference under 5% of the score is called noise: the training seed alone moves the demo's CIDEr by
about that much, and one run per setting cannot measure its own spread."""),
    ("code", "tables.show_findings(table)"),
    ("md", """## The comparison plotted
A bar per run and beam size, coloured by decoder and labelled with its choices, epochs and beam size.
Hatched below the dashed line: the short comparison runs, which trained fewer epochs."""),
    ("code", "figures.plot_results(table);"),
    ("md", """## Side by side
Runs that differ in one choice only, next to each other (CIDEr): backbone against backbone, random
against GloVe against frozen GloVe word vectors, decoder against decoder. Each row is one setting of
all other choices; a choice with no such pair of runs says so. The short runs of notebooks 01 and 02
(`COMPARE_EPOCHS`) pair with each other."""),
    ("code", 'for choice in ("backbone", "embeddings", "decoder"):\n    tables.show_side_by_side(table, choice)'),
    ("md", """## The best model's captions beside the references
The best full run's captions of a few images of the split, as it was scored (each beam size), under
two of the captions people wrote for each image (grey): what the scores above measure."""),
    ("code", "best = stages.best_run(table)\n"
             "print(f\"best run: {best.name}\")\n"
             "figures.show_captions(**stages.scored_samples(best, count=3, split=SPLIT, work_dir=env.work_dir));"),
    ("md", """## Next step: Flickr8k on a GPU
The demo checks that every stage runs; its generated shapes rank nothing about photos. To rank the
choices on photos, run the suite on Flickr8k on Kaggle with `DEMO = False` (README, *On Kaggle, step by step*:
attach *Flickr8k*, *GloVe 6B 300d* and your *captioning-helpers*, accelerator **GPU T4 x2**): 00, then
01 and 02, then 03-06, then this notebook with their outputs attached.

What to expect. No Kaggle T4 has been measured yet, so these are bounds from BENCHMARKS.md, not T4
timings:

| step | measured (BENCHMARKS.md) | on a T4: estimate |
|---|---|---|
| feature store, 8,091 photos, ResNet50 (02) | 450 photos/s end to end on an H100; about 12 min on a 2-core CPU (§3) | between 18 s (8,091 / 450, the H100's rate) and 12 min (the CPU's) |
| one training epoch, 30,000 captions (03-06) | 2-core CPU: about 30 s vanilla RNN, 1 min LSTM, 14 min attention LSTM or Transformer (§6) | the GPU loop is not measured; the CPU times x 10 epochs (the configs' default) bound it: at most about 5 min, 10 min and 2.3 h of training, scoring not included |

Already on Flickr8k? Compare your `test beam 3` rows scored with the `ptb` tokenizer with the papers'
(README, *Putting a score next to a paper's*), then try `SCST = True` in a training notebook."""),
    ("md", """## Caption your own image
Upload one or more images: each is captioned by the best model at once, under its file name. The
button needs this notebook running (Jupyter, Kaggle, Colab); in a saved copy it cannot answer."""),
    ("code", "upload = widgets.upload_widget(stages.caption_uploads(best, beam_size=BEAM_SIZE))"),
    ("md", "## Share the best model as a Kaggle Model\nThe best run exported as a self-contained model folder "
           "(weights, config, vocabulary, decoding options and a model card with its test scores) and the "
           "`kagglehub.model_upload` call that makes it a Kaggle Model. Set your Kaggle user name, then "
           "uncomment the last line (Internet on, your Kaggle credentials). A notebook that attaches the "
           "model captions with `Captioner.load(handle).caption(images)`, Internet off."),
    ("code", 'KAGGLE_OWNER = "your-kaggle-name"\n'
             "from helpers import kaggle_models\n"
             "model_upload = kaggle_models.prepare_model_upload(best, KAGGLE_OWNER, env.work_dir)\n"
             "print(kaggle_models.describe(model_upload))\n"
             "# kaggle_models.upload_model(model_upload)"),
    ("md", """## Every column
The whole table: one row per run, split and beam size, every score and where the run is. The
`tokenizer` column says how captions were tokenized for scoring: `ptb` is the Java PTB tokenizer the
published figures use, `project` the suite's own (when Java was missing); compare runs scored the same
way, or rescore with `python -m helpers.evaluate RUN_DIR --tokenizer ptb`. A `status` of `paused` marks
a run whose session budget ran out: run its notebook again to finish it."""),
    ("code", "tables.show_every_column(table)"),
])
