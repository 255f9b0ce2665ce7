"""prepare_dataset: artifacts checked against the captions file, bad rows, splits, idempotence,
keys and interrupted builds."""

import csv
import json
import os
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import helpers.prepare as prepare_module
from helpers.prepare import SPLITS, PreparedDataset, prepare_dataset
from helpers.sources import (
    FLICKR8K_SPLIT_FILES,
    SHIPPED_FLICKR8K_SPLIT,
    DatasetFormatError,
    read_split_lists,
)
from helpers.text import END, SPECIAL_TOKENS, START, tokenize


def write_image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 200, 10)).save(path)


def make_flickr(root, rows, images):
    """A Flickr8k-layout folder: captions.txt written with the csv module, tiny JPEGs."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "captions.txt", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["image", "caption"])
        writer.writerows(rows)
    for name in images:
        write_image(root / "Images" / name)
    return root


def ten_images(root):
    """img0..img9, five captions each; every word occurs often enough for min_word_count=5."""
    rows = [
        (f"img{i}.jpg", f"a {colour} dog number {i % 2}, running")
        for i in range(10)
        for colour in ("red", "blue", "green", "black", "white")
    ]
    return make_flickr(root, rows, [f"img{i}.jpg" for i in range(10)])


def read_demo_captions(demo_dir):
    with open(demo_dir / "captions.txt", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))[1:]
    by_image = defaultdict(list)
    for image, caption in rows:
        by_image[image].append(" ".join(tokenize(caption)))
    return by_image


def test_artifacts_match_the_captions_file(demo_dir, tmp_path):
    prepared = prepare_dataset("flickr8k", data_dir=demo_dir, work_dir=tmp_path, verbose=False)
    expected = read_demo_captions(demo_dir)

    assert prepared.root == tmp_path / "data" / prepared.key and prepared.key.startswith("flickr8k-")
    assert prepared.image_dir == demo_dir / "Images"
    assert {split: len(images) for split, images in prepared.splits.items()} == {
        "train": 96,
        "val": 12,
        "test": 12,
    }
    all_images = [image for images in prepared.splits.values() for image in images]
    assert sorted(all_images) == sorted(expected)  # every image in exactly one split
    assert prepared.manifest["split_method"] == "seeded" and prepared.manifest["dropped"] == {}

    for split, images in prepared.splits.items():
        assert images == sorted(images)
        encoded, image_index = prepared.captions(split)
        assert encoded.dtype == np.int32 and encoded.shape == (
            5 * len(images),
            prepared.max_caption_length + 2,
        )
        assert image_index.dtype == np.int32
        assert (encoded[:, 0] == prepared.vocab.word_to_idx[START]).all()
        decoded = defaultdict(list)
        for row, index in zip(encoded, image_index):
            decoded[images[index]].append(prepared.vocab.decode(row))
        assert {image: sorted(c) for image, c in decoded.items()} == {i: sorted(expected[i]) for i in images}
        assert prepared.references(split) == {image: expected[image] for image in images}
        assert prepared.image_path(images[0]).is_file()

    counts = prepared.manifest["counts"]
    assert counts["captions"] == {"train": 480, "val": 60, "test": 60}
    assert counts["vocabulary"] == len(prepared.vocab)
    with pytest.raises(KeyError, match="unknown split 'dev'"):
        prepared.captions("dev")


def test_bad_rows_are_dropped_and_reported_by_line(tmp_path):
    rows = [
        ("img0.jpg", "A red ball ."),  # line 2
        ("img0.jpg", "   "),  # line 3: whitespace only
        ("img0.jpg", "a red ball"),  # line 4: repeats line 2 (kept: a reference)
        ("missing.jpg", "a ghost"),  # line 5: no such image
        ("zero.jpg", "a zero byte image"),  # line 6
        ("img1.jpg", ""),  # line 7: empty
        ("img1.jpg", "..."),  # line 8: no words
        ("img1.jpg", "a blue ball"),  # line 9
        ("img2.jpg", "a green ball"),  # line 10
    ]
    data = make_flickr(tmp_path / "data", rows, ["img0.jpg", "img1.jpg", "img2.jpg", "orphan.jpg"])
    (data / "Images" / "zero.jpg").write_bytes(b"")
    prepared = prepare_dataset(
        "mine",
        data_dir=data,
        work_dir=tmp_path / "work",
        min_word_count=1,
        val_size=1,
        test_size=1,
        verbose=False,
    )
    dropped = {reason: entry["examples"] for reason, entry in prepared.manifest["dropped"].items()}
    assert dropped == {
        "empty or whitespace-only caption": ["captions.txt line 3", "captions.txt line 7"],
        "image file not found": ["captions.txt line 5: missing.jpg"],
        "image file is empty (0 bytes)": ["captions.txt line 6: zero.jpg"],
        "caption has no words": ["captions.txt line 8: '...'"],
        "image without captions": ["orphan.jpg"],
    }
    assert sorted(sum(prepared.splits.values(), [])) == ["img0.jpg", "img1.jpg", "img2.jpg"]
    in_train = "img0.jpg" in prepared.splits["train"]  # its repeated caption is left out of training only
    assert sum(prepared.manifest["counts"]["captions"].values()) == 4 - in_train
    assert f"{5 + in_train} caption rows left out, 1 images without captions" in prepared.summary()

    with pytest.raises(
        DatasetFormatError,
        match=r"2 of the 5 images named in .*captions.txt are missing or empty "
        r"in .*Images \(more than the 1 that data.max_bad_images=1 allows\), e.g. missing.jpg "
        r"\(captions.txt line 5: image file not found\); zero.jpg.*data.max_bad_images=0.05",
    ):
        prepare_dataset(
            "mine",
            data_dir=data,
            work_dir=tmp_path / "work",
            min_word_count=1,
            val_size=1,
            test_size=1,
            max_bad_images=1,
            verbose=False,
        )


def test_wrong_header_and_missing_captions_are_errors(tmp_path):
    data = ten_images(tmp_path / "data")
    text = (data / "captions.txt").read_text()
    (data / "captions.txt").write_text(text.replace("image,caption", "filename,text", 1))
    with pytest.raises(DatasetFormatError, match="captions.txt line 1: expected the header 'image,caption'"):
        prepare_dataset("flickr8k", data_dir=data, work_dir=tmp_path / "work", verbose=False)
    (data / "captions.txt").unlink()
    with pytest.raises(DatasetFormatError, match="the captions file is missing"):
        prepare_dataset("flickr8k", data_dir=data, work_dir=tmp_path / "work", verbose=False)
    assert not (tmp_path / "work" / "data").exists() or not any((tmp_path / "work" / "data").iterdir())


def test_non_utf8_row_is_dropped_and_reported(tmp_path):
    data = ten_images(tmp_path / "data")
    raw = (data / "captions.txt").read_bytes().replace(b"a red dog number 0, running", b"a r\xe9d dog", 1)
    (data / "captions.txt").write_bytes(raw)
    prepared = prepare_dataset("flickr8k", data_dir=data, work_dir=tmp_path / "work", verbose=False)
    assert prepared.manifest["dropped"]["not valid UTF-8"] == {
        "count": 1,
        "examples": ["captions.txt line 2: 'img0.jpg,\"a r\ufffdd dog\"\\n'"],
    }
    assert sum(prepared.manifest["counts"]["captions"].values()) == 49


def write_karpathy(path, assignment, dataset="flickr8k"):
    images = [
        {"filename": name, "split": split, "sentences": [{"raw": "x", "tokens": ["x"]}]}
        for name, split in assignment.items()
    ]
    path.write_text(json.dumps({"dataset": dataset, "images": images}))
    return path


KARPATHY = {
    "img0.jpg": "train",
    "img1.jpg": "restval",
    "img2.jpg": "train",
    "img3.jpg": "train",
    "img4.jpg": "restval",
    "img5.jpg": "train",
    "img6.jpg": "val",
    "img7.jpg": "val",
    "img8.jpg": "test",
    "not_ours.jpg": "test",
}


def test_karpathy_split_found_next_to_the_data(tmp_path):
    data = ten_images(tmp_path / "data")
    write_karpathy(data / "dataset_flickr8k.json", KARPATHY)
    prepared = prepare_dataset("flickr8k", data_dir=data, work_dir=tmp_path / "work", verbose=False)
    assert prepared.manifest["split_method"] == "karpathy"
    assert prepared.splits == {
        "train": [f"img{i}.jpg" for i in range(6)],
        "val": ["img6.jpg", "img7.jpg"],
        "test": ["img8.jpg"],
    }
    assert prepared.manifest["dropped"]["image not in the Karpathy split"] == {
        "count": 5,  # caption rows: img9.jpg has five
        "examples": ["img9.jpg"],
    }

    seeded = prepare_dataset(
        "flickr8k",
        data_dir=data,
        work_dir=tmp_path / "work",
        split="seeded",
        val_size=2,
        test_size=2,
        verbose=False,
    )
    assert seeded.manifest["split_method"] == "seeded" and seeded.key != prepared.key
    assert [len(seeded.splits[s]) for s in ("train", "val", "test")] == [6, 2, 2]


def test_vocabulary_comes_from_the_training_split_only(tmp_path):
    data = ten_images(tmp_path / "data")
    rows = list(csv.reader((data / "captions.txt").open()))[1:] + [
        ("img8.jpg", "zebra zebra zebra zebra zebra")
    ]
    make_flickr(data, rows, [])
    karpathy = write_karpathy(tmp_path / "split.json", KARPATHY)
    prepared = prepare_dataset(
        "flickr8k", data_dir=data, work_dir=tmp_path / "work", karpathy_json=karpathy, verbose=False
    )
    assert "zebra" not in prepared.vocab.word_to_idx
    assert "zebra zebra zebra zebra zebra" in prepared.references("test")["img8.jpg"]
    decoded = prepared.vocab.decode_batch(prepared.captions("test")[0])
    assert "<UNK> <UNK> <UNK> <UNK> <UNK>" in decoded
    assert "(words seen >= 5 times in the training captions)" in prepared.summary()

    def vocab_from_all(min_word_count):
        return prepare_dataset("flickr8k", data_dir=data, work_dir=tmp_path / "work", karpathy_json=karpathy,
                               vocab_from="all", min_word_count=min_word_count, verbose=False)

    every_split = vocab_from_all(5)  # zebra: 5 times, all in the test split; >= 5 keeps it
    assert "zebra" in every_split.vocab.word_to_idx and every_split.key != prepared.key
    assert "(words seen >= 5 times in the captions of every split)" in every_split.summary()
    assert every_split.references("test") == prepared.references("test")
    assert "zebra" not in vocab_from_all(6).vocab.word_to_idx  # sgrvinod's "more than 5"
    with pytest.raises(ValueError, match="vocab_from must be one of train, all, got 'val'"):
        prepare_dataset("flickr8k", data_dir=data, work_dir=tmp_path / "work", vocab_from="val")


def test_repeated_captions_stay_references_and_leave_the_training_captions_only(tmp_path):
    data = ten_images(tmp_path / "data")
    rows = list(csv.reader((data / "captions.txt").open()))[1:]
    rows += [("img0.jpg", "A red dog number 0 running."), ("img6.jpg", "a RED dog number 0, running")]
    make_flickr(data, rows, [])  # lines 52 and 53 repeat lines 2 (train) and 32 (val) up to case and stops
    karpathy = write_karpathy(tmp_path / "split.json", KARPATHY)
    prepared = prepare_dataset(
        "flickr8k", data_dir=data, work_dir=tmp_path / "work", karpathy_json=karpathy, verbose=False
    )
    assert len(prepared.references("train")["img0.jpg"]) == len(prepared.references("val")["img6.jpg"]) == 6
    assert prepared.references("val")["img6.jpg"].count("a red dog number 0 running") == 2
    train, train_image = prepared.captions("train")
    assert (train_image == prepared.splits["train"].index("img0.jpg")).sum() == 5
    assert prepared.manifest["counts"]["captions"] == {"train": 30, "val": 11, "test": 5}
    repeats = prepared.manifest["dropped"][prepare_module.REPEATED_TRAINING_CAPTION]
    assert repeats == {"count": 1, "examples": ["captions.txt line 52 repeats captions.txt line 2"]}
    assert "6 caption rows left out" in prepared.summary()  # img9's five, and the repeat


def test_format_version_is_part_of_the_key(demo_dir, tmp_path, monkeypatch):
    """Data prepared under other tokenisation or dedup rules (an older format) is never reused."""
    first = prepare_dataset("flickr8k", data_dir=demo_dir, work_dir=tmp_path, verbose=False)
    monkeypatch.setattr(prepare_module, "FORMAT_VERSION", prepare_module.FORMAT_VERSION + 1)
    second = prepare_dataset("flickr8k", data_dir=demo_dir, work_dir=tmp_path, verbose=False)
    assert second.key != first.key and second.manifest["format_version"] == prepare_module.FORMAT_VERSION
    assert prepare_module._trusted_manifest(first.root) is None  # the old folder is not trusted either


def test_karpathy_split_that_does_not_fit_the_images(tmp_path):
    data = ten_images(tmp_path / "data")
    wrong = write_karpathy(
        tmp_path / "dataset_flickr30k.json",
        {f"{1000092795 + i}.jpg": "train" for i in range(20)},
        dataset="flickr30k",
    )
    with pytest.raises(
        DatasetFormatError,
        match=r"dataset_flickr30k.json \(dataset 'flickr30k', 20 images\) does "
        r"not fit .*captions.txt: only 0 of its 10 images are in the split "
        r"\(0 in train\). Examples from the json: \['1000092795.jpg', "
        r".*examples from the captions: \['img0.jpg'",
    ):
        prepare_dataset(
            "flickr8k", data_dir=data, work_dir=tmp_path / "work", karpathy_json=wrong, verbose=False
        )
    with pytest.raises(  # Flickr8k's standard split ships with the package: these are not its images
        DatasetFormatError,
        match=r"Karpathy split .*flickr8k \(dataset 'flickr8k', 8,000 images\) does not fit",
    ):
        prepare_dataset(
            "flickr8k", data_dir=data, work_dir=tmp_path / "work", split="karpathy", verbose=False
        )
    with pytest.raises(FileNotFoundError, match="karpathy_json .*nope.json does not exist"):
        prepare_dataset(
            "flickr8k", data_dir=data, work_dir=tmp_path / "work", karpathy_json=tmp_path / "nope.json"
        )


def test_coco_with_a_karpathy_split_in_2014_names(tmp_path):
    coco = tmp_path / "coco2017"
    (coco / "annotations").mkdir(parents=True)
    ids = {391895: "train2017", 522418: "train2017", 37777: "val2017", 87038: "val2017"}
    for subdir in ("train2017", "val2017"):
        mine = [i for i, s in ids.items() if s == subdir]
        (coco / "annotations" / f"captions_{subdir}.json").write_text(
            json.dumps(
                {
                    "images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in mine],
                    "annotations": [
                        {"id": 10 * i + k, "image_id": i, "caption": f"a photo number {k}"}
                        for i in mine
                        for k in range(5)
                    ],
                }
            )
        )
        for i in mine:
            write_image(coco / subdir / f"{i:012d}.jpg")
    split = {391895: "restval", 522418: "train", 37777: "test", 87038: "val"}
    (tmp_path / "dataset_coco.json").write_text(
        json.dumps(
            {
                "dataset": "coco",
                "images": [
                    {
                        "filepath": "val2014",
                        "filename": f"COCO_val2014_{i:012d}.jpg",
                        "cocoid": i,
                        "split": s,
                        "sentences": [],
                    }
                    for i, s in split.items()
                ],
            }
        )
    )
    prepared = prepare_dataset(
        "coco", data_dir=tmp_path, work_dir=tmp_path / "work", min_word_count=1, verbose=False
    )
    assert prepared.splits == {
        "train": ["train2017/000000391895.jpg", "train2017/000000522418.jpg"],
        "val": ["val2017/000000087038.jpg"],
        "test": ["val2017/000000037777.jpg"],
    }
    assert prepared.image_path(prepared.splits["test"][0]).is_file()
    assert prepared.manifest["counts"]["captions"] == {"train": 10, "val": 5, "test": 5}


def test_old_flickr30k_layout(tmp_path):
    outer = tmp_path / "flickr30k_images"
    lines = ["image_name| comment_number| comment"]
    for i in range(10):
        lines += [f"{1000 + i}.jpg| {k}| A dog , number {k} ." for k in range(5)]
        write_image(outer / "flickr30k_images" / f"{1000 + i}.jpg")
    (outer / "results.csv").write_text("\n".join(lines) + "\n")
    prepared = prepare_dataset("flickr30k", data_dir=tmp_path, work_dir=tmp_path / "work", verbose=False)
    assert prepared.image_dir == outer / "flickr30k_images"
    assert sum(prepared.manifest["counts"]["captions"].values()) == 50
    assert prepared.vocab.idx_to_word[4:] == [
        "a",
        "dog",
        "number",
        "0",
        "1",
        "2",
        "3",
        "4",
    ]  # 8 training images: each of a/dog/number 40 times, each digit 8 times


def test_truncation_keeps_the_first_words_and_end_and_is_counted(demo_dir, tmp_path):
    prepared = prepare_dataset(
        "flickr8k", data_dir=demo_dir, work_dir=tmp_path, max_caption_length=8, verbose=False
    )
    expected = [c for captions in read_demo_captions(demo_dir).values() for c in captions]
    long_ones = sum(len(c.split()) > 8 for c in expected)
    assert 0 < long_ones < len(expected)
    assert prepared.manifest["counts"]["truncated_captions"] == long_ones
    encoded = np.concatenate([prepared.captions(s)[0] for s in ("train", "val", "test")])
    assert encoded.shape == (600, 10)
    assert ((encoded == prepared.vocab.word_to_idx[END]).sum(axis=1) == 1).all()
    decoded = prepared.vocab.decode_batch(encoded)
    assert sorted(decoded) == sorted(" ".join(c.split()[:8]) for c in expected)


def test_seeded_split_is_reproducible_and_validated(demo_dir, tmp_path):
    first = prepare_dataset("flickr8k", data_dir=demo_dir, work_dir=tmp_path / "a", verbose=False)
    again = prepare_dataset("flickr8k", data_dir=demo_dir, work_dir=tmp_path / "b", verbose=False)
    other = prepare_dataset("flickr8k", data_dir=demo_dir, work_dir=tmp_path / "a", seed=1, verbose=False)
    assert first.splits == again.splits and first.key == again.key
    assert other.splits != first.splits
    sized = prepare_dataset(
        "flickr8k", data_dir=demo_dir, work_dir=tmp_path / "a", val_size=20, test_size=0.25, verbose=False
    )
    assert [len(sized.splits[s]) for s in ("train", "val", "test")] == [70, 20, 30]
    with pytest.raises(ValueError, match="leave no training images out of 120"):
        prepare_dataset("flickr8k", data_dir=demo_dir, work_dir=tmp_path, val_size=0.6, test_size=0.5)
    with pytest.raises(
        ValueError, match="val_size must be a fraction in \\[0, 1\\) or an image count, got 1.5"
    ):
        prepare_dataset("flickr8k", data_dir=demo_dir, work_dir=tmp_path, val_size=1.5)
    with pytest.raises(ValueError, match="split must be None, 'karpathy' or 'seeded'"):
        prepare_dataset("flickr8k", data_dir=demo_dir, work_dir=tmp_path, split="random")
    with pytest.raises(ValueError, match="dataset name '../up' may only use"):
        prepare_dataset("../up", data_dir=demo_dir, work_dir=tmp_path)


def file_times(root):
    return {p.name: p.stat().st_mtime_ns for p in root.iterdir()}


def test_second_call_reuses_without_rewriting(demo_dir, tmp_path, monkeypatch, capsys):
    prepared = prepare_dataset("flickr8k", data_dir=demo_dir, work_dir=tmp_path)
    assert "prepared flickr8k (seeded split): images train 96 / val 12 / test 12" in capsys.readouterr().out
    before = file_times(prepared.root)

    def no_rebuild(*args, **kwargs):
        raise AssertionError("artifacts were rebuilt")

    monkeypatch.setattr(prepare_module, "_write_artifacts", no_rebuild)
    again = prepare_dataset("flickr8k", data_dir=demo_dir, work_dir=tmp_path)
    assert "reusing flickr8k" in capsys.readouterr().out
    assert file_times(again.root) == before
    assert again.root == prepared.root and again.vocab == prepared.vocab and again.splits == prepared.splits
    loaded = PreparedDataset.load(prepared.root)
    assert np.array_equal(loaded.captions("val")[0], prepared.captions("val")[0])
    assert sorted(os.listdir(tmp_path / "data")) == [prepared.key]  # no temp folders left


def test_different_settings_or_captions_never_share_a_key(demo_dir, tmp_path):
    def key(data=demo_dir, dataset="flickr8k", **settings):
        return prepare_dataset(dataset, data_dir=data, work_dir=tmp_path, verbose=False, **settings).key

    base = key()
    variants = [
        key(min_word_count=4),
        key(vocab_from="all"),
        key(max_caption_length=10),
        key(seed=3),
        key(val_size=0.2),
        key(dataset="demo_copy"),
    ]
    assert len({base, *variants}) == 1 + len(variants)
    assert key() == base

    copy = tmp_path / "copy"
    shutil.copytree(demo_dir, copy)
    assert key(copy) == base  # same contents, same artifacts
    with open(copy / "captions.txt", "a") as f:
        f.write("shapes_00000.jpg,one more caption\n")
    assert key(copy) != base


def test_moved_images_update_the_manifest_not_the_artifacts(tmp_path):
    first = ten_images(tmp_path / "first")
    prepared = prepare_dataset("flickr8k", data_dir=first, work_dir=tmp_path / "work", verbose=False)
    before = file_times(prepared.root)
    moved = tmp_path / "moved"
    shutil.move(first, moved)
    again = prepare_dataset("flickr8k", data_dir=moved, work_dir=tmp_path / "work", verbose=False)
    assert again.key == prepared.key and again.image_dir == moved / "Images"
    assert PreparedDataset.load(again.root).image_path("img0.jpg") == moved / "Images" / "img0.jpg"
    after = file_times(again.root)
    assert {n: t for n, t in after.items() if n != "manifest.json"} == {
        n: t for n, t in before.items() if n != "manifest.json"
    }


def test_interrupted_build_leaves_nothing_trusted(demo_dir, tmp_path, monkeypatch):
    real_write_json = prepare_module._write_json

    def interrupted(path, data):
        if path.name == "references.json":
            raise KeyboardInterrupt
        real_write_json(path, data)

    monkeypatch.setattr(prepare_module, "_write_json", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset("flickr8k", data_dir=demo_dir, work_dir=tmp_path, verbose=False)
    assert os.listdir(tmp_path / "data") == []

    monkeypatch.setattr(prepare_module, "_write_json", real_write_json)
    prepared = prepare_dataset("flickr8k", data_dir=demo_dir, work_dir=tmp_path, verbose=False)
    assert prepared.manifest["complete"] and sum(prepared.manifest["counts"]["captions"].values()) == 600


def test_killed_build_and_damaged_folder_are_rebuilt(demo_dir, tmp_path):
    prepared = prepare_dataset("flickr8k", data_dir=demo_dir, work_dir=tmp_path, verbose=False)
    expected_captions = prepared.captions("train")[0].copy()
    # What a killed run leaves: a half-built folder of a dead process, and a damaged final folder.
    abandoned = tmp_path / "data" / f".{prepared.key}.building-999999999-x1y2"
    abandoned.mkdir()
    (abandoned / "vocab.json").write_text("{}")
    with open(prepared.root / "captions.npy", "r+b") as f:
        f.truncate(100)
    with pytest.raises(FileNotFoundError, match="is not a complete prepared dataset"):
        PreparedDataset.load(prepared.root)

    rebuilt = prepare_dataset("flickr8k", data_dir=demo_dir, work_dir=tmp_path, verbose=False)
    assert np.array_equal(rebuilt.captions("train")[0], expected_captions)
    assert sorted(os.listdir(tmp_path / "data")) == [prepared.key]


def test_demo_dataset_is_generated_in_the_work_dir(tmp_path):
    prepared = prepare_dataset("demo", work_dir=tmp_path, verbose=False)
    assert prepared.image_dir == tmp_path / "sources" / "demo" / "Images"
    assert sum(len(images) for images in prepared.splits.values()) == prepare_module.DEMO_IMAGES
    assert prepare_dataset("demo", work_dir=tmp_path, verbose=False).key == prepared.key


# ------------------------------------------------------------------------ the standard split without a file

SHARED = Path(os.environ.get("CAPTIONING_SHARED_DIR") or Path(__file__).resolve().parents[2] / "shared")
REALDATA = SHARED / "realdata"
needs_realdata = pytest.mark.skipif(
    not (REALDATA / "flickr8k_kaggle" / "captions.txt").is_file(), reason="../shared/realdata is absent"
)


def write_split_lists(folder, assignment):
    """The official Flickr8k release's three split lists for `assignment` (restval counts as train)."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, name in FLICKR8K_SPLIT_FILES.items():
        names = [image for image, s in assignment.items() if s.replace("restval", "train") == split]
        (folder / name).write_text("".join(f"{image}\n" for image in names))


