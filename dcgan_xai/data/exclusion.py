"""Curation manifests: which training images to leave out, tied to the data they were made on."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dcgan_xai.data.sources import ensure_mnist
from dcgan_xai.errors import UserError
from dcgan_xai.files import file_digest, read_table

MANIFEST_FIELDS = ["index", "label", "coverage", "focus", "flagged"]


def fingerprint(files: Mapping[str, Path], split: str = "train") -> dict[str, Any]:
    """What identifies a split's data: its name, size and the MD5 of its raw files."""
    images, labels = files[f"{split}-images"], files[f"{split}-labels"]
    size = (labels.stat().st_size - 8) if labels.is_file() else 0
    return {
        "split": split,
        "size": size,
        "images_md5": file_digest(images),
        "labels_md5": file_digest(labels),
    }


def read_manifest(path: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows of ``manifest.csv`` (parsed) and the ``summary.json`` beside it.

    Raises:
        UserError: a missing file, a missing column, or a value that does not parse.
    """
    path = Path(path)
    summary_path = path.parent / "summary.json"
    if not path.is_file():
        raise UserError(f"curation manifest not found: {path}")
    if not summary_path.is_file():
        raise UserError(f"malformed curation manifest {path}: no summary.json beside it")
    try:
        summary = json.loads(summary_path.read_text())
        summary["fingerprint"]["images_md5"]
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(
            f"malformed curation manifest {path}: summary.json lacks a fingerprint"
        ) from err
    limit = MAX_MANIFEST_BYTES
    if path.stat().st_size > limit:
        raise UserError(
            f"curation manifest {path} is {path.stat().st_size / 1e6:.0f} MB; a manifest of MNIST's "
            f"train split is about 3 MB (allowed: up to {limit // 1_000_000} MB)"
        )
    rows = read_table(path, _manifest_row, "curation manifest", MANIFEST_FIELDS,
                      hint="write it again with curate")  # fmt: skip
    return rows, summary


MAX_MANIFEST_BYTES = 20_000_000


def _manifest_row(raw: dict[str, str]) -> dict[str, Any]:
    flagged = raw["flagged"].strip().lower()
    if flagged not in ("true", "false", "1", "0"):
        raise ValueError(f"flagged={raw['flagged']!r} is not true, false, 1 or 0")
    return {"index": int(raw["index"]), "label": int(raw["label"]), "coverage": float(raw["coverage"]),
            "focus": float(raw["focus"]), "flagged": flagged in ("true", "1")}  # fmt: skip


def load_exclusion(path: str | Path, expected: Mapping[str, Any]) -> torch.Tensor:
    """Dataset indices a manifest flags, after checking it was made on the ``expected`` data.

    Raises:
        UserError: malformed, made for other data, or flagging every image.
    """
    rows, summary = read_manifest(path)
    made_on = summary["fingerprint"]
    keys = ("split", "size", "images_md5", "labels_md5")
    if any(made_on.get(k) != expected.get(k) for k in keys):
        raise UserError(
            f"curation manifest {path} was made for other data ({made_on.get('split')}, "
            f"{made_on.get('size')} images, md5 {made_on.get('images_md5')}); this run trains on "
            f"{expected['split']}, {expected['size']} images, md5 {expected['images_md5']}"
        )
    indices = sorted({r["index"] for r in rows})
    if len(rows) != expected["size"] or indices != list(range(expected["size"])):
        raise UserError(
            f"malformed curation manifest {path}: {len(rows)} rows, expected one per image "
            f"(indices 0..{expected['size'] - 1})"
        )
    flagged = [r["index"] for r in rows if r["flagged"]]
    if len(flagged) == len(rows):
        raise UserError(
            f"curation manifest {path} flags all {len(rows)} images; nothing would be left to "
            "train on (raise the threshold)"
        )
    return torch.tensor(flagged, dtype=torch.long)


def read_exclusion(data: Any) -> tuple[torch.Tensor | None, dict[str, Any] | None]:
    """The indices a data config's ``exclude`` manifest leaves out, and the record of it kept
    with the run (``exclusion.json``)."""
    if not data.exclude:
        return None, None
    files = ensure_mnist(data.root, list(data.sources), dict(data.checksums))
    expected = fingerprint(files)
    exclude = load_exclusion(data.exclude, expected)
    record = {
        "manifest": str(Path(data.exclude).resolve()),
        "manifest_md5": file_digest(data.exclude),
        "fingerprint": expected,
        "excluded": int(exclude.numel()),
    }
    return exclude, record
