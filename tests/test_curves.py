"""`caption plot`: the curves of real (tiny) training runs, cross-entropy and SCST, one line per run per
panel."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from PIL import Image

from caption.config import load_config
from caption.training.curves import plot_runs, read_run
from caption.training.trainer import train
from tests.conftest import REPO, require_java, write_subset

pytestmark = pytest.mark.slow  # trains the runs it plots


@pytest.fixture(scope="module")
def runs(flickr_splits, flickr_dir, tmp_path_factory):
    """Two cross-entropy runs (different learning rates) and an SCST run started from the first, each
    validated on 4 dev images after every epoch."""
    require_java()
    root = tmp_path_factory.mktemp("curves")
    config = {
        "data": {"train_annotations": str(write_subset(flickr_splits["train"], root / "train.json", 8)),
                 "train_images": str(flickr_dir / "images"),
                 "val_annotations": str(write_subset(flickr_splits["dev"], root / "dev.json", 4)),
                 "val_images": str(flickr_dir / "images"), "min_word_count": 1},
        "decoder": {"embed_dim": 32, "attention_dim": 32, "hidden_dim": 64, "dropout": 0.1},
        "train": {"epochs": 3, "batch_size": 2, "lr": 1e-3, "warmup_steps": 0, "num_workers": 0,
                  "cache_dir": str(root / "cache"), "log_every_steps": 2},
        "val": {"every_epochs": 1, "metrics": ["BLEU", "CIDEr"], "beam_size": 2},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    train(load_config(path, [f"train.output_dir={root / 'xent-a'}"]))
    train(load_config(path, [f"train.output_dir={root / 'xent-b'}", "train.lr=3e-3"]))
    train(load_config(path, [f"train.output_dir={root / 'scst'}", "train.objective=scst",
                             f"train.init_from={root / 'xent-a'}", "train.epochs=2", "scst.samples=2"]))
    return [root / "xent-a", root / "xent-b", root / "scst"]


def test_a_run_is_read_from_its_step_and_epoch_logs(runs):
    xent, _, scst = (read_run(run) for run in runs)
    assert xent.objective == "xent" and [round(e, 2) for e, _ in xent.loss] == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert [e for e, _ in xent.scores["CIDEr"]] == [1, 2, 3] and not xent.reward
    assert scst.objective == "scst" and len(scst.reward) == 4 and len(scst.scores["Bleu_4"]) == 2


def test_plot_has_a_line_per_run_in_each_panel(runs, tmp_path):
    figure = plot_runs([read_run(run) for run in runs], tmp_path / "curves.png")
    lines = {axis.get_title(): len(axis.get_lines()) for axis in figure.axes}
    assert lines == {"training loss (cross-entropy)": 2, "SCST: mean sampled reward (CIDEr-D)": 1,
                     "dev CIDEr": 3, "dev Bleu_4": 3}
    with Image.open(tmp_path / "curves.png") as image:
        assert image.format == "PNG" and image.width > 600

    result = subprocess.run([sys.executable, "-m", "caption.cli", "plot", *map(str, runs), "--out",
                             str(tmp_path / "cli.svg"), "--metrics", "CIDEr"], cwd=REPO, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cli.svg").read_text().count("<svg") == 1


def test_a_resumed_run_keeps_the_last_line_of_each_step_and_a_cut_line_is_skipped(runs, tmp_path):
    run = tmp_path / "resumed"
    run.mkdir()
    lines = (runs[0] / "steps.jsonl").read_text().splitlines()
    # Killed after step 6 of 12, resumed from the step-4 checkpoint: steps 6.. are written again.
    again = [json.dumps({**json.loads(line), "loss": 0.0}) for line in lines[2:]]
    (run / "steps.jsonl").write_text("\n".join(lines[:3] + again) + '\n{"step": 1')
    curves = read_run(run)
    assert [loss for _, loss in curves.loss] == [json.loads(lines[0])["loss"], json.loads(lines[1])["loss"],
                                                 0, 0, 0, 0]

    (run / "steps.jsonl").write_text('{"step": 2\n' + "\n".join(lines))
    with pytest.raises(ValueError, match="line 1: not JSON"):
        read_run(run)
    with pytest.raises(FileNotFoundError, match="no log.jsonl or steps.jsonl"):
        read_run(tmp_path / "nothing")
