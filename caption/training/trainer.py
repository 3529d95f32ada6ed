"""The training loop: cross-entropy or self-critical (SCST) objectives, AdamW with warm-up and cosine
decay, gradient clipping, mixed precision on GPU, DistributedDataParallel under torchrun, resumable
checkpoints, and validation by caption metrics."""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import ConcatDataset, DataLoader
from tqdm import tqdm

from caption.api import resolve_model
from caption.config import Config, ConfigError, DataSetConfig, config_from_dict
from caption.data.coco import CaptionSet, read_caption_set
from caption.data.datasets import (
    FeatureCaptionDataset,
    ImageCaptionDataset,
    ResumableDistributedSampler,
    WeightedSetSampler,
    collate_items,
    image_captions,
)
from caption.data.images import ImageTransform
from caption.data.video import VideoTransform, is_video
from caption.data.vocab import Vocabulary
from caption.decoding.predictor import Predictor
from caption.evaluation.evaluate import predict_split, results_list, split_report
from caption.evaluation.metrics import check_java, spice_unavailable_reason
from caption.features.batching import default_num_workers
from caption.features.cache import CachedFeatures, FeatureCache
from caption.models.captioner import CaptionModel
from caption.models.io import CONFIG_FILE, VOCAB_FILE, load_weights
from caption.training import checkpoint as ckpt
from caption.training.distributed import DistInfo, barrier, cleanup, setup_distributed
from caption.training.losses import caption_loss
from caption.training.scst import SelfCritical
from caption.training.stats import EpochStats, StepStats
from caption.utils.io import atomic_write_json, atomic_write_text, read_json
from caption.utils.logging import logger
from caption.utils.runtime import peak_memory_mb

# What must match between a run and its resumption: the data, the model, and what fixes the order of
# the samples. The rest (epochs, learning rate, validation) may change.
FIXED_ON_RESUME = {"data": None, "encoder": None, "decoder": None, "train": ("batch_size", "seed")}
# Encoder fields resolved from the weights when the run started: left unset now means "as before".
RESOLVED_ENCODER_FIELDS = {"mean": [], "std": [], "bn_eps": 0.0}


@dataclass
class Precision:
    autocast_dtype: torch.dtype | None
    use_scaler: bool

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype]


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """GPU: bf16 autocast where supported, else fp16 with a gradient scaler.
    CPU: fp32 (bf16 is slow there)."""
    if device.type != "cuda":
        if requested in ("bf16", "fp16"):
            logger.warning("train.precision=%s ignored on CPU: training in fp32", requested)
        return Precision(None, False)
    if requested == "auto":
        requested = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if requested == "bf16":
        return Precision(torch.bfloat16, False)
    if requested == "fp16":
        return Precision(torch.float16, True)
    return Precision(None, False)


def lr_lambda(warmup_steps: int, total_steps: int, schedule: str, min_ratio: float):
    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _check_same_config(saved: dict[str, Any], current: dict[str, Any], fields: dict[str, Any],
                       message: Callable[[str, str, Any, Any], str], ignore: tuple[str, ...] = ()) -> None:
    """Raise ``ConfigError(message(section, key, saved value, current value))`` at the first of ``fields``
    (section: its keys, None for all) where the two config dicts differ. Skipped: the ``ignore``d
    "section.key"s, encoder fields left unset (resolved from the weights as before), keys ``saved`` lacks."""
    for section, keys in fields.items():
        for key in keys or current[section]:
            value = current[section][key]
            resolved = section == "encoder" and key in RESOLVED_ENCODER_FIELDS
            if f"{section}.{key}" in ignore or (resolved and value == RESOLVED_ENCODER_FIELDS[key]):
                continue
            before = saved.get(section, {}).get(key, value)
            if before != value:
                raise ConfigError(message(section, key, before, value))


