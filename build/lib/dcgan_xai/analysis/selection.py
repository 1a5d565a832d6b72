"""Choosing an epoch from a per-epoch score: coarse-to-fine, argmax, and baselines."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from dcgan_xai.errors import UserError


def _best(epochs: list[int], scores: Mapping[int, float]) -> int:
    """The epoch with the highest score; ties (and NaNs) go to the earlier epoch."""

    def key(e: int) -> tuple[float, int]:
        s = scores[e]
        return (-math.inf if math.isnan(s) else s, -e)

    return max(epochs, key=key)


@dataclass
class Selection:
    """The steps of a coarse-to-fine choice.

    Attributes:
        k: the coarse step.
        coarse_epochs: epochs compared in the coarse step (k, 2k, ...).
        coarse_winner: the best of them.
        fine_window: epochs within k-1 of the coarse winner.
        fine_winner: the best of those: the selected epoch.
    """

    k: int
    coarse_epochs: list[int]
    coarse_winner: int
    fine_window: list[int]
    fine_winner: int

    def to_dict(self) -> dict:
        return asdict(self)


def select_epoch(scores: Mapping[int, float], k: int = 5) -> Selection:
    """Coarse-to-fine selection of the epoch with the highest score.

    Coarse: epochs k, 2k, ... among those scored (all scored epochs if none is a multiple
    of k); fine: every scored epoch within k-1 of the coarse winner. Ties go to the
    earlier epoch.

    Args:
        scores: score per epoch (epochs counted from 1).
        k: the coarse step.

    Returns:
        The :class:`Selection`, whose ``fine_winner`` is the chosen epoch.
    """
    if k < 1:
        raise UserError(f"k={k} is not allowed; the coarse step must be >= 1")
    if not scores:
        raise UserError("no epochs to select from: the score table is empty")
    epochs = sorted(scores)
    coarse = [e for e in epochs if e % k == 0] or epochs
    coarse_winner = _best(coarse, scores)
    window = [e for e in epochs if abs(e - coarse_winner) <= k - 1]
    return Selection(k, coarse, coarse_winner, window, _best(window, scores))


def argmax_epoch(scores: Mapping[int, float]) -> int:
    """The best-scored epoch over all epochs; ties to the earlier."""
    if not scores:
        raise UserError("no epochs to select from: the score table is empty")
    return _best(sorted(scores), scores)
