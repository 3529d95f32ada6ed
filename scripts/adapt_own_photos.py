"""Adapting a shipped model to "your own photos", measured: a CSV of photos and captions is prepared
(``caption prepare table``, a dev split taken from it), each shipped model is fine-tuned on it with its
vocabulary extended (``data.vocab: extend``), and, for comparison, a model of the default's recipe is
trained from scratch on the same photos; each is scored on the COCO dev subset before and after.

    python scripts/adapt_own_photos.py [--photos 500] [--dev 100] [--models everyday-lite2 flickr8k-lite0]
                                       [--epochs 8] [--scratch-epochs 12] [--work /tmp/adapt]

The photos are the first ``--photos`` of the COCO train subset ($CAPTION_DATA/coco, default
../shared/data), written to a CSV of ``image,caption`` rows as a user would have them. Scores: CIDEr and
CHAIRs on the 250 photos of the COCO dev subset (never trained on); "new words": the words the extended
vocabulary added, how many of them the model writes on COCO dev, and in how many captions. Every step is
the command a user runs (``caption prepare``, ``caption train``, ``caption evaluate``), in its own process.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CAPTION_DATA", REPO.parent / "shared" / "data"))
COCO = DATA / "coco"
RECIPES = {"everyday-lite2": "everyday_lite2.yaml", "flickr8k-lite0": "flickr8k_lite0.yaml"}


def caption(*args: str) -> float:
    """Run a `caption` command; its wall time in seconds."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "caption.cli", *args], cwd=REPO, capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise RuntimeError(f"caption {' '.join(args)}: {result.stderr[-3000:]}")
    return time.perf_counter() - started


def write_csv(path: Path, count: int) -> None:
    data = json.loads((COCO / "annotations" / "captions_val2017_subset_train.json").read_text())
    images = data["images"][:count]
    names = {image["id"]: image["file_name"] for image in images}
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        for annotation in data["annotations"]:
            if annotation["image_id"] in names:
                writer.writerow([names[annotation["image_id"]], annotation["caption"]])


def train_config(work: Path, name: str, recipe: str, epochs: int, **train: object) -> Path:
    own = work / "prepared"
    config = {
        "base": str(REPO / "configs" / recipe),
        "data": {"train_annotations": "", "train_images": "", "val_annotations": "", "val_images": "",
                 "train": [{"name": "own", "annotations": str(own / "captions_train.json"),
                            "images": str(COCO / "val2017"), "weight": 1.0}],
                 "val": [{"name": "own", "annotations": str(own / "captions_dev.json"),
                          "images": str(COCO / "val2017"), "weight": 1.0}]},
        "train": {"output_dir": str(work / "runs" / name), "epochs": epochs, "cache_dir": str(work / "cache"),
                  "save_every_steps": 0, **train},
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train(config: Path) -> float:
    """``caption train``; its minutes. A run that has finished (its best.json is there) is not trained
    again, so the script can be rerun after a failure: its minutes are then those from its resolved config
    (written as it starts) to its last checkpoint pointer."""
    run = Path(yaml.safe_load(config.read_text())["train"]["output_dir"])
    if not (run / "best.json").is_file():
        return caption("train", "--config", str(config)) / 60
    return ((run / "latest.json").stat().st_mtime - (run / "config.yaml").stat().st_mtime) / 60


def score(work: Path, model: str, name: str) -> dict:
    out = work / "eval" / name
    if not (out / "metrics.json").is_file():
        caption("evaluate", "--annotations", str(COCO / "annotations" / "captions_val2017_subset_dev.json"),
                "--images", str(COCO / "val2017"), "--model", model, "--metrics", "CIDEr", "--out", str(out))
    report = json.loads((out / "metrics.json").read_text())
    results = json.loads((out / "results.json").read_text())
    return {"CIDEr": report["scores"]["CIDEr"], "CHAIRs": report["chair"]["CHAIRs"],
            "captions": [r["caption"] for r in results]}


def new_words(base_model: str, run: Path, captions: list[str]) -> str:
    from caption.api import resolve_model
    from caption.data.vocab import Vocabulary

    known = Vocabulary.load(resolve_model(base_model) / "vocab.json").words
    words = Vocabulary.load(resolve_model(run) / "vocab.json").words[len(known):]
    written = {w for text in captions for w in text.split()} & set(words)
    with_new = sum(any(w in written for w in text.split()) for text in captions)
    return (f"{len(words)} added; {len(written)} written ({', '.join(sorted(written)[:8]) or '-'}), in "
            f"{with_new} of {len(captions)} captions")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=500)
    parser.add_argument("--dev", type=int, default=100, help="of those photos, for the dev split")
    parser.add_argument("--models", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--epochs", type=int, default=8, help="fine-tuning epochs")
    parser.add_argument("--lr", type=float, default=2e-4, help="fine-tuning learning rate")
    parser.add_argument("--scratch-epochs", type=int, default=12)
    parser.add_argument("--work", type=Path, default=Path("/tmp/adapt_own_photos"))
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)

    write_csv(work / "my_photos.csv", args.photos)
    seconds = caption("prepare", "table", str(work / "my_photos.csv"), "--images", str(COCO / "val2017"),
                      "--out", str(work / "prepared"), "--dev-fraction", str(args.dev / args.photos))
    rows = [{"model": "prepare a CSV", "minutes": seconds / 60}]
    for model in args.models:
        before = score(work, model, f"{model}-before")
        rows.append({"model": f"{model}, as shipped", "CIDEr": before["CIDEr"], "CHAIRs": before["CHAIRs"]})
        config = train_config(work, f"{model}-adapted", RECIPES[model], args.epochs, init_from=model,
                              lr=args.lr, warmup_steps=50)
        data = yaml.safe_load(config.read_text())
        data["data"]["vocab"] = "extend"
        config.write_text(yaml.safe_dump(data))
        minutes = train(config)
        run = work / "runs" / f"{model}-adapted"
        after = score(work, str(run), f"{model}-adapted")
        rows.append({"model": f"{model}, adapted ({args.epochs} epochs)", "CIDEr": after["CIDEr"],
                     "CHAIRs": after["CHAIRs"], "minutes": minutes,
                     "new words": new_words(model, run, after["captions"])})
    config = train_config(work, "scratch", RECIPES["everyday-lite2"], args.scratch_epochs)
    minutes = train(config)
    scratch = score(work, str(work / "runs" / "scratch"), "scratch")
    rows.append({"model": f"from scratch, the default's recipe ({args.scratch_epochs} epochs)",
                 "CIDEr": scratch["CIDEr"], "CHAIRs": scratch["CHAIRs"], "minutes": minutes})

    print(f"\n{args.photos} COCO train-subset photos from a CSV ({args.dev} of them dev); scored on the 250 "
          f"photos of the COCO dev subset; {os.cpu_count()} CPU cores\n")
    print("| model | COCO dev CIDEr | CHAIRs | minutes | new words |")
    print("|---|---|---|---|---|")
    for row in rows:
        cider = f"{row['CIDEr']:.3f}" if "CIDEr" in row else ""
        chair = f"{row['CHAIRs']:.3f}" if "CHAIRs" in row else ""
        minutes = f"{row['minutes']:.1f}" if "minutes" in row else ""
        print(f"| {row['model']} | {cider} | {chair} | {minutes} | {row.get('new words', '')} |")


if __name__ == "__main__":
    main()