def test_split_lists_beside_the_data_and_the_karpathy_json_give_the_same_prepared_data(tmp_path):
    with_json = ten_images(tmp_path / "json")
    write_karpathy(with_json / "dataset_flickr8k.json", KARPATHY)
    with_lists = ten_images(tmp_path / "lists")
    write_split_lists(with_lists / "Flickr8k_text", KARPATHY)
    from_json = prepare_dataset("flickr8k", data_dir=with_json, work_dir=tmp_path / "a", verbose=False)
    from_lists = prepare_dataset("flickr8k", data_dir=with_lists, work_dir=tmp_path / "b", verbose=False)
    assert from_lists.manifest["source"]["karpathy_json"]["name"] == "Flickr8k_text"
    assert from_lists.splits == from_json.splits == {
        "train": [f"img{i}.jpg" for i in range(6)], "val": ["img6.jpg", "img7.jpg"], "test": ["img8.jpg"],
    }
    assert from_lists.key == from_json.key  # the same split: feature stores keyed by it are shared


def test_an_image_in_two_split_lists_is_named(tmp_path):
    lists = tmp_path / "lists"
    write_split_lists(lists, {"a.jpg": "train", "b.jpg": "val"})
    (lists / FLICKR8K_SPLIT_FILES["test"]).write_text("c.jpg\na.jpg\n")
    expected = r"Flickr_8k.testImages.txt line 2: a.jpg is also in the train list"
    with pytest.raises(DatasetFormatError, match=expected):
        read_split_lists(lists)


