"""Entry point: ``python -m dcgan_xai.aggregate sweep_dir=multirun/<date>/<time>`` (one table
across a sweep) or ``compare=[<run dir>,<run dir>]`` (runs side by side)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from dcgan_xai.config import AnalysisSettings, check_overrides, settings_in
from dcgan_xai.errors import UserError, report_user_errors


def run(cfg: DictConfig) -> str:
    from dcgan_xai.analysis.aggregate import aggregate_sweep, compare_runs

    settings = settings_in(AnalysisSettings, cfg)
    if cfg.compare:
        result = compare_runs(list(cfg.compare), settings, cfg.out_dir)
        return f"compared {len(result['rows'])} runs: {result['dir']}/compare.md"
    if cfg.sweep_dir is None:
        raise UserError(
            "sweep_dir or compare is required: python -m dcgan_xai.aggregate sweep_dir=<dir>, "
            "or compare=[<run dir>,<run dir>,...]"
        )
    result = aggregate_sweep(cfg.sweep_dir, settings, cfg.reanalyze)
    return f"aggregated {len(result['jobs'])} jobs: {result['dir']}/summary.md"


@hydra.main(version_base="1.3", config_path="conf", config_name="aggregate")
def main(cfg: DictConfig) -> None:
    print(report_user_errors(lambda: run(cfg)))


if __name__ == "__main__":
    check_overrides("aggregate")
    main()
