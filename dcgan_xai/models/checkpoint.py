"""Checkpointing every epoch as ``epoch=NNN.ckpt`` with NNN counting epochs trained."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from dcgan_xai.files import atomic_torch_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file in its own directory, fsync it, rename it.

    Lightning's default goes through a temporary directory of the system, which is a copy, not
    a rename, when the run dir is on another filesystem (a local /tmp and a network run dir):
    a kill or a full disk then leaves a truncated file under the final name.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("storage_options is not supported by AtomicCheckpointIO")
        atomic_torch_save(checkpoint, path)


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
            enable_version_counter=False,  # never "-v1" files: a resumed epoch is rewritten
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
