"""Analyse one run: per-epoch maps and scores, coarse-to-fine selection, FID/KID, figures."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy.stats import spearmanr

from dcgan_xai.analysis import figures
from dcgan_xai.analysis.evidence import choose, compare, fid_by_epoch, pooled_noise, to_maximise
from dcgan_xai.analysis.markdown import selection_markdown
from dcgan_xai.analysis.selection import Selection, select_epoch
from dcgan_xai.config import AnalysisSettings, FidProtocol
from dcgan_xai.data.mnist import to_unit_range
from dcgan_xai.data.probe import Probe
from dcgan_xai.errors import UserError
from dcgan_xai.files import atomic_torch_save, atomic_write_text, new_folder
from dcgan_xai.metrics.quality import fid_meter, measured_alike, score_draws
from dcgan_xai.models.networks import build_discriminator
from dcgan_xai.models.sampling import generate, probe_images
from dcgan_xai.runs.layout import RunDir, load_gradcam_epoch, run_config
from dcgan_xai.runs.load import datamodule_for_run, ensure_probe, load_module
from dcgan_xai.runs.tables import QUALITY
from dcgan_xai.xai.epoch import explain_epoch
from dcgan_xai.xai.gradcam import layer_names, linear_head_decomposition
from dcgan_xai.xai.scores import thresholds_of


def parse_samples(spec: str, probe_size: int) -> tuple[str, list[int] | int]:
    """``fixed:3,5,9`` (probe positions) or ``informative:<k>``."""
    kind, _, arg = spec.partition(":")
    try:
        if kind == "fixed":
            positions = [int(x) for x in arg.split(",") if x.strip()]
            bad = [p for p in positions if not 0 <= p < probe_size]
            if not positions or bad:
                raise ValueError
            return kind, positions
        if kind == "informative" and int(arg) >= 1:
            return kind, min(int(arg), probe_size)
    except ValueError:
        pass
    raise UserError(
        f"samples={spec!r} is not allowed; use fixed:<positions 0..{probe_size - 1}, comma "
        "separated> or informative:<count >= 1>"
    )


def resolve_device(name: str) -> str:
    """``auto`` is the GPU where there is one, else the CPU."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def epoch_records(
    run: RunDir, probe: Probe, settings: AnalysisSettings, epochs: Sequence[int]
) -> dict[int, dict[str, Any]]:
    """Per-epoch Grad-CAM records: the callback's file where it holds the same layers and BN
    mode, else recomputed from the epoch's checkpoint."""
    records = {}
    for epoch in epochs:
        record = None
        if run.gradcam_file(epoch).is_file():
            saved = load_gradcam_epoch(run, epoch)
            same = (
                saved["bn_mode"] == settings.bn_mode
                and saved.get("method", "gradcam") == settings.method
                and saved.get("normalize", "max") == settings.normalize
                and all(layer in saved["layers"] for layer in settings.layers)
                and all(saved.get(k) == v for k, v in thresholds_of(settings).items())
            )
            if same:
                record = saved
        if record is None:
            model = load_module(run.checkpoint(epoch))
            images = probe_images(model.generator, probe, model.device)
            record = explain_epoch(model.discriminator, images, settings.layers, settings.bn_mode,
                                   settings.method, settings, settings.normalize)  # fmt: skip
            record["epoch"] = epoch
            record["recomputed"] = True
        records[epoch] = record
    return records


def logit_parts(
    discriminator: torch.nn.Module, probe: Probe, layer: str, bn_mode: str
) -> dict[str, float]:
    """The real probe's mean logit and its pooled and positional parts, when ``layer`` is the
    last block under a linear head (see :func:`linear_head_decomposition`); else empty."""
    if layer != layer_names(discriminator)[-1]:
        return {}
    device = next(discriminator.parameters()).device
    parts = linear_head_decomposition(
        discriminator, to_unit_range(probe.images.to(device)), bn_mode
    )
    if parts is None:
        return {}
    return {f"logit_{k}" if k != "logit" else k: float(v.mean()) for k, v in parts.items()}


def informative_samples(maps_by_epoch: dict[int, torch.Tensor], count: int) -> list[int]:
    """Probe positions whose maps change most across epochs (mean per-pixel std)."""
    stack = torch.stack([maps_by_epoch[e].float() for e in sorted(maps_by_epoch)])  # (E, N, H, W)
    change = (
        stack.std(dim=0, unbiased=False).mean(dim=(1, 2))
        if len(stack) > 1
        else stack[0].mean((1, 2))
    )
    order = sorted(range(change.numel()), key=lambda i: (-float(change[i]), i))
    return order[:count]


