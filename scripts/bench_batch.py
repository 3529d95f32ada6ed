"""`caption batch` on big folders: time and peak memory of a first run and of a resume, per folder size. It
shows that the command streams its results to the output instead of holding them (peak memory flat in the
number of files) and reads the output once instead of per file (a resume that skips everything is quick,
and files/s does not fall as folders grow).

    python scripts/bench_batch.py [--counts 1000 10000] [--size 64] [--bad-share 0.01] [--beam-size 1]
                                  [--keep] [--no-malloc-tuning] [--device auto]

Each folder is made at run time in a temporary directory: small JPEGs of noise over a gradient, in
sub-folders of 1,000, with a share of bad files (empty files, and text files named .jpg) so that failure
reporting is exercised. Each run is `python -m caption.cli batch FOLDER --out OUT.jsonl` in its own process;
its peak resident memory is the ru_maxrss that os.wait4 returns for it. The exit status is 1 when any file
is bad, on the first run and on the resume (which counts the bad files recorded earlier): expected here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import REPO, machine, print_table  # noqa: E402

PER_FOLDER = 1000  # images per sub-folder, so that discovery recurses


def make_folder(root: Path, count: int, size: int, bad_share: float, seed: int = 0) -> int:
    """``count`` files under ``root``, ``round(count * bad_share)`` of them bad (spread evenly); returns
    how many are bad."""
    rng = np.random.default_rng(seed)
    wanted = min(count, round(count * bad_share))
    bad_at = {i * count // wanted for i in range(wanted)} if wanted else set()
    bad = 0
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    for i in range(count):
        folder = root / f"part{i // PER_FOLDER:03d}"
        if i % PER_FOLDER == 0:
            folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"img_{i:06d}.jpg"
        if i in bad_at:  # alternately empty, and text with an image's name
            path.write_bytes(b"not an image, just text named .jpg\n" if bad % 2 else b"")
            bad += 1
            continue
        low, high = rng.uniform(0, 255, (2, 3)).astype(np.float32)
        gradient = low + (high - low) * (ramp[:, None, None] if i % 2 else ramp[None, :, None])
        pixels = gradient + rng.normal(0, 40, (size, size, 3)).astype(np.float32)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=85)
    return bad


def rss_kb(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)


def run_batch(folder: Path, out: Path, beam_size: int, device: str, log: Path,
              malloc_tuning: bool = True) -> dict:
    """One `caption batch` process: its wall time, peak RSS (MB), exit status, and its RSS (MB) when the
    output had reached half, and nine tenths, of its final size (sampled every 0.1 s; None for a resume)."""
    command = [sys.executable, "-m", "caption.cli", "batch", str(folder), "--out", str(out),
               "--beam-size", str(beam_size), "--no-progress", "--device", device]
    env = dict(os.environ) if malloc_tuning else dict(os.environ, CAPTION_MALLOC_TUNING="0")
    size_before = out.stat().st_size if out.is_file() else 0
    samples: list[tuple[int, int]] = []  # (output bytes, RSS KB)
    with open(log, "w") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=stderr, stderr=subprocess.STDOUT)
        while True:  # the child's own rusage, unlike RUSAGE_CHILDREN
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            samples.append((out.stat().st_size if out.is_file() else 0, rss_kb(process.pid)))
            time.sleep(0.1)
        seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: tell Popen
    final = out.stat().st_size if out.is_file() else 0

    def rss_at(share: float) -> float | None:
        if final <= size_before:
            return None
        mark = size_before + share * (final - size_before)
        return next((rss / 1024 for size, rss in samples if size >= mark and rss), None)

    return {"seconds": seconds, "peak_mb": usage.ru_maxrss / 1024, "exit": process.returncode,
            "rss_half": rss_at(0.5), "rss_90": rss_at(0.9), "log": log.read_text(errors="replace")}


def read_output(out: Path) -> tuple[int, int, int]:
    """Lines, distinct sources, and error records in a JSONL output."""
    lines, sources, errors = 0, set(), 0
    if out.is_file():
        with open(out, encoding="utf-8") as handle:
            for line in handle:
                record = json.loads(line)
                lines += 1
                sources.add(record.get("source"))
                errors += "error" in record
    return lines, len(sources), errors


def own_rate(summary: str) -> str:
    """The command's own images/s (the captioning loop: no start-up or model loading), if it captioned any."""
    match = re.search(r"^(\d+) captioned \(([\d.]+) images/s\)", summary)
    return f"{float(match.group(2)):.1f}" if match and int(match.group(1)) else "-"


