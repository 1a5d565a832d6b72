"""Entry point: ``python -m dcgan_xai.aggregate sweep_dir=multirun/<date>/<time>``."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from dcgan_xai.analyze import settings_from
from dcgan_xai.errors import UserError, check_overrides, report_user_errors


def run(cfg: DictConfig) -> str:
    from dcgan_xai.analysis.aggregate import aggregate_sweep

    if cfg.sweep_dir is None:
        raise UserError("sweep_dir is required: python -m dcgan_xai.aggregate sweep_dir=<dir>")
    result = aggregate_sweep(cfg.sweep_dir, settings_from(cfg), cfg.reanalyze)
    return f"aggregated {len(result['jobs'])} jobs: {result['dir']}/summary.md"


@hydra.main(version_base="1.3", config_path="../conf", config_name="aggregate")
def main(cfg: DictConfig) -> None:
    print(report_user_errors(lambda: run(cfg)))


if __name__ == "__main__":
    check_overrides("aggregate")
    main()
