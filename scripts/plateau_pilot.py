"""The plateau pilot's report: one run's FID curve, judged by the plateau rules fixed before it.

    python scripts/plateau_pilot.py <run dir> --out studies/plateau_cpu/pilot [--window 0.5]

Rules: today's plateau test (``dcgan_xai.analysis.evidence.plateau``, rules v2): in the window
(the last half of the epochs) the fitted change of log FID is within 2 standard errors of the
pooled set-to-set noise, and the window lies below the first epoch beyond noise. The committed
pilot reports were made by the earlier rule (no trend by |Spearman| < 0.3 or a small change).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from matplotlib.figure import Figure
from omegaconf import OmegaConf

from dcgan_xai.analysis import figures
from dcgan_xai.analysis.evidence import fid_by_epoch, plateau, pooled_noise, window_epochs
from dcgan_xai.analysis.markdown import num, pm, table
from dcgan_xai.files import atomic_write_text
from dcgan_xai.runs.layout import RunDir
from dcgan_xai.runs.tables import QUALITY


def _steps(cfg) -> str:
    """The learning-rate steps, in 1-based epochs, if the run has any."""
    milestones = list(cfg.model.get("lr_milestones") or [])
    if not milestones:
        return ""
    starts = ", ".join(str(m + 1) for m in milestones)
    return f" (times {cfg.model.lr_gamma} from epoch {starts} on)"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--window", type=float, default=0.5)
    args = p.parse_args()
    run = RunDir(args.run_dir)
    fid = fid_by_epoch(QUALITY.read(run))
    cfg = OmegaConf.load(run.root / "config.yaml")
    verdict = plateau(fid, args.window, pooled_noise(QUALITY.read(run)))
    win = window_epochs(list(fid), args.window)
    stamps = sorted(p.stat().st_mtime for p in run.checkpoints.glob("epoch=*.ckpt"))
    per_epoch = (stamps[-1] - stamps[0]) / max(len(stamps) - 1, 1)
    rows = [[e, pm(f.mean, f.sd), num(f.fixed), "yes" if e in win else ""] for e, f in fid.items()]
    lines = [
        f"# Plateau pilot: {run.root.name}",
        "",
        f"Experiment: `{cfg.model.arch}` nets ngf={cfg.model.ngf} ndf={cfg.model.ndf}, "
        f"lr {cfg.model.lr}{_steps(cfg)}, instance noise {cfg.model.instance_noise} over "
        f"{cfg.model.instance_noise_decay_epochs} epochs, {cfg.data.limit} images, batch "
        f"{cfg.data.batch_size}, {cfg.trainer.max_epochs} epochs, seed {cfg.seed}, precision "
        f"{cfg.trainer.precision}. n = 1 run. FID per epoch: {fid[max(fid)].n} fresh sets of "
        f"{QUALITY.read(run)[0]['samples']} samples (mean ± SD) and the fixed-noise set, against "
        f"{QUALITY.read(run)[0]['reference']}.",
        f"About {per_epoch:.0f} s per epoch (training, Grad-CAM and FID; from checkpoint times).",
        "",
        f"**Plateau: {'yes' if verdict['plateau'] else 'no'}.** Window epochs "
        f"{verdict['window'][0]}-{verdict['window'][1]}: fitted change of log FID "
        f"{pm(verdict['change'], verdict['se_change'], 3)}; no trend: {verdict['no_trend']}; "
        f"below the first epoch by {num(verdict['drop'], 3)} (learned: {verdict['learned']}); "
        f"minimum at the last epoch: {verdict['min_at_last']}.",
        "",
        *table(["epoch", "FID (fresh sets)", "FID (fixed set)", "in window"], rows),
        "",
        "![FID by epoch](pilot_fid.png)",
    ]
    atomic_write_text(args.out / "PILOT.md", "\n".join(lines) + "\n")
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    epochs = list(fid)
    means = [fid[e].mean for e in epochs]
    sds = [fid[e].sd for e in epochs]
    ax.axvspan(win[0] - 0.5, win[-1] + 0.5, color="grey", alpha=0.15, label="plateau window")
    ax.fill_between(epochs, [m - 2 * s for m, s in zip(means, sds, strict=True)],
                    [m + 2 * s for m, s in zip(means, sds, strict=True)], alpha=0.3,
                    label="± 2 SD (fresh sets)")  # fmt: skip
    ax.plot(epochs, means, marker="o", ms=3, color="black", label="FID")
    ax.set_xlabel("epoch")
    ax.set_ylabel("FID (lower is better)")
    ax.set_title(f"{run.root.name}: plateau {'yes' if verdict['plateau'] else 'no'}")
    ax.legend()
    figures.save_png(figures.fig_to_image(fig), args.out / "pilot_fid.png")
    print("\n".join(lines[:8]))


if __name__ == "__main__":
    main()
