"""Pure Grad-CAM and scoring functions: tensors in, tensors out, no Lightning."""

from dcgan_xai.xai.gradcam import BN_MODES, METHODS, grad_cam
from dcgan_xai.xai.overlay import jet, overlay
from dcgan_xai.xai.scores import coverage, digit_mask, focus, is_degenerate

__all__ = [
    "BN_MODES",
    "METHODS",
    "coverage",
    "digit_mask",
    "focus",
    "grad_cam",
    "is_degenerate",
    "jet",
    "overlay",
]
