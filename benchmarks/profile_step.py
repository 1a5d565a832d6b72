"""Where a training step's time goes: the project's Lightning step against the PyTorch example's
loop, under ``torch.profiler``, on the same nets, batch and device.

    python -m benchmarks.profile_step [--steps 20] [--batch 128] [--config LABEL=EXP[,override...]]

Prints, per path: wall time per step, device (kernel) time per step and its share of the wall
time, kernel launches per step, and the operators with the most host (CPU) time. A device share
well below 100% means the step is bound by the host: Python, dispatch and launches.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.data import DataLoader

import dcgan_xai.config  # noqa: F401
from benchmarks.bench_train import bench_config, parse_config
from benchmarks.common import PILMNIST, full_width_nets, machine, reference_loop
from dcgan_xai.runs.layout import RunDir
from dcgan_xai.training import build_callbacks, build_datamodule, build_model, build_trainer


def summarize(label: str, prof: profile, wall: float, steps: int, device: torch.device) -> None:
    events = prof.key_averages()
    if device.type == "cuda":
        kernel_us = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA")
        launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel",
                                                              "cudaLaunchKernelExC"))  # fmt: skip
        print(f"{label}: {1e3 * wall / steps:.2f} ms per step wall; device busy "
              f"{kernel_us / 1e3 / steps:.2f} ms per step ({100 * kernel_us / 1e6 / wall:.0f}% of the "
              f"wall time); {launches / steps:.0f} kernel launches per step", flush=True)  # fmt: skip
    else:
        print(f"{label}: {1e3 * wall / steps:.2f} ms per step wall (CPU only)", flush=True)
    table = events.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=50)
    print(table, flush=True)


class Profiled(L.Callback):
    """Profile batches [warmup, warmup + steps) of the first epoch."""

    def __init__(self, warmup: int, steps: int, device: torch.device):
        self.warmup, self.steps, self.device = warmup, steps, device
        activities = [ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        self.prof = profile(activities=activities)
        self.start = 0.0
        self.wall = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            self.prof.__enter__()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.warmup + self.steps - 1:
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            self.wall = time.perf_counter() - self.start
            self.prof.__exit__(None, None, None)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--data", default="data/mnist")
    p.add_argument("--config", action="append", default=[], help="LABEL=EXPERIMENT[,override,...]")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"machine: {machine()}", flush=True)

    g, d = full_width_nets(device)
    loader = DataLoader(PILMNIST(args.data), batch_size=args.batch, shuffle=True,
                        num_workers=args.workers, drop_last=True)  # fmt: skip
    reference_loop(g, d, loader, args.warmup, 0, device)  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        reference_loop(g, d, loader, args.steps, 0, device)
        wall = time.perf_counter() - start
    summarize("reference loop (PyTorch example)", prof, wall, args.steps, device)

    for label, experiment, extra in [parse_config(c) for c in args.config] or [
        ("plain", "mnist64", [])
    ]:
        cfg = bench_config(args, experiment, extra, "callbacks=none")
        meter = Profiled(args.warmup, args.steps, device)
        with tempfile.TemporaryDirectory(prefix="profile_step_") as out:
            run = RunDir(Path(out))
            trainer = build_trainer(cfg, run, [*build_callbacks(cfg, run), meter])
            trainer.fit(build_model(cfg), datamodule=build_datamodule(cfg))
        summarize(f"{label}: dcgan_xai experiment={experiment} {' '.join(extra)}", meter.prof,
                  meter.wall, args.steps, device)  # fmt: skip


if __name__ == "__main__":
    main()
