"""A real Slurm: a one-node cluster on this machine (scripts/slurm_local.sh), a 2-job sweep
through hydra-submitit-launcher, and both jobs' artifacts checked."""

import os
import shutil
import subprocess
import sys

import pytest

from dcgan_xai.runs.layout import RunDir
from dcgan_xai.runs.tables import SCORES
from tests.helpers import REPO
from tests.test_study import check_two_seed_study, two_seed_study
from tests.test_sweeps import fixture_overrides

SCRIPT = REPO / "scripts" / "slurm_local.sh"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if shutil.which("slurmctld") is None or shutil.which("munged") is None:
        pytest.skip("slurm-wlm and munge are not installed (scripts/slurm_local.sh install)")
    try:
        import hydra_plugins.hydra_submitit_launcher  # noqa: F401
    except ImportError:
        pytest.skip("hydra-submitit-launcher is not installed (pip install -e '.[slurm]')")
    if os.geteuid() != 0:
        pytest.skip("the local Slurm cluster needs root")
    state = tmp_path_factory.mktemp("slurm")
    env = dict(os.environ, SLURM_LOCAL_DIR=str(state))
    started = subprocess.run(
        [str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=120
    )
    assert started.returncode == 0, started.stdout + started.stderr
    env["SLURM_CONF"] = str(state / "slurm.conf")
    yield env
    subprocess.run([str(SCRIPT), "stop"], env=env, timeout=60, check=False)
    for name in ("slurmctld", "slurmd", "munged"):
        assert not (state / f"{name}.pid").exists()


def test_two_job_sweep_through_the_submitit_launcher(slurm, mnist_fixture, tmp_path):
    root, sums = mnist_fixture
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "dcgan_xai.train", "-m", "hydra/launcher=slurm_cpu",
         "experiment=smoke", "seed=0,1", "resume=true", *fixture_overrides(root, sums),
         f"hydra.sweep.dir={sweep}"],
        cwd=REPO, env=slurm, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list((sweep / ".submitit").iterdir())  # the jobs went through Slurm
    for job in ("0", "1"):
        run = RunDir(sweep / job)
        assert run.checkpoint_epochs() == [1, 2], job
        assert [r["epoch"] for r in SCORES.read(run)] == [1, 2]
        assert f"seed: {job}" in (run.root / "config.yaml").read_text()


def test_study_multirun_through_slurm(slurm, mnist_fixture, tmp_path):
    """The study's jobs as a Slurm array; the report after both have returned."""
    proc = subprocess.run(
        [sys.executable, "-m", "dcgan_xai.study", "-m", "hydra/launcher=slurm_cpu",
         *two_seed_study(mnist_fixture, tmp_path)],
        cwd=REPO, env=slurm, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "sweep"
    assert list((out / ".submitit").iterdir())  # the jobs went through Slurm
    logs = "".join(p.read_text() for p in (out / ".submitit").rglob("*_log.*"))
    check_two_seed_study(out, logs + proc.stdout + proc.stderr, "SlurmLauncher")
