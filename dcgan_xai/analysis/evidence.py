"""The study's decisions (rules v2), as pure functions over two tables: FID per (run, epoch,
generated set) and explanation scores per (run, epoch, method, BN mode, layer).

Rules (also written in each study's PLAN.md before it runs):

- **Noise.** ``s`` is the SD of log FID between generated sets of the same epoch and run, pooled
  over every epoch of every run of one recipe, the fixed-noise set included (degrees of freedom =
  sets - groups). An epoch's FID is the mean of its fresh sets; the standard error of the log
  ratio of two epochs' FIDs (of ``n_a`` and ``n_b`` sets) is ``s * sqrt(1/n_a + 1/n_b)``.
- **Gain** of A over B: ``log(FID_B / FID_A)`` (positive: A is better). Per run a **win** if the
  gain exceeds 2 standard errors, a **loss** if below -2, otherwise a **tie**.
- **Margin** ``delta = max(log 1.03, 2 SE)``: smaller gains are not worth having.
- **Verdict** per recipe and planned comparison over its runs: **confirms** if the one-sided t-test
  of "mean gain > delta" has p < 0.05 after Holm's correction over the planned comparisons
  (equivalently the lower 90% bound exceeds delta) and the one-sided sign test of wins against
  losses (ties left out) has p < 0.05; **refutes** if the one-sided t-test of "mean gain < delta"
  has p < 0.05 after Holm (the upper 90% bound is below delta); otherwise **inconclusive**.
  Never pooled across recipes.
- **Design check**, stated first: a study can decide only if a perfect rule would confirm under
  the same rules on the same data (the oracle: each run's lowest-FID epoch; for curation, a gain of
  10% with the observed spread). Where it would not, that recipe's verdicts read "the design
  cannot decide".
- A rule that scores every candidate the same makes **no choice**: it falls back to the last
  epoch (gain 0) and is counted apart.
- **Plateau** (the regime where choosing an epoch matters): in the window (the last ``window``
  share of epochs), the fitted change of log FID is within 2 of its standard errors (from ``s``,
  not from the curve) and the window's FID is below the first epoch's beyond 2 SE (it learned).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import astuple, dataclass
from typing import Any

import numpy as np
from scipy.stats import binom, rankdata, t

from dcgan_xai.analysis.selection import argmax_epoch, select_epoch

RULES = "v2"
ALPHA = 0.05
MARGIN = math.log(1.03)  # the smallest gain worth having: 3% of FID
POWER_GAIN = math.log(1 / 0.9)  # the curation design check's effect: 10% lower FID in every seed
# The curation study's comparisons (A vs B: gain of arm A over arm B); by final FID, the first two
# are planned, the rest (and all by best FID) are reported without a verdict.
CURATION_PAIRS = (("curated", "control"), ("curated", "baseline"), ("control", "baseline"))
CURATION_PLANNED = tuple(f"{a} vs {b} (final FID)" for a, b in CURATION_PAIRS[:2])
ORACLE = "oracle (each run's lowest-FID epoch)"


@dataclass(frozen=True)
class Variant:
    """One way to pick an epoch from D's explanations."""

    method: str
    layer: str
    bn_mode: str
    probe: str
    score: str
    selection: str

    @property
    def name(self) -> str:
        return "/".join(astuple(self))

    @classmethod
    def parse(cls, name: str) -> Variant:
        parts = name.split("/")
        if len(parts) != 6:
            raise ValueError(f"variant {name!r} is not method/layer/bn_mode/probe/score/selection")
        return cls(*parts)


@dataclass(frozen=True)
class Fid:
    """FID of one epoch: mean ± SD over its ``n`` fresh generated sets (and the fixed set's)."""

    mean: float
    sd: float
    n: int
    fixed: float


def fid_by_epoch(rows: Iterable[Mapping[str, Any]]) -> dict[int, Fid]:
    """Per epoch, from quality rows (``epoch``, ``draw``, ``fid``): draw 0 is the fixed set
    (NaN where the rows hold none), the mean of the others the epoch's FID (the fixed set's
    where there are none)."""
    fixed: dict[int, float] = {}
    fresh: dict[int, list[float]] = {}
    for r in rows:
        e = int(r["epoch"])
        if int(r["draw"]) == 0:
            fixed[e] = float(r["fid"])
        else:
            fresh.setdefault(e, []).append(float(r["fid"]))
    out = {}
    for e in sorted(fixed.keys() | fresh.keys()):
        values = fresh.get(e) or [fixed[e]]
        sd = statistics.stdev(values) if len(values) > 1 else math.nan
        out[e] = Fid(statistics.fmean(values), sd, len(values), fixed.get(e, math.nan))
    return out


