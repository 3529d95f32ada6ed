"""The web demo: the batched caption service on awkward and bad files, then the real server through
gradio_client (16 requests at once) and through a real browser (Debian chromium driven by playwright)."""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import (
    CHROMIUM_FLAGS,
    DATA,
    REPO,
    batch_sizes,
    chromium_or_skip,
    problem_files,
    require,
    running_demo,
)

pytest.importorskip("gradio", reason="the web demo needs gradio: pip install -e '.[demo]'")

from caption.api import Captioner  # noqa: E402
from caption.serving.service import CaptionService, Limits  # noqa: E402
from caption.serving.web import build_app, render  # noqa: E402

ARTIFACTS = Path(os.environ.get("CAPTION_TEST_ARTIFACTS", REPO / "test-artifacts"))


@pytest.fixture(scope="module")
def photos(flickr_dir) -> list[str]:
    return [str(p) for p in sorted(require(flickr_dir / "photos_fullres").glob("*.jpg"))]


@pytest.fixture(scope="module")
def captioner() -> Captioner:
    return Captioner.load()


def caption_at_once(service: CaptionService, requests: list[tuple]) -> list[dict]:
    """Every request in its own thread at the same moment, as concurrent users of the demo."""
    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(lambda request: service.caption(*request), requests))


def test_the_service_captions_awkward_files_upright_and_explains_bad_ones(captioner, photos, tmp_path):
    service = CaptionService(captioner, Limits(max_file_mb=1.0, max_pixels=20_000_000))
    good, bad = problem_files(tmp_path, photos[0])
    huge = tmp_path / "huge.png"
    Image.new("RGB", (5000, 5000)).save(huge)  # 25 MP, a few KB: over the pixel limit
    big = tmp_path / "big.bmp"
    Image.new("RGB", (800, 600)).save(big)  # 1.4 MB: over the upload limit
    paths = [photos[0], *map(str, good.values()), *map(str, bad.values()), str(huge), str(big), None]
    results = caption_at_once(service, [(path, 3, 20) for path in paths])

    reference = captioner.caption(photos[0], beam_size=3, max_length=20)
    assert (results[0]["caption"] == reference.text
            and results[0]["score"] == pytest.approx(reference.score, abs=1e-3))
    assert (len(results[0]["beams"]) == 3
            and np.array(results[0]["attention"]).shape == (len(results[0]["words"]),
                                                            np.prod(results[0]["grid"])))
    for name, result in zip([*good, *bad, "huge.png", "big.bmp"], results[1:-1]):
        if name in good:
            assert result.get("caption"), f"{name}: {result}"
        else:
            assert result["error"].startswith(name + ": "), result  # names the file as uploaded
    errors = [r["error"] for r in results[1 + len(good) : -1]]
    assert ["not an image" in errors[0], "truncated" in errors[1], "empty" in errors[2]] == [True] * 3
    assert "over the limit of 20,000,000" in errors[3] and "over the 1 MB limit" in errors[4]
    assert results[-1] == {}  # a cleared upload: nothing to show, nothing to complain about

    status, caption, image, beams, heatmaps, frames = render(service, str(good["rotated.jpg"]),
                                                             results[1 + 4])
    assert (status == "" and caption and len(heatmaps) == len(caption.split()) and len(beams) == 3
            and frames == [])
    upright = np.asarray(Image.open(photos[0]).convert("RGB").resize(image.size), dtype=float)
    assert np.abs(np.asarray(image, dtype=float) - upright).mean() < 20  # shown the right way up
    status, *_ = render(service, str(bad["truncated.jpg"]), results[1 + len(good) + 1])
    assert status.startswith("**Could not caption this file.**") and "truncated.jpg" in status


def test_a_failing_forward_pass_fails_its_requests_with_a_reason_and_the_next_one_works(captioner, photos,
                                                                                      monkeypatch):
    service = CaptionService(captioner)
    with monkeypatch.context() as patch:
        patch.setattr(captioner, "caption",
                      lambda *a, **k: (_ for _ in ()).throw(RuntimeError("out of memory")))
        failed = caption_at_once(service, [(photos[0], 3, 20), (photos[1], 3, 20)])
    assert all("could not caption this file now (out of memory)" in r["error"] for r in failed), failed
    assert {r["error_kind"] for r in failed} == {"server"}
    assert service.caption(photos[0], 3, 20)["caption"]


