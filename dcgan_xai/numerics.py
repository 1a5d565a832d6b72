"""Which path a training takes: the numeric precision (``trainer.precision=auto``) and the speed
settings left unset (``speed.*: null``), chosen for this machine.

- On a CPU whose processor computes bf16 natively: bf16 autocast and channels_last (the CPU fast
  path); on other CPUs: fp32.
- On a GPU: fp32 (a faster numeric path is chosen only once measured there), the training
  images resident on the GPU, and on one CUDA device the whole step as one CUDA graph.

Forcing either way: ``trainer.precision=32-true`` (or ``bf16-mixed``), ``speed.channels_last``,
``speed.on_device``, ``speed.cuda_graph`` set to ``true`` or ``false``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info

# The processor features that make bf16 matrix products native on x86: AMX tiles (Sapphire
# Rapids and later) and AVX512-BF16 (Cooper Lake, Zen 4 and later).
NATIVE_BF16 = (("amx_bf16", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported"))
# precisions a CUDA graph can hold: no loss scaler (fp16's reads its overflow flag every step)
GRAPH_PRECISIONS = ("32-true", "32", "bf16-mixed")


def native_bf16() -> str | None:
    """The name of this processor's native bf16 feature, or ``None`` where it has none."""
    for name, probe in NATIVE_BF16:
        check = getattr(torch.cpu, probe, None)
        if check is not None and check():
            return name
    return None


def trains_on_cpu(accelerator: str) -> bool:
    """Whether ``trainer.accelerator`` puts the training on the CPU on this machine."""
    if accelerator == "cpu":
        return True
    if accelerator != "auto":
        return False
    mps = getattr(torch.backends, "mps", None)
    return not torch.cuda.is_available() and not (mps is not None and mps.is_available())


def trains_on_cuda(accelerator: str) -> bool:
    """Whether ``trainer.accelerator`` puts the training on a CUDA GPU on this machine."""
    return accelerator in ("cuda", "gpu") or (accelerator == "auto" and torch.cuda.is_available())


@dataclass(frozen=True)
class NumericPath:
    precision: str
    channels_last: bool
    on_device: bool
    cuda_graph: bool
    why: str

    def describe(self) -> str:
        """One line for the log."""
        return (
            f"numeric path: precision {self.precision}, channels_last {self.channels_last}, "
            f"data on the device {self.on_device}, CUDA graph {self.cuda_graph} ({self.why}; "
            "force with trainer.precision=32-true|bf16-mixed and speed.channels_last, "
            "speed.on_device, speed.cuda_graph=true|false)"
        )


def single_process(trainer: Any) -> bool:
    """Whether the trainer settings run one process on one device."""
    devices = trainer.devices
    one = devices in (1, "1") or (isinstance(devices, list | tuple) and len(devices) == 1)
    return one and int(trainer.num_nodes) == 1 and str(trainer.strategy) != "ddp"


def choose(
    precision: str,
    speed: Any,
    accelerator: str = "auto",
    one_process: bool = True,
) -> NumericPath:
    """Resolve ``auto`` precision and the unset (None) fields of ``speed`` for this machine.

    Values the user set are kept. An unset ``channels_last`` follows the precision (on when the
    training runs bf16 on the CPU, where it measured faster); ``on_device`` is on for a GPU;
    ``cuda_graph`` on for one process on one CUDA device with a precision a graph can hold and
    without ``compile``.
    """
    cpu, cuda = trains_on_cpu(accelerator), trains_on_cuda(accelerator)
    why = "as configured"
    if precision == "auto":
        feature = native_bf16() if cpu else None
        precision = "bf16-mixed" if feature else "32-true"
        why = (
            f"auto: CPU fast path, the processor has {feature}"
            if feature
            else "auto: the processor has no native bf16"
            if cpu
            else "auto: not training on the CPU"
        )
    channels_last = speed.channels_last
    if channels_last is None:
        channels_last = cpu and precision == "bf16-mixed"
    on_device = cuda if speed.on_device is None else bool(speed.on_device)
    graph = speed.cuda_graph
    if graph is None:
        graph = cuda and one_process and precision in GRAPH_PRECISIONS and not speed.compile
    return NumericPath(precision, bool(channels_last), on_device, bool(graph), why)


def with_numeric_path(
    cfg: Any, recorded: Any = None, log: Callable[[str], None] = rank_zero_info
) -> Any:
    """A copy of ``cfg`` with ``trainer.precision=auto`` and the unset ``speed.*`` chosen for
    this machine (:mod:`dcgan_xai.numerics`), the choice said in one line to ``log``; a resumed
    run (``recorded``: its config) keeps the precision it was trained in."""
    cfg = copy.deepcopy(cfg)
    if recorded is not None and cfg.trainer.precision == "auto":
        cfg.trainer.precision = recorded.trainer.precision
    t = cfg.trainer
    path = choose(str(t.precision), cfg.speed, str(t.accelerator), single_process(t))
    cfg.trainer.precision = path.precision
    cfg.speed.channels_last, cfg.speed.on_device = path.channels_last, path.on_device
    cfg.speed.cuda_graph = path.cuda_graph
    log(path.describe())
    return cfg
