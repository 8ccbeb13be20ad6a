"""Progress bars that read well in a terminal and in a log file.

tqdm redraws its bar in place with carriage returns several times a second. In a terminal that is what one wants;
in a log file (a batch job, ``… 2> run.log``, CI) every redraw is kept, so a long loop floods the log with one
enormous line. :func:`progress_bar` is tqdm when stderr is a terminal; otherwise the bar is redrawn at most every
:data:`LOG_INTERVAL_S` seconds and each redraw becomes its own line.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm.auto import tqdm

LOG_INTERVAL_S = 30.0
"""Seconds between two progress lines when stderr is not a terminal."""


class _LineWriter:
    """File-like wrapper that turns tqdm's carriage-return redraws into whole lines (blank redraws are dropped)."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except ValueError:  # a closed stream
        return False


def progress_bar(iterable: Iterable | None = None, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)`` on stderr, slowed down to whole lines when stderr is not a terminal."""
    stream = kwargs.pop("file", None) or sys.stderr
    if not _is_terminal(stream):
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
        kwargs.setdefault("maxinterval", LOG_INTERVAL_S)
        kwargs.pop("dynamic_ncols", None)  # no terminal to measure
        stream = _LineWriter(stream)
    return tqdm(iterable, file=stream, **kwargs)
