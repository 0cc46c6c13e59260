"""Writing files so that a crash or a kill never leaves a partial one."""

from __future__ import annotations

import glob
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Calls ``write(tmp_path)`` on a temporary file beside ``path``, then renames it over ``path``.

    A crash or kill at any moment leaves either the old file or the new one, never a partial one.
    A temporary file that a killed earlier write of ``path`` left behind is removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def remove_stale_temporaries(path: Path, *, older_than: float = 60.0) -> list[Path]:
    """Removes ``.<name>.*.tmp`` files beside ``path`` (``atomic_write``'s pattern) untouched for ``older_than``
    seconds: what a process killed mid-write left. A write still going on touches its file, so it is spared."""
    removed = []
    now = time.time()
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            if now - stale.stat().st_mtime > older_than:
                stale.unlink()
                removed.append(stale)
        except OSError:  # removed meanwhile, or not ours to remove
            continue
    return removed


def _writable_ancestor(path: Path, what: str) -> None:
    """Refuses ``path`` when a part of it is a file or its nearest existing folder is not writable."""
    for parent in [path, *path.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{what} {path}: {parent} is a file, not a folder; choose another path")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ValueError(
                    f"{what} {path}: cannot write in {parent} (permission denied); choose a folder you can write to"
                )
            return


def check_output_folder(path: str | os.PathLike, what: str = "--out") -> Path:
    """Checks, before any work, that ``path`` can be (or is) a folder this process can write in.

    Raises:
        ValueError: ``path`` or one of its parents is a file, or the folder that would hold it is not
            writable; the message names ``what`` (the flag or key) and the path.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is a file, not a folder: give a folder (it is created if missing)")
    _writable_ancestor(path, what)
    return path


def check_output_file(path: str | os.PathLike, what: str = "--out", example: str = "model.onnx") -> Path:
    """Checks, before any work, that ``path`` can be written as a file (an existing file is replaced).

    Raises:
        ValueError: ``path`` is a folder, a parent is a file, or the folder that would hold it is not
            writable.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; this writes one file: give a file path such as {path / example}")
    _writable_ancestor(path.parent, what)
    return path
