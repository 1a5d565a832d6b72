"""Colour maps and overlays for Grad-CAM maps."""

from __future__ import annotations

import torch


def jet(x: torch.Tensor) -> torch.Tensor:
    """A jet-style colour map: (...) in [0, 1] to (..., 3) RGB in [0, 1]."""
    x = x.clamp(0, 1).unsqueeze(-1)
    centres = torch.tensor([3.0, 2.0, 1.0], device=x.device)  # red, green, blue
    return (1.5 - (4.0 * x - centres).abs()).clamp(0, 1)


def overlay(images: torch.Tensor, maps: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Colour maps laid over grey images.

    Args:
        images: (N, 1, H, W) in [-1, 1].
        maps: (N, H, W) in [0, 1].
        alpha: weight of the colour map.

    Returns:
        (N, 3, H, W) RGB in [0, 1].
    """
    grey = ((images.float() + 1.0) / 2.0).clamp(0, 1).expand(-1, 3, -1, -1)  # (N, 3, H, W)
    colour = jet(maps.float()).permute(0, 3, 1, 2)  # (N, 3, H, W)
    return (1 - alpha) * grey + alpha * colour


def side_by_side(images: torch.Tensor, maps: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Each image followed by its overlay: (2N, 3, H, W), ready for ``make_grid``."""
    grey = ((images.float() + 1.0) / 2.0).clamp(0, 1).expand(-1, 3, -1, -1)
    over = overlay(images, maps, alpha)
    return torch.stack([grey, over], dim=1).flatten(0, 1)
