"""What a command's inputs name: files, folders (their images) and glob patterns, each real file once."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable
from pathlib import Path

from segforge.data.io import list_images

WILDCARDS = "*?["


def _matches(parts: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    """Whether path components ``parts`` match glob components ``pattern`` (``**``: any number of folders)."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_matches(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    hidden = parts and parts[0].startswith(".") and not pattern[0].startswith(".")
    return bool(parts) and not hidden and fnmatch.fnmatchcase(parts[0], pattern[0]) and _matches(parts[1:], pattern[1:])


def glob_files(pattern: str) -> list[Path]:
    """The files a glob pattern names (``**`` recursive), each real file once, sorted.

    Unlike ``glob.glob``, symbolic links to folders are not followed, so a link that points back up
    the tree can neither repeat files nor loop forever; a link to a file counts as that file.
    """
    parts = Path(pattern).parts
    fixed = next((i for i, part in enumerate(parts) if any(ch in part for ch in WILDCARDS)), len(parts))
    root = Path(*parts[:fixed]) if fixed else Path(".")
    rest = parts[fixed:]
    found: dict[str, Path] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        relative = Path(folder).relative_to(root).parts
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            if _matches((*relative, name), rest) and path.is_file():
                real = os.path.realpath(path)
                if real not in found or not path.is_symlink():  # the file's own name over a link's
                    found[real] = path
    return sorted(found.values())


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files, folders (their images) and glob patterns → image paths, in order, each real file once."""
    paths: list[Path] = []
    for item in inputs:
        text = str(item)
        if any(ch in text for ch in WILDCARDS):
            matches = glob_files(text)
            if not matches:
                raise ValueError(
                    f"no files match {text!r}; check the pattern (quote it so the shell does not expand it)"
                )
            paths += matches
        elif Path(text).is_dir():
            found = list_images(Path(text))
            if not found:
                raise ValueError(f"folder {text} holds no images (png, jpg, tif, bmp)")
            paths += found
        elif Path(text).is_file():
            paths.append(Path(text))
        else:
            raise ValueError(f"input {text} does not exist; give image files, folders or glob patterns")
    unique: dict[str, Path] = {}
    for path in paths:
        unique.setdefault(os.path.realpath(path), path)
    return list(unique.values())
