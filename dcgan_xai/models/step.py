"""One DCGAN training step as one function, run eagerly or replayed as a CUDA graph.

:func:`gan_step` holds the step's math (G forward; D on real and detached fake images, its BCE
loss, backward and Adam step; then G's). The LightningModule calls it eagerly; on one CUDA device
:class:`GraphedStep` captures the same function once and replays it, so graph and eager cannot
drift. Randomness (noise, instance noise) is drawn outside, from the step's seeded stream.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

_CAPTURE = threading.Lock()

# What a step returns, in this order: (4,) float32 on the nets' device
STEP_METRICS = ("d_loss", "g_loss", "d_real", "d_fake")


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """``module``'s parameters without ``requires_grad`` for the duration (as Lightning's
    ``toggle_optimizer`` leaves the other net's), restored afterwards."""
    params = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in params:
            p.requires_grad_(flag)


def gan_step(
    generator: nn.Module,
    discriminator: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    real: torch.Tensor,
    z: torch.Tensor,
    noise: Sequence[torch.Tensor] | None = None,
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
) -> torch.Tensor:
    """One GAN step: D's update on real and detached fake images, then G's against the new D.

    Args:
        generator, discriminator: the nets (D returns logits).
        opt_g, opt_d: their optimizers.
        real: (N, C, H, W) real images in [-1, 1] (K folded models: (N, K*C, H, W), see
            `benchmarks/grouped.py`).
        z: (N, nz, 1, 1) noise (K folded models: (N, K*nz, 1, 1)).
        noise: instance noise already scaled by its standard deviation, added to what D sees:
            for the real images, the detached fakes and the fakes of G's step, in that order.
        backward: how a loss is backpropagated (Lightning's ``manual_backward`` under DDP).

    Under autocast a frozen net's weights are cast afresh at each use (only weights that require
    grad are cached), so G's step sees D's updated weights, as in fp32.

    Returns:
        (4,) float32: D's loss, G's loss, mean D(x) and mean D(G(z)) (see :data:`STEP_METRICS`);
        for K folded models (4, K), a column per model.
    """

    def seen(x: torch.Tensor, i: int) -> torch.Tensor:
        return x if noise is None else x + noise[i]

    fake = generator(z)  # (N, C, H, W)
    with frozen(generator):
        logit_real = discriminator(seen(real, 0))  # (N,)
        logit_fake = discriminator(seen(fake.detach(), 1))
        d_loss = _bce(logit_real, 1.0) + _bce(logit_fake, 0.0)
        opt_d.zero_grad(set_to_none=True)
        backward(d_loss.sum())
        opt_d.step()
    with frozen(discriminator):
        logit_gen = discriminator(seen(fake, 2))
        g_loss = _bce(logit_gen, 1.0)
        opt_g.zero_grad(set_to_none=True)
        backward(g_loss.sum())
        opt_g.step()
    return torch.stack(
        [
            d_loss.detach().float(),
            g_loss.detach().float(),
            torch.sigmoid(logit_real.detach().float()).mean(0),
            torch.sigmoid(logit_fake.detach().float()).mean(0),
        ]
    )


def _bce(logit: torch.Tensor, target: float) -> torch.Tensor:
    """BCE-with-logits against ``target``: the batch mean of logits (N,); of logits (N, K) of K
    folded models, each model's mean (K,), whose sum is backpropagated (each gradient its own)."""
    targets = torch.full_like(logit, target)
    if logit.ndim == 1:
        return F.binary_cross_entropy_with_logits(logit, targets)
    return F.binary_cross_entropy_with_logits(logit, targets, reduction="none").mean(0)


class GraphedStep:
    """A step function captured once as a CUDA graph, replayed with new inputs.

    ``step(real, z, noise)`` is run ``warmup`` times eagerly on a side stream (real training
    steps: they initialise cuDNN, cuBLAS and the optimizers' state), then captured on that stream.
    Each later call copies its inputs into the graph's static buffers and replays it: the host
    launches one graph instead of every kernel, and never waits for the GPU.

    Args:
        step: the step function, of static-shaped CUDA tensors.
        warmup: eager calls before the capture.
    """

    def __init__(
        self,
        step: Callable[[torch.Tensor, torch.Tensor, Sequence[torch.Tensor] | None], torch.Tensor],
        warmup: int = 3,
    ):
        self.step, self.warmup = step, warmup
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.stream = torch.cuda.Stream()
        self.inputs: tuple[torch.Tensor, ...] = ()
        self.output: torch.Tensor | None = None

    def __call__(
        self, real: torch.Tensor, z: torch.Tensor, noise: Sequence[torch.Tensor] | None
    ) -> torch.Tensor:
        self.calls += 1
        tensors = (real, z, *(noise or ()))
        if self.graph is not None:
            for static, new in zip(self.inputs, tensors, strict=True):
                static.copy_(new)
            self.graph.replay()
            assert self.output is not None
            return self.output.clone()
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            if self.calls <= self.warmup:
                out = self.step(real, z, noise)
            else:
                self.inputs = tuple(t.clone() for t in tensors)
                static_noise = self.inputs[2:] if noise is not None else None
                self.graph = torch.cuda.CUDAGraph()
                # trainings in threads of one process: one capture at a time, and the others'
                # work (their own streams) goes on meanwhile
                with _CAPTURE, torch.cuda.graph(self.graph, stream=self.stream,
                                                capture_error_mode="thread_local"):  # fmt: skip
                    self.output = self.step(self.inputs[0], self.inputs[1], static_noise)
        torch.cuda.current_stream().wait_stream(self.stream)
        if self.graph is not None:  # captured now: this call's step is the first replay
            self.graph.replay()
            assert self.output is not None
            return self.output.clone()
        return out
