"""compute_metrics against direct pycocoevalcap calls and hand-checked values."""

from __future__ import annotations

import contextlib
import csv
import io
import math
import shutil
from pathlib import Path

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

import helpers.evaluate as evaluate
from helpers.evaluate import compute_metrics, format_metrics_table, per_image_cider

# Raw text as users and datasets write it (capitals, punctuation, apostrophes) ...
REFERENCES = {
    "dog.jpg": ["A black dog runs across the grass.", "The dog is running on a lawn", "a dog, running"],
    "beach.jpg": ["Two children play on the beach .", "kids playing in the sand near the sea"],
    "bike.jpg": ["A man rides a red bike down the street.", "A cyclist on a city road", "man's bike is red"],
    "cat.jpg": ["a cat sleeps on a sofa", "A grey cat is sleeping on the couch."],
}
HYPOTHESES = {
    "dog.jpg": "A dog runs on the grass.",
    "beach.jpg": "Two kids play in the sand.",
    "bike.jpg": "a man riding a bike on the street",
    "cat.jpg": "A cat is sleeping on a couch",
}
# ... and the same captions tokenized by hand (lowercase, punctuation removed, clitics split as PTB does).
TOKENIZED_REFERENCES = {
    "dog.jpg": ["a black dog runs across the grass", "the dog is running on a lawn", "a dog running"],
    "beach.jpg": ["two children play on the beach", "kids playing in the sand near the sea"],
    "bike.jpg": ["a man rides a red bike down the street", "a cyclist on a city road", "man 's bike is red"],
    "cat.jpg": ["a cat sleeps on a sofa", "a grey cat is sleeping on the couch"],
}
TOKENIZED_HYPOTHESES = {
    "dog.jpg": ["a dog runs on the grass"],
    "beach.jpg": ["two kids play in the sand"],
    "bike.jpg": ["a man riding a bike on the street"],
    "cat.jpg": ["a cat is sleeping on a couch"],
}


def test_equals_a_direct_pycocoevalcap_call_on_a_fixed_case():
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(TOKENIZED_REFERENCES, TOKENIZED_HYPOTHESES)
        rouge, _ = Rouge().compute_score(TOKENIZED_REFERENCES, TOKENIZED_HYPOTHESES)
        cider, _ = Cider().compute_score(TOKENIZED_REFERENCES, TOKENIZED_HYPOTHESES)
    metrics = compute_metrics(REFERENCES, HYPOTHESES, meteor=False)
    assert set(metrics) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"}
    for n in range(4):
        assert metrics[f"Bleu_{n + 1}"] == bleu[n]
    assert metrics["ROUGE_L"] == rouge
    assert metrics["CIDEr"] == cider
    assert 0.1 < metrics["Bleu_4"] < metrics["Bleu_1"] < 1  # a real, non-degenerate case


def test_cider_is_computed_over_the_whole_split_in_one_call():
    # CIDEr's document frequencies come from the whole set: per-image calls would give other numbers.
    whole = compute_metrics(REFERENCES, HYPOTHESES, meteor=False)["CIDEr"]
    one_at_a_time = [
        compute_metrics({k: REFERENCES[k]}, {k: HYPOTHESES[k]}, meteor=False)["CIDEr"] for k in REFERENCES
    ]
    assert one_at_a_time == [0.0] * 4  # a single image scores 0 (FACTS.md)
    assert whole > 0.5


