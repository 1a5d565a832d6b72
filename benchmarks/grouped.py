"""K nets of one architecture as one net: the grouped ensemble of a study's seeds.

:func:`fold` turns K nets (a seed's G or D each, built exactly as a single run builds them) into
one whose convolutions and transposed convolutions have ``groups=K`` and whose BatchNorms have
K x C channels. Its inputs and outputs are the K nets' side by side along the channels: real
images (N, K, 64, 64) from K samplers, noise (N, K*nz, 1, 1) from K seeded streams; D's logits
come back as (N, K) through :class:`Columns`. With the loss the sum of the K per-model means
(:func:`dcgan_xai.models.step.gan_step` does so for (N, K) logits) each model's gradient is its
own, and Adam, being elementwise, updates each model as it would alone.

One rule joins the two forms: every tensor of the folded net (weight, bias, BatchNorm buffer,
and so Adam's moments of it) is the K nets' tensors concatenated along dim 0; :func:`unfold`
takes them apart again, so a seed taken out computes exactly its column.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from dcgan_xai.errors import UserError

_STATELESS = (nn.Sequential, nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.Identity)


def _grouped_conv(parts: Sequence[nn.Module]) -> nn.Module:
    c = parts[0]
    assert isinstance(c, (nn.Conv2d, nn.ConvTranspose2d))
    k, cls = len(parts), cast(Any, type(c))
    kw = {"kernel_size": c.kernel_size, "stride": c.stride, "padding": c.padding,
          "dilation": c.dilation, "groups": k * c.groups, "bias": c.bias is not None}  # fmt: skip
    if isinstance(c, nn.ConvTranspose2d):
        kw["output_padding"] = c.output_padding
    return cls(k * c.in_channels, k * c.out_channels, **kw)


def _grouped_bn(parts: Sequence[nn.Module]) -> nn.Module:
    b = parts[0]
    assert isinstance(b, nn.BatchNorm2d)
    return nn.BatchNorm2d(len(parts) * b.num_features, b.eps, b.momentum, b.affine,
                          b.track_running_stats)  # fmt: skip


def fold(nets: Sequence[nn.Module]) -> nn.Module:
    """One net computing ``nets`` (K >= 1, one architecture) side by side along the channels."""
    first = nets[0]
    shapes = [[tuple(t.shape) for t in n.state_dict().values()] for n in nets]
    if any(s != shapes[0] for s in shapes):
        raise UserError("fold needs nets of one architecture; their tensors' shapes differ")
    folded = copy.deepcopy(first)
    for name, module in first.named_modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            new = _grouped_conv([n.get_submodule(name) for n in nets])
        elif isinstance(module, nn.BatchNorm2d):
            new = _grouped_bn([n.get_submodule(name) for n in nets])
        elif isinstance(module, _STATELESS) or not list(module.parameters(recurse=False)):
            continue
        else:
            raise UserError(f"fold: {name} ({type(module).__name__}) has no grouped form")
        parent, _, attr = name.rpartition(".")
        setattr(folded.get_submodule(parent) if parent else folded, attr, new)
    ref = next(first.parameters())
    folded.to(ref.device, ref.dtype)
    with torch.no_grad():
        for key, tensor in folded.state_dict().items():
            parts = [n.state_dict()[key] for n in nets]
            tensor.copy_(parts[0] if tensor.ndim == 0 else torch.cat(parts, 0))
    return folded


def unfold(folded: nn.Module, nets: Sequence[nn.Module]) -> None:
    """Copy ``folded``'s tensors back into ``nets`` (the K nets it was folded from, or nets of
    their architecture): net k gets the k-th of K equal slices along dim 0 of every tensor."""
    with torch.no_grad():
        for key, tensor in folded.state_dict().items():
            parts = [tensor] * len(nets) if tensor.ndim == 0 else tensor.chunk(len(nets), 0)
            for net, part in zip(nets, parts, strict=True):
                net.state_dict()[key].copy_(part)


def split_state(tensor: torch.Tensor, k: int) -> list[torch.Tensor]:
    """A folded tensor (or Adam's moment of one) as the K models' tensors; a 0-dim one (a step
    count, BatchNorm's ``num_batches_tracked``) is shared by all."""
    return [tensor.clone()] * k if tensor.ndim == 0 else [t.clone() for t in tensor.chunk(k, 0)]


def side_by_side(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """K per-model batches (N, C, ...) as the folded net's input (N, K*C, ...)."""
    return torch.cat(list(tensors), 1)


class Columns(nn.Module):
    """A folded discriminator whose logits come back as (N, K): column k is model k's."""

    def __init__(self, folded: nn.Module, k: int):
        super().__init__()
        self.folded, self.k = folded, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.folded(x).reshape(x.shape[0], self.k)
