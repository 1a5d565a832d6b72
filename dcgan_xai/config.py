"""Structured configs: the schema of every config group, registered with Hydra's ConfigStore.

A typo or a value of the wrong type in a config file or an override is refused by
OmegaConf with an error naming the key.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from dcgan_xai.data.sources import MD5, SOURCES
from dcgan_xai.errors import UserError, hydra_error_line
from dcgan_xai.models.settings import ModelConfig
from dcgan_xai.xai.gradcam import BN_MODES, METHODS, NORMALIZATIONS
from dcgan_xai.xai.scores import ScoreThresholds

# the primary configs search <cwd>/conf (a project's own experiments); without one, say nothing
warnings.filterwarnings(
    "ignore", message=r"provider=hydra.searchpath in main, path=conf is not available"
)

SCORES = ("focus", "coverage")
PROBES = ("real", "fake")


def _at_least(low: float) -> tuple[str, Callable[[Any], bool]]:
    return f">= {low:g}", lambda v: v >= low  # NaN fails every comparison: refused too


def _finite(low: float, strict: bool) -> tuple[str, Callable[[Any], bool]]:
    return (f"a finite number {'>' if strict else '>='} {low:g}",
            lambda v: math.isfinite(v) and (v > low if strict else v >= low))  # fmt: skip


FRACTION = ("in [0, 1]", lambda v: 0 <= v <= 1)


def _device_ok(name: str) -> bool:
    import torch

    if name in ("auto", "cpu"):
        return True
    index = name.removeprefix("cuda").removeprefix(":")
    return (
        name.startswith("cuda")
        and (index == "" or index.isdigit())
        and (torch.cuda.is_available() and int(index or 0) < torch.cuda.device_count())
    )


DEVICE = ("auto, cpu, or cuda[:N] on a machine with that GPU", _device_ok)
SEED = (f"in 0..{2**32 - 1}", lambda v: 0 <= v < 2**32)
Ranges = tuple[tuple[str, tuple[str, Callable[[Any], bool]]], ...]


def _one_of(allowed: Sequence[str]) -> tuple[str, Callable[[Any], bool]]:
    return f"one of {', '.join(allowed)}", lambda v: v in allowed


def _some_of(allowed: Sequence[str]) -> tuple[str, Callable[[Any], bool]]:
    return (f"a list of one or more of {', '.join(allowed)}",
            lambda v: len(v) > 0 and all(x in allowed for x in v))  # fmt: skip


ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true", "single_device")
PRECISIONS = ("auto", "32-true", "32", "16-mixed", "bf16-mixed", "bf16-true", "16-true")

# The shared settings' ranges (ScoreThresholds, FidProtocol), checked wherever they are used.
THRESHOLD_RANGES: Ranges = tuple((f.name, FRACTION) for f in fields(ScoreThresholds))
FID_RANGES: Ranges = (
    ("fid_samples", ("in 2..1,000,000", lambda v: 2 <= v <= 1_000_000)),
    ("fid_draws", _at_least(0)),
    ("fid_seed", SEED),
    ("batch_size", _at_least(1)),
    ("classifier_epochs", _at_least(1)),
    ("min_accuracy", FRACTION),
)


def _under(prefix: str, ranges: Ranges) -> Ranges:
    return tuple((prefix + key, rule) for key, rule in ranges)


# The ranges of the training config that its types cannot state, one row per key: the first
# value outside its range is refused in one line before anything starts (checks.validate).
TRAIN_RANGES: Ranges = (
    ("seed", SEED),
    ("seeds", ("null, or one or more distinct seeds, each " + SEED[0],
               lambda v: v is None or (0 < len(v) == len(set(v)) and all(map(SEED[1], v))))),
    ("data.batch_size", _at_least(1)),
    ("model.nz", _at_least(1)),
    ("model.ngf", _at_least(1)),
    ("model.ndf", _at_least(1)),
    ("model.lr", _finite(0, strict=True)),
    ("model.beta1", ("in [0, 1)", lambda v: 0 <= v < 1)),
    ("model.beta2", ("in [0, 1)", lambda v: 0 <= v < 1)),
    ("model.bn_momentum", FRACTION),
    ("model.n_samples", _at_least(1)),
    ("model.instance_noise", _finite(0, strict=False)),
    ("model.instance_noise_decay_epochs", _finite(0, strict=False)),
    ("model.lr_gamma", _finite(0, strict=True)),
    ("model.lr_milestones", ("increasing epochs >= 1",
                             lambda v: list(v) == sorted(set(v)) and all(e >= 1 for e in v))),
    ("trainer.accelerator", _one_of(ACCELERATORS)),
    ("trainer.strategy", _one_of(STRATEGIES)),
    ("trainer.precision", _one_of(PRECISIONS)),
    ("trainer.devices", ("auto, -1 (all), a count >= 1 or a list of device ids",
                         lambda v: v == "auto" or (isinstance(v, int) and (v >= 1 or v == -1))
                         or (isinstance(v, str) and v not in ("", "0"))
                         or (not isinstance(v, (int, str)) and len(v) > 0))),
    ("trainer.num_nodes", _at_least(1)),
    ("trainer.max_epochs", _at_least(1)),
    ("trainer.log_every_n_steps", _at_least(1)),
    ("trainer.limit_train_batches", ("a finite number > 0 (a share up to 1.0, or a count), or null",
                                     lambda v: v is None or (math.isfinite(v) and v > 0))),
    ("callbacks.gradcam.probe_size", _at_least(1)),
    ("callbacks.gradcam.every_n_epochs", _at_least(1)),
    ("callbacks.gradcam.normalize", _one_of(NORMALIZATIONS)),
    ("callbacks.gradcam.bn_modes", _some_of(BN_MODES)),
    ("callbacks.gradcam.methods", _some_of(METHODS)),
    *_under("callbacks.gradcam.", THRESHOLD_RANGES),
    ("callbacks.quality.every_n_epochs", _at_least(1)),
    *_under("callbacks.quality.", FID_RANGES),
)  # fmt: skip


def check_ranges(settings: Any, ranges: Ranges) -> None:
    """Refuse the first value of ``settings`` (a config, a dataclass or a dict) outside its
    range in ``ranges``, in one line naming it."""
    for key, (rule, ok) in ranges:
        value = settings
        for part in key.split("."):
            value = value[part] if isinstance(value, Mapping) else getattr(value, part)
        if not ok(value):
            shown = list(value) if OmegaConf.is_list(value) else value
            raise UserError(f"{key}={shown} is not allowed; it must be {rule}")


# What analyze, aggregate and a study's analysis accept (AnalysisSettings.check).
ANALYSIS_RANGES: Ranges = (
    ("layers", ("one or more of D's blocks", lambda v: len(v) > 0)),
    ("method", _one_of(METHODS)),
    ("bn_mode", _one_of(BN_MODES)),
    ("normalize", _one_of(NORMALIZATIONS)),
    ("probe", _one_of(PROBES)),
    ("score", _one_of(SCORES)),
    ("k", ("a coarse step in 1..1000 epochs", lambda v: 1 <= v <= 1000)),
    ("figure_epochs", ("epochs >= 1", lambda v: all(e >= 1 for e in v))),
    *THRESHOLD_RANGES,
    *FID_RANGES,
    ("device", DEVICE),
)

# What curate accepts (its command and curate_run).
CURATE_RANGES: Ranges = (
    *THRESHOLD_RANGES,
    ("flag_share", ("in [0, 1], or null", lambda v: v is None or 0 <= v <= 1)),
    ("batch_size", _at_least(1)),
    ("seed", SEED),
    ("device", DEVICE),
)


@dataclass
class DataConfig:
    """MNIST resized once to 64x64 (bilinear, antialiased), scaled to [-1, 1]."""

    root: str = "data/mnist"
    image_size: int = 64
    batch_size: int = 128
    limit: int | None = None  # a stratified subset of this many training images
    exclude: str | None = None  # a curation's manifest.csv: those images are left out
    cache_dir: str | None = (
        None  # the resize cache; None: <root>/cache (set it if root is read-only)
    )
    sources: list[str] = field(default_factory=lambda: list(SOURCES))
    checksums: dict[str, str] = field(default_factory=lambda: dict(MD5))


@dataclass
class SpeedConfig:
    """How a training runs, not what it computes (``dcgan_xai.numerics``); a resumed run may
    change these. None: chosen for the machine."""

    on_device: bool | None = None  # training images resident on the GPU (None: on a GPU)
    channels_last: bool | None = None  # None: with bf16 on the CPU
    compile: bool = False  # torch.compile of G and D for the step (eager if it fails)
    cuda_graph: bool | None = None  # the step as one CUDA graph (None: on one CUDA device)


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    max_epochs: int = 25
    precision: str = "auto"  # auto: bf16-mixed on a CPU with native bf16, else 32-true
    log_every_n_steps: int = 50
    enable_progress_bar: bool = True
    deterministic: bool = False
    limit_train_batches: float | None = None


@dataclass
class FidProtocol:
    """How FID and KID are measured (``dcgan_xai.metrics.quality``), by the quality callback,
    ``analyze`` and the study alike."""

    fid_samples: int = 10000  # generated images per set; the real reference: this many test images
    fid_draws: int = 2  # independent generated sets besides the fixed-noise one (FID's noise)
    fid_seed: int = 0  # seeds the noise and the reference subset
    batch_size: int = 500  # images per forward pass
    classifier_epochs: int = 3  # epochs of the MNIST classifier (names its cache file)
    min_accuracy: float = 0.99  # a classifier below this test accuracy is refused


@dataclass
class GradCamConfig(ScoreThresholds):
    enabled: bool = True
    layers: list[str] = field(default_factory=lambda: ["block3"])
    bn_modes: list[str] = field(default_factory=lambda: ["batch"])  # batch, eval; first: primary
    methods: list[str] = field(default_factory=lambda: ["gradcam"])  # METHODS; first: primary
    probe_size: int = 64
    every_n_epochs: int = 1
    normalize: str = "max"  # or minmax (see dcgan_xai.xai.gradcam.normalize_maps)
    log_images: bool = True


@dataclass
class QualityConfig(FidProtocol):
    enabled: bool = False
    every_n_epochs: int = 1


@dataclass
class CallbacksConfig:
    gradcam: GradCamConfig = field(default_factory=GradCamConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)


@dataclass
class LoggerConfig:
    tensorboard: bool = True


@dataclass
class TrainConfig:
    seed: int = 0
    seeds: list[int] | None = None  # several seeds at once, each into <run dir>/seed_<s>
    resume: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def settings_in(cls: Any, cfg: DictConfig) -> Any:
    """The dataclass ``cls`` of the settings in a composed config (its other keys dropped)."""
    refuse_added_keys(cfg)  # where check_overrides did not run
    names = {f.name for f in fields(cls)}
    values = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(values, dict)
    return cls(**{k: v for k, v in values.items() if k in names})


@dataclass
class AnalysisSettings(ScoreThresholds, FidProtocol):
    """What :func:`analyze_run` computes. Every field is recorded in ``selection.json``."""

    layers: list[str] = field(default_factory=lambda: ["block3"])
    method: str = "gradcam"
    bn_mode: str = "batch"
    normalize: str = "max"  # or minmax, as callbacks.gradcam.normalize
    probe: str = "real"
    score: str = "focus"
    k: int = 5
    figure_epochs: list[int] = field(default_factory=lambda: [5, 10, 15, 20, 25])
    samples: str = "informative:8"
    quality: bool = True
    device: str = "auto"

    def check(self) -> None:
        check_ranges(self, ANALYSIS_RANGES)


@dataclass
class AnalyzeConfig(AnalysisSettings):
    run_dir: str | None = None


@dataclass
class AggregateConfig(AnalysisSettings):
    sweep_dir: str | None = None
    reanalyze: bool = False
    compare: list[str] | None = None  # [<run dir>, ...]: those runs side by side, in out_dir
    out_dir: str = "outputs/compare/${now:%Y-%m-%d}/${now:%H-%M-%S-%f}"  # where compare writes


@dataclass
class CurationSettings(ScoreThresholds):
    """What :func:`~dcgan_xai.analysis.curation.curate_run` does. Recorded in ``summary.json``."""

    epoch: str = "selected"  # or an epoch number; ckpt=<path> overrides both
    ckpt: str | None = None
    layer: str = "block3"
    method: str = "gradcam"  # METHODS
    bn_mode: str = "batch"
    flag_share: float | None = None  # e.g. 0.05: flag exactly 5% (ties: a draw seeded by seed)
    batch_size: int = 1024
    name: str | None = None  # None: <checkpoint>-<layer>-<method>-<bn_mode>-t<flag_threshold>
    device: str = "auto"
    progress: bool = True
    control: bool = False  # also write <name>-control: as many images per digit, at random
    seed: int = 0

    def check(self) -> None:
        check_ranges(self, CURATE_RANGES)


@dataclass
class CurateConfig(CurationSettings):
    run_dir: str | None = None


VARIANT_SCORES = ("focus", "coverage", "focus_delta", "coverage_delta")
SELECTIONS = ("coarse", "argmax")
PAPER_VARIANT = "gradcam/block3/batch/real/focus/coarse"
QUESTIONS = ("selection", "curation")


@dataclass
class StudyJob:
    """One job of the study's multirun (``conf/study.yaml`` sweeps these); unset: the whole
    study. (Not ``experiment=``: that selects the training config group.)"""

    experiment: str | None = None
    seed: int | None = None


@dataclass
class StudySettings:
    """What the study runs and compares, and how it decides. Recorded in the report."""

    name: str = "claim"
    out_dir: str = "studies"
    experiments: list[str] = field(default_factory=lambda: ["mnist64"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    # the seeds this sitting trains (null: all); the report covers every seed, taking the rows
    # of the others from the study's tables of earlier sittings (a fresh machine per sitting)
    sitting: list[int] | None = None
    train_overrides: list[str] = field(default_factory=list)
    # each recipe's seeds (this sitting's) trained at once in one process, several DCGANs on one
    # GPU (train's seeds=[...]); a multirun then runs one job per experiment
    seeds_at_once: bool = False
    job: StudyJob = field(default_factory=lambda: StudyJob())
    train: bool = True  # false: analyse the runs as far as they got, training none
    train_timeout_s: float | None = None  # per job: trainings stop this long after it starts
    report_only: bool = False
    methods: list[str] = field(default_factory=lambda: ["gradcam"])
    bn_modes: list[str] = field(default_factory=lambda: ["batch", "eval"])
    probes: list[str] = field(default_factory=lambda: ["real", "fake"])
    scores: list[str] = field(default_factory=lambda: list(VARIANT_SCORES))
    selections: list[str] = field(default_factory=lambda: list(SELECTIONS))
    planned: list[str] = field(default_factory=lambda: [PAPER_VARIANT])
    window: float = 0.5
    question: str = "selection"  # or curation: which claim the report answers first
    curate: bool = True
    curation_epoch: str = "selected"  # D of the epoch the paper's rule picks, or last
    curation_layer: str = "block3"  # a block, or pilot: chosen on pilot_seed (see curation_arms)
    curation_method: str = "gradcam"
    curation_thresholds: list[float] = field(
        default_factory=lambda: [ScoreThresholds.flag_threshold]
    )
    curation_share: float | None = 0.05
    pilot_seed: int = 100
    pilot_share: list[float] = field(default_factory=lambda: [0.005, 0.30])
    analysis: AnalysisSettings = field(default_factory=AnalysisSettings)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> StudySettings:
        """The settings in a composed ``study`` config (its ``hydra`` node, if any, left out)."""
        refuse_added_keys(cfg)  # where check_overrides did not run
        values = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(values, dict)
        values.pop("hydra", None)
        return cls.from_dict(values)  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> StudySettings:
        """The settings in a dict (as ``study.json`` records them); keys of earlier versions
        that no longer exist are left out."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in values.items() if k in known}
        analysis = AnalysisSettings(**values.pop("analysis", {}))
        job = StudyJob(**values.pop("job", {}))
        return cls(**values, analysis=analysis, job=job)

    def check(self) -> None:
        self.analysis.check()
        check_ranges(self, STUDY_RANGES)
        if self.sitting is not None and not set(self.sitting) <= set(self.seeds):
            raise UserError(f"sitting={list(self.sitting)} is not allowed; it must be some of "
                            f"seeds={list(self.seeds)}")  # fmt: skip
        job = self.job
        seed_alone = job.seed is not None and job.experiment is None
        experiment_alone = job.experiment is not None and job.seed is None
        if seed_alone or (experiment_alone and not self.seeds_at_once):
            raise UserError(
                f"job.experiment={job.experiment} job.seed={job.seed}: a study job needs both (one "
                "run of the multirun), job.experiment alone with seeds_at_once=true (its seeds at "
                "once), or neither (the whole study)"
            )
        if job.experiment is not None and job.experiment not in self.experiments:
            raise UserError(
                f"job.experiment={job.experiment} is not one of the study's experiments; "
                f"allowed: {', '.join(self.experiments)}"
            )
        if self.curation_layer == "pilot" and (
            self.pilot_seed in self.seeds or not self.curation_thresholds
        ):
            raise UserError(
                f"curation_layer=pilot needs a pilot_seed outside seeds (got {self.pilot_seed}) "
                "and a curation threshold"
            )


