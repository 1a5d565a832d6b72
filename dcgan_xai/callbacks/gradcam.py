"""Thin Lightning glue: Grad-CAM of the discriminator on a fixed probe at every epoch end."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torchvision
from torch import nn

from dcgan_xai.config import GradCamConfig
from dcgan_xai.data.mnist import to_unit_range
from dcgan_xai.data.probe import Probe, make_probe
from dcgan_xai.errors import UserError
from dcgan_xai.models.sampling import generate, probe_images
from dcgan_xai.runs.layout import RunDir, load_probe, save_gradcam_epoch, save_probe
from dcgan_xai.runs.tables import SCORES, score_rows
from dcgan_xai.state import preserved_state
from dcgan_xai.xai.epoch import explain_epoch
from dcgan_xai.xai.gradcam import check_layers, explained_module, layer_names
from dcgan_xai.xai.overlay import side_by_side
from dcgan_xai.xai.scores import ScoreThresholds


def panel(images: torch.Tensor, maps: torch.Tensor, pairs_per_row: int = 8) -> torch.Tensor:
    """A (3, H', W') grid: each image beside its overlay."""
    tiles = side_by_side(images.float().cpu(), maps.float().cpu())
    return torchvision.utils.make_grid(tiles, nrow=2 * pairs_per_row, padding=2, pad_value=1.0)


NET_NAMES = (("discriminator", "generator"), ("netD", "netG"), ("D", "G"))


def gan_parts(
    pl_module: L.LightningModule, names: tuple[str | None, str | None] = (None, None)
) -> tuple[nn.Module, nn.Module]:
    """The module's discriminator and generator: the attributes ``names`` gives, or else the
    first of :data:`NET_NAMES` the module has."""
    d_name, g_name = names
    pairs = [(d_name, g_name)] if d_name and g_name else NET_NAMES
    for d, g in pairs:
        parts = [getattr(pl_module, n, None) for n in (d_name or d, g_name or g)]
        if all(isinstance(part, nn.Module) for part in parts):
            return parts[0], parts[1]  # type: ignore[return-value]
    found = [n for n, m in pl_module.named_children()]
    raise UserError(
        f"GradCamCallback cannot find the discriminator and generator of "
        f"{type(pl_module).__name__} (it has: {', '.join(found) or 'no submodules'}); pass "
        f"discriminator='<name>' and generator='<name>'"
    )


def noise_shapes(
    pl_module: L.LightningModule, given: Sequence[int] | None
) -> list[tuple[int, ...]]:
    """The noise shapes of one sample to try, in order: ``given``, the module's ``noise_shape``,
    or from an ``nz``, ``latent_dim``, ``z_dim`` or ``latent_size`` hparam both (z, 1, 1) and
    (z,), the DCGAN form first for ``nz``."""
    shape = given if given is not None else getattr(pl_module, "noise_shape", None)
    if shape is not None:
        return [tuple(int(n) for n in shape)]
    hparams = getattr(pl_module, "hparams", {})
    for key in ("nz", "latent_dim", "z_dim", "latent_size"):
        if key in hparams:
            z = int(hparams[key])
            return [(z, 1, 1), (z,)] if key == "nz" else [(z,), (z, 1, 1)]
    raise UserError(
        f"GradCamCallback cannot tell the noise shape of {type(pl_module).__name__}: pass "
        "noise_shape=(100,) (or (100, 1, 1)), or give the module an `nz` or `latent_dim` hparam"
    )


@torch.no_grad()
def check_gan(
    discriminator: nn.Module,
    generator: nn.Module,
    real: torch.Tensor,
    shapes: Sequence[tuple[int, ...]],
    layers: Sequence[str],
    methods: Sequence[str],
) -> tuple[int, ...]:
    """What the callback will do, tried once on two probe images before any training step:
    G takes one of ``shapes`` and makes images shaped like ``real``; D gives one logit per
    image; every layer gives a spatial map, and every method applies to it. Returns the noise
    shape G takes; a problem is one line naming the fix. Both nets are left as found."""
    real = real[:2]
    device = next(discriminator.parameters()).device
    tried, made = [], None
    with preserved_state(generator), preserved_state(discriminator):
        for shape in shapes:
            try:
                fake = generate(generator, torch.zeros(2, *shape, device=device))
            except (RuntimeError, ValueError) as err:
                tried.append(f"{shape}: {str(err).splitlines()[0][:120]}")
                continue
            if fake.shape[1:] == real.shape[1:]:
                break
            made = tuple(fake.shape[1:])
        else:
            if made is not None:
                raise UserError(f"the generator makes images {made}, the probe's real images are "
                                f"{tuple(real.shape[1:])}: give real images of the generator's size")  # fmt: skip
            raise UserError(
                f"the generator takes none of the noise shapes tried ({'; '.join(tried)}): pass "
                "noise_shape=..."
            )
        real = real.to(device)
        try:
            out, inside = layer_outputs(discriminator, real, layers)
        except (RuntimeError, ValueError) as err:
            raise UserError(
                f"the discriminator cannot take the probe's images {tuple(real.shape[1:])}: "
                f"{str(err).splitlines()[0][:160]}; give real images of its input shape"
            ) from err
        if out.numel() != 2:
            raise UserError(f"the discriminator returns {tuple(out.shape)} for 2 images; it must "
                            "return one logit (or probability) per image")  # fmt: skip
        for name, out in inside.items():
            if out.ndim != 4 or out.shape[-2] * out.shape[-1] < 2:
                raise UserError(
                    f"Grad-CAM layer {name!r} gives {tuple(out.shape)} for 2 images: no spatial "
                    "map to explain (it needs (N, C, h, w) with h x w > 1); choose a "
                    f"convolutional layer of: {', '.join(layer_names(discriminator))}"
                )
            for method in methods:
                explained_module(discriminator.get_submodule(name), method)
    return shape


def layer_outputs(
    discriminator: nn.Module, images: torch.Tensor, layers: Sequence[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """D's output on ``images`` and that of each named layer, from one forward pass."""
    names = check_layers(discriminator, layers)
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        discriminator.get_submodule(n).register_forward_hook(
            lambda _m, _i, out, n=n: seen.setdefault(n, out)
        )
        for n in names
    ]
    try:
        out = discriminator(images)
    finally:
        for h in hooks:
            h.remove()
    return out, seen


