"""The study's decisions, as pure functions over two tables: FID per (run, epoch, generated set)
and explanation scores per (run, epoch, method, BN mode, layer).

Rules (also written in each study's PLAN.md before it runs):

- FID of an epoch is the mean over its fresh generated sets, ± their SD. Two FIDs whose difference
  is within 2 SD of the difference (the two SDs added in quadrature) are a **tie**.
- A selection rule picks an epoch; when every candidate scores the same it makes **no choice**,
  which counts as a failure of the rule, never as the earliest epoch.
- gain = FID(last epoch) - FID(chosen epoch): positive means the rule beat the last epoch.
  Per run: **win** if gain > 2 SD, **loss** if gain < -2 SD, else tie.
- Per planned variant over n runs: **confirms** if wins >= ceil(7/8 n) and the one-sided sign test
  of wins, Holm-adjusted over the planned variants, is below 0.05, and the mean gain exceeds 2 noise
  SD (the median over runs of the SD of the gain); **refutes** if runs without a win are at least
  half and the upper end of the 90% t-interval of the mean gain is below 2 noise SD; otherwise
  **inconclusive**.
- Window: the last ``window`` share of epochs. A run is on a **plateau** when, in its window,
  |Spearman(FID, epoch)| < 0.3 or the fitted change over the window is below 2 noise SD, the swings
  (max - min) exceed 2 noise SD, and the minimum is not at the last epoch.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import binom, rankdata, spearmanr, t

from dcgan_xai.analysis.selection import argmax_epoch, select_epoch

SCORES = ("focus", "coverage", "focus_delta", "coverage_delta")
SELECTIONS = ("coarse", "argmax")


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
        return "/".join(
            (self.method, self.layer, self.bn_mode, self.probe, self.score, self.selection)
        )

    @classmethod
    def parse(cls, name: str) -> Variant:
        parts = name.split("/")
        if len(parts) != 6:
            raise ValueError(f"variant {name!r} is not method/layer/bn_mode/probe/score/selection")
        return cls(*parts)


@dataclass(frozen=True)
class Fid:
    """FID of one epoch: mean ± SD over fresh generated sets (and the fixed set's value)."""

    mean: float
    sd: float
    n: int
    fixed: float


def fid_by_epoch(rows: Iterable[Mapping[str, Any]]) -> dict[int, Fid]:
    """Per epoch, from quality rows (``epoch``, ``draw``, ``fid``): draw 0 is the fixed set."""
    fixed: dict[int, float] = {}
    fresh: dict[int, list[float]] = {}
    for r in rows:
        e = int(r["epoch"])
        if int(r["draw"]) == 0:
            fixed[e] = float(r["fid"])
        else:
            fresh.setdefault(e, []).append(float(r["fid"]))
    out = {}
    for e in sorted(fixed):
        values = fresh.get(e) or [fixed[e]]
        sd = statistics.stdev(values) if len(values) > 1 else math.nan
        out[e] = Fid(statistics.fmean(values), sd, len(fresh.get(e, [])), fixed[e])
    return out


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
    if variant.score == "focus":
        return raw
    if variant.score == "coverage":
        return {e: -v for e, v in raw.items()}
    prev = [None, *epochs[:-1]]
    return {
        e: (-abs(raw[e] - raw[p]) if p is not None else math.nan)
        for p, e in zip(prev, epochs, strict=True)
    }


def choose(series: Mapping[int, float], selection: str, k: int) -> int | None:
    """The epoch a rule picks, or None when every candidate ties (no choice)."""
    values = {e: v for e, v in series.items() if not math.isnan(v)}
    if len(set(values.values())) <= 1 and len(series) > 1:
        return None
    if selection == "coarse":
        sel = select_epoch(values, k)
        coarse = [values[e] for e in sel.coarse_epochs]
        if len(set(coarse)) <= 1 and len(coarse) > 1:
            return None
        return sel.fine_winner
    return argmax_epoch(values)


def compare(fid: Mapping[int, Fid], a: int, b: int) -> dict[str, Any]:
    """gain = FID(b) - FID(a) (positive: a is better), its SD, and win/tie/loss for ``a``."""
    gain = fid[b].mean - fid[a].mean
    sd = math.hypot(fid[a].sd, fid[b].sd) if a != b else 0.0
    if a == b or math.isnan(sd):
        outcome = "same" if a == b else "tie"
    elif gain > 2 * sd:
        outcome = "win"
    elif gain < -2 * sd:
        outcome = "loss"
    else:
        outcome = "tie"
    return {"gain": gain, "sd": sd, "outcome": outcome}


def window_epochs(epochs: Sequence[int], window: float) -> list[int]:
    """The last ``window`` share of ``epochs`` (at least one)."""
    epochs = sorted(epochs)
    n = max(1, round(len(epochs) * window))
    return epochs[-n:]


def plateau(fid: Mapping[int, Fid], window: float) -> dict[str, Any]:
    """Is FID flat but noisy in the window? (the regime where choosing an epoch matters)."""
    win = window_epochs(list(fid), window)
    values = [fid[e].mean for e in win]
    noise = statistics.median(fid[e].sd for e in win)
    rho = float(spearmanr(win, values)[0]) if len(win) > 2 else math.nan
    slope = statistics.linear_regression(win, values).slope if len(win) > 1 else 0.0
    change = slope * (win[-1] - win[0])
    swing = max(values) - min(values)
    no_trend = (not math.isnan(rho) and abs(rho) < 0.3) or abs(change) < 2 * noise
    min_at_last = min(win, key=lambda e: (fid[e].mean, e)) == win[-1]
    return {
        "window": [win[0], win[-1]],
        "rho": rho,
        "change": change,
        "swing": swing,
        "noise": noise,
        "no_trend": no_trend,
        "swings_exceed_noise": swing > 2 * noise,
        "min_at_last": min_at_last,
        "plateau": no_trend and swing > 2 * noise and not min_at_last,
    }


def baselines(
    fid: Mapping[int, Fid], d_real: Mapping[int, float], window: float
) -> dict[str, float]:
    """FID of each baseline's pick: the last epoch, D(x) closest to 0.5, a random epoch of the
    window (expected FID), the median FID of the window, and the best epoch (an oracle)."""
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
) -> list[dict[str, Any]]:
    """One row per variant for one run: the chosen epoch, its FID ± SD, gain over the last epoch
    and over the window's median, and the outcome."""
    epochs = sorted(fid)
    last = epochs[-1]
    win = window_epochs(epochs, window)
    median = statistics.median(fid[e].mean for e in win)
    rows = []
    for v in variants:
        series = {e: s for e, s in score_series(score_rows, v).items() if e in fid}
        chosen = choose(series, v.selection, k) if series else None
        row: dict[str, Any] = {
            **run,
            "variant": v.name,
            "epoch": chosen,
            "fid": math.nan,
            "fid_sd": math.nan,
            "gain": math.nan,
            "gain_sd": math.nan,
            "outcome": "no choice",
            "gain_vs_median": math.nan,
        }
        m = mechanism(fid, series, window)
        row.update(mechanism_rho=m["rho"], mechanism_p=m["p"])
        if chosen is not None:
            c = compare(fid, chosen, last)
            row.update(
                fid=fid[chosen].mean,
                fid_sd=fid[chosen].sd,
                gain=c["gain"],
                gain_sd=c["sd"],
                outcome=c["outcome"],
                gain_vs_median=median - fid[chosen].mean,
            )
        rows.append(row)
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


