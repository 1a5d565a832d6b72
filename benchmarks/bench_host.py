"""Host overhead of the training step: the project's Lightning step against a bare PyTorch loop of
the same step, with nets so small that the step is almost all host work (Python, dispatch).

    python -m benchmarks.bench_host [--steps 300] [--warmup 20] [--batch 8] [--width 4]

Both run on the CPU with one thread and the same data, inputs and step function
(:func:`dcgan_xai.models.step.gan_step`): the bare loop draws each step's inputs as the module
does and calls the step with plain optimizers; the Lightning path is ``dcgan_xai``'s training
(callbacks off, logging every 50 steps). Each prints host (CPU) time per step over the same
steps after a warm-up, and the ratio of the two.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import lightning as L
import torch

import dcgan_xai.config  # noqa: F401
from benchmarks.common import machine
from dcgan_xai.config import compose_config
from dcgan_xai.models.step import gan_step
from dcgan_xai.numerics import with_numeric_path
from dcgan_xai.runs.layout import RunDir
from dcgan_xai.training import (
    build_callbacks,
    build_datamodule,
    build_model,
    build_trainer,
)


class HostTime(L.Callback):
    """CPU time of batches [warmup, warmup + steps), Lightning's work around them included."""

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.steps = warmup, steps
        self.start = self.seconds = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            self.start = time.process_time()
        if batch_idx == self.warmup + self.steps:
            self.seconds = time.process_time() - self.start


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--width", type=int, default=4, help="ngf = ndf")
    p.add_argument("--data", default="data/mnist")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {machine()} (set to 1 thread)")
    cfg = compose_config("train", [
        "experiment=mnist64_cpu", "callbacks=none", f"data.root={args.data}",
        f"data.batch_size={args.batch}", f"model.ngf={args.width}", f"model.ndf={args.width}",
        "trainer.max_epochs=1", "trainer.precision=32-true", "trainer.accelerator=cpu",
        f"trainer.limit_train_batches={args.warmup + args.steps + 1}",
        "trainer.log_every_n_steps=50", "trainer.enable_progress_bar=false",
        "logger.tensorboard=false"])  # fmt: skip
    cfg = with_numeric_path(cfg)
    bare, ours = [], []
    for _ in range(args.repeat):
        bare.append(bare_loop(cfg, args))
        ours.append(lightning_loop(cfg, args))
    for label, values in (("bare PyTorch loop", bare), ("dcgan_xai Lightning step", ours)):
        shown = " / ".join(f"{1e3 * v:.2f}" for v in values)
        print(f"{label}: {shown} ms host time per step (runs 1..{args.repeat})")
    ratios = sorted(o / b for o, b in zip(ours, bare, strict=True))
    print(
        f"ratio Lightning / bare, per run: min {ratios[0]:.2f}x, median "
        f"{ratios[len(ratios) // 2]:.2f}x, max {ratios[-1]:.2f}x (nets ngf = ndf = {args.width}, "
        f"batch {args.batch}, {args.steps} steps after {args.warmup} of warm-up)"
    )


def lightning_loop(cfg, args) -> float:
    meter = HostTime(args.warmup, args.steps)
    with tempfile.TemporaryDirectory(prefix="bench_host_") as out:
        run = RunDir(out)
        trainer = build_trainer(cfg, run, [*build_callbacks(cfg, run), meter])
        trainer.fit(build_model(cfg), datamodule=build_datamodule(cfg))
    return meter.seconds / args.steps


def bare_loop(cfg, args) -> float:
    """The same step on the same data without Lightning: inputs drawn as the module draws them."""
    model = build_model(cfg)
    dm = build_datamodule(cfg)
    dm.setup()
    assert dm.train_set is not None
    opt_g, opt_d = model.configure_optimizers()
    rows = torch.randperm(len(dm.train_set)).split(args.batch)
    start = 0.0
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            start = time.process_time()
        images, _, _ = dm.train_set[rows[i]]
        real, z, noise, _ = model.step_inputs(images, i)
        metrics = gan_step(model.generator, model.discriminator, opt_g, opt_d, real, z, noise)
        finite = torch.isfinite(metrics[:2]).all()  # what the module accumulates, unread
        del finite
    return (time.process_time() - start) / args.steps


if __name__ == "__main__":
    main()
