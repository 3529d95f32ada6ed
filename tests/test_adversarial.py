"""Bad and awkward input, as a hostile or careless user sends it, through all three surfaces:
``caption predict``, ``caption batch`` and the demo's ``/caption`` API. The corpus is made at test time from
a real photo and a real clip (nothing binary is committed). Each case has one expected outcome, a caption or
an error of one kind (``caption.errors.ErrorKind``) whose message names the file and the cause, and every
surface it can reach is checked in one call with all the others, so every good input in the same call must
still get its caption.
"same as X" means the very caption of X: a lossless copy in another pixel format must not change it.

| case | what it is | predict and batch | demo API |
|---|---|---|---|
| photo.jpg | a real full-size photo | caption | caption |
| rgb8.png | the photo as an 8-bit PNG | caption | caption |
| rgb16.png | 16-bit RGB PNG | same as rgb8.png | same |
| rgb16.tif | 16-bit RGB TIFF | same as rgb8.png | same |
| jpeg_named.png | a JPEG named .png | same as photo.jpg | same |
| png_named.jpg | a PNG named .jpg | same as rgb8.png | same |
| grey.png | 8-bit grey (L) | caption | caption |
| grey16.png | 16-bit grey PNG (I;16) | same as grey.png | same |
| grey16.tif | 16-bit grey TIFF | same as grey.png | same |
| grey32.tif | 32-bit integer TIFF (I) | same as grey.png | same |
| float.tif | 32-bit float TIFF (F), 0..1 | same as grey.png | same |
| grey_alpha.png | grey + opaque alpha (LA) | same as grey.png | same |
| alpha.png | half-transparent RGBA | caption | caption |
| palette_transparent.png | palette with a transparent index (P) | caption | caption |
| bilevel.png | black and white (1) | caption | caption |
| cmyk.jpg | CMYK JPEG | caption | caption |
| lab.tif | CIELAB TIFF | caption | caption |
| rotated.jpg | EXIF orientation 6 | caption | caption |
| bad_exif.jpg | a damaged EXIF block | caption | caption |
| tiny.png | 1 x 1 pixel | caption | caption |
| panorama.png | 2000 x 16 pixels | caption | caption |
| animated.gif | two frames (the first is captioned) | caption | caption |
| big.bmp | 3 MB, over the demo's 2 MB upload limit | caption | refused at upload (HTTP 413) |
| clip.avi | a real MSVD clip | caption | caption |
| clip.mp4 | a synthetic mp4 | caption | caption |
| empty.jpg | 0 bytes | empty | empty |
| notes.jpg | text named .jpg | not-media | not-media |
| document.png | a PDF named .png | not-media | not-media |
| truncated.jpg | a JPEG cut in half | corrupt | corrupt |
| truncated.png | a PNG cut in half | corrupt | corrupt |
| bomb.png | 144 megapixels in a few KB | too-large | too-large |
| nan.tif | float pixels with NaN | unsupported | unsupported |
| negative.tif | float pixels from -1 to 2 | unsupported | unsupported |
| jpeg_named.mp4 | a JPEG named .mp4 | wrong-type | wrong-type |
| clip_named.jpg | an AVI named .jpg | wrong-type | wrong-type |
| notes.mp4 | text named .mp4 | not-media | not-media |
| empty.avi | 0 bytes | empty | empty |
| truncated.avi | the clip cut in half | corrupt | corrupt |
| folder.jpg | a folder | not-a-file | (cannot be uploaded) |
| missing.jpg | no such file (in a file list) | missing | (cannot be uploaded) |
| broken_link.jpg | a link to nothing | broken-link | (cannot be uploaded) |
| loop.jpg | links pointing at each other | link-loop | (cannot be uploaded) |
| unreadable.jpg | mode 000 (as root: the OS's EACCES for it) | permission | (cannot be uploaded) |

The demo's requests go through both of its APIs at once, Gradio's (gradio_client) and the HTTP API
(``/v1/caption``, which answers an error with the status of its kind: 400 parameter, 413 too-large, 415
not-media, wrong-type and unsupported, 422 corrupt and empty).
Demo request parameters, each sent with a good photo in the same batch as the files above: beam size 1000,
"abc", 0, 2.5, [3], maximum length 0 and 1000 get a ``parameter`` error naming the setting; none (the
defaults), "3" and 3.0 get a caption. A cleared upload gets ``{}``. The load test (``test_demo_load.py``) adds
rounds of 16 good, 4 bad-parameter and 4 bad-file users.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from caption.cli import main
from tests.conftest import DATA, batch_sizes, jpeg_bytes, require, running_demo


@dataclass
class Sources:
    photo: Path  # a real full-size JPEG
    clip: Path  # a real MSVD clip

    @property
    def rgb(self) -> Image.Image:
        return Image.open(self.photo).convert("RGB")

    @property
    def grey(self) -> np.ndarray:
        return np.asarray(self.rgb.convert("L"))  # (H, W) uint8


@dataclass
class Case:
    name: str
    make: Callable[[Path, Sources], None]
    expect: str = "caption"  # "caption" or an ErrorKind value
    same_as: str | None = None  # a caption that must equal this case's
    phrase: str = ""  # words the error must contain
    demo: str | None = "same"  # the demo's outcome when it differs; None: a file that cannot be uploaded;
    # "refused": the server turns the upload away before any request is made


def _save(image_of: Callable[[Sources], Image.Image], **options) -> Callable[[Path, Sources], None]:
    return lambda path, src: image_of(src).save(path, **options)


def _cv2_write(array_of: Callable[[Sources], np.ndarray]) -> Callable[[Path, Sources], None]:
    return lambda path, src: cv2.imwrite(str(path), array_of(src))


def _bytes(data_of: Callable[[Sources], bytes]) -> Callable[[Path, Sources], None]:
    return lambda path, src: path.write_bytes(data_of(src))


def _palette_transparent(src: Sources) -> Image.Image:
    image = src.rgb.quantize(64)
    image.info["transparency"] = 0
    return image


def _bad_exif(path: Path, src: Sources) -> None:
    # An EXIF block that claims 65,535 entries and holds none: parsing it fails, the photo itself is fine.
    data = jpeg_bytes(src.rgb, exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff")
    path.write_bytes(data)


def _rotated(path: Path, src: Sources) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    path.write_bytes(jpeg_bytes(src.rgb.transpose(Image.Transpose.ROTATE_90), exif=exif, quality=95))


def _animated(path: Path, src: Sources) -> None:
    first = src.rgb
    first.save(path, save_all=True, append_images=[first.transpose(Image.Transpose.FLIP_LEFT_RIGHT)],
               duration=200)


def _float_tif(values: Callable[[Sources], np.ndarray]) -> Callable[[Path, Sources], None]:
    return lambda path, src: Image.fromarray(values(src).astype(np.float32), "F").save(path)


def _with_nan(src: Sources) -> np.ndarray:
    pixels = src.grey / 255.0
    pixels[0, :10] = np.nan
    return pixels


def _clip_mp4(path: Path, src: Sources) -> None:
    from caption.data.synthetic import write_moving_shape_video

    write_moving_shape_video(path, seconds=2.0)


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _png_bytes(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _loop(path: Path, src: Sources) -> None:
    partner = path.parent.parent / "outside" / "partner.jpg"
    partner.parent.mkdir(exist_ok=True)
    partner.symlink_to(path)
    path.symlink_to(partner)


CASES = [
    Case("photo.jpg", _bytes(lambda s: s.photo.read_bytes())),
    Case("rgb8.png", _save(lambda s: s.rgb)),
    Case("rgb16.png", _cv2_write(lambda s: np.asarray(s.rgb)[:, :, ::-1].astype(np.uint16) * 257),
         same_as="rgb8.png"),
    Case("rgb16.tif", _cv2_write(lambda s: np.asarray(s.rgb)[:, :, ::-1].astype(np.uint16) * 257),
         same_as="rgb8.png"),
    Case("jpeg_named.png", _bytes(lambda s: s.photo.read_bytes()), same_as="photo.jpg"),
    Case("png_named.jpg", _bytes(lambda s: _png_bytes(s.rgb)), same_as="rgb8.png"),
    Case("grey.png", _save(lambda s: Image.fromarray(s.grey, "L"))),
    Case("grey16.png", _save(lambda s: Image.fromarray(s.grey.astype(np.uint16) * 257)), same_as="grey.png"),
    Case("grey16.tif", _save(lambda s: Image.fromarray(s.grey.astype(np.uint16) * 257)), same_as="grey.png"),
    Case("grey32.tif",
         _save(lambda s: Image.fromarray((s.grey.astype(np.int64) * (2**31 - 1) // 255).astype(np.int32))),
         same_as="grey.png"),
    Case("float.tif", _float_tif(lambda s: s.grey / 255.0), same_as="grey.png"),
    Case("grey_alpha.png", _save(lambda s: Image.fromarray(s.grey, "L").convert("LA")), same_as="grey.png"),
    Case("alpha.png",
         _save(lambda s: Image.merge("RGBA", [*s.rgb.split(), Image.new("L", s.rgb.size, 128)]))),
    Case("palette_transparent.png", _save(_palette_transparent)),
    Case("bilevel.png", _save(lambda s: s.rgb.convert("1"))),
    Case("cmyk.jpg", _save(lambda s: s.rgb.convert("CMYK"))),
    Case("lab.tif", _save(lambda s: s.rgb.convert("LAB"))),
    Case("rotated.jpg", _rotated),
    Case("bad_exif.jpg", _bad_exif),
    Case("tiny.png", _save(lambda s: s.rgb.resize((1, 1)))),
    Case("panorama.png", _save(lambda s: s.rgb.resize((2000, 16)))),
    Case("animated.gif", _animated),
    Case("big.bmp", _save(lambda s: s.rgb.resize((1024, 1024))), demo="refused"),
    Case("clip.avi", _bytes(lambda s: s.clip.read_bytes())),
    Case("clip.mp4", _clip_mp4),
    Case("empty.jpg", _bytes(lambda s: b""), "empty", phrase="the file is empty (0 bytes)"),
    Case("notes.jpg", _bytes(lambda s: b"my holiday notes, not a photo\n"), "not-media",
         phrase="not an image file: it is a text file"),
    Case("document.png", _bytes(lambda s: b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n"), "not-media",
         phrase="PDF document"),
    Case("truncated.jpg", _bytes(lambda s: _half(s.photo.read_bytes())), "corrupt",
         phrase="corrupt or truncated"),
    Case("truncated.png", _bytes(lambda s: _half(_png_bytes(s.rgb))), "corrupt",
         phrase="corrupt or truncated"),
    Case("bomb.png", _save(lambda s: Image.new("1", (12000, 12000))), "too-large", phrase="144000000 pixels"),
    Case("nan.tif", _float_tif(_with_nan), "unsupported", phrase="NaN"),
    Case("negative.tif", _float_tif(lambda s: s.grey / 85.0 - 1.0), "unsupported", phrase="expected 0 to 1"),
    Case("jpeg_named.mp4", _bytes(lambda s: s.photo.read_bytes()), "wrong-type",
         phrase="a JPEG image named .mp4, not a video; rename it to .jpg"),
    Case("clip_named.jpg", _bytes(lambda s: s.clip.read_bytes()), "wrong-type",
         phrase="an AVI video named .jpg, not an image; rename it to .avi"),
    Case("notes.mp4", _bytes(lambda s: b"not a video\n"), "not-media",
         phrase="not a video file: it is a text file"),
    Case("empty.avi", _bytes(lambda s: b""), "empty", phrase="the file is empty (0 bytes)"),
    Case("truncated.avi", _bytes(lambda s: _half(s.clip.read_bytes())), "corrupt", phrase="truncated"),
    Case("folder.jpg", lambda path, src: path.mkdir(), "not-a-file", phrase="a folder, not a file",
         demo=None),
    Case("missing.jpg", lambda path, src: None, "missing", phrase="file not found", demo=None),
    Case("broken_link.jpg", lambda path, src: path.symlink_to(path.parent / "nowhere.jpg"), "broken-link",
         phrase="a broken symbolic link: its target", demo=None),
    Case("loop.jpg", _loop, "link-loop", phrase="a symbolic link loop", demo=None),
]
BY_NAME = {case.name: case for case in CASES}
# Not through the folder: a folder is searched, not captioned, and a missing file cannot be in one.
LISTED_ONLY = ("folder.jpg", "missing.jpg")


def test_the_table_in_the_docstring_lists_every_case():
    documented = re.findall(r"^\| ([\w.]+) \|", __doc__, flags=re.MULTILINE)
    assert [name for name in documented if name != "case"] == [*BY_NAME, "unreadable.jpg"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, flickr_dir) -> Path:
    photo = sorted(require(flickr_dir / "photos_fullres").glob("*.jpg"))[0]
    clip = sorted(require(DATA / "msvd" / "videos").glob("*.avi"))[0]
    folder = tmp_path_factory.mktemp("corpus") / "inputs"
    folder.mkdir()
    sources = Sources(photo, clip)
    for case in CASES:
        case.make(folder / case.name, sources)
    return folder


def check(results: dict[str, dict], path_of: Callable[[str], str], surface: str) -> None:
    """Every case's result is what the table says; ``results`` maps each input to its record."""
    for case in CASES:
        served = surface in ("demo", "http")  # through the server: uploaded, not read in place
        expect = case.expect if not served or case.demo == "same" else case.demo
        if served and case.demo in (None, "refused"):
            continue
        result = results[path_of(case.name)]
        if expect == "caption":
            assert result.get("caption"), f"{surface}: {case.name} should be captioned: {result}"
            if case.same_as:
                assert result["caption"] == results[path_of(case.same_as)]["caption"], (
                    f"{surface}: {case.name}"
                )
            continue
        assert "caption" not in result, f"{surface}: {case.name} should fail: {result}"
        assert result.get("error_kind") == expect, f"{surface}: {case.name}: {result}"
        assert case.phrase in result["error"], f"{surface}: {case.name}: {result['error']!r}"


