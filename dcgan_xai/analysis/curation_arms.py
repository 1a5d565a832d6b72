"""A study's curation arms: which D and which layer curate a run, the curated and random-removal
control retrainings that follow, and the per-seed curation record.

- **Which D**: ``curation_epoch=selected`` takes the epoch the paper's rule picks from the run's
  own maps (coarse-to-fine on the real probe's mean focus, ``PAPER_VARIANT``; ties to the earlier
  epoch, as the paper says); ``last`` the last epoch.
- **Which layer**: ``curation_layer`` names a block, or is ``pilot``: a pilot seed is trained and
  curated at every block, and the deepest block whose flagged share lies in ``pilot_share`` is
  used (recorded in ``<study>/pilot.json``; none qualifying means no curation).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dcgan_xai.analysis import evidence
from dcgan_xai.analysis.curation import curate_run
from dcgan_xai.analysis.selection import select_epoch
from dcgan_xai.config import PAPER_VARIANT, CurationSettings, StudySettings
from dcgan_xai.files import atomic_write_text
from dcgan_xai.runs.layout import RunDir
from dcgan_xai.runs.load import load_module
from dcgan_xai.runs.tables import SCORES
from dcgan_xai.xai.gradcam import layer_names
from dcgan_xai.xai.scores import ScoreThresholds

Log = Callable[[str], None]


def selected_epoch(run: RunDir, k: int) -> tuple[int, bool]:
    """The epoch the paper's rule picks from ``run``'s own scores, and whether every coarse
    candidate tied (then the pick is only the tie rule's: the earlier epoch)."""
    series = evidence.score_series(SCORES.read(run), evidence.Variant.parse(PAPER_VARIANT))
    series = {e: v for e, v in series.items() if e in run.checkpoint_epochs()}
    return select_epoch(series, k).fine_winner, evidence.choose(series, "coarse", k) is None


def curation_epoch(study: StudySettings, run: RunDir) -> int:
    if study.curation_epoch == "last":
        return run.checkpoint_epochs()[-1]
    return selected_epoch(run, study.analysis.k)[0]


def rules(study: StudySettings) -> list[tuple[str, dict[str, Any]]]:
    """Each flag rule of the study, by label: a coverage threshold, or a share flagged."""
    out: list[tuple[str, dict[str, Any]]] = [
        (f"t{t}", {"flag_threshold": t}) for t in study.curation_thresholds
    ]
    if study.curation_share is not None:
        out.append((f"share{study.curation_share}", {"flag_share": study.curation_share}))
    return out


def curation(
    study: StudySettings,
    seed: int,
    run: RunDir,
    name: str,
    layer: str,
    rule: dict[str, Any],
    control: bool = True,
) -> dict[str, Any]:
    """``run``'s curation ``curation/<name>`` with D of :func:`curation_epoch`: the recorded one
    if it was made with these settings from that checkpoint, else scored now."""
    epoch = curation_epoch(study, run)
    path = run.curation(name) / "summary.json"
    wanted = {"layer": layer, "method": study.curation_method, "seed": seed, **rule}
    if path.is_file() and (
        not control or (run.curation(f"{name}-control") / "summary.json").is_file()
    ):
        summary = json.loads(path.read_text())
        same = Path(summary["checkpoint"]) == run.checkpoint(epoch).resolve() and all(
            summary["settings"].get(k) == v for k, v in wanted.items()
        )
        if same:
            control_dir = str(run.curation(f"{name}-control")) if control else None
            return {**summary, "dir": str(path.parent), "control_dir": control_dir}
    return curate_run(run.root, CurationSettings(
        epoch=str(epoch), layer=layer, method=study.curation_method, name=name, progress=False,
        control=control, seed=seed, **rule))  # fmt: skip


def pilot_layer(
    study: StudySettings, experiment: str, train: Callable[[int, Path], str], log: Log
) -> str | None:
    """The layer the study curates at: ``curation_layer``, or the pilot's choice (trained with
    ``train(seed, run_dir)`` and recorded in ``<study>/pilot.json`` on first use)."""
    if study.curation_layer != "pilot":
        return study.curation_layer
    record = study_root(study) / "pilot.json"
    if record.is_file():
        return json.loads(record.read_text())["layer"]
    run = RunDir(study_root(study) / "runs" / f"{experiment}_seed_{study.pilot_seed}_pilot")
    status = train(study.pilot_seed, run.root)
    if not run.checkpoint_epochs() or "finished" not in status:
        log(f"pilot {run.root.name}: {status}; no layer chosen yet")
        return None
    epoch, no_choice = selected_epoch(run, study.analysis.k)
    low, high = study.pilot_share
    shares = {}
    for layer in reversed(layer_names(load_module(run.checkpoint(epoch)).discriminator)):
        summary = curation(study, study.pilot_seed, run, f"pilot-{layer}", layer,
                           {"flag_threshold": study.curation_thresholds[0]}, control=False)  # fmt: skip
        shares[layer] = summary["flagged"] / summary["scored"]
    chosen = next((name for name, share in shares.items() if low <= share <= high), None)
    pilot = {
        "seed": study.pilot_seed, "epoch": epoch, "no_choice": no_choice,
        "threshold": study.curation_thresholds[0], "shares": shares, "range": [low, high],
        "layer": chosen,
    }  # fmt: skip
    atomic_write_text(record, json.dumps(pilot, indent=2) + "\n")
    log(f"pilot {run.root.name}: flagged shares {shares}; curation layer {chosen}")
    return chosen


def study_root(study: StudySettings) -> Path:
    return Path(study.out_dir) / study.name


def arm_dir(run: RunDir, label: str, arm: str) -> Path:
    return run.root.parent / f"{run.root.name}_{label}_{arm}"


def arms(
    study: StudySettings, seed: int, run: RunDir, layer: str, log: Log
) -> list[tuple[Path, list[str]]]:
    """Per rule that flags some but not all images: the curated and the control arm's run dir
    and the override that trains it without its manifest's images."""
    out = []
    for label, rule in rules(study):
        summary = curation(study, seed, run, f"study-{label}", layer, rule)
        if not 0 < summary["flagged"] < summary["scored"]:
            log(
                f"{run.root.name}: the {label} rule flags {summary['flagged']} images; no retraining"
            )
            continue
        for arm, manifest in (("curated", summary["dir"]), ("control", summary["control_dir"])):
            exclude = f"data.exclude={Path(manifest).resolve() / 'manifest.csv'}"
            out.append((arm_dir(run, label, arm), [exclude]))
    return out


def record(
    study: StudySettings, experiment: str, seed: int, run: RunDir, layer: str
) -> list[dict[str, Any]]:
    """Per rule: the seed's curation as the report shows it (the epoch and layer used, whether
    the epoch was a no choice, the flagged count per digit, and the paper's literal block3
    count), from the recorded curations."""
    epoch = curation_epoch(study, run)
    no_choice = study.curation_epoch == "selected" and selected_epoch(run, study.analysis.k)[1]
    literal = curation(study, seed, run, "study-literal-block3", "block3",
                       {"flag_threshold": ScoreThresholds.flag_threshold}, control=False)  # fmt: skip
    rows = []
    for label, rule in rules(study):
        s = curation(study, seed, run, f"study-{label}", layer, rule)
        rows.append({
            "experiment": experiment, "seed": seed, "rule": label, "layer": layer,
            "epoch": epoch, "no_choice": no_choice,
            "threshold": s["settings"]["flag_threshold"], "flagged": s["flagged"],
            "scored": s["scored"], "per_digit": json.dumps(s["flagged_per_digit"]),
            "literal_block3_flagged": literal["flagged"],
        })  # fmt: skip
    return rows
