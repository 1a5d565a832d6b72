"""A run dir is owned: nothing the user had is deleted, no two runs mix, checkpoints are atomic."""

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from dcgan_xai.errors import UserError
from dcgan_xai.files import read_csv
from dcgan_xai.models.checkpoint import AtomicCheckpointIO
from dcgan_xai.runs.layout import RunDir
from dcgan_xai.runs.load import load_module
from dcgan_xai.runs.resume import resume_checkpoint
from dcgan_xai.training import train
from tests.helpers import REPO, data_overrides, same_weights


def cli(root, *overrides, timeout=300, **kwargs):
    cmd = [sys.executable, "-m", "dcgan_xai.train", "experiment=smoke", f"data.root={root}",
           *overrides]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=timeout, **kwargs)


def test_a_refused_start_keeps_the_users_files(tmp_path, mnist_fixture):
    root, _ = mnist_fixture
    run = tmp_path / "x"
    (run / ".hydra").mkdir(parents=True)
    (run / "notes.log").write_text("notes")
    old = time.time() - 60
    for p in (run / ".hydra", run / "notes.log"):
        os.utime(p, (old, old))
    refused = cli(root, f"hydra.run.dir={run}", "model.instance_noise=-1")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "error: model.instance_noise=-1.0 is not allowed; it must be a finite number >= 0"
    ]
    assert (run / "notes.log").read_text() == "notes" and (run / ".hydra").is_dir()
    assert sorted(p.name for p in run.iterdir()) == [".hydra", "notes.log"]
    assert not any((run / ".hydra").iterdir())  # Hydra's files of this refused start are gone
    fresh = tmp_path / "new"
    assert cli(root, f"hydra.run.dir={fresh}", "model.instance_noise=-1").returncode == 2
    assert not fresh.exists()


def _one_error_line(stderr, named):
    last = stderr.strip().splitlines()[-1]
    return last.startswith("error: ") and named in last and "Traceback" not in stderr


