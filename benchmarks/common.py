"""Shared pieces of the benchmarks: the reference recipe and timing helpers."""

from __future__ import annotations

import platform
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, Dataset

from dcgan_xai.data.idx import read_idx
from dcgan_xai.data.sources import FILES
from dcgan_xai.models.networks import Discriminator, Generator, build_discriminator, dcgan_init


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {torch.get_num_threads()} threads, {gpu}, torch {torch.__version__}, {platform.python_version()}"


def full_width_nets(device: torch.device) -> tuple[Generator, Discriminator]:
    """The paper's nets at full width (ngf = ndf = 64), DCGAN-initialised with seed 0."""
    torch.manual_seed(0)
    g, d = Generator(100, 64).to(device), build_discriminator("paper", 64).to(device)
    g.apply(dcgan_init)
    d.apply(dcgan_init)
    return g, d


class PILMNIST(Dataset):
    """The classic recipe's data: PIL images, Resize(64), ToTensor, Normalize per item."""

    def __init__(self, root: str | Path, size: int = 64):
        self.images = read_idx(Path(root) / FILES["train-images"]).numpy()
        self.labels = read_idx(Path(root) / FILES["train-labels"]).long()
        self.size = size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = Image.fromarray(self.images[i], mode="L").resize(
            (self.size, self.size), Image.BILINEAR
        )
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).unsqueeze(0)  # ToTensor
        return (x - 0.5) / 0.5, self.labels[i]  # Normalize((0.5,), (0.5,))


def reference_loop(
    generator: nn.Module, discriminator: nn.Module, loader: DataLoader, steps: int, warmup: int,
    device: torch.device,
) -> float:  # fmt: skip
    """The PyTorch DCGAN example's step (Sigmoid + BCELoss); returns images/s after warm-up."""
    criterion = nn.BCELoss()
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    nz = generator.nz
    seen, start = 0, None
    it = iter(loader)
    for step in range(warmup + steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, seen = time.perf_counter(), 0
        real, _ = next(it)
        real = real.to(device)
        n = real.size(0)
        discriminator.zero_grad()
        out = discriminator.probability(real)
        err_real = criterion(out, torch.ones(n, device=device))
        err_real.backward()
        fake = generator(torch.randn(n, nz, 1, 1, device=device))
        out = discriminator.probability(fake.detach())
        err_fake = criterion(out, torch.zeros(n, device=device))
        err_fake.backward()
        opt_d.step()
        generator.zero_grad()
        out = discriminator.probability(fake)
        criterion(out, torch.ones(n, device=device)).backward()
        opt_g.step()
        seen += n
    if device.type == "cuda":
        torch.cuda.synchronize()
    assert start is not None
    return seen / (time.perf_counter() - start)


class HostSyncs(TorchDispatchMode):
    """Counts host syncs: calls of ``aten._local_scalar_dense``, the op behind ``.item()``,
    ``bool(t)`` and ``float(t)`` of a tensor (on a CPU too, where they cost no wait), keyed by
    what ``where`` holds when they happen (a step's number, say)."""

    def __init__(self) -> None:
        super().__init__()
        self.where: object = None
        self.counts: Counter[object] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func is torch.ops.aten._local_scalar_dense.default:
            self.counts[self.where] += 1
        return func(*args, **(kwargs or {}))
