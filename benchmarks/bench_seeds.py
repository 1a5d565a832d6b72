"""K seeds of one recipe in one process, by the two designs, against one training and against K
processes: which design reaches 100,000 images/s for 8 seeds of mnist64 at batch 128?

    python -m benchmarks.bench_seeds [--seeds 8] [--batch 128] [--steps 200] [--warmup 10]
        [--precision 32-true] [--width 64] [--data data/mnist]

Every variant runs the module's own step (:func:`dcgan_xai.models.step.gan_step`) on images
resident on the device, its inputs drawn as the module draws them, with one device sync where
the timed window starts and one where it ends:

- ``one training``: seed 0 alone (graphed on one CUDA device, eager elsewhere): the reference;
- ``K processes``: K copies of that loop as K processes at once (what a study does today);
- ``K streams``: K seeds in one process, each seed's own nets, optimizers and captured step,
  each replayed on its own CUDA stream (on the CPU: one after another, eager);
- ``grouped``: the K seeds folded into one net (:mod:`benchmarks.grouped`), one step for
  all, graphed on CUDA;
- ``grouped, device-only``: CUDA events around back-to-back replays of the grouped graph (the
  ceiling of that design);
- ``Lightning``: the product's path, one training (``train``) against K at once
  (``train_together``, what ``seeds=[...]`` runs: K threads, K CUDA streams), by the wall time
  of the call.

It also prints how far the grouped step's losses are from the K seeds trained alone after 3
steps from the same weights (bitwise in fp64 on the CPU: ``tests/test_grouped.py``).
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from benchmarks.bench_graph import sync
from benchmarks.common import machine
from benchmarks.grouped import Columns, fold, side_by_side
from dcgan_xai.config import compose_config
from dcgan_xai.models.step import GraphedStep, gan_step
from dcgan_xai.numerics import with_numeric_path
from dcgan_xai.runs.layout import RunDir
from dcgan_xai.seeds import train_together
from dcgan_xai.training import build_datamodule, build_model, train


class Seed:
    """One seed's module outside Lightning: its nets, optimizers and input stream."""

    def __init__(self, args, seed: int, images: torch.Tensor, device: torch.device, graph: bool):
        cfg = with_numeric_path(compose_config("train", [
            "experiment=mnist64", f"seed={seed}", f"data.root={args.data}",
            f"data.batch_size={args.batch}", f"model.ngf={args.width}", f"model.ndf={args.width}",
            f"trainer.precision={args.precision}", f"speed.cuda_graph={str(graph).lower()}"]))  # fmt: skip
        torch.manual_seed(seed)  # as seed_everything(seed) before the nets are built
        self.model = build_model(cfg).to(device)
        self.model.on_fit_start()
        self.opts = self.model.configure_optimizers()
        self.bf16, self.device, self.images = cfg.trainer.precision == "bf16-mixed", device, images
        self.rows = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
        self.rows = self.rows.to(device)
        step = partial(gan_step, self.model.generator, self.model.discriminator, *self.opts)
        self.step = GraphedStep(step) if graph else step

    def inputs(self, i: int, n: int):
        start = (i * n) % (self.images.shape[0] - n)
        real, z, noise, _ = self.model.step_inputs(self.images[self.rows[start : start + n]], i)
        return real, z, noise

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)


class Streams:
    """K seeds, each its own step; on CUDA each on its own stream."""

    def __init__(self, seeds: list[Seed]):
        self.seeds = seeds
        cuda = seeds[0].device.type == "cuda"
        self.streams = [torch.cuda.Stream() for _ in seeds] if cuda else None

    def __call__(self, i: int, n: int) -> torch.Tensor:
        with self.seeds[0].autocast():
            inputs = [s.inputs(i, n) for s in self.seeds]
            if self.streams is None:
                return torch.stack([s.step(*x) for s, x in zip(self.seeds, inputs, strict=True)], 1)
            here, out = torch.cuda.current_stream(), []
            for seed, stream, x in zip(self.seeds, self.streams, inputs, strict=True):
                stream.wait_stream(here)
                with torch.cuda.stream(stream):
                    out.append(seed.step(*x))
            for stream in self.streams:
                here.wait_stream(stream)
            return torch.stack(out, 1)


class Grouped:
    """K seeds folded into one net, one step for all (graphed on CUDA)."""

    def __init__(self, seeds: list[Seed], graph: bool):
        k, first = len(seeds), seeds[0]
        self.seeds = seeds
        self.g = fold([s.model.generator for s in seeds])
        self.d = Columns(fold([s.model.discriminator for s in seeds]), k)
        if first.model.speed.channels_last:
            for net in (self.g, self.d):
                net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        opt = first.opts[0].defaults
        self.opts = [torch.optim.Adam(net.parameters(), lr=opt["lr"], betas=opt["betas"],
                                      fused=opt["fused"], capturable=graph)
                     for net in (self.g, self.d)]  # fmt: skip
        step = partial(gan_step, self.g, self.d, *self.opts)
        self.step = GraphedStep(step) if graph else step

    def __call__(self, i: int, n: int) -> torch.Tensor:
        with self.seeds[0].autocast():
            inputs = [s.inputs(i, n) for s in self.seeds]
            real, z = side_by_side([x[0] for x in inputs]), side_by_side([x[1] for x in inputs])
            noise = None if inputs[0][2] is None else tuple(
                side_by_side([x[2][j] for x in inputs]) for j in range(3))  # fmt: skip
            return self.step(real, z, noise)


def rate(loop, images_per_step: int, steps: int, warmup: int, n: int, device) -> float:
    for i in range(warmup):
        loop(i, n)
    sync(device)
    start = time.perf_counter()
    for i in range(warmup, warmup + steps):
        loop(i, n)
    sync(device)
    return steps * images_per_step / (time.perf_counter() - start)


