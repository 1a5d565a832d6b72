"""Scores of Grad-CAM maps: focus, coverage, degenerate maps."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch


@dataclass
class ScoreThresholds:
    """The thresholds of the map scores, each in [0, 1]: the one default for the callback,
    ``analyze``, ``curate`` and the study (their config schemas take these fields)."""

    pixel_threshold: float = 0.5  # a map's pixel is covered from this value on
    flag_threshold: float = 0.7  # an image is flagged when its map covers more than this share
    mask_threshold: float = 0.5  # a pixel is the digit's above this, in the image's [0, 1] scale


_T = ScoreThresholds


def thresholds_of(settings: Any) -> dict[str, float]:
    """The :class:`ScoreThresholds` fields of any settings that have them, by name."""
    return {f.name: getattr(settings, f.name) for f in fields(ScoreThresholds)}


def digit_mask(images: torch.Tensor, threshold: float = _T.mask_threshold) -> torch.Tensor:
    """Pixels of the digit (N, H, W): the mean over channels, in [0, 1] scale, above
    ``threshold``; images (N, C, H, W) or (N, H, W) in [-1, 1]."""
    gray = images.float().mean(1) if images.ndim == 4 else images.float()
    return (gray + 1.0) / 2.0 > threshold


def is_degenerate(maps: torch.Tensor) -> torch.Tensor:
    """True for each map (N, H, W) that is all zero."""
    return (maps.flatten(1) == 0).all(dim=1)


def focus(
    maps: torch.Tensor, images: torch.Tensor, mask_threshold: float = _T.mask_threshold
) -> torch.Tensor:
    """Share of each map's energy on the digit: sum(CAM * mask) / sum(CAM); 0 if degenerate.

    Args:
        maps: (N, H, W), non-negative.
        images: (N, 1, H, W) or (N, H, W) in [-1, 1].
        mask_threshold: the digit mask's threshold in [0, 1] scale.

    Returns:
        (N,) in [0, 1].
    """
    mask = digit_mask(images, mask_threshold).to(maps.dtype)
    total = maps.flatten(1).sum(1)
    on_digit = (maps * mask).flatten(1).sum(1)
    return torch.where(total > 0, on_digit / total.clamp_min(torch.finfo(maps.dtype).tiny), 0.0)


def focus_chance(images: torch.Tensor, mask_threshold: float = _T.mask_threshold) -> torch.Tensor:
    """The focus a uniform map scores on each image: the digit's share of its pixels, (N,)."""
    return digit_mask(images, mask_threshold).flatten(1).float().mean(1)


def coverage(maps: torch.Tensor, pixel_threshold: float = _T.pixel_threshold) -> torch.Tensor:
    """Share of each map's pixels with CAM >= ``pixel_threshold``: (N,) in [0, 1]."""
    return (maps >= pixel_threshold).flatten(1).float().mean(1)


def summarize(
    maps: torch.Tensor,
    images: torch.Tensor,
    pixel_threshold: float = _T.pixel_threshold,
    flag_threshold: float = _T.flag_threshold,
    mask_threshold: float = _T.mask_threshold,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Per-image scores and their summary over a batch of maps.

    Returns:
        ``(per_image, summary)``: per-image ``focus``, ``coverage`` and ``degenerate``
        tensors (N,), and the batch's ``focus_mean`` (degenerate maps count as 0),
        ``focus_std``, ``focus_nondeg`` (mean over the maps that are not all zero; NaN if
        none is), ``focus_chance`` (what uniform maps would score), ``coverage_mean``,
        ``coverage_std``, ``degenerate`` (share of all-zero maps) and ``flagged`` (share
        with coverage > ``flag_threshold``).
    """
    f = focus(maps, images, mask_threshold)
    c = coverage(maps, pixel_threshold)
    d = is_degenerate(maps)
    per_image = {"focus": f, "coverage": c, "degenerate": d}
    live = f[~d]
    summary = {
        "focus_mean": f.mean().item(),
        "focus_std": f.std(unbiased=False).item(),
        "focus_nondeg": live.mean().item() if live.numel() else float("nan"),
        "focus_chance": focus_chance(images, mask_threshold).mean().item(),
        "coverage_mean": c.mean().item(),
        "coverage_std": c.std(unbiased=False).item(),
        "degenerate": d.float().mean().item(),
        "flagged": (c > flag_threshold).float().mean().item(),
    }
    return per_image, summary