_G = GradCamConfig()  # the callback's defaults are the config schema's


class GradCamCallback(L.Callback):
    """At every ``every_n_epochs``-th train-epoch end, explain D on the probe.

    Works with any Lightning GAN whose LightningModule has:

    - a discriminator: an ``nn.Module`` mapping images (N, C, H, W) in [-1, 1] to one logit per
      image, or to a probability through a final ``nn.Sigmoid`` (its input is explained);
    - a generator: an ``nn.Module`` mapping noise (N, *noise_shape) to images in [-1, 1];

    found as the attributes ``discriminator``/``generator``, ``netD``/``netG`` or ``D``/``G``, or
    named by the ``discriminator=``/``generator=`` arguments. The noise shape is ``noise_shape=``,
    the module's ``noise_shape`` attribute, or from an ``nz`` or ``latent_dim`` hparam, tried as
    both (z, 1, 1) and (z,). The layers are D's blocks (``block_names``, else its named
    children) or any submodule path (``main.2``). All of this is checked at train start, on two
    probe images, before the first step (:func:`check_gan`): a problem is one line naming the
    fix. In ``bn_mode="batch"`` normalisation uses the probe batch's statistics and Dropout
    stays off.

    The real probe comes from ``real_images``/``real_labels`` when given, else from the data
    module's ``test_set`` (``images`` uint8 (N, C, H, W) and ``labels``), as in
    :class:`dcgan_xai.data.mnist.MNISTDataModule`.

    For every method and BN mode it writes a row per layer in ``gradcam/scores.csv``. The first
    method with the first BN mode is the primary explanation: its maps go to
    ``gradcam/epoch_NNN.pt`` and its ``gradcam/<layer>/<score>`` scalars and overlay panels to
    the logger (other methods log ``gradcam/<method>/<bn_mode>/<layer>/<score>``). Runs on global
    rank 0 only, on the unwrapped discriminator. The probe is made once, at train start,
    from the data module's test split and saved; a resumed run reuses it (a ``probe.pt`` of a run
    that never explained an epoch is made again).

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
        discriminator, generator: the attribute names of the two nets, where they are not
            among the usual ones.
        noise_shape: the shape of one noise sample, where the module does not tell it.
        normalize: how each map is scaled to [0, 1] (:func:`dcgan_xai.xai.gradcam.normalize_maps`):
            ``max``, the paper's reading, or ``minmax``.
    """

    def __init__(
        self,
        run_dir: str | Path,
        layers: Sequence[str] = tuple(_G.layers),
        bn_modes: Sequence[str] = tuple(_G.bn_modes),
        methods: Sequence[str] = tuple(_G.methods),
        probe_size: int = _G.probe_size,
        seed: int = 0,
        every_n_epochs: int = _G.every_n_epochs,
        pixel_threshold: float = _G.pixel_threshold,
        flag_threshold: float = _G.flag_threshold,
        mask_threshold: float = _G.mask_threshold,
        log_images: bool = _G.log_images,
        real_images: torch.Tensor | None = None,
        real_labels: torch.Tensor | None = None,
        discriminator: str | None = None,
        generator: str | None = None,
        noise_shape: Sequence[int] | None = None,
        normalize: str = _G.normalize,
    ):
        self.run = RunDir(run_dir)
        self.layers = list(layers)
        self.bn_modes, self.methods = list(bn_modes), list(methods)
        self.probe_size, self.seed = probe_size, seed
        self.every_n_epochs = every_n_epochs
        self.thresholds = ScoreThresholds(pixel_threshold, flag_threshold, mask_threshold)
        self.log_images = log_images
        self.probe: Probe | None = None
        self.real_images, self.real_labels = real_images, real_labels
        self.names, self.noise_shape = (discriminator, generator), noise_shape
        self.normalize = normalize

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Before the first step: the probe (a resumed run's own, else a new one) and
        :func:`check_gan`, so that every problem is one line now, not after an epoch."""
        if not trainer.is_global_zero:
            return
        discriminator, generator = gan_parts(pl_module, self.names)
        done = trainer.current_epoch  # epochs already trained (non-zero on resume)
        # a probe.pt of a run that never explained an epoch is made again, not trusted
        reuse = self.run.probe.is_file() and (done > 0 or bool(self.run.gradcam_epochs()))
        if reuse:
            self.probe = load_probe(self.run)
            images, shapes = self.probe.images, [tuple(self.probe.noise.shape[1:])]
        else:
            images, labels = self._real_images(trainer)
            shapes = noise_shapes(pl_module, self.noise_shape)
        real = to_unit_range(images[:2])
        shape = check_gan(discriminator, generator, real, shapes, self.layers, self.methods)
        if not reuse:
            self.probe = make_probe(images, labels, self.probe_size, self.seed, shape)
            save_probe(self.run, self.probe)
        SCORES.update(self.run, [], keep_through=done)
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
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise UserError(
                f"GradCamCallback's real images must be uint8 (N, C, H, W) in 0..255, not "
                f"{images.dtype} {tuple(images.shape)}; from floats in [-1, 1]: "
                "((x + 1) * 127.5).round().to(torch.uint8)"
            )
        if labels is None:
            labels = torch.zeros(len(images), dtype=torch.long)
        return images, labels

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if not trainer.is_global_zero or epoch % self.every_n_epochs or self.probe is None:
            return
        rows, metrics, primary = [], {}, None
        discriminator, generator = gan_parts(pl_module, self.names)
        images = probe_images(generator, self.probe, next(discriminator.parameters()).device)
        for method in self.methods:
            for bn_mode in self.bn_modes:
                record = explain_epoch(discriminator, images, self.layers, bn_mode, method,
                                       self.thresholds, self.normalize)  # fmt: skip
                prefix = "gradcam" if primary is None else f"gradcam/{method}/{bn_mode}"
                primary = primary or record
                rows += score_rows(epoch, record)
                for name in self.layers:
                    summary = record["summary"][name]
                    metrics.update({f"{prefix}/{name}/{k}": v for k, v in summary.items()})
        assert primary is not None
        primary["epoch"] = epoch
        save_gradcam_epoch(self.run, epoch, primary)
        SCORES.update(self.run, rows)
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
