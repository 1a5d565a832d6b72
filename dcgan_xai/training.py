"""``train(cfg, run_dir)``: build the data, model, callbacks and trainer from a config, and fit."""

from __future__ import annotations

import signal
import threading
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException
from omegaconf import DictConfig, OmegaConf

from dcgan_xai.callbacks.gradcam import GradCamCallback
from dcgan_xai.callbacks.progress import (
    EpochLine,
    StepBar,
    StopOnEvent,
    TimeLimit,
    TimeLimitReached,
)
from dcgan_xai.callbacks.quality import QualityCallback
from dcgan_xai.checks import check_probe_size, validate
from dcgan_xai.config import FidProtocol
from dcgan_xai.data.mnist import MNISTDataModule
from dcgan_xai.errors import Interrupted, UserError
from dcgan_xai.models.checkpoint import AtomicCheckpointIO, EpochCheckpoint
from dcgan_xai.models.module import DCGAN, Speed
from dcgan_xai.runs.layout import RunDir
from dcgan_xai.runs.ownership import owned, record_start, run_log
from dcgan_xai.runs.resume import admit, check_resumable, run_record
from dcgan_xai.state import GLOBAL_RNG

warnings.filterwarnings("ignore", ".*does not have many workers.*")


def fields(node: Any, *drop: str) -> dict[str, Any]:
    """A config node as plain keyword arguments (the schemas name them as the constructors do)."""
    values = OmegaConf.to_container(node, resolve=True)
    assert isinstance(values, dict)
    return {str(k): v for k, v in values.items() if k not in drop}


def build_datamodule(cfg: DictConfig, exclude: torch.Tensor | None = None) -> MNISTDataModule:
    return MNISTDataModule.from_config(cfg, exclude, on_device=bool(cfg.speed.on_device))


def build_model(cfg: DictConfig) -> DCGAN:
    sp = cfg.speed
    speed = Speed(bool(sp.channels_last), bool(sp.compile), bool(sp.cuda_graph))
    return DCGAN(**fields(cfg.model), seed=cfg.seed, speed=speed)


def build_callbacks(cfg: DictConfig, run: RunDir) -> list[L.Callback]:
    callbacks: list[L.Callback] = [EpochLine(run.root.name)]
    if cfg.trainer.enable_progress_bar:
        callbacks.append(StepBar())
    gc, q = cfg.callbacks.gradcam, cfg.callbacks.quality
    if gc.enabled:
        callbacks.append(GradCamCallback(run.root, **fields(gc, "enabled"), seed=cfg.seed))
    if q.enabled:
        protocol = FidProtocol(**fields(q, "enabled", "every_n_epochs"))
        callbacks.append(QualityCallback(run.root, protocol, q.every_n_epochs))
    callbacks.append(EpochCheckpoint(run.checkpoints))
    return callbacks


def build_trainer(cfg: DictConfig, run: RunDir, callbacks: list[L.Callback]) -> L.Trainer:
    logger = (
        TensorBoardLogger(save_dir=str(run.root), name="", version=run.tensorboard.name)
        if cfg.logger.tensorboard
        else False
    )
    settings = fields(cfg.trainer)
    if settings["strategy"] == "ddp":
        # each of the two backward passes of a GAN step leaves the other network unused
        settings["strategy"] = DDPStrategy(find_unused_parameters=True)
    try:
        return L.Trainer(
            **settings,
            logger=logger,
            callbacks=callbacks,
            default_root_dir=str(run.root),
            use_distributed_sampler=False,
            num_sanity_val_steps=0,
            plugins=[AtomicCheckpointIO(run_record(cfg))],
        )
    except (MisconfigurationException, ValueError, TypeError, RuntimeError) as err:  # Lightning
        line = " ".join(str(err).split())[:300]
        raise UserError(f"the trainer.* settings are refused by Lightning: {line}") from err


def train(
    cfg: DictConfig,
    run_dir: str | Path,
    time_limit_s: float | None = None,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Train a DCGAN as ``cfg`` says, writing everything into ``run_dir``.

    Args:
        cfg: a composed ``train`` config (see ``dcgan_xai/conf/train.yaml``).
        run_dir: the run directory; with ``cfg.resume`` an existing run continues from
            its ``last.ckpt``.
        time_limit_s: stop after this many seconds of fit, keeping the epochs finished by then
            (a later ``resume=true`` continues); ``stopped`` in the result says so.
        stop: once set, training stops at its next step as on SIGTERM (:class:`Interrupted`):
            how a training in a thread other than the main one, which alone gets signals, stops.

    Returns:
        ``run_dir``, ``tensorboard`` (log dir), ``epochs`` trained, ``seconds`` of fit,
        ``stopped`` (``None``, or why training ended before ``trainer.max_epochs``) and the
        last epoch's ``metrics`` as floats.
    """
    run = RunDir(run_dir)
    validate(cfg)
    if run.root.exists() and not run.root.is_dir():
        raise UserError(f"run dir {run.root} is a file, not a folder; choose another hydra.run.dir")
    with owned(run):
        return _train_owned(cfg, run, time_limit_s, stop)


def _train_owned(
    cfg: DictConfig, run: RunDir, time_limit_s: float | None, stop: threading.Event | None
) -> dict[str, Any]:
    start = admit(cfg, run)
    datamodule = build_datamodule(start.cfg, start.exclude)
    datamodule.setup()  # its draws come from its own seeded generators
    with GLOBAL_RNG:  # the nets are drawn from the global RNG (trainings in threads take turns)
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        model = build_model(start.cfg)
    check_probe_size(start.cfg, datamodule)
    if start.checkpoint is not None:
        check_resumable(*start.checkpoint, model)
    callbacks = build_callbacks(start.cfg, run)
    if time_limit_s is not None:
        callbacks.append(TimeLimit(time.monotonic() + time_limit_s, cfg.trainer.log_every_n_steps))
    if stop is not None:
        callbacks.append(StopOnEvent(stop))
    trainer = build_trainer(start.cfg, run, callbacks)
    if threading.current_thread() is threading.main_thread():
        # before the run's first file: Lightning's own SIGTERM handling takes over at fit
        # (finished epochs stay, exit 3); the entry point's handler covered the start
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    rank_zero_info(start.numeric_path)  # the start is accepted: every check has passed
    if start.exclusion is not None:
        rank_zero_info(f"data: {start.exclusion['excluded']} training images left out, as "
                       f"{start.exclusion['manifest']} flags them")  # fmt: skip
    if trainer.is_global_zero:
        record_start(run, start.cfg, start.exclusion, composed=cfg)
    began, stopped = time.perf_counter(), None
    ckpt_path = str(start.checkpoint[0]) if start.checkpoint else None
    try:
        with run_log(run) if trainer.is_global_zero else nullcontext():
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    except TimeLimitReached as err:
        stopped = f"{err} after {time_limit_s:g} s"
        rank_zero_info(f"{run.root.name}: {stopped}; resume=true continues it")
    except SIGTERMException as err:
        raise Interrupted(
            f"interrupted by SIGTERM after {len(run.checkpoint_epochs())} checkpointed epochs "
            f"in {time.perf_counter() - began:.0f} s; continue with the same overrides and "
            f"hydra.run.dir={run.root} resume=true"
        ) from err
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("epoch/")}
    return {
        "run_dir": str(run.root),
        "tensorboard": str(run.tensorboard),
        "epochs": len(run.checkpoint_epochs()),
        "stopped": stopped,
        "train_images": len(datamodule.train_set) if datamodule.train_set is not None else 0,
        "seconds": time.perf_counter() - began,
        "metrics": metrics,
    }
