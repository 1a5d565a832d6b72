"""Grad-CAM costs: the per-epoch callback against an epoch of training (and its check at train
start against one epoch's explanation), scoring the whole
train split for curation against a bare Captum call, and per-epoch FID.

    python -m benchmarks.bench_gradcam [--data data/mnist] [--images 60000] [--fid-samples 10000]

Nets at full width (paper D, ngf=ndf=64), untrained: costs do not depend on the weights.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam
from torch.utils.data import DataLoader
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from benchmarks.common import PILMNIST, full_width_nets, machine, reference_loop
from dcgan_xai.analysis.curation import score_split
from dcgan_xai.callbacks.gradcam import check_gan
from dcgan_xai.data.mnist import MNISTDataModule, to_unit_range
from dcgan_xai.data.probe import make_probe
from dcgan_xai.metrics.quality import MNISTClassifier, QualityMeter
from dcgan_xai.models.sampling import generate, probe_images
from dcgan_xai.xai.epoch import explain_epoch
from dcgan_xai.xai.gradcam import BN_MODES, METHODS


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeat: int = 1) -> float:
    sync()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="data/mnist")
    p.add_argument("--images", type=int, default=60000)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--fid-samples", type=int, default=10000)
    p.add_argument("--train-steps", type=int, default=10)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"machine: {machine()}")
    g, d = full_width_nets(device)
    dm = MNISTDataModule(args.data)
    dm.setup()
    assert dm.train_set is not None and dm.test_set is not None

    # 1. the callback against one epoch of training (reference recipe's step, batch 128)
    loader = DataLoader(
        PILMNIST(args.data), batch_size=128, shuffle=True, num_workers=2, drop_last=True
    )
    rate = reference_loop(g, d, loader, args.train_steps, 2, device)
    epoch_s = 60000 / rate
    probe = make_probe(dm.test_set.images, dm.test_set.labels, 64, 0, 100)

    def one_epoch(layers: list[str], bn_mode: str = "batch", method: str = "gradcam") -> None:
        """What the callback does at an epoch's end: G(probe noise), then D's maps and scores."""
        explain_epoch(d, probe_images(g, probe, device), layers, bn_mode, method)

    one_epoch(["block3"])  # warm-up
    cb_s = timed(lambda: one_epoch(["block3"]), 3)
    print(f"callback (probe 64 real + 64 fake, block3): {cb_s:.3f} s per epoch; an epoch of "
          f"training: {epoch_s:.1f} s ({rate:.0f} images/s); ratio {100 * cb_s / epoch_s:.2f}% of an epoch",
          flush=True)  # fmt: skip
    blocks = ["block1", "block2", "block3"]
    real = to_unit_range(probe.images[:2].to(device))
    check_s = timed(lambda: check_gan(d, g, real, [(100, 1, 1)], blocks, ["gradcam"]), 3)
    print(f"the callback's check at train start (2 probe images, 3 blocks; once a fit): "
          f"{check_s:.3f} s; ratio {check_s / cb_s:.2f}x one epoch's explanation", flush=True)  # fmt: skip

    def every_method() -> None:
        for method in METHODS:
            for bn_mode in BN_MODES:
                one_epoch(blocks, bn_mode, method)

    all_s = timed(every_method)
    print(f"callback with every method x BN mode at every block ({len(METHODS)} x {len(BN_MODES)} x 3, "
          f"the study's): {all_s:.3f} s per epoch; ratio {100 * all_s / epoch_s:.2f}% of an epoch",
          flush=True)  # fmt: skip

    # 2. curation scoring against a bare Captum call on the same batches
    split = dm.train_set.subset(torch.arange(args.images))
    batch = to_unit_range(split.images[: args.batch].to(device))

    def bare() -> None:
        cam = LayerGradCam(lambda x: d(x), d.block3).attribute(batch, relu_attributions=True)
        F.interpolate(cam, size=(64, 64), mode="bilinear")

    bare()
    bare_rate = args.batch / timed(bare, 2)
    start = time.perf_counter()
    score_split(d, split, "block3", batch_size=args.batch, device=device, progress=False)
    sync()
    total = time.perf_counter() - start
    ours = args.images / total
    print(f"curation scoring: {args.images} images in {total:.1f} s ({ours:,.0f} images/s); bare "
          f"Captum LayerGradCam + upsample: {bare_rate:,.0f} images/s; ratio {ours / bare_rate:.2f}x",
          flush=True)  # fmt: skip

    # 3. per-epoch FID/KID with the MNIST classifier (untrained weights: same cost)
    clf = MNISTClassifier().to(device).eval()
    n = args.fid_samples
    start = time.perf_counter()
    meter = QualityMeter(clf, dm.test_set.images[:n], 500)
    real_s = time.perf_counter() - start
    noise = torch.randn(n, 100, 1, 1, device=device)
    gen_s = timed(lambda: generate(g, noise, 500))
    fakes = generate(g, noise, 500)
    score_s = timed(lambda: meter.score(fakes))
    print(f"per-epoch FID+KID of {n} samples: generate {gen_s:.1f} s + score {score_s:.1f} s = "
          f"{gen_s + score_s:.1f} s (real features once: {real_s:.1f} s); ratio to an epoch of "
          f"training {100 * (gen_s + score_s) / epoch_s:.1f}%")  # fmt: skip
    ref_s = torchmetrics_way(clf, meter.real, fakes, meter.kid_subset_size, device)
    print(
        f"scoring the same samples the plain torchmetrics way (FID and KID each given the "
        f"classifier, so each runs it): {ref_s:.1f} s; ours {score_s:.1f} s; ratio "
        f"{ref_s / score_s:.2f}x faster",
        flush=True,
    )


def torchmetrics_way(clf, real, fakes, subset_size: int, device) -> float:
    """The reference for the meter's scoring: each metric runs the classifier itself. Returns
    the seconds of scoring ``fakes`` (the real features, computed first, are not timed)."""

    class ClassifierFeatures(torch.nn.Module):
        num_features = clf.num_features

        def forward(self, x):
            return clf.features(x.float())

    fid = FrechetInceptionDistance(feature=ClassifierFeatures(), reset_real_features=False)
    kid = KernelInceptionDistance(
        feature=ClassifierFeatures(), subset_size=min(subset_size, len(real)),
        reset_real_features=False,
    ).to(device)  # fmt: skip
    fid.to(device)
    with torch.no_grad():
        for batch in real.split(500):
            x = to_unit_range(batch.to(device))
            fid.update(x, real=True)
            kid.update(x, real=True)
        sync()
        start = time.perf_counter()
        for batch in fakes.split(500):
            fid.update(batch.to(device).float(), real=False)
            kid.update(batch.to(device).float(), real=False)
        fid.compute()
        kid.compute()
        sync()
        return time.perf_counter() - start


if __name__ == "__main__":
    main()
