"""Several seeds in one process (``seeds=[...]``): each seed's run dir is the run that seed trains
alone, bitwise, and it is owned, stopped and resumed as any run."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from dcgan_xai.analysis.aggregate import aggregate_sweep
from dcgan_xai.config import AnalysisSettings
from dcgan_xai.errors import Diverged, Interrupted, UserError
from dcgan_xai.models.module import DCGAN
from dcgan_xai.runs.layout import RunDir
from dcgan_xai.runs.load import load_module
from dcgan_xai.seeds import seed_dir, train_seeds
from dcgan_xai.training import train
from tests.conftest import write_fixture
from tests.helpers import REPO, data_overrides, kill_when, same_weights

QUALITY = ["callbacks.quality.enabled=true", "callbacks.quality.fid_samples=64",
           "callbacks.quality.fid_draws=1", "callbacks.quality.classifier_epochs=1",
           "callbacks.quality.min_accuracy=0"]  # fmt: skip


def same_run(a: RunDir, b: RunDir) -> bool:
    """The same checkpoints (weights), explanation and quality tables and recorded settings
    (a resumed run records ``resume: true``)."""
    files = [f for f in ("gradcam/scores.csv", "quality/scores.csv", "config.yaml")
             if (b.root / f).exists() or (a.root / f).exists()]  # fmt: skip

    def text(run: RunDir, name: str) -> str:
        return (run.root / name).read_text().replace("\nresume: true\n", "\nresume: false\n")

    return (
        a.checkpoint_epochs() == b.checkpoint_epochs()
        and all(same_weights(a.checkpoint(e), b.checkpoint(e)) for e in a.checkpoint_epochs())
        and all(text(a, f) == text(b, f) for f in files)
    )


def test_seeds_in_one_process_are_each_seed_trained_alone(smoke_cfg, tmp_path):
    train_seeds(smoke_cfg("seeds=[0,1,2]", *QUALITY), tmp_path / "seeds")
    for seed in (0, 1, 2):
        alone = RunDir(tmp_path / f"alone_{seed}")
        train(smoke_cfg(f"seed={seed}", *QUALITY), alone.root)
        run = RunDir(seed_dir(tmp_path / "seeds", seed))
        assert same_run(run, alone), seed
        assert run.probe.is_file() and list(run.tensorboard.glob("events.out.tfevents.*"))
        log = (run.root / "train.log").read_text()  # its own lines only
        assert f"seed_{seed} epoch 2/2" in log and log.count(" epoch 2/2 ") == 1
        assert load_module(run.checkpoint(2)).hparams["seed"] == seed
        DCGAN.load_from_checkpoint(run.checkpoint(2))
    # the seeds' dir is a sweep to aggregate: one job per seed
    settings = AnalysisSettings(quality=False, k=1, figure_epochs=[1, 2], device="cpu")
    jobs = aggregate_sweep(tmp_path / "seeds", settings)["jobs"]
    assert [(j["job"], j["seed"]) for j in jobs] == [("seed_0", 0), ("seed_1", 1), ("seed_2", 2)]


def test_stopped_seeds_resume_together_or_one_alone_as_a_single_run(smoke_cfg, tmp_path):
    slow = ["data.limit=null", "data.batch_size=4", "trainer.max_epochs=3"]  # 75 steps an epoch
    root = tmp_path / "seeds"

    def sigterm_after_a_checkpoint() -> None:
        first = RunDir(seed_dir(root, 0)).checkpoint(1)
        while not first.exists():
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGTERM)  # the main thread's handler stops every seed

    threading.Thread(target=sigterm_after_a_checkpoint, daemon=True).start()
    with pytest.raises(Interrupted, match=rf"hydra.run.dir={root} resume=true"):
        train_seeds(smoke_cfg("seeds=[0,1]", *slow), root)
    assert all(len(RunDir(seed_dir(root, s)).checkpoint_epochs()) < 3 for s in (0, 1))
    train(smoke_cfg("seed=1", "resume=true", *slow), seed_dir(root, 1))  # one seed, alone
    train_seeds(smoke_cfg("seeds=[0,1]", "resume=true", *slow), root)  # the other, resumed
    for seed in (0, 1):
        alone = RunDir(tmp_path / f"alone_{seed}")
        train(smoke_cfg(f"seed={seed}", *slow), alone.root)
        assert same_run(RunDir(seed_dir(root, seed)), alone), seed


def test_a_start_refused_for_one_seed_trains_none(smoke_cfg, tmp_path):
    train_seeds(smoke_cfg("seeds=[1]"), tmp_path)
    with pytest.raises(UserError, match=r"seed_1 already holds a run; pass resume=true"):
        train_seeds(smoke_cfg("seeds=[0,1]"), tmp_path)
    assert not seed_dir(tmp_path, 0).exists()


@pytest.mark.slow
def test_a_killed_multi_seed_training_resumes_as_each_seed_alone(tmp_path):
    data = tmp_path / "mnist"
    common = ["experiment=smoke", *data_overrides(data, write_fixture(data, n_train=600)),
              "data.limit=null", "data.batch_size=4", "model.ngf=32", "model.ndf=32",
              "trainer.max_epochs=3"]  # fmt: skip
    root = tmp_path / "seeds"
    cmd = [sys.executable, "-m", "dcgan_xai.train", *common, "seeds=[0,1]", f"hydra.run.dir={root}"]
    kill_when(cmd, RunDir(seed_dir(root, 1)).checkpoint(1))
    resumed = subprocess.run(cmd + ["resume=true"], cwd=REPO, capture_output=True, text=True,
                             timeout=900)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stdout.count("trained 3 epochs") == 2
    for seed in (0, 1):
        alone = tmp_path / f"alone_{seed}"
        subprocess.run([sys.executable, "-m", "dcgan_xai.train", *common, f"seed={seed}",
                        f"hydra.run.dir={alone}"], cwd=REPO, check=True, capture_output=True,
                       timeout=600)  # fmt: skip
        run = RunDir(seed_dir(root, seed))
        assert run.checkpoint_epochs() == [1, 2, 3]
        assert same_weights(run.checkpoint(3), RunDir(alone).checkpoint(3)), seed
        assert run.scores_csv.read_bytes() == RunDir(alone).scores_csv.read_bytes()


def test_a_failed_seed_is_named_and_the_others_finish(smoke_cfg, tmp_path, monkeypatch):
    import dcgan_xai.seeds

    real = dcgan_xai.seeds.train

    def train_or_diverge(cfg, run_dir, *args, **kwargs):
        if cfg.seed == 1:
            raise Diverged("loss became non-finite at epoch 1")
        return real(cfg, run_dir, *args, **kwargs)

    monkeypatch.setattr(dcgan_xai.seeds, "train", train_or_diverge)
    failed = (
        r"1 of 2 seeds failed \(seed 1: loss became non-finite at epoch 1\); the others finished"
    )
    with pytest.raises(Diverged, match=failed):
        train_seeds(smoke_cfg("seeds=[0,1]"), tmp_path)
    assert RunDir(seed_dir(tmp_path, 0)).checkpoint_epochs() == [1, 2]
