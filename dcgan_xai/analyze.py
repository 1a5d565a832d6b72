"""Entry point: ``python -m dcgan_xai.analyze run_dir=<run dir>``."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from dcgan_xai.config import AnalysisSettings, check_overrides, settings_in
from dcgan_xai.errors import UserError, report_user_errors


def run(cfg: DictConfig) -> str:
    from dcgan_xai.analysis.report import analyze_run

    if cfg.run_dir is None:
        raise UserError("run_dir is required: python -m dcgan_xai.analyze run_dir=<run dir>")
    result = analyze_run(cfg.run_dir, settings_in(AnalysisSettings, cfg))
    line = f"selected epoch {result['selected_epoch']} of {result['last_epoch']}"
    verdict = result.get("verdict")
    if verdict:
        line += f"; {verdict['statement']}"
    return f"{line} Report: {cfg.run_dir}/analysis/selection.md"


@hydra.main(version_base="1.3", config_path="conf", config_name="analyze")
def main(cfg: DictConfig) -> None:
    print(report_user_errors(lambda: run(cfg)))


if __name__ == "__main__":
    check_overrides("analyze")
    main()