def test_identical_hypothesis_and_references_score_one():
    references = {1: ["a red circle on the left"], 2: ["two shapes side by side"]}
    metrics = compute_metrics(
        references, {1: "A red circle, on the left.", 2: "Two shapes side by side"}, False
    )
    for n in range(1, 5):
        assert metrics[f"Bleu_{n}"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["ROUGE_L"] == pytest.approx(1.0)


def test_bleu_1_with_brevity_penalty_by_hand():
    # 2 of 2 hypothesis words match (precision 1), but 2 words against a 3-word reference:
    # brevity penalty exp(1 - 3/2).
    metrics = compute_metrics({"x": ["a cat sat"]}, {"x": "a cat"}, meteor=False)
    assert metrics["Bleu_1"] == pytest.approx(math.exp(1 - 3 / 2), rel=1e-6)


def test_mismatched_ids_are_a_clear_error():
    with pytest.raises(ValueError, match=r"1 ids have references but no hypothesis \(e.g. \['cat.jpg'\]\)"):
        compute_metrics(REFERENCES, {k: v for k, v in HYPOTHESES.items() if k != "cat.jpg"}, meteor=False)
    with pytest.raises(ValueError, match=r"1 ids have a hypothesis but no references \(e.g. \['new.jpg'\]\)"):
        compute_metrics(REFERENCES, {**HYPOTHESES, "new.jpg": "a thing"}, meteor=False)


def test_exactly_one_hypothesis_per_id():
    with pytest.raises(ValueError, match="must be exactly one caption string"):
        compute_metrics({"a": ["x y"]}, {"a": ["x y", "y x"]}, meteor=False)
    assert compute_metrics({"a": ["x y"]}, {"a": ["x y"]}, meteor=False)["Bleu_1"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="must be a non-empty list"):
        compute_metrics({"a": "x y"}, {"a": "x y"}, meteor=False)
    with pytest.raises(ValueError, match="no references"):
        compute_metrics({}, {}, meteor=False)


def test_meteor_without_java_prints_one_notice_and_never_crashes(monkeypatch, capsys):
    monkeypatch.setattr(evaluate.shutil, "which", lambda name: None)
    monkeypatch.setattr(evaluate, "_java_notices_shown", set())
    first = compute_metrics(REFERENCES, HYPOTHESES)
    second = compute_metrics(REFERENCES, HYPOTHESES)
    assert "METEOR" not in first and "METEOR" not in second
    out = capsys.readouterr().out
    assert out.count("METEOR skipped: java is not on PATH") == 1
    with pytest.raises(RuntimeError, match="METEOR needs `java`"):
        compute_metrics(REFERENCES, HYPOTHESES, meteor=True)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs Java")
def test_meteor_with_java():
    metrics = compute_metrics(REFERENCES, HYPOTHESES, meteor=True)
    assert 0.2 < metrics["METEOR"] < 1
    assert compute_metrics({"x": ["a cat sat on the mat"]}, {"x": "a cat sat on the mat"})["METEOR"] > 0.9


# Hyphens, decimals and brackets: where the papers' PTB tokenizer and the project's differ. Both split
# clitics ("dog 's", "do n't"), so the hypotheses' "dogs" and "dont" match under neither.
PTB_REFERENCES = {
    "dog.jpg": ["A dog's ball is red-and-white.", "The black-and-white dog runs", "a dog, running"],
    "kids.jpg": ["Two kids don't play in the snow", "Kids (wearing hats) stand on a 3.5 ft. wall"],
    "man.jpg": ["A man's bike is red.", "A cyclist on a city road"],
}
PTB_HYPOTHESES = {
    "dog.jpg": "a dogs ball is red and white",
    "kids.jpg": "two kids dont play",
    "man.jpg": "a mans bike",
}


def test_per_image_cider_is_pycocoevalcaps_per_image_scores_with_the_corpus_mean():
    """One score per image, each pycocoevalcap's for that image scored with the whole set (CIDEr-D's
    document frequencies come from all references), so they average to compute_metrics' CIDEr."""
    with contextlib.redirect_stdout(io.StringIO()):
        _, expected = Cider().compute_score(TOKENIZED_REFERENCES, TOKENIZED_HYPOTHESES)
    scores = per_image_cider(REFERENCES, HYPOTHESES)
    assert list(scores) == list(REFERENCES)
    assert [scores[name] for name in TOKENIZED_REFERENCES] == pytest.approx(list(expected), abs=1e-12)
    assert math.fsum(scores.values()) / len(scores) == pytest.approx(
        compute_metrics(REFERENCES, HYPOTHESES, meteor=False)["CIDEr"], abs=1e-12
    )
    assert len(set(scores.values())) == len(scores)  # a real case: four different scores
    alone = per_image_cider({"dog.jpg": REFERENCES["dog.jpg"]}, {"dog.jpg": HYPOTHESES["dog.jpg"]})
    assert alone["dog.jpg"] != pytest.approx(scores["dog.jpg"])  # the set being scored matters
    with pytest.raises(ValueError, match="per_image_cider needs the same ids"):
        per_image_cider(REFERENCES, {"dog.jpg": "a dog"})


@pytest.mark.skipif(shutil.which("java") is None, reason="the PTB tokenizer needs Java")
def test_ptb_tokenizer_scores_like_the_coco_caption_evaluation():
    """tokenizer="ptb" is the COCO evaluation papers run: PTBTokenizer on both sides, then the scorers."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        gts = PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in PTB_REFERENCES.items()})
        res = PTBTokenizer().tokenize({k: [{"caption": v}] for k, v in PTB_HYPOTHESES.items()})
        bleu, _ = Bleu(4).compute_score(gts, res)
        rouge, _ = Rouge().compute_score(gts, res)
        cider, _ = Cider().compute_score(gts, res)
    assert gts["dog.jpg"][0] == "a dog 's ball is red-and-white"  # the reference really is PTB's
    ptb = compute_metrics(PTB_REFERENCES, PTB_HYPOTHESES, meteor=False, tokenizer="ptb")
    assert [ptb[f"Bleu_{n + 1}"] for n in range(4)] == bleu
    assert (ptb["ROUGE_L"], ptb["CIDEr"]) == (rouge, cider)
    project = compute_metrics(PTB_REFERENCES, PTB_HYPOTHESES, meteor=False)
    assert project["Bleu_1"] > ptb["Bleu_1"] + 0.05  # "red and white" matches only when hyphens separate
    # plain captions tokenize alike; an empty caption (a model that ends at once), last, keeps its id
    plain_refs, plain_hyps = {"a": ["a dog runs", "dog"], "b": ["a cat"]}, {"a": "a dog", "b": ""}
    assert compute_metrics(plain_refs, plain_hyps, meteor=False, tokenizer="ptb") == compute_metrics(
        plain_refs, plain_hyps, meteor=False
    )


def test_ptb_tokenizer_without_java_says_how_to_get_it(monkeypatch, capsys):
    monkeypatch.setattr(evaluate.shutil, "which", lambda name: None)
    monkeypatch.setattr(evaluate, "_java_notices_shown", set())
    fix = r"Java PTBTokenizer.*apt-get install -y default-jre-headless, or score with the 'project'"
    with pytest.raises(evaluate.JavaUnavailableError, match=fix):
        compute_metrics(REFERENCES, HYPOTHESES, meteor=False, tokenizer="ptb")
    with pytest.raises(evaluate.JavaUnavailableError, match=fix):
        evaluate.resolve_tokenizer("ptb")
    assert evaluate.resolve_tokenizer("auto") == evaluate.resolve_tokenizer("auto") == "project"
    assert capsys.readouterr().out.count("PTB tokenization: java is not on PATH") == 1
    monkeypatch.setattr(evaluate.shutil, "which", lambda name: "/usr/bin/java")
    assert evaluate.resolve_tokenizer("auto") == "ptb"
    with pytest.raises(ValueError, match="tokenizer must be 'auto', 'ptb' or 'project', got 'nltk'"):
        evaluate.resolve_tokenizer("nltk")
    with pytest.raises(ValueError, match="tokenizer must be 'project' or 'ptb'"):
        compute_metrics(REFERENCES, HYPOTHESES, meteor=False, tokenizer="auto")


@pytest.mark.skipif(shutil.which("java") is None, reason="the PTB tokenizer needs Java")
def test_demo_captions_tokenize_the_same_with_ptb(tmp_path):
    """configs/demo.yaml scores with the project tokenizer; on its captions PTB gives the same tokens."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    from helpers.demo import make_demo_dataset
    from helpers.text import tokenize

    folder = make_demo_dataset(tmp_path / "demo", num_images=40)
    with open(folder / "captions.txt", newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    captions = {i: [{"caption": row["caption"]}] for i, row in enumerate(rows)}
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        ptb = PTBTokenizer().tokenize(captions)
    assert len(ptb) == len(rows) >= 200
    assert all(ptb[i][0] == " ".join(tokenize(captions[i][0]["caption"])) for i in ptb)


def test_metrics_table_lists_each_split_and_beam():
    table = format_metrics_table(
        {"test": {"beam1": {"Bleu_4": 0.25, "CIDEr": 1.5}, "beam3": {"Bleu_4": 0.3}}}
    )
    lines = table.splitlines()
    assert lines[0] == "| split | beam | BLEU-4 | CIDEr |"  # as papers print them: x 100
    assert lines[2] == "| test | 1 | 25.00 | 150.00 |" and lines[3] == "| test | 3 | 30.00 | - |"


# ------------------------------------------------------------------------------------------------ SPICE


@pytest.fixture
def no_download(monkeypatch):
    """pycocoevalcap's Spice downloads Stanford CoreNLP when its jars are absent: that must never run."""
    import pycocoevalcap.spice.get_stanford_models as models

    def refuse(*args, **kwargs):
        raise AssertionError("SPICE tried to download Stanford CoreNLP")

    monkeypatch.setattr(models, "urlretrieve", refuse)


def test_spice_without_the_corenlp_jars_names_them_and_downloads_nothing(no_download):
    """The jars are absent here (pycocoevalcap downloads them at first use): asked for SPICE, scoring
    stops before anything is scored, naming where pycocoevalcap looks for each jar and how to get it."""
    import pycocoevalcap.spice as spice

    lib = Path(spice.__file__).parent / "lib"
    assert not (lib / evaluate.SPICE_JARS[0]).exists(), "this test needs the CoreNLP jars absent"
    with pytest.raises(evaluate.SpiceUnavailableError) as refused:
        compute_metrics(REFERENCES, HYPOTHESES, meteor=False, spice=True)
    message = str(refused.value)
    assert all(str(lib / jar) in message for jar in evaluate.SPICE_JARS)
    assert evaluate.CORENLP_URL in message and "never" in message and "default-jre-headless" in message
    assert "SPICE" not in compute_metrics(REFERENCES, HYPOTHESES, meteor=False)  # not asked: not scored


def test_spice_without_java_says_so(monkeypatch, no_download):
    monkeypatch.setattr(evaluate.shutil, "which", lambda name: None)
    with pytest.raises(evaluate.SpiceUnavailableError, match="it needs `java` on PATH and "):
        compute_metrics(REFERENCES, HYPOTHESES, meteor=False, spice=True)


def test_spice_is_scored_on_request_where_java_and_the_jars_are(monkeypatch):
    """With the jars in place pycocoevalcap's Spice runs on the tokenized captions, as coco-caption does
    (here a stand-in for its JVM), and SPICE joins the table."""
    import pycocoevalcap.spice.spice as spice

    seen = {}

    class Spice:
        def compute_score(self, gts, res):
            seen.update(gts=gts, res=res)
            return 0.25, []

    monkeypatch.setattr(evaluate, "spice_missing", lambda: [])
    monkeypatch.setattr(spice, "Spice", Spice)
    metrics = compute_metrics(REFERENCES, HYPOTHESES, meteor=False, spice=True)
    assert metrics["SPICE"] == 0.25
    assert seen["res"]["dog.jpg"] == TOKENIZED_HYPOTHESES["dog.jpg"]
    assert "| SPICE |" in format_metrics_table({"test": {"beam1": metrics}})


def test_evaluate_command_refuses_spice_before_loading_anything(tmp_path, capsys, no_download):
    assert evaluate.main([str(tmp_path / "no-such-run"), "--spice"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: SPICE cannot run here") and "no-such-run" not in error
