"""Decoding a split and scoring it the way captioning papers do; `python -m helpers.evaluate RUN_DIR`.

`compute_metrics` wraps pycocoevalcap, the reference implementation papers report: BLEU-1..4,
ROUGE-L and CIDEr-D (CIDEr over the whole split in one call, since its document frequencies come
from the set being scored), plus METEOR when Java is on PATH, and SPICE on request where Java and
the Stanford CoreNLP jars it needs are present (they are never downloaded here). Captions are
tokenized either with the project's one tokenizer (`helpers.text.tokenize`, no Java) or, as the COCO
caption evaluation that papers report does, with pycocoevalcap's Java PTBTokenizer. Both split
clitics ("dog 's"); they differ on hyphenated words, decimal numbers and times. `evaluate_run`
decodes a trained run's best checkpoint and writes results.json, recording which tokenizer scored
each figure.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import difflib
import errno
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from helpers import distributed
from helpers.backbones import image_transform
from helpers.checkpoints import load_run
from helpers.config import DATA_SPLITS, ConfigError
from helpers.devices import resolve_device
from helpers.errors import INPUT_ERRORS
from helpers.features import ImageFeatureDataset
from helpers.files import WriteError, describe_write_error, write_json_atomic
from helpers.images import ImageDataset, image_loader
from helpers.text import END, NULL, START, caption_ids, tokenize
from helpers.workdir import prepared_and_features

METRIC_NAMES = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr")
# How every log, plot and table shows a metric: the papers' name, scores x 100 (BLEU-4 25.00).
METRIC_LABELS = {
    "Bleu_1": "BLEU-1",
    "Bleu_2": "BLEU-2",
    "Bleu_3": "BLEU-3",
    "Bleu_4": "BLEU-4",
    "METEOR": "METEOR",
    "ROUGE_L": "ROUGE-L",
    "CIDEr": "CIDEr",
    "SPICE": "SPICE",
}


def as_printed(score: float) -> str:
    """A score as papers print it: x 100, two decimals (0.2345 -> '23.45')."""
    return f"{100 * score:.2f}"
TOKENIZERS = ("project", "ptb")  # compute_metrics; configs and the command line also accept "auto"
METEOR_TIMEOUT_S = 600
# What pycocoevalcap's Spice downloads into its spice/lib folder at first use (Stanford CoreNLP 3.6.0,
# from the zip below, several hundred MB): SPICE parses captions into scene graphs with it.
SPICE_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
CORENLP_URL = "http://nlp.stanford.edu/software/stanford-corenlp-full-2015-12-09.zip"
_java_notices_shown: set[str] = set()


# ------------------------------------------------------------------------------------------- metrics


def _check_inputs(
    references: Mapping, hypotheses: Mapping, caller: str = "compute_metrics"
) -> tuple[dict, dict]:
    """{id: [refs]} and {id: [hyp]} as lists of strings; clear errors (naming `caller`) for bad inputs."""
    if not references:
        raise ValueError(f"{caller}: no references given (an empty split?).")
    missing = [key for key in references if key not in hypotheses]
    extra = [key for key in hypotheses if key not in references]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} ids have references but no hypothesis (e.g. {missing[:3]})")
        if extra:
            parts.append(f"{len(extra)} ids have a hypothesis but no references (e.g. {extra[:3]})")
        raise ValueError(
            f"{caller} needs the same ids in references and hypotheses: " + "; ".join(parts) + "."
        )
    gts, res = {}, {}
    for key, refs in references.items():
        if isinstance(refs, str) or not isinstance(refs, Sequence) or not refs:
            raise ValueError(f"{caller}: references[{key!r}] must be a non-empty list of captions.")
        hypothesis = hypotheses[key]
        if not isinstance(hypothesis, str):
            if isinstance(hypothesis, Sequence) and len(hypothesis) == 1 and isinstance(hypothesis[0], str):
                hypothesis = hypothesis[0]
            else:
                raise ValueError(
                    f"{caller}: hypotheses[{key!r}] must be exactly one caption string, "
                    f"got {hypothesis!r}."
                )
        gts[key] = list(refs)
        res[key] = [hypothesis]
    return gts, res


class JavaUnavailableError(RuntimeError):
    """A scorer that runs on Java (PTB tokenizer, METEOR when insisted on) found no `java`."""


class SpiceUnavailableError(RuntimeError):
    """SPICE was asked for where it cannot run (no Java, no Stanford CoreNLP jars); names what is missing."""


def spice_missing() -> list[str]:
    """What SPICE lacks here ([] when it can run): `java` on PATH, and the Stanford CoreNLP jars in
    pycocoevalcap's spice/lib folder, where its Spice looks for them (and downloads them when absent)."""
    import importlib.util

    lib = Path(importlib.util.find_spec("pycocoevalcap.spice").origin).parent / "lib"
    missing = [] if shutil.which("java") else ["`java` on PATH"]
    return missing + [str(lib / name) for name in SPICE_JARS if not (lib / name).is_file()]


