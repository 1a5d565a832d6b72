"""Entry point: ``python -m dcgan_xai.train +experiment=mnist64``."""

from __future__ import annotations

import os
import signal
import sys

_imported = False  # until the imports below are done, an exception would break them half-way


def _sigterm_before_training(signum: int, frame: object) -> None:
    print("error: interrupted by SIGTERM before training started; nothing was trained: start it "
          "again with the same overrides", file=sys.stderr, flush=True)  # fmt: skip
    if not _imported:
        os._exit(3)
    sys.exit(3)  # through main's clean-up of the run dir Hydra made


if __name__ == "__main__":  # from the first line: SIGTERM while starting exits 3 with its line
    signal.signal(signal.SIGTERM, _sigterm_before_training)

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dcgan_xai.config import check_overrides
from dcgan_xai.errors import report_user_errors
from dcgan_xai.runs.ownership import discard_unstarted_run
from dcgan_xai.seeds import train_seeds
from dcgan_xai.training import train

_imported = True


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run_dir = HydraConfig.get().runtime.output_dir
    try:
        if cfg.seeds is None:
            results = [report_user_errors(lambda: train(cfg, run_dir))]
        else:
            results = report_user_errors(lambda: train_seeds(cfg, run_dir))
    except SystemExit:
        discard_unstarted_run(run_dir)
        raise
    for result in results:
        m = result["metrics"]
        losses = ", ".join(f"{k.removeprefix('epoch/')}={v:.3f}" for k, v in sorted(m.items()))
        print(
            f"trained {result['epochs']} epochs in {result['seconds']:.0f} s ({losses}); run "
            f"dir: {result['run_dir']}; TensorBoard: tensorboard --logdir {result['tensorboard']}"
        )


def experiment_without_plus(args: list[str]) -> list[str]:
    """``+experiment=X`` (the form older docs and scripts use) as ``experiment=X``: the primary
    config names the experiment group, so Hydra would refuse to append a second value."""
    return [a.removeprefix("+") if a.startswith("+experiment=") else a for a in args]


if __name__ == "__main__":
    sys.argv[1:] = experiment_without_plus(sys.argv[1:])
    check_overrides("train")
    main()
