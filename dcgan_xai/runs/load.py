"""Loading a run: its data, its probe and a DCGAN from one of its checkpoints."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from dcgan_xai.data.exclusion import fingerprint, load_exclusion
from dcgan_xai.data.mnist import MNISTDataModule
from dcgan_xai.data.probe import Probe, make_probe
from dcgan_xai.errors import UserError
from dcgan_xai.models.module import DCGAN
from dcgan_xai.runs.layout import RunDir, load_probe, run_config, save_probe
from dcgan_xai.runs.resume import load_checkpoint


def datamodule_for_run(run: RunDir, trained: bool = False, setup: bool = True) -> MNISTDataModule:
    """The run's data as configured: the full splits, or with ``trained`` the train images the
    run actually trained on (its ``data.limit`` subset, less its exclusion manifest); without
    ``setup`` no split is read yet (its files and caches are only named)."""
    return datamodule_for_config(run_config(run), trained, setup)


def datamodule_for_config(cfg: Any, trained: bool = False, setup: bool = True) -> MNISTDataModule:
    """The data of a training config (see :func:`datamodule_for_run`)."""
    dm = MNISTDataModule.from_config(cfg, limit=trained)
    if trained and cfg.data.get("exclude"):
        dm.exclude = load_exclusion(cfg.data.exclude, fingerprint(dm.files()))
    if setup:
        dm.setup()
    return dm


def load_module(path: Path) -> DCGAN:
    """A DCGAN from a checkpoint (checked by :func:`load_checkpoint`), with a one-line error for
    a damaged or foreign file."""
    ckpt = load_checkpoint(path)
    known = inspect.signature(DCGAN).parameters  # settings of older versions are left out
    model = DCGAN(**{k: v for k, v in ckpt["hyper_parameters"].items() if k in known})
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[1:2] or [str(err)]
        raise UserError(
            f"checkpoint {path} does not match the architecture it names "
            f"({ckpt['hyper_parameters']}): {first[0].strip()}"
        ) from err
    return model.eval()


def ensure_probe(run: RunDir) -> Probe:
    """The run's probe; made from its test split (seeded as training would) and saved if the
    run has none."""
    if run.probe.is_file():
        return load_probe(run)
    cfg = run_config(run)
    dm = datamodule_for_config(cfg)
    assert dm.test_set is not None
    gc = cfg.callbacks.gradcam
    probe = make_probe(
        dm.test_set.images, dm.test_set.labels, gc.probe_size, cfg.seed, cfg.model.nz
    )
    save_probe(run, probe)
    return probe
