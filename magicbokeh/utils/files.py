"""Atomic file writing: write to a temporary file in the destination folder, then rename over the target.

A crash, a full disk or an exception mid-write therefore never leaves a truncated file where a good one was.
``os.replace`` is atomic on POSIX when source and target are on the same file system, hence the temp file sits
next to the target.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target``, on error delete it.

    ``suffix`` defaults to the target's own (some writers pick the format from the extension).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=suffix if suffix is not None else target.suffix, dir=target.parent
    )
    os.close(handle)
    temp_path = Path(temp_name)
    try:
        yield temp_path
        # mkstemp creates 0600 files; give the result the permissions a plain open() would (0666 minus the umask).
        os.chmod(temp_path, 0o666 & ~_current_umask())
        os.replace(temp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp_path.unlink()
        raise


def _current_umask() -> int:
    """The process umask, read without changing it where Linux exposes it (os.umask alone must set it to read it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as temp_path:
        temp_path.write_bytes(data)


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    atomic_write_bytes(target, text.encode("utf-8"))
