"""Thin Lightning glue: Grad-CAM of the discriminator on a fixed probe at every epoch end."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torchvision
from torch import nn

from dcgan_xai.data.mnist import to_unit_range
from dcgan_xai.data.probe import Probe, make_probe
from dcgan_xai.errors import UserError
from dcgan_xai.models.sampling import probe_images
from dcgan_xai.runs import (
    RunDir,
    load_probe,
    save_gradcam_epoch,
    save_probe,
    score_rows,
    update_scores,
)
from dcgan_xai.xai.epoch import explain_epoch
from dcgan_xai.xai.overlay import side_by_side


def panel(images: torch.Tensor, maps: torch.Tensor, pairs_per_row: int = 8) -> torch.Tensor:
    """A (3, H', W') grid: each image beside its overlay."""
    tiles = side_by_side(images.float().cpu(), maps.float().cpu())
    return torchvision.utils.make_grid(tiles, nrow=2 * pairs_per_row, padding=2, pad_value=1.0)


def gan_parts(pl_module: L.LightningModule) -> tuple[nn.Module, nn.Module]:
    """The module's discriminator and generator (see :class:`GradCamCallback`)."""
    parts = [getattr(pl_module, name, None) for name in ("discriminator", "generator")]
    if not all(isinstance(part, nn.Module) for part in parts):
        raise UserError(
            f"GradCamCallback needs a LightningModule with nn.Module attributes `discriminator` "
            f"and `generator`; {type(pl_module).__name__} lacks one"
        )
    return parts[0], parts[1]  # type: ignore[return-value]


def noise_shape(pl_module: L.LightningModule) -> tuple[int, ...]:
    """The shape of one noise sample the module's generator takes (see :class:`GradCamCallback`)."""
    shape = getattr(pl_module, "noise_shape", None)
    if shape is not None:
        return tuple(int(n) for n in shape)
    hparams = getattr(pl_module, "hparams", {})
    if "nz" in hparams:
        return (int(hparams["nz"]), 1, 1)
    if "latent_dim" in hparams:
        return (int(hparams["latent_dim"]),)
    raise UserError(
        f"GradCamCallback cannot tell the noise shape of {type(pl_module).__name__}: give it a "
        "`noise_shape` attribute or an `nz` (DCGAN: noise (nz, 1, 1)) or `latent_dim` hparam"
    )


