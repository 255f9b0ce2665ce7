"""Self-critical sequence training: the CIDEr-D reward, sampling from every decoder, the SCST phase of
the training loop (config, command line, notebook switch, resume) and that it raises held-out CIDEr."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from pycocoevalcap.cider.cider import Cider

from helpers.checkpoints import load_checkpoint
from helpers.config import ConfigError, load_config
from helpers.models import CaptioningRNN, CaptioningTransformer
from helpers.notebook import Env
from helpers.objectives import self_critical_advantage
from helpers.rewards import CiderD, token_sequences
from helpers.runs import TrainState
from helpers.stages import stage_config
from helpers.train import main as train_main
from helpers.train import train
from helpers.workdir import prepared_and_features

NULL, START, END = 0, 1, 2
WORDS = ["<NULL>", "<START>", "<END>", "<UNK>"] + "a dog cat runs on grass the red ball".split()
WORD_TO_IDX = {word: index for index, word in enumerate(WORDS)}


# ------------------------------------------------------------------------------------------ reward


def pycocoevalcap_cider(candidates, references):
    """Per-image CIDEr-D of pycocoevalcap on the same captions written as words (w<id>)."""
    words = lambda caption: " ".join(f"w{token}" for token in caption)  # noqa: E731
    gts = {i: [words(ref) for ref in refs] for i, refs in enumerate(references)}
    res = {i: [words(candidate)] for i, candidate in enumerate(candidates)}
    return np.asarray(Cider().compute_score(gts, res)[1])


HAND_MADE = [  # (candidate, references): repeated words, short and empty candidates, exact matches
    ((5, 6, 7, 8), [(5, 6, 7, 8), (5, 6, 9), (4, 5, 6, 7, 8, 10)]),
    ((5, 5, 5, 5, 5, 5), [(5, 6, 7), (5, 5, 8, 9), (6, 7, 8, 9, 10, 11)]),
    ((5,), [(5, 6), (5,), (7, 8, 9, 10)]),
    ((), [(5, 6, 7), (8, 9)]),
    ((6, 7, 6, 7, 6, 7), [(6, 7, 6, 7), (6, 7, 8), (9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20)]),
    ((4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17), [(4, 5, 6), (4, 5)]),
    ((9, 10, 11), [(9, 10, 11), (9, 10, 11), (9, 10, 11), (9, 10, 11), (12,)]),
]


def test_cider_d_on_ids_equals_pycocoevalcap_on_hand_made_cases():
    candidates = [candidate for candidate, _ in HAND_MADE]
    references = [refs for _, refs in HAND_MADE]
    expected = pycocoevalcap_cider(candidates, references)
    assert np.allclose(CiderD(references).score(candidates, references), expected, rtol=1e-10, atol=1e-12)
    assert np.allclose(CiderD(references).score_images(candidates, range(len(HAND_MADE))), expected,
                       rtol=1e-10, atol=1e-12)
    assert expected.max() > 1 and (expected == 0).any()  # the cases span full and no overlap


@pytest.mark.parametrize("seed", range(6))
def test_cider_d_on_ids_equals_pycocoevalcap_on_random_corpora(seed):
    rng = random.Random(seed)
    images = rng.randint(2, 40)
    vocab = rng.randint(3, 30)  # small vocabularies repeat words and n-grams often

    def caption(shortest):
        return tuple(rng.randint(4, 4 + vocab) for _ in range(rng.randint(shortest, 16)))

    references = [[caption(1) for _ in range(rng.randint(1, 5))] for _ in range(images)]
    candidates = [caption(0) for _ in range(images)]
    expected = pycocoevalcap_cider(candidates, references)
    got = CiderD(references).score_images(candidates, range(images))
    assert np.allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_reward_statistics_come_from_the_corpus_not_the_batch():
    """Scored against a fixed corpus, an image's reward does not depend on which others share its batch
    (pycocoevalcap on the batch alone would weigh n-grams by the batch)."""
    rng = random.Random(7)
    references = [[tuple(rng.randint(4, 12) for _ in range(6)) for _ in range(5)] for _ in range(20)]
    candidates = [tuple(rng.randint(4, 12) for _ in range(6)) for _ in range(20)]
    reward = CiderD(references)
    whole = reward.score_images(candidates, range(20))
    assert np.allclose(whole, pycocoevalcap_cider(candidates, references))
    assert np.allclose(reward.score_images(candidates[3:6], [3, 4, 5]), whole[3:6])
    alone = pycocoevalcap_cider(candidates[3:6], references[3:6])
    assert not np.allclose(alone, whole[3:6])


def test_token_sequences_stop_at_end_and_drop_padding():
    tokens = torch.tensor([[5, 6, END, 7, NULL], [START, 5, NULL, 6, 7], [END, 5, 6, 7, 8]])
    assert token_sequences(tokens, END, (NULL, START)) == [(5, 6), (5, 6, 7), ()]


def test_a_reward_needs_a_corpus():
    with pytest.raises(ValueError, match="at least one image"):
        CiderD([])


# ---------------------------------------------------------------------------------------- sampling


def make_model(kind: str):
    torch.manual_seed(0)
    settings = dict(wordvec_dim=16, hidden_dim=32, image_encoder_pretrained=False, backbone="regnet_x_400mf")
    if kind == "transformer":
        return CaptioningTransformer(WORD_TO_IDX, dropout=0.0, **settings)
    return CaptioningRNN(WORD_TO_IDX, cell_type=kind, **settings)


def teacher_forced_log_probs(model, features, tokens):
    """Each caption's log-probability (words up to and including <END>) computed by teacher forcing."""
    captions_in = torch.cat([torch.full((len(tokens), 1), START), tokens[:, :-1]], dim=1)
    with torch.no_grad():
        log_probs = model.scores(model.features_from(features), captions_in).float().log_softmax(dim=-1)
    picked = log_probs.gather(2, tokens.unsqueeze(2)).squeeze(2)
    is_end = tokens == END
    after_end = (is_end.cumsum(dim=1) - is_end.long()) > 0
    return picked.masked_fill(after_end, 0.0).sum(dim=1)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "attn", "transformer"])