def epoch_quality(
    run: RunDir,
    a: FidProtocol,
    want: Mapping[int, Iterable[int]],
    device: str,
    save: bool = False,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """The run's FID/KID rows of each epoch and generated set (draw) in ``want``, by protocol
    ``a``: those ``quality/scores.csv`` holds that were measured alike (the same sample count,
    reference set, classifier file and fixed-noise seed), the rest computed from the epoch's
    checkpoint (and, with ``save``, added to it)."""
    dm = datamodule_for_run(run, setup=False)  # a split is read only to compute
    alike = measured_alike(dm, a)

    def usable(r: Mapping[str, Any]) -> bool:
        same = alike is not None and all(r[k] == v for k, v in alike.items())
        return same and (r["draw"] > 0 or r["noise_seed"] == a.fid_seed)

    wanted = {(e, d) for e, draws in want.items() for d in draws}
    found = [r for r in QUALITY.read(run) if (r["epoch"], r["draw"]) in wanted and usable(r)]
    missing = wanted - {(r["epoch"], r["draw"]) for r in found}
    if not missing:
        return found
    epochs = sorted({e for e, _ in missing})
    if log:
        log(f"{run.root.name}: FID of {len(epochs)} epochs from checkpoints")
    meter, record = fid_meter(dm, a, device)
    for e in epochs:
        g = load_module(run.checkpoint(e)).generator.to(device)
        draws = sorted(d for x, d in missing if x == e)
        rows = score_draws(meter, g, g.nz, a.fid_samples, a.fid_seed, e, draws, a.batch_size)
        found += [{"epoch": e, **r, **record} for r in rows]
        if save:
            QUALITY.update(run, found[-len(rows) :])
    return sorted(found, key=QUALITY.key)


def _epoch_table(
    records: dict[int, dict[str, Any]],
    quality: dict[int, dict[str, float]],
    logit: dict[int, dict[str, float]],
    settings: AnalysisSettings,
) -> list[dict[str, Any]]:
    """One row per epoch of what selection.json reports."""
    table = []
    for e in sorted(records):
        record, q = records[e], quality.get(e, {})
        s = record["summary"][settings.layers[0]]
        table.append({
            "epoch": e,
            "focus": s[f"{settings.probe}_focus_mean"],
            "coverage": s[f"{settings.probe}_coverage_mean"],
            "degenerate": s[f"{settings.probe}_degenerate"],
            "d_real": record["d_real"],
            "d_fake": record["d_fake"],
            "fid": q.get("fid"),
            "kid": q.get("kid"),
            "recomputed": bool(record.get("recomputed", False)),
            **logit.get(e, {}),
        })  # fmt: skip
    return table


def analyze_run(run_dir: str | Path, settings: AnalysisSettings | None = None) -> dict[str, Any]:
    """Select the best epoch of a run from D's Grad-CAM and check it against FID/KID.

    Writes ``<run>/analysis/``: ``selection.json``, ``selection.md``, ``figure1_<layer>.png``,
    ``curves.png``, ``best_generator.pt`` and ``best_samples.png``; and the figure and table
    to the run's TensorBoard.

    Returns:
        The content of ``selection.json``.
    """
    settings = settings or AnalysisSettings()
    settings.check()
    run = RunDir(run_dir)
    epochs = run.trained_epochs("analyze")
    probe = ensure_probe(run)
    kind, arg = parse_samples(settings.samples, probe.labels.numel())
    records = epoch_records(run, probe, settings, epochs)
    layer = settings.layers[0]
    key = f"{settings.probe}_{settings.score}_mean"
    scores = {e: to_maximise(settings.score, records[e]["summary"][layer][key]) for e in epochs}
    selection = select_epoch(scores, settings.k)
    quality, logit = _measure(run, probe, settings, epochs)
    last = quality.get(epochs[-1], {})
    result: dict[str, Any] = {
        "run_dir": str(run.root),
        "settings": settings.__dict__,
        "selection": selection.to_dict(),
        "selected_epoch": selection.fine_winner,
        "last_epoch": epochs[-1],
        "classifier_accuracy": last.get("classifier_accuracy"),
        "classifier_md5": last.get("classifier_md5"),
        "fid_reference": last.get("reference"),
        "focus_chance": records[epochs[-1]]["summary"][layer].get(f"{settings.probe}_focus_chance"),
        "no_choice": choose(scores, "coarse", settings.k) is None,
        "epochs": _epoch_table(records, quality, logit, settings),
    }
    if quality:
        result["verdict"] = _fresh_verdict(run, settings, selection, quality, scores)
    images = _figures(run, probe, records, settings, kind, arg, selection, result["epochs"])
    _write_analysis(run, result, images)
    _to_tensorboard(run, images, result)
    return result


def _measure(
    run: RunDir, probe: Probe, settings: AnalysisSettings, epochs: Sequence[int]
) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, float]]]:
    """Per epoch: FID/KID of the fixed-noise set (with ``quality``; none otherwise), and the
    real probe's logit split into its parts where the first layer is D's last block
    (:func:`logit_parts`; no checkpoint is read for it otherwise)."""
    device = resolve_device(settings.device)
    logit = {}
    if settings.layers[0] == layer_names(build_discriminator(run_config(run).model.arch, 1))[-1]:
        logit = {e: logit_parts(load_module(run.checkpoint(e)).discriminator.to(device), probe,
                                settings.layers[0], settings.bn_mode) for e in epochs}  # fmt: skip
    fixed = dict.fromkeys(epochs, [0])
    rows = epoch_quality(run, settings, fixed, device) if settings.quality else []
    return {r["epoch"]: r for r in rows}, logit


