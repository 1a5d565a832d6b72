"""Grad-CAM of a discriminator's logit, through Captum's LayerGradCam, with no side effects."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from dcgan_xai.errors import UserError
from dcgan_xai.state import preserved_state

BN_MODES = ("batch", "eval")
# How a block is explained. ``gradcam``: Grad-CAM of the block's output (after its LeakyReLU),
# the paper's. ``gradcam_pre``: Grad-CAM of the block's pre-activation (its BatchNorm output, or
# its conv output where it has no BatchNorm). ``gradcam_conv``: Grad-CAM of its conv output.
# ``hirescam``: gradient x activation of the block's output summed over channels (HiResCAM),
# which keeps the position-dependent part of the logit that Grad-CAM's spatial mean drops.
METHODS = ("gradcam", "gradcam_pre", "gradcam_conv", "hirescam")


def layer_names(discriminator: nn.Module) -> list[str]:
    """The blocks Grad-CAM lists: the discriminator's ``block_names`` or its named children (any
    other dotted submodule path, such as ``main.2``, is accepted too)."""
    names = getattr(discriminator, "block_names", None)
    if names is None:
        names = [n for n, _ in discriminator.named_children()]
    return list(names)


def check_layers(discriminator: nn.Module, layer: str | Sequence[str]) -> list[str]:
    layers = [layer] if isinstance(layer, str) else list(layer)
    valid = layer_names(discriminator)
    paths = {n for n, _ in discriminator.named_modules() if n}
    for name in layers:
        if name not in valid and name not in paths:
            raise UserError(
                f"unknown Grad-CAM layer {name!r}; valid layers: {', '.join(valid)}, or any "
                f"submodule path of {type(discriminator).__name__} (such as "
                f"{sorted(paths, key=len)[-1]!r})"
            )
    if not layers:
        raise UserError(f"no Grad-CAM layer given; valid layers: {', '.join(valid)}")
    return layers


CONVS = (nn.Conv2d, nn.ConvTranspose2d)
NORMS = (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm, nn.LayerNorm)
ACTIVATIONS = (nn.LeakyReLU, nn.ReLU, nn.ELU, nn.GELU, nn.SiLU, nn.PReLU, nn.Tanh)


def explained_module(block: nn.Module, method: str) -> nn.Module:
    """The submodule of ``block`` whose output ``method`` explains. ``gradcam_conv`` and
    ``gradcam_pre`` need a block of the form (conv, [norm,] activation); any other block is
    refused with the reason, never explained at a layer the method does not name."""
    if method not in METHODS:
        raise UserError(f"method={method!r} is not allowed; allowed: {', '.join(METHODS)}")
    if method in ("gradcam", "hirescam"):
        return block
    parts = list(block) if isinstance(block, nn.Sequential) else []
    fits = (
        len(parts) in (2, 3)
        and isinstance(parts[0], CONVS)
        and isinstance(parts[-1], ACTIVATIONS)
        and (len(parts) == 2 or isinstance(parts[1], NORMS))
    )
    if not fits:
        shown = [type(m).__name__ for m in parts] or [type(block).__name__]
        raise UserError(
            f"method={method} needs a block (conv, [norm,] activation); this one is "
            f"({', '.join(shown)}): use gradcam or hirescam there"
        )
    return parts[0] if method == "gradcam_conv" else parts[-2]


def set_bn_mode(discriminator: nn.Module, bn_mode: str) -> None:
    """``batch``: normalisation layers use the batch's statistics (train mode); ``eval``: their
    running statistics. Dropout stays off in both: an explanation is deterministic."""
    discriminator.train(bn_mode == "batch")
    for m in discriminator.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()


def logits(discriminator: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """D's logit per image (N,). Where D's last registered layer is a Sigmoid that its forward
    runs, D returns a probability: the logit is that Sigmoid's input."""
    last = list(discriminator.modules())[-1]
    seen: list[torch.Tensor] = []
    handle = (
        last.register_forward_hook(lambda _m, inp, _out: seen.append(inp[0]))
        if isinstance(last, nn.Sigmoid)
        else None
    )
    try:
        out = discriminator(images)
    finally:
        if handle is not None:
            handle.remove()
    return (seen[-1] if seen else out).reshape(images.shape[0]).float()


NORMALIZATIONS = ("max", "minmax")


def normalize_maps(cam: torch.Tensor, how: str = "max") -> torch.Tensor:
    """Scale each map (N, H, W) to [0, 1]: ``max`` divides by its max absolute value (the
    paper's reading, the default); ``minmax`` maps its min to 0 and its max to 1 (the common
    convention of other Grad-CAM libraries; on a map whose minimum is above 0 it shrinks the
    share that the 70% coverage rule counts). An all-zero (or, with ``minmax``, flat) map is
    all zero."""
    if how not in NORMALIZATIONS:
        raise UserError(
            f"normalize={how} is not allowed; it must be one of {', '.join(NORMALIZATIONS)}"
        )
    flat = cam.flatten(1)
    low: torch.Tensor | float = 0.0
    if how == "minmax":
        low = flat.amin(1).view(-1, 1, 1)
        peak = flat.amax(1).view(-1, 1, 1) - low
    else:
        peak = flat.abs().amax(1).view(-1, 1, 1)
    return torch.where(peak > 0, (cam - low) / peak.clamp_min(torch.finfo(cam.dtype).tiny), 0.0)


