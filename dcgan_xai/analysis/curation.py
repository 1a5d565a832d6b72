"""Score every training image with D's Grad-CAM, flag the over-covered ones, write a manifest."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from dcgan_xai.analysis import figures
from dcgan_xai.analysis.report import datamodule_for_run, load_module, resolve_device
from dcgan_xai.data.exclusion import MANIFEST_FIELDS, fingerprint
from dcgan_xai.data.mnist import Split, to_unit_range
from dcgan_xai.data.sources import ensure_mnist
from dcgan_xai.errors import UserError
from dcgan_xai.runs import RunDir, atomic_write_text, write_csv
from dcgan_xai.xai.gradcam import grad_cam
from dcgan_xai.xai.overlay import side_by_side
from dcgan_xai.xai.scores import coverage, focus


def score_split(
    discriminator: torch.nn.Module,
    split: Split,
    layer: str,
    bn_mode: str = "batch",
    pixel_threshold: float = 0.5,
    mask_threshold: float = 0.5,
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Coverage and focus of every image's Grad-CAM map, in batches.

    With ``bn_mode="batch"`` each batch uses its own statistics, so scores depend a little
    on ``batch_size``; batches follow the split's order.

    Returns:
        ``index``, ``label``, ``coverage``, ``focus``: (N,) tensors on the CPU.
    """
    discriminator = discriminator.to(device)
    cov, foc = [], []
    rows = torch.arange(len(split)).split(batch_size)
    for batch in tqdm(rows, desc=f"Grad-CAM {layer}", unit="batch", disable=not progress):
        images = to_unit_range(split.images[batch].to(device))
        maps = grad_cam(discriminator, images, layer, bn_mode=bn_mode)
        assert isinstance(maps, torch.Tensor)
        cov.append(coverage(maps, pixel_threshold).cpu())
        foc.append(focus(maps, images, mask_threshold).cpu())
    return {
        "index": split.indices.clone(),
        "label": split.labels.clone(),
        "coverage": torch.cat(cov),
        "focus": torch.cat(foc),
    }


def flag_images(coverage_values: torch.Tensor, threshold: float = 0.7) -> torch.Tensor:
    """True where an image's map covers more than ``threshold`` of it."""
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"threshold={threshold} is not allowed; it must be in [0, 1]")
    return coverage_values > threshold


def threshold_for_share(coverage_values: torch.Tensor, share: float) -> float:
    """The coverage threshold that flags about ``share`` of the images (rule: coverage > t).

    Ties at the threshold can flag fewer images than asked.
    """
    ordered = coverage_values.sort(descending=True).values  # (N,)
    k = round(share * ordered.numel())
    if k <= 0:
        return 1.0
    return float(ordered[k]) if k < ordered.numel() else 0.0


def sha256sum(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_checkpoint(run: RunDir, epoch: str | int | None, ckpt: str | None) -> Path:
    """``ckpt`` if given, else the run's checkpoint of ``epoch`` (a number or ``selected``)."""
    if ckpt:
        return Path(ckpt)
    if epoch is None or str(epoch) == "selected":
        selection = run.analysis / "selection.json"
        if not selection.is_file():
            raise UserError(
                f"epoch=selected needs {selection}; run `python -m dcgan_xai.analyze "
                f"run_dir={run.root}` first, or pass epoch=<N>"
            )
        return run.checkpoint(int(json.loads(selection.read_text())["selected_epoch"]))
    try:
        number = int(epoch)
    except ValueError:
        raise UserError(
            f"epoch={epoch!r} is not allowed; use selected or an epoch number"
        ) from None
    available = run.checkpoint_epochs()
    if number not in available:
        raise UserError(
            f"epoch={number} has no checkpoint in {run.checkpoints}; available: {available}"
        )
    return run.checkpoint(number)


def curate_run(
    run_dir: str | Path,
    epoch: str | int | None = "selected",
    ckpt: str | None = None,
    layer: str = "block3",
    bn_mode: str = "batch",
    threshold: float = 0.7,
    flag_share: float | None = None,
    pixel_threshold: float = 0.5,
    mask_threshold: float = 0.5,
    batch_size: int = 1024,
    name: str | None = None,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Score the run's training split at one checkpoint and write ``curation/<name>/``.

    Writes ``manifest.csv`` (index, label, coverage, focus, flagged), ``summary.json``,
    ``coverage_hist.png`` and ``flagged_examples.png``. The source data is only read.
    With ``flag_share`` set, the threshold is tuned so that about that share is flagged.

    Returns:
        The content of ``summary.json``.
    """
    checks = [("threshold", threshold), ("pixel_threshold", pixel_threshold)]
    if flag_share is not None:
        checks.append(("flag_share", flag_share))
    for key, value in checks:
        if not 0.0 <= value <= 1.0:
            raise UserError(f"{key}={value} is not allowed; it must be in [0, 1]")
    run = RunDir(run_dir)
    path = resolve_checkpoint(run, epoch, ckpt)
    model = load_module(path)
    device = resolve_device(device)
    dm = datamodule_for_run(run)
    assert dm.train_set is not None
    start = time.perf_counter()
    scores = score_split(
        model.discriminator, dm.train_set, layer, bn_mode, pixel_threshold, mask_threshold,
        batch_size, device, progress,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    if flag_share is not None:
        threshold = threshold_for_share(scores["coverage"], flag_share)
    flagged = flag_images(scores["coverage"], threshold)
    name = name or f"{path.stem.replace('=', '')}-{layer}-{bn_mode}-t{threshold}"
    out = run.curation(name)
    rows = (
        {"index": int(i), "label": int(lab), "coverage": f"{c:.6f}", "focus": f"{f:.6f}",
         "flagged": bool(fl)}
        for i, lab, c, f, fl in zip(scores["index"], scores["label"], scores["coverage"].tolist(),
                                    scores["focus"].tolist(), flagged.tolist(), strict=True)
    )  # fmt: skip
    write_csv(out / "manifest.csv", MANIFEST_FIELDS, rows)
    files = ensure_mnist(dm.root, dm.sources, dm.checksums)
    per_digit = torch.bincount(scores["label"][flagged], minlength=10).tolist()
    summary = {
        "total": len(dm.train_set),
        "flagged": int(flagged.sum()),
        "flagged_per_digit": {str(d): n for d, n in enumerate(per_digit)},
        "settings": {
            "layer": layer,
            "bn_mode": bn_mode,
            "threshold": threshold,
            "flag_share": flag_share,
            "pixel_threshold": pixel_threshold,
            "mask_threshold": mask_threshold,
            "batch_size": batch_size,
            "device": str(device),
        },  # fmt: skip
        "checkpoint": str(path.resolve()),
        "checkpoint_sha256": sha256sum(path),
        "fingerprint": fingerprint(files),
        "seconds": seconds,
        "images_per_second": len(dm.train_set) / seconds if seconds > 0 else None,
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    hist = figures.histogram(scores["coverage"], threshold, f"{name}: {summary['flagged']} flagged")
    figures.save_png(hist, out / "coverage_hist.png")
    top = scores["coverage"].argsort(descending=True, stable=True)[:16]
    images = to_unit_range(dm.train_set.images[top])
    maps = grad_cam(model.discriminator.cpu(), images, layer, bn_mode=bn_mode)
    assert isinstance(maps, torch.Tensor)
    figures.save_png(
        figures.tiles_image(side_by_side(images, maps), nrow=8), out / "flagged_examples.png"
    )
    summary["dir"] = str(out)
    return summary
