"""Captioning at the CPU's speed on every surface, before and after, in one run: the Python API in a plain
process, the encoder alone, `caption batch`, and `caption predict` of one photo against `import torch`.

    python scripts/bench_cpu.py [--before /path/to/older/checkout] [--model everyday-lite2] [--images 200]
                                [--beam-size 3] [--repeats 2]

Each case runs in a fresh process (PYTHONPATH and working folder set to the tree under test), on the first
``--images`` Flickr8k dev photos ($CAPTION_DATA, default ../shared/data); throughput cases report the best
of ``--repeats``. ``--before`` names another checkout of this repository (``git worktree add /tmp/before
<commit>``) whose fp32 cases run in the same session, so every ratio compares figures measured together.
The bf16 cases need this tree's ``precision`` option and run only for it.

The table's ratios: each case against the same case of ``--before``; the API against `caption batch` of
the same tree; end to end against the encoder alone at the same precision; `caption predict` against
`python -c "import torch"`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CAPTION_DATA", REPO.parent / "shared" / "data"))
CASES = ("import-torch", "predict", "api", "api-bf16", "encoder", "encoder-bf16", "batch")
NEEDS_PRECISION = ("api-bf16", "encoder-bf16")


def dev_images(count: int) -> list[str]:
    names = (DATA / "flickr8k" / "Flickr_8k.devImages.txt").read_text().split()[:count]
    return [str(DATA / "flickr8k" / "images" / name) for name in names]


def run_in_process(case: str, model: str, count: int, beam: int) -> dict:
    """One throughput case, in this process (run by ``measure`` in a fresh one)."""
    import resource

    import torch

    from caption.api import Captioner

    precision = {"precision": "bf16"} if case.endswith("bf16") else {}
    captioner = Captioner.load(model, device="cpu", **precision)
    paths = dev_images(count)
    if case.startswith("encoder"):
        images = torch.stack([captioner.transform.load(p) for p in paths])  # (n, 3, S, S), decoded up front
        chunks = images.split(32)
        captioner.encode(chunks[0])  # warm-up
        started = time.perf_counter()
        for chunk in chunks:
            captioner.encode(chunk)
    else:
        captioner.caption(paths[:32], beam_size=beam)  # warm-up
        started = time.perf_counter()
        captioner.caption(paths, beam_size=beam, batch_size=32)
    seconds = time.perf_counter() - started
    return {"images_per_s": count / seconds,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure(case: str, tree: Path, args: argparse.Namespace, work: Path) -> dict:
    """``case`` in a fresh process of ``tree``: images/s (throughput cases) or wall seconds."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    python = sys.executable
    if case in ("import-torch", "predict"):
        command = ([python, "-c", "import torch"] if case == "import-torch" else
                   [python, "-m", "caption.cli", "predict", dev_images(1)[0], "--model", args.model,
                    "--beam-size", str(args.beam_size)])
        started = time.perf_counter()
        subprocess.run(command, cwd=tree, env=env, check=True, capture_output=True)
        return {"seconds": time.perf_counter() - started}
    if case == "batch":
        listing, out = work / "files.txt", work / f"batch-{time.monotonic_ns()}.jsonl"
        listing.write_text("\n".join(dev_images(args.images)) + "\n")
        started = time.perf_counter()
        result = subprocess.run([python, "-m", "caption.cli", "batch", "--file-list", str(listing), "--out",
                                 str(out), "--model", args.model, "--beam-size", str(args.beam_size),
                                 "--no-progress"], cwd=tree, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        rate = re.search(r"\(([\d.]+) images/s", result.stderr)
        if rate is None:
            raise RuntimeError(f"caption batch in {tree}: {result.stderr[-2000:]}")
        return {"images_per_s": float(rate.group(1)), "seconds": wall}
    result = subprocess.run([python, str(Path(__file__).resolve()), "--case", case, "--model", args.model,
                             "--images", str(args.images), "--beam-size", str(args.beam_size)],
                            cwd=tree, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{case} in {tree}: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def best(runs: list[dict]) -> dict:
    if "images_per_s" in runs[0]:
        return max(runs, key=lambda r: r["images_per_s"])
    return min(runs, key=lambda r: r["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, help="another checkout of this repository, measured alongside")
    parser.add_argument("--model", default="everyday-lite2")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one throughput case, run in a fresh process
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_in_process(args.case, args.model, args.images, args.beam_size)))
        return

    trees = {"after": REPO, **({"before": args.before.resolve()} if args.before else {})}
    results: dict[tuple[str, str], dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench_cpu_") as folder:
        for _ in range(args.repeats):  # the trees alternate, so a slow spell of the machine hits both
            for case in args.cases:
                for name, tree in trees.items():
                    if name == "before" and case in NEEDS_PRECISION:
                        continue
                    figures = measure(case, tree, args, Path(folder))
                    results.setdefault((name, case), {"runs": []})["runs"].append(figures)
                    print(f"{name:6s} {case:13s} {figures}", file=sys.stderr, flush=True)
    table = {key: best(value["runs"]) for key, value in results.items()}

    def figure(name: str, case: str) -> dict:
        return table.get((name, case), {})

    print(f"\n{os.cpu_count()} CPU cores; model {args.model}, beam {args.beam_size}, {args.images} Flickr8k "
          f"dev photos, best of {args.repeats}\n")
    print("| tree | case | images/s | seconds | peak RSS MB | vs before |")
    print("|---|---|---|---|---|---|")
    for (name, case), row in table.items():
        key = "images_per_s" if "images_per_s" in row else "seconds"
        before = figure("before", case).get(key)
        ratio = f"{row[key] / before:.2f}x" if before and name == "after" else ""
        rate = f"{row['images_per_s']:.1f}" if "images_per_s" in row else ""
        seconds = f"{row['seconds']:.2f}" if "seconds" in row else ""
        peak = f"{row['peak_mb']:.0f}" if "peak_mb" in row else ""
        print(f"| {name} | {case} | {rate} | {seconds} | {peak} | {ratio} |")
    print()
    for name in trees:
        ratios = []
        api, batch = figure(name, "api").get("images_per_s"), figure(name, "batch").get("images_per_s")
        if api and batch:
            ratios.append(f"API / caption batch {api / batch:.2f}")
        for suffix in ("", "-bf16"):
            api_rate, encoder = (figure(name, "api" + suffix).get("images_per_s"),
                                 figure(name, "encoder" + suffix).get("images_per_s"))
            if api_rate and encoder:
                ratios.append(f"end to end / encoder{suffix or ' fp32'} {api_rate / encoder:.2f}")
        predict = figure(name, "predict").get("seconds")
        torch_only = figure(name, "import-torch").get("seconds")
        if predict and torch_only:
            ratios.append(f"predict / import torch {predict / torch_only:.2f}")
        print(f"{name}: " + "; ".join(ratios))


if __name__ == "__main__":
    main()
