"""FID parity of two numeric paths: per epoch, FID of runs trained one way against the other.

    python -m dcgan_xai.train -m experiment=mnist64_cpu_noise seed=0,1,2 \\
        trainer.precision=32-true,bf16-mixed callbacks.quality.enabled=true \\
        callbacks.quality.fid_samples=5000 callbacks.quality.fid_draws=2 \\
        trainer.enable_progress_bar=false hydra.sweep.dir=outputs/parity/sweep
    python -m benchmarks.parity_cpu outputs/parity/sweep

Each run's FID per epoch is the mean over its fresh generated sets ± their SD (the sampling
noise). Runs are grouped by ``trainer.precision`` from their ``config.yaml``. Per epoch, the two
groups' means over seeds are compared: difference ± its standard error over seeds (the
seed-to-seed spread, which holds the sampling noise; a different numeric path makes a different
run after a few steps, so seeds are not paired).

Rule (fixed before the runs): the paths **agree** if the difference of the last epoch is within
2 standard errors and at most one other epoch's is outside 2 standard errors.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

from omegaconf import OmegaConf

from dcgan_xai.analysis.evidence import fid_by_epoch
from dcgan_xai.analysis.markdown import pm, table
from dcgan_xai.runs.layout import RunDir
from dcgan_xai.runs.tables import QUALITY


def runs_by_precision(sweep: Path) -> dict[str, dict[int, dict]]:
    """{precision: {seed: {epoch: Fid}}} from the runs under ``sweep``."""
    out: dict[str, dict[int, dict]] = {}
    for config in sorted(sweep.glob("**/config.yaml")):
        cfg = OmegaConf.load(config)
        rows = QUALITY.read(RunDir(config.parent))
        if rows:
            out.setdefault(str(cfg.trainer.precision), {})[int(cfg.seed)] = fid_by_epoch(rows)
    return out


def mean_se(values: list[float]) -> tuple[float, float]:
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return statistics.fmean(values), se


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("sweep", type=Path)
    p.add_argument("--a", default="32-true")
    p.add_argument("--b", default="bf16-mixed")
    args = p.parse_args()
    groups = runs_by_precision(args.sweep)
    if args.a not in groups or args.b not in groups:
        sys.exit(f"{args.sweep} holds runs of {sorted(groups)}; both {args.a} and {args.b} needed")
    a, b = groups[args.a], groups[args.b]
    epochs = sorted(set.intersection(*(set(f) for f in [*a.values(), *b.values()])))
    rows, outside, unknown = [], [], []
    for e in epochs:
        ma, sa = mean_se([a[s][e].mean for s in sorted(a)])
        mb, sb = mean_se([b[s][e].mean for s in sorted(b)])
        se = math.hypot(sa, sb)
        if math.isnan(se):  # fewer than 2 seeds of a path: no spread to judge by
            unknown.append(e)
        elif abs(mb - ma) > 2 * se:
            outside.append(e)
        cells = [f"{a[s][e].mean:.1f} ± {a[s][e].sd:.1f}" for s in sorted(a)]
        cells += [f"{b[s][e].mean:.1f} ± {b[s][e].sd:.1f}" for s in sorted(b)]
        rows.append([e, *cells, pm(ma, sa), pm(mb, sb), pm(mb - ma, se)])
    headers = ["epoch", *(f"{args.a} seed {s}" for s in sorted(a))]
    headers += [*(f"{args.b} seed {s}" for s in sorted(b))]
    headers += [f"{args.a} mean ± SE", f"{args.b} mean ± SE", "difference ± SE"]
    print("\n".join(table(headers, rows)))
    last = epochs[-1] if epochs else None
    agree = last is not None and last not in outside and len(outside) <= 1
    verdict = "undecided (fewer than 2 seeds)" if unknown else "agree" if agree else "differ"
    print(
        f"\nepochs {epochs[0]}-{last}; difference outside 2 SE at epochs {outside or 'none'}; "
        f"verdict: {verdict} (rule: last epoch within 2 SE and at most one other epoch outside)"
    )


if __name__ == "__main__":
    main()
