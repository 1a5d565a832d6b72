"""The LightningModule: G and D trained against each other with manual optimization."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
import torchvision
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from dcgan_xai.data.mnist import to_unit_range
from dcgan_xai.errors import UserError
from dcgan_xai.models.networks import Generator, build_discriminator, dcgan_init
from dcgan_xai.models.sampling import generate
from dcgan_xai.xai.gradcam import preserved_state


class NonFiniteLossError(UserError):
    """A loss became NaN or infinite; training stops and the last good checkpoint is kept."""


def try_compile(module: nn.Module, example: torch.Tensor) -> nn.Module:
    """``torch.compile(module)`` if a trial forward and backward pass works, else ``module``.

    The trial leaves no trace: mode, BatchNorm buffers and gradients are restored.
    """
    try:
        compiled = torch.compile(module)
        with preserved_state(module):
            compiled(example).float().sum().backward()
        return compiled  # type: ignore[return-value]
    except Exception as err:  # compiler or backend failure: train eagerly
        rank_zero_warn(
            f"torch.compile of {type(module).__name__} failed ({type(err).__name__}: "
            f"{' '.join(str(err).split())[:200]}); training with the eager module"
        )
        return module


def step_noise(
    seed: int, epoch: int, batch_idx: int, n: int, nz: int, device: torch.device
) -> torch.Tensor:
    """The noise of one training step, a pure function of (seed, epoch, batch): resumable."""
    gen = torch.Generator(device=device).manual_seed(
        (seed * 1_000_003 + epoch) * 100_003 + batch_idx
    )
    return torch.randn(n, nz, 1, 1, generator=gen, device=device)


class DCGAN(L.LightningModule):
    """A DCGAN on 64x64 images.

    Args:
        arch: discriminator variant, ``paper`` (4 convs) or ``tutorial`` (5 convs).
        nz: length of the noise vector.
        ngf: generator width.
        ndf: discriminator width.
        lr: Adam learning rate for both nets.
        beta1: Adam beta1.
        beta2: Adam beta2.
        bn_momentum: BatchNorm momentum of both nets.
        seed: seeds the per-step noise and the sample-grid noise.
        n_samples: images in the fixed-noise sample grid logged each epoch.
        channels_last: train both nets in channels-last memory format.
        compile: run the training step through compiled G and D (``torch.compile``); if
            compiling fails, a warning says so and the eager modules are used. Grad-CAM always
            uses the eager modules.
    """

    sample_noise: torch.Tensor

    def __init__(
        self,
        arch: str = "paper",
        nz: int = 100,
        ngf: int = 64,
        ndf: int = 64,
        lr: float = 2e-4,
        beta1: float = 0.5,
        beta2: float = 0.999,
        bn_momentum: float = 0.1,
        seed: int = 0,
        n_samples: int = 64,
        channels_last: bool = False,
        compile: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = Generator(nz, ngf, bn_momentum=bn_momentum)
        self.discriminator = build_discriminator(arch, ndf, bn_momentum)
        self.generator.apply(dcgan_init)
        self.discriminator.apply(dcgan_init)
        gen = torch.Generator().manual_seed(seed + 7919)
        self.register_buffer("sample_noise", torch.randn(n_samples, nz, 1, 1, generator=gen))
        self._step_nets: dict[str, nn.Module] = {"g": self.generator, "d": self.discriminator}

    def on_fit_start(self) -> None:
        if self.hparams["channels_last"]:
            self.generator.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            self.discriminator.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if self.hparams["compile"]:
            gen = torch.Generator().manual_seed(0)  # trial inputs; the global RNG is untouched
            z = torch.randn(2, self.hparams["nz"], 1, 1, generator=gen).to(self.device)
            x = torch.rand(2, 1, 64, 64, generator=gen).to(self.device) * 2 - 1
            self._step_nets["g"] = try_compile(self.generator, z)
            self._step_nets["d"] = try_compile(self.discriminator, x)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        betas = (self.hparams["beta1"], self.hparams["beta2"])
        fused = True if self.device.type == "cuda" else None  # one kernel per step on a GPU
        lr = self.hparams["lr"]
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=lr, betas=betas, fused=fused)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=betas, fused=fused)
        return [opt_g, opt_d]

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        images, _, _ = batch
        real = to_unit_range(images)  # (N, 1, 64, 64)
        if self.hparams["channels_last"]:
            real = real.contiguous(memory_format=torch.channels_last)
        generator, discriminator = self._step_nets["g"], self._step_nets["d"]
        n = real.shape[0]
        opt_g, opt_d = self.optimizers()  # type: ignore[misc,attr-defined]
        z = step_noise(
            self.hparams["seed"], self.current_epoch, batch_idx, n, self.hparams["nz"], self.device
        )
        fake = generator(z)

        self.toggle_optimizer(opt_d)
        logit_real = discriminator(real)
        logit_fake = discriminator(fake.detach())
        d_loss = F.binary_cross_entropy_with_logits(
            logit_real, torch.ones_like(logit_real)
        ) + F.binary_cross_entropy_with_logits(logit_fake, torch.zeros_like(logit_fake))
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        opt_d.step()
        self.untoggle_optimizer(opt_d)

        self.toggle_optimizer(opt_g)
        logit_gen = discriminator(fake)
        g_loss = F.binary_cross_entropy_with_logits(logit_gen, torch.ones_like(logit_gen))
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(g_loss)
        opt_g.step()
        self.untoggle_optimizer(opt_g)

        losses = torch.stack([d_loss.detach(), g_loss.detach()])
        if not bool(torch.isfinite(losses).all()):
            raise NonFiniteLossError(
                f"loss became non-finite (d_loss={d_loss.item()}, g_loss={g_loss.item()}) "
                f"at epoch {self.current_epoch + 1}, step {batch_idx}; the last good checkpoint "
                "is kept"
            )
        metrics = {
            "train/d_loss": d_loss.detach(),
            "train/g_loss": g_loss.detach(),
            "train/d_real": torch.sigmoid(logit_real.detach().float()).mean(),
            "train/d_fake": torch.sigmoid(logit_fake.detach().float()).mean(),
        }
        self.log_dict(metrics, on_step=True, on_epoch=False, prog_bar=True, batch_size=n)
        epoch_means = {k.replace("train/", "epoch/"): v for k, v in metrics.items()}
        self.log_dict(epoch_means, on_step=False, on_epoch=True, batch_size=n)

    def on_train_epoch_end(self) -> None:
        logger = self.logger
        if logger is None or not self.trainer.is_global_zero:
            return
        experiment: Any = getattr(logger, "experiment", None)
        if not hasattr(experiment, "add_image"):
            return
        samples = generate(self.generator, self.sample_noise).cpu()
        grid = torchvision.utils.make_grid(samples, nrow=8, normalize=True, value_range=(-1, 1))
        experiment.add_image("samples/fixed_noise", grid, global_step=self.current_epoch + 1)
