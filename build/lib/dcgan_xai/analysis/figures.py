"""Figures: the paper's Figure 1, score and FID curves, sample grids, coverage histograms."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from dcgan_xai.files import atomic_write_bytes
from dcgan_xai.xai.overlay import side_by_side

TILE_PAD = 2
LABEL_WIDTH = 64
HEADER_HEIGHT = 16


def save_png(image: Image.Image, path: str | Path) -> None:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def figure_size(rows: int, samples: int, tile: int = 64) -> tuple[int, int]:
    """(width, height) in pixels of :func:`figure1` for ``rows`` epochs and ``samples`` pairs."""
    cols = 2 * samples
    return (
        LABEL_WIDTH + cols * (tile + TILE_PAD) + TILE_PAD,
        HEADER_HEIGHT + rows * (tile + TILE_PAD) + TILE_PAD,
    )


def figure1(
    images: torch.Tensor, maps_by_epoch: Mapping[int, torch.Tensor], title: str = ""
) -> Image.Image:
    """The paper's Figure 1: a row per epoch, each sample an (original, overlay) pair.

    Args:
        images: (S, 1, H, W) in [-1, 1], the chosen probe samples.
        maps_by_epoch: epoch to maps (S, H, W) of those samples.
        title: text for the header row.
    """
    rows = []
    for epoch in sorted(maps_by_epoch):
        tiles = side_by_side(images, maps_by_epoch[epoch].float())
        grid = torchvision.utils.make_grid(
            tiles, nrow=tiles.shape[0], padding=TILE_PAD, pad_value=1.0
        )
        rows.append((epoch, grid))
    width, height = figure_size(len(rows), images.shape[0], images.shape[-1])
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), title, fill="black")
    row_height = images.shape[-1] + TILE_PAD
    for i, (epoch, grid) in enumerate(rows):
        top = HEADER_HEIGHT + i * row_height
        array = (grid.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
        strip = Image.fromarray(array[: row_height + TILE_PAD])
        canvas.paste(strip, (LABEL_WIDTH, top))
        draw.text((4, top + row_height // 2 - 6), f"epoch {epoch}", fill="black")
    return canvas


def tiles_image(tiles: torch.Tensor, nrow: int = 8) -> Image.Image:
    """A grid of (N, C, H, W) tiles in [0, 1]."""
    grid = torchvision.utils.make_grid(tiles.float(), nrow=nrow, padding=TILE_PAD, pad_value=1.0)
    return Image.fromarray((grid.clamp(0, 1).permute(1, 2, 0) * 255).round().byte().numpy())


def sample_grid(images: torch.Tensor, nrow: int = 8) -> Image.Image:
    """A grid of generated images in [-1, 1]."""
    return tiles_image((images.float() + 1) / 2, nrow)


def fig_to_image(fig: Figure) -> Image.Image:
    """Render a Matplotlib ``Figure`` (object API: no pyplot state, no backend switch)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def curves(
    epochs: Sequence[int],
    series: Mapping[str, Sequence[float]],
    fid: Sequence[float] | None = None,
    marks: Mapping[str, int] | None = None,
    title: str = "",
) -> Image.Image:
    """Scores over epochs (left axis) and FID (right axis), with chosen epochs marked."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for name, values in series.items():
        ax.plot(epochs, values, marker="o", ms=3, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("score")
    ax.set_ylim(0, 1)
    if fid is not None and not all(np.isnan(fid)):
        ax2 = ax.twinx()
        ax2.plot(epochs, fid, color="black", marker="s", ms=3, label="FID")
        ax2.set_ylabel("FID (lower is better)")
        ax2.legend(loc="upper right")
    for (name, epoch), colour in zip(
        (marks or {}).items(), ["red", "green", "purple", "grey"], strict=False
    ):
        ax.axvline(epoch, color=colour, ls="--", label=f"{name}: {epoch}")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title)
    return fig_to_image(fig)


def histogram(values: torch.Tensor, threshold: float, title: str = "") -> Image.Image:
    """Histogram of coverage with the flag threshold drawn."""
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.hist(values.numpy(), bins=50, range=(0, 1), color="steelblue")
    ax.axvline(threshold, color="red", ls="--", label=f"threshold {threshold}")
    ax.set_xlabel("coverage")
    ax.set_ylabel("images")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title(title)
    return fig_to_image(fig)
