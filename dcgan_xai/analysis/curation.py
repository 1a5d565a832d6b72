"""Score every training image with D's Grad-CAM, flag the over-covered ones, write a manifest."""

from __future__ import annotations

import json
import math
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from dcgan_xai.analysis import figures
from dcgan_xai.analysis.report import resolve_device
from dcgan_xai.config import FRACTION, CurationSettings, check_ranges
from dcgan_xai.data.exclusion import MANIFEST_FIELDS, fingerprint
from dcgan_xai.data.mnist import MNISTDataModule, Split, to_unit_range
from dcgan_xai.errors import UserError
from dcgan_xai.files import atomic_write_text, file_digest, new_folder, write_csv
from dcgan_xai.runs.layout import RunDir
from dcgan_xai.runs.load import datamodule_for_run, load_module
from dcgan_xai.xai.gradcam import grad_cam
from dcgan_xai.xai.overlay import side_by_side
from dcgan_xai.xai.scores import ScoreThresholds as _T
from dcgan_xai.xai.scores import coverage, focus


def score_split(
    discriminator: torch.nn.Module,
    split: Split,
    layer: str,
    bn_mode: str = "batch",
    pixel_threshold: float = _T.pixel_threshold,
    mask_threshold: float = _T.mask_threshold,
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
    progress: bool = True,
    method: str = "gradcam",
    keep_top: int = 0,
) -> dict[str, torch.Tensor]:
    """Coverage and focus of every image's Grad-CAM map, in batches.

    With ``bn_mode="batch"`` each batch uses its own statistics, so scores depend a little
    on ``batch_size``; batches follow the split's order.

    Returns:
        ``index``, ``label``, ``coverage``, ``focus``: (N,) tensors on the CPU; with
        ``keep_top`` = k also ``top_positions`` (k,), the split positions of the k highest
        coverages (the earliest first among ties), and ``top_maps`` (k, H, W), their maps as
        they were scored (in their own batch).
    """
    discriminator = discriminator.to(device)
    cov, foc = [], []
    top_pos, top_cov, top_maps = torch.zeros(0, dtype=torch.long), torch.zeros(0), None
    rows = torch.arange(len(split)).split(batch_size)
    for batch in tqdm(rows, desc=f"Grad-CAM {layer}", unit="batch", disable=not progress):
        images = to_unit_range(split.images[batch].to(device))
        maps = grad_cam(discriminator, images, layer, bn_mode=bn_mode, method=method)
        assert isinstance(maps, torch.Tensor)
        cov.append(coverage(maps, pixel_threshold).cpu())
        foc.append(focus(maps, images, mask_threshold).cpu())
        if keep_top:  # the running top k; earlier positions come first, so ties keep them
            best = cov[-1].argsort(descending=True, stable=True)[:keep_top]  # this batch's top k
            new_maps = maps[best.to(maps.device)].cpu()  # only k maps leave the device
            all_maps = new_maps if top_maps is None else torch.cat([top_maps, new_maps])
            pos, c = torch.cat([top_pos, batch[best]]), torch.cat([top_cov, cov[-1][best]])
            keep = c.argsort(descending=True, stable=True)[:keep_top]
            top_pos, top_cov, top_maps = pos[keep], c[keep], all_maps[keep]
    out = {
        "index": split.indices.clone(),
        "label": split.labels.clone(),
        "coverage": torch.cat(cov),
        "focus": torch.cat(foc),
    }
    if top_maps is not None:
        out.update(top_positions=top_pos, top_maps=top_maps)
    return out


def flag_images(
    coverage_values: torch.Tensor, flag_threshold: float = _T.flag_threshold
) -> torch.Tensor:
    """True where an image's map covers more than ``flag_threshold`` of it."""
    check_ranges({"flag_threshold": flag_threshold}, (("flag_threshold", FRACTION),))
    return coverage_values > flag_threshold


def flag_top_share(
    coverage_values: torch.Tensor, share: float, seed: int = 0
) -> tuple[torch.Tensor, float]:
    """Flag exactly ``round(share * N)`` images, those of highest coverage; ties at the cut are
    broken by a seeded draw.

    Returns:
        The flags (N,) and the coverage of the last image flagged.

    Raises:
        UserError: the share flags no image, or every image.
    """
    n = coverage_values.numel()
    k = round(share * n)
    if not 0 < k < n:
        raise UserError(
            f"flag_share={share} flags {k} of {n} images; allowed: a share that flags 1..{n - 1} "
            f"(between {1 / n:.2g} and {(n - 1) / n:.4g})"
        )
    tiebreak = torch.rand(n, generator=torch.Generator().manual_seed(seed))
    order = sorted(range(n), key=lambda i: (-float(coverage_values[i]), float(tiebreak[i])))
    flags = torch.zeros(n, dtype=torch.bool)
    flags[order[:k]] = True
    return flags, float(coverage_values[order[k - 1]])