def _variant_ok(name: str) -> bool:
    parts = name.split("/")
    return (len(parts) == 6 and parts[0] in METHODS and parts[2] in BN_MODES
            and parts[3] in PROBES and parts[4] in VARIANT_SCORES and parts[5] in SELECTIONS)  # fmt: skip


# What a study accepts besides its analysis settings (StudySettings.check).
STUDY_RANGES: Ranges = (
    ("name", ("a plain folder name (no '/'), the study's folder under out_dir",
              lambda v: bool(v) and Path(v).name == v and v not in (".", ".."))),
    ("experiments", ("one experiment or more", lambda v: len(v) > 0)),
    ("seeds", ("one seed or more", lambda v: len(v) > 0)),
    ("sitting", ("one seed or more, or null (all)", lambda v: v is None or len(v) > 0)),
    ("train_timeout_s", ("> 0, or null", lambda v: v is None or v > 0)),
    ("scores", _some_of(VARIANT_SCORES)),
    ("selections", _some_of(SELECTIONS)),
    ("probes", _some_of(PROBES)),
    ("bn_modes", _some_of(BN_MODES)),
    ("methods", _some_of(METHODS)),
    ("question", _one_of(QUESTIONS)),
    ("curation_epoch", _one_of(("selected", "last"))),
    ("window", ("in (0, 1]", lambda v: 0 < v <= 1)),
    ("planned", (f"variants method/layer/bn_mode/probe/score/selection, e.g. {PAPER_VARIANT}",
                 lambda v: all(_variant_ok(x) for x in v))),
)  # fmt: skip


