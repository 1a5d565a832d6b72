"""Shared fixtures: a small IDX fixture of MNIST's layout, composed configs, smoke runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig

from dcgan_xai.config import compose_config
from dcgan_xai.data.idx import write_idx
from dcgan_xai.data.sources import FILES
from dcgan_xai.files import file_digest


def fake_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28x28 uint8 images: a bright bar whose place and shape depend on the label."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = (rng.random((n, 28, 28)) * 30).astype(np.uint8)
    for i, label in enumerate(labels):
        row = 4 + 2 * label
        images[i, row : row + 6, 6 + label : 14 + label] = 255
    return images, labels.astype(np.uint8)


def write_fixture(root: Path, n_train: int = 300, n_test: int = 120) -> dict[str, str]:
    """Write the four IDX files into ``root``; return their MD5s keyed like ``FILES``."""
    root.mkdir(parents=True, exist_ok=True)
    train_x, train_y = fake_digits(n_train, 0)
    test_x, test_y = fake_digits(n_test, 1)
    arrays = {
        "train-images": train_x,
        "train-labels": train_y,
        "test-images": test_x,
        "test-labels": test_y,
    }
    for key, array in arrays.items():
        write_idx(root / FILES[key], array)
    return {key: file_digest(root / FILES[key]) for key in FILES}


@pytest.fixture(scope="session")
def mnist_fixture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("mnist")
    return root, write_fixture(root)


def compose_train(root: Path, checksums: dict[str, str], *overrides: str) -> DictConfig:
    """The ``train`` config with ``experiment=smoke`` pointed at a fixture."""
    sums = ",".join(f"{k}:{v}" for k, v in checksums.items())
    return compose_config("train", ["experiment=smoke", f"data.root={root}", "data.sources=[local]",
                                    f"data.checksums={{{sums}}}", *overrides])  # fmt: skip


@pytest.fixture
def smoke_cfg(mnist_fixture: tuple[Path, dict[str, str]]):
    root, sums = mnist_fixture

    def make(*overrides: str) -> DictConfig:
        return compose_train(root, sums, *overrides)

    return make


@pytest.fixture(scope="session")
def smoke_run(mnist_fixture, tmp_path_factory) -> dict:
    """One 2-epoch smoke run with Grad-CAM on two layers, shared by read-only tests."""
    from dcgan_xai.training import train

    root, sums = mnist_fixture
    cfg = compose_train(root, sums, "callbacks.gradcam.layers=[block1,block3]")
    run_dir = tmp_path_factory.mktemp("smoke_run")
    result = train(cfg, run_dir)
    result["cfg"] = cfg
    return result