def test_sampling_draws_k_captions_per_image_with_their_log_probabilities(kind):
    model = make_model(kind).eval()
    features = torch.randn(3, 400, 2, 2, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(2)
    tokens, log_probs = model.sample_multinomial(features, samples_per_image=4, max_length=6)
    assert tokens.shape == (3, 4, 6) and log_probs.shape == (3, 4) and log_probs.requires_grad
    flat = tokens.flatten(0, 1)
    expected = teacher_forced_log_probs(model, features.repeat_interleave(4, dim=0), flat)
    assert torch.allclose(log_probs.detach().flatten(), expected, atol=1e-4)
    ended = (flat == END).cumsum(dim=1) - (flat == END).long() > 0
    assert (flat[ended] == NULL).all()  # nothing but <NULL> after <END>
    assert len({tuple(row) for row in flat.tolist()}) > 3  # samples, not one caption repeated
    log_probs.sum().backward()
    assert model.output_proj.weight.grad.abs().sum() > 0


def test_sampling_follows_the_model_distribution():
    """Over many draws, the first word's frequencies match the model's first-step probabilities."""
    model = make_model("lstm").eval()
    features = torch.randn(1, 400, 2, 2, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        state = model.init_state(model.features_from(features))
        first, _, _ = model.step(state, torch.tensor([START]))
    torch.manual_seed(4)
    with torch.no_grad():
        tokens, _ = model.sample_multinomial(features, samples_per_image=4000, max_length=1)
    counts = torch.bincount(tokens.flatten(), minlength=len(WORDS)).float() / 4000
    assert torch.allclose(counts, first.exp()[0], atol=0.03)


def test_the_advantage_is_the_reward_above_the_greedy_caption_or_the_other_samples():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 3.0]])
    greedy = torch.tensor([2.0, 1.0])
    expected = torch.tensor([[-1.0, 0.0, 1.0], [-1.0, -1.0, 2.0]])
    assert torch.equal(self_critical_advantage(rewards, greedy), expected)
    # mean of the *other* samples: 1 vs (2+3)/2, 2 vs (1+3)/2, 3 vs (1+2)/2
    assert torch.allclose(self_critical_advantage(rewards, None),
                          torch.tensor([[-1.5, 0.0, 1.5], [-1.5, -1.5, 3.0]]))


# -------------------------------------------------------------------------------- config and runs


def demo_config(work, demo_dir, *overrides):
    """LSTM + configs/demo.yaml on the conftest demo folder (120 images)."""
    return load_config(["LSTM", "demo"], [
        f"data.work_dir={work / 'work'}", f"training.run_dir={work / 'runs'}", "training.meteor=false",
        "data.dataset=flickr8k", f"data.data_dir={demo_dir}", *overrides,
    ])


def test_scst_settings_are_validated_with_the_fix(tmp_path, demo_dir):
    with pytest.raises(ConfigError, match=r"training.scst.baseline='best'.*'greedy', 'mean'"):
        demo_config(tmp_path, demo_dir, "training.scst.baseline=best")
    with pytest.raises(ConfigError, match=r"samples_per_image >= 2 \(it is 1\)"):
        demo_config(tmp_path, demo_dir, "training.scst.baseline=mean", "training.scst.samples_per_image=1")
    with pytest.raises(ConfigError, match="training.scst.lr=0.0 must be positive"):
        demo_config(tmp_path, demo_dir, "training.scst.lr=0")
    with pytest.raises(ConfigError, match="use training.mode=features for the SCST run"):
        demo_config(tmp_path, demo_dir, "training.scst.enabled=true", "training.mode=finetune")


