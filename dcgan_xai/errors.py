"""The one error type that entry points report as a single line."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any


class UserError(Exception):
    """Bad input: a message naming the bad value and what is allowed."""


def report_user_errors(fn: Callable[[], Any]) -> Any:
    """Run ``fn``; turn a :class:`UserError` into one line on stderr and exit code 2.

    ``HYDRA_FULL_ERROR=1`` re-raises instead, so the traceback is shown.
    """
    try:
        return fn()
    except UserError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
