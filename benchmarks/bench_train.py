"""Training throughput: the project's Lightning path against the PyTorch DCGAN example's recipe.

    python -m benchmarks.bench_train [--steps 20] [--warmup 3] [--batch 128] [--data data/mnist]
        [--config LABEL=EXPERIMENT[,override,...]] ...

All use the same nets (paper D, G at ngf=ndf=64), batch size and machine, in one run: the
reference is measured once, then each ``--config`` is timed and printed with its ratio to the
reference. Both are timed the same way: one device sync where the timed window starts (after
the warm-up steps, the reference's loader workers already running) and one where it ends, so the
host may run ahead of the GPU in between. Each line also gives the host syncs a step makes
(``.item()``, ``bool()``, ``float()`` of a tensor), counted in a separate run of the same steps.
By default: ``--experiment`` on the path ``trainer.precision=auto`` chooses on this machine, and
the same in fp32.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import lightning as L
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

import dcgan_xai.config  # noqa: F401
from benchmarks.common import PILMNIST, HostSyncs, full_width_nets, machine, reference_loop
from dcgan_xai.config import compose_config
from dcgan_xai.numerics import with_numeric_path
from dcgan_xai.runs.layout import RunDir
from dcgan_xai.training import (
    build_callbacks,
    build_datamodule,
    build_model,
    build_trainer,
)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Throughput(L.Callback):
    """Images/s over batches [warmup, warmup + steps): a sync at the window's start and end."""

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.steps = warmup, steps
        self.start = self.end = 0.0
        self.images = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            sync()
            self.start = time.perf_counter()
        if batch_idx >= self.warmup:
            self.images += batch[0].shape[0]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.warmup + self.steps - 1:
            sync()
            self.end = time.perf_counter()

    @property
    def rate(self) -> float:
        if self.end <= self.start:  # the epoch ended before the window did
            raise SystemExit(f"the timed window of {self.warmup} + {self.steps} batches did not "
                             "complete: the epoch has fewer batches; use fewer steps or a "
                             "smaller --batch")  # fmt: skip
        return self.images / (self.end - self.start)


class CountSyncs(L.Callback):
    """Points a :class:`HostSyncs` at the step being run (None outside the training steps)."""

    def __init__(self, syncs: HostSyncs, warmup: int):
        self.syncs, self.warmup = syncs, warmup

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.syncs.where = "step" if batch_idx >= self.warmup else None

    def on_train_epoch_end(self, trainer, pl_module):
        self.syncs.where = None


def bench_config(args, experiment: str, extra: list[str], *more: str) -> DictConfig:
    """The training config one benchmark step uses: one epoch of warm-up + timed steps."""
    return compose_config("train", [f"experiment={experiment}", *extra, f"data.root={args.data}",
                                       f"data.batch_size={args.batch}", "trainer.max_epochs=1",
                                       f"trainer.limit_train_batches={args.warmup + args.steps}",
                                       "trainer.enable_progress_bar=false", *more])  # fmt: skip


def project_fit(cfg: DictConfig, extra: list[L.Callback]) -> None:
    with tempfile.TemporaryDirectory(prefix="bench_train_") as out:
        run = RunDir(out)
        trainer = build_trainer(cfg, run, [*build_callbacks(cfg, run), *extra])
        trainer.fit(build_model(cfg), datamodule=build_datamodule(cfg))


def project_rate(args, experiment: str, extra: list[str]) -> tuple[float, float, str]:
    """Images/s of the project's training, its host syncs per step, and the path it took."""
    cfg = with_numeric_path(bench_config(args, experiment, extra))
    meter = Throughput(args.warmup, args.steps)
    project_fit(cfg, [meter])
    syncs = HostSyncs()
    with syncs:
        project_fit(cfg, [CountSyncs(syncs, args.warmup)])
    sp = cfg.speed
    path = (
        f"{cfg.trainer.precision}, channels_last {sp.channels_last}, data on the device "
        f"{sp.on_device}, CUDA graph {sp.cuda_graph}"
    )
    return meter.rate, syncs.counts["step"] / args.steps, path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--data", default="data/mnist")
    p.add_argument("--experiment", default="mnist64")
    p.add_argument("--config", action="append", default=[],
                   help="LABEL=EXPERIMENT[,override,...]; repeat to time several paths")  # fmt: skip
    args = p.parse_args()
    configs = [parse_config(c) for c in args.config] or [
        ("chosen", args.experiment, []),  # the path trainer.precision=auto takes here
        ("fp32", args.experiment, ["trainer.precision=32-true", "speed.channels_last=false"]),
    ]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"machine: {machine()}")

    g, d = full_width_nets(device)
    loader = DataLoader(PILMNIST(args.data), batch_size=args.batch, shuffle=True,
                        num_workers=args.workers, drop_last=True)  # fmt: skip
    ref = reference_loop(g, d, loader, args.steps, args.warmup, device)
    syncs = HostSyncs()
    syncs.where = "step"
    with syncs:
        reference_loop(g, d, loader, 2, 0, device)
    print(
        f"reference (PIL Resize(64), {args.workers} workers, fp32, Sigmoid+BCE): {ref:,.0f} "
        f"images/s, {syncs.counts['step'] / 2:g} host syncs per step",
        flush=True,
    )

    for label, experiment, extra in configs:
        ours, per_step, path = project_rate(args, experiment, extra)
        command = " ".join([f"experiment={experiment}", *extra])
        print(
            f"{label}: dcgan_xai train {command} ({path}; Lightning, callbacks on): "
            f"{ours:,.0f} images/s; ratio to the reference {ours / ref:.2f}x; "
            f"{per_step:g} host syncs per step (batch {args.batch}, {args.steps} timed steps)",
            flush=True,
        )


def parse_config(spec: str) -> tuple[str, str, list[str]]:
    label, _, rest = spec.partition("=")
    experiment, *extra = rest.split(",")
    if not label or not experiment:
        raise SystemExit(f"--config {spec!r} is not allowed; write LABEL=EXPERIMENT[,override,...]")
    return label, experiment, extra


if __name__ == "__main__":
    main()
