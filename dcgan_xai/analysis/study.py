"""The evidence study: does the discriminator's explanation pick a good generator?

For each experiment and seed: train (or resume, or find finished) a run, several at once when
``parallel`` > 1; collect its per-epoch tables (FID/KID over fixed and fresh generated sets, and
the explanation scores of every method, BN mode and layer), computing from the checkpoints what
the run's callbacks did not write; then decide by the rules of :mod:`dcgan_xai.analysis.evidence`
and write ``<out_dir>/<name>/``: ``quality.csv``, ``scores.csv`` (the raw tables),
``outcomes.csv``, ``decisions.csv``, ``study.json`` and ``REPORT.md``. ``report_only`` rebuilds the
report from those tables alone (for tables made on another machine).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from dcgan_xai.analysis import evidence, figures
from dcgan_xai.analysis.curation import curate_run
from dcgan_xai.analysis.evidence import Variant
from dcgan_xai.analysis.report import quality_meter_for, resolve_device
from dcgan_xai.analysis.study_report import fid_figure, study_report
from dcgan_xai.config import AnalysisSettings, StudySettings
from dcgan_xai.errors import UserError
from dcgan_xai.files import atomic_write_text, write_csv
from dcgan_xai.metrics.quality import score_draws
from dcgan_xai.models.sampling import probe_images
from dcgan_xai.runs import (
    QUALITY_FIELDS,
    SCORE_FIELDS,
    RunDir,
    datamodule_for_run,
    ensure_probe,
    load_module,
    parse_quality_row,
    parse_score_row,
    read_csv,
    read_quality,
    read_scores,
    read_table,
    run_config,
    score_rows,
    update_quality,
    update_scores,
)
from dcgan_xai.xai.epoch import explain_epoch
from dcgan_xai.xai.gradcam import layer_names

RUN_KEYS = ("experiment", "seed")


def run_name(experiment: str, seed: int) -> str:
    return f"{experiment}_seed_{seed}"


def variants(study: StudySettings, layers: Sequence[str]) -> list[Variant]:
    """Every combination the study scores; the planned ones first."""
    combos = itertools.product(
        study.methods, layers, study.bn_modes, study.probes, study.scores, study.selections
    )
    every = [Variant(*c) for c in combos]
    planned = [Variant.parse(p) for p in study.planned]
    return planned + [v for v in every if v not in planned]


# ---------------------------------------------------------------- training


def _train_command(
    study: StudySettings, experiment: str, seed: int, run_dir: Path, extra: Sequence[str] = ()
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dcgan_xai.train",
        f"experiment={experiment}",
        f"seed={seed}",
        *study.train_overrides,
        *extra,
        f"hydra.run.dir={run_dir}",
        "resume=true",
        "trainer.enable_progress_bar=false",
    ]


def train_runs(
    study: StudySettings,
    jobs: Sequence[tuple[str, int, Path, Sequence[str]]],
    logs: Path,
    log: Callable[[str], None],
) -> dict[str, str]:
    """Train ``jobs`` (experiment, seed, run dir, extra overrides), ``study.parallel`` at a time.

    Each training's output goes to ``logs/<run>.log``. A training still running after
    ``study.train_timeout_s`` is stopped (SIGTERM, then SIGKILL): the epochs it finished keep
    their checkpoints and a later study resumes it.

    A run that has checkpointed every epoch its config asks for is not trained again.

    Returns:
        The status of each run dir: ``finished``, ``found finished``, ``stopped at the time
        limit`` or ``failed (exit N): <last line>``.
    """
    logs.mkdir(parents=True, exist_ok=True)
    pending = list(jobs)
    running: dict[subprocess.Popen[bytes], tuple[Path, float, Path]] = {}
    status: dict[str, str] = {}
    while pending or running:
        while pending and len(running) < study.parallel:
            experiment, seed, run_dir, extra = pending.pop(0)
            if _finished(RunDir(run_dir)):
                status[str(run_dir)] = "found finished"
                log(f"{run_dir.name}: found finished, not trained again")
                continue
            log_path = logs / f"{run_dir.name}.log"
            with open(log_path, "wb") as out:
                proc = subprocess.Popen(
                    _train_command(study, experiment, seed, run_dir, extra),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            running[proc] = (run_dir, time.monotonic(), log_path)
            log(f"{run_dir.name}: training (log {log_path})")
        time.sleep(0.5)
        for proc, (run_dir, start, log_path) in list(running.items()):
            elapsed = time.monotonic() - start
            rc = proc.poll()
            if rc is None and study.train_timeout_s and elapsed > study.train_timeout_s:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                status[str(run_dir)] = "stopped at the time limit"
            elif rc is None:
                continue
            elif rc == 0:
                status[str(run_dir)] = "finished"
            else:
                lines = log_path.read_text(errors="replace").strip().splitlines()
                status[str(run_dir)] = f"failed (exit {rc}): {(lines or ['no output'])[-1][:300]}"
            del running[proc]
            epochs = RunDir(run_dir).checkpoint_epochs()
            log(
                f"{run_dir.name}: {status[str(run_dir)]} after {elapsed:.0f} s, "
                f"{len(epochs)} epochs checkpointed"
            )
    return status


def _finished(run: RunDir) -> bool:
    """A run that has checkpointed every epoch its recorded config asks for."""
    if not (run.root / "config.yaml").is_file() or not run.checkpoint_epochs():
        return False
    recorded = run_config(run)
    return run.checkpoint_epochs()[-1] >= int(recorded.trainer.max_epochs)


# ---------------------------------------------------------------- per-run tables


def run_tables(
    run: RunDir, study: StudySettings, log: Callable[[str], None] = print
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A run's quality rows and score rows for every checkpointed epoch.

    Rows the run's callbacks wrote with the study's settings are read; the rest are computed
    from the checkpoints and written into the run's own tables first.
    """
    a = study.analysis
    epochs = run.checkpoint_epochs()
    layers = layer_names(load_module(run.checkpoint(epochs[-1])).discriminator)
    dm = None
    device = resolve_device(a.device)

    def usable(r: dict[str, Any]) -> bool:
        """A row made with the study's sample count, draws and fixed-noise seed."""
        return (
            r["samples"] == a.fid_samples
            and r["draw"] <= a.fid_draws
            and (r["draw"] > 0 or r["noise_seed"] == a.fid_seed)
        )

    have = {(r["epoch"], r["draw"]) for r in read_quality(run) if usable(r)}
    missing = [e for e in epochs if any((e, d) not in have for d in range(a.fid_draws + 1))]
    if missing:
        log(f"{run.root.name}: FID of {len(missing)} epochs from checkpoints")
        dm = datamodule_for_run(run)
        meter, record = quality_meter_for(dm, a, device)
        for e in missing:
            g = load_module(run.checkpoint(e)).generator.to(device)
            rows = score_draws(
                meter, g, g.nz, a.fid_samples, a.fid_seed, e, a.fid_draws, a.batch_size
            )
            update_quality(run, [{"epoch": e, **r, **record} for r in rows])
    quality = [r for r in read_quality(run) if r["epoch"] in epochs and usable(r)]

    wanted = {(e, m, b) for e in epochs for m in study.methods for b in study.bn_modes}
    found: dict[tuple[int, str, str], set[str]] = {}
    for r in read_scores(run):
        found.setdefault((r["epoch"], r["method"], r["bn_mode"]), set()).add(r["layer"])
    complete = {key for key, names in found.items() if names >= set(layers)}
    todo = sorted(wanted - complete)
    if todo:
        log(
            f"{run.root.name}: explanations of {len(todo)} (epoch, method, BN mode) from checkpoints"
        )
        dm = dm or datamodule_for_run(run)
        probe = ensure_probe(run, dm)
        for e in sorted({e for e, _, _ in todo}):  # each checkpoint is read once
            model = load_module(run.checkpoint(e))
            images = probe_images(model.generator, probe, model.device)
            for method, bn_mode in sorted({(m, b) for t, m, b in todo if t == e}):
                rec = explain_epoch(
                    model.discriminator,
                    images,
                    layers,
                    bn_mode,
                    method,
                    a.pixel_threshold,
                    a.flag_threshold,
                    a.mask_threshold,
                )
                update_scores(run, score_rows(e, rec))
    scores = [r for r in read_scores(run) if (r["epoch"], r["method"], r["bn_mode"]) in wanted]
    return quality, scores


