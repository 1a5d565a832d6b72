import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dcgan_xai.errors import UserError
from dcgan_xai.models.networks import Discriminator, build_discriminator, dcgan_init
from dcgan_xai.xai import coverage, focus, grad_cam, is_degenerate, overlay
from dcgan_xai.xai.scores import digit_mask, summarize


def tiny_discriminator() -> Discriminator:
    """block1: 1x1 conv with weights (1, 2); head: 2x2 conv, channel 1 [[1,2],[3,4]], channel 2
    [[0,0],[0,-2]]. So d(logit)/d(A) is the head's weights and the channel weights are their
    means: 2.5 and -0.5. CAM = relu(2.5 * x - 0.5 * 2x) = relu(1.5 x)."""
    conv = nn.Conv2d(1, 2, 1, bias=False)
    head = nn.Conv2d(2, 1, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 2.0]).view(2, 1, 1, 1))
        head.weight.copy_(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, -2.0]]]]))
    return Discriminator([nn.Sequential(conv)], head)


X = torch.tensor([[[[1.0, -1.0], [2.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])  # (2, 1, 2, 2)


def test_hand_computed_grad_cam_on_a_tiny_net():
    maps = grad_cam(tiny_discriminator(), X, "block1")
    # relu(1.5 * [[1, -1], [2, 0]]) = [[1.5, 0], [3, 0]], divided by its max 3
    assert torch.equal(maps[0], torch.tensor([[0.5, 0.0], [1.0, 0.0]]))
    assert torch.equal(maps[1], torch.zeros(2, 2))  # degenerate: stays zero
    assert is_degenerate(maps).tolist() == [False, True]


def test_hand_computed_hirescam_on_a_tiny_net():
    maps = grad_cam(tiny_discriminator(), X, "block1", method="hirescam")
    # sum over channels of head weight x activation: x * ([[1,2],[3,4]] + 2 * [[0,0],[0,-2]])
    # = [[1,-1],[2,0]] * [[1,2],[3,0]] = [[1,-2],[6,0]] (its sum is the logit, 5); relu, / 6
    assert torch.allclose(maps[0], torch.tensor([[1 / 6, 0.0], [1.0, 0.0]]))
    assert torch.equal(maps[1], torch.zeros(2, 2))
    raw = grad_cam(tiny_discriminator(), X[:1], "block1", method="hirescam", relu=False)
    assert torch.allclose(raw[0], torch.tensor([[1 / 6, -1 / 3], [1.0, 0.0]]))


def test_unknown_method_is_refused(trained_like_d):
    with pytest.raises(UserError, match="method='gradcam\\+\\+' is not allowed; allowed: gradcam, "
                       "gradcam_pre, gradcam_conv, hirescam"):  # fmt: skip
        grad_cam(trained_like_d, torch.zeros(2, 1, 64, 64), "block3", method="gradcam++")


def test_hand_computed_grad_cam_without_relu():
    maps = grad_cam(tiny_discriminator(), X[:1], "block1", relu=False)
    assert torch.equal(maps[0], torch.tensor([[0.5, -0.5], [1.0, 0.0]]))


def reference_grad_cam(d: nn.Module, x: torch.Tensor, layer: str, bn_mode: str) -> torch.Tensor:
    """A plain hook-based Grad-CAM, independent of Captum."""
    d = copy.deepcopy(d)
    d.train(bn_mode == "batch")
    saved = {}
    handle = d.get_submodule(layer).register_forward_hook(lambda m, i, o: saved.update(a=o))
    logits = d(x)
    handle.remove()
    (grad,) = torch.autograd.grad(logits.sum(), saved["a"])
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * saved["a"]).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(1).view(-1, 1, 1)
    return torch.where(peak > 0, cam / peak, torch.zeros_like(cam))


@pytest.fixture
def trained_like_d():
    torch.manual_seed(0)
    d = build_discriminator("paper", ndf=16)
    d.apply(dcgan_init)
    d.train()
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(3):
            d(torch.randn(32, 1, 64, 64))
    return d


@pytest.mark.parametrize("bn_mode", ["batch", "eval"])
@pytest.mark.parametrize("layer", ["block1", "block2", "block3"])
def test_matches_a_hook_based_reference(trained_like_d, bn_mode, layer):
    x = torch.rand(8, 1, 64, 64) * 2 - 1
    ours = grad_cam(trained_like_d, x, layer, bn_mode=bn_mode)
    ref = reference_grad_cam(trained_like_d, x, layer, bn_mode)
    assert ours.shape == (8, 64, 64)
    assert (ours - ref).abs().max() < 1e-5
    assert ours.min() >= 0 and ours.max() <= 1


@pytest.mark.parametrize("bn_mode", ["batch", "eval"])
@pytest.mark.parametrize(
    ("layer", "method", "module"),
    [("block1", "gradcam_pre", "block1.0"), ("block2", "gradcam_pre", "block2.1"),
     ("block3", "gradcam_pre", "block3.1"), ("block3", "gradcam_conv", "block3.0")],
)  # fmt: skip
def test_pre_activation_methods_match_the_reference_at_that_module(
    trained_like_d, bn_mode, layer, method, module
):
    x = torch.rand(8, 1, 64, 64) * 2 - 1
    ours = grad_cam(trained_like_d, x, layer, bn_mode=bn_mode, method=method)
    assert (ours - reference_grad_cam(trained_like_d, x, module, bn_mode)).abs().max() < 1e-5


def test_bn_modes_differ(trained_like_d):
    x = torch.rand(8, 1, 64, 64) * 2 - 1
    a = grad_cam(trained_like_d, x, "block2", bn_mode="batch")
    b = grad_cam(trained_like_d, x, "block2", bn_mode="eval")
    assert not torch.allclose(a, b)


def snapshot(d: nn.Module) -> dict:
    return {
        "modes": [m.training for m in d.modules()],
        "buffers": [b.clone() for b in d.buffers()],
        "params": [p.detach().clone() for p in d.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in d.parameters()],
        "requires_grad": [p.requires_grad for p in d.parameters()],
        "rng": torch.get_rng_state(),
    }


def assert_same(a: dict, b: dict) -> None:
    assert a["modes"] == b["modes"]
    assert a["requires_grad"] == b["requires_grad"]
    for key in ("buffers", "params"):
        assert all(torch.equal(x, y) for x, y in zip(a[key], b[key], strict=True))
    for x, y in zip(a["grads"], b["grads"], strict=True):
        assert (x is None and y is None) or torch.equal(x, y)
    assert torch.equal(a["rng"], b["rng"])


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "gradcam_pre"])
@pytest.mark.parametrize("bn_mode", ["batch", "eval"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_no_side_effects(trained_like_d, bn_mode, mode, method):
    d = trained_like_d.train(mode == "train")
    params = list(d.parameters())
    params[0].grad = torch.ones_like(params[0])
    params[1].requires_grad_(False)
    x = torch.rand(4, 1, 64, 64) * 2 - 1
    before = snapshot(d)
    grad_cam(d, x, ["block1", "block3"], bn_mode=bn_mode, method=method)
    assert_same(before, snapshot(d))


@pytest.mark.parametrize("method", ["gradcam", "hirescam"])
@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_works_under_no_grad_and_inference_mode(trained_like_d, context, method):
    x = torch.rand(4, 1, 64, 64) * 2 - 1
    expected = grad_cam(trained_like_d, x, "block3", method=method)
    with context():
        got = grad_cam(trained_like_d, x.clone(), "block3", method=method)
    assert torch.equal(expected, got)


def test_layer_list_returns_a_dict(trained_like_d):
    x = torch.rand(4, 1, 64, 64) * 2 - 1
    maps = grad_cam(trained_like_d, x, ["block1", "block3"])
    assert set(maps) == {"block1", "block3"}
    assert torch.equal(maps["block3"], grad_cam(trained_like_d, x, "block3"))


def test_unknown_layer_lists_valid_names(trained_like_d):
    with pytest.raises(
        UserError, match="unknown Grad-CAM layer 'block9'; valid layers: block1, block2, block3"
    ):
        grad_cam(trained_like_d, torch.zeros(1, 1, 64, 64), "block9")


def test_unknown_bn_mode(trained_like_d):
    with pytest.raises(UserError, match="bn_mode='train' is not allowed; allowed: batch, eval"):
        grad_cam(trained_like_d, torch.zeros(1, 1, 64, 64), "block1", bn_mode="train")


def test_focus_and_coverage_by_hand():
    images = -torch.ones(2, 1, 2, 2)
    images[:, 0, 0, 0] = 1.0  # the digit is the top-left pixel (0.5 is the mask threshold)
    images[:, 0, 0, 1] = 0.0  # exactly 0.5 in [0, 1] scale: not digit (> 0.5 is)
    maps = torch.tensor([[[1.0, 0.5], [0.25, 0.25]], [[0.0, 0.0], [0.0, 0.0]]])
    assert digit_mask(images)[0].tolist() == [[True, False], [False, False]]
    assert torch.allclose(focus(maps, images), torch.tensor([0.5, 0.0]))
    assert coverage(maps).tolist() == [0.5, 0.0]  # 1.0 and 0.5 are >= 0.5
    assert coverage(maps, pixel_threshold=0.3).tolist() == [0.5, 0.0]
    assert coverage(maps, pixel_threshold=0.2).tolist() == [1.0, 0.0]
    per_image, summary = summarize(maps, images, flag_threshold=0.4)
    assert summary["degenerate"] == 0.5 and summary["flagged"] == 0.5
    assert summary["coverage_mean"] == 0.25 and per_image["degenerate"].tolist() == [False, True]


def test_overlay_colours():
    images = -torch.ones(1, 1, 1, 2)  # black
    maps = torch.tensor([[[0.0, 1.0]]])
    out = overlay(images, maps, alpha=0.5)
    assert out.shape == (1, 3, 1, 2)
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([0.0, 0.0, 0.25]))  # jet(0): dark blue
    assert torch.allclose(out[0, :, 0, 1], torch.tensor([0.25, 0.0, 0.0]))  # jet(1): dark red


def test_linear_head_decomposition_by_hand():
    from dcgan_xai.xai.gradcam import linear_head_decomposition

    parts = linear_head_decomposition(tiny_discriminator(), X[:1])
    # A = [x, 2x]; logit = 1*1 + 2*(-1) + 3*2 + 4*0 + (-2)*(2*0) = 5; channel means 2.5 and -0.5;
    # pooled = 2.5 * sum(x) - 0.5 * sum(2x) = 1.5 * 2 = 3; positional = 2
    assert torch.allclose(parts["logit"], torch.tensor([5.0]))
    assert torch.allclose(parts["pooled"], torch.tensor([3.0]))
    assert torch.allclose(parts["positional"], torch.tensor([2.0]))


def test_linear_head_decomposition_matches_the_logit_of_the_paper_d(trained_like_d):
    from dcgan_xai.xai.gradcam import linear_head_decomposition

    x = torch.rand(6, 1, 64, 64) * 2 - 1
    before = snapshot(trained_like_d)
    parts = linear_head_decomposition(trained_like_d, x, "eval")
    assert_same(before, snapshot(trained_like_d))
    with torch.no_grad():
        logit = trained_like_d.eval()(x)
    assert torch.allclose(parts["logit"], logit, atol=1e-4)
    assert linear_head_decomposition(build_discriminator("tutorial", 8), x) is not None


def test_maps_scale_by_their_max_by_default_or_from_min_to_max():
    from dcgan_xai.xai.gradcam import normalize_maps

    cam = torch.tensor([[[2.0, 3.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]])
    by_max = normalize_maps(cam)  # the paper's reading: a map whose minimum is above 0
    assert torch.equal(by_max[0], torch.tensor([[0.5, 0.75], [0.75, 1.0]]))
    assert coverage(by_max[:1], 0.5).item() == 1.0  # covers everything at the 0.5 threshold
    minmax = normalize_maps(cam, "minmax")
    assert torch.equal(minmax[0], torch.tensor([[0.0, 0.5], [0.5, 1.0]]))
    assert coverage(minmax[:1], 0.5).item() == 0.75
    assert not minmax[1].any() and not by_max[1].any()  # flat or all-zero maps stay zero
    with pytest.raises(
        UserError, match="normalize=mean is not allowed; it must be one of max, minmax"
    ):
        normalize_maps(cam, "mean")
