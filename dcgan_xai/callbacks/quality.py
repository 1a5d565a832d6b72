"""Thin Lightning glue: FID and KID of the generator at every epoch end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L

from dcgan_xai.data.mnist import MNISTDataModule
from dcgan_xai.metrics.quality import (
    QualityMeter,
    classifier_path,
    load_or_train_classifier,
    reference_meter,
    score_draws,
)
from dcgan_xai.runs import RunDir, update_quality


class QualityCallback(L.Callback):
    """At every ``every_n_epochs``-th train-epoch end, score G by FID and KID.

    Generated sets: draw 0 from fixed noise (the same at every epoch, for smooth curves) and
    ``fresh_draws`` independent sets, whose spread is the FID's noise. The real reference is all
    test images, or a seeded random subset when ``samples`` is smaller. Features come from the
    project's MNIST classifier (cached under ``<data root>/classifier/``; trained on the full
    train split if missing). Writes ``quality/scores.csv`` (one row per epoch and draw, with the
    classifier's accuracy and MD5) and logs ``quality/fid``, ``quality/fid_fresh`` and
    ``quality/kid``. Runs on global rank 0 only, on the unwrapped generator.

    Args:
        run_dir: the run directory.
        samples: generated images per set, and the size of the real reference.
        fresh_draws: independent generated sets per epoch besides the fixed one.
        seed: seeds the noise and the reference subset.
        every_n_epochs: score every n-th epoch.
        batch_size: images per forward pass.
        classifier_epochs: epochs of the classifier (names its cache file).
        min_accuracy: refuse a classifier below this test accuracy.
    """

    def __init__(
        self,
        run_dir: str | Path,
        samples: int = 10000,
        fresh_draws: int = 2,
        seed: int = 0,
        every_n_epochs: int = 1,
        batch_size: int = 500,
        classifier_epochs: int = 3,
        min_accuracy: float = 0.99,
    ):
        self.run = RunDir(run_dir)
        self.samples, self.fresh_draws, self.seed = samples, fresh_draws, seed
        self.every_n_epochs, self.batch_size = every_n_epochs, batch_size
        self.classifier_epochs, self.min_accuracy = classifier_epochs, min_accuracy
        self.meter: QualityMeter | None = None
        self.record: dict[str, Any] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        dm: MNISTDataModule = trainer.datamodule  # type: ignore[attr-defined]
        full = MNISTDataModule(
            dm.root,
            dm.image_size,
            sources=dm.sources,
            checksums=dm.checksums,
            cache_dir=dm.cache_dir,
        )
        path = classifier_path(
            dm.classifier_dir, dm.image_size, self.classifier_epochs, dm.checksums["test-images"]
        )
        if not path.is_file():
            full.setup()
        else:
            full.test_set = dm.test_set
        assert full.test_set is not None
        classifier, accuracy = load_or_train_classifier(
            path,
            full.train_set,  # type: ignore[arg-type]
            full.test_set,
            epochs=self.classifier_epochs,
            min_accuracy=self.min_accuracy,
            device=pl_module.device,
        )
        self.meter, self.record = reference_meter(
            classifier,
            accuracy,
            path,
            full.test_set.images,
            self.samples,
            self.seed,
            self.batch_size,
        )
        update_quality(self.run, [], keep_through=trainer.current_epoch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if not trainer.is_global_zero or epoch % self.every_n_epochs or self.meter is None:
            return
        rows = score_draws(
            self.meter,
            pl_module.generator,  # type: ignore[arg-type]
            pl_module.hparams["nz"],
            self.samples,
            self.seed,
            epoch,
            self.fresh_draws,
            self.batch_size,
        )
        update_quality(self.run, [{"epoch": epoch, **r, **self.record} for r in rows])
        if trainer.logger is not None:
            fresh = [r["fid"] for r in rows[1:]]
            metrics = {"quality/fid": rows[0]["fid"], "quality/kid": rows[0]["kid"]}
            if fresh:
                metrics["quality/fid_fresh"] = sum(fresh) / len(fresh)
            trainer.logger.log_metrics(metrics, step=epoch)
