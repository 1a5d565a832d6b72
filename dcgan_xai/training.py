"""``train(cfg, run_dir)``: build the data, model, callbacks and trainer from a config, and fit."""

from __future__ import annotations

import copy
import json
import os
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
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException
from omegaconf import DictConfig, OmegaConf

from dcgan_xai.callbacks.gradcam import GradCamCallback
from dcgan_xai.callbacks.progress import EpochLine, StepBar, TimeLimit, TimeLimitReached
from dcgan_xai.callbacks.quality import QualityCallback
from dcgan_xai.config import TRAIN_RANGES, FidProtocol, TrainConfig, check_ranges
from dcgan_xai.data.exclusion import fingerprint, load_exclusion
from dcgan_xai.data.mnist import MNISTDataModule
from dcgan_xai.data.sources import ensure_mnist
from dcgan_xai.errors import Interrupted, UserError
from dcgan_xai.files import atomic_write_text, file_digest
from dcgan_xai.models.checkpoint import AtomicCheckpointIO, EpochCheckpoint
from dcgan_xai.models.module import DCGAN, Speed
from dcgan_xai.models.networks import IMAGE_SIZE, Generator, build_discriminator
from dcgan_xai.numerics import choose, single_process, trains_on_cuda
from dcgan_xai.runs import (
    RESUME_MAY_CHANGE,
    RunDir,
    flat_settings,
    has_artifacts,
    is_first_process,
    load_config,
    may_change,
    owned,
    record_invocation,
    remove_stale_temp_files,
    resume_checkpoint,
    run_log,
    run_record,
)
from dcgan_xai.xai.gradcam import BN_MODES, METHODS, layer_names

warnings.filterwarnings("ignore", ".*does not have many workers.*")


def validate(cfg: DictConfig) -> None:
    """Refuse values the schema's types cannot catch, before anything is written: the ranges of
    :data:`dcgan_xai.config.TRAIN_RANGES`, then what depends on several settings or on the
    machine."""
    check_ranges(cfg, TRAIN_RANGES)
    if cfg.data.image_size != IMAGE_SIZE:
        raise UserError(
            f"data.image_size={cfg.data.image_size} is not allowed; the DCGAN generator and "
            f"discriminators are built for {IMAGE_SIZE}x{IMAGE_SIZE} images (allowed: {IMAGE_SIZE})"
        )
    if Path(cfg.data.root).exists() and not Path(cfg.data.root).is_dir():
        raise UserError(f"data.root={cfg.data.root} is a file; it must be a directory")
    check_machine(cfg)
    sp = cfg.speed
    if sp.cuda_graph and sp.compile:
        raise UserError(
            "speed.cuda_graph=true with speed.compile=true is not allowed; choose one of them"
        )
    if sp.cuda_graph and not (
        trains_on_cuda(str(cfg.trainer.accelerator)) and single_process(cfg.trainer)
    ):
        raise UserError(
            "speed.cuda_graph=true is not allowed here; it needs one process on one CUDA GPU "
            f"(trainer.accelerator={cfg.trainer.accelerator}, devices={cfg.trainer.devices}, "
            f"CUDA available: {torch.cuda.is_available()})"
        )
    gc = cfg.callbacks.gradcam
    if gc.enabled:
        valid = layer_names(build_discriminator(cfg.model.arch, 1))
        for layer in gc.layers:
            if layer not in valid:
                raise UserError(
                    f"unknown Grad-CAM layer {layer!r} in callbacks.gradcam.layers; "
                    f"valid layers of model.arch={cfg.model.arch}: {', '.join(valid)}"
                )
        for key, values, allowed in (
            ("bn_modes", gc.bn_modes, BN_MODES),
            ("methods", gc.methods, METHODS),
        ):
            bad = [v for v in values if v not in allowed] or ([] if values else ["(empty)"])
            if bad:
                raise UserError(
                    f"callbacks.gradcam.{key}={bad[0]!r} is not allowed; "
                    f"allowed: {', '.join(allowed)}"
                )


def check_machine(cfg: DictConfig) -> None:
    """A GPU asked for where there is none, a half precision the CPU cannot train in, or nets
    too large for the machine's memory (counted on the meta device, nothing allocated)."""
    accelerator, precision = str(cfg.trainer.accelerator), str(cfg.trainer.precision)
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(f"trainer.accelerator={accelerator} but this machine has no CUDA GPU; "
                        "use trainer.accelerator=auto (or cpu)")  # fmt: skip
    if precision.startswith("16") and not trains_on_cuda(accelerator):
        raise UserError(f"trainer.precision={precision} needs a CUDA GPU; on the CPU use "
                        "bf16-mixed or 32-true (or auto)")  # fmt: skip
    m = cfg.model
    try:
        with torch.device("meta"):
            nets = [Generator(m.nz, m.ngf), build_discriminator(m.arch, m.ndf)]
        params = sum(p.numel() for net in nets for p in net.parameters())
        size = f"{params:,} parameters (about {16 * params / 2**30:,.0f} GiB with gradients and Adam's state)"
    except RuntimeError:  # a tensor size that overflows 64 bits
        params, size = 2**62, "more parameters than 64 bits can count"
    have = (torch.cuda.get_device_properties(0).total_memory if trains_on_cuda(accelerator)
            else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))  # fmt: skip
    if 16 * params > have:  # fp32 weights, gradients and Adam's two moments
        raise UserError(
            f"model.nz={m.nz}, ngf={m.ngf}, ndf={m.ndf} make {size}; this machine has "
            f"{have / 2**30:,.0f} GiB: choose smaller widths"
        )