def check_spice() -> None:
    """Raise SpiceUnavailableError naming what SPICE lacks and the fix, before any decoding."""
    missing = spice_missing()
    if missing:
        raise SpiceUnavailableError(
            f"SPICE cannot run here: it needs {' and '.join(missing)}. pycocoevalcap's SPICE downloads "
            f"Stanford CoreNLP 3.6.0 at first use ({CORENLP_URL}, several hundred MB), which this suite "
            "never does (Kaggle sessions often have no Internet). Fix: install Java (apt-get install -y "
            f"default-jre-headless) and put {' and '.join(SPICE_JARS)} from that zip into pycocoevalcap's "
            "spice/lib folder (named above; it must be writable, SPICE keeps a cache beside it), or score "
            "without SPICE. Without it you get BLEU-1..4, METEOR (with Java), ROUGE-L and CIDEr-D."
        )


def _spice(gts: dict, res: dict) -> float:
    """SPICE (pycocoevalcap, the COCO caption evaluation's) of the tokenized captions, or a clear error."""
    check_spice()
    from pycocoevalcap.spice.spice import Spice

    try:
        with _stderr_to_file() as java_said, contextlib.redirect_stdout(io.StringIO()):
            score, _ = Spice().compute_score(gts, res)
    except (OSError, subprocess.SubprocessError) as error:
        raise RuntimeError(f"SPICE failed ({error}; Java said: {' '.join(java_said)!r}).") from error
    return float(score)


def resolve_tokenizer(name: str) -> str:
    """"auto" -> "ptb" when `java` is on PATH (what papers report), else "project" with a notice.

    "ptb" without Java fails here, so a run that asks for it learns at the start, not after training.
    """
    if name not in (*TOKENIZERS, "auto"):
        raise ValueError(f"tokenizer must be 'auto', 'ptb' or 'project', got {name!r}.")
    java = shutil.which("java") is not None
    if name == "ptb" and not java:
        raise JavaUnavailableError(
            "the 'ptb' tokenizer runs pycocoevalcap's Java PTBTokenizer, but `java` is not on PATH: "
            "apt-get install -y default-jre-headless, or score with the 'project' tokenizer."
        )
    if name != "auto":
        return name
    if not java:
        _java_notice("PTB tokenization", "java is not on PATH; the project tokenizer scores instead")
        return "project"
    return "ptb"


@contextlib.contextmanager
def _stderr_to_file():
    """Point file descriptor 2 at a temporary file while a child process (the JVM) inherits it, so
    its chatter never reaches the terminal or notebook; yields a list that gets what it wrote."""
    import tempfile

    said: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            said.append(captured.read().decode("utf-8", "replace").strip())


