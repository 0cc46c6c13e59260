"""The one error type of dataset problems, raised by readers, layouts and the doctor alike."""

from __future__ import annotations

from pathlib import Path


class DatasetError(ValueError):
    """A problem with one file or folder of a dataset.

    Attributes:
        path: the file or folder at fault (None when the problem is not one file's).
        kind: a short code the dataset doctor groups by: ``missing``, ``unreadable``,
            ``unsupported``, ``colour_mask``, ``unexpected_colour``, ``size_mismatch``,
            ``label_range``, ``no_pairs``, ``unpaired``, ``layout``.
    """

    def __init__(self, message: str, *, path: Path | str | None = None, kind: str = "invalid") -> None:
        super().__init__(message)
        self.path = None if path is None else Path(path)
        self.kind = kind
