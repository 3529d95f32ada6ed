"""Captioning throughput of shipped models side by side at several batch sizes: the encoder alone (decoded
images in memory), files through the encoder (reading and resizing included: the pipeline without a
decoder), and end to end (files to captions, beam 3 and greedy); one image at a time as the baseline, and
one full-size photo's latency. The default compares the default model with the previous one,
flickr8k-lite2, in the same run.

    python scripts/bench_caption.py [--models everyday-lite2 flickr8k-lite2] [--images 192]
                                    [--batch-sizes 1 8 32 64] [--device auto]

Images are Flickr8k dev photos and the full-size sample photos ($CAPTION_DATA, default ../shared/data).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import DATA, machine, parse_bench_args, peak_memory_mb, print_table, run_isolated  # noqa: E402

from caption.api import DEFAULT_MODEL, Captioner  # noqa: E402
from caption.features.batching import iter_image_batches  # noqa: E402

REFERENCE_IMAGES_PER_S = 5.13  # ../shared/ANCHORS.md: the tutorial, one image at a time, beam 3
REFERENCE_PHOTO_MS = 247.0
PREVIOUS_DEFAULT = "flickr8k-lite2"


def dev_images(count: int) -> list[str]:
    names = (DATA / "flickr8k" / "Flickr_8k.devImages.txt").read_text().split()
    return [str(DATA / "flickr8k" / "images" / n) for n in names[:count]]


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def run_case(case: str, model: str, count: int, device: torch.device, workers: int | None) -> dict:
    kind, _, size = case.partition(":")
    batch = int(size or 1)
    captioner = Captioner.load(model, device=device)
    paths = dev_images(count)
    if kind == "encoder":
        images = torch.stack([captioner.transform.load(p) for p in paths])  # decoded up front: encoder only
        chunks = list(torch.split(images, batch))
        captioner.encode(chunks[0])  # warm-up
        seconds = timed(lambda: [captioner.encode(c) for c in chunks], device)
        return {"case": f"encoder only, batch {batch}", "batch": batch, "images_per_s": count / seconds,
                "peak_mb": peak_memory_mb(device)}
    if kind == "files":
        def read_and_encode():
            for _, images, _ in iter_image_batches(paths, captioner.transform, device=device,
                                                   batch_size=batch, num_workers=workers):
                captioner.encode(images)

        captioner.encode(captioner.transform.load(paths[0]).unsqueeze(0))  # warm-up
        seconds = timed(read_and_encode, device)
        return {"case": f"files -> encoder, batch {batch}", "batch": batch, "images_per_s": count / seconds,
                "peak_mb": peak_memory_mb(device)}
    if kind == "latency":
        photos = sorted(str(p) for p in (DATA / "flickr8k" / "photos_fullres").glob("*.jpg"))
        captioner.caption(photos[0], num_workers=0)  # warm-up
        times = [timed(lambda p=p: captioner.caption(p, num_workers=0), device) for p in photos]
        return {"case": "one full-size photo, beam 3 (median)", "batch": 1,
                "ms": 1000 * sorted(times)[len(times) // 2], "peak_mb": peak_memory_mb(device)}
    workers = 0 if kind == "single" else workers
    beam = 1 if kind == "greedy" else 3
    list(captioner.iter_captions(paths[:batch], batch_size=batch, num_workers=0))  # warm-up
    decoding = captioner.resolve_decoding(beam_size=beam)
    seconds = timed(lambda: list(captioner.iter_captions(paths, decoding=decoding, batch_size=batch,
                                                         num_workers=workers)),
                    device)
    label = "baseline: one image at a time" if kind == "single" else f"end to end, batch {batch}"
    return {"case": f"{label}, {'greedy' if beam == 1 else 'beam 3'}", "batch": batch,
            "images_per_s": count / seconds, "peak_mb": peak_memory_mb(device)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(dict.fromkeys([DEFAULT_MODEL, PREVIOUS_DEFAULT])),
                        help="shipped names or model directories; ratios are against the last one")
    parser.add_argument("--model", help=argparse.SUPPRESS)  # set when run_isolated runs one case
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--workers", type=int,
                        help="image-decoding worker processes end to end (default: the library's, 2 on a "
                             "GPU, 0 on a CPU)")
    args, device = parse_bench_args(parser)
    if args.case:
        print(json.dumps(run_case(args.case, args.model, args.images, device, args.workers)))
        return 0
    if not (DATA / "flickr8k" / "Flickr_8k.devImages.txt").is_file():
        print(f"needs the Flickr8k dev photos under {DATA}/flickr8k (set CAPTION_DATA)", file=sys.stderr)
        return 2
    common = ["--images", str(args.images), "--device", str(device)]
    common += [] if args.workers is None else ["--workers", str(args.workers)]
    for path in [*dev_images(args.images), *(DATA / "flickr8k" / "photos_fullres").glob("*.jpg")]:
        Path(path).read_bytes()  # into the page cache, so the first case does not pay for a cold disk

    def measure(model: str, case: str) -> dict:
        return {"model": model, **run_isolated(__file__, case, [*common, "--model", model])}

    rows, latencies = [], {}
    for model in args.models:
        baseline = measure(model, "single")
        model_rows = [baseline]
        for batch in args.batch_sizes:
            encoder, files = measure(model, f"encoder:{batch}"), measure(model, f"files:{batch}")
            captioning = [measure(model, f"{kind}:{batch}") for kind in ("batched", "greedy")]
            for row in [files, *captioning]:
                row["of_encoder"] = f"{row['images_per_s'] / encoder['images_per_s']:.0%}"
            for row in captioning:
                row["of_files"] = f"{row['images_per_s'] / files['images_per_s']:.0%}"
            model_rows += [encoder, files, *captioning]
        for row in model_rows:
            row["vs_baseline"] = f"{row['images_per_s'] / baseline['images_per_s']:.1f}x"
            if device.type == "cpu" and "beam 3" in row["case"]:  # the reference figure is for beam 3
                row["vs_reference"] = f"{row['images_per_s'] / REFERENCE_IMAGES_PER_S:.1f}x"
        rows += model_rows
        latencies[model] = measure(model, "latency")["ms"]
    last = args.models[-1]
    speeds = {(row["model"], row["case"]): row["images_per_s"] for row in rows}
    for row in rows:
        row["vs_last"] = f"{row['images_per_s'] / speeds[(last, row['case'])]:.2f}x"
    columns = [("model", "model"), ("case", "case"), ("images/s", "images_per_s"),
               ("/ encoder only", "of_encoder"), ("/ files -> encoder", "of_files"),
               ("vs baseline", "vs_baseline"), ("vs reference", "vs_reference")]
    columns += [(f"vs {last}", "vs_last")] if len(args.models) > 1 else []
    print_table(
        f"Captioning throughput on {device} ({machine()}), {args.images} Flickr8k dev images; "
        f"reference = the tutorial's {REFERENCE_IMAGES_PER_S} images/s from ANCHORS.md",
        rows, [*columns, ("peak memory MB", "peak_mb")],
    )
    print(f"\nOne full-size photo, model loaded, beam 3, median of "
          f"{len(list((DATA / 'flickr8k' / 'photos_fullres').glob('*.jpg')))} "
          f"photos (reference {REFERENCE_PHOTO_MS:.0f} ms):")
    for model, ms in latencies.items():
        print(f"  {model}: {ms:.0f} ms ({REFERENCE_PHOTO_MS / ms:.1f}x faster than the reference"
              + (f", {ms / latencies[last]:.2f}x the time of {last})" if model != last else ")"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
