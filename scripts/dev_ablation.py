"""The dev-split ablation table: each model captions the Flickr8k dev photos with the same decoding and is
scored (BLEU-1/4, METEOR, ROUGE-L, CIDEr), with its distinct captions, distinct words, degenerate share,
one full-size photo's latency and, for a training run, the training time up to its best epoch.

    python scripts/dev_ablation.py "Lite0 XE=models/flickr8k-lite0" "Lite2 XE=runs/flickr8k_lite2" \
        [--length-penalty 0.75 ...] [--half A|B] [--beam-size 3] [--out eval/ablation]

``--half A`` scores the first 500 dev photos and ``--half B`` the other 500: choose decoding settings on A
and report them on B, which played no part in the choice. Several ``--length-penalty`` values give a row
each. CIDEr on a half uses that half's document frequencies, so it is not comparable with the full split.
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

HALF_SIZE = 500


def half_annotations(annotations: Path, half: str, directory: Path) -> Path:
    """A COCO caption file with the first (A) or second (B) 500 images of ``annotations``, in file order."""
    data = read_json(annotations, "COCO caption file")
    images = data["images"][:HALF_SIZE] if half == "A" else data["images"][HALF_SIZE:2 * HALF_SIZE]
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
    best = max((r for r in records if "val" in r), key=lambda r: r["val"]["scores"].get("CIDEr", 0), default=None)
    if best is None:
        return None
    return sum(r["epoch_time_s"] for r in records if r["epoch"] <= best["epoch"]) / 60


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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rows", nargs="+", metavar="LABEL=MODEL", help="a label and a model directory, run or name")
    parser.add_argument("--annotations", default="data/flickr8k/captions_dev.json")
    parser.add_argument("--images", default=str(DATA / "flickr8k" / "images"))
    parser.add_argument("--half", choices=["A", "B"], help="score only the first (A) or second (B) 500 photos")
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument("--length-penalty", type=float, nargs="+", default=[0.75])
    parser.add_argument("--no-latency", action="store_true", help="skip the one-photo latency")
    parser.add_argument("--out", default="eval/ablation", help="folder for each row's results and metrics")
    args = parser.parse_args()
    annotations = Path(args.annotations)
    if not annotations.is_file():
        print(f"{annotations} not found: run `make prepare-flickr8k` first (or give --annotations)", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.half:
            annotations = half_annotations(annotations, args.half, Path(tmp))
        for item in args.rows:
            label, sep, source = item.partition("=")
            if not sep:
                parser.error(f"{item!r}: write LABEL=MODEL, e.g. 'Lite2 XE=runs/flickr8k_lite2'")
            captioner = Captioner.load(source)
            latency = None if args.no_latency else photo_latency_ms(captioner)
            for penalty in args.length_penalty:
                decoding = captioner.resolve_decoding(args.beam_size, None, penalty)
                out = Path(args.out) / f"{label.replace(' ', '_')}-lp{penalty}{'-' + args.half if args.half else ''}"
                report = evaluate(annotations, out, generator=captioner.generator, decoding=decoding,
                                  images=args.images, metrics=["BLEU", "METEOR", "ROUGE_L", "CIDEr"])
                row = {"label": label, "model": str(resolve_model(source)), "length_penalty": penalty,
                       "half": args.half or "all", **{k: round(v, 4) for k, v in report["scores"].items()},
                       "distinct_captions": report["distinct_captions"], "distinct_words": report["distinct_words"],
                       "degenerate": f"{report['degenerate_share']:.1%}", "latency_ms": latency,
                       "train_min": training_minutes(source)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    with open(Path(args.out) / "ablation.jsonl", "a", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    print_table(
        f"Flickr8k dev{' half ' + args.half if args.half else ''} ({report['images_scored']} photos), "
        f"beam {args.beam_size}; latency: one full-size photo, median, {machine()}",
        rows, [("model", "label"), ("lp", "length_penalty"), ("BLEU-1", "Bleu_1"), ("BLEU-4", "Bleu_4"),
               ("METEOR", "METEOR"), ("ROUGE-L", "ROUGE_L"), ("CIDEr", "CIDEr"), ("distinct", "distinct_captions"),
               ("words", "distinct_words"), ("degenerate", "degenerate"), ("latency ms", "latency_ms"),
               ("train min", "train_min")],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
