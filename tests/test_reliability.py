import os
import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from dcgan_xai.analysis.curation import curate_run
from dcgan_xai.config import AnalysisSettings, CurationSettings
from dcgan_xai.data.sources import FILES
from dcgan_xai.errors import UserError
from dcgan_xai.files import file_digest, read_csv
from dcgan_xai.models.module import NonFiniteLossError
from dcgan_xai.runs.layout import RunDir, load_gradcam_epoch
from dcgan_xai.runs.load import load_module
from dcgan_xai.training import build_callbacks, build_datamodule, build_model, build_trainer, train
from tests.conftest import compose_train, write_fixture
from tests.helpers import REPO, data_overrides, kill_when, same_weights


def test_a_run_dir_that_is_a_file_or_a_link_to_one_is_refused(smoke_cfg, tmp_path):
    (tmp_path / "notes.txt").write_text("the user's")
    (tmp_path / "link").symlink_to(tmp_path / "notes.txt")
    for path in (tmp_path / "notes.txt", tmp_path / "link"):
        with pytest.raises(UserError, match=r"run dir .* is a file, not a folder; choose another"):
            train(smoke_cfg(), path)
    assert (tmp_path / "notes.txt").read_text() == "the user's"


# every bad training input: its overrides and the one line that refuses it
BAD_TRAINING_INPUT = [
        (["data.image_size=32"], r"data.image_size=32 is not allowed; .* \(allowed: 64\)"),
        (["callbacks.gradcam.layers=[block7]"],
         r"unknown Grad-CAM layer 'block7' in callbacks.gradcam.layers; valid layers of model.arch=paper: block1, block2, block3"),
        (["model=dcgan_tutorial", "callbacks.gradcam.layers=[block5]"], r"valid layers of model.arch=tutorial: block1, block2, block3, block4"),
        (["callbacks.gradcam.probe_size=1000"], r"probe_size=1000 is larger than the test split \(120 images\); allowed: 1..120"),
        (["callbacks.gradcam.flag_threshold=1.2"], r"callbacks.gradcam.flag_threshold=1.2 is not allowed; it must be in \[0, 1\]"),
        (["callbacks.gradcam.bn_modes=[frozen]"], r"callbacks.gradcam.bn_modes=\['frozen'\] is not allowed; it must be a list of one or more of batch, eval"),
        (["callbacks.gradcam.methods=[gradcam++]"], r"callbacks.gradcam.methods=\['gradcam\+\+'\] is not allowed; it must be a list of one or more of gradcam, gradcam_pre, gradcam_conv, hirescam"),
        (["speed.cuda_graph=true"], r"speed.cuda_graph=true is not allowed here; it needs one process on one CUDA GPU"),
        (["speed.cuda_graph=true", "speed.compile=true"], r"speed.cuda_graph=true with speed.compile=true is not allowed"),
        (["model.lr=-1"], r"model.lr=-1.0 is not allowed; it must be a finite number > 0"),
        (["model.lr=inf"], r"model.lr=inf is not allowed; it must be a finite number > 0"),
        (["model.beta1=1.5"], r"model.beta1=1.5 is not allowed; it must be in \[0, 1\)"),
        (["model.nz=0"], r"model.nz=0 is not allowed; it must be >= 1"),
        (["model.ngf=0"], r"model.ngf=0 is not allowed; it must be >= 1"),
        (["trainer.precision=8"], r"trainer.precision=8 is not allowed; it must be one of auto, 32-true, "),
        (["trainer.precision=64-true"], r"trainer.precision=64-true is not allowed; it must be one of "),
        (["trainer.precision=16-mixed"], r"trainer.precision=16-mixed needs a CUDA GPU; on the CPU use bf16-mixed"),
        (["trainer.accelerator=gpu"], r"trainer.accelerator=gpu but this machine has no CUDA GPU"),
        (["trainer.strategy=bogus"], r"trainer.strategy=bogus is not allowed; it must be one of auto, ddp, "),
        (["trainer.devices=0"], r"trainer.devices=0 is not allowed; it must be auto, -1 \(all\), a count >= 1"),
        (["trainer.devices=[5]"], r"the trainer.\* settings are refused by Lightning: "),
        (["trainer.num_nodes=0"], r"trainer.num_nodes=0 is not allowed; it must be >= 1"),
        (["trainer.log_every_n_steps=-1"], r"trainer.log_every_n_steps=-1 is not allowed; it must be >= 1"),
        (["trainer.limit_train_batches=-1"], r"trainer.limit_train_batches=-1.0 is not allowed; it must be a finite number > 0"),
        (["trainer.limit_train_batches=nan"], r"trainer.limit_train_batches=nan is not allowed"),
        (["model.ngf=100000000"], r"model.nz=100, ngf=100000000, ndf=8 make more parameters than 64 bits can count; this machine has [0-9,]+ GiB"),
        (["model.ngf=30000"], r"model.nz=100, ngf=30000, ndf=8 make [0-9,]+ parameters \(about [0-9,]+ GiB with gradients and Adam's state\); this machine has"),
        (["model.n_samples=0"], r"model.n_samples=0 is not allowed; it must be >= 1"),
        (["model.bn_momentum=nan"], r"model.bn_momentum=nan is not allowed; it must be in \[0, 1\]"),
        (["model.bn_momentum=-3"], r"model.bn_momentum=-3.0 is not allowed; it must be in \[0, 1\]"),
        (["model.instance_noise=nan"], r"model.instance_noise=nan is not allowed; it must be a finite number >= 0"),
        (["model.instance_noise=inf"], r"model.instance_noise=inf is not allowed; it must be a finite number >= 0"),
        (["model.instance_noise_decay_epochs=nan"], r"model.instance_noise_decay_epochs=nan is not allowed"),
        (["callbacks.quality.batch_size=0"], r"callbacks.quality.batch_size=0 is not allowed; it must be >= 1"),
        (["callbacks.quality.fid_seed=-5"], r"callbacks.quality.fid_seed=-5 is not allowed; it must be in 0..4294967295"),
        (["seed=-1"], r"seed=-1 is not allowed; it must be in 0..4294967295"),
        (["seeds=[]"], r"seeds=\[\] is not allowed; it must be null, or one or more distinct seeds, each in 0..4294967295"),
        (["seeds=[3,3]"], r"seeds=\[3, 3\] is not allowed; it must be null, or one or more distinct seeds"),
        (["seeds=[0,-2]"], r"seeds=\[0, -2\] is not allowed"),
        (["seeds=[0,1]", "trainer.strategy=ddp"], r"seeds=\[0, 1\] trains the seeds in one process on one device: not with speed.compile=true or several devices \(.*strategy=ddp\)"),
        (["seeds=[0,1]", "speed.compile=true"], r"seeds=\[0, 1\] trains the seeds in one process on one device"),
        (["seed=1700000000000"], r"seed=1700000000000 is not allowed"),
        (["callbacks.quality.enabled=true", "callbacks.quality.fid_samples=1"], r"callbacks.quality.fid_samples=1 is not allowed; it must be in 2..1,000,000"),
        (["model.arch=vgg"], r"model.arch='vgg' is not allowed; allowed: paper, tutorial"),
        (["data.limit=100000"], r"data.limit=100000 is not allowed; it must be in 1..300 \(the train split's images\)"),
        (["data.sources=[ftp]"], r"unknown data source 'ftp'; allowed: local, torchvision, npm"),
        (["trainer.max_epochs=0"], r"trainer.max_epochs=0 is not allowed; it must be >= 1"),
        (["data.batch_size=0"], r"data.batch_size=0 is not allowed; it must be >= 1"),
        (["model.instance_noise=-0.1"], r"model.instance_noise=-0.1 is not allowed; it must be a finite number >= 0"),
    ]  # fmt: skip


