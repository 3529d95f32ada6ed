"""The captioning web demo (``make demo``): upload a photo or a video, get its caption and where it looked.

    python demo/app.py [--model NAME_OR_PATH] [--host 127.0.0.1] [--port 7860] [--share] [--keep-uploads 120]

It listens on 127.0.0.1 only, unless --host says otherwise; --share asks Gradio for a public link.
From Python: ``gradio_client.Client(url).predict(handle_file("photo.jpg"), 3, 20, api_name="/caption")``
returns {"caption", "score", "beams", "words", "attention", "grid"}, or {"error"} for a bad file.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local demo reports nothing home

from caption.models import DEFAULT_MODEL  # noqa: E402
from caption.utils.logging import setup_logging  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("CAPTION_DATA", HERE.parent.parent / "shared" / "data"))


# COCO dev photos beside the Flickr8k ones: food, animals and street scenes, which Flickr8k lacks (a pizza, a
# cake, an elephant, a show jumper, a double-decker bus, a train at a station).
COCO_EXAMPLES = ("000000116208.jpg", "000000211825.jpg", "000000106757.jpg", "000000100510.jpg",
                 "000000001584.jpg", "000000369675.jpg")


def example_photos(limit: int = 8) -> list[str]:
    """Everyday COCO dev photos, the full-size Flickr8k sample photos and the MSVD clips when the shared data
    is there, else the small photos in the repo."""
    coco = [DATA / "coco" / "val2017" / name for name in COCO_EXAMPLES]
    full_size = sorted((DATA / "flickr8k" / "photos_fullres").glob("*.jpg"))[:limit]
    clips = sorted((DATA / "msvd" / "videos").glob("*.avi"))
    found = [*(p for p in coco if p.is_file()), *full_size, *clips]
    return [str(p) for p in found or sorted((HERE / "examples").glob("*.jpg"))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="model directory, training run, or shipped name")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="auto: bf16 on a GPU, fp32 on a CPU (bf16 there changes about a quarter of the "
                             "captions)")
    parser.add_argument("--max-file-mb", type=float, default=50.0, help="largest upload accepted")
    parser.add_argument("--max-video-seconds", type=float, default=300.0, help="longest video accepted")
    parser.add_argument("--max-pixels", type=int, default=40_000_000,
                        help="largest image accepted, in pixels")
    parser.add_argument("--max-batch-size", type=int, default=16,
                        help="most concurrent requests per forward pass")
    parser.add_argument("--queue-size", type=int, default=64,
                        help="requests waiting beyond this are turned away")
    parser.add_argument("--keep-uploads", type=float, default=120.0, metavar="SECONDS",
                        help="delete an upload no request has used for this long")
    parser.add_argument("--uploads-budget-mb", type=float, default=1024.0,
                        help="beyond this, delete the least recently used uploads first")
    args = parser.parse_args()
    setup_logging()

    from caption.api import Captioner
    from caption.serving.web import CaptionService, Limits, build_app

    captioner = Captioner.load(args.model, device=args.device, precision=args.precision)
    limits = Limits(max_file_mb=args.max_file_mb, max_pixels=args.max_pixels,
                    max_video_seconds=args.max_video_seconds,
                    max_batch_size=args.max_batch_size, keep_uploads_seconds=args.keep_uploads,
                    uploads_budget_mb=args.uploads_budget_mb)
    examples = example_photos()
    app = build_app(CaptionService(captioner, limits), examples,
                    title=f"Image captioning: {captioner.path.name}")
    app.queue(max_size=args.queue_size)
    _, url, share_url = app.launch(
        server_name=args.host, server_port=args.port, share=args.share,
        max_file_size=int(args.max_file_mb * 2**20),
        allowed_paths=sorted({str(Path(p).parent) for p in examples}), ssr_mode=False, quiet=True,
        prevent_thread_lock=True,
        # Requests wait in threads for their batch (2 x the batch size), beside the page's own work.
        max_threads=max(40, 4 * args.max_batch_size),
    )
    print(f"Captioning demo ({captioner.path.name} on {captioner.device}) at {url}", flush=True)
    if share_url:
        print(f"Public link: {share_url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a user stops the demo
        app.block_thread()
    return 0


if __name__ == "__main__":
    sys.exit(main())
