"""The web demo under load: N requests one after another (the baseline) against the same N sent at once,
which the demo's queue batches into shared forward passes. Starts ``demo/app.py`` on a free port.

    python scripts/bench_serving.py [--requests 16] [--model flickr8k-lite0] [--device auto]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import DATA, REPO, machine, print_table  # noqa: E402


def start_demo(model: str, device: str, log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, str(REPO / "demo" / "app.py"), "--port", str(port), "--model", model,
               "--device", device]
    with log.open("w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT,
                                   env=dict(os.environ, CAPTION_DATA=str(DATA)))
    deadline = time.monotonic() + 300
    while "Captioning demo" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.terminate()  # still starting after the deadline: leave no server behind
            raise RuntimeError(f"the demo did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return process, log.read_text().split(" at ", 1)[1].split()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--model", default="flickr8k-lite0")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    from gradio_client import Client, handle_file

    photos = sorted(str(p) for p in (DATA / "flickr8k" / "photos_fullres").glob("*.jpg"))
    if not photos:
        print(f"needs the full-size sample photos in {DATA}/flickr8k/photos_fullres (set CAPTION_DATA)",
              file=sys.stderr)
        return 2
    requests = [photos[i % len(photos)] for i in range(args.requests)]
    log = Path(tempfile.mkdtemp()) / "demo.log"
    process, url = start_demo(args.model, args.device, log)
    try:
        clients = [Client(url, verbose=False) for _ in requests]  # connected up front: time requests only

        def ask(i: int) -> float:
            started = time.perf_counter()
            answer = clients[i].predict(handle_file(requests[i]), 3, 20, api_name="/caption")
            assert answer.get("caption"), answer
            return time.perf_counter() - started

        ask(0)  # warm-up
        started = time.perf_counter()
        one_by_one = [ask(i) for i in range(len(requests))]
        sequential_s = time.perf_counter() - started
        started = time.perf_counter()
        with ThreadPoolExecutor(len(requests)) as pool:
            together = list(pool.map(ask, range(len(requests))))
        concurrent_s = time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(timeout=30)
    batches = [line.split("captioned ")[1] for line in log.read_text().splitlines()
               if "request(s) in" in line]
    rows = [
        {"case": f"baseline: {len(requests)} requests one after another",
         "requests_per_s": len(requests) / sequential_s,
         "mean_ms": 1000 * sum(one_by_one) / len(one_by_one), "max_ms": 1000 * max(one_by_one)},
        {"case": f"{len(requests)} requests at once (batched)",
         "requests_per_s": len(requests) / concurrent_s,
         "mean_ms": 1000 * sum(together) / len(together), "max_ms": 1000 * max(together)},
    ]
    for row in rows:
        row["vs_baseline"] = f"{row['requests_per_s'] / rows[0]['requests_per_s']:.1f}x"
    print_table(f"Web demo /caption through gradio_client, full-size photos, beam 3 ({machine()})", rows,
                [("case", "case"), ("requests/s", "requests_per_s"), ("mean latency ms", "mean_ms"),
                 ("worst latency ms", "max_ms"), ("vs baseline", "vs_baseline")])
    print("\nThe server's forward passes for the concurrent requests:", *batches[len(requests) + 1:],
          sep="\n  ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
