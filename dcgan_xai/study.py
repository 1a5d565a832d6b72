"""Entry point: ``python -m dcgan_xai.study +study=claim``."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from dcgan_xai.config import StudySettings
from dcgan_xai.errors import check_overrides, report_user_errors


def run(cfg: DictConfig) -> str:
    from dcgan_xai.analysis.study import run_study

    result = run_study(StudySettings.from_config(cfg))
    planned = [f"{d['variant']} {d['decision']}" for d in result["decisions"] if d["planned"]]
    return f"{'; '.join(planned)}; report: {result['dir']}/REPORT.md"


@hydra.main(version_base="1.3", config_path="conf", config_name="study")
def main(cfg: DictConfig) -> None:
    print(report_user_errors(lambda: run(cfg)))


if __name__ == "__main__":
    check_overrides("study")
    main()