@pytest.mark.parametrize("overrides, message", BAD_TRAINING_INPUT)
def test_bad_training_input_is_refused_before_anything_is_written(
    smoke_cfg, tmp_path, overrides, message
):
    run_dir = tmp_path / "run"
    with pytest.raises(UserError, match=message) as err:
        train(smoke_cfg(*overrides), run_dir)
    assert "\n" not in str(err.value)
    assert not run_dir.exists() or not any(run_dir.iterdir())


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): file_digest(p) for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.mark.slow
def test_every_bad_training_input_is_one_line_from_the_command_and_changes_nothing(
    mnist_fixture, tmp_path
):
    """The table above through ``python -m dcgan_xai.train``, into a dir that holds the user's
    own files: exit 2, one line on stderr, no traceback, every file as it was (by checksum)."""
    root, sums = mnist_fixture
    run_dir = tmp_path / "mine"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".notes.tmp").write_text("the user's notes")
    (run_dir / ".hydra" / "config.yaml").write_text("mine: true\n")
    before = _digests(tmp_path)
    failures = []
    for overrides, message in BAD_TRAINING_INPUT:
        done = subprocess.run([sys.executable, "-m", "dcgan_xai.train", "experiment=smoke",
                               *data_overrides(root, sums), f"hydra.run.dir={run_dir}", *overrides],
                              capture_output=True, text=True, cwd=REPO, timeout=300)  # fmt: skip
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        if (done.returncode != 2 or len(lines) != 1 or not re.search(message, lines[0])
                or _digests(tmp_path) != before):  # fmt: skip
            failures.append((overrides, done.returncode, done.stderr[-500:]))
    assert not failures


