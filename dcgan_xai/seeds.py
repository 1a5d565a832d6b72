"""Several seeds of one recipe trained at once in one process: ``seeds=[0,1,2,3]``.

Each seed is an ordinary training (:func:`dcgan_xai.training.train`) of the config with that
seed, into ``<run dir>/seed_<s>``, in a thread of its own and, on a GPU, on a CUDA stream of its
own: the GPU runs the seeds' steps side by side where one training alone leaves it idle. Each
seed's run dir is what training that seed alone writes (config, checkpoints, probe, tables,
TensorBoard, log), owned and resumed as any run; it may later be resumed alone, as a single run.
What a training does with process-wide state (torch's global RNG: building the nets, KID,
explanations) takes turns under :data:`dcgan_xai.state.GLOBAL_RNG`.
"""

from __future__ import annotations

import copy
import signal
import threading
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, open_dict

from dcgan_xai.checks import validate
from dcgan_xai.errors import Interrupted, UserError
from dcgan_xai.numerics import trains_on_cuda
from dcgan_xai.runs.layout import RunDir
from dcgan_xai.runs.resume import admit
from dcgan_xai.training import train


def seed_dir(root: str | Path, seed: int) -> Path:
    return Path(root) / f"seed_{seed}"


def seed_config(cfg: DictConfig, seed: int) -> DictConfig:
    """The config of one seed: ``cfg`` with ``seed`` set and no ``seeds`` (a single run's)."""
    one = copy.deepcopy(cfg)  # nested nodes too: an interpolation resolves in this seed's config
    with open_dict(one):
        one.seed, one.seeds = seed, None
    return one


def train_seeds(cfg: DictConfig, root: str | Path) -> list[dict[str, Any]]:
    """Train every seed of ``cfg.seeds`` at once, seed ``s`` into ``<root>/seed_<s>``.

    Every seed's start is checked (settings, and with ``resume`` its run) before any trains. A
    seed that fails (diverged, say) does not stop the others; the error names each failed seed.

    Returns:
        Each seed's :func:`~dcgan_xai.training.train` result, in the order of ``cfg.seeds``.
    """
    validate(cfg)
    jobs = {seed_dir(root, int(s)): seed_config(cfg, int(s)) for s in cfg.seeds}
    for run_dir, one in jobs.items():
        if run_dir.is_dir():
            admit(one, RunDir(run_dir))
    done = train_together(jobs, resume=f"the same overrides and hydra.run.dir={root} resume=true")
    failed = {
        s: r for s, r in zip(cfg.seeds, done.values(), strict=True) if isinstance(r, Exception)
    }
    if failed:
        lines = "; ".join(f"seed {s}: {' '.join(str(e).split())}" for s, e in failed.items())
        raise type(next(iter(failed.values())))(
            f"{len(failed)} of {len(jobs)} seeds failed ({lines}); the others finished"
        )
    return list(done.values())


def train_together(
    jobs: Mapping[Path, DictConfig],
    time_limit_s: float | None = None,
    resume: str = "the same settings and resume=true",
) -> dict[Path, Any]:
    """Train each config of ``jobs`` into its run dir, all at once: each in a thread of its own
    and, on a GPU, on a CUDA stream of its own (one training alone keeps the default stream).

    SIGTERM (or Ctrl+C) stops every training at its next step, keeping finished epochs.
    ``time_limit_s`` and the results are those of :func:`~dcgan_xai.training.train`; ``resume``
    says how to continue after a signal.

    Returns:
        Per run dir, its :func:`~dcgan_xai.training.train` result or the :class:`UserError`
        that ended it (refused, diverged).

    Raises:
        Interrupted: a signal stopped them.
        Exception: the first error that is not the input's (a disk error, a defect).
    """
    stop = threading.Event()
    results: dict[Path, Any] = {}

    def run(run_dir: Path, cfg: DictConfig) -> None:
        side = len(jobs) > 1 and trains_on_cuda(str(cfg.trainer.accelerator))
        stream = torch.cuda.Stream() if side else None
        try:
            with torch.cuda.stream(stream) if stream is not None else nullcontext():
                results[run_dir] = train(cfg, run_dir, time_limit_s, stop=stop)
        except BaseException as err:  # reported with the others' below
            results[run_dir] = err

    threads = [threading.Thread(target=run, args=job, name=job[0].name) for job in jobs.items()]
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set()) if main else None
    try:
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.5)  # a signal is handled in this thread between waits
    except KeyboardInterrupt:
        stop.set()
        for t in threads:
            t.join()
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    done = {d: results[d] for d in jobs}
    bugs = [
        r for r in done.values() if isinstance(r, BaseException) and not isinstance(r, UserError)
    ]
    if bugs:  # a disk error or a defect: as a single training raises it
        raise bugs[0]
    if stop.is_set():
        raise Interrupted(
            f"interrupted: every training stopped at its next step, finished epochs kept; "
            f"continue with {resume}"
        )
    return done
