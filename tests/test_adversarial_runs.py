"""Bad input, concurrent runs and damaged files through train, evaluate, plot, export and batch: never
silently wrong. Every case is built at test time from real captions and images.

| case                                               | expected                                          |
|----------------------------------------------------|---------------------------------------------------|
| a line break (\\r \\f \\v U+0085 U+2028 U+2029) in one | the same scores: each caption keeps its own line  |
| export onto a folder of other files (with --force) | exit 2 naming it; its files untouched             |
| export onto a model without / with --force         | exit 2 / the model replaced whole                 |
| export onto what is exported (--fp16 included)     | exit 2; nothing written                           |
| export a run that has no best checkpoint           | its latest, with a warning saying so              |
| `caption batch` on an --out another run writes     | exit 2 naming that process (both engines)         |
| two images with one id; file_name null             | an error naming both entries / the entry          |
| train.lr=.inf                                      | refused: "must be a finite number"                |
| a loss that turns NaN (train.lr=1e30)              | exit 2 naming the step and last good checkpoint   |
| a truncated model or trainer safetensors file      | exit 2 naming the file: "may be truncated"        |
| an unknown encoder.name                            | "timm does not know", with close names            |
| plot: a log line of another shape; --metrics NOPE  | exit 2 naming the run / listing what was logged   |
| evaluate results that are all empty captions       | a warning; empty_captions in metrics.json         |
| a binary config file                               | exit 2: "is not text", naming it                  |
| train.output_dir under a file                      | refused before any feature is encoded             |
| a model folder without vocab.json                  | names the missing file                            |
| train.init_from a shipped model's name             | accepted, as predict accepts it                   |
| a full disk: feature cache, model or checkpoint    | the file, MB needed and free; no temporary left   |
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from caption.cli import main
from tests.conftest import DATA, REPO, require, require_java, write_subset

COCO_DEV = DATA / "coco" / "annotations" / "captions_val2017_subset_dev.json"


def test_a_line_break_inside_a_caption_scores_every_caption_against_its_own_image():
    require_java()
    from caption.evaluation.evaluate import references
    from caption.evaluation.metrics import compute_metrics

    refs = references(require(COCO_DEV))
    keys = sorted(refs)[:30]
    refs = {k: refs[k] for k in keys}
    predictions = {k: refs[k][0] for k in keys}
    clean = compute_metrics(refs, predictions, ["CIDEr"])[0]["CIDEr"]
    for mark in ("\r", "\f", "\v", "\x85", "\u2028", "\u2029", "\r\n"):
        broken = {**predictions, keys[3]: predictions[keys[3]].replace(" ", mark, 1)}
        broken_refs = {**refs, keys[5]: [refs[keys[5]][0].replace(" ", mark, 1), *refs[keys[5]][1:]]}
        assert compute_metrics(broken_refs, broken, ["CIDEr"])[0]["CIDEr"] == pytest.approx(clean), repr(mark)


def test_export_never_overwrites_what_it_should_not(tmp_path, caplog):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert main(["export", "flickr8k-lite0", str(other)]) == 2
    assert main(["export", "flickr8k-lite0", str(other), "--force"]) == 2
    assert [p.name for p in other.iterdir()] == ["keep.txt"] and "holds other files" in caplog.text

    model = tmp_path / "model"
    assert main(["export", "flickr8k-lite0", str(model)]) == 0
    assert main(["export", "flickr8k-lite0", str(model), "--beam-size", "5"]) == 2
    assert "add --force" in caplog.text
    assert main(["export", "flickr8k-lite0", str(model), "--beam-size", "5", "--force"]) == 0
    assert json.loads((model / "config.json").read_text())["decoding"]["beam_size"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "notes"]  # no staging folder left

    shipped = REPO / "models" / "flickr8k-lite0"
    before = (shipped / "model.safetensors").stat().st_mtime_ns
    assert main(["export", "flickr8k-lite0", str(shipped), "--fp16", "--force"]) == 2
    assert (shipped / "model.safetensors").stat().st_mtime_ns == before
    assert "is, or is inside, what is exported" in caplog.text


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_a_second_batch_run_on_an_output_being_written_is_refused(flickr_dir, tmp_path, engine):
    """A process holds the output's lock as a running `caption batch` does (BatchJob.lock); a second run
    on that output, with either engine, refuses at once, naming it, and writes nothing."""
    if engine == "ray":
        pytest.importorskip("ray")
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sorted((flickr_dir / "images").glob("*.jpg"))[:3]:
        shutil.copy(path, photos / path.name)
    out = tmp_path / "out.csv"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from caption.serving.batch import BatchJob\n"
         f"with BatchJob.plan([], {str(out)!r}).lock():\n    print('held', flush=True); time.sleep(120)"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        command = [sys.executable, "-m", "caption.cli", "batch", str(photos), "--out", str(out),
                   "--no-progress", "--engine", engine]
        second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"{out} is being written by another process (pid {holder.pid}" in second.stderr
    assert not out.exists() and not out.with_name("out.csv.blocks").exists()


def test_image_ids_are_unique_and_file_names_are_names(tmp_path):
    from caption.data.coco import load_coco_json

    images = [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"},
              {"id": 1, "file_name": "c.jpg"}]
    bad = tmp_path / "dup.json"
    bad.write_text(json.dumps({"images": images, "annotations": []}))
    with pytest.raises(ValueError, match=r"images\[2\] \(c\.jpg\) has the id 1 of images\[0\] \(a\.jpg\)"):
        load_coco_json(bad)
    bad.write_text(json.dumps({"images": [{"id": 1, "file_name": None}], "annotations": []}))
    with pytest.raises(ValueError, match=r"images\[0\] has file_name None"):
        load_coco_json(bad)


@pytest.fixture(scope="module")
def tiny(flickr_splits, flickr_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    config = {
        "data": {"train_annotations": str(write_subset(flickr_splits["train"], root / "train.json", 8)),
                 "train_images": str(flickr_dir / "images"), "min_word_count": 1},
        "decoder": {"embed_dim": 32, "attention_dim": 32, "hidden_dim": 64},
        "train": {"epochs": 2, "batch_size": 4, "num_workers": 0, "cache_dir": str(root / "cache"),
                  "warmup_steps": 0, "save_every_steps": 1},
        "val": {"every_epochs": 0},
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_non_finite_training_is_refused_or_stopped_naming_the_step(tiny, tmp_path, caplog):
    inf = tmp_path / "inf"
    assert main(["train", "--config", str(tiny), f"train.output_dir={inf}", "train.lr=.inf"]) == 2
    assert "'train.lr' must be a finite number" in caplog.text
    run = tmp_path / "nan"
    assert main(["train", "--config", str(tiny), f"train.output_dir={run}", "train.lr=1e30",
                 "train.grad_clip=0"]) == 2
    assert "the training loss is" in caplog.text and "not a finite number" in caplog.text
    assert "the last good checkpoint is" in caplog.text


@pytest.mark.slow
def test_a_truncated_model_or_checkpoint_is_named_and_a_run_without_a_best_one_exports_its_latest(
        tiny, tmp_path, caplog, flickr_dir):
    model = tmp_path / "model"
    assert main(["export", "flickr8k-lite0", str(model)]) == 0
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    photo = str(sorted((flickr_dir / "images").glob("*.jpg"))[0])
    assert main(["predict", photo, "--model", str(model)]) == 2
    assert f"{weights} is not a readable safetensors file" in caplog.text
    assert "may be truncated" in caplog.text
    run = tmp_path / "run"
    assert main(["train", "--config", str(tiny), f"train.output_dir={run}", "train.max_steps=1"]) == 0
    with caplog.at_level(logging.WARNING):
        assert main(["export", str(run), str(tmp_path / "exported")]) == 0
    assert "has no best checkpoint (no validation has run): exporting its latest" in caplog.text
    from caption.training.checkpoint import read_pointer

    trainer_state = read_pointer(run, "latest") / "trainer.safetensors"
    trainer_state.write_bytes(trainer_state.read_bytes()[:100])
    assert main(["train", "--config", str(tiny), f"train.output_dir={run}", "--resume"]) == 2
    assert f"{trainer_state} is not a readable safetensors file" in caplog.text


def test_config_mistakes_found_early_name_what_is_wrong(tiny, tmp_path, caplog):
    assert main(["train", "--config", str(tiny), f"train.output_dir={tmp_path}/o",
                 "encoder.name=efficientnet_lite9", "encoder.weights=none"]) == 2
    assert "'encoder.name' is 'efficientnet_lite9', which timm does not know; close names:" in caplog.text
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)))
    assert main(["train", "--config", str(binary)]) == 2
    assert f"config file {binary} is not text" in caplog.text
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    started = time.perf_counter()
    assert main(["train", "--config", str(tiny), f"train.output_dir={a_file}/run",
                 f"train.cache_dir={tmp_path}/fresh_cache"]) == 2
    assert f"train.output_dir {a_file}/run cannot be written" in caplog.text
    assert not (tmp_path / "fresh_cache").exists() and time.perf_counter() - started < 60


def test_a_model_folder_missing_a_file_names_it_and_a_shipped_name_starts_training(tmp_path):
    from caption.api import resolve_model
    from caption.models.io import resolve_run_dir

    broken = tmp_path / "model"
    shutil.copytree(REPO / "models" / "flickr8k-lite0", broken)
    (broken / "vocab.json").unlink()
    with pytest.raises(FileNotFoundError, match="is a model directory without vocab.json"):
        resolve_run_dir(broken)
    assert resolve_model("flickr8k-lite0") == REPO / "models" / "flickr8k-lite0"


def test_plot_and_evaluate_say_what_is_wrong_instead_of_drawing_or_scoring_nothing(tmp_path, caplog):
    require_java()
    run = tmp_path / "run"
    run.mkdir()
    line = {"epoch": 1, "train_loss": 2.0, "val": {"scores": {"CIDEr": 0.4}}}
    (run / "log.jsonl").write_text(json.dumps(line) + "\n")
    assert main(["plot", str(run), "--out", str(tmp_path / "c.png"), "--metrics", "NOPE"]) == 2
    assert "no run logged NOPE; the runs have CIDEr" in caplog.text
    (run / "log.jsonl").write_text(json.dumps({"epoch": 1}) + "\n")
    assert main(["plot", str(run), "--out", str(tmp_path / "c.png")]) == 2
    assert "has a line without the fields a training log has" in caplog.text

    annotations = write_subset(require(COCO_DEV), tmp_path / "dev.json", 5)
    ids = [image["id"] for image in json.loads(annotations.read_text())["images"]]
    results = tmp_path / "empty.json"
    results.write_text(json.dumps([{"image_id": i, "caption": ""} for i in ids]))
    with caplog.at_level(logging.WARNING):
        assert main(["evaluate", "--annotations", str(annotations), "--results", str(results),
                     "--out", str(tmp_path / "eval"), "--metrics", "BLEU", "CIDEr"]) == 0
    assert "every caption is empty" in caplog.text
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["empty_captions"] == 5


def test_a_full_disk_while_caching_features_or_writing_a_model_is_named_and_leaves_nothing(
        flickr_dir, tmp_path, monkeypatch):
    """The disk is "full" from the first byte the cache allocates (os.posix_fallocate fails as a full disk
    does): an error naming the path and the space it needs, instead of a SIGBUS, and no temporary file."""
    import errno
    import os

    import torch

    from caption.config import EncoderConfig
    from caption.features.cache import FeatureCache
    from caption.features.encoder import ImageEncoder
    from caption.models.io import load_model, save_model

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    cache = FeatureCache(tmp_path / "cache", ImageEncoder(EncoderConfig()).eval())
    photos = [str(p) for p in sorted((flickr_dir / "images").glob("*.jpg"))[:2]]
    with pytest.raises(OSError, match=r"not enough disk space \(it needs [\d,]+ MB, [\d,]+ MB free on"):
        cache.get_or_build(photos, device=torch.device("cpu"))
    assert list((tmp_path / "cache").rglob("*")) == [p for p in (tmp_path / "cache").rglob("*") if p.is_dir()]

    import caption.models.io as model_io

    def no_room(tensors, path, metadata=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    model, vocab, _ = load_model(REPO / "models" / "flickr8k-lite0")
    monkeypatch.setattr(model_io, "save_file", no_room)
    monkeypatch.setattr(model_io.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 0))
    with pytest.raises(OSError, match=r"model\.safetensors: not enough disk space"):
        save_model(model, vocab, tmp_path / "model")
    assert not (tmp_path / "model").exists() or not any((tmp_path / "model").iterdir())
