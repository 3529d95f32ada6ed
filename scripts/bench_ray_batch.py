"""`caption batch` on the local engine against the Ray engine with 1 and 2 actors, on the same real photos,
in one run: wall time, start-up (Python, the model; for Ray also the cluster and the actors' model loads)
and captioning throughput after start-up.

    python scripts/bench_ray_batch.py [--images 1000] [--model flickr8k-lite2] [--block-size 128]
                                      [--gpu]   # adds 1 GPU actor against the local engine on the GPU

Each case is `python -m caption.cli batch --file-list LIST --out OUT.jsonl` in its own process; the Ray cases
start a local Ray cluster in that process (`--address` left out), so its start-up is in the figures.
Photos: Flickr8k train photos from $CAPTION_DATA (default ../shared/data).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import DATA, REPO, machine, print_table  # noqa: E402

from caption.models import DEFAULT_MODEL  # noqa: E402

SUMMARY = re.compile(r"(\d+) captioned \(([\d.]+) images/s(?: after ([\d.]+) s of start-up)?\)")


def run_case(label: str, files: Path, out: Path, model: str, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "caption.cli", "batch", "--file-list", str(files), "--out", str(out),
               "--model", model, "--no-progress", *extra]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    match = SUMMARY.search(result.stderr)
    if result.returncode not in (0, 1) or match is None:
        raise SystemExit(f"{label} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    captioned, rate = int(match.group(1)), float(match.group(2))
    captioning = captioned / rate
    return {"case": label, "wall_s": round(wall, 1), "startup_s": round(wall - captioning, 1),
            "captioning_s": round(captioning, 1), "images_per_s": round(rate, 1),
            "wall_images_per_s": round(captioned / wall, 1), "captioned": captioned}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--gpu", action="store_true", help="also 1 GPU actor vs the local engine on the GPU")
    args = parser.parse_args()
    names = (DATA / "flickr8k" / "Flickr_8k.trainImages.txt").read_text().split()[: args.images]
    ray = ["--engine", "ray", "--block-size", str(args.block_size)]
    cases = [("local engine (CPU)", ["--device", "cpu"]),
             ("ray, 1 actor x 1 CPU", [*ray, "--actors", "1", "--cpus-per-actor", "1"]),
             ("ray, 1 actor x 2 CPUs", [*ray, "--actors", "1", "--cpus-per-actor", "2"]),
             ("ray, 2 actors x 1 CPU", [*ray, "--actors", "2", "--cpus-per-actor", "1"])]
    if args.gpu:
        cases += [("local engine (GPU)", ["--device", "cuda"]),
                  ("ray, 1 GPU actor", [*ray, "--actors", "1", "--gpus-per-actor", "1"])]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "files.txt"
        listing.write_text("".join(f"{DATA / 'flickr8k' / 'images' / n}\n" for n in names))
        for i, (label, extra) in enumerate(cases):
            row = run_case(label, listing, Path(tmp) / f"out{i}.jsonl", args.model, extra)
            print(row, flush=True)
            rows.append(row)
    base = rows[0]["images_per_s"]
    for row in rows:
        row["vs_local"] = f"{row['images_per_s'] / base:.2f}x"
    print_table(f"caption batch, {len(names)} Flickr8k photos, {args.model}, beam 3; {machine()}", rows,
                [("case", "case"), ("wall s", "wall_s"), ("start-up s", "startup_s"),
                 ("captioning s", "captioning_s"), ("images/s after start-up", "images_per_s"),
                 ("images/s overall", "wall_images_per_s"), ("vs local", "vs_local")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
