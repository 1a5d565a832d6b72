"""The probe: fixed real test images (stratified by digit) and fixed noise vectors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from dcgan_xai.errors import UserError


@dataclass
class Probe:
    """The fixed batch Grad-CAM looks at every epoch.

    Attributes:
        images: uint8 (N, 1, H, W) real test images.
        labels: int64 (N,).
        indices: int64 (N,) their indices in the test split.
        noise: float (N, *noise_shape) fixed noise for the fakes ((N, nz, 1, 1) for a DCGAN).
    """

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    noise: torch.Tensor

    def to_dict(self) -> dict[str, torch.Tensor]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, torch.Tensor]) -> Probe:
        return cls(**{k: data[k] for k in ("images", "labels", "indices", "noise")})


def make_probe(
    images: torch.Tensor,
    labels: torch.Tensor,
    size: int,
    seed: int,
    nz: int | Sequence[int],
) -> Probe:
    """Choose ``size`` images stratified by label (seeded) and draw ``size`` noise vectors.

    ``nz``: the noise of one sample, a length (shape ``(nz, 1, 1)``, a DCGAN's) or a shape.

    Each class gets ``size // classes`` images; the remainder goes to classes chosen by the
    seed. Images are ordered by class, then by their seeded draw.
    """
    total = labels.numel()
    if not 1 <= size <= total:
        raise UserError(
            f"probe size {size} is not allowed; it must be in 1..{total} (the test split's size)"
        )
    gen = torch.Generator().manual_seed(seed)
    classes = torch.unique(labels)
    quota = torch.full((len(classes),), size // len(classes), dtype=torch.long)
    quota[torch.randperm(len(classes), generator=gen)[: size % len(classes)]] += 1
    chosen = []
    for c, q in zip(classes.tolist(), quota.tolist(), strict=True):
        members = (labels == c).nonzero().squeeze(1)
        chosen.append(members[torch.randperm(members.numel(), generator=gen)[:q]])
    rows = torch.cat(chosen)
    if rows.numel() < size:  # a class too small for its quota
        rest = torch.ones(total, dtype=torch.bool)
        rest[rows] = False
        extra = rest.nonzero().squeeze(1)
        rows = torch.cat(
            [rows, extra[torch.randperm(extra.numel(), generator=gen)[: size - rows.numel()]]]
        )
    shape = (nz, 1, 1) if isinstance(nz, int) else tuple(nz)
    noise = torch.randn(size, *shape, generator=gen)
    return Probe(images[rows].clone(), labels[rows].clone(), rows.clone(), noise)