def _tokenized(gts: dict, res: dict, tokenizer: str) -> tuple[dict, dict]:
    """Both sides tokenized the same way and space-joined, as pycocoevalcap's scorers expect."""
    if tokenizer == "project":
        def join(captions):
            return [" ".join(tokenize(caption)) for caption in captions]

        return {k: join(v) for k, v in gts.items()}, {k: join(v) for k, v in res.items()}
    if tokenizer != "ptb":
        raise ValueError(f"tokenizer must be 'project' or 'ptb', got {tokenizer!r}.")
    resolve_tokenizer("ptb")  # Java present, or a clear error
    # pycocoevalcap is imported where it scores: Kaggle's image lacks it, and a notebook imports
    # helpers before helpers.deps has installed it.
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # One caption per line for the JVM: any line break (\r too) inside a caption would shift the ids.
    def entries(captions_by_id):
        return {k: [{"caption": " ".join(c.split())} for c in v] for k, v in captions_by_id.items()}

    tokenized = []
    for captions_by_id in (gts, res):
        try:
            with _stderr_to_file() as java_said:  # the JVM's "PTBTokenizer tokenized N tokens" lines
                output = PTBTokenizer().tokenize(entries(captions_by_id))
        except (OSError, subprocess.SubprocessError) as error:
            raise RuntimeError(
                f"pycocoevalcap's PTBTokenizer failed ({error}; Java said: {' '.join(java_said)!r}); it "
                "writes a temporary file next to its jar, so the pycocoevalcap install must be writable. "
                "Use tokenizer='project' otherwise."
            ) from error
        counts = [len(output.get(k, ())) for k in captions_by_id]
        if counts != [len(v) for v in captions_by_id.values()]:
            raise RuntimeError(
                "pycocoevalcap's PTBTokenizer returned fewer captions than it was given (did the JVM "
                "fail? run `java -version`). Use tokenizer='project' to score without Java."
            )
        tokenized.append(output)
    return tokenized[0], tokenized[1]


def compute_metrics(
    references: Mapping[Hashable, Sequence[str]],
    hypotheses: Mapping[Hashable, str],
    meteor: bool | str = "auto",
    tokenizer: str = "project",
    spice: bool = False,
) -> dict[str, float]:
    """Corpus metrics of one hypothesis per id against its references (pycocoevalcap).

    Returns Bleu_1..Bleu_4, ROUGE_L, CIDEr (CIDEr-D) and, when Java runs, METEOR. `meteor`: "auto"
    scores METEOR when `java` is on PATH (a one-line notice otherwise), False skips it, True insists
    (RuntimeError without Java). `tokenizer`: "project" (`helpers.text.tokenize`, no Java) or "ptb"
    (pycocoevalcap's Java PTBTokenizer on both sides, as the COCO caption evaluation behind
    published figures does). `spice`: also SPICE, which needs Java and the Stanford CoreNLP jars
    (SpiceUnavailableError naming what is missing, checked before anything is scored).
    """
    if spice:
        check_spice()
    from pycocoevalcap.bleu.bleu import Bleu  # imported here: see _tokenized
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if meteor not in ("auto", True, False):
        raise ValueError(f"meteor must be 'auto', True or False, got {meteor!r}.")
    gts, res = _tokenized(*_check_inputs(references, hypotheses), tokenizer)
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its n-gram counts
        bleu, _ = Bleu(4).compute_score(gts, res)
        rouge, _ = Rouge().compute_score(gts, res)
        cider, _ = Cider().compute_score(gts, res)
    metrics = {f"Bleu_{n}": float(score) for n, score in enumerate(bleu, start=1)}
    metrics["ROUGE_L"] = float(rouge)
    metrics["CIDEr"] = float(cider)
    if meteor:
        score = _meteor(gts, res, required=meteor is True)
        if score is not None:
            metrics["METEOR"] = score
    if spice:
        metrics["SPICE"] = _spice(gts, res)
    return metrics


def per_image_cider(
    references: Mapping[Hashable, Sequence[str]],
    hypotheses: Mapping[Hashable, str],
    tokenizer: str = "project",
) -> dict[Hashable, float]:
    """Each image's CIDEr-D from one pycocoevalcap call over all of them (document frequencies from the
    whole set, so the mean is compute_metrics' CIDEr): for paired comparisons of two decodings."""
    from pycocoevalcap.cider.cider import Cider

    gts, res = _tokenized(*_check_inputs(references, hypotheses, "per_image_cider"), tokenizer)
    _, scores = Cider().compute_score(gts, res)  # in the order of gts' keys
    return {name: float(score) for name, score in zip(gts, scores)}