def test_an_scst_run_has_its_own_folder_and_cross_entropy_runs_keep_theirs(tmp_path, demo_dir):
    plain = demo_config(tmp_path, demo_dir)
    assert demo_config(tmp_path, demo_dir, "training.scst.lr=1e-3").run_path == plain.run_path
    scst = demo_config(tmp_path, demo_dir, "training.scst.enabled=true")
    assert scst.run_path != plain.run_path and "-96-scst-" in scst.run_name
    assert demo_config(tmp_path, demo_dir, "training.scst.enabled=true", "training.scst.epochs=9").run_path \
        == scst.run_path  # more SCST epochs continue the same run, like training.epochs
    other = demo_config(tmp_path, demo_dir, "training.scst.enabled=true", "training.scst.baseline=mean")
    assert other.run_path != scst.run_path


def test_the_command_line_and_the_notebooks_switch_scst_on(tmp_path, demo_dir, monkeypatch):
    seen = []

    def record(config, **kwargs):
        seen.append(config)
        raise ConfigError("stop here")

    monkeypatch.setattr("helpers.train.train", record)
    assert train_main(["--config", "LSTM", "--demo", "--scst", "--quiet", f"data.work_dir={tmp_path}"]) == 2
    assert train_main(["--config", "LSTM", "--demo", "--quiet", f"data.work_dir={tmp_path}"]) == 2
    assert [config.training.scst.enabled for config in seen] == [True, False]
    env = Env(False, "cpu", None, None, tmp_path, ())
    params = {"DEMO": True, "SCST": True, "OVERRIDES": []}
    assert stage_config("LSTM", params, env).training.scst.enabled
    assert not stage_config("LSTM", {**params, "SCST": False}, env).training.scst.enabled


