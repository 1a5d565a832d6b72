"""Analyse one run: per-epoch maps and scores, coarse-to-fine selection, FID/KID, figures."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from scipy.stats import spearmanr

from dcgan_xai.analysis import figures
from dcgan_xai.analysis.evidence import Fid, choose, compare
from dcgan_xai.analysis.selection import Selection, select_epoch
from dcgan_xai.callbacks.gradcam import explain_epoch
from dcgan_xai.config import AnalysisSettings
from dcgan_xai.data.exclusion import fingerprint, load_exclusion
from dcgan_xai.data.mnist import MNISTDataModule, to_unit_range
from dcgan_xai.data.probe import Probe, make_probe
from dcgan_xai.data.sources import MD5, SOURCES, ensure_mnist
from dcgan_xai.errors import UserError
from dcgan_xai.metrics.quality import (
    MNISTClassifier,
    QualityMeter,
    classifier_path,
    load_or_train_classifier,
    reference_meter,
    score_draws,
)
from dcgan_xai.models.module import DCGAN
from dcgan_xai.models.sampling import generate
from dcgan_xai.runs import (
    RunDir,
    atomic_torch_save,
    atomic_write_text,
    load_gradcam_epoch,
    load_probe,
    safe_torch_load,
    save_probe,
)
from dcgan_xai.xai.gradcam import layer_names, linear_head_decomposition


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


def run_config(run: RunDir) -> Any:
    """The resolved config a run was trained with."""
    path = run.root / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run.root} has no config.yaml; is it a dcgan_xai run directory?")
    return OmegaConf.load(path)


def datamodule_for_run(run: RunDir, trained: bool = False) -> MNISTDataModule:
    """The run's data as configured: the full splits, or with ``trained`` the train images the
    run actually trained on (its ``data.limit`` subset, less its exclusion manifest)."""
    cfg = run_config(run)
    data = cfg.data
    sources, checksums = list(data.get("sources", SOURCES)), dict(data.get("checksums", MD5))
    exclude = None
    if trained and data.get("exclude"):
        files = ensure_mnist(data.root, sources, checksums)
        exclude = load_exclusion(data.exclude, fingerprint(files))
    dm = MNISTDataModule(
        data.root, data.image_size, seed=cfg.seed, limit=data.get("limit") if trained else None,
        exclude=exclude, sources=sources, checksums=checksums, cache_dir=data.get("cache_dir"),
    )  # fmt: skip
    dm.setup()
    return dm


def load_module(path: Path) -> DCGAN:
    """A DCGAN from a checkpoint, with a one-line error for a damaged or foreign file."""
    ckpt = safe_torch_load(path, "checkpoint")
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise UserError(f"checkpoint {path} was not written by dcgan_xai's training")
    model = DCGAN(**ckpt["hyper_parameters"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[1:2] or [str(err)]
        raise UserError(
            f"checkpoint {path} does not match the architecture it names "
            f"({ckpt['hyper_parameters']}): {first[0].strip()}"
        ) from err
    return model.eval()


def classifier_for(
    dm: MNISTDataModule, settings: AnalysisSettings, device: str
) -> tuple[MNISTClassifier, float]:
    """The data's MNIST classifier, cached under ``<data root>/classifier/`` (trained if missing)."""
    assert dm.train_set is not None and dm.test_set is not None
    path = classifier_path(dm.root, dm.image_size, settings.classifier_epochs,
                           dm.checksums["test-images"])  # fmt: skip
    return load_or_train_classifier(
        path, dm.train_set, dm.test_set,
        epochs=settings.classifier_epochs, min_accuracy=settings.min_accuracy, device=device,
    )  # fmt: skip


def quality_meter_for(
    dm: MNISTDataModule, settings: AnalysisSettings, device: str
) -> tuple[QualityMeter, dict[str, Any]]:
    """The FID/KID meter of ``settings`` for the data (see :func:`reference_meter`) and the
    record that goes with its numbers."""
    assert dm.test_set is not None
    model, accuracy = classifier_for(dm, settings, device)
    path = classifier_path(dm.root, dm.image_size, settings.classifier_epochs,
                           dm.checksums["test-images"])  # fmt: skip
    return reference_meter(model, accuracy, path, dm.test_set.images, settings.fid_samples,
                           settings.fid_seed, settings.batch_size)  # fmt: skip