def _fresh_verdict(
    run: RunDir,
    settings: AnalysisSettings,
    selection: Selection,
    quality: Mapping[int, Mapping[str, Any]],
    scores: dict[int, float],
) -> dict[str, Any]:
    """:func:`verdict` on the fixed-noise sets; then the decisive epochs (selected, last, best)
    on ``fid_draws`` fresh sets, whose tie rule decides the words where there are some."""
    epochs = sorted(quality)
    v = verdict(selection, {e: quality[e]["fid"] for e in epochs}, scores)
    decisive = {selection.fine_winner, epochs[-1], v["best_epoch"]}
    draws = dict.fromkeys(decisive, range(1, settings.fid_draws + 1))
    fresh = epoch_quality(run, settings, draws, resolve_device(settings.device))
    v["fresh"] = fresh_comparison(fresh, selection.fine_winner, epochs[-1], v["best_epoch"])
    if v["fresh"]:
        v["statement"] = fresh_statement(v["fresh"])
    return v


def _write_analysis(run: RunDir, result: dict[str, Any], images: dict[str, Any]) -> None:
    """``<run>/analysis/``, whole: written into a new folder swapped in at the end."""
    epoch = result["selected_epoch"]
    best = load_module(run.checkpoint(epoch))
    with new_folder(run.analysis, replace=True) as out:
        atomic_write_text(out / "selection.json", json.dumps(result, indent=2) + "\n")
        atomic_write_text(out / "selection.md", selection_markdown(result))
        for name, image in images.items():
            figures.save_png(image, out / f"{name}.png")
        generator = {"state_dict": best.generator.state_dict(), "nz": best.hparams["nz"],
                     "ngf": best.hparams["ngf"], "epoch": epoch}  # fmt: skip
        atomic_torch_save(generator, out / "best_generator.pt")
        samples = generate(best.generator, best.sample_noise)
        figures.save_png(figures.sample_grid(samples), out / "best_samples.png")


def fresh_comparison(
    rows: Sequence[Mapping[str, Any]], chosen: int, last: int, best: int
) -> dict[str, Any]:
    """FID ± SD of the decisive epochs on their fresh sets (quality rows of draw > 0), and the
    chosen epoch against the last and the best by the study's rules (log FID ratio; win or loss
    beyond 2 standard errors of the noise pooled over these epochs' sets)."""
    fresh = [r for r in rows if r["draw"] > 0]
    fid = fid_by_epoch(fresh)
    if not {chosen, last, best} <= set(fid):
        return {}
    noise = pooled_noise(fresh, keys=())
    return {
        "fid": {
            e: {
                "mean": f.mean,
                "sd": f.sd,
                "sets": f.n,
                "values": [r["fid"] for r in fresh if r["epoch"] == e],
            }
            for e, f in sorted(fid.items())
        },  # fmt: skip
        "noise": vars(noise),
        "vs_last": compare(fid, chosen, last, noise),
        "vs_best": compare(fid, chosen, best, noise),
    }


