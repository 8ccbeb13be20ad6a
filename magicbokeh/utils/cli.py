"""Entry-point helpers: turn a :class:`MagicBokehError` into one clear line and exit status 2."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from magicbokeh.errors import MagicBokehError

F = TypeVar("F", bound=Callable)

USER_ERROR_EXIT_CODE = 2


def exit_on_user_error(fn: F) -> F:
    """Decorate an entry point so a user error prints ``error: <message>`` (no traceback) and exits 2.

    ``SystemExit`` is a ``BaseException``, so Hydra's own exception reporting (which catches ``Exception``) lets it
    through unchanged.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as error:
            user_error = find_user_error(error)
            if user_error is None:
                raise
            print(f"error: {user_error}", file=sys.stderr)
            sys.exit(USER_ERROR_EXIT_CODE)

    return wrapper  # type: ignore[return-value]


def find_user_error(error: BaseException) -> MagicBokehError | None:
    """The :class:`MagicBokehError` behind ``error``, if any.

    ``hydra.utils.instantiate`` re-raises constructor errors as its own ``InstantiationException`` (chained with
    ``from``), and DataLoader workers re-raise theirs; following the cause/context chain recovers the user's message.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, MagicBokehError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def set_offline_defaults() -> None:
    """Make hub-backed libraries fail fast instead of retrying for 30–55 s per call: weights are local only."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "offline")
