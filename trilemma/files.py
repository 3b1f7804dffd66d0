"""Atomic file writes: a file is either its old contents or its new ones, never half of each.

Every single-file output (reports, grids, vocabularies) goes through ``atomic_write_bytes``;
checkpoint directories (``checkpoint.py``) and the token cache (``Tokens.save`` to a temporary
name, then a rename) have their own.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def umask_mode(mode: int = 0o666) -> int:
    """``mode`` as the process umask leaves it: what a plain ``open`` / ``mkdir`` would give.

    Temporary files and directories are created private (0600 / 0700); an atomic write must end
    with the mode a plain write would have had, or a teammate could not read a shared run."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def check_writable_file(path: str | os.PathLike, what: str = "output") -> Path:
    """Refuse, naming the path (``what`` says which), an output file path that is a directory."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path}: is a directory; give a file path")
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary sibling, fsync it, then ``os.replace`` it into place."""
    path = check_writable_file(path, "output")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, umask_mode(0o666))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
