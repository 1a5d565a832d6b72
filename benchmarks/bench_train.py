"""Training throughput: the project's Lightning path against the PyTorch DCGAN example's recipe.

    python -m benchmarks.bench_train [--steps 20] [--warmup 3] [--batch 128] [--data data/mnist]
        [--config LABEL=EXPERIMENT[,override,...]] ...

All use the same nets (paper D, G at ngf=ndf=64), batch size and machine, in one run: the
reference is measured once, then each ``--config`` is timed and printed with its ratio to the
reference. By default: ``--experiment`` on the path ``trainer.precision=auto`` chooses on this
machine (the CPU fast path where the processor has native bf16), and the same in fp32.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from torch.utils.data import DataLoader

import dcgan_xai.config  # noqa: F401
from benchmarks.common import PILMNIST, full_width_nets, machine, reference_loop
from dcgan_xai.runs import RunDir
from dcgan_xai.training import (
    build_callbacks,
    build_datamodule,
    build_model,
    build_trainer,
    with_numeric_path,
)

CONF = str(Path(__file__).resolve().parents[1] / "dcgan_xai" / "conf")


class Throughput(L.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.start, self.images = warmup, 0.0, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.start, self.images = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx >= self.warmup:
            self.images += batch[0].shape[0]
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.end = time.perf_counter()

    @property
    def rate(self) -> float:
        return self.images / (self.end - self.start)


def bench_config(args, experiment: str, extra: list[str], *more: str) -> DictConfig:
    """The training config one benchmark step uses: one epoch of warm-up + timed steps."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train", overrides=[f"experiment={experiment}", *extra, f"data.root={args.data}",
                                           f"data.batch_size={args.batch}", "trainer.max_epochs=1",
                                           f"trainer.limit_train_batches={args.warmup + args.steps}",
                                           "trainer.enable_progress_bar=false", *more])  # fmt: skip


def project_rate(args, run_dir: Path, experiment: str, extra: list[str]) -> tuple[float, str]:
    """Images/s of the project's training, and the numeric path it took."""
    cfg = with_numeric_path(bench_config(args, experiment, extra))
    meter = Throughput(args.warmup)
    run = RunDir(run_dir)
    trainer = build_trainer(cfg, run, [*build_callbacks(cfg, run), meter])
    trainer.fit(build_model(cfg), datamodule=build_datamodule(cfg))
    return meter.rate, f"{cfg.trainer.precision}, channels_last {cfg.model.channels_last}"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--data", default="data/mnist")
    p.add_argument("--experiment", default="mnist64", help="mnist64_fast for the GPU fast path")
    p.add_argument("--config", action="append", default=[],
                   help="LABEL=EXPERIMENT[,override,...]; repeat to time several paths")  # fmt: skip
    args = p.parse_args()
    configs = [parse_config(c) for c in args.config] or [
        ("chosen", args.experiment, []),  # the path trainer.precision=auto takes here
        ("fp32", args.experiment, ["trainer.precision=32-true", "model.channels_last=false"]),
    ]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"machine: {machine()}")

    g, d = full_width_nets(device)
    loader = DataLoader(PILMNIST(args.data), batch_size=args.batch, shuffle=True,
                        num_workers=args.workers, drop_last=True)  # fmt: skip
    ref = reference_loop(g, d, loader, args.steps, args.warmup, device)
    print(
        f"reference (PIL Resize(64), {args.workers} workers, fp32, Sigmoid+BCE): {ref:,.0f} images/s",
        flush=True,
    )

    for label, experiment, extra in configs:
        with tempfile.TemporaryDirectory(prefix="bench_train_") as out:
            ours, path = project_rate(args, Path(out), experiment, extra)
        command = " ".join([f"experiment={experiment}", *extra])
        print(
            f"{label}: dcgan_xai train {command} ({path}; Lightning, callbacks on): "
            f"{ours:,.0f} images/s; ratio to the reference {ours / ref:.2f}x "
            f"(batch {args.batch}, {args.steps} timed steps)",
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