def test_missing_karpathy_split_of_flickr30k_is_one_message_with_the_notebook_fix(
    tmp_path, monkeypatch, capsys
):
    import kagglehub

    def offline(handle, *args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "empty_cache"))
    inputs = tmp_path / "input"
    monkeypatch.setenv("KAGGLE_INPUT_DIR", str(inputs))
    ten_images(inputs / "datasets" / "adityajn105" / "flickr30k")
    with pytest.raises(DatasetFormatError) as caught:
        prepare_dataset("flickr30k", work_dir=tmp_path / "work", split="karpathy")
    message = str(caught.value)
    mount = inputs / "datasets" / "adityajn105" / "flickr30k"
    assert message.startswith(
        "split='karpathy' needs the Karpathy split file dataset_flickr30k.json, but it is not beside the "
        f"data in {mount} nor attached under {inputs}, and kagglehub could not get it (could not get the "
        "Kaggle dataset 'shtvkumar/karpathy-splits': ConnectionError: offline)"
    )
    assert "attach the Kaggle dataset 'shtvkumar/karpathy-splits' (Add Input -> Datasets)" in message
    assert 'parameters cell set OVERRIDES = ["data.split=seeded"]' in message
    assert "on the command line add data.split=seeded" in message
    assert "seeded split" not in capsys.readouterr().out  # no notice that contradicts the error

    seeded = prepare_dataset("flickr30k", work_dir=tmp_path / "work", split=None, min_word_count=1)
    assert seeded.manifest["split_method"] == "seeded"
    notices = [line for line in capsys.readouterr().out.splitlines() if "Karpathy" in line]
    assert len(notices) == 1 and "using a seeded split by image" in notices[0]


