import pytest
import torch

from dcgan_xai.errors import UserError
from dcgan_xai.models.networks import Generator, build_discriminator

PAPER = [
    "Conv2d", "LeakyReLU",
    "Conv2d", "BatchNorm2d", "LeakyReLU",
    "Conv2d", "BatchNorm2d", "LeakyReLU",
    "Conv2d", "Sigmoid",
]  # fmt: skip
TUTORIAL = [
    "Conv2d", "LeakyReLU",
    "Conv2d", "BatchNorm2d", "LeakyReLU",
    "Conv2d", "BatchNorm2d", "LeakyReLU",
    "Conv2d", "BatchNorm2d", "LeakyReLU",
    "Conv2d", "Sigmoid",
]  # fmt: skip


def test_paper_discriminator_layer_sequence_matches_the_paper():
    assert build_discriminator("paper").layer_sequence() == PAPER


def test_tutorial_discriminator_layer_sequence():
    assert build_discriminator("tutorial").layer_sequence() == TUTORIAL


def test_paper_discriminator_kernels_and_block_shapes():
    d = build_discriminator("paper", ndf=64)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (1, 64, (4, 4), (2, 2), (1, 1)),
        (64, 128, (4, 4), (2, 2), (1, 1)),
        (128, 256, (4, 4), (2, 2), (1, 1)),
        (256, 1, (8, 8), (1, 1), (0, 0)),
    ]
    assert d.block_shapes() == {
        "block1": (64, 32, 32),
        "block2": (128, 16, 16),
        "block3": (256, 8, 8),
    }
    assert build_discriminator("tutorial").block_shapes()["block4"] == (512, 4, 4)


def test_generator_layer_sequence_and_shape():
    g = Generator(nz=100, ngf=64)
    names = [type(m).__name__ for m in g.net.modules()][1:]
    block = ["Sequential", "ConvTranspose2d", "BatchNorm2d", "ReLU"]
    assert names == block * 4 + ["ConvTranspose2d", "Tanh"]
    outs = [m.out_channels for m in g.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert outs == [512, 256, 128, 64, 1]
    x = g(torch.randn(3, 100, 1, 1))
    assert x.shape == (3, 1, 64, 64)
    assert x.min() >= -1 and x.max() <= 1


@pytest.mark.parametrize("arch", ["paper", "tutorial"])
def test_discriminator_returns_logits(arch):
    torch.manual_seed(0)
    d = build_discriminator(arch, ndf=8).eval()
    x = torch.randn(8, 1, 64, 64)
    with torch.no_grad():
        d.head.weight.mul_(100)
        logits = d(x)
        assert logits.shape == (8,)
        assert logits.abs().max() > 1 and (logits < 0).any()  # not squashed by a Sigmoid
        assert torch.equal(d.probability(x), torch.sigmoid(logits))
        # the head is linear in its input: doubling its weight (bias 0) doubles every logit
        d.head.weight.mul_(2)
        torch.testing.assert_close(d(x), 2 * logits)


def test_unknown_arch_is_refused():
    with pytest.raises(
        UserError, match="model.arch='resnet' is not allowed; allowed: paper, tutorial"
    ):
        build_discriminator("resnet")
