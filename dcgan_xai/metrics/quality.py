"""Generator quality: FID and KID in the feature space of an MNIST classifier trained here."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from dcgan_xai.config import FidProtocol
from dcgan_xai.data.idx import read_idx
from dcgan_xai.data.mnist import MNISTDataModule, Split, load_split, to_unit_range
from dcgan_xai.errors import UserError
from dcgan_xai.files import atomic_torch_save, file_digest, safe_torch_load
from dcgan_xai.models.sampling import generate
from dcgan_xai.state import GLOBAL_RNG, global_rng


class MNISTClassifier(nn.Module):
    """A small CNN on 64x64 digits in [-1, 1]; its 128-d penultimate layer is the feature space."""

    num_features = 128

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )

        self.body = nn.Sequential(
            nn.AvgPool2d(2),  # (N, 1, 32, 32)
            block(1, 32),  # (N, 32, 16, 16)
            block(32, 64),  # (N, 64, 8, 8)
            block(64, 128),  # (N, 128, 4, 4)
            nn.Flatten(),
            nn.Linear(128 * 16, self.num_features),
            nn.ReLU(inplace=True),
        )
        self.classes = nn.Linear(self.num_features, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classes(self.features(x))


class Features(nn.Module):
    """Features computed once a batch and given to both FID and KID (each would otherwise run
    the classifier on every batch again), in the form torchmetrics takes: the identity."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


@torch.no_grad()
def accuracy(model: nn.Module, split: Split, batch_size: int = 1000) -> float:
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for rows in torch.arange(len(split)).split(batch_size):
        images, labels, _ = split[rows]
        logits = model(to_unit_range(images.to(device)))
        correct += int((logits.argmax(1).cpu() == labels).sum())
    return correct / len(split)


