"""Caption photos with the shipped default model and print the results (``make demo``).

    python demo/caption_photos.py [PHOTO ...] [--model NAME_OR_PATH] [--beam-size 3]

With no photos given, it captions the sample photos in $CAPTION_DATA/flickr8k/photos_fullres
(default ../shared/data).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from caption import Captioner
from caption.utils.runtime import reexec_with_malloc_tuning

SAMPLE_DIR = Path(os.environ.get("CAPTION_DATA", "../shared/data")) / "flickr8k" / "photos_fullres"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photos", nargs="*", help="image files (default: the sample photos)")
    parser.add_argument("--model", default="flickr8k-lite0")
    parser.add_argument("--beam-size", type=int, help="default: the model's own (3)")
    args = parser.parse_args()
    reexec_with_malloc_tuning()

    photos = args.photos or sorted(str(p) for p in SAMPLE_DIR.glob("*.jpg"))
    if not photos:
        print(f"no photos given and no sample photos in {SAMPLE_DIR}; pass image files as arguments", file=sys.stderr)
        return 2
    started = time.perf_counter()
    captioner = Captioner.load(args.model)
    loaded = time.perf_counter()
    results = captioner.caption(photos, beam_size=args.beam_size, skip_errors=True)
    done = time.perf_counter()
    width = max(len(Path(r.source).name) for r in results)
    for result in results:
        name = Path(result.source).name
        print(f"{name:<{width}}  {result.text}" if result.ok else f"{name:<{width}}  [error] {result.error}")
    captioned = sum(r.ok for r in results)
    settings = captioner.resolve_decoding(args.beam_size)
    print(f"\n{captioned} of {len(results)} photos captioned by {captioner.path.name} on {captioner.device} "
          f"(model loaded in {loaded - started:.1f} s, captions in {done - loaded:.1f} s, "
          f"beam {settings['beam_size']}, length penalty {settings['length_penalty']})")
    return 0 if captioned == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