def load_images(args, device: torch.device) -> torch.Tensor:
    cfg = compose_config("train", ["experiment=mnist64", f"data.root={args.data}"])
    dm = build_datamodule(cfg)
    dm.setup()
    assert dm.train_set is not None
    return dm.train_set.images.to(device)


def processes(args, k: int) -> float:
    """K single trainings as K processes started together: the sum of their rates."""
    cmd = [sys.executable, "-m", "benchmarks.bench_seeds", "--worker", *sys.argv[1:]]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(k)]
    return sum(float(p.communicate()[0].strip().splitlines()[-1]) for p in procs)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--train-steps", type=int, default=400, help="steps of each Lightning run")
    p.add_argument("--precision", default="32-true")
    p.add_argument("--width", type=int, default=64, help="ngf = ndf")
    p.add_argument("--data", default="data/mnist")
    p.add_argument("--worker", action="store_true", help="(one process of the K-process run)")
    args = p.parse_args()
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    graph, k, n = device.type == "cuda", args.seeds, args.batch
    images = load_images(args, device)
    one = Seed(args, 0, images, device, graph)
    single = rate(lambda i, m: one.step(*one.inputs(i, m)), n, args.steps, args.warmup, n, device)
    if args.worker:
        print(single)
        return
    print(f"machine: {machine()}; {k} seeds of mnist64 at batch {n}, {args.precision}, width "
          f"{args.width}; {'graphed' if graph else 'eager (no CUDA device)'}", flush=True)  # fmt: skip
    print(f"one training: {single:,.0f} images/s (the reference)", flush=True)
    many = processes(args, k)
    print(f"{k} processes at once: {many:,.0f} images/s in all ({many / single:.2f}x)", flush=True)
    streams = rate(Streams([Seed(args, s, images, device, graph) for s in range(k)]), k * n,
                   args.steps, args.warmup, n, device)  # fmt: skip
    print(
        f"{k} streams in one process: {streams:,.0f} images/s ({streams / single:.2f}x)", flush=True
    )
    grouped = Grouped([Seed(args, s, images, device, False) for s in range(k)], graph)
    fused = rate(grouped, k * n, args.steps, args.warmup, n, device)
    print(f"grouped ensemble of {k}: {fused:,.0f} images/s ({fused / single:.2f}x)", flush=True)
    if graph:
        assert isinstance(grouped.step, GraphedStep) and grouped.step.graph is not None
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        begin.record()
        for _ in range(args.steps):
            grouped.step.graph.replay()
        end.record()
        torch.cuda.synchronize()
        seconds = begin.elapsed_time(end) / 1e3 / args.steps
        print(f"grouped, device-only: {1e3 * seconds:.3f} ms a step = {k * n / seconds:,.0f} "
              "images/s (its ceiling)", flush=True)  # fmt: skip
    print(agreement(args, images, device, min(k, 3), n), flush=True)
    alone, together, differ = trainings(args, k)
    print(f"Lightning: one training {alone:,.0f} images/s; {k} at once (seeds=[...]) "
          f"{together:,.0f} images/s in all ({together / alone:.2f}x); seed 0's weights at once "
          f"against alone: largest difference {differ:.2e}", flush=True)  # fmt: skip


def trainings(args, k: int) -> tuple[float, float, float]:
    """The product's path: one Lightning training (``train``) against K at once
    (``train_together``, what ``seeds=[...]`` runs), ``--train-steps`` steps each, callbacks and
    logger off; images/s by the wall time of the whole call (its start-up included, alike), and
    the largest difference of seed 0's weights between the two (0: bitwise, as on the CPU)."""

    def cfg(seed: int):
        return compose_config("train", [
            "experiment=mnist64", f"seed={seed}", f"data.root={args.data}",
            f"data.batch_size={args.batch}", f"model.ngf={args.width}", f"model.ndf={args.width}",
            f"trainer.precision={args.precision}", "callbacks=none", "logger.tensorboard=false",
            "trainer.max_epochs=1", f"trainer.limit_train_batches={args.train_steps}",
            "trainer.enable_progress_bar=false"])  # fmt: skip

    images = args.train_steps * args.batch
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train(cfg(0), Path(tmp) / "alone")
        alone = images / (time.perf_counter() - start)
        start = time.perf_counter()
        train_together({Path(tmp) / f"seed_{s}": cfg(s) for s in range(k)})
        together = k * images / (time.perf_counter() - start)
        a, b = (torch.load(RunDir(Path(tmp) / d).checkpoint(1), map_location="cpu",
                           weights_only=True)["state_dict"] for d in ("alone", "seed_0"))  # fmt: skip
        differ = max(float((a[key].double() - b[key].double()).abs().max()) for key in a)
        return alone, together, differ


def agreement(args, images: torch.Tensor, device: torch.device, k: int, n: int) -> str:
    """The grouped step's metrics against K seeds trained alone, 3 eager steps from the same
    weights (not bitwise on a GPU: its convolutions need not sum in one order)."""
    alone = [Seed(args, s, images, device, False) for s in range(k)]
    grouped = Grouped([Seed(args, s, images, device, False) for s in range(k)], graph=False)
    worst = 0.0
    for i in range(3):
        with alone[0].autocast():
            single = torch.stack([s.step(*s.inputs(i, n)) for s in alone], 1)
        together = grouped(i, n)
        worst = max(worst, float(((together - single).abs() / single.abs().clamp_min(1e-6)).max()))
    return f"grouped against {k} seeds alone, 3 steps: largest relative difference of the metrics {worst:.2e}"


if __name__ == "__main__":
    main()