def test_the_override_the_message_names_sets_a_seeded_split(tmp_path):
    from helpers.notebook import Env
    from helpers.stages import stage_config

    env = Env(False, "cpu", None, None, tmp_path, ())
    assert stage_config("LSTM", {}, env).data.split == "karpathy"
    assert stage_config("LSTM", {"OVERRIDES": ["data.split=seeded"]}, env).data.split == "seeded"


@needs_realdata
def test_shipped_flickr8k_split_lists_are_the_official_release():
    for name in FLICKR8K_SPLIT_FILES.values():
        shipped = (SHIPPED_FLICKR8K_SPLIT / name).read_bytes()
        assert shipped == (REALDATA / "flickr8k_original" / name).read_bytes()


def real_kaggle_captions():
    """(image, caption) rows of the real Kaggle captions.txt."""
    with open(REALDATA / "flickr8k_kaggle" / "captions.txt", encoding="utf-8", newline="") as f:
        return [tuple(row) for row in list(csv.reader(f))[1:]]


def official_split():
    """image -> train / val / test, from the official release's lists."""
    return {
        image: split
        for split, name in FLICKR8K_SPLIT_FILES.items()
        for image in (REALDATA / "flickr8k_original" / name).read_text().split()
    }


def references_of(rows):
    """image -> its captions, tokenized and space-joined, in file order (every one, repeats included)."""
    references = defaultdict(list)
    for image, caption in rows:
        references[image].append(" ".join(tokenize(caption)))
    return references


