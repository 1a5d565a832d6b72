import logging
import re
import subprocess
import sys

import pytest
from omegaconf.errors import ConfigAttributeError, ValidationError

from dcgan_xai.checks import validate
from dcgan_xai.config import compose_config
from dcgan_xai.errors import UserError
from dcgan_xai.files import read_csv
from dcgan_xai.runs.layout import RunDir
from dcgan_xai.training import train
from tests.helpers import REPO, event_tags, same_weights, scalar_values


def test_smoke_run_writes_checkpoints_and_panels(smoke_run):
    run = RunDir(smoke_run["run_dir"])
    assert smoke_run["epochs"] == 2
    assert run.checkpoint_epochs() == [1, 2]
    assert run.last_checkpoint.is_file()
    assert same_weights(run.last_checkpoint, run.checkpoint(2))
    tags = event_tags(run.tensorboard)
    for name in ("d_loss", "g_loss", "d_real", "d_fake"):
        assert f"train/{name}" in tags["scalars"]
        assert f"epoch/{name}" in tags["scalars"]
    assert "samples/fixed_noise" in tags["images"]
    # 256 images / batch 32 = 8 steps per epoch, logged every step
    assert len(scalar_values(run.tensorboard, "train/d_loss")) == 16
    d_real = scalar_values(run.tensorboard, "train/d_real")
    assert all(0.0 <= v <= 1.0 for v in d_real)
    assert (run.root / "config.yaml").is_file()


def test_checkpoint_is_self_describing(smoke_run):
    from dcgan_xai.models.module import DCGAN

    run = RunDir(smoke_run["run_dir"])
    model = DCGAN.load_from_checkpoint(run.checkpoint(1), map_location="cpu", weights_only=True)
    assert model.hparams.ngf == 8 and model.hparams.arch == "paper"


def test_unknown_key_is_refused_naming_it(smoke_cfg):
    with pytest.raises(UserError, match="Key 'batchsize' not in 'DataConfig'") as err:
        smoke_cfg("data.batchsize=3")
    assert isinstance(err.value.__cause__.__cause__, ConfigAttributeError)


def test_wrong_type_is_refused_naming_the_key(smoke_cfg):
    with pytest.raises(UserError, match="max_epochs.*many|many.*max_epochs") as err:
        smoke_cfg("trainer.max_epochs=many")
    assert isinstance(err.value.__cause__.__cause__, ValidationError)


