"""The training step: one function of the step's math, no host sync outside the logging cadence,
and the same training, logs and epoch means as the step it replaced."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from benchmarks.common import HostSyncs
from dcgan_xai import numerics
from dcgan_xai.data.mnist import to_unit_range
from dcgan_xai.models.module import DCGAN, step_generator
from dcgan_xai.numerics import with_numeric_path
from dcgan_xai.runs.layout import RunDir
from dcgan_xai.training import (
    build_callbacks,
    build_datamodule,
    build_model,
    build_trainer,
    fields,
)
from tests.helpers import same_weights


class LegacyStep(DCGAN):
    """The training step as it was before the step function, kept as the reference: Lightning's
    toggles, noise drawn as it is used, every metric logged at every step (and to the progress
    bar)."""

    def training_step(self, batch, batch_idx):
        images, _, _ = batch
        real = self._layout(to_unit_range(images))
        generator, discriminator = self._step_nets["g"], self._step_nets["d"]
        n = real.shape[0]
        opt_g, opt_d = self.optimizers()
        stream = step_generator(
            self.hparams["seed"], self.current_epoch, batch_idx, self.device, self.global_rank
        )
        z = self._layout(
            torch.randn(n, self.hparams["nz"], 1, 1, generator=stream, device=self.device)
        )
        fake = generator(z)
        sigma = self.instance_noise_at(batch_idx)

        def seen_by_d(x):
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


def fit(cfg, run_dir, model_class=DCGAN, extra=()):
    """Train ``model_class`` built from ``cfg`` into ``run_dir``; return the run and trainer."""
    cfg = with_numeric_path(cfg)
    run = RunDir(run_dir)
    speed = build_model(cfg).speed
    L.seed_everything(cfg.seed, verbose=False)  # as train() does: the same initial weights
    model = model_class(**fields(cfg.model), seed=cfg.seed, speed=speed)
    trainer = build_trainer(cfg, run, [*build_callbacks(cfg, run), *extra])
    trainer.fit(model, datamodule=build_datamodule(cfg))
    return run, trainer


def scalars(run: RunDir) -> dict[str, list[tuple[int, float]]]:
    ea = EventAccumulator(str(run.tensorboard), size_guidance={"scalars": 0})
    ea.Reload()
    return {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}


PATHS = ["32-true"] + (["bf16-mixed"] if numerics.native_bf16() else [])


@pytest.mark.parametrize("precision", PATHS)
@pytest.mark.parametrize("noise", [False, True])
def test_the_step_function_trains_and_logs_as_the_step_it_replaced(
    smoke_cfg, tmp_path, precision, noise
):
    overrides = [
        "callbacks=none",
        f"trainer.precision={precision}",
        "data.limit=250",  # 7 batches of 32 and an odd last one of 26
        "trainer.log_every_n_steps=3",
        "model.lr_milestones=[1]",
        "model.lr_gamma=0.5",
    ]
    if noise:
        overrides += ["model.instance_noise=0.3", "model.instance_noise_decay_epochs=2"]
    ours, trainer = fit(smoke_cfg(*overrides), tmp_path / "ours")
    ref, ref_trainer = fit(smoke_cfg(*overrides), tmp_path / "ref", LegacyStep)
    assert same_weights(ours.checkpoint(2), ref.checkpoint(2))
    logged, expected = scalars(ours), scalars(ref)
    assert logged.keys() == expected.keys()
    assert ("train/instance_noise" in logged) == noise and "epoch/d_loss" in logged
    for tag, values in expected.items():  # same steps, same values (epoch means included)
        assert logged[tag] == values, tag
    assert [s for s, _ in logged["train/d_loss"]] == [2, 5, 8, 11, 14]  # every 3rd of 16 steps
    means = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("epoch/")}
    assert means.keys() == {
        k for k in ref_trainer.callback_metrics if k.startswith("epoch/")
    }  # what the per-epoch line and train()'s result read
    for key, value in means.items():
        assert torch.equal(value.cpu(), ref_trainer.callback_metrics[key].cpu()), key
    assert trainer.global_step == ref_trainer.global_step == 32  # 2 optimizer steps a batch


class MarkSteps(L.Callback):
    """Names the step whose syncs a :class:`HostSyncs` counts: from a batch's start to the
    next batch's (Lightning logs a step after its batch-end hooks)."""

    def __init__(self, syncs: HostSyncs):
        self.syncs = syncs

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.syncs.where = trainer.fit_loop.epoch_loop._batches_that_stepped

    def on_train_epoch_end(self, trainer, pl_module):
        self.syncs.where = "epoch end"


@pytest.mark.parametrize("precision", PATHS)
def test_no_host_sync_in_steps_that_log_nothing(smoke_cfg, tmp_path, precision):
    cfg = smoke_cfg(
        "callbacks=none",
        f"trainer.precision={precision}",
        "trainer.log_every_n_steps=4",
        "trainer.enable_progress_bar=true",  # the bar shows the logged metrics
        "model.instance_noise=0.3",
        "model.instance_noise_decay_epochs=2",
    )
    syncs = HostSyncs()
    with syncs:
        fit(cfg, tmp_path, extra=[MarkSteps(syncs)])
    steps = range(16)  # 2 epochs of 8 steps
    logging = {s for s in steps if (s + 1) % 4 == 0 or s % 8 == 7}  # cadence, epoch's last
    assert all(syncs.counts[s] == 0 for s in steps if s not in logging), syncs.counts
    assert all(syncs.counts[s] > 0 for s in logging)  # they read the metrics back
