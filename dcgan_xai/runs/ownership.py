"""Who may write into a run directory: one training at a time, holding ``<run>/.lock``; the
record (``.hydra/``) and log (``train.log``) of an accepted start.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dcgan_xai.errors import UserError
from dcgan_xai.files import atomic_write_text
from dcgan_xai.runs.layout import RunDir, has_artifacts

LOCK_NAME = ".lock"


def is_first_process() -> bool:
    """Rank 0 of a (possibly distributed) training: the process that owns the run dir."""
    return all(os.environ.get(k, "0") == "0" for k in ("LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


@contextmanager
def held_lock(lock: Path, refused: str) -> Iterator[None]:
    """Hold an exclusive lock on the file ``lock``, which names this process while it holds it;
    where another process holds it, refuse with ``refused`` (its ``{holder}`` filled in)."""
    with open(lock, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise UserError(refused.replace("{holder}", holder)) from None
        fh.seek(0)
        fh.truncate()
        fh.write(
            f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
        )
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def owned(run: RunDir) -> Iterator[None]:
    """Hold ``<run>/.lock`` for the duration; a second training on the same dir is refused."""
    if not is_first_process():
        yield
        return
    created = not run.root.exists()
    run.root.mkdir(parents=True, exist_ok=True)
    lock = run.root / LOCK_NAME
    refused = (f"run dir {run.root} is in use by another training ({{holder}}); wait for it to "
               "end or choose another hydra.run.dir")  # fmt: skip
    with held_lock(lock, refused):
        try:
            yield
        finally:
            if not has_artifacts(run):  # refused before training: leave nothing behind
                lock.unlink(missing_ok=True)
                if created and not any(run.root.iterdir()):
                    run.root.rmdir()


def discard_unstarted_run(run_dir: str | Path) -> None:
    """Remove the run dir of a start that was refused, if it is empty: Hydra creates the dir
    before any check runs, and writes nothing into it (``hydra.output_subdir`` is null); what a
    start writes comes after it was accepted (:func:`record_invocation`)."""
    root = Path(run_dir)
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()


def record_invocation(run: RunDir, composed: DictConfig) -> None:
    """Hydra's record of this accepted start in ``<run>/.hydra/`` (``config.yaml`` as composed,
    ``hydra.yaml``, ``overrides.yaml``), written by the training itself once it owns the run, so
    a refused start never changes a run's record. Only for the Hydra app whose output dir is
    this run (not a study job training into a dir of its own)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hydra = HydraConfig.get()
    if Path(hydra.runtime.output_dir).resolve() != run.root.resolve():
        return
    out = run.root / ".hydra"
    atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(composed))
    atomic_write_text(out / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra})))
    atomic_write_text(out / "overrides.yaml", OmegaConf.to_yaml(hydra.overrides.task))


def record_start(run: RunDir, cfg: Any, exclusion: dict[str, Any] | None, composed: Any) -> None:
    """The record of an accepted start, written once it owns the run: ``config.yaml`` (the
    resolved settings, numeric path included), ``exclusion.json`` and Hydra's ``.hydra/``."""
    atomic_write_text(run.root / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    if exclusion is not None:
        atomic_write_text(run.root / "exclusion.json", json.dumps(exclusion, indent=2) + "\n")
    record_invocation(run, composed)


@contextmanager
def run_log(run: RunDir) -> Iterator[None]:
    """Append this thread's log records to ``<run>/train.log`` while a training it owns runs
    (trainings in several threads of one process each keep their own log)."""
    handler = logging.FileHandler(run.root / "train.log")
    thread = threading.get_ident()
    handler.addFilter(lambda record: record.thread == thread)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    lightning = logging.getLogger("lightning.pytorch")  # it stops propagating when it has its own
    loggers = [logging.getLogger(), *([] if lightning.propagate else [lightning])]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        handler.close()