def compose_config(config_name: str, overrides: list[str], hydra: bool = False) -> DictConfig:
    """``dcgan_xai/conf/<config_name>.yaml`` composed with ``overrides``, as its command would
    (with its ``hydra`` node when ``hydra``); the project's ``conf/`` is searched too.

    Inside a running Hydra app (a study job) the app's config search path is used. A bad
    override is a :class:`UserError`.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        if GlobalHydra.instance().is_initialized():
            cfg = compose(config_name, overrides=overrides, return_hydra_config=hydra)
        else:
            conf = str(Path(__file__).resolve().parent / "conf")
            with initialize_config_dir(config_dir=conf, version_base="1.3"):
                cfg = compose(config_name, overrides=overrides, return_hydra_config=hydra)
    except (HydraException, OmegaConfBaseException) as err:
        raise UserError(hydra_error_line(err)) from err
    refuse_added_keys(cfg, overrides)
    return cfg


def refuse_added_keys(cfg: DictConfig, overrides: Sequence[str] = ()) -> None:
    """Refuse a key no schema has. Hydra adds ``+key=value`` to a structured config without a
    word, so ``+study=nope`` where no ``study`` config group is found (outside the project's
    folder) would be dropped silently and the default run instead."""
    added = _added_keys(cfg)
    if not added:
        return
    key = added[0]
    given = next((o for o in overrides if o.lstrip("+").split("=")[0] == key),
                 f"+{key}={OmegaConf.select(cfg, key)}")  # fmt: skip
    parent, _, name = key.rpartition(".")
    command = next((f"{k} " for k, v in SCHEMAS.items() if v is OmegaConf.get_type(cfg)), "")
    raise UserError(f"{given} is not allowed: {parent or f'the {command}config'} has no setting "
                    f"'{name}' and no config group '{key}' is found (the package's configs and "
                    f"{Path.cwd() / 'conf'} are searched)")  # fmt: skip


def _added_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """The keys under ``node`` that its schema (a dataclass) lacks; ``hydra`` is Hydra's."""
    kind = OmegaConf.get_type(node)
    names = {f.name for f in fields(kind)} if kind is not None and is_dataclass(kind) else None
    added = []
    for key in map(str, node.keys()):
        path = f"{prefix}{key}"
        if path == "hydra":
            continue
        if names is not None and key not in names:
            added.append(path)
        elif not OmegaConf.is_interpolation(node, key) and isinstance(node[key], DictConfig):
            added += _added_keys(node[key], f"{path}.")
    return added


