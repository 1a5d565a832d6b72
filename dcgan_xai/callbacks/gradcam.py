"""Thin Lightning glue: Grad-CAM of the discriminator on a fixed probe at every epoch end."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torchvision

from dcgan_xai.data.mnist import to_unit_range
from dcgan_xai.data.probe import Probe, make_probe
from dcgan_xai.models.sampling import generate
from dcgan_xai.runs import (
    RunDir,
    load_probe,
    save_gradcam_epoch,
    save_probe,
    update_scores,
)
from dcgan_xai.xai.gradcam import grad_cam, preserved_state
from dcgan_xai.xai.overlay import side_by_side
from dcgan_xai.xai.scores import summarize


@torch.no_grad()
def probe_probability(discriminator: torch.nn.Module, images: torch.Tensor, bn_mode: str) -> float:
    """Mean D(x) over ``images`` in the given BN mode, with D left unchanged."""
    with preserved_state(discriminator):
        discriminator.train(bn_mode == "batch")
        return torch.sigmoid(discriminator(images).float()).mean().item()


def explain_epoch(
    discriminator: torch.nn.Module,
    generator: torch.nn.Module,
    probe: Probe,
    layers: Sequence[str],
    bn_mode: str,
    pixel_threshold: float,
    flag_threshold: float,
    mask_threshold: float,
    method: str = "gradcam",
    fake_images: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Maps and scores of the real probe and of G(fixed noise), for each layer, by ``method``.

    ``fake_images`` (G of the probe's noise, on D's device) saves generating them again when
    the same epoch is explained several ways.

    Returns:
        A record: ``maps[layer][real|fake]`` (N, H, W) float16, ``scores[layer][real|fake]``
        per-image tensors, ``summary[layer]`` flat floats, ``d_real``/``d_fake``,
        ``fake_images`` (N, 1, H, W) float16, and the settings used.
    """
    device = next(discriminator.parameters()).device
    inputs = {
        "real": to_unit_range(probe.images.to(device)),
        "fake": generate(generator, probe.noise.to(device)) if fake_images is None else fake_images,
    }
    record: dict[str, Any] = {
        "layers": list(layers),
        "method": method,
        "bn_mode": bn_mode,
        "pixel_threshold": pixel_threshold,
        "flag_threshold": flag_threshold,
        "mask_threshold": mask_threshold,
        "maps": {name: {} for name in layers},
        "scores": {name: {} for name in layers},
        "summary": {name: {} for name in layers},
        "d_real": probe_probability(discriminator, inputs["real"], bn_mode),
        "d_fake": probe_probability(discriminator, inputs["fake"], bn_mode),
        "fake_images": inputs["fake"].half().cpu(),
    }
    for kind, images in inputs.items():
        maps = grad_cam(discriminator, images, list(layers), bn_mode=bn_mode, method=method)
        assert isinstance(maps, dict)
        for name, layer_maps in maps.items():
            per_image, summary = summarize(
                layer_maps, images, pixel_threshold, flag_threshold, mask_threshold
            )
            record["maps"][name][kind] = layer_maps.half().cpu()
            record["scores"][name][kind] = {k: v.cpu() for k, v in per_image.items()}
            record["summary"][name].update({f"{kind}_{k}": v for k, v in summary.items()})
    return record


def panel(images: torch.Tensor, maps: torch.Tensor, pairs_per_row: int = 8) -> torch.Tensor:
    """A (3, H', W') grid: each image beside its overlay."""
    tiles = side_by_side(images.float().cpu(), maps.float().cpu())
    return torchvision.utils.make_grid(tiles, nrow=2 * pairs_per_row, padding=2, pad_value=1.0)


class GradCamCallback(L.Callback):
    """At every ``every_n_epochs``-th train-epoch end, explain D on the probe.

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
    ):
        self.run = RunDir(run_dir)
        self.layers = list(layers)
        self.bn_modes, self.methods = list(bn_modes), list(methods)
        self.probe_size, self.seed = probe_size, seed
        self.every_n_epochs = every_n_epochs
        self.pixel_threshold, self.flag_threshold = pixel_threshold, flag_threshold
        self.mask_threshold, self.log_images = mask_threshold, log_images
        self.probe: Probe | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        if self.run.probe.is_file():
            self.probe = load_probe(self.run)
        else:
            test = trainer.datamodule.test_set  # type: ignore[attr-defined]
            self.probe = make_probe(
                test.images, test.labels, self.probe_size, self.seed, pl_module.hparams["nz"]
            )
            save_probe(self.run, self.probe)
        done = trainer.current_epoch  # epochs already trained (non-zero on resume)
        update_scores(self.run, [], keep_through=done)
        for epoch in self.run.gradcam_epochs():
            if epoch > done:
                self.run.gradcam_file(epoch).unlink()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if not trainer.is_global_zero or epoch % self.every_n_epochs or self.probe is None:
            return
        rows, metrics, primary = [], {}, None
        device = next(pl_module.discriminator.parameters()).device  # type: ignore[union-attr]
        fakes = generate(pl_module.generator, self.probe.noise.to(device))  # type: ignore[arg-type]
        for method in self.methods:
            for bn_mode in self.bn_modes:
                record = explain_epoch(
                    pl_module.discriminator,  # type: ignore[arg-type]
                    pl_module.generator,  # type: ignore[arg-type]
                    self.probe,
                    self.layers,
                    bn_mode,
                    self.pixel_threshold,
                    self.flag_threshold,
                    self.mask_threshold,
                    method,
                    fakes,
                )
                prefix = "gradcam" if primary is None else f"gradcam/{method}/{bn_mode}"
                primary = primary or record
                for name in self.layers:
                    summary = record["summary"][name]
                    rows.append({"epoch": epoch, "method": method, "bn_mode": bn_mode,
                                 "layer": name, **summary, "d_real": record["d_real"],
                                 "d_fake": record["d_fake"]})  # fmt: skip
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
