"""Checkpointing every epoch as ``epoch=NNN.ckpt`` with NNN counting epochs trained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from dcgan_xai.files import atomic_torch_save, atomic_write_text

RECORD_KEY = "dcgan_xai_run"  # in every checkpoint: the settings of the run that wrote it
DIGESTS = "sha256.json"  # in a run's checkpoints/: each checkpoint's SHA-256, recorded as written


def record_digest(path: Path, digest: str) -> None:
    """Record ``digest`` as the SHA-256 of the checkpoint just written at ``path``."""
    table = path.parent / DIGESTS
    digests = json.loads(table.read_text()) if table.is_file() else {}
    atomic_write_text(table, json.dumps({**digests, path.name: digest}, indent=1) + "\n")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file in its own directory, fsync it, rename it.

    With a run's record (training passes one), each file carries the settings of the run that
    wrote it, and its SHA-256 goes into the folder's ``sha256.json`` once it is in place.

    Lightning's default goes through a temporary directory of the system, which is a copy, not
    a rename, when the run dir is on another filesystem (a local /tmp and a network run dir):
    a kill or a full disk then leaves a truncated file under the final name.
    """

    def __init__(self, record: dict[str, Any] | None = None):
        super().__init__()
        self.record = record

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        """Write it with the run's record (:func:`dcgan_xai.runs.resume.run_record`), then record its
        SHA-256 beside it (:func:`record_digest`)."""
        if storage_options is not None:
            raise TypeError("storage_options is not supported by AtomicCheckpointIO")
        if self.record is not None:
            checkpoint = {**checkpoint, RECORD_KEY: self.record}
        record_digest(Path(path), atomic_torch_save(checkpoint, path))


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
