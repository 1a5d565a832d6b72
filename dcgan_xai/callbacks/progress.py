"""Progress a log can show: one line per epoch, and a wall-clock limit that stops cleanly."""

from __future__ import annotations

import threading
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException


class EpochLine(L.Callback):
    """After each epoch, one log line: ``<name> epoch 3/40 in 26.5 s: d_loss=... g_loss=...``.

    It goes through Lightning's logger (``rank_zero_info``), so it shows in a terminal without
    the progress bar, in a Hydra job's log and in a Slurm job's output.
    """

    def __init__(self, name: str):
        self.name = name
        self._start = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        values = " ".join(
            f"{k.removeprefix('epoch/')}={float(v):.3f}"
            for k, v in sorted(metrics.items())
            if k.startswith("epoch/")
        )
        seconds = time.perf_counter() - self._start
        rank_zero_info(
            f"{self.name} epoch {trainer.current_epoch + 1}/{trainer.max_epochs} in "
            f"{seconds:.1f} s: {values}"
        )


class StepBar(TQDMProgressBar):
    """Lightning's progress bar, showing the step metrics the module last logged (its ``shown``
    dict, refreshed every ``log_every_n_steps`` steps): the bar reads nothing from the device."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        return {**super().get_metrics(trainer, pl_module), **getattr(pl_module, "shown", {})}


class TimeLimitReached(Exception):
    """Training reached the wall-clock limit it was given; the epochs it finished are kept."""


class TimeLimit(L.Callback):
    """Stop training at the first step that ends after ``deadline`` (``time.monotonic()``),
    looking at the clock every ``every`` steps (and at the first).

    The epoch it stops in is not checkpointed (a resumed run trains it again from its start,
    as after SIGTERM), so every checkpoint holds whole epochs.
    """

    def __init__(self, deadline: float, every: int = 1):
        self.deadline, self.every = deadline, max(int(every), 1)
        self.steps = 0

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        self.steps += 1
        if (self.steps - 1) % self.every:
            return
        # rank 0's clock decides, so all processes of a distributed run stop at the same step
        if trainer.strategy.broadcast(time.monotonic() > self.deadline):
            raise TimeLimitReached(f"time limit reached at epoch {trainer.current_epoch + 1}")


class StopOnEvent(L.Callback):
    """Stop at the next step once ``event`` is set, as Lightning stops on SIGTERM (the epochs
    finished are kept): a signal reaches only the main thread, which sets the event."""

    def __init__(self, event: threading.Event):
        self.event = event

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if self.event.is_set():
            raise SIGTERMException
