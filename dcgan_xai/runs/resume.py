"""The resume policy: what a resumed run may change, the checkpoint it continues from (checked
against its digest and its run), and the refusals of a resume that would mix runs.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn
from omegaconf import DictConfig, OmegaConf

from dcgan_xai.config import TrainConfig
from dcgan_xai.data.exclusion import read_exclusion
from dcgan_xai.errors import UserError
from dcgan_xai.files import safe_torch_load
from dcgan_xai.models.checkpoint import DIGESTS, RECORD_KEY
from dcgan_xai.numerics import with_numeric_path
from dcgan_xai.runs.layout import RunDir, has_artifacts, load_config, remove_stale_temp_files
from dcgan_xai.runs.ownership import is_first_process

# Keys a resumed run may change: they cannot change its results (and every speed.* key).
RESUME_MAY_CHANGE = (
    "resume",
    "speed.*",
    "trainer.max_epochs",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "callbacks.gradcam.log_images",
    "data.root",
    "data.sources",
    "data.cache_dir",
)


# settings that earlier versions named otherwise, as today's names (so their runs resume)
RENAMED = {f"callbacks.quality.{old}": f"callbacks.quality.fid_{new}"
           for old, new in (("samples", "samples"), ("fresh_draws", "draws"), ("seed", "seed"))}  # fmt: skip


def flat_settings(cfg: Any) -> dict[str, Any]:
    """A config's resolved settings as ``{"model.lr": 0.0002, ...}`` (under today's names)."""

    def flat(node: Any, prefix: str) -> dict[str, Any]:
        if not isinstance(node, dict):
            return {prefix[:-1]: node}
        return {
            k: v for key, value in node.items() for k, v in flat(value, f"{prefix}{key}.").items()
        }

    return {
        RENAMED.get(k, k): v for k, v in flat(OmegaConf.to_container(cfg, resolve=True), "").items()
    }


def may_change(key: str) -> bool:
    return any(
        key == allowed or (allowed.endswith("*") and key.startswith(allowed[:-1]))
        for allowed in RESUME_MAY_CHANGE
    )


def run_record(cfg: Any) -> dict[str, Any]:
    """What identifies a run's training: every setting a resume may not change."""
    return {k: v for k, v in flat_settings(cfg).items() if not may_change(k)}


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A training checkpoint's content, checked against the SHA-256 recorded when it was written
    (where its folder has :data:`DIGESTS`; runs of older versions have none) and against the run
    whose ``checkpoints/`` it lies in (that run's ``config.yaml``)."""
    table = path.parent / DIGESTS
    recorded = json.loads(table.read_text()).get(path.name, "") if table.is_file() else None
    ckpt = safe_torch_load(path, "checkpoint", sha256=recorded)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise UserError(f"checkpoint {path} was not written by dcgan_xai's training")
    config = path.parent.parent / "config.yaml"
    saved, ours = (
        ckpt.get(RECORD_KEY) or {},
        run_record(load_config(config)) if config.is_file() else {},
    )
    diff = sorted(k for k in saved.keys() & ours.keys() if saved[k] != ours[k])
    if diff:
        shown = "; ".join(f"{k}={saved[k]!r} (this run's: {ours[k]!r})" for k in diff[:3])
        raise UserError(f"checkpoint {path} was written by another run: {shown}")
    return ckpt


def resume_checkpoint(run: RunDir) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of ``run`` that passes :func:`load_checkpoint`, and its content; a
    damaged, replaced or foreign one is named and skipped."""
    candidates = [run.checkpoint(e) for e in reversed(run.checkpoint_epochs())]
    candidates += [run.last_checkpoint] if run.last_checkpoint.is_file() else []
    for path in candidates:
        try:
            return path, load_checkpoint(path)
        except UserError as err:
            warnings.warn(f"{err}; resuming from an older checkpoint", stacklevel=2)
    return None


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


def check_resumable(path: Path, ckpt: dict[str, Any], model: Any) -> None:
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


@dataclass
class Start:
    """An accepted start: its config (numeric path chosen), the checkpoint it continues from
    (path and content; ``None`` for a new run) and the images it leaves out, with their record."""

    cfg: Any
    checkpoint: tuple[Path, dict[str, Any]] | None
    exclude: Any
    exclusion: dict[str, Any] | None
    numeric_path: str  # the line saying which numeric path was chosen, logged once accepted


def admit(cfg: Any, run: RunDir) -> Start:
    """Whether this start may use ``run``: a new run in a dir that holds none, or a strict
    resume of the run there (same settings but :data:`RESUME_MAY_CHANGE`, same exclusion, a
    checkpoint that passes :func:`load_checkpoint`). Refused in one line otherwise."""
    if not os.access(run.root, os.W_OK):
        raise UserError(f"run dir {run.root} is not writable; choose another hydra.run.dir")
    if is_first_process():
        for path in remove_stale_temp_files(run):
            rank_zero_warn(f"removed {path}, left by a write that was killed")
    # the other processes of a distributed run start after rank 0 has written into the dir
    if is_first_process() and has_artifacts(run) and not cfg.resume:
        raise UserError(f"run dir {run.root} already holds a run; pass resume=true to continue "
                        "it, or choose another hydra.run.dir")  # fmt: skip
    recorded = None
    if cfg.resume and (run.root / "config.yaml").is_file():
        recorded = load_config(run.root / "config.yaml")
    said: list[str] = []
    cfg = with_numeric_path(cfg, recorded, said.append)
    if recorded is not None:
        check_same_config(recorded, cfg)
    found = None
    if cfg.resume and (run.checkpoint_epochs() or run.last_checkpoint.is_file()):
        found = resume_checkpoint(run)
        if found is None:
            raise UserError(f"resume=true but no checkpoint in {run.checkpoints} can be read")
    exclude, exclusion = read_exclusion(cfg.data)
    if recorded is not None:
        check_same_exclusion(run, exclusion)
    return Start(cfg, found, exclude, exclusion, said[0])