def test_cli_reports_a_bad_value_in_one_line(tmp_path, mnist_fixture):
    root, _ = mnist_fixture
    proc = subprocess.run(
        [sys.executable, "-m", "dcgan_xai.train", "experiment=smoke", f"data.root={root}",
         "data.image_size=32", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: data.image_size=32 is not allowed; the DCGAN generator and discriminators "
        "are built for 64x64 images (allowed: 64)"
    )
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_existing_run_dir_is_not_overwritten(smoke_run):
    with pytest.raises(UserError, match="already holds a run; pass resume=true"):
        train(smoke_run["cfg"], smoke_run["run_dir"])


def test_same_seed_twice_gives_identical_losses_and_weights(smoke_run, smoke_cfg, tmp_path):
    cfg = smoke_cfg("callbacks.gradcam.layers=[block1,block3]")
    again = train(cfg, tmp_path)
    a, b = RunDir(smoke_run["run_dir"]), RunDir(again["run_dir"])
    assert scalar_values(a.tensorboard, "train/d_loss") == scalar_values(
        b.tensorboard, "train/d_loss"
    )
    assert scalar_values(a.tensorboard, "train/g_loss") == scalar_values(
        b.tensorboard, "train/g_loss"
    )
    assert same_weights(a.checkpoint(2), b.checkpoint(2))
    assert read_csv(a.scores_csv) == read_csv(b.scores_csv)


def test_gradcam_callback_changes_nothing_in_training(smoke_run, smoke_cfg, tmp_path):
    without = train(smoke_cfg("callbacks=none"), tmp_path)
    run = RunDir(without["run_dir"])
    assert not run.gradcam.exists()
    assert same_weights(RunDir(smoke_run["run_dir"]).checkpoint(2), run.checkpoint(2))


def test_other_seed_gives_other_weights(smoke_run, smoke_cfg, tmp_path):
    other = train(smoke_cfg("seed=1", "trainer.max_epochs=1", "callbacks=none"), tmp_path)
    assert not same_weights(
        RunDir(smoke_run["run_dir"]).checkpoint(1), RunDir(other["run_dir"]).checkpoint(1)
    )


def test_instance_noise_schedule():
    from dcgan_xai.models.module import instance_noise_std

    assert instance_noise_std(0.0, 10, 3.0) == 0.0
    assert instance_noise_std(0.3, 0, 7.5) == 0.3  # no decay: constant
    assert instance_noise_std(0.3, 10, 0.0) == 0.3
    assert instance_noise_std(0.3, 10, 5.0) == pytest.approx(0.15)
    assert instance_noise_std(0.3, 10, 10.0) == 0.0
    assert instance_noise_std(0.3, 10, 12.0) == 0.0


def test_instance_noise_is_reproducible_logged_and_changes_training(smoke_run, smoke_cfg, tmp_path):
    noisy = ("model.instance_noise=0.3", "model.instance_noise_decay_epochs=2", "callbacks=none")
    a = train(smoke_cfg(*noisy), tmp_path / "a")
    b = train(smoke_cfg(*noisy), tmp_path / "b")
    ra, rb = RunDir(a["run_dir"]), RunDir(b["run_dir"])
    assert same_weights(ra.checkpoint(2), rb.checkpoint(2))
    assert not same_weights(ra.checkpoint(2), RunDir(smoke_run["run_dir"]).checkpoint(2))
    sigma = scalar_values(ra.tensorboard, "train/instance_noise")
    assert sigma[0] == pytest.approx(0.3, abs=0.05) and sigma == sorted(sigma, reverse=True)
    assert 0.0 <= sigma[-1] < 0.3 / 2 + 0.05  # the second epoch decays towards 0
    assert (
        "train/instance_noise"
        not in event_tags(RunDir(smoke_run["run_dir"]).tensorboard)["scalars"]
    )


def test_time_limit_stops_without_a_partial_epoch_and_resume_finishes(
    smoke_run, smoke_cfg, tmp_path
):
    same = "callbacks.gradcam.layers=[block1,block3]"
    run = RunDir(tmp_path / "r")
    result = train(smoke_cfg(same), run.root, time_limit_s=0)  # stops at the first step
    assert result["stopped"] == "time limit reached at epoch 1 after 0 s"
    assert result["epochs"] == 0 and run.checkpoint_epochs() == []
    assert not (run.gradcam / "epoch_001.pt").exists()
    done = train(smoke_cfg(same, "resume=true"), run.root, time_limit_s=600)
    assert done["stopped"] is None and done["epochs"] == 2
    assert same_weights(run.checkpoint(2), RunDir(smoke_run["run_dir"]).checkpoint(2))


def test_a_line_per_epoch_without_the_progress_bar(smoke_cfg, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    train(smoke_cfg("callbacks=none", "trainer.enable_progress_bar=false"), tmp_path / "run")
    for epoch in (1, 2):
        line = rf"^run epoch {epoch}/2 in \d+\.\d s: d_fake=\d\.\d{{3}} d_loss="
        assert sum(bool(re.search(line, m)) for m in caplog.messages) == 1


def test_learning_rate_steps_like_multisteplr():
    import torch

    from dcgan_xai.models.module import learning_rate

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2, 5], gamma=0.5)
    for epoch in range(8):
        assert learning_rate(0.4, [2, 5], 0.5, epoch) == pytest.approx(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert learning_rate(0.4, [], 0.5, 7) == 0.4


def test_learning_rate_milestone_is_trained_logged_and_resumed(smoke_cfg, tmp_path):
    import torch

    steps = ("model.lr_milestones=[1]", "model.lr_gamma=0.25", "callbacks=none")
    run = RunDir(train(smoke_cfg(*steps), tmp_path / "a")["run_dir"])
    lr = float(smoke_cfg().model.lr)
    assert scalar_values(run.tensorboard, "train/lr") == pytest.approx([lr, lr / 4])
    states = torch.load(run.checkpoint(2), weights_only=False)["optimizer_states"]
    assert [s["param_groups"][0]["lr"] for s in states] == pytest.approx([lr / 4, lr / 4])
    # one epoch, then resumed for the second: the weights of the uninterrupted run
    b = tmp_path / "b"
    train(smoke_cfg(*steps, "trainer.max_epochs=1"), b)
    train(smoke_cfg(*steps, "resume=true"), b)
    assert same_weights(RunDir(b).checkpoint(2), run.checkpoint(2))


@pytest.mark.parametrize(
    "bad",
    ["model.lr_milestones=[3,2]", "model.lr_milestones=[0]", "model.lr_gamma=0"],
)
def test_learning_rate_steps_are_checked(smoke_cfg, bad):
    with pytest.raises(UserError, match=bad.split("=")[0].replace(".", r"\.") + ".*not allowed"):
        validate(smoke_cfg(bad))


def _configs(group: str) -> list[str]:
    """The ``group`` configs of the package and of the repository's ``conf/``."""
    places = (REPO / "dcgan_xai" / "conf" / group, REPO / "conf" / group)
    return sorted(p.stem for place in places for p in place.glob("*.yaml"))


@pytest.mark.parametrize("experiment", _configs("experiment"))
def test_every_experiment_composes_and_validates(experiment):
    from dcgan_xai.checks import validate

    cfg = compose_config("train", [f"experiment={experiment}"])
    validate(cfg)
    if experiment.endswith("noise"):
        assert cfg.model.instance_noise > 0
        assert cfg.model.instance_noise_decay_epochs == cfg.trainer.max_epochs


@pytest.mark.parametrize("study", _configs("study"))
def test_every_study_composes_and_validates(study):
    from dcgan_xai.config import StudySettings

    cfg = compose_config("study", [f"+study={study}"])
    settings = StudySettings.from_config(cfg)
    settings.check()
    assert settings.name == study
    for experiment in settings.experiments:
        validate(compose_config("train", [f"experiment={experiment}", *settings.train_overrides]))


def test_step_stream_is_a_pure_function_of_seed_epoch_batch_and_rank():
    import torch

    from dcgan_xai.models.module import step_generator

    def draw(*key: int) -> torch.Tensor:
        return torch.randn(4, generator=step_generator(*key[:3], torch.device("cpu"), key[3]))

    assert torch.equal(draw(0, 1, 2, 0), draw(0, 1, 2, 0))
    for other in [(1, 1, 2, 0), (0, 2, 2, 0), (0, 1, 3, 0), (0, 1, 2, 1)]:
        assert not torch.equal(draw(0, 1, 2, 0), draw(*other))  # DDP ranks draw other fakes
    big = 2**32 - 1  # the largest seed allowed; its stream used to overflow int64
    assert torch.equal(draw(big, 24, 468, 1), draw(big, 24, 468, 1))
    assert not torch.equal(draw(big, 24, 468, 1), draw(big, 24, 467, 1))


def test_every_default_is_the_schemas():
    """The constructors' defaults are the config schemas' (one default per setting), and the
    package's YAML group files restate none of them."""
    import inspect
    from dataclasses import MISSING, fields

    from omegaconf import OmegaConf

    from dcgan_xai.analysis.curation import flag_images, score_split
    from dcgan_xai.callbacks.gradcam import GradCamCallback
    from dcgan_xai.callbacks.quality import QualityCallback
    from dcgan_xai.config import GradCamConfig, ModelConfig, QualityConfig, TrainConfig
    from dcgan_xai.models.module import DCGAN
    from dcgan_xai.xai.epoch import explain_epoch
    from dcgan_xai.xai.scores import ScoreThresholds, coverage, focus

    for fn, schema in ((DCGAN.__init__, ModelConfig), (GradCamCallback.__init__, GradCamConfig),
                       (QualityCallback.__init__, QualityConfig),
                       *((f, ScoreThresholds) for f in (explain_epoch, score_split, flag_images,
                                                         coverage, focus))):  # fmt: skip
        params = inspect.signature(fn).parameters
        for f in fields(schema):
            if f.name in params and f.default is not MISSING:
                assert params[f.name].default == f.default, (fn.__qualname__, f.name)
    defaults = OmegaConf.structured(TrainConfig)
    for path in (REPO / "dcgan_xai" / "conf").glob("*/*.yaml"):
        if path.parent.name not in ("model", "trainer", "callbacks"):
            continue
        group = OmegaConf.load(path)
        node = defaults[path.parent.name]
        flat = {f"{k}.{kk}" if isinstance(v, dict) else k: vv
                for k, v in OmegaConf.to_container(group).items()
                for kk, vv in (v.items() if isinstance(v, dict) else [(None, v)])}  # fmt: skip
        same = [k for k, v in flat.items() if OmegaConf.select(node, k) == v]
        assert not same, f"{path.name} restates the schema's defaults: {same}"


def test_settings_of_earlier_versions_are_read_under_todays_names():
    from omegaconf import OmegaConf

    from dcgan_xai.runs.resume import flat_settings

    old = OmegaConf.create(
        {"callbacks": {"quality": {"samples": 500, "fresh_draws": 1, "seed": 3}}}
    )
    assert flat_settings(old) == {
        "callbacks.quality.fid_samples": 500,
        "callbacks.quality.fid_draws": 1,
        "callbacks.quality.fid_seed": 3,
    }
