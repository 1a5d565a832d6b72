"""The one error type that entry points report as a single line."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from typing import Any

DISK_ERRORS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EPERM)


class UserError(Exception):
    """Bad input: a message naming the bad value and what is allowed (exit code 2)."""

    exit_code = 2


class Interrupted(UserError):
    """Training was stopped by a signal (SIGTERM, as Slurm sends); it resumes (exit code 3)."""

    exit_code = 3


class Diverged(UserError):
    """A loss became NaN or infinite (exit code 4)."""

    exit_code = 4


def report_user_errors(fn: Callable[[], Any]) -> Any:
    """Run ``fn``; turn a :class:`UserError` into one line on stderr and its exit code (2 bad
    input, 3 interrupted, 4 diverged), and so a full, read-only or forbidden disk (exit 2).

    ``HYDRA_FULL_ERROR=1`` re-raises instead, so the traceback is shown.
    """
    try:
        return fn()
    except UserError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except OSError as err:  # a full, read-only or forbidden place to write: the machine's word
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or err.errno not in DISK_ERRORS:
            raise
        where = f" {err.filename}" if err.filename else ""
        print(f"error: cannot write{where}: {err.strerror}; free space or choose a writable "
              "place (nothing half-written was left under a final name)", file=sys.stderr)  # fmt: skip
        sys.exit(UserError.exit_code)


def check_overrides(config_name: str, args: list[str] | None = None) -> None:
    """Compose ``dcgan_xai/conf/<config_name>.yaml`` with the command line's overrides, as Hydra will.

    A bad key, value or type is reported as one line on stderr with exit code 2, instead of
    Hydra's several lines. Sweeps and flags (``-m``, ``--cfg``, ...) are left to Hydra, and so
    is everything when ``HYDRA_FULL_ERROR=1``.
    """
    args = sys.argv[1:] if args is None else args
    if os.environ.get("HYDRA_FULL_ERROR") == "1" or any(a.startswith("-") for a in args):
        return
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    conf = str(Path(__file__).resolve().parent / "conf")
    try:
        with initialize_config_dir(config_dir=conf, version_base="1.3"):
            compose(config_name=config_name, overrides=args, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        print(f"error: {hydra_error_line(err)}", file=sys.stderr)
        sys.exit(2)


def hydra_error_line(err: BaseException) -> str:
    """A Hydra or OmegaConf composition error as one line: its message and cause, without the
    config search path, the full key and type details and the hint about HYDRA_FULL_ERROR."""
    parts = [str(err)] + ([str(err.__cause__)] if err.__cause__ is not None else [])
    skip = ("full_key:", "object_type=", "reference_type=", "Set the environment variable")
    lines = []
    for line in (line.strip() for part in parts for line in part.splitlines()):
        if line.startswith("Config search path"):
            break
        if line and not line.startswith(skip):
            lines.append(line)
    return " ".join(lines)
