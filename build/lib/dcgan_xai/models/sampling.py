"""Generating images without touching the generator's state."""

from __future__ import annotations

import torch
from torch import nn

from dcgan_xai.data.mnist import to_unit_range
from dcgan_xai.data.probe import Probe


@torch.no_grad()
def generate(generator: nn.Module, noise: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """G(noise) in eval mode (running BatchNorm statistics), G's mode restored afterwards.

    Returns:
        float32 (N, 1, 64, 64) in [-1, 1], on ``noise``'s device.
    """
    was_training = generator.training
    generator.eval()
    try:
        out = [generator(z).float() for z in noise.split(batch_size)]
    finally:
        generator.train(was_training)
    return torch.cat(out)


def probe_images(
    generator: nn.Module, probe: Probe, device: torch.device
) -> dict[str, torch.Tensor]:
    """What an epoch's explanation looks at: the real probe and G(the probe's noise), in
    [-1, 1] on ``device``."""
    return {
        "real": to_unit_range(probe.images.to(device)),
        "fake": generate(generator, probe.noise.to(device)),
    }