def test_predict_captions_every_good_file_and_names_every_bad_one(corpus, capsys):
    paths = [str(corpus / case.name) for case in CASES]
    code = main(["predict", *paths, "--format", "json", "--workers", "0", "--batch-size", "8"])
    out, err = capsys.readouterr()
    assert code == 1  # some inputs could not be captioned; all the others were
    records = json.loads(out)
    assert [r["source"] for r in records] == paths
    check({r["source"]: r for r in records}, lambda name: str(corpus / name), "predict")
    bad = [case for case in CASES if case.expect != "caption"]
    for case in bad:
        assert f"error: {corpus / case.name}: " in err  # named on stderr too
    assert f"{len(CASES) - len(bad)} captioned, {len(bad)} could not be read" in err


def test_predict_with_video_sampling_options_keeps_going_past_a_bad_video(corpus, capsys, caplog):
    paths = [str(corpus / name) for name in ("photo.jpg", "truncated.avi", "clip.mp4", "jpeg_named.mp4")]
    for options in (["--every", "0.5"], ["--frames", "4"]):
        code = main(["predict", *paths, "--format", "json", *options])
        records = json.loads(capsys.readouterr().out)
        assert code == 1
        assert [bool(r.get("caption")) for r in records] == [True, False, True, False], options
        assert len(records[2]["frame_times"]) == 4  # a 2 s clip: 4 frames either way
    assert main(["predict", paths[0], "--frames", "0"]) == 2  # a bad setting: nothing captioned
    assert "frames 0 is not allowed: choose a whole number from 1 to 256" in caplog.text


