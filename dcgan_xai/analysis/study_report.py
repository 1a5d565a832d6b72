"""Rendering of the evidence study: REPORT.md and the FID-by-run figure, from evaluated tables."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure
from PIL import Image

from dcgan_xai.analysis import figures
from dcgan_xai.analysis.markdown import mean_sd, num, pm, table
from dcgan_xai.config import StudySettings

WORDS = {
    "confirms": "confirms the claim: it beat the last epoch beyond noise in nearly every run",
    "refutes": "refutes the claim: it did not beat the last epoch in most runs, and the interval "
    "of its mean gain excludes a gain larger than 2 noise SD",
    "inconclusive": "is inconclusive: neither rule's bar was met",
}


def study_report(
    study: StudySettings,
    result: Mapping[str, Any],
    meta: Mapping[str, Any],
    protocol: Mapping[str, Any],
    overview: Sequence[Mapping[str, Any]],
    curation: Sequence[Mapping[str, Any]],
) -> str:
    runs = result["runs"]
    planned = [d for d in result["decisions"] if d["planned"]]
    n = len(runs)
    plateaus = sum(r["plateau"]["plateau"] for r in runs)
    a = study.analysis
    lines = [
        f"# Study `{study.name}`: does D's explanation pick a better generator than the last epoch?",
        "",
        "## Verdict",
        "",
    ]
    for d in planned:
        lines.append(
            f"- **`{d['variant']}` {d['decision']}** ({WORDS[d['decision']]}): over {d['runs']} "
            f"runs it won {d['wins']}, tied {d['ties']}, lost {d['losses']}, made no choice "
            f"{d['no_choice']}; mean gain over the last epoch {pm(d['mean_gain'], d['gain_sd_over_runs'])} "
            f"FID (SD over runs; 90% interval {num(d['ci90_low'])} to {num(d['ci90_high'])}; "
            f"noise SD of one run's gain {num(d['noise_sd'])}; Holm-adjusted sign-test p "
            f"{num(d['holm_p'], 3)})."
        )
    reached = sorted({r["epochs"] for r in runs})
    stopped = sum("time limit" in v for v in meta.get("status", {}).values())
    lines += [
        "",
        f"{plateaus} of {n} runs were on a plateau by the planned test (the regime the paper's "
        f"rule is meant for); in the others FID was still falling (the last epoch is favoured by "
        f"construction) or flat within noise, so these verdicts say how the rules fare against "
        f"the last epoch of such runs, not on a plateau. A gain is FID(last epoch) - FID(chosen "
        f"epoch): positive means the rule's pick was better.",
    ]
    if stopped:
        lines += [
            "",
            f"{stopped} of {n} runs were stopped by the time limit before their planned "
            f"epochs; they reached {'-'.join(str(e) for e in (reached[0], reached[-1]) if e) if len(reached) > 1 else reached[0]} "
            f"epochs, and every rule was applied to the epochs reached.",
        ]
    lines += ["", "Recipes (mean ± SD over seeds of each run's FID):", ""]
    rows = []
    for exp in sorted({r["experiment"] for r in runs}):
        group = [r for r in runs if r["experiment"] == exp]
        last = [r["fid"][max(r["fid"])]["mean"] for r in group]
        best = [r["fid"][r["best_epoch"]]["mean"] for r in group]
        rows.append([exp, len(group), mean_sd(last), mean_sd(best), num(min(last)), num(max(last))])
    lines += table(
        ["experiment", "runs", "last-epoch FID", "best FID", "lowest last-epoch FID", "highest"],
        rows,
        "lrrrrr",
    )
    lines += [
        "",
        "## Setup",
        "",
        f"- Experiments {', '.join(f'`{e}`' for e in study.experiments)}, seeds {list(study.seeds)}; "
        f"training overrides: `{' '.join(study.train_overrides) or 'none'}`.",
        f"- Device: {meta.get('device', 'n/a')}; the study took {num(meta.get('wall_s'), 0)} s "
        f"of wall time{_sittings(meta)}.",
        f"- FID/KID: {protocol['samples']} generated images per set against "
        f"{protocol['reference']}; per epoch one fixed-noise set (curves) and {a.fid_draws} fresh "
        f"sets whose mean ± SD are the FIDs every decision uses. Feature space: the project's MNIST "
        f"classifier, test accuracy {num(protocol['classifier_accuracy'], 4)}, file MD5 "
        f"`{protocol['classifier_md5']}`.",
        f"- Rules (written before the run; `dcgan_xai/analysis/evidence.py`): a difference within "
        f"2 SD is a tie; win/loss per run beyond 2 SD; confirms = wins in at least 7/8 of runs, "
        f"Holm-adjusted one-sided sign test p < 0.05 and mean gain > 2 noise SD; refutes = no win "
        f"in at least half the runs and the 90% interval's upper end below 2 noise SD; window = "
        f"the last {study.window:.0%} of epochs; coarse step k = {a.k}.",
        "",
        "## 1. Runs: FID curve and plateau test",
        "",
    ]
    rows = []
    for r in runs:
        fid = r["fid"]
        last = max(fid)
        p = r["plateau"]
        status = meta.get("status", {})
        state = next(
            (v for k, v in status.items() if k.endswith(f"{r['experiment']}_seed_{r['seed']}")), ""
        )
        rows.append(
            [
                r["experiment"],
                r["seed"],
                f"{r['epochs']}{' (' + state + ')' if state and state != 'finished' else ''}",
                f"{pm(fid[r['best_epoch']]['mean'], fid[r['best_epoch']]['sd'])} ({r['best_epoch']})",
                pm(fid[last]["mean"], fid[last]["sd"]),
                f"{p['window'][0]}-{p['window'][1]}",
                num(p["rho"], 2),
                num(p["change"]),
                num(p["swing"]),
                num(p["noise"]),
                "yes" if p["min_at_last"] else "no",
                "**yes**" if p["plateau"] else "no",
            ]
        )
    lines += table(
        [
            "experiment",
            "seed",
            "epochs",
            "best FID (epoch)",
            "last FID",
            "window",
            "Spearman(FID, epoch)",
            "fitted change",
            "swing",
            "noise SD",
            "min at last",
            "plateau",
        ],
        rows,
        "lrlrrlrrrrll",
    )
    lines += ["", "## 2. Baselines: FID of each simple rule's pick", ""]
    rows = [
        [r["experiment"], r["seed"]]
        + [
            num(r["baselines"][k])
            for k in ("best", "last", "d_real_half", "random_window", "median_window")
        ]
        for r in runs
    ]
    lines += table(
        [
            "experiment",
            "seed",
            "best (oracle)",
            "last epoch",
            "D(x) closest to 0.5",
            "random epoch of the window (expected)",
            "median of the window",
        ],
        rows,
        "lrrrrrr",
    )
    lines += ["", "## 3. The planned variants, run by run", ""]
    rows = []
    for o in result["outcomes"]:
        if o["variant"] in study.planned:
            rows.append(
                [
                    f"`{o['variant']}`",
                    o["experiment"],
                    o["seed"],
                    o["epoch"] or "none",
                    pm(o["fid"], o["fid_sd"]),
                    pm(o["gain"], o["gain_sd"]),
                    o["outcome"],
                    num(o["gain_vs_median"]),
                    f"{num(o.get('mechanism_rho'), 2)} (p {num(o.get('mechanism_p'), 3)})",
                ]
            )
    lines += table(
        [
            "variant",
            "experiment",
            "seed",
            "chosen epoch",
            "its FID",
            "gain over last",
            "outcome",
            "gain over the window's median",
            "score vs FID in the window, detrended: Spearman (permutation p)",
        ],
        rows,
        "llrrrrlrr",
    )
    lines += ["", "Per experiment (the same rules within each recipe):", ""]
    rows = []
    for exp, decisions in result["by_experiment"].items():
        for d in decisions:
            rows.append(
                [
                    exp,
                    f"`{d['variant']}`",
                    d["runs"],
                    f"{d['wins']}/{d['ties']}/{d['losses']}/{d['no_choice']}",
                    pm(d["mean_gain"], d["gain_sd_over_runs"]),
                    d["decision"],
                ]
            )
    lines += table(
        ["experiment", "variant", "runs", "win/tie/loss/no choice", "mean gain ± SD", "decision"],
        rows,
        "llrrrl",
    )
    explo = [d for d in result["decisions"] if not d["planned"]]
    lines += [
        "",
        f"## 4. Exploratory variants ({len(explo)}; no verdict, best mean gain first, top 15)",
        "",
        "Chosen after looking at many: a good row here is a hypothesis for the next plan, "
        "not a result.",
        "",
    ]
    rows = [
        [
            f"`{d['variant']}`",
            d["runs"],
            f"{d['wins']}/{d['ties']}/{d['losses']}/{d['no_choice']}",
            pm(d["mean_gain"], d["gain_sd_over_runs"]),
        ]
        for d in explo[:15]
    ]
    lines += table(["variant", "runs", "win/tie/loss/no choice", "mean gain ± SD"], rows, "lrrr")
    lines += [
        "",
        "## 5. The explanations themselves (real probe, mean over runs and epochs)",
        "",
        "Focus of a uniform map is its chance level; degenerate maps are all zero and "
        "score focus 0.",
        "",
    ]
    rows = [
        [
            o["method"],
            o["bn_mode"],
            o["layer"],
            f"{float(o['degenerate']):.0%}",
            num(o["focus"], 3),
            num(o["focus_nondeg"], 3),
            num(o["focus_chance"], 3),
            num(o["coverage"], 3),
        ]
        for o in overview
    ]
    lines += table(
        [
            "method",
            "BN",
            "layer",
            "degenerate",
            "focus",
            "focus (non-degenerate)",
            "chance",
            "coverage",
        ],
        rows,
        "lllrrrrr",
    )
    if curation:
        lines += [
            "",
            "## 6. Curation: curated against a random-removal control (one retrain per arm "
            "and seed: n = 1 each)",
            "",
            "Only a difference beyond 2 SD with the same sign in every seed counts.",
            "",
        ]
        rows = [
            [
                c["experiment"],
                c["seed"],
                c["rule"],
                num(c["threshold"], 3),
                c["flagged"],
                pm(c["base_final_fid"], c["base_final_sd"]),
                pm(c["curated_final_fid"], c["curated_final_sd"]),
                pm(c["control_final_fid"], c["control_final_sd"]),
                _curation_outcome(c),
            ]
            for c in curation
        ]
        lines += table(
            [
                "experiment",
                "seed",
                "rule",
                "threshold",
                "flagged",
                "final FID base",
                "curated",
                "control",
                "curated vs control",
            ],
            rows,
            "lrlrrrrrl",
        )
    lines += [
        "",
        "## Files",
        "",
        "`quality.csv` (FID/KID per run, epoch and generated set), `scores.csv` (explanation "
        "scores per run, epoch, method, BN mode and layer), `outcomes.csv` (every variant in "
        "every run), `decisions.csv`, `study.json` (device, wall time, settings), "
        "`fid_by_run.png`. Rebuild this report from them with "
        f"`python -m dcgan_xai.study +study={study.name} report_only=true`.",
        "",
    ]
    return "\n".join(lines)


def _curation_outcome(c: Mapping[str, Any]) -> str:
    try:
        a, sa = float(c["curated_final_fid"]), float(c["curated_final_sd"])
        b, sb = float(c["control_final_fid"]), float(c["control_final_sd"])
    except (TypeError, ValueError):
        return "n/a"
    if math.isnan(a) or math.isnan(b):
        return "n/a"
    sd = math.hypot(sa, sb)
    return "better" if b - a > 2 * sd else "worse" if a - b > 2 * sd else "tie"


def fid_figure(result: Mapping[str, Any], study: StudySettings) -> Image.Image:
    """FID (fresh-set mean ± SD) per run, the window shaded, the paper rule's pick marked."""
    runs = result["runs"]
    exps = sorted({r["experiment"] for r in runs})
    fig = Figure(figsize=(6 * len(exps), 4))
    axes = fig.subplots(1, len(exps), squeeze=False)
    picks = {
        (o["experiment"], o["seed"]): o["epoch"]
        for o in result["outcomes"]
        if study.planned and o["variant"] == study.planned[0]
    }
    for ax, exp in zip(axes[0], exps, strict=True):
        for r in (r for r in runs if r["experiment"] == exp):
            epochs = sorted(r["fid"])
            mean = [r["fid"][e]["mean"] for e in epochs]
            sd = [0 if math.isnan(r["fid"][e]["sd"]) else r["fid"][e]["sd"] for e in epochs]
            line = ax.errorbar(
                epochs,
                mean,
                yerr=[2 * s for s in sd],
                marker="o",
                ms=2,
                capsize=2,
                label=f"seed {r['seed']}",
            )
            pick = picks.get((exp, r["seed"]))
            if pick:
                ax.plot(
                    [pick],
                    [r["fid"][pick]["mean"]],
                    marker="*",
                    ms=14,
                    color=line[0].get_color(),
                    markeredgecolor="black",
                )
            lo, hi = r["plateau"]["window"]
            ax.axvspan(lo - 0.5, hi + 0.5, color="grey", alpha=0.04)
        ax.set_yscale("log")
        ax.set_title(
            f"{exp}: FID ± 2 SD; star = {study.planned[0] if study.planned else ''}", fontsize=8
        )
        ax.set_xlabel("epoch")
        ax.set_ylabel("FID (fresh sets)")
        ax.legend(fontsize=7)
    return figures.fig_to_image(fig)


def _sittings(meta: Mapping[str, Any]) -> str:
    """How the study ran: its sittings (a resumed study has several), or nothing if unrecorded."""
    sittings = meta.get("sittings", [])
    if not sittings:
        return ""
    parts = [f"{x['started']}, {x['wall_s']} s, {x['how']}" for x in sittings]
    return f" in {len(sittings)} sitting{'s' if len(sittings) > 1 else ''} ({'; '.join(parts)})"