def summary_line(log: str) -> str:
    """The command's report line ("N captioned (...), M could not be read, K already in ...")."""
    lines = [line for line in log.splitlines() if " captioned (" in line]
    return lines[-1].strip() if lines else "(no summary line; see the log below)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[1000, 10000], help="files per folder")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--bad-share", type=float, default=0.01, help="share of bad files in each folder")
    parser.add_argument("--beam-size", type=int, default=1, help="beams per image (1: greedy, quick)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-malloc-tuning", action="store_true",
                        help="run the command with CAPTION_MALLOC_TUNING=0 (glibc's defaults: freed memory "
                             "is trimmed)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders and outputs")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    rows: list[dict] = []
    problems: list[str] = []
    notes: list[str] = []
    tuning = not args.no_malloc_tuning
    try:
        # Unmeasured warm-up, so that the first measured run does not pay for a cold page cache and bytecode.
        warm = work / "warm-up"
        make_folder(warm / "images", 10, args.size, 0.0)
        print("warm-up run, 10 files (not measured) ...", file=sys.stderr, flush=True)
        run_batch(warm / "images", warm / "out.jsonl", args.beam_size, args.device, warm / "log.txt", tuning)
        shutil.rmtree(warm)
        for count in args.counts:
            folder = work / f"images_{count}"
            started = time.perf_counter()
            bad = make_folder(folder, count, args.size, args.bad_share)
            print(f"made {count:,} files ({bad} bad) in {folder} in {time.perf_counter() - started:.1f} s",
                  file=sys.stderr)
            out = work / f"captions_{count}.jsonl"
            for run in ("first run", "resume"):
                print(f"{count:,} files, {run} ...", file=sys.stderr, flush=True)
                log = work / f"log_{count}_{run[0]}.txt"
                result = run_batch(folder, out, args.beam_size, args.device, log, tuning)
                lines, sources, errors = read_output(out)
                summary = summary_line(result["log"])
                expected_exit = 1 if bad else 0
                rows.append({"files": f"{count:,}", "count": count, "run": run, "seconds": result["seconds"],
                             "files_per_s": count / result["seconds"], "peak_mb": result["peak_mb"],
                             "rss_half": result["rss_half"] or "-", "rss_90": result["rss_90"] or "-",
                             "own_rate": own_rate(summary), "exit": result["exit"], "lines": lines,
                             "bad": errors})
                notes.append(f"{count:,} files, {run}: exit {result['exit']}; {summary}")
                if result["exit"] != expected_exit:
                    problems.append(f"{count:,} files, {run}: exit status {result['exit']}, expected "
                                    f"{expected_exit}; its output:\n{result['log'][-3000:]}")
                if lines != count or sources != count:
                    problems.append(f"{count:,} files, {run}: the output has {lines} lines for {sources} "
                                    f"files, expected {count} of each (one per file, none twice)")
                if errors != bad:
                    problems.append(f"{count:,} files, {run}: {errors} error records, but {bad} files were "
                                    "made bad")
                if result["exit"] not in (0, 1):
                    break
            if not args.keep:
                shutil.rmtree(folder)
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    first = rows[0]
    for row in rows:
        row["rss_vs_first"] = f"{row['peak_mb'] / first['peak_mb']:.2f}x"
    print_table(
        f"`caption batch` on a folder of {args.size}x{args.size} JPEGs ({args.bad_share:.0%} bad), beam size "
        f"{args.beam_size}, malloc tuning {'on' if tuning else 'off'}, {machine()}; each run a fresh "
        "process; the resume re-runs the same command on the finished output",
        rows, [("files", "files"), ("run", "run"), ("seconds", "seconds"), ("files/s", "files_per_s"),
               ("the command's images/s", "own_rate"),
               ("RSS MB, half done", "rss_half"), ("RSS MB, 90% done", "rss_90"),
               ("peak RSS MB", "peak_mb"), (f"RSS vs {first['count']:,}-file run", "rss_vs_first"),
               ("output lines", "lines"), ("bad in output", "bad"), ("exit", "exit")],
    )
    print("\nseconds and files/s are the whole process's: start-up and model loading included (the resume is "
          "almost all that); the command's images/s is its own report, for the captioning loop alone.")
    for run in ("first run", "resume"):
        same = [row for row in rows if row["run"] == run]
        if len(same) > 1 and same[-1]["count"] > same[0]["count"]:
            low, high = same[0], same[-1]
            extra = high["count"] - low["count"]
            growth = high["peak_mb"] - low["peak_mb"]
            more_s = high["seconds"] - low["seconds"]
            print(f"{run.capitalize()}, {low['count']:,} -> {high['count']:,} files: peak RSS {growth:+.1f} "
                  f"MB ({1024 * growth / extra:+.2f} KB per extra file), time {more_s:+.1f} s "
                  f"({1000 * more_s / extra:+.2f} ms per extra file)")
    print("\nExit status 1 is expected whenever a folder has bad files: the first run reports them, the "
          "resume counts those recorded before. The commands' own summaries:")
    for note in notes:
        print(f"  {note}")
    for problem in problems:
        print(f"\nPROBLEM: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
