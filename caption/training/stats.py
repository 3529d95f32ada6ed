"""What a training step reports besides its loss, and the epoch's totals of it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StepStats:
    """One step's statistics: per-caption ``means`` over its ``captions``, and the ``seconds`` spent on parts
    of it (named ``<part>_s``)."""

    captions: int
    means: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


class EpochStats:
    """An epoch's running totals: the loss and the means weighted by captions, the seconds summed."""

    def __init__(self) -> None:
        self.captions = 0
        self.weighted: dict[str, float] = {"loss": 0.0}
        self.seconds: dict[str, float] = {}

    def add(self, loss: float, stats: StepStats) -> None:
        self.weighted["loss"] += loss * stats.captions
        for name, value in stats.means.items():
            self.weighted[name] = self.weighted.get(name, 0.0) + value * stats.captions
        for name, value in stats.seconds.items():
            self.seconds[name] = self.seconds.get(name, 0.0) + value
        self.captions += stats.captions

    def captions_per_s(self, elapsed: float, world_size: int) -> float:
        """Captions trained on per second by all processes together (each is assumed to match this one)."""
        return self.captions * world_size / elapsed if elapsed else 0.0

    def means(self) -> dict[str, float]:
        """The epoch's per-caption means, ``train_loss`` first, as the epoch record names them."""
        captions = max(1, self.captions)
        return {f"train_{name}": value / captions for name, value in self.weighted.items()}

    def time_shares(self, elapsed: float) -> dict[str, float]:
        """The share of the epoch's ``elapsed`` seconds each timed part took: ``reward_time_s`` gives
        ``reward_time_share``."""
        if not elapsed:
            return {}
        return {f"{name.removesuffix('_s')}_share": value / elapsed for name, value in self.seconds.items()}