def command_ranges(config_name: str) -> Ranges:
    """The range table of a command's config (``train``, ``analyze``, ...)."""
    analysis = ANALYSIS_RANGES
    return {"train": TRAIN_RANGES, "analyze": analysis, "aggregate": analysis,
            "curate": CURATE_RANGES, "study": (*STUDY_RANGES, *_under("analysis.", analysis))
            }[config_name]  # fmt: skip


def check_overrides(config_name: str) -> None:
    """Compose the command's config with the command line's overrides, as Hydra will: a bad
    key, value or type is one line on stderr and exit code 2 instead of Hydra's several lines.
    A value out of its range (:func:`command_ranges`) is refused the same way, before Hydra
    makes the run's folder. In a multirun (``-m``) the swept values are left to each job; other
    flags (``--cfg``, ...) are left to Hydra, and so is everything when ``HYDRA_FULL_ERROR=1``."""
    args = sys.argv[1:]
    flags = [a for a in args if a.startswith("-")]
    if os.environ.get("HYDRA_FULL_ERROR") == "1" or any(
        f not in ("-m", "--multirun") for f in flags
    ):
        return
    try:
        if flags:  # a multirun: every override but the swept ones, as each job will have them
            args = _without_sweeps([a for a in args if not a.startswith("-")])
        cfg = compose_config(config_name, args, hydra=True)
        check_ranges(cfg, command_ranges(config_name))  # before Hydra makes any folder
        key = "hydra.sweep.dir" if flags else "hydra.run.dir"
        check_folder_can_be_made(key, Path(OmegaConf.select(cfg, key)))
        if flags:
            check_slurm_answers(cfg)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def check_slurm_answers(cfg: DictConfig) -> None:
    """Refuse in one line a Slurm launcher where no Slurm controller answers (not a cluster's
    node): ``sbatch`` would fail after Hydra made the sweep folder, with a long traceback."""
    if not str(OmegaConf.select(cfg, "hydra.launcher._target_")).endswith(".SlurmLauncher"):
        return
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        raise UserError("the Slurm launcher submits with sbatch, which is not on PATH here; "
                        "run from a login node of the cluster, or choose another "
                        "hydra/launcher")  # fmt: skip
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
        said = (ping.stderr.strip() or ping.stdout.strip()).splitlines()[-1:]
        ok = ping.returncode == 0 and "DOWN" not in ping.stdout
    except subprocess.TimeoutExpired:
        said, ok = ["no answer in 30 s"], False
    if not ok:
        raise UserError(f"the Slurm launcher needs a Slurm controller, and none answers here "
                        f"(scontrol ping: {' '.join(said) or 'DOWN'}); run from a login node of "
                        "the cluster, or choose another hydra/launcher")  # fmt: skip


