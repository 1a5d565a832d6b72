import torch

from dcgan_xai.metrics.quality import (
    MNISTClassifier,
    QualityMeter,
    noise_seed,
    reference_images,
    score_draws,
)
from dcgan_xai.models.networks import Generator


def test_reference_is_every_image_or_a_seeded_random_subset():
    images = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1)
    assert reference_images(images, 100, 0) is images and reference_images(images, 500, 0) is images
    a, b = reference_images(images, 10, 0), reference_images(images, 10, 0)
    assert torch.equal(a, b) and a.shape[0] == 10
    assert not torch.equal(a, images[:10])  # not the first n
    assert not torch.equal(a, reference_images(images, 10, 1))


def test_draw_zero_is_fixed_and_fresh_draws_differ_by_epoch_and_draw():
    assert noise_seed(3, 1, 0) == noise_seed(3, 7, 0) == 3
    seeds = {noise_seed(3, e, d) for e in (1, 2) for d in (1, 2)}
    assert len(seeds) == 4 and 3 not in seeds


def test_score_draws_scores_each_set_and_leaves_the_meter_as_it_was():
    torch.manual_seed(0)
    real = torch.randint(0, 256, (64, 1, 64, 64), dtype=torch.uint8)
    meter = QualityMeter(MNISTClassifier().eval(), real, batch_size=32, kid_subset_size=50)
    g = Generator(nz=8, ngf=4)
    rows = score_draws(meter, g, 8, 20, seed=5, epoch=2, draws=range(3), batch_size=16)
    assert [r["draw"] for r in rows] == [0, 1, 2]
    assert [r["noise_seed"] for r in rows] == [5, noise_seed(5, 2, 1), noise_seed(5, 2, 2)]
    assert len({r["fid"] for r in rows}) == 3  # independent sets give different FIDs
    assert meter.kid.subset_size == 50  # lowered to 20 for these sets only
    again = score_draws(meter, g, 8, 20, seed=5, epoch=2, draws=range(3), batch_size=16)
    assert again == rows


def test_quality_callback_writes_fid_per_epoch_and_set(smoke_cfg, tmp_path):
    from dcgan_xai.runs.layout import RunDir
    from dcgan_xai.runs.tables import QUALITY
    from dcgan_xai.training import train
    from tests.helpers import event_tags

    cfg = smoke_cfg("callbacks.quality.enabled=true", "callbacks.quality.fid_samples=50",
                    "callbacks.quality.classifier_epochs=10", "callbacks.quality.min_accuracy=0.9")  # fmt: skip
    train(cfg, tmp_path)
    rows = QUALITY.read(RunDir(tmp_path))
    assert [(r["epoch"], r["draw"]) for r in rows] == [(e, d) for e in (1, 2) for d in (0, 1, 2)]
    assert {r["reference"] for r in rows} == {"50 random test images (seed 0)"}
    assert all(r["fid"] > 0 and r["classifier_accuracy"] >= 0.9 for r in rows)
    assert len({r["classifier_md5"] for r in rows}) == 1
    assert rows[0]["noise_seed"] == rows[3]["noise_seed"] == 0  # the fixed set
    tags = event_tags(RunDir(tmp_path).tensorboard)["scalars"]
    assert {"quality/fid", "quality/fid_fresh", "quality/kid"} <= set(tags)
