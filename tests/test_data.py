"""Converters, the COCO loader and the vocabulary, on the real files."""

import json
import logging

import pytest

from caption.data.coco import read_caption_set
from caption.data.convert import convert_flickr8k, convert_karpathy
from caption.data.vocab import Vocabulary, tokenize
from tests.conftest import DATA, require


def test_flickr8k_converter_on_the_real_file(flickr_dir, tmp_path, caplog):
    splits = {name: flickr_dir / f"Flickr_8k.{name}Images.txt" for name in ("train", "dev")}
    with caplog.at_level(logging.WARNING, logger="caption"):
        written = convert_flickr8k(flickr_dir / "Flickr8k.token.txt", splits, tmp_path)
    # The junk "...jpg.1" entry is reported with its file and line, and skipped.
    assert "Flickr8k.token.txt:5846: '2258277193_586949ec62.jpg.1' is not an image file name" in caplog.text

    train = json.loads(written["train"].read_text())
    dev = json.loads(written["dev"].read_text())
    assert (len(train["images"]), len(train["annotations"])) == (6000, 30000)
    assert (len(dev["images"]), len(dev["annotations"])) == (1000, 5000)
    assert not {i["id"] for i in train["images"]} & {i["id"] for i in dev["images"]}
    first = train["images"][0]
    captions = [a["caption"] for a in train["annotations"] if a["image_id"] == first["id"]]
    assert len(captions) == 5
    # Read back through pycocotools: every image exists on disk, five captions each.
    split = read_caption_set(written["dev"], flickr_dir / "images")
    assert len(split) == 1000 and all(len(c) == 5 for c in split.captions.values())


def test_karpathy_converter_splits_and_merges_restval(tmp_path):
    karpathy = {"dataset": "coco", "images": [
        {"filepath": "val2014", "filename": "a.jpg", "cocoid": 1, "split": "train",
         "sentences": [{"raw": "A dog runs.", "tokens": ["a", "dog", "runs"]}]},
        {"filepath": "val2014", "filename": "b.jpg", "cocoid": 2, "split": "restval",
         "sentences": [{"raw": "A cat sits.", "tokens": []}, {"raw": "  ", "tokens": []}]},
        {"filepath": "val2014", "filename": "c.jpg", "cocoid": 3, "split": "val",
         "sentences": [{"raw": "x", "tokens": []}]},
        {"filepath": "val2014", "filename": "d.jpg", "cocoid": 4, "split": "test",
         "sentences": [{"raw": "y", "tokens": []}]},
    ]}
    source = tmp_path / "dataset_coco.json"
    source.write_text(json.dumps(karpathy))
    written = convert_karpathy(source, tmp_path / "out")
    assert sorted(written) == ["test", "train", "val"]
    train = json.loads(written["train"].read_text())
    assert [i["file_name"] for i in train["images"]] == ["val2014/a.jpg", "val2014/b.jpg"]
    # blank caption dropped
    assert [a["caption"] for a in train["annotations"]] == ["A dog runs.", "A cat sits."]

    kept = convert_karpathy(source, tmp_path / "kept", restval_to_train=False)
    assert "restval" in kept

    source.write_text(json.dumps({"images": [{"filename": "a.jpg"}]}))
    with pytest.raises(ValueError, match=r"images\[0\] lacks a field"):
        convert_karpathy(source, tmp_path / "bad")


def test_coco_loader_on_the_full_val2017_captions():
    annotations = require(DATA / "coco" / "annotations" / "captions_val2017.json")
    split = read_caption_set(annotations, None, check_files=False)
    assert len(split) == 5000
    assert sum(len(c) for c in split.captions.values()) == 25014
    vocab = Vocabulary.build(split.all_captions(), min_count=5)
    assert 2000 < len(vocab) < 4000


def test_coco_loader_reports_missing_images(tmp_path, caplog):
    annotations = require(DATA / "coco" / "annotations" / "captions_train2017_sample.json")
    data = json.loads(annotations.read_text())
    data["images"].append({"id": 999999999, "file_name": "not_there.jpg"})
    data["annotations"].append({"id": 1, "image_id": 999999999, "caption": "a ghost"})
    edited = tmp_path / "captions.json"
    edited.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="caption"):
        split = read_caption_set(edited, DATA / "coco" / "train2017")
    assert len(split) == 80
    assert "skipped 1 images listed but missing" in caplog.text and "not_there.jpg" in caplog.text


def test_malformed_coco_file_names_the_entry(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [{"id": 1}], "annotations": []}))
    with pytest.raises(ValueError, match=r"bad.json: images\[0\] needs 'id' and 'file_name'"):
        read_caption_set(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_caption_set(bad)


def test_tokenizer_normalises_case_and_punctuation():
    assert tokenize("A Black-and-white DOG's ball , on ATV 's .") == [
        "a", "black", "and", "white", "dog's", "ball", "on", "atv", "'s"]


def test_vocabulary_round_trip(flickr_splits, tmp_path):
    split = read_caption_set(flickr_splits["train"], None, check_files=False)
    vocab = Vocabulary.build(split.all_captions(), min_count=5, max_length=20)
    assert vocab.words[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert vocab.words[4] == "a"  # the most frequent word in Flickr8k
    vocab.save(tmp_path / "vocab.json")
    loaded = Vocabulary.load(tmp_path / "vocab.json")
    assert loaded.words == vocab.words and loaded.max_length == 20 and loaded.min_count == 5

    ids = loaded.encode("A dog runs through the XYZZYQ grass .")
    assert ids[0] == loaded.bos_id and ids[-1] == loaded.eos_id and loaded.unk_id in ids
    assert loaded.decode(ids) == "a dog runs through the <unk> grass"
    assert len(loaded.encode(" ".join(["dog"] * 50))) == 22  # 20 words + <bos> + <eos>

    (tmp_path / "broken.json").write_text(json.dumps({"words": ["a"]}))
    with pytest.raises(ValueError, match="not a vocabulary file"):
        Vocabulary.load(tmp_path / "broken.json")
