import math

import pytest

from dcgan_xai.analysis.evidence import (
    Fid,
    Variant,
    baselines,
    choose,
    compare,
    decide,
    fid_by_epoch,
    holm,
    plateau,
    run_outcomes,
    score_series,
    sign_test_p,
)

PAPER = Variant.parse("gradcam/block3/batch/real/focus/coarse")


def _fid(means, sd=1.0):
    return {e: Fid(m, sd, 2, m) for e, m in means.items()}


def test_fid_by_epoch_is_the_fresh_sets_mean_and_sd():
    rows = [{"epoch": 1, "draw": 0, "fid": 10.0}, {"epoch": 1, "draw": 1, "fid": 12.0},
            {"epoch": 1, "draw": 2, "fid": 16.0}]  # fmt: skip
    (f,) = fid_by_epoch(rows).values()
    assert (f.mean, f.fixed, f.n) == (14.0, 10.0, 2)
    assert f.sd == pytest.approx(math.sqrt(8.0))


def test_score_series_directions_and_delta():
    rows = [{"epoch": e, "method": "gradcam", "bn_mode": "batch", "layer": "block3",
             "real_focus_mean": f, "real_coverage_mean": c}
            for e, f, c in [(1, 0.1, 0.9), (2, 0.5, 0.2), (3, 0.45, 0.3)]]  # fmt: skip
    rows.append(
        {**rows[0], "method": "hirescam", "real_focus_mean": 9.0}
    )  # another method: ignored
    assert score_series(rows, PAPER) == {1: 0.1, 2: 0.5, 3: 0.45}
    cov = Variant("gradcam", "block3", "batch", "real", "coverage", "coarse")
    assert score_series(rows, cov) == {1: -0.9, 2: -0.2, 3: -0.3}  # less coverage is better
    delta = score_series(
        rows, Variant("gradcam", "block3", "batch", "real", "focus_delta", "argmax")
    )
    assert (
        math.isnan(delta[1])
        and delta[2] == pytest.approx(-0.4)
        and delta[3] == pytest.approx(-0.05)
    )


def test_all_tied_scores_make_no_choice():
    assert choose({1: 0.0, 2: 0.0, 3: 0.0}, "argmax", 5) is None
    # coarse epochs 5 and 10 tie at 0 although epoch 3 scores: the coarse step cannot choose
    assert choose({3: 0.4, 5: 0.0, 10: 0.0}, "coarse", 5) is None
    assert choose({3: 0.4, 5: 0.1, 10: 0.0}, "coarse", 5) == 3  # coarse 5, fine window 1..9
    assert choose({1: 0.2, 2: 0.7, 3: 0.7}, "argmax", 5) == 2  # ties among the best: earlier


def test_compare_calls_differences_within_two_sd_a_tie():
    fid = {1: Fid(100.0, 3.0, 2, 100.0), 2: Fid(110.0, 4.0, 2, 110.0), 3: Fid(111.0, 4.0, 2, 111.0)}
    assert compare(fid, 1, 2) == {"gain": 10.0, "sd": 5.0, "outcome": "tie"}  # 10 <= 2 * 5
    assert compare(fid, 1, 3)["outcome"] == "win"  # 11 > 10
    assert compare(fid, 3, 1)["outcome"] == "loss"
    assert compare(fid, 2, 2)["outcome"] == "same"


def test_sign_test_and_holm_by_hand():
    assert sign_test_p(8, 8) == pytest.approx(1 / 256)
    assert sign_test_p(7, 8) == pytest.approx(9 / 256)
    assert sign_test_p(0, 8) == 1.0
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03})
    assert adjusted == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})


def _rows(gains, sd=1.0, outcomes=None):
    outcomes = outcomes or [
        "win" if g > 2 * sd else "loss" if g < -2 * sd else "tie" for g in gains
    ]
    return [{"variant": PAPER.name, "gain": g, "gain_sd": sd, "outcome": o}
            for g, o in zip(gains, outcomes, strict=True)]  # fmt: skip


