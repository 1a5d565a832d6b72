import math

import numpy as np
import pytest

from dcgan_xai.analysis.evidence import (
    MARGIN,
    ORACLE,
    POWER_GAIN,
    Fid,
    Noise,
    Variant,
    baselines,
    choose,
    compare,
    decide,
    design_check,
    fid_by_epoch,
    holm,
    margin,
    plateau,
    pooled_noise,
    power_gains,
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
    assert choose({1: math.nan}, "coarse", 5) is None  # nothing scored: no choice, no error
    assert choose({}, "argmax", 5) is None


def test_pooled_noise_by_hand():
    rows = [{"seed": 0, "epoch": 1, "fid": 10.0}, {"seed": 0, "epoch": 1, "fid": 20.0},
            {"seed": 0, "epoch": 2, "fid": 5.0}, {"seed": 0, "epoch": 2, "fid": 5.0},
            {"seed": 0, "epoch": 2, "fid": 5.0}, {"seed": 1, "epoch": 1, "fid": 7.0}]  # fmt: skip
    noise = pooled_noise(rows)
    # one group of 2 sets (log 2 apart), one of 3 equal sets, one single set: df = 1 + 2
    assert noise.df == 3
    assert noise.s == pytest.approx(math.sqrt((math.log(2) ** 2 / 2) / 3))
    assert Noise(0.1, 10).se(2, 2) == pytest.approx(0.1)


def test_compare_is_a_log_ratio_judged_by_two_standard_errors():
    fid = {1: Fid(100.0, 3.0, 2, 100.0), 2: Fid(105.0, 4.0, 2, 105.0), 3: Fid(111.0, 4.0, 2, 111.0)}
    noise = Noise(0.03, 50)  # SE of a gain between two 2-set means: 0.03
    c = compare(fid, 1, 2, noise)
    assert c["gain"] == pytest.approx(math.log(1.05)) and c["se"] == pytest.approx(0.03)
    assert c["outcome"] == "tie"  # 0.049 <= 0.06
    assert compare(fid, 1, 3, noise)["outcome"] == "win"  # log 1.11 = 0.104 > 0.06
    assert compare(fid, 3, 1, noise)["outcome"] == "loss"
    assert compare(fid, 2, 2, noise)["outcome"] == "same"
    assert margin(0.001) == MARGIN and margin(0.03) == pytest.approx(0.06)


def test_sign_test_and_holm_by_hand():
    assert sign_test_p(8, 8) == pytest.approx(1 / 256)
    assert sign_test_p(7, 8) == pytest.approx(9 / 256)
    assert sign_test_p(0, 8) == 1.0
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03})
    assert adjusted == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})


def _rows(gains, se=0.01, name=PAPER.name):
    return [{"variant": name, "gain": g, "se": se,
             "outcome": "win" if g > 2 * se else "loss" if g < -2 * se else "tie"}
            for g in gains]  # fmt: skip


def test_decide_is_symmetric_with_a_margin():
    delta = 0.03
    (d,) = decide(_rows([0.10, 0.12, 0.08, 0.11, 0.09, 0.10, 0.13, 0.07]), [PAPER.name], delta)
    assert d["wins"] == 8 and d["ci90_low"] > delta and d["decision"] == "confirms"
    # every seed a small win, but the mean gain is not credibly above the 3% margin
    (d,) = decide(_rows([0.03, 0.035, 0.025, 0.03, 0.03, 0.04, 0.03, 0.03]), [PAPER.name], delta)
    assert d["wins"] == 8 and d["decision"] != "confirms"
    # big, spread-out losses are refuted (the upper bound is far below the margin)
    losses = [-0.5, -0.9, -0.2, -1.4, -0.3, -0.7, -1.1, -0.6]
    (d,) = decide(_rows(losses), [PAPER.name], delta)
    assert d["ci90_high"] < delta and d["decision"] == "refutes"
    (d,) = decide(_rows([0.3, -0.3, 0.3, -0.3, 0.3, -0.3, 0.3, 0.0]), [PAPER.name], delta)
    assert d["decision"] == "inconclusive"
    (d,) = decide(_rows([0.1] * 8), [], delta)
    assert d["decision"] == "exploratory"


def test_decide_holm_adjusts_both_directions():
    other = "hirescam/block3/batch/real/focus/coarse"
    gains = [-0.02, 0.0, 0.01, -0.01, 0.02, 0.0, -0.01, 0.01]  # credibly below the margin
    rows = _rows(gains) + _rows(gains, name=other)
    alone = decide(_rows(gains), [PAPER.name], 0.03)[0]
    both = {d["variant"]: d for d in decide(rows, [PAPER.name, other], 0.03)}
    assert both[PAPER.name]["holm_below"] == pytest.approx(min(1.0, 2 * alone["p_below"]))
    assert both[PAPER.name]["holm_above"] == pytest.approx(1.0)


