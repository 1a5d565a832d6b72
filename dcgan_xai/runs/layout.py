"""The one owner of a run directory: its layout, its tables and artifacts, loading a run (its
config, data, probe and checkpoints), and who may write into it (one training at a time,
holding ``.lock``; a resume only where a run exists). Atomic writes live in :mod:`dcgan_xai.files`.

A run directory looks like::

    <run>/.hydra/                    Hydra's record of the latest accepted start
    <run>/train.log                  the log of every accepted start
    <run>/checkpoints/epoch=NNN.ckpt  one per trained epoch (NNN = epochs trained), plus last.ckpt
    <run>/checkpoints/sha256.json     each checkpoint's SHA-256, recorded as it was written
    <run>/tensorboard/                TensorBoard event files
    <run>/probe.pt                    the fixed probe batch
    <run>/gradcam/epoch_NNN.pt        maps and scores of the probe after NNN epochs
    <run>/gradcam/scores.csv          one row per (epoch, method, BN mode, layer)
    <run>/quality/scores.csv          FID/KID per epoch (when the quality callback is on)
    <run>/analysis/ , <run>/curation/<name>/
    <run>/.lock                      held by the training that owns the dir
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dcgan_xai.data.probe import Probe
from dcgan_xai.errors import UserError
from dcgan_xai.files import TEMP_SUFFIX, atomic_torch_save, safe_torch_load

CKPT_RE = re.compile(r"^epoch=(\d+)\.ckpt$")
GRADCAM_RE = re.compile(r"^epoch_(\d+)\.pt$")


class RunDir:
    """Paths inside one training run directory."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.checkpoints = self.root / "checkpoints"
        self.tensorboard = self.root / "tensorboard"
        self.probe = self.root / "probe.pt"
        self.gradcam = self.root / "gradcam"
        self.scores_csv = self.gradcam / "scores.csv"
        self.quality_csv = self.root / "quality" / "scores.csv"
        self.analysis = self.root / "analysis"
        self.last_checkpoint = self.checkpoints / "last.ckpt"

    def checkpoint(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch={epoch:03d}.ckpt"

    def gradcam_file(self, epoch: int) -> Path:
        return self.gradcam / f"epoch_{epoch:03d}.pt"

    def curation(self, name: str) -> Path:
        return self.root / "curation" / name

    def checkpoint_epochs(self) -> list[int]:
        """Epochs (counted as epochs trained) that have a checkpoint, ascending."""
        return _numbered(self.checkpoints, CKPT_RE)

    def trained_epochs(self, command: str) -> list[int]:
        """:meth:`checkpoint_epochs`; a folder that is not a trained run is refused in one line."""
        if not self.root.is_dir():
            raise UserError(f"{command}: run_dir={self.root} does not exist; give a training's "
                            "run dir")  # fmt: skip
        if not (epochs := self.checkpoint_epochs()):
            raise UserError(f"{command}: {self.checkpoints} holds no epoch=NNN.ckpt checkpoints")
        return epochs

    def gradcam_epochs(self) -> list[int]:
        return _numbered(self.gradcam, GRADCAM_RE)


def _numbered(folder: Path, pattern: re.Pattern[str]) -> list[int]:
    if not folder.is_dir():
        return []
    found = (pattern.match(p.name) for p in folder.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


RUN_ARTIFACTS = ("checkpoints", "probe.pt", "gradcam", "quality", "config.yaml")


def has_artifacts(run: RunDir) -> bool:
    """Whether ``run`` holds anything a training wrote (then only ``resume=true`` may use it)."""
    return any((run.root / name).exists() for name in RUN_ARTIFACTS)


def remove_stale_temp_files(run: RunDir) -> list[Path]:
    """Delete the temporary files of the training's atomic writes that a killed training left
    (``.<name>.<random>.dcgan_xai.tmp``) in the folders a training writes: the run dir itself,
    ``.hydra/``, ``checkpoints/``, ``gradcam/`` and ``quality/``. Anyone else's files stay, and
    so do those of an ``analyze`` or ``curate`` writing into ``analysis/`` or ``curation/``."""
    folders = [run.root, run.root / ".hydra", run.checkpoints, run.gradcam, run.quality_csv.parent]
    stale = [p for f in folders for p in f.glob(f".*{TEMP_SUFFIX}") if p.is_file()]
    for path in stale:
        path.unlink()
    return stale


def save_probe(run: RunDir, probe: Probe) -> None:
    atomic_torch_save(probe.to_dict(), run.probe)


def load_probe(run: RunDir) -> Probe:
    data = safe_torch_load(run.probe, "probe file")
    try:
        return Probe.from_dict(data)
    except (KeyError, TypeError) as err:
        raise UserError(
            f"probe file {run.probe} lacks {err}; it was not written by dcgan_xai"
        ) from err


def save_gradcam_epoch(run: RunDir, epoch: int, record: dict[str, Any]) -> None:
    atomic_torch_save(record, run.gradcam_file(epoch))


def load_gradcam_epoch(run: RunDir, epoch: int) -> dict[str, Any]:
    return safe_torch_load(run.gradcam_file(epoch), "Grad-CAM file")


def run_config(run: RunDir) -> Any:
    """The resolved config a run was trained with."""
    path = run.root / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run.root} has no config.yaml; is it a dcgan_xai run directory?")
    return load_config(path)


def load_config(path: Path) -> DictConfig:
    """A config file, or one error line naming it when it is not a readable YAML mapping."""
    import yaml
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = OmegaConf.load(path)
    except (yaml.YAMLError, OmegaConfBaseException, UnicodeDecodeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path} is not a readable config ({first})") from err
    if not isinstance(cfg, DictConfig):
        raise UserError(f"{path} is not a readable config (not a mapping)")
    return cfg
