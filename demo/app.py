"""The captioning server (``make demo``): a web page to upload a photo or a video and see its caption and
where the model looked, and an HTTP API on the same port for programs.

    python demo/app.py [--model NAME_OR_PATH] [--host 127.0.0.1] [--port 7860] [--api-token TOKEN] [--share]

It listens on 127.0.0.1 only, unless --host says otherwise; --share asks Gradio for a public link.
    curl -F file=@photo.jpg -F beam_size=5 http://127.0.0.1:7860/v1/caption     # the HTTP API (docs: /docs)
    gradio_client.Client(url).predict(handle_file("photo.jpg"), 3, 20, api_name="/caption")
both return {"caption", "score", "beams", "words", "attention", "grid"}, or {"error", "error_kind"}.
/healthz, /readyz and /metrics (Prometheus) are for load balancers and monitoring.
"""

from __future__ import annotations

import argparse
import os
import signal
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
                        help="requests waiting beyond this are turned away (the page's and the API's each)")
    parser.add_argument("--keep-uploads", type=float, default=120.0, metavar="SECONDS",
                        help="delete an upload no request has used for this long")
    parser.add_argument("--uploads-budget-mb", type=float, default=1024.0,
                        help="most disk the uploads may take; new ones are refused (503) beyond it")
    parser.add_argument("--api-token", default=os.environ.get("CAPTION_API_TOKEN"),
                        help="require 'Authorization: Bearer TOKEN' on /v1/* (default: $CAPTION_API_TOKEN, "
                             "which keeps it out of the process list)")
    parser.add_argument("--protect-page", action="store_true",
                        help="ask for the API token on the page too (a login form: any user name)")
    args = parser.parse_args()
    setup_logging()
    if args.protect_page and not args.api_token:
        parser.error("--protect-page needs --api-token (or CAPTION_API_TOKEN)")

    from caption.api import Captioner
    from caption.serving.server import build_server, exposure_warning, serve
    from caption.serving.service import CaptionService, Limits
    from caption.serving.web import build_app

    captioner = Captioner.load(args.model, device=args.device, precision=args.precision)
    limits = Limits(max_file_mb=args.max_file_mb, max_pixels=args.max_pixels,
                    max_video_seconds=args.max_video_seconds, max_batch_size=args.max_batch_size,
                    queue_size=args.queue_size, keep_uploads_seconds=args.keep_uploads,
                    uploads_budget_mb=args.uploads_budget_mb)
    try:
        service = CaptionService(captioner, limits)
    except ValueError as err:
        parser.error(str(err))
    examples = example_photos()
    page = build_app(service, examples, title=f"Image captioning: {captioner.path.name}")
    # Requests wait in threads for their batch (2 x the batch size), beside the page's own work.
    page.max_threads = max(40, 4 * args.max_batch_size)
    page.queue(max_size=args.queue_size)
    app = build_server(service, page, token=args.api_token, protect_page=args.protect_page,
                       allowed_paths=sorted({str(Path(p).parent) for p in examples}))
    try:
        running = serve(app, args.host, args.port)
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"Captioning demo ({captioner.path.name} on {captioner.device}) at {running.url}", flush=True)
    print(f"HTTP API: {running.url}v1/caption (docs: {running.url}docs)", flush=True)
    if args.share:
        from gradio import networking

        try:  # Gradio's own tunnel, as launch(share=True) opens it
            share_url = networking.setup_tunnel(args.host if args.host != "0.0.0.0" else "127.0.0.1",
                                                args.port, page.share_token, None, None)
            print(f"Public link: {share_url}", flush=True)
        except Exception as err:  # noqa: BLE001 - the local server serves on without a link
            print(f"warning: could not open a public link ({err}); serving locally only", flush=True)
    warning = exposure_warning(args.host, args.api_token, args.protect_page, args.share)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    # SIGTERM (systemd, a supervisor) stops it as Ctrl-C does: requests in flight get a few seconds to finish.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    running.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
