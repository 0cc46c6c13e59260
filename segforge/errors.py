"""How a command ends when something goes wrong: one line that names the file or value and the fix.

Expected errors (bad input, bad values, missing or unreadable files: ``ValueError`` and ``OSError``)
end a command with ``segforge COMMAND: error: ...`` and exit status 2. Anything else is a bug: a
short report asks for a bug report. ``--debug`` (or ``SEGFORGE_DEBUG=1``) shows the traceback of either.
"""

from __future__ import annotations

import os
import re

EXPECTED = (ValueError, OSError)
# torch's DataLoader re-raises a worker's exception as the same type, its message replaced by this
# header and the worker's whole traceback.
WORKER_HEADER = re.compile(r"Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback")


def user_message(err: BaseException) -> str:
    """``err``'s message as the user should read it.

    An exception raised in a DataLoader worker reads as the worker raised it (its last line of the
    worker's traceback: ``DatasetError: mask 12.png is 480x360, its image 640x480``), not as torch's
    wrapper with a traceback.
    """
    text = str(err)
    if not WORKER_HEADER.match(text):
        return text
    cls = type(err)
    for prefix in (f"{cls.__module__}.{cls.__qualname__}: ", f"{cls.__qualname__}: "):
        at = text.rfind(prefix)
        if at >= 0:
            return text[at + len(prefix) :].strip()
    return text


def debugging() -> bool:
    """Whether ``SEGFORGE_DEBUG`` asks for full tracebacks."""
    return os.environ.get("SEGFORGE_DEBUG", "") not in ("", "0")


def bug_report(command: str, err: BaseException) -> str:
    """The short report of an unexpected exception: what it was, and how to see and report it."""
    return (
        f"segforge {command}: internal error: {type(err).__name__}: {user_message(err)}\n"
        "This is a bug in segforge. Please report it with the command you ran; rerun with "
        "segforge --debug (or SEGFORGE_DEBUG=1) for the full traceback."
    )
