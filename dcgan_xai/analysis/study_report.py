"""Rendering of a study: REPORT.md and the FID-by-run figure, from :func:`evaluate`'s result."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure
from PIL import Image

from dcgan_xai.analysis import figures
from dcgan_xai.analysis.evidence import CURATION_PLANNED, ORACLE, POWER_GAIN, RULES
from dcgan_xai.analysis.markdown import num, pm, table

TITLES = {
    "selection": "does D's explanation pick a better generator than the last epoch?",
    "curation": "does removing the images the 70% rule flags give a better generator?",
}


def study_report(
    study: Any, result: Mapping[str, Any], meta: Mapping[str, Any], extra: Mapping[str, Any]
) -> str:
    """The report: verdicts (each recipe's design check first), setup, then the evidence."""
    lines = [f"# Study `{study.name}`: {TITLES[study.question]}", ""]
    if extra["posthoc"]:
        lines += [
            f"> **Post-hoc analysis under rules {RULES}** of tables made for a plan with rules "
            f"{meta.get('rules', 'v1')}. The planned report is `../REPORT.md`; this one was "
            "written after its results were known and confirms nothing by itself.",
            "",
        ]
    lines += [
        "## Verdict",
        "",
        *_verdicts(study, result),
        "",
        *_setup(study, meta, extra),
        *_noise_table(result, extra),
        "",
    ]
    if any(r["curation"] for r in result["recipes"].values()):
        lines += _curation(result, extra)
    lines += _selection(study, result, meta)
    lines += _overview(extra["overview"])
    lines += [
        "",
        "## Files",
        "",
        "`quality.csv` (FID/KID per run, arm, epoch and generated set), `scores.csv` (explanation "
        "scores per run, epoch, method, BN mode and layer), `curation.csv` and `pilot.json` (where "
        "the study curates), `outcomes.csv` (every variant in every run), "
        "`decisions.csv`, `study.json` (device, wall time, settings, the FID floor), `fid_by_run.png`. Rebuild "
        f"this report from them with `python -m dcgan_xai.study +study={study.name} "
        "report_only=true`.",
        "",
    ]
    return "\n".join(lines)


def _verdicts(study: Any, result: Mapping[str, Any]) -> list[str]:
    lines = []
    for exp, r in result["recipes"].items():
        lines += [f"### `{exp}`", ""]
        blocks = [_selection_verdicts(study, r)]
        blocks += [_curation_verdicts(label, c) for label, c in r["curation"].items()]
        if study.question == "curation":
            blocks.reverse()
        for block in blocks:
            lines += [*block, ""]
    return lines


def _selection_verdicts(study: Any, r: Mapping[str, Any]) -> list[str]:
    oracle = (f"The oracle (each run's lowest-FID epoch) under the same rules, as one of "
              f"{len(study.planned)} planned comparisons")  # fmt: skip
    lines = _verdict_block("Selection", oracle, r["design"], r["decisions"], "`{}`")
    if study.question != "selection":
        lines.append(
            "- Selection is not this study's question: its variants are shown without a verdict "
            "(section 2)."
        )
    return lines


def _curation_verdicts(label: str, c: Mapping[str, Any]) -> list[str]:
    power = (f"A curation that lowered every seed's final FID by 10% against the control (gain "
             f"{POWER_GAIN:.3f}) with the spread of the observed curated-vs-control gains, under "
             "the same rules")  # fmt: skip
    name = f"Curation ({label}), {{}}:"
    lines = _verdict_block(f"Curation ({label})", power, c["design"], c["decisions"], name)
    if c["left_out"]:
        lines.append(f"- Seeds left out (an arm missing or short of the baseline's epochs): "
                     f"{c['left_out']}.")  # fmt: skip
    return lines


def _verdict_block(
    title: str, check: str, d: Mapping[str, Any], decisions: Sequence[Mapping[str, Any]], name: str
) -> list[str]:
    """The design check (what a perfect rule would give under the same rules), then each
    planned comparison's verdict (``name`` formats its variant)."""
    can = d["can_decide"]
    test = (f"{_stats(d)}; it would {'confirm' if can else 'not confirm'}." if "mean_gain" in d
            else f"{d['runs']} seeds, too few to test.")  # fmt: skip
    lines = [f"- **{title}, design check: the design {'can' if can else 'cannot'} decide.** "
             f"{check}: {test}"]  # fmt: skip
    for v in decisions:
        if v["planned"]:
            lines.append(f"- **{name.format(v['variant'])} {_decision(v, can)}**: {_stats(v)}.")
    return lines


def _decision(v: Mapping[str, Any], can_decide: bool) -> str:
    return v["decision"] if can_decide else f"{v['decision']}, but the design cannot decide"


def _stats(v: Mapping[str, Any]) -> str:
    """One comparison's numbers in words (gains in log FID: 0.105 is 10% lower FID)."""
    nc = f", {v['no_choice']} no choice (counted as the last epoch)" if v.get("no_choice") else ""
    holm = (
        f"Holm p of 'gain > δ' {num(v['holm_above'], 3)}, of 'gain < δ' {num(v['holm_below'], 3)}"
        if "holm_above" in v
        else f"p of 'gain > δ' {num(v['p_above'], 3)}, of 'gain < δ' {num(v['p_below'], 3)} "
        "(before the correction)"
    )
    return (
        f"{v['runs']} runs, {v['wins']} wins / {v['ties']} ties / {v['losses']} losses{nc}; "
        f"mean gain {pm(v['mean_gain'], v['gain_sd'], 3)} (log FID ratio, SD over runs; 90% "
        f"interval {num(v['ci90_low'], 3)} to {num(v['ci90_high'], 3)}); margin δ "
        f"{num(v['delta'], 3)}; {holm}; sign test p {num(v['sign_p'], 3)}"
    )


def _setup(study: Any, meta: Mapping[str, Any], extra: Mapping[str, Any]) -> list[str]:
    a, p = study.analysis, extra["protocol"]
    failed = [k for k, v in meta.get("status", {}).items() if v.startswith("failed")]
    lines = [
        "## Setup",
        "",
        f"- Experiments {', '.join(f'`{e}`' for e in study.experiments)}, seeds "
        f"{list(study.seeds)}; training overrides: `{' '.join(study.train_overrides) or 'none'}`.",
        f"- Device: {meta.get('device', 'n/a')}; the study took {num(meta.get('wall_s'), 0)} s "
        f"of wall time{_sittings(meta)}.",
        f"- Failed runs: {len(failed)}" + (f" ({', '.join(failed)})." if failed else "."),
        *[f"- Amended after the run: {line}" for line in meta.get("amended", [])],
        f"- FID/KID: {p['samples']} generated images per set against {p['reference']}; per "
        f"epoch one fixed-noise set and {a.fid_draws} fresh sets, whose mean is the epoch's FID. "
        f"Feature space: the project's MNIST classifier, test accuracy "
        f"{num(p['classifier_accuracy'], 4)}, file MD5 `{p['classifier_md5']}`.",
        f"- Rules {RULES} (`dcgan_xai/analysis/evidence.py`): gains are log FID ratios; win/loss "
        f"per run beyond 2 standard errors; confirms = Holm-adjusted one-sided t-test of 'mean "
        f"gain > δ' p < 0.05 and sign test of wins against losses p < 0.05; refutes = "
        f"Holm-adjusted one-sided t-test of 'mean gain < δ' p < 0.05; δ = max(log 1.03, 2 SE); "
        f"window = the last {study.window:.0%} of epochs; coarse step k = {a.k}.",
        "",
        "Per recipe: noise and scale.",
        "",
    ]
    return lines


def _noise_table(result: Mapping[str, Any], extra: Mapping[str, Any]) -> list[str]:
    rows = []
    for exp, r in result["recipes"].items():
        floor = extra["floor"].get(exp) or {}
        md5 = floor.get("classifier_md5", extra["protocol"]["classifier_md5"])
        other = (
            f"; classifier file MD5 `{md5}`, not the tables'"
            if md5 != extra["protocol"]["classifier_md5"]
            else ""
        )
        rows.append([
            f"`{exp}`", num(r["noise"]["s"], 4), r["noise"]["df"], r["sets"], num(r["se"], 4),
            num(r["delta"], 4),
            f"{num(floor.get('fid'), 2)} ({floor['images']}{other})" if floor else "not measured",
        ])  # fmt: skip
    return table(
        ["recipe", "s (SD of log FID of one set)", "df", "fresh sets an epoch",
         "SE of one run's gain", "δ", "real-vs-real FID floor"],
        rows, "lrrrrrl",
    )  # fmt: skip


def _curation(result: Mapping[str, Any], extra: Mapping[str, Any]) -> list[str]:
    lines = ["## 1. Curation", ""]
    pilot = extra["pilot"]
    if pilot:
        shares = ", ".join(f"{k} {v:.2%}" for k, v in pilot["shares"].items())
        lines += [
            f"Layer rule (fixed before the main runs): on pilot seed {pilot['seed']} (its selected "
            f"epoch {pilot['epoch']}{', a no choice' if pilot['no_choice'] else ''}), the share of "
            f"its trained images with coverage > {pilot['threshold']}: {shares}. The deepest block "
            f"in {pilot['range'][0]:.1%}-{pilot['range'][1]:.0%}: **{pilot['layer'] or 'none'}**.",
            "",
        ]
    records = {(r["experiment"], int(r["seed"]), r["rule"]): r for r in extra["curation"]}
    for exp, r in result["recipes"].items():
        for label, c in r["curation"].items():
            lines += [f"`{exp}`, rule {label}: final and best FID per arm (± SE), gain of "
                      "curated over control (final FID, log ratio ± SE).", ""]  # fmt: skip
            mine = {
                seed: rec for (e, seed, rule), rec in records.items() if (e, rule) == (exp, label)
            }
            lines += _curation_table(c, mine, r["noise"]["s"])
            other = [v for v in c["decisions"] if not v["planned"]]
            lines += ["", "Other comparisons (no verdict):", ""]
            lines += [f"- {v['variant']}: {_stats(v)}." for v in other]
            lines.append("")
    return lines


def _curation_table(
    c: Mapping[str, Any], records: Mapping[int, Mapping[str, Any]], se_one: float
) -> list[str]:
    """Per seed of one rule: its curation record, each arm's final and best FID, the gain."""
    rows = []
    for s in c["seeds"]:
        rec = records.get(s["seed"], {})
        gain = next(x for x in c["rows"] if x["seed"] == s["seed"]
                    and x["variant"] == CURATION_PLANNED[0])  # fmt: skip
        rows.append([
            s["seed"], f"{rec.get('epoch', 'n/a')}{' (no choice)' if rec.get('no_choice') == 'True' else ''}",
            f"{rec.get('flagged', 'n/a')} / {rec.get('scored', 'n/a')}", _digits(rec.get("per_digit")),
            rec.get("literal_block3_flagged", "n/a"),
            *(_fid_se(s[arm], se_one) for arm in ("baseline", "curated", "control")),
            " / ".join(num(s[arm]["best"]) for arm in ("baseline", "curated", "control")),
            f"{pm(gain['gain'], gain['se'], 3)} ({gain['outcome']})",
        ])  # fmt: skip
    return table(
        ["seed", "D's epoch", "flagged / trained", "flagged per digit 0-9",
         "block3 (literal) flagged", "final FID baseline", "curated", "control",
         "best FID base / cur / ctl", "curated vs control"],
        rows, "rlllrrrrrl",
    )  # fmt: skip


def _fid_se(arm: Mapping[str, Any], s: float) -> str:
    return pm(arm["final"], arm["final"] * s / math.sqrt(arm["sets"]))


def _digits(per_digit: Any) -> str:
    if not per_digit:
        return "n/a"
    counts = json.loads(per_digit) if isinstance(per_digit, str) else per_digit
    return " ".join(str(counts.get(str(d), counts.get(d, 0))) for d in range(10))


def _selection(study: Any, result: Mapping[str, Any], meta: Mapping[str, Any]) -> list[str]:
    lines = ["## 2. Selection: runs, FID curve and plateau test", ""]
    lines += _runs_table(result["runs"], meta.get("status", {}))
    lines += _picks(study, result)
    for exp, r in result["recipes"].items():
        lines += _exploratory(exp, [d for d in r["decisions"] if not d["planned"]])
    return lines


def _runs_table(runs: Sequence[Mapping[str, Any]], status: Mapping[str, str]) -> list[str]:
    """Per baseline run: its epochs (and status if unfinished), best and last FID, plateau."""
    rows = []
    for r in runs:
        fid, p = r["fid"], r["plateau"]
        last = max(fid)
        state = next((v for k, v in status.items()
                      if k.endswith(f"{r['experiment']}_seed_{r['seed']}")), "")  # fmt: skip
        rows.append([
            r["experiment"], r["seed"],
            f"{r['epochs']}{' (' + state + ')' if state and state != 'finished' else ''}",
            f"{num(fid[r['best_epoch']]['mean'])} ({r['best_epoch']})", num(fid[last]["mean"]),
            f"{p['window'][0]}-{p['window'][1]}", pm(p["change"], p["se_change"], 3),
            "yes" if p["learned"] else "no", "**yes**" if p["plateau"] else "no",
        ])  # fmt: skip
    return table(
        ["experiment", "seed", "epochs", "best FID (epoch)", "last FID", "window",
         "fitted change of log FID ± SE", "learned", "plateau"],
        rows, "lrlrrlrll",
    )  # fmt: skip


def _picks(study: Any, result: Mapping[str, Any]) -> list[str]:
    """The FID of each simple rule's pick, then the planned variants and the oracle per run."""
    runs = result["runs"]
    lines = ["", "FID of each simple rule's pick:", ""]
    keys = ("best", "last", "d_real_half", "random_window", "median_window")
    lines += table(
        ["experiment", "seed", "best (oracle)", "last epoch", "D(x) closest to 0.5",
         "random epoch of the window (expected)", "median of the window"],
        [[r["experiment"], r["seed"], *(num(r["baselines"][k]) for k in keys)] for r in runs],
        "lrrrrrr",
    )  # fmt: skip
    shown = [*study.planned, ORACLE]
    lines += ["", "Planned variants and the oracle, run by run (gains in log FID):", ""]
    lines += table(
        ["variant", "experiment", "seed", "chosen epoch", "its FID", "gain over last ± SE",
         "outcome", "gain over a random window epoch", "regret vs oracle",
         "score vs FID in the window, detrended: Spearman (permutation p)"],
        [[f"`{o['variant']}`", o["experiment"], o["seed"], o["epoch"] or "none", num(o["fid"]),
          pm(o["gain"], o["se"], 3), o["outcome"], num(o["gain_vs_random"], 3),
          num(o["regret"], 3), f"{num(o['mechanism_rho'], 2)} (p {num(o['mechanism_p'], 3)})"]
         for o in result["outcomes"] if o["variant"] in shown],
        "llrrrrlrrr",
    )  # fmt: skip
    return lines


def _exploratory(exp: str, explo: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        "",
        f"`{exp}`: exploratory variants ({len(explo)}; no verdict, best mean gain first, top "
        "10). Chosen after looking at many: a good row is a hypothesis for the next plan.",
        "",
    ]
    return lines + table(
        ["variant", "runs", "win/tie/loss/no choice", "mean gain ± SD"],
        [[f"`{d['variant']}`", d["runs"], f"{d['wins']}/{d['ties']}/{d['losses']}/{d['no_choice']}",
          pm(d["mean_gain"], d["gain_sd"], 3)] for d in explo[:10]],
        "lrrr",
    )  # fmt: skip


def _overview(overview: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        "",
        "## 3. The explanations themselves (real probe, mean over runs and epochs)",
        "",
        "Focus of a uniform map is its chance level; degenerate maps are all zero and score "
        "focus 0.",
        "",
    ]
    rows = [
        [o["method"], o["bn_mode"], o["layer"], f"{float(o['degenerate']):.0%}", num(o["focus"], 3),
         num(o["focus_nondeg"], 3), num(o["focus_chance"], 3), num(o["coverage"], 3)]
        for o in overview
    ]  # fmt: skip
    return lines + table(
        ["method", "BN", "layer", "degenerate", "focus", "focus (non-degenerate)", "chance",
         "coverage"],
        rows, "lllrrrrr",
    )  # fmt: skip


def fid_figure(result: Mapping[str, Any], study: Any) -> Image.Image:
    """FID (fresh-set mean) per baseline run, the window shaded, the paper rule's pick marked."""
    runs = result["runs"]
    exps = sorted({r["experiment"] for r in runs})
    fig = Figure(figsize=(6 * len(exps), 4))
    axes = fig.subplots(1, len(exps), squeeze=False)
    first = study.planned[0] if study.planned else None
    picks = {(o["experiment"], o["seed"]): o["epoch"] for o in result["outcomes"]
             if o["variant"] == first}  # fmt: skip
    for ax, exp in zip(axes[0], exps, strict=True):
        for r in (r for r in runs if r["experiment"] == exp):
            epochs = sorted(r["fid"])
            (line,) = ax.plot(epochs, [r["fid"][e]["mean"] for e in epochs], marker="o", ms=2,
                              label=f"seed {r['seed']}")  # fmt: skip
            pick = picks.get((exp, r["seed"]))
            if pick:
                ax.plot([pick], [r["fid"][pick]["mean"]], marker="*", ms=14,
                        color=line.get_color(), markeredgecolor="black")  # fmt: skip
            lo, hi = r["plateau"]["window"]
            ax.axvspan(lo - 0.5, hi + 0.5, color="grey", alpha=0.04)
        ax.set_yscale("log")
        ax.set_title(f"{exp}: FID (fresh sets); star = {first or 'none'}", fontsize=8)
        ax.set_xlabel("epoch")
        ax.set_ylabel("FID")
        ax.legend(fontsize=7)
    return figures.fig_to_image(fig)


def _sittings(meta: Mapping[str, Any]) -> str:
    """How the study ran: its sittings (a resumed study has several), or nothing if unrecorded."""
    sittings = meta.get("sittings", [])
    if not sittings:
        return ""
    parts = [f"{x['started']}, {x['wall_s']} s, {x['how']}"
             + (f", code of commit {x['commit']}" if "commit" in x else "") for x in sittings]  # fmt: skip
    return f" in {len(sittings)} sitting{'s' if len(sittings) > 1 else ''} ({'; '.join(parts)})"