def ensure_probe(run: RunDir, dm: MNISTDataModule) -> Probe:
    """The run's probe; made (seeded as training would) and saved if the run has none."""
    if run.probe.is_file():
        return load_probe(run)
    cfg = run_config(run)
    assert dm.test_set is not None
    gc = cfg.callbacks.gradcam
    probe = make_probe(
        dm.test_set.images, dm.test_set.labels, gc.probe_size, cfg.seed, cfg.model.nz
    )
    save_probe(run, probe)
    return probe


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
                and all(layer in saved["layers"] for layer in settings.layers)
                and all(
                    saved.get(k) == getattr(settings, k)
                    for k in ("pixel_threshold", "flag_threshold", "mask_threshold")
                )
            )
            if same:
                record = saved
        if record is None:
            model = load_module(run.checkpoint(epoch))
            record = explain_epoch(
                model.discriminator, model.generator, probe, settings.layers, settings.bn_mode,
                settings.pixel_threshold, settings.flag_threshold, settings.mask_threshold,
                settings.method,
            )  # fmt: skip
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


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


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
    device = resolve_device(settings.device)
    run = RunDir(run_dir)
    epochs = run.checkpoint_epochs()
    if not epochs:
        raise UserError(f"analyze: {run.checkpoints} holds no epoch=NNN.ckpt checkpoints")
    cfg = run_config(run)
    dm = datamodule_for_run(run)
    probe = ensure_probe(run, dm)
    kind, arg = parse_samples(settings.samples, probe.labels.numel())
    records = epoch_records(run, probe, settings, epochs)
    layer = settings.layers[0]
    key = f"{settings.probe}_{settings.score}_mean"
    scores = {e: records[e]["summary"][layer][key] for e in epochs}
    selection = select_epoch(scores, settings.k)

    quality: dict[int, dict[str, float]] = {}
    fresh: dict[int, list[float]] = {}
    logit: dict[int, dict[str, float]] = {}
    classifier: dict[str, Any] = {}
    meter = None
    if settings.quality:
        meter, classifier = quality_meter_for(dm, settings, device)
    for epoch in epochs:  # each checkpoint is read once here
        module = load_module(run.checkpoint(epoch)).to(device)
        logit[epoch] = logit_parts(module.discriminator, probe, layer, settings.bn_mode)
        if meter is not None:
            quality[epoch] = score_draws(meter, module.generator, cfg.model.nz, settings.fid_samples,
                                         settings.fid_seed, epoch, 0, settings.batch_size)[0]  # fmt: skip
    if meter is not None and settings.fid_draws:
        # the epochs a decision rests on, re-scored on fresh generated sets
        fid0 = {e: quality[e]["fid"] for e in epochs}
        decisive = {selection.fine_winner, epochs[-1], min(epochs, key=lambda e: (fid0[e], e))}
        for epoch in sorted(decisive):
            g = load_module(run.checkpoint(epoch)).generator.to(device)
            rows = score_draws(meter, g, cfg.model.nz, settings.fid_samples, settings.fid_seed,
                               epoch, settings.fid_draws, settings.batch_size, first_draw=1)  # fmt: skip
            fresh[epoch] = [r["fid"] for r in rows]

    table = []
    for e in epochs:
        s = records[e]["summary"][layer]
        q = quality.get(e, {})
        table.append({
            "epoch": e,
            "focus": s[f"{settings.probe}_focus_mean"],
            "coverage": s[f"{settings.probe}_coverage_mean"],
            "degenerate": s[f"{settings.probe}_degenerate"],
            "d_real": records[e]["d_real"],
            "d_fake": records[e]["d_fake"],
            "fid": q.get("fid"),
            "kid": q.get("kid"),
            "recomputed": bool(records[e].get("recomputed", False)),
            **logit.get(e, {}),
        })  # fmt: skip
    result: dict[str, Any] = {
        "run_dir": str(run.root),
        "settings": settings.__dict__,
        "selection": selection.to_dict(),
        "selected_epoch": selection.fine_winner,
        "last_epoch": epochs[-1],
        "classifier_accuracy": classifier.get("classifier_accuracy"),
        "classifier_md5": classifier.get("classifier_md5"),
        "fid_reference": classifier.get("reference"),
        "focus_chance": records[epochs[-1]]["summary"][layer].get(f"{settings.probe}_focus_chance"),
        "no_choice": choose(scores, "coarse", settings.k) is None,
        "epochs": table,
    }
    if quality:
        result["verdict"] = verdict(selection, {e: quality[e]["fid"] for e in epochs}, scores)
        v = result["verdict"]
        v["fresh"] = fresh_comparison(fresh, selection.fine_winner, epochs[-1], v["best_epoch"])
        if v["fresh"]:  # the tie rule on fresh sets decides the words
            v["statement"] = fresh_statement(v["fresh"])

    out = run.analysis
    atomic_write_text(out / "selection.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "selection.md", selection_markdown(result))
    _write_figures(run, out, probe, records, settings, kind, arg, selection, table)
    best = load_module(run.checkpoint(selection.fine_winner))
    atomic_torch_save(
        {"state_dict": best.generator.state_dict(), "nz": best.hparams["nz"], "ngf": best.hparams["ngf"],
         "epoch": selection.fine_winner},
        out / "best_generator.pt",
    )  # fmt: skip
    samples = generate(best.generator, best.sample_noise)
    figures.save_png(figures.sample_grid(samples), out / "best_samples.png")
    _to_tensorboard(run, out, result)
    return result


def fresh_comparison(
    fresh: dict[int, list[float]], chosen: int, last: int, best: int
) -> dict[str, Any]:
    """FID ± SD of the decisive epochs on fresh sets, and the chosen epoch against the last and
    the best by the tie rule (a difference within 2 SD is a tie)."""
    fid = {e: Fid(statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else math.nan, len(v),
                  math.nan) for e, v in fresh.items() if v}  # fmt: skip
    if not {chosen, last, best} <= set(fid):
        return {}
    return {
        "fid": {e: {"mean": f.mean, "sd": f.sd, "sets": f.n} for e, f in sorted(fid.items())},
        "vs_last": compare(fid, chosen, last),
        "vs_best": compare(fid, chosen, best),
    }


def fresh_statement(fresh: dict[str, Any]) -> str:
    """The choice against the last epoch in words, by the tie rule."""
    c = fresh["vs_last"]
    gain, sd = c["gain"], c["sd"]
    return {
        "same": "The Grad-CAM choice is the last epoch itself.",
        "win": f"The Grad-CAM choice beats the last epoch beyond noise (FID {gain:.1f} lower, "
        f"SD of the difference {sd:.1f}).",
        "loss": f"The Grad-CAM choice is worse than the last epoch beyond noise (FID {-gain:.1f} "
        f"higher, SD of the difference {sd:.1f}).",
        "tie": f"The Grad-CAM choice ties with the last epoch: the FIDs differ by {abs(gain):.1f}, "
        f"within 2 SD of the difference (SD {sd:.1f}).",
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
    if fid[chosen] > fid[last]:
        plain = (
            f"The Grad-CAM choice (epoch {chosen}, FID {fid[chosen]:.1f}) is worse than simply "
            f"taking the last epoch ({last}, FID {fid[last]:.1f})."
        )
    elif chosen == last:
        plain = f"The Grad-CAM choice is the last epoch ({last}) itself."
    elif fid[chosen] == fid[last]:
        plain = f"The Grad-CAM choice (epoch {chosen}) ties with the last epoch ({last})."
    else:
        plain = (
            f"The Grad-CAM choice (epoch {chosen}, FID {fid[chosen]:.1f}) beats the last epoch "
            f"({last}, FID {fid[last]:.1f})."
        )
    return {
        "selected_fid": fid[chosen],
        "best_epoch": best,
        "best_fid": fid[best],
        "last_fid": fid[last],
        "regret": fid[chosen] - fid[best],
        "spearman_score_fid": rho,
        "worse_than_last": fid[chosen] > fid[last],
        "statement": plain,
    }


def selection_markdown(result: dict[str, Any]) -> str:
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
        lines.append(f"- focus of a uniform map on this probe (chance level): "
                     f"{_fmt(result['focus_chance'])}")  # fmt: skip
    if result.get("no_choice"):
        lines += ["", "**No choice: every coarse candidate epoch scores the same, so the selected "
                  "epoch is only the tie rule's (the earliest) and carries no information.**"]  # fmt: skip
    if all(row["degenerate"] >= 1.0 for row in result["epochs"]):
        lines += [
            "",
            f"**Warning: every probe map at {s['layers'][0]} is degenerate (all zero) at every "
            "epoch, so the score carries no information and the choice falls to the tie rule "
            "(earliest epoch).** Try another layer or BN mode.",
        ]
    v = result.get("verdict")
    if v:
        lines += [
            f"- selected FID {_fmt(v['selected_fid'], 2)}; best epoch {v['best_epoch']} "
            f"(FID {_fmt(v['best_fid'], 2)}); last epoch FID {_fmt(v['last_fid'], 2)}; "
            f"regret {_fmt(v['regret'], 2)}",
            f"- Spearman rho between {s['score']} and FID over epochs: "
            f"{_fmt(v['spearman_score_fid'], 2)}",
            f"- FID of {s['fid_samples']} generated images against {result['fid_reference']}; "
            f"classifier test accuracy {_fmt(result['classifier_accuracy'], 4)}, file MD5 "
            f"`{result['classifier_md5']}`",
        ]
        f = v.get("fresh") or {}
        for e, x in f.get("fid", {}).items():
            lines.append(f"- epoch {e} on {x['sets']} fresh generated sets: FID {_fmt(x['mean'], 1)} "
                         f"± {_fmt(x['sd'], 1)}")  # fmt: skip
        lines += ["", f"**{v['statement']}**"]
    lines += [
        "",
        "| epoch | focus | coverage | degenerate | D(x) | D(G(z)) | FID | KID |"
        + (" logit | pooled part | positional part |" if "logit" in result["epochs"][0] else ""),
        "|---:|---:|---:|---:|---:|---:|---:|---:|"
        + ("---:|" * 3 if "logit" in result["epochs"][0] else ""),
    ]
    for row in result["epochs"]:
        mark = " *" if row["epoch"] == sel["fine_winner"] else ""
        parts = "".join(f" {_fmt(row[k], 2)} |" for k in ("logit", "logit_pooled", "logit_positional")
                        if k in row)  # fmt: skip
        lines.append(
            f"| {row['epoch']}{mark} | {_fmt(row['focus'])} | {_fmt(row['coverage'])} | "
            f"{_fmt(row['degenerate'], 2)} | {_fmt(row['d_real'])} | {_fmt(row['d_fake'])} | "
            f"{_fmt(row['fid'], 2)} | {_fmt(row['kid'], 4)} |{parts}"
        )
    if "logit" in result["epochs"][0]:
        lines += ["", f"The head is one linear conv over {s['layers'][0]}: the logit (mean over the "
                  "real probe) is its pooled part, the sum of the Grad-CAM map before its ReLU, plus "
                  "a positional part that Grad-CAM cannot show. When the positional part dominates "
                  "and the pooled part is negative, Grad-CAM's maps are all zero."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _write_figures(
    run: RunDir, out: Path, probe: Probe, records: dict[int, dict[str, Any]],
    settings: AnalysisSettings, kind: str, arg: list[int] | int, selection: Selection,
    table: list[dict[str, Any]],
) -> None:  # fmt: skip
    fig_epochs = [e for e in settings.figure_epochs if e in records] or sorted(records)
    real = to_unit_range(probe.images)
    for layer in settings.layers:
        maps = {e: records[e]["maps"][layer]["real"] for e in fig_epochs}
        positions = list(arg) if kind == "fixed" else informative_samples(maps, int(arg))  # type: ignore[arg-type]
        image = figures.figure1(
            real[positions], {e: m[positions] for e, m in maps.items()},
            title=f"{layer}, {settings.method}, BN {settings.bn_mode}, probe positions {positions}",
        )  # fmt: skip
        figures.save_png(image, out / f"figure1_{layer}.png")
    epochs = [r["epoch"] for r in table]
    fid = [float("nan") if r["fid"] is None else r["fid"] for r in table]
    image = figures.curves(
        epochs, {"focus": [r["focus"] for r in table], "coverage": [r["coverage"] for r in table]},
        fid, {"Grad-CAM choice": selection.fine_winner}, title=str(run.root.name),
    )  # fmt: skip
    figures.save_png(image, out / "curves.png")


def _to_tensorboard(run: RunDir, out: Path, result: dict[str, Any]) -> None:
    import numpy as np
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(run.tensorboard))
    try:
        step = result["selected_epoch"]
        for path in sorted(out.glob("figure1_*.png")) + [out / "curves.png"]:
            array = np.asarray(Image.open(path).convert("RGB"))
            writer.add_image(f"analysis/{path.stem}", array, step, dataformats="HWC")
        writer.add_text("analysis/selection", (out / "selection.md").read_text(), step)
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


def compare_runs(run_dirs: Sequence[str | Path], settings: AnalysisSettings) -> dict[str, Any]:
    """Side by side: FID/KID of the selected, best and last epochs, and the score curves.

    Writes ``compare.md``, ``compare.json`` and ``compare.png`` into the last run's
    ``analysis/compare/``.
    """
    if len(run_dirs) < 2:
        raise UserError(f"compare needs at least two run dirs, got {len(run_dirs)}")
    rows = []
    series: dict[str, list[float]] = {}
    for run_dir in run_dirs:
        result = load_or_analyze(run_dir, settings)
        exclusion_path = RunDir(run_dir).root / "exclusion.json"
        excluded = (
            json.loads(exclusion_path.read_text())["excluded"] if exclusion_path.is_file() else 0
        )
        v = result.get("verdict") or {}
        last = result["epochs"][-1]
        rows.append({
            "run_dir": str(run_dir), "excluded": excluded, "selected_epoch": result["selected_epoch"],
            "selected_fid": v.get("selected_fid"), "best_epoch": v.get("best_epoch"),
            "best_fid": v.get("best_fid"), "last_fid": v.get("last_fid"), "last_kid": last["kid"],
            "regret": v.get("regret"),
        })  # fmt: skip
        label = Path(run_dir).name
        series[f"{label} focus"] = [r["focus"] for r in result["epochs"]]
    out = RunDir(run_dirs[-1]).analysis / "compare"
    lines = [
        "# Baseline against curated runs",
        "",
        "| run | images excluded | selected epoch | its FID | best epoch | best FID | last FID | last KID | regret |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['run_dir']} | {r['excluded']} | {r['selected_epoch']} | {_fmt(r['selected_fid'], 2)} "
            f"| {r['best_epoch']} | {_fmt(r['best_fid'], 2)} | {_fmt(r['last_fid'], 2)} "
            f"| {_fmt(r['last_kid'], 4)} | {_fmt(r['regret'], 2)} |"
        )
    atomic_write_text(out / "compare.md", "\n".join(lines) + "\n")
    atomic_write_text(out / "compare.json", json.dumps(rows, indent=2) + "\n")
    n = min(len(v) for v in series.values())
    image = figures.curves(
        list(range(1, n + 1)), {k: v[:n] for k, v in series.items()}, title="focus"
    )
    figures.save_png(image, out / "compare.png")
    return {"rows": rows, "dir": str(out)}
