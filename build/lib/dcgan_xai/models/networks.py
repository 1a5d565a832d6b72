"""The DCGAN networks: one generator, two discriminators (the paper's 4-conv, the tutorial's 5-conv)."""

from __future__ import annotations

import torch
from torch import nn

from dcgan_xai.errors import UserError

IMAGE_SIZE = 64
ARCHS = ("paper", "tutorial")


def dcgan_init(module: nn.Module) -> None:
    """DCGAN initialisation: conv weights N(0, 0.02); BatchNorm weight N(1, 0.02), bias 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def _up(cin: int, cout: int, stride: int, padding: int, bn_momentum: float) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(cin, cout, 4, stride, padding, bias=False),
        nn.BatchNorm2d(cout, momentum=bn_momentum),
        nn.ReLU(True),
    )


def _down(cin: int, cout: int, bn: bool, bn_momentum: float) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 4, 2, 1, bias=False)]
    if bn:
        layers.append(nn.BatchNorm2d(cout, momentum=bn_momentum))
    layers.append(nn.LeakyReLU(0.2, inplace=False))
    return nn.Sequential(*layers)


class Generator(nn.Module):
    """z (N, nz, 1, 1) to images (N, 1, 64, 64) in [-1, 1]."""

    def __init__(self, nz: int = 100, ngf: int = 64, channels: int = 1, bn_momentum: float = 0.1):
        super().__init__()
        self.nz = nz
        self.net = nn.Sequential(
            _up(nz, ngf * 8, 1, 0, bn_momentum),  # (N, ngf*8, 4, 4)
            _up(ngf * 8, ngf * 4, 2, 1, bn_momentum),  # (N, ngf*4, 8, 8)
            _up(ngf * 4, ngf * 2, 2, 1, bn_momentum),  # (N, ngf*2, 16, 16)
            _up(ngf * 2, ngf, 2, 1, bn_momentum),  # (N, ngf, 32, 32)
            nn.ConvTranspose2d(ngf, channels, 4, 2, 1, bias=False),  # (N, 1, 64, 64)
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Discriminator(nn.Module):
    """Images (N, 1, 64, 64) to logits (N,).

    The named blocks (``block1``, ``block2``, ...) end in LeakyReLU; their outputs are what
    Grad-CAM weights. ``head`` maps the last block to one logit per image. The Sigmoid is
    kept as a module for the record of the layer sequence, and used only by
    :meth:`probability`; training uses BCE-with-logits.
    """

    def __init__(self, blocks: list[nn.Sequential], head: nn.Conv2d):
        super().__init__()
        self.block_names = [f"block{i + 1}" for i in range(len(blocks))]
        first = blocks[0][0]
        assert isinstance(first, nn.Conv2d)
        self.in_channels = first.in_channels
        for name, block in zip(self.block_names, blocks, strict=True):
            self.add_module(name, block)
        self.head = head
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.block_names:
            x = getattr(self, name)(x)
        return self.head(x).flatten()

    def probability(self, x: torch.Tensor) -> torch.Tensor:
        """D(x) in [0, 1]."""
        return self.sigmoid(self(x))

    def layer_sequence(self) -> list[str]:
        """The class names of D's layers in the order they run, Sigmoid last."""
        blocks = [type(m).__name__ for n in self.block_names for m in getattr(self, n)]
        return [*blocks, type(self.head).__name__, type(self.sigmoid).__name__]

    def block_shapes(self, image_size: int = IMAGE_SIZE) -> dict[str, tuple[int, int, int]]:
        """Output shape (C, H, W) of each named block for one image."""
        x = torch.zeros(1, self.in_channels, image_size, image_size)
        shapes = {}
        with torch.no_grad():
            for name in self.block_names:
                x = getattr(self, name)(x)
                shapes[name] = tuple(x.shape[1:])
        return shapes  # type: ignore[return-value]


def _first_three_blocks(ndf: int, channels: int, bn_momentum: float) -> list[nn.Sequential]:
    """The blocks both discriminators share: 64x64 down to 8x8."""
    return [
        _down(channels, ndf, False, bn_momentum),  # (N, ndf, 32, 32)
        _down(ndf, ndf * 2, True, bn_momentum),  # (N, ndf*2, 16, 16)
        _down(ndf * 2, ndf * 4, True, bn_momentum),  # (N, ndf*4, 8, 8)
    ]


def paper_discriminator(
    ndf: int = 64, channels: int = 1, bn_momentum: float = 0.1
) -> Discriminator:
    """The paper's 4-conv D; the last kernel (8x8 to 1x1) is our reading of the paper."""
    blocks = _first_three_blocks(ndf, channels, bn_momentum)
    return Discriminator(blocks, nn.Conv2d(ndf * 4, 1, 8, 1, 0, bias=False))  # (N, 1, 1, 1)


def tutorial_discriminator(
    ndf: int = 64, channels: int = 1, bn_momentum: float = 0.1
) -> Discriminator:
    """The 5-conv D of the PyTorch DCGAN example."""
    blocks = [
        *_first_three_blocks(ndf, channels, bn_momentum),
        _down(ndf * 4, ndf * 8, True, bn_momentum),  # (N, ndf*8, 4, 4)
    ]
    return Discriminator(blocks, nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False))  # (N, 1, 1, 1)


def build_discriminator(arch: str, ndf: int = 64, bn_momentum: float = 0.1) -> Discriminator:
    if arch == "paper":
        return paper_discriminator(ndf, bn_momentum=bn_momentum)
    if arch == "tutorial":
        return tutorial_discriminator(ndf, bn_momentum=bn_momentum)
    raise UserError(f"model.arch={arch!r} is not allowed; allowed: {', '.join(ARCHS)}")
