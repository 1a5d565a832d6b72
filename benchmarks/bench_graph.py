"""The training step as one CUDA graph, outside Lightning: does it train as the eager step does,
does it make no host sync, and how fast can the device run it (the ceiling)?

    python -m benchmarks.bench_graph [--data data/mnist] [--batches 128,256,512,1024]
        [--steps 200] [--precision bf16-mixed] [--width 64]

1. **graph == eager**: 20 steps from the same weights, eager and replayed, in deterministic mode;
   prints whether every weight is bitwise equal (and the largest difference).
2. **no host sync in replayed steps**: ``torch.cuda.set_sync_debug_mode("error")`` around the
   replayed steps (inputs drawn as the module draws them); prints ok or the error.
3. **plain loop** throughput of the graphed and the eager step at each batch size (a device sync
   where the window starts and where it ends), and the **device-only** time per step: CUDA events
   around back-to-back replays, the host far ahead, so it is the GPU's own time (the ceiling).

Without a GPU it runs the eager step only (the dry run of the code path) and says so.
"""

from __future__ import annotations

import argparse
import os
import time
from functools import partial

import torch

import dcgan_xai.config  # noqa: F401
from benchmarks.common import machine
from dcgan_xai.config import compose_config
from dcgan_xai.models.step import GraphedStep, gan_step
from dcgan_xai.numerics import with_numeric_path
from dcgan_xai.training import build_datamodule, build_model


def config(args, batch: int):
    cfg = compose_config("train", [
        "experiment=mnist64", f"data.root={args.data}", f"data.batch_size={batch}",
        f"model.ngf={args.width}", f"model.ndf={args.width}",
        f"trainer.precision={args.precision}", *args.override])  # fmt: skip
    return with_numeric_path(cfg)


class Loop:
    """The module's step outside Lightning: its nets, optimizers, inputs and step function."""

    def __init__(self, args, batch: int, device: torch.device, graph: bool):
        cfg = config(args, batch)
        torch.manual_seed(0)
        self.model = build_model(cfg).to(device)
        self.model.on_fit_start()  # the memory format
        self.opts = self.model.configure_optimizers()
        dm = build_datamodule(cfg)
        dm.setup()
        assert dm.train_set is not None
        self.images = dm.train_set.images.to(device)
        self.batch, self.device = batch, device
        self.bf16 = cfg.trainer.precision == "bf16-mixed"
        step = partial(gan_step, self.model.generator, self.model.discriminator, *self.opts)
        self.step = GraphedStep(step) if graph else step
        self.rows = torch.randperm(self.images.shape[0], device=device)

    def __call__(self, i: int) -> torch.Tensor:
        n = self.batch
        start = (i * n) % (self.images.shape[0] - n)
        images = self.images[self.rows[start : start + n]]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            real, z, noise, _ = self.model.step_inputs(images, i)
            return self.step(real, z, noise)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def throughput(loop: Loop, steps: int, warmup: int) -> float:
    for i in range(warmup):
        loop(i)
    sync(loop.device)
    start = time.perf_counter()
    for i in range(warmup, warmup + steps):
        loop(i)
    sync(loop.device)
    return steps * loop.batch / (time.perf_counter() - start)


def device_time(loop: Loop, steps: int) -> float:
    """Seconds of GPU time per replayed step: events around replays queued back to back."""
    assert isinstance(loop.step, GraphedStep) and loop.step.graph is not None
    graph = loop.step.graph
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    begin.record()
    for _ in range(steps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return begin.elapsed_time(end) / 1e3 / steps


def graph_equals_eager(args, device: torch.device) -> str:
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        loops = [Loop(args, 128, device, graph) for graph in (False, True)]
        for loop in loops:
            for i in range(20):
                loop(i)
        sync(device)
        pairs = zip(
            loops[0].model.state_dict().values(), loops[1].model.state_dict().values(), strict=True
        )
        diffs = [float((a.double() - b.double()).abs().max()) for a, b in pairs]
        same = all(d == 0.0 for d in diffs)
        return f"graph == eager after 20 steps: {'bitwise equal' if same else 'DIFFERENT'} (largest difference {max(diffs):.3g})"
    finally:
        torch.use_deterministic_algorithms(False)


def no_sync_in_replays(args, device: torch.device) -> str:
    loop = Loop(args, 128, device, graph=True)
    for i in range(5):  # warm-up and capture
        loop(i)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(5, 25):
            loop(i)
        return "no host sync in 20 replayed steps (inputs drawn as the module draws them): ok"
    except RuntimeError as err:
        return f"a host sync in a replayed step: {' '.join(str(err).split())[:300]}"
    finally:
        torch.cuda.set_sync_debug_mode(0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="data/mnist")
    p.add_argument("--batches", default="128,256,512,1024")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--precision", default="bf16-mixed")
    p.add_argument("--width", type=int, default=64, help="ngf = ndf")
    p.add_argument("--override", action="append", default=[], help="a training override")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"machine: {machine()}; precision {args.precision}; nets ngf = ndf = {args.width}")
    if device.type != "cuda":
        rate = throughput(Loop(args, 16, device, graph=False), args.steps, args.warmup)
        print(
            f"no CUDA device: eager step only, batch 16: {rate:,.0f} images/s (graph parts skipped)"
        )
        return
    print(graph_equals_eager(args, device), flush=True)
    print(no_sync_in_replays(args, device), flush=True)
    for batch in (int(b) for b in args.batches.split(",")):
        eager = throughput(Loop(args, batch, device, graph=False), args.steps, args.warmup)
        graphed = Loop(args, batch, device, graph=True)
        rate = throughput(graphed, args.steps, args.warmup)
        seconds = device_time(graphed, args.steps)
        print(
            f"batch {batch}: plain loop, eager {eager:,.0f} images/s, graphed {rate:,.0f} images/s "
            f"({rate / eager:.2f}x); device-only {1e3 * seconds:.3f} ms a step = "
            f"{batch / seconds:,.0f} images/s (the ceiling)",
            flush=True,
        )


if __name__ == "__main__":
    main()
