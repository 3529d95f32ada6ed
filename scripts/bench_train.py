"""Decoder-training throughput: cached features (ours) against re-encoding every image for every
caption (the reference tutorial's way), and self-critical training (SCST) against cross-entropy on the
same model and images; measured in the same run, each case in its own process.

    python scripts/bench_train.py [--steps 15] [--device auto]

Captions are the real Flickr8k train captions ($CAPTION_DATA, default ../shared/data) and the baseline
reads the real photos; the cached case reads an fp16 memory-mapped feature file, as training does.
The SCST rows and their cross-entropy reference fine-tune the shipped model on real features of 256
train photos (a trained model samples captions of realistic length; a fresh one rambles to max length).
The fine-tuning rows train the decoder together with the last k encoder stages (encoder.finetune_stages)
on real photos read and resized in the loop, against the frozen encoder's cached features, for Lite0 and
Lite2 at their native sizes, and give the minutes an epoch of Flickr8k (6,000 photos) would take.
On CUDA it adds bf16 and fp16 mixed precision and a larger batch.

    python scripts/bench_train.py --tables finetune --steps 6     # one table only
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import DATA, REPO, machine, parse_bench_args, peak_memory_mb, print_table, run_isolated  # noqa: E402

from caption.config import LITE_PACKAGES, EncoderConfig, ScstConfig  # noqa: E402
from caption.data.coco import read_caption_set  # noqa: E402
from caption.data.convert import convert_flickr8k  # noqa: E402
from caption.data.datasets import collate_items, image_captions  # noqa: E402
from caption.data.images import ImageTransform  # noqa: E402
from caption.data.vocab import Vocabulary  # noqa: E402
from caption.features.batching import iter_image_batches  # noqa: E402
from caption.features.encoder import ImageEncoder  # noqa: E402
from caption.models.captioner import CaptionModel  # noqa: E402
from caption.models.io import load_model  # noqa: E402
from caption.models.sat import AttentionLSTMDecoder, SatConfig  # noqa: E402
from caption.training.losses import caption_loss  # noqa: E402
from caption.training.scst import SelfCritical  # noqa: E402

REFERENCE_CAPTIONS_PER_S = 8.4  # ../shared/ANCHORS.md: the tutorial implementation on this machine kind
CASES = {
    # name: (cached features?, images per batch or captions per batch for the baseline, precision)
    "baseline: re-encode per caption, batch 32 captions": ("baseline", 32, "fp32"),
    "ours: cached features, 16 images (~80 captions)": ("cached", 16, "fp32"),
    "ours: cached features, 16 images, bf16 autocast": ("cached", 16, "bf16"),
    "ours: cached features, 16 images, fp16 + grad scaler": ("cached", 16, "fp16"),
    "ours: cached features, 64 images, bf16 autocast": ("cached", 64, "bf16"),
}
# Fine-tuning the shipped model on real features: cross-entropy (the reference row) against SCST.
SCST_CASES = {
    "shipped model, cross-entropy, 16 images": ("xent", 16, "fp32"),
    "shipped model, SCST 5 samples, mean baseline, 16 images": ("mean", 16, "fp32"),
    "shipped model, SCST 5 samples, greedy baseline, 16 images": ("greedy", 16, "fp32"),
    "shipped model, SCST 5 samples, mean baseline, 64 images, bf16": ("mean", 64, "bf16"),
}

# Training the decoder with the last k encoder stages (0: frozen, from cached features), 16 photos a step.
FINETUNE_CASES = {
    "Lite0 224 px, frozen: cached features": ("efficientnet_lite0", 224, 7, 0),
    "Lite0 224 px, last stage fine-tuned": ("efficientnet_lite0", 224, 7, 1),
    "Lite2 260 px, frozen: cached features": ("efficientnet_lite2", 260, 9, 0),
    "Lite2 260 px, last stage fine-tuned": ("efficientnet_lite2", 260, 9, 1),
    "Lite2 260 px, last 2 stages fine-tuned": ("efficientnet_lite2", 260, 9, 2),
    "Lite2 260 px, last 3 stages fine-tuned": ("efficientnet_lite2", 260, 9, 3),
}
FLICKR8K_TRAIN_PHOTOS = 6000


def load_items(limit: int = 2000):
    """Real Flickr8k train images and captions (the first ``limit`` images)."""
    root = DATA / "flickr8k"
    with tempfile.TemporaryDirectory() as tmp:
        written = convert_flickr8k(root / "Flickr8k.token.txt", {"train": root / "Flickr_8k.trainImages.txt"},
                                   tmp)
        split = read_caption_set(written["train"], root / "images")
    split = split.subset(list(range(min(limit, len(split)))))
    vocab = Vocabulary.build(split.all_captions(), min_count=5)
    items = [(i, [vocab.encode(t) for t in split.captions[image_id]])
             for i, image_id in enumerate(split.image_ids)]
    return split, vocab, items


def run_case(name: str, steps: int, device: torch.device) -> dict:
    mode, batch, precision = CASES[name]
    torch.manual_seed(0)
    split, vocab, items = load_items()
    encoder = ImageEncoder(EncoderConfig()).to(device).eval()
    decoder = AttentionLSTMDecoder(len(vocab), encoder.feature_dim, SatConfig()).to(device).train()
    # A bare decoder, as the tutorial trains it: no CaptionModel here, so no CaptionModel.parameter_groups.
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=4e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
    rng = np.random.default_rng(0)

    if mode == "cached":
        # An fp16 memory-mapped feature file, read row by row as the training dataset does.
        handle = tempfile.NamedTemporaryFile(suffix=".npy")  # noqa: SIM115 - lives as long as the case
        features = np.lib.format.open_memmap(handle.name, mode="w+", dtype=np.float16,
                                             shape=(len(split), encoder.num_positions, encoder.feature_dim))
        for row in range(len(features)):  # row by row: no full-size float32 temporary
            features[row] = rng.random(features.shape[1:], dtype=np.float32)

        def next_batch():
            rows = rng.choice(len(items), size=batch, replace=False)
            loaded = [(torch.from_numpy(np.asarray(features[items[r][0]], dtype=np.float32)), items[r][1])
                      for r in rows]
            memory, captions, index = collate_items(loaded)
            return memory.to(device), captions.to(device), index.to(device)
    else:
        transform = ImageTransform(224, encoder.cfg.mean, encoder.cfg.std)
        pairs = [(i, caption) for i, captions in items for caption in captions]

        def next_batch():
            chosen = [pairs[k] for k in rng.choice(len(pairs), size=batch, replace=False)]
            images = torch.stack([transform.load(split.path(i)) for i, _ in chosen]).to(device)
            with torch.no_grad(), autocast:
                memory = encoder(images).float()  # every caption pays for its image again
            _, captions, index = collate_items([(m, [c]) for m, (_, c) in zip(memory.cpu(), chosen)])
            return memory, captions.to(device), index.to(device)

    def step() -> int:
        memory, captions, index = next_batch()
        with autocast:
            logits, alphas = decoder(memory, captions, item_index=index)
        loss, _ = caption_loss(logits, alphas, captions)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(decoder.parameters(), 5.0)
        scaler.step(optimizer)
        scaler.update()
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"loss became {loss.item()}")
        return captions.shape[0]

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    captions = sum(step() for _ in range(steps))
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    return {"case": name, "captions_per_s": captions / elapsed, "peak_mb": peak_memory_mb(device),
            "steps": steps}


def run_scst_case(name: str, steps: int, device: torch.device) -> dict:
    objective, batch, precision = SCST_CASES[name]
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model, vocab, _ = load_model(REPO / "models" / "flickr8k-lite0", device)
    split, _, _ = load_items(256)
    items = image_captions(split, vocab)
    features = torch.cat([model.encode(images.to(device)).float().detach()
                          for _, images, _ in iter_image_batches(
                              [str(p) for p in split.paths()],
                              ImageTransform(224, model.encoder_cfg.mean, model.encoder_cfg.std),
                              device=device, batch_size=64)])
    dtype = {"bf16": torch.bfloat16}.get(precision)

    def autocast():
        return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    scst = SelfCritical(model, model, vocab,
                        ScstConfig(baseline=objective if objective != "xent" else "mean"),
                        [captions for _, captions in items], autocast)
    model.train(objective == "xent")  # as the trainer: SCST samples and re-scores without dropout
    # As the trainer: the memory positions and the decoder (the shipped encoder is frozen).
    optimizer = torch.optim.AdamW(model.parameter_groups(lr=5e-5, encoder_lr=5e-5), weight_decay=0)
    totals = {"reward_time_s": 0.0, "sampled": 0}

    def step() -> None:
        rows = rng.choice(len(items), size=batch, replace=False)
        inputs, captions, index = collate_items([(features[items[r][0]], items[r][1]) for r in rows])
        inputs, captions, index = inputs.to(device), captions.to(device), index.to(device)
        if objective == "xent":
            with autocast():
                logits, alphas = model(inputs, captions, index)
            loss, _ = caption_loss(logits, alphas, captions)
        else:
            loss, stats = scst.loss(inputs, captions, index)
            totals["reward_time_s"] += stats.seconds["reward_time_s"]
            totals["sampled"] += stats.captions
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()

    for _ in range(3):
        step()
    totals.update(reward_time_s=0.0, sampled=0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    return {"case": name, "images_per_s": batch * steps / elapsed,
            "sampled_per_s": totals["sampled"] / elapsed if totals["sampled"] else "-",
            "reward_share": f"{totals['reward_time_s'] / elapsed:.1%}" if totals["sampled"] else "-",
            "peak_mb": peak_memory_mb(device), "steps": steps}


def run_finetune_case(name: str, steps: int, device: torch.device) -> dict:
    encoder_name, size, grid, stages = FINETUNE_CASES[name]
    batch = 16
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    split, vocab, items = load_items(batch * (steps + 3))
    encoder_cfg = EncoderConfig(name=encoder_name, weights=LITE_PACKAGES[encoder_name], image_size=size,
                                grid_size=grid, finetune_stages=stages)
    model = CaptionModel(encoder_cfg, SatConfig(), len(vocab)).to(device).train()
    optimizer = torch.optim.AdamW(model.parameter_groups(lr=4e-4, encoder_lr=1e-4))
    transform = ImageTransform(size, model.encoder_cfg.mean, model.encoder_cfg.std)
    if not stages:  # what the feature cache holds: encoded once, before training
        with torch.no_grad():
            cached = torch.cat([model.encode(images.to(device)).float()
                                for _, images, _ in iter_image_batches([str(p) for p in split.paths()],
                                                                       transform, device=device,
                                                                       batch_size=32)])
    order = iter(rng.permutation(len(items)).reshape(-1, batch))

    def step() -> None:
        rows = next(order)
        if stages:
            inputs = [transform.load(split.path(items[r][0])) for r in rows]  # read and resized every epoch
        else:
            inputs = [cached[items[r][0]] for r in rows]
        inputs, captions, index = collate_items([(x, items[r][1]) for x, r in zip(inputs, rows)])
        logits, alphas = model(inputs.to(device), captions.to(device), index.to(device))
        loss, _ = caption_loss(logits, alphas, captions.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()

    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    images_per_s = batch * steps / elapsed
    return {"case": name, "images_per_s": images_per_s,
            "epoch_min": FLICKR8K_TRAIN_PHOTOS / images_per_s / 60,
            "trainable_m": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
            "peak_mb": peak_memory_mb(device), "steps": steps}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=15, help="timed optimizer steps per case")
    parser.add_argument("--tables", nargs="+", choices=["decoder", "scst", "finetune"],
                        default=["decoder", "scst", "finetune"])
    args, device = parse_bench_args(parser)
    if args.case:
        runner = (run_scst_case if args.case in SCST_CASES else
                  run_finetune_case if args.case in FINETUNE_CASES else run_case)
        print(json.dumps(runner(args.case, args.steps, device)))
        return 0
    if not (DATA / "flickr8k" / "Flickr8k.token.txt").is_file():
        print(f"needs the Flickr8k captions and photos under {DATA}/flickr8k (set CAPTION_DATA)",
              file=sys.stderr)
        return 2
    def run_all(names: list[str]) -> list[dict]:
        return [run_isolated(__file__, name, ["--steps", str(args.steps), "--device", str(device)])
                for name in names]

    if "decoder" in args.tables:
        rows = run_all([n for n, (_, _, precision) in CASES.items()
                        if device.type == "cuda" or precision == "fp32"])
        base = rows[0]["captions_per_s"]
        for row in rows:
            row["vs_baseline"] = f"{row['captions_per_s'] / base:.1f}x"
            row["vs_reference"] = (f"{row['captions_per_s'] / REFERENCE_CAPTIONS_PER_S:.1f}x"
                                   if device.type == "cpu" else "-")
        print_table(
            f"Decoder training throughput on {device} ({machine()}); reference = the tutorial's "
            f"{REFERENCE_CAPTIONS_PER_S} captions/s from ANCHORS.md",
            rows, [("case", "case"), ("captions/s", "captions_per_s"), ("peak memory MB", "peak_mb"),
                   ("vs baseline", "vs_baseline"), ("vs reference", "vs_reference")],
        )
    if "scst" in args.tables:
        rows = run_all([n for n, (_, _, precision) in SCST_CASES.items()
                        if device.type == "cuda" or precision == "fp32"])
        base = rows[0]["images_per_s"]
        for row in rows:
            row["vs_xent"] = f"{row['images_per_s'] / base:.2f}x"
        print_table(
            f"Self-critical training against cross-entropy on {device} ({machine()}): "
            "the shipped model, real features; SCST samples 5 captions per image (max 16 words) "
            "and re-scores them with teacher forcing",
            rows, [("case", "case"), ("images/s", "images_per_s"), ("captions sampled/s", "sampled_per_s"),
                   ("reward time share", "reward_share"), ("peak memory MB", "peak_mb"),
                   ("vs cross-entropy", "vs_xent")],
        )
    if "finetune" in args.tables:
        rows = run_all(list(FINETUNE_CASES))
        for row in rows:
            frozen = next(r for r in rows if r["case"].split(",")[0] == row["case"].split(",")[0])
            row["vs_frozen"] = f"{row['images_per_s'] / frozen['images_per_s']:.2f}x"
        print_table(
            f"Fine-tuning the last encoder stages on {device} ({machine()}): "
            "16 real photos (80 captions) a step, "
            f"decoder 512; an epoch is the {FLICKR8K_TRAIN_PHOTOS:,} Flickr8k train photos",
            rows, [("case", "case"), ("photos/s", "images_per_s"), ("minutes per epoch", "epoch_min"),
                   ("trainable M params", "trainable_m"), ("peak memory MB", "peak_mb"),
                   ("vs frozen", "vs_frozen")],
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