def _files(root):
    """Every file under ``root`` and its bytes, but the lock (which names its latest holder)."""
    files = [p for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"]
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def test_a_refused_start_leaves_the_users_hydra_record_and_temp_files(tmp_path, mnist_fixture):
    """Hydra writes nothing into the run dir: a refused start cannot overwrite (and then
    delete) the user's own .hydra/ files, nor their .*.tmp files."""
    data = data_overrides(*mnist_fixture)
    run = tmp_path / "x"
    (run / ".hydra").mkdir(parents=True)
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (run / ".hydra" / name).write_text(f"the user's {name}\n")
    (run / ".notes.tmp").write_text("draft")
    before = _files(run)
    refused = cli(data[0][10:], *data, f"hydra.run.dir={run}", "data.limit=100000")
    assert refused.returncode == 2 and _one_error_line(refused.stderr, "data.limit=100000")
    assert _files(run) == before


def test_a_refused_start_on_a_finished_run_leaves_its_record(tmp_path, mnist_fixture):
    data = data_overrides(*mnist_fixture)
    run = tmp_path / "r"
    assert cli(data[0][10:], *data, f"hydra.run.dir={run}", "trainer.max_epochs=1").returncode == 0
    assert "trainer.max_epochs=1" in (run / ".hydra" / "overrides.yaml").read_text()
    assert (run / "train.log").stat().st_size > 0
    (run / ".notes.tmp").write_text("draft")
    before = _files(run)
    for extra, named in (([], "already holds a run"), (["resume=true", "seed=7"], "seed=7")):
        refused = cli(data[0][10:], *data, f"hydra.run.dir={run}", "trainer.max_epochs=1", *extra)
        assert refused.returncode == 2 and _one_error_line(refused.stderr, named)
        assert _files(run) == before  # .hydra/ still says what the run was trained with


def test_any_run_artifact_needs_resume(smoke_run, smoke_cfg, tmp_path):
    shutil.copytree(smoke_run["run_dir"], tmp_path / "r")
    (tmp_path / "r" / "checkpoints" / "last.ckpt").unlink()  # a kill between the two writes
    with pytest.raises(UserError, match="already holds a run; pass resume=true"):
        train(smoke_cfg("seed=7"), tmp_path / "r")
    for name in ("checkpoints", "config.yaml"):
        path = tmp_path / "r" / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(UserError, match="already holds a run"):  # probe.pt and gradcam/ remain
        train(smoke_cfg("seed=7"), tmp_path / "r")


def test_resume_where_no_run_is_yet_starts_one(smoke_cfg, tmp_path):
    """A job script may always pass resume=true: a requeued job stopped before its first
    checkpoint starts the run (docs/runs.md)."""
    train(smoke_cfg("resume=true", "trainer.max_epochs=1"), tmp_path / "new")
    assert RunDir(tmp_path / "new").checkpoint_epochs() == [1]


def test_resume_is_strict(smoke_run, smoke_cfg, tmp_path):
    shutil.copytree(smoke_run["run_dir"], tmp_path / "r")
    same = "callbacks.gradcam.layers=[block1,block3]"
    with pytest.raises(
        UserError, match=r"model.lr=0.01 \(the run's: 0.0002\); seed=5 \(the run's: 0\)"
    ):
        train(smoke_cfg(same, "resume=true", "seed=5", "model.lr=0.01"), tmp_path / "r")
    with pytest.raises(UserError, match="trainer.max_epochs=1 is lower than the run's 2"):
        train(smoke_cfg(same, "resume=true", "trainer.max_epochs=1"), tmp_path / "r")
    assert "max_epochs: 2" in (tmp_path / "r" / "config.yaml").read_text()


def test_resume_of_a_run_made_before_a_setting_existed(smoke_run, smoke_cfg, tmp_path):
    """A setting added to the schema later is the run's default, not a changed setting; a
    value other than the default is refused."""
    shutil.copytree(smoke_run["run_dir"], tmp_path / "r")
    config = tmp_path / "r" / "config.yaml"
    lines = config.read_text().splitlines(keepends=True)
    config.write_text("".join(x for x in lines if "lr_milestones" not in x))
    same = "callbacks.gradcam.layers=[block1,block3]"
    with pytest.raises(UserError, match=r"model.lr_milestones=\[1\] \(the run's: \[\]\)"):
        train(smoke_cfg(same, "resume=true", "model.lr_milestones=[1]"), tmp_path / "r")
    train(smoke_cfg(same, "resume=true", "trainer.max_epochs=3"), tmp_path / "r")


def test_resume_without_last_ckpt_or_with_a_damaged_one_uses_the_newest_good_epoch(
    smoke_run, smoke_cfg, tmp_path
):
    same = "callbacks.gradcam.layers=[block1,block3]"
    straight = train(smoke_cfg(same, "trainer.max_epochs=3"), tmp_path / "straight")
    for damage in ("missing", "truncated"):
        run = RunDir(tmp_path / damage)
        shutil.copytree(straight["run_dir"], run.root)
        for e in (2, 3):
            run.checkpoint(e).unlink()
        if damage == "missing":
            run.last_checkpoint.unlink()
        else:  # last.ckpt truncated, epoch 1 good
            data = run.last_checkpoint.read_bytes()
            run.last_checkpoint.write_bytes(data[: len(data) // 3])
        shutil.copytree(tmp_path / "straight" / "gradcam", run.gradcam, dirs_exist_ok=True)
        train(smoke_cfg(same, "trainer.max_epochs=3", "resume=true"), run.root)
        assert run.checkpoint_epochs() == [1, 2, 3]
        assert not list(run.checkpoints.glob("*-v*.ckpt"))
        assert same_weights(run.checkpoint(3), RunDir(straight["run_dir"]).checkpoint(3))
        assert same_weights(run.last_checkpoint, run.checkpoint(3))


def _flip_a_byte_inside(path):
    """Change one byte of a tensor's storage: the zip still opens and the file still loads."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    torch.load(path, weights_only=True)  # loads without a word: only the recorded digest knows


def test_a_damaged_or_replaced_checkpoint_is_refused(smoke_run, smoke_cfg, tmp_path):
    """Issue 29, severe case 5: each checkpoint's SHA-256 is recorded as it is written and
    checked before resume, analyze or curate use it; so is the run that wrote it."""
    same = "callbacks.gradcam.layers=[block1,block3]"
    run = RunDir(tmp_path / "r")
    shutil.copytree(smoke_run["run_dir"], run.root)
    assert sorted(json.loads((run.checkpoints / "sha256.json").read_text())) == [
        "epoch=001.ckpt", "epoch=002.ckpt", "last.ckpt"]  # fmt: skip
    for path in (run.last_checkpoint, run.checkpoint(2)):
        _flip_a_byte_inside(path)
    with pytest.raises(UserError, match=r"epoch=002.ckpt is not the file training wrote there"):
        load_module(run.checkpoint(2))
    with pytest.warns(UserWarning, match="epoch=002.ckpt is not the file training wrote there"):
        path, _ = resume_checkpoint(run)
    assert path == run.checkpoint(1)
    # another seed's checkpoints, digests and all, in this run's folder
    other = train(smoke_cfg(same, "seed=5", "trainer.max_epochs=1"), tmp_path / "seed5")
    shutil.copy(RunDir(other["run_dir"]).checkpoint(1), run.checkpoint(1))
    shutil.copy(RunDir(other["run_dir"]).checkpoints / "sha256.json", run.checkpoints)
    with pytest.raises(UserError, match=r"written by another run: seed=5 \(this run's: 0\)"):
        load_module(run.checkpoint(1))
    with pytest.raises(UserError, match="no checkpoint in .* can be read"):
        train(smoke_cfg(same, "resume=true", "trainer.max_epochs=3"), run.root)


def test_a_start_refused_by_the_lock_leaves_the_holders_files(tmp_path, mnist_fixture):
    """The refused process never held the lock: its clean-up must not touch the running
    training's lock, log or Hydra record."""
    root, _ = mnist_fixture
    run = tmp_path / "r"
    (run / ".hydra").mkdir(parents=True)
    (run / "train.log").write_text("the holder's log\n")
    with open(run / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fh.write("pid 12345 on somehost since 2026-01-01 00:00:00\n")
        fh.flush()
        refused = cli(root, f"hydra.run.dir={run}")
        assert refused.returncode == 2 and "is in use by another training" in refused.stderr
        assert (run / ".lock").read_text().startswith("pid 12345")
        assert (run / "train.log").read_text().startswith("the holder's log")


def test_a_second_training_on_a_locked_run_dir_is_refused(smoke_cfg, tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    with open(run / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fh.write("pid 12345 on somehost since 2026-01-01 00:00:00\n")
        fh.flush()
        with pytest.raises(
            UserError, match=r"is in use by another training \(pid 12345 on somehost"
        ):
            train(smoke_cfg(), run)
    assert sorted(p.name for p in run.iterdir()) == [".lock"]  # the holder's file is untouched


def test_checkpoints_are_written_beside_their_target_and_renamed(tmp_path, monkeypatch):
    target = tmp_path / "epoch=001.ckpt"
    AtomicCheckpointIO().save_checkpoint({"a": torch.ones(2)}, target)
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.ones(2))
    good = target.read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        AtomicCheckpointIO().save_checkpoint({"a": torch.zeros(2)}, target)
    assert target.read_bytes() == good  # the old file is intact, no temp file is left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch=001.ckpt", "sha256.json"]


@pytest.mark.slow
def test_sigterm_stops_with_exit_code_3_and_the_run_resumes(tmp_path, mnist_fixture):
    root, sums = mnist_fixture
    run = RunDir(tmp_path / "r")
    args = [f"hydra.run.dir={run.root}", *data_overrides(root, sums)[1:]]
    proc = subprocess.Popen(
        [sys.executable, "-m", "dcgan_xai.train", "experiment=smoke", f"data.root={root}", *args,
         "trainer.max_epochs=20"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 240
    while not run.checkpoint(1).is_file() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    assert err.strip().splitlines()[-1].startswith("error: interrupted by SIGTERM after ")
    done = run.checkpoint_epochs()
    assert done and done[-1] < 20
    resumed = cli(root, *args, "trainer.max_epochs=21", "resume=true", timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert run.checkpoint_epochs() == list(range(1, 22))
    assert [int(r["epoch"]) for r in read_csv(run.scores_csv)] == list(range(1, 22))


def test_resume_names_a_damaged_table_line_and_removes_stale_temp_files(
    smoke_run, smoke_cfg, tmp_path
):
    same = "callbacks.gradcam.layers=[block1,block3]"
    run = RunDir(tmp_path / "r")
    shutil.copytree(smoke_run["run_dir"], run.root)
    with open(run.scores_csv, "a") as f:
        f.write("garbage,line\n")
    with pytest.raises(UserError, match=r"scores.csv line 6 is damaged .*; delete that line"):
        train(smoke_cfg(same, "resume=true", "trainer.max_epochs=3"), run.root)
    lines = run.scores_csv.read_text().splitlines()
    run.scores_csv.write_text("\n".join(lines[:-1]) + "\n")
    stale = run.gradcam / ".scores.csv.abc123.dcgan_xai.tmp"
    stale.write_text("half a file")
    users = run.root / ".notes.tmp"  # a temporary file of the user's, not of an atomic write
    users.write_text("mine")
    train(smoke_cfg(same, "resume=true", "trainer.max_epochs=3"), run.root)
    assert not stale.exists() and run.checkpoint_epochs() == [1, 2, 3]
    assert users.read_text() == "mine"


@pytest.fixture
def tmpfs_tempdir(tmp_path, monkeypatch):
    """The system temp dir on a tmpfs, another filesystem than the run dir (needs root)."""
    import tempfile

    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)]).returncode:
        pytest.skip("this machine does not allow mounting a tmpfs")
    monkeypatch.setenv("TMPDIR", str(mount))
    monkeypatch.setattr(tempfile, "tempdir", str(mount))
    yield mount
    subprocess.run(["umount", str(mount)])


def test_checkpoints_never_pass_through_a_temp_dir_on_another_filesystem(
    smoke_cfg, tmp_path, tmpfs_tempdir, monkeypatch
):
    assert subprocess.run(["stat", "-f", "-c", "%T", str(tmpfs_tempdir)], capture_output=True,
                          text=True).stdout.strip() == "tmpfs"  # fmt: skip
    run = RunDir(tmp_path / "r")
    train(smoke_cfg("callbacks=none"), run.root)
    assert run.checkpoint_epochs() == [1, 2] and not list(tmpfs_tempdir.rglob("*"))
    good = run.checkpoint(2).read_bytes()

    def killed(*args, **kwargs):  # the write dies before its rename
        raise KeyboardInterrupt

    monkeypatch.setattr("os.replace", killed)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"a": torch.zeros(3)}, run.checkpoint(2))
    assert run.checkpoint(2).read_bytes() == good
    assert sorted(p.name for p in run.checkpoints.iterdir()) == [
        "epoch=001.ckpt",
        "epoch=002.ckpt",
        "last.ckpt",
        "sha256.json",
    ]
    assert not list(tmpfs_tempdir.rglob("*"))


def test_a_training_start_leaves_the_temp_files_of_a_curate_writing_into_the_run(
    smoke_run, smoke_cfg, tmp_path
):
    """The stale-temp clean-up covers the training's own folders only: a curate or analyze
    writing into the same run at that moment keeps its temporary folder and files."""
    run = RunDir(tmp_path / "r")
    shutil.copytree(smoke_run["run_dir"], run.root)
    busy = run.root / "curation" / ".c.abc123.dcgan_xai.tmp"
    busy.mkdir(parents=True)
    (busy / ".manifest.csv.def456.dcgan_xai.tmp").write_text("being written")
    (run.gradcam / ".scores.csv.abc.dcgan_xai.tmp").write_text("left by a kill")
    same = "callbacks.gradcam.layers=[block1,block3]"
    train(smoke_cfg(same, "resume=true", "trainer.max_epochs=3"), run.root)
    assert (busy / ".manifest.csv.def456.dcgan_xai.tmp").read_text() == "being written"
    assert not (run.gradcam / ".scores.csv.abc.dcgan_xai.tmp").exists()


@pytest.mark.slow
@pytest.mark.parametrize("after_s", [0.5, 2.0, 4.0])
def test_sigterm_while_starting_exits_3_with_its_line(tmp_path, mnist_fixture, after_s):
    """Before training starts (imports, config, data), SIGTERM is exit 3 and one line, not 143
    without a word; the run dir is left as it was."""
    run = tmp_path / "r"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dcgan_xai.train", "experiment=smoke", f"hydra.run.dir={run}",
         *data_overrides(*mnist_fixture), "trainer.max_epochs=200"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(after_s)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: interrupted by SIGTERM"), err
    if "before training started" in last:
        assert not run.exists() or not any(run.iterdir())
