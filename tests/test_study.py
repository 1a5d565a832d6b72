import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from dcgan_xai.config import AnalysisSettings, StudyJob, StudySettings
from dcgan_xai.errors import UserError
from dcgan_xai.files import read_csv
from dcgan_xai.runs.layout import RunDir
from tests.helpers import REPO, data_overrides

PLANNED = ["gradcam/block3/batch/real/focus/coarse", "hirescam/block3/batch/real/focus/coarse"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scores": ["sharpness"]}, r"scores=\['sharpness'\] is not allowed; it must be a list of one or more of focus"),
        ({"methods": ["gradcam++"]}, r"methods=\['gradcam\+\+'\] is not allowed; it must be a list of one or more of gradcam, "),
        ({"train_timeout_s": 0}, "train_timeout_s=0 is not allowed; it must be > 0"),
        ({"job": StudyJob("smoke")}, "a study job needs both .*, job.experiment alone with seeds_at_once=true"),
        ({"job": StudyJob(None, 3), "seeds_at_once": True}, "a study job needs both"),
        ({"job": StudyJob("mnist64_noise", 0)}, r"job.experiment=mnist64_noise is not one of the study's experiments; allowed: mnist64"),
        ({"window": 0.0}, r"window=0.0 is not allowed; it must be in \(0, 1\]"),
        ({"experiments": []}, r"experiments=\[\] is not allowed; it must be one experiment or more"),
        ({"seeds": [0], "sitting": [3]}, r"sitting=\[3\] is not allowed; it must be some of seeds=\[0\]"),
        ({"name": "../../escaped"}, r"name=../../escaped is not allowed; it must be a plain folder name"),
        ({"planned": ["gradcam/block3/focus"]}, r"planned=\['gradcam/block3/focus'\] is not allowed; it must be variants method/layer/"),
    ],
)  # fmt: skip
def test_bad_study_settings(kwargs, message):
    with pytest.raises(UserError, match=message):
        StudySettings(**kwargs).check()


def test_a_job_past_its_time_limit_trains_nothing(tmp_path):
    from dcgan_xai.analysis.study import train_runs

    study = StudySettings(experiments=["smoke"], seeds=[0])
    run = [(0, tmp_path / "r", ())]
    status = train_runs(study, "smoke", run, deadline=time.monotonic() - 1, log=print)
    assert status == {tmp_path / "r": "stopped at the time limit after 0 epochs"}
    assert not (tmp_path / "r").exists()
    study.train = False
    status = train_runs(study, "smoke", run, log=print)
    assert status == {tmp_path / "r": "not trained (train=false): 0 epochs checkpointed"}


