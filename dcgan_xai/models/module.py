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
from dcgan_xai.errors import Diverged
from dcgan_xai.models.networks import Generator, build_discriminator, dcgan_init
from dcgan_xai.models.sampling import generate
from dcgan_xai.state import preserved_state

LOSS_LIMIT = 1e4  # a BCE-with-logits loss this large needs logits this large: the nets diverged


class NonFiniteLossError(Diverged):
    """A loss became NaN, infinite or above :data:`LOSS_LIMIT`; training stops and the last
    good checkpoint is kept."""


def try_compile(module: nn.Module, example: torch.Tensor) -> nn.Module:
    """``torch.compile(module)`` if a trial forward and backward pass works, else ``module``.

    The trial leaves no trace: mode, BatchNorm buffers and gradients are restored.
    """
    try:
        compiled = torch.compile(module, dynamic=False)  # one batch size: no dynamic-shape kernels
        with preserved_state(module):
            compiled(example).float().sum().backward()
        return compiled  # type: ignore[return-value]
    except Exception as err:  # compiler or backend failure: train eagerly
        rank_zero_warn(
            f"torch.compile of {type(module).__name__} failed ({type(err).__name__}: "
            f"{' '.join(str(err).split())[:200]}); training with the eager module"
        )
        return module


def step_generator(
    seed: int, epoch: int, batch_idx: int, device: torch.device, rank: int = 0
) -> torch.Generator:
    """The random stream of one training step on one process.

    A pure function of (seed, epoch, batch, rank), so a resumed run draws what an uninterrupted
    one would, and DDP processes draw different noise (their fakes are different images).
    """
    stream = (seed * 1_000_003 + epoch) * 100_003 + batch_idx + rank * 1_000_000_007_000
    return torch.Generator(device=device).manual_seed(stream % 2**64)  # any uint32 seed fits


def instance_noise_std(std: float, decay_epochs: float, progress: float) -> float:
    """The instance noise's standard deviation after ``progress`` epochs of training.

    ``std`` at the start, falling linearly to 0 at ``decay_epochs`` (constant if that is 0).
    """
    if std <= 0.0 or decay_epochs <= 0.0:
        return max(std, 0.0)
    return std * max(0.0, 1.0 - progress / decay_epochs)


