"""Training end to end on a few real images: resume after a kill, DDP with gloo, validation and best
checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from caption.api import Captioner
from caption.training.checkpoint import read_pointer
from caption.utils.io import atomic_replace_dir
from tests.conftest import REPO, require_java, write_subset

pytestmark = pytest.mark.slow  # the tests train small models on real images


@pytest.fixture(scope="module")
def tiny_config(flickr_splits, flickr_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    config = {
        "data": {
            "train_annotations": str(write_subset(flickr_splits["train"], root / "train.json", 16)),
            "train_images": str(flickr_dir / "images"),
            "val_annotations": str(write_subset(flickr_splits["dev"], root / "dev.json", 8)),
            "val_images": str(flickr_dir / "images"),
            "min_word_count": 1,
        },
        "decoder": {"embed_dim": 64, "attention_dim": 64, "hidden_dim": 256, "dropout": 0.3},
        "train": {"epochs": 3, "batch_size": 2, "lr": 1e-3, "warmup_steps": 4, "num_workers": 0,
                  "cache_dir": str(root / "cache"), "save_every_steps": 2, "seed": 7, "log_every_steps": 4},
        "val": {"every_epochs": 0},
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _train_command(config: Path, output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "caption.cli", "train", "--config", str(config),
            f"train.output_dir={output}", *extra]


def _run(command: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(read_pointer(run, "latest") / "model.safetensors"))


def _progress(run: Path) -> dict:
    return json.loads((run / "latest.json").read_text())


def test_resume_after_a_kill_gives_the_same_weights_as_an_uninterrupted_run(tiny_config, tmp_path):
    straight = tmp_path / "straight"
    _run(_train_command(tiny_config, straight))
    assert _progress(straight)["global_step"] == 24  # 3 epochs x 16 images / batch 2

    killed = tmp_path / "killed"
    process = subprocess.Popen(_train_command(tiny_config, killed), cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            pointer = killed / "latest.json"
            if pointer.exists() and json.loads(pointer.read_text())["global_step"] >= 6:
                break
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    stopped_at = _progress(killed)["global_step"]
    assert 6 <= stopped_at < 24, "the run must be killed part-way"
    assert read_pointer(killed, "latest") is not None  # the last checkpoint survived the kill intact

    result = _run(_train_command(tiny_config, killed, "--resume"))
    assert _progress(killed)["global_step"] == 24
    assert "resumed from" in result.stderr
    a, b = _weights(straight), _weights(killed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # Both runs wrote one log line per epoch; the killed one may lack the line for the epoch it died in.
    assert len((straight / "log.jsonl").read_text().splitlines()) == 3
    # steps.jsonl: a line every 4 steps; the resumed run writes again the steps since its checkpoint.
    def logged_steps(run: Path) -> list[int]:
        return [json.loads(line)["step"] for line in (run / "steps.jsonl").read_text().splitlines()]
    assert logged_steps(straight) == [4, 8, 12, 16, 20, 24]
    assert set(logged_steps(killed)) == set(logged_steps(straight))


def test_resume_refuses_a_changed_model_config(tiny_config, tmp_path):
    run = tmp_path / "run"
    _run(_train_command(tiny_config, run, "train.max_steps=2"))
    result = subprocess.run(_train_command(tiny_config, run),
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "already holds a training run: add --resume" in result.stderr
    result = subprocess.run(_train_command(tiny_config, run, "--resume", "decoder.hidden_dim=128"),
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "decoder.hidden_dim is 128 now but was 256" in result.stderr
    result = subprocess.run(_train_command(tiny_config, tmp_path / "empty", "--resume"),
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "no checkpoint to resume" in result.stderr


def test_two_process_ddp_run_with_gloo_validates_and_keeps_the_best(tiny_config, tmp_path):
    require_java()
    run = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "caption.cli", "train", "--config", str(tiny_config), f"train.output_dir={run}",
               "train.epochs=2", "val.every_epochs=1", "val.metrics=[BLEU,CIDEr]", "val.beam_size=2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]  # one line per epoch: only rank 0 logs
    assert all(r["world_size"] == 2 for r in records)
    # Each rank takes half of the 16 images: 8 / batch 2 = 4 steps an epoch.
    assert _progress(run)["global_step"] == 8
    assert {"Bleu_4", "CIDEr"} <= set(records[0]["val"]["splits"]["val"]["scores"])
    best = json.loads((run / "best.json").read_text())
    assert best["metric"] == "CIDEr"
    assert (run / "val_results_best.json").is_file()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["encoder"]["mean"] == [0.5, 0.5, 0.5]  # the resolved config is written next to the outputs
    captioner = Captioner.load(run)  # a run directory loads its best checkpoint
    assert captioner.path == read_pointer(run, "best")


def test_a_failed_checkpoint_write_leaves_the_previous_one_intact(tmp_path):
    target = tmp_path / "checkpoint"
    atomic_replace_dir(lambda d: (d / "weights").write_text("good"), target)

    def crash(directory: Path) -> None:
        (directory / "weights").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_replace_dir(crash, target)
    assert (target / "weights").read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]  # no staging litter
