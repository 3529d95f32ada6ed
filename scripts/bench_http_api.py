"""The server's plain HTTP API (``POST /v1/caption``, through httpx) against gradio_client (the page's
``/caption``), on one server this script starts (``demo/app.py`` on a free port), with the same full-size
photos, beam 3, max length 20:

- one photo at a time: a warm-up request, then ``--single`` requests one after another, per surface;
- ``--users`` users at once, for ``--rounds`` rounds, all on one surface, the surfaces round by round;
- half the users on each surface at once (mixed), whose batches the server may share between surfaces.

The three kinds of rounds take turns, so that the machine's speed drifting affects them alike. A request
refused with 503 is sent again after its Retry-After (counted as a retry); one answered without a caption
counts as a failure. Requests/s: a surface's captioned requests over its time in the rounds, each round from
its first request sent to its last answered (in a mixed round, the surface's own requests). Prints one
table and the server's batches per kind of round (from ``/metrics``), and exits 1 when any request failed.

    python scripts/bench_http_api.py [--single 10] [--users 16] [--rounds 5] [--model flickr8k-lite0]
                                     [--device auto]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from gradio_client import Client, handle_file
from gradio_client.utils import QueueError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import DATA, machine, print_table, rss_mb  # noqa: E402
from bench_serving import start_demo  # noqa: E402

HTTP, GRADIO = "http", "gradio_client"
BEAM_SIZE, MAX_LENGTH = 3, 20
TIMEOUT_S = 120  # a busy 2-core server can take longer than the clients' defaults (5 s for gradio_client)
MAX_TRIES = 10  # a request refused this many times counts as failed, so that a full server cannot hang us
QUEUE_FULL_WAIT_S = 1.0  # Gradio's own queue refuses without a Retry-After


@dataclass
class Photo:
    path: Path
    data: bytes  # read once, so that the HTTP client's timings hold no disk reads


@dataclass
class Outcome:
    started: float
    finished: float
    retries: int
    error: str | None  # None: answered with a caption


@dataclass
class Tally:
    """One table row: a surface's requests in one case."""

    outcomes: list[Outcome] = field(default_factory=list)
    wall_s: float = 0.0  # the surface's time in its rounds (the sequential requests' for one photo at a time)
    rss_mb: list[float] = field(default_factory=list)  # the server's, after each round


class Refused(Exception):
    """The server was full (503): send the request again in ``wait_s``."""

    def __init__(self, wait_s: float):
        super().__init__(f"refused, retry in {wait_s:g} s")
        self.wait_s = wait_s


def retry_after(response: httpx.Response) -> float:
    return float(response.headers.get("Retry-After", QUEUE_FULL_WAIT_S))


def ask_http(client: httpx.Client, photo: Photo) -> dict:
    response = client.post("/v1/caption", files={"file": (photo.path.name, photo.data, "image/jpeg")},
                           data={"beam_size": str(BEAM_SIZE), "max_length": str(MAX_LENGTH)})
    if response.status_code == 503:
        raise Refused(retry_after(response))
    return response.json()


def ask_gradio(client: Client, photo: Photo) -> dict:
    try:
        return client.predict(handle_file(str(photo.path)), BEAM_SIZE, MAX_LENGTH, api_name="/caption")
    except httpx.HTTPStatusError as err:  # the upload route refuses with 503 when the upload budget is full
        if err.response.status_code == 503:
            raise Refused(retry_after(err.response)) from None
        raise
    except QueueError:
        raise Refused(QUEUE_FULL_WAIT_S) from None


ASK = {HTTP: ask_http, GRADIO: ask_gradio}


def timed_request(surface: str, client, photo: Photo) -> Outcome:
    """One request as its user sees it: from first sending to the answer, waits for retries included."""
    started, retries = time.perf_counter(), 0
    while True:
        try:
            answer = ASK[surface](client, photo)
        except Refused as refused:
            if retries + 1 < MAX_TRIES:
                retries += 1
                time.sleep(refused.wait_s)
                continue
            error = f"refused {MAX_TRIES} times"
        except Exception as err:  # noqa: BLE001 - a failed request is a row value, not a crash
            error = f"{type(err).__name__}: {err}"
        else:
            error = None if answer.get("caption") else f"no caption: {str(answer)[:300]}"
        return Outcome(started, time.perf_counter(), retries, error)


def run_round(pool: ThreadPoolExecutor, users: list[tuple[str, object]], photos: list[Photo],
              round_number: int) -> list[Outcome]:
    """Every user sends one request at the same moment; their outcomes, in the users' order."""
    start_together = threading.Barrier(len(users))

    def one_user(index: int) -> Outcome:
        surface, client = users[index]
        start_together.wait()
        return timed_request(surface, client, photos[(index + round_number) % len(photos)])

    return list(pool.map(one_user, range(len(users))))


def span_s(outcomes: list[Outcome]) -> float:
    """From the first request sent to the last answered."""
    return max(o.finished for o in outcomes) - min(o.started for o in outcomes)


def scrape(client: httpx.Client) -> Counter[str]:
    """The server's batch counters from ``/metrics``."""
    wanted = ("caption_batch_size_count", "caption_batch_size_sum", "caption_mixed_batches_total")
    values: Counter[str] = Counter()
    for line in client.get("/metrics").text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            values[name] = float(value)
    return values