def learning_rate(lr: float, milestones: list[int], gamma: float, epoch: int) -> float:
    """The learning rate of (0-based) ``epoch``: ``lr`` times ``gamma`` for every milestone
    at or before it, as ``torch.optim.lr_scheduler.MultiStepLR`` steps it once an epoch.

    A pure function of the epoch, so a resumed run trains at the rate an uninterrupted one would.
    """
    return lr * gamma ** sum(1 for m in milestones if m <= epoch)


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
        instance_noise: standard deviation of Gaussian noise added to every image D sees in
            training, real and fake (Sønderby et al. 2016), in the [-1, 1] pixel scale; 0 is
            the paper's recipe. The noise comes from the step's seeded stream, so runs stay
            reproducible and resumable. Grad-CAM, FID and the probe scores see clean images.
        instance_noise_decay_epochs: the noise falls linearly to 0 over this many epochs
            (0: constant).
        lr_milestones: epochs (counted from 0, as ``MultiStepLR`` counts them) from which the
            learning rate of both nets is multiplied by ``lr_gamma`` once more; empty: the
            paper's constant rate.
        lr_gamma: the factor applied at each milestone.
        finite_check_every: check the losses for NaN/inf every this many steps and at each
            epoch's last step. 1 checks every step, which makes the host wait for the GPU at
            every step; with N > 1 the check is accumulated on the device and read every N
            steps (the error then names the range of steps).
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
        instance_noise: float = 0.0,
        instance_noise_decay_epochs: float = 0.0,
        lr_milestones: list[int] | tuple[int, ...] = (),
        lr_gamma: float = 0.1,
        finite_check_every: int = 1,
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
        self._finite: torch.Tensor | None = None  # all losses finite since the last check
        self._checked_after = -1  # the step of the last check in this epoch

    def on_fit_start(self) -> None:
        if self.hparams["channels_last"]:
            self.generator.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            self.discriminator.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if self.hparams["compile"]:
            gen = torch.Generator().manual_seed(0)  # trial inputs; the global RNG is untouched
            z = self._layout(
                torch.randn(2, self.hparams["nz"], 1, 1, generator=gen).to(self.device)
            )
            x = self._layout(torch.rand(2, 1, 64, 64, generator=gen).to(self.device) * 2 - 1)
            self._step_nets["g"] = try_compile(self.generator, z)
            self._step_nets["d"] = try_compile(self.discriminator, x)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the nets' memory format (a (N, C, 1, 1) noise batch too: its strides decide
        the layout the first transposed convolution's gradient is computed in)."""
        if self.hparams["channels_last"]:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        betas = (self.hparams["beta1"], self.hparams["beta2"])
        fused = True if self.device.type == "cuda" else None  # one kernel per step on a GPU
        lr = self.hparams["lr"]
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=lr, betas=betas, fused=fused)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=betas, fused=fused)
        return [opt_g, opt_d]

    def instance_noise_at(self, batch_idx: int) -> float:
        """The instance noise's standard deviation at step ``batch_idx`` of the current epoch."""
        std = float(self.hparams["instance_noise"])
        if std == 0.0:
            return 0.0
        batches = max(int(self.trainer.num_training_batches), 1)
        progress = self.current_epoch + batch_idx / batches
        return instance_noise_std(std, float(self.hparams["instance_noise_decay_epochs"]), progress)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        images, _, _ = batch
        real = self._layout(to_unit_range(images))  # (N, 1, 64, 64)
        generator, discriminator = self._step_nets["g"], self._step_nets["d"]
        n = real.shape[0]
        opt_g, opt_d = self.optimizers()  # type: ignore[misc,attr-defined]
        stream = step_generator(
            self.hparams["seed"], self.current_epoch, batch_idx, self.device, self.global_rank
        )
        z = self._layout(
            torch.randn(n, self.hparams["nz"], 1, 1, generator=stream, device=self.device)
        )
        fake = generator(z)
        sigma = self.instance_noise_at(batch_idx)

        def seen_by_d(x: torch.Tensor) -> torch.Tensor:
            """What D sees in training: ``x``, plus instance noise when it is on."""
            if sigma == 0.0:
                return x
            noise = torch.randn(x.shape, generator=stream, device=x.device, dtype=x.dtype)
            return x + sigma * noise

        self.toggle_optimizer(opt_d)
        logit_real = discriminator(seen_by_d(real))
        logit_fake = discriminator(seen_by_d(fake.detach()))
        d_loss = F.binary_cross_entropy_with_logits(
            logit_real, torch.ones_like(logit_real)
        ) + F.binary_cross_entropy_with_logits(logit_fake, torch.zeros_like(logit_fake))
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        opt_d.step()
        self.untoggle_optimizer(opt_d)

        self.toggle_optimizer(opt_g)
        logit_gen = discriminator(seen_by_d(fake))
        g_loss = F.binary_cross_entropy_with_logits(logit_gen, torch.ones_like(logit_gen))
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(g_loss)
        opt_g.step()
        self.untoggle_optimizer(opt_g)

        self._check_finite(torch.stack([d_loss.detach(), g_loss.detach()]), batch_idx)
        metrics = {
            "train/d_loss": d_loss.detach(),
            "train/g_loss": g_loss.detach(),
            "train/d_real": torch.sigmoid(logit_real.detach().float()).mean(),
            "train/d_fake": torch.sigmoid(logit_fake.detach().float()).mean(),
        }
        if self.hparams["instance_noise"] > 0:
            metrics["train/instance_noise"] = torch.tensor(sigma)
        self.log_dict(metrics, on_step=True, on_epoch=False, prog_bar=True, batch_size=n)
        epoch_means = {k.replace("train/", "epoch/"): v for k, v in metrics.items()}
        self.log_dict(epoch_means, on_step=False, on_epoch=True, batch_size=n)

    def on_train_epoch_start(self) -> None:
        self._finite, self._checked_after = None, -1
        milestones = list(self.hparams.get("lr_milestones") or ())
        if milestones:
            lr = learning_rate(
                self.hparams["lr"], milestones, self.hparams["lr_gamma"], self.current_epoch
            )
            for opt in self.optimizers():  # type: ignore[union-attr]
                for group in opt.param_groups:
                    group["lr"] = lr
            self.log("train/lr", lr, on_step=False, on_epoch=True)

    def _check_finite(self, losses: torch.Tensor, batch_idx: int) -> None:
        """Stop on a NaN/inf loss, or one above :data:`LOSS_LIMIT` (a BCE loss that large means
        the logits exploded); read on the host every ``finite_check_every`` steps only."""
        finite = (torch.isfinite(losses) & (losses.abs() < LOSS_LIMIT)).all()
        self._finite = finite if self._finite is None else self._finite & finite
        every = max(int(self.hparams.get("finite_check_every", 1)), 1)
        last = batch_idx + 1 >= int(self.trainer.num_training_batches)
        if (batch_idx + 1) % every and not last:
            return
        first, self._checked_after = self._checked_after + 1, batch_idx
        if bool(self._finite):
            self._finite = None
            return
        steps = f"step {batch_idx}" if first == batch_idx else f"steps {first}-{batch_idx}"
        kept = (
            "the last good checkpoint is kept"
            if self.current_epoch
            else "no checkpoint was written"
        )
        raise NonFiniteLossError(
            f"loss became non-finite or above {LOSS_LIMIT:g} (d_loss={losses[0].item():.4g}, "
            f"g_loss={losses[1].item():.4g} at the "
            f"last step) at epoch {self.current_epoch + 1}, {steps}; {kept}"
        )

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
