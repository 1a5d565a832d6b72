"""Which numeric path a training takes: ``trainer.precision=auto`` with ``model.channels_last``
unset chooses the CPU fast path (bf16 autocast and channels_last) where the processor computes
bf16 natively, and fp32 everywhere else (GPUs included: their fast path is ``mnist64_fast``).

Forcing either way: ``trainer.precision=32-true`` (or ``bf16-mixed``) and
``model.channels_last=false`` (or ``true``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# The processor features that make bf16 matrix products native on x86: AMX tiles (Sapphire
# Rapids and later) and AVX512-BF16 (Cooper Lake, Zen 4 and later).
NATIVE_BF16 = (("amx_bf16", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported"))


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


@dataclass(frozen=True)
class NumericPath:
    precision: str
    channels_last: bool
    why: str

    def describe(self) -> str:
        """One line for the log."""
        return (
            f"numeric path: precision {self.precision}, channels_last {self.channels_last} "
            f"({self.why}; force with trainer.precision=32-true|bf16-mixed and "
            "model.channels_last=true|false)"
        )


def choose(precision: str, channels_last: bool | None, accelerator: str) -> NumericPath:
    """Resolve ``auto`` precision and an unset ``channels_last`` for this machine.

    Values the user set are kept. An unset ``channels_last`` follows the precision: on when
    the training runs bf16 on the CPU (where it measured faster), off elsewhere.
    """
    cpu = trains_on_cpu(accelerator)
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
    if channels_last is None:
        channels_last = cpu and precision == "bf16-mixed"
    return NumericPath(precision, channels_last, why)
