import json
import subprocess
import sys
from pathlib import Path

import pytest

from dcgan_xai.analysis.aggregate import aggregate_sweep
from dcgan_xai.config import AnalysisSettings
from dcgan_xai.files import read_csv
from dcgan_xai.runs.layout import RunDir
from dcgan_xai.runs.tables import SCORES
from tests.helpers import REPO


def fixture_overrides(root: Path, sums: dict[str, str]) -> list[str]:
    return [f"data.root={root}", "data.sources=[local]",
            "data.checksums={" + ",".join(f"{k}:{v}" for k, v in sums.items()) + "}"]  # fmt: skip


@pytest.fixture(scope="module")
def sweep(mnist_fixture, tmp_path_factory):
    root, sums = mnist_fixture
    sweep_dir = tmp_path_factory.mktemp("sweep")
    proc = subprocess.run(
        [sys.executable, "-m", "dcgan_xai.train", "-m", "experiment=smoke", "seed=0,1",
         *fixture_overrides(root, sums), f"hydra.sweep.dir={sweep_dir}"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep_dir


@pytest.mark.slow
def test_local_multirun_creates_one_run_per_job(sweep):
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1"]
    for job in jobs:
        run = RunDir(job)
        assert run.checkpoint_epochs() == [1, 2] and run.gradcam_epochs() == [1, 2]
        assert len(SCORES.read(run)) == 2
    configs = [(j / "config.yaml").read_text() for j in jobs]
    assert "seed: 0" in configs[0] and "seed: 1" in configs[1]


@pytest.mark.slow
def test_aggregate_matches_each_jobs_files(sweep):
    settings = AnalysisSettings(
        fid_samples=100, classifier_epochs=10, min_accuracy=0.9, k=2, device="cpu"
    )
    result = aggregate_sweep(sweep, settings)
    rows = read_csv(sweep / "aggregate" / "epochs.csv")
    assert [(r["job"], r["epoch"]) for r in rows] == [
        ("0", "1"),
        ("0", "2"),
        ("1", "1"),
        ("1", "2"),
    ]
    for row in rows:
        run = RunDir(sweep / row["job"])
        scores = {s["epoch"]: s for s in SCORES.read(run)}
        assert float(row["focus"]) == pytest.approx(scores[int(row["epoch"])]["real_focus_mean"])
        selection = json.loads((run.analysis / "selection.json").read_text())
        own = {e["epoch"]: e for e in selection["epochs"]}
        assert float(row["fid"]) == pytest.approx(own[int(row["epoch"])]["fid"])
        assert (row["selected"] == "True") == (int(row["epoch"]) == selection["selected_epoch"])
    jobs = read_csv(sweep / "aggregate" / "jobs.csv")
    assert [j["seed"] for j in jobs] == ["0", "1"] and len(result["jobs"]) == 2
    summary = (sweep / "aggregate" / "summary.md").read_text()
    assert "Mean ± SD over jobs" in summary and (sweep / "aggregate" / "curves.png").is_file()
    outcomes = [j["vs_last"] for j in jobs]  # the tie rule on fresh sets, as analyze decides it
    assert set(outcomes) <= {"win", "tie", "loss", "same"} and len(outcomes) == 2
    assert "by the tie rule on fresh sets (2 of 2 jobs measured)" in summary


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_writes_artifacts_once(mnist_fixture, tmp_path):
    root, sums = mnist_fixture
    run_dir = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "dcgan_xai.train", "experiment=smoke", *fixture_overrides(root, sums),
         "trainer.devices=2", "trainer.strategy=ddp", f"hydra.run.dir={run_dir}"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distributed_backend=gloo" in proc.stderr + proc.stdout
    run = RunDir(run_dir)
    assert run.checkpoint_epochs() == [1, 2]
    assert [(r["epoch"], r["layer"]) for r in SCORES.read(run)] == [(1, "block3"), (2, "block3")]
    assert run.probe.is_file() and run.gradcam_epochs() == [1, 2]
    import torch

    ckpt = torch.load(run.checkpoint(2), map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1
    # 256 images over 2 processes at batch 32: 4 steps per epoch per process (alone: 8)
    assert ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"] == 8
    assert len(list(run.tensorboard.glob("events.out.tfevents.*"))) == 1