def decide(rows: Sequence[Mapping[str, Any]], planned: Sequence[str]) -> list[dict[str, Any]]:
    """The verdict per variant over runs (see the module's rules); planned variants first."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["variant"], []).append(r)
    p_raw = {}
    out = []
    for name, group in groups.items():
        n = len(group)
        wins = sum(r["outcome"] == "win" for r in group)
        gains = [r["gain"] for r in group if not math.isnan(r["gain"])]
        sds = [r["gain_sd"] for r in group if not math.isnan(r["gain_sd"]) and r["gain_sd"] > 0]
        noise = statistics.median(sds) if sds else math.nan
        mean = statistics.fmean(gains) if gains else math.nan
        sd = statistics.stdev(gains) if len(gains) > 1 else math.nan
        half = (
            t.ppf(0.95, len(gains) - 1) * sd / math.sqrt(len(gains)) if len(gains) > 1 else math.nan
        )
        p_raw[name] = sign_test_p(wins, n)
        out.append(
            {
                "variant": name,
                "planned": name in planned,
                "runs": n,
                "wins": wins,
                "ties": sum(r["outcome"] in ("tie", "same") for r in group),
                "losses": sum(r["outcome"] == "loss" for r in group),
                "no_choice": sum(r["outcome"] == "no choice" for r in group),
                "mean_gain": mean,
                "gain_sd_over_runs": sd,
                "ci90_low": mean - half,
                "ci90_high": mean + half,
                "noise_sd": noise,
                "sign_p": p_raw[name],
            }
        )
    adjusted = holm({k: v for k, v in p_raw.items() if k in planned})
    for row in out:
        row["holm_p"] = adjusted.get(row["variant"], math.nan)
        n, noise = row["runs"], row["noise_sd"]
        if not row["planned"]:
            row["decision"] = "exploratory"
        elif (
            row["wins"] >= math.ceil(7 / 8 * n)
            and row["holm_p"] < 0.05
            and row["mean_gain"] > 2 * noise
        ):
            row["decision"] = "confirms"
        elif n - row["wins"] >= n / 2 and row["ci90_high"] < 2 * noise:
            row["decision"] = "refutes"
        else:
            row["decision"] = "inconclusive"
    rank = {name: i for i, name in enumerate(planned)}

    def order(r: Mapping[str, Any]) -> tuple[bool, int, float, str]:
        """Planned variants in plan order, then the rest by mean gain (best first)."""
        gain = -r["mean_gain"] if not math.isnan(r["mean_gain"]) else math.inf
        return (not r["planned"], rank.get(r["variant"], 0), gain, r["variant"])

    return sorted(out, key=order)