def test_batch_captions_every_good_file_and_records_every_bad_one(corpus, tmp_path, capsys):
    file_list = tmp_path / "more.txt"
    file_list.write_text("".join(f"{corpus / name}\n" for name in LISTED_ONLY))
    out = tmp_path / "captions.jsonl"
    code = main(["batch", str(corpus), "--file-list", str(file_list), "--out", str(out), "--batch-size", "8",
                 "--no-progress"])
    assert code == 1
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == len(CASES)  # every file once: nothing dropped, not the links
    check({r["source"]: r for r in records}, lambda name: str(corpus / name), "batch")
    summary = capsys.readouterr().err
    assert f"{sum(c.expect == 'caption' for c in CASES)} captioned" in summary

    assert main(["batch", str(corpus), "--file-list", str(file_list), "--out", str(out),
                 "--no-progress"]) == 1
    assert "0 captioned" in (summary := capsys.readouterr().err) and f"{len(CASES)} already in" in summary
    assert "recorded as bad" in summary  # still failed files in the output: still exit status 1


def test_a_file_this_user_may_not_read_is_reported_as_such(corpus, tmp_path, capsys, monkeypatch):
    """The file's mode is 000. Root reads it all the same, so as root the operating system's answer to a user
    without permission (EACCES) is given for that one file instead."""
    from caption.data import files

    good, unreadable = tmp_path / "good.jpg", tmp_path / "unreadable.jpg"
    shutil.copy(corpus / "photo.jpg", good)
    shutil.copy(corpus / "photo.jpg", unreadable)
    unreadable.chmod(0o000)
    if os.geteuid() == 0:
        def open_as_a_user(path, *args, **kwargs):
            if Path(path) == unreadable:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return open(path, *args, **kwargs)

        monkeypatch.setattr(files, "open", open_as_a_user, raising=False)
    assert main(["predict", str(good), str(unreadable), "--format", "json"]) == 1
    out, err = capsys.readouterr()
    good_record, bad_record = json.loads(out)
    assert good_record["caption"]
    assert bad_record["error_kind"] == "permission" and "permission denied" in bad_record["error"]
    assert f"error: {unreadable}: permission denied" in err