def fields(node: Any, *drop: str) -> dict[str, Any]:
    """A config node as plain keyword arguments (the schemas name them as the constructors do)."""
    values = OmegaConf.to_container(node, resolve=True)
    assert isinstance(values, dict)
    return {str(k): v for k, v in values.items() if k not in drop}


def build_datamodule(cfg: DictConfig, exclude: torch.Tensor | None = None) -> MNISTDataModule:
    on_device = bool(cfg.speed.on_device)
    return MNISTDataModule(
        **fields(cfg.data, "exclude"), seed=cfg.seed, exclude=exclude, on_device=on_device
    )


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


def read_exclusion(cfg: DictConfig) -> tuple[torch.Tensor | None, dict[str, Any] | None]:
    """The indices ``data.exclude`` leaves out, and the record of it kept with the run."""
    if not cfg.data.exclude:
        return None, None
    files = ensure_mnist(cfg.data.root, list(cfg.data.sources), dict(cfg.data.checksums))
    expected = fingerprint(files)
    exclude = load_exclusion(cfg.data.exclude, expected)
    record = {
        "manifest": str(Path(cfg.data.exclude).resolve()),
        "manifest_md5": file_digest(cfg.data.exclude),
        "fingerprint": expected,
        "excluded": int(exclude.numel()),
    }
    return exclude, record


def check_same_exclusion(run: RunDir, exclusion: dict[str, Any] | None) -> None:
    """A resumed run trains on the images it started with: the exclusion manifest's content
    (its MD5, the data it was made on, the count it removes) must be the one recorded."""
    path = run.root / "exclusion.json"
    before = json.loads(path.read_text()) if path.is_file() else None
    if before is None or before == exclusion:
        return
    now = exclusion or {}
    changed = [
        k for k in ("manifest_md5", "fingerprint", "excluded") if before.get(k) != now.get(k)
    ]
    raise UserError(
        f"resume=true but the exclusion manifest {before['manifest']} is not the one this run "
        f"started with ({', '.join(changed)} changed: {before['excluded']} images excluded then, "
        f"{now.get('excluded', 0)} now); restore it, or train the new manifest in a new run dir"
    )


def check_probe_size(cfg: DictConfig, datamodule: MNISTDataModule) -> None:
    assert datamodule.test_set is not None
    size, available = cfg.callbacks.gradcam.probe_size, len(datamodule.test_set)
    if cfg.callbacks.gradcam.enabled and size > available:
        raise UserError(
            f"callbacks.gradcam.probe_size={size} is larger than the test split "
            f"({available} images); allowed: 1..{available}"
        )


def with_numeric_path(cfg: DictConfig, recorded: DictConfig | None = None) -> DictConfig:
    """A copy of ``cfg`` with ``trainer.precision=auto`` and the unset ``speed.*`` chosen for
    this machine (:mod:`dcgan_xai.numerics`) and the choice logged; a resumed run (``recorded``:
    its config) keeps the precision it was trained in."""
    cfg = copy.deepcopy(cfg)
    if recorded is not None and cfg.trainer.precision == "auto":
        cfg.trainer.precision = recorded.trainer.precision
    t = cfg.trainer
    path = choose(str(t.precision), cfg.speed, str(t.accelerator), single_process(t))
    cfg.trainer.precision = path.precision
    cfg.speed.channels_last, cfg.speed.on_device = path.channels_last, path.on_device
    cfg.speed.cuda_graph = path.cuda_graph
    rank_zero_info(path.describe())
    return cfg


def check_resumable(path: Path, ckpt: dict[str, Any], model: DCGAN) -> None:
    """Refuse a checkpoint (read from ``path``) of another architecture before fit starts."""
    saved = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if saved != ours:
        diff = sorted(set(saved.items()) ^ set(ours.items()))[0]
        raise UserError(
            f"checkpoint {path} is of another architecture than model={model.hparams['arch']} "
            f"ngf={model.hparams['ngf']} ndf={model.hparams['ndf']} (first difference: {diff[0]}); "
            "resume with the overrides it was trained with"
        )


