"""Sampling K frames from a video: seeking (``read_frames(..., seek=True)``) costs about the same on a 10 s
and a 10-minute video, while the sequential fallback (``seek=False``) grows with the video's length. Also
times ``probe`` and ``detect_scenes``, which reads the whole video by design (the length-proportional part).

    python scripts/bench_frames.py [--frames 8 32] [--repeats 3] [--keep DIR] [--device auto]

The videos are synthetic (a square crossing the frame, 25 fps, 320x240), written to a temporary directory,
or to --keep DIR where a later run reuses them (writing the 600 s one takes a while).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import machine, parse_bench_args, print_table  # noqa: E402

from caption.data.synthetic import write_moving_shape_video  # noqa: E402
from caption.data.video import detect_scenes, probe, read_frames  # noqa: E402

SECONDS = {"short": 10.0, "long": 600.0}
FPS = 25.0
SIZE = (320, 240)


def make_videos(folder: Path) -> dict[str, Path]:
    videos = {}
    for name, seconds in SECONDS.items():
        path = folder / f"{name}_{seconds:.0f}s_{FPS:.0f}fps_{SIZE[0]}x{SIZE[1]}.mp4"
        if not path.is_file():
            if seconds > 60:
                print(f"writing a {seconds:.0f} s video to {path} (this takes a while)", flush=True)
            partial = path.with_suffix(".part.mp4")  # an interrupted write is not reused by --keep
            write_moving_shape_video(partial, "red", "square", "right", seconds=seconds, fps=FPS, size=SIZE)
            partial.rename(path)
        videos[name] = path
    return videos


def seeks_exactly(path: Path, indices: list[int]) -> bool:
    """Whether the container lands on each of ``indices`` when asked to, as ``read_frames`` checks before it
    trusts seeking (where it does not, ``seek=True`` falls back to the sequential read too)."""
    capture = cv2.VideoCapture(str(path))
    try:
        return all(capture.set(cv2.CAP_PROP_POS_FRAMES, i) and int(capture.get(cv2.CAP_PROP_POS_FRAMES)) == i
                   for i in sorted(set(indices)))
    finally:
        capture.release()


def median_ms(fn, path: Path, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn(path)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def run(videos: dict[str, Path], frames: list[int], repeats: int) -> list[dict]:
    for k in frames:
        for path in videos.values():
            seek, read = read_frames(path, k, seek=True), read_frames(path, k, seek=False)
            assert seeks_exactly(path, seek.indices), f"{path} cannot be sought: nothing to compare"
            assert seek.indices == read.indices, (
                f"{path}, K={k}: seek read {seek.indices}, sequential {read.indices}"
            )
    cases = [("probe", None, probe)]
    for k in frames:
        cases += [(f"read_frames K={k}, seek", k, lambda p, k=k: read_frames(p, k, seek=True)),
                  (f"read_frames K={k}, sequential (seek=False)", k,
                   lambda p, k=k: read_frames(p, k, seek=False))]
    cases.append(("detect_scenes (reads the whole video)", None, detect_scenes))
    counts = {name: probe(path).frame_count for name, path in videos.items()}
    rows, seek_short = [], {}
    for label, k, fn in cases:
        ms = {name: median_ms(fn, path, repeats) for name, path in videos.items()}
        if label.endswith("seek"):
            seek_short[k] = ms["short"]
        for name in videos:
            row = {"case": label, "video": f"{SECONDS[name]:.0f} s", "ms": ms[name],
                   "covered": counts[name] / (ms[name] / 1000)}
            if name == "long":
                row["long_short"] = f"{ms['long'] / ms['short']:.1f}x"
            if k in seek_short:
                row["vs_seek_short"] = f"{ms[name] / seek_short[k]:.1f}x"
            rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 32],
                        help="K, the frames sampled per call")
    parser.add_argument("--repeats", type=int, default=3, help="calls per case; the table gives the median")
    parser.add_argument("--keep", type=Path, help="write the videos here and reuse them on later runs")
    args, _ = parse_bench_args(parser)  # --device is accepted for uniformity: decoding runs on the CPU
    if args.keep:
        rows = run(make_videos(args.keep), args.frames, args.repeats)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            rows = run(make_videos(Path(tmp)), args.frames, args.repeats)
    ratio = SECONDS["long"] / SECONDS["short"]
    print_table(
        f"Reading frames from a video ({machine()}, OpenCV {cv2.__version__}), {FPS:.0f} fps "
        f"{SIZE[0]}x{SIZE[1]} mp4v, median of {args.repeats} calls; the long video is {ratio:.0f}x the "
        f"short one",
        rows, [("case", "case"), ("video", "video"), ("ms per call", "ms"),
               ("video frames/s covered", "covered"), ("long / short", "long_short"),
               ("vs seek on the short video, same K", "vs_seek_short")],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