@pytest.mark.parametrize(
    "damage, message",
    [
        ("magic", r"corrupt IDX file .*t10k-images-idx3-ubyte: bad magic number 0x00000903"),
        ("truncated", r"corrupt IDX file .*t10k-images-idx3-ubyte: 3016 bytes, expected .* \(truncated\)"),
        ("checksum", r"checksum mismatch for .*t10k-images-idx3-ubyte: md5 [0-9a-f]{32}, expected [0-9a-f]{32}"),
    ],
)  # fmt: skip
def test_corrupt_data_is_refused(tmp_path, damage, message):
    root = tmp_path / "mnist"
    sums = write_fixture(root)
    path = root / FILES["test-images"]
    data = bytearray(path.read_bytes())
    if damage == "magic":
        data[2] = 0x09
    elif damage == "truncated":
        data = data[:3016]
    path.write_bytes(bytes(data) if damage != "checksum" else bytes(data[:-1]) + b"\x01")
    if damage != "checksum":
        sums["test-images"] = file_digest(path)
    with pytest.raises(UserError, match=message):
        train(compose_train(root, sums), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_truncated_checkpoint_and_artifact_are_reported(smoke_run, tmp_path):
    run = RunDir(smoke_run["run_dir"])
    bad = tmp_path / "epoch=001.ckpt"
    bad.write_bytes(run.checkpoint(1).read_bytes()[:5000])
    with pytest.raises(UserError, match=r"checkpoint .*epoch=001.ckpt is damaged or truncated"):
        load_module(bad)
    copy = RunDir(tmp_path / "copy")
    copy.gradcam.mkdir(parents=True)
    copy.gradcam_file(1).write_bytes(run.gradcam_file(1).read_bytes()[:1000])
    with pytest.raises(UserError, match=r"Grad-CAM file .*epoch_001.pt is damaged or truncated"):
        load_gradcam_epoch(copy, 1)


def test_checkpoint_of_another_architecture_is_refused(smoke_run, smoke_cfg, tmp_path):
    import shutil

    shutil.copytree(smoke_run["run_dir"], tmp_path / "run")
    cfg = smoke_cfg("resume=true", "model.ndf=16", "trainer.max_epochs=3",
                    "callbacks.gradcam.layers=[block1,block3]")  # fmt: skip
    with pytest.raises(UserError, match=r"model.ndf=16 \(the run's: 8\)"):  # strict resume
        train(cfg, tmp_path / "run")
    (tmp_path / "run" / "config.yaml").unlink()  # without the record, the checkpoint decides
    with pytest.raises(
        UserError, match=r"is of another architecture than model=paper ngf=8 ndf=16"
    ):
        train(cfg, tmp_path / "run")
    state = torch.load(tmp_path / "run" / "checkpoints" / "epoch=001.ckpt", weights_only=True)
    state["state_dict"] = {"foo": torch.zeros(1)}
    torch.save(state, tmp_path / "foreign.ckpt")
    with pytest.raises(UserError, match="does not match the architecture it names"):
        load_module(tmp_path / "foreign.ckpt")


def test_cli_errors_are_one_line_without_traceback(tmp_path, mnist_fixture):
    root, _ = mnist_fixture

    def cli(override: str, run: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "dcgan_xai.train", "experiment=smoke", f"data.root={root}",
               override, f"hydra.run.dir={tmp_path / run}"]  # fmt: skip
        return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)

    unknown = cli("data.colour=red", "a")
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines() == [
        "error: Could not override 'data.colour'. To append to your config use +data.colour=red "
        "Key 'colour' not in 'DataConfig'"
    ]
    assert not (tmp_path / "a").exists()
    wrong = cli("model=resnet", "c")
    assert wrong.returncode == 2
    assert wrong.stderr.strip().splitlines() == [
        "error: In 'train': Could not find 'model/resnet' Available options in 'model': "
        "dcgan_paper dcgan_tutorial"
    ]
    layer = cli("callbacks.gradcam.layers=[head]", "b")
    assert layer.returncode == 2
    assert layer.stderr.strip().splitlines() == [
        "error: unknown Grad-CAM layer 'head' in callbacks.gradcam.layers; valid layers of "
        "model.arch=paper: block1, block2, block3"
    ]
    assert not (tmp_path / "b").exists()