def with_placeholder_images(folder, images):
    """Placeholders: preparing checks that each image exists and is not empty, never decodes it."""
    folder.mkdir(parents=True, exist_ok=True)
    for image in images:
        (folder / image).write_bytes(b"x")


@needs_realdata
def test_attached_real_flickr8k_gets_the_standard_split_without_a_split_file(tmp_path, monkeypatch, capsys):
    import kagglehub

    def no_kagglehub(handle, *args, **kwargs):
        raise AssertionError(f"kagglehub called for {handle}")

    monkeypatch.setattr(kagglehub, "dataset_download", no_kagglehub)
    inputs = tmp_path / "input"
    monkeypatch.setenv("KAGGLE_INPUT_DIR", str(inputs))
    attached = inputs / "datasets" / "adityajn105" / "flickr8k"
    rows = real_kaggle_captions()
    with_placeholder_images(attached / "Images", {image for image, _ in rows})
    shutil.copy(REALDATA / "flickr8k_kaggle" / "captions.txt", attached / "captions.txt")

    prepared = prepare_dataset("flickr8k", work_dir=tmp_path / "work", split="karpathy")
    split_of = official_split()
    official = {split: sorted(i for i, s in split_of.items() if s == split) for split in SPLITS}
    assert [len(official[s]) for s in SPLITS] == [6000, 1000, 1000]
    assert prepared.splits == official
    printed = capsys.readouterr().out
    assert "seeded" not in printed

    # Every val/test image keeps all five references, repeats included, as papers score them.
    expected = references_of(rows)
    for split in ("val", "test"):
        assert prepared.references(split) == {image: expected[image] for image in official[split]}
        assert {len(refs) for refs in prepared.references(split).values()} == {5}
    counts = prepared.manifest["counts"]["captions"]
    assert counts["val"] == counts["test"] == 5000

    # Left out, counted in caption rows: the rows of images outside the split, and training repeats.
    outside = sum(1 for image, _ in rows if image not in split_of)
    repeats = sum(len(refs) - len(set(refs)) for image, refs in expected.items()
                  if split_of.get(image) == "train")
    dropped = prepared.manifest["dropped"]
    assert dropped["image not in the Karpathy split"]["count"] == outside == 455
    assert dropped[prepare_module.REPEATED_TRAINING_CAPTION]["count"] == repeats == 17
    assert counts["train"] == 30000 - repeats
    assert f"; {outside + repeats} caption rows left out -> " in prepared.summary()
    assert f"vocabulary {len(prepared.vocab) - len(SPECIAL_TOKENS):,} words + 4 special tokens" in printed
    assert f"  left out {outside} caption rows: image not in the Karpathy split, e.g. " in printed