# ---------------------------------------------------------------- decisions


def evaluate(
    study: StudySettings, quality: Sequence[Mapping[str, Any]], scores: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Per run: FID ± SD per epoch, plateau diagnosis, baselines, every variant's outcome; over
    runs: the decision per variant, overall and per experiment."""
    runs = sorted({(r["experiment"], int(r["seed"])) for r in quality})
    layers = sorted({r["layer"] for r in scores})
    all_variants = variants(study, layers)
    per_run, outcomes = [], []
    for experiment, seed in runs:
        q = [r for r in quality if (r["experiment"], int(r["seed"])) == (experiment, seed)]
        s = [r for r in scores if (r["experiment"], int(r["seed"])) == (experiment, seed)]
        fid = evidence.fid_by_epoch(q)
        d_rows = [
            r for r in s if r["bn_mode"] == study.bn_modes[0] and r["method"] == study.methods[0]
        ]
        d_real = {int(r["epoch"]): float(r["d_real"]) for r in d_rows}
        d_real = {e: d_real.get(e, math.nan) for e in fid}
        key = {"experiment": experiment, "seed": seed}
        best = min(fid, key=lambda e: (fid[e].mean, e))
        per_run.append(
            {
                **key,
                "epochs": len(fid),
                "fid": {e: vars(f) for e, f in fid.items()},
                "best_epoch": best,
                "plateau": evidence.plateau(fid, study.window),
                "baselines": evidence.baselines(fid, d_real, study.window),
            }
        )
        outcomes += evidence.run_outcomes(key, fid, s, all_variants, study.analysis.k, study.window)
    decisions = evidence.decide(outcomes, study.planned)
    by_experiment = {
        exp: evidence.decide(
            [o for o in outcomes if o["experiment"] == exp and o["variant"] in study.planned],
            study.planned,
        )
        for exp in sorted({r[0] for r in runs})
    }
    return {
        "runs": per_run,
        "outcomes": outcomes,
        "decisions": decisions,
        "by_experiment": by_experiment,
    }


def score_overview(
    study: StudySettings, scores: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Per method, BN mode and layer, over runs and epochs: degenerate share, mean focus, focus
    over non-degenerate maps, and the chance level (uniform maps) of the real probe."""
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for r in scores:
        groups.setdefault((r["method"], r["bn_mode"], r["layer"]), []).append(r)

    def mean(rows: Sequence[Mapping[str, Any]], key: str) -> float:
        values = [float(r[key]) for r in rows if not math.isnan(float(r[key]))]
        return sum(values) / len(values) if values else math.nan

    return [
        {
            "method": m,
            "bn_mode": b,
            "layer": layer,
            "degenerate": mean(rows, "real_degenerate"),
            "focus": mean(rows, "real_focus_mean"),
            "focus_nondeg": mean(rows, "real_focus_nondeg"),
            "focus_chance": mean(rows, "real_focus_chance"),
            "coverage": mean(rows, "real_coverage_mean"),
        }
        for (m, b, layer), rows in sorted(groups.items())
    ]


# ---------------------------------------------------------------- the study


def _device_name(device: str) -> str:
    if device == "cuda" and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    return f"CPU, {os.cpu_count()} cores (torch {torch.__version__})"


def run_study(study: StudySettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole study (or, with ``report_only``, re-decide from its tables) and write
    ``<out_dir>/<name>/REPORT.md`` with its tables and figure."""
    study.check()
    root = Path(study.out_dir) / study.name
    if study.report_only:
        return _report_from_tables(study, root)
    start = time.monotonic()
    runs_dir = root / "runs"
    jobs = [
        (exp, seed, runs_dir / run_name(exp, seed), ())
        for exp in study.experiments
        for seed in study.seeds
    ]
    status = train_runs(study, jobs, root / "logs", log)
    quality: list[dict[str, Any]] = []
    scores: list[dict[str, Any]] = []
    trained = []
    for exp, seed, run_dir, _ in jobs:
        run = RunDir(run_dir)
        if not run.checkpoint_epochs():
            log(f"{run_dir.name}: no checkpoint, left out ({status.get(str(run_dir))})")
            continue
        q, s = run_tables(run, study, log)
        key = {"experiment": exp, "seed": seed}
        quality += [{**key, **r} for r in q]
        scores += [{**key, **r} for r in s]
        trained.append((exp, seed, run))
    if not quality:
        raise UserError(f"study {study.name}: no run has a checkpoint; see {root / 'logs'}")
    curation = []
    if study.curate:
        for exp, seed, run in trained:
            fid = evidence.fid_by_epoch(
                [r for r in quality if (r["experiment"], r["seed"]) == (exp, seed)]
            )
            curation += _curation(study, exp, seed, run, fid, log)
    write_csv(root / "quality.csv", [*RUN_KEYS, *QUALITY_FIELDS], quality)
    write_csv(root / "scores.csv", [*RUN_KEYS, *SCORE_FIELDS], scores)
    if curation:
        write_csv(root / "curation.csv", list(curation[0]), curation)
    meta = {
        "device": _device_name(resolve_device(study.analysis.device)),
        "wall_s": round(time.monotonic() - start),
        "status": status,
        "settings": asdict(study),
    }
    atomic_write_text(root / "study.json", json.dumps(meta, indent=2) + "\n")
    return _report_from_tables(study, root)


def _study_table(
    path: Path, parse: Callable[[dict[str, str]], dict[str, Any]]
) -> list[dict[str, Any]]:
    """A study table: a run table's rows (parsed by ``parse``) with their experiment and seed."""
    return [{**row, "seed": int(row["seed"])} for row in read_table(path, parse)]


def _report_from_tables(study: StudySettings, root: Path) -> dict[str, Any]:
    for name in ("quality.csv", "scores.csv", "study.json"):
        if not (root / name).is_file():
            raise UserError(f"study {study.name}: {root / name} is missing; run the study first")
    quality = _study_table(root / "quality.csv", parse_quality_row)
    scores = _study_table(root / "scores.csv", parse_score_row)
    meta = json.loads((root / "study.json").read_text())
    if "settings" in meta:  # decide and describe by the settings the tables were made with
        recorded = dict(meta["settings"])
        analysis = AnalysisSettings(**recorded.pop("analysis"))
        recorded.update(out_dir=study.out_dir, report_only=study.report_only)
        study = StudySettings(**recorded, analysis=analysis)
    curation = read_csv(root / "curation.csv") if (root / "curation.csv").is_file() else []
    result = evaluate(study, quality, scores)
    write_csv(root / "outcomes.csv", list(result["outcomes"][0]), result["outcomes"])
    write_csv(root / "decisions.csv", list(result["decisions"][0]), result["decisions"])
    protocol = {
        k: quality[0][k] for k in ("samples", "reference", "classifier_accuracy", "classifier_md5")
    }
    overview = score_overview(study, scores)
    atomic_write_text(
        root / "REPORT.md", study_report(study, result, meta, protocol, overview, curation)
    )
    figures.save_png(fid_figure(result, study), root / "fid_by_run.png")
    return {"dir": str(root), **result, "meta": meta}


def _curation(
    study: StudySettings,
    experiment: str,
    seed: int,
    run: RunDir,
    fid: Mapping[int, evidence.Fid],
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Per rule: retrain without the images flagged at the last epoch, and without as many
    random images per digit (the control arm); final FIDs (fresh-set mean ± SD) of all three."""
    rows = []
    last = max(fid)
    options: list[tuple[str, dict[str, Any]]] = [
        (f"t{t}", {"flag_threshold": t}) for t in study.curation_thresholds
    ]
    if study.curation_share is not None:
        options.append((f"share{study.curation_share}", {"flag_share": study.curation_share}))
    for label, kwargs in options:
        summary = curate_run(
            run.root,
            epoch=last,
            layer=study.curation_layer,
            method=study.curation_method,
            name=f"study-{label}",
            progress=False,
            control=True,
            seed=seed,
            **kwargs,
        )
        row: dict[str, Any] = {
            "experiment": experiment,
            "seed": seed,
            "rule": label,
            "threshold": summary["settings"]["flag_threshold"],
            "flagged": summary["flagged"],
            "base_final_fid": fid[last].mean,
            "base_final_sd": fid[last].sd,
        }
        arms = {"curated": summary["dir"], "control": summary["control_dir"]}
        for arm in arms:
            row.update(
                {f"{arm}_final_fid": math.nan, f"{arm}_final_sd": math.nan, f"{arm}_run": ""}
            )
        if not 0 < summary["flagged"] < summary["scored"]:
            rows.append(row)
            continue
        jobs = [
            (
                experiment,
                seed,
                run.root.parent / f"{run.root.name}_{label}_{arm}",
                [f"data.exclude={path}/manifest.csv"],
            )
            for arm, path in arms.items()
        ]
        log(
            f"{run.root.name}: retraining without {summary['flagged']} images ({label}), and "
            "without as many random ones"
        )
        status = train_runs(study, jobs, run.root.parent.parent / "logs", log)
        for arm, (_, _, arm_dir, _) in zip(arms, jobs, strict=True):
            if RunDir(arm_dir).checkpoint_epochs():
                q, _ = run_tables(RunDir(arm_dir), study, log)
                arm_fid = evidence.fid_by_epoch(q)
                final = arm_fid[max(arm_fid)]
                row.update(
                    {
                        f"{arm}_final_fid": final.mean,
                        f"{arm}_final_sd": final.sd,
                        f"{arm}_run": str(arm_dir),
                    }
                )
            else:
                row[f"{arm}_run"] = status.get(str(arm_dir), "")
        rows.append(row)
    return rows
