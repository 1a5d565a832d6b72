"""Running a module without leaving a trace on it: the guard every explanation, trial compile
and probe evaluation runs under. A leaf of the package."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

GLOBAL_RNG = threading.RLock()
"""Held by code that seeds, draws from or restores torch's global RNG (building the nets, KID,
the states an explanation puts back): trainings in several threads of one process
(``seeds=[...]``) take turns there, so each draws what it would alone."""


@contextmanager
def global_rng(devices: Sequence[int | torch.device]) -> Iterator[None]:
    """``torch.random.fork_rng(devices)`` holding :data:`GLOBAL_RNG`: for code that seeds and
    draws."""
    with GLOBAL_RNG, torch.random.fork_rng(devices=devices):
        yield


@contextmanager
def rng_restored(devices: Sequence[int]) -> Iterator[None]:
    """The global RNG states (CPU and ``devices``) put back on exit, :data:`GLOBAL_RNG` held only
    to read and to restore them: for code that draws nothing, so that trainings in other
    threads need not wait for it (an explanation at one seed's epoch end)."""
    with GLOBAL_RNG:
        cpu, cuda = torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]
    try:
        yield
    finally:
        with GLOBAL_RNG:
            torch.set_rng_state(cpu)
            for device, state in zip(devices, cuda, strict=True):
                torch.cuda.set_rng_state(state, device)


@contextmanager
def preserved_state(module: nn.Module) -> Iterator[None]:
    """Restore, on exit, everything a forward/backward pass could change on ``module``.

    That is: each submodule's train/eval mode, every buffer (BatchNorm running statistics),
    every parameter's ``.grad`` and ``requires_grad``, and the CPU and CUDA RNG states
    (:func:`rng_restored`). Buffers and gradients are restored in place, in the same
    tensor objects (a captured CUDA graph keeps writing into them).
    """
    modes = [(m, m.training) for m in module.modules()]
    buffers = [(b, b.detach().clone()) for b in module.buffers()]
    params = [
        (p, p.requires_grad, p.grad, None if p.grad is None else p.grad.clone())
        for p in module.parameters()
    ]
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with rng_restored(cuda):
        try:
            yield
        finally:
            for m, training in modes:
                m.training = training
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
            for p, requires_grad, grad, saved_grad in params:
                p.requires_grad_(requires_grad)
                if grad is not None and saved_grad is not None:
                    with torch.no_grad():
                        grad.copy_(saved_grad)
                p.grad = grad
