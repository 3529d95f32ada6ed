"""Load test for the web demo: rounds of 16 users with good photos, 4 with bad parameters and 4 with bad
files, all at once, against a demo server this script starts on 127.0.0.1.

The upload folder is measured beyond what it holds at start (the example photos Gradio copies in). Every
upload is new bytes (each round's photos differ from the last round's after the JPEG's end, so the pixels
and the expected caption stay the same), so without cleaning the server's upload folder would grow every
round. An upload the server's budget cannot hold now is refused (503 with Retry-After); the users do what a
client should, wait that long and send it again, and the refusals are counted. Prints one row per round
(answers, refusals, latency, server memory, upload folder) and a JSON summary line, and exits 1 when a good
request failed, a bad one was not answered with its error, the server died, memory grew beyond the bound
given, or the upload folder held more than its budget.

    python scripts/load_test_demo.py --rounds 20
    python scripts/load_test_demo.py --rounds 6 --keep-uploads 2 --uploads-budget-mb 3   # what the test runs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import DATA, REPO, rss_mb  # noqa: E402

GOOD_USERS, BAD_PARAMETER_USERS, BAD_FILE_USERS = 16, 4, 4
BAD_PARAMETERS = [(1000, 20), ("abc", 20), (0, 20), (3, 0)]  # (beam size, maximum length)


def folder_size(folder: Path) -> tuple[int, int]:
    """(bytes, files) under ``folder``."""
    total = count = 0
    for root, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
                count += 1
            except FileNotFoundError:
                pass
    return total, count


def make_round(folder: Path, photos: list[Path], round_number: int) -> tuple[list[tuple], list[str]]:
    """This round's requests: (path, beam, length, kind) with kind "good", "parameter" or "file", and the
    photo each good request shows. Bytes after a JPEG's end make every upload new without changing its
    pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    requests, shows = [], []
    for user in range(GOOD_USERS + BAD_PARAMETER_USERS):
        photo = photos[user % len(photos)]
        path = folder / f"r{round_number}-u{user}-{photo.name}"
        path.write_bytes(photo.read_bytes() + f"round {round_number} user {user}".encode())
        if user < GOOD_USERS:
            requests.append((str(path), 3, 20, "good"))
        else:
            beam, length = BAD_PARAMETERS[user - GOOD_USERS]
            requests.append((str(path), beam, length, "parameter"))
        shows.append(photo.name)
    data = photos[0].read_bytes()
    bad_files = {
        f"r{round_number}-truncated.jpg": data[: len(data) // 2] + bytes([round_number % 256]),
        f"r{round_number}-notes.jpg": f"not a photo, round {round_number}\n".encode(),
        f"r{round_number}-empty.jpg": b"",
        f"r{round_number}-photo.mp4": data + f"round {round_number}".encode(),  # a JPEG named .mp4
    }
    for name, content in bad_files.items():
        (folder / name).write_bytes(content)
        requests.append((str(folder / name), 3, 20, "file"))
        shows.append("")
    return requests, shows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--keep-uploads", type=float, default=5.0, help="the server's --keep-uploads")
    parser.add_argument("--uploads-budget-mb", type=float, default=10.0,
                        help="the server's --uploads-budget-mb")
    parser.add_argument("--warm-up", type=int, default=3,
                        help="rounds after which the server's memory must level off (the model's heaps fill "
                             "first)")
    # Resident memory steps up by as much as ~250 MB at once when the model meets a new batch shape (glibc
    # keeps the larger heap), then holds: the same captioning in one process, with no server, went 1,098 ->
    # 1,268 -> 1,224 MB. So this bound only catches gross growth; tests/test_web.py checks exactly that no
    # request's image, result or future outlives its round.
    parser.add_argument("--max-rss-growth-mb", type=float, default=400.0,
                        help="most the server's memory may grow from the end of the warm-up to the last "
                             "round")
    parser.add_argument("--port", type=int, default=7871)
    parser.add_argument("--server-log", type=Path, help="keep the server's log here")
    args = parser.parse_args()

    import httpx
    from gradio_client import Client, handle_file

    from caption.api import Captioner

    photos = sorted((DATA / "flickr8k" / "photos_fullres").glob("*.jpg"))
    if not photos:
        print(f"no photos in {DATA / 'flickr8k' / 'photos_fullres'} (set CAPTION_DATA)", file=sys.stderr)
        return 2
    expected = {p.name: r.text for p, r in zip(photos, Captioner.load().caption([str(p) for p in photos],
                                                                                beam_size=3, max_length=20))}
    work = Path(tempfile.mkdtemp(prefix="caption-load-"))
    uploads, log = work / "gradio", work / "server.log"
    env = {**os.environ, "GRADIO_TEMP_DIR": str(uploads), "PYTHONPATH": str(REPO), "CAPTION_DATA": str(DATA)}
    command = [sys.executable, str(REPO / "demo" / "app.py"), "--port", str(args.port), "--keep-uploads",
               str(args.keep_uploads), "--uploads-budget-mb", str(args.uploads_budget_mb),
               "--max-file-mb", str(min(50.0, args.uploads_budget_mb))]  # the budget holds the largest upload
    with log.open("w") as sink:
        server = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    rows, failures = [], []
    try:
        deadline = time.monotonic() + 180
        while "Captioning demo" not in log.read_text():
            if server.poll() is not None or time.monotonic() > deadline:
                print(log.read_text()[-3000:], file=sys.stderr)
                return 2
            time.sleep(0.2)
        url = log.read_text().split(" at ", 1)[1].split()[0]
        baseline_bytes, baseline_files = folder_size(uploads)  # the example photos Gradio copies in at start
        users = GOOD_USERS + BAD_PARAMETER_USERS + BAD_FILE_USERS
        # A browser waits for its upload; gradio_client gives it 5 s, which a busy 2-core server can exceed.
        clients = [Client(url, verbose=False, httpx_kwargs={"timeout": 120}) for _ in range(users)]
        print(f"upload folder at start: {baseline_bytes / 2**20:.1f} MB in {baseline_files} files "
              "(the examples); below: what the rounds add")
        print("| round | good ok | bad parameters answered | bad files answered | uploads refused, then sent "
              "again | p50 s | max s | server RSS MB | upload folder MB | files |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for number in range(1, args.rounds + 1):
            requests, shows = make_round(work / "inputs" / str(number), photos, number)

            refusals = []

            def ask(job, refusals=refusals):
                client, (path, beam, length, _) = job
                started = time.perf_counter()
                while True:
                    try:
                        answer = client.predict(handle_file(path), beam, length, api_name="/caption")
                    except httpx.HTTPStatusError as err:  # the upload did not fit the budget now
                        if err.response.status_code == 503 and len(refusals) < 100 * users:
                            refusals.append(path)
                            time.sleep(int(err.response.headers.get("retry-after", "1")))
                            continue
                        answer = {"exception": f"{type(err).__name__}: {err}"}
                    except Exception as err:  # noqa: BLE001 - a failed request is what this test counts
                        answer = {"exception": f"{type(err).__name__}: {err}"}
                    return answer, time.perf_counter() - started

            with ThreadPoolExecutor(users) as pool:
                answers = list(pool.map(ask, zip(clients, requests)))
            counts = {"good": 0, "parameter": 0, "file": 0}
            for (path, beam, length, kind), shown, (answer, _) in zip(requests, shows, answers):
                if kind == "good":
                    ok = answer.get("caption") == expected[shown]
                elif kind == "parameter":
                    ok = answer.get("error_kind") == "parameter"
                else:  # the error names the file as the user named it
                    ok = str(answer.get("error", "")).startswith(Path(path).name + ": ")
                counts[kind] += ok
                if not ok:
                    failures.append(f"round {number}: {kind} {Path(path).name} ({beam}, {length}): {answer}")
            latencies = sorted(seconds for _, seconds in answers)
            folder_bytes, files = folder_size(uploads)
            folder_bytes, files = folder_bytes - baseline_bytes, files - baseline_files
            alive = server.poll() is None
            row = {"round": number, "good_ok": counts["good"], "parameter_ok": counts["parameter"],
                   "file_ok": counts["file"], "refused": len(refusals),
                   "p50_s": latencies[len(latencies) // 2], "max_s": latencies[-1],
                   "rss_mb": rss_mb(server.pid) if alive else float("nan"),
                   "uploads_mb": folder_bytes / 2**20,
                   "files": files}
            rows.append(row)
            print(f"| {number} | {counts['good']}/{GOOD_USERS} | {counts['parameter']}/{BAD_PARAMETER_USERS} "
                  f"| {counts['file']}/{BAD_FILE_USERS} | {len(refusals)} | {row['p50_s']:.2f} "
                  f"| {row['max_s']:.2f} "
                  f"| {row['rss_mb']:.0f} | {row['uploads_mb']:.1f} | {files} |", flush=True)
            if not alive:
                failures.append(f"the server died in round {number}")
                break
            shutil.rmtree(work / "inputs" / str(number))
        time.sleep(args.keep_uploads + min(30.0, max(1.0, args.keep_uploads / 2)) + 1)  # one more sweep
        final_bytes, final_files = folder_size(uploads)
        final_bytes, final_files = final_bytes - baseline_bytes, final_files - baseline_files
        alive = server.poll() is None
    finally:
        server.terminate()
        server.wait(timeout=30)
    warm = rows[min(args.warm_up, len(rows)) - 1]
    growth = rows[-1]["rss_mb"] - warm["rss_mb"]
    most_uploads = max(row["uploads_mb"] for row in rows)
    if growth > args.max_rss_growth_mb:
        failures.append(f"server memory grew {growth:.0f} MB from round {warm['round']} to round {len(rows)}")
    if most_uploads > args.uploads_budget_mb:
        failures.append(f"the upload folder reached {most_uploads:.1f} MB, over the "
                        f"{args.uploads_budget_mb:g} MB budget")
    summary = {"rounds": len(rows), "failures": failures, "rss_first_mb": rows[0]["rss_mb"],
               "rss_last_mb": rows[-1]["rss_mb"], "rss_growth_after_warm_up_mb": growth,
               "uploads_max_mb": most_uploads, "uploads_after_idle_mb": final_bytes / 2**20,
               "files_after_idle": final_files, "alive": alive, "rows": rows}
    print(f"after {args.keep_uploads:g} s idle: upload folder {final_bytes / 2**20:.2f} MB in {final_files} "
          f"files; server memory {rows[0]['rss_mb']:.0f} -> {rows[-1]['rss_mb']:.0f} MB")
    for failure in failures[:20]:
        print(f"FAILED: {failure}")
    print("SUMMARY " + json.dumps(summary))
    if args.server_log:
        shutil.copy(log, args.server_log)
    shutil.rmtree(work, ignore_errors=True)
    return 1 if failures or not alive else 0


if __name__ == "__main__":
    sys.exit(main())