class PoisonOptimizers(L.Callback):
    """Sets the learning rate to infinity at the start of the second epoch."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            for opt in trainer.optimizers:
                for group in opt.param_groups:
                    group["lr"] = float("inf")


def test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(smoke_cfg, tmp_path):
    cfg = smoke_cfg("trainer.max_epochs=3")
    run = RunDir(tmp_path)
    dm, model = build_datamodule(cfg), build_model(cfg)
    trainer = build_trainer(cfg, run, [*build_callbacks(cfg, run), PoisonOptimizers()])
    with pytest.raises(NonFiniteLossError, match=r"loss became non-finite .* at epoch 2, step 0;"):
        trainer.fit(model, datamodule=dm)
    assert run.checkpoint_epochs() == [1]
    assert load_module(run.checkpoint(1)).generator.net[0][0].weight.isfinite().all()
    assert [r["epoch"] for r in read_csv(run.scores_csv)] == ["1"]


def test_an_exploding_loss_stops_training_as_diverged(smoke_cfg, tmp_path):
    cfg = smoke_cfg("model.lr=1e9", "callbacks=none")
    run = RunDir(tmp_path)
    trainer = build_trainer(cfg, run, build_callbacks(cfg, run))
    with pytest.raises(
        NonFiniteLossError,
        match=r"non-finite or above 10000 .* at epoch 1, step \d+; no checkpoint",
    ):
        trainer.fit(build_model(cfg), datamodule=build_datamodule(cfg))
    assert NonFiniteLossError.exit_code == 4


def test_finiteness_read_at_the_logging_cadence_names_the_range_of_steps(smoke_cfg, tmp_path):
    # 8 steps an epoch, logged every 4th: epoch 2 (global steps 8-15) is first read at its step 3
    cfg = smoke_cfg("trainer.max_epochs=3", "trainer.log_every_n_steps=4", "callbacks=none")
    run = RunDir(tmp_path)
    dm, model = build_datamodule(cfg), build_model(cfg)
    trainer = build_trainer(cfg, run, [*build_callbacks(cfg, run), PoisonOptimizers()])
    with pytest.raises(NonFiniteLossError, match=r"at epoch 2, steps 0-3; the last good"):
        trainer.fit(model, datamodule=dm)
    assert run.checkpoint_epochs() == [1]


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_sigkill_after_a_checkpoint_then_resume_matches_an_uninterrupted_run(tmp_path, precision):
    root = tmp_path / "mnist"
    sums = write_fixture(root, n_train=600)
    common = ["experiment=smoke", f"data.root={root}", "data.sources=[local]",
              "data.checksums={" + ",".join(f"{k}:{v}" for k, v in sums.items()) + "}",
              "data.limit=null", "data.batch_size=4", "model.ngf=32", "model.ndf=32",
              "trainer.max_epochs=3", f"trainer.precision={precision}"]  # fmt: skip
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "dcgan_xai.train", *common, f"hydra.run.dir={killed}"]
    # killed as the first checkpoint appears: epoch 1's end or epoch 2 was in progress
    kill_when(cmd, killed / "checkpoints" / "epoch=001.ckpt")
    run = RunDir(killed)
    assert run.checkpoint_epochs() == [1]
    kept = {p: p.read_bytes() for p in (run.probe, run.gradcam_file(1), run.checkpoint(1))}
    resumed = subprocess.run(
        cmd + ["resume=true"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert all(p.read_bytes() == data for p, data in kept.items())
    assert run.checkpoint_epochs() == [1, 2, 3]
    rows = read_csv(run.scores_csv)
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]

    straight = tmp_path / "straight"
    subprocess.run([sys.executable, "-m", "dcgan_xai.train", *common, f"hydra.run.dir={straight}"],
                   cwd=REPO, check=True, capture_output=True, timeout=600)  # fmt: skip
    assert same_weights(run.checkpoint(3), RunDir(straight).checkpoint(3))
    assert rows == read_csv(RunDir(straight).scores_csv)
    assert list(run.tensorboard.glob("events.out.tfevents.*"))  # same event dir, continued


# every bad analyze setting and bad curate setting: the settings and the one line refusing them
BAD_ANALYSIS_SETTINGS = [
        ({"layers": []}, r"layers=\[\] is not allowed; it must be one or more of D's blocks"),
        ({"device": "bogus"}, r"device=bogus is not allowed; it must be auto, cpu, or cuda\[:N\]"),
        ({"batch_size": 0}, r"batch_size=0 is not allowed; it must be >= 1"),
        ({"classifier_epochs": 0}, r"classifier_epochs=0 is not allowed; it must be >= 1"),
        ({"fid_seed": -1}, r"fid_seed=-1 is not allowed; it must be in 0..4294967295"),
        ({"fid_samples": 2_000_000_000}, r"fid_samples=2000000000 is not allowed; it must be in 2..1,000,000"),
        ({"figure_epochs": [-1]}, r"figure_epochs=\[-1\] is not allowed; it must be epochs >= 1"),
        ({"k": 1_000_000_000_000}, r"k=1000000000000 is not allowed; it must be a coarse step in 1..1000"),
        ({"bn_mode": "frozen"}, r"bn_mode=frozen is not allowed; it must be one of batch, eval"),
        ({"normalize": "zscore"}, r"normalize=zscore is not allowed; it must be one of max, minmax"),
        ({"mask_threshold": float("nan")}, r"mask_threshold=nan is not allowed; it must be in \[0, 1\]"),
    ]  # fmt: skip
BAD_CURATION_SETTINGS = [
        ({"device": "bogus"}, r"device=bogus is not allowed; it must be auto, cpu, or cuda\[:N\]"),
        ({"seed": -1}, r"seed=-1 is not allowed; it must be in 0..4294967295"),
        ({"seed": 10**20}, r"seed=100000000000000000000 is not allowed"),
        ({"mask_threshold": float("nan")}, r"mask_threshold=nan is not allowed; it must be in \[0, 1\]"),
        ({"flag_share": 2.0}, r"flag_share=2.0 is not allowed; it must be in \[0, 1\], or null"),
    ]  # fmt: skip


@pytest.mark.parametrize("settings, message", BAD_ANALYSIS_SETTINGS)
def test_bad_analysis_settings_are_refused_in_one_line(settings, message):
    with pytest.raises(UserError, match=message) as err:
        AnalysisSettings(**settings).check()
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("settings, message", BAD_CURATION_SETTINGS)
def test_bad_curation_settings_are_refused_before_the_run_is_read(tmp_path, settings, message):
    (tmp_path / "run").mkdir()
    with pytest.raises(UserError, match=message) as err:
        curate_run(tmp_path / "run", CurationSettings(epoch=1, progress=False, **settings))
    assert "\n" not in str(err.value)
    assert not any((tmp_path / "run").iterdir())


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(tmp_path, monkeypatch, capsys):
    from dcgan_xai.errors import report_user_errors
    from dcgan_xai.files import atomic_write_text

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fsync", full)
    with pytest.raises(SystemExit) as exit_:
        report_user_errors(lambda: atomic_write_text(tmp_path / "selection.json", "{}"))
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert (
        len(lines) == 1
        and lines[0].startswith("error: cannot write")
        and "No space left" in lines[0]
    )
    assert not list(tmp_path.iterdir())  # no target, no temporary file
    with pytest.raises(OSError, match="Is a directory"):  # other OS errors stay tracebacks
        report_user_errors(lambda: (tmp_path / "d").mkdir() or open(tmp_path / "d"))


@pytest.mark.parametrize(
    "damage, message",
    [
        ("extra_value", r"scores.csv line 2 is damaged \(ValueError: it has more or fewer values than the header\)"),
        ("no_epoch_column", r"scores.csv has no column 'epoch'; it is not a CSV table this project wrote, or a damaged one"),
        ("huge_field", r"scores.csv is not a readable CSV table \(Error: field larger than field limit"),
        ("not_utf8", r"scores.csv is not a readable CSV table \(UnicodeDecodeError"),
        ("config_tag", r"config.yaml is not a readable config \("),
        ("selection", r"selection.json is damaged \(KeyError: 'selected_epoch'\); run `python -m dcgan_xai.analyze"),
    ],
)  # fmt: skip
def test_damaged_tables_and_records_are_one_line(smoke_run, smoke_cfg, tmp_path, damage, message):
    import shutil

    from dcgan_xai.analysis.curation import curate_run

    run = RunDir(tmp_path / "r")
    shutil.copytree(smoke_run["run_dir"], run.root)
    lines = run.scores_csv.read_text().splitlines()
    if damage == "extra_value":
        run.scores_csv.write_text("\n".join([lines[0], lines[1] + ",7", *lines[2:]]) + "\n")
    elif damage == "no_epoch_column":
        run.scores_csv.write_text("\n".join(line.split(",", 1)[1] for line in lines) + "\n")
    elif damage == "huge_field":
        run.scores_csv.write_text("\n".join([lines[0], "x" * 200_000, *lines[2:]]) + "\n")
    elif damage == "not_utf8":
        run.scores_csv.write_bytes(run.scores_csv.read_bytes() + b"\xff\xfe,\n")
    elif damage == "config_tag":
        (run.root / "config.yaml").write_text("seed: !!python/object:os.system 1\n")
    else:
        run.analysis.mkdir(exist_ok=True)
        (run.analysis / "selection.json").write_text('{"epoch": 2}')
    same = "callbacks.gradcam.layers=[block1,block3]"
    with pytest.raises(UserError, match=message) as err:
        if damage == "selection":
            curate_run(run.root, CurationSettings(epoch="selected", progress=False))
        else:
            train(smoke_cfg(same, "resume=true", "trainer.max_epochs=3"), run.root)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "command, message",
    [
        (["study", "-m", "+study=nonexistent"], r"^error: In 'study': Could not find 'study/nonexistent' Available options in 'study': claim "),
        (["study", "-m", "+study=claim", "nosuchkey=1"], r"^error: Could not override 'nosuchkey'\..* not in 'StudySettings'$"),
        (["study", "-m", "+study=claim", "seeds=[0,1]", "analysis.k=0"], r"^error: analysis.k=0 is not allowed"),
        (["train", "-m", "experiment=smoke", "seed=0,1", "model.lr=-1"], r"^error: model.lr=-1.0 is not allowed; it must be a finite number > 0$"),
        (["curate", "run_dir=x", "name=kürbis"], r"^error: name=kürbis cannot be read by Hydra's override grammar .*quote the value: key='value'$"),
    ],
)  # fmt: skip
def test_bad_multirun_and_unreadable_overrides_are_one_line_before_any_folder(
    tmp_path, command, message
):
    sweep = tmp_path / "sweep"
    done = subprocess.run([sys.executable, "-m", f"dcgan_xai.{command[0]}", *command[1:],
                           f"hydra.sweep.dir={sweep}", f"hydra.run.dir={sweep}"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)  # fmt: skip
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and re.search(message, lines[0]), done.stderr
    assert not sweep.exists()


@pytest.mark.parametrize(
    "command, message",
    [
        (["study", "+study=nope"], r"^error: \+study=nope is not allowed: the study config has no setting 'study' and no config group 'study' is found \(the package's configs and .*/conf are searched\)$"),
        (["study", "-m", "+study=claim"], r"^error: \+study=claim is not allowed: the study config has no setting 'study'"),
        (["train", "+foo=1"], r"^error: \+foo=1 is not allowed: the train config has no setting 'foo'"),
        (["study", "seeds=[0]", "train_overrides=['+foo=1']"], r"^error: \+foo=1 is not allowed: the train config has no setting 'foo'"),
        (["train", "+trainer.fast=true"], r"^error: \+trainer.fast=true is not allowed: trainer has no setting 'fast'"),
    ],
)  # fmt: skip
def test_a_key_no_config_has_is_refused_in_any_folder(tmp_path, command, message):
    """Hydra adds ``+key=value`` to a structured config silently: outside the project's folder,
    where no ``conf/study`` is found, ``+study=nope`` would drop the study's name and run the
    default study. Here it is one line, and nothing is written in the folder."""
    done = subprocess.run([sys.executable, "-m", f"dcgan_xai.{command[0]}", *command[1:]],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)  # fmt: skip
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and re.search(message, lines[0]), done.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command, group", [(["train", "experiment=mine"], "experiment"),
                                            (["study", "+study=mine"], "study")])  # fmt: skip
def test_a_users_config_without_its_package_header_is_one_line_saying_so(tmp_path, command, group):
    mine = tmp_path / "conf" / group / "mine.yaml"
    mine.parent.mkdir(parents=True)
    mine.write_text("seeds: [0]\n" if group == "study" else "model:\n  lr: 4.0e-4\n")
    done = subprocess.run([sys.executable, "-m", f"dcgan_xai.{command[0]}", command[1]],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)  # fmt: skip
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: In '{group}/mine': ConfigKeyError")
    assert lines[0].endswith(f"; a file in {group}/ sets top-level keys only with the line "
                             "'# @package _global_' at its top")  # fmt: skip
    assert [p.name for p in tmp_path.iterdir()] == ["conf"]


@pytest.mark.parametrize("command", ["train", "study"])
def test_the_slurm_launcher_where_no_controller_answers_is_one_line(tmp_path, command):
    """Before Hydra makes the sweep folder: no sbatch on PATH, then a controller that does not
    answer (a stand-in ``scontrol`` failing as Slurm's does off a cluster). The launch through
    a real cluster is tests/test_slurm.py's."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sweep = tmp_path / "sweep"
    extra = (
        ["experiment=smoke", "seed=0,1"]
        if command == "train"
        else ["+study=claim", f"out_dir={sweep}"]
    )
    args = [sys.executable, "-m", f"dcgan_xai.{command}", "-m", "hydra/launcher=slurm", *extra,
            f"hydra.sweep.dir={sweep}"]  # fmt: skip
    expected = [r"^error: the Slurm launcher submits with sbatch, which is not on PATH here; ",
                r"^error: the Slurm launcher needs a Slurm controller, and none answers here "
                r"\(scontrol ping: scontrol: fatal: Could not establish a configuration source\); "]  # fmt: skip
    for message in expected:
        done = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=120,
                              env={**os.environ, "PATH": str(bin_dir)})  # fmt: skip
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert re.search(message, lines[0]), lines[0]
        assert not sweep.exists()
        for name in ("sbatch", "scontrol"):  # the second round: Slurm's tools, no controller
            tool = bin_dir / name
            tool.write_text("#!/bin/sh\necho 'scontrol: fatal: Could not establish a "
                            "configuration source' >&2\nexit 1\n")  # fmt: skip
            tool.chmod(0o755)


