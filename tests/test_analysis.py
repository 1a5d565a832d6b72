import json
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

from dcgan_xai.analysis.figures import figure1, figure_size
from dcgan_xai.analysis.report import analyze_run, epoch_records, informative_samples, parse_samples
from dcgan_xai.analysis.selection import argmax_epoch, select_epoch
from dcgan_xai.config import AnalysisSettings
from dcgan_xai.data.mnist import MNISTDataModule, to_unit_range
from dcgan_xai.errors import UserError
from dcgan_xai.metrics.quality import QualityMeter, load_or_train_classifier
from dcgan_xai.runs.layout import RunDir, load_gradcam_epoch, load_probe
from tests.helpers import REPO

FAST = dict(fid_samples=100, classifier_epochs=10, min_accuracy=0.9, k=2, device="cpu")


def test_coarse_to_fine_on_a_hand_made_sequence():
    scores = {e: 0.1 * e for e in range(1, 26)}
    scores[15] = 5.0  # coarse winner among 5, 10, 15, 20, 25
    scores[18] = 6.0  # best in the window 11..19
    scores[20] = 4.0
    s = select_epoch(scores, k=5)
    assert s.coarse_epochs == [5, 10, 15, 20, 25]
    assert s.coarse_winner == 15
    assert s.fine_window == list(range(11, 20))  # within k-1 = 4 of 15
    assert s.fine_winner == 18


def test_fine_window_edges_are_inclusive_and_clipped():
    scores = {e: 0.0 for e in range(1, 8)}
    scores[5] = 1.0
    scores[1] = 2.0  # 4 away from the coarse winner 5: inside the window
    s = select_epoch(scores, k=5)
    assert s.coarse_epochs == [5] and s.fine_window == [1, 2, 3, 4, 5, 6, 7]
    assert s.fine_winner == 1
    s = select_epoch({e: float(e == 10) for e in range(1, 21)}, k=5)
    assert s.fine_window == list(range(6, 15))


def test_ties_go_to_the_earlier_epoch_and_nan_never_wins():
    s = select_epoch({e: 1.0 for e in range(1, 11)}, k=5)
    assert s.coarse_winner == 5 and s.fine_winner == 1
    assert argmax_epoch({1: float("nan"), 2: 0.5, 3: 0.5}) == 2


def test_without_multiples_of_k_all_epochs_are_coarse():
    s = select_epoch({1: 0.2, 2: 0.9, 3: 0.1}, k=5)
    assert s.coarse_epochs == [1, 2, 3] and s.coarse_winner == 2 and s.fine_winner == 2


def test_bad_selection_input():
    with pytest.raises(UserError, match="k=0 is not allowed"):
        select_epoch({1: 0.0}, k=0)
    with pytest.raises(UserError, match="score table is empty"):
        select_epoch({}, k=5)


def test_samples_spec():
    assert parse_samples("fixed:0,3", 16) == ("fixed", [0, 3])
    assert parse_samples("informative:4", 16) == ("informative", 4)
    with pytest.raises(
        UserError, match=r"samples='fixed:99' is not allowed; use fixed:<positions 0..15"
    ):
        parse_samples("fixed:99", 16)


def test_informative_samples_prefer_changing_maps():
    a = torch.zeros(3, 4, 4)
    b = a.clone()
    b[1] = 1.0  # sample 1 changes most
    b[2, 0, 0] = 1.0
    assert informative_samples({5: a, 10: b}, 2) == [1, 2]


def test_figure1_pixel_size():
    images = torch.zeros(3, 1, 64, 64)
    maps = {e: torch.rand(3, 64, 64) for e in (5, 10, 15, 20)}
    image = figure1(images, maps)
    assert image.size == figure_size(4, 3) == (64 + 6 * 66 + 2, 16 + 4 * 66 + 2)


@pytest.fixture(scope="session")
def analyzed(smoke_run):
    return analyze_run(smoke_run["run_dir"], AnalysisSettings(**FAST, layers=["block3", "block1"]))