@pytest.mark.slow
def test_cpu_sized_study_writes_its_report_and_rebuilds_it_from_its_tables(mnist_fixture, tmp_path):
    from dcgan_xai.analysis.study import run_study

    root, sums = mnist_fixture
    data = data_overrides(root, sums)
    # seed 0's callbacks write every table; seed 1 trains without them, so its tables come
    # from its checkpoints
    study = StudySettings(
        name="cpu", out_dir=str(tmp_path), experiments=["smoke"], seeds=[0, 1],
        train_overrides=[*data, "trainer.max_epochs=3", "callbacks.quality.fid_samples=100",
                         "callbacks.quality.classifier_epochs=10", "callbacks.quality.min_accuracy=0.9",
                         "callbacks.gradcam.methods=[gradcam,hirescam]",
                         "callbacks.gradcam.layers=[block1,block2,block3]",
                         "callbacks.gradcam.bn_modes=[batch,eval]"],
        methods=["gradcam", "hirescam"], planned=PLANNED, curate=False,
        analysis=AnalysisSettings(fid_samples=100, classifier_epochs=10, min_accuracy=0.9, k=2,
                                  device="cpu"),
    )  # fmt: skip
    from dcgan_xai.analysis.study import train_runs

    runs = tmp_path / "cpu" / "runs"
    study.seeds_at_once = True  # the two trained at once, each as alone
    both = [(0, runs / "smoke_seed_0", ["callbacks.quality.enabled=true"]),
            (1, runs / "smoke_seed_1", ["callbacks=none"])]  # fmt: skip
    assert set(train_runs(study, "smoke", both, log=print).values()) == {"finished"}
    study.seeds_at_once = False
    assert (runs / "smoke_seed_0" / "quality" / "scores.csv").is_file()
    assert not (runs / "smoke_seed_1" / "quality").exists()

    said: list[str] = []
    result = run_study(study, log=said.append)  # finds both runs finished
    # seed 0's FIDs are its callback's (measured alike), read; seed 1's computed
    assert "smoke_seed_1: FID of 3 epochs from checkpoints" in said
    assert not any(line.startswith("smoke_seed_0: FID") for line in said)
    out = tmp_path / "cpu"
    report = (out / "REPORT.md").read_text()
    for heading in ("## Verdict", "### `smoke`", "Selection, design check", "## Setup",
                    "## 2. Selection", "## 3. The explanations", "real-vs-real FID floor"):  # fmt: skip
        assert heading in report
    assert "Post-hoc" not in report  # made under today's rules
    quality = read_csv(out / "quality.csv")
    assert len(quality) == 2 * 3 * 3  # runs x epochs x (fixed + 2 fresh sets)
    assert {r["reference"] for r in quality} == {"100 random test images (seed 0)"}
    scores = read_csv(out / "scores.csv")
    assert len(scores) == 2 * 3 * 2 * 2 * 3  # runs x epochs x methods x BN modes x layers
    planned = [d for d in result["recipes"]["smoke"]["decisions"] if d["planned"]]
    assert [d["variant"] for d in planned] == PLANNED
    assert all(d["decision"] in ("confirms", "refutes", "inconclusive") for d in planned)
    n_variants = 2 * 3 * 2 * 2 * 4 * 2
    assert len(read_csv(out / "outcomes.csv")) == 2 * (n_variants + 1)  # and the oracle
    floor = json.loads((out / "study.json").read_text())["fid_floor"]["smoke"]
    assert floor["fid"] >= 0 and floor["images"] == "100 random train images (seed 1)"
    assert (out / "fid_by_run.png").is_file()
    meta = json.loads((out / "study.json").read_text())
    assert meta["status"] == {"runs/smoke_seed_0": "finished", "runs/smoke_seed_1": "finished"}
    assert [x["how"] for x in meta["sittings"]] == ["one process, one run at a time"]
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip
    assert meta["sittings"][0]["commit"] == head  # the code that made the tables, stamped
    assert (
        f"one process, one run at a time, code of commit {head})" in (out / "REPORT.md").read_text()
    )
    run_study(study, log=lambda _: None)  # a second sitting: its wall time adds to the first
    sittings = json.loads((out / "study.json").read_text())["sittings"]
    assert len(sittings) == 2 and "in 2 sittings" in (out / "REPORT.md").read_text()
    report = (out / "REPORT.md").read_text()

    # the tables alone rebuild the same decisions elsewhere
    copy = tmp_path / "elsewhere" / "cpu"
    copy.mkdir(parents=True)
    for name in ("quality.csv", "scores.csv", "study.json"):
        shutil.copy(out / name, copy / name)
    study.out_dir, study.report_only = str(tmp_path / "elsewhere"), True
    run_study(study, log=lambda _: None)
    assert read_csv(copy / "decisions.csv") == read_csv(out / "decisions.csv")
    assert (copy / "REPORT.md").read_text() == report

    # two sittings on fresh machines: each finds only its own seed's run; the tables of the
    # first travel to the second in the study's folder, and the report covers both seeds
    split = tmp_path / "split" / "cpu"
    study.out_dir, study.report_only = str(tmp_path / "split"), False
    for seed in (0, 1):
        shutil.rmtree(split / "runs", ignore_errors=True)
        shutil.copytree(runs / f"smoke_seed_{seed}", split / "runs" / f"smoke_seed_{seed}")
        study.sitting = [seed]
        run_study(study, log=lambda _: None)
    key = lambda r: (r["seed"], r["arm"], int(r["epoch"]), int(r["draw"]))  # noqa: E731
    assert sorted(read_csv(split / "quality.csv"), key=key) == sorted(
        read_csv(out / "quality.csv"), key=key
    )
    assert read_csv(split / "decisions.csv") == read_csv(out / "decisions.csv")
    meta = json.loads((split / "study.json").read_text())
    assert meta["status"] == {"runs/smoke_seed_0": "finished", "runs/smoke_seed_1": "finished"}
    assert len(meta["sittings"]) == 2 and "sitting" not in meta["settings"]


