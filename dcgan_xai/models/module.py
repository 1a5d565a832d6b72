"""The LightningModule: G and D trained against each other with manual optimization."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import lightning as L
import torch
import torchvision
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from dcgan_xai.data.mnist import to_unit_range
from dcgan_xai.errors import Diverged
from dcgan_xai.models.networks import Generator, build_discriminator, dcgan_init
from dcgan_xai.models.sampling import generate
from dcgan_xai.models.settings import ModelConfig
from dcgan_xai.models.step import STEP_METRICS, GraphedStep, gan_step
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


@dataclass(frozen=True)
class Speed:
    """How the training step runs, not what it computes; not a hyperparameter (a checkpoint does
    not record it, and a resumed run may change it).

    Attributes:
        channels_last: both nets in channels-last memory format.
        compile: the step through ``torch.compile``d G and D (eager if compiling fails).
        cuda_graph: the whole step captured once as a CUDA graph and replayed (one CUDA device;
            eager for the warm-up steps and for a batch of another size).
    """

    channels_last: bool = False
    compile: bool = False
    cuda_graph: bool = False


_M = ModelConfig


class DCGAN(L.LightningModule):
    """A DCGAN on 64x64 images.

    The step makes no host sync: its metrics (``train/d_loss``, ``train/g_loss``,
    ``train/d_real``, ``train/d_fake`` and, with instance noise, ``train/instance_noise``) are
    read back and logged every ``trainer.log_every_n_steps`` steps only, and their epoch means
    (``epoch/*``, weighted by batch size) once an epoch; the losses are checked for NaN/inf at the
    same cadence (an error names the range of steps).

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
        speed: how the step runs (:class:`Speed`); not saved with the hyperparameters.
    """

    sample_noise: torch.Tensor

    def __init__(
        self,
        arch: str = _M.arch,
        nz: int = _M.nz,
        ngf: int = _M.ngf,
        ndf: int = _M.ndf,
        lr: float = _M.lr,
        beta1: float = _M.beta1,
        beta2: float = _M.beta2,
        bn_momentum: float = _M.bn_momentum,
        seed: int = 0,
        n_samples: int = _M.n_samples,
        instance_noise: float = _M.instance_noise,
        instance_noise_decay_epochs: float = _M.instance_noise_decay_epochs,
        lr_milestones: list[int] | tuple[int, ...] = (),
        lr_gamma: float = _M.lr_gamma,
        speed: Speed | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["speed"])
        self.speed = speed or Speed()
        self.automatic_optimization = False
        self.generator = Generator(nz, ngf, bn_momentum=bn_momentum)
        self.discriminator = build_discriminator(arch, ndf, bn_momentum)
        self.generator.apply(dcgan_init)
        self.discriminator.apply(dcgan_init)
        gen = torch.Generator().manual_seed(seed + 7919)
        self.register_buffer("sample_noise", torch.randn(n_samples, nz, 1, 1, generator=gen))
        self._step_nets: dict[str, nn.Module] = {"g": self.generator, "d": self.discriminator}
        self._graph: GraphedStep | None = None
        self._graph_key: tuple[Any, ...] = ()
        self.shown: dict[str, float] = {}  # the last logged step metrics, for the progress bar
        self._reset_epoch()

    def _reset_epoch(self) -> None:
        self._sums: torch.Tensor | None = None  # (4,) sum of metrics x batch size, on the device
        self._noise_sum = torch.zeros(())  # instance noise x batch size, on the host
        self._count = 0
        self._finite: torch.Tensor | None = None  # all losses finite since the last check
        self._checked_after = -1  # the step of the last check in this epoch

    def on_fit_start(self) -> None:
        if self.speed.channels_last:
            self.generator.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            self.discriminator.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if self.speed.compile:
            gen = torch.Generator().manual_seed(0)  # trial inputs; the global RNG is untouched
            z = self._layout(
                torch.randn(2, self.hparams["nz"], 1, 1, generator=gen).to(self.device)
            )
            x = self._layout(torch.rand(2, 1, 64, 64, generator=gen).to(self.device) * 2 - 1)
            self._step_nets["g"] = try_compile(self.generator, z)
            self._step_nets["d"] = try_compile(self.discriminator, x)
        self._graph = None  # a new fit (or a restored checkpoint) captures anew

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the nets' memory format (a (N, C, 1, 1) noise batch too: its strides decide
        the layout the first transposed convolution's gradient is computed in)."""
        if self.speed.channels_last:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        betas = (self.hparams["beta1"], self.hparams["beta2"])
        # fused: one kernel per optimizer and no host read of the step count (CPU and CUDA)
        fused = True if self.device.type in ("cpu", "cuda") else None
        lr, capturable = self.hparams["lr"], self.speed.cuda_graph
        return [
            torch.optim.Adam(
                net.parameters(), lr=lr, betas=betas, fused=fused, capturable=capturable
            )
            for net in (self.generator, self.discriminator)
        ]

    def instance_noise_at(self, batch_idx: int) -> float:
        """The instance noise's standard deviation at step ``batch_idx`` of the current epoch."""
        std = float(self.hparams["instance_noise"])
        if std == 0.0:
            return 0.0
        batches = max(int(self.trainer.num_training_batches), 1)
        progress = self.current_epoch + batch_idx / batches
        return instance_noise_std(std, float(self.hparams["instance_noise_decay_epochs"]), progress)

    def step_inputs(
        self, images: torch.Tensor, batch_idx: int, keep_noise: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...] | None, float]:
        """The step's inputs from a uint8 batch: real images, noise z, the instance noise (scaled;
        None when it is 0, unless ``keep_noise``) and its standard deviation, drawn in that order
        from the step's seeded stream (:func:`step_generator`)."""
        real = self._layout(to_unit_range(images))  # (N, 1, 64, 64)
        device, n = real.device, real.shape[0]
        stream = step_generator(
            self.hparams["seed"], self.current_epoch, batch_idx, device, self.global_rank
        )
        z = self._layout(torch.randn(n, self.hparams["nz"], 1, 1, generator=stream, device=device))
        sigma = self.instance_noise_at(batch_idx)
        if sigma == 0.0 and not (keep_noise and self.hparams["instance_noise"] > 0):
            return real, z, None, sigma
        kind = device.type
        fake = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else real.dtype
        noise = tuple(
            sigma * torch.randn(real.shape, generator=stream, device=device, dtype=dtype)
            for dtype in (real.dtype, fake, fake)  # D sees real, detached fake and G's fake
        )
        return real, z, noise, sigma

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        graph = self._graph_for(batch[0].shape[0])
        real, z, noise, sigma = self.step_inputs(batch[0], batch_idx, keep_noise=graph is not None)
        opts = self.optimizers()  # type: ignore[misc,attr-defined]
        if graph is None:
            nets = self._step_nets["g"], self._step_nets["d"]
            metrics = gan_step(*nets, *opts, real, z, noise, self.manual_backward)  # type: ignore[call-arg,union-attr]
        else:
            metrics = graph(real, z, noise)
            for opt in opts:  # type: ignore[union-attr]  # Lightning's counters advance as eagerly
                opt._on_before_step()
                opt._on_after_step()
        self._record(metrics, sigma, real.shape[0], batch_idx)

    def _graph_for(self, n: int) -> GraphedStep | None:
        """The captured step for batches of ``n`` images, or None (eager). A change of learning
        rate (baked into the graph) captures anew."""
        if not self.speed.cuda_graph or self.device.type != "cuda":
            return None
        opts = self.optimizers(use_pl_optimizer=False)  # type: ignore[attr-defined]
        key = (n, *(group["lr"] for opt in opts for group in opt.param_groups))  # type: ignore[union-attr]
        if self._graph is None or key[1:] != self._graph_key[1:]:
            step = partial(gan_step, self.generator, self.discriminator, *opts)  # type: ignore[misc]
            self._graph, self._graph_key = GraphedStep(step), key
        return self._graph if n == self._graph_key[0] else None

    def _record(self, metrics: torch.Tensor, sigma: float, n: int, batch_idx: int) -> None:
        """Accumulate a step's metrics on the device; read and log them at the logging cadence,
        their epoch means at the epoch's last step."""
        weighted = metrics * n  # accumulated as Lightning does: sum(value * batch) / sum(batch)
        self._sums = weighted if self._sums is None else self._sums + weighted
        self._noise_sum = self._noise_sum + torch.tensor(sigma) * n
        self._count += n
        losses = metrics[:2]
        finite = (torch.isfinite(losses) & (losses.abs() < LOSS_LIMIT)).all()
        self._finite = finite if self._finite is None else self._finite & finite
        trainer = self.trainer
        every = int(trainer.log_every_n_steps)  # type: ignore[attr-defined]
        stepped = trainer.fit_loop.epoch_loop._batches_that_stepped  # the logger's step
        log_now = every > 0 and (stepped + 1) % every == 0
        last = batch_idx + 1 >= int(trainer.num_training_batches)
        if not (log_now or last):
            return
        self._check_finite(metrics, batch_idx)
        names = [f"train/{k}" for k in STEP_METRICS]
        noise = self.hparams["instance_noise"] > 0
        if log_now:
            values = dict(zip(names, metrics.cpu(), strict=True))
            if noise:
                values["train/instance_noise"] = torch.tensor(sigma)
            self.log_dict(values, on_step=True, on_epoch=False, batch_size=n)
            self.shown = {k.removeprefix("train/"): float(v) for k, v in values.items()}
        if last:
            assert self._sums is not None
            means = dict(zip(names, (self._sums / self._count).cpu(), strict=True))
            if noise:
                means["train/instance_noise"] = self._noise_sum / self._count
            epoch = {k.replace("train/", "epoch/"): v for k, v in means.items()}
            self.log_dict(epoch, on_step=False, on_epoch=True, reduce_fx="sum", batch_size=1)

    def on_train_epoch_start(self) -> None:
        self._reset_epoch()
        milestones = list(self.hparams.get("lr_milestones") or ())
        if milestones:
            lr = learning_rate(
                self.hparams["lr"], milestones, self.hparams["lr_gamma"], self.current_epoch
            )
            for opt in self.optimizers():  # type: ignore[union-attr]
                for group in opt.param_groups:
                    group["lr"] = lr
            self.log("train/lr", lr, on_step=False, on_epoch=True)

    def _check_finite(self, metrics: torch.Tensor, batch_idx: int) -> None:
        """Stop on a NaN/inf loss, or one above :data:`LOSS_LIMIT` (a BCE loss that large means
        the logits exploded), in any step since the last check."""
        assert self._finite is not None
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
        d_loss, g_loss = metrics[:2].tolist()
        raise NonFiniteLossError(
            f"loss became non-finite or above {LOSS_LIMIT:g} (d_loss={d_loss:.4g}, "
            f"g_loss={g_loss:.4g} at the last step) at epoch {self.current_epoch + 1}, {steps}; "
            f"{kept}"
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
