"""Writing files whole or not at all, reading them with a one-line error, and their hashes.

A leaf: it imports nothing of the project but its errors.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from dcgan_xai.errors import UserError


def file_digest(path: str | os.PathLike[str], algorithm: str = "md5") -> str:
    """The hex digest of a file (MD5 unless ``algorithm`` names another of hashlib's)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


TEMP_SUFFIX = ".dcgan_xai.tmp"  # the project's own temporary files, and only those, are cleaned up


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def new_folder(target: str | os.PathLike[str], replace: bool = False) -> Iterator[Path]:
    """A folder written whole or not at all: the block writes into a temporary folder beside
    ``target``, which is renamed to ``target`` when the block ends (and removed if it fails).

    An existing ``target`` is refused in one line, or with ``replace`` swapped out once the new
    one is complete (a kill between the two renames leaves no ``target`` and the old one in a
    hidden temporary folder beside it: never the files of two writes mixed).
    """
    target = Path(target)
    if target.exists() and not replace:
        raise UserError(f"{target} already exists; choose another name, or remove it first")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=TEMP_SUFFIX))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        old = None
        if target.exists():
            old = tempfile.mkdtemp(
                dir=target.parent, prefix=f".{target.name}.old.", suffix=TEMP_SUFFIX
            )
            os.rename(target, Path(old) / target.name)
        os.rename(tmp, target)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> str:
    """``torch.save`` written whole or not at all; returns the file's SHA-256."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())
    return hashlib.sha256(buf.getvalue()).hexdigest()


def safe_torch_load(path: str | os.PathLike[str], what: str, sha256: str | None = None) -> Any:
    """``torch.load(weights_only=True)`` with a one-line error for a missing or damaged file;
    with ``sha256`` (the digest recorded when it was written; "" if none was), the bytes read
    must have it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    data = path.read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        how = "differs from the one recorded" if sha256 else "was not recorded"
        raise UserError(f"{what} {path} is not the file training wrote there (its SHA-256 {how} "
                        "when it was written); it is damaged or was replaced")  # fmt: skip
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad pickle, ...
        raise UserError(
            f"{what} {path} is damaged or truncated and cannot be read "
            f"({type(err).__name__}); delete it or restore it from a copy"
        ) from err


def write_csv(path: str | os.PathLike[str], fields: Sequence[str], rows: Iterable[dict]) -> None:
    """Write a CSV file atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    atomic_write_text(path, buf.getvalue())


def read_table(
    path: str | os.PathLike[str],
    parse: Callable[[dict[str, str]], dict[str, Any]] = dict,
    what: str = "CSV table",
    required: Sequence[str] = (),
    hint: str = "delete that line",
) -> list[dict[str, Any]]:
    """The rows of a CSV file through ``parse``, each problem one error naming the file: not
    readable text CSV, a column of ``required`` (or one ``parse`` reads) missing, or a line with
    more or fewer values than the header or a value ``parse`` refuses (then its line, and
    ``hint``). A byte-order mark, as spreadsheets save one, is read past."""
    rows = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise KeyError(", ".join(missing))
            for line, raw in enumerate(reader, start=2):
                try:
                    if None in raw or None in raw.values():
                        raise ValueError("it has more or fewer values than the header")
                    rows.append(parse(raw))
                except (TypeError, ValueError, AttributeError) as err:
                    raise UserError(f"{path} line {line} is damaged ({type(err).__name__}: "
                                    f"{err}); {hint}") from err  # fmt: skip
    except (csv.Error, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not a readable {what} ({type(err).__name__}: {err})") from err
    except KeyError as err:  # the header lacks a column: not a table of this project's
        raise UserError(f"{path} has no column {err}; it is not a {what} this project wrote, or "
                        "a damaged one: restore it or remove it") from err  # fmt: skip
    return rows


def read_csv(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The rows of a CSV file as text; one that is not readable text CSV is one error naming it."""
    return read_table(path)
