"""The one error type that entry points report as a single line."""

from __future__ import annotations

import errno
import os
import re
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
    line = " ".join(lines)
    group = re.match(r"In '(\w+)/[^']+': ConfigKeyError .* Key '(\w+)' not in", line)
    if group and group[1] == group[2]:  # the file's keys landed under its group's name
        line += (f"; a file in {group[1]}/ sets top-level keys only with the line "
                 "'# @package _global_' at its top")  # fmt: skip
    if line.startswith(("LexerNoViableAltException:", "mismatched input")):  # the grammar's
        override = line.split(": ", 1)[-1].split(" ^")[0].strip()
        return (f"{override} cannot be read by Hydra's override grammar (a character it takes only "
                "in quotes); quote the value: key='value'")  # fmt: skip
    return line
