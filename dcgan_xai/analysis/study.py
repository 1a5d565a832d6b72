"""The evidence study: does the discriminator's explanation pick a good generator?

For each experiment and seed, one job (a Hydra multirun over them runs the jobs with any
launcher, Slurm included; without ``-m`` they run one after another in this process): train (or
resume, or find finished) a run and compute from its checkpoints the per-epoch tables its
callbacks did not write (FID/KID over fixed and fresh generated sets, and the explanation scores
of every method, BN mode and layer). Then, over the runs, decide by the rules of
:mod:`dcgan_xai.analysis.evidence` and write ``<out_dir>/<name>/``: ``quality.csv``, ``scores.csv`` (the raw tables),
``outcomes.csv``, ``decisions.csv``, ``study.json`` and ``REPORT.md``. ``report_only`` rebuilds the
report from those tables alone (for tables made on another machine).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from dcgan_xai.analysis import evidence, figures
from dcgan_xai.analysis.curation_arms import arm_dir, arms, pilot_layer, record, rules, study_root
from dcgan_xai.analysis.evidence import Fid, Variant
from dcgan_xai.analysis.report import epoch_quality, resolve_device
from dcgan_xai.analysis.study_report import fid_figure, study_report
from dcgan_xai.config import StudySettings, compose_config
from dcgan_xai.data.mnist import to_unit_range
from dcgan_xai.errors import UserError
from dcgan_xai.files import atomic_write_text, read_csv, read_table, write_csv
from dcgan_xai.metrics.quality import fid_meter, reference_images
from dcgan_xai.models.sampling import probe_images
from dcgan_xai.runs.layout import RunDir, run_config
from dcgan_xai.runs.load import datamodule_for_config, ensure_probe, load_module
from dcgan_xai.runs.ownership import held_lock
from dcgan_xai.runs.tables import QUALITY, SCORES, score_rows
from dcgan_xai.seeds import train_together
from dcgan_xai.xai.epoch import explain_epoch
from dcgan_xai.xai.gradcam import layer_names
from dcgan_xai.xai.scores import thresholds_of

RUN_KEYS = ("experiment", "seed", "arm")


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


def train_runs(
    study: StudySettings,
    experiment: str,
    runs: Sequence[tuple[int, Path, Sequence[str]]],
    deadline: float | None = None,
    log: Callable[[str], None] = print,
) -> dict[Path, str]:
    """Train (or resume) runs of the study, each ``(seed, run dir, extra overrides)``, in this
    process until ``deadline`` (``time.monotonic()``) at the latest: one after another, or with
    ``seeds_at_once`` all at once (:func:`~dcgan_xai.seeds.train_together`). A run that has
    checkpointed every epoch its config asks for is not trained again.

    Returns:
        Each run's status: ``finished``, ``found finished``, ``stopped at the time limit after
        N epochs``, ``not trained (train=false)`` or ``failed: <one line>``.
    """
    if len(runs) > 1 and not study.seeds_at_once:  # one after another, each by the rules below
        return {
            d: s
            for run in runs
            for d, s in train_runs(study, experiment, [run], deadline, log).items()
        }
    status: dict[Path, str] = {}
    todo: dict[Path, DictConfig] = {}
    for seed, run_dir, extra in runs:
        run = RunDir(run_dir)
        epochs = len(run.checkpoint_epochs())
        if _finished(run):
            status[run_dir] = "found finished"
        elif not study.train:
            status[run_dir] = f"not trained (train=false): {epochs} epochs checkpointed"
        elif deadline is not None and deadline <= time.monotonic():
            status[run_dir] = f"stopped at the time limit after {epochs} epochs"
        else:
            todo[run_dir] = _train_config(study, experiment, seed, run_dir, extra, log)
    left = None if deadline is None else deadline - time.monotonic()
    resume = "the same study command (it resumes its runs)"
    done = train_together(todo, left, resume) if todo else {}  # a refused or diverged run: data
    for run_dir, result in done.items():
        status[run_dir] = _training_status(result)
        log(f"{run_dir.name}: {status[run_dir]}")
    return {run_dir: status[run_dir] for _, run_dir, _ in runs}


def _train_config(
    study: StudySettings,
    experiment: str,
    seed: int,
    run_dir: Path,
    extra: Sequence[str],
    log: Callable[[str], None],
) -> DictConfig:
    overrides = [
        f"experiment={experiment}",
        f"seed={seed}",
        *study.train_overrides,
        *extra,
        "resume=true",
        "trainer.enable_progress_bar=false",  # one line an epoch instead (EpochLine)
    ]
    log(f"{run_dir.name}: training ({' '.join(overrides[2:-2]) or 'the experiment as it is'})")
    return compose_config("train", overrides)


def _training_status(result: dict[str, Any] | UserError) -> str:
    if isinstance(result, UserError):
        return f"failed ({type(result).__name__}): {' '.join(str(result).split())[:300]}"
    if result["stopped"]:
        return f"stopped at the time limit after {result['epochs']} epochs"
    return "finished"


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
    want = dict.fromkeys(run.checkpoint_epochs(), range(a.fid_draws + 1))
    quality = epoch_quality(run, a, want, resolve_device(a.device), save=True, log=log)
    return quality, _run_scores(run, study, log)


def _run_scores(
    run: RunDir, study: StudySettings, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    a, epochs = study.analysis, run.checkpoint_epochs()
    layers = layer_names(load_module(run.checkpoint(epochs[-1])).discriminator)
    wanted = {(e, m, b) for e in epochs for m in study.methods for b in study.bn_modes}
    found: dict[tuple[int, str, str], set[str]] = {}
    for r in SCORES.read(run):
        found.setdefault((r["epoch"], r["method"], r["bn_mode"]), set()).add(r["layer"])
    todo = sorted(wanted - {key for key, names in found.items() if names >= set(layers)})
    if todo:
        log(
            f"{run.root.name}: explanations of {len(todo)} (epoch, method, BN mode) from checkpoints"
        )
        probe = ensure_probe(run)
        for e in sorted({e for e, _, _ in todo}):  # each checkpoint is read once
            model = load_module(run.checkpoint(e))
            images = probe_images(model.generator, probe, model.device)
            for method, bn_mode in sorted({(m, b) for t, m, b in todo if t == e}):
                rec = explain_epoch(model.discriminator, images, layers, bn_mode, method, a,
                                    a.normalize)  # fmt: skip
                SCORES.update(run, score_rows(e, rec))
    return [r for r in SCORES.read(run) if (r["epoch"], r["method"], r["bn_mode"]) in wanted]


# ---------------------------------------------------------------- decisions


def evaluate(
    study: StudySettings, quality: Sequence[Mapping[str, Any]], scores: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Per recipe, by the rules of :mod:`~dcgan_xai.analysis.evidence`: the pooled noise and the
    margin; per baseline run its FID per epoch, plateau test, baselines and every variant's
    outcome; over runs the selection verdicts with the oracle's design check, and, where the
    study has curation arms, the curation verdicts with theirs."""
    runs, outcomes, recipes = [], [], {}
    for exp in sorted({r["experiment"] for r in quality}):
        rows = [r for r in quality if r["experiment"] == exp]
        noise = evidence.pooled_noise(rows)
        by_run = _fid_by_run(rows)
        n_sets = min(f.n for fid in by_run.values() for f in fid.values())
        se = noise.se(n_sets, n_sets)
        delta = evidence.margin(se)
        mine = []
        for (seed, arm), fid in sorted(by_run.items()):
            if arm != "baseline":
                continue
            s = [r for r in scores if (r["experiment"], int(r["seed"])) == (exp, seed)]
            runs.append(_run_summary(study, exp, seed, fid, s, noise))
            mine += evidence.run_outcomes(
                {"experiment": exp, "seed": seed}, fid, s, variants(study, _layers(scores)),
                study.analysis.k, study.window, noise,
            )  # fmt: skip
        planned = list(study.planned) if study.question == "selection" else []
        oracle = [o for o in mine if o["variant"] == evidence.ORACLE]
        recipes[exp] = {
            "noise": vars(noise), "sets": n_sets, "se": se, "delta": delta,
            "design": evidence.design_check([o["gain"] for o in oracle],
                                            [o["outcome"] for o in oracle], delta,
                                            len(study.planned)),
            "decisions": evidence.decide(
                [o for o in mine if o["variant"] != evidence.ORACLE], planned, delta),
            "curation": curation_verdicts(by_run, se, delta),
        }  # fmt: skip
        outcomes += mine
    return {"runs": runs, "outcomes": outcomes, "recipes": recipes}


