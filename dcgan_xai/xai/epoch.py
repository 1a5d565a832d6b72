"""One epoch's explanation: maps and scores of D on a batch of real and a batch of fake images.

Tensors in, a record out; D is left exactly as it was found.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from dcgan_xai.state import preserved_state
from dcgan_xai.xai.gradcam import grad_cam, logits, set_bn_mode
from dcgan_xai.xai.scores import ScoreThresholds, summarize, thresholds_of


@torch.no_grad()
def probe_probability(discriminator: torch.nn.Module, images: torch.Tensor, bn_mode: str) -> float:
    """Mean D(x) over ``images`` in the given BN mode, with D left unchanged."""
    with preserved_state(discriminator):
        set_bn_mode(discriminator, bn_mode)
        return torch.sigmoid(logits(discriminator, images)).mean().item()


def explain_epoch(
    discriminator: torch.nn.Module,
    images: Mapping[str, torch.Tensor],
    layers: Sequence[str],
    bn_mode: str = "batch",
    method: str = "gradcam",
    thresholds: ScoreThresholds | None = None,
    normalize: str = "max",
) -> dict[str, Any]:
    """Maps and scores of ``images["real"]`` and ``images["fake"]`` for each layer, by ``method``.

    Args:
        discriminator: maps (N, C, H, W) images to logits.
        images: ``real`` and ``fake`` batches (N, C, H, W) in [-1, 1] on D's device.
        layers: names of D's blocks to explain.
        bn_mode, method, normalize: see :func:`dcgan_xai.xai.gradcam.grad_cam`.
        thresholds: the scores' thresholds (any settings with those fields; None: the defaults),
            see :func:`dcgan_xai.xai.scores.summarize`.

    Returns:
        A record: ``maps[layer][real|fake]`` (N, H, W) float16, ``scores[layer][real|fake]``
        per-image tensors, ``summary[layer]`` flat floats, ``d_real``/``d_fake``,
        ``fake_images`` (N, 1, H, W) float16, and the settings used.
    """
    t = thresholds_of(thresholds or ScoreThresholds())
    record: dict[str, Any] = {
        "layers": list(layers),
        "method": method,
        "bn_mode": bn_mode,
        **t,
        "normalize": normalize,
        "maps": {name: {} for name in layers},
        "scores": {name: {} for name in layers},
        "summary": {name: {} for name in layers},
        "d_real": probe_probability(discriminator, images["real"], bn_mode),
        "d_fake": probe_probability(discriminator, images["fake"], bn_mode),
        "fake_images": images["fake"].half().cpu(),
    }
    for kind in ("real", "fake"):
        batch = images[kind]
        maps = grad_cam(
            discriminator, batch, list(layers), bn_mode, method=method, normalize=normalize
        )
        assert isinstance(maps, dict)
        for name, layer_maps in maps.items():
            per_image, summary = summarize(layer_maps, batch, **t)
            record["maps"][name][kind] = layer_maps.half().cpu()
            record["scores"][name][kind] = {k: v.cpu() for k, v in per_image.items()}
            record["summary"][name].update({f"{kind}_{k}": v for k, v in summary.items()})
    return record