@pytest.fixture(scope="module")
def small_demo(demo_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("scst")
    prepared, store = prepared_and_features(demo_config(work, demo_dir), progress=False)
    return work, prepared, store


class Killed(Exception):
    pass


def _weights_equal(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.slow
def test_a_killed_scst_run_resumes_in_its_phase_and_ends_like_an_uninterrupted_one(small_demo, demo_dir):
    """One cross-entropy epoch then two SCST epochs, killed after the first SCST step of its second
    epoch (saved mid-epoch): the phase and its epoch come back from last.pt, and the weights end equal."""
    work, prepared, store = small_demo
    settings = ["training.epochs=1", "training.scst.enabled=true", "training.scst.epochs=2",
                "training.scst.baseline=greedy", "training.eval_splits=[]",
                "training.checkpoint_every_steps=1"]
    whole = train(demo_config(work, demo_dir, *settings, "training.run_name=whole"),
                  prepared=prepared, store=store, progress=False)
    assert [row.get("phase", "xe") for row in whole.history] == ["xe", "scst", "scst"]
    assert all(row["train_reward"] > 0 for row in whole.history[1:])

    def kill(event: str, state: TrainState) -> None:
        if event == "step_end" and state.phase == "scst" and state.scst_epoch == 1:
            raise Killed

    config = demo_config(work, demo_dir, *settings, "training.run_name=killed")
    with pytest.raises(Killed):
        train(config, prepared=prepared, store=store, progress=False, callbacks=[kill])
    last = load_checkpoint(config.run_path / "last.pt")
    assert (last["phase"], last["scst_epoch"], last["step_in_epoch"]) == ("scst", 1, 1)
    resumed = train(config, prepared=prepared, store=store, progress=False)
    assert _weights_equal(resumed.model, whole.model)
    assert [row["val_CIDEr"] for row in resumed.history] == [row["val_CIDEr"] for row in whole.history]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["Vanilla_RNN", "Attention_LSTM", "Transformer"])
def test_every_decoder_trains_an_scst_phase(name, small_demo, demo_dir):
    """One cross-entropy epoch, then an SCST epoch with the greedy baseline: the phase runs for each
    decoder's state (hidden state, attention grid, Transformer key/value caches) and moves the weights,
    but not the running statistics of the feature normalisation: they stay the cross-entropy ones."""
    work, prepared, store = small_demo
    config = load_config([name, "demo"], [
        f"data.work_dir={work / 'work'}", f"training.run_dir={work / 'runs'}", "training.meteor=false",
        "data.dataset=flickr8k", f"data.data_dir={demo_dir}", "training.epochs=1", "training.eval_splits=[]",
        "training.scst.enabled=true", "training.scst.epochs=1", "training.scst.baseline=greedy",
    ])
    cross_entropy = {}

    def keep_cross_entropy_weights(event: str, state: TrainState) -> None:
        if event == "epoch_end" and state.phase == "xe":
            cross_entropy.update({k: v.clone() for k, v in state.model.state_dict().items()})

    result = train(config, prepared=prepared, store=store, progress=False,
                   callbacks=[keep_cross_entropy_weights])
    assert [row.get("phase", "xe") for row in result.history] == ["xe", "scst"]
    assert result.history[1]["train_reward"] > 0
    after = load_checkpoint(config.run_path / "last.pt")["model"]
    assert any(not torch.equal(after[key], cross_entropy[key]) for key in after)
    statistics = [key for key in after if key.startswith("feature_norm.running_")]  # mean and variance
    assert statistics and all(torch.equal(after[key], cross_entropy[key]) for key in statistics)


def _epochs_trained(log: list):
    """A callback appending the phase of each epoch trained to `log`."""
    def count(event: str, state: TrainState) -> None:
        if event == "epoch_end":
            log.append(state.phase)
    return count


def test_scst_with_a_run_name_of_your_own_starts_from_that_finished_run(small_demo, demo_dir):
    """Issue 28, case 7: it was refused (the folder held the cross-entropy run's config), a new name
    trained the cross-entropy epochs again, and --no-resume overwrote the finished run's best.pt."""
    work, prepared, store = small_demo
    settings = ["training.epochs=1", "training.eval_splits=[]", "training.run_name=mine"]
    plain = demo_config(work, demo_dir, *settings)
    train(plain, prepared=prepared, store=store, progress=False)
    best = (plain.run_path / "best.pt").read_bytes()
    scst = demo_config(work, demo_dir, *settings, "training.scst.enabled=true", "training.scst.epochs=1")
    assert scst.run_path == plain.run_path.with_name("mine-scst")
    trained = []
    result = train(scst, prepared=prepared, store=store, progress=False, callbacks=[_epochs_trained(trained)])
    assert trained == ["scst"] and [row.get("phase", "xe") for row in result.history] == ["xe", "scst"]
    assert load_checkpoint(scst.run_path / "last.pt")["scst_from"] == str(plain.run_path)
    train(scst, prepared=prepared, store=store, progress=False, resume=False)  # --no-resume: SCST over
    assert (plain.run_path / "best.pt").read_bytes() == best


def test_scst_after_an_unfinished_cross_entropy_run_finishes_it_instead_of_starting_over(
    small_demo, demo_dir, capsys
):
    """Issue 28, case 10: every cross-entropy epoch was trained again in the SCST folder, with no word."""
    work, prepared, store = small_demo
    settings = ["training.eval_splits=[]", "training.run_name=half"]
    first = train(demo_config(work, demo_dir, "training.epochs=1", *settings), prepared=prepared, store=store,
                  progress=False)
    config = demo_config(work, demo_dir, "training.epochs=2", *settings, "training.scst.enabled=true",
                         "training.scst.epochs=1")
    trained = []
    with pytest.warns(UserWarning, match="training.epochs 1 -> 2 on resume"):
        result = train(config, prepared=prepared, store=store, callbacks=[_epochs_trained(trained)])
    assert trained == ["xe", "scst"]  # the second cross-entropy epoch, then SCST: not three epochs
    out = capsys.readouterr().out
    assert f"{first.run_dir}: 1 of 2 cross-entropy epochs done; finishing them there first" in out
    assert [row.get("phase", "xe") for row in result.history] == ["xe", "xe", "scst"]
    assert result.history[0] == first.history[0]  # the first epoch kept, not trained again
    assert load_checkpoint(first.run_dir / "last.pt")["epoch"] == 2


def test_a_busy_scst_folder_is_refused_before_the_cross_entropy_run_is_finished(small_demo, demo_dir):
    """The checks that need no data come first: a held SCST folder is named before the unfinished
    cross-entropy run trains its remaining epochs."""
    from conftest import hold_run_lock

    from helpers.runlock import RunFolderBusyError

    work, prepared, store = small_demo
    settings = ["training.eval_splits=[]", "training.run_name=held"]
    first = train(demo_config(work, demo_dir, "training.epochs=1", *settings), prepared=prepared, store=store,
                  progress=False)
    before = (first.run_dir / "last.pt").read_bytes()
    config = demo_config(work, demo_dir, "training.epochs=2", *settings, "training.scst.enabled=true")
    holder = hold_run_lock(config.run_path)
    try:
        with pytest.raises(RunFolderBusyError, match=f"in use by process {holder.pid}"):
            train(config, prepared=prepared, store=store, progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert (first.run_dir / "last.pt").read_bytes() == before
