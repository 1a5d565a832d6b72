"""Thin Lightning glue: FID and KID of the generator at every epoch end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L

from dcgan_xai.config import FidProtocol, QualityConfig
from dcgan_xai.metrics.quality import QualityMeter, fid_meter, score_draws
from dcgan_xai.runs.layout import RunDir
from dcgan_xai.runs.tables import QUALITY


class QualityCallback(L.Callback):
    """At every ``every_n_epochs``-th train-epoch end, score G by FID and KID.

    Generated sets: draw 0 from fixed noise (the same at every epoch, for smooth curves) and
    ``fid_draws`` independent sets, whose spread is the FID's noise (the protocol:
    :class:`~dcgan_xai.config.FidProtocol`, the same as ``analyze``'s). Features come from the
    project's MNIST classifier (cached beside the data; trained on the full train split if
    missing). Writes ``quality/scores.csv`` (one row per epoch and draw, with the classifier's
    accuracy and MD5) and logs ``quality/fid``, ``quality/fid_fresh`` and ``quality/kid``. Runs
    on global rank 0 only, on the unwrapped generator.
    """

    def __init__(
        self,
        run_dir: str | Path,
        protocol: FidProtocol | None = None,
        every_n_epochs: int = QualityConfig.every_n_epochs,
    ):
        self.run = RunDir(run_dir)
        self.protocol, self.every_n_epochs = protocol or FidProtocol(), every_n_epochs
        self.meter: QualityMeter | None = None
        self.record: dict[str, Any] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        dm = trainer.datamodule  # type: ignore[attr-defined]
        self.meter, self.record = fid_meter(dm, self.protocol, pl_module.device)
        QUALITY.update(self.run, [], keep_through=trainer.current_epoch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if not trainer.is_global_zero or epoch % self.every_n_epochs or self.meter is None:
            return
        p = self.protocol
        rows = score_draws(self.meter, pl_module.generator, pl_module.hparams["nz"],  # type: ignore[arg-type]
                           p.fid_samples, p.fid_seed, epoch, range(p.fid_draws + 1), p.batch_size)  # fmt: skip
        QUALITY.update(self.run, [{"epoch": epoch, **r, **self.record} for r in rows])
        if trainer.logger is not None:
            fresh = [r["fid"] for r in rows[1:]]
            metrics = {"quality/fid": rows[0]["fid"], "quality/kid": rows[0]["kid"]}
            if fresh:
                metrics["quality/fid_fresh"] = sum(fresh) / len(fresh)
            trainer.logger.log_metrics(metrics, step=epoch)
