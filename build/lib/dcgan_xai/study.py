"""Entry point: ``python -m dcgan_xai.study -m +study=claim`` (or without ``-m``: one process).

With ``-m`` Hydra runs one job per experiment and seed of the study (``conf/study.yaml`` sweeps
``job.experiment`` over ``${experiments}`` and ``job.seed`` over ``${seeds}``) on any launcher
(``hydra/launcher=slurm`` or ``joblib``); when all have returned, :class:`ReportAfterSweep`
writes the report. Without ``-m`` the jobs run one after another in this process, then the
report is written.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from typing import Any

import hydra
import lightning.pytorch  # noqa: F401  before Hydra sets up logging: Lightning's lines print once
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from dcgan_xai.config import StudyJob, StudySettings, check_overrides
from dcgan_xai.errors import report_user_errors


def run(cfg: DictConfig) -> str:
    from dcgan_xai.analysis.study import run_study

    result = run_study(StudySettings.from_config(cfg))
    if "status" in result:  # one job of the multirun
        return "; ".join(f"{d}: {s}" for d, s in result["status"].items())
    return summary(result)


def summary(result: dict[str, Any]) -> str:
    planned = [
        f"{exp}: {d['variant']} {d['decision']}"
        for exp, r in result["recipes"].items()
        for d in [*r["decisions"], *(x for c in r["curation"].values() for x in c["decisions"])]
        if d["planned"]
    ]
    return f"{'; '.join(planned)}; report: {result['dir']}/REPORT.md"


# The study's lock, held by the launcher's process from the multirun's start to its report; kept
# here, not on the callback, which the launcher pickles with each job.
HELD = ExitStack()


class ReportAfterSweep(Callback):
    """Hydra callback: once every job of the study's multirun has returned, collect the runs
    and write the report (the jobs only train and compute their own tables)."""

    def __init__(self) -> None:
        self.started = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from dcgan_xai.analysis.study import study_lock

        self.started = time.time()
        study = StudySettings.from_config(config)
        report_user_errors(lambda: HELD.enter_context(study_lock(study)))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from dcgan_xai.analysis.study import report

        study = StudySettings.from_config(config)
        study.job = StudyJob()
        launcher = str(config.hydra.launcher.get("_target_", "")).rsplit(".", 1)[-1]
        how = f"Hydra multirun, {launcher or 'its launcher'}"
        with HELD:
            print(report_user_errors(lambda: summary(report(study, print, self.started, how))))


@hydra.main(version_base="1.3", config_path="conf", config_name="study")
def main(cfg: DictConfig) -> None:
    print(report_user_errors(lambda: run(cfg)))


if __name__ == "__main__":
    check_overrides("study")
    main()