def test_every_decoding_setting_reaches_the_page_and_its_api_and_requests_are_grouped_by_them(captioner,
                                                                                               photos):
    """The /caption endpoint takes each public decoding setting, by position or by name (length penalty
    too); requests of one batch with different settings are captioned each with its own."""
    service = CaptionService(captioner)
    app = build_app(service)
    parameters = app.get_api_info()["named_endpoints"]["/caption"]["parameters"]
    names = [p["parameter_name"] for p in parameters]
    assert names == ["upload", "beam_size", "max_length", "length_penalty"]
    assert [p["parameter_default"] for p in parameters[1:]] == [service.defaults.beam_size,
                                                                 min(service.defaults.max_length, 40),
                                                                 service.defaults.length_penalty]
    requests = [(photos[0], 3, 20, 0.0), (photos[0], 3, 20, 2.0), (photos[1], 1, 20)]
    answers = caption_at_once(service, requests)
    for (photo, beam, length, *penalty), answer in zip(requests, answers):
        expected = captioner.caption(photo, beam_size=beam, max_length=length,
                                     length_penalty=penalty[0] if penalty else None)
        assert answer["caption"] == expected.text and answer["source"] == Path(photo).name
    refused = service.caption(photos[0], length_penalty=-1)
    assert refused["error"].startswith("length penalty -1 is not allowed")


def test_a_batch_that_fails_is_served_again_request_by_request():
    from caption.serving.batcher import MicroBatcher

    release, batches = threading.Event(), []

    def run(requests: list[str]) -> list[str]:
        batches.append(list(requests))
        if requests == ["first"]:
            release.wait(10)  # the worker is busy: the next requests gather into one batch meanwhile
        if "poison" in requests:
            raise RuntimeError("this request breaks any batch it is in")
        return [request.upper() for request in requests]

    batcher = MicroBatcher(run, max_batch_size=8)
    with ThreadPoolExecutor(6) as pool:
        first = pool.submit(batcher, "first")
        while not batches:
            time.sleep(0.01)
        others = [pool.submit(batcher, name) for name in ("a", "b", "poison", "c")]
        time.sleep(0.2)
        release.set()
        assert first.result(10) == "FIRST"
        assert [job.result(10) for job in others if job is not others[2]] == ["A", "B", "C"]
        with pytest.raises(RuntimeError, match="breaks any batch"):
            others[2].result(10)
    assert batches[1] == ["a", "b", "poison", "c"]  # they were batched, then served one by one
    assert batches[2:] == [["a"], ["b"], ["poison"], ["c"]]