@needs_realdata
def test_real_flickr8k_vocabulary_rules(tmp_path):
    """Ours (training captions, count >= 5) and neuraltalk2's / sgrvinod's (every split, count > 5,
    i.e. min_word_count=6), each against a count made here from the file."""
    data = tmp_path / "flickr8k"
    rows = real_kaggle_captions()
    with_placeholder_images(data / "Images", {image for image, _ in rows})
    shutil.copy(REALDATA / "flickr8k_kaggle" / "captions.txt", data / "captions.txt")
    split_of = official_split()
    train_counts, all_counts = Counter(), Counter()
    for image, refs in references_of(rows).items():
        if image in split_of:
            all_counts.update(word for ref in refs for word in ref.split())
        if split_of.get(image) == "train":  # training captions: each distinct caption once
            train_counts.update(word for ref in dict.fromkeys(refs) for word in ref.split())

    def words(**settings):
        prepared = prepare_dataset("flickr8k", data_dir=data, work_dir=tmp_path / "work", split="karpathy",
                                   verbose=False, **settings)
        assert prepared.manifest["counts"]["vocabulary_words"] == len(prepared.vocab) - len(SPECIAL_TOKENS)
        return set(prepared.vocab.idx_to_word[len(SPECIAL_TOKENS):])

    ours = words()
    assert ours == {word for word, n in train_counts.items() if n >= 5} and len(ours) == 2533
    sgrvinod = words(vocab_from="all", min_word_count=6)
    assert sgrvinod == {word for word, n in all_counts.items() if n > 5} and len(sgrvinod) == 2626
    assert "'s" in ours  # a word of its own now (GloVe has it too)


