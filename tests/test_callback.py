import math

import torch

from dcgan_xai.data.mnist import to_unit_range
from dcgan_xai.models.module import DCGAN
from dcgan_xai.runs.layout import RunDir, load_gradcam_epoch, load_probe
from dcgan_xai.runs.tables import SCORES
from dcgan_xai.xai import grad_cam
from tests.helpers import event_tags


def test_scores_csv_has_one_row_per_epoch_and_layer(smoke_run):
    run = RunDir(smoke_run["run_dir"])
    rows = SCORES.read(run)
    assert [(r["epoch"], r["layer"]) for r in rows] == [
        (1, "block1"), (1, "block3"), (2, "block1"), (2, "block3"),
    ]  # fmt: skip
    for row in rows:
        assert (row["method"], row["bn_mode"]) == ("gradcam", "batch")
        for key in SCORES.fields[4:]:
            assert 0.0 <= row[key] <= 1.0 or (key.endswith("nondeg") and math.isnan(row[key])), key


def test_probe_is_saved_and_stratified(smoke_run):
    probe = load_probe(RunDir(smoke_run["run_dir"]))
    assert probe.images.shape == (16, 1, 64, 64) and probe.noise.shape == (16, 100, 1, 1)
    counts = torch.bincount(probe.labels, minlength=10)
    assert counts.min() == 1 and counts.max() == 2


def test_epoch_file_holds_maps_scores_and_settings(smoke_run):
    run = RunDir(smoke_run["run_dir"])
    assert run.gradcam_epochs() == [1, 2]
    record = load_gradcam_epoch(run, 2)
    assert record["epoch"] == 2 and record["bn_mode"] == "batch"
    assert record["layers"] == ["block1", "block3"]
    for layer in record["layers"]:
        for kind in ("real", "fake"):
            maps = record["maps"][layer][kind]
            assert maps.shape == (16, 64, 64) and maps.dtype == torch.float16
            assert maps.min() >= 0 and maps.max() <= 1
            scores = record["scores"][layer][kind]
            assert torch.isclose(
                scores["coverage"].mean(),
                torch.tensor(record["summary"][layer][f"{kind}_coverage_mean"]),
            )
    rows = {r["layer"]: r for r in SCORES.read(run) if r["epoch"] == 2}
    assert rows["block3"]["real_focus_mean"] == record["summary"]["block3"]["real_focus_mean"]


def test_saved_maps_equal_maps_recomputed_from_the_checkpoint(smoke_run):
    run = RunDir(smoke_run["run_dir"])
    model = DCGAN.load_from_checkpoint(run.checkpoint(2), map_location="cpu", weights_only=True)
    probe = load_probe(run)
    maps = grad_cam(model.discriminator, to_unit_range(probe.images), "block3", bn_mode="batch")
    saved = load_gradcam_epoch(run, 2)["maps"]["block3"]["real"].float()
    assert (maps - saved).abs().max() < 1e-3  # float16 storage


def test_event_file_holds_gradcam_scalars_and_panels(smoke_run):
    tags = event_tags(RunDir(smoke_run["run_dir"]).tensorboard)
    for layer in ("block1", "block3"):
        assert f"gradcam/{layer}/real" in tags["images"]
        assert f"gradcam/{layer}/fake" in tags["images"]
        for name in ("real_focus_mean", "real_coverage_mean", "fake_focus_mean", "real_degenerate"):
            assert f"gradcam/{layer}/{name}" in tags["scalars"]
