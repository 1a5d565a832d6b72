"""Entry point: ``python -m dcgan_xai.curate run_dir=<run dir> epoch=selected``."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from dcgan_xai.config import CurationSettings, check_overrides, settings_in
from dcgan_xai.errors import UserError, report_user_errors


def run(cfg: DictConfig) -> str:
    from dcgan_xai.analysis.curation import curate_run

    if cfg.run_dir is None:
        raise UserError("run_dir is required: python -m dcgan_xai.curate run_dir=<run dir>")
    s = curate_run(cfg.run_dir, settings_in(CurationSettings, cfg))
    return (
        f"flagged {s['flagged']} of the {s['scored']} images the run trained on (of {s['total']} "
        f"in the split; coverage > "
        f"{s['settings']['flag_threshold']}) in {s['seconds']:.1f} s; manifest: {s['dir']}/manifest.csv"
    )


@hydra.main(version_base="1.3", config_path="conf", config_name="curate")
def main(cfg: DictConfig) -> None:
    print(report_user_errors(lambda: run(cfg)))


if __name__ == "__main__":
    check_overrides("curate")
    main()