PARAMETERS = [  # (beam size, maximum length, expected: "caption" or the words of the error)
    (1000, 20, "beam size 1000 is not allowed: choose a whole number from 1 to 10"),
    ("abc", 20, "beam size 'abc' is not allowed"),
    (0, 20, "beam size 0 is not allowed"),
    (2.5, 20, "beam size 2.5 is not allowed"),
    ([3], 20, "beam size [3] is not allowed"),
    (3, 0, "maximum length 0 is not allowed: choose a whole number from 1 to 100"),
    (3, 1000, "maximum length 1000 is not allowed"),
    (None, None, "caption"),
    ("3", "20", "caption"),
    (3.0, 20.0, "caption"),
]


HTTP_STATUS = {"caption": 200, "parameter": 400, "too-large": 413, "not-media": 415, "wrong-type": 415,
               "unsupported": 415, "corrupt": 422, "empty": 422}


def ask_http(url: str, path: str, beam, length) -> tuple[int, dict]:
    """``curl -F file=@path -F beam_size=... -F max_length=... URL/v1/caption``: (status, JSON)."""
    import httpx

    settings = {name: str(value) for name, value in (("beam_size", beam), ("max_length", length))
                if value is not None}
    with open(path, "rb") as file:
        response = httpx.post(f"{url}v1/caption", files={"file": (Path(path).name, file)}, data=settings,
                              timeout=300)
    return response.status_code, response.json()