def test_analysis_writes_its_files_and_a_valid_selection_json(analyzed, smoke_run):
    out = RunDir(smoke_run["run_dir"]).analysis
    for name in ("selection.json", "selection.md", "figure1_block3.png", "figure1_block1.png",
                 "curves.png", "best_generator.pt", "best_samples.png"):  # fmt: skip
        assert (out / name).is_file(), name
    data = json.loads((out / "selection.json").read_text())
    assert data == json.loads(json.dumps(analyzed))
    assert set(data) >= {"run_dir", "settings", "selection", "selected_epoch", "last_epoch",
                         "classifier_accuracy", "epochs", "verdict"}  # fmt: skip
    assert set(data["selection"]) == {
        "k",
        "coarse_epochs",
        "coarse_winner",
        "fine_window",
        "fine_winner",
    }
    assert data["selection"]["coarse_epochs"] == [2]
    assert [row["epoch"] for row in data["epochs"]] == [1, 2]
    for row in data["epochs"]:
        assert set(row) == {"epoch", "focus", "coverage", "degenerate", "d_real", "d_fake", "fid",
                            "kid", "recomputed", "logit", "logit_pooled", "logit_positional"}  # fmt: skip
        assert row["logit"] == pytest.approx(
            row["logit_pooled"] + row["logit_positional"], abs=1e-4
        )
        assert 0 <= row["focus"] <= 1 and row["fid"] >= 0 and row["recomputed"] is False
    v = data["verdict"]
    fids = {row["epoch"]: row["fid"] for row in data["epochs"]}
    assert v["best_fid"] == min(fids.values())
    assert v["regret"] == pytest.approx(fids[data["selected_epoch"]] - v["best_fid"])
    assert v["last_fid"] == fids[2]
    assert data["settings"]["fid_samples"] == 100
    assert data["fid_reference"] == "100 random test images (seed 0)"
    assert len(data["classifier_md5"]) == 32 and 0 < data["focus_chance"] < 1
    fresh = v["fresh"]
    assert list(fresh["fid"]) == ["2"]  # selected, best and last are all epoch 2
    assert fresh["fid"]["2"]["sets"] == 2 and fresh["vs_last"]["outcome"] == "same"
    with Image.open(out / "figure1_block3.png") as im:
        assert im.size == figure_size(2, 8)  # both epochs (no 5, 10, ...), 8 informative samples
    g = torch.load(out / "best_generator.pt", weights_only=True)
    assert g["epoch"] == data["selected_epoch"] and "net.0.0.weight" in g["state_dict"]
    md = (out / "selection.md").read_text()
    assert f"selected epoch: {data['selected_epoch']}" in md and v["statement"] in md


def test_analysis_goes_to_tensorboard(analyzed, smoke_run):
    from tests.helpers import event_tags

    tags = event_tags(RunDir(smoke_run["run_dir"]).tensorboard)
    assert "analysis/figure1_block3" in tags["images"] and "analysis/curves" in tags["images"]


def test_other_bn_mode_is_recomputed_from_checkpoints(smoke_run):
    run = RunDir(smoke_run["run_dir"])
    probe = load_probe(run)
    settings = AnalysisSettings(bn_mode="eval", quality=False)
    records = epoch_records(run, probe, settings, [2])
    assert records[2]["recomputed"] is True and records[2]["bn_mode"] == "eval"
    same = epoch_records(run, probe, AnalysisSettings(quality=False), [2])
    assert "recomputed" not in same[2]
    saved = load_gradcam_epoch(run, 2)["maps"]["block3"]["real"]
    assert torch.equal(same[2]["maps"]["block3"]["real"], saved)


@pytest.fixture(scope="session")
def fixture_classifier(mnist_fixture, tmp_path_factory):
    root, sums = mnist_fixture
    dm = MNISTDataModule(root, sources=["local"], checksums=sums)
    dm.setup()
    path = tmp_path_factory.mktemp("clf") / "clf.pt"
    model, acc = load_or_train_classifier(
        path, dm.train_set, dm.test_set, epochs=10, min_accuracy=0.9
    )
    return dm, model, acc, path


def test_classifier_is_cached_with_its_accuracy(fixture_classifier):
    dm, model, acc, path = fixture_classifier
    assert acc >= 0.9 and path.is_file()
    again, acc2 = load_or_train_classifier(path, dm.train_set, dm.test_set, min_accuracy=0.9)
    assert acc2 == acc
    with pytest.raises(UserError, match=r"below the required 1.01"):
        load_or_train_classifier(path, dm.train_set, dm.test_set, min_accuracy=1.01)


def test_fid_of_a_set_against_itself_is_zero_and_halves_beat_noise(fixture_classifier):
    dm, model, _, _ = fixture_classifier
    images = dm.test_set.images  # (120, 1, 64, 64) uint8
    meter = QualityMeter(model, images[:60], batch_size=32)
    itself = meter.score(to_unit_range(images[:60]))
    assert abs(itself["fid"]) < 1e-2
    halves = meter.score(to_unit_range(images[60:]))
    noise = meter.score(torch.rand(60, 1, 64, 64) * 2 - 1)
    assert halves["fid"] * 5 < noise["fid"]
    assert halves["kid"] < noise["kid"]


