"""Adapting a shipped model to new words (``data.vocab: extend``): every old word keeps its id and weights,
the model captions the data it knows exactly as before, and a few fine-tuning steps on real COCO photos
that show a word the model never had (giraffe) make that word likelier."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from caption.api import Captioner
from caption.cli import main
from caption.data.vocab import Vocabulary
from caption.models.captioner import CaptionModel
from caption.models.io import NEW_WORD_LOGIT_GAP, load_model, load_weights
from caption.training.checkpoint import read_pointer
from tests.conftest import DATA, REPO, require

MODEL = REPO / "models" / "flickr8k-lite0"
COCO_TRAIN = DATA / "coco" / "annotations" / "captions_val2017_subset_train.json"
NEW_WORD = "giraffe"  # 52 times in the COCO train subset's captions, never in Flickr8k's vocabulary


def test_extending_a_vocabulary_keeps_every_word_and_appends_by_frequency():
    vocab = Vocabulary.load(MODEL / "vocab.json")
    extended = vocab.extended(["a giraffe and a hydrant", "two giraffes", "one giraffe", "a dog"], 2)
    assert extended.words[: len(vocab)] == vocab.words
    assert extended.words[len(vocab):] == [NEW_WORD]  # hydrant and giraffes are seen once
    assert vocab.extended(["a giraffe"] * 3, 5).words == vocab.words


def test_an_extended_model_keeps_its_weights_and_captions(flickr_dir):
    model, vocab, meta = load_model(MODEL)
    extended = vocab.extended([f"a {NEW_WORD} eats", f"the {NEW_WORD} and the hydrant"] * 3, 2)
    grown = CaptionModel(model.encoder_cfg, model.decoder_cfg, len(extended))
    load_weights(grown, MODEL, grow_vocab=True)
    old, new = model.decoder.state_dict(), grown.decoder.state_dict()
    V, unk = len(vocab), Vocabulary.unk_id
    for key, value in old.items():
        assert torch.equal(new[key][:V] if key in ("embedding.weight", "output.weight", "output.bias")
                           else new[key], value), key
    assert torch.equal(new["embedding.weight"][V:], old["embedding.weight"][unk].expand(2, -1))
    assert torch.allclose(new["output.bias"][V:], old["output.bias"][unk] - NEW_WORD_LOGIT_GAP)

    photos = [str(p) for p in sorted((flickr_dir / "images").glob("*.jpg"))[:8]]
    before = Captioner.load(MODEL).caption(photos, beam_size=3)
    after = Captioner(grown, extended, "cpu", meta).caption(photos, beam_size=3)
    assert [r.text for r in after] == [r.text for r in before]
    assert [r.score for r in after] == pytest.approx([r.score for r in before], abs=1e-3)
    with pytest.raises(ValueError, match="do not fit its config.json"):
        load_weights(CaptionModel(model.encoder_cfg, model.decoder_cfg, len(extended)), MODEL)


def test_extend_needs_a_model_to_extend(tmp_path, caplog):
    config = {"base": str(REPO / "configs" / "flickr8k_lite0.yaml"),
              "data": {"train_annotations": str(require(COCO_TRAIN)),
                       "train_images": str(DATA / "coco" / "val2017"), "vocab": "extend"},
              "train": {"output_dir": str(tmp_path / "run")}, "val": {"every_epochs": 0}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "'data.vocab' is extend, which adds the training data's new words to the vocabulary of " \
        "train.init_from" in caplog.text
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "data.vocab=grow"]) == 2
    assert "'data.vocab' is 'grow'; choose one of: auto, extend" in caplog.text


def new_word_log_prob(model: CaptionModel, vocab: Vocabulary, photos: list[Path],
                      captions: list[str]) -> float:
    """The mean log-probability ``model`` gives NEW_WORD where it occurs in ``captions`` (teacher forcing)."""
    captioner = Captioner(model, vocab, "cpu")
    images = torch.stack([captioner.transform.load(str(p)) for p in photos])  # (B, 3, S, S)
    tokens = [vocab.encode(text) for text in captions]
    length = max(map(len, tokens))
    batch = torch.tensor([t + [vocab.pad_id] * (length - len(t)) for t in tokens])  # (B, L)
    with torch.no_grad():
        logits, _ = model(images, batch)  # (B, L-1, V)
    targets = batch[:, 1:]  # (B, L-1)
    word = vocab.index[NEW_WORD]
    assert (targets == word).any()
    return float(logits.log_softmax(-1)[..., word][targets == word].mean())


@pytest.mark.slow
def test_a_few_fine_tuning_steps_on_photos_with_a_new_word_make_it_likelier(tmp_path):
    data = json.loads(require(COCO_TRAIN).read_text())
    with_word = {a["image_id"] for a in data["annotations"] if NEW_WORD in a["caption"].lower().split()}
    images = [image for image in data["images"] if image["id"] in with_word][:12]
    ids = {image["id"] for image in images}
    annotations = [a for a in data["annotations"] if a["image_id"] in ids]
    subset = {**data, "images": images, "annotations": annotations}
    (tmp_path / "train.json").write_text(json.dumps(subset))
    photos = DATA / "coco" / "val2017"
    config = {
        "base": str(REPO / "configs" / "flickr8k_lite0.yaml"),
        "data": {"train_annotations": str(tmp_path / "train.json"), "train_images": str(photos),
                 "val_annotations": "", "val_images": "", "min_word_count": 3, "vocab": "extend"},
        "train": {"init_from": "flickr8k-lite0", "output_dir": str(tmp_path / "run"), "epochs": 8,
                  "max_steps": 24, "batch_size": 4, "warmup_steps": 0, "lr": 1e-3,
                  "cache_dir": str(tmp_path / "cache"), "save_every_steps": 0},
        "val": {"every_epochs": 0},
    }
    (tmp_path / "adapt.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(tmp_path / "adapt.yaml")]) == 0
    checkpoint = read_pointer(tmp_path / "run", "latest")
    vocab = Vocabulary.load(checkpoint / "vocab.json")
    assert NEW_WORD in vocab.index and vocab.words[:2538] == Vocabulary.load(MODEL / "vocab.json").words

    texts = [next(a["caption"] for a in subset["annotations"]
                  if a["image_id"] == image["id"] and NEW_WORD in a["caption"].lower().split())
             for image in images[:6]]
    files = [photos / image["file_name"] for image in images[:6]]
    model, _, _ = load_model(MODEL)
    start = CaptionModel(model.encoder_cfg, model.decoder_cfg, len(vocab)).eval()
    load_weights(start, MODEL, grow_vocab=True)
    tuned = load_model(checkpoint)[0]
    before, after = (new_word_log_prob(m, vocab, files, texts) for m in (start, tuned))
    assert after > before + 1.0, (before, after)  # e times likelier at least
