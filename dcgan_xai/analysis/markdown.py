"""Markdown for reports: one number formatter, one table helper, and the run analysis's page."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any


def num(x: Any, digits: int = 1) -> str:
    """A number for a report: fixed digits; missing or NaN as n/a."""
    if x is None or x == "":
        return "n/a"
    try:
        value = float(x)
    except (TypeError, ValueError):
        return str(x)
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def pm(mean: Any, sd: Any, digits: int = 1) -> str:
    return f"{num(mean, digits)} ± {num(sd, digits)}"


def mean_sd(values: Sequence[float | None], digits: int = 1) -> str:
    """Mean ± sample SD of the values that are there (not None or NaN); n/a where none are."""
    there = [v for v in values if v is not None and not math.isnan(v)]
    if not there:
        return "n/a"
    sd = statistics.stdev(there) if len(there) > 1 else math.nan
    return pm(statistics.fmean(there), sd, digits)


def table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None
) -> list[str]:
    """A Markdown table; ``align`` is one letter per column, ``l`` or ``r`` (default: r)."""
    align = align or "r" * len(headers)
    marks = ["---" if a == "l" else "---:" for a in align]
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(marks) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def selection_markdown(result: dict[str, Any]) -> str:
    """``analysis/selection.md`` of :func:`dcgan_xai.analysis.report.analyze_run`'s result."""
    s, sel = result["settings"], result["selection"]
    lines = [
        f"# Epoch selection for {result['run_dir']}",
        "",
        f"Score: mean {s['score']} of the {s['probe']} probe at {s['layers'][0]}, method "
        f"{s.get('method', 'gradcam')}, BN mode {s['bn_mode']}; coarse step k={sel['k']}.",
        "",
        f"- coarse epochs: {sel['coarse_epochs']}; coarse winner: {sel['coarse_winner']}",
        f"- fine window: {sel['fine_window']}; **selected epoch: {sel['fine_winner']}**",
    ]
    if result.get("focus_chance") is not None:
        chance = num(result["focus_chance"], 3)
        lines.append(f"- focus of a uniform map on this probe (chance level): {chance}")
    return "\n".join([*lines, *_warnings(result), *_verdict(result), *_epoch_table(result)]) + "\n"


def _warnings(result: dict[str, Any]) -> list[str]:
    lines = []
    if result.get("no_choice"):
        lines += ["", "**No choice: every coarse candidate epoch scores the same, so the selected "
                  "epoch is only the tie rule's (the earliest) and carries no information.**"]  # fmt: skip
    if all(row["degenerate"] >= 1.0 for row in result["epochs"]):
        lines += ["", f"**Warning: every probe map at {result['settings']['layers'][0]} is "
                  "degenerate (all zero) at every epoch, so the score carries no information and "
                  "the choice falls to the tie rule (earliest epoch).** Try another layer or BN "
                  "mode."]  # fmt: skip
    return lines


def _verdict(result: dict[str, Any]) -> list[str]:
    v, s = result.get("verdict"), result["settings"]
    if not v:
        return []
    lines = [
        f"- selected FID {num(v['selected_fid'], 2)}; best epoch {v['best_epoch']} "
        f"(FID {num(v['best_fid'], 2)}); last epoch FID {num(v['last_fid'], 2)}; "
        f"regret {num(v['regret'], 2)}",
        f"- Spearman rho between {s['score']} and FID over epochs: "
        f"{num(v['spearman_score_fid'], 2)}",
        f"- FID of {s['fid_samples']} generated images against {result['fid_reference']}; "
        f"classifier test accuracy {num(result['classifier_accuracy'], 4)}, file MD5 "
        f"`{result['classifier_md5']}`",
    ]
    for e, x in (v.get("fresh") or {}).get("fid", {}).items():
        lines.append(
            f"- epoch {e} on {x['sets']} fresh generated sets: FID {pm(x['mean'], x['sd'])}"
        )
    return [*lines, "", f"**{v['statement']}**"]


# the per-epoch table's columns and their digits; the logit's three only where it was split
EPOCH_COLUMNS = {"focus": 3, "coverage": 3, "degenerate": 2, "d_real": 3, "d_fake": 3, "fid": 2,
                 "kid": 4, "logit": 2, "logit_pooled": 2, "logit_positional": 2}  # fmt: skip


def _epoch_table(result: dict[str, Any]) -> list[str]:
    logit, chosen = "logit" in result["epochs"][0], result["selection"]["fine_winner"]
    headers = ["epoch", "focus", "coverage", "degenerate", "D(x)", "D(G(z))", "FID", "KID"]
    headers += ["logit", "pooled part", "positional part"] if logit else []
    rows = [
        [f"{row['epoch']}{' *' if row['epoch'] == chosen else ''}"]
        + [
            num(row.get(k), d)
            for k, d in EPOCH_COLUMNS.items()
            if logit or not k.startswith("logit")
        ]
        for row in result["epochs"]
    ]
    lines = ["", *table(headers, rows)]
    if logit:
        lines += ["", f"The head is one linear conv over {result['settings']['layers'][0]}: the "
                  "logit (mean over the real probe) is its pooled part, the sum of the Grad-CAM "
                  "map before its ReLU, plus a positional part that Grad-CAM cannot show. When the "
                  "positional part dominates and the pooled part is negative, Grad-CAM's maps are "
                  "all zero."]  # fmt: skip
    return lines
