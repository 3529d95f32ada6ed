"""Helpers shared by the benchmark scripts: options, data discovery, peak memory, and table printing."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from caption.api import pick_device
from caption.utils.runtime import peak_memory_mb

__all__ = ["DATA", "REPO", "machine", "parse_bench_args", "peak_memory_mb", "print_table", "rss_mb",
           "run_isolated"]

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CAPTION_DATA", REPO.parent / "shared" / "data"))


def parse_bench_args(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, torch.device]:
    """Add the options every benchmark shares, and parse (importing caption has set glibc's heap)."""
    parser.add_argument("--device", default="auto")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # set when run_isolated runs one case
    args = parser.parse_args()
    return args, pick_device(args.device)


def run_isolated(script: str, case: str, args: list[str]) -> dict:
    """Run one benchmark case in a fresh process, so its peak memory is its own."""
    result = subprocess.run([sys.executable, script, "--case", case, *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"benchmark case {case} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def print_table(title: str, rows: list[dict], columns: list[tuple[str, str]]) -> None:
    """A Markdown table of ``rows``; ``columns`` are (header, key) pairs."""
    headers = [header for header, _ in columns]
    cells = [[format_cell(row, key) for _, key in columns] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")


def format_cell(row: dict, key: str) -> str:
    value = row.get(key, "")
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if value < 10 else f"{value:,.0f}"
    return str(value)


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def rss_mb(pid: int) -> float:
    """Another process's resident memory now (a server this benchmark started)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")
