"""Helpers for reading what runs wrote."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

REPO = Path(__file__).resolve().parents[1]


def event_tags(log_dir: str | Path) -> dict[str, list[str]]:
    ea = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    return ea.Tags()


def scalar_values(log_dir: str | Path, tag: str) -> list[float]:
    ea = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    ea.Reload()
    return [e.value for e in ea.Scalars(tag)]


def state_dict(ckpt: str | Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def same_weights(a: str | Path, b: str | Path) -> bool:
    sa, sb = state_dict(a), state_dict(b)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def data_overrides(root: str | Path, sums: dict[str, str]) -> list[str]:
    """Training overrides that read the test fixture's data (its root, source and checksums)."""
    checksums = "{" + ",".join(f"{k}:{v}" for k, v in sums.items()) + "}"
    return [f"data.root={root}", "data.sources=[local]", f"data.checksums={checksums}"]


def kill_when(cmd: list[str], appears: Path, timeout: float = 300) -> None:
    """Run ``cmd`` in the repository and SIGKILL it as soon as ``appears`` exists (it must
    still be running then)."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not appears.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, "training ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