@pytest.mark.slow
def test_the_demo_judges_every_request_on_its_own(corpus, tmp_path):
    """All uploadable cases and all parameter cases at once, through Gradio's API (gradio_client) and the
    HTTP API (``/v1/caption``) together, so they share batches: none fails another, and each surface answers
    each case as the table says (the HTTP API with the status of its error kind)."""
    from gradio_client import Client, handle_file

    from caption.api import Captioner

    uploads = [case for case in CASES if case.demo not in (None, "refused")]
    photo = str(corpus / "photo.jpg")
    requests = [(str(corpus / case.name), 3, 20) for case in uploads]
    requests += [(photo, beam, length) for beam, length, _ in PARAMETERS]
    refused = [str(corpus / case.name) for case in CASES if case.demo == "refused"]
    log = tmp_path / "server.log"
    with running_demo(log, "--max-file-mb", "2",
                      env={"GRADIO_TEMP_DIR": str(tmp_path / "gradio")}) as (url, process):
        # gradio_client gives an upload 5 s; 46 at once on 2 busy cores can take longer (a browser waits).
        clients = [Client(url, verbose=False, httpx_kwargs={"timeout": 60}) for _ in requests]
        with ThreadPoolExecutor(2 * len(requests)) as pool:
            page = [pool.submit(client.predict, handle_file(path), beam, length, api_name="/caption")
                    for client, (path, beam, length) in zip(clients, requests)]
            http = [pool.submit(ask_http, url, *request) for request in requests]
            answers, statuses = [job.result() for job in page], [job.result() for job in http]
        assert clients[0].predict(None, 3, 20, api_name="/caption") == {}  # a cleared upload
        for path in refused:  # over --max-file-mb: Gradio refuses the upload itself, the HTTP API with 413
            with pytest.raises(ValueError, match="exceeds the maximum file size"):
                clients[0].predict(handle_file(path), 3, 20, api_name="/caption")
            status, answer = ask_http(url, path, 3, 20)
            assert status == 413 and answer["error_kind"] == "too-large", answer
        assert process.poll() is None  # still serving
    batches = [line for line in log.read_text().splitlines() if "request(s) in" in line]
    assert max(batch_sizes(log)) > 1, "the requests were not batched together"
    assert any("gradio" in line and "http" in line for line in batches), "no batch held both surfaces"
    assert "Traceback" not in log.read_text()

    library = Captioner.load()
    expected_captions = {case.name: library.caption(str(corpus / case.name)).text for case in uploads
                         if case.expect == "caption"}
    for surface, got in (("demo", answers), ("http", [answer for _, answer in statuses])):
        results = {case.name: answer for case, answer in zip(uploads, got)}
        check(results, lambda name: name, surface)
        for case in uploads:
            if "error" in results[case.name]:
                assert results[case.name]["error"].startswith(f"{case.name}: "), results[case.name]
            else:  # the library's caption
                assert results[case.name]["caption"] == expected_captions[case.name], (surface, case.name)
        for (beam, length, expected), answer in zip(PARAMETERS, got[len(uploads):]):
            if expected == "caption":
                assert answer["caption"] == results["photo.jpg"]["caption"], (beam, length, answer)
                continue
            assert set(answer) == {"error", "error_kind"} and answer["error_kind"] == "parameter", answer
            if not (surface == "http" and isinstance(beam, list)):  # a form sends [3] as the text '[3]'
                assert expected in answer["error"], (surface, beam, length, answer)
    for (status, answer), case in zip(statuses, uploads):
        assert status == HTTP_STATUS[case.expect], (case.name, status, answer)
    assert [status for status, _ in statuses[len(uploads):]] == [
        200 if expected == "caption" else 400 for _, _, expected in PARAMETERS]