def _check_init_model(directory: Path, config: Config) -> None:
    """The model to start from must have the architecture the config asks for (its encoder.finetune_stages
    may differ)."""
    _check_same_config(
        read_json(directory / CONFIG_FILE, "model config"), config.to_dict(),
        {"encoder": None, "decoder": None},
        lambda section, key, saved, value: (
            f"train.init_from={directory}: its {section}.{key} is {saved!r} but this config says {value!r}; "
            f"set {section}.{key}={saved!r} to start from that model"),
        ignore=("encoder.finetune_stages",),
    )


def _check_one_kind(items: list[DataSetConfig], splits: list[CaptionSet]) -> None:
    """Image sets and video sets cannot be mixed: a model encodes either one image or a video's frames."""
    kinds = {item.name: is_video(split.file_names[0]) for item, split in zip(items, splits)}
    if len(set(kinds.values())) > 1:
        videos = [name for name, video in kinds.items() if video]
        images = [name for name, video in kinds.items() if not video]
        raise ConfigError(f"data.train mixes video sets ({', '.join(videos)}) "
                          f"with image sets ({', '.join(images)}): "
                          "train a video model and an image model in separate runs")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _gather_rng(info: DistInfo) -> list[dict[str, Any]]:
    state = ckpt.rng_state()
    if not info.enabled:
        return [state]
    states: list[Any] = [None] * info.world_size
    dist.all_gather_object(states, state)
    return states


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _check_resume_config(run_dir: Path, config: Config) -> None:
    saved_file = run_dir / "config.yaml"
    if not saved_file.is_file():
        return
    saved = config_from_dict(yaml.safe_load(saved_file.read_text(encoding="utf-8"))).to_dict()
    _check_same_config(
        saved, config.to_dict(), FIXED_ON_RESUME,
        lambda section, key, before, value: (
            f"cannot resume {run_dir}: {section}.{key} is {value!r} now but was {before!r}; "
            "resume with the run's own config.yaml or start a new output_dir"),
    )


def _check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=run_dir).close()
    except OSError as err:
        raise ConfigError(f"train.output_dir {run_dir} cannot be written ({err.strerror}): choose a folder "
                          "you can write to") from None