def check_folder_can_be_made(key: str, folder: Path) -> None:
    """Refuse in one line a folder that cannot be made: one under a file, or in a place that
    takes no new folder (read-only, ``/proc``). The test folder it makes is removed at once."""
    if folder.is_dir():
        return
    place = folder.absolute()
    while not place.exists() and place != place.parent:
        place = place.parent
    if not place.is_dir():
        raise UserError(f"{key}={folder} is under {place}, which is a file; choose a folder")
    try:
        os.rmdir(tempfile.mkdtemp(dir=place, prefix=".dcgan_xai.probe."))
    except OSError as err:
        raise UserError(f"{key}={folder} cannot be made: {place} takes no new folder "
                        f"({err.strerror}); choose a writable place") from err  # fmt: skip


def _without_sweeps(args: list[str]) -> list[str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except HydraException as err:
        raise UserError(hydra_error_line(err)) from err
    return [a for a, o in zip(args, parsed, strict=True) if not o.is_sweep_override()]


def _csv(values: Any, instead: Any = None) -> str:
    """A list as a sweep's comma-separated values (``${csv:${seeds}}``); with two lists, the
    first unless it is null (``${csv:${sitting},${seeds}}``)."""
    return ",".join(str(v) for v in (instead if values is None else values))


def _job_seeds(at_once: bool, sitting: Any, seeds: Any) -> str:
    """The study multirun's ``job.seed`` values: this sitting's seeds (all when ``sitting`` is
    null), or null (one job per experiment, its seeds at once) with ``seeds_at_once``."""
    return "null" if at_once else _csv(sitting, seeds)


def _job_dir(experiment: str, seed: Any) -> str:
    """A study job's folder: its run's, or ``jobs/<experiment>`` for a job of seeds at once."""
    return f"jobs/{experiment}" if seed is None else f"runs/{experiment}_seed_{seed}"


# Each command's schema: the primary config ``<command>.yaml`` names ``<command>_schema`` first.
SCHEMAS = {"train": TrainConfig, "analyze": AnalyzeConfig, "curate": CurateConfig,
           "aggregate": AggregateConfig, "study": StudySettings}  # fmt: skip


def register_configs() -> None:
    """Register the schemas; the primary configs name them first in their defaults."""
    cs = ConfigStore.instance()
    for command, schema in SCHEMAS.items():
        cs.store(name=f"{command}_schema", node=schema)
    OmegaConf.register_new_resolver("csv", _csv, replace=True)
    OmegaConf.register_new_resolver("job_seeds", _job_seeds, replace=True)
    OmegaConf.register_new_resolver("job_dir", _job_dir, replace=True)


register_configs()
