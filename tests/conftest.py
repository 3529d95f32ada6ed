"""Shared fixtures. Real data is read in place from $CAPTION_DATA (default ../shared/data)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CAPTION_DATA", REPO.parent / "shared" / "data")).resolve()
FLICKR = DATA / "flickr8k"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set CAPTION_DATA to the shared data folder)")
    return path


def chromium_or_skip() -> str:
    """Debian's chromium, for playwright to drive (it downloads no browser)."""
    pytest.importorskip("playwright.sync_api",
                        reason="browser tests need playwright: pip install -e '.[dev]'")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no browser: {CHROMIUM} is missing "
                    "(`make test` installs Debian's chromium with apt-get)")
    return CHROMIUM


def require_java() -> None:
    if shutil.which("java") is None:
        pytest.skip("Java is not installed (the COCO caption metrics need it; `make test` installs it)")


@pytest.fixture(scope="session")
def flickr_dir() -> Path:
    return require(FLICKR)


@pytest.fixture(scope="session")
def flickr_splits(tmp_path_factory, flickr_dir) -> dict[str, Path]:
    """The official Flickr8k train/dev splits converted to COCO JSON (done once per session)."""
    from caption.data.convert import convert_flickr8k

    out = tmp_path_factory.mktemp("flickr8k")
    splits = {name: flickr_dir / f"Flickr_8k.{name}Images.txt" for name in ("train", "dev")}
    return convert_flickr8k(flickr_dir / "Flickr8k.token.txt", splits, out)


def write_subset(source: Path, target: Path, count: int, captions_per_image: int | None = None) -> Path:
    """The first ``count`` images of a COCO caption file (optionally with fewer captions each)."""
    data = json.loads(source.read_text())
    images = data["images"][:count]
    ids = {image["id"] for image in images}
    annotations, seen = [], {}
    for ann in data["annotations"]:
        if ann["image_id"] in ids and seen.get(ann["image_id"], 0) < (captions_per_image or 99):
            seen[ann["image_id"]] = seen.get(ann["image_id"], 0) + 1
            annotations.append(ann)
    target.write_text(json.dumps({"images": images, "annotations": annotations}))
    return target


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    from caption.api import DEFAULT_MODEL, resolve_model

    return resolve_model(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def lite0_encoder():
    from caption.config import EncoderConfig
    from caption.features.encoder import ImageEncoder

    return ImageEncoder(EncoderConfig()).eval()


@pytest.fixture(scope="session")
def few_real_images(flickr_splits, flickr_dir, lite0_encoder, tmp_path_factory):
    """Eight real Flickr8k train images, their captions, and their cached lite0 features."""
    import torch

    from caption.data.coco import read_caption_set
    from caption.features.cache import FeatureCache

    split = read_caption_set(flickr_splits["train"], flickr_dir / "images").subset(list(range(8)))
    cache = FeatureCache(tmp_path_factory.mktemp("features"), lite0_encoder)
    features = cache.get_or_build([str(p) for p in split.paths()], device=torch.device("cpu"), num_workers=0)
    return split, features


def jpeg_bytes(image, **kwargs) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **kwargs)
    return buffer.getvalue()


def problem_files(folder: Path, photo: str | Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """Files a user might upload, made from a real ``photo``: (readable ones, unreadable ones) by name.

    Readable: a PNG named .jpg, a transparent PNG, greyscale, CMYK, and an EXIF-rotated JPEG whose upright
    view is ``photo`` itself. Unreadable: not an image, a truncated JPEG, zero bytes."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    image = Image.open(photo).convert("RGB")
    good = {name: folder / name
            for name in ("png_named.jpg", "alpha.png", "grey.png", "cmyk.jpg", "rotated.jpg")}
    image.save(good["png_named.jpg"], "PNG")
    rgba = image.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(good["alpha.png"])
    image.convert("L").save(good["grey.png"])
    image.convert("CMYK").save(good["cmyk.jpg"])
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": what a phone held upright stores
    good["rotated.jpg"].write_bytes(jpeg_bytes(image.transpose(Image.Transpose.ROTATE_90), exif=exif,
                                               quality=100, subsampling=0))
    bad = {name: folder / name for name in ("notes.jpg", "truncated.jpg", "empty.jpg")}
    bad["notes.jpg"].write_text("this is not an image")
    data = Path(photo).read_bytes()
    bad["truncated.jpg"].write_bytes(data[: len(data) // 2])  # a real JPEG cut off half-way
    bad["empty.jpg"].write_bytes(b"")
    return good, bad


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_demo(
    log: Path, *args: str, env: dict[str, str] | None = None,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """``demo/app.py`` on the shipped model with ``args``, as ``make demo`` starts it; yields (url,
    process)."""
    env = {**os.environ, "CAPTION_DATA": str(DATA), "PYTHONPATH": str(REPO), **(env or {})}
    with log.open("w") as sink:
        process = subprocess.Popen([sys.executable, str(REPO / "demo" / "app.py"), "--port", str(free_port()),
                                    *args],
                                   stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 180
        while "Captioning demo" not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the demo did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        url = log.read_text().split(" at ", 1)[1].split()[0]
        assert url.startswith("http://127.0.0.1:")  # local only by default
        yield url, process
    finally:
        process.terminate()
        process.wait(timeout=30)


def batch_sizes(log: Path) -> list[int]:
    """How many requests the demo captioned together, batch by batch, from its log."""
    return [int(line.split("captioned ")[1].split()[0]) for line in log.read_text().splitlines()
            if "request(s) in" in line]