@pytest.mark.parametrize("command", ["analyze", "curate"])
def test_a_folder_that_is_not_a_trained_run_is_refused_in_one_line(tmp_path, command):
    for run_dir, message in (
        (tmp_path, f"{tmp_path / 'checkpoints'} holds no epoch=NNN.ckpt checkpoints"),
        (tmp_path / "typo", f"run_dir={tmp_path / 'typo'} does not exist; give a training's run dir"),
    ):  # fmt: skip
        proc = subprocess.run(
            [sys.executable, "-m", f"dcgan_xai.{command}", f"run_dir={run_dir}",
             *(["epoch=1"] if command == "curate" else [])],
            capture_output=True, text=True, cwd=tmp_path, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines()[-1] == f"error: {command}: {message}"
    assert list(tmp_path.iterdir()) == []


def test_aggregate_refuses_a_missing_sweep_or_compared_run_before_any_work(tmp_path, smoke_run):
    typo, out, base = tmp_path / "typo", tmp_path / "out", tmp_path / "base"
    shutil.copytree(smoke_run["run_dir"], base, ignore=shutil.ignore_patterns("analysis"))
    for args, message in (
        ([f"sweep_dir={typo}"], f"aggregate: sweep_dir={typo} does not exist; give a multirun's "
                                "sweep folder"),
        ([f"compare=[{base},{typo}]", f"out_dir={out}"],
         f"aggregate compare: run_dir={typo} does not exist; give a training's run dir"),
    ):  # fmt: skip
        proc = subprocess.run([sys.executable, "-m", "dcgan_xai.aggregate", *args],
                              capture_output=True, text=True, cwd=tmp_path, timeout=120)  # fmt: skip
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines()[-1] == f"error: {message}"
    assert list(tmp_path.iterdir()) == [base]  # no out_dir made
    assert not (base / "analysis").exists()  # the first run was not analysed before the refusal


def test_notebook_runs_on_a_smoke_run(smoke_run, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    for key, value in {"RUN_DIR": smoke_run["run_dir"], "FID_SAMPLES": "100", "CLASSIFIER_EPOCHS": "10",
                       "MIN_ACCURACY": "0.9", "K": "2"}.items():  # fmt: skip
        monkeypatch.setenv(f"DCGAN_XAI_{key}", value)
    nb = nbformat.read(REPO / "notebooks" / "reproduce_paper.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # committed clean
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
    ).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    saved = json.loads((RunDir(smoke_run["run_dir"]).analysis / "selection.json").read_text())
    assert saved["verdict"]["statement"] in text  # the notebook prints the analysis it wrote
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if "image/png" in o.get("data", {})]  # fmt: skip
    assert images, "the notebook's plots rendered no image"


def test_report_warns_when_every_map_is_degenerate():
    from dcgan_xai.analysis.markdown import selection_markdown

    rows = [dict(epoch=e, focus=0.0, coverage=0.0, degenerate=1.0, d_real=0.5, d_fake=0.5,
                 fid=None, kid=None, recomputed=False) for e in (1, 2)]  # fmt: skip
    result = {"run_dir": "r", "settings": {"score": "focus", "probe": "real", "layers": ["block3"],
              "bn_mode": "batch"}, "selection": select_epoch({1: 0.0, 2: 0.0}, 5).to_dict(),
              "epochs": rows}  # fmt: skip
    assert "every probe map at block3 is degenerate" in selection_markdown(result)
    rows[1]["degenerate"] = 0.5
    assert "degenerate (all zero)" not in selection_markdown(result)


def test_a_saved_analysis_is_reused_only_for_the_same_settings(smoke_run, analyzed, tmp_path):
    import shutil

    from dcgan_xai.analysis.report import load_or_analyze

    shutil.copytree(smoke_run["run_dir"], tmp_path / "run")
    same = AnalysisSettings(**analyzed["settings"])
    assert load_or_analyze(tmp_path / "run", same)["settings"] == analyzed["settings"]
    other = AnalysisSettings(layers=["block1"], quality=False, k=2)
    again = load_or_analyze(tmp_path / "run", other)
    assert again["settings"]["layers"] == ["block1"] and again["epochs"][0]["fid"] is None


def test_an_analysis_lands_whole_or_leaves_the_previous_one(smoke_run, tmp_path, monkeypatch):
    """Killed between its files, analyze leaves the previous analysis as it was: never the
    selection of one analysis beside the generator of another."""
    import shutil

    shutil.copytree(smoke_run["run_dir"], tmp_path / "run")
    run = RunDir(tmp_path / "run")
    analyze_run(run.root, AnalysisSettings(quality=False, k=2))
    before = {p.name: p.read_bytes() for p in run.analysis.iterdir()}
    calls = []

    def killed_after_two(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt

    monkeypatch.setattr("dcgan_xai.analysis.figures.save_png", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        analyze_run(run.root, AnalysisSettings(layers=["block1"], quality=False, k=1))
    assert {p.name: p.read_bytes() for p in run.analysis.iterdir()} == before
    assert sorted(p.name for p in run.root.iterdir() if p.name.startswith(".analysis")) == []


def test_coverage_is_scored_lower_is_better_by_analyze_as_by_the_study(smoke_run, tmp_path):
    import shutil

    from dcgan_xai.analysis.evidence import Variant, score_series

    run = tmp_path / "run"
    shutil.copytree(smoke_run["run_dir"], run)
    result = analyze_run(
        run, AnalysisSettings(**{**FAST, "score": "coverage", "k": 1, "quality": False})
    )
    coverage = {r["epoch"]: r["coverage"] for r in result["epochs"]}
    assert len(set(coverage.values())) > 1  # the two epochs differ, so the direction shows
    assert result["selected_epoch"] == min(coverage, key=coverage.get)
    rows = [{"epoch": e, "method": "gradcam", "bn_mode": "batch", "layer": "block3",
             "real_coverage_mean": c} for e, c in coverage.items()]  # fmt: skip
    study = score_series(rows, Variant("gradcam", "block3", "batch", "real", "coverage", "argmax"))
    assert max(study, key=study.get) == result["selected_epoch"]


def test_without_fresh_sets_the_verdict_claims_neither_win_nor_loss():
    from dcgan_xai.analysis.report import verdict

    scores = {1: 0.1, 2: 0.3, 3: 0.2}
    selection = select_epoch(scores, 5)  # no multiple of 5: every epoch is coarse; epoch 2 wins
    v = verdict(selection, {1: 300.0, 2: 100.0, 3: 200.0}, scores)
    assert v["statement"] == (
        "The Grad-CAM choice (epoch 2, FID 100.0) against the last epoch (3, FID 200.0): one "
        "generated set each, no noise measured (fid_draws=0), so neither a win nor a loss is claimed."
    )
    same = verdict(select_epoch({1: 0.1, 2: 0.3}, 5), {1: 300.0, 2: 100.0}, scores)
    assert same["statement"] == "The Grad-CAM choice is the last epoch (2) itself."


def test_analyze_reads_the_quality_rows_measured_alike_and_writes_only_analysis(
    smoke_run, tmp_path
):
    import shutil

    from dcgan_xai.files import write_csv
    from dcgan_xai.metrics.quality import measured_alike
    from dcgan_xai.runs.load import datamodule_for_run
    from dcgan_xai.runs.tables import QUALITY

    run = tmp_path / "run"
    shutil.copytree(smoke_run["run_dir"], run)
    settings = AnalysisSettings(**FAST)
    computed = analyze_run(run, settings)  # trains or loads the classifier; writes no row
    assert not (run / QUALITY.where).exists()
    alike = measured_alike(datamodule_for_run(RunDir(run)), settings)
    assert alike is not None and alike["classifier_md5"] == computed["classifier_md5"]

    def marked(**change):  # rows as a quality callback would write them, FIDs marked
        return [{"epoch": e, "draw": d, "noise_seed": 0 if d == 0 else 9, "fid": 100.0 * e + d,
                 "kid": 0.5, "kid_std": 0.1, "classifier_accuracy": 0.99, **alike, **change}
                for e in (1, 2) for d in (0, 1, 2)]  # fmt: skip

    write_csv(run / QUALITY.where, QUALITY.fields, marked())
    before = (run / QUALITY.where).read_bytes()
    result = analyze_run(run, settings)
    assert [r["fid"] for r in result["epochs"]] == [100.0, 200.0]  # read, not computed
    assert result["verdict"]["fresh"]["fid"][1]["mean"] == 101.5  # epoch 1: sets 101 and 102
    assert (run / QUALITY.where).read_bytes() == before
    for change in ({"classifier_md5": "another"}, {"reference": "another"}, {"samples": 99}):
        write_csv(run / QUALITY.where, QUALITY.fields, marked(**change))
        again = analyze_run(run, settings)  # measured otherwise: computed again
        assert [r["fid"] for r in again["epochs"]] == [r["fid"] for r in computed["epochs"]]


def test_maps_saved_with_another_normalisation_are_recomputed(smoke_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(smoke_run["run_dir"], run)
    settings = {**FAST, "quality": False}
    same = analyze_run(run, AnalysisSettings(**settings))
    other = analyze_run(run, AnalysisSettings(**settings, normalize="minmax"))
    assert not any(r["recomputed"] for r in same["epochs"])
    assert all(r["recomputed"] for r in other["epochs"])
    assert other["settings"]["normalize"] == "minmax"