def _java_notice(what: str, reason: str) -> None:
    """One line per process and topic: what Java would add, and how to get it."""
    if what not in _java_notices_shown:
        print(f"{what}: {reason} (apt-get install -y default-jre-headless to enable it).")
        _java_notices_shown.add(what)


_meteor_scorer = None


def _close_meteor() -> None:
    """Stop the METEOR JVM (at exit, or after it failed)."""
    global _meteor_scorer
    scorer, _meteor_scorer = _meteor_scorer, None
    if scorer is not None:
        scorer.meteor_p.kill()
        scorer.meteor_p.wait()
        # Meteor.__del__ takes this lock; a scorer that failed mid-call still holds it.
        if scorer.lock.locked():
            scorer.lock.release()


def _meteor(gts: dict, res: dict, required: bool) -> float | None:
    """METEOR 1.5 via pycocoevalcap's Java scorer, or None (with a notice) when it cannot run.

    The JVM takes seconds to start and load its paraphrase table, so one scorer serves every call
    of the process (stopped at exit).
    """
    global _meteor_scorer
    if shutil.which("java") is None:
        if required:
            raise JavaUnavailableError(
                "METEOR needs `java` on PATH; apt-get install -y default-jre-headless or pass meteor=False."
            )
        _java_notice("METEOR skipped", "java is not on PATH")
        return None
    from pycocoevalcap.meteor.meteor import Meteor

    outcome: dict[str, Any] = {}
    try:
        if _meteor_scorer is None:
            _meteor_scorer = Meteor()
            atexit.register(_close_meteor)
        scorer = _meteor_scorer

        def run() -> None:
            try:
                outcome["score"] = float(scorer.compute_score(gts, res)[0])
            except Exception as error:  # a JVM that dies mid-way closes the pipe: ValueError on ''
                outcome["error"] = error

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        worker.join(METEOR_TIMEOUT_S)
        if worker.is_alive():
            outcome["error"] = TimeoutError(f"no answer from the METEOR JVM in {METEOR_TIMEOUT_S} s")
    except OSError as error:
        outcome["error"] = error
    if "error" in outcome:
        _close_meteor()
        if required:
            raise RuntimeError(f"METEOR failed: {outcome['error']}")
        _java_notice("METEOR skipped", f"the METEOR scorer failed ({outcome['error']})")
        return None
    return outcome["score"]