def check_same_config(recorded: DictConfig, cfg: DictConfig) -> None:
    """Refuse a resume whose settings differ from the run's, but for :data:`RESUME_MAY_CHANGE`."""
    old = flat_settings(recorded)
    new = flat_settings(cfg)
    # a setting added to the schema after the run was made: the run trained at its default
    default = flat_settings(OmegaConf.structured(TrainConfig))
    old.update({k: default[k] for k in new.keys() - old.keys() if k in default})
    # a setting removed from the schema since (a speed knob that moved to speed.*): ignored
    old = {k: v for k, v in old.items() if k in default or k in new}
    diff = sorted(
        k for k in old.keys() | new.keys() if not may_change(k) and old.get(k) != new.get(k)
    )
    if diff:
        shown = "; ".join(f"{k}={new.get(k)!r} (the run's: {old.get(k)!r})" for k in diff[:4])
        raise UserError(
            f"resume=true with settings other than the run's: {shown}"
            f"{f' and {len(diff) - 4} more' if len(diff) > 4 else ''}; resume with the run's "
            f"settings (its config.yaml); only {', '.join(RESUME_MAY_CHANGE[1:])} may change"
        )
    if cfg.trainer.max_epochs < recorded.trainer.max_epochs:
        raise UserError(
            f"trainer.max_epochs={cfg.trainer.max_epochs} is lower than the run's "
            f"{recorded.trainer.max_epochs}; a resume may only raise it"
        )


def train(
    cfg: DictConfig, run_dir: str | Path, time_limit_s: float | None = None
) -> dict[str, Any]:
    """Train a DCGAN as ``cfg`` says, writing everything into ``run_dir``.

    Args:
        cfg: a composed ``train`` config (see ``dcgan_xai/conf/train.yaml``).
        run_dir: the run directory; with ``cfg.resume`` an existing run continues from
            its ``last.ckpt``.
        time_limit_s: stop after this many seconds of fit, keeping the epochs finished by then
            (a later ``resume=true`` continues); ``stopped`` in the result says so.

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
        return _train_owned(cfg, run, time_limit_s)


def _train_owned(cfg: DictConfig, run: RunDir, time_limit_s: float | None) -> dict[str, Any]:
    composed = cfg
    if not os.access(run.root, os.W_OK):
        raise UserError(f"run dir {run.root} is not writable; choose another hydra.run.dir")
    if is_first_process():
        for path in remove_stale_temp_files(run):
            rank_zero_warn(f"removed {path}, left by a write that was killed")
    # the other processes of a distributed run start after rank 0 has written into the dir
    if is_first_process() and has_artifacts(run) and not cfg.resume:
        raise UserError(
            f"run dir {run.root} already holds a run; pass resume=true to continue it, or "
            "choose another hydra.run.dir"
        )
    recorded: DictConfig | None = None
    if cfg.resume and (run.root / "config.yaml").is_file():
        recorded = load_config(run.root / "config.yaml")
    cfg = with_numeric_path(cfg, recorded)
    if recorded is not None:
        check_same_config(recorded, cfg)
    found = None
    if cfg.resume and (run.checkpoint_epochs() or run.last_checkpoint.is_file()):
        found = resume_checkpoint(run)
        if found is None:
            raise UserError(f"resume=true but no checkpoint in {run.checkpoints} can be read")
    exclude, exclusion = read_exclusion(cfg)
    if recorded is not None:
        check_same_exclusion(run, exclusion)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg, exclude)
    datamodule.setup()
    check_probe_size(cfg, datamodule)
    model = build_model(cfg)
    if found is not None:
        check_resumable(*found, model)
    callbacks = build_callbacks(cfg, run)
    if time_limit_s is not None:
        callbacks.append(TimeLimit(time.monotonic() + time_limit_s, cfg.trainer.log_every_n_steps))
    trainer = build_trainer(cfg, run, callbacks)
    if threading.current_thread() is threading.main_thread():
        # before the run's first file: Lightning's own SIGTERM handling takes over at fit
        # (finished epochs stay, exit 3); the entry point's handler covered the start
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if trainer.is_global_zero:
        atomic_write_text(run.root / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        if exclusion is not None:
            atomic_write_text(run.root / "exclusion.json", json.dumps(exclusion, indent=2) + "\n")
        record_invocation(run, composed)
    start = time.perf_counter()
    stopped = None
    try:
        with run_log(run) if trainer.is_global_zero else nullcontext():
            trainer.fit(model, datamodule=datamodule, ckpt_path=str(found[0]) if found else None)
    except TimeLimitReached as err:
        stopped = f"{err} after {time_limit_s:g} s"
        rank_zero_info(f"{run.root.name}: {stopped}; resume=true continues it")
    except SIGTERMException as err:
        raise Interrupted(
            f"interrupted by SIGTERM after {len(run.checkpoint_epochs())} checkpointed epochs "
            f"in {time.perf_counter() - start:.0f} s; continue with the same overrides and "
            f"hydra.run.dir={run.root} resume=true"
        ) from err
    seconds = time.perf_counter() - start
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("epoch/")}
    return {
        "run_dir": str(run.root),
        "tensorboard": str(run.tensorboard),
        "epochs": len(run.checkpoint_epochs()),
        "stopped": stopped,
        "train_images": len(datamodule.train_set) if datamodule.train_set is not None else 0,
        "seconds": seconds,
        "metrics": metrics,
    }