@pytest.mark.slow
def test_study_curation_arm_retrains_curated_and_control(mnist_fixture, tmp_path):
    from dcgan_xai.analysis.study import run_study

    root, sums = mnist_fixture
    data = data_overrides(root, sums)
    study = StudySettings(
        name="cur", out_dir=str(tmp_path), experiments=["smoke"], seeds=[0],
        train_overrides=[*data, "callbacks=none"], curation_thresholds=[], curation_share=0.25,
        curation_method="hirescam", scores=["focus"], bn_modes=["batch"], probes=["real"],
        analysis=AnalysisSettings(fid_samples=100, fid_draws=2, classifier_epochs=10,
                                  min_accuracy=0.9, k=2, device="cpu"),
    )  # fmt: skip
    result = run_study(study, log=lambda _: None)
    (row,) = read_csv(tmp_path / "cur" / "curation.csv")
    assert row["rule"] == "share0.25" and int(row["flagged"]) == 64  # a quarter of 256 trained
    assert sum(json.loads(row["per_digit"]).values()) == 64
    runs = tmp_path / "cur" / "runs"
    for arm in ("curated", "control"):
        assert RunDir(runs / f"smoke_seed_0_share0.25_{arm}").checkpoint_epochs()
    cur = result["recipes"]["smoke"]["curation"]["share0.25"]
    assert [s["seed"] for s in cur["seeds"]] == [0]
    assert [d["variant"] for d in cur["decisions"] if d["planned"]] == [
        "curated vs control (final FID)", "curated vs baseline (final FID)"]  # fmt: skip
    assert not cur["design"]["can_decide"]  # one seed cannot decide anything
    report = (tmp_path / "cur" / "REPORT.md").read_text()
    assert (
        "## 1. Curation" in report
        and "Curation (share0.25), design check: the design cannot decide" in report
    )
    decisions = read_csv(tmp_path / "cur" / "decisions.csv")
    assert {d["question"] for d in decisions} == {"selection", "curation share0.25"}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["claim_gpu", "curation_cpu"])
def test_committed_study_reports_are_rebuilt_by_todays_code(name, tmp_path):
    """Every committed study report comes back byte for byte from its committed tables; a study
    made under older rules gets its post-hoc report, and its planned one stays as it was."""
    from dcgan_xai.analysis.study import run_study
    from dcgan_xai.config import compose_config

    committed = REPO / "studies" / name
    if not (committed / "study.json").is_file():
        pytest.skip(f"studies/{name} has no committed tables yet")
    shutil.copytree(committed, tmp_path / name, ignore=shutil.ignore_patterns("runs"))
    cfg = compose_config("study", [f"+study={name}", f"out_dir={tmp_path}", "report_only=true"])
    result = run_study(StudySettings.from_config(cfg), log=lambda _: None)
    out = Path(result["dir"])
    for file in ("REPORT.md", "decisions.csv", "outcomes.csv"):
        rel = out.relative_to(tmp_path / name) / file
        assert (out / file).read_text() == (committed / rel).read_text(), rel
    assert (tmp_path / name / "REPORT.md").read_text() == (committed / "REPORT.md").read_text()


def test_settings_of_an_earlier_version_load_without_their_removed_keys():
    recorded = {**asdict(StudySettings(name="old")), "parallel": 8}
    recorded.pop("job")
    assert StudySettings.from_dict(recorded) == StudySettings(name="old")


