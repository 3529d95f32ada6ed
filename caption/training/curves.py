"""Training curves of one or more runs as one picture: loss or SCST reward per step, dev metrics per epoch.

A run directory holds ``steps.jsonl`` (a line every ``train.log_every_steps`` steps) and ``log.jsonl`` (a line
per epoch, with the validation scores; a panel per dev split when there are several). Runs from before
steps.jsonl existed plot their per-epoch training loss instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from caption.utils.io import atomic_write

DEFAULT_METRICS = ("CIDEr", "Bleu_4")
SPLIT_SEPARATOR = " · "


@dataclass
class RunCurves:
    name: str
    objective: str  # "xent" or "scst"
    # (epoch, value): the x axis is epochs, so runs with different batch sizes line up.
    loss: list[tuple[float, float]] = field(default_factory=list)
    reward: list[tuple[float, float]] = field(default_factory=list)
    scores: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


def _read_jsonl(path: Path) -> list[dict]:
    """Lines of a JSONL log; a last line cut short by a kill is skipped, a broken line elsewhere is an
    error."""
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise ValueError(f"{path}, line {number}: not JSON; the log is damaged") from None
    return records


def read_run(run_dir: str | Path) -> RunCurves:
    run_dir = Path(run_dir)
    epochs_file, steps_file = run_dir / "log.jsonl", run_dir / "steps.jsonl"
    if not epochs_file.is_file() and not steps_file.is_file():
        raise FileNotFoundError(
            f"{run_dir}: no log.jsonl or steps.jsonl there; give a training run's output_dir"
        )
    epochs = _read_jsonl(epochs_file) if epochs_file.is_file() else []
    steps = _read_jsonl(steps_file) if steps_file.is_file() else []
    try:
        objective = (
            epochs[0].get("objective", "xent") if epochs
            else ("scst" if any("reward" in s for s in steps) else "xent")
        )
        run = RunCurves(name=run_dir.name, objective=objective)
        _read_curves(run, steps, epochs)
    except (KeyError, TypeError, AttributeError) as err:  # a line that is JSON but not a log line
        raise ValueError(f"{run_dir}: log.jsonl or steps.jsonl has a line without the fields a training log "
                         f"has ({type(err).__name__}: {err}); is it a training run's output_dir?") from None
    return run


def _read_curves(run: RunCurves, steps: list[dict], epochs: list[dict]) -> None:
    """The loss, reward and dev score points of a run's step and epoch log lines, into ``run``."""
    if steps:
        # a resumed run logs its last steps again: keep the last
        latest = {line["step"]: line for line in steps}
        for step in sorted(latest):
            line = latest[step]
            run.loss.append((line["epoch"], line["loss"]))
            if "reward" in line:
                run.reward.append((line["epoch"], line["reward"]))
    else:
        for record in epochs:
            run.loss.append((record["epoch"], record["train_loss"]))
            if "train_reward" in record:
                run.reward.append((record["epoch"], record["train_reward"]))
    for record in epochs:
        val = record.get("val", {})
        # One dev split: "CIDEr"; several: "CIDEr · coco" per split. Logs from before data mixing have the
        # one split's scores at the top of "val".
        splits = val.get("splits", {"": val} if "scores" in val else {})
        for split, report in splits.items():
            values = {
                **report.get("scores", {}),
                **({"CHAIRs": report["chair"]["CHAIRs"]} if "chair" in report else {}),
            }
            for name, value in values.items():
                key = f"{name}{SPLIT_SEPARATOR}{split}" if len(splits) > 1 else name
                run.scores.setdefault(key, []).append((record["epoch"], value))


def metric_keys(runs: list[RunCurves], metric: str) -> list[str]:
    """The score keys of ``metric`` across runs: the metric itself and its per-split keys, in first-seen
    order."""
    keys = [
        key for run in runs for key in run.scores
        if key == metric or key.startswith(metric + SPLIT_SEPARATOR)
    ]
    return list(dict.fromkeys(keys))


def plot_runs(runs: list[RunCurves], out: str | Path, metrics: tuple[str, ...] = DEFAULT_METRICS):
    """Write a PNG with a panel for the training loss (cross-entropy runs), the sampled reward (SCST runs)
    and each dev metric; every run is one line, in the same colour in every panel. Returns the figure."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("caption plot needs matplotlib: pip install 'caption[plot]'") from None

    panels: list[tuple[str, str, list[RunCurves]]] = []
    xent = [run for run in runs if run.objective == "xent" and run.loss]
    scst = [run for run in runs if run.reward]
    if xent:
        panels.append(("training loss (cross-entropy)", "loss", xent))
    if scst:
        panels.append(("SCST: mean sampled reward (CIDEr-D)", "reward", scst))
    logged = sorted({key.split(SPLIT_SEPARATOR)[0] for run in runs for key in run.scores})
    unknown = [metric for metric in metrics if not metric_keys(runs, metric)]
    if unknown and logged:
        raise ValueError(f"caption plot: no run logged {', '.join(unknown)}; the runs have "
                         f"{', '.join(logged)}")
    for metric in metrics:
        for key in metric_keys(runs, metric):
            panels.append((f"dev {key}", key, [run for run in runs if run.scores.get(key)]))
    if not panels:
        raise ValueError("nothing to plot: the runs have no logged steps or epochs yet")

    colours = {id(run): f"C{i % 10}" for i, run in enumerate(runs)}
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows + 0.4), squeeze=False)
    for axis in axes.flat[len(panels):]:
        axis.remove()
    for axis, (title, key, members) in zip(axes.flat, panels):
        for run in members:
            points = getattr(run, key) if key in ("loss", "reward") else run.scores[key]
            x, y = zip(*points)
            style = {"marker": "o", "markersize": 3} if key not in ("loss", "reward") else {"linewidth": 1}
            axis.plot(x, y, label=run.name, color=colours[id(run)], **style)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=colours[id(run)]) for run in runs]
    figure.legend(handles, [run.name for run in runs], loc="lower center", ncol=min(len(runs), 4), fontsize=9,
                  frameon=False)
    figure.tight_layout(rect=(0, (0.4 + 0.25 * ((len(runs) - 1) // 4)) / figure.get_figheight(), 1, 1))
    out = Path(out)
    atomic_write(out, lambda tmp: figure.savefig(tmp, dpi=90, format=out.suffix.lstrip(".") or "png"))
    plt.close(figure)
    return figure
