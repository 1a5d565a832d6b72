"""Checkpointing every epoch as ``epoch=NNN.ckpt`` with NNN counting epochs trained."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint


class EpochCheckpoint(ModelCheckpoint):
    """Keep every epoch's checkpoint, named by epochs trained (1-based), plus ``last.ckpt``."""

    def __init__(self, dirpath: str | Path):
        super().__init__(
            dirpath=dirpath,
            filename="epoch={epoch:03d}",
            auto_insert_metric_name=False,
            save_top_k=-1,
            every_n_epochs=1,
            save_last=True,
            save_on_train_epoch_end=True,
        )

    def format_checkpoint_name(
        self,
        metrics: dict[str, torch.Tensor],
        filename: str | None = None,
        ver: int | None = None,
        prefix: str | None = None,
    ) -> str:
        if "epoch" in metrics and filename is None:
            metrics = {**metrics, "epoch": metrics["epoch"] + 1}
        return super().format_checkpoint_name(metrics, filename, ver, prefix)