def train_classifier(
    train: Split,
    test: Split,
    seed: int = 0,
    epochs: int = 3,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
) -> tuple[MNISTClassifier, float]:
    """Train :class:`MNISTClassifier` (Adam, one-cycle schedule); return it and its test accuracy."""
    gen = torch.Generator().manual_seed(seed)
    with global_rng([]):
        torch.manual_seed(seed)
        model = MNISTClassifier().to(device)
    steps = epochs * -(-len(train) // batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    model.train()
    for _ in range(epochs):
        for rows in torch.randperm(len(train), generator=gen).split(batch_size):
            images, labels, _ = train[rows]
            x = to_unit_range(images.to(device))
            shift = torch.randint(-2, 3, (2,), generator=gen).tolist()
            x = torch.roll(x, shifts=shift, dims=(2, 3))  # light augmentation
            loss = F.cross_entropy(model(x), labels.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval(), accuracy(model, test)


def classifier_path(dm: MNISTDataModule, protocol: FidProtocol) -> Path:
    """Where the classifier of ``protocol`` on ``dm``'s data is cached (``dm.classifier_dir``),
    keyed by image size, epochs and the test file."""
    md5 = dm.checksums["test-images"][:8]
    return (
        dm.classifier_dir / f"mnist{dm.image_size}-cnn-e{protocol.classifier_epochs}-seed0-{md5}.pt"
    )


def load_or_train_classifier(
    path: Path,
    train: Split | None,
    test: Split,
    seed: int = 0,
    epochs: int = 3,
    min_accuracy: float = 0.99,
    device: str | torch.device = "cpu",
) -> tuple[MNISTClassifier, float]:
    """The cached classifier at ``path`` (trained and saved first if missing).

    Raises:
        UserError: the classifier's test accuracy is below ``min_accuracy``.
    """
    with GLOBAL_RNG:  # trainings in threads of one process: one trains it, the others read it
        if path.is_file():
            saved = safe_torch_load(path, "classifier")
            model = MNISTClassifier()
            model.load_state_dict(saved["state_dict"])
            acc = float(saved["accuracy"])
        else:
            assert train is not None, "no cached classifier: its training split is needed"
            rank_zero_info(f"training the MNIST classifier of FID/KID ({epochs} epochs, seed "
                           f"{seed}), once: later runs read it from {path}")  # fmt: skip
            start = time.perf_counter()
            model, acc = train_classifier(train, test, seed, epochs, device=device)
            model = model.cpu()
            rank_zero_info(f"classifier trained in {time.perf_counter() - start:.0f} s: test "
                           f"accuracy {acc:.4f}")  # fmt: skip
            atomic_torch_save(
                {
                    "state_dict": model.state_dict(),
                    "accuracy": acc,
                    "seed": seed,
                    "epochs": epochs,
                    "seconds": time.perf_counter() - start,
                },
                path,
            )
    if acc < min_accuracy:
        raise UserError(
            f"the MNIST classifier at {path} reaches {acc:.4f} test accuracy, below the "
            f"required {min_accuracy}; delete it to retrain with more epochs"
        )
    return model.eval().to(device), acc


@dataclass
class QualityMeter:
    """FID and KID of generated images against a fixed real set, in the classifier's space.

    The real features are computed once; :meth:`score` can then be called for many sets.
    """

    classifier: MNISTClassifier
    real: torch.Tensor  # uint8 (N, 1, 64, 64)
    batch_size: int = 500
    kid_subset_size: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        self.classifier.eval()
        features = Features(self.classifier.num_features)
        n = self.real.shape[0]
        self.fid = FrechetInceptionDistance(feature=features, reset_real_features=False)
        with warnings.catch_warnings():  # it keeps every feature: fid_samples of them, bounded
            warnings.filterwarnings("ignore", ".*will save all extracted features in buffer")
            subset = min(self.kid_subset_size, n)
            self.kid = KernelInceptionDistance(
                feature=features, subset_size=subset, reset_real_features=False
            )
        device = next(self.classifier.parameters()).device
        self.fid.to(device)
        self.kid.to(device)
        with torch.no_grad():
            for batch in self.real.split(self.batch_size):
                self._update(to_unit_range(batch.to(device)), real=True)

    def _update(self, images: torch.Tensor, real: bool) -> None:
        """One batch into FID and KID: the classifier runs once."""
        features = self.classifier.features(images.float())
        self.fid.update(features, real=real)
        self.kid.update(features, real=real)

    @torch.no_grad()
    def score(self, fakes: torch.Tensor) -> dict[str, float]:
        """FID, KID mean and KID std of ``fakes`` (float (N, 1, 64, 64) in [-1, 1])."""
        self.fid.reset()
        self.kid.reset()
        device = next(self.classifier.parameters()).device
        for batch in fakes.split(self.batch_size):
            self._update(batch.to(device), real=False)
        subset_size = self.kid.subset_size
        self.kid.subset_size = min(subset_size, fakes.shape[0])
        try:
            devices = [device] if device.type == "cuda" else []
            with global_rng(devices):
                torch.manual_seed(self.seed)
                kid_mean, kid_std = self.kid.compute()
        finally:
            self.kid.subset_size = subset_size
        return {"fid": float(self.fid.compute()), "kid": float(kid_mean), "kid_std": float(kid_std)}


def reference_images(images: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """The real set FID compares with: all ``images`` when ``n`` covers them, else a seeded
    random subset of ``n`` (never the first ``n``, which are not a random sample)."""
    if n >= images.shape[0]:
        return images
    rows = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return images[rows.sort().values]


def reference_name(n_test: int, samples: int, seed: int) -> str:
    """How FID's real set (:func:`reference_images` of ``n_test`` test images) is named in the
    record of every FID measured against it."""
    if samples >= n_test:
        return f"all {n_test} test images"
    return f"{samples} random test images (seed {seed})"


def noise_seed(seed: int, epoch: int, draw: int) -> int:
    """The seed of generated set ``draw`` at ``epoch``: draw 0 is the fixed set (the same noise
    at every epoch, for smooth curves); draws 1, 2, ... are fresh, independent sets."""
    return seed if draw == 0 else (seed * 1_000_003 + epoch) * 1_009 + draw


def fid_meter(
    dm: MNISTDataModule, protocol: FidProtocol, device: str | torch.device
) -> tuple[QualityMeter, dict[str, Any]]:
    """The FID/KID meter of ``protocol`` on ``dm``'s data, against :func:`reference_images` of
    the test split, and the record that goes with every FID it gives (sample count, reference
    set, the classifier's accuracy and MD5). The classifier is cached in ``dm.classifier_dir``;
    where it is missing it is trained on the full train split (whatever ``dm``'s limit and
    exclusion)."""
    path = classifier_path(dm, protocol)
    files = dm.files()
    test = dm.test_set or load_split(files, "test", dm.image_size, dm.cache_dir)
    train = None if path.is_file() else load_split(files, "train", dm.image_size, dm.cache_dir)
    classifier, accuracy = load_or_train_classifier(
        path, train, test, epochs=protocol.classifier_epochs,
        min_accuracy=protocol.min_accuracy, device=device,
    )  # fmt: skip
    alike = measured_alike(dm, protocol)
    assert alike is not None, f"the classifier {path} was just loaded or trained"
    record = {**alike, "classifier_accuracy": accuracy}
    real = reference_images(test.images, protocol.fid_samples, protocol.fid_seed)
    return QualityMeter(classifier, real, protocol.batch_size, seed=protocol.fid_seed), record


def measured_alike(dm: MNISTDataModule, protocol: FidProtocol) -> dict[str, Any] | None:
    """What every FID row measured by ``protocol`` on ``dm``'s data records of how it was
    measured (sample count, reference set, classifier file MD5), or None while that classifier
    is not trained yet (no row can be shown to be this protocol's)."""
    path = classifier_path(dm, protocol)
    if not path.is_file():
        return None
    if dm.test_set is not None:
        n_test = len(dm.test_set)
    else:  # the test split's size, from its labels file (the images are not read)
        n_test = read_idx(dm.files()["test-labels"]).numel()
    n = protocol.fid_samples
    return {"samples": n, "reference": reference_name(n_test, n, protocol.fid_seed),
            "classifier_md5": file_digest(path)}  # fmt: skip


def score_draws(
    meter: QualityMeter,
    generator: nn.Module,
    nz: int,
    n: int,
    seed: int,
    epoch: int,
    draws: Iterable[int],
    batch_size: int = 500,
) -> list[dict[str, float]]:
    """FID and KID of ``n`` images of G for each of ``draws`` (0: the fixed noise; 1, 2, ...:
    fresh sets, :func:`noise_seed`).

    Returns:
        One row per draw: ``draw``, ``noise_seed``, ``fid``, ``kid``, ``kid_std``.
    """
    device = next(generator.parameters()).device
    rows = []
    for draw in draws:
        gen = torch.Generator().manual_seed(noise_seed(seed, epoch, draw))
        noise = torch.randn(n, nz, 1, 1, generator=gen).to(device)
        scores = meter.score(generate(generator, noise, batch_size))
        rows.append({"draw": draw, "noise_seed": noise_seed(seed, epoch, draw), **scores})
    return rows
