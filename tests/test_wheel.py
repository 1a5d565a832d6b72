"""A built wheel holds everything a run needs: installed outside the checkout, it trains a
user's own experiment from the ``conf/`` of the directory it runs in."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.helpers import REPO, data_overrides


@pytest.mark.slow
def test_a_built_wheel_trains_a_users_own_experiment_outside_the_checkout(tmp_path, mnist_fixture):
    root, sums = mnist_fixture
    wheels, source = tmp_path / "wheels", tmp_path / "source"
    # built from a copy of the checkout's own files: the build writes nothing into the checkout,
    # and no file a build left there earlier (build/lib) can slip into the wheel
    top = {".git", ".venv", "build", "data", "outputs", "multirun", "studies"}  # top level only:
    # dcgan_xai/data is a package, not the data folder
    shutil.copytree(REPO, source, ignore=lambda folder, names: [
        n for n in names
        if (Path(folder) == REPO and n in top) or n == "__pycache__" or n.endswith(".egg-info")
    ])  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = wheels.glob("dcgan_xai-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = [n for n in zf.namelist() if n.startswith("dcgan_xai/conf/")]
    assert "dcgan_xai/conf/experiment/mnist64.yaml" in shipped
    assert not [n for n in shipped if "smoke" in n or "plateau" in n or "/study/" in n], shipped
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True, timeout=300)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    # the dependencies (torch, lightning, ...) are read from this environment's site-packages,
    # as a path (its .pth files, among them this checkout's editable install, are not run)
    Path(purelib, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run(
        [str(python), "-c", "import dcgan_xai; print(dcgan_xai.__file__)"],
        cwd=elsewhere, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    assert where.startswith(purelib), where  # the wheel's copy, not the checkout's
    mine = elsewhere / "conf" / "experiment" / "mine.yaml"  # the user's own experiment
    mine.parent.mkdir(parents=True)
    shutil.copy(REPO / "conf" / "experiment" / "smoke.yaml", mine)
    for form, experiment in (("plain", "experiment=mine"), ("plus", "+experiment=mine")):
        run_dir = elsewhere / form
        proc = subprocess.run(
            [str(python), "-m", "dcgan_xai.train", experiment, *data_overrides(root, sums),
             f"hydra.run.dir={run_dir}"],
            cwd=elsewhere, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert sorted(p.name for p in (run_dir / "checkpoints").glob("epoch=*.ckpt")) == [
            "epoch=001.ckpt", "epoch=002.ckpt",
        ]  # fmt: skip