@dataclass(frozen=True)
class Noise:
    """``s``: the SD of log FID of one generated set, pooled; ``df`` its degrees of freedom."""

    s: float
    df: int

    def se(self, n_a: int, n_b: int) -> float:
        """Standard error of the log ratio of two means of ``n_a`` and ``n_b`` sets."""
        return self.s * math.sqrt(1 / n_a + 1 / n_b)


def pooled_noise(
    rows: Iterable[Mapping[str, Any]], keys: Sequence[str] = ("experiment", "seed", "arm")
) -> Noise:
    """The pooled SD of log FID between the sets (fixed and fresh) of one run's epoch, over
    every (run, epoch) in ``rows`` (quality rows; a run is named by ``keys``)."""
    groups: dict[tuple[Any, ...], list[float]] = {}
    for r in rows:
        key = (*(r.get(k) for k in keys), int(r["epoch"]))
        groups.setdefault(key, []).append(math.log(float(r["fid"])))
    ss, df = 0.0, 0
    for logs in groups.values():
        mean = statistics.fmean(logs)
        ss += sum((x - mean) ** 2 for x in logs)
        df += len(logs) - 1
    return Noise(math.sqrt(ss / df) if df else math.nan, df)


def outcome(gain: float, se: float) -> str:
    """``win`` beyond 2 standard errors, ``loss`` below -2, else ``tie``."""
    if math.isnan(se):
        return "tie"
    return "win" if gain > 2 * se else "loss" if gain < -2 * se else "tie"


def compare(fid: Mapping[int, Fid], a: int, b: int, noise: Noise) -> dict[str, Any]:
    """Gain of epoch ``a`` over ``b``, ``log(FID_b / FID_a)``, its standard error and the
    outcome for ``a``."""
    if a == b:
        return {"gain": 0.0, "se": 0.0, "outcome": "same"}
    gain = math.log(fid[b].mean / fid[a].mean)
    se = noise.se(fid[a].n, fid[b].n)
    return {"gain": gain, "se": se, "outcome": outcome(gain, se)}


def margin(se: float) -> float:
    """The practical margin for gains whose per-run standard error is ``se``."""
    return MARGIN if math.isnan(se) else max(MARGIN, 2 * se)


def to_maximise(score: str, value: float) -> float:
    """A mean score as one whose highest value is best: focus as it is, coverage negated (less
    of the image is better, everywhere in the project: ``analyze``, the study, curation)."""
    return -value if score == "coverage" else value


def score_series(rows: Iterable[Mapping[str, Any]], variant: Variant) -> dict[int, float]:
    """A per-epoch score to maximise, from score rows (``gradcam/scores.csv`` columns).

    ``focus``: mean focus. ``coverage``: minus mean coverage (less of the image is better,
    everywhere in the project). ``*_delta``: minus the absolute change from the previous epoch
    (D's attention stopped moving); the first epoch has none (NaN).
    """
    base = variant.score.removesuffix("_delta")
    raw = {
        int(r["epoch"]): float(r[f"{variant.probe}_{base}_mean"])
        for r in rows
        if (r["method"], r["bn_mode"], r["layer"])
        == (variant.method, variant.bn_mode, variant.layer)
    }
    epochs = sorted(raw)
    if variant.score in ("focus", "coverage"):
        return {e: to_maximise(variant.score, v) for e, v in raw.items()}
    prev = [None, *epochs[:-1]]
    return {
        e: (-abs(raw[e] - raw[p]) if p is not None else math.nan)
        for p, e in zip(prev, epochs, strict=True)
    }


def choose(series: Mapping[int, float], selection: str, k: int) -> int | None:
    """The epoch a rule picks, or None when nothing is scored or every candidate ties."""
    values = {e: v for e, v in series.items() if not math.isnan(v)}
    if not values or (len(set(values.values())) == 1 and len(series) > 1):
        return None
    if selection == "coarse":
        sel = select_epoch(values, k)
        coarse = [values[e] for e in sel.coarse_epochs]
        if len(set(coarse)) <= 1 and len(coarse) > 1:
            return None
        return sel.fine_winner
    return argmax_epoch(values)


def window_epochs(epochs: Sequence[int], window: float) -> list[int]:
    """The last ``window`` share of ``epochs`` (at least one)."""
    epochs = sorted(epochs)
    n = max(1, round(len(epochs) * window))
    return epochs[-n:]