def _map(
    discriminator: nn.Module, target: nn.Module, x: torch.Tensor, method: str, relu: bool
) -> torch.Tensor:
    """One layer's maps (N, H, W), upsampled bilinearly to the images' size, not normalised."""
    # Captum is loaded when maps are made, so reading configs and runs does not import it
    from captum.attr import LayerGradCam, LayerGradientXActivation

    def logit(inp: torch.Tensor) -> torch.Tensor:
        return logits(discriminator, inp)

    if method == "hirescam":
        cam = LayerGradientXActivation(logit, target).attribute(x).sum(1, keepdim=True)
        cam = F.relu(cam) if relu else cam  # (N, 1, h, w)
    else:
        cam = LayerGradCam(logit, target).attribute(x, relu_attributions=relu)  # (N, 1, h, w)
    cam = F.interpolate(
        cam.detach().float(), size=x.shape[-2:], mode="bilinear", align_corners=False
    )
    return cam[:, 0]


def grad_cam(
    discriminator: nn.Module,
    images: torch.Tensor,
    layer: str | Sequence[str],
    bn_mode: str = "batch",
    relu: bool = True,
    method: str = "gradcam",
    normalize: str = "max",
) -> torch.Tensor | dict[str, torch.Tensor]:
    """Grad-CAM (or another method of :data:`METHODS`) of D's logit at a named block.

    Grad-CAM: channel weights are the spatial mean of d(logit)/d(activation); the map is the
    (ReLU of the) weighted sum of channels. HiResCAM: the (ReLU of the) sum over channels of
    d(logit)/d(activation) * activation. Maps are bilinearly upsampled to the image size and
    scaled per image to [0, 1] (``normalize``). A map that is all zero (degenerate) stays zero.

    Args:
        discriminator: a module mapping images (N, C, H, W) to logits (N,), or to
            probabilities through a final Sigmoid (its input, the logit, is explained). It is
            left exactly as it was found (see :func:`preserved_state`).
        images: (N, C, H, W) in [-1, 1].
        layer: a block name (``block1``...) or any submodule path, or a list of them.
        bn_mode: see :func:`set_bn_mode`.
        relu: apply the ReLU of Grad-CAM; without it maps lie in [-1, 1].
        method: one of :data:`METHODS`; ``gradcam`` is the paper's.
        normalize: see :func:`normalize_maps`.

    Returns:
        Maps (N, H, W) in [0, 1] for one layer, or a dict of them keyed by layer name.
    """
    if bn_mode not in BN_MODES:
        raise UserError(f"bn_mode={bn_mode!r} is not allowed; allowed: {', '.join(BN_MODES)}")
    if images.ndim != 4:
        raise UserError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    layers = check_layers(discriminator, layer)
    targets = {name: explained_module(discriminator.get_submodule(name), method) for name in layers}
    device_type = images.device.type
    no_autocast = (torch.autocast(device_type, enabled=False) if device_type in ("cuda", "cpu")
                   else nullcontext())  # fmt: skip
    with preserved_state(discriminator), torch.inference_mode(False), torch.enable_grad():
        with no_autocast:
            set_bn_mode(discriminator, bn_mode)
            x = images.detach().clone().float()  # a normal tensor even under inference mode
            maps = {name: normalize_maps(_map(discriminator, targets[name], x, method, relu),
                                         normalize) for name in layers}  # fmt: skip
    return maps[layer] if isinstance(layer, str) else maps


@torch.no_grad()
def linear_head_decomposition(
    discriminator: nn.Module, images: torch.Tensor, bn_mode: str = "batch"
) -> dict[str, torch.Tensor] | None:
    """Split the logit of a discriminator whose head is one linear conv over its last block.

    Then logit = sum over c, i, j of W_c(i,j) A_c(i,j) (A: the last block's output). Grad-CAM
    weights channel c by the spatial mean of W_c, so the sum of its (pre-ReLU) map is the
    *pooled* part, sum_c mean(W_c) sum_ij A_c(i,j); the rest is the *positional* part, which
    Grad-CAM cannot show. Returns per-image ``logit``, ``pooled`` and ``positional`` (N,), or
    None when the head is not such a conv. D is left as it was found.
    """
    head = getattr(discriminator, "head", None)
    names = layer_names(discriminator)
    if not isinstance(head, nn.Conv2d) or head.bias is not None or head.out_channels != 1:
        return None
    with preserved_state(discriminator):
        set_bn_mode(discriminator, bn_mode)
        x = images.float()
        for name in names:
            x = discriminator.get_submodule(name)(x)
        activation = x.float()  # (N, C, h, w)
        weight = head.weight[0].float()  # (C, kh, kw)
        if activation.shape[-2:] != weight.shape[-2:]:
            return None
        logit = (activation * weight).flatten(1).sum(1)
        pooled = (activation.sum((2, 3)) * weight.mean((1, 2))).sum(1)
    return {"logit": logit, "pooled": pooled, "positional": logit - pooled}
