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

import csv
import fcntl
import inspect
import json
import logging
import os
import re
import socket
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dcgan_xai.data.exclusion import fingerprint, load_exclusion
from dcgan_xai.data.mnist import MNISTDataModule
from dcgan_xai.data.probe import Probe, make_probe
from dcgan_xai.data.sources import MD5, SOURCES, ensure_mnist
from dcgan_xai.errors import UserError
from dcgan_xai.files import (
    TEMP_SUFFIX,
    atomic_torch_save,
    atomic_write_text,
    safe_torch_load,
    write_csv,
)
from dcgan_xai.models.checkpoint import DIGESTS, RECORD_KEY
from dcgan_xai.models.module import DCGAN

CKPT_RE = re.compile(r"^epoch=(\d+)\.ckpt$")
GRADCAM_RE = re.compile(r"^epoch_(\d+)\.pt$")


class RunDir:
    """Paths inside one training run directory."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def probe(self) -> Path:
        return self.root / "probe.pt"

    @property
    def gradcam(self) -> Path:
        return self.root / "gradcam"

    @property
    def scores_csv(self) -> Path:
        return self.gradcam / "scores.csv"

    @property
    def quality_csv(self) -> Path:
        return self.root / "quality" / "scores.csv"

    @property
    def analysis(self) -> Path:
        return self.root / "analysis"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    def checkpoint(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch={epoch:03d}.ckpt"

    def gradcam_file(self, epoch: int) -> Path:
        return self.gradcam / f"epoch_{epoch:03d}.pt"

    def curation(self, name: str) -> Path:
        return self.root / "curation" / name

    def checkpoint_epochs(self) -> list[int]:
        """Epochs (counted as epochs trained) that have a checkpoint, ascending."""
        return _numbered(self.checkpoints, CKPT_RE)

    def gradcam_epochs(self) -> list[int]:
        return _numbered(self.gradcam, GRADCAM_RE)


def _numbered(folder: Path, pattern: re.Pattern[str]) -> list[int]:
    if not folder.is_dir():
        return []
    found = (pattern.match(p.name) for p in folder.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


def read_csv(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The rows of a CSV file; one that is not readable text CSV is one error naming it."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except (csv.Error, UnicodeDecodeError) as err:
        raise UserError(
            f"{path} is not a readable CSV table ({type(err).__name__}: {err})"
        ) from err


def read_table(path: str | os.PathLike[str], parse: Any) -> list[dict[str, Any]]:
    """Rows of a CSV table through ``parse``; a damaged line (a value missing or extra, or
    one ``parse`` refuses) is one error naming it."""
    rows = []
    for line, raw in enumerate(read_csv(path), start=2):
        try:
            if None in raw or None in raw.values():
                raise ValueError("it has more or fewer values than the header")
            rows.append(parse(raw))
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(
                f"{path} line {line} is damaged ({type(err).__name__}: {err}); delete that line "
                "(a resumed run writes the rows of the epochs it trains again)"
            ) from err
    return rows


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


SCORE_KEYS = ("epoch", "method", "bn_mode", "layer")
SCORE_FIELDS = (
    list(SCORE_KEYS)
    + [
        f"{probe}_{name}"
        for probe in ("real", "fake")
        for name in (
            "focus_mean",
            "focus_std",
            "focus_nondeg",
            "focus_chance",
            "coverage_mean",
            "coverage_std",
            "degenerate",
            "flagged",
        )
    ]
    + ["d_real", "d_fake"]
)


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


def parse_score_row(raw: dict[str, str]) -> dict[str, Any]:
    """A ``scores.csv`` row with its numbers parsed (other columns stay text)."""
    row: dict[str, Any] = dict(raw)
    row["epoch"] = int(raw["epoch"])
    for key in SCORE_FIELDS[len(SCORE_KEYS) :]:
        row[key] = float(raw[key])
    return row


def read_scores(run: RunDir) -> list[dict[str, Any]]:
    """Rows of ``gradcam/scores.csv`` with numbers parsed, sorted by (epoch, method, BN, layer)."""
    if not run.scores_csv.is_file():
        return []
    rows = read_table(run.scores_csv, parse_score_row)
    return sorted(rows, key=lambda r: tuple(r[k] for k in SCORE_KEYS))


def _merge_rows(
    path: Path,
    fields: Sequence[str],
    keys: Sequence[str],
    old: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    keep_through: int | None,
) -> None:
    if keep_through is not None:
        old = [r for r in old if r["epoch"] <= keep_through]
    merged = {tuple(r[k] for k in keys): r for r in old}
    merged.update({tuple(r[k] for k in keys): r for r in rows})
    write_csv(path, fields, [merged[k] for k in sorted(merged)])


def score_rows(epoch: int, record: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``scores.csv`` rows of one explanation record (one per layer)."""
    return [
        {
            "epoch": epoch,
            "method": record["method"],
            "bn_mode": record["bn_mode"],
            "layer": name,
            **record["summary"][name],
            "d_real": record["d_real"],
            "d_fake": record["d_fake"],
        }
        for name in record["layers"]
    ]