def plateau(fid: Mapping[int, Fid], window: float, noise: Noise) -> dict[str, Any]:
    """Is log FID flat within noise in the window, after the run learned? (module rules)"""
    win = window_epochs(list(fid), window)
    logs = [math.log(fid[e].mean) for e in win]
    se_epoch = noise.s / math.sqrt(fid[win[0]].n)
    change, se_change = 0.0, math.nan
    if len(win) > 2:
        x = np.asarray(win, dtype=float)
        span = win[-1] - win[0]
        change = float(np.polyfit(x, logs, 1)[0]) * span
        se_change = span * se_epoch / math.sqrt(float(((x - x.mean()) ** 2).sum()))
    drop = math.log(fid[min(fid)].mean) - statistics.fmean(logs)
    no_trend = abs(change) < 2 * se_change
    learned = drop > 2 * se_epoch * math.sqrt(1 + 1 / len(win))
    return {
        "window": [win[0], win[-1]],
        "change": change,
        "se_change": se_change,
        "no_trend": no_trend,
        "drop": drop,
        "learned": learned,
        "min_at_last": min(win, key=lambda e: (fid[e].mean, e)) == win[-1],
        "plateau": no_trend and learned,
    }


def baselines(
    fid: Mapping[int, Fid], d_real: Mapping[int, float], window: float
) -> dict[str, float]:
    """FID of each simple rule's pick: the last epoch, D(x) closest to 0.5, a random epoch of the
    window (expected FID), the median FID of the window, and the best epoch (the oracle)."""
    epochs = sorted(fid)
    win = window_epochs(epochs, window)
    half = min(epochs, key=lambda e: (abs(d_real[e] - 0.5), e))
    return {
        "last": fid[epochs[-1]].mean,
        "d_real_half": fid[half].mean,
        "random_window": statistics.fmean(fid[e].mean for e in win),
        "median_window": statistics.median(fid[e].mean for e in win),
        "best": min(f.mean for f in fid.values()),
    }


def run_outcomes(
    run: Mapping[str, Any],
    fid: Mapping[int, Fid],
    score_rows: Sequence[Mapping[str, Any]],
    variants: Sequence[Variant],
    k: int,
    window: float,
    noise: Noise,
) -> list[dict[str, Any]]:
    """One row per variant for one run, and one for the oracle: the chosen epoch, its FID, the
    gain over the last epoch (± SE) and its outcome, the expected gain over a random epoch of the
    window, and the regret against the oracle (all in log FID)."""
    epochs = sorted(fid)
    best = min(epochs, key=lambda e: (fid[e].mean, e))
    picks = []
    for v in variants:
        series = {e: s for e, s in score_series(score_rows, v).items() if e in fid}
        m = mechanism(fid, series, window)
        picks.append((v.name, choose(series, v.selection, k), m["rho"], m["p"]))
    picks.append((ORACLE, best, math.nan, math.nan))
    rows = []
    for name, chosen, rho, p in picks:
        pick = epochs[-1] if chosen is None else chosen
        c = compare(fid, pick, epochs[-1], noise)
        rows.append({
            **run, "variant": name, "epoch": chosen, "fid": fid[pick].mean,
            "gain": c["gain"], "se": c["se"],
            "outcome": "no choice" if chosen is None else c["outcome"],
            "gain_vs_random": statistics.fmean(
                math.log(fid[e].mean / fid[pick].mean) for e in window_epochs(epochs, window)
            ),
            "regret": math.log(fid[pick].mean / fid[best].mean),
            "mechanism_rho": rho, "mechanism_p": p,
        })  # fmt: skip
    return rows


def mechanism(
    fid: Mapping[int, Fid],
    series: Mapping[int, float],
    window: float,
    permutations: int = 10000,
    seed: int = 0,
) -> dict[str, float]:
    """Within one run's window: does the score track FID beyond their common trend?

    Both FID and the score are detrended (residuals of a straight line over epoch); ``rho`` is
    Spearman of the residuals (negative: a higher score goes with a lower FID), ``p`` the
    two-sided permutation p-value of ``rho`` (score residuals shuffled ``permutations`` times).
    NaN where the window holds fewer than 4 scored epochs or a constant series.
    """
    win = [e for e in window_epochs(sorted(fid), window) if not math.isnan(series.get(e, math.nan))]
    nan = {"rho": math.nan, "p": math.nan, "epochs": float(len(win))}
    if len(win) < 4:
        return nan

    def residuals(values: list[float]) -> np.ndarray:
        slope, intercept = np.polyfit(win, values, 1)
        return np.asarray(values) - (slope * np.asarray(win) + intercept)

    f = residuals([fid[e].mean for e in win])
    s = residuals([series[e] for e in win])
    if np.allclose(f, 0.0, atol=1e-9) or np.allclose(s, 0.0, atol=1e-9):
        return nan
    rs, rf = rankdata(s), rankdata(f)  # Spearman: Pearson of ranks
    rs, rf = rs - rs.mean(), rf - rf.mean()
    scale = np.sqrt((rs**2).sum() * (rf**2).sum())
    rho = float(rs @ rf / scale)
    shuffled = np.random.default_rng(seed).permuted(np.tile(rs, (permutations, 1)), axis=1)
    null = shuffled @ rf / scale
    p = float((np.sum(np.abs(null) >= abs(rho) - 1e-12) + 1) / (permutations + 1))
    return {"rho": rho, "p": p, "epochs": float(len(win))}


