"""Self-critical training end to end on 64 real Flickr8k train images: a real learning signal for both
baselines, exact resume after SIGKILL, DDP with gloo, and starting from a model (train.init_from)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from caption.config import ConfigError, load_config
from caption.data.coco import read_caption_set
from caption.data.datasets import image_captions
from caption.decoding.sample import sample
from caption.evaluation.chair import image_objects
from caption.evaluation.degenerate import is_degenerate
from caption.features.cache import FeatureCache
from caption.models.io import load_model, read_pointer
from caption.training.rewards import CiderD
from caption.training.scst import hallucinated_objects
from caption.training.trainer import train
from tests.conftest import REPO, write_subset

IMAGES = 64


pytestmark = pytest.mark.slow  # the tests train with self-critical sequence training


@pytest.fixture(scope="module")
def setup(flickr_splits, flickr_dir, tmp_path_factory):
    """64 real train images and a small SAT decoder pre-trained on them briefly (120 steps) with
    cross-entropy."""
    root = tmp_path_factory.mktemp("scst")
    config = {
        "data": {"train_annotations": str(write_subset(flickr_splits["train"], root / "train.json", IMAGES)),
                 "train_images": str(flickr_dir / "images"), "min_word_count": 2},
        "decoder": {"embed_dim": 64, "attention_dim": 64, "hidden_dim": 128, "dropout": 0.1},
        "train": {"epochs": 30, "batch_size": 16, "lr": 3e-3, "warmup_steps": 0, "num_workers": 0,
                  "cache_dir": str(root / "cache"), "seed": 3, "output_dir": str(root / "xent")},
        "val": {"every_epochs": 0},
    }
    xent_config = root / "xent.yaml"
    xent_config.write_text(yaml.safe_dump(config))
    train(load_config(xent_config))
    config["train"].update(objective="scst", init_from=str(root / "xent"), epochs=6, lr=1e-3,
                           schedule="constant")
    config["scst"] = {"samples": 5, "max_length": 16}
    scst_config = root / "scst.yaml"
    scst_config.write_text(yaml.safe_dump(config))
    return root, scst_config


def mean_sampled_reward(run: Path, root: Path) -> float:
    """The mean reward SCST maximises (CIDEr-D less the degenerate-caption penalty) of 5 captions sampled
    (fixed seed) for each of the 64 images by the run's latest weights."""
    model, vocab, _ = load_model(read_pointer(run, "latest"))
    split = read_caption_set(root / "train.json",
                             yaml.safe_load((root / "xent.yaml").read_text())["data"]["train_images"])
    features = FeatureCache(root / "cache", model.encoder).get_or_build(
        [str(p) for p in split.paths()], device=torch.device("cpu"), num_workers=0,
    )
    refs = [[vocab.decode(tokens).split() for tokens in captions]
            for _, captions in image_captions(split, vocab)]
    reward = CiderD(refs, eos="<eos>")
    torch.manual_seed(0)
    memory = model.positions(torch.from_numpy(np.asarray(features.features, dtype=np.float32)))  # (64, 49, C)
    config = load_config(root / "scst.yaml")
    drawn = sample(model.decoder, memory, None, config.scst.decoding, vocab.special)
    candidates = [[vocab.words[t] for t in drawn.words(r)] for r in range(IMAGES * 5)]
    scores = reward.scores(candidates, [refs[r // 5] for r in range(IMAGES * 5)])
    penalties = config.scst.degenerate_penalty * np.array([is_degenerate(words) for words in candidates])
    return float((scores - penalties).mean())


@pytest.mark.parametrize("baseline, epochs", [("mean", 6), ("greedy", 12)])
def test_scst_raises_the_mean_sampled_reward(setup, baseline, epochs):
    root, scst_config = setup
    run = root / f"scst-{baseline}"
    record = train(load_config(scst_config, [f"train.output_dir={run}", f"scst.baseline={baseline}",
                                             f"train.epochs={epochs}"]))
    before, after = mean_sampled_reward(root / "xent", root), mean_sampled_reward(run, root)
    print(f"mean sampled reward on the {IMAGES} images, baseline {baseline}: {before:.3f} -> {after:.3f}")
    # Measured: -0.067 -> 0.008 (mean), -0.067 -> -0.047 (greedy) on one machine; on another (AMD EPYC, the
    # same seed) -0.073 -> 0.000 (mean) and, after 6 epochs, -0.073 -> -0.072 (greedy), which is why the
    # greedy baseline, the weaker signal, gets 12 epochs (-0.073 -> 0.004 there). The small model's samples
    # are often degenerate and pay the penalty. The seed is fixed, so before and after see the same draws.
    assert after > before + 0.015, (before, after)
    assert record["objective"] == "scst" and record["global_step"] == epochs * IMAGES // 16
    for key in ("train_reward", "train_baseline", "train_entropy", "train_ended", "train_degenerate",
                "train_hallucinated", "reward_time_share"):
        assert np.isfinite(record[key]), key
    assert 0.0 <= record["train_ended"] <= 1.0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["objective"] == "scst" and saved["scst"]["baseline"] == baseline


def test_the_hallucination_penalty_counts_objects_the_references_do_not_name():
    truth = image_objects(["a dog runs on the grass", "a brown dog with a ball"])
    assert hallucinated_objects(["a", "dog", "catches", "a", "frisbee"], truth) == 1
    # cat, hot dog
    assert hallucinated_objects(["a", "dog", "and", "a", "cat", "eat", "a", "hot", "dog"], truth) == 2
    assert hallucinated_objects(["two", "dogs", "play", "with", "a", "ball"], truth) == 0


def test_the_hallucination_penalty_lowers_the_reward_of_samples_that_hallucinate(setup):
    root, scst_config = setup
    records = {penalty: train(load_config(scst_config, [f"train.output_dir={root / f'halluc-{penalty}'}",
                                                        "train.epochs=1", "train.lr=1e-12",
                                                        f"scst.hallucination_penalty={penalty}"]))
               for penalty in (0.0, 2.0)}
    # The same samples (same seed, a learning rate too small to change them): the penalty takes 2 points
    # for every object a sample names that the image's references do not.
    assert records[2.0]["train_hallucinated"] == records[0.0]["train_hallucinated"] > 0
    assert (records[2.0]["train_reward"]
            < records[0.0]["train_reward"] - 2 * 0.5 * records[0.0]["train_hallucinated"])


def test_init_from_must_match_the_architecture(setup, tmp_path):
    _, scst_config = setup
    with pytest.raises(ConfigError, match="its decoder.hidden_dim is 128 but this config says 64"):
        train(load_config(scst_config, [f"train.output_dir={tmp_path / 'run'}", "decoder.hidden_dim=64"]))


def _command(config: Path, output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "caption.cli", "train", "--config", str(config),
            f"train.output_dir={output}", "train.save_every_steps=1", *extra]


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _step(run: Path) -> int:
    pointer = run / "latest.json"
    return json.loads(pointer.read_text())["global_step"] if pointer.exists() else 0


def test_scst_resume_after_sigkill_gives_bit_identical_weights(setup, tmp_path):
    _, scst_config = setup
    straight = tmp_path / "straight"
    _run(_command(scst_config, straight))
    killed = tmp_path / "killed"
    process = subprocess.Popen(_command(scst_config, killed), cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and _step(killed) < 3:
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert 3 <= _step(killed) < 24, "the run must be killed part-way"
    result = _run(_command(scst_config, killed, "--resume"))
    assert "resumed from" in result.stderr and _step(killed) == 24
    a = load_file(str(read_pointer(straight, "latest") / "model.safetensors"))
    b = load_file(str(read_pointer(killed, "latest") / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_scst_under_two_process_ddp_with_gloo(setup, tmp_path):
    _, scst_config = setup
    run = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "caption.cli", "train", "--config", str(scst_config), f"train.output_dir={run}",
               "train.epochs=1"]
    _run(command, env=dict(os.environ, OMP_NUM_THREADS="1"))
    [record] = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert record["world_size"] == 2 and record["objective"] == "scst"
    assert _step(run) == 2  # each rank takes 32 of the 64 images: 2 steps of 16
    assert np.isfinite(record["train_reward"]) and 0 <= record["train_degenerate"] <= 1
