"""WordEmbedding and the GloVe loader: exact vectors, file formats, errors, coverage and the cache."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from helpers import embeddings
from helpers.embeddings import (
    GloveCoverage,
    WordEmbedding,
    glove_coverage,
    load_glove_embeddings,
    nearest_neighbours,
    write_glove_file,
)
from helpers.text import SPECIAL_TOKENS, Vocabulary


def make_vocab(words):
    return {word: i for i, word in enumerate(SPECIAL_TOKENS + list(words))}


def random_vectors(words, dim, seed=0, scale=0.5):
    rng = np.random.default_rng(seed)
    return {word: (rng.standard_normal(dim) * scale).astype(np.float32) for word in words}


@pytest.fixture
def count_parses(monkeypatch):
    """Counts how often the GloVe text file is parsed (a cache hit parses nothing)."""
    calls = []
    real_reader = embeddings._read_glove_vectors

    def counting_reader(*args, **kwargs):
        calls.append(args[0])
        return real_reader(*args, **kwargs)

    monkeypatch.setattr(embeddings, "_read_glove_vectors", counting_reader)
    return calls


def test_found_words_get_exactly_the_written_vectors(tmp_path):
    vectors = random_vectors(["the", "dog", "runs", "grass", "unused", "other"], dim=6)
    glove = write_glove_file(tmp_path / "glove.test.6d.txt", vectors)
    vocab = make_vocab(["dog", "the", "grass", "runs"])

    matrix = load_glove_embeddings(glove, vocab, embed_dim=6, cache_dir=tmp_path / "cache", verbose=False)

    assert matrix.dtype == torch.float32 and matrix.shape == (len(vocab), 6)
    for word in ["dog", "the", "grass", "runs"]:
        assert torch.equal(matrix[vocab[word]], torch.from_numpy(vectors[word])), word


def test_written_text_is_the_real_glove_format(tmp_path):
    glove = write_glove_file(tmp_path / "g.txt", {"a": [0.5, -1.25], "b": [1e-5, 2.0]}, header=True)
    assert glove.read_text() == "2 2\na 0.5 -1.25\nb 1e-05 2.0\n"
    fixed = write_glove_file(tmp_path / "fixed.txt", {"a": [0.123456789, -1.0]}, decimals=5)
    assert fixed.read_text() == "a 0.12346 -1.00000\n"
    with pytest.raises(ValueError, match="'b' has shape \\(3,\\); all vectors must be \\(2,\\)"):
        write_glove_file(tmp_path / "bad.txt", {"a": [1.0, 2.0], "b": [1.0, 2.0, 3.0]})


def test_lookup_is_case_insensitive_and_prefers_the_lowercase_entry(tmp_path):
    lines = [
        "Paris 1 1 1",  # only a capitalised entry: used for 'paris'
        "Apple 2 2 2",  # capitalised first, lowercase later: the lowercase one wins
        "apple 3 3 3",
        "dog 4 4 4",  # lowercase first, capitalised later: the lowercase one stays
        "DOG 5 5 5",
    ]
    glove = tmp_path / "cased.txt"
    glove.write_text("\n".join(lines) + "\n")
    vocab = make_vocab(["paris", "apple", "dog"])

    matrix = load_glove_embeddings(glove, vocab, embed_dim=3, cache_dir=tmp_path / "c", verbose=False)

    assert matrix[vocab["paris"]].tolist() == [1, 1, 1]
    assert matrix[vocab["apple"]].tolist() == [3, 3, 3]
    assert matrix[vocab["dog"]].tolist() == [4, 4, 4]


def test_special_tokens_are_not_looked_up_and_null_is_zero(tmp_path):
    glove = write_glove_file(
        tmp_path / "g.txt", {"<unk>": [9.0] * 4, "<end>": [9.0] * 4, "cat": [1.0, -1.0, 2.0, 0.5]}
    )
    vocab = make_vocab(["cat"])

    matrix = load_glove_embeddings(glove, vocab, embed_dim=4, cache_dir=tmp_path / "c", verbose=False)
    coverage = glove_coverage(glove, vocab, embed_dim=4, cache_dir=tmp_path / "c")

    assert torch.count_nonzero(matrix[vocab["<NULL>"]]) == 0
    for token in ["<START>", "<END>", "<UNK>"]:
        row = matrix[vocab[token]]
        assert torch.count_nonzero(row) == 4 and not torch.equal(row, torch.full((4,), 9.0)), token
    assert (coverage.found, coverage.total, coverage.missing) == (1, 1, [])


def test_misses_get_deterministic_noise_at_glove_scale(tmp_path):
    found_words = [f"w{i}" for i in range(300)]
    vectors = random_vectors(found_words, dim=50, scale=0.7)
    glove = write_glove_file(tmp_path / "g.txt", vectors)
    missing_words = [f"miss{i}" for i in range(300)]
    vocab = make_vocab(found_words + missing_words)

    matrix = load_glove_embeddings(glove, vocab, embed_dim=50, cache_dir=tmp_path / "a", verbose=False)
    again = load_glove_embeddings(glove, vocab, embed_dim=50, cache_dir=tmp_path / "b", verbose=False)
    reseeded = load_glove_embeddings(
        glove, vocab, embed_dim=50, cache_dir=tmp_path / "a", verbose=False, seed=1
    )

    glove_std = np.std(np.stack([vectors[w] for w in found_words]))
    miss_rows = matrix[[vocab[w] for w in missing_words]]
    assert miss_rows.std().item() == pytest.approx(glove_std, rel=0.05)
    assert abs(miss_rows.mean().item()) < 0.05
    assert torch.equal(matrix, again), "the noise must be seeded"
    assert not torch.equal(matrix[vocab["miss0"]], reseeded[vocab["miss0"]])
    assert torch.equal(matrix[vocab["w7"]], reseeded[vocab["w7"]])


def test_coverage_counts_and_summary(tmp_path, capsys):
    glove = write_glove_file(tmp_path / "glove.6B.3d.txt", random_vectors(["a", "man", "dog", "on"], 3))
    vocab = make_vocab(["a", "man", "zzselfie", "dog", "qqphotobomb"])

    load_glove_embeddings(glove, vocab, embed_dim=3, cache_dir=tmp_path / "c", verbose=True)
    printed = capsys.readouterr().out
    coverage = glove_coverage(glove, vocab, embed_dim=3, cache_dir=tmp_path / "c")

    assert coverage == GloveCoverage(
        found=3, total=5, missing=["zzselfie", "qqphotobomb"], glove_file=str(glove), embed_dim=3
    )
    assert coverage.ratio == pytest.approx(0.6)
    assert printed.count("\n") == 1
    assert "glove.6B.3d.txt (3d): 3/5 vocabulary words found (60.0%)" in printed
    assert "2 missing, e.g. zzselfie, qqphotobomb" in printed


def test_word2vec_header_line_is_skipped(tmp_path):
    vectors = random_vectors(["2", "dog", "cat"], dim=5)  # a token "2" must not be taken for a header
    plain = write_glove_file(tmp_path / "plain.txt", vectors)
    headed = write_glove_file(tmp_path / "headed.txt", vectors, header=True)
    assert headed.read_text().startswith("3 5\n")
    vocab = make_vocab(["dog", "cat", "2"])

    from_plain = load_glove_embeddings(plain, vocab, embed_dim=5, cache_dir=tmp_path / "c", verbose=False)
    from_headed = load_glove_embeddings(headed, vocab, embed_dim=5, cache_dir=tmp_path / "c", verbose=False)

    assert torch.equal(from_plain, from_headed)
    assert torch.equal(from_headed[vocab["2"]], torch.from_numpy(vectors["2"]))
    with pytest.raises(ValueError, match="headed.txt has 5-dimensional vectors but embed_dim=4"):
        load_glove_embeddings(headed, vocab, embed_dim=4, cache_dir=tmp_path / "c", verbose=False)


def test_tokens_with_spaces_take_everything_before_the_last_fields(tmp_path):
    lines = [
        "the 1 1 1",
        "at name@domain.com 7 7 7",  # 840B style: the token is 'at name@domain.com', not 'at'
        ". . . 8 8 8",
        "at 2 2 2",
        "new york 3 3 3",
    ]
    glove = tmp_path / "glove.840B.3d.txt"
    glove.write_text("\n".join(lines) + "\n")

    vocab = make_vocab(["at", "the"])
    matrix = load_glove_embeddings(glove, vocab, embed_dim=3, cache_dir=tmp_path / "c", verbose=False)
    assert matrix[vocab["at"]].tolist() == [2, 2, 2]
    assert matrix[vocab["the"]].tolist() == [1, 1, 1]

    spaced_vocab = make_vocab(["new york", ". . .", "at"])
    matrix = load_glove_embeddings(glove, spaced_vocab, embed_dim=3, cache_dir=tmp_path / "c", verbose=False)
    assert matrix[spaced_vocab["new york"]].tolist() == [3, 3, 3]
    assert matrix[spaced_vocab[". . ."]].tolist() == [8, 8, 8]
    assert matrix[spaced_vocab["at"]].tolist() == [2, 2, 2]


def test_stray_non_utf8_bytes_and_windows_line_ends_are_tolerated(tmp_path):
    glove = tmp_path / "latin.txt"
    glove.write_bytes(b"caf\xe9 9 9\r\n\xff\xfe 8 8\r\ndog 0.5 -0.25\r\nna\xefve 1 2\r\n")
    vocab = make_vocab(["dog", "cafe"])

    matrix = load_glove_embeddings(glove, vocab, embed_dim=2, cache_dir=tmp_path / "c", verbose=False)

    assert matrix[vocab["dog"]].tolist() == [0.5, -0.25]
    assert glove_coverage(glove, vocab, embed_dim=2, cache_dir=tmp_path / "c").missing == ["cafe"]


def test_dimension_mismatch_names_the_file_and_its_dimension(tmp_path):
    glove = write_glove_file(tmp_path / "glove.6B.100d.txt", random_vectors(["a", "b"], dim=100))
    expected = (
        "glove.6B.100d.txt has 100-dimensional vectors but embed_dim=300; pass embed_dim=100 or use a 300d"
    )
    with pytest.raises(ValueError, match=expected):
        load_glove_embeddings(glove, make_vocab(["a"]), embed_dim=300, cache_dir=tmp_path / "c")


def test_malformed_line_names_file_and_line(tmp_path):
    glove = tmp_path / "broken.txt"
    good_lines = "".join(f"w{i} 1 2 3\n" for i in range(8))  # the dimension is read from the first lines
    glove.write_text(good_lines + "dog 1 2\n")
    with pytest.raises(ValueError, match="broken.txt:9: 2 numbers where 3 were expected"):
        load_glove_embeddings(glove, make_vocab(["dog"]), embed_dim=3, cache_dir=tmp_path / "c")
    glove.write_text(good_lines + "dog 1 x 3\n")
    with pytest.raises(ValueError, match="broken.txt:9: the vector of 'dog' is not numeric"):
        load_glove_embeddings(glove, make_vocab(["dog"]), embed_dim=3, cache_dir=tmp_path / "c")


def test_missing_file_says_how_to_get_glove_on_kaggle(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_glove_embeddings(tmp_path / "glove.6B.300d.txt", make_vocab(["a"]))
    message = str(error.value)
    assert "glove.6B.300d.txt" in message
    assert "thanakomsn/glove6b300dtxt" in message and "kagglehub" in message


def test_vocabulary_ids_must_be_contiguous(tmp_path):
    glove = write_glove_file(tmp_path / "g.txt", {"a": [1.0]})
    with pytest.raises(ValueError, match="'b' has id 5"):
        load_glove_embeddings(glove, {"a": 0, "b": 5}, embed_dim=1, cache_dir=tmp_path / "c")


def test_warm_load_reads_the_cache_and_parses_nothing(tmp_path, count_parses, monkeypatch):
    glove = write_glove_file(tmp_path / "g.txt", random_vectors(["dog", "cat", "grass"], dim=4))
    vocab = make_vocab(["dog", "grass", "missing"])
    cache = tmp_path / "cache"

    cold = load_glove_embeddings(glove, vocab, embed_dim=4, cache_dir=cache, verbose=False)
    assert len(count_parses) == 1
    assert sorted(p.suffix for p in cache.iterdir()) == [".json", ".npy"]

    def refuse_to_parse(*args, **kwargs):
        raise AssertionError("the warm load parsed the GloVe file")

    monkeypatch.setattr(embeddings, "_read_glove_vectors", refuse_to_parse)
    warm = load_glove_embeddings(glove, vocab, embed_dim=4, cache_dir=cache, verbose=False)
    coverage = glove_coverage(glove, vocab, embed_dim=4, cache_dir=cache)

    assert torch.equal(cold, warm)
    as_vocabulary = load_glove_embeddings(glove, Vocabulary(list(vocab)), 4, cache_dir=cache, verbose=False)
    assert torch.equal(as_vocabulary, cold), "a Vocabulary is accepted in place of word_to_idx"
    assert (coverage.found, coverage.total, coverage.missing) == (2, 3, ["missing"])
    assert not list(cache.glob(".*.tmp")), "temporary files must be renamed into place"


def test_cache_is_not_reused_for_another_vocabulary_file_or_dimension(tmp_path, count_parses):
    vectors = random_vectors(["dog", "cat", "grass"], dim=4)
    glove = write_glove_file(tmp_path / "g.txt", vectors)
    cache = tmp_path / "cache"
    vocab = make_vocab(["dog", "cat"])
    load_glove_embeddings(glove, vocab, embed_dim=4, cache_dir=cache, verbose=False)

    reordered = make_vocab(["cat", "dog"])
    matrix = load_glove_embeddings(glove, reordered, embed_dim=4, cache_dir=cache, verbose=False)
    assert len(count_parses) == 2
    assert torch.equal(matrix[reordered["cat"]], torch.from_numpy(vectors["cat"]))

    grown = make_vocab(["dog", "cat", "grass"])
    matrix = load_glove_embeddings(glove, grown, embed_dim=4, cache_dir=cache, verbose=False)
    assert len(count_parses) == 3 and matrix.shape == (7, 4)

    changed = {word: vector + 1 for word, vector in vectors.items()}
    write_glove_file(glove, changed)
    stat = glove.stat()
    os.utime(glove, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a new mtime even on coarse clocks
    matrix = load_glove_embeddings(glove, vocab, embed_dim=4, cache_dir=cache, verbose=False)
    assert len(count_parses) == 4
    assert torch.equal(matrix[vocab["dog"]], torch.from_numpy(changed["dog"]))

    with pytest.raises(ValueError, match="has 4-dimensional vectors but embed_dim=3"):
        load_glove_embeddings(glove, vocab, embed_dim=3, cache_dir=cache, verbose=False)


def test_default_cache_sits_beside_the_file_or_in_the_user_cache(tmp_path, monkeypatch):
    glove = write_glove_file(tmp_path / "data" / "g.txt", {"dog": [1.0, 2.0]})
    vocab = make_vocab(["dog"])

    load_glove_embeddings(glove, vocab, embed_dim=2, verbose=False)
    assert len(list((tmp_path / "data" / "glove_cache").glob("g.2d.*.npy"))) == 1

    read_only = tmp_path / "data"  # like /kaggle/input: the user cache is used instead
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if os.fspath(p) == str(read_only) else real_access(p, mode)
    )
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    matrix = load_glove_embeddings(glove, vocab, embed_dim=2, verbose=False)
    assert matrix[vocab["dog"]].tolist() == [1.0, 2.0]
    assert len(list((tmp_path / "xdg" / "captioning" / "glove").glob("g.2d.*.npy"))) == 1


def test_session_cache_folder_from_the_environment_wins(tmp_path, monkeypatch):
    glove = write_glove_file(tmp_path / "data" / "g.txt", {"dog": [1.0, 2.0]})
    monkeypatch.setenv(embeddings.GLOVE_CACHE_ENV, str(tmp_path / "working" / "glove_cache"))
    load_glove_embeddings(glove, make_vocab(["dog"]), embed_dim=2, verbose=False)
    assert len(list((tmp_path / "working" / "glove_cache").glob("g.2d.*.npy"))) == 1
    assert not (tmp_path / "data" / "glove_cache").exists()


def test_unwritable_or_corrupt_cache_only_warns(tmp_path):
    glove = write_glove_file(tmp_path / "g.txt", {"dog": [1.0, 2.0]})
    vocab = make_vocab(["dog"])
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    with pytest.warns(UserWarning, match="could not cache the GloVe matrix"):
        matrix = load_glove_embeddings(glove, vocab, embed_dim=2, cache_dir=not_a_folder, verbose=False)
    assert matrix[vocab["dog"]].tolist() == [1.0, 2.0]

    cache = tmp_path / "cache"
    load_glove_embeddings(glove, vocab, embed_dim=2, cache_dir=cache, verbose=False)
    (info_file,) = cache.glob("*.json")
    info_file.write_text("{not json")
    with pytest.warns(UserWarning, match="ignoring unreadable GloVe cache"):
        matrix = load_glove_embeddings(glove, vocab, embed_dim=2, cache_dir=cache, verbose=False)
    assert matrix[vocab["dog"]].tolist() == [1.0, 2.0]
    assert json.loads(info_file.read_text())["coverage"]["found"] == 1, "the rebuilt cache replaces it"


def test_nearest_neighbours_rank_by_cosine():
    vocab = make_vocab(["dog", "puppy", "cat", "car"])
    matrix = torch.zeros(len(vocab), 2)
    matrix[vocab["<START>"]] = torch.tensor([1.0, 0.0])  # identical direction, but a special token
    matrix[vocab["dog"]] = torch.tensor([1.0, 0.0])
    matrix[vocab["puppy"]] = torch.tensor([3.0, 1.0])
    matrix[vocab["cat"]] = torch.tensor([1.0, 1.0])
    matrix[vocab["car"]] = torch.tensor([-1.0, 2.0])

    neighbours = nearest_neighbours(matrix.numpy(), vocab, "Dog", k=2)

    assert [word for word, _ in neighbours] == ["puppy", "cat"]
    assert neighbours[0][1] == pytest.approx(3 / np.sqrt(10))
    assert neighbours[1][1] == pytest.approx(1 / np.sqrt(2))
    assert [word for word, _ in nearest_neighbours(matrix, vocab, "dog", k=10)] == ["puppy", "cat", "car"]
    with pytest.raises(KeyError, match="'horse' is not in the vocabulary"):
        nearest_neighbours(matrix, vocab, "horse")


def test_word_embedding_forward_and_init():
    torch.manual_seed(0)
    layer = WordEmbedding(vocab_size=400, embed_size=30)
    x = torch.tensor([[0, 5, 399], [7, 7, 1]])

    out = layer(x)

    assert out.shape == (2, 3, 30)
    assert torch.equal(out, layer.W_embed[x])
    assert layer.W_embed.std().item() == pytest.approx(1 / np.sqrt(400), rel=0.05)


def test_word_embedding_copies_pretrained_and_checks_shape():
    pretrained = np.arange(12, dtype=np.float64).reshape(4, 3)
    layer = WordEmbedding(4, 3, pretrained_embeddings=pretrained)
    pretrained[0, 0] = 100.0
    assert layer.W_embed.dtype == torch.float32
    assert layer.W_embed[0].tolist() == [0.0, 1.0, 2.0]
    assert torch.equal(layer(torch.tensor([[3]]))[0, 0], torch.tensor([9.0, 10.0, 11.0]))
    with pytest.raises(ValueError, match=r"shape \(4, 3\).*\(vocab_size, embed_size\) = \(5, 3\)"):
        WordEmbedding(5, 3, pretrained_embeddings=torch.zeros(4, 3))


def test_frozen_embedding_gets_no_gradient_and_unfreezes():
    torch.manual_seed(0)
    layer = WordEmbedding(10, 4, freeze=True)
    head = torch.nn.Linear(4, 1)
    # Weight decay and momentum would move any parameter the optimizer visits (SGD: no torch._dynamo import).
    parameters = list(layer.parameters()) + list(head.parameters())
    optimizer = torch.optim.SGD(parameters, lr=0.1, momentum=0.9, weight_decay=0.1)
    x = torch.tensor([[1, 2, 3]])
    before = layer.W_embed.detach().clone()

    head(layer(x)).sum().backward()
    optimizer.step()

    assert layer.freeze and not layer.W_embed.requires_grad
    assert layer.W_embed.grad is None and head.weight.grad is not None
    assert torch.equal(layer.W_embed, before)

    layer.freeze = False  # "unfreeze after N epochs"
    optimizer.zero_grad()
    head(layer(x)).sum().backward()
    assert torch.count_nonzero(layer.W_embed.grad[[1, 2, 3]]) > 0
    assert torch.count_nonzero(layer.W_embed.grad[[0, 4]]) == 0
    optimizer.step()
    assert not torch.equal(layer.W_embed[1], before[1])

    head(layer(x)).sum().backward()
    layer.freeze = True  # freezing drops a pending gradient so the optimizer cannot apply it
    frozen_values = layer.W_embed.detach().clone()
    optimizer.step()
    assert layer.W_embed.grad is None
    assert torch.equal(layer.W_embed, frozen_values)


def test_download_glove_finds_the_file_in_the_kaggle_folder(tmp_path, monkeypatch):
    import kagglehub

    from helpers.embeddings import download_glove

    mounted = tmp_path / "mount" / "glove6b300dtxt"
    write_glove_file(mounted / "glove.6B.300d.txt", {"dog": np.ones(300, dtype=np.float32)})
    asked = []

    def attached(handle, **kwargs):
        asked.append(handle)
        return str(mounted)

    monkeypatch.setattr(kagglehub, "dataset_download", attached)
    assert download_glove(300, verbose=False) == mounted / "glove.6B.300d.txt"
    assert asked == ["thanakomsn/glove6b300dtxt"]


def test_download_glove_offline_says_how_to_fix(monkeypatch, tmp_path):
    import kagglehub

    from helpers.embeddings import download_glove

    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "empty-cache"))

    def offline(handle, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    with pytest.raises(FileNotFoundError, match="glove.6B.100d.txt") as caught:
        download_glove(100, timeout=5, verbose=False)
    assert "danielwillgeorge/glove6b100dtxt" in str(caught.value) and "USE_GLOVE=False" in str(caught.value)
    with pytest.raises(ValueError, match="not 77"):
        download_glove(77)


def test_download_glove_finds_a_copy_in_any_attached_dataset(tmp_path, monkeypatch):
    import kagglehub

    from helpers.embeddings import download_glove

    attached = tmp_path / "input" / "datasets" / "someone" / "glove-vectors" / "glove.6B.100d.txt"
    write_glove_file(attached, {"dog": np.ones(100, dtype=np.float32)})

    def no_kagglehub(handle, **kwargs):
        raise AssertionError("an attached copy needs no kagglehub call")

    monkeypatch.setattr(kagglehub, "dataset_download", no_kagglehub)
    assert download_glove(100, verbose=False, kaggle_input=tmp_path / "input") == attached