def sign_test_p(wins: int, n: int) -> float:
    """One-sided sign test: P(at least ``wins`` wins of ``n`` if a win had probability 1/2)."""
    return float(binom.sf(wins - 1, n, 0.5)) if n else 1.0


def holm(pvalues: Mapping[str, float]) -> dict[str, float]:
    """Holm-adjusted p-values (step-down, monotone)."""
    order = sorted(pvalues, key=lambda k: pvalues[k])
    m, running, out = len(order), 0.0, {}
    for i, key in enumerate(order):
        running = max(running, min(1.0, (m - i) * pvalues[key]))
        out[key] = running
    return out


def summarize(gains: Sequence[float], outcomes: Sequence[str], delta: float) -> dict[str, Any]:
    """Over runs: win/tie/loss counts, the sign test of wins against losses, the mean gain with
    its SD and 90% interval (two one-sided 95% t bounds), and the one-sided t-test p-values of
    "mean gain > delta" (``p_above``) and "mean gain < delta" (``p_below``)."""
    n = len(gains)
    wins, losses = outcomes.count("win"), outcomes.count("loss")
    mean = statistics.fmean(gains) if gains else math.nan
    sd = statistics.stdev(gains) if n > 1 else math.nan
    if n < 2:
        p_above = p_below = 1.0
        half = math.nan
    elif sd == 0:
        p_above, p_below, half = float(mean <= delta), float(mean >= delta), 0.0
    else:
        z = (mean - delta) / (sd / math.sqrt(n))
        p_above, p_below = float(t.sf(z, n - 1)), float(t.cdf(z, n - 1))
        half = float(t.ppf(1 - ALPHA, n - 1)) * sd / math.sqrt(n)
    return {
        "runs": n, "wins": wins, "ties": n - wins - losses - outcomes.count("no choice"),
        "losses": losses, "no_choice": outcomes.count("no choice"),
        "sign_p": sign_test_p(wins, wins + losses), "mean_gain": mean, "gain_sd": sd,
        "ci90_low": mean - half, "ci90_high": mean + half, "delta": delta,
        "p_above": p_above, "p_below": p_below,
    }  # fmt: skip


def rule(stats: Mapping[str, Any], p_above: float, p_below: float) -> str:
    """The verdict from summary ``stats`` and the (adjusted) one-sided p-values."""
    if p_above < ALPHA and stats["sign_p"] < ALPHA:
        return "confirms"
    return "refutes" if p_below < ALPHA else "inconclusive"


def decide(
    rows: Sequence[Mapping[str, Any]], planned: Sequence[str], delta: float
) -> list[dict[str, Any]]:
    """The verdict per comparison (rows' ``variant``) over runs of one recipe, Holm-adjusted in
    both directions over the planned ones; the rest are exploratory. Planned first, in order."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["variant"], []).append(r)
    out = {
        name: {"variant": name, "planned": name in planned,
               **summarize([r["gain"] for r in g], [r["outcome"] for r in g], delta)}
        for name, g in groups.items()
    }  # fmt: skip
    above = holm({k: out[k]["p_above"] for k in planned if k in out})
    below = holm({k: out[k]["p_below"] for k in planned if k in out})
    for name, row in out.items():
        row["holm_above"], row["holm_below"] = above.get(name, math.nan), below.get(name, math.nan)
        row["decision"] = rule(row, above[name], below[name]) if name in above else "exploratory"
    rank = {name: i for i, name in enumerate(planned)}

    def order(r: Mapping[str, Any]) -> tuple[bool, int, float, str]:
        gain = -r["mean_gain"] if not math.isnan(r["mean_gain"]) else math.inf
        return (not r["planned"], rank.get(r["variant"], 0), gain, r["variant"])

    return sorted(out.values(), key=order)


def design_check(
    gains: Sequence[float], outcomes: Sequence[str], delta: float, comparisons: int
) -> dict[str, Any]:
    """Would a perfect rule with these gains confirm, as one of ``comparisons`` planned ones
    (Holm's first step: p times their number)? ``can_decide`` says so."""
    stats = summarize(gains, outcomes, delta)
    scale = max(1, comparisons)
    decision = rule(stats, min(1.0, scale * stats["p_above"]), min(1.0, scale * stats["p_below"]))
    return {**stats, "decision": decision, "can_decide": decision == "confirms"}


def power_gains(gains: Sequence[float], se: float) -> tuple[list[float], list[str]]:
    """The curation design check's gains: a 10% lower FID in every seed (``POWER_GAIN``) with the
    observed gains' spread around it, and their outcomes."""
    mean = statistics.fmean(gains)
    shifted = [g - mean + POWER_GAIN for g in gains]
    return shifted, [outcome(g, se) for g in shifted]
