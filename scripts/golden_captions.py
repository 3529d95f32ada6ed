"""Write the golden captions of a shipped model: its captions and scores, at beam 1 and 3, on the first 32
photos of each dev split (Flickr8k dev, the COCO dev subset), to tests/data/dev32_<model>.json, which
tests/test_api.py compares against. Run it when a model is exported, never to make a failing test pass.

    python scripts/golden_captions.py everyday-lite2 --about "written when it was exported (issue 18)"
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import DATA, REPO  # noqa: E402

from caption.api import Captioner  # noqa: E402
from caption.data.coco import read_caption_set  # noqa: E402
from caption.data.convert import convert_flickr8k  # noqa: E402
from caption.utils.io import atomic_write_json  # noqa: E402

PHOTOS = 32


def dev_photos(work: Path) -> dict[str, list[str]]:
    """The first 32 photos of each dev split, in file order (as the test reads them)."""
    flickr = DATA / "flickr8k"
    splits = convert_flickr8k(flickr / "Flickr8k.token.txt", {"dev": flickr / "Flickr_8k.devImages.txt"},
                              work)
    coco = read_caption_set(DATA / "coco" / "annotations" / "captions_val2017_subset_dev.json",
                            DATA / "coco" / "val2017")
    flickr_dev = read_caption_set(splits["dev"], flickr / "images")
    return {"flickr8k": [str(p) for p in flickr_dev.paths()[:PHOTOS]],
            "coco": [str(p) for p in coco.paths()[:PHOTOS]]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a shipped model name")
    parser.add_argument("--about", required=True, help="when and why these captions were written")
    args = parser.parse_args()
    captioner = Captioner.load(args.model)
    out = REPO / "tests" / "data" / f"dev32_{args.model}.json"
    golden: dict = {"about": f"captions and scores of models/{args.model} on the first {PHOTOS} photos of "
                             f"each dev split, {args.about}; a change to the model, the encoder or decoding "
                             "must not change them"}
    with tempfile.TemporaryDirectory() as tmp:
        for split, paths in dev_photos(Path(tmp)).items():
            golden[split] = {
                f"beam{beam}": {Path(r.source).name: {"caption": r.text, "score": round(r.score, 6)}
                                for r in captioner.caption(paths, beam_size=beam)}
                for beam in (1, 3)
            }
    atomic_write_json(out, golden)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