@pytest.mark.slow
def test_study_multirun_trains_one_job_per_seed_then_reports(mnist_fixture, tmp_path):
    """``-m``: one Hydra job per seed, here both at once as processes (the joblib launcher, as on
    the GPU; Slurm the same way), each with a line per epoch; the report is written after the
    last job has returned."""
    pytest.importorskip(
        "hydra_plugins.hydra_joblib_launcher", reason="pip install -e '.[parallel]'"
    )
    done = subprocess.run(
        [sys.executable, "-m", "dcgan_xai.study", "-m", "hydra/launcher=joblib",
         "hydra.launcher.n_jobs=2", *two_seed_study(mnist_fixture, tmp_path)],
        capture_output=True, text=True, timeout=900, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    check_two_seed_study(tmp_path / "sweep", done.stdout + done.stderr, "JoblibLauncher")


@pytest.mark.slow
def test_study_multirun_with_seeds_at_once_runs_one_job_per_experiment(mnist_fixture, tmp_path):
    """``seeds_at_once=true``: the multirun's one job per experiment trains its seeds at once in
    one process (as on a GPU), each run as the per-seed job would have trained it."""
    done = subprocess.run(
        [sys.executable, "-m", "dcgan_xai.study", "-m", "seeds_at_once=true",
         *two_seed_study(mnist_fixture, tmp_path)],
        capture_output=True, text=True, timeout=900, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert "#0 : job.experiment=smoke job.seed=null" in output and "#1 :" not in output
    check_two_seed_study(tmp_path / "sweep", output, "BasicLauncher")
    assert sorted(p.name for p in (tmp_path / "sweep" / "runs").iterdir()) == [
        "smoke_seed_0", "smoke_seed_1"]  # fmt: skip


def two_seed_study(mnist_fixture, out_dir) -> list[str]:
    """Overrides of a 2-seed smoke study named ``sweep`` under ``out_dir`` (2 epochs each)."""
    root, sums = mnist_fixture
    train = [*data_overrides(root, sums), "trainer.max_epochs=2", "callbacks=none"]
    return ["name=sweep", f"out_dir={out_dir}", "experiments=[smoke]", "seeds=[0,1]",
            "curate=false", "analysis.fid_samples=100", "analysis.classifier_epochs=10",
            "analysis.min_accuracy=0.9", "analysis.device=cpu",
            "train_overrides=[" + ",".join(f'"{o}"' for o in train) + "]"]  # fmt: skip


def check_two_seed_study(out, output: str, launcher: str) -> None:
    for seed in (0, 1):
        assert f"smoke_seed_{seed} epoch 2/2 in" in output
        assert RunDir(out / "runs" / f"smoke_seed_{seed}").checkpoint_epochs() == [1, 2]
        assert json.loads((out / "jobs" / f"smoke_seed_{seed}.json").read_text()) == {
            str(out / "runs" / f"smoke_seed_{seed}"): "finished"
        }
    assert (out / "multirun.yaml").is_file()
    meta = json.loads((out / "study.json").read_text())
    assert meta["sittings"][0]["how"] == f"Hydra multirun, {launcher}"
    assert len(read_csv(out / "quality.csv")) == 2 * 2 * 3  # runs x epochs x (fixed + 2 fresh)
    assert "report: " in output and (out / "REPORT.md").is_file()


def test_a_second_invocation_of_a_study_is_refused(tmp_path):
    from dcgan_xai.analysis.study import run_study, study_lock

    study = StudySettings(name="s", out_dir=str(tmp_path), experiments=["smoke"], seeds=[0])
    with study_lock(study):  # the first invocation, training
        with pytest.raises(UserError, match=r"study .*/s is in use by another invocation \(pid "):
            run_study(study, log=lambda _: None)
    assert not (tmp_path / "s" / "runs").exists()  # the refused one trained nothing


def test_the_commit_is_unknown_for_a_copy_inside_another_repository(tmp_path, monkeypatch):
    import dcgan_xai.analysis.study as study_module

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=u", "-c", "user.email=u@x",
                    "commit", "-q", "--allow-empty", "-m", "theirs"], check=True)  # fmt: skip
    monkeypatch.delenv("DCGAN_XAI_COMMIT", raising=False)
    inside = tmp_path / "venv" / "site-packages" / "dcgan_xai" / "analysis"
    inside.mkdir(parents=True)
    monkeypatch.setattr(study_module, "__file__", str(inside / "study.py"))
    assert study_module.code_commit() == "unknown"  # not the commit of the repository around it
    monkeypatch.setenv("DCGAN_XAI_COMMIT", "abc1234")
    assert study_module.code_commit() == "abc1234"


def test_a_study_whose_callbacks_would_explain_otherwise_is_refused(tmp_path):
    from dcgan_xai.analysis.study import run_study

    study = StudySettings(experiments=["smoke"], seeds=[0], out_dir=str(tmp_path),
                          train_overrides=["callbacks.gradcam.normalize=minmax"])  # fmt: skip
    with pytest.raises(UserError, match=r"analysis.normalize=max but the study's trainings of "
                       r"smoke explain with callbacks.gradcam.normalize=minmax"):  # fmt: skip
        run_study(study)
    study.analysis.pixel_threshold = 0.6
    study.train_overrides = []
    with pytest.raises(UserError, match=r"analysis.pixel_threshold=0.6 .* callbacks.gradcam"):
        run_study(study)
    assert not any(tmp_path.iterdir())  # refused before anything is written
    study.train_overrides, study.train = ["callbacks=none"], False
    with pytest.raises(UserError, match="no run has a checkpoint"):  # past the check
        run_study(study)  # no callback explains: nothing to mix
