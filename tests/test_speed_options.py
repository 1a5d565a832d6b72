"""The speed options change how training runs, not what it computes."""

import pytest
import torch

from dcgan_xai.runs import RunDir
from dcgan_xai.training import train
from tests.helpers import same_weights, scalar_values, state_dict


def test_channels_last_computes_the_same_step(smoke_run, smoke_cfg, tmp_path):
    cfg = smoke_cfg("callbacks.gradcam.layers=[block1,block3]", "model.channels_last=true")
    train(cfg, tmp_path)
    ours, ref = RunDir(tmp_path).tensorboard, RunDir(smoke_run["run_dir"]).tensorboard
    for tag in ("train/d_loss", "train/g_loss"):  # the first step: same weights, same batch
        assert scalar_values(ours, tag)[0] == pytest.approx(scalar_values(ref, tag)[0], abs=1e-5)
    # later steps drift by float rounding only: Adam moves a weight at most lr (2e-4) a step
    a, b = (
        state_dict(RunDir(tmp_path).checkpoint(2)),
        state_dict(RunDir(smoke_run["run_dir"]).checkpoint(2)),
    )
    for key, value in b.items():
        if key.endswith("weight"):
            assert (a[key] - value).abs().max() <= 16 * 2 * 2e-4, key


def test_compile_failure_falls_back_to_eager(smoke_run, smoke_cfg, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    cfg = smoke_cfg("callbacks.gradcam.layers=[block1,block3]", "model.compile=true")
    with pytest.warns(
        UserWarning,
        match=r"torch.compile of Generator failed \(RuntimeError: no compiler here\); training with the eager module",
    ):
        train(cfg, tmp_path)
    assert same_weights(RunDir(tmp_path).checkpoint(2), RunDir(smoke_run["run_dir"]).checkpoint(2))


@pytest.mark.slow
def test_compiled_training_computes_the_same_step(smoke_run, smoke_cfg, tmp_path):
    cfg = smoke_cfg("callbacks.gradcam.layers=[block1,block3]", "model.compile=true")
    train(cfg, tmp_path)
    ours, ref = RunDir(tmp_path).tensorboard, RunDir(smoke_run["run_dir"]).tensorboard
    for tag in ("train/d_loss", "train/g_loss"):
        assert scalar_values(ours, tag)[0] == pytest.approx(scalar_values(ref, tag)[0], abs=1e-5)
    assert RunDir(tmp_path).gradcam_epochs() == [1, 2]  # Grad-CAM ran on the eager modules