# ------------------------------------------------------------------------------------------ decoding


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def decode_split(
    model,
    source,
    split: str,
    beam_size: int = 1,
    max_length: int | None = None,
    batch_size: int = 64,
    max_images: int | None = None,
    image_size: int | None = None,
    num_workers: int | None = None,
    decoding: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Caption every image of `split`: {filename: caption}. Under several devices
    (helpers.distributed) each captions its share and every one gets all captions.

    `source` is a FeatureStore (the decoder reads the stored features) or a PreparedDataset (images
    pass through the model's CNN, as in fine-tuned runs). Word ids are read with the model's own
    vocabulary (the checkpoint's), never the prepared data's, which may have changed since it was
    trained. `max_length` defaults to the prepared max caption length, or 20.
    `max_images` decodes only the first N images (quick validation); `image_size` is the crop side
    for images (default: the backbone's); `num_workers` image-decoding workers (default: by CPU count).
    `decoding`: further options of the model's sample() (a config's `decoding`).
    """
    device = _model_device(model)
    batches = _split_batches(model, source, split, batch_size, max_images, image_size, num_workers, device)
    if not hasattr(source, "features"):  # a PreparedDataset
        max_length = max_length or source.max_caption_length
    idx_to_word = model.idx_to_word
    end = model.word_to_idx[END]
    skipped = {model.word_to_idx[NULL], model.word_to_idx[START]}
    max_length = max_length or 20
    captions: dict[str, str] = {}
    for inputs, names in batches:
        output = model.sample(
            inputs.to(device), max_length=max_length, beam_size=beam_size, **(decoding or {})
        )
        tokens = output[0] if isinstance(output, tuple) else output
        for name, row in zip(names, tokens.tolist()):
            captions[name] = " ".join(idx_to_word[idx] for idx in caption_ids(row, end, skipped))
    return dict(distributed.gather(list(captions.items())))  # every device's, in split order


def _split_batches(model, source, split: str, batch_size: int, max_images: int | None,
                   image_size: int | None, num_workers: int | None, device: torch.device):
    """(inputs, file names) batches of this device's share of `split` (all of it on one device):
    stored features from a FeatureStore, else uint8 image crops for the model's CNN."""
    if hasattr(source, "features"):  # a FeatureStore
        dataset = _first(ImageFeatureDataset(source, split), max_images)
        shard = torch.utils.data.Subset(dataset, distributed.shard_range(len(dataset)))
        loader = DataLoader(shard, batch_size=batch_size, shuffle=False)
        return ((inputs, list(names)) for inputs, names in loader)
    names_all = list(source.splits[split])[: max_images or None]
    part = distributed.shard_range(len(names_all))
    names_all = names_all[part.start : part.stop]
    transform = image_transform(model.backbone, image_size, torch.uint8)
    dataset = ImageDataset(names_all, transform, image_dir=source.image_dir)
    loader = image_loader(dataset, batch_size=batch_size, num_workers=num_workers, device=device)
    return (
        (batch.images, [names_all[i] for i in batch.indices.tolist()])
        for batch in loader
        if batch.images is not None
    )


def _first(dataset, count: int | None):
    if count is None or count >= len(dataset):
        return dataset
    return torch.utils.data.Subset(dataset, range(count))


# ------------------------------------------------------------------------------------- run evaluation


def vocabulary_record(idx_to_word: Sequence[str] | Mapping[int, str]) -> dict[str, Any]:
    """{"words": size, "sha256": digest of the words in id order}: which vocabulary a row was decoded
    with (two rows decoded by other vocabularies are not comparable)."""
    words = [idx_to_word[i] for i in range(len(idx_to_word))]
    digest = hashlib.sha256("\n".join(words).encode("utf-8")).hexdigest()
    return {"words": len(words), "sha256": digest[:16]}


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Total, trainable, CNN (image_encoder) and decoder parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    encoder = sum(p.numel() for p in model.image_encoder.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "encoder": encoder, "decoder": total - encoder}


def score_model(
    model,
    prepared,
    store,
    splits: Sequence[str],
    beam_sizes: Sequence[int],
    max_length: int | None = None,
    batch_size: int = 64,
    meteor: bool | str = "auto",
    progress: bool = True,
    image_size: int | None = None,
    tokenizer: str = "auto",
    decoding: Mapping[str, Any] | None = None,
    spice: bool = False,
) -> tuple[dict, dict, dict]:
    """Metrics {split: {"beam<k>": metrics}}, the captions {split: {"beam<k>": {file: caption}}} and
    how each was decoded and scored {split: {"beam<k>": `_how_decoded`'s record}}.

    Without a feature store the images pass through the model's CNN at `image_size`. `tokenizer`:
    "auto" (PTB when Java is on PATH, as papers score), "ptb" or "project". `decoding`: the options of
    the model's sample() (a config's `decoding`: length penalty, n-gram blocking, <UNK> masking).
    Under several devices each decodes its share and rank 0 alone scores (one METEOR JVM, not one per
    device), handing every rank the same figures.
    """
    source = store if store is not None else prepared
    tokenizer = resolve_tokenizer(tokenizer)
    max_length = max_length or prepared.max_caption_length
    vocabulary = vocabulary_record(model.idx_to_word)
    metrics: dict[str, dict[str, dict[str, float]]] = {}
    captions: dict[str, dict[str, dict[str, str]]] = {}
    scoring: dict[str, dict[str, dict[str, Any]]] = {}
    for split in splits:
        references = prepared.references(split)
        metrics[split], captions[split], scoring[split] = {}, {}, {}
        for beam in beam_sizes:
            started = time.perf_counter()
            hypotheses = decode_split(model, source, split, beam_size=beam, decoding=decoding,
                                      batch_size=batch_size, max_length=max_length, image_size=image_size)
            scores = distributed.from_main(
                compute_metrics, {k: references[k] for k in hypotheses}, hypotheses, meteor=meteor,
                tokenizer=tokenizer, spice=spice,
            )
            metrics[split][f"beam{beam}"] = scores
            captions[split][f"beam{beam}"] = hypotheses
            scoring[split][f"beam{beam}"] = _how_decoded(
                f"{split} beam {beam}", hypotheses, tokenizer, vocabulary,
                {"beam_size": beam, "max_length": max_length, **(decoding or {})},
            )
            if progress:
                print(
                    f"{split} beam {beam}: BLEU-4 {as_printed(scores['Bleu_4'])}  "
                    f"CIDEr {as_printed(scores['CIDEr'])}  "
                    f"({len(hypotheses)} images, {tokenizer} tokenizer, "
                    f"{time.perf_counter() - started:.1f} s)"
                )
    return metrics, captions, scoring


def _how_decoded(row: str, hypotheses: dict[str, str], tokenizer: str, vocabulary: dict,
                 decoding: dict) -> dict[str, Any]:
    """A results.json row's record of how it was decoded and scored; empty captions (which score 0)
    counted, and warned about with the settings that avoid them."""
    empty = sum(not caption for caption in hypotheses.values())
    if empty and distributed.rank() == 0:
        print(
            f"warning: {row}: {empty} of {len(hypotheses)} captions are empty and score 0. Raise "
            "training.eval_min_length (words before a caption may end; default 3) or "
            "training.eval_length_penalty, or use a narrower beam.", file=sys.stderr,
        )
    return {"tokenizer": tokenizer, "images": len(hypotheses), "empty_captions": empty, "decoding": decoding,
            "vocabulary": vocabulary}


def evaluate_run(
    run_dir: str | os.PathLike,
    split: str | Sequence[str] = "test",
    beam_sizes: Sequence[int] = (1, 3),
    prepared=None,
    store=None,
    device: str | torch.device | None = None,
    meteor: bool | str = "auto",
    progress: bool = True,
    tokenizer: str | None = None,
    checkpoint_name: str = "best",
    spice: bool = False,
    results_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Score a run's best.pt (or `checkpoint_name`.pt, e.g. "last"; last.pt when no epoch was validated
    yet) on `split` with each beam size and merge the figures into results.json (the run folder's, or
    `results_path`: for a read-only run folder, such as an attached Kaggle output).

    The prepared data and the feature store are rebuilt from the run's config (cached in its work
    dir) unless given. `tokenizer` defaults to the run's training.metric_tokenizer. `spice`: SPICE too,
    where Java and the Stanford CoreNLP jars are present (else SpiceUnavailableError, before any work).
    Returns the results dict that was written.
    """
    if spice:
        check_spice()
    run_dir = Path(run_dir)
    splits = [split] if isinstance(split, str) else list(split)
    check_split_names(splits)
    results_path = _writable_results_path(run_dir, results_path)
    device = resolve_device(device or "auto")
    which = checkpoint_name
    if which == "best" and run_dir.is_dir() and not (run_dir / "best.pt").is_file() and (
        run_dir / "last.pt"
    ).is_file():
        which = "last"  # no epoch was validated yet (say its scoring failed): score what was trained
        print(f"{run_dir} has no best.pt yet: scoring last.pt.")
    model, checkpoint, config = load_run(run_dir, device=device, which=which)
    tokenizer = resolve_tokenizer(tokenizer or config.training.metric_tokenizer)
    prepared, store = prepared_and_features(config, prepared, store, device=device)
    _check_data(run_dir, checkpoint, prepared, splits)
    metrics, captions, scoring = score_model(
        model,
        prepared,
        store if config.training.mode == "features" else None,
        splits,
        beam_sizes,
        max_length=config.data.max_caption_length,
        meteor=meteor,
        progress=progress,
        image_size=config.image_size,
        tokenizer=tokenizer,
        decoding=config.decoding,
        spice=spice,
    )
    return write_results(run_dir, model, config, checkpoint, metrics, captions, device, scoring,
                         path=results_path)


def _check_data(run_dir: Path, checkpoint: dict, prepared, splits: Sequence[str]) -> None:
    """Every split to score has images; a note when the captions changed since training (the model
    still decodes with its own vocabulary, decode_split's rule)."""
    if list(checkpoint["vocab"]) != prepared.vocab.idx_to_word:
        print(
            f"note: the captions changed since {run_dir.name} was trained ({len(checkpoint['vocab']):,} -> "
            f"{len(prepared.vocab):,} words): it decodes with its own vocabulary and is scored against "
            "today's references."
        )
    empty = [name for name in splits if not prepared.splits.get(name)]
    if empty:
        names = ", ".join(empty)
        raise ConfigError(f"{prepared.root}: the split {names} has no images; score another split.")


def _writable_results_path(run_dir: Path, results_path: str | os.PathLike | None) -> Path:
    """Where results.json goes, refused before any decoding where it cannot be written (scores computed
    for nothing would be lost)."""
    path = Path(results_path) if results_path is not None else run_dir / "results.json"
    if results_path is None and not run_dir.is_dir():
        return path  # no run folder: loading it says so
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, probe = tempfile.mkstemp(dir=path.parent, prefix=".results-probe-")
        os.close(descriptor)
        os.unlink(probe)
    except OSError as error:
        if results_path is not None:
            raise WriteError(describe_write_error(path, error)) from None
        why = "is on a read-only file system" if error.errno == errno.EROFS else "cannot be written"
        raise WriteError(
            f"{path.parent} {why} (an attached Kaggle output is read-only), so its results.json cannot be "
            f"written; nothing was decoded. Write the scores elsewhere: python -m helpers.evaluate "
            f"{run_dir} --results /kaggle/working/{run_dir.name}/results.json (Python: evaluate_run(..., "
            "results_path=...)); the rows already in its results.json are carried over."
        ) from None
    return path


def check_split_names(splits: Sequence[str]) -> None:
    """Every name is a split that prepared data has (train, val, test), or ConfigError with the closest."""
    for name in splits:
        if name not in DATA_SPLITS:
            close = difflib.get_close_matches(name, DATA_SPLITS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown split {name!r}.{hint} The splits are {', '.join(DATA_SPLITS)}.")


def write_results(
    run_dir: Path,
    model,
    config,
    checkpoint: dict,
    metrics: dict,
    captions: dict,
    device,
    scoring: dict | None = None,
    status: str | None = None,
    path: str | os.PathLike | None = None,
) -> dict:
    """Merge metrics, captions and how they were scored into <run_dir>/results.json, or `path` (earlier
    splits and beams are kept, starting from the run folder's when `path` is new). `status`
    ("finished", or "paused" when training.max_hours ran out) is written by the training loop; a
    later rescoring keeps it."""
    path = Path(path) if path is not None else Path(run_dir) / "results.json"
    earlier = path if path.is_file() else Path(run_dir) / "results.json"
    results = json.loads(earlier.read_text(encoding="utf-8")) if earlier.is_file() else {}
    # best.pt's history stops at the best epoch; history.json has every epoch trained.
    history_path = Path(run_dir) / "history.json"
    history = (
        json.loads(history_path.read_text(encoding="utf-8"))
        if history_path.is_file()
        else checkpoint.get("history", [])
    )
    results.update(
        {
            "run_name": Path(run_dir).name,
            "config": config.to_dict(),
            "vocab_size": len(model.word_to_idx),
            "epochs": len(history),
            "best_epoch": checkpoint.get("best_epoch"),
            "best_val": checkpoint.get("best_metrics"),
            "train_wall_time_s": checkpoint.get("wall_time_s"),
            "device": _device_name(device),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "parameters": parameter_counts(model),
            "history": history,
        }
    )
    if status is not None:
        results["status"] = status
    for split, by_beam in metrics.items():
        results.setdefault("metrics", {}).setdefault(split, {}).update(by_beam)
    for split, by_beam in captions.items():
        results.setdefault("captions", {}).setdefault(split, {}).update(by_beam)
    for split, by_beam in (scoring or {}).items():
        results.setdefault("scoring", {}).setdefault(split, {}).update(by_beam)
    write_json_atomic(path, results)
    return results


def _device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "mps":
        return "mps (Apple GPU)"
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def format_metrics_table(metrics: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """A small markdown table: one row per split and beam size, scores as papers print them."""
    names = [
        n for n in (*METRIC_NAMES, "METEOR", "SPICE")
        if any(n in m for b in metrics.values() for m in b.values())
    ]
    labels = [METRIC_LABELS[n] for n in names]
    lines = ["| split | beam | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(names)]
    for split, by_beam in metrics.items():
        for beam, scores in by_beam.items():
            cells = " | ".join(as_printed(scores[n]) if n in scores else "-" for n in names)
            lines.append(f"| {split} | {beam.removeprefix('beam')} | {cells} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.evaluate",
        description="Score a trained run (its best.pt) and write results.json into the run folder.",
    )
    parser.add_argument("run_dir", help="the run folder written by python -m helpers.train")
    parser.add_argument(
        "--split", action="append", help="split to score: train, val or test (repeatable, or val,test; "
        "default test)"
    )
    parser.add_argument(
        "--beam-size", type=int, action="append", help="beam size (repeatable; default 1 and 3)"
    )
    parser.add_argument(
        "--checkpoint", choices=("best", "last"), default="best",
        help="which weights to score: best.pt (best val CIDEr, default) or last.pt",
    )
    parser.add_argument(
        "--results", metavar="FILE",
        help="write results.json here instead of into the run folder (for a read-only run folder, such "
        "as an attached Kaggle output); its earlier rows are carried over",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--no-meteor", action="store_true", help="skip METEOR even when Java is available")
    parser.add_argument(
        "--spice", action="store_true",
        help="also score SPICE (needs Java, and Stanford CoreNLP 3.6.0's two jars in pycocoevalcap's "
        "spice/lib; never downloaded here)",
    )
    parser.add_argument(
        "--tokenizer",
        choices=("auto", *TOKENIZERS),
        help="how captions are tokenized for scoring: ptb (Java, as papers), project, or auto (ptb "
        "when Java is on PATH); default: the run's training.metric_tokenizer",
    )
    args = parser.parse_args(argv)
    try:
        if any(beam < 1 for beam in args.beam_size or ()):
            raise ValueError(f"--beam-size must be at least 1, got {args.beam_size}.")
        results = evaluate_run(
            args.run_dir,
            split=[name for given in args.split or ["test"] for name in given.split(",") if name],
            beam_sizes=args.beam_size or (1, 3),
            device=args.device,
            meteor=False if args.no_meteor else "auto",
            tokenizer=args.tokenizer,
            checkpoint_name=args.checkpoint,
            spice=args.spice,
            results_path=args.results,
        )
    except (*INPUT_ERRORS, JavaUnavailableError, SpiceUnavailableError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"\n{results['run_name']}: best epoch {results['best_epoch']} of {results['epochs']}")
    print(format_metrics_table(results["metrics"]))
    print(f"results: {args.results or Path(args.run_dir) / 'results.json'}")
    return 0


if __name__ == "__main__":
    # Run the importable module's main, not this __main__ copy, so that one JavaUnavailableError class
    # exists: the one helpers.train (which imports helpers.evaluate) also raises and catches.
    from helpers import evaluate

    sys.exit(evaluate.main())
