"""``caption batch --engine ray`` on a local 2-CPU Ray cluster started here: the same output as the local
engine on real photos and bad files, and nothing lost or doubled when an actor or the driver is killed.

| case                                                | expected                                          |
|-----------------------------------------------------|---------------------------------------------------|
| the lines of a bad and a good file deleted; rerun   | those two captioned again, as the local engine    |
| a truncated model.safetensors                       | exit 2, the local engine's message word for word  |
| --address where no cluster listens                  | exit 2 at once: "no Ray cluster answers at"       |
| --gpus-per-actor 1 on a cluster without a GPU       | exit 2 after --startup-timeout, naming both sides |
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from caption.serving.inputs import InputError, read_file_list
from tests.conftest import REPO, free_port, problem_files, require

ray = pytest.importorskip("ray",
                          reason="Ray is not installed: pip install 'caption[ray]' (make test installs it)")

MODEL = "flickr8k-lite0"  # the faster shipped model: the engines, not the model, are under test
BLOCK = 16


# The cluster and its drivers share a token, as the nodes of a real cluster do (Ray's token authentication).
RAY_ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}


pytestmark = pytest.mark.slow  # every test starts a Ray cluster


@pytest.fixture(scope="module")
def cluster() -> str:
    """A head node with 2 CPUs, as `ray start --head` starts one; yields its address."""
    port = free_port()
    temp = Path("/tmp") / f"ray-test-{os.getpid()}"  # Ray's socket paths must stay short
    env = RAY_ENV
    ray_cli = str(Path(sys.executable).with_name("ray"))
    subprocess.run([ray_cli, "start", "--head", "--num-cpus", "2", "--num-gpus", "0", f"--port={port}",
                    f"--temp-dir={temp}", "--include-dashboard=false"], check=True, env=env,
                   capture_output=True, timeout=120)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def inputs(flickr_dir, tmp_path_factory) -> tuple[Path, list[str]]:
    """A file list of 200 real Flickr8k photos with bad files among them; and the bad files' names."""
    names = require(flickr_dir / "Flickr_8k.devImages.txt").read_text().split()[:200]
    folder = tmp_path_factory.mktemp("bad")
    _, bad = problem_files(folder, flickr_dir / "images" / names[0])
    files = [str(flickr_dir / "images" / name) for name in names]
    for i, path in enumerate([*bad.values(), folder / "missing.jpg"]):
        files.insert(37 * (i + 1), str(path))
    listing = folder / "files.txt"
    listing.write_text("\n".join(files) + "\n")
    return listing, files


def batch(listing: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "caption.cli", "batch", "--file-list", str(listing), "--out", str(out),
            "--model", MODEL, "--no-progress", *extra]


def ray_batch(listing: Path, out: Path, address: str) -> list[str]:
    return batch(listing, out, "--engine", "ray", "--address", address, "--actors", "2",
                 "--block-size", str(BLOCK))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_complete(out: Path, files: list[str]) -> list[dict]:
    """Every file once, in input order, and the blocks folder gone (its records are in the output)."""
    records = read_jsonl(out)
    assert [r["source"] for r in records] == files
    assert not out.with_name(out.name + ".blocks").exists()
    return records


def wait_for_blocks(out: Path, process: subprocess.Popen, count: int) -> None:
    blocks = out.with_name(out.name + ".blocks")
    deadline = time.monotonic() + 300
    while len(list(blocks.glob("block-*.jsonl"))) < count:
        assert process.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.2)


def actor_pids() -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"BlockCaptioner" in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.fixture(scope="module")
def local_records(inputs, tmp_path_factory) -> list[dict]:
    listing, _ = inputs
    out = tmp_path_factory.mktemp("local") / "captions.jsonl"
    subprocess.run(batch(listing, out), cwd=REPO, capture_output=True, timeout=600)
    return read_jsonl(out)


