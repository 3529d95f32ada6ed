"""The server's HTTP API beside the page (``caption/serving/http_api.py``), on a real server on 127.0.0.1:
the token, health, readiness and metrics; and under disk pressure, accepted work is never dropped (new
uploads are refused with 503 and Retry-After, and succeed when retried). Every case of the adversarial
corpus through ``/v1/caption``, together with gradio_client users, is in ``test_adversarial.py``."""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import CHROMIUM_FLAGS, chromium_or_skip, jpeg_bytes, require, running_demo

pytest.importorskip("gradio", reason="the server needs its extra: pip install -e '.[demo]'")
httpx = pytest.importorskip("httpx", reason="the HTTP API tests need httpx: pip install -e '.[dev]'")

from caption.api import Captioner  # noqa: E402
from caption.errors import ErrorKind  # noqa: E402
from caption.serving.http_api import DAMAGED_STATUS, ERROR_STATUS, status_of  # noqa: E402

TOKEN = "correct-horse-battery"


@pytest.fixture(scope="module")
def photo(flickr_dir) -> Path:
    return sorted(require(flickr_dir / "photos_fullres").glob("*.jpg"))[0]


def metric(text: str, name: str, **labels: str) -> float:
    """One sample's value from a Prometheus text exposition (0 when the series is not there yet)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        series, _, label_text = sample.partition("{")
        if series == name and ",".join(sorted(label_text.rstrip("}").split(","))) == wanted:
            return float(value)
    return 0.0


def test_every_error_kind_has_the_status_its_table_gives():
    for kind in ErrorKind:
        status = status_of({"error": "x", "error_kind": kind.value})
        assert status == ERROR_STATUS.get(kind, DAMAGED_STATUS)
        assert 400 <= status < 600
    assert status_of({"caption": "a dog"}) == 200


def test_a_full_queue_refuses_new_requests_with_when_to_retry_and_is_not_ready():
    from caption.errors import ServerBusy
    from caption.serving.service import CaptionService, Limits

    service = CaptionService(Captioner.load(), Limits(queue_size=2))
    with service.counted("http"):
        service.admit("http")  # one in flight: room for another
        assert service.readiness()[0]
        with service.counted("http"), pytest.raises(ServerBusy, match=r"2 requests are in flight") as full:
            service.admit("http")
        assert full.value.retry_after >= 1
        with service.counted("http"):
            ready, state = service.readiness()
            assert not ready and state["in_flight"]["http"] == 2 and state["queue_size"] == 2
        service.admit("gradio")  # each surface has its own queue


def test_a_server_reachable_beyond_this_machine_says_what_it_leaves_open():
    from caption.serving.server import exposure_warning

    assert exposure_warning("127.0.0.1", None, False, share=False) is None
    assert "without --api-token" in exposure_warning("0.0.0.0", None, False, share=False)
    assert "the page and its Gradio API" in exposure_warning("0.0.0.0", TOKEN, False, share=False)
    assert exposure_warning("0.0.0.0", TOKEN, True, share=False) is None
    assert "gradio.live" in exposure_warning("127.0.0.1", None, False, share=True)


@pytest.mark.slow
def test_the_token_guards_the_api_and_the_page_while_health_and_metrics_answer(photo, tmp_path):
    from gradio_client import Client, handle_file

    expected = Captioner.load().caption(str(photo), beam_size=3, max_length=20)
    log = tmp_path / "server.log"
    with running_demo(log, "--protect-page", env={"CAPTION_API_TOKEN": TOKEN}) as (url, _), \
            httpx.Client(base_url=url, timeout=120) as web:
        def caption(**headers: str) -> httpx.Response:
            return web.post("/v1/caption", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")},
                            data={"beam_size": "3", "max_length": "20"}, headers=headers)

        before = web.get("/metrics").text
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            refused = caption(**headers)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
            assert refused.json()["error_kind"] == "unauthorized"
        answer = caption(Authorization=f"Bearer {TOKEN}")
        assert answer.status_code == 200
        assert answer.json()["caption"] == expected.text and answer.json()["source"] == photo.name
        bad = web.post("/v1/caption", files={"file": ("notes.jpg", b"not a photo")},
                       headers={"Authorization": f"Bearer {TOKEN}"})
        assert bad.status_code == 415 and bad.json() == {
            "error": "notes.jpg: not an image file: it is a text file", "error_kind": "not-media"}

        assert web.get("/healthz").json() == {"status": "ok"}
        ready = web.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        after = web.get("/metrics")
        assert after.headers["content-type"].startswith("text/plain")
        for labels, more in (({"outcome": "ok", "error_kind": ""}, 1),
                             ({"outcome": "error", "error_kind": "not-media"}, 1),
                             ({"outcome": "error", "error_kind": "unauthorized"}, 3)):
            name, series = "caption_requests_total", {"surface": "http", **labels}
            assert metric(after.text, name, **series) - metric(before, name, **series) == more, labels
        assert metric(after.text, "caption_request_seconds_count", surface="http") >= 2
        assert metric(after.text, "caption_batch_size_count") == 1  # the bad file never reached a batch
        assert metric(after.text, "caption_upload_budget_bytes") == 1024 * 2**20

        docs = web.get("/openapi.json").json()["paths"]["/v1/caption"]["post"]
        assert "multipart/form-data" in docs["requestBody"]["content"]
        assert {"200", "400", "401", "413", "415", "422", "503"} <= set(docs["responses"])
        assert web.get("/docs").status_code == 200

        # --protect-page: the page and Gradio's API ask for the token too, on Gradio's login (any user name)
        with pytest.raises(Exception, match="credentials were not provided"):
            Client(url, verbose=False)
        client = Client(url, verbose=False, auth=("anyone", TOKEN))
        assert client.predict(handle_file(str(photo)), 3, 20, api_name="/caption")["caption"] == expected.text


def folder_bytes(folder: Path) -> int:
    total = 0
    for root, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(FileNotFoundError):  # deleted while walking
                total += os.lstat(os.path.join(root, name)).st_size
    return total


@pytest.mark.slow
def test_under_disk_pressure_no_accepted_request_fails_and_refused_ones_succeed_when_retried(photo, tmp_path):
    """The issue's case, on both surfaces at once: a 20 MB budget, a burst of 4.4 MB photos (12 good and 3
    with a bad beam size, each through gradio_client and through the HTTP API). Before, the janitor deleted
    queued requests' uploads to keep within budget and 4 of 12 good ones failed as 'no longer on the
    server'. Now an upload that does not fit is refused (503, Retry-After), and a client that retries gets its
    caption; the uploads never take more than the budget."""
    from gradio_client import Client, handle_file

    big = Image.open(photo).convert("RGB").resize((2600, 1950), Image.Resampling.BICUBIC)
    data = jpeg_bytes(big, quality=100, subsampling=0)
    assert 3.5 * 2**20 < len(data) < 5 * 2**20, len(data)
    folder = tmp_path / "inputs"
    folder.mkdir()
    requests = []  # (surface, path, beam size)
    for surface in ("gradio", "http"):
        for user in range(15):
            path = folder / f"{surface}-{user}.jpg"
            path.write_bytes(data + f"{surface} {user}".encode())  # new bytes each, the same pixels
            requests.append((surface, str(path), 1000 if user >= 12 else 3))
    expected = Captioner.load().caption(requests[0][1], beam_size=3, max_length=20).text

    uploads, budget_mb = tmp_path / "gradio", 20
    with running_demo(tmp_path / "server.log", "--keep-uploads", "5", "--uploads-budget-mb", str(budget_mb),
                      "--max-file-mb", "5", env={"GRADIO_TEMP_DIR": str(uploads)}) as (url, process):
        baseline = folder_bytes(uploads)  # the example photos Gradio copies in
        most, done = [0], threading.Event()

        def watch() -> None:
            while not done.wait(0.05):
                most[0] = max(most[0], folder_bytes(uploads) - baseline)

        refusals: list[str] = []

        def ask(request: tuple[str, str, int]) -> dict:
            surface, path, beam = request
            for _ in range(120):  # what a client does with a 503: wait Retry-After, try again
                if surface == "http":
                    with open(path, "rb") as file:
                        response = httpx.post(f"{url}v1/caption", files={"file": (Path(path).name, file)},
                                              data={"beam_size": str(beam), "max_length": "20"}, timeout=120)
                    if response.status_code != 503:
                        return response.json()
                else:
                    try:
                        client = Client(url, verbose=False, httpx_kwargs={"timeout": 120})
                        return client.predict(handle_file(path), beam, 20, api_name="/caption")
                    except httpx.HTTPStatusError as err:  # the upload itself was refused
                        response = err.response
                        if response.status_code != 503:
                            raise
                assert "the server is busy" in response.text
                refusals.append(surface)
                time.sleep(int(response.headers["retry-after"]))
            raise AssertionError(f"{path} was refused 120 times")

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        with ThreadPoolExecutor(len(requests)) as pool:
            answers = list(pool.map(ask, requests))
        done.set()
        watcher.join()
        metrics = httpx.get(f"{url}metrics").text
        assert process.poll() is None
    for (surface, path, beam), answer in zip(requests, answers):
        if beam == 3:
            assert answer.get("caption") == expected, (surface, path, answer)  # 0 accepted good ones failed
        else:
            assert answer["error_kind"] == "parameter", answer
    assert {"gradio", "http"} <= set(refusals), refusals  # the burst did not fit: both surfaces were refused
    assert most[0] <= budget_mb * 2**20, f"uploads took {most[0] / 2**20:.1f} MB"
    refused = sum(metric(metrics, "caption_requests_total", surface=surface, outcome="refused",
                         error_kind="busy") for surface in ("gradio", "http"))
    assert refused == len(refusals)
    assert not re.search("no longer on the server", (tmp_path / "server.log").read_text())


@pytest.mark.slow
def test_the_page_says_the_server_is_busy_when_an_upload_does_not_fit(photo, tmp_path):
    """Uploads no request has used yet (their requests may be queued) fill the 1 MB budget: a page user's
    upload is refused, and the page shows why and when to try again, instead of a later request failing."""
    chromium = chromium_or_skip()
    from playwright.sync_api import expect, sync_playwright

    with running_demo(tmp_path / "server.log", "--uploads-budget-mb", "1", "--max-file-mb", "1",
                      env={"GRADIO_TEMP_DIR": str(tmp_path / "gradio")}) as (url, _):
        for hold in range(2):  # upload-only clients: 2 x 470 KB of the 1,024 KB
            held = httpx.post(f"{url}gradio_api/upload",
                              files={"files": (f"hold{hold}.bin", os.urandom(470_000))})
            assert held.status_code == 200
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
            try:
                page = browser.new_page()
                page.goto(url)
                page.locator("#upload input[type=file]").set_input_files(str(photo))  # 195 KB: does not fit
                toast = page.get_by_text("HTTP 503: the server is busy")
                expect(toast).to_be_visible(timeout=30_000)
                assert re.search(r"try again in \d+ s", toast.inner_text())
                expect(page.locator("#caption textarea")).to_have_value("")
            finally:
                browser.close()
        metrics = httpx.get(f"{url}metrics").text
        assert metric(metrics, "caption_requests_total", surface="gradio", outcome="refused",
                      error_kind="busy") == 1