def matched_control(labels: torch.Tensor, flagged: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The control arm: as many images per digit as ``flagged`` has, chosen at random (seeded)
    among all images of that digit."""
    gen = torch.Generator().manual_seed(seed)
    control = torch.zeros_like(flagged)
    for digit in labels.unique().tolist():
        rows = (labels == digit).nonzero().squeeze(1)
        count = int(flagged[rows].sum())
        control[rows[torch.randperm(rows.numel(), generator=gen)[:count]]] = True
    return control


def resolve_checkpoint(run: RunDir, epoch: str | int | None, ckpt: str | None) -> Path:
    """``ckpt`` if given, else the run's checkpoint of ``epoch`` (a number or ``selected``)."""
    if ckpt:
        if not Path(ckpt).is_file():
            raise UserError(f"ckpt={ckpt} is not a checkpoint file")
        return Path(ckpt)
    if epoch is None or str(epoch) == "selected":
        selection = run.analysis / "selection.json"
        if not selection.is_file():
            raise UserError(
                f"epoch=selected needs {selection}; run `python -m dcgan_xai.analyze "
                f"run_dir={run.root}` first, or pass epoch=<N>"
            )
        try:
            epoch = int(json.loads(selection.read_text())["selected_epoch"])
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(
                f"{selection} is damaged ({type(err).__name__}: {err}); run `python -m "
                f"dcgan_xai.analyze run_dir={run.root}` again, or pass epoch=<N>"
            ) from err
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


def curate_run(run_dir: str | Path, settings: CurationSettings | None = None) -> dict[str, Any]:
    """Score the images the run trained on at one checkpoint and write ``curation/<name>/``.

    Writes ``manifest.csv`` (one row per train image: index, label, coverage, focus, flagged;
    images the run did not train on, outside its ``data.limit`` subset or already excluded,
    have NaN scores and are never flagged), ``summary.json``, ``coverage_hist.png`` and
    ``flagged_examples.png``. The source data is only read. ``flag_share`` flags exactly that
    share of the scored images (ties broken by a draw seeded with ``seed``) instead of the
    threshold rule. ``control`` also writes ``curation/<name>-control/``: as many images per
    digit, chosen at random (seeded), the arm that tells curation from removing any images.

    Returns:
        The content of ``summary.json`` (with ``dir``, and ``control_dir`` if written).
    """
    s = settings or CurationSettings()
    s.check()
    run = RunDir(run_dir)
    run.trained_epochs("curate")
    if s.name is not None:  # refused before the scoring, not after it
        _refuse_existing(run, s.name, s.control)
    path = resolve_checkpoint(run, s.epoch, s.ckpt)
    model = load_module(path)
    device = resolve_device(s.device)
    dm = datamodule_for_run(run, trained=True)
    assert dm.train_set is not None and dm.whole_train is not None
    start = time.perf_counter()
    scores = score_split(model.discriminator, dm.train_set, s.layer, s.bn_mode, s.pixel_threshold,
                         s.mask_threshold, s.batch_size, device, s.progress, s.method, keep_top=16)  # fmt: skip
    seconds = time.perf_counter() - start
    threshold = s.flag_threshold
    if s.flag_share is not None:
        flagged, threshold = flag_top_share(scores["coverage"], s.flag_share, s.seed)
    else:
        flagged = flag_images(scores["coverage"], threshold)
    name = (
        s.name or f"{path.stem.replace('=', '')}-{s.layer}-{s.method}-{s.bn_mode}-t{threshold:.4g}"
    )
    _refuse_existing(run, name, s.control)
    recorded = {k: getattr(s, k) for k in ("layer", "method", "bn_mode", "flag_threshold",
                "flag_share", "pixel_threshold", "mask_threshold", "batch_size", "seed")}  # fmt: skip
    record = {
        "checkpoint": str(path.resolve()),
        "checkpoint_sha256": file_digest(path, "sha256"),
        "fingerprint": fingerprint(dm.files()),
        "scored": len(dm.train_set),
        "total": len(dm.whole_train),
        "settings": {**recorded, "flag_threshold": threshold, "device": str(device)},
        "seconds": seconds,
        "images_per_second": len(dm.train_set) / seconds if seconds > 0 else None,
    }
    return _write_curation(run, name, s.control, dm, scores, flagged, record)


def _write_curation(
    run: RunDir,
    name: str,
    control: bool,
    dm: MNISTDataModule,
    scores: dict[str, torch.Tensor],
    flagged: torch.Tensor,
    record: dict[str, Any],
) -> dict[str, Any]:
    """``curation/<name>/`` (and with ``control`` its random-removal control), each folder
    whole, both together; returns the summary."""
    assert dm.train_set is not None and dm.whole_train is not None
    out, control_dir = run.curation(name), run.curation(f"{name}-control")
    with ExitStack() as folders:
        tmp = folders.enter_context(new_folder(out))
        summary = _write_manifest(tmp, scores, flagged, dm.whole_train.labels, record)
        threshold = record["settings"]["flag_threshold"]
        hist = figures.histogram(
            scores["coverage"], threshold, f"{name}: {summary['flagged']} flagged"
        )
        figures.save_png(hist, tmp / "coverage_hist.png")
        top = scores["top_positions"]  # the maps shown are the ones scored, in their own batch
        images = to_unit_range(dm.train_set.images[top])
        tiles = figures.tiles_image(side_by_side(images, scores["top_maps"]), nrow=8)
        figures.save_png(tiles, tmp / "flagged_examples.png")
        summary["dir"] = str(out)
        if control:
            arm = matched_control(scores["label"], flagged, record["settings"]["seed"])
            arm_record = {**record, "seconds": 0.0, "images_per_second": None,
                          "settings": {**record["settings"], "control_of": name}}  # fmt: skip
            _write_manifest(folders.enter_context(new_folder(control_dir, replace=True)), scores, arm,
                            dm.whole_train.labels, arm_record)  # fmt: skip
            summary["control_dir"] = str(control_dir)
    return summary


def _refuse_existing(run: RunDir, name: str, control: bool) -> None:
    """A name is a plain folder name, and a curation is never written over: refuse a name whose
    folder (or control's) exists, but for a control left by a killed ``curate`` (see
    :func:`_orphan_control`)."""
    if not name or Path(name).name != name or name in (".", ".."):
        raise UserError(f"name={name!r} is not allowed; it must be a plain folder name (no '/')")
    for folder in (name, f"{name}-control") if control else (name,):
        if run.curation(folder).exists() and not _orphan_control(run, name, folder):
            raise UserError(
                f"curation {run.curation(folder)} already exists; choose another name=, or "
                "remove that folder first"
            )


def _orphan_control(run: RunDir, name: str, folder: str) -> bool:
    """``folder`` is the control of curation ``name`` whose own folder never landed: the control
    lands first and the curation last, so a kill between the two leaves this one (written by
    curate, as its summary says), which the next curation of that name replaces."""
    summary = run.curation(folder) / "summary.json"
    if folder != f"{name}-control" or run.curation(name).exists() or not summary.is_file():
        return False
    try:
        return json.loads(summary.read_text())["settings"]["control_of"] == name
    except (ValueError, KeyError, TypeError):
        return False


def _write_manifest(
    out: Path,
    scores: dict[str, torch.Tensor],
    flagged: torch.Tensor,
    labels: torch.Tensor,
    summary: dict[str, Any],
) -> dict[str, Any]:
    """``manifest.csv`` with one row per train image (unscored images: NaN, never flagged) and
    ``summary.json``; returns the summary."""
    total = labels.numel()
    coverage = torch.full((total,), math.nan)
    focus_values = torch.full((total,), math.nan)
    flags = torch.zeros(total, dtype=torch.bool)
    idx = scores["index"]
    coverage[idx], focus_values[idx], flags[idx] = scores["coverage"], scores["focus"], flagged
    columns = zip(labels.tolist(), coverage.tolist(), focus_values.tolist(), flags.tolist(),
                  strict=True)  # fmt: skip
    rows = ({"index": i, "label": lab, "coverage": f"{c:.6f}", "focus": f"{f:.6f}", "flagged": fl}
            for i, (lab, c, f, fl) in enumerate(columns))  # fmt: skip
    write_csv(out / "manifest.csv", MANIFEST_FIELDS, rows)
    per_digit = torch.bincount(scores["label"][flagged], minlength=10).tolist()
    summary = {
        "flagged": int(flagged.sum()),
        "flagged_per_digit": {str(d): n for d, n in enumerate(per_digit)},
        **summary,
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
