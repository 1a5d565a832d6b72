"""Read and verify IDX files (the raw MNIST format)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import torch

from dcgan_xai.errors import UserError

_DTYPES = {0x08: np.uint8}


def read_idx(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read an uncompressed IDX file of unsigned bytes.

    Args:
        path: the IDX file.

    Returns:
        A uint8 tensor with the file's dimensions, e.g. (N, 28, 28) or (N,).

    Raises:
        UserError: bad magic number, unsupported type, or a truncated file.
    """
    path = Path(path)
    data = path.read_bytes()
    if len(data) < 4:
        raise UserError(f"corrupt IDX file {path}: {len(data)} bytes, too short for a header")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype not in _DTYPES or not 1 <= ndim <= 4:
        raise UserError(
            f"corrupt IDX file {path}: bad magic number 0x{data[:4].hex()} "
            f"(expected 0x000008NN, unsigned bytes with 1 to 4 dimensions)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"corrupt IDX file {path}: truncated header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        raise UserError(
            f"corrupt IDX file {path}: {len(data)} bytes, expected {expected} for shape {dims}"
            + (" (truncated)" if len(data) < expected else "")
        )
    array = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)
    return torch.from_numpy(array.copy())


def write_idx(path: str | os.PathLike[str], array: np.ndarray | torch.Tensor) -> None:
    """Write a uint8 array as an IDX file (used for fixtures and tests)."""
    arr = np.asarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    Path(path).write_bytes(header + arr.tobytes())
