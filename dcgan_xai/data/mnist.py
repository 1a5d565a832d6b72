"""MNIST at 64x64 as a LightningDataModule: resized once, cached as uint8, sliced by index."""

from __future__ import annotations

import hashlib
import inspect
import io
import threading
import warnings
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset, Sampler

from dcgan_xai.data.idx import read_idx
from dcgan_xai.data.sources import MD5, SOURCES, ensure_mnist
from dcgan_xai.errors import UserError
from dcgan_xai.files import atomic_write_bytes, file_digest

RESIZE_METHOD = "bilinear-aa"


@dataclass
class Split(Dataset):
    """Images of one split, resident in memory.

    Attributes:
        images: uint8 (N, 1, S, S).
        labels: int64 (N,).
        indices: int64 (N,), each image's index in the original split.
    """

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.numel())

    def __getitem__(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A whole batch at once: ``rows`` is a tensor of positions."""
        return self.images[rows], self.labels[rows], self.indices[rows]

    def subset(self, rows: torch.Tensor) -> Split:
        return Split(self.images[rows], self.labels[rows], self.indices[rows])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device), self.labels.to(device), self.indices.to(device))


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] to float [-1, 1]."""
    return images.float().div(127.5).sub(1.0)


def resize_images(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Resize uint8 (N, H, W) images to (N, 1, size, size) with antialiased bilinear."""
    out = torch.empty(images.shape[0], 1, size, size, dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        batch = images[start : start + chunk].unsqueeze(1).float()
        resized = F.interpolate(
            batch, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        out[start : start + chunk] = resized.round().clamp(0, 255).to(torch.uint8)
    return out


def _digest(images: torch.Tensor) -> str:
    return hashlib.md5(images.contiguous().numpy().data).hexdigest()


def load_split(files: Mapping[str, Path], split: str, size: int, cache_dir: Path) -> Split:
    """Read one split, resized to ``size`` and cached (uint8) under ``cache_dir``.

    The cache key holds the size, the resize method and the raw file's MD5, so a
    different size or different raw data never reads a stale cache. The cache records the
    MD5 of its images when written; one whose content, dtype or shape does not match is
    rebuilt with a warning. A cache that cannot be written (a read-only folder) is skipped
    with a warning: the split is resized in memory.
    """
    raw = files[f"{split}-images"]
    key = f"{split}-{size}-{RESIZE_METHOD}-{file_digest(raw)[:12]}.pt"
    cache = cache_dir / key
    labels = read_idx(files[f"{split}-labels"]).long()
    images = None
    if cache.is_file():
        try:
            saved = torch.load(cache, weights_only=True)
            images, digest = saved["images"], saved["md5"]
            ok = (
                images.dtype == torch.uint8
                and tuple(images.shape) == (labels.numel(), 1, size, size)
                and _digest(images) == digest
            )
        except Exception:
            ok = False
        if not ok:
            warnings.warn(
                f"the resize cache {cache} does not match its record; rebuilding it", stacklevel=2
            )
            images = None
    if images is None:
        raw_images = read_idx(raw)
        if raw_images.ndim != 3 or raw_images.shape[0] != labels.numel():
            raise UserError(
                f"{raw} holds shape {tuple(raw_images.shape)} but its labels file holds "
                f"{labels.numel()} labels; expected (N, H, W) images, one label each"
            )
        images = resize_images(raw_images, size)
        buf = io.BytesIO()
        torch.save({"images": images, "md5": _digest(images)}, buf)
        try:
            atomic_write_bytes(cache, buf.getvalue())
        except OSError as err:
            warnings.warn(
                f"cannot write the resize cache {cache} ({err.strerror or err}); resizing in memory "
                "on every start (set data.cache_dir to a writable folder)",
                stacklevel=2,
            )
    return Split(images, labels, torch.arange(labels.numel()))


def stratified_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """The ``data.limit`` subset: a seeded, class-stratified choice of ``n`` positions (sorted),
    proportional per class."""
    total = labels.numel()
    if not 0 < n <= total:
        raise UserError(
            f"data.limit={n} is not allowed; it must be in 1..{total} (the train split's images)"
        )
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(total, generator=gen)
    classes, counts = torch.unique(labels, return_counts=True)
    exact = counts.double() * n / total
    quota = exact.floor().long()
    remainder = n - int(quota.sum())
    order = sorted(range(len(classes)), key=lambda i: (-(exact[i] - quota[i]).item(), i))
    for i in order[:remainder]:
        quota[i] += 1
    shuffled = labels[perm]
    chosen = [perm[shuffled == c][: int(q)] for c, q in zip(classes, quota, strict=True)]
    return torch.cat(chosen).sort().values


class IndexBatchSampler(Sampler[torch.Tensor]):
    """Yields whole batches of positions: a seeded permutation per epoch, sharded by rank.

    The order depends only on (seed, epoch), so a resumed run sees the same batches. With
    ``keys`` (each position's dataset index) the permutation is drawn over all ``key_space``
    dataset indices and then keeps the positions present: leaving images out (a curation
    manifest) does not change the order in which the kept images are visited. Every rank gets
    the same number of batches. With ``device`` the epoch's order is moved there once and the
    batches are slices of it (indexing device-resident images without a host copy per step).
    With ``as_keys`` a batch holds the chosen positions' keys instead: the rows of those images
    in the whole split (:func:`resident`).
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        keys: torch.Tensor | None = None,
        key_space: int | None = None,
        device: torch.device | str = "cpu",
        as_keys: bool = False,
    ):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.as_keys = as_keys
        self.device = torch.device(device)
        self.shuffle, self.rank, self.world_size = shuffle, rank, world_size
        self.keys, self.key_space = keys, key_space
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rows(self) -> torch.Tensor:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            if self.keys is not None and self.key_space is not None:
                position = torch.full((self.key_space,), -1, dtype=torch.long)
                position[self.keys.cpu()] = torch.arange(self.size)
                order = position[torch.randperm(self.key_space, generator=gen)]
                order = order[order >= 0]
            else:
                order = torch.randperm(self.size, generator=gen)
        else:
            order = torch.arange(self.size)
        per_rank = self.size // self.world_size
        return order[self.rank :: self.world_size][:per_rank]

    def __iter__(self) -> Iterator[torch.Tensor]:
        rows = self._rows()
        if self.as_keys:
            assert self.keys is not None, "as_keys needs the positions' keys"
            rows = self.keys.cpu()[rows]
        yield from rows.to(self.device).split(self.batch_size)

    def __len__(self) -> int:
        per_rank = self.size // self.world_size
        return -(-per_rank // self.batch_size)


_RESIDENT: weakref.WeakValueDictionary[tuple[str, ...], Split] = weakref.WeakValueDictionary()
_RESIDENT_LOCK = threading.Lock()


def resident(split: Split, key: tuple[str, ...], device: torch.device) -> Split:
    """``split`` on ``device``, one copy per process and ``key`` (what names its content): the
    trainings of one process (seeds at once, each on a CUDA stream of its own) share it; it is
    freed when none holds it."""
    with _RESIDENT_LOCK:
        found = _RESIDENT.get((*key, str(device)))
        if found is None:
            found = _RESIDENT[(*key, str(device))] = split.to(device)
            if device.type == "cuda":  # copied on this thread's stream: done before others read
                torch.cuda.current_stream(device).synchronize()
        return found


class MNISTDataModule(L.LightningDataModule):
    """MNIST resized once to ``image_size``; batches are ``(images uint8, labels, indices)``.

    Args:
        root: folder holding (or receiving) the raw IDX files and the resize cache.
        image_size: side of the square images.
        batch_size: images per batch (per process under DDP).
        seed: seeds the subset choice and the per-epoch shuffle.
        limit: train on a seeded, class-stratified subset of this many images.
        exclude: dataset indices of the train split to leave out.
        sources: where to get the raw files, tried in order.
        checksums: expected MD5 of each raw file.
        on_device: keep the training images on the GPU (about 250 MB for MNIST at 64x64), so
            batches are sliced there with no host-to-device copy; the whole split, one copy
            shared by the trainings of a process (:func:`resident`).
        cache_dir: where the resize cache lives (default ``<root>/cache``); another folder
            lets a read-only ``root`` be used.
    """

    def __init__(
        self,
        root: str | Path,
        image_size: int = 64,
        batch_size: int = 128,
        seed: int = 0,
        limit: int | None = None,
        exclude: torch.Tensor | None = None,
        sources: Sequence[str] = SOURCES,
        checksums: Mapping[str, str] | None = None,
        on_device: bool = False,
        cache_dir: str | Path | None = None,
    ):
        super().__init__()
        if batch_size < 1:
            raise UserError(f"data.batch_size={batch_size} is not allowed; it must be >= 1")
        self.root = Path(root)
        self.cache_dir = Path(cache_dir) if cache_dir else self.root / "cache"
        # the MNIST classifier's folder: beside the raw files, or in data.cache_dir when one is
        # given (a read-only data root)
        default = self.cache_dir == self.root / "cache"
        self.classifier_dir = (self.root if default else self.cache_dir) / "classifier"
        self.image_size, self.batch_size, self.seed, self.limit = (
            image_size,
            batch_size,
            seed,
            limit,
        )
        self.exclude = exclude
        self.sources = tuple(sources)
        self.checksums = dict(checksums or MD5)
        self.on_device = on_device
        self.train_set: Split | None = None
        self.whole_train: Split | None = None  # the train split before limit and exclusion
        self.test_set: Split | None = None

    @classmethod
    def from_config(
        cls,
        cfg: Any,
        exclude: torch.Tensor | None = None,
        limit: bool = True,
        on_device: bool = False,
    ) -> MNISTDataModule:
        """The data of a training config: ``cfg.data`` seeded by ``cfg.seed``, leaving out the
        dataset indices ``exclude``; without ``limit`` the whole splits. (A run of an older
        version may lack a key, which takes its default, or hold one no longer read here.)"""
        values = OmegaConf.to_container(cfg.data, resolve=True)
        assert isinstance(values, dict)
        known = set(inspect.signature(cls).parameters) - {"seed", "exclude", "on_device"}
        data = {str(k): v for k, v in values.items() if k in known}
        if not limit:
            data["limit"] = None
        return cls(**data, seed=cfg.seed, exclude=exclude, on_device=on_device)

    def files(self) -> dict[str, Path]:
        """The raw MNIST files (fetched and checked first if missing)."""
        return ensure_mnist(self.root, self.sources, self.checksums)

    def prepare_data(self) -> None:
        if self.train_set is not None:  # setup() already read (and so cached) both splits
            return
        files = self.files()
        for split in ("train", "test"):
            load_split(files, split, self.image_size, self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        files = self.files()
        train = load_split(files, "train", self.image_size, self.cache_dir)
        self.test_set = load_split(files, "test", self.image_size, self.cache_dir)
        keep = torch.ones(len(train), dtype=torch.bool)
        if self.exclude is not None and self.exclude.numel():
            keep[self.exclude] = False
        if self.limit is not None:
            chosen = torch.zeros_like(keep)
            chosen[stratified_subset(train.labels, self.limit, self.seed)] = True
            keep &= chosen
        if not keep.any():
            raise UserError("the training set is empty after data.limit and data.exclude")
        self.train_set = train if keep.all() else train.subset(keep.nonzero().squeeze(1))
        self.whole_train = train

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup() first"
        assert self.whole_train is not None
        trainer, data = self.trainer, self.train_set
        device = self._resident_device()
        if device is not None:  # batches index the whole split's shared copy by dataset index
            key = (self.checksums["train-images"], str(self.image_size))
            data = resident(self.whole_train, key, device)
        rank = trainer.global_rank if trainer is not None else 0
        world = trainer.world_size if trainer is not None else 1
        sampler = IndexBatchSampler(
            len(self.train_set),
            self.batch_size,
            self.seed,
            True,
            rank,
            world,
            keys=self.train_set.indices,
            key_space=len(self.whole_train),
            device=device or "cpu",
            as_keys=device is not None,
        )
        # its own generator: a loader draws a seed at every epoch, else from the global RNG
        # (which trainings in threads of one process share)
        loader_seed = torch.Generator().manual_seed(self.seed)
        return DataLoader(data, sampler=sampler, batch_size=None, num_workers=0,
                          generator=loader_seed)  # fmt: skip

    def _resident_device(self) -> torch.device | None:
        """The GPU the training images live on (``on_device`` in a CUDA training), else None."""
        trainer = self.trainer
        if self.on_device and trainer is not None and trainer.strategy.root_device.type == "cuda":
            return trainer.strategy.root_device
        return None
