"""Training on several data sets at once: the config, the weighted sampler, and a real two-set run on Flickr8k
and COCO photos (union vocabulary, both dev splits validated, exact resume after SIGKILL, caption
evaluate)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from caption.config import ConfigError, DataSetConfig, config_from_dict, load_config
from caption.data.coco import CaptionSet
from caption.data.datasets import WeightedSetSampler
from caption.data.vocab import Vocabulary, tokenize
from caption.training.checkpoint import read_pointer
from caption.training.curves import read_run
from caption.training.trainer import _check_one_kind
from tests.conftest import DATA, REPO, require, require_java, write_subset

COCO = DATA / "coco"


pytestmark = pytest.mark.slow  # every test trains on two real data sets


def _two_sets(**overrides) -> dict:
    data = {"train": [{"name": "a", "annotations": "a.json", "images": "imgs/a"},
                      {"name": "b", "annotations": "b.json", "images": "imgs/b", "weight": 0.5}],
            "val": [{"name": "a", "annotations": "a_dev.json", "images": "imgs/a"},
                    {"name": "b", "annotations": "b_dev.json", "images": "imgs/b", "weight": 2}]}
    data.update(overrides)
    return {"data": data}


def test_a_list_of_sets_loads_and_the_flat_keys_still_mean_one_set():
    config = config_from_dict(_two_sets())
    assert [(s.name, s.weight) for s in config.data.train_sets()] == [("a", 1.0), ("b", 0.5)]
    assert [(s.name, s.weight) for s in config.data.val_sets()] == [("a", 1.0), ("b", 2.0)]
    assert isinstance(config.data.train[1], DataSetConfig)
    # The resolved config written next to a run reads back as the same config (resume compares them).
    assert config_from_dict(yaml.safe_load(config.to_yaml())).to_dict() == config.to_dict()

    flat = config_from_dict({"data": {"train_annotations": "t.json", "train_images": "imgs",
                                      "val_annotations": "d.json"}})
    assert ([(s.name, s.annotations, s.images) for s in flat.data.train_sets()]
            == [("train", "t.json", "imgs")])
    # the train folder by default
    assert [(s.name, s.images) for s in flat.data.val_sets()] == [("val", "imgs")]

    unnamed = config_from_dict(_two_sets(train=[{"annotations": "x/captions_train.json"}]))
    assert unnamed.data.train_sets()[0].name == "captions_train"


def test_every_shipped_config_still_loads():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        load_config(path)


@pytest.mark.parametrize("data, message", [
    ({"train_annotations": "t.json"}, "'data.train' and data.train_annotations/train_images are both set"),
    ({"train": [{"annotations": "a.json", "weigth": 2}]}, "unknown config field 'data.train[0].weigth'"),
    ({"train": [{"annotations": "a.json", "weight": -1}]}, "'data.train[0].weight' must be 0 or more"),
    ({"train": [{"images": "imgs"}]}, "data.train[0].annotations' is empty"),
    ({"train": ["a.json"]}, "data.train[0]' must be a mapping of annotations, images, weight, name"),
    ({"train": [{"annotations": "a/x.json"}, {"annotations": "b/x.json"}]}, "names two sets 'x'"),
    ({"train": [{"annotations": "a.json", "weight": 0}]}, "data.train' weights must not all be 0"),
])
def test_bad_set_lists_are_refused_naming_the_field(data, message):
    with pytest.raises(ConfigError) as err:
        config_from_dict(_two_sets(**data))
    assert message in str(err.value)


def test_an_epoch_draws_weight_times_size_of_each_set_afresh_every_epoch():
    sizes, weights = [10, 4, 6], [1.0, 2.0, 0.5]  # offsets 0, 10, 14
    sampler = WeightedSetSampler(sizes, weights, seed=3)
    assert len(sampler) == 10 + 8 + 3

    def per_set(indices):
        return Counter(0 if i < 10 else 1 if i < 14 else 2 for i in indices)

    epoch0 = list(sampler)
    assert per_set(epoch0) == {0: 10, 1: 8, 2: 3}
    assert sorted(i for i in epoch0 if i < 10) == list(range(10))  # weight 1: every item once
    assert Counter(i for i in epoch0 if 10 <= i < 14) == {10: 2, 11: 2, 12: 2, 13: 2}  # weight 2: each twice
    assert len({i for i in epoch0 if i >= 14}) == 3  # weight 0.5: a random half, no repeats
    assert list(sampler) == epoch0  # a function of seed and epoch only
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != epoch0 and per_set(epoch1) == per_set(epoch0)
    sampler.set_start(5)  # a resumed run skips what it used
    assert list(sampler) == epoch1[5:] and len(sampler) == len(epoch1) - 5


def test_the_ranks_share_an_epoch_between_them():
    whole = WeightedSetSampler([7, 5], [1.0, 1.0], seed=0).epoch_indices()
    ranks = [list(WeightedSetSampler([7, 5], [1.0, 1.0], num_replicas=5, rank=r, seed=0)) for r in range(5)]
    assert all(len(r) == 3 for r in ranks)  # 12 draws padded to 15
    assert sorted(set(i for r in ranks for i in r)) == sorted(set(whole)) == list(range(12))


def test_video_sets_and_image_sets_are_not_mixed():
    images = CaptionSet("a.json", [1], ["photo.jpg"], {1: ["a dog"]})
    videos = CaptionSet("b.json", [1], ["clip.avi"], {1: ["a dog runs"]})
    sets = [DataSetConfig("a.json", name="photos"), DataSetConfig("b.json", name="clips")]
    with pytest.raises(ConfigError, match=r"mixes video sets \(clips\) with image sets \(photos\)"):
        _check_one_kind(sets, [images, videos])
    _check_one_kind(sets, [images, images])


# ------------------------------------------------------------------------------------ a real two-set run
@pytest.fixture(scope="module")
def mix_config(flickr_splits, flickr_dir, tmp_path_factory) -> Path:
    require(COCO / "val2017")
    root = tmp_path_factory.mktemp("mix")
    coco_ann = COCO / "annotations"
    config = {
        "data": {
            "train": [
                {"name": "flickr8k",
                 "annotations": str(write_subset(flickr_splits["train"], root / "f.json", 10)),
                 "images": str(flickr_dir / "images")},
                {"name": "coco", "weight": 0.6,
                 "annotations": str(write_subset(coco_ann / "captions_val2017_subset_train.json",
                                                 root / "c.json", 10)),
                 "images": str(COCO / "val2017")},
            ],
            "val": [
                {"name": "flickr8k",
                 "annotations": str(write_subset(flickr_splits["dev"], root / "fd.json", 3)),
                 "images": str(flickr_dir / "images")},
                {"name": "coco", "weight": 3.0,
                 "annotations": str(write_subset(coco_ann / "captions_val2017_subset_dev.json",
                                                 root / "cd.json", 3)),
                 "images": str(COCO / "val2017")},
            ],
            "min_word_count": 1,
        },
        "decoder": {"embed_dim": 32, "attention_dim": 32, "hidden_dim": 64, "dropout": 0.3},
        "train": {"epochs": 2, "batch_size": 2, "lr": 1e-3, "warmup_steps": 2, "num_workers": 0, "seed": 5,
                  "cache_dir": str(root / "cache"), "save_every_steps": 2, "log_every_steps": 2},
        "val": {"every_epochs": 1, "metrics": ["BLEU", "CIDEr"], "beam_size": 2},
    }
    path = root / "mix.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _train(config: Path, output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "caption.cli", "train", "--config", str(config),
            f"train.output_dir={output}", *extra]


def _latest_step(run: Path) -> int:
    pointer = run / "latest.json"
    return json.loads(pointer.read_text())["global_step"] if pointer.exists() else 0


@pytest.fixture(scope="module")
def straight(mix_config, tmp_path_factory) -> Path:
    """The mix trained for two epochs without interruption."""
    require_java()
    run = tmp_path_factory.mktemp("straight") / "run"
    result = subprocess.run(_train(mix_config, run), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def test_two_sets_train_with_one_vocabulary_validate_apart_and_resume_exactly_after_a_kill(
    mix_config, straight, tmp_path,
):
    # 10 Flickr8k photos + round(0.6 x 10) COCO photos = 16 an epoch, batch 2: 8 steps an epoch.
    assert _latest_step(straight) == 16

    config = load_config(mix_config)
    vocab = Vocabulary.load(read_pointer(straight, "latest") / "vocab.json")
    flickr_words = {w for s in [config.data.train[0]] for w in _words(s.annotations)}
    coco_words = {w for s in [config.data.train[1]] for w in _words(s.annotations)}
    # min_word_count 1: the union of both sets' words
    assert set(vocab.words[4:]) == flickr_words | coco_words
    assert coco_words - flickr_words and flickr_words - coco_words

    records = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for record in records:
        splits = record["val"]["splits"]
        assert set(splits) == {"flickr8k", "coco"}
        for report in splits.values():
            assert report["images_scored"] == 3 and {"Bleu_4", "CIDEr"} <= set(report["scores"])
            assert {"CHAIRs", "CHAIRi"} <= set(report["chair"])
        # The best checkpoint is chosen by the weighted mean of the splits' CIDEr (weights 1 and 3).
        expected = (splits["flickr8k"]["scores"]["CIDEr"] + 3 * splits["coco"]["scores"]["CIDEr"]) / 4
        assert record["val"]["select"]["score"] == pytest.approx(expected)
    best = json.loads((straight / "best.json").read_text())
    assert best["score"] == pytest.approx(max(r["val"]["select"]["score"] for r in records))
    assert ((straight / "val_results_best_coco.json").is_file()
            and (straight / "val_results_best_flickr8k.json").is_file())
    curves = read_run(straight)
    assert {"CIDEr · flickr8k", "CIDEr · coco", "CHAIRs · coco"} <= set(curves.scores)

    killed = tmp_path / "killed"
    process = subprocess.Popen(_train(mix_config, killed), cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and _latest_step(killed) < 4 and process.poll() is None:
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    stopped = _latest_step(killed)
    assert 4 <= stopped < 16, "the run must be killed part-way"
    result = subprocess.run(_train(mix_config, killed, "--resume"), cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stderr and _latest_step(killed) == 16
    a = load_file(str(read_pointer(straight, "latest") / "model.safetensors"))
    b = load_file(str(read_pointer(killed, "latest") / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key

    # caption evaluate takes the same list of splits (here from the config) and reports each.
    out = tmp_path / "eval"
    result = subprocess.run([sys.executable, "-m", "caption.cli", "evaluate", "--config", str(mix_config),
                             "--model", str(straight), "--metrics", "BLEU", "CIDEr", "--out", str(out),
                             "--beam-size", "2"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "== flickr8k:" in result.stdout and "== coco:" in result.stdout and "CHAIRs" in result.stdout
    summary = json.loads((out / "metrics.json").read_text())
    assert set(summary["splits"]) == {"flickr8k", "coco"}
    assert (out / "coco" / "results.json").is_file() and (out / "flickr8k" / "metrics.json").is_file()
    assert summary["mean_CIDEr"] == pytest.approx(
        (summary["splits"]["flickr8k"]["scores"]["CIDEr"] + 3 * summary["splits"]["coco"]["scores"]["CIDEr"])
        / 4)


def test_scst_and_a_fine_tuned_encoder_train_on_the_mix(mix_config, straight, tmp_path):
    scst = tmp_path / "scst"
    result = subprocess.run(_train(mix_config, scst, "train.objective=scst", f"train.init_from={straight}",
                                   "train.epochs=1", "scst.samples=2", "val.every_epochs=0"),
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((scst / "log.jsonl").read_text().splitlines()[-1])
    assert record["objective"] == "scst" and math.isfinite(record["train_reward"]) and _latest_step(scst) == 8

    tuned = tmp_path / "finetune"
    result = subprocess.run(_train(mix_config, tuned, "encoder.finetune_stages=1",
                                   f"train.init_from={straight}", "train.max_steps=3", "val.every_epochs=0"),
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "images through the encoder" in result.stderr and _latest_step(tuned) == 3


def test_two_ranks_share_the_mix_under_ddp(mix_config, tmp_path):
    run = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "caption.cli", "train", "--config", str(mix_config), f"train.output_dir={run}",
               "train.epochs=1", "val.every_epochs=0"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert _latest_step(run) == 4  # 16 draws an epoch, 8 a rank, batch 2


def _words(annotations: str) -> set[str]:
    data = json.loads(Path(annotations).read_text())
    return {word for ann in data["annotations"] for word in tokenize(ann["caption"])}