def test_example_photos_fall_back_to_the_small_ones_in_the_repo(monkeypatch, tmp_path):
    monkeypatch.setenv("CAPTION_DATA", str(tmp_path))  # no shared data here
    spec = importlib.util.spec_from_file_location("demo_app", REPO / "demo" / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    assert [Path(p).name for p in app.example_photos()] == ["astronaut.jpg", "cat.jpg", "coffee.jpg"]


def test_example_photos_include_everyday_coco_photos(flickr_dir):
    require(DATA / "coco" / "val2017")
    spec = importlib.util.spec_from_file_location("demo_app", REPO / "demo" / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    examples = [Path(p) for p in app.example_photos()]
    assert [p.name for p in examples[:6]] == list(app.COCO_EXAMPLES)  # the first ones a user sees
    assert (any(p.parent.name == "photos_fullres" for p in examples)
            and any(p.suffix == ".avi" for p in examples))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``demo/app.py`` on the shipped model, as ``make demo`` starts it; yields (url, log file)."""
    log = tmp_path_factory.mktemp("demo") / "server.log"
    with running_demo(log) as (url, _):
        yield url, log


@pytest.mark.slow
def test_client_gets_json_and_16_simultaneous_requests_are_all_answered(server, captioner, photos):
    from gradio_client import Client, handle_file

    url, log = server
    client = Client(url, verbose=False)
    assert "/caption" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    requests = [photos[i % len(photos)] for i in range(16)]
    expected = {p: captioner.caption(p, beam_size=3, max_length=20).text for p in set(requests)}
    clients = [Client(url, verbose=False) for _ in requests]  # 16 users, connected before any of them asks
    with ThreadPoolExecutor(16) as pool:
        jobs = [pool.submit(lambda c=c, p=p: c.predict(handle_file(p), 3, 20, api_name="/caption"))
                for c, p in zip(clients, requests)]
        answers = [job.result(timeout=300) for job in jobs]
    for photo, answer in zip(requests, answers):
        assert answer["caption"] == expected[photo], photo
        assert answer["beams"][0] == {"text": answer["caption"], "score": answer["score"]}
    batches = batch_sizes(log)
    assert max(batches) > 1, f"concurrent requests were not batched: {batches}"

    bad = client.predict(handle_file(str(REPO / "README.md")), 3, 20, api_name="/caption")
    assert bad == {"error": "README.md: not an image file: it is a text file", "error_kind": "not-media"}
    again = client.predict(handle_file(photos[0]), 1, 20, api_name="/caption")  # still serving
    assert again["caption"] and len(again["beams"]) == 1


@pytest.mark.slow
def test_in_a_real_browser_a_photo_gets_its_caption_and_heatmaps_and_a_corrupt_file_an_error(
    server, photos, tmp_path
):
    chromium = chromium_or_skip()
    from playwright.sync_api import expect, sync_playwright

    url, _ = server
    truncated = tmp_path / "broken.jpg"
    data = Path(photos[1]).read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(url)
            page.locator("#upload input[type=file]").set_input_files(photos[0])
            caption = page.locator("#caption textarea")
            expect(caption).not_to_have_value("", timeout=120_000)
            words = caption.input_value().split()
            assert len(words) >= 3
            heatmaps = page.locator("#attention img")
            expect(heatmaps).to_have_count(len(words), timeout=30_000)  # one heatmap per word
            page.wait_for_function("[...document.querySelectorAll('#attention img')]"
                                   ".every(i => i.naturalWidth > 0)")
            expect(page.locator("#preview img")).to_be_visible()
            expect(page.locator("#beams")).to_contain_text(words[-1])
            page.screenshot(path=str(ARTIFACTS / "demo-caption.png"), full_page=True)

            page.locator("#upload button[aria-label=Clear]").click()
            page.locator("#upload input[type=file]").set_input_files(str(truncated))
            expect(page.locator("#status")).to_contain_text("Could not caption this file", timeout=60_000)
            expect(page.locator("#status")).to_contain_text("broken.jpg")
            expect(page.locator("#status")).to_contain_text("truncated")
            assert "Traceback" not in page.content()
            expect(caption).to_have_value("")
            page.screenshot(path=str(ARTIFACTS / "demo-error.png"), full_page=True)

            clip = sorted((DATA / "msvd" / "videos").glob("*.avi"))
            if clip:  # a video: its caption, its 8 sampled frames, and a frame per word
                page.locator("#upload button[aria-label=Clear]").click()
                page.locator("#upload input[type=file]").set_input_files(str(clip[-1]))
                expect(caption).not_to_have_value("", timeout=120_000)
                expect(page.locator("#frames img")).to_have_count(8, timeout=30_000)
                expect(page.locator("#attention")).to_contain_text("frame")
                page.screenshot(path=str(ARTIFACTS / "demo-video.png"), full_page=True)
        finally:
            browser.close()
    assert (ARTIFACTS / "demo-caption.png").stat().st_size > 10_000



@pytest.mark.slow
def test_the_service_keeps_nothing_from_one_round_of_users_to_the_next(captioner, photos, tmp_path):
    """What a request holds (its image, result, batcher future) is let go when it is answered: no such object
    outlives its round, and traced Python memory (numpy arrays included) is flat. Resident memory is too
    coarse for this: the model's heaps move with the shapes of the batches it sees."""
    import gc
    import tracemalloc
    import warnings
    from concurrent.futures import Future

    from caption.api import CaptionResult
    from caption.serving.service import Job

    service = CaptionService(captioner)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(Path(photos[0]).read_bytes()[:5000])
    requests = ([(photos[i % len(photos)], 3, 20) for i in range(8)]
                + [(str(truncated), 3, 20), (photos[0], 0, 20)])
    caption_at_once(service, requests)  # warm-up: lazy imports, caches

    def alive() -> dict[str, int]:
        gc.collect()
        kinds = (Job, Image.Image, CaptionResult, Future)
        with warnings.catch_warnings():  # isinstance() on every object wakes deprecated torch names
            warnings.simplefilter("ignore", FutureWarning)
            return {kind.__name__: sum(isinstance(o, kind) for o in gc.get_objects()) for kind in kinds}

    before = alive()
    tracemalloc.start()
    try:
        sizes = []
        for _ in range(4):
            answers = caption_at_once(service, requests)
            assert [("caption" in a) for a in answers] == [True] * 8 + [False, False]
            del answers
            sizes.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    assert alive() == before
    assert max(sizes) - sizes[0] < 2 * 2**20, [f"{s / 2**20:.2f} MB" for s in sizes]


def test_an_upload_the_janitor_deleted_asks_to_be_uploaded_again(captioner, photos, tmp_path):
    from caption.serving.uploads import UploadJanitor

    service = CaptionService(captioner, Limits(keep_uploads_seconds=60))
    upload = tmp_path / "gradio" / "0123abcd" / "photo.jpg"
    upload.parent.mkdir(parents=True)
    upload.write_bytes(Path(photos[0]).read_bytes())
    uploads = {str(upload)}
    service.janitor = UploadJanitor(uploads, keep_seconds=60, max_bytes=2**30, sweep_every=3600)
    try:
        assert service.caption(str(upload), 3, 20)["caption"]  # the page's first request
        assert upload.exists()  # kept for another beam size
        service.janitor.keep_seconds = 0  # as if 60 s had passed
        service.janitor.sweep()
        assert not upload.exists() and not upload.parent.exists() and uploads == set()
        again = service.caption(str(upload), 5, 20)  # the user tries another beam size much later
        assert again == {"error": "photo.jpg: no longer on the server (it was not used for 0 s): upload it "
                                  "again", "error_kind": "missing"}
    finally:
        service.janitor.close()


def test_the_budget_refuses_new_uploads_and_never_deletes_one_a_request_needs(tmp_path):
    """Over budget, an upload in use or not yet used (its request may be queued) stays; new uploads are
    refused until answered requests' uploads make room, and those go first, least recently used first."""
    from caption.errors import ServerBusy
    from caption.serving.uploads import UploadJanitor

    def upload(name: str, kb: int) -> str:
        path = tmp_path / name / f"{name}.jpg"
        path.parent.mkdir()
        path.write_bytes(b"x" * kb * 1024)
        return str(path)

    used, queued = upload("used", 600), upload("queued", 600)
    uploads = {used, queued}
    janitor = UploadJanitor(uploads, keep_seconds=3600, max_bytes=1000 * 1024, sweep_every=3600,
                            retry_after=lambda: 7)
    try:
        with janitor.using(used):
            janitor.sweep()
            assert uploads == {used, queued}  # over budget (1,200 KB), but one is in use, the other queued
            with pytest.raises(ServerBusy, match="try again in 7 s") as refused, janitor.reserve(100 * 1024):
                pass
            assert refused.value.retry_after == 7
        assert uploads == {queued}  # answered: its upload goes first, and that is enough
        assert janitor.why_gone(used) == "its request was answered and newer uploads needed the space"
        answered = upload("answered", 300)
        uploads.add(answered)
        with janitor.using(answered):
            pass  # answered, and kept for another beam size: 900 KB held
        with pytest.raises(ServerBusy), janitor.reserve(500 * 1024):  # would not fit even without it
            pass
        assert answered in uploads  # so it was not deleted in vain
        with janitor.reserve(300 * 1024):  # fits once it goes
            assert answered not in uploads and janitor.held_bytes == 900 * 1024
            with pytest.raises(ServerBusy), janitor.reserve(200 * 1024):
                pass
        assert janitor.held_bytes == 600 * 1024
        more = upload("more", 500)  # arrived all the same (a sweep races an upload): 1,100 KB
        uploads.add(more)
        janitor.sweep()
        assert uploads == {queued, more}  # neither was used yet: both stay, over budget or not
        janitor.unclaimed_seconds = 0  # as if their requests never came
        janitor.sweep()
        assert uploads == set() and janitor.why_gone(queued) == "it was not used for 0 s"
    finally:
        janitor.close()
