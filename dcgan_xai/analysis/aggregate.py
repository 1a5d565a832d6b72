"""One table across a sweep: per job and epoch, Grad-CAM scores and FID; per job, the choice."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dcgan_xai.analysis import figures
from dcgan_xai.analysis.evidence import compare, fid_by_epoch, pooled_noise
from dcgan_xai.analysis.markdown import mean_sd, num, pm, table
from dcgan_xai.analysis.report import analyze_run, load_or_analyze
from dcgan_xai.config import AnalysisSettings
from dcgan_xai.errors import UserError
from dcgan_xai.files import atomic_write_text, write_csv
from dcgan_xai.runs.layout import RunDir, run_config
from dcgan_xai.runs.ownership import held_lock

EPOCH_FIELDS = ["job", "seed", "epoch", "focus", "coverage", "degenerate", "d_real", "d_fake",
                "fid", "kid", "selected"]  # fmt: skip
VERDICT_FIELDS = ["selected_fid", "best_epoch", "best_fid", "last_fid", "regret"]
OUTCOME_WORDS = (
    ("win", "wins"),
    ("tie", "ties"),
    ("loss", "losses"),
    ("same", "the last epoch itself"),
)
JOB_FIELDS = ["job", "seed", "epochs", "selected_epoch", *VERDICT_FIELDS, "vs_last"]
DIGITS = {"selected_fid": 2, "best_fid": 2, "last_fid": 2, "last_kid": 4, "regret": 2}


def job_dirs(sweep_dir: Path) -> list[Path]:
    """Run directories under a sweep (any depth), ordered by path."""
    if not sweep_dir.is_dir():
        raise UserError(f"aggregate: sweep_dir={sweep_dir} does not exist; give a multirun's "
                        "sweep folder")  # fmt: skip
    found = sorted(
        p.parent for p in sweep_dir.rglob("config.yaml") if (p.parent / "checkpoints").is_dir()
    )
    if not found:
        raise UserError(f"aggregate: no run directories with checkpoints under {sweep_dir}")
    return found


def _cells(rows: list[dict[str, Any]], columns: Sequence[str]) -> list[list[Any]]:
    return [[num(r[k], DIGITS.get(k, 0)) if k in DIGITS or r[k] is None else r[k] for k in columns]
            for r in rows]  # fmt: skip


def _focus_curves(series: dict[str, list[float]], path: Path, title: str) -> None:
    n = min(len(v) for v in series.values())
    image = figures.curves(
        list(range(1, n + 1)), {k: v[:n] for k, v in series.items()}, title=title
    )
    figures.save_png(image, path)


def aggregate_sweep(
    sweep_dir: str | Path, settings: AnalysisSettings, reanalyze: bool = False
) -> dict[str, Any]:
    """Analyse (or read the analysis of) every job of a sweep and write one table.

    Writes ``<sweep>/aggregate/epochs.csv`` (one row per job and epoch), ``jobs.csv`` (one row
    per job), ``summary.md`` (both, with mean ± SD over jobs) and ``curves.png``.
    """
    sweep = Path(sweep_dir)
    epoch_rows, job_rows = [], []
    curves: dict[str, list[float]] = {}
    for job in job_dirs(sweep):
        result = analyze_run(job, settings) if reanalyze else load_or_analyze(job, settings)
        name, seed = str(job.relative_to(sweep)) or job.name, run_config(RunDir(job)).seed
        chosen, v = result["selected_epoch"], result.get("verdict") or {}
        epoch_rows += [{"job": name, "seed": seed, **{k: row[k] for k in EPOCH_FIELDS[2:-1]},
                        "selected": row["epoch"] == chosen} for row in result["epochs"]]  # fmt: skip
        job_rows.append({"job": name, "seed": seed, "epochs": len(result["epochs"]),
                         "selected_epoch": chosen, **{k: v.get(k) for k in VERDICT_FIELDS},
                         "vs_last": (v.get("fresh") or {}).get("vs_last", {}).get("outcome")})  # fmt: skip
        curves[f"{name} focus"] = [r["focus"] for r in result["epochs"]]
    out = sweep / "aggregate"
    write_csv(out / "epochs.csv", EPOCH_FIELDS, epoch_rows)
    write_csv(out / "jobs.csv", JOB_FIELDS, job_rows)
    headers = ["job", "seed", "epochs", "selected", "its FID", "best epoch", "best FID",
               "last FID", "regret"]  # fmt: skip
    spread = ", ".join(f"{label} {mean_sd([r[k] for r in job_rows], 2)}" for label, k in (
        ("selected FID", "selected_fid"), ("best FID", "best_fid"), ("last FID", "last_fid"),
        ("regret", "regret")))  # fmt: skip
    lines = [f"# Sweep {sweep}", "", *table(headers, _cells(job_rows, JOB_FIELDS[:-1]), "l" + "r" * 8),
             "", f"Mean ± SD over jobs: {spread}."]  # fmt: skip
    outcomes = [r["vs_last"] for r in job_rows if r["vs_last"]]
    if outcomes:
        counts = ", ".join(f"{outcomes.count(o)} {word}" for o, word in OUTCOME_WORDS)
        lines.append(f"The Grad-CAM choice against the last epoch, by the tie rule on fresh sets "
                     f"({len(outcomes)} of {len(job_rows)} jobs measured): {counts}.")  # fmt: skip
    atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")
    _focus_curves(curves, out / "curves.png", "focus per job")
    return {"dir": str(out), "jobs": job_rows, "epochs": epoch_rows}


COMPARE_FIELDS = (
    "run_dir",
    "excluded",
    "selected_epoch",
    *VERDICT_FIELDS[:-1],
    "last_kid",
    "regret",
    "last_fresh",
    "vs_first",
)


def compare_runs(
    run_dirs: Sequence[str | Path], settings: AnalysisSettings, out_dir: str | Path
) -> dict[str, Any]:
    """Side by side (a baseline and its curated retrainings, say): FID/KID of the selected,
    best and last epochs, and the focus curves.

    Writes ``compare.png``, ``compare.md`` and, last, ``compare.json``, the record that the
    comparison is complete: an ``out_dir`` holding one is refused; one where a killed comparison
    left only the first two is written over. A second comparison into the same ``out_dir`` while
    one runs is refused (``out_dir/.lock``).
    """
    if len(run_dirs) < 2:
        raise UserError(f"compare needs at least two run dirs, got {len(run_dirs)}")
    for run_dir in run_dirs:  # every one, before minutes of analysis of the first
        RunDir(run_dir).trained_epochs("aggregate compare")
    out = Path(out_dir)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = out / ".lock"
    try:
        with held_lock(lock, f"out_dir={out} is in use by another comparison ({{holder}}); "
                       "wait for it to end or choose another out_dir"):  # fmt: skip
            if (out / "compare.json").exists():
                raise UserError(f"out_dir={out} already holds a comparison; choose another out_dir")
            return _compare(run_dirs, settings, out)
    except BaseException:
        if created:  # a comparison that failed in a folder it made leaves no folder behind
            lock.unlink(missing_ok=True)
            if not any(out.iterdir()):
                out.rmdir()
        raise


def _compare(
    run_dirs: Sequence[str | Path], settings: AnalysisSettings, out: Path
) -> dict[str, Any]:
    rows, series, fresh = [], {}, []
    for run_dir in run_dirs:
        result = load_or_analyze(run_dir, settings)
        fresh.append(_last_fresh_sets(result))
        exclusion, v = RunDir(run_dir).root / "exclusion.json", result.get("verdict") or {}
        excluded = json.loads(exclusion.read_text())["excluded"] if exclusion.is_file() else 0
        rows.append({"run_dir": str(run_dir), "excluded": excluded,
                     "selected_epoch": result["selected_epoch"], "last_epoch": result["last_epoch"],
                     **{k: v.get(k) for k in VERDICT_FIELDS},
                     "last_kid": result["epochs"][-1]["kid"]})  # fmt: skip
        series[f"{Path(run_dir).name} focus"] = [r["focus"] for r in result["epochs"]]
    for row, vs in zip(rows, _against_the_first(fresh), strict=True):
        row.update(vs)
    headers = ["run", "images excluded", "selected epoch", "its FID", "best epoch", "best FID",
               "last FID", "last KID", "regret", "last FID, fresh sets (mean ± SD, sets)",
               "last epoch vs the first run's: gain ± SE (outcome)"]  # fmt: skip
    lines = [
        "# Baseline against curated runs",
        "",
        *table(headers, _cells(rows, COMPARE_FIELDS), "l" + "r" * 10),
        "",
        "Gains are log FID ratios of the last epochs' fresh sets (0.105 is 10% lower FID); a win or "
        "a loss only beyond 2 standard errors of the noise pooled over these runs' sets, else a "
        "tie. One run each (n = 1): a comparison of these runs, not a study's verdict.",
    ]
    if len(set(last := [r["last_epoch"] for r in rows])) > 1:
        lines += ["", f"The runs' last epochs differ ({', '.join(map(str, last))}): their last "
                  "epochs are generators trained for different lengths."]  # fmt: skip
    _focus_curves(series, out / "compare.png", "focus")
    atomic_write_text(out / "compare.md", "\n".join(lines) + "\n")
    atomic_write_text(out / "compare.json", json.dumps(rows, indent=2) + "\n")  # the record, last
    return {"rows": rows, "dir": str(out)}


def _last_fresh_sets(result: Mapping[str, Any]) -> list[float]:
    """The FIDs of an analysis's fresh sets at its last epoch (none without fresh sets)."""
    fresh = ((result.get("verdict") or {}).get("fresh") or {}).get("fid", {})
    last = {str(e): x for e, x in fresh.items()}.get(str(result["last_epoch"]), {})
    return list(last.get("values", []))


def _against_the_first(fresh: Sequence[Sequence[float]]) -> list[dict[str, str]]:
    """Each run's last epoch against the first run's, by the tie rule of
    :mod:`~dcgan_xai.analysis.evidence` on their fresh sets."""
    rows = [{"run": i, "epoch": 0, "draw": k + 1, "fid": x}
            for i, values in enumerate(fresh) for k, x in enumerate(values)]  # fmt: skip
    noise = pooled_noise(rows, keys=("run",))
    fid = {i: fid_by_epoch([r for r in rows if r["run"] == i])[0] for i, v in enumerate(fresh) if v}
    out = []
    for i in range(len(fresh)):
        cell = {"last_fresh": "n/a", "vs_first": "n/a"}
        if i in fid:
            f = fid[i]
            cell["last_fresh"] = f"{pm(f.mean, f.sd)} ({f.n})"
        if i == 0:
            cell["vs_first"] = "(the first run)"
        elif i in fid and 0 in fid:
            c = compare(fid, i, 0, noise)
            cell["vs_first"] = f"{pm(c['gain'], c['se'], 3)} ({c['outcome']})"
        out.append(cell)
    return out