def test_the_ray_engine_writes_what_the_local_engine_writes(cluster, inputs, local_records, tmp_path):
    listing, files = inputs
    out = tmp_path / "captions.jsonl"
    result = subprocess.run(ray_batch(listing, out, cluster), cwd=REPO, env=RAY_ENV, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 1, result.stderr  # 1: some files could not be read, as locally
    assert "200 captioned" in result.stderr and "4 could not be read" in result.stderr
    records = assert_complete(out, files)
    assert len(local_records) == len(records)
    for ours, local in zip(records, local_records):
        assert ours.keys() == local.keys() and ours["source"] == local["source"]
        if "error" in local:
            assert (ours["error"], ours["error_kind"]) == (local["error"], local["error_kind"])
            continue
        # Same captions and beams; a score may differ in its last rounded digit, as float sums depend on
        # how the images were batched and on the thread count.
        assert ours["caption"] == local["caption"]
        assert [b["text"] for b in ours["beams"]] == [b["text"] for b in local["beams"]]
        assert ours["score"] == pytest.approx(local["score"], abs=2e-4)

    # As with the local engine, a file whose line is deleted from the output is captioned again.
    retried = [next(r for r in records if "error" in r), records[5]]
    out.write_text("".join(json.dumps(r) + "\n" for r in records if r not in retried))
    again = subprocess.run(ray_batch(listing, out, cluster), cwd=REPO, env=RAY_ENV, capture_output=True,
                           text=True, timeout=600)
    assert "1 captioned" in again.stderr and "1 could not be read" in again.stderr, again.stderr
    assert f"{len(files) - 2} already in" in again.stderr
    rerun = read_jsonl(out)
    assert rerun[:-2] == [r for r in records if r not in retried]
    assert [r["source"] for r in rerun[-2:]] == sorted((r["source"] for r in retried), key=files.index)
    assert [r.get("caption") for r in rerun[-2:]] == [r.get("caption") for r in
                                                      sorted(retried, key=lambda r: files.index(r["source"]))]


def test_a_killed_actor_is_replaced_and_its_block_redone_once(cluster, inputs, tmp_path):
    listing, files = inputs
    out = tmp_path / "captions.jsonl"
    before = set(actor_pids())  # actors of an earlier run may still be shutting down
    process = subprocess.Popen(ray_batch(listing, out, cluster), cwd=REPO, env=RAY_ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_blocks(out, process, 2)
    pids = sorted(set(actor_pids()) - before)
    assert pids, "no captioning actor process found"
    os.kill(pids[0], signal.SIGKILL)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 1, stderr
    assert_complete(out, files)


def test_a_killed_driver_loses_nothing_and_the_rerun_finishes(cluster, inputs, local_records, tmp_path):
    listing, files = inputs
    out = tmp_path / "captions.jsonl"
    process = subprocess.Popen(ray_batch(listing, out, cluster), cwd=REPO, env=RAY_ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_blocks(out, process, 2)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert not out.exists()  # the merged output is written only when every block is done
    finished = len(list(out.with_name(out.name + ".blocks").glob("block-*.jsonl")))

    result = subprocess.run(ray_batch(listing, out, cluster), cwd=REPO, env=RAY_ENV, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 1, result.stderr
    assert f"already in {out}" in result.stderr and "\n0 already" not in result.stderr
    assert finished >= 2
    records = assert_complete(out, files)
    assert [r.get("caption") for r in records] == [r.get("caption") for r in local_records]


def test_ray_failures_are_the_local_engines_messages_and_exit_statuses(cluster, inputs, tmp_path):
    listing, _ = inputs
    model = tmp_path / "model"
    shutil.copytree(REPO / "models" / MODEL, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    messages = []
    for engine in ("local", "ray"):
        command = [*batch(listing, tmp_path / f"{engine}.jsonl", "--engine", engine)]
        command[command.index("--model") + 1] = str(model)
        result = subprocess.run(command, cwd=REPO, env=RAY_ENV, capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, result.stderr[-2000:]
        messages.append([line for line in result.stderr.splitlines() if line.startswith("ERROR")])
    assert messages[0] == messages[1] and "may be truncated" in messages[0][0]

    nowhere = subprocess.run(batch(listing, tmp_path / "a.jsonl", "--engine", "ray", "--address",
                                   f"127.0.0.1:{free_port()}"),
                             cwd=REPO, env=RAY_ENV, capture_output=True, text=True, timeout=120)
    assert nowhere.returncode == 2 and "no Ray cluster answers at 127.0.0.1:" in nowhere.stderr

    no_gpu = subprocess.run(batch(listing, tmp_path / "b.jsonl", "--engine", "ray", "--address", cluster,
                                  "--gpus-per-actor", "1", "--startup-timeout", "3"),
                            cwd=REPO, env=RAY_ENV, capture_output=True, text=True, timeout=300)
    assert no_gpu.returncode == 2, no_gpu.stderr[-2000:]
    assert "did not start within 3 s: each asks for 1 CPU and 1 GPU, and the cluster has 2 CPU and 0 GPU" \
        in no_gpu.stderr
    assert "Traceback" not in no_gpu.stderr and not (tmp_path / "b.jsonl").exists()


def test_listings_name_their_files_in_a_path_column(tmp_path):
    rows = [{"path": "a.jpg", "label": "x"}, {"path": "b/c.png", "label": "y"}]
    with open(tmp_path / "files.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["label", "path"])
        writer.writeheader()
        writer.writerows(rows)
    assert read_file_list(tmp_path / "files.csv") == ["a.jpg", "b/c.png"]

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"path": ["a.jpg", None, "b/c.png"], "size": [1, 2, 3]}),
                   tmp_path / "files.parquet")
    assert read_file_list(tmp_path / "files.parquet") == ["a.jpg", "b/c.png"]
    pq.write_table(pa.table({"file": ["a.jpg"]}), tmp_path / "other.parquet")
    with pytest.raises(InputError, match="needs a 'path' column.*'file'"):
        read_file_list(tmp_path / "other.parquet")


def test_without_ray_the_engine_says_how_to_install_it(monkeypatch):
    from caption.serving.ray_batch import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install 'caption\[ray\]'"):
        import_ray()