class GradCamCallback(L.Callback):
    """At every ``every_n_epochs``-th train-epoch end, explain D on the probe.

    Works with any Lightning GAN whose LightningModule has:

    - ``discriminator``: an ``nn.Module`` mapping images (N, C, H, W) in [-1, 1] to logits
      (N,) or (N, 1, ...); the layers it can explain are its named children (or the names in
      its ``block_names`` attribute);
    - ``generator``: an ``nn.Module`` mapping noise (N, *noise_shape) to images in [-1, 1];
    - the noise shape: a ``noise_shape`` attribute, or an ``nz`` hparam (noise (nz, 1, 1), a
      DCGAN's) or a ``latent_dim`` hparam (noise (latent_dim,)).

    The real probe comes from ``real_images``/``real_labels`` when given, else from the data
    module's ``test_set`` (``images`` uint8 (N, C, H, W) and ``labels``), as in
    :class:`dcgan_xai.data.mnist.MNISTDataModule`.

    For every method and BN mode it writes a row per layer in ``gradcam/scores.csv``. The first
    method with the first BN mode is the primary explanation: its maps go to
    ``gradcam/epoch_NNN.pt`` and its ``gradcam/<layer>/<score>`` scalars and overlay panels to
    the logger (other methods log ``gradcam/<method>/<bn_mode>/<layer>/<score>``). Runs on global
    rank 0 only, on the unwrapped discriminator. The probe is made once, at train start,
    from the data module's test split and saved; a resumed run reuses it.

    Args:
        run_dir: the run directory.
        layers: names of D's blocks to explain.
        bn_modes: ``batch`` and/or ``eval`` (see :func:`dcgan_xai.xai.grad_cam`).
        methods: explanation methods (:data:`dcgan_xai.xai.METHODS`), the paper's ``gradcam``
            by default.
        probe_size: real test images (and noise vectors) in the probe.
        seed: seeds the probe's choice and noise.
        every_n_epochs: explain every n-th epoch.
        pixel_threshold: CAM value counted as covered.
        flag_threshold: coverage above which an image is flagged.
        mask_threshold: digit-mask threshold in [0, 1] scale.
        log_images: log overlay panels to the logger.
        real_images: uint8 (N, C, H, W) images to draw the real probe from (default: the data
            module's test split).
        real_labels: their labels (N,), for a probe stratified by class (default: one class).
    """

    def __init__(
        self,
        run_dir: str | Path,
        layers: Sequence[str] = ("block3",),
        bn_modes: Sequence[str] = ("batch",),
        methods: Sequence[str] = ("gradcam",),
        probe_size: int = 64,
        seed: int = 0,
        every_n_epochs: int = 1,
        pixel_threshold: float = 0.5,
        flag_threshold: float = 0.7,
        mask_threshold: float = 0.5,
        log_images: bool = True,
        real_images: torch.Tensor | None = None,
        real_labels: torch.Tensor | None = None,
    ):
        self.run = RunDir(run_dir)
        self.layers = list(layers)
        self.bn_modes, self.methods = list(bn_modes), list(methods)
        self.probe_size, self.seed = probe_size, seed
        self.every_n_epochs = every_n_epochs
        self.pixel_threshold, self.flag_threshold = pixel_threshold, flag_threshold
        self.mask_threshold, self.log_images = mask_threshold, log_images
        self.probe: Probe | None = None
        self.real_images, self.real_labels = real_images, real_labels

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        if self.run.probe.is_file():
            self.probe = load_probe(self.run)
        else:
            images, labels = self._real_images(trainer)
            self.probe = make_probe(
                images, labels, self.probe_size, self.seed, noise_shape(pl_module)
            )
            save_probe(self.run, self.probe)
        done = trainer.current_epoch  # epochs already trained (non-zero on resume)
        update_scores(self.run, [], keep_through=done)
        for epoch in self.run.gradcam_epochs():
            if epoch > done:
                self.run.gradcam_file(epoch).unlink()

    def _real_images(self, trainer: L.Trainer) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.real_images, self.real_labels
        if images is None:
            test = getattr(getattr(trainer, "datamodule", None), "test_set", None)
            if test is None:
                raise UserError(
                    "GradCamCallback needs real probe images: pass real_images=..., or fit "
                    "with a data module whose test_set has `images` and `labels`"
                )
            images, labels = test.images, test.labels
        if labels is None:
            labels = torch.zeros(len(images), dtype=torch.long)
        return images, labels

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if not trainer.is_global_zero or epoch % self.every_n_epochs or self.probe is None:
            return
        rows, metrics, primary = [], {}, None
        discriminator, generator = gan_parts(pl_module)
        images = probe_images(generator, self.probe, next(discriminator.parameters()).device)
        for method in self.methods:
            for bn_mode in self.bn_modes:
                record = explain_epoch(
                    discriminator,
                    images,
                    self.layers,
                    bn_mode,
                    method,
                    self.pixel_threshold,
                    self.flag_threshold,
                    self.mask_threshold,
                )
                prefix = "gradcam" if primary is None else f"gradcam/{method}/{bn_mode}"
                primary = primary or record
                rows += score_rows(epoch, record)
                for name in self.layers:
                    summary = record["summary"][name]
                    metrics.update({f"{prefix}/{name}/{k}": v for k, v in summary.items()})
        assert primary is not None
        primary["epoch"] = epoch
        save_gradcam_epoch(self.run, epoch, primary)
        update_scores(self.run, rows)
        metrics["gradcam/probe_d_real"] = primary["d_real"]
        metrics["gradcam/probe_d_fake"] = primary["d_fake"]
        self._log(trainer, primary, metrics, epoch)

    def _log(
        self, trainer: L.Trainer, record: dict[str, Any], metrics: dict[str, float], epoch: int
    ) -> None:
        logger = trainer.logger
        if logger is None:
            return
        logger.log_metrics(metrics, step=epoch)
        experiment: Any = getattr(logger, "experiment", None)
        if not self.log_images or not hasattr(experiment, "add_image"):
            return
        assert self.probe is not None
        real = to_unit_range(self.probe.images)
        for name in self.layers:
            maps = record["maps"][name]
            experiment.add_image(f"gradcam/{name}/real", panel(real, maps["real"]), epoch)
            fakes = record["fake_images"]
            experiment.add_image(f"gradcam/{name}/fake", panel(fakes, maps["fake"]), epoch)