class Trainer:
    def __init__(self, config: Config, resume: bool = False):
        self.config = config
        self.info = setup_distributed()
        self.run_dir = Path(config.train.output_dir)
        self.resume_from = ckpt.read_pointer(self.run_dir, "latest") if resume else None
        if resume and self.resume_from is None:
            raise FileNotFoundError(f"--resume: no checkpoint to resume in {self.run_dir} (no latest.json)")
        if not resume and (self.run_dir / "latest.json").exists():
            raise ConfigError(f"{self.run_dir} already holds a training run: add --resume to continue it, "
                              "or set train.output_dir to a new folder")
        if self.resume_from is not None:
            _check_resume_config(self.run_dir, config)
        if config.val.every_epochs:
            check_java()  # fail now, not after the first epoch
            if "SPICE" in config.val.metrics and spice_unavailable_reason():
                if config.val.select_metric == "SPICE":
                    raise ConfigError(f"val.select_metric is SPICE, but {spice_unavailable_reason()}")
                logger.warning("%s (validation goes on without it)", spice_unavailable_reason())

        if self.info.is_main:
            _check_writable(self.run_dir)  # now, not after the feature cache has been built
        if config.train.objective == "scst" and not config.train.init_from and self.resume_from is None:
            logger.warning("train.objective=scst without train.init_from: self-critical training starts from "
                           "random weights; it fine-tunes a cross-entropy model (set train.init_from to one)")
        _seed_everything(config.train.seed + self.info.rank)
        self.device = self.info.device
        self.precision = resolve_precision(config.train.precision, self.device)
        # In this order: creating the model draws from the global RNG (and a resumed run must draw as before).
        self._read_train_sets()
        self._build_vocab()
        self._read_val_sets()
        self._build_model()
        self._build_datasets()
        self._build_loader()
        self._build_optimizer()
        self._build_objective()
        self.progress = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_score": None}
        if self.resume_from is not None:
            self._restore(self.resume_from)

    # ----------------------------------------------------------------------------------------- set-up
    def _read_train_sets(self) -> None:
        """The training caption sets (data.train), all of images or all of videos."""
        self.train_cfgs = self.config.data.train_sets()
        self.train_sets = [read_caption_set(item.annotations, item.images) for item in self.train_cfgs]
        _check_one_kind(self.train_cfgs, self.train_sets)

    def _build_vocab(self) -> None:
        """The vocabulary: the resumed run's, the train.init_from model's, or one built from the captions."""
        cfg = self.config
        self.init_from = None
        if cfg.train.init_from and self.resume_from is None:
            self.init_from = resolve_model(cfg.train.init_from)  # a run, a model folder or a shipped name
            _check_init_model(self.init_from, cfg)
        if self.resume_from is not None:
            self.vocab = Vocabulary.load(self.resume_from / VOCAB_FILE)
        elif self.init_from is not None:
            self.vocab = Vocabulary.load(self.init_from / VOCAB_FILE)
            if cfg.data.vocab == "extend":
                known = len(self.vocab)
                self.vocab = self.vocab.extended(self._train_texts(), cfg.data.min_word_count)
                added = self.vocab.words[known:]
                listed = ", ".join(added[:12]) + (", ..." if len(added) > 12 else "")
                logger.info("vocabulary: the %d words of %s, and %d new ones seen %d times or more (%s)",
                            known, self.init_from, len(added), cfg.data.min_word_count, listed or "none")
        else:  # one vocabulary over the union: min_word_count counts a word over every set's captions
            self.vocab = Vocabulary.build(self._train_texts(), cfg.data.min_word_count,
                                          cfg.data.max_caption_length)

    def _train_texts(self) -> list[str]:
        return [text for split in self.train_sets for text in split.all_captions()]

    def _read_val_sets(self) -> None:
        """The dev splits to validate on (data.val), cut to data.max_val_images; none if validation is off."""
        cfg = self.config
        self.val_cfgs = cfg.data.val_sets() if cfg.val.every_epochs else []
        self.val_sets: dict[str, CaptionSet] = {}
        if cfg.val.every_epochs and not self.val_cfgs:
            raise ConfigError("config field 'data.val_annotations' is empty but validation is on "
                              "(val.every_epochs > 0): name a dev split there, or several as data.val")
        for item in self.val_cfgs:
            split = read_caption_set(item.annotations, item.images or self.train_cfgs[0].images)
            if cfg.data.max_val_images and cfg.data.max_val_images < len(split):
                split = split.subset(list(range(cfg.data.max_val_images)))
            self.val_sets[item.name] = split

    def _build_model(self) -> None:
        """The model on its device, with the train.init_from model's weights if there is one."""
        cfg = self.config
        self.model = CaptionModel(cfg.encoder, cfg.decoder, len(self.vocab)).to(self.device)
        if self.init_from is not None:
            load_weights(self.model, self.init_from, grow_vocab=cfg.data.vocab == "extend")
            logger.info("starting from the weights of %s", self.init_from)

    def _encode_features(self) -> dict[tuple[str, Any], CachedFeatures | None]:
        """Every train and val split's features from the frozen encoder, through the feature cache."""
        cfg, info = self.config, self.info
        cache = FeatureCache(cfg.train.cache_dir, self.model.encoder, frames=cfg.data.num_frames)
        splits = {("train", i): split for i, split in enumerate(self.train_sets)}
        splits.update({("val", name): split for name, split in self.val_sets.items()})
        paths = {key: [str(p) for p in split.paths()] for key, split in splits.items()}
        built: dict[tuple[str, Any], CachedFeatures | None] = {}
        if info.is_main:  # rank 0 encodes while the others wait at the barrier, then they read its files
            built = {key: cache.get_or_build(files, device=self.device, batch_size=cfg.val.batch_size,
                                             num_workers=cfg.train.num_workers)
                     for key, files in paths.items()}
        barrier(info)
        if not info.is_main:
            built = {key: cache.load(files) for key, files in paths.items()}
        if any(built[("train", i)] is None for i in range(len(self.train_sets))):
            raise FileNotFoundError(
                f"rank {info.rank} cannot read the feature cache that rank 0 built in {cache.dir}: "
                "on several nodes, train.cache_dir and the images must be on a file system "
                "that every node shares"
            )
        return built

    def _build_datasets(self) -> None:
        """The training datasets: rows of the feature cache when the encoder is frozen, else the images."""
        cfg = self.config
        self.use_cache = cfg.train.cache_features and self.model.encoder.frozen
        self.val_features: dict[str, CachedFeatures | None] = {}
        self.train_datasets: list[FeatureCaptionDataset | ImageCaptionDataset] = []
        if self.use_cache:
            built = self._encode_features()
            self.val_features = {name: built[("val", name)] for name in self.val_sets}
            for i, split in enumerate(self.train_sets):
                features = built[("train", i)]
                self.train_datasets.append(FeatureCaptionDataset(
                    features.features, image_captions(split, self.vocab, features.valid)))
        else:
            encoder_cfg = self.model.encoder_cfg
            transform = ImageTransform(cfg.encoder.image_size, encoder_cfg.mean, encoder_cfg.std)
            if cfg.data.num_frames:
                transform = VideoTransform(transform, cfg.data.num_frames)
            self.train_datasets = [ImageCaptionDataset(split, image_captions(split, self.vocab), transform)
                                   for split in self.train_sets]
        self.train_data = ConcatDataset(self.train_datasets)
        if len(self.train_data) == 0:
            raise ValueError(f"{', '.join(item.annotations for item in self.train_cfgs)}: no training images "
                             "left after skipping unreadable ones")

    def _build_loader(self) -> None:
        """The resumable sampler (mixing the sets by weight), the loader and the number of steps."""
        cfg, info = self.config, self.info
        if len(self.train_cfgs) == 1 and self.train_cfgs[0].weight == 1.0:  # the order before data mixing
            self.sampler = ResumableDistributedSampler(
                self.train_data, num_replicas=info.world_size, rank=info.rank, seed=cfg.train.seed
            )
        else:
            self.sampler = WeightedSetSampler(
                [len(data) for data in self.train_datasets], [item.weight for item in self.train_cfgs],
                num_replicas=info.world_size, rank=info.rank, seed=cfg.train.seed,
            )
        workers = default_num_workers(self.device) if cfg.train.num_workers is None else cfg.train.num_workers
        if self.use_cache:  # rows come straight from the page cache; worker start-up costs more than it saves
            workers = 0
        self.loader = DataLoader(
            self.train_data, batch_size=cfg.train.batch_size, sampler=self.sampler, num_workers=workers,
            collate_fn=collate_items, pin_memory=self.device.type == "cuda", persistent_workers=False,
            generator=torch.Generator(),  # iterating must not draw from the global RNG
        )
        self.steps_per_epoch = math.ceil(self.sampler.num_samples / cfg.train.batch_size)
        self.total_steps = cfg.train.epochs * self.steps_per_epoch
        if cfg.train.max_steps:
            self.total_steps = min(self.total_steps, cfg.train.max_steps)

    def _build_optimizer(self) -> None:
        """AdamW over the model's parameter groups, its warm-up and decay schedule, fp16's gradient scaler."""
        cfg = self.config.train
        self.optimizer = torch.optim.AdamW(self.model.parameter_groups(cfg.lr, cfg.encoder_lr),
                                           weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(cfg.warmup_steps, self.total_steps, cfg.schedule, cfg.min_lr_ratio),
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision.use_scaler)

    def _build_objective(self) -> None:
        """What the gradient flows through (the model, or its DDP wrapper under torchrun), and SCST's loss."""
        cfg = self.config
        self.forward: nn.Module = self.model
        if self.info.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward = DistributedDataParallel(self.model, device_ids=device_ids)
        self.scst = None
        if cfg.train.objective == "scst":
            references = [captions for data in self.train_datasets for _, captions in data.items]
            self.scst = SelfCritical(self.model, self.forward, self.vocab, cfg.scst, references,
                                     self._autocast)

    def _restore(self, checkpoint: Path) -> None:
        load_weights(self.model, checkpoint)
        state = ckpt.load_trainer_state(checkpoint)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        if len(rng) == self.info.world_size:
            ckpt.set_rng_state(rng[self.info.rank])
        elif state["progress"]["step_in_epoch"]:
            raise ConfigError(
                f"{checkpoint} was saved part-way into an epoch by {len(rng)} process(es); resume it with "
                f"{len(rng)} (not {self.info.world_size}), or from a checkpoint saved at the end of an epoch"
            )
        else:
            logger.warning("resuming with %d processes instead of %d: random streams are re-seeded",
                           self.info.world_size, len(rng))
            _seed_everything(self.config.train.seed + self.info.rank + state["progress"]["global_step"])
        self.progress = state["progress"]
        logger.info("resumed from %s at epoch %d, step %d", checkpoint, self.progress["epoch"] + 1,
                    self.progress["global_step"])

    # --------------------------------------------------------------------------------------- the loop
    def _save(self, best: dict[str, Any] | None = None) -> Path | None:
        rng = _gather_rng(self.info)  # a collective: every rank takes part
        if not self.info.is_main:
            return None
        name = f"epoch{self.progress['epoch']:03d}-step{self.progress['global_step']:08d}"
        target = ckpt.save_checkpoint(
            self.run_dir, name, model=self.model, vocab=self.vocab, optimizer=self.optimizer,
            scheduler=self.scheduler, scaler=self.scaler, progress=dict(self.progress), rng_states=rng,
            model_extra={"trained_on": [item.annotations for item in self.train_cfgs],
                         "progress": dict(self.progress)},
            best=best,
        )
        ckpt.prune_checkpoints(self.run_dir)
        return target

    def fit(self) -> dict[str, Any]:
        cfg, info = self.config, self.info
        if info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            # The encoder fields as the model resolved them from its weights (mean, std, bn_eps).
            resolved = replace(cfg, encoder=self.model.encoder_cfg)
            atomic_write_text(self.run_dir / "config.yaml", resolved.to_yaml())
            logger.info(
                "training on %s (%s, %d process%s): %d images, %d steps/epoch, %s",
                self.device, self.precision.name, info.world_size, "es" if info.enabled else "",
                len(self.train_data), self.steps_per_epoch,
                "cached features" if self.use_cache else "images through the encoder",
            )
        log_file = self.run_dir / "log.jsonl"
        record: dict[str, Any] = {}
        try:
            while self.progress["epoch"] < cfg.train.epochs and not self._out_of_steps():
                record = self._train_epoch()
                if self.progress["step_in_epoch"] < self.steps_per_epoch:  # stopped early by train.max_steps
                    self._save()
                    break
                epoch = self.progress["epoch"]
                best = None
                if cfg.val.every_epochs and (epoch + 1) % cfg.val.every_epochs == 0:
                    record["val"] = self._validate()
                    if record["val"]["is_best"]:
                        best = {"metric": cfg.val.select_metric, "score": self.progress["best_score"],
                                "epoch": epoch + 1}
                self.progress.update(epoch=epoch + 1, step_in_epoch=0)
                self._save(best)
                if info.is_main:
                    _append_jsonl(log_file, record)
            # Rank 0 may still be writing its last checkpoint and log: a rank that tears the gloo group down
            # before the others are done can abort ("terminate called without an active exception").
            barrier(info)
        finally:
            cleanup(info)
        return record

    def _training_mode(self) -> None:
        """Cross-entropy trains with dropout. SCST samples and re-scores in eval mode: the gradient is then
        exactly that of the sampled captions' log-probabilities under the policy used to caption."""
        self.model.train(self.scst is None)

    def _autocast(self):
        return (torch.autocast("cuda", dtype=self.precision.autocast_dtype)
                if self.precision.autocast_dtype else nullcontext())

    def _xent_loss(self, inputs: torch.Tensor, captions: torch.Tensor,
                   item_index: torch.Tensor) -> tuple[torch.Tensor, StepStats]:
        cfg = self.config.train
        with self._autocast():
            logits, alphas = self.forward(inputs, captions, item_index)  # (M, T, V), (M, T, N)
        loss, ce = caption_loss(logits, alphas, captions, pad_id=self.vocab.pad_id,
                                label_smoothing=cfg.label_smoothing, attention_reg=cfg.attention_reg)
        return loss, StepStats(captions.shape[0], means={"ce": ce.item()})

    def _all_ranks_have(self, batch) -> bool:
        """Whether every rank got a batch; DDP needs all ranks to step together or none."""
        have = batch is not None
        if self.info.enabled and not self.use_cache:  # cached features never fail to load
            flag = torch.tensor([int(have)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            have = bool(flag.item())
        return have

    def _out_of_steps(self) -> bool:
        return (bool(self.config.train.max_steps)
                and self.progress["global_step"] >= self.config.train.max_steps)

    def _train_epoch(self) -> dict[str, Any]:
        cfg, info = self.config, self.info
        epoch = self.progress["epoch"]
        self.sampler.set_epoch(epoch)
        self.sampler.set_start(self.progress["step_in_epoch"] * cfg.train.batch_size)
        self._training_mode()
        totals = EpochStats()
        window: dict[str, float] = {}  # sums over the steps since the last steps.jsonl line
        started = time.perf_counter()
        bar = tqdm(self.loader, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", unit="batch",
                   disable=not info.is_main, initial=self.progress["step_in_epoch"],
                   total=self.steps_per_epoch, dynamic_ncols=True)
        for batch in bar:
            if not self._all_ranks_have(batch):  # every image of a batch was unreadable (already reported)
                self.progress["step_in_epoch"] += 1
                continue
            # (B, N, C) features or (B, 3, S, S) images; (M, L) captions; (M,) image row of each caption
            inputs, captions, item_index = (t.to(self.device, non_blocking=True) for t in batch)
            if self.scst is None:
                loss, stats = self._xent_loss(inputs, captions, item_index)
            else:
                loss, stats = self.scst.loss(inputs, captions, item_index)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.train.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()

            self.progress["step_in_epoch"] += 1
            self.progress["global_step"] += 1
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise self._diverged(loss_value)
            totals.add(loss_value, stats)
            self._log_step(window, loss_value, stats)
            elapsed = time.perf_counter() - started
            reward = stats.means.get("reward")
            shown = {"loss": f"{loss_value:.3f}"} if reward is None else {"reward": f"{reward:.3f}"}
            bar.set_postfix(**shown, captions_s=f"{totals.captions_per_s(elapsed, info.world_size):.0f}")
            if cfg.train.save_every_steps and self.progress["global_step"] % cfg.train.save_every_steps == 0:
                self._save()
            if self._out_of_steps():
                break
        bar.close()
        elapsed = time.perf_counter() - started
        return {
            "epoch": epoch + 1,
            "global_step": self.progress["global_step"],
            "objective": cfg.train.objective,
            **totals.means(),  # train_loss, train_ce or train_reward, train_baseline, ...
            "lr": self.scheduler.get_last_lr()[0],
            "captions_per_s": totals.captions_per_s(elapsed, info.world_size),
            **totals.time_shares(elapsed),  # reward_time_share under SCST
            "epoch_time_s": elapsed,
            "world_size": info.world_size,
            "precision": self.precision.name,
            "peak_memory_mb": round(peak_memory_mb(self.device)),
        }

    def _diverged(self, loss: float) -> ValueError:
        """The error that stops a run whose loss is no longer a number (NaN or infinite): this step's
        update is not saved, so the run's last checkpoint is still good to resume from."""
        latest = ckpt.read_pointer(self.run_dir, "latest")
        return ValueError(
            f"step {self.progress['global_step']}: the training loss is {loss} (not a finite number), so "
            f"training stopped; the last good checkpoint is {latest or 'none (none saved yet)'}. Lower "
            f"train.lr (now {self.config.train.lr:g}) or check the data, then train again (--resume to go on "
            "from that checkpoint)")

    def _log_step(self, window: dict[str, float], loss: float, stats: StepStats) -> None:
        """Every ``train.log_every_steps`` steps, append the window's mean loss (and SCST reward) to
        steps.jsonl.

        After a resume the steps since the checkpoint are logged again; readers keep the last line of a step.
        """
        every = self.config.train.log_every_steps
        if not every or not self.info.is_main:
            return
        window["loss"] = window.get("loss", 0.0) + loss
        window["steps"] = window.get("steps", 0) + 1
        if "reward" in stats.means:
            window["reward"] = window.get("reward", 0.0) + stats.means["reward"] * stats.captions
            window["captions"] = window.get("captions", 0) + stats.captions
        if self.progress["global_step"] % every:
            return
        line = {"step": self.progress["global_step"],
                "epoch": self.progress["epoch"] + self.progress["step_in_epoch"] / self.steps_per_epoch,
                "loss": window["loss"] / window["steps"], "lr": self.scheduler.get_last_lr()[0]}
        if window.get("captions"):
            line["reward"] = window["reward"] / window["captions"]
        _append_jsonl(self.run_dir / "steps.jsonl", line)
        window.clear()

    # ----------------------------------------------------------------------------------- validation
    def _validate(self) -> dict[str, Any]:
        """Rank 0 captions each dev split with beam search and scores it; the best combined score is kept."""
        cfg = self.config
        result: dict[str, Any] = {}
        if self.info.is_main:
            self.model.eval()
            predictor = Predictor(self.model, self.vocab, self.device)
            splits: dict[str, dict[str, Any]] = {}
            all_predictions: dict[str, dict[int, str]] = {}
            for name, split in self.val_sets.items():
                predictions, _ = predict_split(
                    predictor, split, cfg.val.decoding, features=self.val_features.get(name),
                    batch_size=cfg.val.batch_size, num_workers=cfg.train.num_workers,
                )
                splits[name] = split_report(split.captions, predictions, cfg.val.metrics)
                all_predictions[name] = predictions
                logger.info("validation, epoch %d, %s: %s", self.progress["epoch"] + 1, name,
                            ", ".join(f"{k} {v:.4f}" for k, v in {
                                **splits[name]["scores"], "CHAIRs": splits[name]["chair"]["CHAIRs"]}.items()))
            weights = {item.name: item.weight for item in self.val_cfgs}
            score = sum(weights[name] * report["scores"][cfg.val.select_metric]
                        for name, report in splits.items())
            score /= sum(weights.values())
            best = self.progress["best_score"]
            result = {
                "splits": splits,
                "select": {"metric": cfg.val.select_metric, "weights": weights, "score": score},
                "is_best": best is None or score > best,
            }
            if len(splits) > 1:
                logger.info("validation, epoch %d: weighted mean %s %.4f", self.progress["epoch"] + 1,
                            cfg.val.select_metric, score)
            if result["is_best"]:
                self.progress["best_score"] = score
                for name, predictions in all_predictions.items():
                    suffix = "" if len(all_predictions) == 1 else f"_{name}"
                    atomic_write_json(self.run_dir / f"val_results_best{suffix}.json",
                                      results_list(predictions))
        if self.info.enabled:
            payload = [self.progress["best_score"], result]
            dist.broadcast_object_list(payload, src=0)
            self.progress["best_score"], result = payload
        self._training_mode()
        return result


def train(config: Config, resume: bool = False) -> dict[str, Any]:
    """Train (or resume) a run; returns the last epoch's log record."""
    return Trainer(config, resume=resume).fit()
