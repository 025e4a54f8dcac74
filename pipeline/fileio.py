"""Atomic file writes: a crash or an error never leaves a half-written weights file or prototxt behind."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


def new_file_mode() -> int:
    """The mode open() would give a new file (mkstemp's own is 0600)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def temporary_beside(path: str | Path):
    """A temporary path in `path`'s folder, renamed onto `path` when the block ends without error."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, new_file_mode())
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_writer(path: str | Path):
    """A binary file object for `path`, renamed into place (after fsync) only when the block succeeds."""
    with temporary_beside(path) as tmp, open(tmp, "wb") as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: a crash never leaves a half-written file."""
    with atomic_writer(path) as f:
        f.write(data)
