"""Process-wide settings for fast CPU work: keep freed memory instead of returning it to the kernel; and
OpenCV's thread pool stopped before data-loader workers are forked from the process.

glibc's malloc serves every allocation above its mmap threshold (32 MiB at most) with a fresh
``mmap`` and unmaps it on ``free``. A segmentation network allocates and frees activations of tens
to hundreds of MiB in every forward and backward pass, so every pass page-faults and zero-fills its
whole working set again: on this 2-core machine that is 25 % of a U-Net's forward pass, 40 % of
FCN's and DeconvNet's, and 30-40 % of a training step (``bench/models.py``, README "Speed"). ONNX
Runtime avoids it with its own arena.

``keep_freed_memory`` tells glibc to serve large blocks from its heap and not to trim it, so freed
activations are reused by the next pass. The process's resident memory then stays at its peak
instead of shrinking between passes. ``segforge`` commands call it at start; set
``SEGFORGE_KEEP_FREED_MEMORY=0`` to opt out. Python users may call it themselves.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc's mallopt parameters (malloc.h)


def _mallopt(*settings: tuple[int, int]) -> bool:
    """glibc's ``mallopt(parameter, value)`` for each of ``settings``; False on other C libraries."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return all(bool(libc.mallopt(parameter, value)) for parameter, value in settings)
    except (OSError, AttributeError):
        return False


def keep_freed_memory() -> bool:
    """Makes glibc keep and reuse freed memory (no ``mmap`` per large block, no heap trimming).

    Returns:
        True when applied; False on other platforms or C libraries (musl, macOS, Windows), or when
        ``SEGFORGE_KEEP_FREED_MEMORY=0``.
    """
    if os.environ.get("SEGFORGE_KEEP_FREED_MEMORY", "1") == "0":
        return False
    return _mallopt((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))


def cap_malloc_arenas(count: int = 2) -> bool:
    """Caps glibc's malloc arenas at ``count`` (``MALLOC_ARENA_MAX``, unless the environment sets it).

    glibc gives threads that allocate at once arenas of their own, up to 8 per core, and with
    ``keep_freed_memory`` each arena keeps its peak: a server whose many request threads decode images kept one
    per thread, and its resident memory crept up with every load (``bench/serve_load.py``'s server, 8 clients,
    loads of 96 256x256 uploads, batches of 4: 303 → 626 → 640 → 702 → 702 → 703 → 705 → 706 → 707 MB over 8
    loads; with two arenas 303 → 549 → 561 → 587 → 587 → 587 → 587 MB over 6). ``segforge serve`` calls it.

    Returns:
        True when applied; False where ``MALLOC_ARENA_MAX`` is set or on other C libraries.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    return _mallopt((_M_ARENA_MAX, count))


def stop_opencv_threads() -> None:
    """Runs OpenCV on the calling thread alone from now on, stopping its thread pool if one was started.

    OpenCV's pool does not survive ``fork``: a data-loader worker forked from a process whose pool had
    run (images loaded and augmented in the process itself earlier: a run with ``data.workers: 0``,
    ``predict``) waits forever on the pool's lock at its first OpenCV call. The training loop calls this
    before it starts worker processes; the process itself then loads nothing, so it loses nothing.
    """
    import cv2

    cv2.setNumThreads(1)
