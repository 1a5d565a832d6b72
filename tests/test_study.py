import math

import pytest

from dcgan_xai.analysis.study import baselines, score_series, summarize_variants
from dcgan_xai.config import AnalysisSettings, StudySettings
from dcgan_xai.errors import UserError
from dcgan_xai.runs import read_csv


def _records(values):
    return {e: {"summary": {"block3": {"real_focus_mean": f, "real_coverage_mean": c}}}
            for e, (f, c) in values.items()}  # fmt: skip


def test_score_series_directions():
    rec = _records({1: (0.1, 0.9), 2: (0.5, 0.2), 3: (0.45, 0.3)})
    assert score_series(rec, "block3", "real", "focus") == {1: 0.1, 2: 0.5, 3: 0.45}
    assert score_series(rec, "block3", "real", "coverage") == {1: -0.9, 2: -0.2, 3: -0.3}
    delta = score_series(rec, "block3", "real", "focus_delta")
    assert (
        math.isnan(delta[1])
        and delta[2] == pytest.approx(-0.4)
        and delta[3] == pytest.approx(-0.05)
    )


def test_baselines_by_hand():
    fid = {1: 50.0, 2: 20.0, 3: 40.0}
    b = baselines(fid, {1: 0.9, 2: 0.2, 3: 0.55})
    assert b == {"last": 20.0, "d_real_half": 20.0, "random": pytest.approx(50 / 3)}


def test_a_variant_holds_only_with_four_of_five_wins():
    rows = [{"layer": "b", "bn_mode": "batch", "probe": "real", "score": "focus", "selection": "coarse",
             "beats_last": s < 4, "within_tolerance": True, "regret": float(s), "degenerate": 0.0}
            for s in range(5)]  # fmt: skip
    (v,) = summarize_variants(rows, 5)
    assert v["wins"] == 4 and v["holds"] and v["mean_regret"] == 2.0
    rows[0]["within_tolerance"] = False
    assert not summarize_variants(rows, 5)[0]["holds"]


def test_bad_study_settings():
    with pytest.raises(UserError, match="scores='sharpness' is not allowed"):
        StudySettings(scores=["sharpness"]).check()


@pytest.mark.slow
def test_cpu_sized_study_writes_its_report(mnist_fixture, tmp_path):
    from dcgan_xai.analysis.study import run_study

    root, sums = mnist_fixture
    overrides = [f"data.root={root}", "data.sources=[local]", "trainer.max_epochs=3",
                 "data.checksums={" + ",".join(f"{k}:{v}" for k, v in sums.items()) + "}"]  # fmt: skip
    study = StudySettings(
        name="cpu", out_dir=str(tmp_path), experiment="smoke", seeds=[0, 1], train_overrides=overrides,
        curation_thresholds=[0.7], curation_share=0.2,
        analysis=AnalysisSettings(fid_samples=100, classifier_epochs=10, min_accuracy=0.9, k=2,
                                  device="cpu", figure_epochs=[1, 3]),
    )  # fmt: skip
    result = run_study(study, log=lambda _: None)
    out = tmp_path / "cpu"
    report = (out / "REPORT.md").read_text()
    for heading in (
        "## Verdict",
        "## 1. Training stability",
        "## 2. Selection",
        "## 3. Curation",
        "## 4. Figures",
    ):
        assert heading in report
    assert len(result["variants"]) == 3 * 2 * 2 * 4 * 2
    assert len(read_csv(out / "regrets.csv")) == 2 * len(result["variants"])
    for seed in (0, 1):
        assert f"{tmp_path}/cpu/runs/seed_{seed}" in report
        assert (out / "runs" / f"seed_{seed}" / "analysis" / "figure1_block3.png").is_file()
    share = [c for c in result["curation"] if c["rule"] == "share0.2"]
    assert len(share) == 2 and all(
        c["flagged"] > 0 and c["curated_best_fid"] is not None for c in share
    )
    for c in share:
        assert c["run_dir"] in report
    assert (out / "fid_by_seed.png").is_file()