def test_every_pillow_mode_and_array_type_in_python_is_captioned_as_the_picture_it_shows(corpus):
    """In memory too: a lossless copy in another mode or dtype gets the same caption; a lossy one a caption;
    values that fit no range an error that says so."""
    from caption.api import Captioner
    from caption.errors import ImageLoadError

    captioner = Captioner.load()
    rgb = Image.open(corpus / "rgb8.png").convert("RGB")
    grey = rgb.convert("L")
    pixels, grey_pixels = np.asarray(rgb), np.asarray(grey)
    big_endian = Image.frombytes("I;16B", grey.size, (grey_pixels.astype(">u2") * 257).tobytes())
    same_as_rgb = {"RGBa": rgb.convert("RGBa"), "RGBX": rgb.convert("RGBX"),
                   "uint16 array": pixels.astype(np.uint16) * 257, "float array": pixels / 255.0,
                   "RGBA array": np.dstack([pixels, np.full(grey_pixels.shape, 255)])}
    same_as_grey = {"I;16": Image.fromarray(grey_pixels.astype(np.uint16) * 257), "I;16B": big_endian,
                    "I": Image.fromarray(grey_pixels.astype(np.int32) * 257, "I"),
                    "F": Image.fromarray(grey_pixels.astype(np.float32) / 255.0, "F"),
                    "La": grey.convert("LA").convert("La"), "(H, W, 1) array": grey_pixels[:, :, None]}
    lossy = {mode: rgb.convert(mode) for mode in ("YCbCr", "LAB", "HSV", "CMYK", "P", "1", "PA")}
    reference = captioner.caption([rgb, grey], skip_errors=False)
    for expected, images in ((reference[0].text, same_as_rgb), (reference[1].text, same_as_grey)):
        results = captioner.caption(list(images.values()))
        assert {name: r.text for name, r in zip(images, results)} == {name: expected for name in images}
    assert all(r.text for r in captioner.caption(list(lossy.values())))
    for bad, words in ((np.full((8, 8), -1.0), "from -1 to -1"), (np.full((8, 8, 3), np.nan), "NaN"),
                       (np.zeros((8, 8, 2)), "(H, W, 3)"), (np.zeros((0, 8, 3), np.uint8), "no pixels")):
        with pytest.raises(ImageLoadError, match=re.escape(words)):
            captioner.caption(bad)
