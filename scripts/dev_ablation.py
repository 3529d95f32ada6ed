"""The dev ablation table: each model captions the dev photos of each split (Flickr8k dev and the COCO dev
subset by default) with the same decoding, and each split is scored on its own: BLEU-1/4, METEOR, ROUGE-L,
CIDEr, CHAIRs/CHAIRi (object hallucination), distinct captions, distinct words, degenerate share; then the
mean CIDEr of the splits, one full-size photo's latency and, for a training run, the training time up to
its best epoch.

    python scripts/dev_ablation.py "Flickr8k only=models/flickr8k-lite2" "Mix=runs/everyday_lite2" \
        [--length-penalty 0.75 1.0 ...] [--half A|B] [--beam-size 3] [--split NAME ANNOTATIONS IMAGES ...]

``--half A`` scores the first half of each split's photos and ``--half B`` the other half: choose decoding
settings on A and report them on B, which played no part in the choice. Several ``--length-penalty`` values
give a row each. CIDEr on a half uses that half's document frequencies, so it is not comparable with the
whole split.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import DATA, machine, print_table  # noqa: E402

from caption.api import Captioner, resolve_model  # noqa: E402
from caption.evaluation.evaluate import evaluate  # noqa: E402
from caption.utils.io import read_json  # noqa: E402

DEFAULT_SPLITS = [
    ("flickr8k", "data/flickr8k/captions_dev.json", str(DATA / "flickr8k" / "images")),
    ("coco", str(DATA / "coco" / "annotations" / "captions_val2017_subset_dev.json"),
     str(DATA / "coco" / "val2017")),
]


def half_annotations(annotations: Path, half: str, directory: Path) -> Path:
    """A COCO caption file with the first (A) or second (B) half of the images of ``annotations``, in file
    order."""
    data = read_json(annotations, "COCO caption file")
    middle = len(data["images"]) // 2
    images = data["images"][:middle] if half == "A" else data["images"][middle:]
    ids = {image["id"] for image in images}
    path = directory / f"{annotations.stem}_{half}.json"
    path.write_text(json.dumps({**data, "images": images,
                                "annotations": [a for a in data["annotations"] if a["image_id"] in ids]}))
    return path


def training_minutes(source: str) -> float | None:
    """Training time up to the best epoch of a run directory (None for an exported model)."""
    log = Path(source) / "log.jsonl"
    if not log.is_file():
        return None
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    best = max((r for r in records if "val" in r), key=_selection_score, default=None)
    if best is None:
        return None
    return sum(r["epoch_time_s"] for r in records if r["epoch"] <= best["epoch"]) / 60


def _selection_score(record: dict) -> float:
    val = record["val"]
    return val["select"]["score"] if "select" in val else val["scores"].get("CIDEr", 0)


def photo_latency_ms(captioner: Captioner) -> float:
    photos = sorted((DATA / "flickr8k" / "photos_fullres").glob("*.jpg"))
    captioner.caption(str(photos[0]), num_workers=0)  # warm-up
    times = []
    for photo in photos:
        started = time.perf_counter()
        captioner.caption(str(photo), num_workers=0)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rows", nargs="+", metavar="LABEL=MODEL",
                        help="a label and a model directory, run or name")
    parser.add_argument("--split", nargs=3, action="append", metavar=("NAME", "ANNOTATIONS", "IMAGES"),
                        help="a dev split (may be repeated; default: Flickr8k dev and the COCO dev subset)")
    parser.add_argument("--half", choices=["A", "B"],
                        help="score only the first (A) or second (B) half of each split")
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument("--length-penalty", type=float, nargs="+", default=[1.0])
    parser.add_argument("--no-latency", action="store_true", help="skip the one-photo latency")
    parser.add_argument("--out", default="eval/ablation", help="folder for each row's results and metrics")
    args = parser.parse_args()
    splits = [(name, Path(file), images) for name, file, images in (args.split or DEFAULT_SPLITS)]
    for name, file, _ in splits:
        if not file.is_file():
            print(f"{name}: {file} not found (for Flickr8k run `make prepare-flickr8k`; or give --split)",
                  file=sys.stderr)
            return 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.half:
            splits = [(name, half_annotations(file, args.half, Path(tmp)), images)
                      for name, file, images in splits]
        for item in args.rows:
            label, sep, source = item.partition("=")
            if not sep:
                parser.error(f"{item!r}: write LABEL=MODEL, e.g. 'Lite2 XE=runs/flickr8k_lite2'")
            captioner = Captioner.load(source)
            latency = None if args.no_latency else photo_latency_ms(captioner)
            for penalty in args.length_penalty:
                decoding = captioner.resolve_decoding(beam_size=args.beam_size, length_penalty=penalty)
                row = {"label": label, "model": str(resolve_model(source)), "length_penalty": penalty,
                       "half": args.half or "all", "latency_ms": latency,
                       "train_min": training_minutes(source)}
                for name, file, images in splits:
                    out = (Path(args.out)
                           / f"{label.replace(' ', '_')}-lp{penalty}{'-' + args.half if args.half else ''}"
                           / name)
                    report = evaluate(file, out, predictor=captioner.predictor, decoding=decoding,
                                      images=images, metrics=["BLEU", "METEOR", "ROUGE_L", "CIDEr"])
                    row[name] = {**{k: round(v, 4) for k, v in report["scores"].items()},
                                 "CHAIRs": round(report["chair"]["CHAIRs"], 4),
                                 "CHAIRi": round(report["chair"]["CHAIRi"], 4),
                                 "images": report["images_scored"],
                                 "distinct_captions": report["distinct_captions"],
                                 "distinct_words": report["distinct_words"],
                                 "degenerate": f"{report['degenerate_share']:.1%}"}
                row["mean_CIDEr"] = round(statistics.mean(row[name]["CIDEr"] for name, _, _ in splits), 4)
                print(json.dumps(row), flush=True)
                rows.append(row)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with open(Path(args.out) / "ablation.jsonl", "a", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    columns = [("model", "label"), ("lp", "length_penalty"), ("mean CIDEr", "mean_CIDEr")]
    flat = [dict(row) for row in rows]
    for name, _, _ in splits:
        for row in flat:
            row.update({f"{name} {key}": value for key, value in row[name].items()})
        columns += [(f"{name} {header}", f"{name} {key}") for header, key in (
            ("B-4", "Bleu_4"), ("METEOR", "METEOR"), ("CIDEr", "CIDEr"), ("CHAIRs", "CHAIRs"),
            ("distinct", "distinct_captions"), ("words", "distinct_words"), ("degenerate", "degenerate"))]
    columns += [("latency ms", "latency_ms"), ("train min", "train_min")]
    sizes = ", ".join(f"{name} {flat[0][name]['images']}" for name, _, _ in splits)
    print_table(f"dev splits{' half ' + args.half if args.half else ''} ({sizes} photos), "
                f"beam {args.beam_size}; latency: one full-size photo, median, {machine()}", flat, columns)
    return 0


if __name__ == "__main__":
    sys.exit(main())
