"""The speed options change how training runs, not what it computes."""

import pytest
import torch
from omegaconf import OmegaConf

from dcgan_xai import numerics
from dcgan_xai.config import SpeedConfig
from dcgan_xai.models.module import Speed
from dcgan_xai.runs.layout import RunDir
from dcgan_xai.training import build_model, train
from tests.helpers import same_weights, scalar_values


def one_step_gradients(model, channels_last: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """D's and G's gradients of one GAN loss, from the model's weights, in either layout."""
    model.speed = Speed(channels_last=channels_last)
    model.on_fit_start()  # converts both nets when channels_last is on
    gen = torch.Generator().manual_seed(0)
    z = model._layout(torch.randn(8, model.hparams["nz"], 1, 1, generator=gen))
    real = model._layout(torch.rand(8, 1, 64, 64, generator=gen) * 2 - 1)
    fake = model.generator(z)
    loss = model.discriminator(real).mean() - model.discriminator(fake).mean()
    loss.backward()
    return fake, {k: p.grad for k, p in model.named_parameters()}


def test_channels_last_computes_the_same_gradients(smoke_cfg):
    cfg = smoke_cfg()
    plain, cl = build_model(cfg), build_model(cfg)
    cl.load_state_dict(plain.state_dict())
    fake_plain, grads_plain = one_step_gradients(plain, False)
    fake_cl, grads_cl = one_step_gradients(cl, True)
    # the layout was used: every 4-d weight with more than one input channel is NHWC in cl only
    pairs = zip(cl.parameters(), plain.parameters(), strict=True)
    weights = [(a, b) for a, b in pairs if a.dim() == 4 and a.shape[1] > 1]
    assert weights
    for a, b in weights:
        assert a.is_contiguous(memory_format=torch.channels_last) and b.is_contiguous()
        assert not b.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fake_cl, fake_plain, rtol=1e-5, atol=1e-6)
    # float rounding may flip a few LeakyReLU signs: compare each gradient as a whole (a wrong
    # layout gives a relative error near 1)
    for key, grad in grads_plain.items():
        error = (grads_cl[key] - grad).norm() / grad.norm().clamp_min(1e-12)
        assert error < 1e-2, (key, float(error))


def test_the_numeric_path_is_chosen_by_the_machine(monkeypatch):
    unset = SpeedConfig()
    monkeypatch.setattr(numerics, "native_bf16", lambda: "avx512_bf16")
    fast = numerics.choose("auto", unset, "cpu")
    assert (fast.precision, fast.channels_last, fast.on_device, fast.cuda_graph) == (
        "bf16-mixed",
        True,
        False,
        False,
    )
    assert "avx512_bf16" in fast.describe()
    assert numerics.choose("auto", SpeedConfig(channels_last=False), "cpu").channels_last is False
    assert numerics.choose("32-true", unset, "cpu") == numerics.NumericPath(
        "32-true", False, False, False, "as configured"
    )
    assert numerics.choose("bf16-mixed", unset, "cpu").channels_last is True
    gpu = numerics.choose("auto", unset, "gpu")  # GPUs: fp32 unless asked, data and graph on
    assert (gpu.precision, gpu.channels_last, gpu.on_device, gpu.cuda_graph) == (
        "32-true",
        False,
        True,
        True,
    )
    assert not numerics.choose("auto", unset, "gpu", one_process=False).cuda_graph  # DDP
    assert not numerics.choose("16-mixed", unset, "gpu").cuda_graph  # fp16's scaler syncs
    assert not numerics.choose("auto", SpeedConfig(compile=True), "gpu").cuda_graph
    monkeypatch.setattr(numerics, "native_bf16", lambda: None)
    slow = numerics.choose("auto", unset, "cpu")
    assert (slow.precision, slow.channels_last) == ("32-true", False)
    assert "no native bf16" in slow.describe()


@pytest.mark.skipif(numerics.native_bf16() is None, reason="the processor has no native bf16")
def test_cpu_fast_path_is_bitwise_reproducible_and_recorded(smoke_run, smoke_cfg, tmp_path):
    fast = ("trainer.precision=auto", "callbacks.gradcam.layers=[block1,block3]")
    a = RunDir(train(smoke_cfg(*fast), tmp_path / "a")["run_dir"])
    b = RunDir(train(smoke_cfg(*fast), tmp_path / "b")["run_dir"])
    recorded = OmegaConf.load(a.root / "config.yaml")
    assert (recorded.trainer.precision, recorded.speed.channels_last) == ("bf16-mixed", True)
    assert same_weights(a.checkpoint(2), b.checkpoint(2))
    assert a.scores_csv.read_text() == b.scores_csv.read_text()
    assert not same_weights(a.checkpoint(2), RunDir(smoke_run["run_dir"]).checkpoint(2))


def test_a_resumed_run_keeps_its_numeric_path(smoke_cfg, tmp_path):
    train(smoke_cfg("trainer.max_epochs=1", "callbacks=none"), tmp_path)  # smoke: fp32
    cfg = smoke_cfg(
        "trainer.max_epochs=2", "callbacks=none", "trainer.precision=auto", "resume=true"
    )
    train(cfg, tmp_path)
    recorded = OmegaConf.load(tmp_path / "config.yaml")
    assert (recorded.trainer.precision, recorded.speed.channels_last) == ("32-true", False)
    assert RunDir(tmp_path).checkpoint_epochs() == [1, 2]


def test_compile_failure_falls_back_to_eager(smoke_run, smoke_cfg, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    cfg = smoke_cfg("callbacks.gradcam.layers=[block1,block3]", "speed.compile=true")
    with pytest.warns(
        UserWarning,
        match=r"torch.compile of Generator failed \(RuntimeError: no compiler here\); training with the eager module",
    ):
        train(cfg, tmp_path)
    assert same_weights(RunDir(tmp_path).checkpoint(2), RunDir(smoke_run["run_dir"]).checkpoint(2))


@pytest.mark.slow
def test_compiled_training_computes_the_same_step(smoke_run, smoke_cfg, tmp_path):
    cfg = smoke_cfg("callbacks.gradcam.layers=[block1,block3]", "speed.compile=true")
    train(cfg, tmp_path)
    ours, ref = RunDir(tmp_path).tensorboard, RunDir(smoke_run["run_dir"]).tensorboard
    for tag in ("train/d_loss", "train/g_loss"):
        assert scalar_values(ours, tag)[0] == pytest.approx(scalar_values(ref, tag)[0], abs=1e-5)
    assert RunDir(tmp_path).gradcam_epochs() == [1, 2]  # Grad-CAM ran on the eager modules