def _layers(scores: Sequence[Mapping[str, Any]]) -> list[str]:
    return sorted({r["layer"] for r in scores})


def _fid_by_run(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[int, str], dict[int, Fid]]:
    """FID per epoch of each (seed, arm) in one recipe's quality rows."""
    groups: dict[tuple[int, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((int(r["seed"]), r.get("arm", "baseline")), []).append(r)
    return {key: evidence.fid_by_epoch(g) for key, g in groups.items()}


def _run_summary(
    study: StudySettings,
    experiment: str,
    seed: int,
    fid: Mapping[int, Fid],
    scores: Sequence[Mapping[str, Any]],
    noise: evidence.Noise,
) -> dict[str, Any]:
    d_rows = [
        r for r in scores if (r["bn_mode"], r["method"]) == (study.bn_modes[0], study.methods[0])
    ]
    d_real = {int(r["epoch"]): float(r["d_real"]) for r in d_rows}
    return {
        "experiment": experiment, "seed": seed, "epochs": len(fid),
        "fid": {e: vars(f) for e, f in fid.items()},
        "best_epoch": min(fid, key=lambda e: (fid[e].mean, e)),
        "plateau": evidence.plateau(fid, study.window, noise),
        "baselines": evidence.baselines(fid, {e: d_real.get(e, math.nan) for e in fid}, study.window),
    }  # fmt: skip


def curation_verdicts(
    by_run: Mapping[tuple[int, str], Mapping[int, Fid]], se: float, delta: float
) -> dict[str, Any]:
    """Per curation rule (arm label): each seed's final and best FID of its three arms, the gains
    of the planned comparisons (final FID) and the others, the verdicts, and the design check
    (a 10% curated-vs-control gain with the observed spread). Seeds whose arms did not all reach
    the baseline's last epoch are left out and listed."""
    labels = sorted({arm.split("_", 1)[1] for _, arm in by_run if arm != "baseline"})
    out = {}
    for label in labels:
        names = {
            "curated": f"curated_{label}",
            "control": f"control_{label}",
            "baseline": "baseline",
        }
        seeds: list[dict[str, Any]] = []
        left_out: list[int] = []
        rows: list[dict[str, Any]] = []
        for seed in sorted({s for s, _ in by_run}):
            if (seed, "baseline") not in by_run:
                continue
            last = max(by_run[seed, "baseline"])
            if any(max(by_run.get((seed, arm), {0: None})) != last for arm in names.values()):
                left_out.append(seed)
                continue
            arms = {k: _arm_fids(by_run[seed, arm]) for k, arm in names.items()}
            seeds.append({"seed": seed, **arms})
            for (a, b), what in itertools.product(evidence.CURATION_PAIRS, ("final", "best")):
                gain = math.log(arms[b][what] / arms[a][what])
                rows.append({"seed": seed, "variant": f"{a} vs {b} ({what} FID)", "gain": gain,
                             "se": se, "outcome": evidence.outcome(gain, se)})  # fmt: skip
        planned = list(evidence.CURATION_PLANNED)
        decisions = evidence.decide(rows, planned, delta) if rows else []
        claim = [float(r["gain"]) for r in rows if r["variant"] == planned[0]]
        design = (
            evidence.design_check(*evidence.power_gains(claim, se), delta, len(planned))
            if len(claim) > 1 else {"can_decide": False, "runs": len(claim)}
        )  # fmt: skip
        out[label] = {"seeds": seeds, "left_out": left_out, "rows": rows,
                      "decisions": decisions, "design": design}  # fmt: skip
    return out


def _arm_fids(fid: Mapping[int, Fid]) -> dict[str, float]:
    best = min(fid, key=lambda e: (fid[e].mean, e))
    return {
        "final": fid[max(fid)].mean,
        "best": fid[best].mean,
        "best_epoch": best,
        "sets": fid[max(fid)].n,
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
    """The study as its settings say.

    - ``job.experiment`` set: one job of the study's multirun (:func:`study_job`): the run of
      ``job.seed``, or with ``seeds_at_once`` every seed of the sitting at once.
    - ``report_only``: re-decide from the study's tables alone (:func:`report`'s last step).
    - Otherwise the whole study in this process: each run's job in turn (training what is
      missing, unless ``train=false``), then :func:`report`.
    """
    study.check()
    if study.report_only:
        return _report_from_tables(study, study_root(study))
    check_callbacks_explain_alike(study)
    seeds = study.seeds if study.sitting is None else study.sitting
    job = study.job
    if job.experiment is not None:
        mine = seeds if job.seed is None else [job.seed]
        return {"status": study_job(study, job.experiment, mine, log)}
    start = time.time()
    with study_lock(study):
        for experiment in study.experiments:
            for group in [seeds] if study.seeds_at_once else [[seed] for seed in seeds]:
                study_job(study, experiment, group, log)
        at_once = "each recipe's seeds at once" if study.seeds_at_once else "one run at a time"
        return report(study, log, started=start, how=f"one process, {at_once}")


def check_callbacks_explain_alike(study: StudySettings) -> None:
    """The study reads the scores its runs' Grad-CAM callbacks wrote as its own: refuse a study
    whose trainings would explain with other thresholds or normalisation than its analysis."""
    a = study.analysis
    for experiment in study.experiments:
        cfg = compose_config("train", [f"experiment={experiment}", *study.train_overrides])
        if not cfg.callbacks.gradcam.enabled:  # nothing of theirs to mix in
            continue
        for key in (*thresholds_of(a), "normalize"):
            theirs = cfg.callbacks.gradcam[key]
            if theirs != getattr(a, key):
                raise UserError(
                    f"analysis.{key}={getattr(a, key)} but the study's trainings of {experiment} "
                    f"explain with callbacks.gradcam.{key}={theirs}; set them alike (in "
                    "train_overrides or analysis), or the study would mix two kinds of scores"
                )


def study_lock(study: StudySettings) -> AbstractContextManager[None]:
    """``<study>/.lock``, held by the invocation that trains and reports the study (the one
    process, or a multirun's launcher): a second invocation on the same study is refused."""
    root = study_root(study)
    root.mkdir(parents=True, exist_ok=True)
    return held_lock(root / ".lock", f"study {root} is in use by another invocation ({{holder}}); "
                     "wait for it to end")  # fmt: skip


def study_job(
    study: StudySettings, experiment: str, seeds: Sequence[int], log: Callable[[str], None] = print
) -> dict[str, str]:
    """Runs of the study (``seeds`` of ``experiment``): train them (resuming what is there),
    compute the tables their callbacks did not write, and, for each finished run with
    ``curate``, its curation arms (curated and random-removal control, per rule), trained the
    same way. Trainings stop ``train_timeout_s`` after the job starts.

    Returns and records in ``<study>/jobs/<run>.json`` (per seed): each run dir's status.
    """
    deadline = None if study.train_timeout_s is None else time.monotonic() + study.train_timeout_s
    root = study_root(study)
    runs = {seed: RunDir(root / "runs" / run_name(experiment, seed)) for seed in seeds}

    def train_dirs(items: Sequence[tuple[int, Path, Sequence[str]]]) -> dict[Path, str]:
        return train_runs(study, experiment, items, deadline, log)

    status = train_dirs([(seed, run.root, ()) for seed, run in runs.items()])
    trained = {seed: run for seed, run in runs.items() if run.checkpoint_epochs()}
    layer = None
    if study.curate and trained:
        layer = pilot_layer(study, experiment, lambda s, d: train_dirs([(s, d, ())])[d], log)
    arms_of: dict[int, list[tuple[Path, list[str]]]] = {}
    for seed, run in trained.items():
        run_tables(run, study, log)
        if layer is not None and _finished(run):
            arms_of[seed] = arms(study, seed, run, layer, log)
    status |= train_dirs([(seed, d, extra) for seed, a in arms_of.items() for d, extra in a])
    for seed, run in runs.items():
        dirs = [run.root, *(d for d, _ in arms_of.get(seed, []))]
        for d in dirs[1:]:
            if RunDir(d).checkpoint_epochs():
                run_tables(RunDir(d), study, log)
        record = json.dumps({str(d): status[d] for d in dirs}, indent=2) + "\n"
        atomic_write_text(root / "jobs" / f"{run.root.name}.json", record)
    return {str(d): s for d, s in status.items()}


def _status(root: Path, run_dir: Path, job: str) -> str:
    """A run dir's status: ``finished``, else the record of ``job`` (the run it belongs to),
    else what its checkpoints say."""
    record = root / "jobs" / f"{job}.json"
    run = RunDir(run_dir)
    if _finished(run):
        return "finished"
    if record.is_file():
        for job_dir, state in json.loads(record.read_text()).items():
            if Path(job_dir).name == run_dir.name:
                return state
    return f"{len(run.checkpoint_epochs())} epochs checkpointed"


def report(
    study: StudySettings, log: Callable[[str], None], started: float, how: str
) -> dict[str, Any]:
    """Collect every run's tables (computing from checkpoints what is missing) and curation
    results, with the rows of earlier sittings for runs not on this machine; write the study's
    tables and ``study.json``, and decide (:func:`_report_from_tables`).

    ``started`` (``time.time()``) and ``how`` describe this sitting; ``study.json`` keeps the
    sittings before it, so a study resumed over several sittings reports its whole wall time.
    """
    root = study_root(study)
    earlier = _earlier_sittings(root)
    quality, scores, curation, status = _collect(study, root, earlier["runs"], log)
    carried = set(itertools.product(study.experiments, study.seeds))
    carried -= {(r["experiment"], r["seed"]) for r in quality}

    def kept(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in rows if (r["experiment"], int(r["seed"])) in carried]

    quality, scores = quality + kept(earlier["quality"]), scores + kept(earlier["scores"])
    curation += kept(earlier["curation"])
    status = {**earlier["status"], **status}  # keyed runs/<run dir> wherever the study ran
    if not quality:
        raise UserError(f"study {study.name}: no run has a checkpoint under {root / 'runs'}")
    write_csv(root / "quality.csv", [*RUN_KEYS, *QUALITY.fields], quality)
    write_csv(root / "scores.csv", ["experiment", "seed", *SCORES.fields], scores)
    if curation:
        write_csv(root / "curation.csv", list(curation[0]), curation)
    sitting = {
        "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
        "wall_s": round(time.time() - started),
        "how": how,
        "commit": code_commit(),
    }
    sittings = [*earlier["sittings"], sitting]
    settings = asdict(study)
    for name in ("job", "report_only", "sitting"):
        settings.pop(name)
    # the floor depends on the settings only: an earlier sitting's is kept, not measured again
    floor = earlier["fid_floor"] if earlier["settings"] == settings else {}
    meta = {
        "device": _device_name(resolve_device(study.analysis.device)),
        "wall_s": sum(int(x["wall_s"]) for x in sittings),
        "sittings": sittings,
        "status": status,
        "settings": settings,
        "rules": evidence.RULES,
        "fid_floor": {e: floor.get(e) or fid_floor(study, e) for e in study.experiments},
    }
    atomic_write_text(root / "study.json", json.dumps(meta, indent=2) + "\n")
    return _report_from_tables(study, root)


def _collect(
    study: StudySettings, root: Path, elsewhere: set[tuple[str, int]], log: Callable[[str], None]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], dict[str, str]]:
    """The quality, score and curation rows and the status of the runs on this machine; a run
    in ``elsewhere`` (trained in an earlier sitting) without checkpoints here is skipped."""
    quality: list[dict[str, Any]] = []
    scores: list[dict[str, Any]] = []
    curation: list[dict[str, Any]] = []
    status: dict[str, str] = {}
    for experiment in study.experiments:
        layer = (
            pilot_layer(study, experiment, lambda *_: "not trained", log) if study.curate else None
        )
        for seed in study.seeds:
            run = RunDir(root / "runs" / run_name(experiment, seed))
            if not run.checkpoint_epochs() and (experiment, seed) in elsewhere:
                log(f"{run.root.name}: from the tables of an earlier sitting")
                continue
            status[f"runs/{run.root.name}"] = _status(root, run.root, run.root.name)
            if not run.checkpoint_epochs():
                log(f"{run.root.name}: no checkpoint, left out ({status[f'runs/{run.root.name}']})")
                continue
            q, s = run_tables(run, study, log)
            key = {"experiment": experiment, "seed": seed}
            quality += [{**key, "arm": "baseline", **r} for r in q]
            scores += [{**key, **r} for r in s]
            if layer is None or not _finished(run):
                continue  # the job curates a run once it has finished
            curation += record(study, experiment, seed, run, layer)
            for label, _ in rules(study):
                for name in ("curated", "control"):
                    arm = RunDir(arm_dir(run, label, name))
                    if arm.checkpoint_epochs():
                        status[f"runs/{arm.root.name}"] = _status(root, arm.root, run.root.name)
                        q, _ = run_tables(arm, study, log)
                        quality += [{**key, "arm": f"{name}_{label}", **r} for r in q]
    return quality, scores, curation, status


def code_commit() -> str:
    """The commit of the code that runs: ``DCGAN_XAI_COMMIT`` where set (a copy of a checkout
    without its ``.git``), else that of the checkout the package lies in; ``unknown`` otherwise
    (an installed wheel, even one inside another repository; no git)."""
    if os.environ.get("DCGAN_XAI_COMMIT"):
        return os.environ["DCGAN_XAI_COMMIT"]
    package = Path(__file__).resolve().parents[1]
    try:
        done = subprocess.run(["git", "rev-parse", "--show-toplevel", "--short", "HEAD"],
                              capture_output=True, text=True, cwd=package)  # fmt: skip
    except OSError:
        return "unknown"
    lines = done.stdout.split()
    if done.returncode or len(lines) != 2 or Path(lines[0]).resolve() != package.parent:
        return "unknown"
    return lines[1]


def _earlier_sittings(root: Path) -> dict[str, Any]:
    """What earlier sittings left in the study's folder (tables, sittings, each run's status):
    a sitting on a fresh machine trains some seeds, and the report keeps the others' rows."""
    out: dict[str, Any] = {"quality": [], "scores": [], "curation": [], "sittings": [],
                           "status": {}, "runs": set(), "settings": None, "fid_floor": {}}  # fmt: skip
    if not (root / "study.json").is_file():
        return out
    meta = json.loads((root / "study.json").read_text())
    out["sittings"], out["settings"] = meta.get("sittings", []), meta.get("settings")
    out["fid_floor"] = meta.get("fid_floor", {})
    out["status"] = {f"runs/{Path(k).name}": v for k, v in meta.get("status", {}).items()}
    for name in ("quality", "scores"):
        if (root / f"{name}.csv").is_file():
            out[name] = [{**r, "seed": int(r["seed"])} for r in read_csv(root / f"{name}.csv")]
    if (root / "curation.csv").is_file():
        out["curation"] = read_csv(root / "curation.csv")
    out["runs"] = {(r["experiment"], r["seed"]) for r in out["quality"]}
    return out


def fid_floor(study: StudySettings, experiment: str) -> dict[str, Any]:
    """FID of real images against the study's reference: ``fid_samples`` random training images
    (seed ``fid_seed + 1``) of ``experiment``'s data, in the study's meter."""
    a = study.analysis
    cfg = compose_config("train", [f"experiment={experiment}", *study.train_overrides])
    dm = datamodule_for_config(cfg)
    assert dm.train_set is not None
    meter, record = fid_meter(dm, a, resolve_device(a.device))
    real = reference_images(dm.train_set.images, a.fid_samples, a.fid_seed + 1)
    fid = meter.score(to_unit_range(real))["fid"]
    return {"fid": fid, "images": f"{real.shape[0]} random train images (seed {a.fid_seed + 1})",
            "reference": record["reference"], "classifier_md5": record["classifier_md5"]}  # fmt: skip


def _study_table(
    path: Path, parse: Callable[[dict[str, str]], dict[str, Any]]
) -> list[dict[str, Any]]:
    """A study table: a run table's rows (parsed by ``parse``) with their experiment, seed and
    arm (``baseline`` in tables of studies without curation arms)."""
    return [{"arm": "baseline", **row, "seed": int(row["seed"])} for row in read_table(path, parse)]


def _report_from_tables(study: StudySettings, root: Path) -> dict[str, Any]:
    """Decide from the study's tables and write the report. Tables made under older rules than
    today's (``study.json``'s ``rules``) keep their planned report; today's rules then write a
    post-hoc one in ``posthoc_rules_<version>/``, labelled as such."""
    for name in ("quality.csv", "scores.csv", "study.json"):
        if not (root / name).is_file():
            raise UserError(f"study {study.name}: {root / name} is missing; run the study first")
    quality = _study_table(root / "quality.csv", QUALITY.parse)
    scores = _study_table(root / "scores.csv", SCORES.parse)
    if not quality:
        raise UserError(f"study {study.name}: {root / 'quality.csv'} holds no rows")
    meta = json.loads((root / "study.json").read_text())
    if "settings" in meta:  # decide and describe by the settings the tables were made with
        recorded = {**meta["settings"], "out_dir": study.out_dir, "report_only": study.report_only}
        study = StudySettings.from_dict(recorded)
    extra = {
        "curation": read_csv(root / "curation.csv") if (root / "curation.csv").is_file() else [],
        "pilot": _json(root / "pilot.json"),
        "floor": meta.get("fid_floor", {}),
        "posthoc": meta.get("rules", "v1") != evidence.RULES,
        "protocol": {k: quality[0][k]
                     for k in ("samples", "reference", "classifier_accuracy", "classifier_md5")},
        "overview": score_overview(study, scores),
    }  # fmt: skip
    result = evaluate(study, quality, scores)
    out = root / f"posthoc_rules_{evidence.RULES}" if extra["posthoc"] else root
    write_csv(out / "outcomes.csv", list(result["outcomes"][0]), result["outcomes"])
    decisions = [
        {"experiment": exp, "question": q, **d}
        for exp, r in result["recipes"].items()
        for q, ds in [("selection", r["decisions"])]
        + [(f"curation {label}", c["decisions"]) for label, c in r["curation"].items()]
        for d in ds
    ]
    write_csv(out / "decisions.csv", list(decisions[0]), decisions)
    atomic_write_text(out / "REPORT.md", study_report(study, result, meta, extra))
    figures.save_png(fid_figure(result, study), out / "fid_by_run.png")
    return {"dir": str(out), **result, "meta": meta}


def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None