def test_decide_confirms_refutes_or_is_inconclusive():
    (d,) = decide(_rows([5.0] * 8), [PAPER.name])
    assert d["wins"] == 8 and d["holm_p"] == pytest.approx(1 / 256) and d["decision"] == "confirms"
    (d,) = decide(_rows([5.0] * 7 + [0.0]), [PAPER.name])
    assert d["decision"] == "confirms"  # 7 of 8, p = 0.035, one planned variant
    (d,) = decide(_rows([-0.5, 0.3, -0.2, 0.1, 0.0, -0.4, 0.2, -0.1]), [PAPER.name])
    assert d["wins"] == 0 and d["ci90_high"] < 2.0 and d["decision"] == "refutes"
    (d,) = decide(_rows([10.0, -10.0, 10.0, -10.0, 10.0, -10.0, 10.0, 0.0]), [PAPER.name])
    assert d["decision"] == "inconclusive"  # a wide interval: neither bar met
    (d,) = decide(_rows([5.0] * 8), [])
    assert d["decision"] == "exploratory"


def test_no_choice_counts_as_a_failure():
    rows = _rows([5.0] * 8)
    for r in rows[:2]:
        r.update(outcome="no choice", gain=math.nan, gain_sd=math.nan)
    (d,) = decide(rows, [PAPER.name])
    assert (d["wins"], d["no_choice"]) == (6, 2) and d["decision"] != "confirms"


def test_plateau_test():
    rising = _fid({e: 100.0 - 5 * e for e in range(1, 11)})
    assert not plateau(rising, 0.5)["plateau"]  # still falling: minimum at the last epoch
    flat = _fid({e: m for e, m in enumerate([90, 80, 70, 60, 50, 55, 45, 52, 47, 53], start=1)})
    p = plateau(flat, 0.5)
    assert p["window"] == [6, 10] and p["swing"] == 10 and p["plateau"]
    quiet = _fid({e: 50.0 + 0.1 * (e % 2) for e in range(1, 11)})
    assert not plateau(quiet, 0.5)["swings_exceed_noise"]


def test_baselines_by_hand():
    fid = _fid({1: 50.0, 2: 20.0, 3: 40.0, 4: 30.0})
    b = baselines(fid, {1: 0.9, 2: 0.2, 3: 0.55, 4: 0.99}, 0.5)
    assert b == {"last": 30.0, "d_real_half": 40.0, "random_window": 35.0,
                 "median_window": 35.0, "best": 20.0}  # fmt: skip


def test_run_outcomes_report_gain_over_last_and_median():
    fid = _fid({1: 50.0, 2: 20.0, 3: 40.0, 4: 30.0})
    rows = [{"epoch": e, "method": "gradcam", "bn_mode": "batch", "layer": "block3",
             "real_focus_mean": f} for e, f in [(1, 0.1), (2, 0.9), (3, 0.2), (4, 0.3)]]  # fmt: skip
    argmax = Variant("gradcam", "block3", "batch", "real", "focus", "argmax")
    (o,) = run_outcomes({"seed": 0}, fid, rows, [argmax], 5, 0.5)
    assert (o["epoch"], o["gain"], o["outcome"], o["gain_vs_median"]) == (2, 10.0, "win", 15.0)


def test_mechanism_check_detrends_and_gives_a_permutation_p_value():
    from dcgan_xai.analysis.evidence import mechanism

    epochs = range(1, 41)
    wiggle = [((e * 7) % 5) - 2.0 for e in epochs]  # no trend of its own
    fid = {e: Fid(100 - e + w, 1.0, 2, 100 - e + w) for e, w in zip(epochs, wiggle, strict=True)}
    # a score that rises over time (as FID falls) but whose wiggles are unrelated to FID's
    unrelated = {e: 0.01 * e + 0.1 * (((e * 3) % 7) - 3) for e in epochs}
    tracking = {e: 0.01 * e - 0.1 * w for e, w in zip(epochs, wiggle, strict=True)}
    m = mechanism(fid, tracking, 0.5, permutations=2000)
    assert m["rho"] < -0.9 and m["p"] < 0.01 and m["epochs"] == 20
    m = mechanism(fid, unrelated, 0.5, permutations=2000)
    assert abs(m["rho"]) < 0.5 and m["p"] > 0.05  # the shared trend alone gives no signal
    assert math.isnan(mechanism(fid, {e: 1.0 for e in epochs}, 0.5)["rho"])
