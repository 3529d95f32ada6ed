"""Resumable training checkpoints: safetensors for every tensor, JSON for everything else.

A run directory holds ``checkpoints/<name>/`` (model files plus ``trainer.safetensors`` and
``trainer.json``) and two pointer files, ``latest.json`` and ``best.json``. A checkpoint directory is
complete before it is renamed into place and a pointer is replaced atomically after that, so a kill at
any moment leaves the previous pointer naming a complete checkpoint.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from caption.data.vocab import Vocabulary
from caption.models.captioner import CaptionModel
from caption.models.io import read_pointer, read_safetensors, save_model, write_safetensors
from caption.models.io import resolve_run_dir as resolve_run_dir  # re-exported from its new home
from caption.utils.io import atomic_replace_dir, atomic_write_json, read_json

TRAINER_TENSORS = "trainer.safetensors"
TRAINER_JSON = "trainer.json"
POINTERS = ("latest", "best")


def rng_state() -> dict[str, Any]:
    """This process's random state: torch (CPU and CUDA), NumPy and Python."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    np_state = np.random.get_state()
    state["numpy"] = {
        "keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "rest": [np_state[0], *map(_plain, np_state[2:])],
    }
    state["python"] = _plain(random.getstate())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    name, pos, has_gauss, cached = state["numpy"]["rest"]
    np.random.set_state((name, state["numpy"]["keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _plain(value: Any) -> Any:
    """Tuples and NumPy scalars as JSON-friendly lists and numbers."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _split_tensors(prefix: str, value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Move every tensor in a nested dict/list into ``tensors`` and leave a ``{"__tensor__": key}`` marker."""
    if isinstance(value, torch.Tensor):
        tensors[prefix] = value.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(value, dict):
        return {str(k): _split_tensors(f"{prefix}.{k}", v, tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_split_tensors(f"{prefix}.{i}", v, tensors) for i, v in enumerate(value)]
    return value


def _join_tensors(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__tensor__"}:
            return tensors[value["__tensor__"]]
        return {k: _join_tensors(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_join_tensors(v, tensors) for v in value]
    return value


def _optimizer_state_from_json(state: dict) -> dict:
    # JSON turned the integer parameter ids into strings.
    return {"state": {int(k): v for k, v in state["state"].items()}, "param_groups": state["param_groups"]}


def save_checkpoint(
    run_dir: str | Path,
    name: str,
    *,
    model: CaptionModel,
    vocab: Vocabulary,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    progress: dict[str, Any],
    rng_states: list[dict[str, Any]],
    model_extra: dict | None = None,
    best: dict[str, Any] | None = None,
) -> Path:
    """Write ``checkpoints/<name>`` completely, then point ``best.json`` (when ``best`` describes it as
    the new best) and ``latest.json`` at it."""
    run_dir = Path(run_dir)
    tensors: dict[str, torch.Tensor] = {}
    trainer = {
        "progress": progress,
        "optimizer": _split_tensors("optimizer", optimizer.state_dict(), tensors),
        "scheduler": _split_tensors("scheduler", scheduler.state_dict(), tensors),
        "scaler": _split_tensors("scaler", scaler.state_dict(), tensors),
        "rng": _split_tensors("rng", rng_states, tensors),
    }

    def build(directory: Path) -> None:
        save_model(model, vocab, directory, extra=model_extra)
        write_safetensors(tensors, directory / TRAINER_TENSORS)
        atomic_write_json(directory / TRAINER_JSON, trainer)

    target = atomic_replace_dir(build, run_dir / "checkpoints" / name)
    if best is not None:
        set_pointer(run_dir, "best", target, best)
    set_pointer(run_dir, "latest", target, progress)
    return target


def set_pointer(run_dir: str | Path, which: str, checkpoint: Path, info: dict[str, Any]) -> None:
    run_dir = Path(run_dir)
    atomic_write_json(run_dir / f"{which}.json", {"checkpoint": str(checkpoint.relative_to(run_dir)), **info})


def prune_checkpoints(run_dir: str | Path) -> None:
    """Delete checkpoints that neither pointer names, and staging folders left by a killed write."""
    run_dir = Path(run_dir)
    keep = {read_pointer(run_dir, which) for which in POINTERS} - {None}
    for directory in (run_dir / "checkpoints").glob("*"):
        if directory.is_dir() and directory not in keep:
            shutil.rmtree(directory, ignore_errors=True)


def load_trainer_state(checkpoint: str | Path) -> dict[str, Any]:
    """The optimizer, scheduler, scaler and RNG states and the progress of a checkpoint, tensors restored."""
    checkpoint = Path(checkpoint)
    tensors = read_safetensors(checkpoint / TRAINER_TENSORS)
    state = _join_tensors(read_json(checkpoint / TRAINER_JSON, "trainer state"), tensors)
    state["optimizer"] = _optimizer_state_from_json(state["optimizer"])
    return state