def test_no_choice_falls_back_to_the_last_epoch_and_is_counted():
    rows = _rows([0.1] * 8)
    for r in rows[:2]:
        r.update(outcome="no choice", gain=0.0)
    (d,) = decide(rows, [PAPER.name], 0.03)
    assert (d["wins"], d["no_choice"], d["ties"]) == (6, 2, 0)
    assert d["mean_gain"] == pytest.approx(0.075)


def test_design_check_says_when_even_the_oracle_cannot_confirm():
    # the last epoch was the best in 5 of 8 runs (FID still falling): the oracle gains 0 there
    gains = [0.0, 0.0, 0.0, 0.0, 0.0, 0.05, 0.08, 0.02]
    outcomes = ["same"] * 5 + ["win", "win", "tie"]
    check = design_check(gains, outcomes, 0.03, comparisons=3)
    assert not check["can_decide"] and check["decision"] != "confirms"
    check = design_check([0.2, 0.15, 0.3, 0.25, 0.18, 0.22, 0.2, 0.28], ["win"] * 8, 0.03, 3)
    assert check["can_decide"]


def test_power_gains_shift_the_observed_spread_to_a_ten_percent_gain():
    gains, outcomes = power_gains([-0.1, 0.0, 0.1], se=0.02)
    assert gains == pytest.approx([POWER_GAIN - 0.1, POWER_GAIN, POWER_GAIN + 0.1])
    assert outcomes == ["tie", "win", "win"]


def _flat_run(rng, trend, noise, epochs=12, window=0.5, sets=2):
    """A run that learned (epoch 1 far above), then a window of log FID with ``trend`` in SEs of
    the fitted change, measured with set-to-set noise ``noise``."""
    win = list(range(epochs - round(epochs * window) + 1, epochs + 1))
    x = np.asarray(win, dtype=float)
    se_change = (
        (win[-1] - win[0]) * noise / math.sqrt(sets) / math.sqrt(((x - x.mean()) ** 2).sum())
    )
    slope = trend * se_change / (win[-1] - win[0])
    fid = {e: Fid(500.0, 1.0, sets, 500.0) for e in range(1, win[0])}
    for e in win:
        log = math.log(50.0) + slope * (e - win[0]) + rng.normal(0, noise / math.sqrt(sets))
        fid[e] = Fid(math.exp(log), 1.0, sets, math.exp(log))
    return fid


def test_plateau_test_pass_rates_by_simulation():
    """A flat window passes at the nominal 95%; a window whose trend is 4 standard errors of the
    fitted change passes rarely (theory: P(|Z + 4| < 2) = 2.3%)."""
    rng, noise = np.random.default_rng(0), Noise(0.02, 100)
    flat = [plateau(_flat_run(rng, 0.0, 0.02), 0.5, noise)["plateau"] for _ in range(4000)]
    assert 0.94 < np.mean(flat) < 0.965
    trend = [plateau(_flat_run(rng, 4.0, 0.02), 0.5, noise)["plateau"] for _ in range(4000)]
    assert np.mean(trend) < 0.05


def test_a_run_that_never_learned_is_not_on_a_plateau():
    never = _fid({e: 1800.0 + (e % 2) for e in range(1, 11)})  # flat, but never below epoch 1
    p = plateau(never, 0.5, Noise(0.02, 100))
    assert p["no_trend"] and not p["learned"] and not p["plateau"]
    rising = _fid({e: 1500.0 * 1.05**e for e in range(1, 11)})
    assert not plateau(rising, 0.5, Noise(0.02, 100))["plateau"]


def test_baselines_by_hand():
    fid = _fid({1: 50.0, 2: 20.0, 3: 40.0, 4: 30.0})
    b = baselines(fid, {1: 0.9, 2: 0.2, 3: 0.55, 4: 0.99}, 0.5)
    assert b == {"last": 30.0, "d_real_half": 40.0, "random_window": 35.0,
                 "median_window": 35.0, "best": 20.0}  # fmt: skip


def test_run_outcomes_give_log_gains_regret_and_the_oracle():
    fid = _fid({1: 50.0, 2: 20.0, 3: 40.0, 4: 30.0})
    rows = [{"epoch": e, "method": "gradcam", "bn_mode": "batch", "layer": "block3",
             "real_focus_mean": f} for e, f in [(1, 0.1), (2, 0.2), (3, 0.9), (4, 0.3)]]  # fmt: skip
    argmax = Variant("gradcam", "block3", "batch", "real", "focus", "argmax")
    o, oracle = run_outcomes({"seed": 0}, fid, rows, [argmax], 5, 0.5, Noise(0.1, 20))
    assert (
        o["epoch"] == 3 and o["gain"] == pytest.approx(math.log(30 / 40)) and o["outcome"] == "loss"
    )
    assert o["regret"] == pytest.approx(math.log(40 / 20))
    assert o["gain_vs_random"] == pytest.approx((math.log(40 / 40) + math.log(30 / 40)) / 2)
    assert oracle["variant"] == ORACLE and oracle["epoch"] == 2 and oracle["regret"] == 0.0


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
