"""Project-wide logger factory.

Every module does ``logger = get_logger(__name__)``. Messages go through the standard ``logging`` tree under the
``magicbokeh`` root, so Hydra's job logging (which configures the root logger and writes ``<job>.log`` in the run
directory) captures them too. Outside Hydra a plain stderr handler is attached once.
"""

from __future__ import annotations

import logging
import sys

_ROOT = "magicbokeh"


def get_logger(name: str) -> logging.Logger:
    """Return a logger under the ``magicbokeh`` hierarchy, installing a stderr handler if nothing is configured."""
    root = logging.getLogger(_ROOT)
    if not root.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(asctime)s %(levelname)s %(name)s] %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
    if name != _ROOT and not name.startswith(_ROOT + "."):
        name = f"{_ROOT}.{name}"
    return logging.getLogger(name)