def fresh_statement(fresh: dict[str, Any]) -> str:
    """The choice against the last epoch in words, by the study's rules."""
    c = fresh["vs_last"]
    pct, se = 100 * (math.exp(abs(c["gain"])) - 1), c["se"]
    return {
        "same": "The Grad-CAM choice is the last epoch itself.",
        "win": f"The Grad-CAM choice beats the last epoch beyond noise (FID {pct:.1f}% lower; "
        f"log ratio {c['gain']:.3f}, SE {se:.3f}).",
        "loss": f"The Grad-CAM choice is worse than the last epoch beyond noise (FID {pct:.1f}% "
        f"higher; log ratio {c['gain']:.3f}, SE {se:.3f}).",
        "tie": f"The Grad-CAM choice ties with the last epoch: the FIDs differ by {pct:.1f}%, "
        f"within 2 standard errors (log ratio {c['gain']:.3f}, SE {se:.3f}).",
    }[c["outcome"]]


def verdict(
    selection: Selection, fid: dict[int, float], scores: dict[int, float]
) -> dict[str, Any]:
    """The selected epoch's FID against the best and the last epoch, and Spearman's rho."""
    epochs = sorted(fid)
    chosen, last = selection.fine_winner, epochs[-1]
    best = min(epochs, key=lambda e: (fid[e], e))
    rho = float("nan")
    if len(epochs) > 2:
        rho = float(spearmanr([scores[e] for e in epochs], [fid[e] for e in epochs]).statistic)
    plain = f"The Grad-CAM choice is the last epoch ({last}) itself."
    if chosen != last:  # without fresh sets there is no noise: no win or loss is claimed
        plain = (
            f"The Grad-CAM choice (epoch {chosen}, FID {fid[chosen]:.1f}) against the last epoch "
            f"({last}, FID {fid[last]:.1f}): one generated set each, no noise measured "
            "(fid_draws=0), so neither a win nor a loss is claimed."
        )
    return {
        "selected_fid": fid[chosen],
        "best_epoch": best,
        "best_fid": fid[best],
        "last_fid": fid[last],
        "regret": fid[chosen] - fid[best],
        "spearman_score_fid": rho,
        "statement": plain,
    }


def _figures(
    run: RunDir,
    probe: Probe,
    records: dict[int, dict[str, Any]],
    settings: AnalysisSettings,
    kind: str,
    arg: list[int] | int,
    selection: Selection,
    table: list[dict[str, Any]],
) -> dict[str, Image.Image]:
    """Figure 1 per layer and the score/FID curves, by file name (no extension)."""
    out: dict[str, Image.Image] = {}
    fig_epochs = [e for e in settings.figure_epochs if e in records] or sorted(records)
    real = to_unit_range(probe.images)
    for layer in settings.layers:
        maps = {e: records[e]["maps"][layer]["real"] for e in fig_epochs}
        positions = list(arg) if kind == "fixed" else informative_samples(maps, int(arg))  # type: ignore[arg-type]
        image = figures.figure1(
            real[positions],
            {e: m[positions] for e, m in maps.items()},
            title=f"{layer}, {settings.method}, BN {settings.bn_mode}, probe positions {positions}",
        )
        out[f"figure1_{layer}"] = image
    epochs = [r["epoch"] for r in table]
    fid = [float("nan") if r["fid"] is None else r["fid"] for r in table]
    image = figures.curves(
        epochs,
        {"focus": [r["focus"] for r in table], "coverage": [r["coverage"] for r in table]},
        fid,
        {"Grad-CAM choice": selection.fine_winner},
        title=str(run.root.name),
    )
    out["curves"] = image
    return out


def _to_tensorboard(run: RunDir, images: dict[str, Image.Image], result: dict[str, Any]) -> None:
    """The figures and the selection page in the run's TensorBoard, at the selected epoch."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(run.tensorboard))
    try:
        step = result["selected_epoch"]
        for name, image in images.items():
            array = np.asarray(image.convert("RGB"))
            writer.add_image(f"analysis/{name}", array, step, dataformats="HWC")
        writer.add_text("analysis/selection", selection_markdown(result), step)
    finally:
        writer.close()


def load_or_analyze(run_dir: str | Path, settings: AnalysisSettings) -> dict[str, Any]:
    """The run's ``analysis/selection.json`` if it was made with these settings and covers every
    checkpointed epoch; otherwise the run is analysed again."""
    run = RunDir(run_dir)
    path = run.analysis / "selection.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        same = saved.get("settings") == json.loads(json.dumps(settings.__dict__))
        if same and [r["epoch"] for r in saved.get("epochs", [])] == run.checkpoint_epochs():
            return saved
    return analyze_run(run_dir, settings)