def test_a_study_name_no_folder_holds_is_refused_with_full_errors_too(tmp_path):
    """With ``HYDRA_FULL_ERROR=1`` the command line is left to Hydra; the study still refuses
    the key Hydra added (with a traceback) instead of running the default study."""
    done = subprocess.run([sys.executable, "-m", "dcgan_xai.study", "+study=nope"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={**os.environ, "HYDRA_FULL_ERROR": "1"})  # fmt: skip
    assert done.returncode != 0
    assert "UserError: +study=nope is not allowed" in done.stderr.splitlines()[-1], done.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "where, message",
    [
        ("under_a_file", r"^error: hydra.run.dir=.*/notes.txt/run is under .*/notes.txt, which is a file; choose a folder$"),
        ("proc", r"^error: hydra.run.dir=/proc/dcgan_xai_run cannot be made: /proc takes no new folder \(.*\); choose a writable place$"),
    ],
)  # fmt: skip
def test_a_run_dir_that_cannot_be_made_is_one_line(tmp_path, where, message):
    (tmp_path / "notes.txt").write_text("the user's")
    run_dir = tmp_path / "notes.txt" / "run" if where == "under_a_file" else "/proc/dcgan_xai_run"
    done = subprocess.run([sys.executable, "-m", "dcgan_xai.train", "experiment=smoke",
                           f"hydra.run.dir={run_dir}"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)  # fmt: skip
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and re.search(message, lines[0]), done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def _override(key: str, value) -> str:
    return f"{key}=" + (f"[{','.join(map(str, value))}]" if isinstance(value, list) else str(value))


@pytest.mark.slow
def test_every_bad_analyze_and_curate_setting_is_one_line_from_the_command(smoke_run, tmp_path):
    """The two tables above through ``python -m dcgan_xai.analyze`` and ``curate``, on a copy of
    a finished run: exit 2, one line on stderr, no traceback, every file as it was."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(smoke_run["run_dir"], run_dir)
    before = _digests(tmp_path)
    failures = []
    for command, table in (("analyze", BAD_ANALYSIS_SETTINGS), ("curate", BAD_CURATION_SETTINGS)):
        for settings, message in table:
            overrides = [_override(k, v) for k, v in settings.items()]
            if command == "curate":
                overrides.append("epoch=1")  # not its default (selected), which needs an analysis
            done = subprocess.run([sys.executable, "-m", f"dcgan_xai.{command}", f"run_dir={run_dir}",
                                   *overrides],
                                  capture_output=True, text=True, cwd=tmp_path, timeout=300)  # fmt: skip
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            if (done.returncode != 2 or len(lines) != 1 or not re.search(message, lines[0])
                    or _digests(tmp_path) != before):  # fmt: skip
                failures.append((command, overrides, done.returncode, done.stderr[-300:]))
    assert not failures