def update_scores(run: RunDir, rows: list[dict[str, Any]], keep_through: int | None = None) -> None:
    """Merge ``rows`` into ``scores.csv``: one row per (epoch, method, BN mode, layer), newest wins.

    Rows of epochs after ``keep_through`` are dropped first (a resumed run redoes them).
    """
    _merge_rows(run.scores_csv, SCORE_FIELDS, SCORE_KEYS, read_scores(run), rows, keep_through)


QUALITY_KEYS = ("epoch", "draw")
QUALITY_FIELDS = (
    *QUALITY_KEYS,
    "noise_seed",
    "samples",
    "fid",
    "kid",
    "kid_std",
    "reference",
    "classifier_accuracy",
    "classifier_md5",
)


def parse_quality_row(raw: dict[str, str]) -> dict[str, Any]:
    """A ``quality/scores.csv`` row with its numbers parsed (other columns stay text)."""
    row: dict[str, Any] = dict(raw)
    for key in ("epoch", "draw", "noise_seed", "samples"):
        row[key] = int(raw[key])
    for key in ("fid", "kid", "kid_std", "classifier_accuracy"):
        row[key] = float(raw[key])
    return row


def read_quality(run: RunDir) -> list[dict[str, Any]]:
    """Rows of ``quality/scores.csv`` (one per epoch and generated set), numbers parsed."""
    if not run.quality_csv.is_file():
        return []
    rows = read_table(run.quality_csv, parse_quality_row)
    return sorted(rows, key=lambda r: (r["epoch"], r["draw"]))


def update_quality(
    run: RunDir, rows: list[dict[str, Any]], keep_through: int | None = None
) -> None:
    """Merge ``rows`` into ``quality/scores.csv``: one row per (epoch, draw), newest wins."""
    _merge_rows(
        run.quality_csv, QUALITY_FIELDS, QUALITY_KEYS, read_quality(run), rows, keep_through
    )


# ---------------------------------------------------------------- ownership

RUN_ARTIFACTS = ("checkpoints", "probe.pt", "gradcam", "quality", "config.yaml")


def has_artifacts(run: RunDir) -> bool:
    """Whether ``run`` holds anything a training wrote (then only ``resume=true`` may use it)."""
    return any((run.root / name).exists() for name in RUN_ARTIFACTS)


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


@contextmanager
def run_log(run: RunDir) -> Iterator[None]:
    """Append the process's log records to ``<run>/train.log`` while a training it owns runs."""
    handler = logging.FileHandler(run.root / "train.log")
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


# ---------------------------------------------------------------- loading a run


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


def datamodule_for_run(run: RunDir, trained: bool = False) -> MNISTDataModule:
    """The run's data as configured: the full splits, or with ``trained`` the train images the
    run actually trained on (its ``data.limit`` subset, less its exclusion manifest)."""
    return datamodule_for_config(run_config(run), trained)


def datamodule_for_config(cfg: Any, trained: bool = False) -> MNISTDataModule:
    """The data of a training config (see :func:`datamodule_for_run`), set up."""
    data = cfg.data
    sources, checksums = list(data.get("sources", SOURCES)), dict(data.get("checksums", MD5))
    exclude = None
    if trained and data.get("exclude"):
        files = ensure_mnist(data.root, sources, checksums)
        exclude = load_exclusion(data.exclude, fingerprint(files))
    dm = MNISTDataModule(
        data.root,
        data.image_size,
        seed=cfg.seed,
        limit=data.get("limit") if trained else None,
        exclude=exclude,
        sources=sources,
        checksums=checksums,
        cache_dir=data.get("cache_dir"),
    )
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


def ensure_probe(run: RunDir, dm: MNISTDataModule) -> Probe:
    """The run's probe; made (seeded as training would) and saved if the run has none."""
    if run.probe.is_file():
        return load_probe(run)
    cfg = run_config(run)
    assert dm.test_set is not None
    gc = cfg.callbacks.gradcam
    probe = make_probe(
        dm.test_set.images, dm.test_set.labels, gc.probe_size, cfg.seed, cfg.model.nz
    )
    save_probe(run, probe)
    return probe