def percentile(values: list[float], fraction: float) -> float | None:
    """Linear between the closest ranks (as numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def table_row(case: str, surface: str, tally: Tally) -> dict:
    answered_ms = [1000 * (o.finished - o.started) for o in tally.outcomes if o.error is None]
    rss = tally.rss_mb
    return {"case": case, "surface": surface, "requests": len(tally.outcomes),
            "p50_ms": percentile(answered_ms, 0.5), "p95_ms": percentile(answered_ms, 0.95),
            "requests_per_s": len(answered_ms) / tally.wall_s if tally.wall_s else None,
            "rss": f"{rss[0]:,.0f}/{rss[-1]:,.0f} (max {max(rss):,.0f})" if rss else None,
            "failures": sum(o.error is not None for o in tally.outcomes),
            "retries": sum(o.retries for o in tally.outcomes)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--single", type=int, default=10, help="one-at-a-time requests per surface")
    parser.add_argument("--users", type=int, default=16, help="concurrent users (mixed: half per surface)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each concurrent case")
    parser.add_argument("--model", default="flickr8k-lite0")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if args.single < 1 or args.rounds < 1 or args.users < 2 or args.users % 2:
        parser.error("--single and --rounds must be at least 1, --users even and at least 2")

    paths = sorted((DATA / "flickr8k" / "photos_fullres").glob("*.jpg"))
    if not paths:
        print(f"needs the full-size sample photos in {DATA}/flickr8k/photos_fullres (set CAPTION_DATA)",
              file=sys.stderr)
        return 2
    photos = [Photo(path, path.read_bytes()) for path in paths]
    single_case, users_case, mixed_case = ("1 photo at a time", f"{args.users} users at once",
                                           f"{args.users // 2} + {args.users // 2} users at once (mixed)")
    tallies = {(case, surface): Tally() for case in (single_case, users_case, mixed_case)
               for surface in (HTTP, GRADIO)}
    batches: dict[str, Counter[str]] = {}  # /metrics deltas by kind of round
    process, url = start_demo(args.model, args.device, Path(tempfile.mkdtemp()) / "demo.log")
    http_users: list[httpx.Client] = []
    gradio_users: list[Client] = []
    try:
        # Every user's client is connected up front, so that only requests are timed.
        http_users = [httpx.Client(base_url=url, timeout=TIMEOUT_S) for _ in range(args.users)]
        gradio_users = [Client(url, verbose=False, httpx_kwargs={"timeout": TIMEOUT_S})
                        for _ in range(args.users)]
        monitor = http_users[0]  # /metrics is read between rounds only, when no request is in flight

        single_clients = {HTTP: http_users[0], GRADIO: gradio_users[0]}
        for surface, client in single_clients.items():
            timed_request(surface, client, photos[0])  # warm-up
        for i in range(args.single):  # request by request in turns, for the same drift on both
            for surface, client in single_clients.items():
                outcome = timed_request(surface, client, photos[i % len(photos)])
                tallies[single_case, surface].outcomes.append(outcome)
                tallies[single_case, surface].wall_s += outcome.finished - outcome.started

        half = args.users // 2
        mixed_users = [(HTTP, c) for c in http_users[:half]] + [(GRADIO, c) for c in gradio_users[:half]]
        kinds = [(users_case, f"{args.users} users, {HTTP}", [(HTTP, c) for c in http_users]),
                 (users_case, f"{args.users} users, {GRADIO}", [(GRADIO, c) for c in gradio_users]),
                 (mixed_case, "mixed", mixed_users)]
        with ThreadPoolExecutor(args.users) as pool:
            # Unmeasured: the model's first batches of this size are slower (its heaps grow).
            run_round(pool, mixed_users, photos, 0)
            for round_number in range(1, args.rounds + 1):
                for case, kind, users in kinds:
                    before = scrape(monitor)
                    outcomes = run_round(pool, users, photos, round_number)
                    if process.poll() is not None:
                        raise RuntimeError(f"the server died in round {round_number} ({kind})")
                    batches.setdefault(kind, Counter()).update(scrape(monitor) - before)
                    rss = rss_mb(process.pid)
                    for surface in {surface for surface, _ in users}:
                        # Each surface's own span: in a mixed round, how soon its users were all answered.
                        own = [o for (s, _), o in zip(users, outcomes) if s == surface]
                        tally = tallies[case, surface]
                        tally.outcomes += own
                        tally.wall_s += span_s(own)
                        tally.rss_mb.append(rss)
    finally:
        for client in [*http_users, *gradio_users]:
            client.close()
        process.terminate()
        process.wait(timeout=30)

    rows = [table_row(case, surface, tally) for (case, surface), tally in tallies.items()]
    for row in rows:
        baseline = next(r for r in rows if r["case"] == row["case"] and r["surface"] == GRADIO)
        if row["requests_per_s"] and baseline["requests_per_s"]:
            row["vs_gradio"] = f"{row['requests_per_s'] / baseline['requests_per_s']:.2f}x"
    print_table(f"Server HTTP API against gradio_client, full-size photos, beam {BEAM_SIZE}, max length "
                f"{MAX_LENGTH}, {args.rounds} round(s) per concurrent case ({machine()})", rows,
                [("case", "case"), ("surface", "surface"), ("requests", "requests"), ("p50 ms", "p50_ms"),
                 ("p95 ms", "p95_ms"), ("requests/s", "requests_per_s"), ("vs gradio_client", "vs_gradio"),
                 ("server RSS first/last MB", "rss"), ("failures", "failures"), ("503 retries", "retries")])
    print("\nThe server's batches (from /metrics):")
    for kind, counts in batches.items():
        count = counts["caption_batch_size_count"]
        mean = counts["caption_batch_size_sum"] / count if count else 0
        print(f"  {kind}: {count:.0f} batches of {mean:.1f} requests on average, "
              f"{counts['caption_mixed_batches_total']:.0f} mixed (both surfaces)")
    errors = [o.error for tally in tallies.values() for o in tally.outcomes if o.error]
    for error in errors[:10]:
        print(f"FAILED: {error}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
