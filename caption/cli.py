"""The ``caption`` command: prepare data, train, predict, caption in batch, evaluate, export models,
plot runs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from caption.config import PRECISIONS, DecodingConfig
from caption.evaluation.metrics import METRIC_NAMES
from caption.models import DEFAULT_MODEL
from caption.utils.logging import logger, setup_logging

# Exit statuses of predict and batch (README, "Exit statuses"); the other commands use 0 and 2:
EXIT_OK = 0  # every input captioned
EXIT_SOME_FAILED = 1  # some inputs could not be captioned; each is reported, every other one is captioned
EXIT_USAGE = 2  # nothing was captioned: bad arguments or settings, no model, an input that matches nothing
EXIT_INTERRUPTED = 130  # Ctrl-C


def _prepare(args: argparse.Namespace) -> int:
    from caption.data.convert import convert_flickr8k, convert_karpathy, convert_msrvtt, convert_msvd

    if args.source == "table":
        from caption.data.tables import prepare_table

        prepare_table(args.input, args.out, images=args.images, image_column=args.image_column,
                      caption_column=args.caption_column, split_column=args.split_column,
                      dev_fraction=args.dev_fraction, seed=args.seed, images_out=args.images_out)
        return 0
    if args.source == "msvd":
        root = Path(args.input)
        if root.is_file() and root.suffix.lower() == ".csv":
            convert_msvd(args.out, corpus_csv=root, mapping_file=args.mapping, video_dir=args.videos)
            return 0
        mapping = Path(args.mapping) if args.mapping else root / "youtube_video_to_id_mapping.txt"
        sentences = sorted(root.glob("sents_*.txt")) if root.is_dir() else []
        if not sentences or not mapping.is_file():
            raise FileNotFoundError(f"{root}: give the folder with youtube_video_to_id_mapping.txt and "
                                    "sents_<split>_lc_nopunc.txt, or the 'MSR Video Description Corpus.csv' "
                                    "file")
        convert_msvd(args.out, mapping_file=mapping, sentence_files=sentences, video_dir=args.videos)
        return 0
    if args.source == "msrvtt":
        root = Path(args.input)
        infos = sorted(root.glob("*videodatainfo*.json")) if root.is_dir() else [root]
        if not infos:
            raise FileNotFoundError(f"{root}: no train_val_videodatainfo.json / "
                                    "test_videodatainfo.json there")
        convert_msrvtt(infos, args.out)
        return 0
    if args.source == "flickr8k":
        root = Path(args.input)
        token_file = root / "Flickr8k.token.txt"
        if not token_file.is_file():
            raise FileNotFoundError(f"{token_file} not found: give the folder that holds Flickr8k.token.txt")
        splits = {name: root / f"Flickr_8k.{name}Images.txt" for name in ("train", "dev", "test")}
        splits = {name: path for name, path in splits.items() if path.is_file()}
        if not splits:
            raise FileNotFoundError(f"no split lists (Flickr_8k.trainImages.txt, ...) in {root}")
        convert_flickr8k(token_file, splits, args.out)
    else:
        convert_karpathy(args.input, args.out, restval_to_train=not args.keep_restval)
    return 0


def _train(args: argparse.Namespace) -> int:
    from caption.config import load_config
    from caption.training.trainer import train

    config = load_config(args.config, args.overrides)
    record = train(config, resume=args.resume)
    if record:
        print(json.dumps(record))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from caption.api import Captioner

    captioner = Captioner.load(args.model, device=args.device, precision=args.precision)
    decoding = captioner.resolve_decoding(_decoding_values(args))
    if args.format in ("vtt", "srt") or args.scenes:
        return _predict_scenes(captioner, args, decoding)
    results = captioner.caption(list(args.images), decoding=decoding, batch_size=args.batch_size,
                                num_workers=args.workers, num_frames=args.frames, every_seconds=args.every,
                                skip_errors=True)
    failed = [r for r in results if not r.ok]
    if args.format == "json":
        print(json.dumps([r.to_dict(attention=args.attention) for r in results], indent=2))
    else:
        for result in results:
            if result.ok:
                print(f"{result.source}\t{result.text}" if len(results) > 1 else result.text)
    for result in failed:
        print(f"error: {result.source}: {result.error}", file=sys.stderr)
    if failed:
        print(f"{len(results) - len(failed)} captioned, {len(failed)} could not be read", file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _predict_scenes(captioner, args: argparse.Namespace, decoding) -> int:
    """One caption per scene of one video: as subtitles (vtt, srt), JSON, or text lines."""
    from caption.errors import ImageLoadError
    from caption.serving.subtitles import to_srt, to_webvtt

    if len(args.images) != 1:
        raise ValueError("scene captions and subtitles take one video at a time")
    try:
        scenes = captioner.caption_video(args.images[0], num_frames=args.frames, every_seconds=args.every,
                                         scenes=True, decoding=decoding)
    except ImageLoadError as err:  # the one input could not be captioned: as for any other input, exit 1
        print(f"error: {err}", file=sys.stderr)
        return EXIT_SOME_FAILED
    if args.format == "vtt":
        print(to_webvtt(scenes), end="")
    elif args.format == "srt":
        print(to_srt(scenes), end="")
    elif args.format == "json":
        print(json.dumps([r.to_dict(attention=args.attention) for r in scenes], indent=2))
    else:
        for result in scenes:
            print(f"{result.segment[0]:.1f}-{result.segment[1]:.1f}s\t{result.text}")
    return EXIT_OK


def _batch(args: argparse.Namespace) -> int:
    from caption.api import Captioner
    from caption.serving.batch import caption_files
    from caption.serving.inputs import discover

    found = discover(args.inputs, args.file_list)
    if not found.files:
        raise ValueError("nothing to caption: the inputs name no image or video files")
    if args.engine == "ray":  # the model is loaded by each actor, not here
        from caption.api import resolve_model
        from caption.serving.ray_batch import caption_files_ray

        summary = caption_files_ray(
            str(resolve_model(args.model).resolve()), found.files, args.out, fmt=args.format,
            annotations=args.annotations, decoding=_decoding_values(args), address=args.address,
            actors=args.actors, gpus_per_actor=args.gpus_per_actor, cpus_per_actor=args.cpus_per_actor,
            block_size=args.block_size, batch_size=args.batch_size, num_workers=args.workers,
            startup_timeout=args.startup_timeout, precision=args.precision, progress=not args.no_progress)
    else:
        captioner = Captioner.load(args.model, device=args.device, precision=args.precision)
        summary = caption_files(
            captioner, found.files, args.out, fmt=args.format, annotations=args.annotations,
            batch_size=args.batch_size, num_workers=args.workers, progress=not args.no_progress,
            decoding=_decoding_values(args))
    print(summary.report(found), end="", file=sys.stderr)
    print(f"wrote {summary.output}", file=sys.stderr)
    return EXIT_SOME_FAILED if summary.failed or summary.failed_before else EXIT_OK


def _evaluate_splits(args: argparse.Namespace) -> list:
    """The splits to caption: --config's data.val (or its flat val keys), --split NAME ANNOTATIONS IMAGES, or
    the one --annotations/--images pair."""
    from caption.config import ConfigError, DataSetConfig, load_config

    splits = []
    if args.config:
        splits += load_config(args.config).data.val_sets()
        if not splits:
            raise ConfigError(f"{args.config}: no validation split (data.val or data.val_annotations) "
                              "to evaluate")
    splits += [DataSetConfig(annotations, images, 1.0, name) for name, annotations, images in args.split]
    names = [split.name for split in splits]
    if len(set(names)) < len(names):
        raise ConfigError(f"caption evaluate: two splits are named alike ({', '.join(names)}): "
                          "name each differently")
    return splits


def _print_report(report: dict, title: str = "") -> None:
    if title:
        print(f"== {title}: {report['annotations']} ({report['images_scored']} images)")
    for name, value in report["scores"].items():
        print(f"{name:8s} {value:.4f}")
    chair = report["chair"]
    print(f"CHAIRs   {chair['CHAIRs']:.4f}  (captions naming a COCO object no reference names)")
    print(f"CHAIRi   {chair['CHAIRi']:.4f}  ({chair['hallucinated_mentions']} of "
          f"{chair['object_mentions']} object mentions)")
    print(f"distinct captions {report['distinct_captions']} of {report['images_scored']}, "
          f"{report['distinct_words']} distinct words, degenerate {report['degenerate_share']:.1%} "
          "(a repeated word pair or a dangling last word)")
    for reason in report["skipped"].values():
        print(reason)


def _evaluate(args: argparse.Namespace) -> int:
    from caption.api import Captioner
    from caption.evaluation.evaluate import evaluate, evaluate_splits
    from caption.evaluation.metrics import check_java

    check_java()  # the scores need it: say so before a split is captioned, not after
    splits = _evaluate_splits(args)
    if splits:
        if args.annotations or args.results or args.images:
            raise SystemExit("caption evaluate: give the splits either with --config/--split, "
                             "or with --annotations")
        captioner = Captioner.load(args.model, device=args.device, precision=args.precision)
        summary = evaluate_splits(
            splits, args.out, predictor=captioner.predictor, metrics=args.metrics, batch_size=args.batch_size,
            num_workers=args.workers, max_images=args.max_images,
            decoding=captioner.resolve_decoding(_decoding_values(args)),
        )
        for name, report in summary["splits"].items():
            _print_report(report, name)
        if "mean_CIDEr" in summary:
            print(f"== weighted mean CIDEr of the {len(splits)} splits: {summary['mean_CIDEr']:.4f}")
        print(f"wrote {Path(args.out) / 'metrics.json'}")
        return 0
    if not args.annotations:
        raise SystemExit("caption evaluate: give --annotations (with --images or --results), "
                         "--split or --config")
    if (args.results is None) == (args.images is None):
        raise SystemExit("caption evaluate: give either --results FILE, or --images DIR (with --model)")
    captioner = (Captioner.load(args.model, device=args.device, precision=args.precision) if args.images
                 else None)
    report = evaluate(
        args.annotations, args.out, predictor=captioner and captioner.predictor, images=args.images,
        results_file=args.results, metrics=args.metrics, batch_size=args.batch_size, num_workers=args.workers,
        decoding=captioner and captioner.resolve_decoding(_decoding_values(args)),
        max_images=args.max_images,
    )
    _print_report(report)
    print(f"wrote {Path(args.out) / 'metrics.json'}")
    return 0


def _export(args: argparse.Namespace) -> int:
    import torch

    from caption.api import resolve_model
    from caption.models.io import is_model_dir, load_model, read_pointer, save_model
    from caption.settings import decoding_settings
    from caption.utils.io import atomic_replace_dir

    source = resolve_model(args.source)
    out = Path(args.out)
    _check_export_target(Path(args.source), source, out, args.force)
    from_run = Path(args.source).is_dir() and not is_model_dir(args.source)
    if from_run and read_pointer(args.source, "best") is None:
        logger.warning("%s has no best checkpoint (no validation has run): exporting its latest, %s",
                       args.source, source)
    model, vocab, meta = load_model(source)
    extra = {k: v for k, v in meta.items() if k not in ("format", "encoder", "decoder", "vocab_size",
                                                          "feature_dim", "encoder_weights_included")}
    chosen = {k: v for k, v in _decoding_values(args).items() if v is not None}
    if chosen:
        decoding_settings(DecodingConfig(), chosen)  # refuses a bad value before anything is written
        extra["decoding"] = {**extra.get("decoding", {}), **chosen}
    dtype = torch.float16 if args.fp16 else None
    # Built beside the target and swapped in whole: an existing model (--force) is replaced, never mixed.
    atomic_replace_dir(lambda staging: save_model(model, vocab, staging, dtype=dtype, extra=extra), out)
    print(f"exported {source} -> {out}")
    return 0


def _check_export_target(given: Path, source: Path, out: Path, force: bool) -> None:
    """Refuse to export onto what is being exported (a run's own folders), onto a folder of other files, or
    onto a model without ``--force``."""
    from caption.models.io import is_model_dir

    own = {source.resolve(), given.resolve()}
    if out.resolve() in own or any(folder in out.resolve().parents for folder in own):
        raise ValueError(f"caption export: {out} is, or is inside, what is exported ({source}): export to a "
                         "new folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not is_model_dir(out):
            raise ValueError(f"caption export: {out} already exists and holds other files: give a new folder "
                             "(only a model folder is ever replaced, with --force)")
        if not force:
            raise ValueError(f"caption export: {out} already holds a model: add --force to replace it, or "
                             "give a new folder")


def _plot(args: argparse.Namespace) -> int:
    from caption.training.curves import plot_runs, read_run

    runs = [read_run(run) for run in args.runs]
    plot_runs(runs, args.out, tuple(args.metrics))
    print(f"plotted {len(runs)} run(s) -> {args.out}")
    return 0


def _decoding_arguments(parser: argparse.ArgumentParser, default_note: str) -> None:
    """An option per public decoding setting (``--beam-size`` for ``DecodingConfig.beam_size``), unset (None)
    unless given; ``default_note`` ends each help text (``{default}``: the setting's own default)."""
    for f in DecodingConfig.public_fields():
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=int if f.metadata["whole"] else float,
                            help=f"{f.metadata['help']} {default_note.format(default=f.default)}")


def _decoding_values(args: argparse.Namespace) -> dict[str, int | float | None]:
    """The public decoding settings as the command line gave them (None: not given)."""
    return {f.name: getattr(args, f.name) for f in DecodingConfig.public_fields()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="caption", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    prepare = commands.add_parser("prepare",
                                  help="convert a data set to COCO caption JSON, one file per split")
    prepare.add_argument("source", choices=["table", "flickr8k", "karpathy", "msvd", "msrvtt"])
    prepare.add_argument("input",
                         help="table: a .csv, .tsv, .jsonl or .parquet of images and captions, or an "
                              "imagefolder (images + metadata.jsonl/.csv); flickr8k: the folder with "
                              "Flickr8k.token.txt; karpathy: dataset_*.json; msvd: the folder with the "
                              "mapping and sents_* files, or the corpus CSV; msrvtt: the folder with "
                              "*videodatainfo.json, or one such file")
    prepare.add_argument("--images", help="table: the folder image names are relative to (default: the "
                                          "table's)")
    prepare.add_argument("--image-column", help="table: the column naming the image (default: guessed: "
                                                "image, file_name, path, ...)")
    prepare.add_argument("--caption-column", help="table: the caption column, a text or a list of texts "
                                                  "(default: guessed: caption, captions, text, ...)")
    prepare.add_argument("--split-column", help="table: the split of each row (default: a 'split' column if "
                                                "there is one, else --dev-fraction)")
    prepare.add_argument("--dev-fraction", type=float, default=0.1,
                         help="table without a split column: the share of images (never of captions) for dev")
    prepare.add_argument("--seed", type=int, default=0, help="table: the seed of that split")
    prepare.add_argument("--images-out", help="table: write images stored in the table (Parquet from the "
                                              "Hub) to this folder")
    prepare.add_argument("--mapping",
                         help="msvd: youtube_video_to_id_mapping.txt (default: in the input folder)")
    prepare.add_argument("--videos", help="msvd: the clips folder, to name each clip's actual file")
    prepare.add_argument("--out", required=True, help="folder for captions_<split>.json")
    prepare.add_argument("--keep-restval", action="store_true",
                         help="karpathy: keep COCO's restval split apart")
    prepare.set_defaults(run=_prepare)

    train = commands.add_parser("train", help="train a model from a YAML config")
    train.add_argument("--config", required=True, help="a YAML file in configs/")
    train.add_argument("--resume", action="store_true", help="continue the run in train.output_dir")
    train.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.lr=3e-4")
    train.set_defaults(run=_train)

    def decoding_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", default=DEFAULT_MODEL,
                       help="model directory, training run, or shipped name")
        _decoding_arguments(p, "(default: the model's, else {default})")
        p.add_argument("--batch-size", type=int, default=16)
        p.add_argument("--workers", type=int,
                       help="image-decoding worker processes (default: 2 on a GPU, 0 on a CPU)")
        p.add_argument("--device", default="auto")
        p.add_argument("--precision", choices=PRECISIONS, default="auto",
                       help="auto: bf16 on a GPU, fp32 on a CPU; bf16 on a CPU is about 1.3x faster where "
                            "it is native (AMX) but changes about a quarter of the captions")

    predict = commands.add_parser("predict", help="caption images and videos")
    predict.add_argument("images", nargs="+", help="image files, and videos (mp4, avi, webm, mov, mkv)")
    decoding_options(predict)
    predict.add_argument("--format", choices=["text", "json", "vtt", "srt"], default="text",
                         help="vtt, srt: subtitles for one video, a cue per scene")
    predict.add_argument("--scenes", action="store_true", help="one video: a caption per scene")
    predict.add_argument("--frames", type=int, help="videos: frames to sample (default: the model's, 8)")
    predict.add_argument("--every", type=float, metavar="SECONDS",
                         help="videos: one frame every SECONDS instead")
    predict.add_argument("--attention", action="store_true", help="json: include the attention maps")
    predict.set_defaults(run=_predict)

    batch = commands.add_parser(
        "batch", help="caption many files into JSONL, CSV or COCO results JSON (resumable)",
        description="Caption folders (recursively), globs, files and file lists. Re-running with the same "
                    "--out skips what it already holds; unreadable files are reported in it, never fatal.")
    batch.add_argument("inputs", nargs="*",
                       help="image and video files, folders, or globs such as 'photos/**/*.jpg'")
    batch.add_argument("--file-list", action="append", default=[], metavar="FILE",
                       help="one path per line, or a .csv/.parquet listing with a 'path' column "
                            "(may be repeated)")
    batch.add_argument("--out", required=True, help="results file: .jsonl, .csv or .json (COCO results)")
    batch.add_argument("--format", choices=["jsonl", "csv", "coco"], help="default: from the --out extension")
    batch.add_argument("--annotations", help="coco: take image ids from this COCO caption JSON")
    batch.add_argument("--no-progress", action="store_true", help="no progress bar")
    batch.add_argument("--engine", choices=["local", "ray"], default="local",
                       help="ray: on a Ray cluster through Ray Data (pip install 'caption[ray]')")
    batch.add_argument("--address", help="ray: the cluster, 'auto' or HOST:PORT (default: start a local one)")
    batch.add_argument("--actors", type=int, default=1, help="ray: captioning actors, one model each")
    batch.add_argument("--gpus-per-actor", type=float, default=0.0, help="ray: GPUs per actor (0: on CPUs)")
    batch.add_argument("--cpus-per-actor", type=float, default=1.0,
                       help="ray: CPUs per actor (its torch threads)")
    batch.add_argument("--block-size", type=int, default=256,
                       help="ray: files per block, the unit of work, retry and resume")
    batch.add_argument("--startup-timeout", type=float, default=300.0,
                       help="ray: seconds to wait for every actor to be placed and load its model")
    decoding_options(batch)
    batch.set_defaults(run=_batch, batch_size=32)

    evaluate = commands.add_parser("evaluate", help="COCO caption metrics for a model or a results file")
    evaluate.add_argument("--annotations", help="COCO caption JSON with the references")
    evaluate.add_argument("--images", help="image folder: caption it with --model")
    evaluate.add_argument("--split", nargs=3, action="append", default=[],
                          metavar=("NAME", "ANNOTATIONS", "IMAGES"),
                          help="a split to caption and score on its own (may be repeated; --out NAME/ "
                               "holds each)")
    evaluate.add_argument("--config", help="a training config: caption and score each of its data.val splits")
    evaluate.add_argument("--results", help="a COCO results JSON to score instead")
    evaluate.add_argument("--out", default="eval", help="folder for results.json and metrics.json")
    evaluate.add_argument("--metrics", nargs="+", choices=METRIC_NAMES, default=list(METRIC_NAMES))
    evaluate.add_argument("--max-images", type=int, default=0, help="score only the first N images (0: all)")
    decoding_options(evaluate)
    evaluate.set_defaults(run=_evaluate)

    export = commands.add_parser("export", help="copy a run's best model into a standalone model directory")
    export.add_argument("source", help="training run or model directory")
    export.add_argument("out")
    export.add_argument("--fp16", action="store_true", help="store weights in half precision")
    _decoding_arguments(export, "(recorded as the model's default)")
    export.add_argument("--force", action="store_true", help="replace OUT if it already holds a model")
    export.set_defaults(run=_export)

    plot = commands.add_parser("plot",
                               help="training curves of one or more runs, overlaid, as a PNG (matplotlib)")
    plot.add_argument("runs", nargs="+", metavar="RUN", help="training run directories (train.output_dir)")
    plot.add_argument("--out", default="curves.png", help="image file (.png, .svg or .pdf)")
    plot.add_argument("--metrics", nargs="+", default=["CIDEr", "Bleu_4"],
                      help="dev scores to draw per epoch (names as in log.jsonl: CIDEr, Bleu_4, METEOR, "
                           "ROUGE_L)")
    plot.set_defaults(run=_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may come before or after --resume: argparse stops collecting positionals at an option.
    if args.command == "train" and all("=" in item and not item.startswith("-") for item in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "batch" and not (args.inputs or args.file_list):
        parser.error("batch: name image files, folders or globs, or give --file-list")
    setup_logging()
    from caption.config import ConfigError
    from caption.errors import EngineError, ImageLoadError
    from caption.evaluation.metrics import MetricError

    try:
        return args.run(args)
    except (ConfigError, EngineError, MetricError, ImageLoadError, ImportError, OSError, ValueError) as err:
        logger.error("%s", err)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
