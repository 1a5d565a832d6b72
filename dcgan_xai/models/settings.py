"""The model's hyperparameters and their one default, without importing the nets."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ModelConfig:
    """The DCGAN's hyperparameters (the ``model.*`` config group's schema) and their one default;
    :class:`~dcgan_xai.models.module.DCGAN` takes them as keyword arguments (see it for their meaning)."""

    arch: str = "paper"
    nz: int = 100
    ngf: int = 64
    ndf: int = 64
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    bn_momentum: float = 0.1
    n_samples: int = 64
    instance_noise: float = 0.0
    instance_noise_decay_epochs: float = 0.0
    lr_milestones: list[int] = field(default_factory=list)
    lr_gamma: float = 0.1