@needs_realdata
def test_original_flickr8k_release_layout_gives_the_kaggle_data(tmp_path):
    """Flickr8k.token.txt and the split lists in Flickr8k_text/, images in Flicker8k_Dataset/ beside it."""
    release = tmp_path / "Flickr8k"
    text = release / "Flickr8k_text"
    text.mkdir(parents=True)
    for name in ["Flickr8k.token.txt", *FLICKR8K_SPLIT_FILES.values()]:
        shutil.copy(REALDATA / "flickr8k_original" / name, text / name)
    rows = real_kaggle_captions()
    with_placeholder_images(release / "Flicker8k_Dataset", {image for image, _ in rows})

    prepared = prepare_dataset("flickr8k", data_dir=release, work_dir=tmp_path / "work", verbose=False)
    assert prepared.manifest["source"]["kind"] == "flickr8k_token"
    assert prepared.manifest["split_method"] == "karpathy"
    assert [len(prepared.splits[s]) for s in SPLITS] == [6000, 1000, 1000]
    expected = references_of(rows)
    for split in SPLITS:
        assert prepared.references(split) == {image: expected[image] for image in prepared.splits[split]}
    # The release's stray name (2258277193_586949ec62.jpg.1, five rows) has no image.
    assert prepared.manifest["dropped"]["image file not found"]["count"] == 5
